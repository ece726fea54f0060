// Walking guest page tables that live in a GuestPhysMemory (paging_strategy.h):
// the second-stage policies for walker.h's GuestWalk that every strategy
// uses to read the guest's own tables (native: to translate; shadow: to build
// shadow entries from them).
//
//   GuestPhysStage  the real walk. Table pages are read through
//                   HostPage(gfn, false); before an A/D update the table page
//                   is asked for with for_write (a shared copy-on-write table
//                   page must be broken first, never written in place) and
//                   noted dirty. A table page that is not resident, not RAM
//                   or not writable ends the walk with kBadTableAddress and
//                   `pending()` names the gfn and access the caller must
//                   resolve (MakeAvailable, outside the walk) before it walks
//                   again.
//   DryRunStage     a walk that writes nothing: each table page is copied
//                   into scratch space as it is read, so A/D updates land in
//                   the copies. Used by Audit to ask "what would a walk give
//                   now?" without disturbing the guest.
//
// Thread safety: a stage object belongs to one walk on one thread; the memory
// is shared (see GuestPhysMemory).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>

#include "mmu/paging_strategy.h"
#include "mmu/walker.h"

namespace mmu {

// A gfn a walk could not use, and for which access.
struct PendingBacking {
  bool valid = false;
  uint64_t gfn = 0;
  bool for_write = false;
};

class GuestPhysStage {
 public:
  explicit GuestPhysStage(GuestPhysMemory& mem) : mem_(mem) {}

  const PendingBacking& pending() const { return pending_; }

  void Begin() noexcept { pending_.valid = false; }

  uint64_t* Entry(uint64_t entry_gpa, int level, WalkResult* out) noexcept {
    const uint64_t gfn = entry_gpa >> base::kPageShift;
    // Guest input: entry_gpa comes from CR3 or a guest entry; HostPage
    // bound-checks the gfn and gives nullptr outside RAM.
    uint8_t* page = mem_.HostPage(gfn, /*for_write=*/false);
    if (page == nullptr) [[unlikely]] return Fail(gfn, false, level, out);
    mem_.NoteAccess(gfn, /*write=*/false);
    table_page_[level] = page;
    return reinterpret_cast<uint64_t*>(page) + (entry_gpa & base::kPageMask) / sizeof(uint64_t);
  }

  // The walker is about to set A (or D) in the entry it read at `level`: that
  // is a write to the table page, which must be private and is noted dirty
  // before it happens (so a harvest cannot miss it).
  bool PrepareEntryWrite(int level, WalkResult* out) noexcept {
    const uint64_t gfn = out->entry_gpa[level] >> base::kPageShift;
    uint8_t* page = mem_.HostPage(gfn, /*for_write=*/true);
    if (page != table_page_[level]) [[unlikely]] {
      // Shared (nullptr) or re-backed since the read (another pointer).
      if (page == nullptr) return Fail(gfn, true, level, out) != nullptr;
      out->status = WalkStatus::kRetry;
      return false;
    }
    mem_.NoteAccess(gfn, /*write=*/true);
    return true;
  }

  bool Final(const AccessRequest& /*req*/, WalkResult* out) noexcept {
    out->hpa = out->gpa;
    return true;
  }
  bool Commit(bool /*write*/) noexcept { return true; }

 private:
  uint64_t* Fail(uint64_t gfn, bool for_write, int level, WalkResult* out) noexcept {
    pending_ = {true, gfn, for_write};
    out->status = WalkStatus::kBadTableAddress;
    out->fault_level = static_cast<int8_t>(level);
    return nullptr;
  }

  GuestPhysMemory& mem_;
  PendingBacking pending_;
  uint8_t* table_page_[kMaxLevels + 1] = {};
};

// See the file comment. The scratch copies make this a few KiB on the stack:
// fine for Audit and tests, not for the hot path.
class DryRunStage {
 public:
  explicit DryRunStage(GuestPhysMemory& mem) : mem_(mem) {}

  void Begin() noexcept {}

  uint64_t* Entry(uint64_t entry_gpa, int level, WalkResult* out) noexcept {
    const uint8_t* page = mem_.HostPage(entry_gpa >> base::kPageShift, /*for_write=*/false);
    if (page == nullptr) {
      out->status = WalkStatus::kBadTableAddress;
      out->fault_level = static_cast<int8_t>(level);
      return nullptr;
    }
    std::memcpy(scratch_[level], page, base::kPageSize);
    return scratch_[level] + (entry_gpa & base::kPageMask) / sizeof(uint64_t);
  }
  bool PrepareEntryWrite(int /*level*/, WalkResult* /*out*/) noexcept { return true; }
  bool Final(const AccessRequest& /*req*/, WalkResult* out) noexcept {
    out->hpa = out->gpa;
    return true;
  }
  bool Commit(bool /*write*/) noexcept { return true; }

 private:
  GuestPhysMemory& mem_;
  alignas(8) uint64_t scratch_[kMaxLevels + 1][base::kPageSize / sizeof(uint64_t)];
};

// A walk of the guest tables that writes nothing to guest memory.
// Allocates its scratch space: for Audit and tests, never the hot path.
inline WalkStatus DryRunWalk(const PagingMode& mode, uint64_t cr3, const AccessRequest& req,
                             GuestPhysMemory& mem, WalkResult* out) {
  auto stage = std::make_unique<DryRunStage>(mem);  // 24 KiB: keep it off the stack
  return GuestWalk(mode, cr3, req, *stage, out);
}

}  // namespace mmu

// The EPT walker: translates a guest-physical address through VMM-owned EPT
// tables to a host-physical address, as the processor does for every guest
// memory reference under EPT (SDM Vol. 3C §29.3.2 "EPT Translation Mechanism",
// §29.3.3 "EPT-Induced VM Exits").
//
// It never writes: accessed/dirty updates (§29.3.5) are returned as pending
// work so the caller (the 2-D walker) applies them only when the whole
// translation succeeds.
//
// Thread safety: reentrant; tables may be changed concurrently by the VMM
// thread that owns them (entries are read atomically).
#pragma once

#include <cstdint>

#include "mmu/ept.h"
#include "mmu/entry_update.h"
#include "mmu/paging_mode.h"
#include "mmu/phys_memory.h"
#include "mmu/walk_result.h"

namespace mmu {

// The EPT configuration of a VM.
struct EptContext {
  uint64_t eptp = 0;
  EptCaps caps;

  int levels() const { return EptpLevels(eptp); }
  bool ad_enabled() const { return EptpAdEnabled(eptp); }
  uint64_t root() const { return eptp & PhysAddrMask(caps.maxphyaddr); }
};

struct EptWalk {
  WalkStatus status = WalkStatus::kOk;  // kOk, kEptViolation or kEptMisconfig
  uint64_t hpa = 0;
  PageSize page_size = PageSize::k4K;
  // Logical AND of the permission bits of every entry used (for the exit
  // qualification's bits 3..6 even when the walk stops early).
  bool readable = true, writable = true, executable = true, user_executable = true;
  int8_t fault_level = 0;
  int8_t top_level = 0, leaf_level = 0;
  // Valid for levels leaf_level .. top_level only.
  uint64_t* entry_ptr[kMaxLevels + 1];
  uint64_t entry[kMaxLevels + 1];

  // Entries read: one per level from top_level down to leaf_level.
  int references() const { return top_level == 0 ? 0 : top_level - leaf_level + 1; }

  // Resets everything but the per-level arrays, which each walk overwrites
  // for the levels it reads.
  void Reset() noexcept {
    status = WalkStatus::kOk;
    hpa = 0;
    page_size = PageSize::k4K;
    readable = writable = executable = user_executable = true;
    fault_level = top_level = leaf_level = 0;
  }

  // Exit-qualification bits 3..6 for this walk.
  uint64_t PermissionBits() const {
    return (readable ? ept_qual::kReadable : 0) | (writable ? ept_qual::kWritable : 0) |
           (executable ? ept_qual::kExecutable : 0) |
           (user_executable ? ept_qual::kUserExecutable : 0);
  }
};

// Translates `gpa` for an access of kind `access`. `user_linear` says the
// guest linear address is a user-mode address, which selects the user-execute
// bit for fetches under mode-based execute control.
template <PhysMemoryView HostMem>
void EptTranslate(const EptContext& ctx, uint64_t gpa, Access access, bool user_linear,
                  HostMem& host, EptWalk* out) noexcept {
  out->Reset();
  const EptCaps& caps = ctx.caps;
  const uint64_t addr_mask = PhysAddrMask(caps.maxphyaddr);
  const uint64_t phys_rsvd = pte::kAddrMask52 & ~addr_mask;
  // Bit n set: permission bits 2:0 == n make an entry misconfigured
  // (write-only, write+execute without read, and execute-only when the
  // processor does not support it). Bit n of kBadMemTypes: type n is reserved.
  const uint32_t bad_perms = (1u << 2) | (1u << 6) | (caps.execute_only ? 0u : (1u << 4));
  constexpr uint32_t kBadMemTypes = (1u << 2) | (1u << 3) | (1u << 7);
  const uint64_t present_mask = epte::kPermMask | (caps.mode_based_execute ? epte::kUserExecute : 0);
  uint64_t rights = ~uint64_t{0};  // AND of every entry's permission bits
  uint64_t table = ctx.root();
  const int levels = ctx.levels();
  out->top_level = static_cast<int8_t>(levels);
  for (int level = levels;; --level) {
    uint64_t* page = host.PageAt(table);
    out->fault_level = static_cast<int8_t>(level);
    if (page == nullptr) [[unlikely]] {
      // An EPT table outside host memory is a VMM bug; report it as a
      // misconfiguration so the VMM sees it rather than the guest.
      out->leaf_level = static_cast<int8_t>(level + 1);  // this level was not read
      out->status = WalkStatus::kEptMisconfig;
      return;
    }
    uint64_t* p = page + LevelIndex(gpa, level);
    const uint64_t e = LoadEntry(p);
    out->entry_ptr[level] = p;
    out->entry[level] = e;
    out->leaf_level = static_cast<int8_t>(level);
    if (!(e & present_mask)) [[unlikely]] {
      out->readable = out->writable = out->executable = out->user_executable = false;
      out->status = WalkStatus::kEptViolation;
      return;
    }
    const bool large = (level == 2 || level == 3) && (e & epte::kPageSize);
    const bool leaf = level == 1 || large;
    const uint64_t rsvd = phys_rsvd | kEptLevelReservedBits[large][level] |
                          ((level == 3 && !caps.gbpages) ? epte::kPageSize : 0);
    const bool bad_type =
        leaf && ((kBadMemTypes >> ((e & epte::kMemTypeMask) >> epte::kMemTypeShift)) & 1);
    if ((e & rsvd) || ((bad_perms >> (e & epte::kPermMask)) & 1) || bad_type) [[unlikely]] {
      out->status = WalkStatus::kEptMisconfig;
      return;
    }
    rights &= e;
    if (leaf) {
      const uint64_t offset_mask = LevelPageSize(level) - 1;
      out->hpa = (e & addr_mask & ~offset_mask) | (gpa & offset_mask);
      out->page_size = static_cast<PageSize>(level);
      break;
    }
    table = e & addr_mask;
  }
  out->readable = rights & epte::kRead;
  out->writable = rights & epte::kWrite;
  out->executable = rights & epte::kExecute;
  out->user_executable = caps.mode_based_execute && (rights & epte::kUserExecute);  // else undefined
  // SDM §29.3.3.2: the access must be allowed by every entry used.
  bool allowed = false;
  switch (access) {
    case Access::kRead: allowed = out->readable; break;
    case Access::kWrite: allowed = out->writable; break;
    case Access::kFetch:
      allowed = (caps.mode_based_execute && user_linear) ? out->user_executable : out->executable;
      break;
  }
  out->status = allowed ? WalkStatus::kOk : WalkStatus::kEptViolation;
  if (allowed) out->fault_level = 0;
}

// Applies the EPT accessed/dirty updates of a successful walk (SDM §29.3.5):
// A in every entry used, D in the leaf for a write. Returns false if an entry
// changed under the walk.
inline bool CommitEptAccessDirty(const EptWalk& walk, bool write) noexcept {
  constexpr uint64_t kAd = epte::kAccessed | epte::kDirty;
  for (int level = walk.top_level; level >= walk.leaf_level; --level) {
    uint64_t flags = epte::kAccessed;
    if (level == walk.leaf_level && write) flags |= epte::kDirty;
    if (!SetEntryFlags(walk.entry_ptr[level], walk.entry[level], flags, kAd)) return false;
  }
  return true;
}

}  // namespace mmu

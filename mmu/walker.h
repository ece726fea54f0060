// The page walkers: x86-64 4-level and 5-level paging exactly as the Intel SDM
// (Vol. 3A ch. 4) describes it, on one stage (1-D) or through EPT (2-D).
//
// One core, GuestWalk<Stage2>, implements the guest's paging rules: entry
// formats and reserved bits (§4.5), access rights with CR0.WP, CR4.SMEP/SMAP/
// PKE, EFER.NXE and CPL (§4.6), the #PF error code (§4.7) and accessed/dirty
// updates (§4.8). The Stage2 policy says how a guest-physical address reaches
// memory, in the manner of KVM's paging_tmpl.h with its translate_gpa hook:
//   - Walk1D: guest-physical is the view's physical address (native paging,
//     or the shadow MMU's reference walk);
//   - Walk2D: every guest table reference and the final address go through
//     the EPT walker (SDM Vol. 3C §29.3), so a cold 4-level/4-level walk makes
//     (4 + 1) * 4 + 4 = 24 memory references.
//
// Accessed/dirty policy. The SDM lets the processor set A bits as it walks; it
// does not say whether a walk that faults leaves them set. We follow KVM: a
// walk writes A/D bits only once the whole translation has succeeded
// (including the second stage), in the guest's entries top-down, then in the
// EPT entries. A write sets D in the leaf. Under EPT, a guest A/D update is a
// write to the guest table's guest-physical address, so it needs EPT write
// permission (§29.3.3.2); with EPT A/D enabled every guest paging-structure
// access is treated as a write for EPT purposes (§29.3.5).
//
// Hot path: noexcept, no allocation, no virtual calls (the views are template
// parameters).
//
// Thread safety: reentrant. Entries are read and updated atomically, so other
// vCPUs may walk or the guest may write the same tables concurrently; an entry
// that changes between read and A/D update makes the walk start again.
#pragma once

#include <cstdint>

#include "mmu/ept_walker.h"
#include "mmu/entry_update.h"
#include "mmu/paging_mode.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/walk_result.h"

namespace mmu {

// How many times a walk is restarted after concurrent table changes before it
// gives up with kRetry (the caller then simply re-executes the access).
inline constexpr int kMaxWalkAttempts = 8;

// The access-rights decision of SDM §4.6 for a translation whose combined
// rights are (writable, user, nx) and whose leaf is `leaf`. Returns 0 if the
// access is allowed, else the #PF error code (with P=1).
[[gnu::always_inline]] constexpr uint32_t CheckAccessRights(const PagingMode& mode,
                                                            const AccessRequest& req,
                                     bool writable, bool user, bool nx, uint64_t leaf) {
  const uint32_t code = BaseErrorCode(mode, req) | pfec::kPresent;
  const bool write = req.access == Access::kWrite;
  const bool fetch = req.access == Access::kFetch;
  bool denied = false;
  if (req.user_access()) {
    // §4.6.1: user-mode accesses need a user-mode address; writes need R/W=1
    // at every level whatever CR0.WP; fetches need XD=0 at every level.
    denied = !user || (write && !writable) || (fetch && nx);
  } else if (fetch) {
    // Supervisor fetches: never from user-mode addresses under SMEP; never
    // from XD pages.
    denied = (user && mode.smep) || nx;
  } else {
    // Supervisor data accesses: SMAP forbids user-mode addresses unless the
    // access is explicit with EFLAGS.AC=1; CR0.WP=1 makes R/W binding.
    if (user && mode.smap && (req.implicit_supervisor || !req.rflags_ac)) denied = true;
    if (write && !writable && mode.wp) denied = true;
  }
  // §4.6.2: protection keys apply to data accesses to user-mode addresses.
  uint32_t pk = 0;
  if (mode.pke && user && !fetch) {
    const unsigned key = static_cast<unsigned>((leaf & pte::kProtKeyMask) >> pte::kProtKeyShift);
    const bool access_disable = (mode.pkru >> (2 * key)) & 1;
    const bool write_disable = (mode.pkru >> (2 * key + 1)) & 1;
    if (access_disable || (write_disable && write && (req.user_access() || mode.wp))) {
      pk = pfec::kPk;
    }
  }
  return (denied || pk) ? (code | pk) : 0;
}

// Stage 2 for a one-dimensional walk: guest-physical addresses are physical
// addresses of `Mem`.
template <PhysMemoryView Mem>
class IdentityStage {
 public:
  explicit IdentityStage(Mem& mem) : mem_(mem) {}

  void Begin() noexcept {}
  // The host pointer to the guest entry at `entry_gpa`, or nullptr (and
  // out->status set) when nothing backs it.
  uint64_t* Entry(uint64_t entry_gpa, int level, WalkResult* out) noexcept {
    uint64_t* page = mem_.PageAt(entry_gpa & ~uint64_t{0xfff});
    if (page == nullptr) [[unlikely]] {
      out->status = WalkStatus::kBadTableAddress;
      out->fault_level = static_cast<int8_t>(level);
      return nullptr;
    }
    return page + (entry_gpa & 0xfff) / sizeof(uint64_t);
  }
  bool PrepareEntryWrite(int /*level*/, WalkResult* /*out*/) noexcept { return true; }
  bool Final(const AccessRequest& /*req*/, WalkResult* out) noexcept {
    out->hpa = out->gpa;
    return true;
  }
  bool Commit(bool /*write*/) noexcept { return true; }

 private:
  Mem& mem_;
};

// Stage 2 through EPT: each guest table and the final guest-physical address
// are translated by the EPT walker over host memory `HostMem`.
template <PhysMemoryView HostMem>
class EptStage {
 public:
  EptStage(const EptContext& ctx, HostMem& host) : ctx_(ctx), host_(host) {}

  void Begin() noexcept {
    for (EptWalk& walk : tables_) walk.top_level = 0;  // marks "not used by this walk"
  }

  uint64_t* Entry(uint64_t entry_gpa, int level, WalkResult* out) noexcept {
    // §29.3.5: with EPT A/D on, guest paging-structure accesses are writes.
    const Access access = ctx_.ad_enabled() ? Access::kWrite : Access::kRead;
    EptWalk& walk = tables_[level];
    EptTranslate(ctx_, entry_gpa, access, false, host_, &walk);
    AddRefs(walk, level, out);
    if (walk.status != WalkStatus::kOk) {
      Fail(walk, entry_gpa, access, /*translated=*/false, out);
      return nullptr;
    }
    uint64_t* page = host_.PageAt(walk.hpa & ~uint64_t{0xfff});
    if (page == nullptr) [[unlikely]] {
      out->status = WalkStatus::kEptMisconfig;  // EPT maps outside host memory: VMM bug
      out->fault_gpa = entry_gpa;
      out->ept_fault_level = walk.leaf_level;
      return nullptr;
    }
    return page + (walk.hpa & 0xfff) / sizeof(uint64_t);
  }

  // A guest A/D update writes the guest table at `level`.
  bool PrepareEntryWrite(int level, WalkResult* out) noexcept {
    const EptWalk& walk = tables_[level];
    if (walk.writable) return true;
    out->status = WalkStatus::kEptViolation;
    out->ept_qualification = ept_qual::kWrite | walk.PermissionBits() | ept_qual::kGlaValid;
    out->fault_gpa = out->entry_gpa[level];
    out->ept_fault_level = walk.leaf_level;
    return false;
  }

  bool Final(const AccessRequest& req, WalkResult* out) noexcept {
    EptTranslate(ctx_, out->gpa, req.access, out->user, host_, &final_);
    AddRefs(final_, 0, out);
    if (final_.status != WalkStatus::kOk) {
      Fail(final_, out->gpa, req.access, /*translated=*/true, out);
      return false;
    }
    out->hpa = final_.hpa;
    return true;
  }

  // EPT accessed/dirty flags for every EPT walk this guest walk made.
  bool Commit(bool write) noexcept {
    if (!ctx_.ad_enabled()) return true;
    for (int level = kMaxLevels; level >= 1; --level) {
      if (tables_[level].top_level == 0) continue;
      if (!CommitEptAccessDirty(tables_[level], /*write=*/true)) return false;
    }
    return CommitEptAccessDirty(final_, write);
  }

 private:
  static void AddRefs(const EptWalk& walk, int guest_level, WalkResult* out) {
    for (int l = walk.leaf_level; l <= walk.top_level; ++l) ++out->refs.ept[l];
    out->refs.nested[guest_level] = static_cast<uint16_t>(walk.references());
  }

  // Fills the exit information for a failed EPT walk (SDM §28.2.1, Table 28-7).
  static void Fail(const EptWalk& walk, uint64_t gpa, Access access, bool translated,
                   WalkResult* out) {
    out->status = walk.status;
    out->fault_gpa = gpa;
    out->ept_fault_level = walk.fault_level;
    if (walk.status != WalkStatus::kEptViolation) return;
    uint64_t q = access == Access::kRead    ? ept_qual::kRead
                 : access == Access::kWrite ? ept_qual::kWrite
                                            : ept_qual::kFetch;
    q |= walk.PermissionBits() | ept_qual::kGlaValid;
    if (translated) {
      q |= ept_qual::kGlaTranslated;
      if (out->user) q |= ept_qual::kGlaUser;
      if (out->writable) q |= ept_qual::kGlaWritable;
      if (out->nx) q |= ept_qual::kGlaNoExecute;
    }
    out->ept_qualification = q;
  }

  const EptContext& ctx_;
  HostMem& host_;
  EptWalk tables_[kMaxLevels + 1];
  EptWalk final_;
};

// The guest-paging core. See the file comment.
template <typename Stage2>
WalkStatus GuestWalkOnce(const PagingMode& mode, uint64_t cr3, const AccessRequest& req,
                         Stage2& stage2, WalkResult* out) noexcept {
  out->Reset();
  const uint64_t va = req.va;
  if (!IsCanonical(va, mode.levels)) [[unlikely]] {
    return out->status = WalkStatus::kNonCanonical;
  }
  stage2.Begin();
  const uint64_t addr_mask = PhysAddrMask(mode.maxphyaddr);
  const uint32_t base_code = BaseErrorCode(mode, req);
  const uint64_t mode_rsvd = ModeReservedBits(mode.maxphyaddr, mode.nxe);
  uint64_t* entry_ptr[kMaxLevels + 1];
  bool writable = true, user = true, nx = false;
  uint64_t table_gpa = cr3 & addr_mask;
  int level = mode.levels;
  out->top_level = static_cast<int8_t>(level);
  uint64_t e;
  bool large;
  for (;; --level) {
    const uint64_t entry_gpa = table_gpa + LevelIndex(va, level) * sizeof(uint64_t);
    entry_ptr[level] = stage2.Entry(entry_gpa, level, out);
    if (entry_ptr[level] == nullptr) [[unlikely]] return out->status;
    e = LoadEntry(entry_ptr[level]);
    out->refs.guest[level] = 1;  // each level is read once per walk
    out->entry_gpa[level] = entry_gpa;
    out->entry[level] = e;
    out->leaf_level = static_cast<int8_t>(level);
    if (!(e & pte::kPresent)) {
      out->error_code = base_code;
      out->fault_level = static_cast<int8_t>(level);
      return out->status = WalkStatus::kPageFault;
    }
    large = (level == 2 || level == 3) && (e & pte::kPageSize);
    const uint64_t rsvd = mode_rsvd | kLevelReservedBits[large][level] |
                          ((level == 3 && !mode.gbpages) ? pte::kPageSize : 0);
    if (e & rsvd) {
      out->error_code = base_code | pfec::kPresent | pfec::kRsvd;
      out->fault_level = static_cast<int8_t>(level);
      return out->status = WalkStatus::kPageFault;
    }
    writable &= (e & pte::kWritable) != 0;
    user &= (e & pte::kUser) != 0;
    if (mode.nxe) nx |= (e & pte::kNoExecute) != 0;
    if (level == 1 || large) break;
    table_gpa = e & addr_mask;
  }

  out->writable = writable;
  out->user = user;
  out->nx = nx;
  if (uint32_t code = CheckAccessRights(mode, req, writable, user, nx, e)) {
    out->error_code = code;
    out->fault_level = static_cast<int8_t>(level);
    return out->status = WalkStatus::kPageFault;
  }

  const uint64_t offset_mask = LevelPageSize(level) - 1;
  out->gpa = (e & addr_mask & ~offset_mask) | (va & offset_mask);
  out->page_size = static_cast<PageSize>(level);
  // G counts only with CR4.PGE = 1 (SDM §4.10.2.4).
  out->global = mode.pge && (e & pte::kGlobal) != 0;
  if (mode.pke) out->prot_key = static_cast<uint8_t>((e & pte::kProtKeyMask) >> pte::kProtKeyShift);

  // Which entries need A (and the leaf D) set, and may we write them?
  const bool write = req.access == Access::kWrite;
  uint64_t flags[kMaxLevels + 1] = {};
  for (int l = out->top_level; l >= level; --l) {
    uint64_t f = (out->entry[l] & pte::kAccessed) ? 0 : pte::kAccessed;
    if (l == level && write && !(out->entry[l] & pte::kDirty)) f |= pte::kDirty;
    flags[l] = f;
    if (f && !stage2.PrepareEntryWrite(l, out)) return out->status;
  }
  if (!stage2.Final(req, out)) return out->status;
  constexpr uint64_t kAd = pte::kAccessed | pte::kDirty;
  for (int l = out->top_level; l >= level; --l) {
    if (!flags[l]) continue;
    if (!SetEntryFlags(entry_ptr[l], out->entry[l], flags[l], kAd)) {
      return out->status = WalkStatus::kRetry;
    }
    out->entry[l] |= flags[l];
  }
  if (!stage2.Commit(write)) return out->status = WalkStatus::kRetry;
  out->dirty = (out->entry[level] & pte::kDirty) != 0;
  return out->status = WalkStatus::kOk;
}

template <typename Stage2>
WalkStatus GuestWalk(const PagingMode& mode, uint64_t cr3, const AccessRequest& req,
                     Stage2& stage2, WalkResult* out) noexcept {
  WalkStatus status = WalkStatus::kRetry;
  for (int attempt = 0; attempt < kMaxWalkAttempts && status == WalkStatus::kRetry; ++attempt) {
    status = GuestWalkOnce(mode, cr3, req, stage2, out);
  }
  return status;
}

// A one-dimensional walk of the guest tables rooted at `cr3` in `mem`.
template <PhysMemoryView Mem>
WalkStatus Walk1D(const PagingMode& mode, uint64_t cr3, const AccessRequest& req, Mem& mem,
                  WalkResult* out) noexcept {
  IdentityStage<Mem> stage2(mem);
  return GuestWalk(mode, cr3, req, stage2, out);
}

// A two-dimensional walk: guest tables rooted at guest-physical `cr3`, every
// guest-physical reference translated through the EPT tables of `ept`, all
// held in host memory `host`.
template <PhysMemoryView HostMem>
WalkStatus Walk2D(const PagingMode& mode, uint64_t cr3, const EptContext& ept,
                  const AccessRequest& req, HostMem& host, WalkResult* out) noexcept {
  EptStage<HostMem> stage2(ept, host);
  return GuestWalk(mode, cr3, req, stage2, out);
}

}  // namespace mmu

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
  uint64_t* entry_ptr[kMaxLevels + 1] = {};
  uint64_t entry[kMaxLevels + 1] = {};
  uint16_t refs[kMaxLevels + 1] = {};

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
  const EptCaps& caps = ctx.caps;
  const uint64_t addr_mask = PhysAddrMask(caps.maxphyaddr);
  uint64_t table = ctx.root();
  const int levels = ctx.levels();
  out->top_level = static_cast<int8_t>(levels);
  for (int level = levels;; --level) {
    uint64_t* page = host.PageAt(table);
    out->fault_level = static_cast<int8_t>(level);
    if (page == nullptr) {
      // An EPT table outside host memory is a VMM bug; report it as a
      // misconfiguration so the VMM sees it rather than the guest.
      out->status = WalkStatus::kEptMisconfig;
      return;
    }
    uint64_t* p = page + LevelIndex(gpa, level);
    const uint64_t e = LoadEntry(p);
    ++out->refs[level];
    out->entry_ptr[level] = p;
    out->entry[level] = e;
    out->leaf_level = static_cast<int8_t>(level);
    if (!EptPresent(e, caps)) {
      out->readable = out->writable = out->executable = out->user_executable = false;
      out->status = WalkStatus::kEptViolation;
      return;
    }
    const bool large = (level == 2 || level == 3) && (e & epte::kPageSize);
    const bool leaf = level == 1 || large;
    if ((e & EptReservedBits(level, large, caps)) || EptPermsMisconfigured(e, leaf, caps)) {
      out->status = WalkStatus::kEptMisconfig;
      return;
    }
    out->readable &= (e & epte::kRead) != 0;
    out->writable &= (e & epte::kWrite) != 0;
    out->executable &= (e & epte::kExecute) != 0;
    out->user_executable &= (e & epte::kUserExecute) != 0;
    if (leaf) {
      const uint64_t offset_mask = LevelPageSize(level) - 1;
      out->hpa = (e & addr_mask & ~offset_mask) | (gpa & offset_mask);
      out->page_size = static_cast<PageSize>(level);
      break;
    }
    table = e & addr_mask;
  }
  // SDM §29.3.3.2: the access must be allowed by every entry used.
  bool allowed = false;
  switch (access) {
    case Access::kRead: allowed = out->readable; break;
    case Access::kWrite: allowed = out->writable; break;
    case Access::kFetch:
      allowed = (caps.mode_based_execute && user_linear) ? out->user_executable : out->executable;
      break;
  }
  if (!caps.mode_based_execute) out->user_executable = false;  // undefined without MBEC
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

#include "shadow/shadow_strategy.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_format.h"
#include "base/check.h"
#include "base/log.h"
#include "mmu/guest_phys_walk.h"
#include "mmu/walker.h"

namespace shadow {

using mmu::Access;
using mmu::AccessRequest;
using mmu::SoftTlb;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
using mmu::VcpuMmu;
using mmu::WalkResult;
using mmu::WalkStatus;
namespace pte = mmu::pte;

namespace {

// With CR0.PG = 0, linear addresses are physical, 32 bits wide (SDM Vol. 3A
// §4.1.1).
constexpr uint64_t kUnpagedMask = 0xffff'ffffull;

bool Allows(const mmu::PagingMode& mode, const AccessRequest& req, Access access, uint64_t spte) {
  AccessRequest probe = req;
  probe.access = access;
  // The spte keeps the guest leaf's protection key in the guest's bits.
  return mmu::CheckAccessRights(mode, probe, (spte & spte::kWritable) != 0,
                                (spte & spte::kUser) != 0, (spte & spte::kNoExecute) != 0,
                                spte) == 0;
}

// The rights of a guest path so far, combined with one more entry (SDM
// §4.6: R/W and U/S ANDed, XD ORed).
uint8_t Combine(uint8_t acc, uint64_t gpte) {
  if (!(gpte & pte::kWritable)) acc &= ~Role::kAccWrite;
  if (!(gpte & pte::kUser)) acc &= ~Role::kAccUser;
  if (gpte & pte::kNoExecute) acc |= Role::kAccNoExec;
  return acc;
}

uint64_t SignExtend(uint64_t va, int levels) {
  const int shift = 64 - (levels == 5 ? 57 : 48);
  return static_cast<uint64_t>(static_cast<int64_t>(va << shift) >> shift);
}

uint64_t HostAddr(const uint8_t* page) { return reinterpret_cast<uint64_t>(page); }

}  // namespace

absl::StatusOr<std::unique_ptr<ShadowStrategy>> ShadowStrategy::Create(mmu::GuestPhysMemory* mem,
                                                                        Options options) {
  if (mem == nullptr) return absl::InvalidArgumentError("shadow strategy: no guest memory");
  if (options.max_vcpus == 0 || options.max_vcpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shadow strategy: max_vcpus %u not in 1..%u", options.max_vcpus, kMaxVcpus));
  }
  // A fault builds up to 5 levels of tables and may need a few more pages to
  // make room for them; below 16 the cache would thrash on one walk.
  if (options.max_shadow_pages < 16) {
    return absl::InvalidArgumentError("shadow strategy: max_shadow_pages must be at least 16");
  }
  if (options.flood_threshold == 0) {
    return absl::InvalidArgumentError("shadow strategy: flood_threshold must be positive");
  }
  return std::unique_ptr<ShadowStrategy>(new ShadowStrategy(mem, options));
}

ShadowStrategy::ShadowStrategy(mmu::GuestPhysMemory* mem, const Options& options)
    : PagingStrategy(mem, options.max_vcpus),
      options_(options),
      roots_(options.max_vcpus),
      hw_models_(options.max_vcpus,
                 mmu::HwModelConfig{}.Bounding(options.hw_model_bounds_soft_tlb).Enabled(options.hw_model)) {}

ShadowStrategy::~ShadowStrategy() {
  absl::MutexLock lock(&mu_);
  for (auto& [gfn, pages] : pages_by_gfn_) {
    for (ShadowPage* sp : pages) delete sp;
  }
}

void ShadowStrategy::OnAttach(VcpuMmu& vcpu) {
  hw_models_.Ensure(vcpu.index);
  absl::MutexLock lock(&mu_);
  ++attached_;
  roots_[vcpu.index] = VcpuRoots{};
}

void ShadowStrategy::OnDetach(VcpuMmu& vcpu) {
  absl::MutexLock lock(&mu_);
  --attached_;
  ReleaseRoots(roots_[vcpu.index]);
}

void ShadowStrategy::ReleaseRoots(VcpuRoots& roots) {
  if (roots.root != nullptr) --roots.root->root_count;
  for (ShadowPage* sp : roots.prev) --sp->root_count;
  roots = VcpuRoots{};
}

uint32_t ShadowStrategy::shadow_pages() const {
  absl::MutexLock lock(&mu_);
  return num_pages_;
}

absl::Status ShadowStrategy::audit_failure() const {
  absl::MutexLock lock(&mu_);
  return audit_failure_;
}

void ShadowStrategy::ApplyFlush(VcpuMmu* vcpu, const Flush& flush) noexcept {
  if (!flush.all) return;
  if (vcpu != nullptr) {
    vcpu->tlb->FlushAll();
    // KVM's remote TLB flush: the hardware TLB and PWCs go too.
    if (mmu::HwPagingModel* hw = hw_models_.At(vcpu->index)) hw->FlushAll();
  }
  // The vCPUs of a VM share one host thread in the soft backend, so the
  // others apply this before they run again (see docs/shadow.md, "Limits").
  if (attached_ > 1) {
    counters_.Inc(ShadowCounters::kRemoteFlushes);
    RequestFlushAllVcpus();
  }
}

// ---------------------------------------------------------------------------
// The miss path.

TranslateResult ShadowStrategy::Translate(VcpuMmu& vcpu, const AccessRequest& req,
                                          TranslateOutcome* out) noexcept {
  DCHECK_LT(vcpu.index, max_vcpus());
  if (mmu::HwPagingModel* hw = hw_models_.At(vcpu.index)) hw->Sync(flush_generation());
  mmu::GuestPhysMemory& mem = memory();
  for (int attempt = 0; attempt < kMaxBackingAttempts; ++attempt) {
    *out = TranslateOutcome{};
    // A backing change is in progress: do nothing until it ends (as native).
    const uint64_t seq = mem.BackingSeq();
    if (seq & 1) break;

    Need need;
    Flush flush;
    TranslateResult result;
    {
      absl::MutexLock lock(&mu_);
      if (attempt == 0) counters_.Inc(ShadowCounters::kTranslations);
      // A verb started since `seq` was read: its DropGfns may have run
      // already, so sptes built now from the old backing would outlive the
      // change. Checked under mu_: a verb that starts later waits for it and
      // zaps what this attempt builds.
      if (mem.BackingSeq() != seq) continue;
      // After an invalidation, the maps it changed: the reverse map and the
      // write protection (the whole tree is checked at every resync; a walk
      // of it after each of a burst of invalidations would starve the vCPU).
      if (audit_pending_) AuditIfEnabled(vcpu, /*walk_tree=*/false);
      result = TranslateLocked(vcpu, req, out, &need, &flush);
      ApplyFlush(&vcpu, flush);
    }

    std::atomic_thread_fence(std::memory_order_acquire);
    if (mem.BackingSeq() != seq) {
      // A FrameTable verb started meanwhile; its DropGfns (which waited for
      // the mutex) zapped what this attempt built from the old backing.
      if (out->filled) vcpu.tlb->FlushPage(req.va);
      continue;
    }
    if (!need.valid) {
      if (result == TranslateResult::kRetry) break;
      return result;
    }

    // Resolve the backing outside the mutex: MakeAvailable may run the
    // invalidation listeners, and so DropGfns, on this thread.
    {
      absl::MutexLock lock(&mu_);
      counters_.Inc(ShadowCounters::kBackingRequests);
    }
    EnterQuiescence(vcpu);
    const mmu::BackingStatus status = mem.MakeAvailable(need.gfn, need.for_write);
    LeaveQuiescence(vcpu);
    switch (status) {
      case mmu::BackingStatus::kReady:
        continue;
      case mmu::BackingStatus::kNotRam: {
        absl::MutexLock lock(&mu_);
        if (need.table) {
          // A guest table outside RAM: a not-present #PF, as native and KVM.
          *out = TranslateOutcome{};
          out->vector = mmu::kVectorPf;
          out->error_code = mmu::BaseErrorCode(vcpu.mode, req);
          out->cr2 = req.va;
          counters_.Inc(ShadowCounters::kPfGuest);
          counters_.Inc(ShadowCounters::kExits);
          return TranslateResult::kInjectGuestFault;
        }
        counters_.Inc(ShadowCounters::kMmio);
        return TranslateResult::kMmio;  // out->gpa set by the attempt
      }
      case mmu::BackingStatus::kFailed: {
        absl::MutexLock lock(&mu_);
        counters_.Inc(ShadowCounters::kHostErrors);
        return TranslateResult::kHostError;
      }
    }
  }
  absl::MutexLock lock(&mu_);
  counters_.Inc(ShadowCounters::kRetries);
  *out = TranslateOutcome{};
  return TranslateResult::kRetry;
}

TranslateResult ShadowStrategy::TranslateLocked(VcpuMmu& vcpu, const AccessRequest& req,
                                                TranslateOutcome* out, Need* need, Flush* flush) {
  mmu::GuestPhysMemory& mem = memory();
  if (!vcpu.paging) {
    // Nothing to shadow: linear is physical. Filled like native; a
    // FrameTable change flushes every soft TLB through the base class.
    const uint64_t gpa = req.va & kUnpagedMask;
    const uint64_t gfn = gpa >> base::kPageShift;
    const bool write = req.access == Access::kWrite;
    out->gpa = gpa;
    uint8_t* page = mem.HostPage(gfn, write);
    if (page == nullptr) {
      *need = {true, gfn, write, false};
      return TranslateResult::kRetry;
    }
    const bool frame_writable = write || mem.HostPage(gfn, true) == page;
    mem.NoteAccess(gfn, frame_writable);
    out->host_page = page;
    out->perms = {true, frame_writable, true};
    out->mmu_idx = req.user_access() ? SoftTlb::MmuIdx::kUser : SoftTlb::MmuIdx::kSupervisor;
    vcpu.tlb->Fill(out->mmu_idx, req.va, page, out->perms);
    vcpu.RecordFill(req.va, out->mmu_idx);
    out->filled = true;
    counters_.Inc(ShadowCounters::kTlbFills);
    if (mmu::HwPagingModel* hw = hw_models_.At(vcpu.index)) hw->OnUnpaged(req, 0, vcpu.tlb);
    return TranslateResult::kFixed;
  }
  if (mmu::IsCanonical(req.va, vcpu.mode.levels)) {
    // The hardware part: walk the shadow tables.
    if (const uint64_t* sptep = ShadowWalk(Root(vcpu, flush), req.va)) {
      const uint64_t e = *sptep;
      const bool write = req.access == Access::kWrite;
      if (Allows(vcpu.mode, req, req.access, e) && (!write || (e & spte::kHostWritable))) {
        counters_.Inc(ShadowCounters::kShadowHits);
        ApplyFlush(&vcpu, *flush);
        *flush = {};
        FillFromSpte(vcpu, req, *ShadowPage::FromSpte(sptep), e, out);
        return TranslateResult::kFixed;
      }
    }
  }
  return ShadowFault(vcpu, req, out, need, flush);
}

uint64_t* ShadowStrategy::ShadowWalk(ShadowPage* sp, uint64_t va) {
  if (sp == nullptr) return nullptr;
  for (int level = sp->role.level; level > 1; --level) {
    const uint64_t e = sp->spt[mmu::LevelIndex(va, level)];
    if (!(e & spte::kPresent)) return nullptr;
    sp = ShadowPage::Child(e);
  }
  uint64_t* leaf = &sp->spt[mmu::LevelIndex(va, 1)];
  return (*leaf & spte::kPresent) ? leaf : nullptr;
}

void ShadowStrategy::FillFromSpte(VcpuMmu& vcpu, const AccessRequest& req, const ShadowPage& sp,
                                  uint64_t e, TranslateOutcome* out) {
  const SoftTlb::MmuIdx idx = req.user_access() ? SoftTlb::MmuIdx::kUser
                                                : SoftTlb::MmuIdx::kSupervisor;
  SoftTlb::Perms perms;
  perms.read = Allows(vcpu.mode, req, Access::kRead, e);
  perms.write = (e & spte::kHostWritable) && Allows(vcpu.mode, req, Access::kWrite, e);
  perms.fetch = Allows(vcpu.mode, req, Access::kFetch, e);
  uint8_t* page = reinterpret_cast<uint8_t*>(e & spte::kAddrMask);
  const int index = mmu::LevelIndex(req.va, 1);
  out->host_page = page;
  out->gpa = (sp.TargetGfn(index) << base::kPageShift) | (req.va & base::kPageMask);
  out->mmu_idx = idx;
  out->perms = perms;
  out->page_size_bytes = sp.role.direct ? mmu::LevelPageSize(sp.role.large_level) : base::kPageSize;
  // The hardware walks the shadow tables from the root: `levels` deep to a
  // 4 KiB spte (a pure model; a shadow fault's own walk is in its exit cost).
  mmu::HwPagingModel* hw = hw_models_.At(vcpu.index);
  // Supervisor accesses to user pages under SMAP depend on EFLAGS.AC and on
  // implicitness, which the supervisor MMU index does not encode (as native).
  if (idx == SoftTlb::MmuIdx::kSupervisor && (e & spte::kUser) && vcpu.mode.smap) {
    if (hw != nullptr) hw->OnShadowWalk(req, vcpu.mode.levels, e & spte::kHostWritable, vcpu.tlb);
    return;
  }
  vcpu.tlb->Fill(idx, req.va, page, perms, out->page_size_bytes);
  vcpu.RecordFill(req.va, idx);
  out->filled = true;
  counters_.Inc(ShadowCounters::kTlbFills);
  if (hw != nullptr) hw->OnShadowWalk(req, vcpu.mode.levels, e & spte::kHostWritable, vcpu.tlb);
}

TranslateResult ShadowStrategy::ShadowFault(VcpuMmu& vcpu, const AccessRequest& req,
                                             TranslateOutcome* out, Need* need, Flush* flush) {
  mmu::GuestPhysMemory& mem = memory();
  const bool write = req.access == Access::kWrite;

  // The guest's own walk decides, and sets the guest's A/D bits as hardware
  // would (KVM's guest walker does the same on a shadow fault).
  mmu::GuestPhysStage stage(mem);
  WalkResult r;
  const WalkStatus status = mmu::GuestWalk(vcpu.mode, vcpu.cr3, req, stage, &r);
  const int refs = r.refs.Total();
  out->walk_refs = static_cast<uint32_t>(refs);
  counters_.Add(ShadowCounters::kWalkRefs, static_cast<uint64_t>(refs));
  switch (status) {
    case WalkStatus::kOk:
      break;
    case WalkStatus::kPageFault:
      out->vector = mmu::kVectorPf;
      out->error_code = r.error_code;
      out->cr2 = req.va;
      counters_.Inc(ShadowCounters::kPfGuest);
      counters_.Inc(ShadowCounters::kExits);
      return TranslateResult::kInjectGuestFault;
    case WalkStatus::kNonCanonical:
      // #GP(0) (#SS for the stack): no page fault, no exit.
      out->vector = mmu::kVectorGp;
      out->error_code = 0;
      return TranslateResult::kInjectGuestFault;
    case WalkStatus::kBadTableAddress:
      DCHECK(stage.pending().valid);
      *need = {true, stage.pending().gfn, stage.pending().for_write, /*table=*/true};
      return TranslateResult::kRetry;
    default:
      return TranslateResult::kRetry;
  }

  out->gpa = r.gpa;
  const uint64_t gfn = r.gpa >> base::kPageShift;
  // Guest input: the gfn comes from a guest entry; HostPage bound-checks it.
  uint8_t* page = mem.HostPage(gfn, write);
  if (page == nullptr) {
    *need = {true, gfn, write, /*table=*/false};
    return TranslateResult::kRetry;
  }
  const bool frame_writable = write || mem.HostPage(gfn, /*for_write=*/true) == page;

  // A write to a shadowed guest table: let its leaf pages go out of sync, or
  // emulate the write (zap what it changes, after building).
  bool emulate = write && WriteProtected(gfn) && !TryUnsync(gfn);

  // Build the shadow path: one page per guest table, keyed by its gfn and
  // the role (the rights combined above it).
  ++fault_stamp_;
  ShadowPage* sp = Root(vcpu, flush);
  Touch(sp);
  sp->write_flooding = 0;
  uint8_t acc = Role::kAccAll;
  for (int level = r.top_level; level > r.leaf_level; --level) {
    acc = Combine(acc, r.entry[level]);
    Role role = RoleFor(vcpu.mode, level - 1);
    role.access = acc;
    sp = ChildFor(sp, mmu::LevelIndex(req.va, level), r.entry_gpa[level - 1] >> base::kPageShift,
                  role, flush);
    Touch(sp);
    sp->write_flooding = 0;
  }
  uint64_t gpte = 0;
  if (r.leaf_level > 1) {
    // A guest large page: direct pages below the guest leaf, one per level,
    // each covering the piece of the large page that holds the gva.
    const uint64_t leaf = r.entry[r.leaf_level];
    acc = Combine(acc, leaf);
    for (int level = r.leaf_level; level > 1; --level) {
      Role role = RoleFor(vcpu.mode, level - 1);
      role.direct = true;
      role.access = acc;
      // The leaf's D bit is part of the role (it used to be folded into W,
      // which let a clean writable large page share the sptes of a dirty
      // read-only one: host-writable sptes that skip setting D under
      // CR0.WP = 0; found by the differential test).
      role.dirty = (leaf & pte::kDirty) != 0;
      role.large_level = static_cast<uint8_t>(r.leaf_level);
      role.pkey = r.prot_key;
      const uint64_t piece = r.gpa & ~(mmu::LevelPageSize(level) - 1);
      sp = ChildFor(sp, mmu::LevelIndex(req.va, level), piece >> base::kPageShift, role, flush);
      Touch(sp);
    }
  } else {
    gpte = r.entry[1];
  }

  // Building may have shadowed the written gfn itself (a table that maps
  // itself, e.g. through the recursive slot, written while unshadowed or out
  // of sync): the store must then be emulated too, or it lands unseen in a
  // table that is now shadowed from its old contents (KVM's
  // write_fault_to_shadow_pgtable; found by the differential test).
  if (write && !emulate && WriteProtected(gfn)) emulate = !TryUnsync(gfn);

  // The leaf. Writable without a trap only when the guest D bit is set (so
  // the first write to a clean page walks and sets it), the frame is
  // private, and the page is not a guest table we shadow.
  const bool host_writable = r.dirty && frame_writable && !WriteProtected(gfn);
  uint64_t e = HostAddr(page) | spte::kPresent;
  if (r.writable) e |= spte::kWritable;
  if (r.user) e |= spte::kUser;
  if (r.nx) e |= spte::kNoExecute;
  e |= (static_cast<uint64_t>(r.prot_key) << pte::kProtKeyShift) & spte::kProtKeyMask;
  if (host_writable) e |= spte::kHostWritable;
  const int index = mmu::LevelIndex(req.va, 1);
  const uint64_t before = sp->spt[index];
  // Report the translation before it exists (harvest exactness).
  mem.NoteAccess(gfn, write || host_writable);
  SetLeaf(sp, index, e, gpte, flush);

  if (emulate) {
    // Zap after building: the write may change an entry of the path just
    // built (a table mapped through itself). The write itself goes to the
    // frame through out->host_page, never through the soft TLB.
    EmulateTableWrite(gfn, static_cast<uint32_t>(req.va & base::kPageMask), flush);
    ApplyFlush(&vcpu, *flush);
    *flush = {};
    out->host_page = page;
    out->mmu_idx = req.user_access() ? SoftTlb::MmuIdx::kUser : SoftTlb::MmuIdx::kSupervisor;
    out->perms = {};
    out->page_size_bytes = mmu::BytesOf(r.page_size);
    return TranslateResult::kFixed;
  }
  counters_.Inc(before == e ? ShadowCounters::kPfSpurious : ShadowCounters::kPfFixed);
  counters_.Inc(ShadowCounters::kExits);
  ApplyFlush(&vcpu, *flush);
  *flush = {};
  FillFromSpte(vcpu, req, *sp, e, out);
  return TranslateResult::kFixed;
}

// ---------------------------------------------------------------------------
// Shadow pages.

Role ShadowStrategy::RoleFor(const mmu::PagingMode& mode, int level) const {
  Role role;
  role.level = static_cast<uint8_t>(level);
  role.access = Role::kAccAll;
  role.cr0_wp = mode.wp;
  role.smep = mode.smep;
  role.smap = mode.smap;
  role.nxe = mode.nxe;
  role.la57 = mode.levels == 5;
  return role;
}

ShadowPage* ShadowStrategy::Root(VcpuMmu& vcpu, Flush* flush) {
  VcpuRoots& roots = roots_[vcpu.index];
  const Role role = RoleFor(vcpu.mode, vcpu.mode.levels);
  const uint64_t gfn = (vcpu.cr3 & mmu::PhysAddrMask(vcpu.mode.maxphyaddr)) >> base::kPageShift;
  if (roots.root != nullptr && roots.root->gfn == gfn && roots.root->role == role) {
    return roots.root;
  }
  bool created;
  ShadowPage* root = GetPage(gfn, role, flush, &created);
  if (!created) counters_.Inc(ShadowCounters::kRootsReused);
  // The old root joins the recent ones (still pinned); the oldest beyond
  // the limit is unpinned and may be recycled.
  if (roots.root != nullptr) {
    roots.prev.insert(roots.prev.begin(), roots.root);
    roots.root = nullptr;
  }
  if (auto it = std::find(roots.prev.begin(), roots.prev.end(), root); it != roots.prev.end()) {
    roots.prev.erase(it);  // keeps its pin
  } else {
    ++root->root_count;
  }
  while (roots.prev.size() > options_.prev_roots) {
    --roots.prev.back()->root_count;
    roots.prev.pop_back();
  }
  roots.root = root;
  return root;
}

ShadowPage* ShadowStrategy::GetPage(uint64_t gfn, const Role& role, Flush* flush, bool* created) {
  if (auto it = pages_by_gfn_.find(gfn); it != pages_by_gfn_.end()) {
    for (ShadowPage* sp : it->second) {
      if (sp->role == role) {
        // An out-of-sync page is being linked into a path again (the guest
        // may have freed the table and reused its page as a new table,
        // rewriting it without traps): bring it in sync first, as KVM's
        // kvm_mmu_get_page does, or the new path would use stale sptes.
        if (sp->unsync) SyncPage(sp, flush);
        *created = false;
        return sp;
      }
    }
    if (!role.direct) {
      // The gfn becomes a table under a second role: its out-of-sync pages
      // are brought back first, so the gfn is write-protected consistently.
      const absl::InlinedVector<ShadowPage*, 1> pages = it->second;
      for (ShadowPage* sp : pages) {
        if (sp->unsync) SyncPage(sp, flush);
      }
    }
  }
  RecycleIfFull(flush);
  auto* sp = new ShadowPage;
  sp->gfn = gfn;
  sp->role = role;
  pages_by_gfn_[gfn].push_back(sp);
  ++num_pages_;
  sp->lru_next = lru_head_;
  if (lru_head_ != nullptr) lru_head_->lru_prev = sp;
  lru_head_ = sp;
  if (lru_tail_ == nullptr) lru_tail_ = sp;
  counters_.Inc(ShadowCounters::kMmuCacheMiss);
  if (!role.direct) WriteProtect(gfn, flush);
  *created = true;
  return sp;
}

void ShadowStrategy::Touch(ShadowPage* sp) {
  sp->fault_stamp = fault_stamp_;  // on the path of the fault in progress
  if (lru_head_ == sp) return;
  // Unlink, then push at the head.
  if (sp->lru_prev != nullptr) sp->lru_prev->lru_next = sp->lru_next;
  if (sp->lru_next != nullptr) sp->lru_next->lru_prev = sp->lru_prev;
  if (lru_tail_ == sp) lru_tail_ = sp->lru_prev;
  sp->lru_prev = nullptr;
  sp->lru_next = lru_head_;
  if (lru_head_ != nullptr) lru_head_->lru_prev = sp;
  lru_head_ = sp;
  if (lru_tail_ == nullptr) lru_tail_ = sp;
}

void ShadowStrategy::RecycleIfFull(Flush* flush) {
  while (num_pages_ >= options_.max_shadow_pages) {
    ShadowPage* victim = lru_tail_;
    // Never a pinned root, nor a page on the path the current fault is
    // building (it holds pointers to them).
    while (victim != nullptr && (victim->root_count > 0 || victim->fault_stamp == fault_stamp_)) {
      victim = victim->lru_prev;
    }
    if (victim == nullptr) return;  // all pinned roots: go beyond the bound
    counters_.Inc(ShadowCounters::kMmuRecycled);
    ZapPage(victim, flush);
  }
}

ShadowPage* ShadowStrategy::ChildFor(ShadowPage* parent, int index, uint64_t gfn, const Role& role,
                                     Flush* flush) {
  // An existing link is followed as is (the hardware part of a walk); only a
  // new link looks the page up, and so may resync it (GetPage).
  const uint64_t e = parent->spt[index];
  if (e & spte::kPresent) {
    ShadowPage* child = ShadowPage::Child(e);
    if (child->gfn == gfn && child->role == role) return child;
  }
  bool created;
  ShadowPage* child = GetPage(gfn, role, flush, &created);
  // Relinking an existing upper-level page brings back its whole subtree,
  // whose out-of-sync leaves missed the INVLPGs the guest issued while it
  // was unreachable from the root: resync them first (KVM syncs a page's
  // unsync children before it re-enters the guest). Found by the
  // differential test (a PML4 entry rewritten, INVLPG of a changed PTE, the
  // old PDPT linked again with the stale PTE).
  if (!created && child->role.level > 1 && !child->role.direct) {
    while (!unsync_pages_.empty()) SyncPage(unsync_pages_.back(), flush);
  }
  Link(parent, index, child, flush);
  return child;
}

void ShadowStrategy::Link(ShadowPage* parent, int index, ShadowPage* child, Flush* flush) {
  uint64_t& e = parent->spt[index];
  const uint64_t want = reinterpret_cast<uint64_t>(child) | spte::kNonLeaf;
  if (e == want) return;
  if (e & spte::kPresent) ZapSpte(parent, index, flush);
  e = want;
  ++parent->present;
  child->parents.push_back({parent, static_cast<uint16_t>(index)});
}

void ShadowStrategy::SetLeaf(ShadowPage* sp, int index, uint64_t e, uint64_t gpte, Flush* flush) {
  uint64_t& slot = sp->spt[index];
  if (slot & spte::kPresent) {
    if (slot == e && sp->gpte[index] == gpte) return;
    ZapSpte(sp, index, flush);
  }
  slot = e;
  sp->gpte[index] = gpte;
  ++sp->present;
  rmap_[sp->TargetGfn(index)].push_back(&slot);
}

void ShadowStrategy::ZapSpte(ShadowPage* sp, int index, Flush* flush) {
  uint64_t& e = sp->spt[index];
  if (!(e & spte::kPresent)) return;
  if (sp->role.level == 1) {
    const uint64_t gfn = sp->TargetGfn(index);
    auto it = rmap_.find(gfn);
    DCHECK(it != rmap_.end());
    if (it != rmap_.end()) {
      auto& v = it->second;
      if (auto pos = std::find(v.begin(), v.end(), &e); pos != v.end()) v.erase(pos);
      if (v.empty()) rmap_.erase(it);
    }
  } else {
    auto& parents = ShadowPage::Child(e)->parents;
    if (auto pos = std::find(parents.begin(), parents.end(),
                             ParentLink{sp, static_cast<uint16_t>(index)});
        pos != parents.end()) {
      parents.erase(pos);
    }
  }
  e = 0;
  --sp->present;
  flush->all = true;
}

void ShadowStrategy::ZapPage(ShadowPage* sp, Flush* flush) {
  counters_.Inc(ShadowCounters::kMmuShadowZapped);
  while (!sp->parents.empty()) {
    const ParentLink link = sp->parents.back();
    ZapSpte(link.parent, link.index, flush);
  }
  for (int i = 0; i < kEntries && sp->present > 0; ++i) ZapSpte(sp, i, flush);
  if (auto it = pages_by_gfn_.find(sp->gfn); it != pages_by_gfn_.end()) {
    auto& v = it->second;
    if (auto pos = std::find(v.begin(), v.end(), sp); pos != v.end()) v.erase(pos);
    if (v.empty()) pages_by_gfn_.erase(it);
  }
  if (sp->unsync) std::erase(unsync_pages_, sp);
  if (sp->root_count > 0) {
    for (VcpuRoots& roots : roots_) {
      if (roots.root == sp) roots.root = nullptr;
      std::erase(roots.prev, sp);
    }
  }
  if (sp->lru_prev != nullptr) sp->lru_prev->lru_next = sp->lru_next;
  if (sp->lru_next != nullptr) sp->lru_next->lru_prev = sp->lru_prev;
  if (lru_head_ == sp) lru_head_ = sp->lru_next;
  if (lru_tail_ == sp) lru_tail_ = sp->lru_prev;
  --num_pages_;
  delete sp;
  flush->all = true;
}

// ---------------------------------------------------------------------------
// Write protection, emulated writes and out-of-sync pages.

bool ShadowStrategy::WriteProtected(uint64_t gfn) const {
  auto it = pages_by_gfn_.find(gfn);
  if (it == pages_by_gfn_.end()) return false;
  for (const ShadowPage* sp : it->second) {
    if (!sp->role.direct && !sp->unsync) return true;
  }
  return false;
}

void ShadowStrategy::WriteProtect(uint64_t gfn, Flush* flush) {
  auto it = rmap_.find(gfn);
  if (it == rmap_.end()) return;
  for (uint64_t* e : it->second) {
    if (*e & spte::kHostWritable) {
      *e &= ~spte::kHostWritable;
      counters_.Inc(ShadowCounters::kWriteProtects);
      flush->all = true;
    }
  }
}

bool ShadowStrategy::TryUnsync(uint64_t gfn) {
  if (!options_.unsync) return false;
  auto it = pages_by_gfn_.find(gfn);
  if (it == pages_by_gfn_.end()) return true;
  // Only leaf tables may go out of sync: a stale upper-level spte would
  // hide a whole subtree's changes, and INVLPG resyncs only leaf entries.
  for (const ShadowPage* sp : it->second) {
    if (!sp->role.direct && sp->role.level != 1) return false;
  }
  for (ShadowPage* sp : it->second) {
    if (sp->role.direct || sp->unsync) continue;
    sp->unsync = true;
    unsync_pages_.push_back(sp);
    counters_.Inc(ShadowCounters::kMmuUnsync);
  }
  return true;
}

void ShadowStrategy::EmulateTableWrite(uint64_t gfn, uint32_t offset, Flush* flush) {
  counters_.Inc(ShadowCounters::kEmulatedWrites);
  counters_.Inc(ShadowCounters::kExits);
  auto it = pages_by_gfn_.find(gfn);
  if (it == pages_by_gfn_.end()) return;
  // The write is at most 8 bytes (the CPU splits page-crossing accesses), so
  // it touches the gpte at `offset` and perhaps the next one.
  const int first = static_cast<int>(offset / sizeof(uint64_t));
  const int last = std::min<int>(static_cast<int>((offset + 7) / sizeof(uint64_t)), kEntries - 1);
  const absl::InlinedVector<ShadowPage*, 1> pages = it->second;
  for (ShadowPage* sp : pages) {
    if (sp->role.direct) continue;
    for (int i = first; i <= last; ++i) {
      if (sp->spt[i] & spte::kPresent) {
        ZapSpte(sp, i, flush);
        counters_.Inc(ShadowCounters::kMmuPteWrite);
      }
    }
    // Written again and again without a shadow fault using it: the guest
    // is probably reusing the page for something else. Unshadow it.
    if (++sp->write_flooding >= options_.flood_threshold && sp->root_count == 0) {
      counters_.Inc(ShadowCounters::kMmuFlooded);
      ZapPage(sp, flush);
    }
  }
}

void ShadowStrategy::SyncPage(ShadowPage* sp, Flush* flush) {
  DCHECK(sp->unsync);
  counters_.Inc(ShadowCounters::kMmuResync);
  const uint64_t* table =
      reinterpret_cast<const uint64_t*>(memory().HostPage(sp->gfn, /*for_write=*/false));
  sp->unsync = false;
  std::erase(unsync_pages_, sp);
  // Keep an spte only if its gpte is exactly what it was built from: any
  // change (target, rights, A or D cleared, reserved bits) re-walks. A table
  // that is not resident now has nothing to compare with: every spte goes
  // (the page itself stays: a caller may be about to link it).
  for (int i = 0; i < kEntries; ++i) {
    if ((sp->spt[i] & spte::kPresent) && (table == nullptr || table[i] != sp->gpte[i])) {
      ZapSpte(sp, i, flush);
    }
  }
  WriteProtect(sp->gfn, flush);
}

void ShadowStrategy::SyncAll(VcpuMmu& vcpu, Flush* flush) {
  while (!unsync_pages_.empty()) SyncPage(unsync_pages_.back(), flush);
  AuditIfEnabled(vcpu, /*walk_tree=*/true);
}

void ShadowStrategy::AuditIfEnabled(VcpuMmu& vcpu, bool walk_tree) {
  if (!options_.audit_on_resync) return;
  audit_pending_ = false;
  counters_.Inc(ShadowCounters::kAudits);
  if (absl::Status s = AuditLocked(vcpu, walk_tree); !s.ok()) {
    counters_.Inc(ShadowCounters::kAuditFailures);
    if (audit_failure_.ok()) {
      LOG(ERROR) << s;
      audit_failure_ = s;
    }
  }
}

// ---------------------------------------------------------------------------
// Guest events.

void ShadowStrategy::OnCr3Write(VcpuMmu& vcpu, uint64_t /*old_cr3*/, bool /*no_flush*/) noexcept {
  Flush flush;
  {
    absl::MutexLock lock(&mu_);
    counters_.Inc(ShadowCounters::kCr3Writes);
    counters_.Inc(ShadowCounters::kExits);
    SyncAll(vcpu, &flush);
    if (vcpu.paging) Root(vcpu, &flush);
    ApplyFlush(&vcpu, flush);
  }
  // The soft TLB has no PCID tags: a new CR3 flushes it (as native).
  hw_models_.Cr3Write(vcpu);
}

void ShadowStrategy::OnModeChange(VcpuMmu& vcpu, bool /*old_paging*/,
                                  const mmu::PagingMode& /*old_mode*/) noexcept {
  // The role changes with the mode, so Root() finds or builds other tables.
  Flush flush;
  {
    absl::MutexLock lock(&mu_);
    counters_.Inc(ShadowCounters::kTlbFlush);
    counters_.Inc(ShadowCounters::kExits);
    SyncAll(vcpu, &flush);
    ApplyFlush(&vcpu, flush);
  }
  hw_models_.FlushAll(vcpu);
}

void ShadowStrategy::OnInvlpg(VcpuMmu& vcpu, uint64_t gva) noexcept {
  Flush flush;
  {
    absl::MutexLock lock(&mu_);
    counters_.Inc(ShadowCounters::kInvlpg);
    counters_.Inc(ShadowCounters::kExits);
    // Upper-level tables are always in sync (write-protected); an
    // out-of-sync leaf's entry for this gva is re-checked against its gpte.
    ShadowPage* sp = roots_[vcpu.index].root;
    int level = sp != nullptr ? sp->role.level : 0;
    while (sp != nullptr && level > 1) {
      const uint64_t e = sp->spt[mmu::LevelIndex(gva, level)];
      sp = (e & spte::kPresent) ? ShadowPage::Child(e) : nullptr;
      --level;
    }
    if (sp != nullptr && sp->unsync) {
      const int i = mmu::LevelIndex(gva, 1);
      const auto* table = reinterpret_cast<const uint64_t*>(memory().HostPage(sp->gfn, false));
      if ((sp->spt[i] & spte::kPresent) && (table == nullptr || table[i] != sp->gpte[i])) {
        ZapSpte(sp, i, &flush);
      }
    }
    // Only this vCPU's page, plus the others' TLBs if a shared spte went.
    if (flush.all && attached_ > 1) ApplyFlush(nullptr, flush);
  }
  // INVLPG is local: this vCPU's page is enough (an spte shared with other
  // vCPUs' stale entries is as stale as their TLBs may legally be).
  hw_models_.Invlpg(vcpu, gva);
}

void ShadowStrategy::OnTlbFlush(VcpuMmu& vcpu, mmu::TlbFlush scope) noexcept {
  Flush flush;
  {
    absl::MutexLock lock(&mu_);
    counters_.Inc(ShadowCounters::kTlbFlush);
    counters_.Inc(ShadowCounters::kExits);
    SyncAll(vcpu, &flush);
    ApplyFlush(&vcpu, flush);
  }
  hw_models_.Flush(vcpu, scope);
}

// ---------------------------------------------------------------------------
// FrameTable invalidation.

void ShadowStrategy::DropGfns(base::Gfn first, uint64_t count,
                              mmu::GfnChange /*change*/) noexcept {
  absl::MutexLock lock(&mu_);
  counters_.Inc(ShadowCounters::kInvalidations);
  counters_.Add(ShadowCounters::kInvalidatedGfns, count);
  audit_pending_ = options_.audit_on_resync;
  Flush flush;  // every vCPU's soft TLB is flushed by the base class
  auto drop = [&](uint64_t gfn) {
    auto it = rmap_.find(gfn);
    if (it == rmap_.end()) return;
    // kWriteProtect is zapped too, not just made read-only: sharing moves
    // the gfn to another frame (FrameTable::ShareReadOnly maps the shared
    // pool frame and punches the old one; the fake gives a separate copy),
    // so a read-only spte kept on the old frame would read freed memory
    // (found by the conformance suite's Share of a mapped gfn).
    // kBacking: the frame goes. kHarvest: the sptes' A/D state was reported
    // by NoteAccess when they were built; dropping them makes the next
    // access report again.
    const absl::InlinedVector<uint64_t*, 2> sptes = it->second;
    for (uint64_t* e : sptes) {
      ShadowPage* sp = ShadowPage::FromSpte(e);
      ZapSpte(sp, sp->IndexOf(e), &flush);
      counters_.Inc(ShadowCounters::kRmapZaps);
    }
  };
  const uint64_t begin = first.value();
  if (count <= rmap_.size()) {
    for (uint64_t gfn = begin; gfn < begin + count; ++gfn) drop(gfn);
  } else {
    std::vector<uint64_t> gfns;
    for (const auto& [gfn, sptes] : rmap_) {
      if (gfn >= begin && gfn - begin < count) gfns.push_back(gfn);
    }
    for (uint64_t gfn : gfns) drop(gfn);
  }
}

// ---------------------------------------------------------------------------
// Observability.

base::CounterSnapshot ShadowStrategy::Counters() const {
  base::CounterSnapshot out = counters_.Snapshot("shadow");
  if (hw_models_.enabled()) {
    base::CounterSnapshot hw = hw_models_.Totals().Snapshot("shadow.hw");
    out.insert(out.end(), hw.begin(), hw.end());
  }
  return out;
}

absl::Status ShadowStrategy::Audit(VcpuMmu& vcpu) {
  absl::MutexLock lock(&mu_);
  return AuditLocked(vcpu);
}

absl::Status ShadowStrategy::AuditLocked(VcpuMmu& vcpu, bool walk_tree) {
  // The reverse map names exactly the present leaf sptes, by target gfn.
  size_t rmap_entries = 0;
  for (const auto& [gfn, sptes] : rmap_) {
    for (const uint64_t* e : sptes) {
      const ShadowPage* sp = ShadowPage::FromSpte(e);
      ++rmap_entries;
      if (!(*e & spte::kPresent) || sp->role.level != 1 || sp->TargetGfn(sp->IndexOf(e)) != gfn) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "shadow audit: rmap of gfn 0x%x holds a stale spte (page gfn 0x%x index %u)", gfn,
            sp->gfn, sp->IndexOf(e)));
      }
    }
  }
  size_t leaves = 0;
  for (const auto& [gfn, pages] : pages_by_gfn_) {
    for (const ShadowPage* sp : pages) {
      if (sp->role.level == 1) leaves += sp->present;
    }
    // A shadowed, in-sync guest table is never writable without a trap.
    if (WriteProtected(gfn)) {
      if (auto it = rmap_.find(gfn); it != rmap_.end()) {
        for (const uint64_t* e : it->second) {
          if (*e & spte::kHostWritable) {
            return absl::FailedPreconditionError(absl::StrFormat(
                "shadow audit: guest table gfn 0x%x is shadowed but mapped host-writable", gfn));
          }
        }
      }
    }
  }
  if (leaves != rmap_entries) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "shadow audit: %u present leaf sptes but %u reverse-map entries", leaves, rmap_entries));
  }
  const ShadowPage* root = roots_[vcpu.index].root;
  if (!walk_tree || root == nullptr || !vcpu.paging) return absl::OkStatus();
  const uint64_t gfn = (vcpu.cr3 & mmu::PhysAddrMask(vcpu.mode.maxphyaddr)) >> base::kPageShift;
  if (root->gfn != gfn) return absl::OkStatus();  // rebuilt at the next miss
  return AuditTree(vcpu, root, 0, root->role.level);
}

absl::Status ShadowStrategy::AuditTree(VcpuMmu& vcpu, const ShadowPage* sp, uint64_t gva_base,
                                       int level) {
  mmu::GuestPhysMemory& mem = memory();
  const auto* table = reinterpret_cast<const uint64_t*>(mem.HostPage(sp->gfn, false));
  // A guest table that is not resident now (a FrameTable backing change
  // evicted it) cannot be read without MakeAvailable, which Audit must not
  // call. Backing changes keep a page's contents, and the shadow page was
  // built from them, so it stays valid: there is just nothing to compare
  // with here (found by the conformance suite's evictions of table gfns).
  if (table == nullptr && !sp->role.direct) return absl::OkStatus();
  for (int i = 0; i < kEntries; ++i) {
    const uint64_t e = sp->spt[i];
    if (!(e & spte::kPresent)) continue;
    const uint64_t gva = SignExtend(gva_base + (uint64_t{static_cast<uint32_t>(i)} << mmu::LevelShift(level)),
                                    vcpu.mode.levels);
    if (level > 1) {
      const ShadowPage* child = ShadowPage::Child(e);
      if (!sp->role.direct) {
        // A link mirrors its gpte exactly: upper tables are always in sync.
        const uint64_t g = table != nullptr ? table[i] : 0;
        const bool large = child->role.direct;
        const uint64_t want_gfn =
            mmu::EntryTarget(g, level, large, vcpu.mode.maxphyaddr) >> base::kPageShift;
        if (((g & pte::kPageSize) != 0) != large) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "shadow audit: level-%d spte for gva 0x%x disagrees with the gpte's PS bit (0x%x)",
              level, gva, g));
        }
        if (!(g & pte::kPresent) || child->gfn != want_gfn ||
            (!large && child->role.access != Combine(sp->role.access, g))) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "shadow audit: level-%d spte for gva 0x%x links gfn 0x%x but the gpte is 0x%x",
              level, gva, child->gfn, g));
        }
      }
      if (absl::Status s = AuditTree(vcpu, child, gva, level - 1); !s.ok()) return s;
      continue;
    }
    if (sp->unsync) continue;  // may legally be stale until the next resync
    AccessRequest req;
    req.va = gva;
    req.access = Access::kRead;
    req.rflags_ac = true;  // SMAP is checked at each access, not cached
    // So are protection keys (Allows, from the spte's key and the current
    // PKRU): a supervisor read of a user page whose key denies access is a
    // #PF(PK) although the spte is right for fetches (found by the
    // conformance suite with CR4.PKE set).
    mmu::PagingMode walk_mode = vcpu.mode;
    walk_mode.pke = false;
    WalkResult r;
    const WalkStatus status = mmu::DryRunWalk(walk_mode, vcpu.cr3, req, mem, &r);
    // A table on the path is not resident: as above, nothing to compare with.
    if (status == WalkStatus::kBadTableAddress) continue;
    const uint64_t gfn = sp->TargetGfn(i);
    uint8_t* host = mem.HostPage(gfn, false);
    const bool rights_ok = status == WalkStatus::kOk && ((e & spte::kWritable) != 0) == r.writable &&
                           ((e & spte::kUser) != 0) == r.user &&
                           ((e & spte::kNoExecute) != 0) == r.nx;
    if (!rights_ok || (r.gpa >> base::kPageShift) != gfn ||
        host != reinterpret_cast<uint8_t*>(e & spte::kAddrMask)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "shadow audit: spte 0x%x for gva 0x%x disagrees with the guest walk (%s, gpa 0x%x, "
          "W%d U%d XD%d) or the backing %p",
          e, gva, mmu::WalkStatusName(status), r.gpa, r.writable, r.user, r.nx,
          static_cast<void*>(host)));
    }
    if ((e & spte::kHostWritable) &&
        (!r.dirty || WriteProtected(gfn) || mem.HostPage(gfn, true) != host)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "shadow audit: spte for gva 0x%x is host-writable but the page is clean, shadowed or "
          "shared",
          gva));
    }
  }
  return absl::OkStatus();
}

}  // namespace shadow

#include "nested/nested_strategy.h"

#include <atomic>
#include <utility>

#include "absl/strings/str_format.h"
#include "base/check.h"
#include "mmu/ept.h"
#include "mmu/guest_phys_walk.h"
#include "mmu/walker.h"

namespace nested {

using mmu::Access;
using mmu::AccessRequest;
using mmu::SoftTlb;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
using mmu::VcpuMmu;
using mmu::WalkResult;
using mmu::WalkStatus;
namespace epte = mmu::epte;

namespace {

// With CR0.PG = 0, linear addresses are physical, 32 bits wide.
constexpr uint64_t kUnpagedMask = 0xffff'ffffull;
constexpr uint64_t kLargePages = 512;  // 4 KiB pages in a 2 MiB EPT leaf
constexpr uint64_t kWriteBack = static_cast<uint64_t>(mmu::EptMemType::kWriteBack)
                                << epte::kMemTypeShift;
// A table entry: the next table, every access allowed below.
constexpr uint64_t kTableBits = epte::kRead | epte::kWrite | epte::kExecute;
// EPT entries hold host virtual addresses, which fit in 47 bits.
constexpr uint64_t kAddrMask = 0x000f'ffff'ffff'f000ull;

uint64_t Leaf(const uint8_t* host, bool writable, bool large) {
  return reinterpret_cast<uint64_t>(host) | epte::kRead | epte::kExecute |
         (writable ? epte::kWrite : 0) | kWriteBack | (large ? epte::kPageSize : 0);
}

void Store(uint64_t* slot, uint64_t value) {
  std::atomic_ref<uint64_t>(*slot).store(value, std::memory_order_release);
}

bool IsLarge(uint64_t e) { return (e & epte::kPermMask) && (e & epte::kPageSize); }

bool Allows(const mmu::PagingMode& mode, const AccessRequest& req, Access access,
            const WalkResult& r) {
  AccessRequest probe = req;
  probe.access = access;
  return mmu::CheckAccessRights(mode, probe, r.writable, r.user, r.nx, r.entry[r.leaf_level]) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<NestedStrategy>> NestedStrategy::Create(mmu::GuestPhysMemory* mem,
                                                                        Options options) {
  if (mem == nullptr) return absl::InvalidArgumentError("nested strategy: no guest memory");
  if (options.max_vcpus == 0 || options.max_vcpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("nested strategy: max_vcpus %u not in 1..%u", options.max_vcpus, kMaxVcpus));
  }
  return std::unique_ptr<NestedStrategy>(new NestedStrategy(mem, options));
}

NestedStrategy::NestedStrategy(mmu::GuestPhysMemory* mem, const Options& options)
    : PagingStrategy(mem, options.max_vcpus),
      options_(options),
      vcpu_counters_(std::make_unique<NestedCounters[]>(options.max_vcpus)),
      hw_models_(options.max_vcpus,
                 mmu::HwModelConfig::TwoD().Bounding(options.hw_model_bounds_soft_tlb).Enabled(options.hw_model)) {
  absl::MutexLock lock(&mu_);
  const EptPage* root = NewPage();
  ept_.eptp = mmu::MakeEptp(reinterpret_cast<uint64_t>(root), kEptLevels, options.ept_ad);
  ept_.caps.maxphyaddr = 52;
}

NestedStrategy::~NestedStrategy() = default;

NestedStrategy::EptPage* NestedStrategy::NewPage() {
  pages_.push_back(std::make_unique<EptPage>());
  return pages_.back().get();
}

uint64_t NestedStrategy::large_mappings() const {
  absl::MutexLock lock(&mu_);
  return large_in_use_;
}

// ---------------------------------------------------------------------------
// The VMM's EPT tables.

uint64_t* NestedStrategy::Slot(uint64_t gpa, int level, bool create, bool split) {
  uint64_t* table = reinterpret_cast<uint64_t*>(ept_.root());
  for (int l = kEptLevels; l > level; --l) {
    uint64_t* slot = &table[mmu::LevelIndex(gpa, l)];
    uint64_t e = mmu::LoadEntry(slot);
    if (!(e & epte::kPermMask)) {
      if (!create) return nullptr;
      e = reinterpret_cast<uint64_t>(NewPage()) | kTableBits;
      Store(slot, e);
    } else if (IsLarge(e)) {
      if (!split) return nullptr;
      Split(slot);
      e = mmu::LoadEntry(slot);
    }
    table = reinterpret_cast<uint64_t*>(e & kAddrMask);
  }
  return &table[mmu::LevelIndex(gpa, level)];
}

void NestedStrategy::Split(uint64_t* pde) {
  const uint64_t large = mmu::LoadEntry(pde);
  EptPage* page = NewPage();
  const auto* base = reinterpret_cast<const uint8_t*>(large & kAddrMask);
  const bool writable = large & epte::kWrite;
  for (uint64_t i = 0; i < kLargePages; ++i) {
    page->e[i] = Leaf(base + i * base::kPageSize, writable, /*large=*/false);
  }
  // The pieces are complete before the PDE points to them.
  Store(pde, reinterpret_cast<uint64_t>(page) | kTableBits);
  shared_counters_.Inc(NestedCounters::kEptSplits);
  --large_in_use_;
}

bool NestedStrategy::Install(uint64_t gfn, bool for_write) {
  mmu::GuestPhysMemory& mem = memory();
  uint8_t* page = mem.HostPage(gfn, for_write);
  if (page == nullptr) return false;
  const bool writable = for_write || mem.HostPage(gfn, /*for_write=*/true) == page;

  if (options_.large_pages && writable) {
    // A 2 MiB entry needs all 512 frames resident, private and contiguous.
    // (The scan stops at the first frame that is not: cheap while a range
    // is still being populated.)
    const uint64_t first = gfn & ~(kLargePages - 1);
    uint8_t* base = mem.HostPage(first, true);
    // The host range must be 2 MiB-aligned too: a large leaf's address bits
    // 20:12 are reserved (SDM Table 29-4).
    bool contiguous = base != nullptr &&
                      (reinterpret_cast<uintptr_t>(base) & (kLargePages * base::kPageSize - 1)) == 0;
    for (uint64_t i = 1; contiguous && i < kLargePages; ++i) {
      contiguous = mem.HostPage(first + i, true) == base + i * base::kPageSize;
    }
    if (contiguous) {
      uint64_t* pde = Slot(first << base::kPageShift, 2, /*create=*/true, /*split=*/false);
      DCHECK(pde != nullptr);
      // Report every frame before a writable translation of it exists (with
      // EPT A/D the walks that use the entry report what they touch).
      if (!options_.ept_ad) {
        for (uint64_t i = 0; i < kLargePages; ++i) mem.NoteAccess(first + i, true);
      }
      // A 4 KiB table it replaces stays allocated (a concurrent walk may be
      // reading it) until the strategy goes.
      if (!IsLarge(mmu::LoadEntry(pde))) ++large_in_use_;
      Store(pde, Leaf(base, /*writable=*/true, /*large=*/true));
      shared_counters_.Inc(NestedCounters::kEptLargeInstalls);
      return true;
    }
  }
  uint64_t* pte = Slot(gfn << base::kPageShift, 1, /*create=*/true, /*split=*/true);
  if (!options_.ept_ad) mem.NoteAccess(gfn, writable);
  Store(pte, Leaf(page, writable, /*large=*/false));
  shared_counters_.Inc(NestedCounters::kEptInstalls);
  return true;
}

void NestedStrategy::ClearAccessDirty(uint64_t first, uint64_t count) {
  constexpr uint64_t kAd = epte::kAccessed | epte::kDirty;
  for (uint64_t gfn = first; gfn < first + count;) {
    const uint64_t gpa = gfn << base::kPageShift;
    uint64_t* pde = Slot(gpa, 2, /*create=*/false, /*split=*/false);
    uint64_t* leaf = nullptr;
    uint64_t step = 1;
    if (pde != nullptr && IsLarge(mmu::LoadEntry(pde))) {
      leaf = pde;  // one large leaf covers the rest of its 2 MiB
      step = kLargePages - (gfn & (kLargePages - 1));
    } else {
      leaf = Slot(gpa, 1, /*create=*/false, /*split=*/false);
    }
    // A walk may be setting the bits right now (a CAS in the walker): clear
    // them atomically; that walk then fails its CAS and walks again.
    if (leaf != nullptr && (mmu::LoadEntry(leaf) & kAd)) {
      std::atomic_ref<uint64_t>(*leaf).fetch_and(~kAd, std::memory_order_acq_rel);
      shared_counters_.Inc(NestedCounters::kEptAdClears);
    }
    gfn += step;
  }
}

uint64_t NestedStrategy::LeafEntry(uint64_t gpa) const noexcept {
  const uint64_t* table = reinterpret_cast<const uint64_t*>(ept_.root());
  for (int l = kEptLevels; l >= 1; --l) {
    const uint64_t e = mmu::LoadEntry(&table[mmu::LevelIndex(gpa, l)]);
    if (!(e & epte::kPermMask)) return 0;
    if (l == 1 || IsLarge(e)) return e;
    table = reinterpret_cast<const uint64_t*>(e & kAddrMask);
  }
  return 0;
}

void NestedStrategy::NoteWalkedTables(const WalkResult& r) noexcept {
  for (int l = r.leaf_level; l <= r.top_level; ++l) {
    memory().NoteAccess(r.entry_gpa[l] >> base::kPageShift, /*write=*/true);
  }
}

void NestedStrategy::Clear(uint64_t gfn) {
  uint64_t* pte = Slot(gfn << base::kPageShift, 1, /*create=*/false, /*split=*/true);
  if (pte == nullptr || !(mmu::LoadEntry(pte) & epte::kPermMask)) return;
  Store(pte, 0);
  shared_counters_.Inc(NestedCounters::kEptClears);
}

// ---------------------------------------------------------------------------
// The miss path.

uint64_t NestedStrategy::EmulatedWalkGpa(VcpuMmu& vcpu, const AccessRequest& req,
                                         uint64_t walked_gpa) noexcept {
  mmu::GuestPhysMemory& mem = memory();
  for (int attempt = 0; vcpu.paging && attempt < 4; ++attempt) {
    mmu::GuestPhysStage stage(mem);
    WalkResult emulated;
    const WalkStatus st = mmu::GuestWalk(vcpu.mode, vcpu.cr3, req, stage, &emulated);
    if (st == WalkStatus::kOk) return emulated.gpa;
    // A table page to make writable for its A/D bits (a shared frame).
    if (st != WalkStatus::kBadTableAddress || !stage.pending().valid) break;
    EnterQuiescence(vcpu);
    const mmu::BackingStatus b = mem.MakeAvailable(stage.pending().gfn, stage.pending().for_write);
    LeaveQuiescence(vcpu);
    if (b != mmu::BackingStatus::kReady) break;
  }
  return walked_gpa;
}

TranslateResult NestedStrategy::Translate(VcpuMmu& vcpu, const AccessRequest& req,
                                          TranslateOutcome* out) noexcept {
  DCHECK_LT(vcpu.index, max_vcpus());
  NestedCounters& c = vcpu_counters_[vcpu.index];
  c.Inc(NestedCounters::kTranslations);
  mmu::HwPagingModel* hw = hw_models_.At(vcpu.index);
  if (hw != nullptr) hw->Sync(flush_generation());
  mmu::GuestPhysMemory& mem = memory();
  HostView host;
  uint32_t refs = 0;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    *out = TranslateOutcome{};
    const uint64_t seq = mem.BackingSeq();
    if (seq & 1) break;  // a backing change is in progress (as native)

    // The hardware walk: both dimensions, or the EPT alone without paging.
    c.Inc(NestedCounters::kWalks);
    WalkResult r;
    WalkStatus status;
    if (vcpu.paging) {
      status = mmu::Walk2D(vcpu.mode, vcpu.cr3, ept_, req, host, &r);
    } else {
      r.Reset();
      r.gpa = req.va & kUnpagedMask;
      r.writable = r.user = true;
      r.dirty = true;
      r.leaf_level = r.top_level = 1;
      r.entry[1] = 0;
      mmu::EptWalk walk;
      mmu::EptTranslate(ept_, r.gpa, req.access, false, host, &walk);
      for (int l = walk.leaf_level; l <= walk.top_level && walk.top_level > 0; ++l) ++r.refs.ept[l];
      status = walk.status;
      // EPT A/D as the 2-D walk commits them (a changed entry: walk again).
      if (status == WalkStatus::kOk && ept_.ad_enabled() &&
          !mmu::CommitEptAccessDirty(walk, req.access == Access::kWrite)) {
        status = WalkStatus::kRetry;
      }
      r.hpa = walk.hpa;
      r.fault_gpa = r.gpa;
      r.ept_qualification = req.access == Access::kWrite ? mmu::ept_qual::kWrite : 0;
      r.ept_qualification |= mmu::ept_qual::kGlaValid | mmu::ept_qual::kGlaTranslated;
    }
    const uint32_t walk_refs = static_cast<uint32_t>(r.refs.Total());
    refs += walk_refs;
    c.Add(NestedCounters::kWalkRefs, walk_refs);
    c.Add(NestedCounters::kGuestRefs, static_cast<uint64_t>(r.refs.GuestTotal()));
    c.Add(NestedCounters::kEptRefs, static_cast<uint64_t>(r.refs.EptTotal()));
    static constexpr NestedCounters::Id kGuestLevel[] = {
        NestedCounters::kGuestRefsL1, NestedCounters::kGuestRefsL2, NestedCounters::kGuestRefsL3,
        NestedCounters::kGuestRefsL4};
    static constexpr NestedCounters::Id kEptLevel[] = {
        NestedCounters::kEptRefsL1, NestedCounters::kEptRefsL2, NestedCounters::kEptRefsL3,
        NestedCounters::kEptRefsL4};
    for (int l = 1; l <= 4; ++l) {
      c.Add(kGuestLevel[l - 1], r.refs.guest[l]);
      c.Add(kEptLevel[l - 1], r.refs.ept[l]);
    }

    switch (status) {
      case WalkStatus::kOk: {
        const uint64_t gfn = r.gpa >> base::kPageShift;
        auto* page = reinterpret_cast<uint8_t*>(r.hpa & ~base::kPageMask);
        const bool write = req.access == Access::kWrite;
        // With EPT A/D, writes are allowed (and reported) only once the
        // leaf is dirty; the walk just set D if this access is a write.
        const bool ept_dirty = !options_.ept_ad || write || (LeafEntry(r.gpa) & epte::kDirty);
        const bool frame_writable =
            ept_dirty && (write || mem.HostPage(gfn, /*for_write=*/true) == page);
        const SoftTlb::MmuIdx idx = req.user_access() ? SoftTlb::MmuIdx::kUser
                                                      : SoftTlb::MmuIdx::kSupervisor;
        SoftTlb::Perms perms;
        bool fill = true;
        if (vcpu.paging) {
          perms.read = Allows(vcpu.mode, req, Access::kRead, r);
          perms.write = r.dirty && frame_writable && Allows(vcpu.mode, req, Access::kWrite, r);
          perms.fetch = Allows(vcpu.mode, req, Access::kFetch, r);
          if (idx == SoftTlb::MmuIdx::kSupervisor && r.user && vcpu.mode.smap) {
            fill = false;  // depends on EFLAGS.AC and implicitness, as native
            c.Inc(NestedCounters::kUnfilledSmap);
          }
        } else {
          perms = {true, frame_writable, true};
        }
        mem.NoteAccess(gfn, write || perms.write);
        if (options_.ept_ad && vcpu.paging) NoteWalkedTables(r);
        out->host_page = page;
        out->gpa = r.gpa;
        out->mmu_idx = idx;
        out->perms = perms;
        out->page_size_bytes = vcpu.paging ? mmu::BytesOf(r.page_size) : base::kPageSize;
        out->walk_refs = refs;
        if (fill) {
          vcpu.tlb->Fill(idx, req.va, page, perms, out->page_size_bytes, vcpu.paging && r.global);
          vcpu.RecordFill(req.va, idx);
          out->filled = true;
        }
        // The backing changed under the walk: undo and walk again.
        std::atomic_thread_fence(std::memory_order_acquire);
        if (mem.BackingSeq() != seq) {
          if (out->filled) vcpu.tlb->FlushPage(req.va);
          continue;
        }
        if (fill) c.Inc(NestedCounters::kTlbFills);
        // The hardware's view of this miss (a pure model).
        if (hw != nullptr) {
          if (vcpu.paging) {
            hw->OnWalk2D(req, r, vcpu.tlb);
          } else {
            hw->OnUnpaged(req, r.refs.EptTotal(), vcpu.tlb);
          }
        }
        return TranslateResult::kFixed;
      }
      case WalkStatus::kPageFault:
        // Delivered by the "hardware" straight to the guest: no exit.
        out->vector = mmu::kVectorPf;
        out->error_code = r.error_code;
        out->cr2 = req.va;
        out->walk_refs = refs;
        c.Inc(NestedCounters::kGuestFaults);
        return TranslateResult::kInjectGuestFault;
      case WalkStatus::kNonCanonical:
        out->vector = mmu::kVectorGp;
        out->walk_refs = refs;
        c.Inc(NestedCounters::kGuestFaults);
        return TranslateResult::kInjectGuestFault;
      case WalkStatus::kEptViolation: {
        c.Inc(NestedCounters::kEptViolation);
        c.Inc(NestedCounters::kExits);
        const uint64_t gfn = r.fault_gpa >> base::kPageShift;
        const bool for_write = r.ept_qualification & mmu::ept_qual::kWrite;
        // Not the translated address: a guest paging-structure entry.
        const bool table = !(r.ept_qualification & mmu::ept_qual::kGlaTranslated);
        // The VMM's side of the exit: install the entry, making the gfn
        // available first if it must (populate, break a share), then let
        // the walk run again.
        // Only while no verb has started since the counter read `since`: a
        // verb's DropGfns may already have run (it takes mu_ after making
        // the counter odd), and an entry built now from the old backing
        // would outlive the change. Checked under mu_, so a verb that starts
        // later clears what this installs.
        auto install = [&](uint64_t since) {
          absl::MutexLock lock(&mu_);
          if (mem.BackingSeq() != since) return false;
          return Install(gfn, for_write);
        };
        if (install(seq)) continue;
        if (mem.BackingSeq() != seq) continue;  // the next attempt waits it out
        c.Inc(NestedCounters::kBackingRequests);
        EnterQuiescence(vcpu);
        const mmu::BackingStatus backing = mem.MakeAvailable(gfn, for_write);
        LeaveQuiescence(vcpu);
        if (backing == mmu::BackingStatus::kReady) {
          // Populate and install in one exit, as KVM does.
          const uint64_t now = mem.BackingSeq();
          if (!(now & 1)) install(now);  // else the next attempt waits
          continue;
        }
        out->walk_refs = refs;
        if (!table) {
          // The VMM goes on as KVM does after such an exit: its instruction
          // emulator walks the guest tables in software and so sets their
          // A/D bits, which the hardware walk stopped short of (A/D are
          // committed only after the final translation).
          out->gpa = EmulatedWalkGpa(vcpu, req, r.gpa);
        }
        if (backing == mmu::BackingStatus::kFailed) {
          c.Inc(NestedCounters::kHostErrors);
          return TranslateResult::kHostError;
        }
        if (table) {
          // A guest paging structure outside RAM: a not-present #PF, as native.
          out->vector = mmu::kVectorPf;
          out->error_code = mmu::BaseErrorCode(vcpu.mode, req);
          out->cr2 = req.va;
          c.Inc(NestedCounters::kGuestFaults);
          return TranslateResult::kInjectGuestFault;
        }
        c.Inc(NestedCounters::kMmio);
        return TranslateResult::kMmio;
      }
      case WalkStatus::kEptMisconfig:
        // Our own tables are wrong: a VMM bug, reported, never the guest's.
        c.Inc(NestedCounters::kEptMisconfig);
        c.Inc(NestedCounters::kExits);
        c.Inc(NestedCounters::kHostErrors);
        return TranslateResult::kHostError;
      default:  // kRetry: a racing writer; kBadTableAddress cannot occur in 2-D
        continue;
    }
  }
  c.Inc(NestedCounters::kRetries);
  *out = TranslateOutcome{};
  out->walk_refs = refs;
  return TranslateResult::kRetry;
}

// ---------------------------------------------------------------------------
// Guest events: with VPID none of them exits, and the EPT tables stay.

void NestedStrategy::OnCr3Write(VcpuMmu& vcpu, uint64_t /*old_cr3*/, bool /*no_flush*/) noexcept {
  vcpu_counters_[vcpu.index].Inc(NestedCounters::kCr3Writes);
  hw_models_.Cr3Write(vcpu);  // the soft TLB has no PCID tags (as native)
}

void NestedStrategy::OnModeChange(VcpuMmu& vcpu, bool /*old_paging*/,
                                  const mmu::PagingMode& /*old_mode*/) noexcept {
  vcpu_counters_[vcpu.index].Inc(NestedCounters::kTlbFlush);
  hw_models_.FlushAll(vcpu);
}

void NestedStrategy::OnInvlpg(VcpuMmu& vcpu, uint64_t gva) noexcept {
  vcpu_counters_[vcpu.index].Inc(NestedCounters::kInvlpg);
  hw_models_.Invlpg(vcpu, gva);
}

void NestedStrategy::OnTlbFlush(VcpuMmu& vcpu, mmu::TlbFlush scope) noexcept {
  vcpu_counters_[vcpu.index].Inc(NestedCounters::kTlbFlush);
  hw_models_.Flush(vcpu, scope);
}

// ---------------------------------------------------------------------------
// FrameTable invalidation: every change (a new frame, a shared frame, a
// harvest) clears the EPT leaves, so the next access installs them again
// and reports itself (NoteAccess); with EPT A/D a harvest clears only the
// leaves' A/D bits. The base class flushes the soft TLBs.

void NestedStrategy::DropGfns(base::Gfn first, uint64_t count, mmu::GfnChange change) noexcept {
  absl::MutexLock lock(&mu_);
  shared_counters_.Inc(NestedCounters::kInvalidations);
  shared_counters_.Add(NestedCounters::kInvalidatedGfns, count);
  if (options_.ept_ad && change == mmu::GfnChange::kHarvest) {
    // The backing stays: clearing the A/D bits is enough for the next
    // access (its soft-TLB entry is flushed by the base class) to walk and
    // report itself again, without an EPT violation.
    ClearAccessDirty(first.value(), count);
    return;
  }
  uint64_t gfn = first.value();
  const uint64_t end = gfn + count;
  while (gfn < end) {
    // A whole 2 MiB range in one large entry goes without a split.
    if ((gfn & (kLargePages - 1)) == 0 && end - gfn >= kLargePages) {
      uint64_t* pde = Slot(gfn << base::kPageShift, 2, /*create=*/false, /*split=*/false);
      if (pde != nullptr && IsLarge(mmu::LoadEntry(pde))) {
        Store(pde, 0);
        --large_in_use_;
        shared_counters_.Inc(NestedCounters::kEptClears);
        gfn += kLargePages;
        continue;
      }
      if (pde != nullptr && !(mmu::LoadEntry(pde) & epte::kPermMask)) {
        gfn += kLargePages;  // nothing mapped in this 2 MiB range
        continue;
      }
    }
    Clear(gfn);
    ++gfn;
  }
}

// ---------------------------------------------------------------------------
// Observability.

NestedCounters NestedStrategy::Totals() const {
  NestedCounters sum;
  for (uint32_t i = 0; i < max_vcpus(); ++i) sum.Accumulate(vcpu_counters_[i]);
  absl::MutexLock lock(&mu_);
  sum.Accumulate(shared_counters_);
  return sum;
}

base::CounterSnapshot NestedStrategy::Counters() const {
  base::CounterSnapshot out = Totals().Snapshot("nested");
  out.push_back({"nested.large_mappings", large_mappings()});
  if (hw_models_.enabled()) {
    base::CounterSnapshot hw = hw_models_.Totals().Snapshot("nested.hw");
    out.insert(out.end(), hw.begin(), hw.end());
  }
  return out;
}

absl::Status NestedStrategy::Audit(VcpuMmu& /*vcpu*/) {
  absl::MutexLock lock(&mu_);
  mmu::GuestPhysMemory& mem = memory();
  // Every present leaf maps its gfn's current frame, writable only when the
  // frame is private.
  auto check = [&](uint64_t gfn, const uint8_t* host, bool writable) -> absl::Status {
    const uint8_t* now = mem.HostPage(gfn, false);
    const uint8_t* now_w = mem.HostPage(gfn, true);
    if (now != host || (writable && now_w != host)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "nested audit: EPT maps gfn 0x%x to %p (%s) but the FrameTable has %p (writable %p)",
          gfn, static_cast<const void*>(host), writable ? "writable" : "read-only",
          static_cast<const void*>(now), static_cast<const void*>(now_w)));
    }
    return absl::OkStatus();
  };
  const auto* l4 = reinterpret_cast<const uint64_t*>(ept_.root());
  for (uint64_t i4 = 0; i4 < 512; ++i4) {
    if (!(l4[i4] & epte::kPermMask)) continue;
    const auto* l3 = reinterpret_cast<const uint64_t*>(l4[i4] & kAddrMask);
    for (uint64_t i3 = 0; i3 < 512; ++i3) {
      if (!(l3[i3] & epte::kPermMask)) continue;
      const auto* l2 = reinterpret_cast<const uint64_t*>(l3[i3] & kAddrMask);
      for (uint64_t i2 = 0; i2 < 512; ++i2) {
        const uint64_t e2 = l2[i2];
        if (!(e2 & epte::kPermMask)) continue;
        const uint64_t gfn2 = ((i4 << 27) | (i3 << 18) | (i2 << 9));
        if (IsLarge(e2)) {
          const auto* base = reinterpret_cast<const uint8_t*>(e2 & kAddrMask);
          for (uint64_t i = 0; i < kLargePages; ++i) {
            if (absl::Status s = check(gfn2 + i, base + i * base::kPageSize, e2 & epte::kWrite);
                !s.ok()) {
              return s;
            }
          }
          continue;
        }
        const auto* l1 = reinterpret_cast<const uint64_t*>(e2 & kAddrMask);
        for (uint64_t i1 = 0; i1 < 512; ++i1) {
          const uint64_t e1 = l1[i1];
          if (!(e1 & epte::kPermMask)) continue;
          if (absl::Status s = check(gfn2 + i1, reinterpret_cast<const uint8_t*>(e1 & kAddrMask),
                                     e1 & epte::kWrite);
              !s.ok()) {
            return s;
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace nested

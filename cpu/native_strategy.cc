#include "cpu/native_strategy.h"

#include <atomic>
#include <utility>

#include "absl/strings/str_format.h"
#include "base/check.h"
#include "mmu/guest_phys_walk.h"
#include "mmu/walker.h"

namespace cpu {

using mmu::Access;
using mmu::AccessRequest;
using mmu::SoftTlb;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
using mmu::VcpuMmu;
using mmu::WalkResult;
using mmu::WalkStatus;

namespace {

// With CR0.PG = 0, linear addresses are physical, 32 bits wide (SDM Vol. 3A
// §4.1.1, §3.3.2).
constexpr uint64_t kUnpagedMask = 0xffff'ffffull;

bool Allows(const mmu::PagingMode& mode, const AccessRequest& req, Access access,
            const WalkResult& r) {
  AccessRequest probe = req;
  probe.access = access;
  return mmu::CheckAccessRights(mode, probe, r.writable, r.user, r.nx,
                                r.entry[r.leaf_level]) == 0;
}

const char* IdxName(SoftTlb::MmuIdx idx) {
  return idx == SoftTlb::MmuIdx::kUser ? "user" : "supervisor";
}

}  // namespace

absl::StatusOr<std::unique_ptr<NativeStrategy>> NativeStrategy::Create(mmu::GuestPhysMemory* mem,
                                                                        Options options) {
  if (mem == nullptr) return absl::InvalidArgumentError("native strategy: no guest memory");
  if (options.max_vcpus == 0 || options.max_vcpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("native strategy: max_vcpus %u not in 1..%u", options.max_vcpus, kMaxVcpus));
  }
  return std::unique_ptr<NativeStrategy>(new NativeStrategy(mem, options));
}

NativeStrategy::NativeStrategy(mmu::GuestPhysMemory* mem, const Options& options)
    : PagingStrategy(mem, options.max_vcpus),
      vcpu_counters_(std::make_unique<NativeVcpuCounters[]>(options.max_vcpus)),
      hw_models_(options.max_vcpus,
                 mmu::HwModelConfig{}.Bounding(options.hw_model_bounds_soft_tlb).Enabled(options.hw_model)) {}

TranslateResult NativeStrategy::Translate(VcpuMmu& vcpu, const AccessRequest& req,
                                          TranslateOutcome* out) noexcept {
  DCHECK_LT(vcpu.index, max_vcpus());
  NativeVcpuCounters& c = vcpu_counters_[vcpu.index];
  c.Inc(NativeVcpuCounters::kTranslations);
  if (mmu::HwPagingModel* hw = hw_models_.At(vcpu.index)) hw->Sync(flush_generation());
  mmu::GuestPhysMemory& mem = memory();
  for (int attempt = 0; attempt < kMaxBackingAttempts; ++attempt) {
    *out = TranslateOutcome{};
    // A backing change is in progress: its listeners may be waiting for this
    // vCPU, and the old state may be read until it ends. Do nothing.
    const uint64_t seq = mem.BackingSeq();
    if (seq & 1) break;

    Need need;
    const TranslateResult result = TranslateOnce(vcpu, req, out, &need, c);

    // Validate against concurrent backing changes (a seqlock read): whatever
    // was read from guest memory or the backing state may be stale.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (mem.BackingSeq() != seq) {
      if (out->filled) vcpu.tlb->FlushPage(req.va);
      continue;
    }
    if (!need.valid) {
      if (result == TranslateResult::kRetry) break;
      return result;
    }

    // Resolve the backing outside the walk. MakeAvailable may run the
    // invalidation listeners on this very thread, so the vCPU is quiescent
    // meanwhile and applies what they posted before it walks again.
    c.Inc(NativeVcpuCounters::kBackingRequests);
    EnterQuiescence(vcpu);
    const mmu::BackingStatus status = mem.MakeAvailable(need.gfn, need.for_write);
    LeaveQuiescence(vcpu);
    switch (status) {
      case mmu::BackingStatus::kReady:
        continue;
      case mmu::BackingStatus::kNotRam:
        if (need.table) {
          // A guest paging structure outside RAM: KVM's walker reports a
          // not-present #PF (paging_tmpl.h, walk_addr_generic's error path).
          *out = TranslateOutcome{};
          out->vector = mmu::kVectorPf;
          out->error_code = mmu::BaseErrorCode(vcpu.mode, req);
          out->cr2 = req.va;
          c.Inc(NativeVcpuCounters::kGuestFaults);
          return TranslateResult::kInjectGuestFault;
        }
        // out->gpa was set by TranslateOnce. Never filled: every access to
        // it must reach the bus.
        c.Inc(NativeVcpuCounters::kMmio);
        return TranslateResult::kMmio;
      case mmu::BackingStatus::kFailed:
        c.Inc(NativeVcpuCounters::kHostErrors);
        return TranslateResult::kHostError;
    }
  }
  c.Inc(NativeVcpuCounters::kRetries);
  *out = TranslateOutcome{};
  return TranslateResult::kRetry;
}

TranslateResult NativeStrategy::TranslateOnce(VcpuMmu& vcpu, const AccessRequest& req,
                                              TranslateOutcome* out, Need* need,
                                              NativeVcpuCounters& c) noexcept {
  mmu::GuestPhysMemory& mem = memory();
  const bool write = req.access == Access::kWrite;
  const SoftTlb::MmuIdx idx = req.user_access() ? SoftTlb::MmuIdx::kUser
                                                : SoftTlb::MmuIdx::kSupervisor;
  uint64_t gpa;
  uint64_t page_size_bytes = base::kPageSize;
  WalkResult r;
  if (vcpu.paging) {
    c.Inc(NativeVcpuCounters::kWalks);
    mmu::GuestPhysStage stage(mem);
    const WalkStatus status = mmu::GuestWalk(vcpu.mode, vcpu.cr3, req, stage, &r);
    const int refs = r.refs.Total();
    out->walk_refs = static_cast<uint32_t>(refs);
    c.Add(NativeVcpuCounters::kWalkRefs, static_cast<uint64_t>(refs));
    switch (status) {
      case WalkStatus::kOk:
        break;
      case WalkStatus::kPageFault:
        out->vector = mmu::kVectorPf;
        out->error_code = r.error_code;
        out->cr2 = req.va;
        c.Inc(NativeVcpuCounters::kGuestFaults);
        return TranslateResult::kInjectGuestFault;
      case WalkStatus::kNonCanonical:
        out->vector = mmu::kVectorGp;
        out->error_code = 0;
        c.Inc(NativeVcpuCounters::kGuestFaults);
        return TranslateResult::kInjectGuestFault;
      case WalkStatus::kBadTableAddress:
        DCHECK(stage.pending().valid);
        *need = {true, stage.pending().gfn, stage.pending().for_write, /*table=*/true};
        return TranslateResult::kRetry;
      default:  // kRetry; the EPT statuses cannot occur in a 1-D walk
        return TranslateResult::kRetry;
    }
    gpa = r.gpa;
    page_size_bytes = mmu::BytesOf(r.page_size);
  } else {
    gpa = req.va & kUnpagedMask;
  }

  out->gpa = gpa;
  const uint64_t gfn = gpa >> base::kPageShift;
  // Guest input: gfn comes from a guest entry (or the guest's linear address
  // with paging off); HostPage bound-checks it.
  uint8_t* page = mem.HostPage(gfn, write);
  if (page == nullptr) {
    *need = {true, gfn, write, /*table=*/false};
    return TranslateResult::kRetry;
  }
  const bool frame_writable = write || mem.HostPage(gfn, /*for_write=*/true) == page;

  SoftTlb::Perms perms;
  bool fill = true;
  if (vcpu.paging) {
    perms.read = Allows(vcpu.mode, req, Access::kRead, r);
    perms.write = r.dirty && frame_writable && Allows(vcpu.mode, req, Access::kWrite, r);
    perms.fetch = Allows(vcpu.mode, req, Access::kFetch, r);
    if (idx == SoftTlb::MmuIdx::kSupervisor && r.user && vcpu.mode.smap) {
      fill = false;  // depends on EFLAGS.AC and implicitness: see the header
      c.Inc(NativeVcpuCounters::kUnfilledSmap);
    }
  } else {
    perms = {true, frame_writable, true};
  }
  DCHECK(req.access != Access::kRead || perms.read);
  DCHECK(req.access != Access::kWrite || perms.write);
  DCHECK(req.access != Access::kFetch || perms.fetch);

  // Report the translation before it exists (harvest exactness).
  mem.NoteAccess(gfn, write || perms.write);
  out->host_page = page;
  out->mmu_idx = idx;
  out->perms = perms;
  out->page_size_bytes = page_size_bytes;
  if (fill) {
    vcpu.tlb->Fill(idx, req.va, page, perms, page_size_bytes, vcpu.paging && r.global);
    vcpu.RecordFill(req.va, idx);
    out->filled = true;
    c.Inc(NativeVcpuCounters::kTlbFills);
  }
  // The hardware's view of this miss (a pure model, after the fill so that
  // the STLB evictions it mirrors never touch this page's entry).
  if (mmu::HwPagingModel* hw = hw_models_.At(vcpu.index)) {
    if (vcpu.paging) {
      hw->OnWalk1D(req, r, vcpu.tlb);
    } else {
      hw->OnUnpaged(req, 0, vcpu.tlb);
    }
  }
  return TranslateResult::kFixed;
}

void NativeStrategy::OnCr3Write(VcpuMmu& vcpu, uint64_t /*old_cr3*/, bool /*no_flush*/) noexcept {
  // The soft TLB holds only the current address space (no PCID tags), so a
  // new CR3 always flushes, globals included (allowed: SDM §4.10.4.1 lists
  // what must be invalidated, never what must be kept).
  vcpu_counters_[vcpu.index].Inc(NativeVcpuCounters::kCr3Writes);
  hw_models_.Cr3Write(vcpu);
}

void NativeStrategy::OnModeChange(VcpuMmu& vcpu, bool /*old_paging*/,
                                  const mmu::PagingMode& /*old_mode*/) noexcept {
  vcpu_counters_[vcpu.index].Inc(NativeVcpuCounters::kModeChanges);
  hw_models_.FlushAll(vcpu);
}

void NativeStrategy::OnInvlpg(VcpuMmu& vcpu, uint64_t gva) noexcept {
  vcpu_counters_[vcpu.index].Inc(NativeVcpuCounters::kInvlpg);
  hw_models_.Invlpg(vcpu, gva);
}

void NativeStrategy::OnTlbFlush(VcpuMmu& vcpu, mmu::TlbFlush scope) noexcept {
  vcpu_counters_[vcpu.index].Inc(NativeVcpuCounters::kGuestTlbFlushes);
  hw_models_.Flush(vcpu, scope);
}

void NativeStrategy::DropGfns(base::Gfn /*first*/, uint64_t count,
                              mmu::GfnChange /*change*/) noexcept {
  // No reverse map: the base class's generation bump flushes every vCPU's
  // whole soft TLB. Native holds no A/D bits of its own to report on a
  // harvest (they were reported by NoteAccess at fill time).
  shared_counters_.Inc(NativeSharedCounters::kInvalidations);
  shared_counters_.Add(NativeSharedCounters::kInvalidatedGfns, count);
}

base::CounterSnapshot NativeStrategy::Counters() const {
  NativeVcpuCounters sum;
  for (uint32_t i = 0; i < max_vcpus(); ++i) sum.Accumulate(vcpu_counters_[i]);
  base::CounterSnapshot out = sum.Snapshot("native");
  base::CounterSnapshot shared = shared_counters_.Snapshot("native");
  out.insert(out.end(), shared.begin(), shared.end());
  if (hw_models_.enabled()) {
    base::CounterSnapshot hw = hw_models_.Totals().Snapshot("native.hw");
    out.insert(out.end(), hw.begin(), hw.end());
  }
  return out;
}

absl::Status NativeStrategy::Audit(VcpuMmu& vcpu) {
  for (size_t i = 0; i < vcpu.recent_fill_count(); ++i) {
    if (absl::Status s = AuditFill(vcpu, vcpu.recent_fills[i]); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status NativeStrategy::AuditFill(VcpuMmu& vcpu, const VcpuMmu::Fill& fill) {
  mmu::GuestPhysMemory& mem = memory();
  const uint64_t gva = fill.gva_page;
  const Access kinds[] = {Access::kRead, Access::kWrite, Access::kFetch};
  for (Access access : kinds) {
    uint8_t* hit = nullptr;
    switch (access) {
      case Access::kRead: hit = vcpu.tlb->Lookup<Access::kRead>(fill.mmu_idx, gva, 1); break;
      case Access::kWrite: hit = vcpu.tlb->Lookup<Access::kWrite>(fill.mmu_idx, gva, 1); break;
      case Access::kFetch: hit = vcpu.tlb->Lookup<Access::kFetch>(fill.mmu_idx, gva, 1); break;
    }
    if (hit == nullptr) continue;
    const bool write = access == Access::kWrite;
    uint64_t gpa = gva & kUnpagedMask;
    if (vcpu.paging) {
      AccessRequest req;
      req.va = gva;
      req.access = access;
      req.cpl = fill.mmu_idx == SoftTlb::MmuIdx::kUser ? 3 : 0;
      req.rflags_ac = false;  // supervisor entries must be right whatever AC says
      WalkResult r;
      const WalkStatus status = mmu::DryRunWalk(vcpu.mode, vcpu.cr3, req, mem, &r);
      if (status != WalkStatus::kOk) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "native audit: soft TLB allows a %s of gva 0x%x at %s level but a fresh walk gives "
            "%s (error code 0x%x)",
            write ? "write" : access == Access::kRead ? "read" : "fetch", gva,
            IdxName(fill.mmu_idx), mmu::WalkStatusName(status), r.error_code));
      }
      gpa = r.gpa;
      if (write) {
        // A write hit skips the walk, so it is right only if D is already set.
        req.access = Access::kRead;
        WalkResult rr;
        if (mmu::DryRunWalk(vcpu.mode, vcpu.cr3, req, mem, &rr) != WalkStatus::kOk || !rr.dirty) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "native audit: soft TLB allows a write of gva 0x%x at %s level but the guest "
              "leaf entry is clean (D = 0)",
              gva, IdxName(fill.mmu_idx)));
        }
      }
    }
    uint8_t* expected = mem.HostPage(gpa >> base::kPageShift, write);
    if (expected != hit) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "native audit: soft TLB maps gva 0x%x (%s, %s level) to host %p but gpa 0x%x is "
          "backed by %p",
          gva, write ? "write" : access == Access::kRead ? "read" : "fetch",
          IdxName(fill.mmu_idx), static_cast<void*>(hit), gpa, static_cast<void*>(expected)));
    }
  }
  return absl::OkStatus();
}

}  // namespace cpu

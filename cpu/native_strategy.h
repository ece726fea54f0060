// NativeStrategy: the `native` paging strategy, the reference the others are
// measured and checked against.
//
// On a soft-TLB miss it walks the guest's own tables (mmu::GuestWalk with
// mmu::GuestPhysStage over the VM's GuestPhysMemory: guest-physical equals
// the host frame FrameTable gives), which decides access rights and sets A/D
// bits exactly as the SDM says (mmu/walker.h), and fills the soft TLB for the
// page at the access's MMU index (kUser for CPL-3 explicit accesses, else
// kSupervisor) with the permissions that keep later hits correct:
//   read   if a read at that privilege would pass the walk's checks;
//   write  if a write would pass AND the leaf's D bit is already set (so the
//          first write to a clean page misses, walks, and sets D) AND the
//          backing frame is writable (not a shared copy-on-write frame);
//   fetch  if a fetch would pass (XD, SMEP).
// Supervisor accesses to user-mode pages under CR4.SMAP are never filled:
// whether they may proceed depends on EFLAGS.AC and on the access being
// explicit, which the supervisor MMU index does not encode, so each such
// access misses and is walked with its real AC (TranslateOutcome::filled is
// false and the CPU uses host_page for that one access). Protection keys are
// folded in through the mode's PKRU; a WRPKRU is an OnModeChange.
// Large guest pages are filled one 4 KiB piece at a time with their size
// recorded, so INVLPG anywhere in them drops every piece (soft_tlb.h).
// A gpa that is not RAM gives kMmio and is never filled. A guest table in
// memory that is not RAM gives a not-present #PF, as KVM does
// (paging_tmpl.h treats an unmapped table gfn as a walk error).
//
// Events: MOV to CR3, CR0/CR4/EFER/PKRU changes and guest TLB flushes call
// SoftTlb::FlushAll; INVLPG calls FlushPage. The soft TLB is not PCID-tagged,
// so a CR3 write flushes even with the no-flush hint (flushing more than the
// SDM requires is always allowed). Native keeps no reverse map gfn -> gva, so
// a FrameTable invalidation of any gfn flushes the whole soft TLB of every
// vCPU (through the base class's generation protocol). That costs one
// re-walk per page in use after each balloon/dedup/swap batch; a reverse
// index would make it per page, at a cost on every fill.
//
// Audit re-checks the last VcpuMmu::kRecentFills fills: for every access kind
// that still hits, a dry-run walk (writes nothing) at that MMU index with
// EFLAGS.AC = 0 must allow it and give the same host page, and a write hit
// needs the leaf's D bit set.
//
// Every successful walk also feeds the vCPU's mmu::HwPagingModel (the STLB
// and paging-structure caches a real CPU would have; counters
// `native.hw.*`, docs/cost-model.md). It is a pure model: it never changes
// a translation.
//
// Thread safety: as PagingStrategy. Counters are per-vCPU blocks (written by
// that vCPU's thread) plus one block for invalidations (written under the
// FrameTable mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/counters.h"
#include "mmu/hw_paging_model.h"
#include "mmu/paging_strategy.h"

namespace cpu {

#define CPU_NATIVE_VCPU_COUNTERS(X)                                           \
  X(Translations, translations)        /* Translate calls */                  \
  X(Walks, walks)                      /* guest walks started */              \
  X(WalkRefs, walk_refs)               /* guest entries read by them */       \
  X(TlbFills, tlb_fills)                                                      \
  X(UnfilledSmap, unfilled_smap)       /* supervisor->user under SMAP */      \
  X(GuestFaults, guest_faults)         /* #PF and #GP injected */             \
  X(Mmio, mmio)                                                               \
  X(Retries, retries)                  /* kRetry returned */                  \
  X(BackingRequests, backing_requests) /* MakeAvailable calls */              \
  X(HostErrors, host_errors)                                                  \
  X(Cr3Writes, cr3_writes)                                                    \
  X(ModeChanges, mode_changes)                                                \
  X(Invlpg, invlpg)                                                           \
  X(GuestTlbFlushes, guest_tlb_flushes)
BASE_DEFINE_COUNTERS(NativeVcpuCounters, CPU_NATIVE_VCPU_COUNTERS);

#define CPU_NATIVE_SHARED_COUNTERS(X)                             \
  X(Invalidations, invalidations)       /* InvalidateGfns calls */ \
  X(InvalidatedGfns, invalidated_gfns)
BASE_DEFINE_COUNTERS(NativeSharedCounters, CPU_NATIVE_SHARED_COUNTERS);

class NativeStrategy final : public mmu::PagingStrategy {
 public:
  struct Options {
    uint32_t max_vcpus = 1;  // 1..kMaxVcpus
    // The hardware model keeps the soft TLB within its modelled STLB
    // (mmu::HwModelConfig::bound_soft_tlb): exact TLB counts for the cost
    // model, at the price of more soft-TLB misses.
    bool hw_model_bounds_soft_tlb = true;
    // False: no hardware model (mmu::HwModelConfig::enabled), so no ".hw"
    // counters and nothing for the cost model's TLB and walk classes.
    bool hw_model = true;
  };
  static constexpr uint32_t kMaxVcpus = 1024;
  // How often Translate resolves a missing backing and walks again before it
  // gives up with kRetry (the CPU re-executes the access).
  static constexpr int kMaxBackingAttempts = 4;

  // `mem` must outlive the strategy.
  static absl::StatusOr<std::unique_ptr<NativeStrategy>> Create(mmu::GuestPhysMemory* mem,
                                                                Options options);

  std::string_view name() const noexcept override { return "native"; }

  [[nodiscard]] mmu::TranslateResult Translate(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                                               mmu::TranslateOutcome* out) noexcept override;

  void OnCr3Write(mmu::VcpuMmu& vcpu, uint64_t old_cr3, bool no_flush) noexcept override;
  void OnModeChange(mmu::VcpuMmu& vcpu, bool old_paging,
                    const mmu::PagingMode& old_mode) noexcept override;
  void OnInvlpg(mmu::VcpuMmu& vcpu, uint64_t gva) noexcept override;
  void OnTlbFlush(mmu::VcpuMmu& vcpu, mmu::TlbFlush scope) noexcept override;

  base::CounterSnapshot Counters() const override;
  absl::Status Audit(mmu::VcpuMmu& vcpu) override;

  // One vCPU's counters (index < max_vcpus), and the shared block.
  const NativeVcpuCounters& vcpu_counters(uint32_t index) const { return vcpu_counters_[index]; }
  const NativeSharedCounters& shared_counters() const { return shared_counters_; }

 protected:
  void DropGfns(base::Gfn first, uint64_t count, mmu::GfnChange change) noexcept override;
  void OnAttach(mmu::VcpuMmu& vcpu) override { hw_models_.Ensure(vcpu.index); }

 private:
  // What one translation attempt could not resolve without MakeAvailable.
  struct Need {
    bool valid = false;
    uint64_t gfn = 0;
    bool for_write = false;
    bool table = false;  // a guest paging-structure page, not the data page
  };

  NativeStrategy(mmu::GuestPhysMemory* mem, const Options& options);

  mmu::TranslateResult TranslateOnce(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                                     mmu::TranslateOutcome* out, Need* need,
                                     NativeVcpuCounters& c) noexcept;
  absl::Status AuditFill(mmu::VcpuMmu& vcpu, const mmu::VcpuMmu::Fill& fill);

  std::unique_ptr<NativeVcpuCounters[]> vcpu_counters_;
  NativeSharedCounters shared_counters_;
  mmu::HwPagingModelSet hw_models_;
};

}  // namespace cpu

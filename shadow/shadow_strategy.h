// ShadowStrategy: the `shadow` paging strategy. The soft CPU's TLB misses
// walk shadow tables (gva -> host frame) that the VMM builds from the
// guest's own tables on demand and keeps in sync by write-protecting them.
// The design is KVM's shadow MMU (Documentation/virt/kvm/x86/mmu.rst) with
// its out-of-sync leaves; docs/shadow.md describes it in full. In short:
//
//   - Shadow pages are cached by (guest table gfn, role) and shared by every
//     path and every root that reaches the same guest table with the same
//     role, so a CR3 switch back to a known address space reuses its tables.
//     Each vCPU also pins its last few roots.
//   - A soft-TLB miss first walks the shadow tables (no exit on hardware).
//     Only when they cannot answer (an spte missing, or not allowing the
//     access) does it take a "shadow page fault": a real guest walk (which
//     sets the guest's A/D bits), then either the fault is injected into
//     the guest with the walk's error code and CR2 (pf_guest), or the
//     shadow entries along the path are built (pf_fixed).
//   - Every guest page that a shadow page shadows is write-protected: no
//     leaf spte maps it writable (a gfn -> spte reverse map keeps this
//     exact). A guest write to it traps and is emulated: the sptes built
//     from the gptes the write touches are zapped before the write lands and
//     rebuilt from the new value on next use (mmu_pte_write). A page written
//     again and again without being used as a table is unshadowed
//     (write flooding).
//   - Leaf tables may go out of sync (unsync) instead: writable, written by
//     the guest without traps, and resynced at INVLPG (that entry), CR3
//     write and guest TLB flush (all unsync pages). Between those points the
//     guest sees what a TLB may legally show it.
//   - FrameTable invalidations zap, through the reverse map, exactly the
//     sptes that map the gfns (kBacking, kHarvest) or clear their host-write
//     bit (kWriteProtect).
//   - The number of shadow pages is bounded; beyond the bound the least
//     recently used page that is not a pinned root is zapped (mmu_recycled).
//
// The vCPUs of a VM may run on one thread or several: every shadow structure
// is guarded by one mutex (KVM's mmu_lock), taken by Translate and the
// events of any vCPU and by DropGfns from the FrameTable's thread. Shadow
// changes that other vCPUs' soft TLBs must see are posted through the base
// class's flush generation.
//
// Allocation: the shadow-fault path allocates shadow pages and hash-map
// nodes (bounded by max_shadow_pages), as KVM tops up its page caches; the
// soft-TLB-miss path that the shadow tables answer allocates nothing.
//
// Thread safety: as mmu::PagingStrategy.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/counters.h"
#include "mmu/hw_paging_model.h"
#include "mmu/paging_strategy.h"
#include "mmu/walk_result.h"
#include "shadow/shadow_page.h"

namespace shadow {

// Named like KVM's debugfs counters where KVM has one. Each event that would
// be a VM exit on hardware is counted by reason: pf_fixed, pf_guest and
// pf_spurious (#PF exits), emulated_writes (write-protection #PF exits whose
// instruction is emulated), cr3_writes, invlpg; `exits` is their sum.
#define SHADOW_COUNTERS(X)                                                           \
  X(Translations, translations)        /* soft-TLB misses */                         \
  X(ShadowHits, shadow_hits)           /* answered by the shadow tables */           \
  X(PfFixed, pf_fixed)                 /* shadow fault fixed: sptes built */         \
  X(PfGuest, pf_guest)                 /* fault injected into the guest */           \
  X(PfSpurious, pf_spurious)           /* shadow fault with nothing to fix */        \
  X(EmulatedWrites, emulated_writes)   /* trapped writes to shadowed guest tables */ \
  X(MmuPteWrite, mmu_pte_write)        /* sptes zapped by those writes */            \
  X(MmuFlooded, mmu_flooded)           /* pages unshadowed by write flooding */      \
  X(MmuUnsync, mmu_unsync)             /* leaf pages made out of sync */             \
  X(MmuResync, mmu_resync)             /* out-of-sync pages brought back */          \
  X(MmuShadowZapped, mmu_shadow_zapped) /* shadow pages zapped, for any reason */    \
  X(MmuRecycled, mmu_recycled)         /* zapped to stay within the bound */         \
  X(MmuCacheMiss, mmu_cache_miss)      /* shadow pages created */                    \
  X(RootsReused, roots_reused)         /* CR3 writes that found their root */        \
  X(Cr3Writes, cr3_writes)                                                           \
  X(Invlpg, invlpg)                                                                  \
  X(TlbFlush, tlb_flush)               /* guest TLB flushes and mode changes */      \
  X(Exits, exits)                                                                    \
  X(TlbFills, tlb_fills)                                                             \
  X(Mmio, mmio)                                                                      \
  X(Retries, retries)                                                                \
  X(BackingRequests, backing_requests) /* MakeAvailable calls */                     \
  X(HostErrors, host_errors)                                                         \
  X(Invalidations, invalidations)      /* InvalidateGfns calls */                    \
  X(InvalidatedGfns, invalidated_gfns)                                               \
  X(RmapZaps, rmap_zaps)               /* sptes zapped by invalidations */           \
  X(WriteProtects, write_protects)     /* sptes made read-only to shadow a table */  \
  X(RemoteFlushes, remote_flushes)     /* flushes posted to other vCPUs */           \
  X(WalkRefs, walk_refs)               /* guest entries read by shadow faults */     \
  X(Audits, audits)                    /* with Options::audit_on_resync */           \
  X(AuditFailures, audit_failures)
BASE_DEFINE_COUNTERS(ShadowCounters, SHADOW_COUNTERS);

class ShadowStrategy final : public mmu::PagingStrategy {
 public:
  struct Options {
    uint32_t max_vcpus = 1;
    // The bound on shadow pages (12 KiB each). KVM's default is 2% of guest
    // RAM pages; 1024 covers a 64 MiB guest's tables several times over.
    uint32_t max_shadow_pages = 1024;
    // Recent roots each vCPU keeps pinned besides its current one.
    uint32_t prev_roots = 3;
    // Emulated writes to a shadowed table, without a shadow fault using it
    // in between, after which it is unshadowed (KVM uses 3).
    uint32_t flood_threshold = 3;
    // Let leaf tables go out of sync (KVM's default). Off: every write to a
    // shadowed table traps.
    bool unsync = true;
    // See NativeStrategy::Options::hw_model_bounds_soft_tlb and hw_model.
    bool hw_model_bounds_soft_tlb = true;
    bool hw_model = true;
    // Run Audit at every resync, and at the first miss or event after each
    // FrameTable invalidation; count failures and keep the first (tests and
    // --shadow_audit runs).
    bool audit_on_resync = false;
  };
  static constexpr uint32_t kMaxVcpus = 1024;
  static constexpr int kMaxBackingAttempts = 4;

  static absl::StatusOr<std::unique_ptr<ShadowStrategy>> Create(mmu::GuestPhysMemory* mem,
                                                                Options options);
  ~ShadowStrategy() override;

  std::string_view name() const noexcept override { return "shadow"; }

  [[nodiscard]] mmu::TranslateResult Translate(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                                               mmu::TranslateOutcome* out) noexcept override;
  void OnCr3Write(mmu::VcpuMmu& vcpu, uint64_t old_cr3, bool no_flush) noexcept override;
  void OnModeChange(mmu::VcpuMmu& vcpu, bool old_paging,
                    const mmu::PagingMode& old_mode) noexcept override;
  void OnInvlpg(mmu::VcpuMmu& vcpu, uint64_t gva) noexcept override;
  void OnTlbFlush(mmu::VcpuMmu& vcpu, mmu::TlbFlush scope) noexcept override;

  base::CounterSnapshot Counters() const override;
  // Checks every present spte reachable from the vCPU's current root against
  // a fresh walk of the guest tables (unsync pages excepted: they may
  // legally be stale), the write protection of every shadowed gfn, and the
  // reverse map.
  absl::Status Audit(mmu::VcpuMmu& vcpu) override;

  const ShadowCounters& counters() const { return counters_; }
  // Shadow pages in the cache now.
  uint32_t shadow_pages() const;
  // With Options::audit_on_resync: the first failed audit (OK if none).
  absl::Status audit_failure() const;

 protected:
  void DropGfns(base::Gfn first, uint64_t count, mmu::GfnChange change) noexcept override;
  void OnAttach(mmu::VcpuMmu& vcpu) override;
  void OnDetach(mmu::VcpuMmu& vcpu) override;

 private:
  struct Need {
    bool valid = false;
    uint64_t gfn = 0;
    bool for_write = false;
    bool table = false;
  };
  // Per-vCPU shadow state: its root (nullptr: look it up at the next miss)
  // and the roots it pinned before.
  struct VcpuRoots {
    ShadowPage* root = nullptr;
    std::vector<ShadowPage*> prev;
  };
  // Set when a shadow change may have left soft-TLB entries stale: the
  // caller's soft TLB is flushed, and the other vCPUs' through the flush
  // generation. An spte does not record which gvas use it (one guest table
  // can be reached through many), and a flush is O(1), so a change flushes
  // whole TLBs; INVLPG, the common precise case, flushes its page.
  struct Flush {
    bool all = false;
  };

  ShadowStrategy(mmu::GuestPhysMemory* mem, const Options& options);

  mmu::TranslateResult TranslateLocked(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                                       mmu::TranslateOutcome* out, Need* need, Flush* flush)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The soft-TLB miss answered from the shadow tables, or nullptr.
  static uint64_t* ShadowWalk(ShadowPage* root, uint64_t va);
  mmu::TranslateResult ShadowFault(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                                   mmu::TranslateOutcome* out, Need* need, Flush* flush)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fills the soft TLB (and `out`) from a present leaf spte.
  void FillFromSpte(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req, const ShadowPage& sp,
                    uint64_t spte, mmu::TranslateOutcome* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ShadowPage* Root(mmu::VcpuMmu& vcpu, Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Role RoleFor(const mmu::PagingMode& mode, int level) const;
  ShadowPage* GetPage(uint64_t gfn, const Role& role, Flush* flush, bool* created)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The child page for entry `index` of `parent`: the linked one if it
  // shadows `gfn` with `role`, else found or created and linked.
  ShadowPage* ChildFor(ShadowPage* parent, int index, uint64_t gfn, const Role& role, Flush* flush)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Link(ShadowPage* parent, int index, ShadowPage* child, Flush* flush)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetLeaf(ShadowPage* sp, int index, uint64_t spte, uint64_t gpte, Flush* flush)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Clears one spte (leaf or link) and queues the soft-TLB flush it needs.
  void ZapSpte(ShadowPage* sp, int index, Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ZapPage(ShadowPage* sp, Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecycleIfFull(Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(ShadowPage* sp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Write protection of guest tables.
  bool WriteProtected(uint64_t gfn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteProtect(uint64_t gfn, Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A guest write to shadowed table page `gfn` at byte `offset`: unsync its
  // pages (true), or zap the sptes of the gptes it touches (false: emulate).
  bool TryUnsync(uint64_t gfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmulateTableWrite(uint64_t gfn, uint32_t offset, Flush* flush)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SyncPage(ShadowPage* sp, Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SyncAll(mmu::VcpuMmu& vcpu, Flush* flush) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseRoots(VcpuRoots& roots) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With Options::audit_on_resync: audits the vCPU's tables, counting and
  // logging a failure and keeping the first.
  // `walk_tree`: also every spte against a guest walk (else the maps only).
  void AuditIfEnabled(mmu::VcpuMmu& vcpu, bool walk_tree) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Applies `flush` to the caller's soft TLB, and posts it to the other
  // vCPUs when more than one is attached.
  void ApplyFlush(mmu::VcpuMmu* vcpu, const Flush& flush) noexcept ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status AuditLocked(mmu::VcpuMmu& vcpu, bool walk_tree = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AuditTree(mmu::VcpuMmu& vcpu, const ShadowPage* sp, uint64_t gva_base,
                         int level)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  // Shadow pages by gfn (few roles per gfn: a linear scan).
  absl::flat_hash_map<uint64_t, absl::InlinedVector<ShadowPage*, 1>> pages_by_gfn_
      ABSL_GUARDED_BY(mu_);
  // gfn -> the leaf sptes that map it.
  absl::flat_hash_map<uint64_t, absl::InlinedVector<uint64_t*, 2>> rmap_ ABSL_GUARDED_BY(mu_);
  std::vector<ShadowPage*> unsync_pages_ ABSL_GUARDED_BY(mu_);
  ShadowPage* lru_head_ ABSL_GUARDED_BY(mu_) = nullptr;
  ShadowPage* lru_tail_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint32_t num_pages_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t fault_stamp_ ABSL_GUARDED_BY(mu_) = 0;  // shadow faults so far
  std::vector<VcpuRoots> roots_ ABSL_GUARDED_BY(mu_);
  uint32_t attached_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status audit_failure_ ABSL_GUARDED_BY(mu_);
  bool audit_pending_ ABSL_GUARDED_BY(mu_) = false;  // an invalidation since the last audit
  ShadowCounters counters_;  // written under mu_
  // The STLB and paging-structure caches a real CPU would have while it
  // walks the shadow tables (counters `shadow.hw.*`, docs/cost-model.md):
  // a pure model, fed on each fill and flushed with the soft TLB.
  mmu::HwPagingModelSet hw_models_;
};

}  // namespace shadow

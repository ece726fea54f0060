// NestedStrategy: the `nested` paging strategy, EPT-style nested paging on
// the soft backend (docs/nested.md). The guest owns its page tables and the
// VMM owns a second stage, EPT tables mapping guest-physical to host frames,
// which it builds lazily on EPT violations. A soft-TLB miss is a real 2-D
// walk (mmu::Walk2D: every guest table reference and the final gpa through
// the EPT tables), as the hardware page walker does under VT-x.
//
//   - Guest page faults are the walk's own and are injected directly, with
//     no exit (guest_faults). So are guest CR3 writes, INVLPGs and TLB
//     flushes: with VPID they never leave the guest.
//   - An EPT violation is an exit (ept_violation): the VMM makes the gfn
//     available (FrameTable::MakeAvailable: populate, break a share) and
//     installs the EPT entry, a 2 MiB one when the 512 frames of the aligned
//     range are resident, private and contiguous in host memory
//     (Options::large_pages), else 4 KiB. A gfn that is not RAM is MMIO (or a
//     not-present #PF for a guest table, as native does).
//   - FrameTable invalidations clear the gfns' EPT entries; a 2 MiB entry
//     that covers a gfn is split first (ept_splits), so dedup, swap and
//     balloon work at 4 KiB granularity. Every change is reported with
//     NoteAccess when its EPT entry is installed, so harvesting is exact.
//   - With EPT accessed/dirty flags (Options::ept_ad, EPTP bit 6) the walk
//     sets A in every EPT entry it uses and D in the leaf of a write, as the
//     hardware does (SDM §29.3.5), and those bits feed harvesting instead:
//     each walk reports its gfns (NoteAccess, dirty only once the leaf is
//     EPT-dirty; guest table pages count as written, since the walk may set
//     their A/D bits), a soft-TLB fill is writable only over an EPT-dirty
//     leaf, and a harvest clears the leaves' A/D bits (ept_ad_clears)
//     instead of the leaves. Re-observing a harvested page then costs a
//     walk, not an EPT violation, and a page mapped writable but only read
//     is not reported dirty.
//   - The EPT tables' "host-physical" addresses are host virtual addresses:
//     the frames' addresses in the FramePool mapping, and the VMM's own
//     4 KiB-aligned table pages. Table pages are never freed while the
//     strategy lives, so a walk on another thread never reads freed memory.
//
// Every successful walk also feeds the vCPU's mmu::HwPagingModel with the
// EPT dimension: the combined STLB, the guest and EPT paging-structure
// caches and the nested (guest-physical) TLB a real CPU would consult
// (counters `nested.hw.*`, docs/cost-model.md). A pure model: the walk
// itself stays the full 2-D walk, counted in walk_refs as before.
//
// Thread safety: as mmu::PagingStrategy. Walks read the EPT tables without a
// lock (entries are loaded atomically); installs, clears and splits are
// serialised by one mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/counters.h"
#include "mmu/ept_walker.h"
#include "mmu/hw_paging_model.h"
#include "mmu/paging_strategy.h"

namespace nested {

// Each event that would be a VM exit on hardware is counted by reason
// (ept_violation, ept_misconfig) and in `exits`.
#define NESTED_COUNTERS(X)                                                             \
  X(Translations, translations)        /* soft-TLB misses */                           \
  X(Walks, walks)                      /* 2-D walks started */                         \
  X(GuestFaults, guest_faults)         /* #PF/#GP injected without an exit */          \
  X(EptViolation, ept_violation)                                                       \
  X(EptMisconfig, ept_misconfig)                                                       \
  X(Exits, exits)                                                                      \
  X(EptInstalls, ept_installs)         /* 4 KiB EPT entries installed */               \
  X(EptLargeInstalls, ept_large_installs) /* 2 MiB EPT entries installed */            \
  X(EptSplits, ept_splits)             /* 2 MiB entries split to 4 KiB */              \
  X(EptClears, ept_clears)             /* EPT leaves cleared by invalidations */       \
  X(EptAdClears, ept_ad_clears)        /* leaves whose A/D bits a harvest cleared */   \
  X(TlbFills, tlb_fills)                                                               \
  X(UnfilledSmap, unfilled_smap)                                                       \
  X(Mmio, mmio)                                                                        \
  X(Retries, retries)                                                                  \
  X(BackingRequests, backing_requests) /* MakeAvailable calls */                       \
  X(HostErrors, host_errors)                                                           \
  X(Cr3Writes, cr3_writes)             /* no exit with VPID */                         \
  X(Invlpg, invlpg)                                                                    \
  X(TlbFlush, tlb_flush)                                                               \
  X(Invalidations, invalidations)                                                      \
  X(InvalidatedGfns, invalidated_gfns)                                                 \
  X(WalkRefs, walk_refs)               /* every reference of every walk */             \
  X(GuestRefs, guest_refs)             /* guest-table entries read */                  \
  X(EptRefs, ept_refs)                 /* EPT entries read */                          \
  X(GuestRefsL1, guest_refs_l1)                                                        \
  X(GuestRefsL2, guest_refs_l2)                                                        \
  X(GuestRefsL3, guest_refs_l3)                                                        \
  X(GuestRefsL4, guest_refs_l4)                                                        \
  X(EptRefsL1, ept_refs_l1)                                                            \
  X(EptRefsL2, ept_refs_l2)                                                            \
  X(EptRefsL3, ept_refs_l3)                                                            \
  X(EptRefsL4, ept_refs_l4)
BASE_DEFINE_COUNTERS(NestedCounters, NESTED_COUNTERS);

class NestedStrategy final : public mmu::PagingStrategy {
 public:
  struct Options {
    uint32_t max_vcpus = 1;
    // Install 2 MiB EPT entries where the backing allows.
    bool large_pages = true;
    // See NativeStrategy::Options::hw_model_bounds_soft_tlb and hw_model.
    bool hw_model_bounds_soft_tlb = true;
    bool hw_model = true;
    // EPT accessed/dirty flags (EPTP bit 6) drive harvesting (above).
    bool ept_ad = false;
  };
  static constexpr uint32_t kMaxVcpus = 1024;
  // Walks one translation may take: each EPT violation installs one entry,
  // and a 4-level walk touches at most 5 gfns (4 tables and the data page).
  static constexpr int kMaxAttempts = 16;
  static constexpr int kEptLevels = 4;

  static absl::StatusOr<std::unique_ptr<NestedStrategy>> Create(mmu::GuestPhysMemory* mem,
                                                                Options options);
  ~NestedStrategy() override;

  std::string_view name() const noexcept override { return "nested"; }

  [[nodiscard]] mmu::TranslateResult Translate(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                                               mmu::TranslateOutcome* out) noexcept override;
  void OnCr3Write(mmu::VcpuMmu& vcpu, uint64_t old_cr3, bool no_flush) noexcept override;
  void OnModeChange(mmu::VcpuMmu& vcpu, bool old_paging,
                    const mmu::PagingMode& old_mode) noexcept override;
  void OnInvlpg(mmu::VcpuMmu& vcpu, uint64_t gva) noexcept override;
  void OnTlbFlush(mmu::VcpuMmu& vcpu, mmu::TlbFlush scope) noexcept override;

  base::CounterSnapshot Counters() const override;
  // Checks every present EPT leaf against the FrameTable (the frame it maps
  // is the gfn's current one; writable only if the frame is private), and
  // the vCPU's recent soft-TLB fills against a fresh 2-D walk.
  absl::Status Audit(mmu::VcpuMmu& vcpu) override;

  // Every counter summed (vCPU blocks and the shared one).
  NestedCounters Totals() const;
  // 2 MiB EPT entries present now.
  uint64_t large_mappings() const;
  const mmu::EptContext& ept() const { return ept_; }

 protected:
  void DropGfns(base::Gfn first, uint64_t count, mmu::GfnChange change) noexcept override;
  void OnAttach(mmu::VcpuMmu& vcpu) override { hw_models_.Ensure(vcpu.index); }

 private:
  struct alignas(4096) EptPage {
    uint64_t e[512] = {};
  };
  // The walkers' view of host memory: EPT "host-physical" addresses are host
  // virtual addresses.
  struct HostView {
    uint64_t* PageAt(uint64_t pa) noexcept { return reinterpret_cast<uint64_t*>(pa); }
  };

  NestedStrategy(mmu::GuestPhysMemory* mem, const Options& options);

  // Installs the EPT entry that maps `gfn` (the violation's), 2 MiB when it
  // can. False when the gfn is not usable now (the caller asks MakeAvailable).
  bool Install(uint64_t gfn, bool for_write) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The EPT entry slot at `level` for `gpa`: tables above it are created
  // when missing if `create`, and a 2 MiB leaf in the way is split if
  // `split`; nullptr when the path ends before `level`.
  uint64_t* Slot(uint64_t gpa, int level, bool create, bool split) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Split(uint64_t* pde) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Clear(uint64_t gfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Harvest with EPT A/D: clears the A/D bits of the leaves mapping
  // [first, first + count), 2 MiB leaves included (no split).
  void ClearAccessDirty(uint64_t first, uint64_t count) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The EPT leaf mapping `gpa` as it is now (lock-free; 0 if none).
  uint64_t LeafEntry(uint64_t gpa) const noexcept;
  // EPT A/D: reports a successful walk's guest table pages, as written.
  void NoteWalkedTables(const mmu::WalkResult& r) noexcept;
  // The gpa of `req` by a software walk of the guest tables that sets their
  // A/D bits (the VMM's emulation of an access it cannot map); `walked_gpa`
  // if that walk cannot complete.
  uint64_t EmulatedWalkGpa(mmu::VcpuMmu& vcpu, const mmu::AccessRequest& req,
                           uint64_t walked_gpa) noexcept;
  EptPage* NewPage() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<EptPage>> pages_ ABSL_GUARDED_BY(mu_);
  uint64_t large_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  mmu::EptContext ept_;
  // Counted by each vCPU's thread in its own block; installs, splits and
  // clears under mu_ in the shared one.
  std::unique_ptr<NestedCounters[]> vcpu_counters_;
  NestedCounters shared_counters_ ABSL_GUARDED_BY(mu_);
  mmu::HwPagingModelSet hw_models_;
};

}  // namespace nested

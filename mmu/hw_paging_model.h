// HwPagingModel: what the hardware's translation caches would have done on
// one vCPU's TLB misses, for the cost model (docs/cost-model.md).
//
// The soft CPU translates through its own soft TLB (soft_tlb.h), which is a
// software structure far larger than a hardware TLB (16384 entries per MMU
// index against a Skylake STLB's 1536). Its misses are where a paging
// strategy walks, and where this model runs: a pure model, it never changes
// a translation, a permission or an A/D bit. It owns, per vCPU:
//   - a linear/combined STLB (TlbModel, TlbConfig::SkylakeStlb());
//   - the guest-dimension paging-structure caches (PageWalkCache);
//   - for a 2-D walk, the EPT-dimension paging-structure caches (a second
//     PageWalkCache, tag = EP4TA, address = gpa) and a guest-physical
//     ("nested") TLB (TlbModel, TlbConfig::GuestPhysical()), which AMD calls
//     the NTLB and Intel the guest-physical mappings (SDM Vol. 3C §29.4.1).
// From the strategy's real walk (its levels, its entries' addresses and, for
// 2-D, the EPT references spent on each guest table) it counts what the
// hardware would do: an STLB hit (no walk), or a miss followed by a walk
// that skips the levels the PWCs hold, with the nested TLB and the EPT PWC
// skipping EPT references the same way. The counters (`HwModelCounters`)
// are what the cost model charges for the tlb and walk_refs classes.
//
// Hardware-TLB misses the soft TLB hides. An access that hits the soft TLB
// never reaches the model, so on its own the model would see only the
// misses of a 16384-entry direct-mapped TLB. To keep the soft TLB a subset
// of the modelled STLB, the model evicts from the soft TLB every 4 KiB page
// the STLB model evicts (`soft_tlb_evictions`): a page the hardware would
// miss on then misses the soft TLB too, and the model sees it. Soft-TLB hits
// do not refresh the model's LRU order, so replacement is insertion-ordered
// (FIFO-like) rather than LRU: an over-count for hot pages that share a set
// with a stream, exact for streams (docs/cost-model.md, "How each count is
// obtained"). Evictions of 2 MiB and 1 GiB entries are not mirrored (the soft
// TLB holds large pages as 4 KiB pieces, and flushing one flushes its MMU
// index); such pages stay in the soft TLB and are an under-count.
//
// Tags: one VPID per vCPU (1), PCID 0 (the soft TLB has no PCID tags, so a
// CR3 write flushes non-global entries whatever the no-flush hint says),
// EP4TA 1 for combined and guest-physical mappings.
//
// Cost: only on soft-TLB misses: one STLB lookup (12 ways) and, on a model
// miss, one PWC lookup per dimension and translated gpa (a few tens of
// compares each). No allocation after construction; every method noexcept.
//
// Thread safety: none. A model belongs to one vCPU and is used only from
// that vCPU's thread. Counters may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "base/counters.h"
#include "mmu/page_walk_cache.h"
#include "mmu/paging_mode.h"
#include "mmu/paging_strategy.h"
#include "mmu/soft_tlb.h"
#include "mmu/tlb_model.h"
#include "mmu/walk_result.h"

namespace mmu {

// Levels: l1 = PTE (4 KiB leaf) ... l4 = PML4E, l5 = PML5E; EPT levels the
// same way. refs_* are the references the hardware would make after the
// PWC and nested-TLB skips; pwc_hits_lN counts lookups whose deepest hit was
// the level-N cache.
#define MMU_HW_MODEL_COUNTERS(X)                                            \
  X(Lookups, lookups)                 /* soft-TLB misses seen */            \
  X(TlbHits, tlb_hits)                /* STLB hits: no walk */              \
  X(TlbMisses, tlb_misses)            /* STLB misses: a walk */             \
  X(PwcHitsL2, pwc_hits_l2)                                                 \
  X(PwcHitsL3, pwc_hits_l3)                                                 \
  X(PwcHitsL4, pwc_hits_l4)                                                 \
  X(PwcHitsL5, pwc_hits_l5)                                                 \
  X(PwcMisses, pwc_misses)                                                  \
  X(GuestRefs, guest_refs)            /* guest (or shadow) entries read */  \
  X(GuestRefsL1, guest_refs_l1)                                             \
  X(GuestRefsL2, guest_refs_l2)                                             \
  X(GuestRefsL3, guest_refs_l3)                                             \
  X(GuestRefsL4, guest_refs_l4)                                             \
  X(GuestRefsL5, guest_refs_l5)                                             \
  X(NtlbHits, ntlb_hits)              /* gpa translations: nested TLB hit */ \
  X(NtlbMisses, ntlb_misses)                                                \
  X(EptPwcHitsL2, ept_pwc_hits_l2)                                          \
  X(EptPwcHitsL3, ept_pwc_hits_l3)                                          \
  X(EptPwcHitsL4, ept_pwc_hits_l4)                                          \
  X(EptPwcMisses, ept_pwc_misses)                                           \
  X(EptRefs, ept_refs)                /* EPT entries read */                \
  X(EptRefsL1, ept_refs_l1)                                                 \
  X(EptRefsL2, ept_refs_l2)                                                 \
  X(EptRefsL3, ept_refs_l3)                                                 \
  X(EptRefsL4, ept_refs_l4)                                                 \
  X(Flushes, flushes)                 /* whole-model flushes */             \
  X(SoftTlbEvictions, soft_tlb_evictions)
BASE_DEFINE_COUNTERS(HwModelCounters, MMU_HW_MODEL_COUNTERS);

struct HwModelConfig {
  TlbConfig tlb = TlbConfig::SkylakeStlb();
  TlbConfig nested_tlb = TlbConfig::GuestPhysical();
  PwcConfig pwc;
  PwcConfig ept_pwc;
  // Whether the EPT dimension exists (nested paging): allocates the EPT PWC
  // and the nested TLB.
  bool two_d = false;
  // Evict from the soft TLB the 4 KiB pages the STLB model evicts (above).
  bool bound_soft_tlb = true;
  // False: no model at all (HwPagingModelSet::Ensure creates none, so every
  // At() is nullptr and the strategies skip it): no modelled TLB or walk
  // counts, and no cost on the miss path.
  bool enabled = true;

  // This config with bound_soft_tlb set to `bound`.
  HwModelConfig Bounding(bool bound) const {
    HwModelConfig c = *this;
    c.bound_soft_tlb = bound;
    return c;
  }
  // This config with `enabled` set.
  HwModelConfig Enabled(bool on) const {
    HwModelConfig c = *this;
    c.enabled = on;
    return c;
  }

  // The defaults with the EPT dimension (the nested strategy's).
  static HwModelConfig TwoD() {
    HwModelConfig c;
    c.two_d = true;
    return c;
  }
};

class HwPagingModel {
 public:
  explicit HwPagingModel(const HwModelConfig& config = {});
  HwPagingModel(const HwPagingModel&) = delete;
  HwPagingModel& operator=(const HwPagingModel&) = delete;

  // --- Soft-TLB misses that the strategy answered with a translation ---
  // A successful 1-D walk `r` (native: the guest's tables; shadow: pass
  // ShadowWalk below instead). `soft_tlb` receives mirrored evictions (may
  // be nullptr).
  void OnWalk1D(const AccessRequest& req, const WalkResult& r, SoftTlb* soft_tlb) noexcept;
  // A walk of the VMM's shadow tables for `req.va`: `levels` deep, a 4 KiB
  // leaf (shadow tables map 4 KiB pages only). `global`/`dirty` from the
  // guest's leaf as the spte carries them.
  void OnShadowWalk(const AccessRequest& req, int levels, bool dirty, SoftTlb* soft_tlb) noexcept;
  // A successful 2-D walk `r` (Walk2D): r.entry_gpa and r.refs.nested say
  // which gpas were translated through EPT and at what cost.
  void OnWalk2D(const AccessRequest& req, const WalkResult& r, SoftTlb* soft_tlb) noexcept;
  // Paging off: linear is physical (no guest walk). With `two_d` the final
  // gpa still goes through EPT, `ept_refs` references in the real walk.
  void OnUnpaged(const AccessRequest& req, int ept_refs, SoftTlb* soft_tlb) noexcept;

  // --- Guest events, with the SDM's scope (§4.10.4) ---
  void OnCr3Write() noexcept;    // non-global STLB entries, guest PWC
  void OnInvlpg(uint64_t gva) noexcept;  // the page, and the guest PWC (whole tag)
  void OnFlushNonGlobal() noexcept { OnCr3Write(); }
  void OnFlushAll() noexcept;    // every linear/combined entry, guest PWC
  // Everything, EPT dimension included (INVEPT; a VMM-side remote flush).
  void FlushAll() noexcept;
  // Applies FlushAll once per new value of a strategy's flush generation
  // (FrameTable invalidations: INVEPT for nested, KVM's remote TLB flush
  // for shadow, a shootdown for native). One compare when nothing moved.
  void Sync(uint64_t flush_generation) noexcept {
    if (flush_generation != seen_generation_) [[unlikely]] {
      seen_generation_ = flush_generation;
      FlushAll();
    }
  }

  const HwModelCounters& counters() const { return counters_; }

 private:
  static constexpr uint16_t kVpid = 1;
  static constexpr uint64_t kEp4ta = 1;
  static constexpr uint64_t kGuestTag = PageWalkCache::LinearTag(kVpid, 0);

  TlbTag Tag() const {
    return config_.two_d ? TlbTag::Combined(kVpid, 0, kEp4ta) : TlbTag::Linear(kVpid, 0);
  }
  // The STLB probe; true on a hit (counted either way).
  bool TlbHit(const AccessRequest& req) noexcept;
  // Counts the guest-dimension references from `start` down to `leaf`.
  void CountGuestRefs(int start, int leaf) noexcept;
  // The guest PWC lookup: the level the walk starts reading at (top if it
  // misses) and whether it hit.
  int GuestPwcStart(uint64_t va, int top, int leaf, bool* hit) noexcept;
  void GuestPwcInsert(uint64_t va, int top, int leaf, const WalkResult* r) noexcept;
  // One gpa through the nested TLB and the EPT PWC; `full_refs` is what the
  // real EPT walk read. Returns the EPT leaf level the walk ended at.
  int TranslateGpa(uint64_t gpa, int full_refs) noexcept;
  void TlbInsert(const AccessRequest& req, PageSize size, uint64_t frame, bool global,
                 bool dirty, SoftTlb* soft_tlb) noexcept;

  HwModelConfig config_;
  TlbModel tlb_;
  PageWalkCache pwc_;
  // Only with two_d (else empty shells).
  TlbModel nested_tlb_;
  PageWalkCache ept_pwc_;
  uint64_t seen_generation_ = 0;
  HwModelCounters counters_;
};

// One HwPagingModel per vCPU of a strategy, created when the vCPU is first
// attached (a model is ~130 KiB; strategies allow up to 1024 vCPUs).
//
// Thread safety: Ensure on the control thread (AttachVcpu); At on the
// vCPU's thread; Totals from any thread (models are never freed before the
// set).
class HwPagingModelSet {
 public:
  HwPagingModelSet(uint32_t max_vcpus, const HwModelConfig& config)
      : config_(config),
        max_vcpus_(max_vcpus),
        models_(std::make_unique<std::atomic<HwPagingModel*>[]>(max_vcpus)) {}
  ~HwPagingModelSet() {
    for (uint32_t i = 0; i < max_vcpus_; ++i) delete models_[i].load(std::memory_order_relaxed);
  }
  HwPagingModelSet(const HwPagingModelSet&) = delete;
  HwPagingModelSet& operator=(const HwPagingModelSet&) = delete;

  bool enabled() const { return config_.enabled; }
  void Ensure(uint32_t index) {
    if (!config_.enabled) return;
    if (index < max_vcpus_ && models_[index].load(std::memory_order_acquire) == nullptr) {
      models_[index].store(new HwPagingModel(config_), std::memory_order_release);
    }
  }
  // The vCPU's model, or nullptr when it was never attached.
  HwPagingModel* At(uint32_t index) const noexcept {
    return index < max_vcpus_ ? models_[index].load(std::memory_order_acquire) : nullptr;
  }
  // A guest TLB event on `vcpu`: its soft TLB and its model react alike
  // (every strategy's OnCr3Write, OnModeChange, OnInvlpg and OnTlbFlush end
  // with one of these). The soft TLB has no PCID tags: a CR3 write flushes
  // every non-global entry of it; both keep global entries as hardware does.
  void Cr3Write(VcpuMmu& vcpu) noexcept {
    vcpu.tlb->FlushNonGlobal();
    if (HwPagingModel* hw = At(vcpu.index)) hw->OnCr3Write();
  }
  void FlushAll(VcpuMmu& vcpu) noexcept {
    vcpu.tlb->FlushAll();
    if (HwPagingModel* hw = At(vcpu.index)) hw->OnFlushAll();
  }
  void Invlpg(VcpuMmu& vcpu, uint64_t gva) noexcept {
    vcpu.tlb->FlushPage(gva);
    if (HwPagingModel* hw = At(vcpu.index)) hw->OnInvlpg(gva);
  }
  void Flush(VcpuMmu& vcpu, TlbFlush scope) noexcept {
    if (scope == TlbFlush::kAll) {
      vcpu.tlb->FlushAll();
    } else {
      vcpu.tlb->FlushNonGlobal();
    }
    if (HwPagingModel* hw = At(vcpu.index)) {
      if (scope == TlbFlush::kAll) {
        hw->OnFlushAll();
      } else {
        hw->OnFlushNonGlobal();
      }
    }
  }

  HwModelCounters Totals() const {
    HwModelCounters sum;
    for (uint32_t i = 0; i < max_vcpus_; ++i) {
      if (const HwPagingModel* m = At(i)) sum.Accumulate(m->counters());
    }
    return sum;
  }

 private:
  const HwModelConfig config_;
  const uint32_t max_vcpus_;
  std::unique_ptr<std::atomic<HwPagingModel*>[]> models_;
};

}  // namespace mmu

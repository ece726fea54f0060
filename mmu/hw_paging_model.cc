#include "mmu/hw_paging_model.h"

#include <algorithm>

#include "mmu/ept.h"
#include "mmu/pte.h"

namespace mmu {
namespace {

constexpr int kEptTop = 4;  // 4-level EPT (the nested strategy's)

HwModelCounters::Id GuestRefsAt(int level) {
  static constexpr HwModelCounters::Id kIds[] = {
      HwModelCounters::kGuestRefsL1, HwModelCounters::kGuestRefsL2, HwModelCounters::kGuestRefsL3,
      HwModelCounters::kGuestRefsL4, HwModelCounters::kGuestRefsL5};
  return kIds[level - 1];
}

HwModelCounters::Id EptRefsAt(int level) {
  static constexpr HwModelCounters::Id kIds[] = {
      HwModelCounters::kEptRefsL1, HwModelCounters::kEptRefsL2, HwModelCounters::kEptRefsL3,
      HwModelCounters::kEptRefsL4};
  return kIds[level - 1];
}

HwModelCounters::Id PwcHitAt(int level) {
  static constexpr HwModelCounters::Id kIds[] = {
      HwModelCounters::kPwcHitsL2, HwModelCounters::kPwcHitsL3, HwModelCounters::kPwcHitsL4,
      HwModelCounters::kPwcHitsL5};
  return kIds[level - 2];
}

HwModelCounters::Id EptPwcHitAt(int level) {
  static constexpr HwModelCounters::Id kIds[] = {
      HwModelCounters::kEptPwcHitsL2, HwModelCounters::kEptPwcHitsL3,
      HwModelCounters::kEptPwcHitsL4};
  return kIds[std::min(level, kEptTop) - 2];
}

TlbConfig Shell() { return TlbConfig::Unified(1, 1); }

PwcConfig NoPwc() { return PwcConfig{0, 0, 0, 0}; }

}  // namespace

HwPagingModel::HwPagingModel(const HwModelConfig& config)
    : config_(config),
      tlb_(config.tlb),
      pwc_(config.pwc),
      nested_tlb_(config.two_d ? config.nested_tlb : Shell()),
      ept_pwc_(config.two_d ? config.ept_pwc : NoPwc()) {}

bool HwPagingModel::TlbHit(const AccessRequest& req) noexcept {
  counters_.Inc(HwModelCounters::kLookups);
  if (tlb_.Lookup(Tag(), req.va, req.access) != nullptr) {
    counters_.Inc(HwModelCounters::kTlbHits);
    return true;
  }
  counters_.Inc(HwModelCounters::kTlbMisses);
  return false;
}

void HwPagingModel::CountGuestRefs(int start, int leaf) noexcept {
  for (int l = start; l >= leaf; --l) counters_.Inc(GuestRefsAt(l));
  if (start >= leaf) counters_.Add(HwModelCounters::kGuestRefs, static_cast<uint64_t>(start - leaf + 1));
}

int HwPagingModel::GuestPwcStart(uint64_t va, int top, int leaf, bool* hit) noexcept {
  PwcHit h;
  *hit = false;
  if (!pwc_.Lookup(kGuestTag, va, top, &h)) {
    counters_.Inc(HwModelCounters::kPwcMisses);
    return top;
  }
  *hit = true;
  counters_.Inc(PwcHitAt(h.level));
  // The cached entry at h.level gives the table of level h.level - 1. A
  // stale entry (the guest changed its tables without an invalidation,
  // which the architecture allows the hardware to keep using) may point
  // past this walk's leaf: the walk still reads at least the leaf.
  return std::max(h.level - 1, leaf);
}

void HwPagingModel::GuestPwcInsert(uint64_t va, int top, int leaf, const WalkResult* r) noexcept {
  // Only non-leaf entries are cached (SDM §4.10.3.1); the PWC holds levels 2+.
  for (int l = top; l > leaf && l >= PageWalkCache::kMinLevel; --l) {
    const uint64_t next = r != nullptr ? (r->entry[l] & pte::kAddrMask52) : 0;
    pwc_.Insert(kGuestTag, va, l, next, true, true, false);
  }
}

int HwPagingModel::TranslateGpa(uint64_t gpa, int full_refs) noexcept {
  // The real EPT walk read `full_refs` entries from the top: its leaf level.
  const int leaf = std::clamp(kEptTop - full_refs + 1, 1, kEptTop);
  const TlbTag tag = TlbTag::GuestPhysical(kEp4ta);
  if (nested_tlb_.Lookup(tag, gpa, Access::kRead) != nullptr) {
    counters_.Inc(HwModelCounters::kNtlbHits);
    return leaf;
  }
  counters_.Inc(HwModelCounters::kNtlbMisses);
  int start = kEptTop;
  PwcHit h;
  if (ept_pwc_.Lookup(kEp4ta, gpa, kEptTop, &h)) {
    counters_.Inc(EptPwcHitAt(h.level));
    start = std::max(h.level - 1, leaf);
  } else {
    counters_.Inc(HwModelCounters::kEptPwcMisses);
  }
  for (int l = start; l >= leaf; --l) counters_.Inc(EptRefsAt(l));
  counters_.Add(HwModelCounters::kEptRefs, static_cast<uint64_t>(start - leaf + 1));
  for (int l = kEptTop; l > leaf && l >= PageWalkCache::kMinLevel; --l) {
    ept_pwc_.Insert(kEp4ta, gpa, l, 0, true, true, false);
  }
  TlbTranslation t;
  t.page_size = static_cast<PageSize>(std::min(leaf, 3));
  t.frame_base = gpa & ~(BytesOf(t.page_size) - 1);
  t.writable = t.user = t.dirty = true;
  nested_tlb_.Insert(tag, gpa, t);
  return leaf;
}

void HwPagingModel::TlbInsert(const AccessRequest& req, PageSize size, uint64_t frame,
                              bool global, bool dirty, SoftTlb* soft_tlb) noexcept {
  TlbTranslation t;
  t.page_size = size;
  t.frame_base = frame & ~(BytesOf(size) - 1);
  t.global = global;
  t.writable = t.user = true;
  t.dirty = dirty || req.access == Access::kWrite;
  TlbEntry evicted;
  tlb_.Insert(Tag(), req.va, t, &evicted);
  if (evicted.valid && evicted.mapping_size == PageSize::k4K && config_.bound_soft_tlb &&
      soft_tlb != nullptr) {
    // Keep the soft TLB a subset of the modelled STLB (see the header).
    soft_tlb->FlushPage(evicted.vpn << 12);
    counters_.Inc(HwModelCounters::kSoftTlbEvictions);
  }
}

void HwPagingModel::OnWalk1D(const AccessRequest& req, const WalkResult& r,
                             SoftTlb* soft_tlb) noexcept {
  if (TlbHit(req)) return;
  const int top = r.top_level;
  const int leaf = r.leaf_level;
  bool hit;
  const int start = GuestPwcStart(req.va, top, leaf, &hit);
  CountGuestRefs(start, leaf);
  GuestPwcInsert(req.va, top, leaf, &r);
  TlbInsert(req, r.page_size, r.hpa, r.global, r.dirty, soft_tlb);
}

void HwPagingModel::OnShadowWalk(const AccessRequest& req, int levels, bool dirty,
                                 SoftTlb* soft_tlb) noexcept {
  if (TlbHit(req)) return;
  bool hit;
  const int start = GuestPwcStart(req.va, levels, 1, &hit);
  CountGuestRefs(start, 1);
  GuestPwcInsert(req.va, levels, 1, nullptr);
  TlbInsert(req, PageSize::k4K, req.va, false, dirty, soft_tlb);
}

void HwPagingModel::OnWalk2D(const AccessRequest& req, const WalkResult& r,
                             SoftTlb* soft_tlb) noexcept {
  if (TlbHit(req)) return;
  const int top = r.top_level;
  const int leaf = r.leaf_level;
  bool hit;
  const int start = GuestPwcStart(req.va, top, leaf, &hit);
  CountGuestRefs(start, leaf);
  // A combined PWC entry holds the host-physical address of the next guest
  // table (SDM Vol. 3C §29.4.1), so the first table read after a hit needs
  // no EPT translation; every other guest table's gpa does.
  for (int g = start; g >= leaf; --g) {
    if (hit && g == start) continue;
    TranslateGpa(r.entry_gpa[g], r.refs.nested[g]);
  }
  const int ept_leaf = TranslateGpa(r.gpa, r.refs.nested[0]);
  GuestPwcInsert(req.va, top, leaf, &r);
  // A combined mapping is cached at the smaller of the two page sizes.
  const int size = std::min({static_cast<int>(r.page_size), ept_leaf, 3});
  TlbInsert(req, static_cast<PageSize>(size), r.hpa, r.global, r.dirty, soft_tlb);
}

void HwPagingModel::OnUnpaged(const AccessRequest& req, int ept_refs, SoftTlb* soft_tlb) noexcept {
  if (TlbHit(req)) return;
  PageSize size = PageSize::k4K;
  if (config_.two_d) {
    const int ept_leaf = TranslateGpa(req.va & 0xffff'ffffull, ept_refs);
    size = static_cast<PageSize>(std::min(ept_leaf, 3));
  }
  TlbInsert(req, size, req.va, false, true, soft_tlb);
}

void HwPagingModel::OnCr3Write() noexcept {
  tlb_.FlushPcid(kVpid, 0, /*keep_global=*/true);
  pwc_.FlushTag(kGuestTag);
}

void HwPagingModel::OnInvlpg(uint64_t gva) noexcept {
  tlb_.InvLpg(kVpid, 0, gva);
  pwc_.InvalidateForInvlpg(kGuestTag);
}

void HwPagingModel::OnFlushAll() noexcept {
  tlb_.FlushVpid(kVpid);
  pwc_.FlushAll();
}

void HwPagingModel::FlushAll() noexcept {
  counters_.Inc(HwModelCounters::kFlushes);
  tlb_.FlushAll();
  pwc_.FlushAll();
  if (config_.two_d) {
    nested_tlb_.FlushAll();
    ept_pwc_.FlushAll();
  }
}

}  // namespace mmu

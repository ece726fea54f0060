#include "mmu/tlb_model.h"

#include <bit>

#include "base/check.h"

namespace mmu {
namespace {

constexpr PageSize kSizes[] = {PageSize::k4K, PageSize::k2M, PageSize::k1G};

constexpr int ShiftOf(PageSize size) { return LevelShift(static_cast<int>(size)); }
constexpr uint64_t VpnOf(uint64_t va, PageSize size) { return va >> ShiftOf(size); }

bool Holds(const TlbArrayConfig& a, PageSize size) {
  switch (size) {
    case PageSize::k4K:
      return a.holds_4k;
    case PageSize::k2M:
      return a.holds_2m;
    case PageSize::k1G:
      return a.holds_1g;
  }
  return false;
}

// The tag part of a lookup match. A global entry ignores the PCID but still
// belongs to one VPID and one EP4TA (SDM §4.10.2.4; Vol. 3C §29.4.1).
bool TagMatches(const TlbEntry& e, const TlbTag& tag) {
  return e.tag.vpid == tag.vpid && e.tag.ep4ta == tag.ep4ta &&
         (e.tag.pcid == tag.pcid || e.translation.global);
}

// Whether `e` holds a piece of the mapping that contains `va`.
bool CoversAddress(const TlbEntry& e, uint64_t va) {
  const uint64_t entry_va = e.vpn << ShiftOf(e.page_size);
  return VpnOf(entry_va, e.mapping_size) == VpnOf(va, e.mapping_size);
}

}  // namespace

TlbConfig TlbConfig::SkylakeStlb() {
  TlbConfig c;
  c.arrays = {
      {.num_sets = 128, .num_ways = 12, .holds_4k = true, .holds_2m = true, .holds_1g = false},
      {.num_sets = 4, .num_ways = 4, .holds_4k = false, .holds_2m = false, .holds_1g = true},
  };
  return c;
}

TlbConfig TlbConfig::SkylakeL1d() {
  TlbConfig c;
  c.arrays = {
      {.num_sets = 16, .num_ways = 4, .holds_4k = true},
      {.num_sets = 8, .num_ways = 4, .holds_2m = true},
      {.num_sets = 1, .num_ways = 4, .holds_1g = true},
  };
  return c;
}

TlbConfig TlbConfig::Unified(uint32_t num_sets, uint32_t num_ways) {
  TlbConfig c;
  c.arrays = {{.num_sets = num_sets,
               .num_ways = num_ways,
               .holds_4k = true,
               .holds_2m = true,
               .holds_1g = true}};
  return c;
}

TlbConfig TlbConfig::GuestPhysical() {
  TlbConfig c = SkylakeStlb();
  c.kind = TlbKind::kGuestPhysical;
  return c;
}

TlbModel::TlbModel(const TlbConfig& config) : config_(config) {
  CHECK(!config_.arrays.empty()) << "a TLB needs at least one array";
  size_t total = 0;
  for (const TlbArrayConfig& a : config_.arrays) {
    CHECK(a.num_sets > 0 && std::has_single_bit(a.num_sets)) << "num_sets " << a.num_sets;
    CHECK_GT(a.num_ways, 0u);
    for (PageSize size : kSizes) {
      if (Holds(a, size)) CHECK(ArrayFor(size) == nullptr) << "two arrays hold one page size";
    }
    arrays_.push_back({a, total});
    total += size_t{a.num_sets} * a.num_ways;
  }
  CHECK(ArrayFor(PageSize::k4K) != nullptr) << "no array holds 4 KiB pages";
  splinters_ = ArrayFor(PageSize::k2M) == nullptr || ArrayFor(PageSize::k1G) == nullptr;
  entries_.resize(total);
  keys_.assign(total, 0);
  stamps_.assign(total, 0);
}

const TlbModel::Array* TlbModel::ArrayFor(PageSize size) const {
  for (const Array& a : arrays_) {
    if (Holds(a.config, size)) return &a;
  }
  return nullptr;
}

size_t TlbModel::SetBegin(const Array& array, PageSize size, uint64_t va) const {
  const uint64_t set = VpnOf(va, size) & (array.config.num_sets - 1);
  return array.first_entry + set * array.config.num_ways;
}

size_t TlbModel::FindInSet(const Array& array, const TlbTag& tag, PageSize size,
                           uint64_t va) const {
  const size_t begin = SetBegin(array, size, va);
  const uint64_t key = KeyOf(size, VpnOf(va, size));
  for (size_t i = begin; i < begin + array.config.num_ways; ++i) {
    if (keys_[i] == key && TagMatches(entries_[i], tag)) return i;
  }
  return kNotFound;
}

size_t TlbModel::Find(const TlbTag& tag, uint64_t va) const {
  // Each array is probed at each size it holds, smallest first. A stale
  // smaller entry can coexist with a larger one for the same address (after
  // a remap without a flush); the smaller one wins, deterministically.
  for (const Array& a : arrays_) {
    for (PageSize size : kSizes) {
      if (!Holds(a.config, size)) continue;
      const size_t i = FindInSet(a, tag, size, va);
      if (i != kNotFound) return i;
    }
  }
  return kNotFound;
}

const TlbEntry* TlbModel::Probe(const TlbTag& tag, uint64_t va) const noexcept {
  const size_t i = Find(tag, va);
  return i == kNotFound ? nullptr : &entries_[i];
}

const TlbEntry* TlbModel::Lookup(const TlbTag& tag, uint64_t va, Access access) noexcept {
  const size_t i = Find(tag, va);
  if (i == kNotFound) {
    counters_.Inc(TlbModelCounters::kMiss);
    return nullptr;
  }
  TlbEntry& e = entries_[i];
  if (access == Access::kWrite && !e.translation.dirty) {
    // SDM §4.8: the walk must run to set D. The entry stays; the walk's
    // Insert replaces it with a dirty one.
    counters_.Inc(TlbModelCounters::kMiss);
    counters_.Inc(TlbModelCounters::kMissWriteClean);
    return nullptr;
  }
  stamps_[i] = ++clock_;
  switch (e.page_size) {
    case PageSize::k4K:
      counters_.Inc(TlbModelCounters::kHit4K);
      break;
    case PageSize::k2M:
      counters_.Inc(TlbModelCounters::kHit2M);
      break;
    case PageSize::k1G:
      counters_.Inc(TlbModelCounters::kHit1G);
      break;
  }
  return &e;
}

void TlbModel::Insert(const TlbTag& tag, uint64_t va, const TlbTranslation& translation,
                      TlbEntry* evicted) noexcept {
  if (evicted != nullptr) evicted->valid = false;
  DCHECK(config_.kind == TlbKind::kLinear || (tag.vpid == 0 && tag.pcid == 0 && tag.ep4ta != 0 &&
                                              !translation.global))
      << "guest-physical entries are tagged by EP4TA only";
  DCHECK_EQ(translation.frame_base & (BytesOf(translation.page_size) - 1), 0u);
  switch (translation.page_size) {
    case PageSize::k4K:
      counters_.Inc(TlbModelCounters::kInsert4K);
      break;
    case PageSize::k2M:
      counters_.Inc(TlbModelCounters::kInsert2M);
      break;
    case PageSize::k1G:
      counters_.Inc(TlbModelCounters::kInsert1G);
      break;
  }

  // Splinter a mapping no array holds into the largest held piece that
  // contains va.
  PageSize size = translation.page_size;
  const Array* array = ArrayFor(size);
  while (array == nullptr) {
    size = static_cast<PageSize>(static_cast<int>(size) - 1);
    array = ArrayFor(size);
  }
  TlbTranslation stored = translation;
  if (size != translation.page_size) {
    counters_.Inc(TlbModelCounters::kSplinter);
    const uint64_t mapping_mask = BytesOf(translation.page_size) - 1;
    const uint64_t piece_mask = BytesOf(size) - 1;
    stored.frame_base = translation.frame_base | (va & mapping_mask & ~piece_mask);
    stored.page_size = size;
  }

  const uint64_t vpn = VpnOf(va, size);
  const uint64_t key = KeyOf(size, vpn);
  const size_t begin = SetBegin(*array, size, va);
  const size_t end = begin + array->config.num_ways;
  // One pass for the three choices, in order of preference: the same page
  // with the same exact tag (refreshed in place, e.g. a clean entry replaced
  // by a dirty one after the walk set D), the first invalid way, the least
  // recently used way (the first of equals).
  size_t match = kNotFound, invalid = kNotFound, lru = begin;
  for (size_t i = begin; i < end; ++i) {
    if (keys_[i] == key && entries_[i].tag == tag) {
      match = i;
      break;
    }
    if (keys_[i] == 0) {
      if (invalid == kNotFound) invalid = i;
    } else if (invalid == kNotFound && stamps_[i] < stamps_[lru]) {
      lru = i;
    }
  }
  size_t victim = match != kNotFound ? match : invalid;
  if (victim == kNotFound) {
    victim = lru;
    counters_.Inc(TlbModelCounters::kEvict);
    if (evicted != nullptr) *evicted = entries_[victim];
  }
  TlbEntry& e = entries_[victim];
  e.valid = true;
  e.tag = tag;
  e.page_size = size;
  e.vpn = vpn;
  e.mapping_size = translation.page_size;
  e.translation = stored;
  keys_[victim] = key;
  stamps_[victim] = ++clock_;
}

template <typename Pred>
void TlbModel::InvalidateIf(Pred pred) noexcept {
  uint64_t removed = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (keys_[i] != 0 && pred(entries_[i])) {
      Invalidate(i);
      ++removed;
    }
  }
  counters_.Add(TlbModelCounters::kEntriesInvalidated, removed);
}

template <typename Pred>
void TlbModel::InvalidateAddress(uint64_t va, Pred pred) noexcept {
  if (splinters_) {
    InvalidateIf([&](const TlbEntry& e) { return CoversAddress(e, va) && pred(e); });
    return;
  }
  uint64_t removed = 0;
  for (const Array& a : arrays_) {
    for (PageSize size : kSizes) {
      if (!Holds(a.config, size)) continue;
      const size_t begin = SetBegin(a, size, va);
      const uint64_t key = KeyOf(size, VpnOf(va, size));
      for (size_t i = begin; i < begin + a.config.num_ways; ++i) {
        if (keys_[i] == key && pred(entries_[i])) {
          Invalidate(i);
          ++removed;
        }
      }
    }
  }
  counters_.Add(TlbModelCounters::kEntriesInvalidated, removed);
}

void TlbModel::InvLpg(uint16_t vpid, uint16_t pcid, uint64_t va) noexcept {
  DCHECK(config_.kind == TlbKind::kLinear);
  counters_.Inc(TlbModelCounters::kFlushInvlpg);
  InvalidateAddress(va, [&](const TlbEntry& e) {
    return e.tag.vpid == vpid && (e.tag.pcid == pcid || e.translation.global);
  });
}

void TlbModel::FlushPcid(uint16_t vpid, uint16_t pcid, bool keep_global) noexcept {
  DCHECK(config_.kind == TlbKind::kLinear);
  counters_.Inc(TlbModelCounters::kFlushPcid);
  InvalidateIf([&](const TlbEntry& e) {
    return e.tag.vpid == vpid && e.tag.pcid == pcid && !(keep_global && e.translation.global);
  });
}

void TlbModel::InvPcid(InvPcidType type, uint16_t vpid, uint16_t pcid, uint64_t va) noexcept {
  DCHECK(config_.kind == TlbKind::kLinear);
  switch (type) {
    case InvPcidType::kIndividualAddress:
      counters_.Inc(TlbModelCounters::kFlushInvpcidAddress);
      InvalidateAddress(va, [&](const TlbEntry& e) {
        return e.tag.vpid == vpid && e.tag.pcid == pcid && !e.translation.global;
      });
      return;
    case InvPcidType::kSingleContext:
      counters_.Inc(TlbModelCounters::kFlushInvpcidContext);
      InvalidateIf([&](const TlbEntry& e) {
        return e.tag.vpid == vpid && e.tag.pcid == pcid && !e.translation.global;
      });
      return;
    case InvPcidType::kAllContextsWithGlobals:
      counters_.Inc(TlbModelCounters::kFlushInvpcidAllGlobal);
      InvalidateIf([&](const TlbEntry& e) { return e.tag.vpid == vpid; });
      return;
    case InvPcidType::kAllContexts:
      counters_.Inc(TlbModelCounters::kFlushInvpcidAll);
      InvalidateIf([&](const TlbEntry& e) { return e.tag.vpid == vpid && !e.translation.global; });
      return;
  }
}

void TlbModel::FlushVpid(uint16_t vpid) noexcept {
  DCHECK(config_.kind == TlbKind::kLinear);
  counters_.Inc(TlbModelCounters::kFlushVpid);
  InvalidateIf([&](const TlbEntry& e) { return e.tag.vpid == vpid; });
}

bool TlbModel::InvVpid(InvVpidType type, uint16_t vpid, uint64_t va) noexcept {
  DCHECK(config_.kind == TlbKind::kLinear);
  // SDM Vol. 3C "INVVPID": types 0, 1 and 3 with VPID 0 fail (VMfailValid).
  if (vpid == 0 && type != InvVpidType::kAllContexts) return false;
  switch (type) {
    case InvVpidType::kIndividualAddress:
      counters_.Inc(TlbModelCounters::kFlushInvvpidAddress);
      InvalidateAddress(va, [&](const TlbEntry& e) { return e.tag.vpid == vpid; });
      break;
    case InvVpidType::kSingleContext:
      counters_.Inc(TlbModelCounters::kFlushInvvpidContext);
      InvalidateIf([&](const TlbEntry& e) { return e.tag.vpid == vpid; });
      break;
    case InvVpidType::kAllContexts:
      counters_.Inc(TlbModelCounters::kFlushInvvpidAll);
      InvalidateIf([](const TlbEntry& e) { return e.tag.vpid != 0; });
      break;
    case InvVpidType::kSingleContextRetainingGlobals:
      counters_.Inc(TlbModelCounters::kFlushInvvpidContextKeepGlobal);
      InvalidateIf([&](const TlbEntry& e) { return e.tag.vpid == vpid && !e.translation.global; });
      break;
  }
  return true;
}

void TlbModel::InvEpt(InvEptType type, uint64_t ep4ta) noexcept {
  switch (type) {
    case InvEptType::kSingleContext:
      counters_.Inc(TlbModelCounters::kFlushInveptContext);
      InvalidateIf([&](const TlbEntry& e) { return e.tag.ep4ta != 0 && e.tag.ep4ta == ep4ta; });
      return;
    case InvEptType::kGlobal:
      counters_.Inc(TlbModelCounters::kFlushInveptGlobal);
      InvalidateIf([](const TlbEntry& e) { return e.tag.ep4ta != 0; });
      return;
  }
}

void TlbModel::FlushAll() noexcept {
  counters_.Inc(TlbModelCounters::kFlushAll);
  InvalidateIf([](const TlbEntry&) { return true; });
}

size_t TlbModel::CountValid() const {
  size_t n = 0;
  for (uint64_t key : keys_) n += key != 0 ? 1 : 0;
  return n;
}

}  // namespace mmu

#include "mmu/page_walk_cache.h"

#include "base/check.h"

namespace mmu {
namespace {

// Linear addresses have at most 57 bits (5-level paging, SDM §4.5.1).
constexpr uint64_t kVaMask57 = (uint64_t{1} << 57) - 1;

constexpr PwcCounters::Id kHitCounter[] = {PwcCounters::kHitPde, PwcCounters::kHitPdpte,
                                           PwcCounters::kHitPml4e, PwcCounters::kHitPml5e};

}  // namespace

PageWalkCache::PageWalkCache(const PwcConfig& config) {
  const uint32_t sizes[] = {config.pde_entries, config.pdpte_entries, config.pml4e_entries,
                            config.pml5e_entries};
  for (size_t i = 0; i < levels_.size(); ++i) {
    levels_[i].keys.assign(sizes[i], KeyTag{kInvalidKey, 0});
    levels_[i].payloads.assign(sizes[i], Payload{});
  }
}

uint64_t PageWalkCache::KeyOf(uint64_t va, int level) {
  return (va & kVaMask57) >> LevelShift(level);
}

bool PageWalkCache::Lookup(uint64_t tag, uint64_t va, int top_level, PwcHit* out) noexcept {
  DCHECK(top_level == 4 || top_level == 5) << top_level;
  for (int level = kMinLevel; level <= top_level; ++level) {
    Level& l = LevelAt(level);
    const uint64_t key = KeyOf(va, level);
    const size_t n = l.keys.size();
    for (size_t i = 0; i < n; ++i) {
      if (l.keys[i].key != key || l.keys[i].tag != tag) continue;
      Payload& p = l.payloads[i];
      p.last_use = ++clock_;
      out->level = level;
      out->next_table_pa = p.next_table_pa;
      out->writable = p.writable;
      out->user = p.user;
      out->nx = p.nx;
      counters_.Inc(kHitCounter[level - kMinLevel]);
      return true;
    }
  }
  counters_.Inc(PwcCounters::kMiss);
  return false;
}

void PageWalkCache::Insert(uint64_t tag, uint64_t va, int level, uint64_t next_table_pa,
                           bool writable, bool user, bool nx) noexcept {
  DCHECK(level >= kMinLevel && level <= kMaxLevel) << "only non-leaf levels 2..5 are cached";
  Level& l = LevelAt(level);
  const size_t n = l.keys.size();
  if (n == 0) return;  // this level's cache is disabled
  const uint64_t key = KeyOf(va, level);
  // One pass for the three choices, in order of preference: the entry that
  // already holds this key and tag, the first empty one, the least recently
  // used one (the first of equals).
  size_t match = n, empty = n, lru = 0;
  for (size_t i = 0; i < n; ++i) {
    const KeyTag& kt = l.keys[i];
    if (kt.key == key && kt.tag == tag) {
      match = i;
      break;
    }
    if (kt.key == kInvalidKey) {
      if (empty == n) empty = i;
    } else if (empty == n && l.payloads[i].last_use < l.payloads[lru].last_use) {
      lru = i;
    }
  }
  size_t victim = match != n ? match : empty;
  if (victim == n) {
    victim = lru;
    counters_.Inc(PwcCounters::kEvict);
  }
  counters_.Inc(PwcCounters::kInsert);
  l.keys[victim] = KeyTag{key, tag};
  l.payloads[victim] = Payload{next_table_pa, ++clock_, writable, user, nx};
}

template <typename Pred>
void PageWalkCache::InvalidateIf(Pred pred) noexcept {
  uint64_t removed = 0;
  for (int level = kMinLevel; level <= kMaxLevel; ++level) {
    Level& l = LevelAt(level);
    for (KeyTag& kt : l.keys) {
      if (kt.key != kInvalidKey && pred(level, kt)) {
        kt.key = kInvalidKey;
        ++removed;
      }
    }
  }
  counters_.Add(PwcCounters::kEntriesInvalidated, removed);
}

void PageWalkCache::InvalidateVa(uint64_t tag, uint64_t va) noexcept {
  counters_.Inc(PwcCounters::kInvalidateVa);
  InvalidateIf([&](int level, const KeyTag& kt) { return kt.tag == tag && kt.key == KeyOf(va, level); });
}

void PageWalkCache::InvalidateForInvlpg(uint64_t tag) noexcept {
  counters_.Inc(PwcCounters::kFlushInvlpg);
  InvalidateIf([&](int, const KeyTag& kt) { return kt.tag == tag; });
}

void PageWalkCache::FlushTag(uint64_t tag) noexcept {
  counters_.Inc(PwcCounters::kFlushTag);
  InvalidateIf([&](int, const KeyTag& kt) { return kt.tag == tag; });
}

void PageWalkCache::FlushTagMasked(uint64_t value, uint64_t mask) noexcept {
  counters_.Inc(PwcCounters::kFlushTag);
  InvalidateIf([&](int, const KeyTag& kt) { return (kt.tag & mask) == value; });
}

void PageWalkCache::FlushAll() noexcept {
  counters_.Inc(PwcCounters::kFlushAll);
  InvalidateIf([](int, const KeyTag&) { return true; });
}

size_t PageWalkCache::CountValid(int level) const {
  DCHECK(level >= kMinLevel && level <= kMaxLevel);
  size_t count = 0;
  for (const KeyTag& kt : LevelAt(level).keys) count += kt.key != kInvalidKey ? 1 : 0;
  return count;
}

}  // namespace mmu

#include "mmu/soft_tlb.h"

#include <algorithm>
#include <bit>

#include "base/check.h"

namespace mmu {

namespace {
constexpr uint64_t kGlobalMask = SoftTlb::kGlobalEntries - 1;
static_assert(std::has_single_bit(SoftTlb::kGlobalEntries));
}  // namespace

SoftTlb::SoftTlb(const Config& config) {
  CHECK(config.num_entries >= 2 && std::has_single_bit(config.num_entries))
      << "num_entries " << config.num_entries;
  index_mask_ = config.num_entries - 1;
  storage_ = std::make_unique<Entry[]>(size_t{config.num_entries} * kNumMmuIdx);
  global_storage_ = std::make_unique<Entry[]>(size_t{kGlobalEntries} * kNumMmuIdx);
  global_page_sizes_ = std::make_unique<uint64_t[]>(size_t{kGlobalEntries} * kNumMmuIdx);
  for (size_t i = 0; i < kNumMmuIdx; ++i) {
    tables_[i].entries = storage_.get() + i * config.num_entries;
    ClearTable(tables_[i], index_mask_);
    globals_[i].entries = global_storage_.get() + i * kGlobalEntries;
    globals_[i].page_sizes = global_page_sizes_.get() + i * kGlobalEntries;
    ClearTable(globals_[i], kGlobalMask);
  }
}

void SoftTlb::ClearTable(Table& table, uint64_t mask) noexcept {
  std::fill_n(table.entries, mask + 1, Entry{{kInvalidTag, kInvalidTag, kInvalidTag}, 0});
  table.epoch = 0;
  table.has_large = false;
  table.in_use = false;
}

void SoftTlb::FlushTable(Table& table, uint64_t mask) noexcept {
  table.has_large = false;
  table.in_use = false;
  if (table.epoch < kMaxEpoch) {
    ++table.epoch;
    return;
  }
  // Every tag of the old epochs must go before epoch 0 is reused.
  counters_.Inc(SoftTlbCounters::kEpochWrap);
  ClearTable(table, mask);
}

void SoftTlb::Install(Table& t, uint64_t index, uint64_t gva, uintptr_t addend, Perms perms,
                      uint64_t page_size_bytes) noexcept {
  const uint64_t page = gva & ~base::kPageMask;
  const uint64_t tag = page | t.epoch;
  Entry& e = t.entries[index];
  e.tag[static_cast<size_t>(kRead)] = perms.read ? tag : kInvalidTag;
  e.tag[static_cast<size_t>(kWrite)] = perms.write ? tag : kInvalidTag;
  e.tag[static_cast<size_t>(kFetch)] = perms.fetch ? tag : kInvalidTag;
  e.addend = addend;
  if (t.page_sizes != nullptr) t.page_sizes[index] = page_size_bytes;

  if (page_size_bytes > base::kPageSize) {
    // Grow the tracked range until it covers both the old range and this
    // large page (QEMU's tlb_add_large_page does the same).
    uint64_t mask = ~(page_size_bytes - 1);
    if (t.has_large) {
      mask &= t.large_mask;
      while (((t.large_base ^ gva) & mask) != 0) mask <<= 1;
    }
    t.has_large = true;
    t.large_mask = mask;
    t.large_base = gva & mask;
  }
}

void SoftTlb::Fill(MmuIdx mmu_idx, uint64_t gva, uint8_t* host_page, Perms perms,
                   uint64_t page_size_bytes, bool global) noexcept {
  DCHECK(host_page != nullptr);
  DCHECK_EQ(reinterpret_cast<uintptr_t>(host_page) & base::kPageMask, 0u);
  DCHECK(std::has_single_bit(page_size_bytes) && page_size_bytes >= base::kPageSize);
  counters_.Inc(SoftTlbCounters::kFill);
  const uint64_t page = gva & ~base::kPageMask;
  // Unsigned wrap-around is intended: addend + gva == host pointer.
  const uintptr_t addend = reinterpret_cast<uintptr_t>(host_page) - static_cast<uintptr_t>(page);
  const size_t idx = static_cast<size_t>(mmu_idx);
  Install(tables_[idx], (gva >> base::kPageShift) & index_mask_, gva, addend, perms, page_size_bytes);
  Table& g = globals_[idx];
  const uint64_t gindex = (gva >> base::kPageShift) & kGlobalMask;
  if (global) {
    Install(g, gindex, gva, addend, perms, page_size_bytes);
    g.in_use = true;
  } else if (g.in_use) {
    // The page is not global (any more): no refill may bring an old global
    // translation of it back.
    bool unused = false;
    FlushPageIn(g, gindex, gva, &unused);
  }
}

uint8_t* SoftTlb::RefillGlobal(MmuIdx mmu_idx, uint64_t gva, Access access) noexcept {
  const size_t idx = static_cast<size_t>(mmu_idx);
  Table& g = globals_[idx];
  if (!g.in_use) return nullptr;
  const uint64_t gindex = (gva >> base::kPageShift) & kGlobalMask;
  const Entry& ge = g.entries[gindex];
  const uint64_t page = gva & ~base::kPageMask;
  const uint64_t gtag = page | g.epoch;
  if (ge.tag[static_cast<size_t>(access)] != gtag) return nullptr;
  counters_.Inc(SoftTlbCounters::kGlobalRefill);
  const Perms perms{ge.tag[static_cast<size_t>(kRead)] == gtag, ge.tag[static_cast<size_t>(kWrite)] == gtag,
                    ge.tag[static_cast<size_t>(kFetch)] == gtag};
  Install(tables_[idx], (gva >> base::kPageShift) & index_mask_, gva, ge.addend, perms, g.page_sizes[gindex]);
  return reinterpret_cast<uint8_t*>(ge.addend + gva);
}

void SoftTlb::DropWrite(MmuIdx mmu_idx, uint64_t gva) noexcept {
  const size_t idx = static_cast<size_t>(mmu_idx);
  const uint64_t page = gva & ~base::kPageMask;
  Entry& e = tables_[idx].entries[(gva >> base::kPageShift) & index_mask_];
  if ((e.tag[static_cast<size_t>(kWrite)] & ~base::kPageMask) == page) {
    e.tag[static_cast<size_t>(kWrite)] = kInvalidTag;
  }
  Entry& ge = globals_[idx].entries[(gva >> base::kPageShift) & kGlobalMask];
  if ((ge.tag[static_cast<size_t>(kWrite)] & ~base::kPageMask) == page) {
    ge.tag[static_cast<size_t>(kWrite)] = kInvalidTag;
  }
}

void SoftTlb::FlushPageIn(Table& t, uint64_t index, uint64_t gva, bool* in_large) noexcept {
  // INVLPG of any address in a large page removes every piece of it: the
  // caller flushes the table then.
  *in_large = t.has_large && (gva & t.large_mask) == t.large_base;
  const uint64_t page = gva & ~base::kPageMask;
  Entry& e = t.entries[index];
  // Match on the page whatever the epoch: clearing a stale entry is harmless.
  for (uint64_t tag : e.tag) {
    if (tag != kInvalidTag && (tag & ~base::kPageMask) == page) {
      e.tag = {kInvalidTag, kInvalidTag, kInvalidTag};
      break;
    }
  }
}

void SoftTlb::FlushPage(uint64_t gva) noexcept {
  counters_.Inc(SoftTlbCounters::kFlushPage);
  for (size_t i = 0; i < kNumMmuIdx; ++i) {
    bool large = false;
    FlushPageIn(tables_[i], (gva >> base::kPageShift) & index_mask_, gva, &large);
    if (large) FlushTable(tables_[i], index_mask_);
    bool global_large = false;
    FlushPageIn(globals_[i], (gva >> base::kPageShift) & kGlobalMask, gva, &global_large);
    if (global_large) FlushTable(globals_[i], kGlobalMask);
    if (large || global_large) counters_.Inc(SoftTlbCounters::kFlushPageLarge);
  }
}

void SoftTlb::FlushMmuIdx(MmuIdx mmu_idx) noexcept {
  counters_.Inc(SoftTlbCounters::kFlushMmuIdx);
  FlushTable(tables_[static_cast<size_t>(mmu_idx)], index_mask_);
  FlushTable(globals_[static_cast<size_t>(mmu_idx)], kGlobalMask);
}

void SoftTlb::FlushAll() noexcept {
  counters_.Inc(SoftTlbCounters::kFlushAll);
  for (Table& t : tables_) FlushTable(t, index_mask_);
  for (Table& t : globals_) FlushTable(t, kGlobalMask);
}

void SoftTlb::FlushNonGlobal() noexcept {
  counters_.Inc(SoftTlbCounters::kFlushNonGlobal);
  for (Table& t : tables_) FlushTable(t, index_mask_);
}

}  // namespace mmu

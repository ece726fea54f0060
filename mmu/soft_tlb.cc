#include "mmu/soft_tlb.h"

#include <algorithm>
#include <bit>

#include "base/check.h"

namespace mmu {

SoftTlb::SoftTlb(const Config& config) {
  CHECK(config.num_entries >= 2 && std::has_single_bit(config.num_entries))
      << "num_entries " << config.num_entries;
  index_mask_ = config.num_entries - 1;
  storage_ = std::make_unique<Entry[]>(size_t{config.num_entries} * kNumMmuIdx);
  for (size_t i = 0; i < kNumMmuIdx; ++i) {
    tables_[i].entries = storage_.get() + i * config.num_entries;
    ClearTable(tables_[i]);
  }
}

void SoftTlb::ClearTable(Table& table) noexcept {
  std::fill_n(table.entries, num_entries(), Entry{{kInvalidTag, kInvalidTag, kInvalidTag}, 0});
  table.epoch = 0;
  table.has_large = false;
}

void SoftTlb::FlushTable(Table& table) noexcept {
  table.has_large = false;
  if (table.epoch < kMaxEpoch) {
    ++table.epoch;
    return;
  }
  // Every tag of the old epochs must go before epoch 0 is reused.
  counters_.Inc(SoftTlbCounters::kEpochWrap);
  ClearTable(table);
}

void SoftTlb::Fill(MmuIdx mmu_idx, uint64_t gva, uint8_t* host_page, Perms perms,
                   uint64_t page_size_bytes) noexcept {
  DCHECK(host_page != nullptr);
  DCHECK_EQ(reinterpret_cast<uintptr_t>(host_page) & base::kPageMask, 0u);
  DCHECK(std::has_single_bit(page_size_bytes) && page_size_bytes >= base::kPageSize);
  counters_.Inc(SoftTlbCounters::kFill);
  Table& t = tables_[static_cast<size_t>(mmu_idx)];
  const uint64_t page = gva & ~base::kPageMask;
  const uint64_t tag = page | t.epoch;
  Entry& e = t.entries[(gva >> base::kPageShift) & index_mask_];
  e.tag[static_cast<size_t>(kRead)] = perms.read ? tag : kInvalidTag;
  e.tag[static_cast<size_t>(kWrite)] = perms.write ? tag : kInvalidTag;
  e.tag[static_cast<size_t>(kFetch)] = perms.fetch ? tag : kInvalidTag;
  // Unsigned wrap-around is intended: addend + gva == host pointer.
  e.addend = reinterpret_cast<uintptr_t>(host_page) - static_cast<uintptr_t>(page);

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

void SoftTlb::FlushPage(uint64_t gva) noexcept {
  counters_.Inc(SoftTlbCounters::kFlushPage);
  const uint64_t page = gva & ~base::kPageMask;
  for (Table& t : tables_) {
    if (t.has_large && (gva & t.large_mask) == t.large_base) {
      counters_.Inc(SoftTlbCounters::kFlushPageLarge);
      FlushTable(t);
      continue;
    }
    Entry& e = t.entries[(gva >> base::kPageShift) & index_mask_];
    // Match on the page whatever the epoch: clearing a stale entry is harmless.
    for (uint64_t tag : e.tag) {
      if (tag != kInvalidTag && (tag & ~base::kPageMask) == page) {
        e.tag = {kInvalidTag, kInvalidTag, kInvalidTag};
        break;
      }
    }
  }
}

void SoftTlb::FlushMmuIdx(MmuIdx mmu_idx) noexcept {
  counters_.Inc(SoftTlbCounters::kFlushMmuIdx);
  FlushTable(tables_[static_cast<size_t>(mmu_idx)]);
}

void SoftTlb::FlushAll() noexcept {
  counters_.Inc(SoftTlbCounters::kFlushAll);
  for (Table& t : tables_) FlushTable(t);
}

}  // namespace mmu

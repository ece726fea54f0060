#include "guest/kernel/pmm.h"

#include "guest/kernel/arch.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lib.h"

namespace kernel {
namespace {

constexpr int kMaxRanges = 32;

PhysRange fresh[kMaxRanges];
int num_fresh = 0;
int fresh_cursor = 0;  // ranges before this one are used up
uint64_t free_head = 0;  // physical address; 0 is never allocatable (below 1 MiB)
uint16_t* counts = nullptr;
uint64_t max_pfn = 0;
bool fresh_is_zero = false;
PmmStats stats;

}  // namespace

uint64_t PmmCarveContiguous(uint64_t num_pages) {
  uint64_t bytes = num_pages * kPageSize;
  for (int i = fresh_cursor; i < num_fresh; ++i) {
    if (fresh[i].end - fresh[i].base >= bytes) {
      uint64_t pa = fresh[i].base;
      fresh[i].base += bytes;
      stats.free_pages -= num_pages;
      stats.total_pages -= num_pages;
      return pa;
    }
  }
  return 0;
}

void PmmSetRanges(const PhysRange* usable, int num_ranges, bool ram_zeroed) {
  fresh_is_zero = ram_zeroed;
  for (int i = 0; i < num_ranges && num_fresh < kMaxRanges; ++i) {
    if (usable[i].end <= usable[i].base) continue;
    fresh[num_fresh++] = usable[i];
    stats.total_pages += (usable[i].end - usable[i].base) / kPageSize;
  }
  stats.free_pages = stats.total_pages;
}

bool PmmInitCounts(uint64_t max_pa) {
  max_pfn = max_pa / kPageSize;
  uint64_t count_pages = (max_pfn * sizeof(uint16_t) + kPageSize - 1) / kPageSize;
  uint64_t pa = PmmCarveContiguous(count_pages);
  if (pa == 0) return false;
  counts = PhysToVirt<uint16_t>(pa);
  // One bulk `rep stosq` per page, and none at all when RAM starts zeroed.
  if (!fresh_is_zero) {
    for (uint64_t i = 0; i < count_pages; ++i) ZeroFrame(pa + i * kPageSize);
  }
  return true;
}

uint64_t AllocPage(bool zero) {
  uint64_t pa;
  if (free_head != 0) {
    pa = free_head;
    free_head = *PhysToVirt<uint64_t>(pa);
    ++stats.recycled_allocs;
    if (zero) {
      ZeroFrame(pa);
      ++stats.zeroed_pages;
    }
  } else {
    while (fresh_cursor < num_fresh && fresh[fresh_cursor].base >= fresh[fresh_cursor].end) {
      ++fresh_cursor;
    }
    if (fresh_cursor == num_fresh) return 0;
    pa = fresh[fresh_cursor].base;
    fresh[fresh_cursor].base += kPageSize;
    ++stats.fresh_allocs;
    if (zero && !fresh_is_zero) {
      ZeroFrame(pa);
      ++stats.zeroed_pages;
    }
  }
  --stats.free_pages;
  counts[pa / kPageSize] = 1;
  return pa;
}

void FreePage(uint64_t pa) {
  counts[pa / kPageSize] = 0;
  *PhysToVirt<uint64_t>(pa) = free_head;
  free_head = pa;
  ++stats.free_pages;
}

uint16_t PageCount(uint64_t pa) { return counts[pa / kPageSize]; }
void PageCountSet(uint64_t pa, uint16_t v) { counts[pa / kPageSize] = v; }
void PageCountInc(uint64_t pa) { ++counts[pa / kPageSize]; }
uint16_t PageCountDec(uint64_t pa) { return --counts[pa / kPageSize]; }

const PmmStats& GetPmmStats() { return stats; }

}  // namespace kernel

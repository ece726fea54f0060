#include "guest/kernel/pmm.h"

#include "guest/kernel/arch.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lib.h"
#include "guest-driver/free_block_finder.h"

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
uint64_t cold_head = 0;  // scanned for reporting, no block found; linked like free_head
uint64_t (*oom_hook)() = nullptr;

// Reported blocks: [next, next + pages_left frames) of a block the device was
// told about. A table rather than a list through the frames, which the host may
// have discarded (writing a link would make it allocate them again).
struct ReportedBlock {
  uint64_t next;
  uint64_t pages_left;
};
constexpr uint32_t kMaxReportedBlocks = 4096;
ReportedBlock reported[kMaxReportedBlocks];
uint32_t num_reported = 0;

void Push(uint64_t* head, uint64_t pa) {
  *PhysToVirt<uint64_t>(pa) = *head;
  *head = pa;
}
uint64_t Pop(uint64_t* head) {
  const uint64_t pa = *head;
  *head = *PhysToVirt<uint64_t>(pa);
  return pa;
}

// Takes a frame without zeroing or counting it; 0 when none is left.
uint64_t TakeFrame(bool* recycled) {
  *recycled = true;
  if (free_head != 0) return Pop(&free_head);
  if (cold_head != 0) return Pop(&cold_head);
  if (num_reported > 0) {
    ReportedBlock& b = reported[num_reported - 1];
    const uint64_t pa = b.next;
    b.next += kPageSize;
    if (--b.pages_left == 0) --num_reported;
    --stats.reported_pages;
    return pa;
  }
  *recycled = false;
  while (fresh_cursor < num_fresh && fresh[fresh_cursor].base >= fresh[fresh_cursor].end) {
    ++fresh_cursor;
  }
  if (fresh_cursor == num_fresh) return 0;
  const uint64_t pa = fresh[fresh_cursor].base;
  fresh[fresh_cursor].base += kPageSize;
  return pa;
}

uint64_t FinishAlloc(uint64_t pa, bool recycled, bool zero) {
  if (recycled) {
    ++stats.recycled_allocs;
  } else {
    ++stats.fresh_allocs;
  }
  if (zero && (recycled || !fresh_is_zero)) {
    ZeroFrame(pa);
    ++stats.zeroed_pages;
  }
  --stats.free_pages;
  counts[pa / kPageSize] = 1;
  return pa;
}

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
  bool recycled;
  uint64_t pa = TakeFrame(&recycled);
  if (pa == 0 && oom_hook != nullptr) {
    ++stats.oom_retries;
    if (oom_hook() > 0) pa = TakeFrame(&recycled);
  }
  return pa == 0 ? 0 : FinishAlloc(pa, recycled, zero);
}

uint64_t AllocPageNoOom(uint64_t reserve_pages) {
  if (stats.free_pages - stats.isolated_pages <= reserve_pages) return 0;
  bool recycled;
  const uint64_t pa = TakeFrame(&recycled);
  return pa == 0 ? 0 : FinishAlloc(pa, recycled, /*zero=*/false);
}

void PmmSetOomHook(uint64_t (*hook)()) { oom_hook = hook; }

void FreePage(uint64_t pa) {
  counts[pa / kPageSize] = 0;
  Push(&free_head, pa);
  ++stats.free_pages;
}

uint32_t PmmTakeFreeBlocks(uint32_t order, uint64_t* pas, uint32_t max_blocks,
                           uint32_t max_visit) {
  // Recently freed frames come off the LIFO list in runs (guest-driver/
  // free_block_finder.h); aligned runs become blocks, the rest goes cold.
  struct Sink {
    uint64_t* out;
    uint32_t found;
    void OnBlock(uint64_t pfn) { out[found++] = pfn * kPageSize; }
    void OnLeftover(uint64_t pfn) { Push(&cold_head, pfn * kPageSize); }
    void OnUnwind(uint64_t pfn) { Push(&free_head, pfn * kPageSize); }
  } sink{pas, 0};
  guest_driver::FreeBlockFinder finder(order);
  for (uint32_t visited = 0; free_head != 0 && visited < max_visit && sink.found < max_blocks;
       ++visited) {
    finder.Feed(Pop(&free_head) / kPageSize, sink);
  }
  finder.Unwind(sink);
  stats.isolated_pages += uint64_t{sink.found} << order;
  return sink.found;
}

void PmmReturnReportedBlocks(uint32_t order, const uint64_t* pas, uint32_t num_blocks) {
  const uint64_t pages = uint64_t{1} << order;
  for (uint32_t i = 0; i < num_blocks; ++i) {
    stats.isolated_pages -= pages;
    if (num_reported < kMaxReportedBlocks) {
      reported[num_reported++] = {pas[i], pages};
      stats.reported_pages += pages;
    } else {
      // Table full: back on the cold list (this writes the frames).
      for (uint64_t p = 0; p < pages; ++p) Push(&cold_head, pas[i] + p * kPageSize);
    }
  }
}

void PmmFreeUntouched(uint64_t pa) {
  counts[pa / kPageSize] = 0;
  ++stats.free_pages;
  // Balloon pages leave the balloon in the reverse of the (mostly ascending)
  // order they entered it: extending the last block downwards, or upwards,
  // keeps a deflate of 1 GiB in a handful of table entries.
  if (num_reported > 0) {
    ReportedBlock& b = reported[num_reported - 1];
    if (pa + kPageSize == b.next) {
      b.next = pa;
      ++b.pages_left;
      ++stats.reported_pages;
      return;
    }
    if (pa == b.next + b.pages_left * kPageSize) {
      ++b.pages_left;
      ++stats.reported_pages;
      return;
    }
  }
  if (num_reported < kMaxReportedBlocks) {
    reported[num_reported++] = {pa, 1};
    ++stats.reported_pages;
  } else {
    Push(&free_head, pa);  // table full: this writes the frame
  }
}

uint16_t PageCount(uint64_t pa) { return counts[pa / kPageSize]; }
void PageCountSet(uint64_t pa, uint16_t v) { counts[pa / kPageSize] = v; }
void PageCountInc(uint64_t pa) { ++counts[pa / kPageSize]; }
uint16_t PageCountDec(uint64_t pa) { return --counts[pa / kPageSize]; }

const PmmStats& GetPmmStats() { return stats; }

}  // namespace kernel

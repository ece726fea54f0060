// Physical page allocator over the boot memory map.
//
// Set-up is lazy: the usable ranges are kept as [next, end) cursors of frames
// never handed out ("fresh"), plus a free list of frames returned since
// ("recycled", linked through their first word). No per-page work happens at
// boot. A fresh frame is already zero when the platform says RAM starts zeroed
// (kBootFlagRamZeroed), so only recycled frames need zeroing.
//
// Each frame has a 16-bit count: the number of mappings for a user data frame
// (copy-on-write sharing), or the number of present entries for a page-table
// frame (so an emptied table can be freed without scanning it).
//
// Single CPU, interrupts off in the kernel: no locking.
#pragma once

#include <stdint.h>

namespace kernel {

struct PhysRange {
  uint64_t base;
  uint64_t end;
};

struct PmmStats {
  uint64_t total_pages;
  uint64_t free_pages;
  uint64_t fresh_allocs;     // frames handed out for the first time
  uint64_t recycled_allocs;  // frames reused from the free list
  uint64_t zeroed_pages;     // frames the kernel zeroed (or asked the VMM to)
};

// usable: page-aligned, sorted, disjoint ranges of free RAM.
void PmmSetRanges(const PhysRange* usable, int num_ranges, bool ram_zeroed);
// Carves the per-frame count array for frames below max_pa. Returns false if
// memory is too small. Must run before the first AllocPage.
bool PmmInitCounts(uint64_t max_pa);
// Carves n contiguous fresh frames (boot-time structures). Returns 0 on failure.
uint64_t PmmCarveContiguous(uint64_t num_pages);

// Returns a frame with count 1, zeroed if `zero`; 0 when memory is exhausted.
uint64_t AllocPage(bool zero);
void FreePage(uint64_t pa);

uint16_t PageCount(uint64_t pa);
void PageCountSet(uint64_t pa, uint16_t v);
void PageCountInc(uint64_t pa);
// Returns the new count.
uint16_t PageCountDec(uint64_t pa);

const PmmStats& GetPmmStats();

}  // namespace kernel

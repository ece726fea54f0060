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
// Recycled frames live on three lists, allocated from in this order: "hot"
// (freed since the last report scan), "cold" (scanned by free page reporting
// but not part of an aligned block) and reported blocks (kept in a table, not
// linked through the frames, which the host may have discarded). Fresh frames
// come last.
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
  uint64_t free_pages;       // includes frames isolated for free page reporting
  uint64_t fresh_allocs;     // frames handed out for the first time
  uint64_t recycled_allocs;  // frames reused from the free list
  uint64_t zeroed_pages;     // frames the kernel zeroed (or asked the VMM to)
  uint64_t isolated_pages;   // free frames the device is being told about
  uint64_t reported_pages;   // free frames in the reported-block table (host may have dropped them)
  uint64_t oom_retries;      // allocations that called the out-of-memory hook
};

// usable: page-aligned, sorted, disjoint ranges of free RAM.
void PmmSetRanges(const PhysRange* usable, int num_ranges, bool ram_zeroed);
// Carves the per-frame count array for frames below max_pa. Returns false if
// memory is too small. Must run before the first AllocPage.
bool PmmInitCounts(uint64_t max_pa);
// Carves n contiguous fresh frames (boot-time structures). Returns 0 on failure.
uint64_t PmmCarveContiguous(uint64_t num_pages);

// Returns a frame with count 1, zeroed if `zero`; 0 when memory is exhausted
// (after the out-of-memory hook, if any, could not free a frame).
uint64_t AllocPage(bool zero);
void FreePage(uint64_t pa);

// Called once by AllocPage when no frame is left (the balloon's
// DEFLATE_ON_OOM); returns how many frames it freed.
void PmmSetOomHook(uint64_t (*hook)());
// For the balloon: a frame (not zeroed, count 1) only while more than
// `reserve_pages` frames stay free; never calls the out-of-memory hook.
uint64_t AllocPageNoOom(uint64_t reserve_pages);

// Free page reporting (virtio-balloon). Takes up to `max_blocks` naturally
// aligned blocks of 2^order frames, found among recently freed frames, out of
// the allocator (they stay counted as free) and stores their addresses; visits
// at most `max_visit` free frames. Frames that cannot form a block are set
// aside and not looked at again until reused. Returns the number of blocks.
uint32_t PmmTakeFreeBlocks(uint32_t order, uint64_t* pas, uint32_t max_blocks,
                           uint32_t max_visit);
// Gives reported blocks back. Their frames are never written by the allocator
// (the host may have dropped them): they are handed out last among recycled
// frames, from a table of blocks kept outside them.
void PmmReturnReportedBlocks(uint32_t order, const uint64_t* pas, uint32_t num_blocks);
// Frees one frame the host may have dropped (a page deflated from the
// balloon) without writing it: it joins the reported-block table, merged with
// the last entry when adjacent, so deflating stays free for the host until the
// guest really uses the page. Falls back to the free list (a write) when the
// table is full.
void PmmFreeUntouched(uint64_t pa);

uint16_t PageCount(uint64_t pa);
void PageCountSet(uint64_t pa, uint16_t v);
void PageCountInc(uint64_t pa);
// Returns the new count.
uint16_t PageCountDec(uint64_t pa);

const PmmStats& GetPmmStats();

}  // namespace kernel

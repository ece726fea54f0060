// Per-process 4-level address spaces (SDM Vol. 3A, 5.5 "4-Level Paging").
//
// The lower half belongs to the process and is described by a short list of
// regions (Vma). Pages are mapped lazily: a fault in an anonymous region maps a
// zero frame; a write to a copy-on-write page copies it (or just re-enables
// writing when this mapping is the last one). The upper half is the kernel's:
// every PML4 shares the boot tables' slots 256 (direct map) and 511 (image).
//
// Page-table frames keep a count of their present entries (pmm.h), so
// unmapping frees emptied tables at every level without scanning them.
// Called only from the kernel with interrupts off.
#pragma once

#include <stdint.h>

namespace kernel {

enum class VmaKind : uint8_t { kFree, kAnon, kStack, kImage, kInfo };

struct Vma {
  uint64_t start;
  uint64_t end;
  VmaKind kind;
  bool writable;
};

inline constexpr int kMaxVmas = 48;

struct AddressSpace {
  uint64_t pml4_pa = 0;
  uint64_t mmap_next = 0;  // bump pointer for mmap
  uint64_t resident_pages = 0;
  Vma vmas[kMaxVmas];
};

// Creates the kernel half and an empty user half. False when out of memory.
bool AsCreate(AddressSpace* as);
// Frees every user page and table, and the PML4. The caller must not be
// running on `as` (switch CR3 first).
void AsDestroy(AddressSpace* as);
// Copy-on-write duplicate of parent into the (empty) child.
bool AsFork(AddressSpace* parent, AddressSpace* child);

bool AsAddVma(AddressSpace* as, uint64_t start, uint64_t end, VmaKind kind, bool writable);
// Maps existing frames (kernel-owned, never freed) read-only.
bool AsMapFixed(AddressSpace* as, uint64_t va, uint64_t pa, uint64_t num_pages);
// Anonymous mmap; returns 0 on failure.
uint64_t AsMmap(AddressSpace* as, uint64_t len, bool writable);
bool AsMunmap(AddressSpace* as, uint64_t va, uint64_t len);

enum class FaultResult : uint8_t {
  kFixed,        // mapped (or a stale TLB entry): retry the access
  kViolation,    // no region, or the access is not allowed there
  kOutOfMemory,  // allowed, but no frame for the page or its tables
};
// Resolves a fault at `va` with the given #PF error code (SDM Vol. 3A, 5.7).
FaultResult AsHandleFault(AddressSpace* as, uint64_t va, uint64_t error);
// True when [va, va+len) lies inside readable (or writable) regions.
bool AsRangeOk(const AddressSpace* as, uint64_t va, uint64_t len, bool write);

void AsActivate(const AddressSpace* as);

}  // namespace kernel

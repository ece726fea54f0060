#include "guest/kernel/vm.h"

#include "guest/abi.h"
#include "guest/kernel/arch.h"
#include "guest/kernel/lib.h"
#include "guest/kernel/pmm.h"

extern "C" uint64_t boot_pml4[512];

namespace kernel {
namespace {

// Entry bits (SDM Vol. 3A, 5.5 tables 5-15..5-20). Bits 9-11 are ignored by
// the CPU and ours: COW marks a write-protected shared data page; NOFREE a
// frame owned by the kernel image (user program, info page).
constexpr uint64_t kPteP = 1ull << 0;
constexpr uint64_t kPteW = 1ull << 1;
constexpr uint64_t kPteU = 1ull << 2;
constexpr uint64_t kPteCow = 1ull << 9;
constexpr uint64_t kPteNoFree = 1ull << 10;
constexpr uint64_t kPteAddr = 0x000ffffffffff000ull;
constexpr uint64_t kTableFlags = kPteP | kPteW | kPteU;

// Above this many single-page invalidations a CR3 reload is cheaper.
constexpr uint64_t kMaxInvlpg = 32;

constexpr int kLevels = 4;  // level 3 = PML4 ... level 0 = page table
inline int Shift(int level) { return 12 + 9 * level; }
inline uint64_t* Table(uint64_t pa) { return PhysToVirt<uint64_t>(pa); }
inline uint64_t Index(uint64_t va, int level) { return (va >> Shift(level)) & 511; }

bool IsActive(const AddressSpace* as) { return (ReadCr3() & kPteAddr) == as->pml4_pa; }

// Returns the leaf slot for va, creating missing tables when `create`.
// *pt_pa receives the page table holding the slot.
uint64_t* Walk(AddressSpace* as, uint64_t va, bool create, uint64_t* pt_pa) {
  uint64_t table_pa = as->pml4_pa;
  for (int level = kLevels - 1; level > 0; --level) {
    uint64_t& e = Table(table_pa)[Index(va, level)];
    if (!(e & kPteP)) {
      if (!create) return nullptr;
      uint64_t child = AllocPage(/*zero=*/true);
      if (child == 0) return nullptr;
      PageCountSet(child, 0);
      e = child | kTableFlags;
      PageCountInc(table_pa);
    }
    table_pa = e & kPteAddr;
  }
  *pt_pa = table_pa;
  return &Table(table_pa)[Index(va, 0)];
}

void ReleaseLeaf(AddressSpace* as, uint64_t pte) {
  if (pte & kPteNoFree) return;
  uint64_t pa = pte & kPteAddr;
  if (PageCountDec(pa) == 0) FreePage(pa);
  --as->resident_pages;
}

// Unmaps [start, end) below the table at table_pa (covering addresses from
// base). Frees tables that become empty. Returns the number of leaves removed.
// Like CopyLevel, it stops once it has seen every present entry of the table
// (its count), so tearing down a sparse address space does not scan 512
// entries of every table (each one an emulated instruction or more on PVM).
uint64_t UnmapLevel(AddressSpace* as, uint64_t table_pa, int level, uint64_t base,
                    uint64_t start, uint64_t end) {
  uint64_t* t = Table(table_pa);
  uint64_t span = 1ull << Shift(level);
  uint64_t removed = 0;
  uint32_t remaining = PageCount(table_pa);  // present entries not yet seen
  for (uint64_t i = Index(start, level); i < 512 && remaining > 0; ++i) {
    uint64_t entry_base = base + i * span;
    if (entry_base >= end) break;
    uint64_t e = t[i];
    if (!(e & kPteP)) continue;
    --remaining;
    if (level == 0) {
      t[i] = 0;
      PageCountDec(table_pa);
      ReleaseLeaf(as, e);
      ++removed;
      continue;
    }
    uint64_t child = e & kPteAddr;
    uint64_t lo = start > entry_base ? start : entry_base;
    uint64_t hi = end < entry_base + span ? end : entry_base + span;
    removed += UnmapLevel(as, child, level - 1, entry_base, lo, hi);
    if (PageCount(child) == 0) {
      t[i] = 0;
      PageCountDec(table_pa);
      FreePage(child);
    }
  }
  return removed;
}

void UnmapRange(AddressSpace* as, uint64_t start, uint64_t end) {
  uint64_t removed = UnmapLevel(as, as->pml4_pa, kLevels - 1, 0, start, end);
  if (removed == 0 || !IsActive(as)) return;
  if (removed > kMaxInvlpg) {
    WriteCr3(as->pml4_pa);
  } else {
    // INVLPG also drops the paging-structure-cache entries for freed tables
    // (SDM Vol. 3A, 5.10.4.1).
    for (uint64_t va = start; va < end; va += kPageSize) Invlpg(va);
  }
}

// Copies the present entries of a parent table into the child's. Leaves become
// copy-on-write in both (read-only shared frames are just shared).
bool CopyLevel(AddressSpace* child_as, uint64_t src_pa, uint64_t dst_pa, int level) {
  uint64_t* src = Table(src_pa);
  uint64_t* dst = Table(dst_pa);
  uint32_t remaining = PageCount(src_pa);  // present entries: stop once all are seen
  uint32_t limit = level == kLevels - 1 ? 256 : 512;
  for (uint32_t i = 0; i < limit && remaining > 0; ++i) {
    uint64_t e = src[i];
    if (!(e & kPteP)) continue;
    --remaining;
    if (level == 0) {
      if (e & (kPteW | kPteCow)) {
        e = (e & ~kPteW) | kPteCow;
        src[i] = e;
      }
      if (!(e & kPteNoFree)) {
        PageCountInc(e & kPteAddr);
        ++child_as->resident_pages;
      }
      dst[i] = e;
      PageCountInc(dst_pa);
      continue;
    }
    uint64_t table = AllocPage(/*zero=*/true);
    if (table == 0) return false;
    PageCountSet(table, 0);
    dst[i] = table | kTableFlags;
    PageCountInc(dst_pa);
    if (!CopyLevel(child_as, e & kPteAddr, table, level - 1)) return false;
  }
  return true;
}

const Vma* FindVma(const AddressSpace* as, uint64_t va) {
  for (const Vma& v : as->vmas) {
    if (v.kind != VmaKind::kFree && va >= v.start && va < v.end) return &v;
  }
  return nullptr;
}

}  // namespace

bool AsCreate(AddressSpace* as) {
  *as = AddressSpace{};
  as->pml4_pa = AllocPage(/*zero=*/true);
  if (as->pml4_pa == 0) return false;
  PageCountSet(as->pml4_pa, 0);
  uint64_t* pml4 = Table(as->pml4_pa);
  // The kernel half uses exactly two PML4 slots; sharing their lower tables
  // makes later kernel mappings (e.g. more direct map) visible everywhere.
  // boot_pml4 is linked at its physical address; read it via the direct map.
  const uint64_t* kernel_pml4 = PhysToVirt<uint64_t>(reinterpret_cast<uint64_t>(boot_pml4));
  pml4[256] = kernel_pml4[256];
  pml4[511] = kernel_pml4[511];
  as->mmap_next = guest::kUserMmapBase;
  return true;
}

void AsDestroy(AddressSpace* as) {
  if (as->pml4_pa == 0) return;
  UnmapLevel(as, as->pml4_pa, kLevels - 1, 0, 0, guest::kUserTop);
  FreePage(as->pml4_pa);
  as->pml4_pa = 0;
}

bool AsFork(AddressSpace* parent, AddressSpace* child) {
  for (int i = 0; i < kMaxVmas; ++i) child->vmas[i] = parent->vmas[i];
  child->mmap_next = parent->mmap_next;
  bool ok = CopyLevel(child, parent->pml4_pa, child->pml4_pa, kLevels - 1);
  // The parent's writable pages just became read-only.
  if (IsActive(parent)) WriteCr3(parent->pml4_pa);
  return ok;
}

bool AsAddVma(AddressSpace* as, uint64_t start, uint64_t end, VmaKind kind, bool writable) {
  for (Vma& v : as->vmas) {
    if (v.kind == VmaKind::kFree) {
      v = Vma{start, end, kind, writable};
      return true;
    }
  }
  return false;
}

bool AsMapFixed(AddressSpace* as, uint64_t va, uint64_t pa, uint64_t num_pages) {
  for (uint64_t i = 0; i < num_pages; ++i) {
    uint64_t pt;
    uint64_t* slot = Walk(as, va + i * kPageSize, /*create=*/true, &pt);
    if (!slot) return false;
    if (!(*slot & kPteP)) PageCountInc(pt);
    *slot = (pa + i * kPageSize) | kPteP | kPteU | kPteNoFree;
  }
  return true;
}

uint64_t AsMmap(AddressSpace* as, uint64_t len, bool writable) {
  len = (len + kPageSize - 1) & kPageMask;
  if (len == 0 || as->mmap_next + len > guest::kUserStackTop - guest::kUserStackBytes) return 0;
  uint64_t va = as->mmap_next;
  if (!AsAddVma(as, va, va + len, VmaKind::kAnon, writable)) return 0;
  as->mmap_next += len;
  return va;
}

bool AsMunmap(AddressSpace* as, uint64_t va, uint64_t len) {
  len = (len + kPageSize - 1) & kPageMask;
  uint64_t end = va + len;
  if ((va & ~kPageMask) || len == 0 || end > guest::kUserTop || end < va) return false;
  for (Vma& v : as->vmas) {
    if (v.kind != VmaKind::kAnon || v.end <= va || v.start >= end) continue;
    if (va > v.start && end < v.end) {
      // Punching a hole splits the region in two.
      if (!AsAddVma(as, end, v.end, VmaKind::kAnon, v.writable)) return false;
      v.end = va;
    } else if (va > v.start) {
      v.end = va;
    } else if (end < v.end) {
      v.start = end;
    } else {
      // Reuse the address range when the top-most region goes away, so that
      // mmap/munmap loops revisit (and rebuild) the same page tables.
      if (v.end == as->mmap_next) as->mmap_next = v.start;
      v.kind = VmaKind::kFree;
    }
  }
  UnmapRange(as, va, end);
  return true;
}

FaultResult AsHandleFault(AddressSpace* as, uint64_t va, uint64_t error) {
  constexpr uint64_t kErrPresent = 1, kErrWrite = 2, kErrFetch = 16;
  const Vma* vma = FindVma(as, va);
  if (!vma) return FaultResult::kViolation;
  bool write = error & kErrWrite;
  if (write && !vma->writable) return FaultResult::kViolation;
  // NX is not used, so an instruction-fetch fault is never ours to fix.
  if (error & kErrFetch) return FaultResult::kViolation;
  va &= kPageMask;
  uint64_t pt;
  uint64_t* slot = Walk(as, va, /*create=*/true, &pt);
  if (!slot) return FaultResult::kOutOfMemory;
  uint64_t e = *slot;
  if (!(e & kPteP)) {
    if (vma->kind != VmaKind::kAnon && vma->kind != VmaKind::kStack) {
      return FaultResult::kViolation;
    }
    uint64_t pa = AllocPage(/*zero=*/true);
    if (pa == 0) return FaultResult::kOutOfMemory;
    *slot = pa | kPteP | kPteU | (vma->writable ? kPteW : 0);
    PageCountInc(pt);
    ++as->resident_pages;
    return FaultResult::kFixed;  // not-present entries are never cached: no invalidation

  }
  if (!(error & kErrPresent) || !write || !(e & kPteCow)) {
    // Present, and the fault is not a COW write: either a stale TLB entry
    // (retry) or a real protection violation.
    return (e & kPteW) ? FaultResult::kFixed : FaultResult::kViolation;
  }
  uint64_t old_pa = e & kPteAddr;
  if (PageCount(old_pa) == 1) {
    *slot = (e | kPteW) & ~kPteCow;  // last sharer: take the frame over
  } else {
    uint64_t pa = AllocPage(/*zero=*/false);
    if (pa == 0) return FaultResult::kOutOfMemory;
    CopyFrame(pa, old_pa);
    PageCountDec(old_pa);
    *slot = pa | kPteP | kPteU | kPteW;
  }
  Invlpg(va);
  return FaultResult::kFixed;
}

bool AsRangeOk(const AddressSpace* as, uint64_t va, uint64_t len, bool write) {
  if (va >= guest::kUserTop || len > guest::kUserTop - va) return false;
  uint64_t end = va + len;
  while (va < end) {
    const Vma* v = FindVma(as, va);
    if (!v || (write && !v->writable)) return false;
    va = v->end;
  }
  return true;
}

void AsActivate(const AddressSpace* as) {
  if (!IsActive(as)) WriteCr3(as->pml4_pa);
}

}  // namespace kernel

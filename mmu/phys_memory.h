// Physical-memory views that the page walkers read tables from.
//
// A walker needs one thing from memory: a host pointer to a 4 KiB page of
// paging-structure entries at a physical address, or nullptr when nothing
// backs that address (the MMIO hole, beyond RAM, an unbacked frame). Walkers
// are templates over the view type, so the view's PageAt() is inlined on the
// hot path; `PhysicalMemory` is the virtual interface for callers that need a
// runtime choice.
//
// Entries are read and updated through std::atomic_ref, because on a
// multi-vCPU guest another vCPU may write the same table concurrently (SDM
// §4.8: the processor sets A/D bits with locked operations).
//
// Thread safety: views are read by any vCPU thread; their backing memory is
// owned elsewhere (FrameTable/FramePool, or a test's array).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "base/addr.h"

namespace mmu {

// Any type with `uint64_t* PageAt(uint64_t page_pa) noexcept` is a view.
template <typename M>
concept PhysMemoryView = requires(M& m, uint64_t pa) {
  { m.PageAt(pa) } -> std::same_as<uint64_t*>;
};

// Runtime-polymorphic view.
class PhysicalMemory {
 public:
  virtual ~PhysicalMemory() = default;
  // The 512 entries of the page at `page_pa` (4 KiB aligned), or nullptr.
  virtual uint64_t* PageAt(uint64_t page_pa) noexcept = 0;
};

// Page-aligned storage, so that every page FlatMemory hands out is a 4 KiB
// aligned host page, as real frames are (SoftTlb::Fill requires it).
template <typename T>
struct PageAlignedAllocator {
  using value_type = T;
  PageAlignedAllocator() = default;
  template <typename U>
  PageAlignedAllocator(const PageAlignedAllocator<U>&) {}  // NOLINT: rebinding
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), Alignment(n)));
  }
  void deallocate(T* p, size_t n) { ::operator delete(p, Alignment(n)); }
  // 2 MiB for memories of 2 MiB or more, as hugepage-backed guest RAM is
  // aligned (so tests can model 2 MiB mappings); 4 KiB otherwise.
  static std::align_val_t Alignment(size_t n) {
    constexpr size_t kLarge = size_t{2} << 20;
    return std::align_val_t{n * sizeof(T) >= kLarge ? kLarge : base::kPageSize};
  }
  template <typename U>
  bool operator==(const PageAlignedAllocator<U>&) const { return true; }
};

// A contiguous, zero-initialised physical memory of `size_bytes` starting at
// physical address 0, page-aligned in host memory. Used by tests, fuzzers and benchmarks as guest or host
// physical memory; also a simple page allocator for building tables.
class FlatMemory final : public PhysicalMemory {
 public:
  explicit FlatMemory(uint64_t size_bytes)
      : words_(size_bytes / sizeof(uint64_t)), next_free_(base::kPageSize) {}

  uint64_t* PageAt(uint64_t page_pa) noexcept override {
    if (page_pa >= size_bytes()) return nullptr;
    return &words_[page_pa / sizeof(uint64_t)];
  }
  uint64_t size_bytes() const { return words_.size() * sizeof(uint64_t); }

  // 64-bit access by physical address (must be in range and 8-aligned).
  uint64_t Read64(uint64_t pa) const { return words_[pa / sizeof(uint64_t)]; }
  void Write64(uint64_t pa, uint64_t value) { words_[pa / sizeof(uint64_t)] = value; }

  // Hands out the next unused 4 KiB page (zeroed), bump-pointer style, starting
  // at 4 KiB so that 0 is never a table. Returns 0 when memory is exhausted.
  uint64_t AllocPage() {
    if (next_free_ + base::kPageSize > size_bytes()) return 0;
    uint64_t pa = next_free_;
    next_free_ += base::kPageSize;
    return pa;
  }
  // Resets the allocator and zeroes memory.
  void Clear() {
    std::fill(words_.begin(), words_.end(), 0);
    next_free_ = base::kPageSize;
  }

 private:
  std::vector<uint64_t, PageAlignedAllocator<uint64_t>> words_;
  uint64_t next_free_;
};

// A window of another memory: physical address pa of this view is
// `base + pa` of the underlying one. Models guest-physical memory placed at an
// offset of host memory (tests, benchmarks, the demo), with its own bump page
// allocator (pages handed out from 4 KiB up, never checked against the
// window's end) so TableBuilder can build guest tables in it.
template <PhysMemoryView Backing>
class WindowMemory {
 public:
  WindowMemory(Backing& backing, uint64_t base) : backing_(backing), base_(base) {}
  uint64_t* PageAt(uint64_t pa) noexcept { return backing_.PageAt(base_ + pa); }
  uint64_t AllocPage() { return next_ += base::kPageSize; }

 private:
  Backing& backing_;
  uint64_t base_;
  uint64_t next_ = 0;
};

}  // namespace mmu

// FakeGuestMemory: a vmm::GuestMemory over plain host buffers, for unit tests of
// anything that reads guest RAM (virtqueues, devices, the loader).
//
// RAM is a list of ranges, each backed by its own page-aligned buffer, so a
// layout with a hole between ranges is as easy as one range. The default layout
// has a low range, a hole and a high range (above 4 GiB), so tests can aim at
// RAM, at the hole, past the end and at addresses that wrap past 2^64.
// HostPtr follows the GuestMemory contract exactly: the whole [gpa, gpa + len)
// must lie in one range (overflow-safe); len 0 is allowed.
//
// Also a bump allocator of zeroed pages inside a range (for rings and buffers),
// and the reverse translation HostToGpa for drivers written against
// virtual addresses.
//
// With `split_pages` set, HostPtr refuses ranges that cross a page, like a
// FrameTable whose frames are not host-contiguous.
//
// Thread safety: HostPtr and ram_bytes are safe from any thread once the object
// is built (the ranges never change); AllocPages is not.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "base/addr.h"
#include "base/check.h"
#include "vmm-host/guest_memory.h"

namespace vmm::testing {

class FakeGuestMemory : public GuestMemory {
 public:
  struct Range {
    uint64_t base_gpa;
    uint64_t size_bytes;
  };
  // Default layout: 4 MiB of low RAM at 0, a hole up to 4 GiB, 1 MiB at 4 GiB.
  static constexpr uint64_t kLowBase = 0;
  static constexpr uint64_t kLowBytes = 4ull << 20;
  static constexpr uint64_t kHoleBase = kLowBase + kLowBytes;
  static constexpr uint64_t kHighBase = 4ull << 30;
  static constexpr uint64_t kHighBytes = 1ull << 20;

  FakeGuestMemory() : FakeGuestMemory({{kLowBase, kLowBytes}, {kHighBase, kHighBytes}}) {}
  explicit FakeGuestMemory(std::vector<Range> ranges) {
    for (const Range& r : ranges) {
      CHECK_EQ(r.base_gpa % base::kPageSize, 0u);
      CHECK_EQ(r.size_bytes % base::kPageSize, 0u);
      CHECK_GT(r.size_bytes, 0u);
      void* p = std::aligned_alloc(base::kPageSize, r.size_bytes);
      CHECK(p != nullptr);
      std::memset(p, 0, r.size_bytes);
      backing_.push_back({r, std::unique_ptr<uint8_t, Free>(static_cast<uint8_t*>(p))});
      next_free_.push_back(0);
    }
  }
  FakeGuestMemory(const FakeGuestMemory&) = delete;
  FakeGuestMemory& operator=(const FakeGuestMemory&) = delete;

  uint8_t* HostPtr(base::Gpa gpa, uint64_t len) noexcept override {
    host_ptr_calls.fetch_add(1, std::memory_order_relaxed);
    // Like a FrameTable whose frames are scattered: no pointer spans two pages.
    if (split_pages && len > 1 &&
        base::PageBase(gpa).value() != base::PageBase(base::Gpa(gpa.value() + (len - 1))).value()) {
      return nullptr;
    }
    for (Backing& b : backing_) {
      if (RangeWithin(gpa.value(), len, b.range.base_gpa, b.range.size_bytes)) {
        return b.data.get() + (gpa.value() - b.range.base_gpa);
      }
    }
    return nullptr;
  }

  uint64_t ram_bytes() const noexcept override {
    uint64_t total = 0;
    for (const Backing& b : backing_) total += b.range.size_bytes;
    return total;
  }

  // `num_pages` zeroed pages from range `range_index`, bottom up; their gpa.
  // CHECK-fails when the range is exhausted (a test bug).
  base::Gpa AllocPages(uint64_t num_pages, size_t range_index = 0) {
    CHECK_LT(range_index, backing_.size());
    Backing& b = backing_[range_index];
    const uint64_t bytes = num_pages * base::kPageSize;
    CHECK_LE(next_free_[range_index] + bytes, b.range.size_bytes) << "FakeGuestMemory exhausted";
    const uint64_t gpa = b.range.base_gpa + next_free_[range_index];
    next_free_[range_index] += bytes;
    std::memset(b.data.get() + (gpa - b.range.base_gpa), 0, bytes);
    return base::Gpa(gpa);
  }

  // Makes AllocPages start again from the bottom of every range (memory keeps
  // its contents until handed out again).
  void ResetAllocator() {
    for (uint64_t& next : next_free_) next = 0;
  }

  // The gpa of a host pointer into RAM, if it is one.
  std::optional<base::Gpa> HostToGpa(const void* host) const {
    const auto* p = static_cast<const uint8_t*>(host);
    for (const Backing& b : backing_) {
      const uint8_t* start = b.data.get();
      if (p >= start && p < start + b.range.size_bytes) {
        return base::Gpa(b.range.base_gpa + static_cast<uint64_t>(p - start));
      }
    }
    return std::nullopt;
  }

  // Raw little-endian pokes for tests that lay out hostile structures. CHECK
  // that the range is RAM (a test bug otherwise).
  template <typename T>
  void Poke(base::Gpa gpa, T value) {
    CHECK(WriteObj(gpa, value)) << "Poke outside RAM at " << gpa;
  }
  template <typename T>
  T Peek(base::Gpa gpa) {
    T value{};
    CHECK(ReadObj(gpa, &value)) << "Peek outside RAM at " << gpa;
    return value;
  }

  std::atomic<uint64_t> host_ptr_calls{0};
  // When set, HostPtr refuses any range that crosses a 4 KiB boundary (as a
  // GuestMemory whose pages are not host-contiguous does); Read, Write and
  // Accessible then go page by page.
  bool split_pages = false;

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  struct Backing {
    Range range;
    std::unique_ptr<uint8_t, Free> data;
  };
  std::vector<Backing> backing_;
  std::vector<uint64_t> next_free_;
};

}  // namespace vmm::testing

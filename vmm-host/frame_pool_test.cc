#include "vmm-host/frame_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/check.h"

namespace vmm {
namespace {

using base::Hfn;
using base::kPageSize;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;

std::unique_ptr<FramePool> MakePool(uint64_t budget_bytes, uint64_t space_bytes = 0) {
  auto pool = FramePool::Create({.budget_bytes = budget_bytes, .address_space_bytes = space_bytes});
  CHECK_OK(pool.status());
  return std::move(*pool);
}

// Pages of [p, p + num_pages * 4 KiB) that are in the memfd's page cache,
// as mincore(2) sees them: an independent check of ResidentFrames().
uint64_t MincoreResident(const uint8_t* p, uint64_t num_pages) {
  std::vector<unsigned char> vec(num_pages);
  CHECK_EQ(mincore(const_cast<uint8_t*>(p), num_pages * kPageSize, vec.data()), 0) << strerror(errno);
  return static_cast<uint64_t>(std::count_if(vec.begin(), vec.end(), [](unsigned char v) { return v & 1; }));
}

// True if lseek(SEEK_DATA) finds data inside [offset, offset + 4 KiB).
bool SeekFindsData(int fd, uint64_t offset) {
  const off_t data = lseek(fd, static_cast<off_t>(offset), SEEK_DATA);
  return data >= 0 && static_cast<uint64_t>(data) < offset + kPageSize;
}

bool AllZero(const uint8_t* p, uint64_t len) {
  return std::all_of(p, p + len, [](uint8_t b) { return b == 0; });
}

void Fill(FramePool& pool, Hfn first, uint64_t n, uint8_t value) {
  std::memset(pool.HostPtr(first), value, n * kPageSize);
}

// --- Creation ------------------------------------------------------------------

TEST(FramePoolCreate, RejectsZeroBudget) {
  auto pool = FramePool::Create({.budget_bytes = 0});
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(pool.status().message()), HasSubstr("budget must be greater than 0"));
}

TEST(FramePoolCreate, RejectsUnalignedBudget) {
  auto pool = FramePool::Create({.budget_bytes = kMiB + 100});
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(pool.status().message()), HasSubstr("not a multiple of 4 KiB"));
}

TEST(FramePoolCreate, RejectsBadAddressSpace) {
  auto small = FramePool::Create({.budget_bytes = 2 * kMiB, .address_space_bytes = kMiB});
  ASSERT_FALSE(small.ok());
  EXPECT_THAT(std::string(small.status().message()), HasSubstr("smaller than its budget"));
  auto unaligned = FramePool::Create({.budget_bytes = kMiB, .address_space_bytes = 2 * kMiB + 1});
  ASSERT_FALSE(unaligned.ok());
  EXPECT_THAT(std::string(unaligned.status().message()), HasSubstr("not a multiple of 4 KiB"));
}

TEST(FramePoolCreate, ReportsMmapFailureWithErrnoText) {
  // 2^61 bytes is a legal memfd size but cannot be mapped into a 47-bit
  // user address space.
  auto pool = FramePool::Create({.budget_bytes = kMiB, .address_space_bytes = uint64_t{1} << 61});
  ASSERT_FALSE(pool.ok());
  EXPECT_THAT(std::string(pool.status().message()), HasSubstr("mmap of the frame pool memfd"));
  EXPECT_THAT(std::string(pool.status().message()), HasSubstr(strerror(ENOMEM)));
}

TEST(FramePoolCreate, CapacityAndAddressSpace) {
  auto pool = MakePool(4 * kMiB, 64 * kMiB);
  EXPECT_EQ(pool->capacity_frames(), 1024u);
  EXPECT_EQ(pool->address_space_frames(), 16384u);
  EXPECT_EQ(pool->frames_charged(), 0u);
  EXPECT_EQ(pool->frames_free(), 1024u);
  EXPECT_EQ(pool->frames_allocated(), 0u);
  EXPECT_GE(pool->fd(), 0);
  EXPECT_EQ(*pool->ResidentFrames(), 0u);
  // The address space defaults to the budget.
  auto same = MakePool(kMiB);
  EXPECT_EQ(same->address_space_frames(), 256u);
  // The memfd really has that size.
  EXPECT_EQ(lseek(pool->fd(), 0, SEEK_END), static_cast<off_t>(64 * kMiB));
}

TEST(FormatBytes, Units) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(4096), "4 KiB");
  EXPECT_EQ(FormatBytes(100 * kMiB), "100 MiB");
  EXPECT_EQ(FormatBytes(3 * kMiB / 2 * 1024), "1.5 GiB");
  EXPECT_EQ(FormatBytes(1000), "1000 B");
}

// --- Extents -------------------------------------------------------------------

TEST(FramePoolExtents, ContiguousDisjointAndZeroFilled) {
  auto pool = MakePool(16 * kMiB);
  std::vector<Extent> extents;
  for (uint64_t n : {1, 7, 256, 3, 1000, 64}) {
    auto e = pool->AllocateExtent(n);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->num_frames, n);
    EXPECT_TRUE(pool->Contains(e->first, n));
    EXPECT_TRUE(AllZero(pool->HostPtr(e->first), e->size_bytes()));
    extents.push_back(*e);
  }
  for (size_t i = 0; i < extents.size(); ++i) {
    for (size_t j = i + 1; j < extents.size(); ++j) {
      const bool disjoint = extents[i].end() <= extents[j].first || extents[j].end() <= extents[i].first;
      EXPECT_TRUE(disjoint) << i << " overlaps " << j;
    }
  }
  // Contiguity through the one mapping: a pattern written over each whole
  // extent reads back intact (a mapping per frame would not allow this).
  for (size_t i = 0; i < extents.size(); ++i) Fill(*pool, extents[i].first, extents[i].num_frames, uint8_t(i + 1));
  for (size_t i = 0; i < extents.size(); ++i) {
    const uint8_t* p = pool->HostPtr(extents[i].first);
    EXPECT_TRUE(std::all_of(p, p + extents[i].size_bytes(), [&](uint8_t b) { return b == i + 1; }));
  }
  EXPECT_EQ(pool->frames_allocated(), 1 + 7 + 256 + 3 + 1000 + 64u);
  EXPECT_EQ(pool->counters().Get(FramePoolCounters::kExtentsAllocated), 6u);
  for (const Extent& e : extents) pool->FreeExtent(e);
  EXPECT_EQ(pool->frames_allocated(), 0u);
  EXPECT_EQ(*pool->ResidentFrames(), 0u);
}

TEST(FramePoolExtents, FreedSpaceIsReusedFirstFitAndComesBackZero) {
  auto pool = MakePool(kMiB);  // 256 frames
  auto a = *pool->AllocateExtent(64);
  auto b = *pool->AllocateExtent(64);
  auto c = *pool->AllocateExtent(128);
  Fill(*pool, b.first, 64, 0xab);
  pool->FreeExtent(b);
  auto d = pool->AllocateExtent(32);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->first, b.first);  // first fit: the gap b left
  EXPECT_TRUE(AllZero(pool->HostPtr(d->first), d->size_bytes()));
  pool->FreeExtent(a);
  pool->FreeExtent(*d);
  pool->FreeExtent(c);
  // All merged back: one extent of the whole space fits again.
  auto all = pool->AllocateExtent(256);
  ASSERT_TRUE(all.ok()) << all.status();
  pool->FreeExtent(*all);
}

// Regression: the mapping landed wherever mmap put it, so whether guest RAM
// got 2 MiB EPT entries depended on the process's other mappings (an ASan
// build and a release build disagreed). The mapping and every extent of
// 2 MiB or more now start on a 2 MiB boundary.
TEST(FramePoolExtents, LargeExtentsStartOnTwoMiBBoundaries) {
  constexpr uint64_t kAlign = FramePool::kLargeAlignFrames;
  for (int round = 0; round < 4; ++round) {
    auto pool = MakePool(16 * kMiB);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->mapping_base()) % FramePool::kLargeAlignBytes, 0u);
    auto small = *pool->AllocateExtent(3);  // the free space now starts unaligned
    auto large = *pool->AllocateExtent(kAlign + 7);
    EXPECT_EQ(large.first.value() % kAlign, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->HostPtr(large.first)) % FramePool::kLargeAlignBytes, 0u);
    // The frames skipped for alignment stay free: an extent that fits them
    // gets them, first fit.
    auto gap = *pool->AllocateExtent(kAlign - 3);
    EXPECT_EQ(gap.first.value(), 3u);
    pool->FreeExtent(gap);
    pool->FreeExtent(large);
    pool->FreeExtent(small);
    auto all = pool->AllocateExtent(16 * kMiB / kPageSize);
    ASSERT_TRUE(all.ok()) << "everything merged back: " << all.status();
    pool->FreeExtent(*all);
  }
}

TEST(FramePoolExtents, NoRunLongEnoughFailsWithClearMessage) {
  auto pool = MakePool(kMiB);
  auto a = *pool->AllocateExtent(100);
  auto b = *pool->AllocateExtent(56);
  auto c = *pool->AllocateExtent(100);
  pool->FreeExtent(b);  // 56 frames free in the middle, none at the end
  auto too_big = pool->AllocateExtent(57);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(too_big.status().message(),
            "no contiguous run of 228 KiB in the frame pool's address space: 224 KiB free of 1 MiB "
            "in 1 runs, the largest 224 KiB");
  EXPECT_FALSE(pool->AllocateExtent(0).ok());
  EXPECT_EQ(pool->counters().Get(FramePoolCounters::kExtentAllocFailures), 1u);
  pool->FreeExtent(a);
  pool->FreeExtent(c);
}

TEST(FramePoolDeathTest, FreeExtentThatWasNotAllocatedDies) {
  auto pool = MakePool(kMiB);
  auto a = *pool->AllocateExtent(8);
  EXPECT_DEATH(pool->FreeExtent(Extent{a.first, 4}), "was not allocated");
  pool->FreeExtent(a);
  EXPECT_DEATH(pool->FreeExtent(a), "was not allocated");
}

// --- Single frames and refcounts -------------------------------------------------

TEST(FramePoolFrames, SingleFramesComeFromTheTopAndExhaust) {
  auto pool = MakePool(64 * kPageSize);
  auto extent = *pool->AllocateExtent(16);
  EXPECT_EQ(extent.first, Hfn(0));
  std::set<uint64_t> seen;
  for (int i = 0; i < 48; ++i) {
    auto f = pool->AllocateFrame();
    ASSERT_TRUE(f.has_value()) << i;
    EXPECT_EQ(f->value(), 63u - i);  // top-down
    EXPECT_EQ(pool->RefCount(*f), 1u);
    EXPECT_TRUE(seen.insert(f->value()).second);
  }
  EXPECT_FALSE(pool->AllocateFrame().has_value());
  EXPECT_EQ(pool->counters().Get(FramePoolCounters::kFrameAllocFailures), 1u);
  EXPECT_EQ(pool->RefCount(extent.first), 0u);  // extent frames are not refcounted
  for (uint64_t f : seen) pool->FreeFrame(Hfn(f));
  pool->FreeExtent(extent);
  EXPECT_EQ(pool->frames_allocated(), 0u);
}

TEST(FramePoolFrames, LastUnrefPunchesTheFrameForReal) {
  auto pool = MakePool(kMiB);
  const Hfn f = *pool->AllocateFrame();
  std::memset(pool->HostPtr(f), 0x5a, kPageSize);
  EXPECT_EQ(*pool->ResidentFrames(), 1u);
  EXPECT_EQ(MincoreResident(pool->HostPtr(f), 1), 1u);
  EXPECT_TRUE(SeekFindsData(pool->fd(), pool->OffsetOf(f)));

  pool->Ref(f);
  pool->Ref(f);
  EXPECT_EQ(pool->RefCount(f), 3u);
  EXPECT_FALSE(pool->Unref(f));
  EXPECT_FALSE(pool->Unref(f));
  EXPECT_EQ(*pool->ResidentFrames(), 1u);  // still referenced: still backed
  EXPECT_EQ(pool->HostPtr(f)[100], 0x5a);

  EXPECT_TRUE(pool->Unref(f));
  EXPECT_EQ(pool->RefCount(f), 0u);
  EXPECT_EQ(*pool->ResidentFrames(), 0u);
  EXPECT_EQ(MincoreResident(pool->HostPtr(f), 1), 0u);
  EXPECT_FALSE(SeekFindsData(pool->fd(), pool->OffsetOf(f)));
  EXPECT_EQ(pool->counters().Get(FramePoolCounters::kFramesFreed), 1u);
  EXPECT_GE(pool->counters().Get(FramePoolCounters::kPunches), 1u);

  // The frame comes back zero-filled.
  const Hfn again = *pool->AllocateFrame();
  EXPECT_EQ(again, f);
  EXPECT_TRUE(AllZero(pool->HostPtr(again), kPageSize));
  pool->FreeFrame(again);
}

TEST(FramePoolDeathTest, FreeFrameMisuseDies) {
  auto pool = MakePool(kMiB);
  const Hfn f = *pool->AllocateFrame();
  pool->Ref(f);
  EXPECT_DEATH(pool->FreeFrame(f), "has other references");
  pool->Unref(f);
  pool->FreeFrame(f);
  EXPECT_DEATH(pool->FreeFrame(f), "not an allocated frame");
  EXPECT_DEATH(pool->Unref(Hfn(3)), "not an allocated frame");
}

// --- Budget --------------------------------------------------------------------

TEST(FramePoolBudget, ChargeUpToCapacityThenFailClearly) {
  auto pool = MakePool(kMiB, 64 * kMiB);  // 256 frames of budget
  EXPECT_TRUE(pool->TryCharge(200));
  EXPECT_TRUE(pool->Charge(56, "x").ok());
  EXPECT_EQ(pool->frames_charged(), 256u);
  EXPECT_EQ(pool->frames_free(), 0u);
  EXPECT_FALSE(pool->TryCharge(1));
  absl::Status s = pool->Charge(1, "guest RAM of 4 KiB for vm 'y'");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "guest RAM of 4 KiB for vm 'y' does not fit the host budget: 0 B free of 1 MiB");
  EXPECT_EQ(pool->counters().Get(FramePoolCounters::kChargeFailures), 2u);
  EXPECT_EQ(pool->frames_charged(), 256u);  // failures charge nothing

  pool->Uncharge(10);
  EXPECT_EQ(pool->frames_free(), 10u);
  EXPECT_FALSE(pool->TryCharge(11));
  EXPECT_TRUE(pool->TryCharge(10));
  pool->Uncharge(256);
  EXPECT_EQ(pool->frames_charged(), 0u);
}

TEST(FramePoolBudget, MessageNamesWhatDidNotFit) {
  auto pool = MakePool(256 * kMiB);
  ASSERT_TRUE(pool->Charge(156 * kMiB / kPageSize, "vm a").ok());
  absl::Status s = pool->Charge(512 * kMiB / kPageSize, "guest RAM of 512 MiB for vm 'x'");
  EXPECT_EQ(s.message(), "guest RAM of 512 MiB for vm 'x' does not fit the host budget: 100 MiB free of 256 MiB");
}

TEST(FramePoolBudget, ChargingIsIndependentOfAddressSpace) {
  // Over-commit: the address space (and extents) may exceed the budget.
  auto pool = MakePool(kMiB, 16 * kMiB);
  auto big = pool->AllocateExtent(2048);  // 8 MiB of address space
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(pool->frames_charged(), 0u);
  EXPECT_FALSE(pool->TryCharge(2048));
  pool->FreeExtent(*big);
}

TEST(FramePoolBudget, ConcurrentChargesNeverExceedCapacity) {
  auto pool = MakePool(kMiB);  // 256
  std::atomic<uint64_t> won{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (pool->TryCharge(1)) won.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(won.load(), 256u);
  EXPECT_EQ(pool->frames_charged(), 256u);
}

// --- Discard and residency ----------------------------------------------------------

TEST(FramePoolMemory, DiscardReleasesMemoryAndReadsBackZero) {
  auto pool = MakePool(kMiB);
  const Extent e = *pool->AllocateExtent(16);
  Fill(*pool, e.first, 16, 0x77);
  EXPECT_EQ(*pool->ResidentFrames(), 16u);
  EXPECT_EQ(*pool->ResidentFrames(e.first, 4), 4u);
  EXPECT_EQ(MincoreResident(pool->HostPtr(e.first), 16), 16u);

  ASSERT_TRUE(pool->Discard(e.first + 4, 8).ok());
  EXPECT_EQ(*pool->ResidentFrames(), 8u);
  EXPECT_EQ(*pool->ResidentFrames(e.first + 4, 8), 0u);
  EXPECT_EQ(MincoreResident(pool->HostPtr(e.first), 16), 8u);
  for (uint64_t i = 0; i < 16; ++i) {
    EXPECT_EQ(SeekFindsData(pool->fd(), pool->OffsetOf(e.first + i)), i < 4 || i >= 12) << i;
  }
  // Neither freed nor uncharged: only the memory went away.
  EXPECT_EQ(pool->frames_allocated(), 16u);
  EXPECT_TRUE(AllZero(pool->HostPtr(e.first + 4), 8 * kPageSize));
  EXPECT_EQ(pool->HostPtr(e.first + 3)[kPageSize - 1], 0x77);
  EXPECT_EQ(pool->HostPtr(e.first + 12)[0], 0x77);
  EXPECT_EQ(pool->counters().Get(FramePoolCounters::kPunchedFrames), 8u);
  pool->FreeExtent(e);
  EXPECT_EQ(*pool->ResidentFrames(), 0u);
}

TEST(FramePoolMemory, ResidentFramesCountsScatteredRuns) {
  auto pool = MakePool(4 * kMiB);
  const Extent e = *pool->AllocateExtent(1024);
  uint64_t expected = 0;
  for (uint64_t i = 0; i < 1024; i += 3) {
    pool->HostPtr(e.first + i)[7] = 1;
    ++expected;
  }
  EXPECT_EQ(*pool->ResidentFrames(), expected);
  EXPECT_EQ(MincoreResident(pool->HostPtr(e.first), 1024), expected);
  EXPECT_EQ(*pool->ResidentFrames(e.first + 1, 2), 0u);
  EXPECT_EQ(*pool->ResidentFrames(e.first + 1, 3), 1u);
  pool->FreeExtent(e);
}

// --- The fd/offset contract the kvm memslot relies on --------------------------------

TEST(FramePoolMapping, SecondMappingOfTheFdSeesTheSameFrames) {
  auto pool = MakePool(4 * kMiB);
  const Extent pad = *pool->AllocateExtent(5);  // so the extent does not start at offset 0
  const Extent e = *pool->AllocateExtent(64);
  ASSERT_NE(pool->OffsetOf(e.first), 0u);
  void* second = mmap(nullptr, e.size_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, pool->fd(),
                      static_cast<off_t>(pool->OffsetOf(e.first)));
  ASSERT_NE(second, MAP_FAILED) << strerror(errno);
  auto* view = static_cast<uint8_t*>(second);

  // Written through the second mapping, seen through HostPtr...
  for (uint64_t i = 0; i < 64; ++i) view[i * kPageSize + 9] = static_cast<uint8_t>(i + 1);
  for (uint64_t i = 0; i < 64; ++i) EXPECT_EQ(pool->HostPtr(e.first + i)[9], i + 1);
  EXPECT_EQ(base::PtrOf<uint8_t>(pool->HostAddress(e.first)), pool->HostPtr(e.first));
  // ...and the other way round.
  std::memset(pool->HostPtr(e.first + 10), 0xee, kPageSize);
  EXPECT_EQ(view[10 * kPageSize + 4095], 0xee);
  // A punch through the pool is seen by the second mapping at once.
  ASSERT_TRUE(pool->Discard(e.first + 10, 1).ok());
  EXPECT_EQ(view[10 * kPageSize + 4095], 0);
  EXPECT_EQ(view[11 * kPageSize + 9], 12);
  munmap(second, e.size_bytes());
  pool->FreeExtent(e);
  pool->FreeExtent(pad);
}

// --- Concurrency -----------------------------------------------------------------

TEST(FramePoolConcurrency, NoFrameIsHandedOutTwice) {
  auto pool = MakePool(8 * kMiB);  // 2048 frames
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  std::vector<std::vector<uint64_t>> held(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint64_t>& mine = held[t];
      std::vector<Extent> extents;
      for (int r = 0; r < kRounds; ++r) {
        // Allocate a few frames and an extent, tag them, free some.
        for (int k = 0; k < 3; ++k) {
          auto f = pool->AllocateFrame();
          if (!f) continue;
          uint64_t* p = reinterpret_cast<uint64_t*>(pool->HostPtr(*f));
          EXPECT_EQ(p[0], 0u) << "frame handed out non-zero";
          p[0] = (uint64_t(t) << 32) | f->value();
          mine.push_back(f->value());
        }
        if (auto e = pool->AllocateExtent(1 + r % 4); e.ok()) {
          for (uint64_t i = 0; i < e->num_frames; ++i) {
            uint64_t* p = reinterpret_cast<uint64_t*>(pool->HostPtr(e->first + i));
            EXPECT_EQ(p[0], 0u);
            p[0] = (uint64_t(t) << 32) | (e->first.value() + i);
          }
          extents.push_back(*e);
        }
        if (r % 2 == 0 && !mine.empty()) {
          pool->FreeFrame(Hfn(mine.back()));
          mine.pop_back();
        }
        if (r % 3 == 0 && !extents.empty()) {
          pool->FreeExtent(extents.back());
          extents.pop_back();
        }
        for (uint64_t f : mine) {
          const uint64_t tag = *reinterpret_cast<uint64_t*>(pool->HostPtr(Hfn(f)));
          if (tag != ((uint64_t(t) << 32) | f)) {
            ADD_FAILURE() << "frame " << f << " of thread " << t << " was overwritten";
            return;
          }
        }
      }
      for (const Extent& e : extents) pool->FreeExtent(e);
    });
  }
  for (auto& t : threads) t.join();
  std::set<uint64_t> all;
  uint64_t total = 0;
  for (const auto& mine : held) {
    total += mine.size();
    all.insert(mine.begin(), mine.end());
  }
  EXPECT_EQ(all.size(), total) << "a frame was handed out twice";
  EXPECT_EQ(pool->frames_allocated(), total);
  EXPECT_EQ(*pool->ResidentFrames(), total);
  for (uint64_t f : all) pool->FreeFrame(Hfn(f));
  EXPECT_EQ(*pool->ResidentFrames(), 0u);
  EXPECT_EQ(pool->frames_allocated(), 0u);
}

}  // namespace
}  // namespace vmm

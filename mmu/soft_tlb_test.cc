#include "mmu/soft_tlb.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

namespace mmu {
namespace {

using MmuIdx = SoftTlb::MmuIdx;
constexpr MmuIdx kSup = MmuIdx::kSupervisor;
constexpr MmuIdx kUsr = MmuIdx::kUser;
constexpr SoftTlb::Perms kRw{.read = true, .write = true, .fetch = false};
constexpr SoftTlb::Perms kRo{.read = true, .write = false, .fetch = false};
constexpr SoftTlb::Perms kRx{.read = true, .write = false, .fetch = true};

// Page-aligned host memory standing in for guest frames.
class HostPages {
 public:
  explicit HostPages(size_t num_pages)
      : mem_(static_cast<uint8_t*>(std::aligned_alloc(base::kPageSize, num_pages * base::kPageSize))) {}
  uint8_t* page(size_t i) const { return mem_.get() + i * base::kPageSize; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> mem_;
};

class SoftTlbTest : public ::testing::Test {
 protected:
  HostPages host_{8};
  SoftTlb tlb_;
};

TEST_F(SoftTlbTest, EmptyTableMissesEverything) {
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kUsr, 0x1000, 8), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kFetch>(kSup, ~uint64_t{0} & ~base::kPageMask, 1), nullptr);
}

TEST_F(SoftTlbTest, HitReturnsHostPointerForEveryOffset) {
  const uint64_t gva = 0x7fff'1234'5000;
  tlb_.Fill(kSup, gva + 0x10, host_.page(3), kRw);
  for (uint64_t off : {0ull, 1ull, 0x7f8ull, 0xff8ull}) {
    EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, gva + off, 8), host_.page(3) + off) << off;
  }
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, gva + 0xfff, 1), host_.page(3) + 0xfff);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, gva + base::kPageSize, 1), nullptr);
  EXPECT_EQ(tlb_.counters().Get(SoftTlbCounters::kFill), 1u);
}

TEST_F(SoftTlbTest, EachAccessTypeHasItsOwnTag) {
  tlb_.Fill(kSup, 0x1000, host_.page(0), kRo);
  tlb_.Fill(kSup, 0x2000, host_.page(1), kRx);
  tlb_.Fill(kSup, 0x3000, host_.page(2), SoftTlb::Perms{.write = true});
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x1000, 4), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0x1000, 4), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kFetch>(kSup, 0x1000, 4), nullptr);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kFetch>(kSup, 0x2000, 4), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0x2000, 4), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x3000, 4), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0x3000, 4), host_.page(2));
}

TEST_F(SoftTlbTest, PageCrossingAccessMisses) {
  tlb_.Fill(kSup, 0x4000, host_.page(0), kRw);
  tlb_.Fill(kSup, 0x5000, host_.page(1), kRw);
  // Both pages are resident, yet an access straddling them must miss so that
  // the caller splits it (the two host pages need not be adjacent).
  for (uint32_t size : {2u, 4u, 8u, 16u}) {
    const uint64_t gva = 0x5000 - size + 1;
    EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, gva, size), nullptr) << size;
    EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, gva, size), nullptr) << size;
    EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x5000 - size, size), nullptr) << size;
  }
}

TEST_F(SoftTlbTest, AccessWrappingAroundTheAddressSpaceMisses) {
  const uint64_t top_page = ~base::kPageMask;
  tlb_.Fill(kSup, top_page, host_.page(0), kRw);
  tlb_.Fill(kSup, 0, host_.page(1), kRw);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, top_page + 0xff8, 8), host_.page(0) + 0xff8);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, top_page + 0xffc, 8), nullptr);
}

TEST_F(SoftTlbTest, UserAndSupervisorAreSeparate) {
  tlb_.Fill(kSup, 0x6000, host_.page(0), kRw);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kUsr, 0x6000, 1), nullptr);
  tlb_.Fill(kUsr, 0x6000, host_.page(0), kRo);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kUsr, 0x6000, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kUsr, 0x6000, 1), nullptr);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0x6000, 1), nullptr);
  tlb_.FlushMmuIdx(kUsr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kUsr, 0x6000, 1), nullptr);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x6000, 1), nullptr);
}

TEST_F(SoftTlbTest, ConflictingPagesReplaceEachOther) {
  const uint64_t stride = uint64_t{tlb_.num_entries()} * base::kPageSize;
  tlb_.Fill(kSup, 0x1000, host_.page(0), kRw);
  tlb_.Fill(kSup, 0x1000 + stride, host_.page(1), kRw);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x1000, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x1000 + stride, 1), host_.page(1));
}

TEST_F(SoftTlbTest, FlushPageRemovesOnlyThatPageInEveryMmuIdx) {
  tlb_.Fill(kSup, 0x7000, host_.page(0), kRw);
  tlb_.Fill(kUsr, 0x7000, host_.page(0), kRw);
  tlb_.Fill(kSup, 0x8000, host_.page(1), kRw);
  tlb_.FlushPage(0x7abc);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x7000, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kUsr, 0x7000, 1), nullptr);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x8000, 1), nullptr);
  // Flushing a page that only shares the slot leaves the resident one.
  const uint64_t stride = uint64_t{tlb_.num_entries()} * base::kPageSize;
  tlb_.FlushPage(0x8000 + stride);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x8000, 1), nullptr);
  EXPECT_EQ(tlb_.counters().Get(SoftTlbCounters::kFlushPage), 2u);
}

TEST_F(SoftTlbTest, FlushPageInsideLargePageFlushesEveryPiece) {
  const uint64_t large = 0x4000'0000;  // a 2 MiB guest mapping, filled 4 KiB at a time
  tlb_.Fill(kUsr, large + 0x0000, host_.page(0), kRw, base::kLargePageSize2M);
  tlb_.Fill(kUsr, large + 0x5000, host_.page(1), kRw, base::kLargePageSize2M);
  tlb_.Fill(kSup, 0x1000, host_.page(2), kRw);
  // INVLPG of an address in the large page that was never filled itself.
  tlb_.FlushPage(large + 0x10'0000);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kUsr, large, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kUsr, large + 0x5000, 1), nullptr);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x1000, 1), nullptr);
  EXPECT_EQ(tlb_.counters().Get(SoftTlbCounters::kFlushPageLarge), 1u);
  // The tracked range is forgotten with the flush: a 4 KiB flush is cheap again.
  tlb_.Fill(kUsr, 0x3000, host_.page(3), kRw);
  tlb_.FlushPage(large);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kUsr, 0x3000, 1), nullptr);
}

TEST_F(SoftTlbTest, LargePageRangeGrowsToCoverSeveralLargePages) {
  tlb_.Fill(kSup, 0x4000'0000, host_.page(0), kRw, base::kLargePageSize2M);
  tlb_.Fill(kSup, 0x4060'0000, host_.page(1), kRw, base::kLargePageSize2M);
  tlb_.FlushPage(0x4060'1000);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x4000'0000, 1), nullptr);
  EXPECT_EQ(tlb_.counters().Get(SoftTlbCounters::kFlushPageLarge), 1u);
}

TEST_F(SoftTlbTest, FlushAllRemovesEverything) {
  for (uint64_t i = 0; i < 8; ++i) {
    tlb_.Fill(kSup, i * base::kPageSize, host_.page(i), kRw);
    tlb_.Fill(kUsr, i * base::kPageSize, host_.page(i), kRx);
  }
  tlb_.FlushAll();
  for (uint64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, i * base::kPageSize, 1), nullptr);
    EXPECT_EQ(tlb_.Lookup<SoftTlb::kFetch>(kUsr, i * base::kPageSize, 1), nullptr);
  }
  // Refilling after the flush works.
  tlb_.Fill(kSup, 0, host_.page(5), kRw);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0, 1), host_.page(5));
}

TEST_F(SoftTlbTest, EpochWrapClearsStaleEntries) {
  // Fill in epoch 0, flush until the epoch wraps back to 0: the old entry
  // must not come back to life.
  tlb_.Fill(kSup, 0x9000, host_.page(0), kRw);
  for (uint64_t i = 0; i <= SoftTlb::kMaxEpoch; ++i) {
    tlb_.FlushAll();
    ASSERT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x9000, 1), nullptr) << i;
  }
  // One per table: each MMU index's main table and its side table of global pages.
  EXPECT_EQ(tlb_.counters().Get(SoftTlbCounters::kEpochWrap), 4u);
  tlb_.Fill(kSup, 0x9000, host_.page(1), kRw);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x9000, 1), host_.page(1));
}

// --- Global pages ---

TEST_F(SoftTlbTest, GlobalPageSurvivesFlushNonGlobalAndIsRefilled) {
  tlb_.Fill(kSup, 0xffff'8000'0000'1000, host_.page(0), kRx, base::kPageSize, /*global=*/true);
  tlb_.Fill(kSup, 0x2000, host_.page(1), kRw);  // not global
  tlb_.FlushNonGlobal();
  // Both miss the main table: the hit path is the same compare as before.
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0xffff'8000'0000'1000, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x2000, 1), nullptr);
  // The global one comes back from the side table, with its permissions.
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0xffff'8000'0000'1008, Access::kFetch), host_.page(0) + 8);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, 0xffff'8000'0000'1010, 1), host_.page(0) + 0x10);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0xffff'8000'0000'1010, 1), nullptr);
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0x2000, Access::kRead), nullptr);
  EXPECT_EQ(tlb_.counters().Get(SoftTlbCounters::kGlobalRefill), 1u);
}

TEST_F(SoftTlbTest, RefillGlobalOnlyForAllowedAccessesAndItsOwnMmuIndex) {
  tlb_.Fill(kSup, 0x5000, host_.page(0), kRo, base::kPageSize, /*global=*/true);
  tlb_.FlushNonGlobal();
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0x5000, Access::kWrite), nullptr);  // the strategy decides
  EXPECT_EQ(tlb_.RefillGlobal(kUsr, 0x5000, Access::kRead), nullptr);
  // A page that aliases it in the side table is not it.
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0x5000 + SoftTlb::kGlobalEntries * base::kPageSize, Access::kRead),
            nullptr);
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0x5000, Access::kRead), host_.page(0));
}

TEST_F(SoftTlbTest, EveryOtherFlushRemovesGlobalPages) {
  auto fill = [&] { tlb_.Fill(kSup, 0x7000, host_.page(0), kRw, base::kPageSize, /*global=*/true); };
  auto refillable = [&] {
    tlb_.FlushNonGlobal();
    return tlb_.RefillGlobal(kSup, 0x7000, Access::kRead) != nullptr;
  };
  fill();
  EXPECT_TRUE(refillable());
  fill();
  tlb_.FlushAll();  // host invalidations, mode changes, CR4.PGE toggles
  EXPECT_FALSE(refillable());
  fill();
  tlb_.FlushPage(0x7000);  // INVLPG
  EXPECT_FALSE(refillable());
  fill();
  tlb_.FlushMmuIdx(kSup);
  EXPECT_FALSE(refillable());
  fill();
  tlb_.Fill(kSup, 0x7000, host_.page(1), kRw);  // the page is not global any more
  EXPECT_FALSE(refillable());
}

TEST_F(SoftTlbTest, DropWriteReachesTheGlobalCopy) {
  tlb_.Fill(kSup, 0x9000, host_.page(0), kRw, base::kPageSize, /*global=*/true);
  tlb_.DropWrite(kSup, 0x9000);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0x9000, 1), nullptr);
  EXPECT_NE(tlb_.Lookup<SoftTlb::kRead>(kSup, 0x9000, 1), nullptr);
  tlb_.FlushNonGlobal();
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0x9000, Access::kWrite), nullptr);
  EXPECT_EQ(tlb_.RefillGlobal(kSup, 0x9000, Access::kRead), host_.page(0));
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kWrite>(kSup, 0x9000, 1), nullptr);
}

TEST_F(SoftTlbTest, FlushPageInsideAGlobalLargePageRemovesEveryRefillablePiece) {
  const uint64_t large = 0xffff'8000'4000'0000;
  tlb_.Fill(kSup, large, host_.page(0), kRw, base::kLargePageSize2M, /*global=*/true);
  tlb_.Fill(kSup, large + 0x5000, host_.page(1), kRw, base::kLargePageSize2M, /*global=*/true);
  tlb_.FlushNonGlobal();
  ASSERT_NE(tlb_.RefillGlobal(kSup, large, Access::kRead), nullptr);
  // INVLPG of a never-filled address in the large page: both pieces go,
  // the refilled one and the one only the side table holds.
  tlb_.FlushPage(large + 0x10'0000);
  EXPECT_EQ(tlb_.Lookup<SoftTlb::kRead>(kSup, large, 1), nullptr);
  EXPECT_EQ(tlb_.RefillGlobal(kSup, large, Access::kRead), nullptr);
  EXPECT_EQ(tlb_.RefillGlobal(kSup, large + 0x5000, Access::kRead), nullptr);
}

TEST_F(SoftTlbTest, HostPointerReadsAndWritesTheFilledPage) {
  tlb_.Fill(kSup, 0xdead'b000, host_.page(4), kRw);
  uint8_t* p = tlb_.Lookup<SoftTlb::kWrite>(kSup, 0xdead'b123, 1);
  ASSERT_NE(p, nullptr);
  *p = 0x5a;
  EXPECT_EQ(host_.page(4)[0x123], 0x5a);
}

TEST(SoftTlbConfigTest, HonoursEntryCount) {
  SoftTlb tlb(SoftTlb::Config{.num_entries = 16});
  EXPECT_EQ(tlb.num_entries(), 16u);
  HostPages host(1);
  tlb.Fill(SoftTlb::MmuIdx::kSupervisor, 0x1000, host.page(0), kRw);
  tlb.Fill(SoftTlb::MmuIdx::kSupervisor, 0x1000 + 16 * base::kPageSize, host.page(0), kRw);
  EXPECT_EQ(tlb.Lookup<SoftTlb::kRead>(SoftTlb::MmuIdx::kSupervisor, 0x1000, 1), nullptr);
}

}  // namespace
}  // namespace mmu

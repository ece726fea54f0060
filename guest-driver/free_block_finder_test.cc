// FreeBlockFinder against a simple model: every frame fed ends up in exactly one
// block, leftover or unwound frame; blocks are aligned and made of frames that
// were fed consecutively.
#include "guest-driver/free_block_finder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace guest_driver {
namespace {

struct RecordingSink {
  std::vector<uint64_t> blocks, leftovers, unwound;
  void OnBlock(uint64_t pfn) { blocks.push_back(pfn); }
  void OnLeftover(uint64_t pfn) { leftovers.push_back(pfn); }
  void OnUnwind(uint64_t pfn) { unwound.push_back(pfn); }
};

TEST(FreeBlockFinderTest, OrderZeroMakesEveryFrameABlock) {
  FreeBlockFinder f(0);
  RecordingSink s;
  for (uint64_t pfn : {7u, 3u, 100u}) f.Feed(pfn, s);
  EXPECT_EQ(s.blocks, (std::vector<uint64_t>{7, 3, 100}));
  EXPECT_TRUE(s.leftovers.empty());
}

TEST(FreeBlockFinderTest, FindsAlignedBlocksInDescendingAndAscendingRuns) {
  FreeBlockFinder f(2);
  RecordingSink s;
  for (uint64_t pfn = 0x107; pfn >= 0x100; --pfn) f.Feed(pfn, s);  // LIFO after munmap
  for (uint64_t pfn = 0x200; pfn < 0x204; ++pfn) f.Feed(pfn, s);
  EXPECT_EQ(s.blocks, (std::vector<uint64_t>{0x104, 0x100, 0x200}));
  EXPECT_TRUE(s.leftovers.empty());
}

TEST(FreeBlockFinderTest, SlidesPastMisalignedFramesAndDropsBrokenRuns) {
  FreeBlockFinder f(2);
  RecordingSink s;
  for (uint64_t pfn = 0x102; pfn < 0x109; ++pfn) f.Feed(pfn, s);  // 0x104..0x107 is the block
  EXPECT_EQ(s.blocks, (std::vector<uint64_t>{0x104}));
  EXPECT_EQ(s.leftovers, (std::vector<uint64_t>{0x102, 0x103}));
  f.Feed(0x500, s);  // breaks the run holding 0x108
  EXPECT_EQ(s.leftovers.back(), 0x108u);
  f.Feed(0x4ff, s);
  f.Unwind(s);
  EXPECT_EQ(s.unwound, (std::vector<uint64_t>{0x4ff, 0x500})) << "newest first";
  EXPECT_EQ(f.run_pages(), 0u);
}

TEST(FreeBlockFinderTest, AccountsForEveryFrameOnRandomStreams) {
  std::mt19937_64 rng(12345);
  for (int trial = 0; trial < 300; ++trial) {
    const uint32_t order = static_cast<uint32_t>(rng() % 5);
    FreeBlockFinder f(order);
    RecordingSink s;
    // Runs of random length and direction, like a LIFO free list after frees.
    std::vector<uint64_t> fed;
    uint64_t base = rng() % 4096;
    while (fed.size() < 400) {
      const uint64_t len = 1 + rng() % 40;
      const bool down = rng() % 2;
      for (uint64_t i = 0; i < len; ++i) fed.push_back(down ? base + len - 1 - i : base + i);
      base += len + 1 + rng() % 3;  // distinct frames
    }
    std::vector<size_t> pos(fed.size());
    for (uint64_t pfn : fed) f.Feed(pfn, s);
    f.Unwind(s);
    std::vector<uint64_t> out = s.leftovers;
    out.insert(out.end(), s.unwound.begin(), s.unwound.end());
    const uint64_t n = uint64_t{1} << order;
    for (uint64_t b : s.blocks) {
      EXPECT_EQ(b % n, 0u) << "block not aligned";
      for (uint64_t i = 0; i < n; ++i) out.push_back(b + i);
    }
    std::vector<uint64_t> want = fed;
    std::sort(want.begin(), want.end());
    std::sort(out.begin(), out.end());
    ASSERT_EQ(out, want) << "trial " << trial << " order " << order;
    // Every aligned block that a single run covered completely must be found.
    uint64_t expected_blocks = 0;
    for (size_t i = 0; i + n <= fed.size(); ++i) {
      const uint64_t lo = std::min(fed[i], fed[i + n - 1]);
      const bool down = n > 1 && fed[i + 1] + 1 == fed[i];
      bool run = lo % n == 0;
      for (size_t k = 1; run && k < n; ++k) {
        run = down ? fed[i + k] + k == fed[i] : fed[i + k] == fed[i] + k;
      }
      if (run) ++expected_blocks;
    }
    EXPECT_EQ(s.blocks.size(), expected_blocks) << "trial " << trial << " order " << order;
  }
}

}  // namespace
}  // namespace guest_driver

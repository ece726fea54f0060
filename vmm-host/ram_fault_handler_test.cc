// RamFaultHandler on a real memfd pool and a real userfaultfd: discarded
// pages touched through the RAM mapping (as KVM touches them for a guest)
// come back zero-filled and the FrameTable sees them backed again and counts
// them; pages never discarded never fault through the handler.
#include "vmm-host/ram_fault_handler.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "base/check.h"
#include "gtest/gtest.h"

namespace vmm {
namespace {

using base::Gfn;
using base::kPageSize;

constexpr uint64_t kRamBytes = 8 << 20;  // four 2 MiB chunks

class RamFaultHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pool = FramePool::Create({.budget_bytes = 2 * kRamBytes});
    CHECK_OK(pool.status());
    pool_ = *std::move(pool);
    auto table = FrameTable::Create(pool_.get(), {.vm_name = "t", .ram_ranges = {{0, kRamBytes}}, .populate = true});
    CHECK_OK(table.status());
    table_ = *std::move(table);
    ram_ = table_->Mappings().at(0).host;
    auto handler = RamFaultHandler::Create(table_.get());
    if (!handler.ok()) GTEST_SKIP() << "no userfaultfd here: " << handler.status();
    handler_ = *std::move(handler);
  }

  // The guest's view: the RAM mapping itself, as a KVM memslot reaches it.
  uint8_t* Page(uint64_t gfn) { return ram_ + gfn * kPageSize; }
  uint64_t Read(uint64_t gfn) {
    uint64_t v;
    std::memcpy(&v, Page(gfn) + 8, sizeof(v));  // the access that faults
    return v;
  }
  void Write(uint64_t gfn, uint64_t v) { std::memcpy(Page(gfn) + 8, &v, sizeof(v)); }
  GfnState State(uint64_t gfn) { return table_->Lookup(Gfn(gfn)).state(); }
  // The handler's counters once it has accounted for every fault it took.
  // The UFFDIO_ZEROPAGE (or WAKE) that lets a faulting access go on comes
  // before the handler thread counts its outcome, so a count read right
  // after the access may lag by one.
  uint64_t Count(RamFaultCounters::Id id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    auto settled = [&] {
      const RamFaultCounters& c = handler_->counters();
      return c.Get(RamFaultCounters::kFaults) == c.Get(RamFaultCounters::kZeroFills) +
                                                     c.Get(RamFaultCounters::kWakes) +
                                                     c.Get(RamFaultCounters::kErrors);
    };
    while (!settled() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    return handler_->counters().Get(id);
  }
  uint64_t Resident() {
    auto n = pool_->ResidentFrames(table_->home_extent().first, table_->num_frames());
    CHECK_OK(n.status());
    return *n;
  }

  std::unique_ptr<FramePool> pool_;
  std::unique_ptr<FrameTable> table_;
  uint8_t* ram_ = nullptr;
  std::unique_ptr<RamFaultHandler> handler_;
};

TEST_F(RamFaultHandlerTest, ATouchedBalloonedPageIsBackedAgainZeroFilledAndCounted) {
  for (uint64_t g = 100; g < 110; ++g) Write(g, 0xabc0 + g);
  const uint64_t resident = Resident();
  ASSERT_TRUE(table_->Discard(Gfn(100), 4, FrameTable::DiscardTo::kBallooned).ok());
  EXPECT_EQ(Count(RamFaultCounters::kChunksRegistered), 1u);
  EXPECT_EQ(Resident(), resident - 4) << "the discard punched the frames";

  EXPECT_EQ(Read(100), 0u) << "a ballooned page reads back zero";
  EXPECT_EQ(State(100), GfnState::kPresent);
  Write(101, 42);
  EXPECT_EQ(State(101), GfnState::kPresent);
  EXPECT_EQ(Read(101), 42u);
  EXPECT_EQ(table_->counters().Get(FrameTableCounters::kBalloonedTouched), 2u);
  EXPECT_EQ(Count(RamFaultCounters::kFaults), 2u);
  EXPECT_EQ(Count(RamFaultCounters::kRepopulated), 2u);
  EXPECT_EQ(Count(RamFaultCounters::kZeroFills), 2u);
  EXPECT_EQ(Resident(), resident - 2);
  // The untouched ones stay in the balloon; the others kept their data.
  EXPECT_EQ(State(102), GfnState::kBallooned);
  EXPECT_EQ(State(103), GfnState::kBallooned);
  for (uint64_t g = 104; g < 110; ++g) EXPECT_EQ(Read(g), 0xabc0 + g);
  EXPECT_EQ(Count(RamFaultCounters::kFaults), 2u) << "resident pages never fault";
  EXPECT_EQ(Count(RamFaultCounters::kErrors), 0u);
}

TEST_F(RamFaultHandlerTest, AReportedFreePageTouchedAgainIsPopulatedOnDemand) {
  const uint64_t gfn = 3 * 512 + 7;  // the last chunk
  Write(gfn, 7);
  ASSERT_TRUE(table_->Discard(Gfn(gfn), 1, FrameTable::DiscardTo::kZero).ok());
  const uint64_t populated = table_->counters().Get(FrameTableCounters::kMakeAvailablePopulated);
  EXPECT_EQ(Read(gfn), 0u);
  EXPECT_EQ(State(gfn), GfnState::kPresent);
  EXPECT_EQ(table_->counters().Get(FrameTableCounters::kMakeAvailablePopulated), populated + 1);
}

TEST_F(RamFaultHandlerTest, ChunksNeverDiscardedNeverFaultThroughTheHandler) {
  ASSERT_TRUE(table_->Discard(Gfn(10), 1, FrameTable::DiscardTo::kBallooned).ok());
  // Chunk 1 was never written nor discarded: its first touches are the
  // kernel's ordinary faults.
  for (uint64_t g = 512; g < 1024; g += 64) EXPECT_EQ(Read(g), 0u);
  EXPECT_EQ(Count(RamFaultCounters::kFaults), 0u);
  EXPECT_EQ(Count(RamFaultCounters::kChunksRegistered), 1u);
  // A never-written page inside the registered chunk goes through the
  // handler, which maps zeros and leaves its (Present) state alone.
  EXPECT_EQ(Read(11), 0u);
  EXPECT_EQ(Count(RamFaultCounters::kFaults), 1u);
  EXPECT_EQ(Count(RamFaultCounters::kRepopulated), 0u);
  EXPECT_EQ(State(10), GfnState::kBallooned);
}

TEST_F(RamFaultHandlerTest, ConcurrentTouchesOfTheSamePagesAllSeeZerosOnce) {
  constexpr uint64_t kFirst = 1024, kPages = 256;
  for (uint64_t g = kFirst; g < kFirst + kPages; ++g) Write(g, g);
  ASSERT_TRUE(table_->Discard(Gfn(kFirst), kPages, FrameTable::DiscardTo::kBallooned).ok());
  std::vector<std::thread> threads;
  std::atomic<int> nonzero{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; i < kPages; ++i) {
        const uint64_t g = kFirst + (i * 7 + t * 13) % kPages;
        if (Read(g) != 0) nonzero.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(nonzero.load(), 0);
  EXPECT_EQ(table_->CountState(GfnState::kBallooned), 0u);
  EXPECT_EQ(table_->counters().Get(FrameTableCounters::kBalloonedTouched), kPages);
  EXPECT_EQ(Count(RamFaultCounters::kZeroFills), kPages);
  EXPECT_EQ(Count(RamFaultCounters::kFaults), kPages + Count(RamFaultCounters::kWakes));
  EXPECT_EQ(Count(RamFaultCounters::kErrors), 0u);
}

TEST_F(RamFaultHandlerTest, AfterTheHandlerGoesTouchesFaultInTheOrdinaryWay) {
  ASSERT_TRUE(table_->Discard(Gfn(20), 2, FrameTable::DiscardTo::kBallooned).ok());
  handler_.reset();  // unregisters: nothing waits for a handler any more
  EXPECT_EQ(Read(20), 0u);
  EXPECT_EQ(State(20), GfnState::kBallooned) << "untracked, as without a handler";
  // Discards after it are not registered anywhere.
  ASSERT_TRUE(table_->Discard(Gfn(600), 1, FrameTable::DiscardTo::kBallooned).ok());
  EXPECT_EQ(Read(600), 0u);
}

}  // namespace
}  // namespace vmm

#include "base/counters.h"

#include <map>
#include <thread>

#include "gtest/gtest.h"

namespace base {
namespace {

#define TEST_COUNTERS(X) \
  X(PfFixed, pf_fixed)   \
  X(PfGuest, pf_guest)   \
  X(TlbFlush, tlb_flush)
BASE_DEFINE_COUNTERS(TestCounters, TEST_COUNTERS);

static_assert(TestCounters::kNumCounters == 3);
static_assert(TestCounters::NameOf(TestCounters::kPfGuest) == "pf_guest");
// The hot-path storage is exactly one 64-bit slot per counter.
static_assert(sizeof(TestCounters) == 3 * sizeof(uint64_t));

TEST(CountersTest, IncAddGetReset) {
  TestCounters c;
  c.Inc(TestCounters::kPfFixed);
  c.Inc(TestCounters::kPfFixed);
  c.Add(TestCounters::kTlbFlush, 40);
  EXPECT_EQ(c.Get(TestCounters::kPfFixed), 2u);
  EXPECT_EQ(c.Get(TestCounters::kPfGuest), 0u);
  EXPECT_EQ(c.Get(TestCounters::kTlbFlush), 40u);
  c.Reset();
  EXPECT_EQ(c.Get(TestCounters::kTlbFlush), 0u);
}

TEST(CountersTest, ForEachAndSnapshotInDeclarationOrder) {
  TestCounters c;
  c.Add(TestCounters::kPfGuest, 7);
  std::vector<std::string> names;
  c.ForEach([&](std::string_view n, uint64_t) { names.emplace_back(n); });
  EXPECT_EQ(names, (std::vector<std::string>{"pf_fixed", "pf_guest", "tlb_flush"}));
  CounterSnapshot snap = c.Snapshot("shadow");
  ASSERT_EQ(snap.size(), 3u);
  EXPECT_EQ(snap[1], (CounterValue{"shadow.pf_guest", 7}));
  EXPECT_EQ(c.Snapshot("")[0].name, "pf_fixed");
}

TEST(CountersTest, DeltaBetweenSnapshots) {
  TestCounters c;
  c.Add(TestCounters::kPfFixed, 5);
  CounterSnapshot before = c.Snapshot("x");
  c.Add(TestCounters::kPfFixed, 3);
  c.Inc(TestCounters::kTlbFlush);
  CounterSnapshot delta = CounterDelta(before, c.Snapshot("x"));
  EXPECT_EQ(delta[0].value, 3u);
  EXPECT_EQ(delta[1].value, 0u);
  EXPECT_EQ(delta[2].value, 1u);
}

TEST(CountersTest, AccumulateSumsBlocks) {
  TestCounters a, b;
  a.Add(TestCounters::kPfFixed, 2);
  b.Add(TestCounters::kPfFixed, 5);
  b.Inc(TestCounters::kPfGuest);
  TestCounters total;
  total.Accumulate(a);
  total.Accumulate(b);
  EXPECT_EQ(total.Get(TestCounters::kPfFixed), 7u);
  EXPECT_EQ(total.Get(TestCounters::kPfGuest), 1u);
  TestCounters copy = total;
  total.Inc(TestCounters::kPfGuest);
  EXPECT_EQ(copy.Get(TestCounters::kPfGuest), 1u);
}

// One writer, one concurrent reader: the reader sees monotonic values and the
// final count is exact (no lost increments from the owner thread).
TEST(CountersTest, SingleWriterConcurrentReader) {
  TestCounters c;
  constexpr uint64_t kN = 200000;
  std::thread writer([&] {
    for (uint64_t i = 0; i < kN; ++i) c.Inc(TestCounters::kPfFixed);
  });
  uint64_t last = 0;
  while (last < kN) {
    uint64_t now = c.Get(TestCounters::kPfFixed);
    ASSERT_GE(now, last);
    last = now;
  }
  writer.join();
  EXPECT_EQ(c.Get(TestCounters::kPfFixed), kN);
}

}  // namespace
}  // namespace base

// VirtioBalloon against the fake virtio-mmio device of fake_virtio_mmio.h and a fake
// page allocator: negotiation and queue layout, inflate/deflate in batches with
// `actual` following the device's acknowledgements, config-change handling through
// InterruptStatus only, the statistics protocol, DEFLATE_ON_OOM (with and without
// MUST_TELL_HOST), free page reporting, allocator refusal and a hostile device.
#include "guest-driver/virtio_balloon.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "guest-driver/fake_virtio_mmio.h"

namespace guest_driver {
namespace {

using testing::FakeChain;
using testing::FakeRig;
namespace b = balloon;

constexpr uint64_t kAllBalloonFeatures = feature::kVersion1 | b::kFeatureStatsVq |
                                         b::kFeatureDeflateOnOom | b::kFeaturePageReporting;

// A page allocator over a slice of the fake guest RAM that checks the balloon's use
// of it: no double free, no free of a page it does not own, blocks reported at most
// once at a time.
class FakeBalloonMemory final : public BalloonMemory {
 public:
  FakeBalloonMemory(testing::FakeGuestMemory& mem, size_t num_pages) {
    uint64_t gpa;
    // Over-allocate so the pool can start on a 64 KiB boundary (blocks to report).
    mem.AllocPages(num_pages + 16, &gpa);
    base_ = (gpa + 0xffff) & ~uint64_t{0xffff};
    for (size_t i = 0; i < num_pages; ++i) free_.insert(base_ + i * kPageSize);
  }

  uint64_t AllocPage() override {
    if (free_.size() <= reserve || free_.empty()) return 0;
    const uint64_t gpa = *free_.begin();
    free_.erase(free_.begin());
    used_.insert(gpa);
    return gpa;
  }
  void FreePage(uint64_t gpa) override {
    if (used_.erase(gpa) != 1) errors.push_back("free of a page not allocated: " + std::to_string(gpa));
    free_.insert(gpa);
  }
  void FreeDeflatedPage(uint64_t gpa) override {
    ++deflated_frees;
    FreePage(gpa);
  }
  uint32_t TakeFreeBlocks(uint32_t order, uint64_t* gpas, uint32_t max_blocks) override {
    const uint64_t n = uint64_t{1} << order;
    uint32_t found = 0;
    for (auto it = free_.begin(); it != free_.end() && found < max_blocks;) {
      const uint64_t gpa = *it;
      bool block = ((gpa >> 12) & (n - 1)) == 0 && !reported_.count(gpa);
      for (uint64_t i = 1; block && i < n; ++i) block = free_.count(gpa + i * kPageSize) != 0;
      if (!block) {
        ++it;
        continue;
      }
      for (uint64_t i = 0; i < n; ++i) free_.erase(gpa + i * kPageSize);
      isolated_.insert(gpa);
      gpas[found++] = gpa;
      it = free_.lower_bound(gpa + n * kPageSize);
    }
    return found;
  }
  void ReturnReportedBlocks(uint32_t order, const uint64_t* gpas, uint32_t num_blocks) override {
    for (uint32_t i = 0; i < num_blocks; ++i) {
      if (isolated_.erase(gpas[i]) != 1) errors.push_back("returned a block never taken");
      reported_.insert(gpas[i]);
      for (uint64_t p = 0; p < (uint64_t{1} << order); ++p) free_.insert(gpas[i] + p * kPageSize);
    }
  }
  void ReadStats(BalloonGuestStats* out) override {
    *out = stats;
    out->free_bytes = free_.size() * kPageSize;
  }

  size_t num_free() const { return free_.size(); }
  size_t num_used() const { return used_.size(); }
  bool owns(uint64_t gpa) const { return used_.count(gpa) != 0; }
  size_t num_isolated() const { return isolated_.size(); }

  size_t reserve = 0;
  size_t deflated_frees = 0;  // pages freed through FreeDeflatedPage
  BalloonGuestStats stats;
  std::vector<std::string> errors;

 private:
  uint64_t base_ = 0;
  std::set<uint64_t> free_, used_, isolated_, reported_;
};

class VirtioBalloonTest : public ::testing::Test {
 protected:
  explicit VirtioBalloonTest(uint64_t features = kAllBalloonFeatures)
      : rig_(device_id::kBalloon, features, /*num_pages=*/4096) {}
  void SetUp() override {
    // The fake's auto-echo would return the statistics buffer at once; tests serve
    // queues themselves (Serve) and capture what each request carried.
    rig_.dev.auto_process = false;
    ASSERT_EQ(rig_.transport.Probe(device_id::kBalloon), VirtioStatus::kOk);
  }
  void TearDown() override {
    const std::vector<std::string> v = rig_.Violations();
    EXPECT_TRUE(v.empty()) << v[0];
    EXPECT_TRUE(pages_.errors.empty()) << pages_.errors[0];
  }

  uint32_t Config(uint32_t offset) {
    uint32_t v;
    std::memcpy(&v, rig_.dev.config.data() + offset, 4);
    return v;
  }
  // The host changes num_pages and raises a configuration change interrupt.
  void SetTarget(uint32_t num_pages, bool interrupt = true) {
    std::memcpy(rig_.dev.config.data() + b::kConfigNumPages, &num_pages, 4);
    ++rig_.dev.config_generation;
    if (interrupt) rig_.dev.interrupt_status |= mmio::kInterruptConfigChange;
  }
  // The device side: completes every request on the PFN queues (and reporting),
  // recording the PFNs each one carried while the buffer still holds them.
  void Serve() {
    FakeChain chain;
    for (int q : {0, 1}) {
      while (rig_.dev.PopAvail(q, &chain)) {
        std::vector<uint32_t> pfns;
        for (const auto& d : chain.descs) {
          EXPECT_EQ(d.flags & kVirtqDescFWrite, 0) << "PFN buffers are device-readable";
          const uint8_t* p = rig_.mem.Translate(d.gpa, d.len);
          ASSERT_NE(p, nullptr);
          for (uint32_t i = 0; i < d.len / 4; ++i) {
            uint32_t pfn;
            std::memcpy(&pfn, p + 4 * i, 4);
            pfns.push_back(pfn);
          }
        }
        requests_[q].push_back(pfns);
        rig_.dev.PushUsed(q, chain.head, 0);
      }
    }
    if (serve_reports) {
      while (rig_.dev.PopAvail(balloon_.report_queue_index(), &chain)) {
        rig_.dev.PushUsed(balloon_.report_queue_index(), chain.head, 0);
      }
    }
  }
  bool serve_reports = true;
  void PollUntilSettled(int max_polls = 100) {
    for (int i = 0; i < max_polls; ++i) {
      ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
      Serve();
    }
  }

  FakeRig rig_;
  std::map<int, std::vector<std::vector<uint32_t>>> requests_;  // queue -> PFNs per request
  FakeBalloonMemory pages_{rig_.mem, 2048};
  VirtioBalloon balloon_{rig_.transport, pages_};
};

TEST_F(VirtioBalloonTest, NegotiatesOfferedFeaturesAndSetsUpCompactQueues) {
  rig_.dev.device_features |= b::kFeatureFreePageHint | b::kFeaturePagePoison;
  pages_.stats.minor_faults = 77;
  pages_.stats.total_bytes = 2048 * kPageSize;
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.driver_features & ~feature::kEventIdx, kAllBalloonFeatures)
      << "FREE_PAGE_HINT and PAGE_POISON are never accepted";
  for (int q = 0; q < 4; ++q) EXPECT_TRUE(rig_.dev.queues[q].ready) << q;
  EXPECT_EQ(balloon_.report_queue_index(), 3);
  // The first statistics buffer is available at once (§5.5.6.3).
  FakeChain chain;
  ASSERT_TRUE(rig_.dev.PopAvail(2, &chain));
  ASSERT_EQ(chain.descs.size(), 1u);
  ASSERT_EQ(chain.descs[0].len, b::kNumStats * sizeof(b::Stat));
  std::map<uint16_t, uint64_t> stats;
  const uint8_t* p = rig_.mem.Translate(chain.descs[0].gpa, chain.descs[0].len);
  for (uint32_t i = 0; i < b::kNumStats; ++i) {
    b::Stat s;
    std::memcpy(&s, p + i * sizeof(b::Stat), sizeof(s));
    stats[s.tag] = s.val;
  }
  EXPECT_EQ(stats.size(), b::kNumStats);
  EXPECT_EQ(stats[b::kStatMinorFaults], 77u);
  EXPECT_EQ(stats[b::kStatMemTotal], 2048 * kPageSize);
  EXPECT_EQ(stats[b::kStatMemFree], pages_.num_free() * kPageSize);
  EXPECT_EQ(stats[b::kStatSwapIn], 0u);
}

class VirtioBalloonMinimalDeviceTest : public VirtioBalloonTest {
 protected:
  VirtioBalloonMinimalDeviceTest() : VirtioBalloonTest(feature::kVersion1 | b::kFeaturePageReporting) {}
};

TEST_F(VirtioBalloonMinimalDeviceTest, OptionalQueuesFollowTheFeaturesOffered) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  EXPECT_EQ(balloon_.report_queue_index(), 2) << "no statsq: the reporting queue moves up";
  EXPECT_TRUE(rig_.dev.queues[2].ready);
  EXPECT_FALSE(rig_.dev.queues[3].ready);
  EXPECT_EQ(balloon_.DeflateForOom(100), 0u) << "DEFLATE_ON_OOM was not offered";
}

TEST_F(VirtioBalloonTest, InflatesInBatchesThenDeflatesWithActualFollowing) {
  SetTarget(600, /*interrupt=*/false);  // read once at Init
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  EXPECT_EQ(balloon_.target_pages(), 600u);
  const size_t free_before = pages_.num_free();
  PollUntilSettled(5);
  const auto& inflates = requests_[0];
  ASSERT_EQ(inflates.size(), 3u);
  std::set<uint32_t> pfns;
  const size_t sizes[] = {256, 256, 88};
  for (size_t i = 0; i < 3; ++i) {
    const std::vector<uint32_t>& batch = inflates[i];
    EXPECT_EQ(batch.size(), sizes[i]);
    for (uint32_t pfn : batch) {
      EXPECT_TRUE(pages_.owns(uint64_t{pfn} << 12)) << "a PFN the allocator handed out";
      EXPECT_TRUE(pfns.insert(pfn).second) << "each page once";
    }
  }
  EXPECT_EQ(Config(b::kConfigActual), 600u);
  EXPECT_EQ(balloon_.actual_pages(), 600u);
  EXPECT_EQ(balloon_.counters().inflated_pages, 600u);
  EXPECT_EQ(free_before - pages_.num_free(), 600u + 1) << "600 pages and one list chunk";

  SetTarget(100);
  PollUntilSettled(5);
  const auto& deflates = requests_[1];
  ASSERT_EQ(deflates.size(), 2u);
  size_t deflated = 0;
  for (const auto& batch : deflates) {
    for (uint32_t pfn : batch) {
      EXPECT_TRUE(pfns.erase(pfn)) << "only ballooned pages are deflated";
      ++deflated;
    }
  }
  EXPECT_EQ(deflated, 500u);
  EXPECT_EQ(Config(b::kConfigActual), 100u);
  EXPECT_EQ(pages_.num_used(), 100u + 1);
  EXPECT_EQ(balloon_.counters().deflated_pages, 500u);
  EXPECT_EQ(balloon_.counters().config_changes, 1u);
}

// A device that completes each request during its notify (ours) gets the
// next batch in the same poll, up to poll_pages; deflated pages go back
// through FreeDeflatedPage (never written), the list's chunks through FreePage.
TEST_F(VirtioBalloonTest, SeveralBatchesPerPollWhenTheDeviceCompletesDuringTheNotify) {
  BalloonOptions options;
  options.poll_pages = 1024;
  ASSERT_EQ(balloon_.Init(options), VirtioStatus::kOk);
  rig_.dev.auto_process = true;
  SetTarget(2000);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(balloon_.actual_pages(), 1024u) << "four batches of 256 in one poll";
  EXPECT_EQ(balloon_.counters().inflate_requests, 4u);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(balloon_.actual_pages(), 2000u);
  EXPECT_EQ(Config(b::kConfigActual), 2000u);
  SetTarget(0);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(balloon_.actual_pages(), 976u);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(balloon_.actual_pages(), 0u);
  EXPECT_EQ(pages_.deflated_frees, 2000u);
  EXPECT_EQ(pages_.num_used(), 0u) << "the list's chunk pages were freed too";
}

TEST_F(VirtioBalloonTest, ActualMovesOnlyWhenTheDeviceHasUsedTheBuffer) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  SetTarget(10);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(Config(b::kConfigActual), 0u);
  EXPECT_EQ(balloon_.held_pages(), 10u);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.AvailIdx(0), 1) << "one request in flight at a time";
  Serve();
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(Config(b::kConfigActual), 10u);
}

TEST_F(VirtioBalloonTest, TargetIsRereadOnlyOnAConfigChangeInterrupt) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  const size_t reads = rig_.dev.config_accesses.size();
  SetTarget(50, /*interrupt=*/false);
  PollUntilSettled(3);
  EXPECT_EQ(balloon_.target_pages(), 0u);
  EXPECT_EQ(rig_.dev.config_accesses.size(), reads) << "a quiet poll reads no config";
  rig_.dev.interrupt_status |= mmio::kInterruptConfigChange;
  PollUntilSettled(3);
  EXPECT_EQ(balloon_.target_pages(), 50u);
  EXPECT_EQ(Config(b::kConfigActual), 50u);
  EXPECT_EQ(rig_.dev.interrupt_status, 0u) << "interrupts acknowledged";
}

TEST_F(VirtioBalloonTest, StatisticsAreRefilledEachTimeTheDeviceReturnsTheBuffer) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  FakeChain chain;
  ASSERT_TRUE(rig_.dev.PopAvail(2, &chain));
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_FALSE(rig_.dev.PopAvail(2, &chain)) << "no new buffer until the device asks";
  pages_.stats.minor_faults = 1234;
  rig_.dev.PushUsed(2, chain.head, 0);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  ASSERT_TRUE(rig_.dev.PopAvail(2, &chain));
  b::Stat s;
  std::memcpy(&s, rig_.mem.Translate(chain.descs[0].gpa, 80) + 3 * sizeof(b::Stat), sizeof(s));
  EXPECT_EQ(s.tag, b::kStatMinorFaults);
  EXPECT_EQ(s.val, 1234u);
  EXPECT_EQ(balloon_.counters().stats_reports, 2u);
}

TEST_F(VirtioBalloonTest, DeflateOnOomGivesPagesBackAtOnceAndTellsTheDevice) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  SetTarget(700);
  PollUntilSettled(5);
  ASSERT_EQ(Config(b::kConfigActual), 700u);
  const size_t free_before = pages_.num_free();
  EXPECT_EQ(balloon_.DeflateForOom(1000), 256u) << "at most oom_pages per call";
  EXPECT_EQ(pages_.num_free() - free_before, 256u);
  EXPECT_EQ(rig_.dev.AvailIdx(1), 1) << "the device is told";
  Serve();
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(requests_[1].size(), 1u);
  EXPECT_EQ(Config(b::kConfigActual), 700u - 256);
  EXPECT_EQ(balloon_.counters().oom_deflated_pages, 256u);
  // The balloon holds off re-inflating for a while instead of taking the pages
  // straight back.
  PollUntilSettled(10);
  EXPECT_EQ(Config(b::kConfigActual), 700u - 256);
  PollUntilSettled(120);
  EXPECT_EQ(Config(b::kConfigActual), 700u);
}

class VirtioBalloonMustTellTest : public VirtioBalloonTest {
 protected:
  VirtioBalloonMustTellTest()
      : VirtioBalloonTest(kAllBalloonFeatures | b::kFeatureMustTellHost) {}
};

TEST_F(VirtioBalloonMustTellTest, PagesComeBackOnlyAfterTheDeviceAcknowledges) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  EXPECT_TRUE(balloon_.features() & b::kFeatureMustTellHost);
  SetTarget(300);
  PollUntilSettled(3);
  const size_t free_before = pages_.num_free();
  EXPECT_EQ(balloon_.DeflateForOom(50), 0u) << "must wait for the device";
  EXPECT_EQ(pages_.num_free(), free_before);
  Serve();
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(pages_.num_free() - free_before, 50u);
  EXPECT_EQ(Config(b::kConfigActual), 250u);
}

TEST_F(VirtioBalloonTest, ReportsFreeBlocksAndReturnsThemWhenUsed) {
  BalloonOptions o;
  o.report_order = 4;  // 64 KiB blocks
  o.report_interval_polls = 2;
  ASSERT_EQ(balloon_.Init(o), VirtioStatus::kOk);
  serve_reports = false;
  const size_t free_before = pages_.num_free();
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.AvailIdx(3), 0) << "not before the interval";
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  FakeChain chain;
  ASSERT_TRUE(rig_.dev.PopAvail(3, &chain));
  EXPECT_EQ(chain.descs.size(), VirtioBalloon::kMaxReportBlocks);
  for (const auto& d : chain.descs) {
    EXPECT_EQ(d.len, 16 * kPageSize);
    EXPECT_EQ(d.gpa % (16 * kPageSize), 0u);
    EXPECT_NE(d.flags & kVirtqDescFWrite, 0) << "reported blocks are device-writable, as in Linux";
  }
  EXPECT_EQ(pages_.num_isolated(), 32u);
  EXPECT_EQ(free_before - pages_.num_free(), 32u * 16);
  PollUntilSettled(4);
  EXPECT_FALSE(rig_.dev.PopAvail(3, &chain)) << "one report request in flight";
  rig_.dev.PushUsed(3, chain.head, 0);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  EXPECT_EQ(pages_.num_isolated(), 0u);
  EXPECT_EQ(balloon_.counters().reported_pages, 32u * 16);
}

TEST_F(VirtioBalloonTest, StopsInflatingWhenTheAllocatorRefuses) {
  pages_.reserve = 2048 - 100;
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  SetTarget(500);
  PollUntilSettled(5);
  EXPECT_EQ(Config(b::kConfigActual), 99u) << "100 pages above the reserve, one for the list";
  EXPECT_GT(balloon_.counters().alloc_failures, 0u);
  EXPECT_FALSE(balloon_.failed());
}

TEST_F(VirtioBalloonTest, AHostileDeviceStopsTheBalloon) {
  ASSERT_EQ(balloon_.Init(BalloonOptions{}), VirtioStatus::kOk);
  SetTarget(20);
  ASSERT_EQ(balloon_.Poll(), VirtioStatus::kOk);
  FakeChain chain;
  ASSERT_TRUE(rig_.dev.PopAvail(0, &chain));
  rig_.dev.PushUsed(0, chain.head, 0);
  rig_.dev.PushUsedRaw(0, chain.head, 0);  // the same request twice
  EXPECT_EQ(balloon_.Poll(), VirtioStatus::kDeviceError);
  EXPECT_TRUE(balloon_.failed());
  EXPECT_NE(rig_.dev.status & device_status::kFailed, 0u);
  EXPECT_EQ(balloon_.DeflateForOom(10), 0u);
}

}  // namespace
}  // namespace guest_driver

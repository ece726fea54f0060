// The balloon device against a scripted driver, good and hostile: queue
// numbering, inflate/deflate with every per-PFN rejection, chains of the
// wrong shape, statistics, free page reporting, config and reset. Every
// rejection is asserted through its counter, and every hostile batch also
// shows that its good entries were still handled.
#include "balloon/balloon_device.h"

#include <cstring>
#include <vector>

#include "balloon/balloon_test_fixture.h"
#include "gtest/gtest.h"

namespace balloon {
namespace {

using testing::BalloonFixture;
using testing::DriverRing;
using vmm::GfnState;
namespace mmio = vmm::virtio_mmio;
using C = BalloonCounters;
using Q = vmm::VirtqueueCounters;

constexpr uint64_t kStats = virtio_balloon::kFStatsVq;
constexpr uint64_t kReporting = virtio_balloon::kFPageReporting;

TEST(BalloonQueueRole, CompactNumberingFollowsNegotiatedFeatures) {
  EXPECT_EQ(QueueRole(0, 0), BalloonQueue::kInflate);
  EXPECT_EQ(QueueRole(0, 1), BalloonQueue::kDeflate);
  EXPECT_EQ(QueueRole(0, 2), BalloonQueue::kNone);
  EXPECT_EQ(QueueRole(kStats, 2), BalloonQueue::kStats);
  EXPECT_EQ(QueueRole(kStats, 3), BalloonQueue::kNone);
  // Without statsq the reporting queue moves down to 2 (§5.5.2: a queue
  // exists only with its feature).
  EXPECT_EQ(QueueRole(kReporting, 2), BalloonQueue::kReporting);
  EXPECT_EQ(QueueRole(kStats | kReporting, 2), BalloonQueue::kStats);
  EXPECT_EQ(QueueRole(kStats | kReporting, 3), BalloonQueue::kReporting);
  EXPECT_EQ(QueueRole(kStats | virtio_balloon::kFFreePageHint | kReporting, 4), BalloonQueue::kReporting);
  EXPECT_EQ(QueueIndex(kReporting, BalloonQueue::kStats), std::nullopt);
  EXPECT_EQ(QueueIndex(kStats | kReporting, BalloonQueue::kReporting), 3);
}

class BalloonDeviceTest : public BalloonFixture {};

TEST_F(BalloonDeviceTest, IdentityFeaturesAndQueues) {
  EXPECT_EQ(driver_->R(mmio::kDeviceId), 5u);
  EXPECT_EQ(driver_->R(mmio::kDeviceFeatures),
            static_cast<uint32_t>(kStats | virtio_balloon::kFDeflateOnOom | kReporting |
                                  mmio::kFEventIdx));
  for (uint16_t q = 0; q < 4; ++q) {
    driver_->W(mmio::kQueueSel, q);
    EXPECT_EQ(driver_->R(mmio::kQueueNumMax), 128u) << q;
  }
  driver_->W(mmio::kQueueSel, 4);
  EXPECT_EQ(driver_->R(mmio::kQueueNumMax), 0u);
}

TEST_F(BalloonDeviceTest, InflateDiscardsContiguousRunsInOneCall) {
  BringUp();
  Fill(0x200, 16);
  Fill(0x300, 1);
  // Out of order, as a driver's page allocator hands them out.
  std::vector<uint32_t> pfns;
  for (uint32_t i = 16; i-- > 0;) pfns.push_back(0x200 + i);
  pfns.insert(pfns.begin() + 5, 0x300);
  const int irqs_before = irqs_;
  Inflate(pfns);
  EXPECT_EQ(Count(C::kInflateChains), 1u);
  EXPECT_EQ(Count(C::kInflatePfns), 17u);
  EXPECT_EQ(Count(C::kInflatedPages), 17u);
  EXPECT_EQ(Count(C::kInflateDiscardRuns), 2u);
  EXPECT_EQ(balloon_->inflated_pages(), 17u);
  for (uint64_t g = 0x200; g < 0x210; ++g) EXPECT_EQ(State(g), GfnState::kBallooned) << g;
  EXPECT_EQ(State(0x300), GfnState::kBallooned);
  EXPECT_EQ(State(0x210), GfnState::kPresent);
  EXPECT_EQ(rings_[0]->UsedIdx(), 1);
  EXPECT_EQ(rings_[0]->UsedLen(0), 0u);
  EXPECT_GT(irqs_, irqs_before);
}

TEST_F(BalloonDeviceTest, HostileInflateBatchRejectsEachBadPfnAndReclaimsTheRest) {
  BringUp();
  Inflate({0x400});  // already in the balloon below
  ASSERT_EQ(Count(C::kInflatedPages), 1u);
  ASSERT_TRUE(table_->SetFlags(base::Gfn(0x410), 1, vmm::kGfnPinned, true).ok());
  Inflate({0x401, kMmioHolePfn, 0x402, kPastEndPfn, 0xffffffffu, 0x402, 0x400, 0x403, 0x410,
           kHighFirstPfn, 0x2000 /* 32 MiB: in the hole of this VM */});
  EXPECT_EQ(Count(C::kInflatePfnNotRam), 4u);
  EXPECT_EQ(Count(C::kInflatePfnDuplicate), 1u);
  EXPECT_EQ(Count(C::kInflatePfnAlreadyBallooned), 1u);
  EXPECT_EQ(Count(C::kInflatePfnRefused), 1u);
  // The good ones: 0x401..0x403 (one run) and the first page of high RAM.
  EXPECT_EQ(Count(C::kInflatedPages), 1u + 4u);
  EXPECT_EQ(balloon_->inflated_pages(), 5u);
  for (uint64_t g : {0x401, 0x402, 0x403}) EXPECT_EQ(State(g), GfnState::kBallooned);
  EXPECT_EQ(State(kHighFirstPfn), GfnState::kBallooned);
  EXPECT_EQ(State(0x410), GfnState::kPresent);
  // Both chains were returned and the device is still live.
  EXPECT_EQ(rings_[0]->UsedIdx(), 2);
  EXPECT_FALSE(balloon_->transport().needs_reset());
}

TEST_F(BalloonDeviceTest, RunsDoNotCrossRamRanges) {
  BringUp();
  // The last low page and the first high page are not neighbours.
  Inflate({static_cast<uint32_t>(kLowBytes >> 12) - 1, kHighFirstPfn, kHighFirstPfn + 1});
  EXPECT_EQ(Count(C::kInflatedPages), 3u);
  EXPECT_EQ(Count(C::kInflateDiscardRuns), 2u);
}

TEST_F(BalloonDeviceTest, PfnArrayWithATrailingPartialEntry) {
  BringUp();
  const uint32_t pfns[2] = {0x500, 0x501};
  const uint64_t gpa = PutBuffer(pfns, sizeof(pfns));
  Send(0, {{gpa, 6}});  // one PFN and half of another
  EXPECT_EQ(Count(C::kPfnArrayBadLength), 1u);
  EXPECT_EQ(Count(C::kInflatedPages), 1u);
  EXPECT_EQ(State(0x500), GfnState::kBallooned);
  EXPECT_EQ(State(0x501), GfnState::kPresent);
}

TEST_F(BalloonDeviceTest, PfnArraySpreadOverSeveralBuffersIsOneBatch) {
  BringUp();
  const uint32_t a[2] = {0x600, 0x601};
  const uint32_t b[2] = {0x602, 0x601};
  const uint64_t ga = PutBuffer(a, sizeof(a));
  const uint64_t gb = PutBuffer(b, sizeof(b));
  Send(0, {{ga, 8}, {gb, 8}});
  EXPECT_EQ(Count(C::kInflatedPages), 3u);
  EXPECT_EQ(Count(C::kInflatePfnDuplicate), 1u);
  EXPECT_EQ(Count(C::kInflateDiscardRuns), 1u);
}

TEST_F(BalloonDeviceTest, WritableBufferOnInflateqIsDroppedAndCounted) {
  BringUp();
  const uint32_t pfn = 0x700;
  const uint64_t gpa = PutBuffer(&pfn, 4);
  Send(0, {{gpa, 4, /*writable=*/true}});
  Send(0, {{gpa, 4}, {gpa, 4, /*writable=*/true}});
  EXPECT_EQ(Count(C::kChainWrongDirection), 2u);
  EXPECT_EQ(Count(C::kInflatedPages), 0u);
  EXPECT_EQ(State(0x700), GfnState::kPresent);
  EXPECT_EQ(rings_[0]->UsedIdx(), 2);
  EXPECT_FALSE(balloon_->transport().needs_reset());
  // The queue still works.
  Inflate({0x700});
  EXPECT_EQ(State(0x700), GfnState::kBallooned);
}

TEST_F(BalloonDeviceTest, LoopingChainBreaksTheQueueWithoutTouchingMemory) {
  BringUp();
  const uint32_t pfn = 0x710;
  const uint64_t gpa = PutBuffer(&pfn, 4);
  DriverRing& ring = *rings_[0];
  ring.SetDesc(0, gpa, 4, vmm::virtq::kDescFNext, 1);
  ring.SetDesc(1, gpa, 4, vmm::virtq::kDescFNext, 0);  // back to 0
  ring.Publish(0);
  driver_->Notify(0);
  EXPECT_EQ(QueueCount(Q::kChainLoop), 1u);
  EXPECT_TRUE(balloon_->transport().needs_reset());
  EXPECT_EQ(Count(C::kInflatePfns), 0u);
  EXPECT_EQ(State(0x710), GfnState::kPresent);
}

TEST_F(BalloonDeviceTest, PfnBufferInTheMmioHoleBreaksTheQueue) {
  BringUp();
  Send(0, {{uint64_t{kMmioHolePfn} << 12, 4}});
  EXPECT_EQ(QueueCount(Q::kBufferOutOfRam), 1u);
  EXPECT_TRUE(balloon_->transport().needs_reset());
  EXPECT_EQ(Count(C::kInflatePfns), 0u);
}

TEST_F(BalloonDeviceTest, DeflateRulesAndLazyRepopulation) {
  BringUp();
  Fill(0x800, 4, 0x5a);
  Inflate({0x800, 0x801, 0x802, 0x803});
  Deflate({0x801, 0x801, 0x900 /* never inflated */, kMmioHolePfn, 0x802});
  EXPECT_EQ(Count(C::kDeflateChains), 1u);
  EXPECT_EQ(Count(C::kDeflatePfns), 5u);
  EXPECT_EQ(Count(C::kDeflatedPages), 2u);
  EXPECT_EQ(Count(C::kDeflatePfnDuplicate), 1u);
  EXPECT_EQ(Count(C::kDeflatePfnNotInflated), 1u);
  EXPECT_EQ(Count(C::kDeflatePfnNotRam), 1u);
  EXPECT_EQ(balloon_->inflated_pages(), 2u);
  // Nothing eager: still punched and Ballooned.
  EXPECT_EQ(State(0x801), GfnState::kBallooned);
  // A guest touch (the soft CPU's MakeAvailable) brings a zero page back.
  EXPECT_EQ(table_->MakeAvailable(0x801, /*for_write=*/true), mmu::BackingStatus::kReady);
  EXPECT_EQ(State(0x801), GfnState::kPresent);
  EXPECT_EQ(Count(C::kDeflatedPagesTouched), 1u);
  uint8_t byte = 0xff;
  ASSERT_TRUE(table_->ReadObj(base::Gpa(0x801000 + 123), &byte));
  EXPECT_EQ(byte, 0);
  // Deflating it again is not allowed: it is no longer in the balloon.
  Deflate({0x801});
  EXPECT_EQ(Count(C::kDeflatePfnNotInflated), 2u);
  // A deflated page can be inflated again.
  Inflate({0x802});
  EXPECT_EQ(balloon_->inflated_pages(), 3u);
  EXPECT_EQ(Count(C::kInflatePfnAlreadyBallooned), 0u);
}

TEST_F(BalloonDeviceTest, TouchingAPageStillInTheBalloonIsCounted) {
  BringUp();
  Inflate({0x820, 0x821});
  EXPECT_EQ(table_->MakeAvailable(0x820, /*for_write=*/false), mmu::BackingStatus::kReady);
  EXPECT_EQ(Count(C::kInflatedPagesTouched), 1u);
  EXPECT_EQ(balloon_->inflated_pages(), 1u);
  // It is resident again, so inflating it again reclaims it again.
  Inflate({0x820});
  EXPECT_EQ(State(0x820), GfnState::kBallooned);
  EXPECT_EQ(balloon_->inflated_pages(), 2u);
}

TEST_F(BalloonDeviceTest, DeflateWithUntrackedTouchesMakesPagesPresentWithoutMemory) {
  BalloonDeviceOptions o;
  o.guest_touches_tracked = false;  // kvm
  Build(o);
  BringUp();
  Fill(0x840, 8);
  const uint64_t resident = Resident();
  Inflate({0x840, 0x841, 0x842, 0x843, 0x844, 0x845, 0x846, 0x847});
  // (kSlack: ring pages and the driver's PFN arrays become resident as the
  // driver writes them.)
  const uint64_t inflated = Resident();
  EXPECT_LE(inflated, resident - 8 + kSlack);
  Deflate({0x840, 0x841, 0x842, 0x843});
  for (uint64_t g = 0x840; g < 0x844; ++g) EXPECT_EQ(State(g), GfnState::kPresent);
  EXPECT_EQ(State(0x844), GfnState::kBallooned);
  EXPECT_LE(Resident(), inflated + kSlack);  // bookkeeping only
  EXPECT_EQ(Count(C::kDeflatePopulateFailed), 0u);
}

TEST_F(BalloonDeviceTest, StatsAreParsedHeldAndRequested) {
  BringUp();
  struct __attribute__((packed)) Stat {
    uint16_t tag;
    uint64_t val;
  };
  const Stat stats[] = {{0, 11}, {1, 12}, {2, 13}, {3, 14}, {4, 1 << 20},
                        {5, 2 << 20}, {6, 3 << 20}, {7, 77}, {8, 8}, {9, 9}, {200, 5}};
  static_assert(sizeof(Stat) == 10);
  const uint64_t gpa = PutBuffer(stats, sizeof(stats));
  EXPECT_FALSE(balloon_->LastStats().has_value());
  Send(2, {{gpa, sizeof(stats)}});
  std::optional<BalloonStats> s = balloon_->LastStats();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->Get(StatTag::kSwapIn), 11u);
  EXPECT_EQ(s->Get(StatTag::kMinorFaults), 14u);
  EXPECT_EQ(s->Get(StatTag::kFreeMemory), uint64_t{1} << 20);
  EXPECT_EQ(s->Get(StatTag::kTotalMemory), uint64_t{2} << 20);
  EXPECT_EQ(s->Get(StatTag::kAvailableMemory), uint64_t{3} << 20);
  EXPECT_EQ(s->Get(StatTag::kDiskCaches), 77u);
  EXPECT_EQ(s->Get(StatTag::kHugetlbFailures), 9u);
  EXPECT_EQ(s->Get(StatTag::kOomKills), std::nullopt);
  EXPECT_EQ(s->sequence, 1u);
  EXPECT_LE(absl::Now() - s->updated_at, absl::Minutes(1));
  EXPECT_EQ(Count(C::kStatsUnknownTags), 1u);
  // Held until the host asks.
  EXPECT_EQ(rings_[2]->UsedIdx(), 0);
  EXPECT_TRUE(balloon_->RequestStats());
  EXPECT_EQ(rings_[2]->UsedIdx(), 1);
  EXPECT_EQ(Count(C::kStatsRequests), 1u);
  // Nothing held now.
  EXPECT_FALSE(balloon_->RequestStats());
  EXPECT_EQ(Count(C::kStatsRequestNoBuffer), 1u);
}

TEST_F(BalloonDeviceTest, StatsBuffersOfTheWrongShapeAreRejected) {
  BringUp();
  uint8_t raw[20] = {};
  const uint64_t gpa = PutBuffer(raw, sizeof(raw));
  Send(2, {{gpa, 9}});                           // not a multiple of 10
  Send(2, {{gpa, 0}});                           // empty
  Send(2, {{gpa, 10}, {gpa, 10, true}});         // writable part
  const uint64_t big = PutBuffer(nullptr, 0);
  std::vector<uint8_t> huge((BalloonDevice::kMaxStatsEntries + 1) * 10, 0);
  ASSERT_TRUE(table_->Write(base::Gpa(0x80000), huge.data(), huge.size()));
  (void)big;
  Send(2, {{0x80000, static_cast<uint32_t>(huge.size())}});  // too many entries
  EXPECT_EQ(Count(C::kStatsBadSize), 3u);
  EXPECT_EQ(Count(C::kChainWrongDirection), 1u);
  EXPECT_EQ(Count(C::kStatsUpdates), 0u);
  EXPECT_FALSE(balloon_->LastStats().has_value());
  // Each new buffer replaced the held one, which went back to the driver.
  EXPECT_EQ(Count(C::kStatsBufferReplaced), 3u);
  EXPECT_EQ(rings_[2]->UsedIdx(), 3);
  EXPECT_FALSE(balloon_->transport().needs_reset());
}

TEST_F(BalloonDeviceTest, NoStatsQueueWithoutTheFeature) {
  BringUp(mmio::kFVersion1 | kReporting, 3);
  EXPECT_FALSE(balloon_->RequestStats());
  // Queue 2 is the reporting queue now.
  Fill(0x880, 2);
  Send(2, {{0x880000, 0x2000, true}});
  EXPECT_EQ(Count(C::kReportedPages), 2u);
}

TEST_F(BalloonDeviceTest, QueueWithoutRoleReturnsChainsUnused) {
  BringUp(mmio::kFVersion1, 3);
  Fill(0x890, 1);
  Send(2, {{0x890000, 0x1000, true}});
  EXPECT_EQ(Count(C::kQueueWithoutRole), 1u);
  EXPECT_EQ(Count(C::kReportedPages), 0u);
  EXPECT_EQ(State(0x890), GfnState::kPresent);
  EXPECT_EQ(rings_[2]->UsedIdx(), 1);
}

TEST_F(BalloonDeviceTest, FreePageReportingDiscardsWholePagesOnly) {
  BringUp();
  Fill(0xa00, 16);
  Inflate({0xa08});
  const uint64_t resident = Resident();
  // Two ranges in one chain: 4 aligned pages, and 3 pages misaligned by 512
  // bytes (only its 2 whole pages go); a range over a ballooned page.
  Send(3, {{0xa00000, 0x4000, true}, {0xa04200, 0x3000, true}, {0xa08000, 0x2000, true}});
  EXPECT_EQ(Count(C::kReportChains), 1u);
  EXPECT_EQ(Count(C::kReportRanges), 3u);
  EXPECT_EQ(Count(C::kReportRangeUnaligned), 1u);
  EXPECT_EQ(Count(C::kReportedPages), 4u + 2u + 1u);
  EXPECT_EQ(Count(C::kReportPagesNotResident), 1u);  // 0xa08, in the balloon
  for (uint64_t g = 0xa00; g < 0xa04; ++g) EXPECT_EQ(State(g), GfnState::kZero) << g;
  EXPECT_EQ(State(0xa04), GfnState::kPresent);  // partly outside the range
  EXPECT_EQ(State(0xa05), GfnState::kZero);
  EXPECT_EQ(State(0xa06), GfnState::kZero);
  EXPECT_EQ(State(0xa07), GfnState::kPresent);
  EXPECT_EQ(State(0xa08), GfnState::kBallooned);
  EXPECT_EQ(State(0xa09), GfnState::kZero);
  EXPECT_LE(Resident(), resident - 7 + kSlack);
  EXPECT_GE(Resident() + 7, resident);
  // Reporting does not change the balloon.
  EXPECT_EQ(balloon_->inflated_pages(), 1u);
  EXPECT_EQ(rings_[3]->UsedIdx(), 1);
}

TEST_F(BalloonDeviceTest, HostileReportingRanges) {
  BringUp();
  Fill(0xb00, 1);
  ASSERT_TRUE(table_->SetFlags(base::Gfn(0xb00), 1, vmm::kGfnPinned, true).ok());
  Send(3, {{0xb00000, 0x1000, /*writable=*/false}});  // readable: wrong direction
  EXPECT_EQ(Count(C::kChainWrongDirection), 1u);
  Send(3, {{0xb00000, 0x1000, true}});  // pinned
  EXPECT_EQ(Count(C::kReportPagesRefused), 1u);
  Send(3, {{0xb00100, 0x100, true}});  // inside one page: nothing whole
  EXPECT_EQ(Count(C::kReportRangeUnaligned), 1u);
  EXPECT_EQ(Count(C::kReportedPages), 0u);
  EXPECT_EQ(State(0xb00), GfnState::kPresent);
  EXPECT_FALSE(balloon_->transport().needs_reset());
  // A range that leaves RAM never reaches the device: the transport breaks
  // the queue.
  Send(3, {{kLowBytes - 0x1000, 0x2000, true}});
  EXPECT_EQ(QueueCount(Q::kBufferOutOfRam), 1u);
  EXPECT_TRUE(balloon_->transport().needs_reset());
  EXPECT_EQ(Count(C::kReportRanges), 2u);  // the readable chain had none
}

TEST_F(BalloonDeviceTest, TargetActualAndConfigInterrupts) {
  BringUp();
  driver_->AckInterrupts();
  const uint32_t generation = driver_->R(mmio::kConfigGeneration);
  const int irqs = irqs_;
  balloon_->SetTargetPages(1234);
  EXPECT_EQ(balloon_->target_pages(), 1234u);
  EXPECT_EQ(driver_->ReadConfig32(virtio_balloon::kConfigNumPages), 1234u);
  EXPECT_EQ(irqs_, irqs + 1);
  EXPECT_EQ(driver_->AckInterrupts() & mmio::kInterruptConfigChange, mmio::kInterruptConfigChange);
  EXPECT_NE(driver_->R(mmio::kConfigGeneration), generation);
  balloon_->SetTargetBytes(uint64_t{8} << 20);
  EXPECT_EQ(balloon_->target_pages(), 2048u);
  // The guest answers in `actual`; a write to num_pages is ignored.
  driver_->WriteConfig32(virtio_balloon::kConfigActual, 1000);
  EXPECT_EQ(balloon_->actual_pages(), 1000u);
  driver_->WriteConfig32(virtio_balloon::kConfigNumPages, 7);
  EXPECT_EQ(balloon_->target_pages(), 2048u);
  EXPECT_EQ(Count(C::kConfigWriteIgnored), 1u);
  // Byte writes to actual work too.
  const uint8_t b = 0x12;
  balloon_->transport().Write(mmio::kConfig + virtio_balloon::kConfigActual + 1, &b, 1);
  EXPECT_EQ(balloon_->actual_pages(), 0x12e8u);
}

TEST_F(BalloonDeviceTest, ResetEmptiesTheBalloon) {
  BringUp();
  Inflate({0xc00, 0xc01});
  driver_->WriteConfig32(virtio_balloon::kConfigActual, 2);
  driver_->W(mmio::kStatus, 0);
  EXPECT_EQ(balloon_->inflated_pages(), 0u);
  EXPECT_EQ(balloon_->actual_pages(), 0u);
  // The pages are still punched; touching one counts as a deflated touch.
  EXPECT_EQ(State(0xc00), GfnState::kBallooned);
  EXPECT_EQ(table_->MakeAvailable(0xc00, true), mmu::BackingStatus::kReady);
  EXPECT_EQ(Count(C::kDeflatedPagesTouched), 1u);
  // After a new bring-up the driver may inflate them again.
  BringUp();
  Inflate({0xc00, 0xc01});
  EXPECT_EQ(balloon_->inflated_pages(), 2u);
  EXPECT_EQ(Count(C::kInflatePfnAlreadyBallooned), 0u);
}

TEST_F(BalloonDeviceTest, SnapshotNamesEveryCounter) {
  BringUp();
  base::CounterSnapshot s = balloon_->Snapshot();
  auto has = [&](std::string_view name) {
    for (const auto& c : s) {
      if (c.name == name) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("balloon.inflate_pfn_not_ram"));
  EXPECT_TRUE(has("balloon.stats_bad_size"));
  EXPECT_TRUE(has("balloon.inflated_pages"));
  EXPECT_TRUE(has("balloon.target_pages"));
}

}  // namespace
}  // namespace balloon

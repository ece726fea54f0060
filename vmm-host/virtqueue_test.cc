#include "vmm-host/virtqueue.h"

#include <cstring>
#include <random>
#include <string>

#include "base/log.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_memory.h"
#include "tests/fakes/fake_split_ring.h"

namespace vmm {
namespace {

using testing::FakeGuestMemory;
using testing::FakeSplitRing;
using PopStatus = Virtqueue::PopStatus;

constexpr uint16_t kNext = virtq::kDescFNext;
constexpr uint16_t kWrite = virtq::kDescFWrite;

class DeviceVirtqueueTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kSize = 8;

  void SetUp() override { ASSERT_EQ(Activate(false), VirtqueueError::kNone); }
  VirtqueueError Activate(bool event_idx) { return vq_.Activate(ring_.config(), kSize, event_idx); }

  // A fresh buffer page in low RAM.
  uint64_t Buffer() { return mem_.AllocPages(1).value(); }

  // The queue is broken with `error`, counted once, and refuses all further work.
  void ExpectBroken(VirtqueueError error) {
    EXPECT_TRUE(vq_.broken());
    EXPECT_EQ(vq_.error(), error) << VirtqueueErrorName(vq_.error());
    EXPECT_EQ(counters_.Get(VirtqueueErrorCounter(error)), 1u) << VirtqueueErrorName(error);
    DescriptorChain chain;
    EXPECT_EQ(vq_.Pop(&chain), PopStatus::kBroken);
    EXPECT_TRUE(chain.buffers().empty());
    EXPECT_FALSE(vq_.NeedsInterrupt());
    EXPECT_EQ(ring_.UsedIdx(), 0u);  // Nothing was returned to the guest.
  }
  // Publishes `head` and expects Pop to break the queue with `error`.
  void ExpectPopBreaks(uint16_t head, VirtqueueError error) {
    ring_.Publish(head);
    DescriptorChain chain;
    EXPECT_EQ(vq_.Pop(&chain), PopStatus::kBroken);
    ExpectBroken(error);
  }

  FakeGuestMemory mem_;
  VirtqueueCounters counters_;
  LogBudget log_{1000};
  FakeSplitRing ring_{mem_, kSize};
  Virtqueue vq_{mem_, 0, &counters_, &log_};
};

TEST_F(DeviceVirtqueueTest, PopsValidatedChainAndPushesUsed) {
  const uint64_t in = Buffer(), out = Buffer();
  mem_.Write(base::Gpa(in), "hello", 5);
  ring_.SetChain(2, {{in, 5}, {out, 16, true}, {out + 16, 16, true}});
  ring_.Publish(2);

  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  EXPECT_EQ(chain.head(), 2);
  ASSERT_EQ(chain.buffers().size(), 3u);
  EXPECT_EQ(chain.readable().size(), 1u);
  EXPECT_EQ(chain.writable().size(), 2u);
  EXPECT_EQ(chain.readable_bytes(), 5u);
  EXPECT_EQ(chain.writable_bytes(), 32u);
  EXPECT_EQ(chain.buffers()[1].gpa, base::Gpa(out));
  EXPECT_TRUE(chain.buffers()[2].writable);

  char text[8] = {};
  EXPECT_EQ(chain.ReadReadable(mem_, 1, text, sizeof(text)), 4u);
  EXPECT_STREQ(text, "ello");
  // A write that spans both writable buffers.
  std::string payload(20, 'z');
  EXPECT_EQ(chain.WriteWritable(mem_, 10, payload.data(), payload.size()), 20u);
  EXPECT_EQ(mem_.Peek<char>(base::Gpa(out + 29)), 'z');
  EXPECT_EQ(mem_.Peek<char>(base::Gpa(out + 30)), 0);
  EXPECT_EQ(chain.WriteWritable(mem_, 30, payload.data(), payload.size()), 2u);  // Clipped.

  const ChainToken token = chain.token();
  DescriptorChain next;
  EXPECT_EQ(vq_.Pop(&next), PopStatus::kEmpty);
  EXPECT_EQ(vq_.in_flight(), 1u);

  EXPECT_TRUE(vq_.PushUsed(token, 30));
  EXPECT_EQ(ring_.UsedIdx(), 1u);
  EXPECT_EQ(ring_.UsedId(0), 2u);
  EXPECT_EQ(ring_.UsedLen(0), 30u);
  EXPECT_EQ(vq_.in_flight(), 0u);
  EXPECT_TRUE(vq_.NeedsInterrupt());
  EXPECT_FALSE(vq_.NeedsInterrupt());  // Consumed.
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kChainsPopped), 1u);
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kUsedPushed), 1u);
}

TEST_F(DeviceVirtqueueTest, ZeroLengthAndHighRamBuffersAreFine) {
  const uint64_t high = mem_.AllocPages(1, 1).value();
  ring_.SetChain(0, {{Buffer(), 0}, {high, 4096, true}});
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  EXPECT_EQ(chain.buffers().size(), 2u);
  EXPECT_FALSE(vq_.broken());
}

TEST_F(DeviceVirtqueueTest, NoInterruptFlagSuppressesUsedNotification) {
  ring_.SetChain(0, {{Buffer(), 8, true}});
  ring_.SetAvailFlags(virtq::kAvailFNoInterrupt);
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  ASSERT_TRUE(vq_.PushUsed(chain, 0));
  EXPECT_FALSE(vq_.NeedsInterrupt());
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kInterruptsSuppressed), 1u);
}

TEST_F(DeviceVirtqueueTest, EventIdxPublishesAvailEventAndHonoursUsedEvent) {
  ASSERT_EQ(Activate(true), VirtqueueError::kNone);
  const uint64_t buf = Buffer();
  for (uint16_t i = 0; i < kSize; ++i) ring_.SetDesc(i, buf, 8, kWrite, 0);
  DescriptorChain chain;
  EXPECT_EQ(vq_.Pop(&chain), PopStatus::kEmpty);
  EXPECT_EQ(ring_.AvailEvent(), 0u);  // "Tell me about entry 0."
  ring_.SetUsedEvent(2);              // Driver: interrupt when used entry 2 is published.
  for (uint16_t round = 0; round < 4; ++round) {
    ring_.Publish(round);
    ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
    EXPECT_EQ(ring_.AvailEvent(), round + 1);
    ASSERT_TRUE(vq_.PushUsed(chain, 8));
    // used.idx goes 1, 2, 3, 4: only the step past used_event (2 -> 3) interrupts.
    EXPECT_EQ(vq_.NeedsInterrupt(), round == 2) << round;
  }
}

TEST_F(DeviceVirtqueueTest, IndicesWrapPast16Bits) {
  const uint64_t buf = Buffer();
  for (uint16_t i = 0; i < kSize; ++i) ring_.SetDesc(i, buf, 64, kWrite, 0);
  DescriptorChain chain;
  for (uint32_t n = 0; n < 70000; ++n) {
    ring_.Publish(static_cast<uint16_t>(n % kSize));
    ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk) << n;
    ASSERT_EQ(chain.head(), n % kSize);
    ASSERT_TRUE(vq_.PushUsed(chain, 1));
  }
  EXPECT_EQ(ring_.UsedIdx(), static_cast<uint16_t>(70000));
  EXPECT_EQ(vq_.last_avail_idx(), static_cast<uint16_t>(70000));
  EXPECT_FALSE(vq_.broken());
}

TEST_F(DeviceVirtqueueTest, DescriptorCopiedOnceGuestRewriteAfterPopChangesNothing) {
  const uint64_t buf = Buffer();
  ring_.SetChain(0, {{buf, 64, true}});
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  // The guest now points the descriptor outside RAM: the device keeps its copy.
  ring_.SetDesc(0, FakeGuestMemory::kHoleBase, 1 << 20, kWrite, 0);
  EXPECT_EQ(chain.buffers()[0].gpa, base::Gpa(buf));
  EXPECT_EQ(chain.WriteWritable(mem_, 0, "x", 1), 1u);
}

// ---- Hostile rings: each is rejected, counted, and breaks the queue. ----

TEST_F(DeviceVirtqueueTest, HostileDescriptorLoop) {
  const uint64_t buf = Buffer();
  ring_.SetDesc(0, buf, 8, kNext, 1);
  ring_.SetDesc(1, buf, 8, kNext, 0);
  ExpectPopBreaks(0, VirtqueueError::kChainLoop);
}

TEST_F(DeviceVirtqueueTest, HostileSelfLoop) {
  ring_.SetDesc(5, Buffer(), 8, kNext, 5);
  ExpectPopBreaks(5, VirtqueueError::kChainLoop);
}

TEST_F(DeviceVirtqueueTest, HostileChainLongerThanQueue) {
  // Every descriptor chained, and the last one back to the first: kSize + 1
  // descriptors is more than the table holds.
  const uint64_t buf = Buffer();
  for (uint16_t i = 0; i < kSize; ++i) ring_.SetDesc(i, buf, 8, kNext, (i + 1) % kSize);
  ExpectPopBreaks(0, VirtqueueError::kChainLoop);
}

TEST_F(DeviceVirtqueueTest, HostileHeadOutOfRange) { ExpectPopBreaks(kSize, VirtqueueError::kDescOutOfRange); }

TEST_F(DeviceVirtqueueTest, HostileHeadFarOutOfRange) {
  ExpectPopBreaks(0xffff, VirtqueueError::kDescOutOfRange);
}

TEST_F(DeviceVirtqueueTest, HostileNextOutOfRange) {
  ring_.SetDesc(0, Buffer(), 8, kNext, 200);
  ExpectPopBreaks(0, VirtqueueError::kDescOutOfRange);
}

TEST_F(DeviceVirtqueueTest, HostileBufferBeyondRam) {
  ring_.SetDesc(0, FakeGuestMemory::kHighBase + FakeGuestMemory::kHighBytes, 16, 0, 0);
  ExpectPopBreaks(0, VirtqueueError::kBufferOutOfRam);
}

TEST_F(DeviceVirtqueueTest, HostileBufferInHole) {
  ring_.SetDesc(0, FakeGuestMemory::kHoleBase + 0x1000, 16, kWrite, 0);
  ExpectPopBreaks(0, VirtqueueError::kBufferOutOfRam);
}

TEST_F(DeviceVirtqueueTest, HostileBufferStraddlesEndOfRamIntoHole) {
  ring_.SetDesc(0, FakeGuestMemory::kHoleBase - 8, 16, kWrite, 0);
  ExpectPopBreaks(0, VirtqueueError::kBufferOutOfRam);
}

TEST_F(DeviceVirtqueueTest, HostileBufferAfterGoodOnesInChain) {
  const uint64_t buf = Buffer();
  ring_.SetDesc(0, buf, 8, kNext, 1);
  ring_.SetDesc(1, buf, 8, kNext | kWrite, 2);
  ring_.SetDesc(2, FakeGuestMemory::kHoleBase, 8, kWrite, 0);
  ExpectPopBreaks(0, VirtqueueError::kBufferOutOfRam);
}

TEST_F(DeviceVirtqueueTest, HostileBufferWrapsPast2To64) {
  ring_.SetDesc(0, 0xfffffffffffff000ull, 0x2000, 0, 0);
  ExpectPopBreaks(0, VirtqueueError::kBufferAddrWrap);
}

TEST_F(DeviceVirtqueueTest, HostileBufferEndsExactlyAt2To64) {
  ring_.SetDesc(0, 0xffffffffffffff00ull, 0x100, kWrite, 0);
  ExpectPopBreaks(0, VirtqueueError::kBufferAddrWrap);
}

TEST_F(DeviceVirtqueueTest, HostileBufferAtTopOfAddressSpace) {
  ring_.SetDesc(0, UINT64_MAX, 0, kWrite, 0);  // Does not wrap, but is not RAM.
  ExpectPopBreaks(0, VirtqueueError::kBufferOutOfRam);
}

TEST_F(DeviceVirtqueueTest, HostileWritableBeforeReadable) {
  const uint64_t buf = Buffer();
  ring_.SetDesc(0, buf, 8, kNext | kWrite, 1);
  ring_.SetDesc(1, buf, 8, 0, 0);
  ExpectPopBreaks(0, VirtqueueError::kReadableAfterWritable);
}

TEST_F(DeviceVirtqueueTest, HostileZeroLengthWritableBeforeReadable) {
  const uint64_t buf = Buffer();
  ring_.SetDesc(0, buf, 0, kNext | kWrite, 1);
  ring_.SetDesc(1, buf, 8, 0, 0);
  ExpectPopBreaks(0, VirtqueueError::kReadableAfterWritable);
}

TEST_F(DeviceVirtqueueTest, HostileIndirectDescriptor) {
  ring_.SetDesc(0, Buffer(), 16, virtq::kDescFIndirect, 0);
  ExpectPopBreaks(0, VirtqueueError::kIndirectDesc);
}

TEST_F(DeviceVirtqueueTest, HostileAvailIdxJumpsAhead) {
  ring_.SetDesc(0, Buffer(), 8, 0, 0);
  ring_.SetAvailIdx(kSize + 1);
  DescriptorChain chain;
  EXPECT_EQ(vq_.Pop(&chain), PopStatus::kBroken);
  ExpectBroken(VirtqueueError::kAvailIdxJump);
}

TEST_F(DeviceVirtqueueTest, HostileAvailIdxMovesBack) {
  ring_.SetDesc(0, Buffer(), 8, kWrite, 0);
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  ASSERT_TRUE(vq_.PushUsed(chain, 0));
  ring_.SetAvailIdx(0);  // 0 - 1 = 65535 entries "available".
  EXPECT_EQ(vq_.Pop(&chain), PopStatus::kBroken);
  EXPECT_EQ(vq_.error(), VirtqueueError::kAvailIdxJump);
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kAvailIdxJump), 1u);
}

TEST_F(DeviceVirtqueueTest, HostileMoreChainsInFlightThanDescriptors) {
  const uint64_t buf = Buffer();
  for (uint16_t i = 0; i < kSize; ++i) ring_.SetDesc(i, buf, 8, kWrite, 0);
  DescriptorChain chain;
  for (uint16_t i = 0; i < kSize; ++i) {
    ring_.Publish(i);
    ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);  // Held by the device, not returned.
  }
  ring_.Publish(0);  // Descriptor 0 again, while it is still in flight.
  EXPECT_EQ(vq_.Pop(&chain), PopStatus::kBroken);
  EXPECT_EQ(vq_.error(), VirtqueueError::kAvailOvercommit);
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kAvailOvercommit), 1u);
}

TEST(DeviceVirtqueueHostileTest, LengthsThatOverflowWhenSummed) {
  // 4 MiB of RAM at 0; 1025 descriptors each naming all of it (overlap is
  // allowed): the writable total passes 2^32 - 1 at the 1024th.
  FakeGuestMemory mem({{0, 4ull << 20}});
  VirtqueueCounters counters;
  LogBudget log(10);
  constexpr uint32_t kBig = 2048;
  FakeSplitRing ring(mem, kBig);
  Virtqueue vq(mem, 0, &counters, &log);
  ASSERT_EQ(vq.Activate(ring.config(), kBig, false), VirtqueueError::kNone);
  for (uint32_t i = 0; i < 1100; ++i) ring.SetDesc(i, 0, 4u << 20, kNext | kWrite, i + 1);
  ring.Publish(0);
  DescriptorChain chain;
  EXPECT_EQ(vq.Pop(&chain), PopStatus::kBroken);
  EXPECT_EQ(vq.error(), VirtqueueError::kChainLenOverflow);
  EXPECT_EQ(counters.Get(VirtqueueCounters::kChainLenOverflow), 1u);
  EXPECT_TRUE(chain.buffers().empty());
}

TEST(DeviceVirtqueueHostileTest, ReadableLengthsThatOverflowWhenSummed) {
  FakeGuestMemory mem({{0, 4ull << 20}});
  VirtqueueCounters counters;
  LogBudget log(10);
  FakeSplitRing ring(mem, 4096);
  Virtqueue vq(mem, 0, &counters, &log);
  ASSERT_EQ(vq.Activate(ring.config(), 4096, false), VirtqueueError::kNone);
  for (uint32_t i = 0; i < 2000; ++i) ring.SetDesc(i, 0x1000, 0x3ff000, kNext, i + 1);
  ring.Publish(0);
  DescriptorChain chain;
  EXPECT_EQ(vq.Pop(&chain), PopStatus::kBroken);
  EXPECT_EQ(vq.error(), VirtqueueError::kChainLenOverflow);
}

// ---- Ring geometry at QueueReady ----

struct BadGeometry {
  const char* what;
  int64_t desc_delta, avail_delta, used_delta;  // Added to a good layout.
  uint32_t size;
  VirtqueueError error;
};

TEST(DeviceVirtqueueActivateTest, RejectsBadGeometry) {
  const BadGeometry cases[] = {
      {"desc misaligned", 8, 0, 0, 8, VirtqueueError::kBadRingAddress},
      {"avail misaligned", 0, 1, 0, 8, VirtqueueError::kBadRingAddress},
      {"used misaligned", 0, 0, 2, 8, VirtqueueError::kBadRingAddress},
      {"size 0", 0, 0, 0, 0, VirtqueueError::kBadQueueSize},
      {"size not a power of two", 0, 0, 0, 6, VirtqueueError::kBadQueueSize},
      {"size above QueueNumMax", 0, 0, 0, 16, VirtqueueError::kBadQueueSize},
  };
  for (const BadGeometry& c : cases) {
    FakeGuestMemory mem;
    VirtqueueCounters counters;
    LogBudget log(10);
    FakeSplitRing ring(mem, 8);
    Virtqueue vq(mem, 0, &counters, &log);
    VirtqueueConfig config = ring.config();
    config.desc = base::Gpa(config.desc.value() + c.desc_delta);
    config.avail = base::Gpa(config.avail.value() + c.avail_delta);
    config.used = base::Gpa(config.used.value() + c.used_delta);
    config.size = c.size;
    EXPECT_EQ(vq.Activate(config, 8, false), c.error) << c.what;
    EXPECT_FALSE(vq.active()) << c.what;
    EXPECT_EQ(counters.Get(VirtqueueErrorCounter(c.error)), 1u) << c.what;
    DescriptorChain chain;
    EXPECT_EQ(vq.Pop(&chain), PopStatus::kBroken) << c.what;
  }
}

TEST(DeviceVirtqueueActivateTest, RejectsRingsOutsideRam) {
  struct Case {
    const char* what;
    uint64_t desc, avail, used;
    uint32_t size;
  };
  const uint64_t hole = FakeGuestMemory::kHoleBase;
  const uint64_t end_high = FakeGuestMemory::kHighBase + FakeGuestMemory::kHighBytes;
  const Case cases[] = {
      {"desc in hole", hole, 0x1000, 0x2000, 8},
      {"avail in hole", 0x0, hole + 0x100, 0x2000, 8},
      {"used in hole", 0x0, 0x1000, hole + 0x1000, 8},
      {"desc straddles end of low RAM", hole - 64, 0x1000, 0x2000, 8},
      {"used straddles end of high RAM", 0x0, 0x1000, end_high - 16, 8},
      {"desc past 2^64", 0xfffffffffffffff0ull, 0x1000, 0x2000, 8},
      {"big table leaves RAM", hole - 0x40000, 0x1000, 0x2000, 32768},
  };
  for (const Case& c : cases) {
    FakeGuestMemory mem;
    VirtqueueCounters counters;
    LogBudget log(10);
    Virtqueue vq(mem, 0, &counters, &log);
    VirtqueueConfig config{c.size, base::Gpa(c.desc), base::Gpa(c.avail), base::Gpa(c.used)};
    EXPECT_EQ(vq.Activate(config, 32768, false), VirtqueueError::kBadRingAddress) << c.what;
    EXPECT_EQ(counters.Get(VirtqueueCounters::kBadRingAddress), 1u) << c.what;
  }
}

TEST(DeviceVirtqueueActivateTest, MaxSizeQueueInRamIsFine) {
  FakeGuestMemory mem;
  VirtqueueCounters counters;
  LogBudget log(10);
  FakeSplitRing ring(mem, 32768);
  Virtqueue vq(mem, 0, &counters, &log);
  EXPECT_EQ(vq.Activate(ring.config(), 32768, false), VirtqueueError::kNone);
  EXPECT_TRUE(vq.active());
}

// ---- Device-model misuse and recovery ----

TEST_F(DeviceVirtqueueTest, StaleTokenAfterResetIsRefused) {
  ring_.SetChain(0, {{Buffer(), 8, true}});
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  const ChainToken token = chain.token();
  vq_.Reset();
  EXPECT_FALSE(vq_.PushUsed(token, 1));  // Inactive.
  ASSERT_EQ(Activate(false), VirtqueueError::kNone);
  EXPECT_FALSE(vq_.PushUsed(token, 1));  // Old generation.
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kUsedPushInvalid), 2u);
  EXPECT_EQ(ring_.UsedIdx(), 0u);
}

TEST_F(DeviceVirtqueueTest, PushWithoutPopAndOverlongLengthAreCaught) {
  EXPECT_FALSE(vq_.PushUsed(ChainToken{0, vq_.generation(), 8}, 1));
  ring_.SetChain(0, {{Buffer(), 8, true}});
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  EXPECT_TRUE(vq_.PushUsed(chain, 1000));
  EXPECT_EQ(ring_.UsedLen(0), 8u);  // Clamped to what the chain can hold.
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kUsedLenClamped), 1u);
  EXPECT_EQ(counters_.Get(VirtqueueCounters::kUsedPushInvalid), 1u);
}

TEST_F(DeviceVirtqueueTest, DeviceModelCanRefuseAChain) {
  ring_.SetChain(0, {{Buffer(), 8, true}});
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  vq_.Fail("writable buffer on an inflate queue");
  EXPECT_FALSE(vq_.PushUsed(chain, 0));
  ExpectBroken(VirtqueueError::kDeviceRejected);
}

TEST_F(DeviceVirtqueueTest, ResetRecoversABrokenQueue) {
  ring_.SetDesc(0, Buffer(), 8, kNext, 0);  // Self loop.
  ring_.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kBroken);
  vq_.Reset();
  FakeSplitRing fresh(mem_, kSize);
  ASSERT_EQ(vq_.Activate(fresh.config(), kSize, false), VirtqueueError::kNone);
  fresh.SetChain(0, {{Buffer(), 8, true}});
  fresh.Publish(0);
  ASSERT_EQ(vq_.Pop(&chain), PopStatus::kOk);
  EXPECT_TRUE(vq_.PushUsed(chain, 8));
  EXPECT_EQ(fresh.UsedIdx(), 1u);
}

// RAM that is not host-contiguous (a FrameTable after remapping): buffers and
// rings that span pages are still valid, and are read and written page by page.
TEST(DeviceVirtqueueSplitPagesTest, RingsAndBuffersSpanningPagesWork) {
  FakeGuestMemory mem;
  mem.split_pages = true;
  VirtqueueCounters counters;
  LogBudget log(10);
  // The used ring straddles a page so that element 0 crosses the boundary.
  const base::Gpa pages = mem.AllocPages(4);
  const VirtqueueConfig config{16, pages, pages + 0x400, pages + 0xff8};
  FakeSplitRing ring(mem, config);
  Virtqueue vq(mem, 0, &counters, &log);
  ASSERT_EQ(vq.Activate(config, 16, true), VirtqueueError::kNone);
  const base::Gpa buf = mem.AllocPages(3);
  std::string text(3 * 4096 - 100, 'q');
  ASSERT_TRUE(mem.Write(buf + 50, text.data(), text.size()));
  ring.SetChain(0, {{buf.value() + 50, static_cast<uint32_t>(text.size())},
                    {buf.value() + 10, 9000, true}});
  ring.Publish(0);
  DescriptorChain chain;
  ASSERT_EQ(vq.Pop(&chain), Virtqueue::PopStatus::kOk);
  std::string back(text.size(), 0);
  EXPECT_EQ(chain.ReadReadable(mem, 0, back.data(), back.size()), text.size());
  EXPECT_EQ(back, text);
  EXPECT_EQ(chain.WriteWritable(mem, 0, text.data(), 9000), 9000u);
  ASSERT_TRUE(vq.PushUsed(chain, 9000));
  EXPECT_EQ(ring.UsedIdx(), 1u);
  EXPECT_EQ(ring.UsedId(0), 0u);
  EXPECT_EQ(ring.UsedLen(0), 9000u);
  EXPECT_FALSE(vq.broken());
  // A buffer that runs off the end of RAM is still refused.
  ring.SetDesc(1, FakeGuestMemory::kHoleBase - 4096, 8192, 0, 0);
  ring.Publish(1);
  EXPECT_EQ(vq.Pop(&chain), Virtqueue::PopStatus::kBroken);
  EXPECT_EQ(vq.error(), VirtqueueError::kBufferOutOfRam);
}

TEST(DeviceVirtqueueLogTest, GuestCannotFloodTheLog) {
  int warnings = 0;
  base::LogSink old = base::SetLogSink([&](base::LogSeverity severity, std::string_view) {
    if (severity == base::LogSeverity::kWarning) ++warnings;
  });
  FakeGuestMemory mem;
  VirtqueueCounters counters;
  LogBudget log(5);
  FakeSplitRing ring(mem, 8);
  Virtqueue vq(mem, 0, &counters, &log);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(vq.Activate(ring.config(), 8, false), VirtqueueError::kNone);
    ring.SetDesc(0, 0, 8, kNext, 0);
    ring.SetAvailIdx(0);
    ring.Publish(0);
    DescriptorChain chain;
    ASSERT_EQ(vq.Pop(&chain), Virtqueue::PopStatus::kBroken);
  }
  base::SetLogSink(std::move(old));
  EXPECT_EQ(counters.Get(VirtqueueCounters::kChainLoop), 1000u);  // Every one counted...
  EXPECT_EQ(warnings, 5);                                          // ...few logged.
}

// Random garbage in every guest-written ring field: the device never crashes,
// never returns a chain with a buffer outside RAM, and breaks the queue on the
// first violation (ASan/UBSan builds check the "never touches" part).
TEST(DeviceVirtqueuePropertyTest, RandomRingsNeverEscapeRam) {
  std::mt19937_64 rng(12345);
  FakeGuestMemory mem;
  uint64_t ok_chains = 0, broken = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const uint32_t size = 1u << (rng() % 6);
    FakeSplitRing ring(mem, size);  // Allocates from low RAM; reuse it below.
    VirtqueueCounters counters;
    LogBudget log(0);
    Virtqueue vq(mem, 0, &counters, &log);
    ASSERT_EQ(vq.Activate(ring.config(), size, rng() % 2 == 0), VirtqueueError::kNone);
    // Mostly plausible fields (so chains get popped and pushed), some wild.
    auto pick_addr = [&]() -> uint64_t {
      switch (rng() % 10) {
        case 0: return FakeGuestMemory::kHoleBase - rng() % 64;
        case 1: return UINT64_MAX - rng() % 0x10000;
        case 2: return rng();
        case 3: return FakeGuestMemory::kHighBase + rng() % FakeGuestMemory::kHighBytes;
        default: return rng() % (FakeGuestMemory::kLowBytes - 0x10000);
      }
    };
    for (uint32_t i = 0; i < size; ++i) {
      const uint32_t len = rng() % 10 == 0 ? static_cast<uint32_t>(rng()) : rng() % 8192;
      const uint16_t flags = static_cast<uint16_t>(rng() % 16 == 0 ? rng() : rng() % 4);
      const uint16_t next = static_cast<uint16_t>(rng() % 16 == 0 ? rng() : rng() % size);
      ring.SetDesc(i, pick_addr(), len, flags, next);
    }
    const int publishes = static_cast<int>(rng() % (2 * size + 2));
    for (int p = 0; p < publishes; ++p) {
      ring.Publish(static_cast<uint16_t>(rng() % 3 == 0 ? rng() : rng() % size));
    }
    if (rng() % 8 == 0) ring.SetAvailIdx(static_cast<uint16_t>(rng()));
    DescriptorChain chain;
    for (int pops = 0; pops < 4 * static_cast<int>(size) + 4; ++pops) {
      const Virtqueue::PopStatus st = vq.Pop(&chain);
      if (st != Virtqueue::PopStatus::kOk) {
        if (st == Virtqueue::PopStatus::kBroken) ++broken;
        break;
      }
      ++ok_chains;
      bool seen_writable = false;
      for (const ChainBuffer& b : chain.buffers()) {
        ASSERT_NE(mem.HostPtr(b.gpa, b.len), nullptr);
        ASSERT_FALSE(seen_writable && !b.writable);
        seen_writable |= b.writable;
      }
      ASSERT_LE(chain.buffers().size(), size);
      if (rng() % 2) {
        ASSERT_TRUE(vq.PushUsed(chain, static_cast<uint32_t>(rng())));
      }
    }
    mem.ResetAllocator();  // The next ring reuses the same pages.
  }
  EXPECT_GT(ok_chains, 100u);
  EXPECT_GT(broken, 100u);
}

}  // namespace
}  // namespace vmm

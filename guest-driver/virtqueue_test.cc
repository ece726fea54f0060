// Split virtqueue tests, driven end to end through the real transport against the
// fake virtio-mmio device of fake_virtio_mmio.h.
#include "guest-driver/virtqueue.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <vector>

#include "guest-driver/fake_virtio_mmio.h"
#include "guest-driver/virtio_mmio.h"

namespace guest_driver {
namespace {

using testing::FakeRig;

class VirtqueueTest : public ::testing::Test {
 protected:
  void BringUp(uint32_t size, uint64_t features = feature::kVersion1) {
    rig_.dev.device_features = features;
    ASSERT_EQ(rig_.BringUp(features, &vq_, 1, size), VirtioStatus::kOk);
  }
  void TearDown() override { EXPECT_TRUE(rig_.Violations().empty()) << rig_.Violations()[0]; }

  // Adds one readable buffer of `len` bytes and one writable buffer of `len` bytes.
  uint16_t AddEcho(uint8_t* in, uint64_t in_gpa, uint64_t out_gpa, uint32_t len, uint8_t seed) {
    for (uint32_t i = 0; i < len; ++i) in[i] = static_cast<uint8_t>(seed + i);
    VirtqBuffer bufs[2] = {{in_gpa, len, false}, {out_gpa, len, true}};
    uint16_t head = 0xffff;
    EXPECT_EQ(vq_.Add(bufs, 2, &head), VirtioStatus::kOk);
    return head;
  }

  FakeRig rig_;
  Virtqueue vq_;
};

TEST_F(VirtqueueTest, RingLayoutFollowsSpecAlignment) {
  // §2.7: descriptor table 16*N, available ring 6+2N, used ring 6+8N at 4 alignment.
  EXPECT_EQ(Virtqueue::DescBytes(256), 4096u);
  EXPECT_EQ(Virtqueue::UsedOffset(256), 4616u);  // 4096 + 518 rounded up to 4.
  EXPECT_EQ(Virtqueue::RingBytes(256), 4616u + 2054u);
  BringUp(256);
  EXPECT_EQ(vq_.size(), 256u);
  EXPECT_EQ(vq_.desc_gpa() % 16, 0u);
  EXPECT_EQ(vq_.avail_gpa(), vq_.desc_gpa() + 4096);
  EXPECT_EQ(vq_.used_gpa(), vq_.desc_gpa() + 4616);
  EXPECT_EQ(rig_.dev.queues[0].desc_gpa, vq_.desc_gpa());
  EXPECT_EQ(rig_.dev.queues[0].driver_gpa, vq_.avail_gpa());
  EXPECT_EQ(rig_.dev.queues[0].device_gpa, vq_.used_gpa());
  EXPECT_EQ(vq_.num_free(), 256u);
}

TEST_F(VirtqueueTest, AddKickHarvestEchoesData) {
  BringUp(16);
  uint64_t in_gpa = 0, out_gpa = 0;
  uint8_t* in = rig_.Buffer(64, &in_gpa);
  uint8_t* out = rig_.Buffer(64, &out_gpa);
  const uint16_t head = AddEcho(in, in_gpa, out_gpa, 64, 7);
  EXPECT_EQ(vq_.num_free(), 14u);
  EXPECT_EQ(vq_.num_in_flight(), 1u);
  EXPECT_EQ(rig_.dev.AvailIdx(0), 1);
  EXPECT_TRUE(rig_.transport.Kick(vq_));
  EXPECT_EQ(rig_.dev.queues[0].notifies, 1u);
  EXPECT_FALSE(rig_.transport.Kick(vq_)) << "nothing new since the last kick";
  EXPECT_EQ(rig_.dev.queues[0].notifies, 1u);

  EXPECT_TRUE(vq_.HasUsed());
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(c.head, head);
  EXPECT_EQ(c.written_len, 64u);
  EXPECT_EQ(memcmp(in, out, 64), 0);
  EXPECT_EQ(vq_.PollUsed(&c), VirtioStatus::kEmpty);
  EXPECT_EQ(vq_.num_free(), 16u);
  EXPECT_EQ(vq_.num_in_flight(), 0u);
  EXPECT_EQ(rig_.transport.ReadAndAckInterrupt(), mmio::kInterruptUsedBuffer);
  EXPECT_EQ(rig_.dev.interrupt_status, 0u);
}

TEST_F(VirtqueueTest, ChainedDescriptorsAreLinkedInOrderWithFlags) {
  BringUp(8);
  uint64_t gpa = 0;
  uint8_t* mem = rig_.Buffer(4 * kPageSize, &gpa);
  for (int i = 0; i < 30; ++i) mem[i] = static_cast<uint8_t>(100 + i);
  // Three readable pieces (10+10+10 bytes), two writable ones (16+20 bytes).
  VirtqBuffer bufs[5] = {{gpa, 10, false},
                         {gpa + 10, 10, false},
                         {gpa + 20, 10, false},
                         {gpa + kPageSize, 16, true},
                         {gpa + 2 * kPageSize, 20, true}};
  uint16_t head = 0;
  ASSERT_EQ(vq_.Add(bufs, 5, &head), VirtioStatus::kOk);
  EXPECT_EQ(vq_.num_free(), 3u);
  rig_.transport.Kick(vq_);
  ASSERT_EQ(rig_.dev.processed.size(), 1u);
  const testing::FakeChain& chain = rig_.dev.processed[0];
  EXPECT_EQ(chain.head, head);
  ASSERT_EQ(chain.descs.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(chain.descs[i].gpa, bufs[i].gpa) << i;
    EXPECT_EQ(chain.descs[i].len, bufs[i].len) << i;
    EXPECT_EQ((chain.descs[i].flags & kVirtqDescFNext) != 0, i < 4) << i;
    EXPECT_EQ((chain.descs[i].flags & kVirtqDescFWrite) != 0, i >= 3) << i;
  }
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(c.written_len, 30u);
  // The 30 echoed bytes span both writable buffers: 16 in the first, 14 in the second.
  EXPECT_EQ(memcmp(mem + kPageSize, mem, 16), 0);
  EXPECT_EQ(memcmp(mem + 2 * kPageSize, mem + 16, 14), 0);
  EXPECT_EQ(vq_.num_free(), 8u);
}

TEST_F(VirtqueueTest, WrapsAroundSixteenBitIndices) {
  // 70000 chains through an 8-entry queue, three in flight at a time, so the free
  // running avail/used indices cross 65535 -> 0 while ring slots keep cycling.
  BringUp(8);
  rig_.dev.auto_process = false;
  uint64_t in_gpa = 0, out_gpa = 0;
  uint8_t* in = rig_.Buffer(kPageSize, &in_gpa);
  uint8_t* out = rig_.Buffer(kPageSize, &out_gpa);
  constexpr uint32_t kChains = 70000;
  constexpr uint32_t kLen = 8;
  std::vector<uint16_t> heads_in_order;
  uint32_t added = 0, harvested = 0;
  bool saw_used_wrap = false;
  while (harvested < kChains) {
    while (added < kChains && vq_.num_in_flight() < 3) {
      // Each chain uses its own slice of the buffers so completions can be checked.
      const uint32_t slot = added % 3;
      uint8_t* src = in + slot * 64;
      for (uint32_t i = 0; i < kLen; ++i) src[i] = static_cast<uint8_t>(added * 7 + i);
      VirtqBuffer bufs[2] = {{in_gpa + slot * 64, kLen, false}, {out_gpa + slot * 64, kLen, true}};
      uint16_t head = 0;
      ASSERT_EQ(vq_.Add(bufs, 2, &head), VirtioStatus::kOk) << added;
      heads_in_order.push_back(head);
      ++added;
    }
    rig_.transport.Kick(vq_);
    const uint16_t before = rig_.dev.queues[0].used_idx;
    // The device completes one chain per round (the oldest), leaving two in flight.
    testing::FakeChain chain;
    ASSERT_TRUE(rig_.dev.PopAvail(0, &chain));
    const uint32_t slot = harvested % 3;
    memcpy(out + slot * 64, in + slot * 64, kLen);
    rig_.dev.PushUsed(0, chain.head, kLen);
    if (rig_.dev.queues[0].used_idx < before) saw_used_wrap = true;
    VirtqCompletion c;
    ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk) << harvested;
    ASSERT_EQ(c.head, heads_in_order[harvested]);
    ASSERT_EQ(c.written_len, kLen);
    ASSERT_EQ(out[slot * 64], static_cast<uint8_t>(harvested * 7)) << harvested;
    ++harvested;
  }
  EXPECT_TRUE(saw_used_wrap);
  EXPECT_EQ(rig_.dev.AvailIdx(0), static_cast<uint16_t>(kChains));
  EXPECT_EQ(rig_.dev.queues[0].used_idx, static_cast<uint16_t>(kChains));
  EXPECT_EQ(vq_.num_used(), kChains);
  EXPECT_EQ(vq_.num_free(), 8u);
  EXPECT_FALSE(vq_.broken());
}

TEST_F(VirtqueueTest, FullRingReturnsRingFullWithoutChangingState) {
  BringUp(4);
  rig_.dev.auto_process = false;
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  VirtqBuffer one[1] = {{gpa, 16, true}};
  uint16_t heads[4];
  for (uint16_t& h : heads) ASSERT_EQ(vq_.Add(one, 1, &h), VirtioStatus::kOk);
  EXPECT_EQ(std::set<uint16_t>(heads, heads + 4).size(), 4u);
  EXPECT_EQ(vq_.num_free(), 0u);
  uint16_t head = 0xbeef;
  EXPECT_EQ(vq_.Add(one, 1, &head), VirtioStatus::kRingFull);
  EXPECT_EQ(head, 0xbeef);
  EXPECT_EQ(rig_.dev.AvailIdx(0), 4);
  EXPECT_EQ(vq_.num_in_flight(), 4u);

  // One freed descriptor is not enough for a two-buffer chain.
  rig_.transport.Kick(vq_);
  testing::FakeChain chain;
  ASSERT_TRUE(rig_.dev.PopAvail(0, &chain));
  rig_.dev.PushUsed(0, chain.head, 0);
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(c.head, heads[0]);
  EXPECT_EQ(c.written_len, 0u);
  VirtqBuffer two[2] = {{gpa, 16, false}, {gpa + 16, 16, true}};
  EXPECT_EQ(vq_.Add(two, 2, &head), VirtioStatus::kRingFull);
  EXPECT_EQ(vq_.num_free(), 1u);
  EXPECT_EQ(rig_.dev.AvailIdx(0), 4);
  ASSERT_EQ(vq_.Add(one, 1, &head), VirtioStatus::kOk);
  EXPECT_EQ(head, heads[0]) << "the freed descriptor is reused";
}

TEST_F(VirtqueueTest, RejectsInvalidChainsAndLeavesQueueUntouched) {
  BringUp(4);
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  uint16_t head = 0;
  VirtqBuffer ok[1] = {{gpa, 16, false}};
  EXPECT_EQ(vq_.Add(ok, 0, &head), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(vq_.Add(nullptr, 1, &head), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(vq_.Add(ok, 1, nullptr), VirtioStatus::kInvalidArgument);
  VirtqBuffer zero[1] = {{gpa, 0, false}};
  EXPECT_EQ(vq_.Add(zero, 1, &head), VirtioStatus::kInvalidArgument);
  VirtqBuffer readable_after_writable[2] = {{gpa, 16, true}, {gpa + 16, 16, false}};
  EXPECT_EQ(vq_.Add(readable_after_writable, 2, &head), VirtioStatus::kInvalidArgument);
  VirtqBuffer wraps[1] = {{~uint64_t{0} - 4, 16, true}};
  EXPECT_EQ(vq_.Add(wraps, 1, &head), VirtioStatus::kInvalidArgument);
  VirtqBuffer too_long[2] = {{gpa, 0xffffffff, false}, {gpa, 1, true}};
  EXPECT_EQ(vq_.Add(too_long, 2, &head), VirtioStatus::kInvalidArgument);
  VirtqBuffer longer_than_queue[5] = {ok[0], ok[0], ok[0], ok[0], ok[0]};
  EXPECT_EQ(vq_.Add(longer_than_queue, 5, &head), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(vq_.num_free(), 4u);
  EXPECT_EQ(vq_.num_in_flight(), 0u);
  EXPECT_EQ(rig_.dev.AvailIdx(0), 0);
}

TEST_F(VirtqueueTest, CallsBeforeSetupReturnBadState) {
  Virtqueue vq;
  VirtqBuffer b[1] = {{0x1000, 1, false}};
  uint16_t head;
  VirtqCompletion c;
  EXPECT_EQ(vq.Add(b, 1, &head), VirtioStatus::kBadState);
  EXPECT_EQ(vq.PollUsed(&c), VirtioStatus::kBadState);
  EXPECT_FALSE(vq.KickPrepare());
  EXPECT_FALSE(vq.HasUsed());
  EXPECT_EQ(vq.Init(rig_.env, 0, 3, false), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(vq.Init(rig_.env, 0, 65536, false), VirtioStatus::kInvalidArgument);
  rig_.mem.fail_allocs = 1;
  EXPECT_EQ(vq.Init(rig_.env, 0, 8, false), VirtioStatus::kNoMemory);
  rig_.mem.fail_allocs = 0;
  EXPECT_EQ(vq.Init(rig_.env, 0, 8, false), VirtioStatus::kOk);
  vq.Release();
  EXPECT_FALSE(vq.is_set_up());
  EXPECT_EQ(rig_.mem.pages_freed, 2u);
}

// Hostile device: each protocol break is reported, never trusted.
class HostileDeviceTest : public VirtqueueTest {
 protected:
  void SetUp() override {
    BringUp(8);
    rig_.dev.auto_process = false;
    buf_ = rig_.Buffer(kPageSize, &gpa_);
  }
  uint16_t AddWritable(uint32_t len) {
    VirtqBuffer b[2] = {{gpa_, 8, false}, {gpa_ + 64, len, true}};
    uint16_t head = 0;
    EXPECT_EQ(vq_.Add(b, 2, &head), VirtioStatus::kOk);
    rig_.transport.Kick(vq_);
    return head;
  }
  void ExpectBroken(VirtqDeviceError reason) {
    VirtqCompletion c{0x1234, 0x5678};
    EXPECT_EQ(vq_.PollUsed(&c), VirtioStatus::kDeviceError);
    EXPECT_EQ(c.head, 0x1234) << "nothing reported from a bad entry";
    EXPECT_TRUE(vq_.broken());
    EXPECT_EQ(vq_.device_error(), reason);
    // Sticky: the queue refuses work until it is reset.
    EXPECT_EQ(vq_.PollUsed(&c), VirtioStatus::kDeviceError);
    VirtqBuffer b[1] = {{gpa_, 8, false}};
    uint16_t head = 0;
    EXPECT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kDeviceError);
  }
  uint8_t* buf_ = nullptr;
  uint64_t gpa_ = 0;
};

TEST_F(HostileDeviceTest, UsedIdOutOfRange) {
  AddWritable(32);
  rig_.dev.PushUsedRaw(0, 8, 0);  // Queue size is 8: ids are 0..7.
  ExpectBroken(VirtqDeviceError::kUsedIdOutOfRange);
}

TEST_F(HostileDeviceTest, UsedIdNotTheHeadOfAnInFlightChain) {
  const uint16_t head = AddWritable(32);
  // The chain's second descriptor is in range but is not a head.
  const uint16_t second = static_cast<uint16_t>(head + 1);
  rig_.dev.PushUsedRaw(0, second, 0);
  ExpectBroken(VirtqDeviceError::kUsedIdNotInFlight);
}

TEST_F(HostileDeviceTest, SameChainReturnedTwice) {
  const uint16_t head = AddWritable(32);
  AddWritable(32);
  rig_.dev.PushUsedRaw(0, head, 32);
  rig_.dev.PushUsedRaw(0, head, 32);
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(c.head, head);
  ExpectBroken(VirtqDeviceError::kUsedIdNotInFlight);
}

TEST_F(HostileDeviceTest, UsedLenLargerThanWritableBytes) {
  const uint16_t head = AddWritable(32);
  rig_.dev.PushUsedRaw(0, head, 33);  // 8 readable + 32 writable: at most 32 written.
  ExpectBroken(VirtqDeviceError::kUsedLenTooLarge);
}

TEST_F(HostileDeviceTest, UsedLenOnReadOnlyChain) {
  VirtqBuffer b[1] = {{gpa_, 64, false}};
  uint16_t head = 0;
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);
  rig_.dev.PushUsedRaw(0, head, 1);
  ExpectBroken(VirtqDeviceError::kUsedLenTooLarge);
}

TEST_F(HostileDeviceTest, UsedIdxJumpsPastQueueSize) {
  const uint16_t head = AddWritable(32);
  rig_.dev.PushUsedRaw(0, head, 0);
  rig_.dev.SetUsedIdx(0, 9);  // Nine entries "used" with one chain in flight, queue of 8.
  ExpectBroken(VirtqDeviceError::kUsedIdxRunsAhead);
}

TEST_F(HostileDeviceTest, UsedIdxRunsAheadOfChainsInFlight) {
  const uint16_t a = AddWritable(32);
  AddWritable(32);
  rig_.dev.PushUsedRaw(0, a, 0);
  rig_.dev.SetUsedIdx(0, 3);  // Within the queue size, but only two chains are out.
  ExpectBroken(VirtqDeviceError::kUsedIdxRunsAhead);
}

TEST_F(HostileDeviceTest, ScribbledDescriptorTableDoesNotCorruptFreeList) {
  const uint16_t a = AddWritable(32);
  const uint16_t b = AddWritable(32);
  // The device overwrites every descriptor's link and flags.
  auto* desc = reinterpret_cast<VirtqDesc*>(rig_.mem.Translate(vq_.desc_gpa(), 8 * sizeof(VirtqDesc)));
  ASSERT_NE(desc, nullptr);
  for (int i = 0; i < 8; ++i) {
    desc[i].next = 0;
    desc[i].flags = kVirtqDescFNext;
  }
  rig_.dev.PushUsedRaw(0, b, 0);
  rig_.dev.PushUsedRaw(0, a, 0);
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(vq_.num_free(), 8u);
  // All eight descriptors are still distinct and usable.
  std::set<uint16_t> heads;
  VirtqBuffer one[1] = {{gpa_, 8, true}};
  for (int i = 0; i < 8; ++i) {
    uint16_t head = 0;
    ASSERT_EQ(vq_.Add(one, 1, &head), VirtioStatus::kOk);
    heads.insert(head);
  }
  EXPECT_EQ(heads.size(), 8u);
  uint16_t head = 0;
  EXPECT_EQ(vq_.Add(one, 1, &head), VirtioStatus::kRingFull);
}

TEST_F(HostileDeviceTest, RecoversAfterResetAndDetach) {
  std::set<uint16_t> heads = {AddWritable(32), AddWritable(32), AddWritable(32)};
  rig_.dev.PushUsedRaw(0, 7, 0);  // Descriptor 7 was never handed out.
  ExpectBroken(VirtqDeviceError::kUsedIdNotInFlight);

  ASSERT_EQ(rig_.transport.Reset(), VirtioStatus::kOk);
  std::set<uint16_t> detached;
  uint16_t head = 0;
  while (vq_.DetachInFlight(&head) == VirtioStatus::kOk) detached.insert(head);
  EXPECT_EQ(detached, heads);
  EXPECT_EQ(vq_.num_free(), 8u);
  EXPECT_EQ(vq_.num_in_flight(), 0u);

  // Bring the device up again, reusing the queue's memory.
  const size_t pages_before = rig_.mem.pages_allocated;
  ASSERT_EQ(rig_.BringUp(feature::kVersion1, &vq_, 1, 8), VirtioStatus::kOk);
  EXPECT_EQ(rig_.mem.pages_allocated, pages_before);
  EXPECT_FALSE(vq_.broken());
  rig_.dev.auto_process = true;
  AddWritable(32);
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(c.written_len, 8u);
}

TEST_F(VirtqueueTest, NoNotifyFlagSuppressesKick) {
  BringUp(8);
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  rig_.dev.SetUsedFlags(0, kVirtqUsedFNoNotify);
  VirtqBuffer b[1] = {{gpa, 8, true}};
  uint16_t head = 0;
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);
  EXPECT_FALSE(rig_.transport.Kick(vq_));
  EXPECT_EQ(rig_.dev.queues[0].notifies, 0u);
  EXPECT_EQ(vq_.num_notifies_suppressed(), 1u);
  rig_.dev.SetUsedFlags(0, 0);
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);
  EXPECT_TRUE(rig_.transport.Kick(vq_));
  EXPECT_EQ(rig_.dev.queues[0].notifies, 1u);
  EXPECT_EQ(rig_.dev.processed.size(), 2u);
}

TEST_F(VirtqueueTest, NoInterruptFlagFollowsDisableAndEnable) {
  BringUp(8);
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  VirtqBuffer b[1] = {{gpa, 8, true}};
  uint16_t head = 0;
  vq_.DisableInterrupts();
  EXPECT_EQ(rig_.dev.AvailFlags(0), kVirtqAvailFNoInterrupt);
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);
  rig_.transport.Kick(vq_);
  EXPECT_EQ(rig_.dev.queues[0].interrupts, 0u);
  // The completion arrived while interrupts were off: enabling reports it.
  EXPECT_TRUE(vq_.EnableInterrupts());
  EXPECT_EQ(rig_.dev.AvailFlags(0), 0);
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_FALSE(vq_.EnableInterrupts());
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);
  rig_.transport.Kick(vq_);
  EXPECT_EQ(rig_.dev.queues[0].interrupts, 1u);
}

TEST_F(VirtqueueTest, EventIdxControlsNotificationsAndInterrupts) {
  BringUp(8, feature::kVersion1 | feature::kEventIdx);
  ASSERT_TRUE(vq_.event_idx());
  rig_.dev.auto_process = false;
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  VirtqBuffer b[1] = {{gpa, 8, true}};
  uint16_t head = 0;
  // avail_event 0: the device wants to hear when entry 0 is made available.
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);
  EXPECT_TRUE(vq_.KickPrepare());
  // The device asks to be told only once entry 3 is available (§2.7.10).
  rig_.dev.SetAvailEvent(0, 3);
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);  // Entry 1.
  EXPECT_FALSE(vq_.KickPrepare());
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);  // Entry 2.
  ASSERT_EQ(vq_.Add(b, 1, &head), VirtioStatus::kOk);  // Entry 3: crosses avail_event.
  EXPECT_TRUE(vq_.KickPrepare());
  EXPECT_EQ(vq_.num_notifies(), 2u);
  EXPECT_EQ(vq_.num_notifies_suppressed(), 1u);
  EXPECT_EQ(rig_.dev.AvailFlags(0), 0) << "flags stay 0 with EVENT_IDX";

  // Harvesting advances used_event, so the device interrupts for the next entry.
  testing::FakeChain chain;
  ASSERT_TRUE(rig_.dev.PopAvail(0, &chain));
  rig_.dev.PushUsed(0, chain.head, 8);
  EXPECT_EQ(rig_.dev.queues[0].interrupts, 1u);  // used_event 0 is crossed.
  VirtqCompletion c;
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.UsedEvent(0), 1);
  vq_.DisableInterrupts();
  ASSERT_TRUE(rig_.dev.PopAvail(0, &chain));
  rig_.dev.PushUsed(0, chain.head, 8);  // Crosses used_event 1: one more interrupt.
  ASSERT_EQ(vq_.PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.UsedEvent(0), 1) << "not advanced while interrupts are disabled";
  ASSERT_TRUE(rig_.dev.PopAvail(0, &chain));
  rig_.dev.PushUsed(0, chain.head, 8);
  EXPECT_EQ(rig_.dev.queues[0].interrupts, 2u) << "suppressed past used_event";
  EXPECT_TRUE(vq_.EnableInterrupts());
  EXPECT_EQ(rig_.dev.UsedEvent(0), 2);
}

}  // namespace
}  // namespace guest_driver

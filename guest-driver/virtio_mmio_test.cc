// virtio-mmio transport tests against the fake device of fake_virtio_mmio.h: probe,
// the §3.1.1 initialization sequence, feature negotiation, queue setup, interrupts,
// configuration space and reset.
#include "guest-driver/virtio_mmio.h"

#include <gtest/gtest.h>

#include <vector>

#include "guest-driver/fake_virtio_mmio.h"
#include "guest-driver/virtqueue.h"

namespace guest_driver {
namespace {

using testing::FakeRig;
namespace ds = device_status;

class VirtioMmioTest : public ::testing::Test {
 protected:
  void TearDown() override {
    const std::vector<std::string> v = rig_.Violations();
    EXPECT_TRUE(v.empty()) << v[0];
  }
  FakeRig rig_;
  VirtioMmioDevice& dev_ = rig_.transport;
};

TEST_F(VirtioMmioTest, ProbeIdentifiesModernDeviceWithoutWriting) {
  rig_.dev.vendor_id = 0x1234;
  ASSERT_EQ(dev_.Probe(device_id::kBalloon), VirtioStatus::kOk);
  EXPECT_EQ(dev_.device_id(), device_id::kBalloon);
  EXPECT_EQ(dev_.vendor_id(), 0x1234u);
  EXPECT_EQ(dev_.phase(), VirtioMmioDevice::Phase::kProbed);
  EXPECT_EQ(rig_.dev.num_register_writes, 0u);
  EXPECT_EQ(dev_.Probe(), VirtioStatus::kOk) << "0 accepts any device";
}

TEST_F(VirtioMmioTest, ProbeRejectsWhatIsNotAModernDevice) {
  rig_.dev.magic = 0x12345678;
  EXPECT_EQ(dev_.Probe(), VirtioStatus::kNotVirtio);
  rig_.dev.magic = mmio::kMagic;
  rig_.dev.version = 1;
  EXPECT_EQ(dev_.Probe(), VirtioStatus::kLegacyDevice);
  rig_.dev.version = 3;
  EXPECT_EQ(dev_.Probe(), VirtioStatus::kUnsupportedVersion);
  rig_.dev.version = 2;
  rig_.dev.device_id = 0;
  EXPECT_EQ(dev_.Probe(), VirtioStatus::kNoDevice);
  rig_.dev.device_id = device_id::kBlock;
  EXPECT_EQ(dev_.Probe(device_id::kBalloon), VirtioStatus::kWrongDevice);
  EXPECT_EQ(dev_.phase(), VirtioMmioDevice::Phase::kUnprobed);
  EXPECT_EQ(dev_.Begin(), VirtioStatus::kBadState);
  EXPECT_EQ(rig_.dev.num_register_writes, 0u);
}

TEST_F(VirtioMmioTest, InitSequenceFollowsSpecOrder) {
  rig_.dev.device_features = feature::kVersion1 | 0x3;
  Virtqueue vqs[2];
  ASSERT_EQ(rig_.BringUp(0x1, vqs, 2, 64), VirtioStatus::kOk);
  // §3.1.1: reset, ACKNOWLEDGE, DRIVER, FEATURES_OK, (queues), DRIVER_OK, each
  // write keeping the earlier bits.
  const std::vector<uint32_t> expected = {
      0, ds::kAcknowledge, ds::kAcknowledge | ds::kDriver,
      ds::kAcknowledge | ds::kDriver | ds::kFeaturesOk,
      ds::kAcknowledge | ds::kDriver | ds::kFeaturesOk | ds::kDriverOk};
  EXPECT_EQ(rig_.dev.status_writes, expected);
  EXPECT_EQ(rig_.dev.driver_features, feature::kVersion1 | 0x1);
  EXPECT_EQ(dev_.features(), feature::kVersion1 | 0x1);
  EXPECT_TRUE(dev_.HasFeature(0x1));
  EXPECT_FALSE(dev_.HasFeature(0x2));
  EXPECT_EQ(dev_.phase(), VirtioMmioDevice::Phase::kDriverOk);
  for (int q = 0; q < 2; ++q) {
    EXPECT_TRUE(rig_.dev.queues[q].ready) << q;
    EXPECT_EQ(rig_.dev.queues[q].num, 64u) << q;
    EXPECT_EQ(vqs[q].queue_index(), q);
  }
}

TEST_F(VirtioMmioTest, NegotiationAcceptsOnlyOfferedAndImplementedFeatures) {
  rig_.dev.device_features = feature::kVersion1 | feature::kIndirectDesc | feature::kEventIdx |
                             feature::kRingPacked | feature::kAccessPlatform | (1u << 0) |
                             (1u << 5);
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  ASSERT_EQ(dev_.Begin(), VirtioStatus::kOk);
  // The driver asks for bit 0, bit 1 (not offered) and features the core lacks.
  const uint64_t asked = (1u << 0) | (1u << 1) | feature::kIndirectDesc | feature::kRingPacked |
                         feature::kEventIdx;
  ASSERT_EQ(dev_.NegotiateFeatures(asked), VirtioStatus::kOk);
  EXPECT_EQ(dev_.device_features(), rig_.dev.device_features);
  EXPECT_EQ(rig_.dev.driver_features, feature::kVersion1 | feature::kEventIdx | (1u << 0));
  EXPECT_EQ(dev_.features(), rig_.dev.driver_features);
}

TEST_F(VirtioMmioTest, DeviceRefusingFeaturesOkFailsNegotiation) {
  rig_.dev.refuse_features_ok = true;
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  ASSERT_EQ(dev_.Begin(), VirtioStatus::kOk);
  EXPECT_EQ(dev_.NegotiateFeatures(0), VirtioStatus::kFeaturesRejected);
  EXPECT_EQ(dev_.phase(), VirtioMmioDevice::Phase::kFailed);
  EXPECT_NE(rig_.dev.status & ds::kFailed, 0u) << "§3.1.1: the driver sets FAILED";
  EXPECT_EQ(rig_.dev.status & ds::kFeaturesOk, 0u);
  Virtqueue vq;
  EXPECT_EQ(dev_.SetupQueue(0, 8, vq), VirtioStatus::kBadState);
  EXPECT_EQ(dev_.DriverOk(), VirtioStatus::kBadState);
  EXPECT_FALSE(vq.is_set_up());
}

TEST_F(VirtioMmioTest, DeviceWithoutVersion1IsRejected) {
  rig_.dev.device_features = 0x7;  // A legacy-only feature set behind a version-2 window.
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  ASSERT_EQ(dev_.Begin(), VirtioStatus::kOk);
  EXPECT_EQ(dev_.NegotiateFeatures(0x7), VirtioStatus::kFeaturesRejected);
  EXPECT_NE(rig_.dev.status & ds::kFailed, 0u);
  EXPECT_EQ(rig_.dev.status & ds::kFeaturesOk, 0u) << "FEATURES_OK never attempted";
}

TEST_F(VirtioMmioTest, CallsOutOfOrderReturnBadState) {
  Virtqueue vq;
  EXPECT_EQ(dev_.Reset(), VirtioStatus::kBadState);
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  EXPECT_EQ(dev_.NegotiateFeatures(0), VirtioStatus::kBadState);
  ASSERT_EQ(dev_.Begin(), VirtioStatus::kOk);
  EXPECT_EQ(dev_.SetupQueue(0, 8, vq), VirtioStatus::kBadState);
  EXPECT_EQ(dev_.DriverOk(), VirtioStatus::kBadState);
  ASSERT_EQ(dev_.NegotiateFeatures(0), VirtioStatus::kOk);
  EXPECT_EQ(dev_.NegotiateFeatures(0), VirtioStatus::kBadState);
  ASSERT_EQ(dev_.DriverOk(), VirtioStatus::kOk);
  EXPECT_EQ(dev_.SetupQueue(0, 8, vq), VirtioStatus::kBadState) << "queues before DRIVER_OK";
}

TEST_F(VirtioMmioTest, SetupQueueSizeAndAvailability) {
  rig_.dev.queues[0].num_max = 100;  // Not a power of two.
  rig_.dev.queues[1].num_max = 1024;
  rig_.dev.queues[2].num_max = 0;  // Absent.
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  ASSERT_EQ(dev_.Begin(), VirtioStatus::kOk);
  ASSERT_EQ(dev_.NegotiateFeatures(0), VirtioStatus::kOk);
  Virtqueue q0, q1, q2, q9;
  EXPECT_EQ(dev_.SetupQueue(0, 3, q0), VirtioStatus::kInvalidArgument);
  ASSERT_EQ(dev_.SetupQueue(0, 0, q0), VirtioStatus::kOk);
  EXPECT_EQ(q0.size(), 64u) << "largest power of two within QueueNumMax";
  EXPECT_EQ(rig_.dev.queues[0].num, 64u);
  ASSERT_EQ(dev_.SetupQueue(1, 128, q1), VirtioStatus::kOk);
  EXPECT_EQ(q1.size(), 128u);
  EXPECT_EQ(dev_.SetupQueue(2, 8, q2), VirtioStatus::kQueueUnavailable);
  EXPECT_EQ(dev_.SetupQueue(9, 8, q9), VirtioStatus::kQueueUnavailable);
  EXPECT_EQ(dev_.SetupQueue(1, 8, q2), VirtioStatus::kQueueUnavailable) << "already live";
  EXPECT_FALSE(q2.is_set_up());
  EXPECT_EQ(rig_.dev.queues[1].desc_gpa, q1.desc_gpa());
  EXPECT_EQ(rig_.dev.queues[1].driver_gpa, q1.avail_gpa());
  EXPECT_EQ(rig_.dev.queues[1].device_gpa, q1.used_gpa());
  rig_.mem.fail_allocs = 1;
  rig_.dev.queues[3].num_max = 8;
  Virtqueue q3;
  EXPECT_EQ(dev_.SetupQueue(3, 8, q3), VirtioStatus::kNoMemory);
  EXPECT_FALSE(rig_.dev.queues[3].ready);
}

TEST_F(VirtioMmioTest, DriverOkReportsDeviceNeedsReset) {
  rig_.dev.needs_reset_on_driver_ok = true;
  Virtqueue vq;
  EXPECT_EQ(rig_.BringUp(0, &vq, 1, 8), VirtioStatus::kDeviceNeedsReset);
  EXPECT_TRUE(dev_.NeedsReset());
  EXPECT_EQ(dev_.ReadAndAckInterrupt(), mmio::kInterruptConfigChange);
  ASSERT_EQ(dev_.Reset(), VirtioStatus::kOk);
  EXPECT_FALSE(dev_.NeedsReset());
  EXPECT_EQ(dev_.phase(), VirtioMmioDevice::Phase::kProbed);
}

TEST_F(VirtioMmioTest, ResetWaitsForStatusToReadZero) {
  Virtqueue vq;
  ASSERT_EQ(rig_.BringUp(0, &vq, 1, 8), VirtioStatus::kOk);
  rig_.dev.reset_busy_reads = 3;
  ASSERT_EQ(dev_.Reset(), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.status, 0u);
  EXPECT_FALSE(rig_.dev.queues[0].ready);
  EXPECT_EQ(rig_.dev.status_writes.back(), 0u);

  rig_.dev.reset_busy_reads = 0;
  ASSERT_EQ(rig_.BringUp(0, &vq, 1, 8), VirtioStatus::kOk);
  rig_.dev.reset_busy_reads = 1 << 30;  // Never finishes.
  const uint64_t before = rig_.env.num_mmio_accesses;
  EXPECT_EQ(dev_.Reset(), VirtioStatus::kTimeout);
  EXPECT_LE(rig_.env.num_mmio_accesses - before, VirtioMmioDevice::kResetPollLimit + 1);
  EXPECT_EQ(dev_.phase(), VirtioMmioDevice::Phase::kFailed);
}

TEST_F(VirtioMmioTest, InterruptStatusIsReadAndAcknowledged) {
  Virtqueue vq;
  ASSERT_EQ(rig_.BringUp(0, &vq, 1, 8), VirtioStatus::kOk);
  EXPECT_EQ(dev_.ReadAndAckInterrupt(), 0u);
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  VirtqBuffer b[1] = {{gpa, 4, true}};
  uint16_t head = 0;
  ASSERT_EQ(vq.Add(b, 1, &head), VirtioStatus::kOk);
  ASSERT_TRUE(dev_.Kick(vq));
  rig_.dev.interrupt_status |= mmio::kInterruptConfigChange;
  EXPECT_EQ(dev_.ReadAndAckInterrupt(), mmio::kInterruptUsedBuffer | mmio::kInterruptConfigChange);
  EXPECT_EQ(rig_.dev.interrupt_status, 0u);
  EXPECT_EQ(dev_.ReadAndAckInterrupt(), 0u);
}

TEST_F(VirtioMmioTest, TwoQueuesAreNotifiedByIndex) {
  Virtqueue vqs[2];
  ASSERT_EQ(rig_.BringUp(0, vqs, 2, 8), VirtioStatus::kOk);
  uint64_t gpa = 0;
  rig_.Buffer(kPageSize, &gpa);
  VirtqBuffer b[1] = {{gpa, 4, true}};
  uint16_t head = 0;
  ASSERT_EQ(vqs[1].Add(b, 1, &head), VirtioStatus::kOk);
  ASSERT_TRUE(dev_.Kick(vqs[1]));
  EXPECT_EQ(rig_.dev.queues[0].notifies, 0u);
  EXPECT_EQ(rig_.dev.queues[1].notifies, 1u);
  VirtqCompletion c;
  EXPECT_EQ(vqs[0].PollUsed(&c), VirtioStatus::kEmpty);
  ASSERT_EQ(vqs[1].PollUsed(&c), VirtioStatus::kOk);
  EXPECT_EQ(c.head, head);
}

TEST_F(VirtioMmioTest, ConfigReadRetriesWhileGenerationChanges) {
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  // A 64-bit field at offset 8, read as two 32-bit halves (§4.2.2.2). The device
  // changes it between the halves once, bumping the generation.
  auto set64 = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) rig_.dev.config[8 + i] = static_cast<uint8_t>(v >> (8 * i));
  };
  set64(0x1111111122222222ull);
  int changes = 1;
  rig_.dev.on_config_read = [&](uint32_t offset, int) {
    if (offset == 8 && changes > 0) {
      --changes;
      set64(0x3333333344444444ull);
      ++rig_.dev.config_generation;
    }
  };
  uint64_t value = 0;
  ASSERT_EQ(dev_.ReadConfigField(8, &value), VirtioStatus::kOk);
  EXPECT_EQ(value, 0x3333333344444444ull) << "a torn read would give 0x3333333322222222";
  EXPECT_EQ(rig_.dev.num_generation_reads, 4u);
  const std::vector<std::pair<uint32_t, int>> widths = {{8, 4}, {12, 4}, {8, 4}, {12, 4}};
  EXPECT_EQ(rig_.dev.config_accesses, widths);
}

TEST_F(VirtioMmioTest, ConfigReadGivesUpWhenGenerationNeverSettles) {
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  rig_.dev.on_config_read = [&](uint32_t, int) { ++rig_.dev.config_generation; };
  uint32_t value = 0;
  EXPECT_EQ(dev_.ReadConfigField(0, &value), VirtioStatus::kTimeout);
  EXPECT_EQ(rig_.dev.num_generation_reads, 2u * VirtioMmioDevice::kConfigRetryLimit);
}

TEST_F(VirtioMmioTest, ConfigAccessWidthsMatchFieldAlignment) {
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  for (int i = 0; i < 16; ++i) rig_.dev.config[i] = static_cast<uint8_t>(0x10 + i);
  uint8_t out[7] = {};
  ASSERT_EQ(dev_.ReadConfig(1, out, 7), VirtioStatus::kOk);  // Bytes 1..7.
  for (int i = 0; i < 7; ++i) EXPECT_EQ(out[i], 0x11 + i) << i;
  const std::vector<std::pair<uint32_t, int>> widths = {{1, 1}, {2, 2}, {4, 4}};
  EXPECT_EQ(rig_.dev.config_accesses, widths);

  rig_.dev.config_accesses.clear();
  const uint16_t v16 = 0xbeef;
  ASSERT_EQ(dev_.WriteConfig(6, &v16, 2), VirtioStatus::kOk);
  const uint32_t v32 = 0xcafef00d;
  ASSERT_EQ(dev_.WriteConfig(8, &v32, 4), VirtioStatus::kOk);
  const uint8_t v8 = 0x5a;
  ASSERT_EQ(dev_.WriteConfig(3, &v8, 1), VirtioStatus::kOk);
  EXPECT_EQ(rig_.dev.config[6], 0xef);
  EXPECT_EQ(rig_.dev.config[7], 0xbe);
  EXPECT_EQ(rig_.dev.config[8], 0x0d);
  EXPECT_EQ(rig_.dev.config[11], 0xca);
  EXPECT_EQ(rig_.dev.config[3], 0x5a);
  const std::vector<std::pair<uint32_t, int>> write_widths = {{6, 2}, {8, 4}, {3, 1}};
  EXPECT_EQ(rig_.dev.config_accesses, write_widths);
}

TEST_F(VirtioMmioTest, ConfigAccessesStayInsideTheRegisterWindow) {
  uint32_t value = 0;
  EXPECT_EQ(dev_.ReadConfigField(0, &value), VirtioStatus::kBadState) << "before Probe";
  ASSERT_EQ(dev_.Probe(), VirtioStatus::kOk);
  // The window is 0x200 bytes: config space is 0x100..0x1ff.
  EXPECT_EQ(dev_.ReadConfigField(0xfc, &value), VirtioStatus::kOk);
  EXPECT_EQ(dev_.ReadConfigField(0xfd, &value), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(dev_.ReadConfig(0xffffffff, &value, 4), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(dev_.WriteConfig(0x100, &value, 4), VirtioStatus::kInvalidArgument);
  EXPECT_EQ(dev_.ReadConfig(0, nullptr, 4), VirtioStatus::kInvalidArgument);
}

TEST(VirtioStatusTest, EveryStatusHasAName) {
  for (int s = 0; s <= static_cast<int>(VirtioStatus::kTimeout); ++s) {
    EXPECT_STRNE(VirtioStatusName(static_cast<VirtioStatus>(s)), "unknown") << s;
  }
}

}  // namespace
}  // namespace guest_driver

#include "vmm-host/virtio_mmio_device.h"

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_memory.h"
#include "tests/fakes/fake_split_ring.h"
#include "tests/fakes/fake_virtio_backend.h"
#include "vmm-host/io_bus.h"

namespace vmm {
namespace {

namespace mmio = virtio_mmio;
using testing::FakeGuestMemory;
using testing::FakeSplitRing;
using testing::FakeVirtioBackend;

class VirtioMmioDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(FakeVirtioBackend::Knobs{}); }

  void Make(FakeVirtioBackend::Knobs knobs, bool event_idx = true) {
    auto backend = std::make_unique<FakeVirtioBackend>(std::move(knobs));
    backend->memory = &mem_;
    backend_ = backend.get();
    VirtioMmioOptions options;
    options.offer_event_idx = event_idx;
    options.raise_irq = [this] { irqs_.fetch_add(1); };
    auto dev = VirtioMmioDevice::Create(mem_, std::move(backend), std::move(options));
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(*dev);
    irqs_ = 0;
  }

  uint32_t R(uint64_t offset) {
    uint32_t v = 0xdeadbeef;
    dev_->Read(offset, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  void W(uint64_t offset, uint32_t v) { dev_->Write(offset, reinterpret_cast<const uint8_t*>(&v), 4); }
  uint64_t DeviceFeatures() {
    W(mmio::kDeviceFeaturesSel, 0);
    uint64_t f = R(mmio::kDeviceFeatures);
    W(mmio::kDeviceFeaturesSel, 1);
    return f | uint64_t{R(mmio::kDeviceFeatures)} << 32;
  }
  void WriteDriverFeatures(uint64_t f) {
    W(mmio::kDriverFeaturesSel, 0);
    W(mmio::kDriverFeatures, static_cast<uint32_t>(f));
    W(mmio::kDriverFeaturesSel, 1);
    W(mmio::kDriverFeatures, static_cast<uint32_t>(f >> 32));
  }
  // §3.1.1 steps 1-6. Returns whether FEATURES_OK stuck.
  bool Negotiate(uint64_t features) {
    W(mmio::kStatus, 0);
    W(mmio::kStatus, mmio::kStatusAcknowledge);
    W(mmio::kStatus, mmio::kStatusAcknowledge | mmio::kStatusDriver);
    WriteDriverFeatures(features);
    W(mmio::kStatus, mmio::kStatusAcknowledge | mmio::kStatusDriver | mmio::kStatusFeaturesOk);
    return (R(mmio::kStatus) & mmio::kStatusFeaturesOk) != 0;
  }
  void ProgramQueue(uint32_t index, const VirtqueueConfig& c) {
    W(mmio::kQueueSel, index);
    W(mmio::kQueueNum, c.size);
    W(mmio::kQueueDescLow, static_cast<uint32_t>(c.desc.value()));
    W(mmio::kQueueDescHigh, static_cast<uint32_t>(c.desc.value() >> 32));
    W(mmio::kQueueDriverLow, static_cast<uint32_t>(c.avail.value()));
    W(mmio::kQueueDriverHigh, static_cast<uint32_t>(c.avail.value() >> 32));
    W(mmio::kQueueDeviceLow, static_cast<uint32_t>(c.used.value()));
    W(mmio::kQueueDeviceHigh, static_cast<uint32_t>(c.used.value() >> 32));
    W(mmio::kQueueReady, 1);
  }
  static constexpr uint32_t kLive = mmio::kStatusAcknowledge | mmio::kStatusDriver |
                                    mmio::kStatusFeaturesOk | mmio::kStatusDriverOk;
  // Full bring-up with one queue (index 0) on `ring`.
  void BringUp(FakeSplitRing& ring, uint64_t features = mmio::kFVersion1) {
    ASSERT_TRUE(Negotiate(features));
    ProgramQueue(0, ring.config());
    W(mmio::kStatus, kLive);
    ASSERT_EQ(R(mmio::kStatus), kLive);
  }
  uint64_t Buffer() { return mem_.AllocPages(1).value(); }

  FakeGuestMemory mem_;
  FakeVirtioBackend* backend_ = nullptr;
  std::unique_ptr<VirtioMmioDevice> dev_;
  std::atomic<int> irqs_{0};
};

TEST_F(VirtioMmioDeviceTest, IdentityRegisters) {
  EXPECT_EQ(R(mmio::kMagicValue), 0x74726976u);
  EXPECT_EQ(R(mmio::kVersion), 2u);
  EXPECT_EQ(R(mmio::kDeviceId), FakeVirtioBackend::kDeviceId);
  EXPECT_EQ(R(mmio::kVendorId), mmio::kVendor);
  EXPECT_EQ(R(mmio::kStatus), 0u);
  EXPECT_EQ(R(mmio::kConfigGeneration), 0u);
  // No shared memory regions: length reads as -1 (§4.2.2).
  W(mmio::kShmSel, 0);
  EXPECT_EQ(R(mmio::kShmLenLow), 0xffffffffu);
  EXPECT_EQ(R(mmio::kShmLenHigh), 0xffffffffu);
}

TEST_F(VirtioMmioDeviceTest, OffersDeviceBitsVersion1AndEventIdxOnly) {
  EXPECT_EQ(DeviceFeatures(), (1ull << 0) | (1ull << 3) | mmio::kFVersion1 | mmio::kFEventIdx);
  // Transport bits a backend claims are not passed on.
  FakeVirtioBackend::Knobs knobs;
  knobs.features = ~0ull;
  Make(knobs, /*event_idx=*/false);
  EXPECT_EQ(DeviceFeatures(), mmio::kDeviceTypeFeatureMask | mmio::kFVersion1);
  EXPECT_EQ(DeviceFeatures() & mmio::kFIndirectDesc, 0u);
  W(mmio::kDeviceFeaturesSel, 7);
  EXPECT_EQ(R(mmio::kDeviceFeatures), 0u);
}

TEST_F(VirtioMmioDeviceTest, FeatureNegotiationKeepsFeaturesOk) {
  ASSERT_TRUE(Negotiate(mmio::kFVersion1 | mmio::kFEventIdx | (1 << 3)));
  EXPECT_EQ(dev_->negotiated_features(), mmio::kFVersion1 | mmio::kFEventIdx | (1 << 3));
  ASSERT_EQ(backend_->accepted_features.size(), 1u);
  // Features are frozen after FEATURES_OK.
  WriteDriverFeatures(mmio::kFVersion1);
  EXPECT_EQ(dev_->negotiated_features(), mmio::kFVersion1 | mmio::kFEventIdx | (1 << 3));
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kLateFeatureWrite), 2u);
}

TEST_F(VirtioMmioDeviceTest, FeaturesOkRefusedForBadSubsets) {
  EXPECT_FALSE(Negotiate(mmio::kFVersion1 | mmio::kFIndirectDesc));  // Not offered.
  EXPECT_FALSE(Negotiate(1 << 3));                                   // No VERSION_1.
  EXPECT_FALSE(Negotiate(mmio::kFVersion1 | (1 << 5)));              // Not offered.
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kFeaturesRejected), 3u);
  FakeVirtioBackend::Knobs knobs;
  knobs.accept_features = false;
  Make(knobs);
  EXPECT_FALSE(Negotiate(mmio::kFVersion1));  // Backend says no.
  // Without FEATURES_OK, DRIVER_OK does not stick either.
  W(mmio::kStatus, mmio::kStatusAcknowledge | mmio::kStatusDriver | mmio::kStatusDriverOk);
  EXPECT_EQ(R(mmio::kStatus) & mmio::kStatusDriverOk, 0u);
  EXPECT_TRUE(backend_->driver_ok_features.empty());
}

TEST_F(VirtioMmioDeviceTest, StatusBitsCannotBeClearedOrForged) {
  ASSERT_TRUE(Negotiate(mmio::kFVersion1));
  W(mmio::kStatus, mmio::kStatusAcknowledge);  // Clears DRIVER and FEATURES_OK: refused.
  EXPECT_EQ(R(mmio::kStatus),
            mmio::kStatusAcknowledge | mmio::kStatusDriver | mmio::kStatusFeaturesOk);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kBadStatusWrite), 1u);
  // The driver cannot set DEVICE_NEEDS_RESET.
  W(mmio::kStatus, R(mmio::kStatus) | mmio::kStatusDeviceNeedsReset);
  EXPECT_EQ(R(mmio::kStatus) & mmio::kStatusDeviceNeedsReset, 0u);
  // FAILED may be added.
  W(mmio::kStatus, R(mmio::kStatus) | mmio::kStatusFailed);
  EXPECT_NE(R(mmio::kStatus) & mmio::kStatusFailed, 0u);
}

TEST_F(VirtioMmioDeviceTest, QueueRegisters) {
  W(mmio::kQueueSel, 0);
  EXPECT_EQ(R(mmio::kQueueNumMax), 256u);
  W(mmio::kQueueSel, 1);
  EXPECT_EQ(R(mmio::kQueueNumMax), 64u);
  W(mmio::kQueueSel, 2);  // No such queue: "not available".
  EXPECT_EQ(R(mmio::kQueueNumMax), 0u);
  EXPECT_EQ(R(mmio::kQueueReady), 0u);
  W(mmio::kQueueNum, 8);
  W(mmio::kQueueReady, 1);
  W(mmio::kQueueSel, 0xffffffff);
  W(mmio::kQueueDescLow, 0x1000);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kNoSuchQueue), 3u);
}

TEST_F(VirtioMmioDeviceTest, QueueReadyBeforeFeaturesOkIsRefused) {
  FakeSplitRing ring(mem_, 8);
  ProgramQueue(0, ring.config());
  EXPECT_EQ(R(mmio::kQueueReady), 0u);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kQueueReadyBeforeFeaturesOk), 1u);
}

TEST_F(VirtioMmioDeviceTest, QueueSetupIsFrozenWhileReady) {
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  W(mmio::kQueueSel, 0);
  EXPECT_EQ(R(mmio::kQueueReady), 1u);
  W(mmio::kQueueDescLow, 0x12340);  // Would move the ring under the device.
  W(mmio::kQueueNum, 4);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kQueueWriteWhileReady), 2u);
  // The queue still works on the original ring.
  const uint64_t buf = Buffer();
  ring.SetChain(0, {{buf, 16, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(ring.UsedIdx(), 1u);
}

TEST_F(VirtioMmioDeviceTest, NotifyConsumesEchoesAndInterrupts) {
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  const uint64_t in = Buffer(), out = Buffer();
  mem_.Write(base::Gpa(in), "ping", 4);
  ring.SetChain(0, {{in, 4}, {out, 64, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(backend_->notifies, std::vector<uint16_t>{0});
  EXPECT_EQ(ring.UsedIdx(), 1u);
  EXPECT_EQ(ring.UsedId(0), 0u);
  EXPECT_EQ(ring.UsedLen(0), 4u);
  char echoed[5] = {};
  mem_.Read(base::Gpa(out), echoed, 4);
  EXPECT_STREQ(echoed, "ping");
  EXPECT_EQ(irqs_.load(), 1);
  EXPECT_EQ(R(mmio::kInterruptStatus), mmio::kInterruptUsedBuffer);
  W(mmio::kInterruptAck, mmio::kInterruptUsedBuffer);
  EXPECT_EQ(R(mmio::kInterruptStatus), 0u);
  // A notify with nothing new: no interrupt.
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(irqs_.load(), 1);
  EXPECT_EQ(backend_->driver_ok_features, std::vector<uint64_t>{mmio::kFVersion1});
}

TEST_F(VirtioMmioDeviceTest, NotifyBeforeDriverOkConsumesNothing) {
  FakeSplitRing ring(mem_, 8);
  ASSERT_TRUE(Negotiate(mmio::kFVersion1));
  ProgramQueue(0, ring.config());
  ring.SetChain(0, {{Buffer(), 16, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_TRUE(backend_->notifies.empty());
  EXPECT_EQ(ring.UsedIdx(), 0u);
  W(mmio::kQueueNotify, 7);  // No such queue.
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kNotifyNotLive), 1u);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kNoSuchQueue), 1u);
  W(mmio::kStatus, kLive);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(ring.UsedIdx(), 1u);
}

TEST_F(VirtioMmioDeviceTest, ResetClearsEverything) {
  FakeSplitRing ring(mem_, 8);
  BringUp(ring, mmio::kFVersion1 | mmio::kFEventIdx);
  ring.SetChain(0, {{Buffer(), 16, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  ASSERT_NE(R(mmio::kInterruptStatus), 0u);
  const int resets_before = backend_->resets;
  W(mmio::kStatus, 0);
  EXPECT_EQ(R(mmio::kStatus), 0u);
  EXPECT_EQ(R(mmio::kInterruptStatus), 0u);
  EXPECT_EQ(dev_->negotiated_features(), 0u);
  W(mmio::kQueueSel, 0);
  EXPECT_EQ(R(mmio::kQueueReady), 0u);
  EXPECT_EQ(backend_->resets, resets_before + 1);
  // And the device comes up again on a fresh ring.
  FakeSplitRing ring2(mem_, 16);
  BringUp(ring2);
  ring2.SetChain(3, {{Buffer(), 16, true}});
  ring2.Publish(3);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(ring2.UsedIdx(), 1u);
  EXPECT_EQ(ring2.UsedId(0), 3u);
}

TEST_F(VirtioMmioDeviceTest, QueueReadyZeroDisablesQueue) {
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  W(mmio::kQueueSel, 0);
  W(mmio::kQueueReady, 0);
  EXPECT_EQ(R(mmio::kQueueReady), 0u);
  ring.SetChain(0, {{Buffer(), 16, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(ring.UsedIdx(), 0u);
  EXPECT_TRUE(backend_->notifies.empty());
}

TEST_F(VirtioMmioDeviceTest, BrokenQueueSetsNeedsResetAndConfigInterrupt) {
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  ring.SetDesc(0, Buffer(), 8, virtq::kDescFNext, 0);  // Self loop.
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_NE(R(mmio::kStatus) & mmio::kStatusDeviceNeedsReset, 0u);
  EXPECT_EQ(R(mmio::kInterruptStatus), mmio::kInterruptConfigChange);
  EXPECT_EQ(irqs_.load(), 1);
  EXPECT_TRUE(dev_->needs_reset());
  EXPECT_EQ(dev_->queue_error(0), VirtqueueError::kChainLoop);
  EXPECT_EQ(dev_->queue_counters().Get(VirtqueueCounters::kChainLoop), 1u);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kNeedsReset), 1u);
  // Everything stops until reset: further notifies are not consumed.
  ring.SetChain(1, {{Buffer(), 8, true}});
  ring.Publish(1);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(backend_->notifies.size(), 1u);
  EXPECT_EQ(ring.UsedIdx(), 0u);
  // A reset recovers.
  FakeSplitRing fresh(mem_, 8);
  BringUp(fresh);
  EXPECT_FALSE(dev_->needs_reset());
  fresh.SetChain(0, {{Buffer(), 8, true}});
  fresh.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_EQ(fresh.UsedIdx(), 1u);
}

TEST_F(VirtioMmioDeviceTest, BadRingAddressAtQueueReadyNeedsReset) {
  ASSERT_TRUE(Negotiate(mmio::kFVersion1));
  FakeSplitRing ring(mem_, 8);
  VirtqueueConfig bad = ring.config();
  bad.used = base::Gpa(FakeGuestMemory::kHoleBase + 0x1000);
  ProgramQueue(0, bad);
  EXPECT_EQ(R(mmio::kQueueReady), 1u);  // Reads back what was written...
  EXPECT_NE(R(mmio::kStatus) & mmio::kStatusDeviceNeedsReset, 0u);  // ...but the device gave up.
  EXPECT_EQ(irqs_.load(), 0);  // No DRIVER_OK yet: no interrupt (§2.1.2).
  EXPECT_EQ(dev_->queue_counters().Get(VirtqueueCounters::kBadRingAddress), 1u);
  W(mmio::kStatus, kLive);
  EXPECT_NE(R(mmio::kStatus) & mmio::kStatusDeviceNeedsReset, 0u);
  EXPECT_TRUE(backend_->driver_ok_features.empty());  // Never went live.
}

TEST_F(VirtioMmioDeviceTest, BadQueueSizeAtQueueReadyNeedsReset) {
  ASSERT_TRUE(Negotiate(mmio::kFVersion1));
  FakeSplitRing ring(mem_, 512);
  ProgramQueue(0, ring.config());  // 512 > QueueNumMax 256.
  EXPECT_TRUE(dev_->needs_reset());
  EXPECT_EQ(dev_->queue_error(0), VirtqueueError::kBadQueueSize);
}

TEST_F(VirtioMmioDeviceTest, BackendRefusalNeedsReset) {
  FakeVirtioBackend::Knobs knobs;
  knobs.refuse_writable = true;
  Make(knobs);
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  ring.SetChain(0, {{Buffer(), 8, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  EXPECT_TRUE(dev_->needs_reset());
  EXPECT_EQ(dev_->queue_error(0), VirtqueueError::kDeviceRejected);
}

TEST_F(VirtioMmioDeviceTest, BadAccessWidthsAreCountedAndHarmless) {
  uint8_t b = 0xee;
  dev_->Read(mmio::kMagicValue, &b, 1);
  EXPECT_EQ(b, 0);
  uint16_t h = 0xeeee;
  dev_->Read(mmio::kMagicValue + 2, reinterpret_cast<uint8_t*>(&h), 2);
  EXPECT_EQ(h, 0);
  uint64_t q = ~0ull;
  dev_->Read(mmio::kMagicValue, reinterpret_cast<uint8_t*>(&q), 8);
  EXPECT_EQ(q, 0u);
  const uint8_t zero = 0;
  dev_->Write(mmio::kStatus, &zero, 1);  // A byte-wide reset is not a reset.
  W(mmio::kMagicValue, 0);               // Read-only register.
  R(mmio::kQueueNotify);                 // Write-only register.
  R(0x0f0);                              // Reserved.
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kBadAccess), 7u);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kResets), 0u);
}

TEST_F(VirtioMmioDeviceTest, ConfigSpaceAccessesAreBounded) {
  auto& cfg = backend_->config();
  for (int i = 0; i < 16; ++i) cfg[i] = static_cast<uint8_t>(0x10 + i);
  uint32_t v = 0;
  dev_->Read(mmio::kConfig + 4, reinterpret_cast<uint8_t*>(&v), 4);
  EXPECT_EQ(v, 0x17161514u);
  uint16_t h = 0;
  dev_->Read(mmio::kConfig + 14, reinterpret_cast<uint8_t*>(&h), 2);
  EXPECT_EQ(h, 0x1f1eu);
  const uint8_t b = 0x99;
  dev_->Write(mmio::kConfig + 1, &b, 1);
  EXPECT_EQ(cfg[1], 0x99);
  // Past the 16-byte config space: zeros, counted, backend untouched.
  v = 0xffffffff;
  dev_->Read(mmio::kConfig + 14, reinterpret_cast<uint8_t*>(&v), 4);
  EXPECT_EQ(v, 0u);
  dev_->Read(mmio::kConfig + 0xfc, reinterpret_cast<uint8_t*>(&v), 4);
  dev_->Write(mmio::kConfig + 16, &b, 1);
  EXPECT_EQ(dev_->counters().Get(VirtioMmioCounters::kConfigOutOfRange), 3u);
  EXPECT_EQ(backend_->config_reads.size(), 2u);
  EXPECT_EQ(backend_->config_writes.size(), 1u);
}

TEST_F(VirtioMmioDeviceTest, UpdateConfigBumpsGenerationAndInterruptsWhenLive) {
  dev_->UpdateConfig([&] { backend_->config()[0] = 1; });
  EXPECT_EQ(R(mmio::kConfigGeneration), 1u);
  EXPECT_EQ(irqs_.load(), 0);  // Not live yet.
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  dev_->UpdateConfig([&] { backend_->config()[0] = 2; });
  EXPECT_EQ(R(mmio::kConfigGeneration), 2u);
  EXPECT_EQ(R(mmio::kInterruptStatus), mmio::kInterruptConfigChange);
  EXPECT_EQ(irqs_.load(), 1);
}

TEST_F(VirtioMmioDeviceTest, HostThreadReturnsHeldChainWithQueue) {
  FakeVirtioBackend::Knobs knobs;
  knobs.hold_chains = true;
  Make(knobs);
  FakeSplitRing ring(mem_, 8);
  BringUp(ring);
  ring.SetChain(0, {{Buffer(), 32, true}});
  ring.Publish(0);
  W(mmio::kQueueNotify, 0);
  ASSERT_EQ(backend_->held.size(), 1u);
  EXPECT_EQ(ring.UsedIdx(), 0u);
  EXPECT_EQ(irqs_.load(), 0);
  std::thread host([&] {
    EXPECT_TRUE(dev_->WithQueue(0, [&](Virtqueue& q) { EXPECT_TRUE(q.PushUsed(backend_->held[0], 32)); }));
  });
  host.join();
  EXPECT_EQ(ring.UsedIdx(), 1u);
  EXPECT_EQ(ring.UsedLen(0), 32u);
  EXPECT_EQ(irqs_.load(), 1);
  EXPECT_FALSE(dev_->WithQueue(5, [](Virtqueue&) {}));
  // After a reset the held token is stale.
  const ChainToken stale = backend_->held.empty() ? ChainToken{0, 0, 32} : backend_->held[0];
  W(mmio::kStatus, 0);
  EXPECT_FALSE(dev_->WithQueue(0, [&](Virtqueue& q) { (void)q.PushUsed(stale, 1); }));
}

TEST_F(VirtioMmioDeviceTest, WorksThroughTheBus) {
  IoBus bus;
  constexpr uint64_t kBase = 0xd0000000;
  std::shared_ptr<VirtioMmioDevice> shared = std::move(dev_);
  ASSERT_TRUE(bus.Register(IoBus::Space::kMmio, kBase, VirtioMmioDevice::kRegionBytes, shared).ok());
  uint32_t v = 0;
  ASSERT_TRUE(bus.Read(IoBus::Space::kMmio, kBase + mmio::kMagicValue, reinterpret_cast<uint8_t*>(&v), 4));
  EXPECT_EQ(v, mmio::kMagic);
  EXPECT_FALSE(bus.Read(IoBus::Space::kMmio, kBase + 0x200, reinterpret_cast<uint8_t*>(&v), 4));
}

TEST_F(VirtioMmioDeviceTest, ConcurrentVcpusHammeringRegistersAreSafe) {
  FakeSplitRing ring(mem_, 64);
  BringUp(ring);
  const uint64_t buf = Buffer();
  for (uint16_t i = 0; i < 64; ++i) ring.SetDesc(i, buf, 64, virtq::kDescFWrite, 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      uint32_t x = 0x9e3779b9u * (t + 1);
      while (!stop.load()) {
        x = x * 1664525u + 1013904223u;
        const uint64_t off = (x >> 8) % 0x100 & ~3u;
        if (off == mmio::kStatus || off == mmio::kQueueNotify) continue;
        uint32_t v = x;
        if (x & 1) {
          dev_->Write(off, reinterpret_cast<const uint8_t*>(&v), 4);
        } else {
          dev_->Read(off, reinterpret_cast<uint8_t*>(&v), 4);
        }
      }
    });
  }
  // This thread plays the driver's notifying vCPU.
  for (int i = 0; i < 2000; ++i) W(mmio::kQueueNotify, 0);
  stop = true;
  for (auto& th : threads) th.join();
  SUCCEED();
}

TEST(VirtioMmioCreateTest, RejectsBadBackends) {
  FakeGuestMemory mem;
  auto make = [&](FakeVirtioBackend::Knobs k) {
    return VirtioMmioDevice::Create(mem, std::make_unique<FakeVirtioBackend>(std::move(k))).status();
  };
  FakeVirtioBackend::Knobs k;
  k.device_id = 0;
  EXPECT_FALSE(make(k).ok());
  k = {};
  k.queue_max = {};
  EXPECT_FALSE(make(k).ok());
  k = {};
  k.queue_max = {100};
  EXPECT_FALSE(make(k).ok());
  k = {};
  k.queue_max = {0};
  EXPECT_FALSE(make(k).ok());
  k = {};
  k.config_size = 0x101;
  EXPECT_FALSE(make(k).ok());
  k = {};
  k.queue_max = {32768};
  EXPECT_TRUE(make(k).ok());
  EXPECT_FALSE(VirtioMmioDevice::Create(mem, nullptr).ok());
}

}  // namespace
}  // namespace vmm

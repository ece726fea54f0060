// End to end: the real guest-side virtio driver (guest-driver/) drives the real
// device-side transport and virtqueues (this folder) through the IoBus, over one
// fake guest RAM. Both sides were written from the virtio 1.2 spec separately;
// these tests prove they agree on the register layout, the init sequence, the
// ring layout, index wrap, notification and interrupt suppression (with and
// without EVENT_IDX), config space, DEVICE_NEEDS_RESET and recovery.
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "base/check.h"
#include "guest-driver/virtio_env.h"
#include "guest-driver/virtio_mmio.h"
#include "guest-driver/virtio_spec.h"
#include "guest-driver/virtqueue.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_memory.h"
#include "tests/fakes/fake_virtio_backend.h"
#include "vmm-host/io_bus.h"
#include "vmm-host/virtio_mmio_device.h"
#include "vmm-host/virtqueue.h"

namespace vmm {
namespace {

namespace gd = guest_driver;
using testing::FakeGuestMemory;
using testing::FakeVirtioBackend;

// The two sides' copies of the spec constants must agree.
static_assert(virtio_mmio::kMagicValue == gd::mmio::kMagicValue);
static_assert(virtio_mmio::kVersion == gd::mmio::kVersion);
static_assert(virtio_mmio::kDeviceId == gd::mmio::kDeviceId);
static_assert(virtio_mmio::kVendorId == gd::mmio::kVendorId);
static_assert(virtio_mmio::kDeviceFeatures == gd::mmio::kDeviceFeatures);
static_assert(virtio_mmio::kDeviceFeaturesSel == gd::mmio::kDeviceFeaturesSel);
static_assert(virtio_mmio::kDriverFeatures == gd::mmio::kDriverFeatures);
static_assert(virtio_mmio::kDriverFeaturesSel == gd::mmio::kDriverFeaturesSel);
static_assert(virtio_mmio::kQueueSel == gd::mmio::kQueueSel);
static_assert(virtio_mmio::kQueueNumMax == gd::mmio::kQueueNumMax);
static_assert(virtio_mmio::kQueueNum == gd::mmio::kQueueNum);
static_assert(virtio_mmio::kQueueReady == gd::mmio::kQueueReady);
static_assert(virtio_mmio::kQueueNotify == gd::mmio::kQueueNotify);
static_assert(virtio_mmio::kInterruptStatus == gd::mmio::kInterruptStatus);
static_assert(virtio_mmio::kInterruptAck == gd::mmio::kInterruptAck);
static_assert(virtio_mmio::kStatus == gd::mmio::kStatus);
static_assert(virtio_mmio::kQueueDescLow == gd::mmio::kQueueDescLow);
static_assert(virtio_mmio::kQueueDescHigh == gd::mmio::kQueueDescHigh);
static_assert(virtio_mmio::kQueueDriverLow == gd::mmio::kQueueDriverLow);
static_assert(virtio_mmio::kQueueDriverHigh == gd::mmio::kQueueDriverHigh);
static_assert(virtio_mmio::kQueueDeviceLow == gd::mmio::kQueueDeviceLow);
static_assert(virtio_mmio::kQueueDeviceHigh == gd::mmio::kQueueDeviceHigh);
static_assert(virtio_mmio::kConfigGeneration == gd::mmio::kConfigGeneration);
static_assert(virtio_mmio::kConfig == gd::mmio::kConfig);
static_assert(virtio_mmio::kMagic == gd::mmio::kMagic);
static_assert(virtio_mmio::kInterruptUsedBuffer == gd::mmio::kInterruptUsedBuffer);
static_assert(virtio_mmio::kInterruptConfigChange == gd::mmio::kInterruptConfigChange);
static_assert(virtio_mmio::kStatusFeaturesOk == gd::device_status::kFeaturesOk);
static_assert(virtio_mmio::kStatusDeviceNeedsReset == gd::device_status::kDeviceNeedsReset);
static_assert(virtio_mmio::kFEventIdx == gd::feature::kEventIdx);
static_assert(virtio_mmio::kFVersion1 == gd::feature::kVersion1);
static_assert(virtio_mmio::kFIndirectDesc == gd::feature::kIndirectDesc);
static_assert(virtq::kDescFNext == gd::kVirtqDescFNext);
static_assert(virtq::kDescFWrite == gd::kVirtqDescFWrite);
static_assert(virtq::kDescFIndirect == gd::kVirtqDescFIndirect);
static_assert(virtq::kAvailFNoInterrupt == gd::kVirtqAvailFNoInterrupt);
static_assert(virtq::kUsedFNoNotify == gd::kVirtqUsedFNoNotify);
static_assert(virtq::AvailRingBytes(256) == gd::VirtqAvailBytes(256));
static_assert(virtq::UsedRingBytes(256) == gd::VirtqUsedBytes(256));

constexpr uint64_t kMmioBase = 0xd0000000;

// The guest kernel's side of the world, for the driver: MMIO goes through the
// VM's IoBus to the device; pages come from the same fake RAM the device reads.
class BusEnv final : public gd::VirtioEnv {
 public:
  BusEnv(FakeGuestMemory& mem, IoBus& bus) : mem_(mem), bus_(bus) {}

  uint32_t MmioRead32(uintptr_t addr) override { return Read<uint32_t>(addr); }
  void MmioWrite32(uintptr_t addr, uint32_t value) override { Write(addr, value); }
  uint16_t MmioRead16(uintptr_t addr) override { return Read<uint16_t>(addr); }
  void MmioWrite16(uintptr_t addr, uint16_t value) override { Write(addr, value); }
  uint8_t MmioRead8(uintptr_t addr) override { return Read<uint8_t>(addr); }
  void MmioWrite8(uintptr_t addr, uint8_t value) override { Write(addr, value); }

  void* AllocZeroedPages(size_t num_pages, uint64_t* gpa) override {
    const base::Gpa at = mem_.AllocPages(num_pages);
    *gpa = at.value();
    return mem_.HostPtr(at, num_pages * base::kPageSize);
  }
  void FreePages(void*, uint64_t, size_t) override {}
  uint64_t VirtToPhys(const void* virt) override {
    auto gpa = mem_.HostToGpa(virt);
    CHECK(gpa.has_value());
    return gpa->value();
  }
  void* PhysToVirt(uint64_t gpa) override { return mem_.HostPtr(base::Gpa(gpa), 1); }

  uint64_t unclaimed = 0;

 private:
  template <typename T>
  T Read(uintptr_t addr) {
    T v{};
    if (!bus_.Read(IoBus::Space::kMmio, addr, reinterpret_cast<uint8_t*>(&v), sizeof(T))) ++unclaimed;
    return v;
  }
  template <typename T>
  void Write(uintptr_t addr, T v) {
    if (!bus_.Write(IoBus::Space::kMmio, addr, reinterpret_cast<const uint8_t*>(&v), sizeof(T))) {
      ++unclaimed;
    }
  }
  FakeGuestMemory& mem_;
  IoBus& bus_;
};

class VirtioEndToEndTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { Make(FakeVirtioBackend::Knobs{}); }

  void Make(FakeVirtioBackend::Knobs knobs) {
    auto backend = std::make_unique<FakeVirtioBackend>(std::move(knobs));
    backend->memory = &mem_;
    backend_ = backend.get();
    VirtioMmioOptions options;
    options.name = "virtio-fake@0xd0000000";
    options.raise_irq = [this] { ++irqs_; };
    auto dev = VirtioMmioDevice::Create(mem_, std::move(backend), std::move(options));
    ASSERT_TRUE(dev.ok()) << dev.status();
    device_ = std::move(*dev);
    bus_ = std::make_unique<IoBus>();
    ASSERT_TRUE(
        bus_->Register(IoBus::Space::kMmio, kMmioBase, VirtioMmioDevice::kRegionBytes, device_).ok());
    env_ = std::make_unique<BusEnv>(mem_, *bus_);
    driver_ = std::make_unique<gd::VirtioMmioDevice>(*env_, kMmioBase,
                                                     static_cast<uint32_t>(VirtioMmioDevice::kRegionBytes));
  }

  bool event_idx() const { return GetParam(); }

  // The driver's bring-up, as a guest kernel does it (guest-driver/README.md).
  void BringUp(gd::Virtqueue* queues, int n, uint32_t size) {
    ASSERT_EQ(driver_->Probe(FakeVirtioBackend::kDeviceId), gd::VirtioStatus::kOk);
    ASSERT_EQ(driver_->Begin(), gd::VirtioStatus::kOk);
    ASSERT_EQ(driver_->NegotiateFeatures(event_idx() ? gd::feature::kEventIdx : 0), gd::VirtioStatus::kOk);
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(driver_->SetupQueue(static_cast<uint16_t>(i), size, queues[i]), gd::VirtioStatus::kOk);
    }
    ASSERT_EQ(driver_->DriverOk(), gd::VirtioStatus::kOk);
    EXPECT_EQ(driver_->HasFeature(gd::feature::kEventIdx), event_idx());
    EXPECT_EQ(device_->negotiated_features() & virtio_mmio::kFEventIdx,
              event_idx() ? virtio_mmio::kFEventIdx : 0);
  }

  // A buffer in guest RAM: host pointer and gpa.
  uint8_t* Buffer(uint64_t* gpa) {
    const base::Gpa at = mem_.AllocPages(1);
    *gpa = at.value();
    return mem_.HostPtr(at, base::kPageSize);
  }

  // No guest-caused problem was recorded on the device side.
  void ExpectNoDeviceViolations() {
    VirtqueueCounters q = device_->queue_counters();
    q.ForEach([](std::string_view name, uint64_t value) {
      if (name == "chains_popped" || name == "used_pushed" || name == "interrupts_suppressed") return;
      EXPECT_EQ(value, 0u) << name;
    });
    VirtioMmioCounters c = device_->counters();
    for (auto id : {VirtioMmioCounters::kBadAccess, VirtioMmioCounters::kConfigOutOfRange,
                    VirtioMmioCounters::kBadStatusWrite, VirtioMmioCounters::kFeaturesRejected,
                    VirtioMmioCounters::kLateFeatureWrite, VirtioMmioCounters::kNoSuchQueue,
                    VirtioMmioCounters::kQueueWriteWhileReady,
                    VirtioMmioCounters::kQueueReadyBeforeFeaturesOk,
                    VirtioMmioCounters::kNotifyNotLive, VirtioMmioCounters::kNeedsReset}) {
      EXPECT_EQ(c.Get(id), 0u) << VirtioMmioCounters::NameOf(id);
    }
    EXPECT_EQ(env_->unclaimed, 0u);
  }

  FakeGuestMemory mem_;
  FakeVirtioBackend* backend_ = nullptr;
  std::shared_ptr<VirtioMmioDevice> device_;
  std::unique_ptr<IoBus> bus_;
  std::unique_ptr<BusEnv> env_;
  std::unique_ptr<gd::VirtioMmioDevice> driver_;
  int irqs_ = 0;
};

INSTANTIATE_TEST_SUITE_P(EventIdx, VirtioEndToEndTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? "WithEventIdx" : "WithoutEventIdx";
                         });

TEST_P(VirtioEndToEndTest, InitAddNotifyConsumeHarvest) {
  gd::Virtqueue vq;
  BringUp(&vq, 1, 64);
  EXPECT_EQ(vq.size(), 64u);
  EXPECT_EQ(device_->status(), virtio_mmio::kStatusAcknowledge | virtio_mmio::kStatusDriver |
                                   virtio_mmio::kStatusFeaturesOk | virtio_mmio::kStatusDriverOk);

  uint64_t in_gpa, out_gpa;
  uint8_t* in = Buffer(&in_gpa);
  uint8_t* out = Buffer(&out_gpa);
  std::memcpy(in, "hello, device", 13);
  const gd::VirtqBuffer bufs[] = {{in_gpa, 13, false}, {out_gpa, 100, true}};
  uint16_t head = 0;
  ASSERT_EQ(vq.Add(bufs, 2, &head), gd::VirtioStatus::kOk);
  EXPECT_TRUE(driver_->Kick(vq));  // The device processes it inside this MMIO write.

  EXPECT_EQ(irqs_, 1);
  EXPECT_EQ(driver_->ReadAndAckInterrupt(), gd::mmio::kInterruptUsedBuffer);
  EXPECT_EQ(device_->interrupt_status(), 0u);
  gd::VirtqCompletion c;
  ASSERT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kOk);
  EXPECT_EQ(c.head, head);
  EXPECT_EQ(c.written_len, 13u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(out), 13), "hello, device");
  EXPECT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kEmpty);
  EXPECT_EQ(vq.num_in_flight(), 0u);
  ExpectNoDeviceViolations();
}

TEST_P(VirtioEndToEndTest, SeventyThousandRequestsAcrossIndexWrap) {
  gd::Virtqueue vq;
  BringUp(&vq, 1, 16);
  uint64_t in_gpa, out_gpa;
  uint8_t* in = Buffer(&in_gpa);
  uint8_t* out = Buffer(&out_gpa);
  uint64_t done = 0;
  uint32_t batch_seed = 1;
  while (done < 70000) {
    // Batches of 1..8 requests, each a distinct 8-byte slot of the buffers.
    batch_seed = batch_seed * 1103515245u + 12345u;
    const uint32_t batch = 1 + (batch_seed >> 16) % 8;  // 2 descriptors each
    std::vector<uint16_t> heads;
    for (uint32_t i = 0; i < batch; ++i) {
      const uint64_t tag = done + i;
      std::memcpy(in + 8 * i, &tag, 8);
      const gd::VirtqBuffer bufs[] = {{in_gpa + 8 * i, 8, false}, {out_gpa + 8 * i, 8, true}};
      uint16_t head;
      ASSERT_EQ(vq.Add(bufs, 2, &head), gd::VirtioStatus::kOk);
      heads.push_back(head);
    }
    driver_->Kick(vq);
    driver_->ReadAndAckInterrupt();
    gd::VirtqCompletion c;
    for (uint32_t i = 0; i < batch; ++i) {
      ASSERT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kOk) << done;
      ASSERT_EQ(c.head, heads[i]);
      ASSERT_EQ(c.written_len, 8u);
      uint64_t echoed;
      std::memcpy(&echoed, out + 8 * i, 8);
      ASSERT_EQ(echoed, done + i);
    }
    ASSERT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kEmpty);
    done += batch;
  }
  EXPECT_GE(backend_->chains_seen, 70000u);
  ExpectNoDeviceViolations();
}

TEST_P(VirtioEndToEndTest, DriverSuppressesInterrupts) {
  gd::Virtqueue vq;
  BringUp(&vq, 1, 8);
  uint64_t gpa;
  Buffer(&gpa);
  vq.DisableInterrupts();
  const gd::VirtqBuffer buf{gpa, 64, true};
  uint16_t head;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(vq.Add(&buf, 1, &head), gd::VirtioStatus::kOk);
    driver_->Kick(vq);
  }
  // Without EVENT_IDX the NO_INTERRUPT flag stops all three. With it, the driver
  // stops advancing used_event (still 0), so only the completion that crosses
  // it interrupts (§2.7.10).
  EXPECT_EQ(irqs_, event_idx() ? 1 : 0);
  EXPECT_EQ(device_->queue_counters().Get(VirtqueueCounters::kInterruptsSuppressed),
            event_idx() ? 2u : 3u);
  EXPECT_TRUE(vq.EnableInterrupts());  // The completions are already there.
  gd::VirtqCompletion c;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kOk);
    EXPECT_EQ(c.written_len, 64u);  // No readable part: filled with fill_byte.
  }
  const int before = irqs_;
  ASSERT_EQ(vq.Add(&buf, 1, &head), gd::VirtioStatus::kOk);
  driver_->Kick(vq);
  EXPECT_EQ(irqs_, before + 1);  // Re-enabled.
  ExpectNoDeviceViolations();
}

TEST_P(VirtioEndToEndTest, ConfigSpaceThroughDriver) {
  gd::Virtqueue vq;
  BringUp(&vq, 1, 8);
  device_->UpdateConfig([&] {
    for (int i = 0; i < 16; ++i) backend_->config()[i] = static_cast<uint8_t>(i * 3);
  });
  EXPECT_EQ(irqs_, 1);
  EXPECT_EQ(driver_->ReadAndAckInterrupt(), gd::mmio::kInterruptConfigChange);
  uint8_t cfg[16];
  ASSERT_EQ(driver_->ReadConfig(0, cfg, 16), gd::VirtioStatus::kOk);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(cfg[i], i * 3);
  uint16_t field = 0;
  ASSERT_EQ(driver_->ReadConfigField(6, &field), gd::VirtioStatus::kOk);
  EXPECT_EQ(field, 18 | (21 << 8));
  const uint32_t word = 0xcafef00d;
  ASSERT_EQ(driver_->WriteConfig(8, &word, 4), gd::VirtioStatus::kOk);
  EXPECT_EQ(backend_->config()[8], 0x0d);
  EXPECT_EQ(backend_->config()[11], 0xca);
  ExpectNoDeviceViolations();
}

TEST_P(VirtioEndToEndTest, TwoQueuesAndHostHeldBuffer) {
  FakeVirtioBackend::Knobs knobs;
  knobs.hold_chains = true;  // Like a balloon's stats queue.
  Make(knobs);
  gd::Virtqueue vqs[2];
  BringUp(vqs, 2, 0);  // 0: the device's maximum.
  EXPECT_EQ(vqs[0].size(), 256u);
  EXPECT_EQ(vqs[1].size(), 64u);
  uint64_t gpa;
  uint8_t* page = Buffer(&gpa);
  const gd::VirtqBuffer buf{gpa, 32, true};
  uint16_t head;
  ASSERT_EQ(vqs[1].Add(&buf, 1, &head), gd::VirtioStatus::kOk);
  driver_->Kick(vqs[1]);
  ASSERT_EQ(backend_->held.size(), 1u);
  gd::VirtqCompletion c;
  EXPECT_EQ(vqs[1].PollUsed(&c), gd::VirtioStatus::kEmpty);
  // Later, a host thread fills the held buffer and returns it.
  std::thread host([&] {
    ASSERT_TRUE(device_->WithQueue(1, [&](Virtqueue& q) {
      DescriptorChain unused;
      (void)unused;
      mem_.Write(base::Gpa(gpa), "stats!", 6);
      EXPECT_TRUE(q.PushUsed(backend_->held[0], 6));
    }));
  });
  host.join();
  EXPECT_EQ(irqs_, 1);
  EXPECT_EQ(driver_->ReadAndAckInterrupt(), gd::mmio::kInterruptUsedBuffer);
  ASSERT_EQ(vqs[1].PollUsed(&c), gd::VirtioStatus::kOk);
  EXPECT_EQ(c.head, head);
  EXPECT_EQ(c.written_len, 6u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(page), 6), "stats!");
  ExpectNoDeviceViolations();
}

TEST_P(VirtioEndToEndTest, GuestCorruptsRingDeviceNeedsResetDriverRecovers) {
  gd::Virtqueue vq;
  BringUp(&vq, 1, 8);
  uint64_t gpa;
  Buffer(&gpa);
  const gd::VirtqBuffer bufs[] = {{gpa, 8, false}, {gpa + 8, 8, true}};
  uint16_t head;
  ASSERT_EQ(vq.Add(bufs, 2, &head), gd::VirtioStatus::kOk);
  // A buggy (or hostile) guest kernel turns the chain's tail into a loop before
  // kicking.
  auto* desc = static_cast<gd::VirtqDesc*>(env_->PhysToVirt(vq.desc_gpa()));
  const uint16_t second = desc[head].next;
  desc[second].flags |= gd::kVirtqDescFNext;
  desc[second].next = second;
  driver_->Kick(vq);

  // The device refused, told the driver by a configuration change interrupt.
  EXPECT_EQ(device_->queue_error(0), VirtqueueError::kChainLoop);
  EXPECT_EQ(irqs_, 1);
  EXPECT_EQ(driver_->ReadAndAckInterrupt(), gd::mmio::kInterruptConfigChange);
  EXPECT_TRUE(driver_->NeedsReset());
  gd::VirtqCompletion c;
  EXPECT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kEmpty);

  // Recovery per guest-driver/README.md: reset, reclaim, start again.
  ASSERT_EQ(driver_->Reset(), gd::VirtioStatus::kOk);
  uint16_t reclaimed;
  ASSERT_EQ(vq.DetachInFlight(&reclaimed), gd::VirtioStatus::kOk);
  EXPECT_EQ(reclaimed, head);
  EXPECT_EQ(vq.DetachInFlight(&reclaimed), gd::VirtioStatus::kEmpty);
  ASSERT_EQ(driver_->Begin(), gd::VirtioStatus::kOk);
  ASSERT_EQ(driver_->NegotiateFeatures(event_idx() ? gd::feature::kEventIdx : 0), gd::VirtioStatus::kOk);
  ASSERT_EQ(driver_->SetupQueue(0, 8, vq), gd::VirtioStatus::kOk);
  ASSERT_EQ(driver_->DriverOk(), gd::VirtioStatus::kOk);
  EXPECT_FALSE(device_->needs_reset());
  ASSERT_EQ(vq.Add(bufs, 2, &head), gd::VirtioStatus::kOk);
  driver_->Kick(vq);
  driver_->ReadAndAckInterrupt();
  ASSERT_EQ(vq.PollUsed(&c), gd::VirtioStatus::kOk);
  EXPECT_EQ(c.written_len, 8u);
}

TEST_P(VirtioEndToEndTest, BadRingAtSetupReportedAtDriverOk) {
  ASSERT_EQ(driver_->Probe(), gd::VirtioStatus::kOk);
  ASSERT_EQ(driver_->Begin(), gd::VirtioStatus::kOk);
  ASSERT_EQ(driver_->NegotiateFeatures(0), gd::VirtioStatus::kOk);
  gd::Virtqueue vq;
  ASSERT_EQ(driver_->SetupQueue(0, 8, vq), gd::VirtioStatus::kOk);
  // Hostile: reprogram the used ring into the hole behind the driver's back.
  uint32_t v;
  v = 0;
  bus_->Write(IoBus::Space::kMmio, kMmioBase + virtio_mmio::kQueueReady, reinterpret_cast<uint8_t*>(&v), 4);
  v = static_cast<uint32_t>(FakeGuestMemory::kHoleBase);
  bus_->Write(IoBus::Space::kMmio, kMmioBase + virtio_mmio::kQueueDeviceLow, reinterpret_cast<uint8_t*>(&v), 4);
  v = 1;
  bus_->Write(IoBus::Space::kMmio, kMmioBase + virtio_mmio::kQueueReady, reinterpret_cast<uint8_t*>(&v), 4);
  EXPECT_EQ(driver_->DriverOk(), gd::VirtioStatus::kDeviceNeedsReset);
  EXPECT_EQ(device_->queue_counters().Get(VirtqueueCounters::kBadRingAddress), 1u);
}

}  // namespace
}  // namespace vmm

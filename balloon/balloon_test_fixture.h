// A VM's worth of guest memory (a real FramePool and FrameTable with a low
// range, a hole and a high range), a Balloon on it and a register-level
// driver with one ring per queue: the fixture of the balloon tests.
//
// Single-threaded; tests only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "balloon/balloon.h"
#include "balloon/balloon_test_driver.h"
#include "gtest/gtest.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"

namespace balloon::testing {

class BalloonFixture : public ::testing::Test {
 protected:
  static constexpr uint64_t kMiB = 1 << 20;
  // RAM: [0, 16 MiB) and [4 GiB, 4 GiB + 1 MiB); everything between is a hole.
  static constexpr uint64_t kLowBytes = 16 * kMiB;
  static constexpr uint64_t kHighBase = uint64_t{4} << 30;
  static constexpr uint64_t kHighBytes = 1 * kMiB;
  static constexpr uint32_t kHighFirstPfn = kHighBase >> 12;
  static constexpr uint32_t kPastEndPfn = (kHighBase + kHighBytes) >> 12;
  static constexpr uint32_t kMmioHolePfn = 0xd0000;  // 0xd0000000, a virtio-mmio slot
  // Rings live at 64 KiB, driver buffers at 256 KiB; pages from 1 MiB up are
  // free for ballooning.
  static constexpr uint64_t kRingBase = 0x10000;
  static constexpr uint64_t kBufBase = 0x40000;
  static constexpr uint32_t kQueueSize = 64;
  // Pages that may become resident while a test drives the device (ring
  // pages, the driver's buffers): the "within a few pages" of residency checks.
  static constexpr uint64_t kSlack = 8;
  static constexpr uint64_t kAllFeatures = vmm::virtio_mmio::kFVersion1 | virtio_balloon::kFStatsVq |
                                           virtio_balloon::kFDeflateOnOom |
                                           virtio_balloon::kFPageReporting;

  void SetUp() override { Build(BalloonDeviceOptions{}); }

  void Build(BalloonDeviceOptions device_options) {
    balloon_.reset();
    table_.reset();
    auto pool = vmm::FramePool::Create({.budget_bytes = 32 * kMiB, .address_space_bytes = 32 * kMiB});
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
    auto table = vmm::FrameTable::Create(
        pool_.get(), {.vm_name = "bt", .ram_ranges = {{0, kLowBytes}, {kHighBase, kHighBytes}}});
    ASSERT_TRUE(table.ok()) << table.status();
    table_ = std::move(*table);
    BalloonOptions options;
    options.device = device_options;
    options.raise_irq = [this] { ++irqs_; };
    auto b = Balloon::Create(*table_, std::move(options));
    ASSERT_TRUE(b.ok()) << b.status();
    balloon_ = std::move(*b);
    driver_ = std::make_unique<MmioDriver>(balloon_->transport());
    rings_.clear();
    next_buf_ = kBufBase;
  }

  void TearDown() override {
    balloon_.reset();
    table_.reset();
  }

  // Negotiates `features`, sets up `num_queues` rings and DRIVER_OK.
  void BringUp(uint64_t features = kAllFeatures, int num_queues = 4) {
    ASSERT_TRUE(driver_->Negotiate(features));
    rings_.clear();
    for (int q = 0; q < num_queues; ++q) {
      rings_.push_back(std::make_unique<DriverRing>(
          *table_, base::Gpa(kRingBase + q * 0x2000), kQueueSize));
      driver_->SetUpQueue(static_cast<uint16_t>(q), rings_.back()->config());
    }
    driver_->DriverOk();
    ASSERT_FALSE(balloon_->transport().needs_reset());
  }

  // A fresh driver buffer holding `bytes`.
  uint64_t PutBuffer(const void* data, uint64_t len) {
    const uint64_t gpa = next_buf_;
    next_buf_ += (len + 0xfff) & ~uint64_t{0xfff};
    if (len == 0) next_buf_ += 0x1000;
    CHECK_LE(next_buf_, uint64_t{0x100000});
    if (len > 0) CHECK(table_->Write(base::Gpa(gpa), data, len));
    return gpa;
  }

  // Publishes a one-buffer chain on queue `q` and notifies.
  void Send(uint16_t q, std::initializer_list<DriverRing::Buf> bufs) {
    DriverRing& ring = *rings_[q];
    const uint16_t head = ring.SetChain(next_desc_[q], bufs);
    next_desc_[q] = static_cast<uint16_t>((next_desc_[q] + bufs.size()) % kQueueSize);
    ring.Publish(head);
    driver_->Notify(q);
  }
  void SendPfns(uint16_t q, const std::vector<uint32_t>& pfns) {
    const uint64_t gpa = PutBuffer(pfns.data(), pfns.size() * 4);
    Send(q, {{gpa, static_cast<uint32_t>(pfns.size() * 4)}});
  }
  void Inflate(const std::vector<uint32_t>& pfns) { SendPfns(0, pfns); }
  void Deflate(const std::vector<uint32_t>& pfns) { SendPfns(1, pfns); }

  uint64_t Count(BalloonCounters::Id id) const { return balloon_->counters().Get(id); }
  uint64_t QueueCount(vmm::VirtqueueCounters::Id id) const {
    return balloon_->transport().queue_counters().Get(id);
  }
  vmm::GfnState State(uint64_t gfn) const { return table_->Lookup(base::Gfn(gfn)).state(); }
  uint64_t Resident() const {
    auto n = pool_->ResidentFrames(table_->home_extent().first, table_->home_extent().num_frames);
    CHECK(n.ok());
    return *n;
  }
  // Makes [first, first + n) resident with recognisable contents.
  void Fill(uint64_t first_gfn, uint64_t n, uint8_t byte = 0xa5) {
    std::vector<uint8_t> page(4096, byte);
    for (uint64_t i = 0; i < n; ++i) {
      CHECK(table_->Write(base::Gpa((first_gfn + i) << 12), page.data(), page.size()));
    }
  }

  std::unique_ptr<vmm::FramePool> pool_;
  std::unique_ptr<vmm::FrameTable> table_;
  std::unique_ptr<Balloon> balloon_;
  std::unique_ptr<MmioDriver> driver_;
  std::vector<std::unique_ptr<DriverRing>> rings_;
  uint16_t next_desc_[8] = {};
  uint64_t next_buf_ = kBufBase;
  int irqs_ = 0;
};

}  // namespace balloon::testing

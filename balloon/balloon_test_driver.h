// BalloonTestDriver: a minimal, scriptable driver side of virtio-balloon for
// host-side tests and the fuzzer. It talks to a VirtioMmioDevice through its
// register file (as a vCPU's MMIO accesses would) and lays out split rings in
// any GuestMemory (a real FrameTable here), written with raw stores so that a
// test can build hostile chains as easily as good ones. Nothing here
// validates anything: that is the device's job.
//
// Single-threaded; tests and fuzzers only.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "base/addr.h"
#include "base/check.h"
#include "vmm-host/guest_memory.h"
#include "vmm-host/virtio_mmio_device.h"
#include "vmm-host/virtqueue.h"

namespace balloon::testing {

// The driver side of one split ring at fixed guest addresses.
class DriverRing {
 public:
  struct Buf {
    uint64_t gpa;
    uint32_t len;
    bool writable = false;
  };

  // Rings for `size` entries from `base` (page aligned, RAM): descriptors,
  // then the avail ring, then the used ring (4-aligned).
  DriverRing(vmm::GuestMemory& mem, base::Gpa base, uint32_t size) : mem_(mem), size_(size) {
    desc_ = base;
    avail_ = desc_ + vmm::virtq::DescTableBytes(size);
    used_ = base::Gpa((avail_.value() + vmm::virtq::AvailRingBytes(size) + 3) & ~uint64_t{3});
  }
  // Bytes the rings of a `size`-entry queue take from `base`.
  static uint64_t Bytes(uint32_t size) {
    return vmm::virtq::DescTableBytes(size) + vmm::virtq::AvailRingBytes(size) + 4 +
           vmm::virtq::UsedRingBytes(size);
  }

  uint32_t size() const { return size_; }
  vmm::VirtqueueConfig config() const { return {size_, desc_, avail_, used_}; }

  void SetDesc(uint32_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    const base::Gpa at = desc_ + vmm::virtq::kDescBytes * index;
    Poke<uint64_t>(at, addr);
    Poke<uint32_t>(at + 8, len);
    Poke<uint16_t>(at + 12, flags);
    Poke<uint16_t>(at + 14, next);
  }
  // Links `bufs` into descriptors first, first+1, ... and returns the head.
  uint16_t SetChain(uint16_t first, std::initializer_list<Buf> bufs) {
    return SetChain(first, std::vector<Buf>(bufs));
  }
  uint16_t SetChain(uint16_t first, const std::vector<Buf>& bufs) {
    for (size_t n = 0; n < bufs.size(); ++n) {
      const bool last = n + 1 == bufs.size();
      const uint32_t i = (first + n) % size_;
      const uint16_t flags = static_cast<uint16_t>((bufs[n].writable ? vmm::virtq::kDescFWrite : 0) |
                                                   (last ? 0 : vmm::virtq::kDescFNext));
      SetDesc(i, bufs[n].gpa, bufs[n].len, flags, static_cast<uint16_t>((i + 1) % size_));
    }
    return first;
  }
  void Publish(uint16_t head) {
    Poke<uint16_t>(avail_ + (4 + 2 * uint64_t{avail_idx_ % size_}), head);
    ++avail_idx_;
    Poke<uint16_t>(avail_ + 2, avail_idx_);
  }
  uint16_t UsedIdx() { return Peek<uint16_t>(used_ + 2); }
  uint32_t UsedId(uint32_t slot) { return Peek<uint32_t>(used_ + (4 + 8 * uint64_t{slot % size_})); }
  uint32_t UsedLen(uint32_t slot) { return Peek<uint32_t>(used_ + (8 + 8 * uint64_t{slot % size_})); }

 private:
  template <typename T>
  void Poke(base::Gpa gpa, T v) {
    CHECK(mem_.WriteObj(gpa, v));
  }
  template <typename T>
  T Peek(base::Gpa gpa) {
    T v{};
    CHECK(mem_.ReadObj(gpa, &v));
    return v;
  }

  vmm::GuestMemory& mem_;
  uint32_t size_;
  base::Gpa desc_, avail_, used_;
  uint16_t avail_idx_ = 0;
};

// Register-level helpers over one VirtioMmioDevice.
class MmioDriver {
 public:
  explicit MmioDriver(vmm::VirtioMmioDevice& dev) : dev_(dev) {}

  uint32_t R(uint64_t offset) {
    uint32_t v = 0;
    dev_.Read(offset, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  void W(uint64_t offset, uint32_t v) { dev_.Write(offset, reinterpret_cast<const uint8_t*>(&v), 4); }
  uint32_t ReadConfig32(uint32_t offset) { return R(vmm::virtio_mmio::kConfig + offset); }
  void WriteConfig32(uint32_t offset, uint32_t v) { W(vmm::virtio_mmio::kConfig + offset, v); }

  // Status ACK|DRIVER, features, FEATURES_OK; true if the device kept it.
  bool Negotiate(uint64_t features) {
    namespace m = vmm::virtio_mmio;
    W(m::kStatus, 0);
    W(m::kStatus, m::kStatusAcknowledge | m::kStatusDriver);
    W(m::kDriverFeaturesSel, 0);
    W(m::kDriverFeatures, static_cast<uint32_t>(features));
    W(m::kDriverFeaturesSel, 1);
    W(m::kDriverFeatures, static_cast<uint32_t>(features >> 32));
    W(m::kStatus, m::kStatusAcknowledge | m::kStatusDriver | m::kStatusFeaturesOk);
    return (R(m::kStatus) & m::kStatusFeaturesOk) != 0;
  }
  void SetUpQueue(uint16_t index, const vmm::VirtqueueConfig& c) {
    namespace m = vmm::virtio_mmio;
    W(m::kQueueSel, index);
    W(m::kQueueNum, c.size);
    W(m::kQueueDescLow, static_cast<uint32_t>(c.desc.value()));
    W(m::kQueueDescHigh, static_cast<uint32_t>(c.desc.value() >> 32));
    W(m::kQueueDriverLow, static_cast<uint32_t>(c.avail.value()));
    W(m::kQueueDriverHigh, static_cast<uint32_t>(c.avail.value() >> 32));
    W(m::kQueueDeviceLow, static_cast<uint32_t>(c.used.value()));
    W(m::kQueueDeviceHigh, static_cast<uint32_t>(c.used.value() >> 32));
    W(m::kQueueReady, 1);
  }
  void DriverOk() {
    namespace m = vmm::virtio_mmio;
    W(m::kStatus, m::kStatusAcknowledge | m::kStatusDriver | m::kStatusFeaturesOk | m::kStatusDriverOk);
  }
  void Notify(uint16_t queue) { W(vmm::virtio_mmio::kQueueNotify, queue); }
  uint32_t AckInterrupts() {
    const uint32_t s = R(vmm::virtio_mmio::kInterruptStatus);
    W(vmm::virtio_mmio::kInterruptAck, s);
    return s;
  }

 private:
  vmm::VirtioMmioDevice& dev_;
};

}  // namespace balloon::testing

// Test-only: a virtio-mmio version 2 device in host memory, and a VirtioEnv that
// routes the driver's MMIO accesses to it and hands out "guest-physical" pages from
// a host buffer. The fake implements the device side of the status, feature and
// queue registers (§4.2.2), reads chains from the split rings through bounds-checked
// guest-physical translation, and records every way the driver breaks the spec in
// `violations()`, so tests can assert the driver followed it.
//
// Device behaviour on a notify (when auto_process is set): each available chain's
// readable bytes are echoed into its writable buffers (or, with no readable part,
// the writable buffers are filled with fill_byte), and the chain is returned in the
// used ring with the number of bytes written.
//
// Hostile-device helpers (PushUsedRaw, SetUsedIdx) write the used ring directly.
// Single-threaded; host only.
#ifndef GUEST_DRIVER_FAKE_VIRTIO_MMIO_H_
#define GUEST_DRIVER_FAKE_VIRTIO_MMIO_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "guest-driver/virtio_env.h"
#include "guest-driver/virtio_mmio.h"
#include "guest-driver/virtio_spec.h"
#include "guest-driver/virtqueue.h"

namespace guest_driver::testing {

// A block of host memory that plays guest RAM at a non-zero gpa (so a driver that
// confuses virtual and physical addresses fails).
class FakeGuestMemory {
 public:
  static constexpr uint64_t kBaseGpa = 0x40000000;
  explicit FakeGuestMemory(size_t num_pages);

  // Bump allocator of zeroed pages; nullptr when exhausted or when fail_allocs > 0
  // (which then counts down).
  void* AllocPages(size_t num_pages, uint64_t* gpa);
  // Host pointer for [gpa, gpa + len), or nullptr if any of it is outside RAM.
  uint8_t* Translate(uint64_t gpa, uint64_t len);
  uint64_t GpaOf(const void* host) const;
  bool Contains(const void* host, size_t len) const;

  int fail_allocs = 0;
  size_t pages_allocated = 0;
  size_t pages_freed = 0;

 private:
  std::unique_ptr<uint8_t[]> storage_;
  uint8_t* base_ = nullptr;  // Page-aligned within storage_.
  size_t size_bytes_ = 0;
  size_t next_page_ = 0;
};

struct FakeDesc {
  uint64_t gpa;
  uint32_t len;
  uint16_t flags;
};

struct FakeChain {
  uint16_t head;
  int queue = -1;  // Which queue it came from.
  std::vector<FakeDesc> descs;
};

struct FakeQueue {
  uint32_t num_max = 256;
  uint32_t num = 0;
  bool ready = false;
  uint64_t desc_gpa = 0;
  uint64_t driver_gpa = 0;
  uint64_t device_gpa = 0;
  uint16_t last_avail = 0;  // Device's next available-ring entry.
  uint16_t used_idx = 0;    // Device's used.idx shadow.
  uint64_t notifies = 0;
  uint64_t interrupts = 0;
};

class FakeVirtioMmioDevice {
 public:
  static constexpr int kNumQueues = 4;

  FakeVirtioMmioDevice(FakeGuestMemory& mem, uint32_t device_id, uint64_t device_features);

  uint32_t Read(uint32_t offset, int width_bytes);
  void Write(uint32_t offset, uint32_t value, int width_bytes);

  // Device side of the rings.
  bool PopAvail(int q, FakeChain* chain);  // False if nothing available or bad chain.
  void PushUsed(int q, uint32_t id, uint32_t len);  // Also raises an interrupt if due.
  void PushUsedRaw(int q, uint32_t id, uint32_t len);  // Entry + idx, no checks.
  void SetUsedIdx(int q, uint16_t idx);
  void SetUsedFlags(int q, uint16_t flags);
  void SetAvailEvent(int q, uint16_t value);
  uint16_t AvailFlags(int q);
  uint16_t AvailIdx(int q);
  uint16_t UsedEvent(int q);
  int ProcessQueue(int q);  // Echo every available chain; returns how many.

  // Knobs.
  uint32_t magic = mmio::kMagic;
  uint32_t version = mmio::kVersionModern;
  uint32_t device_id;
  uint32_t vendor_id = 0x554d4551;
  uint64_t device_features;
  bool refuse_features_ok = false;
  bool needs_reset_on_driver_ok = false;
  bool auto_process = true;
  uint8_t fill_byte = 0xa5;
  int reset_busy_reads = 0;  // Status reads that still show old bits after a reset.
  std::vector<uint8_t> config = std::vector<uint8_t>(0x100, 0);
  uint32_t config_generation = 0;
  std::function<void(uint32_t offset, int width)> on_config_read;

  // Observations.
  uint32_t status = 0;
  uint64_t driver_features = 0;
  uint32_t interrupt_status = 0;
  std::vector<uint32_t> status_writes;
  std::vector<std::pair<uint32_t, int>> config_accesses;  // (offset, width)
  uint64_t num_register_writes = 0;
  uint64_t num_generation_reads = 0;
  std::vector<FakeChain> processed;
  FakeQueue queues[kNumQueues];
  const std::vector<std::string>& violations() const { return violations_; }

 private:
  void Violation(std::string what) { violations_.push_back(std::move(what)); }
  void DoReset();
  FakeQueue* SelectedQueue();
  template <typename T>
  T* Ring(int q, uint64_t gpa, uint64_t offset);

  FakeGuestMemory& mem_;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint32_t queue_sel_ = 0;
  int busy_reads_left_ = 0;
  uint32_t status_before_reset_ = 0;
  std::vector<std::string> violations_;
};

// Routes MMIO at [kMmioBase, kMmioBase + region) to the device; everything else
// (and any access a driver must not make) is a violation.
class FakeEnv final : public VirtioEnv {
 public:
  static constexpr uintptr_t kMmioBase = 0xfeb00000;
  static constexpr uint32_t kRegionBytes = 0x200;

  FakeEnv(FakeGuestMemory& mem, FakeVirtioMmioDevice& dev) : mem_(mem), dev_(dev) {}

  uint32_t MmioRead32(uintptr_t addr) override { return Read(addr, 4); }
  void MmioWrite32(uintptr_t addr, uint32_t value) override { Write(addr, value, 4); }
  uint16_t MmioRead16(uintptr_t addr) override { return static_cast<uint16_t>(Read(addr, 2)); }
  void MmioWrite16(uintptr_t addr, uint16_t value) override { Write(addr, value, 2); }
  uint8_t MmioRead8(uintptr_t addr) override { return static_cast<uint8_t>(Read(addr, 1)); }
  void MmioWrite8(uintptr_t addr, uint8_t value) override { Write(addr, value, 1); }
  void* AllocZeroedPages(size_t num_pages, uint64_t* gpa) override {
    return mem_.AllocPages(num_pages, gpa);
  }
  void FreePages(void* virt, uint64_t gpa, size_t num_pages) override;
  uint64_t VirtToPhys(const void* virt) override { return mem_.GpaOf(virt); }
  void* PhysToVirt(uint64_t gpa) override { return mem_.Translate(gpa, 1); }

  uint64_t num_mmio_accesses = 0;
  std::vector<std::string> violations;

 private:
  bool Check(uintptr_t addr, int width);
  uint32_t Read(uintptr_t addr, int width);
  void Write(uintptr_t addr, uint32_t value, int width);

  FakeGuestMemory& mem_;
  FakeVirtioMmioDevice& dev_;
};

// Everything a test needs: guest RAM, the fake device, the environment and the
// driver's transport object over them.
struct FakeRig {
  explicit FakeRig(uint32_t id = device_id::kBalloon, uint64_t features = feature::kVersion1,
                   size_t num_pages = 1024)
      : mem(num_pages), dev(mem, id, features), env(mem, dev), transport(env, FakeEnv::kMmioBase, FakeEnv::kRegionBytes) {}

  // Probe, Begin, NegotiateFeatures(driver_features), SetupQueue for each queue in
  // `queues` (with `size`), DriverOk. Returns the first failure.
  VirtioStatus BringUp(uint64_t driver_features, Virtqueue* queues, int num_queues, uint32_t size);
  // A zeroed buffer in guest RAM (whole pages) and its gpa.
  uint8_t* Buffer(size_t bytes, uint64_t* gpa);
  // Driver spec violations seen by the device and by the environment.
  std::vector<std::string> Violations() const;

  FakeGuestMemory mem;
  FakeVirtioMmioDevice dev;
  FakeEnv env;
  VirtioMmioDevice transport;
};

}  // namespace guest_driver::testing

#endif  // GUEST_DRIVER_FAKE_VIRTIO_MMIO_H_

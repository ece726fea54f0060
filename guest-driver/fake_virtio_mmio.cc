#include "guest-driver/fake_virtio_mmio.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

namespace guest_driver::testing {
namespace {

bool IsPowerOfTwo(uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

std::string Hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

FakeGuestMemory::FakeGuestMemory(size_t num_pages)
    : storage_(std::make_unique<uint8_t[]>((num_pages + 1) * kPageSize)),
      size_bytes_(num_pages * kPageSize) {
  const uintptr_t raw = reinterpret_cast<uintptr_t>(storage_.get());
  base_ = storage_.get() + ((kPageSize - raw % kPageSize) % kPageSize);
}

void* FakeGuestMemory::AllocPages(size_t num_pages, uint64_t* gpa) {
  if (fail_allocs > 0) {
    --fail_allocs;
    return nullptr;
  }
  if (num_pages == 0 || next_page_ + num_pages > size_bytes_ / kPageSize) return nullptr;
  uint8_t* p = base_ + next_page_ * kPageSize;
  *gpa = kBaseGpa + next_page_ * kPageSize;
  next_page_ += num_pages;
  pages_allocated += num_pages;
  return p;
}

uint8_t* FakeGuestMemory::Translate(uint64_t gpa, uint64_t len) {
  if (gpa < kBaseGpa) return nullptr;
  const uint64_t off = gpa - kBaseGpa;
  if (off > size_bytes_ || len > size_bytes_ - off) return nullptr;
  return base_ + off;
}

uint64_t FakeGuestMemory::GpaOf(const void* host) const {
  return kBaseGpa + static_cast<uint64_t>(static_cast<const uint8_t*>(host) - base_);
}

bool FakeGuestMemory::Contains(const void* host, size_t len) const {
  const uint8_t* p = static_cast<const uint8_t*>(host);
  return p >= base_ && p + len <= base_ + size_bytes_;
}

FakeVirtioMmioDevice::FakeVirtioMmioDevice(FakeGuestMemory& mem, uint32_t id, uint64_t features)
    : device_id(id), device_features(features), mem_(mem) {}

FakeQueue* FakeVirtioMmioDevice::SelectedQueue() {
  if (queue_sel_ >= kNumQueues) return nullptr;
  return &queues[queue_sel_];
}

void FakeVirtioMmioDevice::DoReset() {
  status_before_reset_ = status;
  // A device still resetting shows its old status; from 0 there is nothing to show.
  busy_reads_left_ = status_before_reset_ != 0 ? reset_busy_reads : 0;
  status = 0;
  driver_features = 0;
  interrupt_status = 0;
  for (FakeQueue& q : queues) {
    q.num = 0;
    q.ready = false;
    q.desc_gpa = q.driver_gpa = q.device_gpa = 0;
    q.last_avail = 0;
    q.used_idx = 0;
  }
}

uint32_t FakeVirtioMmioDevice::Read(uint32_t offset, int width) {
  if (offset >= mmio::kConfig) {
    const uint32_t at = offset - mmio::kConfig;
    if (at + width > config.size()) {
      Violation("config read past config space at " + Hex(offset));
      return 0;
    }
    uint32_t v = 0;
    for (int i = 0; i < width; ++i) v |= uint32_t{config[at + i]} << (8 * i);
    config_accesses.emplace_back(at, width);
    if (on_config_read) on_config_read(at, width);
    return v;
  }
  FakeQueue* q = SelectedQueue();
  switch (offset) {
    case mmio::kMagicValue: return magic;
    case mmio::kVersion: return version;
    case mmio::kDeviceId: return device_id;
    case mmio::kVendorId: return vendor_id;
    case mmio::kDeviceFeatures:
      if (device_features_sel_ == 0) return static_cast<uint32_t>(device_features);
      if (device_features_sel_ == 1) return static_cast<uint32_t>(device_features >> 32);
      return 0;
    case mmio::kQueueNumMax: return q ? q->num_max : 0;
    case mmio::kQueueReady: return q && q->ready ? 1 : 0;
    case mmio::kInterruptStatus: return interrupt_status;
    case mmio::kStatus:
      if (busy_reads_left_ > 0) {
        --busy_reads_left_;
        return status_before_reset_;
      }
      return status;
    case mmio::kConfigGeneration:
      ++num_generation_reads;
      return config_generation;
    default:
      Violation("read of write-only or unknown register " + Hex(offset));
      return 0;
  }
}

void FakeVirtioMmioDevice::Write(uint32_t offset, uint32_t value, int width) {
  ++num_register_writes;
  if (offset >= mmio::kConfig) {
    const uint32_t at = offset - mmio::kConfig;
    if (at + width > config.size()) {
      Violation("config write past config space at " + Hex(offset));
      return;
    }
    for (int i = 0; i < width; ++i) config[at + i] = static_cast<uint8_t>(value >> (8 * i));
    config_accesses.emplace_back(at, width);
    return;
  }
  FakeQueue* q = SelectedQueue();
  const bool queue_setup_allowed = (status & device_status::kFeaturesOk) != 0 &&
                                   (status & device_status::kDriverOk) == 0 && q != nullptr &&
                                   !q->ready;
  switch (offset) {
    case mmio::kDeviceFeaturesSel: device_features_sel_ = value; return;
    case mmio::kDriverFeaturesSel: driver_features_sel_ = value; return;
    case mmio::kDriverFeatures:
      if ((status & device_status::kDriver) == 0 || (status & device_status::kFeaturesOk) != 0) {
        Violation("DriverFeatures written outside the DRIVER..FEATURES_OK window");
      }
      if (driver_features_sel_ == 0) {
        driver_features = (driver_features & ~uint64_t{0xffffffff}) | value;
      } else if (driver_features_sel_ == 1) {
        driver_features = (driver_features & 0xffffffff) | (uint64_t{value} << 32);
      } else if (value != 0) {
        Violation("DriverFeatures bits beyond 63");
      }
      return;
    case mmio::kQueueSel: queue_sel_ = value; return;
    case mmio::kQueueNum:
      if (!queue_setup_allowed) Violation("QueueNum written outside queue setup");
      if (q && (value > q->num_max || !IsPowerOfTwo(value))) {
        Violation("QueueNum " + std::to_string(value) + " invalid");
      }
      if (q) q->num = value;
      return;
    case mmio::kQueueDescLow:
    case mmio::kQueueDescHigh:
    case mmio::kQueueDriverLow:
    case mmio::kQueueDriverHigh:
    case mmio::kQueueDeviceLow:
    case mmio::kQueueDeviceHigh: {
      if (!queue_setup_allowed) Violation("queue address written outside queue setup");
      if (!q) return;
      uint64_t* field = offset < mmio::kQueueDriverLow   ? &q->desc_gpa
                        : offset < mmio::kQueueDeviceLow ? &q->driver_gpa
                                                         : &q->device_gpa;
      if ((offset & 4) == 0) {
        *field = (*field & ~uint64_t{0xffffffff}) | value;
      } else {
        *field = (*field & 0xffffffff) | (uint64_t{value} << 32);
      }
      return;
    }
    case mmio::kQueueReady:
      if (!q) return;
      if (value == 1) {
        if (!queue_setup_allowed) Violation("QueueReady set outside queue setup");
        if (q->num == 0) Violation("QueueReady with QueueNum 0");
        if (q->desc_gpa % kVirtqDescAlign || q->driver_gpa % kVirtqAvailAlign ||
            q->device_gpa % kVirtqUsedAlign) {
          Violation("misaligned ring address");
        }
        q->ready = true;
        q->last_avail = 0;
        q->used_idx = 0;
      } else {
        q->ready = false;
      }
      return;
    case mmio::kQueueNotify:
      if (value >= kNumQueues || !queues[value].ready) {
        Violation("notify of queue " + std::to_string(value) + " that is not ready");
        return;
      }
      if ((status & device_status::kDriverOk) == 0) Violation("notify before DRIVER_OK");
      ++queues[value].notifies;
      if (auto_process) ProcessQueue(static_cast<int>(value));
      return;
    case mmio::kInterruptAck: interrupt_status &= ~value; return;
    case mmio::kStatus: {
      status_writes.push_back(value);
      if (value == 0) {
        DoReset();
        return;
      }
      const uint32_t driver_bits = status & ~device_status::kDeviceNeedsReset;
      if ((value & driver_bits) != driver_bits) Violation("driver cleared a status bit");
      if ((value & device_status::kDriver) && !(value & device_status::kAcknowledge)) {
        Violation("DRIVER without ACKNOWLEDGE");
      }
      uint32_t next = value;
      if ((value & device_status::kFeaturesOk) && !(status & device_status::kFeaturesOk)) {
        const bool subset = (driver_features & ~device_features) == 0;
        if (!subset) Violation("driver accepted features the device did not offer");
        if (refuse_features_ok || !subset || !(driver_features & feature::kVersion1)) {
          next &= ~device_status::kFeaturesOk;
        }
      }
      if ((value & device_status::kDriverOk) && !(status & device_status::kDriverOk)) {
        if (!(status & device_status::kFeaturesOk)) Violation("DRIVER_OK without FEATURES_OK");
        if (needs_reset_on_driver_ok) {
          next |= device_status::kDeviceNeedsReset;
          interrupt_status |= mmio::kInterruptConfigChange;
        }
      }
      status = next | (status & device_status::kDeviceNeedsReset);
      return;
    }
    default:
      Violation("write of read-only or unknown register " + Hex(offset));
      return;
  }
}

template <typename T>
T* FakeVirtioMmioDevice::Ring(int q, uint64_t gpa, uint64_t offset) {
  T* p = reinterpret_cast<T*>(mem_.Translate(gpa + offset, sizeof(T)));
  if (p == nullptr) Violation("queue " + std::to_string(q) + " ring outside guest RAM");
  return p;
}

uint16_t FakeVirtioMmioDevice::AvailFlags(int q) {
  uint16_t* p = Ring<uint16_t>(q, queues[q].driver_gpa, kVirtqAvailFlagsOffset);
  return p ? *p : 0;
}
uint16_t FakeVirtioMmioDevice::AvailIdx(int q) {
  uint16_t* p = Ring<uint16_t>(q, queues[q].driver_gpa, kVirtqAvailIdxOffset);
  return p ? *p : 0;
}
uint16_t FakeVirtioMmioDevice::UsedEvent(int q) {
  uint16_t* p = Ring<uint16_t>(q, queues[q].driver_gpa, 4 + 2 * uint64_t{queues[q].num});
  return p ? *p : 0;
}
void FakeVirtioMmioDevice::SetUsedFlags(int q, uint16_t flags) {
  if (uint16_t* p = Ring<uint16_t>(q, queues[q].device_gpa, kVirtqUsedFlagsOffset)) *p = flags;
}
void FakeVirtioMmioDevice::SetAvailEvent(int q, uint16_t value) {
  if (uint16_t* p = Ring<uint16_t>(q, queues[q].device_gpa, 4 + 8 * uint64_t{queues[q].num})) {
    *p = value;
  }
}
void FakeVirtioMmioDevice::SetUsedIdx(int q, uint16_t idx) {
  queues[q].used_idx = idx;
  if (uint16_t* p = Ring<uint16_t>(q, queues[q].device_gpa, kVirtqUsedIdxOffset)) *p = idx;
}

bool FakeVirtioMmioDevice::PopAvail(int qi, FakeChain* chain) {
  FakeQueue& q = queues[qi];
  if (!q.ready) return false;
  const uint16_t avail_idx = AvailIdx(qi);
  if (avail_idx == q.last_avail) return false;
  if (static_cast<uint16_t>(avail_idx - q.last_avail) > q.num) {
    Violation("avail.idx ran more than the queue size ahead");
    return false;
  }
  uint16_t* slot = Ring<uint16_t>(qi, q.driver_gpa, 4 + 2 * uint64_t{q.last_avail % q.num});
  if (slot == nullptr) return false;
  chain->queue = qi;
  ++q.last_avail;
  if (driver_features & feature::kEventIdx) SetAvailEvent(qi, q.last_avail);
  chain->head = *slot;
  chain->descs.clear();
  uint32_t idx = *slot;
  bool seen_writable = false;
  for (uint32_t steps = 0;; ++steps) {
    if (steps == q.num) {
      Violation("descriptor chain loops");
      return false;
    }
    if (idx >= q.num) {
      Violation("descriptor index out of range");
      return false;
    }
    VirtqDesc* d = Ring<VirtqDesc>(qi, q.desc_gpa, sizeof(VirtqDesc) * uint64_t{idx});
    if (d == nullptr) return false;
    if (d->flags & kVirtqDescFIndirect) Violation("indirect descriptor without the feature");
    if (d->len == 0) Violation("zero-length descriptor");
    if (mem_.Translate(d->addr, d->len) == nullptr) Violation("buffer outside guest RAM");
    const bool writable = (d->flags & kVirtqDescFWrite) != 0;
    if (!writable && seen_writable) Violation("readable descriptor after a writable one");
    seen_writable |= writable;
    chain->descs.push_back({d->addr, d->len, d->flags});
    if ((d->flags & kVirtqDescFNext) == 0) break;
    idx = d->next;
  }
  return true;
}

void FakeVirtioMmioDevice::PushUsedRaw(int qi, uint32_t id, uint32_t len) {
  FakeQueue& q = queues[qi];
  auto* elem = Ring<VirtqUsedElem>(qi, q.device_gpa, 4 + 8 * uint64_t{q.used_idx % q.num});
  if (elem == nullptr) return;
  elem->id = id;
  elem->len = len;
  SetUsedIdx(qi, static_cast<uint16_t>(q.used_idx + 1));
}

void FakeVirtioMmioDevice::PushUsed(int qi, uint32_t id, uint32_t len) {
  PushUsedRaw(qi, id, len);
  FakeQueue& q = queues[qi];
  const uint16_t new_idx = q.used_idx;
  const uint16_t old_idx = static_cast<uint16_t>(new_idx - 1);
  bool interrupt;
  if (driver_features & feature::kEventIdx) {
    // §2.7.7.2 from the device side: interrupt when used_event is crossed.
    const uint16_t event = UsedEvent(qi);
    interrupt = static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
  } else {
    interrupt = (AvailFlags(qi) & kVirtqAvailFNoInterrupt) == 0;
  }
  if (interrupt) {
    interrupt_status |= mmio::kInterruptUsedBuffer;
    ++q.interrupts;
  }
}

int FakeVirtioMmioDevice::ProcessQueue(int qi) {
  int n = 0;
  FakeChain chain;
  while (PopAvail(qi, &chain)) {
    std::vector<uint8_t> readable;
    uint64_t capacity = 0;
    for (const FakeDesc& d : chain.descs) {
      uint8_t* p = mem_.Translate(d.gpa, d.len);
      if (p == nullptr) continue;
      if (d.flags & kVirtqDescFWrite) {
        capacity += d.len;
      } else {
        readable.insert(readable.end(), p, p + d.len);
      }
    }
    uint64_t written = 0;
    const uint64_t to_write = readable.empty() ? capacity : std::min<uint64_t>(readable.size(), capacity);
    for (const FakeDesc& d : chain.descs) {
      if (!(d.flags & kVirtqDescFWrite) || written == to_write) continue;
      uint8_t* p = mem_.Translate(d.gpa, d.len);
      if (p == nullptr) continue;
      const uint64_t n_here = std::min<uint64_t>(d.len, to_write - written);
      if (readable.empty()) {
        memset(p, fill_byte, n_here);
      } else {
        memcpy(p, readable.data() + written, n_here);
      }
      written += n_here;
    }
    PushUsed(qi, chain.head, static_cast<uint32_t>(written));
    processed.push_back(chain);
    ++n;
  }
  return n;
}

bool FakeEnv::Check(uintptr_t addr, int width) {
  ++num_mmio_accesses;
  if (addr < kMmioBase || addr + width > kMmioBase + kRegionBytes) {
    violations.push_back("MMIO access outside the device window at " + Hex(addr));
    return false;
  }
  if (addr % width != 0) {
    violations.push_back("unaligned MMIO access at " + Hex(addr));
    return false;
  }
  if (addr - kMmioBase < mmio::kConfig && width != 4) {
    violations.push_back("control register accessed with width " + std::to_string(width));
    return false;
  }
  return true;
}

uint32_t FakeEnv::Read(uintptr_t addr, int width) {
  if (!Check(addr, width)) return 0;
  return dev_.Read(static_cast<uint32_t>(addr - kMmioBase), width);
}

void FakeEnv::Write(uintptr_t addr, uint32_t value, int width) {
  if (!Check(addr, width)) return;
  dev_.Write(static_cast<uint32_t>(addr - kMmioBase), value, width);
}

void FakeEnv::FreePages(void* virt, uint64_t gpa, size_t num_pages) {
  if (!mem_.Contains(virt, num_pages * kPageSize) || mem_.GpaOf(virt) != gpa) {
    violations.push_back("FreePages of memory that was not allocated here");
  }
  mem_.pages_freed += num_pages;
}

VirtioStatus FakeRig::BringUp(uint64_t driver_features, Virtqueue* queues, int num_queues,
                              uint32_t size) {
  VirtioStatus s = transport.Probe(dev.device_id);
  if (s == VirtioStatus::kOk) s = transport.Begin();
  if (s == VirtioStatus::kOk) s = transport.NegotiateFeatures(driver_features);
  for (int i = 0; i < num_queues && s == VirtioStatus::kOk; ++i) {
    s = transport.SetupQueue(static_cast<uint16_t>(i), size, queues[i]);
  }
  if (s == VirtioStatus::kOk) s = transport.DriverOk();
  return s;
}

uint8_t* FakeRig::Buffer(size_t bytes, uint64_t* gpa) {
  return static_cast<uint8_t*>(mem.AllocPages((bytes + kPageSize - 1) / kPageSize, gpa));
}

std::vector<std::string> FakeRig::Violations() const {
  std::vector<std::string> all = dev.violations();
  all.insert(all.end(), env.violations.begin(), env.violations.end());
  return all;
}

}  // namespace guest_driver::testing

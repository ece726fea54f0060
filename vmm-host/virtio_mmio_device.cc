#include "vmm-host/virtio_mmio_device.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "base/log.h"

namespace vmm {

namespace mmio = virtio_mmio;

namespace {

bool IsPowerOfTwo(uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

uint64_t SetLow(uint64_t reg, uint32_t value) { return (reg & ~0xffffffffull) | value; }
uint64_t SetHigh(uint64_t reg, uint32_t value) {
  return (reg & 0xffffffffull) | (uint64_t{value} << 32);
}

}  // namespace

absl::StatusOr<std::unique_ptr<VirtioMmioDevice>> VirtioMmioDevice::Create(
    GuestMemory& memory, std::unique_ptr<VirtioDeviceBackend> backend,
    VirtioMmioOptions options) {
  if (backend == nullptr) return absl::InvalidArgumentError("virtio-mmio: null backend");
  const std::string_view name = backend->name();
  if (backend->device_id() == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("virtio-mmio %s: device id 0", name));
  }
  const uint16_t num_queues = backend->num_queues();
  if (num_queues == 0 || num_queues > kMaxQueues) {
    return absl::InvalidArgumentError(
        absl::StrFormat("virtio-mmio %s: %d queues (1..%d)", name, num_queues, kMaxQueues));
  }
  for (uint16_t i = 0; i < num_queues; ++i) {
    const uint32_t max = backend->queue_max_size(i);
    if (!IsPowerOfTwo(max) || max > virtq::kMaxSize) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "virtio-mmio %s: queue %d max size %d is not a power of two in 1..32768", name, i, max));
    }
  }
  if (backend->config_size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "virtio-mmio %s: config space %d bytes > %d", name, backend->config_size(),
        kMaxConfigBytes));
  }
  return std::unique_ptr<VirtioMmioDevice>(
      new VirtioMmioDevice(memory, std::move(backend), std::move(options)));
}

VirtioMmioDevice::VirtioMmioDevice(GuestMemory& memory,
                                   std::unique_ptr<VirtioDeviceBackend> backend,
                                   VirtioMmioOptions options)
    : memory_(memory),
      backend_(std::move(backend)),
      name_(options.name.empty() ? std::string(backend_->name()) : options.name),
      raise_irq_(std::move(options.raise_irq)),
      device_id_(backend_->device_id()),
      offered_features_((backend_->device_features() & mmio::kDeviceTypeFeatureMask) | mmio::kFVersion1 |
                        (options.offer_event_idx ? mmio::kFEventIdx : 0)),
      config_size_(backend_->config_size()) {
  absl::MutexLock lock(&mu_);
  const uint16_t n = backend_->num_queues();
  queues_.reserve(n);
  for (uint16_t i = 0; i < n; ++i) {
    queues_.emplace_back(memory_, i, backend_->queue_max_size(i), &queue_counters_, &log_budget_);
    queues_.back().num = queues_.back().max_size;
  }
}

void VirtioMmioDevice::Raise() {
  if (raise_irq_) raise_irq_();
}

// ---- Bus access ----

void VirtioMmioDevice::Read(uint64_t offset, uint8_t* data, uint32_t size) {
  std::memset(data, 0, size);
  absl::MutexLock lock(&mu_);
  counters_.Inc(VirtioMmioCounters::kRegisterReads);
  if (offset >= mmio::kConfig) {
    // Guest input: offset and size; the bus keeps offset + size <= kRegionBytes,
    // this keeps the access inside the backend's config space.
    const uint64_t off = offset - mmio::kConfig;
    if (off > config_size_ || size > config_size_ - off) {
      counters_.Inc(VirtioMmioCounters::kConfigOutOfRange);
      return;
    }
    backend_->ReadConfig(static_cast<uint32_t>(off), data, size);
    return;
  }
  // Guest input: §4.2.2.2, control registers are read 32 bits wide and aligned.
  if (size != 4 || offset % 4 != 0) {
    counters_.Inc(VirtioMmioCounters::kBadAccess);
    return;
  }
  const uint32_t value = ReadRegisterLocked(offset);
  std::memcpy(data, &value, 4);
}

void VirtioMmioDevice::Write(uint64_t offset, const uint8_t* data, uint32_t size) {
  bool raise = false;
  {
    absl::MutexLock lock(&mu_);
    counters_.Inc(VirtioMmioCounters::kRegisterWrites);
    if (offset >= mmio::kConfig) {
      const uint64_t off = offset - mmio::kConfig;
      if (off > config_size_ || size > config_size_ - off) {
        counters_.Inc(VirtioMmioCounters::kConfigOutOfRange);
        return;
      }
      backend_->WriteConfig(static_cast<uint32_t>(off), data, size);
      return;
    }
    if (size != 4 || offset % 4 != 0) {
      counters_.Inc(VirtioMmioCounters::kBadAccess);
      return;
    }
    uint32_t value;
    std::memcpy(&value, data, 4);
    WriteRegisterLocked(offset, value, &raise);
  }
  if (raise) Raise();
}

// ---- Registers ----

VirtioMmioDevice::Queue* VirtioMmioDevice::SelectedQueueLocked() {
  // Guest input: QueueSel may name a queue that does not exist.
  if (queue_sel_ >= queues_.size()) return nullptr;
  return &queues_[queue_sel_];
}

VirtioMmioDevice::Queue* VirtioMmioDevice::WritableQueueLocked() {
  Queue* q = SelectedQueueLocked();
  if (q == nullptr) {
    counters_.Inc(VirtioMmioCounters::kNoSuchQueue);
    return nullptr;
  }
  // §4.2.3.2: the driver sets the ring up while QueueReady is 0; later writes
  // would move a ring under the device.
  if (q->ready) {
    counters_.Inc(VirtioMmioCounters::kQueueWriteWhileReady);
    return nullptr;
  }
  return q;
}

uint32_t VirtioMmioDevice::ReadRegisterLocked(uint64_t offset) {
  switch (offset) {
    case mmio::kMagicValue:
      return mmio::kMagic;
    case mmio::kVersion:
      return mmio::kVersion2;
    case mmio::kDeviceId:
      return device_id_;
    case mmio::kVendorId:
      return mmio::kVendor;
    case mmio::kDeviceFeatures:
      if (device_features_sel_ == 0) return static_cast<uint32_t>(offered_features_);
      if (device_features_sel_ == 1) return static_cast<uint32_t>(offered_features_ >> 32);
      return 0;
    case mmio::kQueueNumMax: {
      const Queue* q = SelectedQueueLocked();
      return q == nullptr ? 0 : q->max_size;  // 0: "queue not available" (§4.2.3.2).
    }
    case mmio::kQueueReady: {
      const Queue* q = SelectedQueueLocked();
      return q != nullptr && q->ready ? 1 : 0;
    }
    case mmio::kInterruptStatus:
      return interrupt_status_;
    case mmio::kStatus:
      return status_;
    case mmio::kShmLenLow:
    case mmio::kShmLenHigh:
    case mmio::kShmBaseLow:
    case mmio::kShmBaseHigh:
      // §4.2.2: no shared memory regions; a missing region has length -1.
      return 0xffffffff;
    case mmio::kConfigGeneration:
      return config_generation_;
    default:
      // Write-only or reserved.
      counters_.Inc(VirtioMmioCounters::kBadAccess);
      return 0;
  }
}

void VirtioMmioDevice::WriteRegisterLocked(uint64_t offset, uint32_t value, bool* raise) {
  switch (offset) {
    case mmio::kDeviceFeaturesSel:
      device_features_sel_ = value;
      return;
    case mmio::kDriverFeaturesSel:
      driver_features_sel_ = value;
      return;
    case mmio::kDriverFeatures:
      // §3.1.1: features are fixed once FEATURES_OK is set.
      if (status_ & mmio::kStatusFeaturesOk) {
        counters_.Inc(VirtioMmioCounters::kLateFeatureWrite);
        return;
      }
      if (driver_features_sel_ == 0) {
        driver_features_ = SetLow(driver_features_, value);
      } else if (driver_features_sel_ == 1) {
        driver_features_ = SetHigh(driver_features_, value);
      } else if (value != 0) {
        // Feature bits above 63 do not exist here; asking for one fails at FEATURES_OK.
        counters_.Inc(VirtioMmioCounters::kFeaturesRejected);
      }
      return;
    case mmio::kQueueSel:
      queue_sel_ = value;
      return;
    case mmio::kQueueNum:
      if (Queue* q = WritableQueueLocked()) q->num = value;
      return;
    case mmio::kQueueReady:
      WriteQueueReadyLocked(value, raise);
      return;
    case mmio::kQueueNotify:
      NotifyLocked(value, raise);
      return;
    case mmio::kInterruptAck:
      interrupt_status_ &= ~value;
      return;
    case mmio::kStatus:
      WriteStatusLocked(value, raise);
      return;
    case mmio::kQueueDescLow:
      if (Queue* q = WritableQueueLocked()) q->desc = SetLow(q->desc, value);
      return;
    case mmio::kQueueDescHigh:
      if (Queue* q = WritableQueueLocked()) q->desc = SetHigh(q->desc, value);
      return;
    case mmio::kQueueDriverLow:
      if (Queue* q = WritableQueueLocked()) q->driver = SetLow(q->driver, value);
      return;
    case mmio::kQueueDriverHigh:
      if (Queue* q = WritableQueueLocked()) q->driver = SetHigh(q->driver, value);
      return;
    case mmio::kQueueDeviceLow:
      if (Queue* q = WritableQueueLocked()) q->device = SetLow(q->device, value);
      return;
    case mmio::kQueueDeviceHigh:
      if (Queue* q = WritableQueueLocked()) q->device = SetHigh(q->device, value);
      return;
    case mmio::kShmSel:
      return;  // No regions; reads of their length say so.
    default:
      // Read-only or reserved.
      counters_.Inc(VirtioMmioCounters::kBadAccess);
      return;
  }
}

void VirtioMmioDevice::WriteQueueReadyLocked(uint32_t value, bool* raise) {
  Queue* q = SelectedQueueLocked();
  if (q == nullptr) {
    counters_.Inc(VirtioMmioCounters::kNoSuchQueue);
    return;
  }
  if (value == 0) {
    // Disabling a queue (Linux does so on teardown): forget the ring.
    q->ready = false;
    q->vq.Reset();
    return;
  }
  if (q->ready) return;  // Already live; rewriting 1 changes nothing.
  // §3.1.1: queues are set up after FEATURES_OK, which fixes EVENT_IDX and the
  // ring format. Before it, refuse: QueueReady keeps reading 0.
  if ((status_ & mmio::kStatusFeaturesOk) == 0) {
    counters_.Inc(VirtioMmioCounters::kQueueReadyBeforeFeaturesOk);
    return;
  }
  q->ready = true;
  const VirtqueueConfig config{q->num, base::Gpa(q->desc), base::Gpa(q->driver),
                               base::Gpa(q->device)};
  const VirtqueueError error =
      q->vq.Activate(config, q->max_size, (negotiated_features_ & mmio::kFEventIdx) != 0);
  if (error != VirtqueueError::kNone) {
    SetNeedsResetLocked(q->vq.index(), raise);
  }
}

void VirtioMmioDevice::NotifyLocked(uint32_t value, bool* raise) {
  counters_.Inc(VirtioMmioCounters::kNotifies);
  // Guest input: without VIRTIO_F_NOTIFICATION_DATA the value is a queue index
  // (§4.2.3.3), possibly of a queue that does not exist.
  if (value >= queues_.size()) {
    counters_.Inc(VirtioMmioCounters::kNoSuchQueue);
    return;
  }
  Queue& q = queues_[value];
  // §2.1.2 / §3.1.1: nothing is consumed before DRIVER_OK or after NEEDS_RESET.
  if (!LiveLocked() || !q.vq.active() || q.vq.broken()) {
    counters_.Inc(VirtioMmioCounters::kNotifyNotLive);
    return;
  }
  backend_->OnQueueNotify(static_cast<uint16_t>(value), q.vq);
  FinishQueueWorkLocked(raise);
}

void VirtioMmioDevice::WriteStatusLocked(uint32_t value, bool* raise) {
  if (value == 0) {
    ResetLocked();
    return;
  }
  (void)raise;
  // Guest input: the driver may only add bits (§2.1.2: it MUST NOT clear one);
  // DEVICE_NEEDS_RESET is the device's to set.
  const uint32_t requested = value & 0xff & ~mmio::kStatusDeviceNeedsReset;
  const uint32_t current = status_ & ~mmio::kStatusDeviceNeedsReset;
  if ((requested & current) != current) {
    counters_.Inc(VirtioMmioCounters::kBadStatusWrite);
    return;
  }
  uint32_t new_bits = requested & ~current;
  if (new_bits & mmio::kStatusFeaturesOk) {
    // §3.1.1 step 5-6: keep FEATURES_OK only for a subset of the offer that
    // includes VERSION_1 (a modern device's driver must accept it, §6) and that
    // the backend can work with.
    const uint64_t wanted = driver_features_;
    const bool ok = (wanted & ~offered_features_) == 0 && (wanted & mmio::kFVersion1) != 0 &&
                    backend_->AcceptFeatures(wanted);
    if (ok) {
      negotiated_features_ = wanted;
    } else {
      counters_.Inc(VirtioMmioCounters::kFeaturesRejected);
      new_bits &= ~mmio::kStatusFeaturesOk;
    }
  }
  if (new_bits & mmio::kStatusDriverOk) {
    if (((current | new_bits) & mmio::kStatusFeaturesOk) == 0) {
      counters_.Inc(VirtioMmioCounters::kBadStatusWrite);
      new_bits &= ~mmio::kStatusDriverOk;
    }
  }
  status_ |= new_bits;
  if ((new_bits & mmio::kStatusDriverOk) && !needs_reset_) backend_->OnDriverOk(negotiated_features_);
}

void VirtioMmioDevice::ResetLocked() {
  counters_.Inc(VirtioMmioCounters::kResets);
  status_ = 0;
  interrupt_status_ = 0;
  device_features_sel_ = 0;
  driver_features_sel_ = 0;
  driver_features_ = 0;
  negotiated_features_ = 0;
  queue_sel_ = 0;
  needs_reset_ = false;
  for (Queue& q : queues_) {
    q.ready = false;
    q.num = q.max_size;
    q.desc = q.driver = q.device = 0;
    q.vq.Reset();
  }
  backend_->OnReset();
}

bool VirtioMmioDevice::LiveLocked() const {
  return (status_ & mmio::kStatusDriverOk) != 0 && !needs_reset_;
}

void VirtioMmioDevice::SetNeedsResetLocked(uint16_t queue_index, bool* raise) {
  if (needs_reset_) return;
  needs_reset_ = true;
  status_ |= mmio::kStatusDeviceNeedsReset;
  counters_.Inc(VirtioMmioCounters::kNeedsReset);
  bool last = false;
  if (log_budget_.Take(&last)) {
    LOG(WARNING) << name_ << ": queue " << queue_index << " broken ("
                 << VirtqueueErrorName(queues_[queue_index].vq.error())
                 << "): DEVICE_NEEDS_RESET"
                 << (last ? " [further virtio warnings of this device suppressed]" : "");
  }
  // §2.1.2: with DRIVER_OK set, the device tells the driver by a configuration
  // change notification.
  if (status_ & mmio::kStatusDriverOk) {
    interrupt_status_ |= mmio::kInterruptConfigChange;
    counters_.Inc(VirtioMmioCounters::kConfigInterrupts);
    counters_.Inc(VirtioMmioCounters::kInterrupts);
    *raise = true;
  }
}

void VirtioMmioDevice::FinishQueueWorkLocked(bool* raise) {
  bool used = false;
  for (Queue& q : queues_) {
    if (q.vq.broken()) {
      SetNeedsResetLocked(q.vq.index(), raise);
      continue;
    }
    // Every queue: a backend may push on queues other than the notified one.
    if (q.vq.NeedsInterrupt()) used = true;
  }
  if (used) {
    interrupt_status_ |= mmio::kInterruptUsedBuffer;
    counters_.Inc(VirtioMmioCounters::kInterrupts);
    *raise = true;
  }
}

void VirtioMmioDevice::ConfigChangedLocked(bool* raise) {
  ++config_generation_;
  if (!LiveLocked()) return;
  interrupt_status_ |= mmio::kInterruptConfigChange;
  counters_.Inc(VirtioMmioCounters::kConfigInterrupts);
  counters_.Inc(VirtioMmioCounters::kInterrupts);
  *raise = true;
}

// ---- Observers ----

uint32_t VirtioMmioDevice::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}
uint32_t VirtioMmioDevice::interrupt_status() const {
  absl::MutexLock lock(&mu_);
  return interrupt_status_;
}
uint32_t VirtioMmioDevice::config_generation() const {
  absl::MutexLock lock(&mu_);
  return config_generation_;
}
uint64_t VirtioMmioDevice::negotiated_features() const {
  absl::MutexLock lock(&mu_);
  return negotiated_features_;
}
bool VirtioMmioDevice::needs_reset() const {
  absl::MutexLock lock(&mu_);
  return needs_reset_;
}
VirtqueueError VirtioMmioDevice::queue_error(uint16_t queue_index) const {
  absl::MutexLock lock(&mu_);
  if (queue_index >= queues_.size()) return VirtqueueError::kNone;
  return queues_[queue_index].vq.error();
}
VirtioMmioCounters VirtioMmioDevice::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}
VirtqueueCounters VirtioMmioDevice::queue_counters() const {
  absl::MutexLock lock(&mu_);
  return queue_counters_;
}

}  // namespace vmm

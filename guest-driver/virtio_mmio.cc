#include "guest-driver/virtio_mmio.h"

namespace guest_driver {
namespace {

// Transport features this core implements; every other bit from 24 up is
// withheld from the device even if a driver asks for it (§6).
constexpr uint64_t kCoreFeatures =
    feature::kDeviceSpecificMask | feature::kVersion1 | feature::kEventIdx;

constexpr uint32_t LargestPowerOfTwoAtMost(uint32_t x) {
  uint32_t p = 1;
  while (p <= x / 2) p <<= 1;
  return p;
}

}  // namespace

VirtioStatus VirtioMmioDevice::Probe(uint32_t expected_device_id) {
  // §4.2.3.1.1: check MagicValue and Version, then DeviceID (0: placeholder slot).
  if (Read32(mmio::kMagicValue) != mmio::kMagic) return VirtioStatus::kNotVirtio;
  const uint32_t version = Read32(mmio::kVersion);
  if (version == mmio::kVersionLegacy) return VirtioStatus::kLegacyDevice;
  if (version != mmio::kVersionModern) return VirtioStatus::kUnsupportedVersion;
  const uint32_t id = Read32(mmio::kDeviceId);
  if (id == device_id::kNone) return VirtioStatus::kNoDevice;
  if (expected_device_id != device_id::kNone && id != expected_device_id) {
    return VirtioStatus::kWrongDevice;
  }
  device_id_ = id;
  vendor_id_ = Read32(mmio::kVendorId);
  phase_ = Phase::kProbed;
  return VirtioStatus::kOk;
}

void VirtioMmioDevice::SetStatusBits(uint32_t bits) {
  // §2.1: the driver writes the whole status byte each time, keeping earlier bits.
  status_ |= bits;
  Write32(mmio::kStatus, status_);
}

VirtioStatus VirtioMmioDevice::Reset() {
  if (phase_ == Phase::kUnprobed) return VirtioStatus::kBadState;
  Write32(mmio::kStatus, 0);
  status_ = 0;
  features_ = 0;
  // §2.4.2: wait for the device to report the reset done. Bounded: a device that
  // never finishes must not hang the guest.
  for (uint32_t i = 0; i < kResetPollLimit; ++i) {
    if (Read32(mmio::kStatus) == 0) {
      phase_ = Phase::kProbed;
      return VirtioStatus::kOk;
    }
  }
  phase_ = Phase::kFailed;
  return VirtioStatus::kTimeout;
}

void VirtioMmioDevice::MarkFailed() {
  SetStatusBits(device_status::kFailed);
  phase_ = Phase::kFailed;
}

VirtioStatus VirtioMmioDevice::Begin() {
  if (phase_ == Phase::kUnprobed) return VirtioStatus::kBadState;
  const VirtioStatus reset = Reset();
  if (reset != VirtioStatus::kOk) return reset;
  SetStatusBits(device_status::kAcknowledge);  // §3.1.1 step 2.
  SetStatusBits(device_status::kDriver);       // §3.1.1 step 3.
  phase_ = Phase::kDriver;
  return VirtioStatus::kOk;
}

VirtioStatus VirtioMmioDevice::NegotiateFeatures(uint64_t driver_features) {
  if (phase_ != Phase::kDriver) return VirtioStatus::kBadState;
  // §3.1.1 step 4 with §4.2.2's selector registers.
  Write32(mmio::kDeviceFeaturesSel, 0);
  uint64_t device = Read32(mmio::kDeviceFeatures);
  Write32(mmio::kDeviceFeaturesSel, 1);
  device |= uint64_t{Read32(mmio::kDeviceFeatures)} << 32;
  device_features_ = device;
  // §6: a non-transitional (modern) device offers VERSION_1 and a driver for one
  // must accept it. Without it this is a legacy device behind a version-2 window.
  if ((device & feature::kVersion1) == 0) {
    MarkFailed();
    return VirtioStatus::kFeaturesRejected;
  }
  const uint64_t accepted = device & (driver_features | feature::kVersion1) & kCoreFeatures;
  Write32(mmio::kDriverFeaturesSel, 0);
  Write32(mmio::kDriverFeatures, static_cast<uint32_t>(accepted));
  Write32(mmio::kDriverFeaturesSel, 1);
  Write32(mmio::kDriverFeatures, static_cast<uint32_t>(accepted >> 32));
  // §3.1.1 steps 5-6: set FEATURES_OK, then re-read it; a device that cannot work
  // with this subset leaves it clear.
  SetStatusBits(device_status::kFeaturesOk);
  if ((Read32(mmio::kStatus) & device_status::kFeaturesOk) == 0) {
    MarkFailed();
    return VirtioStatus::kFeaturesRejected;
  }
  features_ = accepted;
  phase_ = Phase::kFeaturesOk;
  return VirtioStatus::kOk;
}

VirtioStatus VirtioMmioDevice::SetupQueue(uint16_t queue_index, uint32_t requested_size,
                                          Virtqueue& vq) {
  if (phase_ != Phase::kFeaturesOk) return VirtioStatus::kBadState;
  if (requested_size != 0 &&
      ((requested_size & (requested_size - 1)) != 0 || requested_size > kMaxSplitQueueSize)) {
    return VirtioStatus::kInvalidArgument;
  }
  // §4.2.3.2 steps 1-3: select the queue, check it is not live, read its maximum.
  Write32(mmio::kQueueSel, queue_index);
  if (Read32(mmio::kQueueReady) != 0) return VirtioStatus::kQueueUnavailable;
  const uint32_t max = Read32(mmio::kQueueNumMax);
  if (max == 0) return VirtioStatus::kQueueUnavailable;
  // Device input: QueueNumMax need not be a power of two nor within the split-ring
  // limit; round down to a size that is.
  const uint32_t limit = LargestPowerOfTwoAtMost(max < kMaxSplitQueueSize ? max : kMaxSplitQueueSize);
  const uint32_t size = (requested_size == 0 || requested_size > limit) ? limit : requested_size;
  // Step 4: allocate and zero the rings (the environment's pages are already zero).
  const VirtioStatus init = vq.Init(*env_, queue_index, size, HasFeature(feature::kEventIdx));
  if (init != VirtioStatus::kOk) return init;
  // Steps 5-8: size, the three ring addresses, then QueueReady.
  Write32(mmio::kQueueNum, size);
  Write32(mmio::kQueueDescLow, static_cast<uint32_t>(vq.desc_gpa()));
  Write32(mmio::kQueueDescHigh, static_cast<uint32_t>(vq.desc_gpa() >> 32));
  Write32(mmio::kQueueDriverLow, static_cast<uint32_t>(vq.avail_gpa()));
  Write32(mmio::kQueueDriverHigh, static_cast<uint32_t>(vq.avail_gpa() >> 32));
  Write32(mmio::kQueueDeviceLow, static_cast<uint32_t>(vq.used_gpa()));
  Write32(mmio::kQueueDeviceHigh, static_cast<uint32_t>(vq.used_gpa() >> 32));
  Write32(mmio::kQueueReady, 1);
  return VirtioStatus::kOk;
}

VirtioStatus VirtioMmioDevice::DriverOk() {
  if (phase_ != Phase::kFeaturesOk) return VirtioStatus::kBadState;
  SetStatusBits(device_status::kDriverOk);  // §3.1.1 step 8.
  if ((Read32(mmio::kStatus) & device_status::kDeviceNeedsReset) != 0) {
    return VirtioStatus::kDeviceNeedsReset;
  }
  phase_ = Phase::kDriverOk;
  return VirtioStatus::kOk;
}

bool VirtioMmioDevice::Kick(Virtqueue& vq) {
  if (!vq.KickPrepare()) return false;
  Notify(vq.queue_index());
  return true;
}

void VirtioMmioDevice::Notify(uint16_t queue_index) {
  // §4.2.3.3: without VIRTIO_F_NOTIFICATION_DATA the value is the queue index. The
  // ring stores before this are ordered by x86 store ordering (and by the barrier
  // in KickPrepare); the MMIO write itself is a volatile access in the environment.
  Write32(mmio::kQueueNotify, queue_index);
}

uint32_t VirtioMmioDevice::ReadAndAckInterrupt() {
  const uint32_t pending = Read32(mmio::kInterruptStatus);
  if (pending != 0) Write32(mmio::kInterruptAck, pending);
  return pending;
}

uint32_t VirtioMmioDevice::ReadDeviceStatus() { return Read32(mmio::kStatus); }

bool VirtioMmioDevice::ConfigRangeOk(uint32_t offset, uint32_t size_bytes) const {
  if (region_bytes_ <= mmio::kConfig) return false;
  const uint32_t window = region_bytes_ - mmio::kConfig;
  return offset <= window && size_bytes <= window - offset;
}

void VirtioMmioDevice::CopyConfigOut(uint32_t offset, uint8_t* out, uint32_t size_bytes) {
  uint32_t done = 0;
  while (done < size_bytes) {
    const uintptr_t addr = base_ + mmio::kConfig + offset + done;
    const uint32_t left = size_bytes - done;
    // §4.2.2.2: 32-bit accesses for 32/64-bit fields, 16 for 16, 8 for 8. Choosing
    // the widest aligned access per piece does that when whole fields are read.
    if (left >= 4 && (addr & 3) == 0) {
      const uint32_t v = env_->MmioRead32(addr);
      for (uint32_t i = 0; i < 4; ++i) out[done + i] = static_cast<uint8_t>(v >> (8 * i));
      done += 4;
    } else if (left >= 2 && (addr & 1) == 0) {
      const uint16_t v = env_->MmioRead16(addr);
      out[done] = static_cast<uint8_t>(v);
      out[done + 1] = static_cast<uint8_t>(v >> 8);
      done += 2;
    } else {
      out[done] = env_->MmioRead8(addr);
      done += 1;
    }
  }
}

VirtioStatus VirtioMmioDevice::ReadConfig(uint32_t offset, void* out, uint32_t size_bytes) {
  if (phase_ == Phase::kUnprobed) return VirtioStatus::kBadState;
  if (out == nullptr || !ConfigRangeOk(offset, size_bytes)) return VirtioStatus::kInvalidArgument;
  uint8_t* bytes = static_cast<uint8_t*>(out);
  // §2.5.1: a multi-access read is consistent only if the generation did not move.
  for (uint32_t attempt = 0; attempt < kConfigRetryLimit; ++attempt) {
    const uint32_t before = Read32(mmio::kConfigGeneration);
    CopyConfigOut(offset, bytes, size_bytes);
    const uint32_t after = Read32(mmio::kConfigGeneration);
    if (before == after) return VirtioStatus::kOk;
  }
  return VirtioStatus::kTimeout;
}

VirtioStatus VirtioMmioDevice::WriteConfig(uint32_t offset, const void* in, uint32_t size_bytes) {
  if (phase_ == Phase::kUnprobed) return VirtioStatus::kBadState;
  if (in == nullptr || !ConfigRangeOk(offset, size_bytes)) return VirtioStatus::kInvalidArgument;
  const uint8_t* bytes = static_cast<const uint8_t*>(in);
  uint32_t done = 0;
  while (done < size_bytes) {
    const uintptr_t addr = base_ + mmio::kConfig + offset + done;
    const uint32_t left = size_bytes - done;
    if (left >= 4 && (addr & 3) == 0) {
      uint32_t v = 0;
      for (uint32_t i = 0; i < 4; ++i) v |= uint32_t{bytes[done + i]} << (8 * i);
      env_->MmioWrite32(addr, v);
      done += 4;
    } else if (left >= 2 && (addr & 1) == 0) {
      env_->MmioWrite16(addr, static_cast<uint16_t>(bytes[done] | (bytes[done + 1] << 8)));
      done += 2;
    } else {
      env_->MmioWrite8(addr, bytes[done]);
      done += 1;
    }
  }
  return VirtioStatus::kOk;
}

}  // namespace guest_driver

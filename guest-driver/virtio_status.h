// Result codes of the guest-side virtio core. A small enum rather than a status
// object: the core is freestanding (no allocation, no strings to build) and every
// call site in the guest kernel switches on it.
#ifndef GUEST_DRIVER_VIRTIO_STATUS_H_
#define GUEST_DRIVER_VIRTIO_STATUS_H_

#include <cstdint>

namespace guest_driver {

enum class [[nodiscard]] VirtioStatus : uint8_t {
  kOk = 0,
  kEmpty,               // PollUsed: nothing new in the used ring.
  kRingFull,            // Add: not enough free descriptors; retry after harvesting.
  kInvalidArgument,     // Caller error (bad size, empty chain, readable after writable...).
  kBadState,            // Call out of the order of §3.1.1, or queue not set up.
  kNotVirtio,           // MagicValue is not "virt".
  kLegacyDevice,        // Version 1 (legacy, §4.2.4) device: not supported.
  kUnsupportedVersion,  // Any other Version value.
  kNoDevice,            // DeviceID 0: an empty virtio-mmio slot.
  kWrongDevice,         // DeviceID differs from the one the caller asked for.
  kFeaturesRejected,    // Device lacks VERSION_1 or refused FEATURES_OK (§3.1.1 step 6).
  kQueueUnavailable,    // QueueNumMax is 0 or the queue is already live (§4.2.3.2).
  kNoMemory,            // The environment could not allocate ring memory.
  kDeviceError,         // The device broke the protocol (bad used entry...).
  kDeviceNeedsReset,    // The device set DEVICE_NEEDS_RESET (§2.1.2).
  kTimeout,             // A bounded wait (reset, config generation) did not settle.
};

// A stable name for logs, e.g. "kRingFull".
constexpr const char* VirtioStatusName(VirtioStatus status) {
  switch (status) {
    case VirtioStatus::kOk: return "kOk";
    case VirtioStatus::kEmpty: return "kEmpty";
    case VirtioStatus::kRingFull: return "kRingFull";
    case VirtioStatus::kInvalidArgument: return "kInvalidArgument";
    case VirtioStatus::kBadState: return "kBadState";
    case VirtioStatus::kNotVirtio: return "kNotVirtio";
    case VirtioStatus::kLegacyDevice: return "kLegacyDevice";
    case VirtioStatus::kUnsupportedVersion: return "kUnsupportedVersion";
    case VirtioStatus::kNoDevice: return "kNoDevice";
    case VirtioStatus::kWrongDevice: return "kWrongDevice";
    case VirtioStatus::kFeaturesRejected: return "kFeaturesRejected";
    case VirtioStatus::kQueueUnavailable: return "kQueueUnavailable";
    case VirtioStatus::kNoMemory: return "kNoMemory";
    case VirtioStatus::kDeviceError: return "kDeviceError";
    case VirtioStatus::kDeviceNeedsReset: return "kDeviceNeedsReset";
    case VirtioStatus::kTimeout: return "kTimeout";
  }
  return "unknown";
}

}  // namespace guest_driver

#endif  // GUEST_DRIVER_VIRTIO_STATUS_H_

// Constants and ring layouts from the OASIS virtio specification, version 1.2
// (section numbers below are 1.2's; 1.1 numbers the split-ring chapter 2.6 instead
// of 2.7). Only what the guest-side virtio-mmio core needs: the MMIO register map
// of a version 2 ("modern") device, device status bits, the transport feature bits
// and the split virtqueue structures.
//
// Freestanding: this header is compiled into the guest kernel as well as into host
// unit tests, so it uses nothing but <cstdint>/<cstddef>. All multi-byte fields are
// little-endian (§1.4, "le16/le32/le64"); the core only targets little-endian CPUs.
#ifndef GUEST_DRIVER_VIRTIO_SPEC_H_
#define GUEST_DRIVER_VIRTIO_SPEC_H_

#include <cstddef>
#include <cstdint>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "guest-driver assumes a little-endian CPU: virtio 1.x structures are little-endian"
#endif

namespace guest_driver {

inline constexpr size_t kPageSize = 4096;

// §4.2.2 "MMIO Device Register Layout". Every control register is 32 bits wide and
// must be accessed with 32-bit aligned accesses (§4.2.2.2).
namespace mmio {
inline constexpr uint32_t kMagicValue = 0x000;        // R: 0x74726976 ("virt").
inline constexpr uint32_t kVersion = 0x004;           // R: 2 modern, 1 legacy.
inline constexpr uint32_t kDeviceId = 0x008;          // R: 0 means "no device here".
inline constexpr uint32_t kVendorId = 0x00c;          // R
inline constexpr uint32_t kDeviceFeatures = 0x010;    // R: 32 bits selected below.
inline constexpr uint32_t kDeviceFeaturesSel = 0x014; // W: 0 = bits 0..31, 1 = 32..63.
inline constexpr uint32_t kDriverFeatures = 0x020;    // W
inline constexpr uint32_t kDriverFeaturesSel = 0x024; // W
inline constexpr uint32_t kQueueSel = 0x030;          // W
inline constexpr uint32_t kQueueNumMax = 0x034;       // R: 0 means "queue absent".
inline constexpr uint32_t kQueueNum = 0x038;          // W
inline constexpr uint32_t kQueueReady = 0x044;        // RW
inline constexpr uint32_t kQueueNotify = 0x050;       // W: queue index.
inline constexpr uint32_t kInterruptStatus = 0x060;   // R
inline constexpr uint32_t kInterruptAck = 0x064;      // W
inline constexpr uint32_t kStatus = 0x070;            // RW: device status (§2.1).
inline constexpr uint32_t kQueueDescLow = 0x080;      // W: descriptor table gpa.
inline constexpr uint32_t kQueueDescHigh = 0x084;     // W
inline constexpr uint32_t kQueueDriverLow = 0x090;    // W: available ring gpa.
inline constexpr uint32_t kQueueDriverHigh = 0x094;   // W
inline constexpr uint32_t kQueueDeviceLow = 0x0a0;    // W: used ring gpa.
inline constexpr uint32_t kQueueDeviceHigh = 0x0a4;   // W
inline constexpr uint32_t kConfigGeneration = 0x0fc;  // R
inline constexpr uint32_t kConfig = 0x100;            // Device-specific config space.

inline constexpr uint32_t kMagic = 0x74726976;  // "virt" in little-endian.
inline constexpr uint32_t kVersionLegacy = 1;   // §4.2.4 legacy interface.
inline constexpr uint32_t kVersionModern = 2;

// InterruptStatus / InterruptACK bits (§4.2.2, §4.2.3.4).
inline constexpr uint32_t kInterruptUsedBuffer = 1u << 0;
inline constexpr uint32_t kInterruptConfigChange = 1u << 1;
}  // namespace mmio

// §2.1 "Device Status Field".
namespace device_status {
inline constexpr uint32_t kAcknowledge = 1;
inline constexpr uint32_t kDriver = 2;
inline constexpr uint32_t kDriverOk = 4;
inline constexpr uint32_t kFeaturesOk = 8;
inline constexpr uint32_t kDeviceNeedsReset = 64;
inline constexpr uint32_t kFailed = 128;
}  // namespace device_status

// §6 "Reserved Feature Bits" (transport features, bits 24..40 and above 50).
namespace feature {
inline constexpr uint64_t kIndirectDesc = 1ull << 28;  // VIRTIO_F_INDIRECT_DESC
inline constexpr uint64_t kEventIdx = 1ull << 29;      // VIRTIO_F_EVENT_IDX
inline constexpr uint64_t kVersion1 = 1ull << 32;      // VIRTIO_F_VERSION_1
inline constexpr uint64_t kAccessPlatform = 1ull << 33;
inline constexpr uint64_t kRingPacked = 1ull << 34;
inline constexpr uint64_t kInOrder = 1ull << 35;
inline constexpr uint64_t kNotificationData = 1ull << 38;
// Device-type-specific bits are 0..23 (§2.2); everything else is the transport's.
inline constexpr uint64_t kDeviceSpecificMask = (1ull << 24) - 1;
}  // namespace feature

// §5 device IDs that later drivers in this folder use.
namespace device_id {
inline constexpr uint32_t kNone = 0;
inline constexpr uint32_t kNet = 1;
inline constexpr uint32_t kBlock = 2;
inline constexpr uint32_t kConsole = 3;
inline constexpr uint32_t kEntropy = 4;
inline constexpr uint32_t kBalloon = 5;
}  // namespace device_id

// §2.7 "Split Virtqueues". Queue Size is a power of 2, at most 32768 (§2.7).
inline constexpr uint32_t kMaxSplitQueueSize = 32768;

// §2.7.5 "The Virtqueue Descriptor Table": 16-byte aligned.
struct VirtqDesc {
  uint64_t addr;  // Guest-physical address of the buffer.
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);
inline constexpr uint16_t kVirtqDescFNext = 1;      // VIRTQ_DESC_F_NEXT
inline constexpr uint16_t kVirtqDescFWrite = 2;     // VIRTQ_DESC_F_WRITE
inline constexpr uint16_t kVirtqDescFIndirect = 4;  // VIRTQ_DESC_F_INDIRECT (unused)
inline constexpr size_t kVirtqDescAlign = 16;

// §2.7.6 "The Virtqueue Available Ring": flags, idx, ring[size], used_event (the last
// only with VIRTIO_F_EVENT_IDX). 2-byte aligned.
inline constexpr uint16_t kVirtqAvailFNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
inline constexpr size_t kVirtqAvailAlign = 2;
inline constexpr size_t kVirtqAvailFlagsOffset = 0;
inline constexpr size_t kVirtqAvailIdxOffset = 2;
inline constexpr size_t kVirtqAvailRingOffset = 4;
inline constexpr size_t VirtqAvailBytes(uint32_t size) { return 6 + 2 * size_t{size}; }

// §2.7.8 "The Virtqueue Used Ring": flags, idx, ring[size] of {le32 id, le32 len},
// avail_event. 4-byte aligned.
struct VirtqUsedElem {
  uint32_t id;   // Head descriptor index of the used chain.
  uint32_t len;  // Bytes the device wrote into the chain's writable part.
};
static_assert(sizeof(VirtqUsedElem) == 8);
inline constexpr uint16_t kVirtqUsedFNoNotify = 1;  // VIRTQ_USED_F_NO_NOTIFY
inline constexpr size_t kVirtqUsedAlign = 4;
inline constexpr size_t kVirtqUsedFlagsOffset = 0;
inline constexpr size_t kVirtqUsedIdxOffset = 2;
inline constexpr size_t kVirtqUsedRingOffset = 4;
inline constexpr size_t VirtqUsedBytes(uint32_t size) { return 6 + 8 * size_t{size}; }

}  // namespace guest_driver

#endif  // GUEST_DRIVER_VIRTIO_SPEC_H_

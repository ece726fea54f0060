// VirtioMmioDevice: the driver side of one virtio-mmio transport instance, version 2
// ("modern", virtio 1.2 §4.2). It probes the register window, runs the device
// initialization sequence of §3.1.1 (reset, ACKNOWLEDGE, DRIVER, feature
// negotiation with the FEATURES_OK re-read, queue setup, DRIVER_OK), notifies
// queues, reads and acknowledges interrupts, and reads the device configuration
// space under the ConfigGeneration retry loop (§2.5.1).
//
// It owns no memory: each Virtqueue is owned by the device driver that uses it and
// gets its rings through the same VirtioEnv. Legacy (version 1) devices are refused
// with kLegacyDevice.
//
// Typical use by a guest driver (see guest-driver/README.md):
//   VirtioMmioDevice dev(env, mmio_base, region_bytes);
//   dev.Probe(device_id::kBalloon);           // no writes to the device
//   dev.Begin();                              // reset, ACKNOWLEDGE, DRIVER
//   dev.NegotiateFeatures(kMyFeatures);       // VERSION_1 is always requested
//   dev.SetupQueue(0, 128, inflate_vq);       // for each queue
//   dev.DriverOk();
//   inflate_vq.Add(bufs, n, &head); dev.Kick(inflate_vq);
//   on interrupt: dev.ReadAndAckInterrupt(); while (vq.PollUsed(&c) == kOk) ...
// Every call returns a VirtioStatus; on kDeviceError or kDeviceNeedsReset the driver
// resets the device (Reset), reclaims buffers (Virtqueue::DetachInFlight) and
// starts again from Begin, or gives up with MarkFailed.
//
// Per-operation cost: Kick is at most one MMIO write (zero when the device
// suppressed notifications); an interrupt costs one read and one write. Every MMIO
// access is a VM exit (7-12 us on docs/platform.md's KVM), so nothing here reads a
// register it does not need; the status register is tracked in a shadow copy.
//
// Building: the guest kernel compiles virtio_mmio.cc and virtqueue.cc with its own
// freestanding flags by linking the CMake INTERFACE target guest_driver_sources (or
// reading the global property GUEST_DRIVER_SOURCES); host tests link guest_driver.
//
// Thread safety: none; one caller at a time per device.
#ifndef GUEST_DRIVER_VIRTIO_MMIO_H_
#define GUEST_DRIVER_VIRTIO_MMIO_H_

#include <cstddef>
#include <cstdint>

#include "guest-driver/virtio_env.h"
#include "guest-driver/virtio_spec.h"
#include "guest-driver/virtio_status.h"
#include "guest-driver/virtqueue.h"

namespace guest_driver {

class VirtioMmioDevice {
 public:
  // Where the driver is in §3.1.1's sequence.
  enum class Phase : uint8_t {
    kUnprobed,
    kProbed,      // Registers identified; the device was not written to.
    kDriver,      // Reset, ACKNOWLEDGE and DRIVER done.
    kFeaturesOk,  // Features accepted; queues may be set up.
    kDriverOk,    // Live.
    kFailed,      // FAILED set; only Reset leaves this.
  };

  // Bounds on waits for a device that never settles (a device must not hang us).
  static constexpr uint32_t kResetPollLimit = 10000;
  static constexpr uint32_t kConfigRetryLimit = 64;
  // The region of the Linux convention virtio_mmio.device=SIZE@ADDR; 0x200 is the
  // usual SIZE. Config-space accesses must stay inside it.
  static constexpr uint32_t kDefaultRegionBytes = 0x200;

  // `base` is the kernel's address of the mapped register window; the environment
  // adds register offsets to it. Touches no register.
  VirtioMmioDevice(VirtioEnv& env, uintptr_t base, uint32_t region_bytes = kDefaultRegionBytes)
      : env_(&env), base_(base), region_bytes_(region_bytes) {}
  VirtioMmioDevice(const VirtioMmioDevice&) = delete;
  VirtioMmioDevice& operator=(const VirtioMmioDevice&) = delete;

  // Reads MagicValue, Version and DeviceID (§4.2.3.1.1). `expected_device_id` 0
  // accepts any device. kNotVirtio, kLegacyDevice, kUnsupportedVersion, kNoDevice
  // (an empty slot) or kWrongDevice on mismatch.
  VirtioStatus Probe(uint32_t expected_device_id = device_id::kNone);

  // §3.1.1 steps 1-3: reset (waiting for Status to read 0, §2.4.2), ACKNOWLEDGE,
  // DRIVER. Needs a successful Probe.
  VirtioStatus Begin();

  // §3.1.1 steps 4-6: reads the device's 64 feature bits, writes the intersection
  // with `driver_features` restricted to what this core implements (device-specific
  // bits 0-23, VERSION_1, EVENT_IDX), sets FEATURES_OK and re-reads it. VERSION_1 is
  // always requested; a device without it, or one that clears FEATURES_OK, gets
  // FAILED and the call returns kFeaturesRejected.
  VirtioStatus NegotiateFeatures(uint64_t driver_features);

  // §4.2.3.2: sets up queue `queue_index` with `requested_size` entries (a power of
  // two; 0 means the device's maximum). A size above QueueNumMax is lowered to the
  // largest power of two the device allows; the chosen size is vq.size().
  // kQueueUnavailable if the device has no such queue or it is already live.
  VirtioStatus SetupQueue(uint16_t queue_index, uint32_t requested_size, Virtqueue& vq);

  // §3.1.1 step 8. Re-reads Status once: kDeviceNeedsReset if the device already
  // gave up.
  VirtioStatus DriverOk();

  // Notifies the device if `vq` has new buffers and the device wants to hear of
  // them (Virtqueue::KickPrepare). Returns whether QueueNotify was written.
  bool Kick(Virtqueue& vq);
  // Unconditional available buffer notification (§4.2.3.3).
  void Notify(uint16_t queue_index);

  // Reads InterruptStatus and acknowledges exactly the bits read (§4.2.3.4);
  // returns them (mmio::kInterruptUsedBuffer, mmio::kInterruptConfigChange).
  uint32_t ReadAndAckInterrupt();

  // Copies `size_bytes` of device-specific configuration at `offset` into `out`,
  // retrying until ConfigGeneration reads the same before and after (§2.5.1), with
  // accesses as wide as each aligned piece allows (8/16/32 bits, §4.2.2.2).
  // kInvalidArgument if the range leaves the register window; kTimeout if the
  // generation never settles.
  VirtioStatus ReadConfig(uint32_t offset, void* out, uint32_t size_bytes);
  VirtioStatus WriteConfig(uint32_t offset, const void* in, uint32_t size_bytes);
  template <typename T>
  VirtioStatus ReadConfigField(uint32_t offset, T* out) {
    return ReadConfig(offset, out, sizeof(T));
  }

  // Reads Status: for a config-change interrupt, to see DEVICE_NEEDS_RESET (§2.1.2).
  uint32_t ReadDeviceStatus();
  bool NeedsReset() { return (ReadDeviceStatus() & device_status::kDeviceNeedsReset) != 0; }

  // Writes 0 to Status and waits for it to read back 0 (§2.4.2). The device then
  // forgets every queue; the driver reclaims its buffers with DetachInFlight.
  VirtioStatus Reset();
  // Sets FAILED (§2.1.1: the driver gave up on the device).
  void MarkFailed();

  Phase phase() const { return phase_; }
  uint32_t device_id() const { return device_id_; }
  uint32_t vendor_id() const { return vendor_id_; }
  uint64_t device_features() const { return device_features_; }
  uint64_t features() const { return features_; }  // Negotiated.
  bool HasFeature(uint64_t bit) const { return (features_ & bit) == bit; }
  VirtioEnv& env() const { return *env_; }
  uintptr_t base() const { return base_; }

 private:
  uint32_t Read32(uint32_t offset) { return env_->MmioRead32(base_ + offset); }
  void Write32(uint32_t offset, uint32_t value) { env_->MmioWrite32(base_ + offset, value); }
  void SetStatusBits(uint32_t bits);
  bool ConfigRangeOk(uint32_t offset, uint32_t size_bytes) const;
  void CopyConfigOut(uint32_t offset, uint8_t* out, uint32_t size_bytes);

  VirtioEnv* env_;
  uintptr_t base_;
  uint32_t region_bytes_;
  Phase phase_ = Phase::kUnprobed;
  uint32_t status_ = 0;  // Shadow of the bits the driver has written to Status.
  uint32_t device_id_ = 0;
  uint32_t vendor_id_ = 0;
  uint64_t device_features_ = 0;
  uint64_t features_ = 0;
};

}  // namespace guest_driver

#endif  // GUEST_DRIVER_VIRTIO_MMIO_H_

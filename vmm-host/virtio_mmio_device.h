// VirtioMmioDevice: the device side of the virtio-mmio transport, version 2 only
// (OASIS virtio 1.2 §4.2.2 "MMIO Device Register Layout"), for one device model
// (a VirtioDeviceBackend: the balloon, later others). It sits on the IoBus as an
// MMIO BusDevice of kRegionBytes and owns the device's split virtqueues.
//
// What it implements:
//   - the register file: MagicValue, Version (2), DeviceID, VendorID,
//     DeviceFeatures/Sel, DriverFeatures/Sel, QueueSel, QueueNumMax, QueueNum,
//     QueueReady, QueueNotify, InterruptStatus, InterruptACK, Status,
//     QueueDesc/Driver/Device Low/High, SHMSel (no regions: length -1),
//     ConfigGeneration, and device configuration space from 0x100;
//   - the status state machine of §2.1 and §3.1.1: writing 0 resets the device
//     (§2.4); FEATURES_OK is only kept if the driver's features are a subset of
//     the offer that includes VERSION_1 and the backend accepts them; DRIVER_OK
//     needs FEATURES_OK; a write that clears a set bit is refused;
//   - feature bits: the backend's device-type bits (0..23) plus VIRTIO_F_VERSION_1
//     and, if enabled, VIRTIO_F_EVENT_IDX. Never INDIRECT_DESC, RING_PACKED,
//     IN_ORDER, NOTIFICATION_DATA, ACCESS_PLATFORM or RING_RESET;
//   - queues: QueueReady 1 validates and activates the ring (Virtqueue::Activate),
//     QueueReady 0 disables it; QueueNotify runs the backend on that queue,
//     only once DRIVER_OK is set (§2.1.2: no buffers are consumed before);
//   - interrupts: InterruptStatus bit 0 (used buffer) when a queue pushed used
//     entries the driver wants to hear of, bit 1 (configuration change) on
//     UpdateConfig and on DEVICE_NEEDS_RESET. Each new interrupt event calls
//     `raise_irq` once (edge semantics, as an irqfd gives), outside the lock;
//   - DEVICE_NEEDS_RESET (§2.1.2): when a queue breaks (any guest violation; see
//     virtqueue.h), status bit 64 is set, every queue stops, and if DRIVER_OK is
//     set a configuration change interrupt is sent. Only a device reset clears it.
//
// Guest input at this edge: every register offset, width and value. Control
// registers take only aligned 32-bit accesses (§4.2.2.2); anything else is
// counted (bad_access) and ignored (reads return 0). Config accesses outside the
// backend's config_size are counted and read as 0. No guest action is fatal.
//
// Thread safety: Read/Write may be called from any vCPU thread concurrently; the
// transport serialises them, and every backend callback, under one mutex. Host
// threads reach the queues (WithQueue) and config (UpdateConfig) through the
// same mutex. Backend callbacks must not call back into the transport.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/counters.h"
#include "vmm-host/guest_memory.h"
#include "vmm-host/io_bus.h"
#include "vmm-host/virtqueue.h"

namespace vmm {

// The virtio-mmio register map and transport constants, virtio 1.2 §4.2.2, §2.1
// and §6 (device-side copy; see the note in virtqueue.h).
namespace virtio_mmio {
inline constexpr uint64_t kMagicValue = 0x000;
inline constexpr uint64_t kVersion = 0x004;
inline constexpr uint64_t kDeviceId = 0x008;
inline constexpr uint64_t kVendorId = 0x00c;
inline constexpr uint64_t kDeviceFeatures = 0x010;
inline constexpr uint64_t kDeviceFeaturesSel = 0x014;
inline constexpr uint64_t kDriverFeatures = 0x020;
inline constexpr uint64_t kDriverFeaturesSel = 0x024;
inline constexpr uint64_t kQueueSel = 0x030;
inline constexpr uint64_t kQueueNumMax = 0x034;
inline constexpr uint64_t kQueueNum = 0x038;
inline constexpr uint64_t kQueueReady = 0x044;
inline constexpr uint64_t kQueueNotify = 0x050;
inline constexpr uint64_t kInterruptStatus = 0x060;
inline constexpr uint64_t kInterruptAck = 0x064;
inline constexpr uint64_t kStatus = 0x070;
inline constexpr uint64_t kQueueDescLow = 0x080;
inline constexpr uint64_t kQueueDescHigh = 0x084;
inline constexpr uint64_t kQueueDriverLow = 0x090;
inline constexpr uint64_t kQueueDriverHigh = 0x094;
inline constexpr uint64_t kQueueDeviceLow = 0x0a0;
inline constexpr uint64_t kQueueDeviceHigh = 0x0a4;
inline constexpr uint64_t kShmSel = 0x0ac;
inline constexpr uint64_t kShmLenLow = 0x0b0;
inline constexpr uint64_t kShmLenHigh = 0x0b4;
inline constexpr uint64_t kShmBaseLow = 0x0b8;
inline constexpr uint64_t kShmBaseHigh = 0x0bc;
inline constexpr uint64_t kConfigGeneration = 0x0fc;
inline constexpr uint64_t kConfig = 0x100;

inline constexpr uint32_t kMagic = 0x74726976;  // "virt"
inline constexpr uint32_t kVersion2 = 2;
inline constexpr uint32_t kVendor = 0x4d4d564d;  // "MVMM"

inline constexpr uint32_t kInterruptUsedBuffer = 1u << 0;
inline constexpr uint32_t kInterruptConfigChange = 1u << 1;

// §2.1 device status bits.
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusDeviceNeedsReset = 64;
inline constexpr uint32_t kStatusFailed = 128;

// §6 transport feature bits this transport knows about.
inline constexpr uint64_t kFIndirectDesc = 1ull << 28;
inline constexpr uint64_t kFEventIdx = 1ull << 29;
inline constexpr uint64_t kFVersion1 = 1ull << 32;
inline constexpr uint64_t kDeviceTypeFeatureMask = (1ull << 24) - 1;  // §2.2: bits 0..23
}  // namespace virtio_mmio

// A device model behind the transport. Implementations: the balloon (next), test
// backends. Every method is called with the transport's lock held, from a vCPU
// thread (or a host thread inside WithQueue/UpdateConfig), one call at a time:
// a backend needs no lock for state only these calls touch. A backend must not
// call into its transport from these methods.
class VirtioDeviceBackend {
 public:
  virtual ~VirtioDeviceBackend() = default;

  virtual std::string_view name() const = 0;
  // §5 device ID (5 = balloon). Not 0.
  virtual uint32_t device_id() const = 0;
  // Device-type feature bits the device offers (bits 0..23; others are ignored,
  // the transport owns them).
  virtual uint64_t device_features() const = 0;
  // Number of virtqueues (1..kMaxQueues) and each one's QueueNumMax (a power of
  // two, 1..32768).
  virtual uint16_t num_queues() const = 0;
  virtual uint16_t queue_max_size(uint16_t queue_index) const = 0;

  // Device configuration space, 0..kMaxConfigBytes bytes. The transport has
  // checked offset + size <= config_size().
  virtual uint32_t config_size() const { return 0; }
  virtual void ReadConfig(uint32_t offset, uint8_t* data, uint32_t size) {
    (void)offset;
    for (uint32_t i = 0; i < size; ++i) data[i] = 0;
  }
  virtual void WriteConfig(uint32_t offset, const uint8_t* data, uint32_t size) {
    (void)offset, (void)data, (void)size;
  }

  // FEATURES_OK: whether the device can work with `driver_features` (already a
  // subset of the offer, with VERSION_1). False leaves FEATURES_OK clear (§3.1.1).
  virtual bool AcceptFeatures(uint64_t driver_features) {
    (void)driver_features;
    return true;
  }
  // DRIVER_OK: the device is live with `features`.
  virtual void OnDriverOk(uint64_t features) { (void)features; }
  // The driver notified `queue` (active, not broken, device live). Pop chains,
  // push used entries; the transport sends the interrupt afterwards. To refuse
  // a chain for a device-specific reason call queue.Fail(...).
  virtual void OnQueueNotify(uint16_t queue_index, Virtqueue& queue) = 0;
  // Device reset (Status 0): drop all per-driver state. Tokens of chains popped
  // before are stale from now on.
  virtual void OnReset() {}
};

#define VMM_VIRTIO_MMIO_COUNTERS(X)                     \
  X(RegisterReads, register_reads)                      \
  X(RegisterWrites, register_writes)                    \
  X(Notifies, notifies)                                 \
  X(Interrupts, interrupts)                             \
  X(ConfigInterrupts, config_interrupts)                \
  X(Resets, resets)                                     \
  X(NeedsReset, needs_reset)                            \
  X(BadAccess, bad_access)                              \
  X(ConfigOutOfRange, config_out_of_range)              \
  X(BadStatusWrite, bad_status_write)                   \
  X(FeaturesRejected, features_rejected)                \
  X(LateFeatureWrite, late_feature_write)               \
  X(NoSuchQueue, no_such_queue)                         \
  X(QueueWriteWhileReady, queue_write_while_ready)      \
  X(QueueReadyBeforeFeaturesOk, queue_ready_before_features_ok) \
  X(NotifyNotLive, notify_not_live)
BASE_DEFINE_COUNTERS(VirtioMmioCounters, VMM_VIRTIO_MMIO_COUNTERS);

struct VirtioMmioOptions {
  // For logs, e.g. "virtio-balloon@0xd0000000". Empty: the backend's name.
  std::string name;
  // Offer VIRTIO_F_EVENT_IDX (§2.7.10).
  bool offer_event_idx = true;
  // Called once per interrupt event, outside the transport's lock, from the
  // thread that caused it (a vCPU, or a host thread in WithQueue/UpdateConfig).
  std::function<void()> raise_irq;
};

class VirtioMmioDevice final : public BusDevice {
 public:
  // Linux's virtio_mmio.device=SIZE@ADDR convention; config space is what is
  // left after the 0x100 bytes of registers.
  static constexpr uint64_t kRegionBytes = 0x200;
  static constexpr uint32_t kMaxConfigBytes = kRegionBytes - virtio_mmio::kConfig;
  static constexpr uint16_t kMaxQueues = 64;
  // Guest-caused warnings logged per device before going quiet.
  static constexpr uint32_t kLogBudget = 16;

  // Checks the backend's constants (device id, queue count and sizes, config
  // size). `memory` must outlive the device.
  static absl::StatusOr<std::unique_ptr<VirtioMmioDevice>> Create(
      GuestMemory& memory, std::unique_ptr<VirtioDeviceBackend> backend,
      VirtioMmioOptions options = {});
  VirtioMmioDevice(const VirtioMmioDevice&) = delete;
  VirtioMmioDevice& operator=(const VirtioMmioDevice&) = delete;

  // BusDevice (offsets within kRegionBytes).
  std::string_view name() const override { return name_; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override;
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override;

  // Host-side access to a live queue (for work not triggered by a notify, like
  // returning a held stats buffer): runs fn(Virtqueue&) under the lock if the
  // device is live (DRIVER_OK, no NEEDS_RESET) and the queue active, then sends
  // the interrupts the pushes call for. Returns whether fn ran.
  template <typename Fn>
  bool WithQueue(uint16_t queue_index, Fn&& fn);

  // Host-side config change (e.g. a new balloon target): runs fn() under the
  // lock (it updates the backend's config), bumps ConfigGeneration and, if the
  // driver is live, sends a configuration change interrupt (§2.5.1, §4.2.3.4).
  template <typename Fn>
  void UpdateConfig(Fn&& fn);

  // Observers (take the lock; for tests and reports).
  uint32_t status() const;
  uint32_t interrupt_status() const;
  uint32_t config_generation() const;
  uint64_t offered_features() const { return offered_features_; }
  uint64_t negotiated_features() const;  // 0 until FEATURES_OK.
  bool needs_reset() const;
  VirtqueueError queue_error(uint16_t queue_index) const;
  VirtioMmioCounters counters() const;
  VirtqueueCounters queue_counters() const;
  // The backend. Calling into it outside the transport's callbacks is the
  // caller's business (use WithQueue/UpdateConfig for anything the guest sees).
  VirtioDeviceBackend& backend() { return *backend_; }

 private:
  struct Queue {
    Queue(GuestMemory& mem, uint16_t index, uint16_t max, VirtqueueCounters* counters,
          LogBudget* log)
        : max_size(max), vq(mem, index, counters, log) {}
    uint16_t max_size;
    uint32_t num = 0;
    bool ready = false;
    uint64_t desc = 0;
    uint64_t driver = 0;
    uint64_t device = 0;
    Virtqueue vq;
  };

  VirtioMmioDevice(GuestMemory& memory, std::unique_ptr<VirtioDeviceBackend> backend,
                   VirtioMmioOptions options);

  uint32_t ReadRegisterLocked(uint64_t offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets *raise when an interrupt event happened.
  void WriteRegisterLocked(uint64_t offset, uint32_t value, bool* raise)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteStatusLocked(uint32_t value, bool* raise) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteQueueReadyLocked(uint32_t value, bool* raise) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyLocked(uint32_t value, bool* raise) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A queue (or the device) can no longer be trusted: set DEVICE_NEEDS_RESET.
  void SetNeedsResetLocked(uint16_t queue_index, bool* raise) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After backend work: broken queues -> NEEDS_RESET; pushed queues -> interrupt.
  void FinishQueueWorkLocked(bool* raise) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ConfigChangedLocked(bool* raise) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool LiveLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The selected queue, or nullptr (and counted) if QueueSel names none.
  Queue* SelectedQueueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The selected queue if its setup registers may be written, else nullptr.
  Queue* WritableQueueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Raise();

  GuestMemory& memory_;
  const std::unique_ptr<VirtioDeviceBackend> backend_;
  const std::string name_;
  const std::function<void()> raise_irq_;
  const uint32_t device_id_;
  const uint64_t offered_features_;
  const uint32_t config_size_;

  mutable absl::Mutex mu_;
  LogBudget log_budget_{kLogBudget};
  VirtqueueCounters queue_counters_;  // Written under mu_ only.
  VirtioMmioCounters counters_;       // Written under mu_ only.
  std::vector<Queue> queues_ ABSL_GUARDED_BY(mu_);
  uint32_t status_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t interrupt_status_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t config_generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t device_features_sel_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t driver_features_sel_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t driver_features_ ABSL_GUARDED_BY(mu_) = 0;  // As written by the driver.
  uint64_t negotiated_features_ ABSL_GUARDED_BY(mu_) = 0;  // Set at FEATURES_OK.
  uint32_t queue_sel_ ABSL_GUARDED_BY(mu_) = 0;
  bool needs_reset_ ABSL_GUARDED_BY(mu_) = false;
};

template <typename Fn>
bool VirtioMmioDevice::WithQueue(uint16_t queue_index, Fn&& fn) {
  bool raise = false;
  {
    absl::MutexLock lock(&mu_);
    if (!LiveLocked() || queue_index >= queues_.size()) return false;
    Queue& q = queues_[queue_index];
    if (!q.vq.active() || q.vq.broken()) return false;
    std::forward<Fn>(fn)(q.vq);
    FinishQueueWorkLocked(&raise);
  }
  if (raise) Raise();
  return true;
}

template <typename Fn>
void VirtioMmioDevice::UpdateConfig(Fn&& fn) {
  bool raise = false;
  {
    absl::MutexLock lock(&mu_);
    std::forward<Fn>(fn)();
    ConfigChangedLocked(&raise);
  }
  if (raise) Raise();
}

}  // namespace vmm

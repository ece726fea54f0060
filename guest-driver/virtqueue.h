// Virtqueue: the driver side of one split virtqueue (virtio 1.2 §2.7), independent
// of the transport. It owns the ring memory (descriptor table, available ring, used
// ring; allocated through VirtioEnv) and a driver-private shadow of every
// descriptor's chain link, so nothing the device can write is ever trusted for the
// driver's own bookkeeping.
//
// Per-request cost is kept small for the emulated CPL0 of docs/platform.md: Add writes
// one descriptor per buffer plus two ring stores; PollUsed reads the used index and
// one used entry and walks the chain's shadow links; no loop touches the whole ring
// outside Init/ResetRing/DetachInFlight.
//
// Device input is validated (Firecracker's rule, turned around: the guest never
// trusts the device either). A used index that runs ahead of what is in flight, a
// used id out of range or not the head of an in-flight chain, or a used length
// larger than the chain's device-writable bytes marks the queue broken: every later
// call returns kDeviceError until the device is reset, the in-flight buffers are
// reclaimed with DetachInFlight and the queue is set up again.
//
// Not supported: indirect descriptors (VIRTIO_F_INDIRECT_DESC), packed rings,
// VIRTIO_F_IN_ORDER. VIRTIO_F_EVENT_IDX is supported when negotiated.
//
// Thread safety: none. One CPU at a time, with interrupts that call PollUsed either
// masked or serialised with Add by the caller.
#ifndef GUEST_DRIVER_VIRTQUEUE_H_
#define GUEST_DRIVER_VIRTQUEUE_H_

#include <cstddef>
#include <cstdint>

#include "guest-driver/virtio_env.h"
#include "guest-driver/virtio_spec.h"
#include "guest-driver/virtio_status.h"

namespace guest_driver {

// One element of a scatter-gather list: a guest-physical buffer the device reads
// (device_writable false) or writes (true).
struct VirtqBuffer {
  uint64_t gpa = 0;
  uint32_t len = 0;
  bool device_writable = false;
};

// A chain the device has finished with: its head (the token Add returned) and how
// many bytes the device says it wrote into the chain's writable buffers.
struct VirtqCompletion {
  uint16_t head = 0;
  uint32_t written_len = 0;
};

// Why the queue was marked broken (diagnostics and tests).
enum class VirtqDeviceError : uint8_t {
  kNone = 0,
  kUsedIdxRunsAhead,   // used.idx advanced by more than the chains in flight.
  kUsedIdOutOfRange,   // used id >= queue size.
  kUsedIdNotInFlight,  // used id is not the head of a chain the driver made available.
  kUsedLenTooLarge,    // used len > the chain's device-writable bytes.
};

class Virtqueue {
 public:
  constexpr Virtqueue() = default;
  Virtqueue(const Virtqueue&) = delete;
  Virtqueue& operator=(const Virtqueue&) = delete;

  // Device-visible bytes for a queue of `size` entries: descriptor table, available
  // ring with used_event, used ring with avail_event, laid out back to back with
  // the alignments of §2.7 (16, 2 and 4 bytes).
  static constexpr size_t DescBytes(uint32_t size) { return sizeof(VirtqDesc) * size_t{size}; }
  static constexpr size_t UsedOffset(uint32_t size) {
    return (DescBytes(size) + VirtqAvailBytes(size) + kVirtqUsedAlign - 1) & ~(kVirtqUsedAlign - 1);
  }
  static constexpr size_t RingBytes(uint32_t size) { return UsedOffset(size) + VirtqUsedBytes(size); }

  // Allocates (or, if this queue already has memory for `size` entries, reuses) the
  // rings and resets them to empty. `size` must be a power of two in 1..32768.
  // `event_idx` says whether VIRTIO_F_EVENT_IDX was negotiated. Called by the
  // transport's queue setup, before the device is told the ring addresses.
  VirtioStatus Init(VirtioEnv& env, uint16_t queue_index, uint32_t size, bool event_idx);

  // Returns the ring memory to the environment. Only after the device was reset (or
  // never told about the queue): the device may otherwise still write into it.
  void Release();

  // Empties the rings and frees every descriptor, forgetting in-flight chains. For
  // use after a device reset, once DetachInFlight has handed them back.
  void ResetRing();

  // Adds a chain of `count` buffers (readable ones first, then writable ones, as
  // §2.7.5.2 requires) and makes it available to the device. On kOk, *head is the
  // chain's token, which PollUsed reports back. Returns kRingFull if fewer than
  // `count` descriptors are free (nothing is changed), kInvalidArgument for an empty
  // chain, a zero-length or address-wrapping buffer, a readable buffer after a
  // writable one, a chain longer than 2^32 - 1 bytes or longer than the queue.
  // Does not notify the device: call the transport's Kick after one or more Adds.
  VirtioStatus Add(const VirtqBuffer* buffers, uint32_t count, uint16_t* head);

  // After Adds: returns whether the device needs an available buffer notification
  // (honours VIRTQ_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX; §2.7.10), and
  // records the point up to which the device has been told.
  bool KickPrepare();

  // Takes the next used chain: kOk with *out filled and the chain's descriptors
  // free again, kEmpty when the device has returned nothing new, kDeviceError when
  // the device broke the protocol (see the header comment), kBadState before Init.
  VirtioStatus PollUsed(VirtqCompletion* out);

  // Whether PollUsed would return something (or find an error). One ring read.
  bool HasUsed() const;

  // Used buffer notification suppression (§2.7.7). Both are hints the device may
  // ignore. EnableInterrupts returns true if used entries are already waiting, in
  // which case the caller must poll again rather than wait for an interrupt.
  void DisableInterrupts();
  [[nodiscard]] bool EnableInterrupts();

  // After a device reset only: hands back one chain that was still in flight (its
  // head in *head) and frees its descriptors; kEmpty when none is left. Works on a
  // broken queue, which is its main use.
  VirtioStatus DetachInFlight(uint16_t* head);

  bool is_set_up() const { return ring_ != nullptr; }
  bool broken() const { return device_error_ != VirtqDeviceError::kNone; }
  VirtqDeviceError device_error() const { return device_error_; }
  uint16_t queue_index() const { return queue_index_; }
  uint32_t size() const { return size_; }
  uint32_t num_free() const { return num_free_; }
  uint32_t num_in_flight() const { return num_in_flight_; }
  bool event_idx() const { return event_idx_; }
  uint64_t desc_gpa() const { return ring_gpa_; }
  uint64_t avail_gpa() const { return ring_gpa_ + DescBytes(size_); }
  uint64_t used_gpa() const { return ring_gpa_ + UsedOffset(size_); }

  // Counters, in the style of the rest of the project's observability.
  uint64_t num_added() const { return num_added_; }
  uint64_t num_used() const { return num_used_; }
  uint64_t num_notifies() const { return num_notifies_; }
  uint64_t num_notifies_suppressed() const { return num_notifies_suppressed_; }

 private:
  // Driver-private state per descriptor. `next` is the shadow chain/free-list link;
  // `chain_len` is non-zero only on the head of an in-flight chain.
  struct DescState {
    uint32_t writable_len;
    uint16_t next;
    uint16_t chain_len;
  };
  static_assert(sizeof(DescState) == 8);

  static constexpr size_t PagesFor(size_t bytes) { return (bytes + kPageSize - 1) / kPageSize; }

  VirtioStatus Fail(VirtqDeviceError reason);
  void FreeChain(uint16_t head);
  uint16_t LoadUsedIdx() const { return *used_idx_; }

  VirtioEnv* env_ = nullptr;
  uint8_t* ring_ = nullptr;  // Device-visible memory, RingBytes(size_) long.
  uint64_t ring_gpa_ = 0;
  DescState* state_ = nullptr;  // Driver-private, size_ entries.
  uint64_t state_gpa_ = 0;

  VirtqDesc* desc_ = nullptr;
  volatile uint16_t* avail_flags_ = nullptr;
  volatile uint16_t* avail_idx_ = nullptr;
  volatile uint16_t* avail_ring_ = nullptr;
  volatile uint16_t* used_event_ = nullptr;  // In the available ring; driver-written.
  const volatile uint16_t* used_flags_ = nullptr;
  const volatile uint16_t* used_idx_ = nullptr;
  const volatile VirtqUsedElem* used_ring_ = nullptr;
  const volatile uint16_t* avail_event_ = nullptr;  // In the used ring; device-written.

  uint32_t size_ = 0;
  uint16_t queue_index_ = 0;
  bool event_idx_ = false;
  bool interrupts_disabled_ = false;
  VirtqDeviceError device_error_ = VirtqDeviceError::kNone;

  uint16_t free_head_ = 0;
  uint32_t num_free_ = 0;
  uint32_t num_in_flight_ = 0;  // Chains, not descriptors.
  uint16_t avail_idx_shadow_ = 0;   // Free-running, wraps at 2^16 (§2.7.6).
  uint16_t kicked_avail_idx_ = 0;   // avail_idx_shadow_ at the last KickPrepare.
  uint16_t last_used_idx_ = 0;      // Next used entry to read; free-running.
  uint32_t detach_cursor_ = 0;

  uint64_t num_added_ = 0;
  uint64_t num_used_ = 0;
  uint64_t num_notifies_ = 0;
  uint64_t num_notifies_suppressed_ = 0;
};

}  // namespace guest_driver

#endif  // GUEST_DRIVER_VIRTQUEUE_H_

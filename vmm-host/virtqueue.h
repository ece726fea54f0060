// Virtqueue: the device side of one split virtqueue (OASIS virtio 1.2 §2.7), over
// guest RAM reached only through GuestMemory.
//
// The guest writes the descriptor table and the available ring; the device reads
// them and writes the used ring. Everything the guest wrote is checked at the
// edge, in the manner of Firecracker's queue.rs:
//   - at activation (QueueReady): the size is a power of two no larger than the
//     queue's maximum, the three rings are aligned as §2.7 requires (16, 2 and 4
//     bytes) and lie wholly in RAM;
//   - per available entry: avail.idx runs at most `size` entries ahead of what
//     the device consumed, and no more chains are in flight than the queue has
//     descriptors;
//   - per descriptor: its index is below the queue size, the chain has at most
//     `size` descriptors (so a loop ends), INDIRECT is refused (never offered),
//     [addr, addr + len) neither wraps past 2^64 nor leaves RAM
//     (GuestMemory::Accessible, overflow-safe, page by page when RAM is not
//     host-contiguous), no device-readable descriptor follows a device-writable one
//     (§2.7.4.2), and each part's total stays below 2^32 (used.len is 32 bits).
// Each descriptor is copied out of guest memory once; the chain handed to the
// device model holds those copies, so a guest rewriting a descriptor after the
// check changes nothing the device uses (no double fetch).
//
// A violation is counted (VirtqueueCounters, one counter per kind), logged within
// a per-device budget, and breaks the queue: it stops consuming and producing
// until the driver resets it, and the transport sets DEVICE_NEEDS_RESET (§2.1.2).
// Nothing a guest writes can crash the host or make it touch memory outside RAM.
//
// Memory ordering (§2.7.13, §2.7.14): avail.idx is loaded, then an acquire fence
// orders the ring and descriptor reads after it. A used element is written, then
// a release store publishes used.idx. Before deciding whether to interrupt, a full
// fence orders the used.idx store before the load of the driver's suppression
// flag or used_event.
//
// VIRTIO_F_EVENT_IDX (§2.7.10) is supported when negotiated: the device writes
// avail_event after each pop and honours used_event; without it the device
// honours VIRTQ_AVAIL_F_NO_INTERRUPT and never sets VIRTQ_USED_F_NO_NOTIFY.
//
// Cost: Pop reads the avail index, one ring entry and each descriptor of the
// chain (one RAM check each); PushUsed writes one element and the index.
// Nothing allocates once a DescriptorChain's buffer vector has grown to the
// longest chain seen.
//
// Thread safety: none. The owning transport (VirtioMmioDevice) serialises every
// call under its lock; a device model sees a Virtqueue only inside transport
// callbacks or VirtioMmioDevice::WithQueue.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "base/addr.h"
#include "base/counters.h"
#include "vmm-host/guest_memory.h"

namespace vmm {

// Split-ring layout and flags, virtio 1.2 §2.7 (written from the spec for the
// device side; the guest driver has its own copy, and the end-to-end test checks
// that the two agree).
namespace virtq {
inline constexpr uint32_t kMaxSize = 32768;           // §2.7: Queue Size <= 32768.
inline constexpr uint16_t kDescFNext = 1;             // VIRTQ_DESC_F_NEXT
inline constexpr uint16_t kDescFWrite = 2;            // VIRTQ_DESC_F_WRITE
inline constexpr uint16_t kDescFIndirect = 4;         // VIRTQ_DESC_F_INDIRECT
inline constexpr uint16_t kAvailFNoInterrupt = 1;     // VIRTQ_AVAIL_F_NO_INTERRUPT
inline constexpr uint16_t kUsedFNoNotify = 1;         // VIRTQ_USED_F_NO_NOTIFY
inline constexpr uint64_t kDescBytes = 16;            // struct virtq_desc
inline constexpr uint64_t kUsedElemBytes = 8;         // struct virtq_used_elem
inline constexpr uint64_t kDescAlign = 16;            // §2.7 alignment table
inline constexpr uint64_t kAvailAlign = 2;
inline constexpr uint64_t kUsedAlign = 4;
inline constexpr uint64_t kRingHeaderBytes = 4;       // flags, idx
constexpr uint64_t DescTableBytes(uint32_t size) { return kDescBytes * size; }
// Including used_event / avail_event, which §2.7 counts whether or not
// VIRTIO_F_EVENT_IDX is negotiated.
constexpr uint64_t AvailRingBytes(uint32_t size) { return 6 + 2 * uint64_t{size}; }
constexpr uint64_t UsedRingBytes(uint32_t size) { return 6 + kUsedElemBytes * size; }

// §2.7.7.2 vring_need_event: should the device interrupt, given the driver's
// used_event, the new used index and the index at the last check?
constexpr bool NeedEvent(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}
}  // namespace virtq

#define VMM_VIRTQUEUE_COUNTERS(X)                 \
  X(ChainsPopped, chains_popped)                  \
  X(UsedPushed, used_pushed)                      \
  X(InterruptsSuppressed, interrupts_suppressed)  \
  X(BadQueueSize, bad_queue_size)                 \
  X(BadRingAddress, bad_ring_address)             \
  X(RingUnreadable, ring_unreadable)              \
  X(AvailIdxJump, avail_idx_jump)                 \
  X(AvailOvercommit, avail_overcommit)            \
  X(DescOutOfRange, desc_out_of_range)            \
  X(ChainLoop, chain_loop)                        \
  X(IndirectDesc, indirect_desc)                  \
  X(BufferAddrWrap, buffer_addr_wrap)             \
  X(BufferOutOfRam, buffer_out_of_ram)            \
  X(ChainLenOverflow, chain_len_overflow)         \
  X(ReadableAfterWritable, readable_after_writable) \
  X(DeviceRejected, device_rejected)              \
  X(UsedPushInvalid, used_push_invalid)           \
  X(UsedLenClamped, used_len_clamped)
BASE_DEFINE_COUNTERS(VirtqueueCounters, VMM_VIRTQUEUE_COUNTERS);

// Why a queue is broken. kNone: it is not.
enum class VirtqueueError : uint8_t {
  kNone = 0,
  kBadQueueSize,          // QueueNum 0, not a power of two, or above QueueNumMax.
  kBadRingAddress,        // A ring misaligned or not wholly in RAM.
  kRingUnreadable,        // A ring access failed after activation (RAM changed).
  kAvailIdxJump,          // avail.idx more than `size` ahead of the device.
  kAvailOvercommit,       // More chains in flight than the queue has descriptors.
  kDescOutOfRange,        // A head or next index >= size.
  kChainLoop,             // More than `size` descriptors in one chain.
  kIndirectDesc,          // VIRTQ_DESC_F_INDIRECT, which is never offered.
  kBufferAddrWrap,        // addr + len wraps past 2^64.
  kBufferOutOfRam,        // [addr, addr + len) not wholly in one RAM range.
  kChainLenOverflow,      // The readable or writable part is 2^32 bytes or more.
  kReadableAfterWritable, // §2.7.4.2 ordering broken.
  kDeviceRejected,        // The device model refused a chain (Virtqueue::Fail).
};
std::string_view VirtqueueErrorName(VirtqueueError error);
// The counter that counts `error` (kDeviceRejected for kNone, which is never counted).
VirtqueueCounters::Id VirtqueueErrorCounter(VirtqueueError error);

// Limits how many guest-caused problems one device logs, so a guest that breaks
// its queues in a loop cannot flood the host log. Counting is never limited.
class LogBudget {
 public:
  explicit LogBudget(uint32_t messages) : left_(messages) {}
  // True if this message may be logged. The call that spends the last unit
  // also sets *last so the caller can say further messages are suppressed.
  bool Take(bool* last = nullptr) {
    uint32_t left = left_.load(std::memory_order_relaxed);
    while (left > 0) {
      if (left_.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
        if (last != nullptr) *last = (left == 1);
        return true;
      }
    }
    return false;
  }

 private:
  std::atomic<uint32_t> left_;
};

// One guest buffer of a validated chain: [gpa, gpa + len) lies in RAM. It need
// not be host-contiguous: access it with GuestMemory::Read/Write (or the chain's
// ReadReadable/WriteWritable), not one HostPtr over the whole buffer.
struct ChainBuffer {
  base::Gpa gpa;
  uint32_t len = 0;
  bool writable = false;  // Device-writable (VIRTQ_DESC_F_WRITE).
};

// What PushUsed needs to return a chain; small enough to keep per request (a
// device that holds a buffer for later, like the balloon's stats queue).
struct ChainToken {
  uint16_t head = 0;
  uint32_t generation = 0;  // Queue activation the chain came from.
  uint32_t writable_bytes = 0;
};

// A validated descriptor chain popped from the available ring. Caller-owned and
// reusable: Pop refills it, reusing the buffer vector's capacity.
class DescriptorChain {
 public:
  DescriptorChain() = default;

  uint16_t head() const { return token_.head; }
  ChainToken token() const { return token_; }
  // Device-readable buffers first, then device-writable ones.
  std::span<const ChainBuffer> buffers() const { return buffers_; }
  std::span<const ChainBuffer> readable() const {
    return std::span<const ChainBuffer>(buffers_).first(num_readable_);
  }
  std::span<const ChainBuffer> writable() const {
    return std::span<const ChainBuffer>(buffers_).subspan(num_readable_);
  }
  uint32_t readable_bytes() const { return readable_bytes_; }
  uint32_t writable_bytes() const { return token_.writable_bytes; }

  // Copies up to `len` bytes of the readable part, starting `offset` bytes into
  // it, to `out`. Returns the bytes copied: fewer at the end of the readable part
  // (or if RAM no longer holds a buffer).
  uint64_t ReadReadable(GuestMemory& mem, uint64_t offset, void* out, uint64_t len) const;
  // Copies up to `len` bytes from `in` into the writable part, starting `offset`
  // bytes into it. Returns the bytes copied.
  uint64_t WriteWritable(GuestMemory& mem, uint64_t offset, const void* in, uint64_t len) const;

 private:
  friend class Virtqueue;
  void Clear() {
    buffers_.clear();
    num_readable_ = 0;
    readable_bytes_ = 0;
    token_ = ChainToken{};
  }

  std::vector<ChainBuffer> buffers_;
  uint32_t num_readable_ = 0;
  uint32_t readable_bytes_ = 0;
  ChainToken token_;
};

// The ring geometry the driver programmed (QueueNum, QueueDesc/Driver/Device).
struct VirtqueueConfig {
  uint32_t size = 0;
  base::Gpa desc;
  base::Gpa avail;  // "driver area"
  base::Gpa used;   // "device area"
};

class Virtqueue {
 public:
  enum class PopStatus : uint8_t {
    kOk,      // *chain holds the next validated chain.
    kEmpty,   // Nothing available (or the queue is not active).
    kBroken,  // The queue is broken (now or before); see error().
  };

  // `counters` and `log` belong to the transport and outlive the queue.
  Virtqueue(GuestMemory& mem, uint16_t index, VirtqueueCounters* counters, LogBudget* log)
      : mem_(&mem), index_(index), counters_(counters), log_(log) {}
  Virtqueue(const Virtqueue&) = delete;
  Virtqueue& operator=(const Virtqueue&) = delete;
  Virtqueue(Virtqueue&&) = default;

  // QueueReady 1: checks the geometry (see the header comment) and starts the
  // queue at avail/used index 0. On a violation the queue is broken and the
  // error returned. `max_size` is the queue's QueueNumMax.
  VirtqueueError Activate(const VirtqueueConfig& config, uint32_t max_size, bool event_idx) noexcept;

  // Device reset or QueueReady 0: forgets the rings and any error. Chains still
  // held by the device model can no longer be pushed (their generation is stale).
  void Reset() noexcept;

  // Takes the next available chain and validates all of it.
  [[nodiscard]] PopStatus Pop(DescriptorChain* chain) noexcept;

  // Returns a chain to the driver with the number of bytes written into its
  // writable part (clamped to the writable size). False, and counted as
  // used_push_invalid, for a stale token (queue reset since the pop), an inactive
  // or broken queue, or a token not in flight: a device-model bug, never fatal.
  bool PushUsed(const ChainToken& token, uint32_t written_len) noexcept;
  bool PushUsed(const DescriptorChain& chain, uint32_t written_len) noexcept {
    return PushUsed(chain.token(), written_len);
  }

  // After one or more PushUsed: whether the driver wants a used buffer
  // notification for them (§2.7.7, §2.7.10). Consumes the pushes: a second call
  // without new pushes returns false.
  bool NeedsInterrupt() noexcept;

  // For device models: refuse the current chain for a device-specific reason
  // (e.g. a writable buffer where the device only reads). Breaks the queue like
  // any other violation, counted as device_rejected; `what` is logged.
  void Fail(std::string_view what) noexcept;

  bool active() const { return active_; }
  bool broken() const { return error_ != VirtqueueError::kNone; }
  VirtqueueError error() const { return error_; }
  uint16_t index() const { return index_; }
  uint32_t size() const { return config_.size; }
  bool event_idx() const { return event_idx_; }
  uint16_t last_avail_idx() const { return last_avail_idx_; }
  uint16_t used_idx() const { return used_idx_; }
  uint32_t in_flight() const { return in_flight_; }
  uint32_t generation() const { return generation_; }
  const VirtqueueConfig& config() const { return config_; }

 private:
  // Marks the queue broken with `error`, counts and (within budget) logs it.
  void Break(VirtqueueError error, uint64_t detail_a = 0, uint64_t detail_b = 0) noexcept;
  // Host pointers to ring words; nullptr (and the queue broken) if RAM moved.
  uint16_t* RingWord(base::Gpa gpa) noexcept;
  base::Gpa AvailEntry(uint32_t slot) const { return config_.avail + (4 + 2 * uint64_t{slot}); }
  base::Gpa UsedEventAddr() const { return config_.avail + (4 + 2 * uint64_t{config_.size}); }
  base::Gpa AvailEventAddr() const {
    return config_.used + (4 + virtq::kUsedElemBytes * config_.size);
  }

  GuestMemory* mem_;
  uint16_t index_;
  VirtqueueCounters* counters_;
  LogBudget* log_;

  VirtqueueConfig config_;
  bool active_ = false;
  bool event_idx_ = false;
  VirtqueueError error_ = VirtqueueError::kNone;
  uint32_t generation_ = 0;
  uint16_t last_avail_idx_ = 0;      // Next available entry to consume (free-running).
  uint16_t used_idx_ = 0;            // Device's used.idx (free-running).
  uint16_t signalled_used_idx_ = 0;  // used_idx_ at the last NeedsInterrupt.
  uint32_t in_flight_ = 0;           // Chains popped and not yet pushed.
};

}  // namespace vmm

#include "vmm-host/virtqueue.h"

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "base/log.h"

namespace vmm {
namespace {

bool IsPowerOfTwo(uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

// Ring indices are 16-bit words in memory the guest writes concurrently, so they
// are accessed atomically. Ring addresses are validated as aligned at activation
// and guest RAM is mapped page-aligned, so the host pointer is aligned too.
uint16_t LoadWord(uint16_t* p, std::memory_order order) {
  return std::atomic_ref<uint16_t>(*p).load(order);
}
void StoreWord(uint16_t* p, uint16_t value, std::memory_order order) {
  std::atomic_ref<uint16_t>(*p).store(value, order);
}

// Copies between a host buffer and a span of chain buffers, starting `offset`
// bytes into the span. Returns the bytes copied.
template <typename Copy>
uint64_t CopyChain(std::span<const ChainBuffer> buffers, uint64_t offset, uint64_t len, Copy copy) {
  uint64_t done = 0;
  for (const ChainBuffer& b : buffers) {
    if (done == len) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(b.len - offset, len - done);
    if (!copy(b.gpa + offset, done, n)) break;
    done += n;
    offset = 0;
  }
  return done;
}

}  // namespace

std::string_view VirtqueueErrorName(VirtqueueError error) {
  switch (error) {
    case VirtqueueError::kNone: return "none";
    case VirtqueueError::kBadQueueSize: return "bad_queue_size";
    case VirtqueueError::kBadRingAddress: return "bad_ring_address";
    case VirtqueueError::kRingUnreadable: return "ring_unreadable";
    case VirtqueueError::kAvailIdxJump: return "avail_idx_jump";
    case VirtqueueError::kAvailOvercommit: return "avail_overcommit";
    case VirtqueueError::kDescOutOfRange: return "desc_out_of_range";
    case VirtqueueError::kChainLoop: return "chain_loop";
    case VirtqueueError::kIndirectDesc: return "indirect_desc";
    case VirtqueueError::kBufferAddrWrap: return "buffer_addr_wrap";
    case VirtqueueError::kBufferOutOfRam: return "buffer_out_of_ram";
    case VirtqueueError::kChainLenOverflow: return "chain_len_overflow";
    case VirtqueueError::kReadableAfterWritable: return "readable_after_writable";
    case VirtqueueError::kDeviceRejected: return "device_rejected";
  }
  return "unknown";
}

VirtqueueCounters::Id VirtqueueErrorCounter(VirtqueueError error) {
  switch (error) {
    case VirtqueueError::kBadQueueSize: return VirtqueueCounters::kBadQueueSize;
    case VirtqueueError::kBadRingAddress: return VirtqueueCounters::kBadRingAddress;
    case VirtqueueError::kRingUnreadable: return VirtqueueCounters::kRingUnreadable;
    case VirtqueueError::kAvailIdxJump: return VirtqueueCounters::kAvailIdxJump;
    case VirtqueueError::kAvailOvercommit: return VirtqueueCounters::kAvailOvercommit;
    case VirtqueueError::kDescOutOfRange: return VirtqueueCounters::kDescOutOfRange;
    case VirtqueueError::kChainLoop: return VirtqueueCounters::kChainLoop;
    case VirtqueueError::kIndirectDesc: return VirtqueueCounters::kIndirectDesc;
    case VirtqueueError::kBufferAddrWrap: return VirtqueueCounters::kBufferAddrWrap;
    case VirtqueueError::kBufferOutOfRam: return VirtqueueCounters::kBufferOutOfRam;
    case VirtqueueError::kChainLenOverflow: return VirtqueueCounters::kChainLenOverflow;
    case VirtqueueError::kReadableAfterWritable: return VirtqueueCounters::kReadableAfterWritable;
    case VirtqueueError::kNone:
    case VirtqueueError::kDeviceRejected: return VirtqueueCounters::kDeviceRejected;
  }
  return VirtqueueCounters::kDeviceRejected;
}

// ---- DescriptorChain ----

uint64_t DescriptorChain::ReadReadable(GuestMemory& mem, uint64_t offset, void* out,
                                       uint64_t len) const {
  auto* dst = static_cast<uint8_t*>(out);
  return CopyChain(readable(), offset, len, [&](base::Gpa gpa, uint64_t at, uint64_t n) {
    return mem.Read(gpa, dst + at, n);
  });
}

uint64_t DescriptorChain::WriteWritable(GuestMemory& mem, uint64_t offset, const void* in,
                                        uint64_t len) const {
  const auto* src = static_cast<const uint8_t*>(in);
  return CopyChain(writable(), offset, len, [&](base::Gpa gpa, uint64_t at, uint64_t n) {
    return mem.Write(gpa, src + at, n);
  });
}

// ---- Virtqueue ----

void Virtqueue::Break(VirtqueueError error, uint64_t detail_a, uint64_t detail_b) noexcept {
  if (error_ == VirtqueueError::kNone) error_ = error;
  counters_->Inc(VirtqueueErrorCounter(error));
  bool last = false;
  if (log_ != nullptr && log_->Take(&last)) {
    LOG(WARNING) << "virtqueue " << index_ << ": guest broke the queue: "
                 << VirtqueueErrorName(error) << " (0x" << std::hex << detail_a << ", 0x"
                 << detail_b << std::dec << "); the device needs a reset"
                 << (last ? " [further virtio warnings of this device suppressed]" : "");
  }
}

void Virtqueue::Fail(std::string_view what) noexcept {
  if (error_ == VirtqueueError::kNone) error_ = VirtqueueError::kDeviceRejected;
  counters_->Inc(VirtqueueCounters::kDeviceRejected);
  bool last = false;
  if (log_ != nullptr && log_->Take(&last)) {
    LOG(WARNING) << "virtqueue " << index_ << ": device refused a chain: " << what
                 << "; the device needs a reset"
                 << (last ? " [further virtio warnings of this device suppressed]" : "");
  }
}

uint16_t* Virtqueue::RingWord(base::Gpa gpa) noexcept {
  // Guest input: ring addresses were checked at activation; RAM is re-checked
  // on every access through HostPtr anyway.
  uint8_t* p = mem_->HostPtr(gpa, 2);
  if (p == nullptr) [[unlikely]] {
    Break(VirtqueueError::kRingUnreadable, gpa.value());
    return nullptr;
  }
  DCHECK_EQ(reinterpret_cast<uintptr_t>(p) % 2, 0u) << "GuestMemory broke gpa alignment";
  return reinterpret_cast<uint16_t*>(p);
}

VirtqueueError Virtqueue::Activate(const VirtqueueConfig& config, uint32_t max_size,
                                   bool event_idx) noexcept {
  Reset();
  config_ = config;
  event_idx_ = event_idx;
  const uint32_t size = config.size;
  // Guest input: QueueNum (§2.7: a power of two, at most 32768, and here at most
  // QueueNumMax).
  if (!IsPowerOfTwo(size) || size > max_size || size > virtq::kMaxSize) {
    Break(VirtqueueError::kBadQueueSize, size, max_size);
    return error_;
  }
  // Guest input: the three ring addresses (§2.7 alignment table), each ring
  // wholly in one RAM range. Sizes are at most 16 * 32768 bytes: no overflow.
  struct Ring {
    base::Gpa gpa;
    uint64_t bytes;
    uint64_t align;
  };
  const Ring rings[] = {
      {config.desc, virtq::DescTableBytes(size), virtq::kDescAlign},
      {config.avail, virtq::AvailRingBytes(size), virtq::kAvailAlign},
      {config.used, virtq::UsedRingBytes(size), virtq::kUsedAlign},
  };
  for (const Ring& r : rings) {
    if (r.gpa.value() % r.align != 0 || !mem_->Accessible(r.gpa, r.bytes)) {
      Break(VirtqueueError::kBadRingAddress, r.gpa.value(), r.bytes);
      return error_;
    }
  }
  active_ = true;
  return VirtqueueError::kNone;
}

void Virtqueue::Reset() noexcept {
  config_ = VirtqueueConfig{};
  active_ = false;
  event_idx_ = false;
  error_ = VirtqueueError::kNone;
  ++generation_;
  last_avail_idx_ = 0;
  used_idx_ = 0;
  signalled_used_idx_ = 0;
  in_flight_ = 0;
}

Virtqueue::PopStatus Virtqueue::Pop(DescriptorChain* chain) noexcept {
  chain->Clear();
  if (broken()) return PopStatus::kBroken;
  if (!active_) return PopStatus::kEmpty;
  const uint32_t size = config_.size;

  uint16_t* avail_idx_word = RingWord(config_.avail + 2);
  if (avail_idx_word == nullptr) return PopStatus::kBroken;
  // Acquire: the ring entry and descriptors are read after the index (§2.7.13.3
  // has the driver publish them before it).
  uint16_t avail_idx = LoadWord(avail_idx_word, std::memory_order_acquire);
  uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_idx_);
  if (pending == 0 && event_idx_) {
    // §2.7.10: ask to be notified of the next entry, then look again, so that an
    // entry added between the load above and this store is not missed.
    uint16_t* avail_event = RingWord(AvailEventAddr());
    if (avail_event == nullptr) return PopStatus::kBroken;
    StoreWord(avail_event, last_avail_idx_, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    avail_idx = LoadWord(avail_idx_word, std::memory_order_acquire);
    pending = static_cast<uint16_t>(avail_idx - last_avail_idx_);
  }
  if (pending == 0) return PopStatus::kEmpty;
  // Guest input: avail.idx may be anything; a driver can only be `size` entries
  // ahead of the device (§2.7.6), and an index that moved back looks like a jump.
  if (pending > size) {
    Break(VirtqueueError::kAvailIdxJump, avail_idx, last_avail_idx_);
    return PopStatus::kBroken;
  }
  // Guest input: every in-flight chain holds at least one descriptor, so a
  // driver cannot have more than `size` in flight; this also bounds the
  // per-chain state a device model keeps.
  if (in_flight_ >= size) {
    Break(VirtqueueError::kAvailOvercommit, in_flight_, size);
    return PopStatus::kBroken;
  }

  uint16_t* entry = RingWord(AvailEntry(last_avail_idx_ % size));
  if (entry == nullptr) return PopStatus::kBroken;
  const uint16_t head = LoadWord(entry, std::memory_order_relaxed);

  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
  uint32_t num_descs = 0;
  uint16_t index = head;
  for (;;) {
    // Guest input: head and next indices index the descriptor table.
    if (index >= size) {
      Break(VirtqueueError::kDescOutOfRange, index, head);
      chain->Clear();
      return PopStatus::kBroken;
    }
    // Guest input: a chain visits each descriptor at most once, so one longer
    // than the table loops (§2.7.5.3.1 bounds it by the queue size).
    if (++num_descs > size) {
      Break(VirtqueueError::kChainLoop, head, num_descs);
      chain->Clear();
      return PopStatus::kBroken;
    }
    // One copy of the descriptor; only the copy is used from here on.
    uint8_t raw[virtq::kDescBytes];
    if (!mem_->Read(config_.desc + virtq::kDescBytes * index, raw, sizeof(raw))) {
      Break(VirtqueueError::kRingUnreadable, config_.desc.value(), index);
      chain->Clear();
      return PopStatus::kBroken;
    }
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
    std::memcpy(&addr, raw + 0, 8);
    std::memcpy(&len, raw + 8, 4);
    std::memcpy(&flags, raw + 12, 2);
    std::memcpy(&next, raw + 14, 2);

    // Guest input: INDIRECT is never offered (§2.7.5.3.1: the driver MUST NOT
    // set it without VIRTIO_F_INDIRECT_DESC).
    if (flags & virtq::kDescFIndirect) {
      Break(VirtqueueError::kIndirectDesc, index, addr);
      chain->Clear();
      return PopStatus::kBroken;
    }
    // Guest input: [addr, addr + len) must not wrap and must be RAM the host
    // can reach (Accessible is overflow-safe; the explicit check names the
    // failure). Device models access it with Read/Write or page by page.
    if (len > UINT64_MAX - addr) {
      Break(VirtqueueError::kBufferAddrWrap, addr, len);
      chain->Clear();
      return PopStatus::kBroken;
    }
    if (!mem_->Accessible(base::Gpa(addr), len)) {
      Break(VirtqueueError::kBufferOutOfRam, addr, len);
      chain->Clear();
      return PopStatus::kBroken;
    }
    const bool writable = (flags & virtq::kDescFWrite) != 0;
    if (writable) {
      writable_bytes += len;
    } else {
      // Guest input: §2.7.4.2, device-writable descriptors come after every
      // device-readable one.
      if (chain->buffers_.size() != chain->num_readable_) {
        Break(VirtqueueError::kReadableAfterWritable, index, head);
        chain->Clear();
        return PopStatus::kBroken;
      }
      readable_bytes += len;
      ++chain->num_readable_;
    }
    // Guest input: at most 32768 lengths below 2^32 each, so the 64-bit sums
    // cannot overflow; each part must fit used.len's 32 bits.
    if (readable_bytes > UINT32_MAX || writable_bytes > UINT32_MAX) {
      Break(VirtqueueError::kChainLenOverflow, readable_bytes, writable_bytes);
      chain->Clear();
      return PopStatus::kBroken;
    }
    chain->buffers_.push_back(ChainBuffer{base::Gpa(addr), len, writable});
    if ((flags & virtq::kDescFNext) == 0) break;
    index = next;
  }

  chain->readable_bytes_ = static_cast<uint32_t>(readable_bytes);
  chain->token_ = ChainToken{head, generation_, static_cast<uint32_t>(writable_bytes)};
  ++last_avail_idx_;
  ++in_flight_;
  counters_->Inc(VirtqueueCounters::kChainsPopped);
  if (event_idx_) {
    // §2.7.10: notify me once the driver goes past what I have consumed.
    if (uint16_t* avail_event = RingWord(AvailEventAddr())) {
      StoreWord(avail_event, last_avail_idx_, std::memory_order_relaxed);
    }
  }
  return PopStatus::kOk;
}

bool Virtqueue::PushUsed(const ChainToken& token, uint32_t written_len) noexcept {
  if (!active_ || broken() || token.generation != generation_ || token.head >= config_.size ||
      in_flight_ == 0) {
    counters_->Inc(VirtqueueCounters::kUsedPushInvalid);
    return false;
  }
  if (written_len > token.writable_bytes) {
    counters_->Inc(VirtqueueCounters::kUsedLenClamped);
    written_len = token.writable_bytes;
  }
  const uint32_t slot = used_idx_ % config_.size;
  uint8_t elem[virtq::kUsedElemBytes];
  const uint32_t id = token.head;
  std::memcpy(elem + 0, &id, 4);
  std::memcpy(elem + 4, &written_len, 4);
  if (!mem_->Write(config_.used + (virtq::kRingHeaderBytes + virtq::kUsedElemBytes * slot), elem,
                   sizeof(elem))) {
    Break(VirtqueueError::kRingUnreadable, config_.used.value(), slot);
    return false;
  }
  uint16_t* used_idx_word = RingWord(config_.used + 2);
  if (used_idx_word == nullptr) return false;
  ++used_idx_;
  // Release: the element is visible before the index that covers it (§2.7.14).
  StoreWord(used_idx_word, used_idx_, std::memory_order_release);
  --in_flight_;
  counters_->Inc(VirtqueueCounters::kUsedPushed);
  return true;
}

bool Virtqueue::NeedsInterrupt() noexcept {
  if (!active_ || broken() || used_idx_ == signalled_used_idx_) return false;
  const uint16_t old_idx = signalled_used_idx_;
  signalled_used_idx_ = used_idx_;
  // The used.idx store must be visible before we read the driver's wish, or a
  // driver that just re-enabled interrupts could miss this batch.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool need;
  if (event_idx_) {
    uint16_t* used_event = RingWord(UsedEventAddr());
    if (used_event == nullptr) return false;
    need = virtq::NeedEvent(LoadWord(used_event, std::memory_order_relaxed), used_idx_, old_idx);
  } else {
    uint16_t* flags = RingWord(config_.avail);
    if (flags == nullptr) return false;
    need = (LoadWord(flags, std::memory_order_relaxed) & virtq::kAvailFNoInterrupt) == 0;
  }
  if (!need) counters_->Inc(VirtqueueCounters::kInterruptsSuppressed);
  return need;
}

}  // namespace vmm

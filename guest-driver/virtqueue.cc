#include "guest-driver/virtqueue.h"

namespace guest_driver {
namespace {

constexpr bool IsPowerOfTwo(uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

VirtioStatus Virtqueue::Init(VirtioEnv& env, uint16_t queue_index, uint32_t size,
                             bool event_idx) {
  // §2.7: a split queue's size is a power of two no larger than 32768.
  if (!IsPowerOfTwo(size) || size > kMaxSplitQueueSize) return VirtioStatus::kInvalidArgument;
  if (ring_ != nullptr && (env_ != &env || size_ != size)) Release();
  if (ring_ == nullptr) {
    uint64_t ring_gpa = 0;
    void* ring = env.AllocZeroedPages(PagesFor(RingBytes(size)), &ring_gpa);
    if (ring == nullptr) return VirtioStatus::kNoMemory;
    uint64_t state_gpa = 0;
    void* state = env.AllocZeroedPages(PagesFor(sizeof(DescState) * size), &state_gpa);
    if (state == nullptr) {
      env.FreePages(ring, ring_gpa, PagesFor(RingBytes(size)));
      return VirtioStatus::kNoMemory;
    }
    env_ = &env;
    ring_ = static_cast<uint8_t*>(ring);
    ring_gpa_ = ring_gpa;
    state_ = static_cast<DescState*>(state);
    state_gpa_ = state_gpa;
    size_ = size;
    uint8_t* avail = ring_ + DescBytes(size);
    uint8_t* used = ring_ + UsedOffset(size);
    desc_ = reinterpret_cast<VirtqDesc*>(ring_);
    avail_flags_ = reinterpret_cast<volatile uint16_t*>(avail + kVirtqAvailFlagsOffset);
    avail_idx_ = reinterpret_cast<volatile uint16_t*>(avail + kVirtqAvailIdxOffset);
    avail_ring_ = reinterpret_cast<volatile uint16_t*>(avail + kVirtqAvailRingOffset);
    used_event_ = avail_ring_ + size;
    used_flags_ = reinterpret_cast<const volatile uint16_t*>(used + kVirtqUsedFlagsOffset);
    used_idx_ = reinterpret_cast<const volatile uint16_t*>(used + kVirtqUsedIdxOffset);
    used_ring_ = reinterpret_cast<const volatile VirtqUsedElem*>(used + kVirtqUsedRingOffset);
    avail_event_ = reinterpret_cast<const volatile uint16_t*>(used_ring_ + size);
  }
  queue_index_ = queue_index;
  event_idx_ = event_idx;
  ResetRing();
  return VirtioStatus::kOk;
}

void Virtqueue::Release() {
  if (ring_ == nullptr) return;
  env_->FreePages(ring_, ring_gpa_, PagesFor(RingBytes(size_)));
  env_->FreePages(state_, state_gpa_, PagesFor(sizeof(DescState) * size_));
  env_ = nullptr;
  ring_ = nullptr;
  state_ = nullptr;
  ring_gpa_ = state_gpa_ = 0;
  size_ = 0;
  num_free_ = num_in_flight_ = 0;
}

void Virtqueue::ResetRing() {
  if (ring_ == nullptr) return;
  // §2.7: after a reset both indices start at 0. The used ring is ours to clear
  // until the queue is made ready again.
  *avail_flags_ = 0;
  *avail_idx_ = 0;
  *used_event_ = 0;
  uint8_t* used = ring_ + UsedOffset(size_);
  *reinterpret_cast<volatile uint16_t*>(used + kVirtqUsedFlagsOffset) = 0;
  *reinterpret_cast<volatile uint16_t*>(used + kVirtqUsedIdxOffset) = 0;
  *reinterpret_cast<volatile uint16_t*>(used + kVirtqUsedRingOffset + sizeof(VirtqUsedElem) * size_) = 0;
  // The one loop over the whole queue: the free list through the shadow links.
  for (uint32_t i = 0; i < size_; ++i) {
    state_[i].writable_len = 0;
    state_[i].next = static_cast<uint16_t>(i + 1);  // size_ itself (or 0 at 32768) ends it.
    state_[i].chain_len = 0;
  }
  free_head_ = 0;
  num_free_ = size_;
  num_in_flight_ = 0;
  avail_idx_shadow_ = 0;
  kicked_avail_idx_ = 0;
  last_used_idx_ = 0;
  detach_cursor_ = 0;
  interrupts_disabled_ = false;
  device_error_ = VirtqDeviceError::kNone;
}

VirtioStatus Virtqueue::Add(const VirtqBuffer* buffers, uint32_t count, uint16_t* head) {
  if (ring_ == nullptr) return VirtioStatus::kBadState;
  if (broken()) return VirtioStatus::kDeviceError;
  if (buffers == nullptr || head == nullptr || count == 0 || count > size_) {
    return VirtioStatus::kInvalidArgument;
  }
  // Validate the whole chain before touching any state, so a refused chain leaves
  // the queue exactly as it was. §2.7.5.2: writable buffers follow readable ones,
  // and a chain is at most 2^32 bytes long (we keep it below so lengths fit 32 bits).
  uint64_t total_bytes = 0;
  uint64_t writable_bytes = 0;
  bool seen_writable = false;
  for (uint32_t i = 0; i < count; ++i) {
    const VirtqBuffer& b = buffers[i];
    if (b.len == 0 || b.gpa + b.len < b.gpa) return VirtioStatus::kInvalidArgument;
    if (b.device_writable) {
      seen_writable = true;
      writable_bytes += b.len;
    } else if (seen_writable) {
      return VirtioStatus::kInvalidArgument;
    }
    total_bytes += b.len;
  }
  if (total_bytes > UINT32_MAX) return VirtioStatus::kInvalidArgument;
  if (count > num_free_) return VirtioStatus::kRingFull;

  // §2.7.13.1: fill the descriptors, taken in free-list order so that the shadow
  // links already describe the chain.
  const uint16_t chain_head = free_head_;
  uint16_t idx = chain_head;
  for (uint32_t i = 0; i < count; ++i) {
    const VirtqBuffer& b = buffers[i];
    VirtqDesc& d = desc_[idx];
    const uint16_t next = state_[idx].next;
    d.addr = b.gpa;
    d.len = b.len;
    uint16_t flags = b.device_writable ? kVirtqDescFWrite : 0;
    if (i + 1 < count) {
      flags |= kVirtqDescFNext;
      d.next = next;
    } else {
      d.next = 0;
      free_head_ = next;
    }
    d.flags = flags;
    idx = next;
  }
  state_[chain_head].chain_len = static_cast<uint16_t>(count);
  state_[chain_head].writable_len = static_cast<uint32_t>(writable_bytes);
  num_free_ -= count;
  ++num_in_flight_;
  ++num_added_;

  // §2.7.13.2-3: place the head in the available ring, then (after a barrier, so the
  // device never sees the index before the entry and descriptors) bump avail.idx.
  avail_ring_[avail_idx_shadow_ & (size_ - 1)] = chain_head;
  VirtioWriteBarrier();
  avail_idx_shadow_ = static_cast<uint16_t>(avail_idx_shadow_ + 1);
  *avail_idx_ = avail_idx_shadow_;
  *head = chain_head;
  return VirtioStatus::kOk;
}

bool Virtqueue::KickPrepare() {
  if (ring_ == nullptr || broken()) return false;
  const uint16_t old_idx = kicked_avail_idx_;
  const uint16_t new_idx = avail_idx_shadow_;
  if (old_idx == new_idx) return false;  // Nothing added since the last notification.
  kicked_avail_idx_ = new_idx;
  // §2.7.13.4: the avail.idx store must be visible before the suppression fields
  // are read, or a device that just went idle could miss the new buffers.
  VirtioFullBarrier();
  bool notify;
  if (event_idx_) {
    // §2.7.10: notify iff avail_event lies in [old_idx, new_idx), modulo 2^16.
    const uint16_t event = *avail_event_;
    notify = static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
  } else {
    notify = (*used_flags_ & kVirtqUsedFNoNotify) == 0;
  }
  if (notify) {
    ++num_notifies_;
  } else {
    ++num_notifies_suppressed_;
  }
  return notify;
}

VirtioStatus Virtqueue::Fail(VirtqDeviceError reason) {
  device_error_ = reason;
  return VirtioStatus::kDeviceError;
}

void Virtqueue::FreeChain(uint16_t head) {
  const uint16_t chain_len = state_[head].chain_len;
  uint16_t last = head;
  for (uint16_t i = 1; i < chain_len; ++i) last = state_[last].next;
  state_[last].next = free_head_;
  free_head_ = head;
  num_free_ += chain_len;
  state_[head].chain_len = 0;
  state_[head].writable_len = 0;
  --num_in_flight_;
}

VirtioStatus Virtqueue::PollUsed(VirtqCompletion* out) {
  if (ring_ == nullptr || out == nullptr) return VirtioStatus::kBadState;
  if (broken()) return VirtioStatus::kDeviceError;
  const uint16_t used_idx = LoadUsedIdx();
  const uint16_t pending = static_cast<uint16_t>(used_idx - last_used_idx_);
  if (pending == 0) return VirtioStatus::kEmpty;
  // Guest input from the device: it can only have used chains that are in flight,
  // so a larger step (including one past the queue size) is a broken device.
  if (pending > num_in_flight_) return Fail(VirtqDeviceError::kUsedIdxRunsAhead);
  // §2.7.14: read the entry only after the index that covers it.
  VirtioReadBarrier();
  const volatile VirtqUsedElem& elem = used_ring_[last_used_idx_ & (size_ - 1)];
  const uint32_t id = elem.id;  // Each field read once: no double fetch.
  const uint32_t len = elem.len;
  // Device input: index state_ only after the range check.
  if (id >= size_) return Fail(VirtqDeviceError::kUsedIdOutOfRange);
  if (state_[id].chain_len == 0) return Fail(VirtqDeviceError::kUsedIdNotInFlight);
  // §2.7.8.1: the device must not claim more than the writable part of the chain.
  if (len > state_[id].writable_len) return Fail(VirtqDeviceError::kUsedLenTooLarge);
  FreeChain(static_cast<uint16_t>(id));
  last_used_idx_ = static_cast<uint16_t>(last_used_idx_ + 1);
  ++num_used_;
  if (event_idx_ && !interrupts_disabled_) {
    // §2.7.7: ask for an interrupt when the device uses the next entry.
    *used_event_ = last_used_idx_;
  }
  out->head = static_cast<uint16_t>(id);
  out->written_len = len;
  return VirtioStatus::kOk;
}

bool Virtqueue::HasUsed() const {
  if (ring_ == nullptr) return false;
  return broken() || LoadUsedIdx() != last_used_idx_;
}

void Virtqueue::DisableInterrupts() {
  if (ring_ == nullptr) return;
  interrupts_disabled_ = true;
  // §2.7.7.1: with EVENT_IDX the flags stay 0; used_event is simply no longer
  // advanced, so the device stops interrupting once it passes the old value.
  if (!event_idx_) *avail_flags_ = kVirtqAvailFNoInterrupt;
}

bool Virtqueue::EnableInterrupts() {
  if (ring_ == nullptr) return false;
  interrupts_disabled_ = false;
  if (event_idx_) {
    *used_event_ = last_used_idx_;
  } else {
    *avail_flags_ = 0;
  }
  // The re-enable must be visible before we look at used.idx once more, or an entry
  // the device added in between would raise no interrupt and sit unnoticed.
  VirtioFullBarrier();
  return HasUsed();
}

VirtioStatus Virtqueue::DetachInFlight(uint16_t* head) {
  if (ring_ == nullptr || head == nullptr) return VirtioStatus::kBadState;
  while (detach_cursor_ < size_) {
    const uint32_t i = detach_cursor_++;
    if (state_[i].chain_len != 0) {
      FreeChain(static_cast<uint16_t>(i));
      *head = static_cast<uint16_t>(i);
      return VirtioStatus::kOk;
    }
  }
  return VirtioStatus::kEmpty;
}

}  // namespace guest_driver

// FakeSplitRing: the driver side of one split virtqueue (virtio 1.2 §2.7) laid
// out in a FakeGuestMemory, written with raw stores so that tests can build both
// well-formed rings and hostile ones (loops, wild indices, wrapping buffers).
// Nothing here validates anything: that is the device's job.
//
// Layout: descriptor table, available ring and used ring in fresh zeroed pages,
// each at its §2.7 alignment, unless the test gives its own addresses.
//
// Single-threaded; test only.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "base/addr.h"
#include "tests/fakes/fake_guest_memory.h"
#include "vmm-host/virtqueue.h"

namespace vmm::testing {

class FakeSplitRing {
 public:
  struct Buf {
    uint64_t gpa;
    uint32_t len;
    bool writable = false;
  };

  FakeSplitRing(FakeGuestMemory& mem, uint32_t size) : mem_(mem), size_(size) {
    const uint64_t bytes = virtq::DescTableBytes(size) + virtq::AvailRingBytes(size) + 8 +
                           virtq::UsedRingBytes(size);
    const base::Gpa base = mem.AllocPages((bytes + base::kPageSize - 1) / base::kPageSize);
    desc_ = base;
    avail_ = desc_ + virtq::DescTableBytes(size);
    used_ = base::Gpa((avail_.value() + virtq::AvailRingBytes(size) + 3) & ~uint64_t{3});
  }

  // Rings at the test's own addresses (which must be RAM for Publish etc.).
  FakeSplitRing(FakeGuestMemory& mem, const VirtqueueConfig& config)
      : mem_(mem), size_(config.size), desc_(config.desc), avail_(config.avail), used_(config.used) {}

  uint32_t size() const { return size_; }
  base::Gpa desc_gpa() const { return desc_; }
  base::Gpa avail_gpa() const { return avail_; }
  base::Gpa used_gpa() const { return used_; }
  VirtqueueConfig config() const { return VirtqueueConfig{size_, desc_, avail_, used_}; }

  // Raw descriptor `index` (not checked against the size: tests write past it
  // only through SetDescAt).
  void SetDesc(uint32_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    SetDescAt(desc_ + virtq::kDescBytes * index, addr, len, flags, next);
  }
  void SetDescAt(base::Gpa at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    mem_.Poke<uint64_t>(at, addr);
    mem_.Poke<uint32_t>(at + 8, len);
    mem_.Poke<uint16_t>(at + 12, flags);
    mem_.Poke<uint16_t>(at + 14, next);
  }

  // Links `bufs` into descriptors first, first+1, ... and returns the head.
  uint16_t SetChain(uint16_t first, std::initializer_list<Buf> bufs) {
    uint16_t i = first;
    size_t n = 0;
    for (const Buf& b : bufs) {
      const bool last = ++n == bufs.size();
      const uint16_t flags = static_cast<uint16_t>((b.writable ? virtq::kDescFWrite : 0) |
                                                   (last ? 0 : virtq::kDescFNext));
      SetDesc(i, b.gpa, b.len, flags, static_cast<uint16_t>(i + 1));
      ++i;
    }
    return first;
  }

  // Puts `head` in the next available slot and advances avail.idx (§2.7.13).
  void Publish(uint16_t head) {
    mem_.Poke<uint16_t>(avail_ + (4 + 2 * uint64_t{avail_idx_ % size_}), head);
    ++avail_idx_;
    SetAvailIdx(avail_idx_);
  }
  void SetAvailIdx(uint16_t idx) {
    avail_idx_ = idx;
    mem_.Poke<uint16_t>(avail_ + 2, idx);
  }
  void SetAvailFlags(uint16_t flags) { mem_.Poke<uint16_t>(avail_, flags); }
  void SetUsedEvent(uint16_t idx) { mem_.Poke<uint16_t>(avail_ + (4 + 2 * uint64_t{size_}), idx); }
  uint16_t avail_idx() const { return avail_idx_; }

  uint16_t UsedIdx() { return mem_.Peek<uint16_t>(used_ + 2); }
  uint16_t UsedFlags() { return mem_.Peek<uint16_t>(used_); }
  uint32_t UsedId(uint32_t slot) { return mem_.Peek<uint32_t>(used_ + (4 + 8 * uint64_t{slot % size_})); }
  uint32_t UsedLen(uint32_t slot) {
    return mem_.Peek<uint32_t>(used_ + (8 + 8 * uint64_t{slot % size_}));
  }
  uint16_t AvailEvent() { return mem_.Peek<uint16_t>(used_ + (4 + 8 * uint64_t{size_})); }

 private:
  FakeGuestMemory& mem_;
  uint32_t size_;
  base::Gpa desc_, avail_, used_;
  uint16_t avail_idx_ = 0;
};

}  // namespace vmm::testing

#include "vmm-host/pv_mem_device.h"

#include <cstring>

#include "base/addr.h"

namespace vmm {

void PvMemDevice::Read(uint64_t /*offset*/, uint8_t* data, uint32_t size) {
  std::memset(data, 0xff, size);  // write-only ports
}

uint8_t* PvMemDevice::Frame(uint64_t gfn) {
  // Guest input: the gfn comes from the guest; GuestMemory checks that the
  // whole frame is RAM (and the shift cannot overflow for a 32-bit gfn). The
  // frame is made writable (populated, or unshared) as a guest store would.
  return memory_.HostPtrForWrite(base::GpaOf(base::Gfn(gfn)), base::kPageSize);
}

const uint8_t* PvMemDevice::SourceFrame(uint64_t gfn) {
  // Guest input: as above; a read never populates (zero pages read as zero).
  return memory_.HostPtrForRead(base::GpaOf(base::Gfn(gfn)), base::kPageSize);
}

void PvMemDevice::Write(uint64_t offset, const uint8_t* data, uint32_t size) {
  if (size != 4 || offset % 4 != 0) {
    counters_.Inc(PvMemCounters::kBadAccess);
    return;
  }
  uint32_t gfn;
  std::memcpy(&gfn, data, sizeof(gfn));
  std::lock_guard<std::mutex> lock(mu_);
  switch (offset) {
    case 0: {
      uint8_t* frame = Frame(gfn);
      if (frame == nullptr) {
        counters_.Inc(PvMemCounters::kBadGfn);
        return;
      }
      std::memset(frame, 0, base::kPageSize);
      counters_.Inc(PvMemCounters::kZeroed);
      return;
    }
    case 4:
      have_source_ = SourceFrame(gfn) != nullptr;
      source_gfn_ = gfn;
      if (!have_source_) counters_.Inc(PvMemCounters::kBadGfn);
      return;
    case 8: {
      uint8_t* dst = Frame(gfn);
      const uint8_t* src = have_source_ ? SourceFrame(source_gfn_) : nullptr;
      if (dst == nullptr || src == nullptr) {
        counters_.Inc(PvMemCounters::kBadGfn);
        return;
      }
      if (dst != src) std::memmove(dst, src, base::kPageSize);
      counters_.Inc(PvMemCounters::kCopied);
      return;
    }
    default:
      counters_.Inc(PvMemCounters::kBadAccess);
  }
}

}  // namespace vmm

// GuestMemory: the only way host code reads or writes a VM's RAM by
// guest-physical address.
//
// Every access is bounds-checked against the VM's RAM ranges, so a host
// pointer is never built from a guest-supplied number without a check (see
// docs/architecture.md, "Guest input"). Device models (virtio queues, the balloon, the
// loader) use this interface; tests use a fake over a plain buffer
// (tests/fakes/fake_guest_memory.h).
//
// Thread safety: implementations are safe to call from any thread; the
// memory itself is shared with the running guest, so concurrent guest writes
// are possible and callers that need a stable value copy it first (Read).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "base/addr.h"

namespace vmm {

class GuestMemory {
 public:
  virtual ~GuestMemory() = default;

  // A host pointer to `len` bytes at `gpa` if the whole range lies inside one
  // RAM range (never MMIO, never a hole), else nullptr. len may be 0.
  // Guest input: gpa and len may come straight from the guest; the check is
  // overflow-safe.
  virtual uint8_t* HostPtr(base::Gpa gpa, uint64_t len) noexcept = 0;

  // Total bytes of guest RAM (for range checks of guest-supplied sizes).
  virtual uint64_t ram_bytes() const noexcept = 0;

  // Copies between guest RAM and host buffers. False (and nothing copied) if
  // the range is not entirely RAM. A range whose pages are RAM but not
  // host-contiguous (a FrameTable after remapping) is copied a page at a time;
  // should a page stop being reachable during that copy (a concurrent remap),
  // the result is false with a prefix copied.
  bool Read(base::Gpa gpa, void* out, uint64_t len) noexcept {
    if (const uint8_t* p = HostPtr(gpa, len)) {
      std::memcpy(out, p, len);
      return true;
    }
    if (!Accessible(gpa, len)) return false;
    auto* dst = static_cast<uint8_t*>(out);
    return ForEachPageChunk(gpa, len, [&](base::Gpa at, uint64_t done, uint64_t n) {
      const uint8_t* p = HostPtr(at, n);
      if (p != nullptr) std::memcpy(dst + done, p, n);
      return p != nullptr;
    });
  }
  bool Write(base::Gpa gpa, const void* in, uint64_t len) noexcept {
    if (uint8_t* p = HostPtr(gpa, len)) {
      std::memcpy(p, in, len);
      return true;
    }
    if (!Accessible(gpa, len)) return false;
    const auto* src = static_cast<const uint8_t*>(in);
    return ForEachPageChunk(gpa, len, [&](base::Gpa at, uint64_t done, uint64_t n) {
      uint8_t* p = HostPtr(at, n);
      if (p != nullptr) std::memcpy(p, src + done, n);
      return p != nullptr;
    });
  }

  // Whether the host can reach every byte of [gpa, gpa + len): the whole range
  // through one HostPtr, or else each 4 KiB piece of it. For validating
  // guest-supplied buffers that are later accessed with Read/Write or per page.
  // Guest input: overflow-safe (a range that wraps past 2^64 is not RAM).
  bool Accessible(base::Gpa gpa, uint64_t len) noexcept {
    if (len > UINT64_MAX - gpa.value()) return false;
    if (HostPtr(gpa, len) != nullptr) return true;
    if (len == 0) return false;
    return ForEachPageChunk(gpa, len, [&](base::Gpa at, uint64_t, uint64_t n) {
      return HostPtr(at, n) != nullptr;
    });
  }

  template <typename T>
  bool ReadObj(base::Gpa gpa, T* out) noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    return Read(gpa, out, sizeof(T));
  }
  template <typename T>
  bool WriteObj(base::Gpa gpa, const T& in) noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    return Write(gpa, &in, sizeof(T));
  }

 private:
  // Calls fn(chunk_gpa, bytes_before_chunk, chunk_len) for the pieces of
  // [gpa, gpa + len) split at 4 KiB boundaries, while fn returns true. Returns
  // whether every call did. The caller has checked that the range does not wrap.
  template <typename Fn>
  static bool ForEachPageChunk(base::Gpa gpa, uint64_t len, Fn&& fn) {
    uint64_t done = 0;
    while (done < len) {
      const base::Gpa at = gpa + done;
      const uint64_t n = std::min(len - done, base::kPageSize - base::PageOffset(at));
      if (!fn(at, done, n)) return false;
      done += n;
    }
    return true;
  }
};

// Overflow-safe check that [addr, addr + len) lies within [base, base + size).
constexpr bool RangeWithin(uint64_t addr, uint64_t len, uint64_t base, uint64_t size) {
  if (addr < base) return false;
  const uint64_t offset = addr - base;
  return offset <= size && len <= size - offset;
}

}  // namespace vmm

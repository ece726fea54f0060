// GuestMemory: the only way host code reads or writes a VM's RAM by
// guest-physical address.
//
// Every access is bounds-checked against the VM's RAM ranges, so a host
// pointer is never built from a guest-supplied number without a check (see
// docs/architecture.md, "Guest input"). Device models (virtio queues, the balloon, the
// loader) use this interface; tests use a fake over a plain buffer
// (tests/fakes/fake_guest_memory.h).
//
// Access with intent. HostPtr is a plain lookup: it answers only for memory
// the implementation can hand out as-is (for a FrameTable: Present pages).
// RAM whose pages are Zero, Unbacked, Ballooned or Shared is still RAM, and a
// device that is handed a buffer there must not treat it as "outside RAM":
//   IsRam / Accessible  is [gpa, gpa + len) guest RAM, whatever backs it;
//   Prepare             makes the pages usable for a read or a write
//                       (populate, break a copy-on-write share, ...);
//   HostPtrForRead      a read-only pointer; a page with nothing behind it
//                       (Zero, Unbacked, Ballooned) may read from a shared
//                       zero page instead of being populated;
//   HostPtrForWrite     a writable pointer, after Prepare(write) if needed;
//   Read / Write        fault pages in as needed (reads of zero pages give
//                       zeros without populating; writes populate and break
//                       shares).
// The defaults suit implementations whose HostPtr is a pure bounds check
// (plain buffers, tests/fakes/fake_guest_memory.h); vmm::FrameTable
// overrides IsRam, Prepare and HostPtrForRead.
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

  // Whether every byte of [gpa, gpa + len) is guest RAM, whatever backs it
  // (its pages may need Prepare before HostPtr answers). len 0 asks about
  // the single address gpa, as HostPtr does. The default asks HostPtr page by
  // page, which is right when HostPtr is a pure bounds check.
  // Guest input: overflow-safe (a range that wraps past 2^64 is not RAM).
  virtual bool IsRam(base::Gpa gpa, uint64_t len) noexcept {
    if (len > UINT64_MAX - gpa.value()) return false;
    if (HostPtr(gpa, len) != nullptr) return true;
    if (len == 0) return false;
    return ForEachPageChunk(gpa, len, [&](base::Gpa at, uint64_t, uint64_t n) {
      return HostPtr(at, n) != nullptr;
    });
  }

  // Makes every page of [gpa, gpa + len) usable for the access (for a
  // FrameTable: MakeAvailable per page: populate Zero/Unbacked/Ballooned
  // pages, break a share for a write). False if part of the range is not RAM
  // or cannot be backed (host out of memory, a swapped page without the swap
  // store). Like MakeAvailable, the answer is a hint: the state may change
  // again at once, so callers ask HostPtr/HostPtrForRead again afterwards.
  // May block and may run the invalidation listeners; never call it from an
  // invalidation listener. The default only checks IsRam.
  virtual bool Prepare(base::Gpa gpa, uint64_t len, bool for_write) noexcept {
    (void)for_write;
    return IsRam(gpa, len);
  }

  // A pointer for reading [gpa, gpa + len), or nullptr. Unlike HostPtr it
  // also answers for pages that are shared read-only or that read as zero
  // (which it serves from a zero page, without populating them). Never
  // blocks. Never write through it. The default is HostPtr.
  virtual const uint8_t* HostPtrForRead(base::Gpa gpa, uint64_t len) noexcept {
    return HostPtr(gpa, len);
  }

  // A pointer for writing [gpa, gpa + len): HostPtr, or else HostPtr after
  // Prepare(write). nullptr if the range is not RAM, cannot be backed, or is
  // not host-contiguous (ranges that cross a page may be; use Write).
  uint8_t* HostPtrForWrite(base::Gpa gpa, uint64_t len) noexcept {
    for (int attempt = 0; attempt < kPrepareAttempts; ++attempt) {
      if (uint8_t* p = HostPtr(gpa, len)) return p;
      if (!Prepare(gpa, len, /*for_write=*/true)) return nullptr;
    }
    return HostPtr(gpa, len);
  }

  // How often Read/Write/HostPtrForWrite prepare a page and ask again before
  // they give up (a concurrent verb may undo the preparation each time).
  static constexpr int kPrepareAttempts = 4;

  // Copies between guest RAM and host buffers. False (and nothing copied) if
  // the range is not entirely RAM. Pages that are not directly reachable
  // are faulted in: a read of a page that reads as zero copies zeros without
  // populating it; a write populates it or breaks its share (Prepare). A
  // range whose pages are not host-contiguous (a FrameTable after
  // remapping) is copied a page at a time; should a page become unusable
  // during that copy (it cannot be backed, or keeps changing), the result is
  // false with a prefix copied.
  bool Read(base::Gpa gpa, void* out, uint64_t len) noexcept {
    if (const uint8_t* p = HostPtr(gpa, len)) {
      std::memcpy(out, p, len);
      return true;
    }
    if (!Accessible(gpa, len)) return false;
    auto* dst = static_cast<uint8_t*>(out);
    return ForEachPageChunk(gpa, len, [&](base::Gpa at, uint64_t done, uint64_t n) {
      for (int attempt = 0; attempt < kPrepareAttempts; ++attempt) {
        if (const uint8_t* p = HostPtrForRead(at, n)) {
          std::memcpy(dst + done, p, n);
          return true;
        }
        if (!Prepare(at, n, /*for_write=*/false)) return false;
      }
      return false;
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
      uint8_t* p = HostPtrForWrite(at, n);
      if (p != nullptr) std::memcpy(p, src + done, n);
      return p != nullptr;
    });
  }

  // Whether every byte of [gpa, gpa + len) is RAM that Read/Write can reach
  // (IsRam: pages that need faulting in count). For validating
  // guest-supplied buffers that are later accessed with Read/Write.
  // Guest input: overflow-safe (a range that wraps past 2^64 is not RAM).
  bool Accessible(base::Gpa gpa, uint64_t len) noexcept {
    if (len > UINT64_MAX - gpa.value()) return false;
    return IsRam(gpa, len);
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

 protected:
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

// Strong address and frame-number types.
//
// The address vocabulary of the whole project (see docs/mmu.md, "Glossary"):
//   Gva  guest virtual address        Gpa  guest physical address
//   Gfn  guest frame number (Gpa>>12)  Hva  host virtual address (VMM pointer)
//   Hpa  host physical address (an offset into the VMM's frame pool)
//   Hfn  host frame number (Hpa>>12)
// Each is a distinct type so that a gpa can never be passed where a gva or hfn
// is expected. Conversions between them are explicit functions only (GfnOf,
// GpaOf, ...); there are no implicit conversions and no cross-type arithmetic.
//
// Thread safety: plain values.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <ostream>

namespace base {

inline constexpr uint64_t kPageShift = 12;
inline constexpr uint64_t kPageSize = uint64_t{1} << kPageShift;
inline constexpr uint64_t kPageMask = kPageSize - 1;
inline constexpr uint64_t kLargePageSize2M = uint64_t{1} << 21;
inline constexpr uint64_t kLargePageSize1G = uint64_t{1} << 30;

// A 64-bit value tagged with what it means. Tag is an empty struct that also
// supplies the name used when printing.
template <typename Tag>
class Strong {
 public:
  constexpr Strong() = default;
  constexpr explicit Strong(uint64_t value) : value_(value) {}

  constexpr uint64_t value() const { return value_; }

  constexpr auto operator<=>(const Strong&) const = default;

  // Offsets within the same space keep the type: gpa + 8 is still a gpa.
  constexpr Strong operator+(uint64_t delta) const { return Strong(value_ + delta); }
  constexpr Strong operator-(uint64_t delta) const { return Strong(value_ - delta); }
  constexpr Strong& operator+=(uint64_t delta) {
    value_ += delta;
    return *this;
  }
  // Distance between two values of the same space.
  constexpr uint64_t operator-(Strong other) const { return value_ - other.value_; }

  friend std::ostream& operator<<(std::ostream& os, Strong s) {
    return os << Tag::kName << ":0x" << std::hex << s.value_ << std::dec;
  }
  template <typename H>
  friend H AbslHashValue(H h, Strong s) {
    return H::combine(std::move(h), s.value_);
  }

 private:
  uint64_t value_ = 0;
};

struct GvaTag { static constexpr const char* kName = "gva"; };
struct GpaTag { static constexpr const char* kName = "gpa"; };
struct GfnTag { static constexpr const char* kName = "gfn"; };
struct HpaTag { static constexpr const char* kName = "hpa"; };
struct HfnTag { static constexpr const char* kName = "hfn"; };
struct HvaTag { static constexpr const char* kName = "hva"; };

using Gva = Strong<GvaTag>;
using Gpa = Strong<GpaTag>;
using Gfn = Strong<GfnTag>;
using Hpa = Strong<HpaTag>;
using Hfn = Strong<HfnTag>;
using Hva = Strong<HvaTag>;

// Explicit conversions between addresses and frame numbers of the same space.
constexpr Gfn GfnOf(Gpa gpa) { return Gfn(gpa.value() >> kPageShift); }
constexpr Gpa GpaOf(Gfn gfn) { return Gpa(gfn.value() << kPageShift); }
constexpr Hfn HfnOf(Hpa hpa) { return Hfn(hpa.value() >> kPageShift); }
constexpr Hpa HpaOf(Hfn hfn) { return Hpa(hfn.value() << kPageShift); }

// The byte offset of an address within its 4 KiB page.
template <typename Tag>
constexpr uint64_t PageOffset(Strong<Tag> addr) {
  return addr.value() & kPageMask;
}
// The address rounded down to its 4 KiB page.
template <typename Tag>
constexpr Strong<Tag> PageBase(Strong<Tag> addr) {
  return Strong<Tag>(addr.value() & ~kPageMask);
}

// A host virtual address from a pointer, and back. The only place where a
// host pointer and an address type meet.
inline Hva HvaOf(const void* ptr) { return Hva(reinterpret_cast<uintptr_t>(ptr)); }
template <typename T = void>
inline T* PtrOf(Hva hva) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(hva.value()));
}

}  // namespace base

template <typename Tag>
struct std::hash<base::Strong<Tag>> {
  size_t operator()(base::Strong<Tag> s) const noexcept { return std::hash<uint64_t>()(s.value()); }
};

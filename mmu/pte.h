// x86-64 paging-structure entry formats for 4-level and 5-level paging.
//
// Intel SDM Vol. 3A §4.5 "4-Level Paging and 5-Level Paging", Tables 4-15 to
// 4-20 (formats of PML5E, PML4E, PDPTE, PDE and PTE), and §4.6.2 (protection
// keys, bits 62:59). Every bit used here is named after the SDM's field and the
// layout is pinned with static_asserts below, so a typo cannot slip through.
//
// Levels are numbered as in KVM: 1 = PT (maps 4 KiB), 2 = PD (may map 2 MiB),
// 3 = PDPT (may map 1 GiB), 4 = PML4, 5 = PML5.
//
// Thread safety: plain values and constexpr functions.
#pragma once

#include <cstdint>

namespace mmu {

inline constexpr int kMaxLevels = 5;

// Bits of a paging-structure entry (SDM Table 4-15..4-20).
namespace pte {
inline constexpr uint64_t kPresent = uint64_t{1} << 0;        // P
inline constexpr uint64_t kWritable = uint64_t{1} << 1;       // R/W
inline constexpr uint64_t kUser = uint64_t{1} << 2;           // U/S
inline constexpr uint64_t kWriteThrough = uint64_t{1} << 3;   // PWT
inline constexpr uint64_t kCacheDisable = uint64_t{1} << 4;   // PCD
inline constexpr uint64_t kAccessed = uint64_t{1} << 5;       // A
inline constexpr uint64_t kDirty = uint64_t{1} << 6;          // D (leaf entries only)
inline constexpr uint64_t kPageSize = uint64_t{1} << 7;       // PS (PDPTE, PDE); PAT in a PTE
inline constexpr uint64_t kPat4K = uint64_t{1} << 7;          // PAT bit of a 4 KiB PTE
inline constexpr uint64_t kGlobal = uint64_t{1} << 8;         // G (leaf entries only)
inline constexpr uint64_t kPatLarge = uint64_t{1} << 12;      // PAT bit of a 2 MiB / 1 GiB leaf
inline constexpr uint64_t kNoExecute = uint64_t{1} << 63;     // XD (reserved unless EFER.NXE)
inline constexpr int kProtKeyShift = 59;                      // bits 62:59 of a leaf
inline constexpr uint64_t kProtKeyMask = uint64_t{0xf} << kProtKeyShift;
// Bits 51:12 hold a physical address; the top of that range depends on MAXPHYADDR.
inline constexpr uint64_t kAddrMask52 = 0x000f'ffff'ffff'f000ull;
}  // namespace pte

// The physical-address bits [maxphyaddr-1 : 12] of an entry.
constexpr uint64_t PhysAddrMask(int maxphyaddr) {
  return ((uint64_t{1} << maxphyaddr) - 1) & ~uint64_t{0xfff};
}

// Number of linear-address bits one level translates, and the shift of the
// index that selects the entry at `level` (level 1 indexes with bits 20:12).
constexpr int LevelShift(int level) { return 12 + 9 * (level - 1); }
constexpr uint64_t LevelIndex(uint64_t va, int level) { return (va >> LevelShift(level)) & 0x1ff; }
// Size of the region one entry at `level` maps (4 KiB, 2 MiB, 1 GiB, ...).
constexpr uint64_t LevelPageSize(int level) { return uint64_t{1} << LevelShift(level); }

enum class PageSize : uint8_t { k4K = 1, k2M = 2, k1G = 3 };
constexpr uint64_t BytesOf(PageSize s) { return LevelPageSize(static_cast<int>(s)); }

// Reserved bits of a *present* entry at `level` (SDM §4.5.4, Tables 4-15..4-20;
// "reserved" means the entry faults with PFEC.RSVD=1 when used):
//   - bits 51:MAXPHYADDR of every entry;
//   - bit 63 (XD) when EFER.NXE = 0;
//   - PS (bit 7) of a PML5E and a PML4E;
//   - PS of a PDPTE when 1 GiB pages are not supported (CPUID.80000001H:EDX[26]);
//   - bits 29:13 of a 1 GiB leaf and bits 20:13 of a 2 MiB leaf (between PAT
//     at bit 12 and the page-frame address).
// `is_leaf_large` says the entry has PS=1 at level 2 or 3.
constexpr uint64_t ReservedBits(int level, bool is_leaf_large, int maxphyaddr, bool nxe,
                                bool gbpages) {
  uint64_t rsvd = pte::kAddrMask52 & ~PhysAddrMask(maxphyaddr);
  if (!nxe) rsvd |= pte::kNoExecute;
  if (level >= 4) rsvd |= pte::kPageSize;
  if (level == 3 && !gbpages) rsvd |= pte::kPageSize;
  if (is_leaf_large) {
    // The frame address of a level-L large page starts at bit LevelShift(L);
    // bits 12 (PAT) .. LevelShift(L)-1 hold PAT then reserved zeros.
    rsvd |= (LevelPageSize(level) - 1) & ~uint64_t{0x1fff};
  }
  return rsvd;
}

// ReservedBits() split for the walker's hot loop: the part that depends only
// on the mode (computed once per walk) and the part that depends only on the
// level and PS (a table lookup). ReservedBits(l, large, m, nxe, gb) ==
//   ModeReservedBits(m, nxe) | kLevelReservedBits[large][l] | (l == 3 && !gb ? PS : 0).
constexpr uint64_t ModeReservedBits(int maxphyaddr, bool nxe) {
  return (pte::kAddrMask52 & ~PhysAddrMask(maxphyaddr)) | (nxe ? 0 : pte::kNoExecute);
}
inline constexpr uint64_t kLevelReservedBits[2][kMaxLevels + 1] = {
    {0, 0, 0, 0, pte::kPageSize, pte::kPageSize},
    {0, 0, 0x1f'e000ull, 0x3fff'e000ull, pte::kPageSize, pte::kPageSize}};

// The physical base of what a present entry points to: the next table (non-
// leaf), the 4 KiB frame (level 1) or the large page (PS=1 at level 2 or 3).
constexpr uint64_t EntryTarget(uint64_t entry, int level, bool is_leaf_large, int maxphyaddr) {
  uint64_t mask = PhysAddrMask(maxphyaddr);
  if (is_leaf_large) mask &= ~(LevelPageSize(level) - 1);
  return entry & mask;
}

// A linear address is canonical when bits 63:N-1 are all equal, N = 48 for
// 4-level and 57 for 5-level paging (SDM Vol. 1 §3.3.7.1; Vol. 3A §4.5.1).
constexpr bool IsCanonical(uint64_t va, int levels) {
  const int va_bits = levels == 5 ? 57 : 48;
  const int64_t sign_extended =
      static_cast<int64_t>(va << (64 - va_bits)) >> (64 - va_bits);
  return static_cast<uint64_t>(sign_extended) == va;
}

// Layout checks against the SDM tables.
static_assert(pte::kPresent == 0x1 && pte::kWritable == 0x2 && pte::kUser == 0x4);
static_assert(pte::kWriteThrough == 0x8 && pte::kCacheDisable == 0x10);
static_assert(pte::kAccessed == 0x20 && pte::kDirty == 0x40 && pte::kPageSize == 0x80);
static_assert(pte::kGlobal == 0x100 && pte::kPatLarge == 0x1000);
static_assert(pte::kNoExecute == 0x8000'0000'0000'0000ull);
static_assert(pte::kProtKeyMask == 0x7800'0000'0000'0000ull);
static_assert(LevelShift(1) == 12 && LevelShift(2) == 21 && LevelShift(3) == 30 &&
              LevelShift(4) == 39 && LevelShift(5) == 48);
static_assert(PhysAddrMask(52) == pte::kAddrMask52);
static_assert(PhysAddrMask(46) == 0x0000'3fff'ffff'f000ull);
// 2 MiB leaf: bits 20:13 reserved; 1 GiB leaf: bits 29:13 reserved.
static_assert(ReservedBits(2, true, 52, true, true) == 0x1f'e000ull);
static_assert(ReservedBits(3, true, 52, true, true) == 0x3fff'e000ull);
static_assert(ReservedBits(4, false, 52, true, true) == pte::kPageSize);
static_assert(ReservedBits(1, false, 52, false, true) == pte::kNoExecute);
static_assert(ReservedBits(2, true, 40, false, false) ==
              (ModeReservedBits(40, false) | kLevelReservedBits[1][2]));
static_assert(ReservedBits(3, true, 40, true, false) ==
              (ModeReservedBits(40, true) | kLevelReservedBits[1][3] | pte::kPageSize));
static_assert(ReservedBits(4, false, 52, true, true) ==
              (ModeReservedBits(52, true) | kLevelReservedBits[0][4]));
static_assert(IsCanonical(0x0000'7fff'ffff'ffffull, 4) && !IsCanonical(0x0000'8000'0000'0000ull, 4));
static_assert(IsCanonical(0xffff'8000'0000'0000ull, 4) && IsCanonical(0x0000'8000'0000'0000ull, 5));
static_assert(!IsCanonical(0x0100'0000'0000'0000ull, 5) && IsCanonical(0xff00'0000'0000'0000ull, 5));

}  // namespace mmu

// EPT (extended page table) entry and EPTP formats.
//
// Intel SDM Vol. 3C §29.3.2 "EPT Translation Mechanism" (Tables 29-1..29-6,
// formats of EPT PML5E/PML4E/PDPTE/PDE/PTE), §29.3.3 "EPT-Induced VM Exits"
// (misconfigurations and violations), §29.3.5 "Accessed and Dirty Flags for
// EPT", and §25.6.11 "Extended-Page-Table Pointer (EPTP)" (Table 25-9).
// In older SDM editions these are §28.2 and §24.6.11.
//
// EPT levels are numbered like guest levels: 1 = EPT PT (4 KiB), 2 = EPT PD
// (may map 2 MiB), 3 = EPT PDPT (may map 1 GiB), 4 = EPT PML4, 5 = EPT PML5.
//
// Thread safety: plain values and constexpr functions.
#pragma once

#include <cstdint>

#include "mmu/pte.h"

namespace mmu {

namespace epte {
inline constexpr uint64_t kRead = uint64_t{1} << 0;
inline constexpr uint64_t kWrite = uint64_t{1} << 1;
// Execute; with mode-based execute control this is supervisor-mode execute.
inline constexpr uint64_t kExecute = uint64_t{1} << 2;
inline constexpr int kMemTypeShift = 3;  // bits 5:3 of a leaf
inline constexpr uint64_t kMemTypeMask = uint64_t{7} << kMemTypeShift;
inline constexpr uint64_t kIgnorePat = uint64_t{1} << 6;   // leaf only
inline constexpr uint64_t kPageSize = uint64_t{1} << 7;    // PDPTE / PDE: maps a large page
inline constexpr uint64_t kAccessed = uint64_t{1} << 8;    // when EPTP enables A/D
inline constexpr uint64_t kDirty = uint64_t{1} << 9;       // leaf, when EPTP enables A/D
inline constexpr uint64_t kUserExecute = uint64_t{1} << 10;  // with mode-based execute control
inline constexpr uint64_t kSuppressVe = uint64_t{1} << 63;   // leaf
inline constexpr uint64_t kPermMask = kRead | kWrite | kExecute;
}  // namespace epte

// EPT memory types (SDM §29.3.7, Table 29-8 via PAT encodings).
enum class EptMemType : uint8_t { kUncacheable = 0, kWriteCombining = 1, kWriteThrough = 4,
                                  kWriteProtected = 5, kWriteBack = 6 };
// Types 2, 3 and 7 are reserved and make a leaf misconfigured.
constexpr bool IsValidEptMemType(uint64_t type) { return type != 2 && type != 3 && type != 7; }

// The EPT pointer (VMCS field), SDM Table 25-9.
namespace eptp {
inline constexpr uint64_t kMemTypeMask = 0x7;        // 0 = UC, 6 = WB
inline constexpr int kWalkLengthShift = 3;           // bits 5:3: levels - 1
inline constexpr uint64_t kWalkLengthMask = uint64_t{7} << kWalkLengthShift;
inline constexpr uint64_t kEnableAccessDirty = uint64_t{1} << 6;
}  // namespace eptp

constexpr uint64_t MakeEptp(uint64_t root_hpa, int levels, bool enable_ad) {
  return root_hpa | static_cast<uint64_t>(EptMemType::kWriteBack) |
         (static_cast<uint64_t>(levels - 1) << eptp::kWalkLengthShift) |
         (enable_ad ? eptp::kEnableAccessDirty : 0);
}
constexpr int EptpLevels(uint64_t eptp) {
  return static_cast<int>(((eptp & eptp::kWalkLengthMask) >> eptp::kWalkLengthShift) + 1);
}
constexpr bool EptpAdEnabled(uint64_t eptp) { return eptp & eptp::kEnableAccessDirty; }

// What the processor supports (IA32_VMX_EPT_VPID_CAP), as configured for the
// modelled CPU.
struct EptCaps {
  bool execute_only = true;        // bit 0: R=0,W=0,X=1 allowed
  bool gbpages = true;             // bit 17: 1 GiB EPT pages
  bool mode_based_execute = false; // secondary control "mode-based execute control for EPT"
  int maxphyaddr = 52;
};

// An EPT entry is present when any of its permission bits is set (bit 10 also
// counts under mode-based execute control), SDM §29.3.2.
constexpr bool EptPresent(uint64_t e, const EptCaps& caps) {
  return (e & epte::kPermMask) || (caps.mode_based_execute && (e & epte::kUserExecute));
}

// Bits that make a present entry misconfigured (SDM §29.3.3.1):
//   bits 51:MAXPHYADDR; in a PML5E/PML4E bits 7:3; in a non-leaf PDPTE/PDE
//   bits 6:3; bit 7 of a PDPTE without 1 GiB support; in a 1 GiB leaf bits
//   29:12 and in a 2 MiB leaf bits 20:12.
constexpr uint64_t EptReservedBits(int level, bool is_leaf_large, const EptCaps& caps) {
  uint64_t rsvd = pte::kAddrMask52 & ~PhysAddrMask(caps.maxphyaddr);
  if (level >= 4) {
    rsvd |= 0xf8;  // bits 7:3
  } else if (level >= 2 && !is_leaf_large) {
    rsvd |= 0x78;  // bits 6:3
  }
  if (level == 3 && !caps.gbpages) rsvd |= epte::kPageSize;
  if (is_leaf_large) rsvd |= (LevelPageSize(level) - 1) & ~uint64_t{0xfff};
  return rsvd;
}

// The level/PS-dependent part of EptReservedBits, for the walker's hot loop.
inline constexpr uint64_t kEptLevelReservedBits[2][kMaxLevels + 1] = {
    {0, 0, 0x78, 0x78, 0xf8, 0xf8},
    {0, 0, 0x1f'f000ull, 0x3fff'f000ull, 0xf8, 0xf8}};

// True when a present entry is misconfigured on its permission bits or memory
// type (the reserved-bit part is EptReservedBits).
constexpr bool EptPermsMisconfigured(uint64_t e, bool is_leaf, const EptCaps& caps) {
  const bool r = e & epte::kRead, w = e & epte::kWrite, x = e & epte::kExecute;
  if (w && !r) return true;                          // write-only
  if (x && !r && !w && !caps.execute_only) return true;  // execute-only unsupported
  if (is_leaf && !IsValidEptMemType((e & epte::kMemTypeMask) >> epte::kMemTypeShift)) return true;
  return false;
}

// Exit-qualification bits of an EPT violation (SDM §28.2.1, Table 28-7).
namespace ept_qual {
inline constexpr uint64_t kRead = uint64_t{1} << 0;        // the access was a data read
inline constexpr uint64_t kWrite = uint64_t{1} << 1;       // ... a data write
inline constexpr uint64_t kFetch = uint64_t{1} << 2;       // ... an instruction fetch
inline constexpr uint64_t kReadable = uint64_t{1} << 3;    // AND of bit 0 of the EPT entries used
inline constexpr uint64_t kWritable = uint64_t{1} << 4;    // AND of bit 1
inline constexpr uint64_t kExecutable = uint64_t{1} << 5;  // AND of bit 2
inline constexpr uint64_t kUserExecutable = uint64_t{1} << 6;  // AND of bit 10 (MBEC)
inline constexpr uint64_t kGlaValid = uint64_t{1} << 7;    // guest-linear-address field valid
// With kGlaValid: 1 if the access was to the translated linear address, 0 if
// it was to a guest paging-structure entry.
inline constexpr uint64_t kGlaTranslated = uint64_t{1} << 8;
// Advanced VM-exit information (with kGlaTranslated): the guest translation's
// U/S, R/W and XD.
inline constexpr uint64_t kGlaUser = uint64_t{1} << 9;
inline constexpr uint64_t kGlaWritable = uint64_t{1} << 10;
inline constexpr uint64_t kGlaNoExecute = uint64_t{1} << 11;
}  // namespace ept_qual

static_assert(epte::kRead == 1 && epte::kWrite == 2 && epte::kExecute == 4);
static_assert(epte::kMemTypeMask == 0x38 && epte::kIgnorePat == 0x40 && epte::kPageSize == 0x80);
static_assert(epte::kAccessed == 0x100 && epte::kDirty == 0x200 && epte::kUserExecute == 0x400);
static_assert(MakeEptp(0x5000, 4, true) == 0x505e && EptpLevels(0x505e) == 4);
static_assert(EptpAdEnabled(0x505e) && !EptpAdEnabled(0x501e));
static_assert(EptReservedBits(4, false, EptCaps{}) == 0xf8);
static_assert(EptReservedBits(2, true, EptCaps{}) == 0x1f'f000);
static_assert(EptReservedBits(3, true, EptCaps{}) == 0x3fff'f000);
static_assert(EptReservedBits(2, false, EptCaps{}) == kEptLevelReservedBits[0][2]);
static_assert(EptReservedBits(3, true, EptCaps{}) == kEptLevelReservedBits[1][3]);
static_assert(EptReservedBits(5, false, EptCaps{}) == kEptLevelReservedBits[0][5]);
static_assert(ept_qual::kGlaValid == 0x80 && ept_qual::kGlaTranslated == 0x100);

}  // namespace mmu

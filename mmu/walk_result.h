// What a page walk returns: the translation, or why there is none, plus every
// entry it used and every memory reference it made.
//
// Thread safety: plain values.
#pragma once

#include <array>
#include <cstdint>
#include <ostream>

#include "mmu/pte.h"

namespace mmu {

enum class WalkStatus : uint8_t {
  kOk = 0,
  kPageFault,         // guest #PF: see error_code, fault_level
  kNonCanonical,      // #GP/#SS, not a page fault (SDM §4.5.1)
  kBadTableAddress,   // 1-D: a paging structure is not backed by memory
  kEptViolation,      // 2-D: see ept_qualification, fault_gpa
  kEptMisconfig,      // 2-D: see fault_gpa, ept_fault_level
  kRetry,             // a concurrent writer changed an entry too often
};

const char* WalkStatusName(WalkStatus s);
inline std::ostream& operator<<(std::ostream& os, WalkStatus s) { return os << WalkStatusName(s); }

// Memory references made by a walk, by dimension and level (index = level,
// 1..5; index 0 unused). For a 2-D walk, `nested[g]` counts the EPT references
// spent translating the guest table read at guest level g, and `nested[0]` those
// for the final guest-physical address; so a cold 4-level/4-level walk has
// guest[1..4] = 1 each, ept[1..4] = 5 each, nested[0..4] = 4 each: 24 in all.
struct WalkRefs {
  std::array<uint16_t, kMaxLevels + 1> guest{};
  std::array<uint16_t, kMaxLevels + 1> ept{};
  std::array<uint16_t, kMaxLevels + 1> nested{};

  int GuestTotal() const { return Sum(guest); }
  int EptTotal() const { return Sum(ept); }
  int Total() const { return GuestTotal() + EptTotal(); }

 private:
  static int Sum(const std::array<uint16_t, kMaxLevels + 1>& a) {
    int s = 0;
    for (uint16_t v : a) s += v;
    return s;
  }
};

struct WalkResult {
  WalkStatus status = WalkStatus::kOk;

  // --- Translation (kOk) ---
  uint64_t gpa = 0;  // the address the guest's tables translate to
  uint64_t hpa = 0;  // after the second stage (2-D); equals gpa for a 1-D walk
  PageSize page_size = PageSize::k4K;
  // Effective rights of the guest translation: AND of R/W and U/S and OR of
  // XD over every level (SDM §4.6), and the leaf's D bit after the walk.
  bool writable = false;
  bool user = false;
  bool nx = false;
  bool dirty = false;
  bool global = false;  // G of the leaf with CR4.PGE = 1 (a global translation)
  uint8_t prot_key = 0;

  // --- Guest #PF (kPageFault) ---
  uint32_t error_code = 0;
  int8_t fault_level = 0;  // level of the entry that caused the fault

  // --- Second stage (kEptViolation / kEptMisconfig) ---
  uint64_t ept_qualification = 0;
  uint64_t fault_gpa = 0;
  int8_t ept_fault_level = 0;

  // --- Every guest entry used, by level: valid for levels leaf_level ..
  // top_level only (the walker does not clear the others, to stay cheap) ---
  int8_t top_level = 0;   // first level read (the paging depth)
  int8_t leaf_level = 0;  // level of the last entry read
  std::array<uint64_t, kMaxLevels + 1> entry_gpa;  // where each guest entry lives
  std::array<uint64_t, kMaxLevels + 1> entry;      // its value (after A/D updates)

  WalkRefs refs;

  // Resets everything but the per-level arrays, which each walk overwrites
  // for the levels it reads.
  void Reset() noexcept {
    status = WalkStatus::kOk;
    gpa = hpa = 0;
    page_size = PageSize::k4K;
    writable = user = nx = dirty = global = false;
    prot_key = 0;
    error_code = 0;
    fault_level = 0;
    ept_qualification = fault_gpa = 0;
    ept_fault_level = 0;
    top_level = leaf_level = 0;
    refs = WalkRefs{};
  }
};

}  // namespace mmu

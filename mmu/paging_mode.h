// The processor state that decides how a linear address is translated and
// checked, and the description of one access.
//
// Intel SDM Vol. 3A §4.1.3 (paging-mode modifiers: CR0.WP, CR4.PSE/PGE/PCIDE/
// SMEP/SMAP/PKE, IA32_EFER.NXE), §4.6 (access rights), §4.7 (page-fault
// exceptions).
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <ostream>

namespace mmu {

enum class Access : uint8_t { kRead = 0, kWrite = 1, kFetch = 2 };

inline std::ostream& operator<<(std::ostream& os, Access a) {
  return os << (a == Access::kRead ? "read" : a == Access::kWrite ? "write" : "fetch");
}

// One memory access to translate (SDM §4.6: "user-mode access" is an access
// at CPL 3 other than an implicit supervisor-mode access such as a GDT/IDT/TSS
// reference; every other access is a supervisor-mode access).
struct AccessRequest {
  uint64_t va = 0;
  Access access = Access::kRead;
  uint8_t cpl = 0;
  // An implicit supervisor-mode access (descriptor tables, TSS, ...): never a
  // user-mode access, and never exempted from SMAP by EFLAGS.AC.
  bool implicit_supervisor = false;
  // EFLAGS.AC, which lets CPL<3 explicit accesses touch user pages under SMAP.
  bool rflags_ac = false;

  constexpr bool user_access() const { return cpl == 3 && !implicit_supervisor; }
};

// The control-register bits that change translation or access rights.
struct PagingMode {
  int levels = 4;          // 4, or 5 when CR4.LA57 = 1
  bool wp = true;          // CR0.WP
  bool nxe = true;         // IA32_EFER.NXE
  bool smep = false;       // CR4.SMEP
  bool smap = false;       // CR4.SMAP
  bool pke = false;        // CR4.PKE (protection keys for user-mode pages)
  bool pge = false;        // CR4.PGE (global pages)
  bool gbpages = true;     // CPUID.80000001H:EDX.Page1GB[bit 26]
  int maxphyaddr = 46;     // CPUID.80000008H:EAX[7:0]
  uint32_t pkru = 0;       // PKRU, used only when pke

  // Builds the mode from raw register values (CR0, CR4, IA32_EFER).
  static PagingMode FromRegisters(uint64_t cr0, uint64_t cr4, uint64_t efer, int maxphyaddr,
                                  bool gbpages, uint32_t pkru = 0) {
    PagingMode m;
    m.levels = (cr4 & (uint64_t{1} << 12)) ? 5 : 4;
    m.wp = cr0 & (uint64_t{1} << 16);
    m.nxe = efer & (uint64_t{1} << 11);
    m.smep = cr4 & (uint64_t{1} << 20);
    m.smap = cr4 & (uint64_t{1} << 21);
    m.pke = cr4 & (uint64_t{1} << 22);
    m.pge = cr4 & (uint64_t{1} << 7);
    m.gbpages = gbpages;
    m.maxphyaddr = maxphyaddr;
    m.pkru = pkru;
    return m;
  }
};

// Page-fault error code bits (SDM §4.7, Figure 4-12).
namespace pfec {
inline constexpr uint32_t kPresent = 1u << 0;  // 0: not-present page; 1: protection violation
inline constexpr uint32_t kWrite = 1u << 1;    // the access was a write
inline constexpr uint32_t kUser = 1u << 2;     // the access was a user-mode access
inline constexpr uint32_t kRsvd = 1u << 3;     // a reserved bit was set in some entry
inline constexpr uint32_t kFetch = 1u << 4;    // instruction fetch (with NXE or SMEP only)
inline constexpr uint32_t kPk = 1u << 5;       // protection-key violation
}  // namespace pfec

// The error-code bits that depend only on the access, common to every fault.
constexpr uint32_t BaseErrorCode(const PagingMode& mode, const AccessRequest& req) {
  uint32_t code = 0;
  if (req.access == Access::kWrite) code |= pfec::kWrite;
  if (req.user_access()) code |= pfec::kUser;
  // SDM §4.7: I/D is reported only when SMEP or (PAE and NXE) is on.
  if (req.access == Access::kFetch && (mode.nxe || mode.smep)) code |= pfec::kFetch;
  return code;
}

}  // namespace mmu

// The 64-bit boot protocol between our VMM and the guest kernel.
//
// This header is shared: the freestanding guest kernel includes it, and the
// host-side VMM (vmm-host/) includes it to build the structure it hands over.
// It only uses fixed-width types so that both sides agree on the layout. The
// protocol itself (register state, page tables, where each piece lives) is
// documented in docs/boot.md; keep the two in sync.
#pragma once

#include <stdint.h>

namespace guest {

// "MVBI" read as a little-endian 32-bit value.
inline constexpr uint32_t kBootInfoMagic = 0x4942564d;
inline constexpr uint32_t kBootInfoVersion = 1;

// Memory map entry types. The values follow the E820 / hvm_memmap_table_entry
// convention so that both boot paths share one vocabulary.
enum BootMemType : uint32_t {
  kBootMemUsable = 1,
  kBootMemReserved = 2,
  kBootMemAcpi = 3,
  kBootMemNvs = 4,
  kBootMemUnusable = 5,
};

struct BootMemEntry {
  uint64_t base;
  uint64_t length;
  uint32_t type;  // BootMemType
  uint32_t reserved;
};
static_assert(sizeof(BootMemEntry) == 24);

// Platform flags. Each can also be set from the command line (docs/boot.md);
// the kernel ORs both sources.
//
// The platform cannot deliver `syscall` from CPL3 (see docs/guest.md): user
// code enters the kernel with `int3` through a DPL-3 gate instead.
inline constexpr uint64_t kBootFlagTrapEntry = 1ull << 0;
// Every usable RAM frame not covered by the kernel image reads as zero, so the
// kernel need not zero a frame the first time it hands it out.
inline constexpr uint64_t kBootFlagRamZeroed = 1ull << 1;
// The VMM implements the paravirtual zero/copy-frame doorbell (ports in
// guest/abi.h). Never set this where nobody listens on those ports.
inline constexpr uint64_t kBootFlagPvMem = 1ull << 2;

// Handed over in RDI at the 64-bit entry. All addresses are guest-physical.
struct BootInfo {
  uint32_t magic;    // kBootInfoMagic
  uint32_t version;  // kBootInfoVersion
  uint64_t flags;    // kBootFlag*
  uint64_t mem_map_gpa;  // array of BootMemEntry
  uint32_t mem_map_entries;
  uint32_t reserved0;
  uint64_t cmdline_gpa;  // bytes, not necessarily NUL-terminated
  uint32_t cmdline_len;
  uint32_t reserved1;
  uint64_t tsc_khz;    // 0: the kernel finds it (CPUID 0x15/0x16, then LAPIC calibration)
  uint64_t lapic_khz;  // LAPIC timer input clock; 0 means 1 GHz (QEMU and KVM)
};
static_assert(sizeof(BootInfo) == 64);

}  // namespace guest

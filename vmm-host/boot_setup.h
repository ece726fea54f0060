// Prepares guest memory and the first vCPU's state for the 64-bit boot
// protocol of our guest kernel (docs/boot.md): boot page tables, a GDT with a
// TSS, the guest::BootInfo structure, the memory map and the command line,
// all below 1 MiB; the kernel image at its physical load address.
//
// Thread safety: call before any vCPU of the VM runs.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "vmm-host/elf_loader.h"
#include "vmm-host/guest_memory.h"
#include "vmm-host/hypervisor.h"
#include "vmm-host/memory_layout.h"

namespace vmm {

// Where the boot structures go (guest-physical, all below the kernel at 1 MiB).
struct BootAddresses {
  static constexpr uint64_t kPml4 = 0x1000;
  static constexpr uint64_t kPdpt = 0x2000;
  static constexpr uint64_t kPd = 0x3000;  // four PDs: 0x3000..0x6fff map 0..4 GiB
  static constexpr uint64_t kGdt = 0x7000;
  static constexpr uint64_t kTss = 0x7100;
  static constexpr uint64_t kBootInfo = 0x8000;
  static constexpr uint64_t kMemMap = 0x8100;
  static constexpr uint64_t kCmdline = 0x9000;
  static constexpr uint64_t kCmdlineMax = 3071;  // the guest copies it into a 3072-byte page
  static constexpr uint64_t kStackTop = 0x80000;
  // Secondary vCPU i (1 <= i < 64) has its own stack just above vCPU 0's:
  // its top is kStackTop + i * kSecondaryStackBytes.
  static constexpr uint64_t kSecondaryStackBytes = 0x1000;
  static constexpr int kMaxVcpus = 64;
};

struct BootOptions {
  std::string cmdline;
  uint64_t flags = 0;  // guest::kBootFlag*
  uint64_t tsc_khz = 0;
  uint64_t lapic_khz = 0;
};

// Writes everything into `memory` and returns the entry state for vCPU 0.
// Errors (command line too long, image outside RAM) are returned before
// anything is written.
absl::StatusOr<LongModeEntry> SetUpBoot(const ElfImage& image, const MemoryLayout& layout,
                                        const BootOptions& options, GuestMemory& memory);

// The entry state of secondary vCPU `index` (1 <= index < kMaxVcpus): vCPU
// 0's (same code, page tables, GDT and TSS) with RDI = index and its own
// stack. The VMM starts every vCPU in long mode; there is no INIT/SIPI boot
// (docs/boot.md, "Several vCPUs").
LongModeEntry SecondaryVcpuEntry(const LongModeEntry& bsp, int index);

}  // namespace vmm

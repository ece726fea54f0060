#include "vmm-host/boot_setup.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "base/check.h"
#include "base/status.h"
#include "guest/boot_info.h"
#include "mmu/pte.h"

namespace vmm {
namespace {

// Boot GDT in Linux's layout (docs/platform.md: user CS must be 0x33): 0x08 kernel
// code 32-bit, 0x10 kernel code 64-bit, 0x18 kernel data, 0x20 user code
// 32-bit, 0x28 user data, 0x30 user code 64-bit, 0x40 the TSS (16 bytes).
constexpr uint64_t kGdt[] = {
    0,
    0x00cf9a000000ffff,
    0x00af9a000000ffff,
    0x00cf92000000ffff,
    0x00cffa000000ffff,
    0x00cff2000000ffff,
    0x00affa000000ffff,
    0,
};
constexpr uint16_t kTssSelector = 0x40;
constexpr uint32_t kTssLimit = 0x67;

// A 64-bit available-TSS system descriptor (SDM Vol. 3A §8.2.3, Figure 8-4).
void TssDescriptor(uint64_t base, uint64_t out[2]) {
  const uint64_t limit = kTssLimit;
  uint64_t low = (limit & 0xffff) | ((base & 0xffffff) << 16) | (uint64_t{0x89} << 40) |
                 (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
  out[0] = low;
  out[1] = base >> 32;
}

}  // namespace

absl::StatusOr<LongModeEntry> SetUpBoot(const ElfImage& image, const MemoryLayout& layout,
                                        const BootOptions& options, GuestMemory& memory) {
  if (options.cmdline.size() > BootAddresses::kCmdlineMax) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "guest command line is %u bytes; the limit is %u", options.cmdline.size(),
        BootAddresses::kCmdlineMax));
  }
  if (layout.ram.empty() || layout.ram.front().gpa != 0 ||
      layout.ram.front().size < MemoryLayout::kMinRamBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "guest RAM must start at 0 and be at least %u MiB", MemoryLayout::kMinRamBytes >> 20));
  }
  TRY(CheckImageFitsRam(image, layout.ram_bytes(), [&](uint64_t gpa, uint64_t len) {
    return gpa >= 0x100000 && layout.IsRam(gpa, len);
  }));
  TRY(CopyImageToGuest(image, memory));

  // Identity map of 0..4 GiB with 2 MiB pages; the MMIO hole uncached. The
  // kernel switches to its own tables at once (docs/boot.md).
  using namespace mmu;
  uint64_t pml4[512] = {};
  uint64_t pdpt[512] = {};
  pml4[0] = BootAddresses::kPdpt | pte::kPresent | pte::kWritable;
  for (uint64_t gib = 0; gib < 4; ++gib) {
    pdpt[gib] = (BootAddresses::kPd + gib * 0x1000) | pte::kPresent | pte::kWritable;
    uint64_t pd[512];
    for (uint64_t i = 0; i < 512; ++i) {
      const uint64_t pa = (gib << 30) | (i << 21);
      uint64_t e = pa | pte::kPresent | pte::kWritable | pte::kPageSize;
      if (pa >= MemoryLayout::kMmioHoleStart) e |= pte::kCacheDisable | pte::kWriteThrough;
      pd[i] = e;
    }
    if (!memory.Write(base::Gpa(BootAddresses::kPd + gib * 0x1000), pd, sizeof(pd))) {
      return absl::InternalError("cannot write boot page directory");
    }
  }
  if (!memory.Write(base::Gpa(BootAddresses::kPml4), pml4, sizeof(pml4)) ||
      !memory.Write(base::Gpa(BootAddresses::kPdpt), pdpt, sizeof(pdpt))) {
    return absl::InternalError("cannot write boot page tables");
  }

  uint64_t gdt[sizeof(kGdt) / 8 + 2];
  std::memcpy(gdt, kGdt, sizeof(kGdt));
  TssDescriptor(BootAddresses::kTss, &gdt[kTssSelector / 8]);
  uint8_t tss[kTssLimit + 1] = {};
  if (!memory.Write(base::Gpa(BootAddresses::kGdt), gdt, sizeof(gdt)) ||
      !memory.Write(base::Gpa(BootAddresses::kTss), tss, sizeof(tss))) {
    return absl::InternalError("cannot write boot GDT/TSS");
  }

  // The memory map: RAM below 1 MiB is reserved for these structures.
  std::vector<guest::BootMemEntry> map;
  map.push_back({0, 0x100000, guest::kBootMemReserved, 0});
  for (const RamRange& r : layout.ram) {
    const uint64_t start = r.gpa < 0x100000 ? 0x100000 : r.gpa;
    if (r.gpa + r.size > start) map.push_back({start, r.gpa + r.size - start, guest::kBootMemUsable, 0});
  }
  if (!memory.Write(base::Gpa(BootAddresses::kMemMap), map.data(),
                    map.size() * sizeof(guest::BootMemEntry)) ||
      !memory.Write(base::Gpa(BootAddresses::kCmdline), options.cmdline.data(),
                    options.cmdline.size())) {
    return absl::InternalError("cannot write boot memory map or command line");
  }
  guest::BootInfo info = {};
  info.magic = guest::kBootInfoMagic;
  info.version = guest::kBootInfoVersion;
  info.flags = options.flags;
  info.mem_map_gpa = BootAddresses::kMemMap;
  info.mem_map_entries = static_cast<uint32_t>(map.size());
  info.cmdline_gpa = BootAddresses::kCmdline;
  info.cmdline_len = static_cast<uint32_t>(options.cmdline.size());
  info.tsc_khz = options.tsc_khz;
  info.lapic_khz = options.lapic_khz;
  if (!memory.WriteObj(base::Gpa(BootAddresses::kBootInfo), info)) {
    return absl::InternalError("cannot write boot info");
  }

  LongModeEntry entry;
  entry.rip = image.entry;
  entry.rdi = BootAddresses::kBootInfo;
  entry.rsp = BootAddresses::kStackTop;
  entry.cr3 = BootAddresses::kPml4;
  entry.gdt_base = BootAddresses::kGdt;
  entry.gdt_limit = static_cast<uint16_t>(sizeof(gdt) - 1);
  entry.tss_base = BootAddresses::kTss;
  return entry;
}

LongModeEntry SecondaryVcpuEntry(const LongModeEntry& bsp, int index) {
  CHECK(index >= 1 && index < BootAddresses::kMaxVcpus);
  LongModeEntry entry = bsp;
  entry.rdi = static_cast<uint64_t>(index);
  entry.rsp = BootAddresses::kStackTop + static_cast<uint64_t>(index) * BootAddresses::kSecondaryStackBytes;
  return entry;
}

}  // namespace vmm

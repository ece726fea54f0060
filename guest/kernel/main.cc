// Kernel entry: turns either boot protocol's information into one view
// (memory ranges, command line, platform flags), brings up the allocator,
// traps, timer and the device table, then starts init. Nothing here loops over
// pages: boot cost must stay small on the PVM host (docs/guest.md).
#include "guest/abi.h"
#include "guest/boot_info.h"
#include "guest/kernel/arch.h"
#include "guest/kernel/balloon.h"
#include "guest/kernel/cmdline.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lapic.h"
#include "guest/kernel/lib.h"
#include "guest/kernel/pmm.h"
#include "guest/kernel/proc.h"
#include "guest/kernel/trap.h"
#include "guest/kernel/virtio_table.h"

extern "C" {
extern uint64_t boot_pdpt[512];
extern const uint8_t kernel_phys_start[];
extern const uint8_t kernel_end[];
}

namespace kernel {
namespace {

constexpr uint64_t kBootSourcePvh = 1;
constexpr uint64_t kBootSourceVmm = 2;
constexpr uint64_t kLowMemoryEnd = 1 << 20;  // never allocated: firmware and boot data
constexpr uint64_t kStaticDirectMapEnd = 4ull << 30;
constexpr uint64_t kMaxPhys = 512ull << 30;  // one PDPT of direct map
constexpr int kMaxMemEntries = 64;
constexpr int kMaxReserved = 8;
constexpr uint64_t kCmdlineMax = guest::kUserCmdlineMax - 1;

// Xen PVH start info (xen/include/public/arch-x86/hvm/start_info.h).
constexpr uint32_t kHvmStartMagic = 0x336ec578;
struct HvmStartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;  // version >= 1
  uint32_t memmap_entries;
  uint32_t reserved;
};
struct HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};

struct BootView {
  guest::BootMemEntry mem[kMaxMemEntries];
  int num_mem = 0;
  PhysRange reserved[kMaxReserved];
  int num_reserved = 0;
  char cmdline[kCmdlineMax + 1];
  uint64_t cmdline_len = 0;
  uint64_t flags = 0;
  uint64_t tsc_khz = 0;
  uint64_t lapic_khz = 0;
};

BootView view;

void Reserve(uint64_t base, uint64_t len) {
  if (len == 0 || view.num_reserved == kMaxReserved) return;
  view.reserved[view.num_reserved++] = {base & kPageMask, (base + len + kPageSize - 1) & kPageMask};
}

// Guest input from the loader: lengths are clamped to our buffers, and every
// address is read through the direct map, which covers all of 0..4 GiB.
void CopyCmdline(uint64_t pa, uint64_t len) {
  if (pa == 0) return;
  const char* s = PhysToVirt<const char>(pa);
  uint64_t n = 0;
  while (n < len && n < kCmdlineMax && s[n] != 0) ++n;
  memcpy(view.cmdline, s, n);
  view.cmdline[n] = 0;
  view.cmdline_len = n;
  Reserve(pa, n + 1);
}

bool ReadPvh(uint64_t pa) {
  const auto* info = PhysToVirt<const HvmStartInfo>(pa);
  if (info->magic != kHvmStartMagic || info->version < 1) return false;
  Reserve(pa, sizeof(HvmStartInfo));
  CopyCmdline(info->cmdline_paddr, ~0ull);
  const auto* e = PhysToVirt<const HvmMemmapEntry>(info->memmap_paddr);
  for (uint32_t i = 0; i < info->memmap_entries && view.num_mem < kMaxMemEntries; ++i) {
    view.mem[view.num_mem++] = {e[i].addr, e[i].size, e[i].type, 0};
  }
  Reserve(info->memmap_paddr, info->memmap_entries * sizeof(HvmMemmapEntry));
  return true;
}

bool ReadBootInfo(uint64_t pa) {
  const auto* info = PhysToVirt<const guest::BootInfo>(pa);
  if (info->magic != guest::kBootInfoMagic || info->version != guest::kBootInfoVersion) {
    return false;
  }
  Reserve(pa, sizeof(guest::BootInfo));
  view.flags = info->flags;
  view.tsc_khz = info->tsc_khz;
  view.lapic_khz = info->lapic_khz;
  CopyCmdline(info->cmdline_gpa, info->cmdline_len);
  const auto* e = PhysToVirt<const guest::BootMemEntry>(info->mem_map_gpa);
  for (uint32_t i = 0; i < info->mem_map_entries && view.num_mem < kMaxMemEntries; ++i) {
    view.mem[view.num_mem++] = e[i];
  }
  Reserve(info->mem_map_gpa, info->mem_map_entries * sizeof(guest::BootMemEntry));
  return true;
}

struct Options {
  KernelOptions kernel;
  BalloonConfig balloon;
  bool ram_zeroed = false;
  bool pv_mem = false;
  bool global_pages = true;
  bool kernel_fault_test = false;
  uint64_t tsc_khz = 0;
  uint64_t lapic_khz = 0;
  bool ok = true;
};

bool ParseBool(const CmdlineWord& w) {
  return w.value == nullptr || StrEqN(w.value, w.value_len, "1") ||
         StrEqN(w.value, w.value_len, "on");
}

Options ParseOptions() {
  Options o;
  o.kernel.trap_entry = view.flags & guest::kBootFlagTrapEntry;
  o.ram_zeroed = view.flags & guest::kBootFlagRamZeroed;
  o.pv_mem = view.flags & guest::kBootFlagPvMem;
  o.tsc_khz = view.tsc_khz;
  o.lapic_khz = view.lapic_khz;
  ForEachCmdlineWord(view.cmdline, view.cmdline_len, [&](const CmdlineWord& w) {
    auto is = [&](const char* k) { return StrEqN(w.key, w.key_len, k); };
    auto number = [&](uint64_t* out) {
      if (!w.value || !ParseU64(w.value, w.value_len, out)) {
        Printk("boot: bad number in '%s'\n", w.key);
        o.ok = false;
      }
    };
    if (is("entry")) {
      if (w.value && StrEqN(w.value, w.value_len, "trap")) {
        o.kernel.trap_entry = true;
      } else if (w.value && StrEqN(w.value, w.value_len, "syscall")) {
        o.kernel.trap_entry = false;
      } else {
        Printk("boot: entry= must be 'trap' or 'syscall'\n");
        o.ok = false;
      }
    } else if (is("ram_zeroed")) {
      o.ram_zeroed = ParseBool(w);
    } else if (is("pv_mem")) {
      o.pv_mem = ParseBool(w);
    } else if (is("global_pages")) {
      o.global_pages = ParseBool(w);
    } else if (is("kfault")) {
      o.kernel_fault_test = ParseBool(w);
    } else if (is("tsc_khz")) {
      number(&o.tsc_khz);
    } else if (is("lapic_khz")) {
      number(&o.lapic_khz);
    } else if (is("tick_us")) {
      number(&o.kernel.tick_us);
      if (o.kernel.tick_us < 100) o.kernel.tick_us = 100;
    } else if (BalloonParseOption(w, &o.balloon, &o.ok)) {
      // virtio_balloon and virtio_balloon.* (balloon.h).
    } else if (is("virtio_mmio.device")) {
      if (!w.value || !VirtioTableAdd(w.value, w.value_len)) {
        Printk("boot: malformed virtio_mmio.device entry ignored\n");
      }
    }
    return true;
  });
  return o;
}

// Usable RAM above 1 MiB minus the kernel image and boot data, sorted.
int BuildRanges(PhysRange* out, uint64_t* max_pa) {
  int n = 0;
  *max_pa = 0;
  for (int i = 0; i < view.num_mem; ++i) {
    const guest::BootMemEntry& e = view.mem[i];
    if (e.type != guest::kBootMemUsable) continue;
    uint64_t base = (e.base + kPageSize - 1) & kPageMask;
    uint64_t end = (e.base + e.length) & kPageMask;
    if (end > kMaxPhys) end = kMaxPhys;
    if (base < kLowMemoryEnd) base = kLowMemoryEnd;
    if (end <= base) continue;
    if (end > *max_pa) *max_pa = end;
    if (n < kMaxMemEntries) out[n++] = {base, end};
  }
  // Insertion sort: a handful of entries.
  for (int i = 1; i < n; ++i) {
    for (int j = i; j > 0 && out[j].base < out[j - 1].base; --j) {
      PhysRange t = out[j];
      out[j] = out[j - 1];
      out[j - 1] = t;
    }
  }
  // Subtract each reserved interval, splitting ranges where needed.
  for (int r = 0; r < view.num_reserved; ++r) {
    const PhysRange& cut = view.reserved[r];
    for (int i = 0; i < n; ++i) {
      PhysRange& a = out[i];
      if (cut.end <= a.base || cut.base >= a.end) continue;
      if (cut.base > a.base && cut.end < a.end && n < kMaxMemEntries) {
        for (int j = n; j > i + 1; --j) out[j] = out[j - 1];
        out[i + 1] = {cut.end, a.end};
        ++n;
        a.end = cut.base;
      } else if (cut.base > a.base) {
        a.end = cut.base;
      } else {
        a.base = cut.end < a.end ? cut.end : a.end;
      }
    }
  }
  return n;
}

// The boot tables map 0..4 GiB; RAM above gets 2 MiB direct-map pages here,
// one page directory per GiB (shared by every process through PML4 slot 256).
bool ExtendDirectMap(uint64_t max_pa) {
  uint64_t* pdpt = PhysToVirt<uint64_t>(reinterpret_cast<uint64_t>(boot_pdpt));
  for (uint64_t gib = kStaticDirectMapEnd >> 30; (gib << 30) < max_pa; ++gib) {
    uint64_t pd_pa = PmmCarveContiguous(1);
    if (pd_pa == 0 || pd_pa >= kStaticDirectMapEnd) return false;
    uint64_t* pd = PhysToVirt<uint64_t>(pd_pa);
    // Present, writable, 2 MiB, global (like the static part, boot.S).
    for (uint64_t i = 0; i < 512; ++i) pd[i] = ((gib << 30) + (i << 21)) | 0x183;
    pdpt[gib] = pd_pa | 0x3;
  }
  return true;
}

[[noreturn]] void BootError(const char* why) {
  Printk("BOOT ERROR: %s\n", why);
  ExitGuest(guest::kExitBootError);
}

}  // namespace
}  // namespace kernel

extern "C" [[noreturn]] void KernelMain(uint64_t info_pa, uint64_t source) {
  using namespace kernel;
  Outb(guest::kSerialPort + 1, 0);  // UART: no interrupts
  Printk("\nmemvmm guest kernel: %s boot, info at %lx\n",
         source == kBootSourcePvh ? "PVH" : "64-bit", info_pa);
  bool ok = source == kBootSourcePvh ? ReadPvh(info_pa)
            : source == kBootSourceVmm ? ReadBootInfo(info_pa)
                                       : false;
  if (!ok) BootError("no valid boot information");
  Printk("cmdline: %s\n", view.cmdline);
  Options options = ParseOptions();
  if (!options.ok) BootError("bad command line");
  SetPvMem(options.pv_mem);
  // The kernel half is mapped global (boot.S): with CR4.PGE a process switch
  // keeps it in the TLB. Setting PGE flushes the TLB, globals included.
  const bool pge = options.global_pages && (Cpuid(1).edx & kCpuid1EdxPge);
  if (pge) WriteCr4(ReadCr4() | kCr4Pge);

  Reserve(reinterpret_cast<uint64_t>(kernel_phys_start),
          KernelVirtToPhys(kernel_end) - reinterpret_cast<uint64_t>(kernel_phys_start));
  PhysRange ranges[kMaxMemEntries];
  uint64_t max_pa;
  int num_ranges = BuildRanges(ranges, &max_pa);
  PmmSetRanges(ranges, num_ranges, options.ram_zeroed);
  if (!ExtendDirectMap(max_pa) || !PmmInitCounts(max_pa)) BootError("not enough memory");
  for (int i = 0; i < num_ranges; ++i) {
    Printk("mem: usable %lx-%lx\n", ranges[i].base, ranges[i].end);
  }
  Printk("mem: %lu pages free, ram_zeroed=%d pv_mem=%d global_pages=%d\n",
         GetPmmStats().free_pages, options.ram_zeroed, options.pv_mem, pge);

  TrapInit();
  LapicInit(options.tsc_khz, options.lapic_khz, options.kernel.tick_us);
  VirtioTablePrint();
  BalloonInit(options.balloon);
  if (options.kernel_fault_test) {
    // Test hook (kfault=1): an unmapped kernel address must end in a panic.
    *reinterpret_cast<volatile uint64_t*>(0xffffc00000000000ull) = 1;
  }
  ProcInit(options.kernel, view.cmdline, view.cmdline_len);
  StartInit();
}

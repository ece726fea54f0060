// The guest-physical memory map of a VM (docs/vmm.md, "Memory map").
//
//   [0, min(ram, 3 GiB))          RAM; the boot structures live below 1 MiB
//   [3 GiB, 4 GiB)                the MMIO hole: virtio-mmio devices at
//                                 kVirtioMmioBase, the IOAPIC and LAPIC
//   [4 GiB, 4 GiB + rest)         RAM beyond 3 GiB, if any
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <vector>

namespace vmm {

struct RamRange {
  uint64_t gpa = 0;
  uint64_t size = 0;
};

struct MemoryLayout {
  static constexpr uint64_t kMmioHoleStart = uint64_t{3} << 30;
  static constexpr uint64_t kMmioHoleEnd = uint64_t{4} << 30;
  static constexpr uint64_t kVirtioMmioBase = 0xd000'0000;
  static constexpr uint64_t kVirtioMmioStride = 0x1000;
  static constexpr uint32_t kVirtioMaxDevices = 16;
  static constexpr uint32_t kVirtioFirstGsi = 5;  // IOAPIC pins 5.. (0-4 are legacy)
  static constexpr uint64_t kIoapicBase = 0xfec0'0000;
  static constexpr uint64_t kLapicBase = 0xfee0'0000;
  // The smallest RAM that holds the boot structures and a useful kernel.
  static constexpr uint64_t kMinRamBytes = uint64_t{16} << 20;

  std::vector<RamRange> ram;

  static MemoryLayout ForRamSize(uint64_t ram_bytes) {
    MemoryLayout layout;
    const uint64_t low = ram_bytes < kMmioHoleStart ? ram_bytes : kMmioHoleStart;
    layout.ram.push_back({0, low});
    if (ram_bytes > low) layout.ram.push_back({kMmioHoleEnd, ram_bytes - low});
    return layout;
  }
  uint64_t ram_bytes() const {
    uint64_t total = 0;
    for (const RamRange& r : ram) total += r.size;
    return total;
  }
  // True if [gpa, gpa + len) lies inside one RAM range (overflow-safe).
  bool IsRam(uint64_t gpa, uint64_t len) const {
    for (const RamRange& r : ram) {
      if (gpa >= r.gpa && gpa - r.gpa <= r.size && len <= r.size - (gpa - r.gpa)) return true;
    }
    return false;
  }
  static constexpr uint64_t VirtioMmioAddress(uint32_t slot) {
    return kVirtioMmioBase + slot * kVirtioMmioStride;
  }
};

}  // namespace vmm

#include "guest/kernel/virtio_table.h"

#include "guest/kernel/arch.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lib.h"

namespace kernel {
namespace {

VirtioMmioDevice devices[kMaxVirtioDevices];
int num_devices = 0;

// Registers live in the direct map's uncached 3..4 GiB window; outside it the
// kernel does not touch the device (docs/guest.md).
constexpr uint64_t kMmioWindowBase = 0xc0000000;
constexpr uint64_t kMmioWindowEnd = 0x100000000;
constexpr uint32_t kVirtioMagic = 0x74726976;  // "virt"

uint32_t ReadReg(uint64_t base, uint32_t offset) {
  return *PhysToVirt<volatile uint32_t>(base + offset);
}

}  // namespace

bool VirtioTableAdd(const char* v, uint32_t len) {
  uint32_t at = 0;
  while (at < len && v[at] != '@') ++at;
  uint32_t colon = at;
  while (colon < len && v[colon] != ':') ++colon;
  uint32_t colon2 = colon + 1;
  while (colon2 < len && v[colon2] != ':') ++colon2;
  VirtioMmioDevice d{};
  uint64_t irq = 0;
  if (at >= len || colon >= len || !ParseU64(v, at, &d.size) ||
      !ParseU64(v + at + 1, colon - at - 1, &d.base) ||
      !ParseU64(v + colon + 1, colon2 - colon - 1, &irq) || d.size == 0) {
    return false;
  }
  d.irq = static_cast<uint32_t>(irq);
  if (num_devices == kMaxVirtioDevices) return false;
  devices[num_devices++] = d;
  return true;
}

void VirtioTablePrint() {
  for (int i = 0; i < num_devices; ++i) {
    const VirtioMmioDevice& d = devices[i];
    if (d.base >= kMmioWindowBase && d.base + 0x10 <= kMmioWindowEnd) {
      uint32_t magic = ReadReg(d.base, 0x0);
      Printk("virtio-mmio: %lx size %lx irq %u magic %x version %u device %u vendor %x%s\n",
             d.base, d.size, d.irq, magic, ReadReg(d.base, 0x4), ReadReg(d.base, 0x8),
             ReadReg(d.base, 0xc), magic == kVirtioMagic ? "" : " (no virtio magic)");
    } else {
      Printk("virtio-mmio: %lx size %lx irq %u (outside the MMIO window, not probed)\n", d.base,
             d.size, d.irq);
    }
  }
}

int VirtioDeviceCount() { return num_devices; }
const VirtioMmioDevice& VirtioDevice(int i) { return devices[i]; }

}  // namespace kernel

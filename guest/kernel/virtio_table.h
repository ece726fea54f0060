// The virtio-mmio devices announced on the command line with the Linux
// convention `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`
// (Documentation/admin-guide/kernel-parameters.txt). The table is what the
// virtio-mmio driver core (guest-driver/) probes; here it is parsed, checked
// and printed, with each device's MagicValue/Version/DeviceID/VendorID
// registers (virtio 1.2, 4.2.2 "MMIO Device Register Layout").
#pragma once

#include <stdint.h>

namespace kernel {

struct VirtioMmioDevice {
  uint64_t base;
  uint64_t size;
  uint32_t irq;
};

inline constexpr int kMaxVirtioDevices = 32;

// Parses one entry's value; false if malformed.
bool VirtioTableAdd(const char* value, uint32_t len);
void VirtioTablePrint();
int VirtioDeviceCount();
const VirtioMmioDevice& VirtioDevice(int i);

}  // namespace kernel

// The same virtio-balloon for QEMU as our VMM gives a VM (VmConfig::balloon):
// the cross-backend tests run our VMs with the balloon and QEMU with its own
// virtio-mmio balloon, so the guest drives a balloon on every side.
//
// Our VMM announces its device as a `virtio_mmio.device=` word on the command
// line (docs/balloon.md); QEMU microvm with acpi=off appends its own entry for
// each virtio-mmio device, at its own address. So QEMU gets the command line
// without our device words, plus QemuBalloonArgs() on QemuBalloonMachine().
// QEMU's virtio-mmio is legacy unless force-legacy=false (docs/guest.md), and
// offers DEFLATE_ON_OOM and PAGE_REPORTING only when asked, as ours does.
#pragma once

#include <string>
#include <vector>

namespace vmm::testing {

inline std::string QemuBalloonMachine() { return "microvm,acpi=off"; }

inline std::vector<std::string> QemuBalloonArgs() {
  return {"-global", "virtio-mmio.force-legacy=false", "-device",
          "virtio-balloon-device,deflate-on-oom=on,free-page-reporting=on"};
}

// `cmdline` without its `virtio_mmio.device=` words (QEMU adds its own).
inline std::string WithoutVirtioMmioDevices(const std::string& cmdline) {
  std::string out;
  size_t pos = 0;
  while (pos < cmdline.size()) {
    size_t end = cmdline.find(' ', pos);
    if (end == std::string::npos) end = cmdline.size();
    const std::string word = cmdline.substr(pos, end - pos);
    if (!word.empty() && word.rfind("virtio_mmio.device=", 0) != 0) {
      if (!out.empty()) out += ' ';
      out += word;
    }
    pos = end + 1;
  }
  return out;
}

}  // namespace vmm::testing

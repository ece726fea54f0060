// The commands of the control interface (docs/vmm.md, "Control interface"),
// answered for the VMs of one `vmm run`:
//
//   {"cmd": "list"}
//       -> {"ok": true, "vms": [{"name", "backend", "paging_mode", "state"}]}
//   {"cmd": "stats", "vm": NAME}
//       -> {"ok": true, "vm": NAME, "state", "ram_bytes", "resident_frames",
//           "exits": {...}, "bus": {...}, "vm_stats": {...},
//           "vcpu_stats": {...}, "results": {...}}
//   {"cmd": "balloon", "vm": NAME, "target": SIZE (optional: bytes or "32M")}
//       -> {"ok": true, "vm": NAME, "target_bytes", "actual_bytes",
//           "inflated_bytes", "guest_stats": {...}, "guest_stats_age_seconds"}:
//          sets the balloon target when given (docs/balloon.md)
//   {"cmd": "counters", "vm": NAME, "prefix": P (optional)}
//       -> {"ok": true, "vm": NAME, "counters": {name: value}}: every counter
//          of the VM in one flat namespace ("exits.io", "bus.mmio_writes",
//          "shadow.pf_fixed", "cpu.instructions", ...), filtered by prefix
//
// Errors name the problem: an unknown command, an unknown VM, a missing or
// mistyped field.
//
// Thread safety: the handler runs on the control server's thread; Machine
// snapshots are safe while the VMs run.
#pragma once

#include <vector>

#include "vmm-host/control_server.h"
#include "vmm-host/machine.h"

namespace vmm {

// `machines` must outlive the handler.
ControlServer::Handler MakeControlHandler(std::vector<Machine*> machines);

}  // namespace vmm

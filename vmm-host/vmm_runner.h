// Runs a set of VMs from a RunConfig in one process and writes the report.
//
// Everything that can be checked before a VM exists is checked first (config,
// guest image, backend, host budget), and a failure there leaves nothing
// behind. Each VM then runs on its own vCPU thread; a watchdog stops a VM that
// does not exit within its timeout. One VM failing never stops the others.
//
// Thread safety: call from one thread.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vmm-host/machine.h"
#include "vmm-host/run_config.h"

namespace vmm {

struct RunOutcome {
  std::vector<MachineResult> vms;
  // Seconds from the RunVms call to each VM's Start() (after every VM was
  // created), so that "from `vmm run` to the first guest instruction" of VM i
  // is start_offset_seconds[i] + vms[i].seconds_to_first_exit.
  std::vector<double> start_offset_seconds;
  std::vector<std::string> failed;  // names of VMs that did not exit cleanly
  std::string report_path;
  std::string control_socket;  // where the control interface listened ("" if off)
  // 0 when every VM exited with code 0, else 1.
  int exit_status() const { return failed.empty() ? 0 : 1; }
};

// The guest kernel built in this tree (used when the config names none).
std::string DefaultKernelPath();

absl::StatusOr<RunOutcome> RunVms(const RunConfig& config);

}  // namespace vmm

// The JSON report of a run (schema: docs/vmm.md, "Report").
//
// Thread safety: plain functions.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "costmodel/cost_model.h"
#include "nlohmann/json.hpp"
#include "vmm-host/machine.h"

namespace vmm {

struct HostReport {
  std::string backend;
  std::string paging_mode;
  uint64_t budget_frames = 0;
  uint64_t frames_charged = 0;
  uint64_t frames_resident = 0;  // measured in the frame pool's memfd
  double wall_seconds = 0;
  std::string kernel_path;
};

// Renders the report as pretty-printed JSON. `costs` is the run's cost
// table (docs/cost-model.md); nullptr means the default table.
std::string RenderReport(const HostReport& host, const std::vector<MachineResult>& vms,
                         const std::vector<std::string>& cmdlines,
                         const costmodel::CostTable* costs = nullptr);

// One VM's object in the report's "vms" array (also the control
// interface's "stats" answer). Soft VMs get "modelled_cycles", priced with
// `costs` (nullptr: the default table).
nlohmann::ordered_json VmReportJson(const MachineResult& r, const std::string& cmdline,
                                    const costmodel::CostTable* costs = nullptr);

// The modelled cycles of a soft VM's counters (strategy, vCPU, exits) under
// `costs` (docs/cost-model.md). Zero classes for a kvm VM.
costmodel::ModelledCycles ModelledCyclesOf(const MachineResult& r, const costmodel::CostTable& costs);

// Writes it to `path` (atomically: a temporary file renamed into place).
absl::Status WriteReport(const std::string& path, const std::string& json);

}  // namespace vmm

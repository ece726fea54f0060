// The JSON report of a run (schema: docs/vmm.md, "Report").
//
// Thread safety: plain functions.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
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

// Renders the report as pretty-printed JSON.
std::string RenderReport(const HostReport& host, const std::vector<MachineResult>& vms,
                         const std::vector<std::string>& cmdlines);

// One VM's object in the report's "vms" array (also the control
// interface's "stats" answer).
nlohmann::ordered_json VmReportJson(const MachineResult& r, const std::string& cmdline);

// Writes it to `path` (atomically: a temporary file renamed into place).
absl::Status WriteReport(const std::string& path, const std::string& json);

}  // namespace vmm

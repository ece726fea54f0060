#include "vmm-host/report.h"

#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace vmm {
namespace {

using Json = nlohmann::ordered_json;

template <typename Block>
Json CountersJson(const Block& block) {
  Json out = Json::object();
  block.ForEach([&](std::string_view name, uint64_t value) { out[std::string(name)] = value; });
  return out;
}

Json StatsJson(const BackendStats& stats) {
  Json out = Json::object();
  for (const base::CounterValue& v : stats) out[v.name] = v.value;
  return out;
}

}  // namespace

costmodel::ModelledCycles ModelledCyclesOf(const MachineResult& r, const costmodel::CostTable& costs) {
  costmodel::CostInputs in;
  if (r.backend != "soft") return costmodel::Compute(costs, in);
  // paging_mode is "soft/<strategy>".
  const size_t slash = r.paging_mode.find('/');
  in.strategy = slash == std::string::npos ? r.paging_mode : r.paging_mode.substr(slash + 1);
  in.Add(r.vm_stats);
  in.Add(r.vcpu_stats);
  in.Add(r.exits.Snapshot("exits"));
  return costmodel::Compute(costs, in);
}

std::string RenderReport(const HostReport& host, const std::vector<MachineResult>& vms,
                         const std::vector<std::string>& cmdlines,
                         const costmodel::CostTable* costs) {
  Json root;
  root["schema"] = "memvmm.report/1";
  Json h;
  h["backend"] = host.backend;
  h["paging_mode"] = host.paging_mode;
  h["frame_bytes"] = 4096;
  h["budget_frames"] = host.budget_frames;
  h["frames_charged"] = host.frames_charged;
  h["frames_resident"] = host.frames_resident;
  h["wall_seconds"] = host.wall_seconds;
  h["kernel"] = host.kernel_path;
  root["host"] = h;
  Json list = Json::array();
  int ok = 0;
  Json failed = Json::array();
  for (size_t i = 0; i < vms.size(); ++i) {
    const MachineResult& r = vms[i];
    list.push_back(VmReportJson(r, i < cmdlines.size() ? cmdlines[i] : "", costs));
    if (r.ok()) {
      ++ok;
    } else {
      failed.push_back(r.name);
    }
  }
  root["vms"] = std::move(list);
  Json summary;
  summary["vms"] = vms.size();
  summary["ok"] = ok;
  summary["failed"] = std::move(failed);
  root["summary"] = std::move(summary);
  return root.dump(2) + "\n";
}

nlohmann::ordered_json VmReportJson(const MachineResult& r, const std::string& cmdline,
                                    const costmodel::CostTable* costs) {
  Json v;
  v["name"] = r.name;
  v["ok"] = r.ok();
  v["outcome"] = MachineOutcomeName(r.outcome);
  if (r.exit_code) v["exit_code"] = *r.exit_code; else v["exit_code"] = nullptr;
  if (!r.failure.empty()) v["failure"] = r.failure;
  if (!r.registers.empty()) v["registers"] = r.registers;
  v["cmdline"] = cmdline;
  v["wall_seconds"] = r.wall_seconds;
  v["seconds_to_first_exit"] = r.seconds_to_first_exit;
  v["seconds_to_workload_start"] = r.seconds_to_workload_start;
  Json mem;
  mem["guest_ram_bytes"] = r.ram_bytes;
  mem["resident_frames"] = r.resident_frames;
  v["memory"] = mem;
  v["exits"] = CountersJson(r.exits);
  v["bus"] = CountersJson(r.bus);
  Json results = Json::object();
  for (const GuestResult& g : r.results) results[g.name] = g.value;
  v["results"] = results;
  v["backend"] = r.backend;
  v["paging_mode"] = r.paging_mode;
  if (!r.paging_strategy.empty()) v["paging_strategy"] = r.paging_strategy;
  // The backend's own statistics: KVM's binary stats, or the soft CPU's,
  // LAPIC's and paging strategy's counters.
  v[r.backend + "_vm_stats"] = StatsJson(r.vm_stats);
  v[r.backend + "_vcpu_stats"] = StatsJson(r.vcpu_stats);
  if (r.backend == "soft" && r.models_hardware) {
    // The cost model (docs/cost-model.md): the classes sum to the total.
    const costmodel::CostTable& table = costs != nullptr ? *costs : costmodel::CostTable::Default();
    const costmodel::ModelledCycles m = ModelledCyclesOf(r, table);
    Json mc;
    mc["total"] = m.total;
    Json classes = Json::object();
    for (const auto& [name, value] : m.classes) classes[name] = value;
    mc["by_class"] = std::move(classes);
    Json events = Json::object();
    for (const auto& [name, count] : m.events) events[name] = count;
    mc["events"] = std::move(events);
    mc["table"] = table.origin();
    v["modelled_cycles"] = std::move(mc);
  }
  return v;
}

absl::Status WriteReport(const std::string& path, const std::string& json) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write report ", tmp, ": ", std::strerror(errno)));
    out << json;
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write report ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write report ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace vmm

#include "vmm-host/control_commands.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "vmm-host/report.h"

namespace vmm {
namespace {

using Json = ControlServer::Json;

const char* State(Machine& m) { return m.finished() ? "finished" : "running"; }

// Every counter of a snapshot under one flat name.
Json FlatCounters(const MachineResult& r, const std::string& prefix) {
  Json out = Json::object();
  auto add = [&](std::string name, uint64_t value) {
    if (name.compare(0, prefix.size(), prefix) == 0) out[std::move(name)] = value;
  };
  r.exits.ForEach([&](std::string_view n, uint64_t v) { add("exits." + std::string(n), v); });
  r.bus.ForEach([&](std::string_view n, uint64_t v) { add("bus." + std::string(n), v); });
  for (const base::CounterValue& c : r.vm_stats) add(absl::StrCat("vm.", c.name), c.value);
  for (const base::CounterValue& c : r.vcpu_stats) add(absl::StrCat("vcpu.", c.name), c.value);
  add("memory.resident_frames", r.resident_frames);
  return out;
}

}  // namespace

ControlServer::Handler MakeControlHandler(std::vector<Machine*> machines) {
  return [machines = std::move(machines)](const Json& request) -> Json {
    const std::string cmd = request["cmd"].get<std::string>();
    if (cmd == "list") {
      Json vms = Json::array();
      for (Machine* m : machines) {
        const MachineResult r = m->Snapshot();
        vms.push_back({{"name", r.name},
                       {"backend", r.backend},
                       {"paging_mode", r.paging_mode},
                       {"state", State(*m)}});
      }
      return {{"ok", true}, {"vms", std::move(vms)}};
    }
    if (cmd != "stats" && cmd != "counters") {
      return ControlServer::Error(
          absl::StrCat("unknown command '", cmd, "' (known: list, stats, counters)"));
    }
    if (!request.contains("vm") || !request["vm"].is_string()) {
      return ControlServer::Error(absl::StrCat("'", cmd, "' needs a string \"vm\""));
    }
    const std::string name = request["vm"].get<std::string>();
    Machine* machine = nullptr;
    for (Machine* m : machines) {
      if (m->name() == name) machine = m;
    }
    if (machine == nullptr) return ControlServer::Error(absl::StrCat("unknown VM '", name, "'"));
    const MachineResult snapshot = machine->Snapshot();
    if (cmd == "stats") {
      Json out = VmReportJson(snapshot, machine->cmdline());
      out["state"] = State(*machine);
      return {{"ok", true}, {"vm", name}, {"stats", std::move(out)}};
    }
    std::string prefix;
    if (request.contains("prefix")) {
      if (!request["prefix"].is_string()) return ControlServer::Error("\"prefix\" must be a string");
      prefix = request["prefix"].get<std::string>();
    }
    return {{"ok", true}, {"vm", name}, {"counters", FlatCounters(snapshot, prefix)}};
  };
}

}  // namespace vmm

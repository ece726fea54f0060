#include "vmm-host/control_commands.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "balloon/balloon.h"
#include "vmm-host/report.h"
#include "vmm-host/run_config.h"

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

// {"cmd": "balloon", "vm", "target": bytes or a size string (optional)}:
// sets the target when given, and answers the balloon's state.
Json Balloon(Machine& machine, const Json& request) {
  balloon::Balloon* b = machine.balloon();
  if (b == nullptr) {
    return ControlServer::Error(absl::StrCat("vm ", machine.name(), " has no balloon (VM field \"balloon\")"));
  }
  if (request.contains("target")) {
    const Json& t = request["target"];
    uint64_t bytes = 0;
    if (t.is_number_unsigned()) {
      bytes = t.get<uint64_t>();
    } else if (t.is_string()) {
      absl::StatusOr<uint64_t> parsed = ParseSize(t.get<std::string>());
      if (!parsed.ok()) return ControlServer::Error(parsed.status().message());
      bytes = *parsed;
    } else {
      return ControlServer::Error("\"target\" must be a size: bytes, or a string like \"32M\"");
    }
    if (absl::Status s = machine.SetBalloonTarget(bytes); !s.ok()) {
      return ControlServer::Error(s.message());
    }
  }
  constexpr uint64_t kPage = 4096;
  Json out = {{"ok", true},
              {"vm", machine.name()},
              {"target_bytes", uint64_t{b->target_pages()} * kPage},
              {"actual_bytes", uint64_t{b->actual_pages()} * kPage},
              {"inflated_bytes", b->inflated_pages() * kPage}};
  if (const std::optional<balloon::BalloonStats> stats = b->LastStats()) {
    Json guest = Json::object();
    for (uint16_t tag = 0; tag < balloon::kNumStatTags; ++tag) {
      if (stats->values[tag]) {
        guest[std::string(balloon::StatTagName(static_cast<balloon::StatTag>(tag)))] =
            *stats->values[tag];
      }
    }
    out["guest_stats"] = std::move(guest);
    out["guest_stats_age_seconds"] = absl::ToDoubleSeconds(absl::Now() - stats->updated_at);
  }
  return out;
}

// {"cmd": "paging", "vm", "strategy": name (optional)}: asks the VM to
// switch its paging strategy when given (the vCPU thread does it at its next
// safe point), and answers the strategy running now and the switches done.
Json Paging(Machine& machine, const Json& request) {
  Json out = {{"ok", true}, {"vm", machine.name()}};
  if (request.contains("strategy")) {
    if (!request["strategy"].is_string()) return ControlServer::Error("\"strategy\" must be a string");
    const std::string name = request["strategy"].get<std::string>();
    if (absl::Status s = machine.SetPagingStrategy(name); !s.ok()) return ControlServer::Error(s.message());
    out["requested"] = name;
  }
  const MachineResult r = machine.Snapshot();
  out["paging_mode"] = r.paging_mode;
  out["strategy"] = r.paging_strategy;
  for (const base::CounterValue& c : r.vm_stats) {
    if (c.name == "vm.strategy_switches") out["switches"] = c.value;
  }
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
    if (cmd != "stats" && cmd != "counters" && cmd != "balloon" && cmd != "paging") {
      return ControlServer::Error(
          absl::StrCat("unknown command '", cmd, "' (known: list, stats, counters, balloon, paging)"));
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
    if (cmd == "balloon") return Balloon(*machine, request);
    if (cmd == "paging") return Paging(*machine, request);
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

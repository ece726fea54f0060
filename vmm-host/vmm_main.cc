// vmm: the hosted VMM's command-line front end.
//
//   vmm run                       a few guests running the mix workload
//   vmm run --count=8 --workload=memtouch --workload_args="mib=8"
//   vmm run --config=run.json --report=out.json
//   vmm ctl list                  ask a running vmm (its control socket)
//
// Flags override the config file for every VM. See docs/vmm.md.
#include <cstdio>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "vmm-host/control_server.h"
#include "vmm-host/run_config.h"
#include "vmm-host/vmm_runner.h"

ABSL_FLAG(std::string, config, "", "JSON run config describing the VMs (docs/vmm.md)");
ABSL_FLAG(std::string, backend, "kvm",
          "execution backend: kvm (/dev/kvm) or soft (our interpreter; every access through --paging)");
ABSL_FLAG(std::string, paging, "native",
          "soft backend paging strategy: native, shadow, nested or adaptive (chooses shadow or "
          "nested per interval; docs/paging-strategies.md)");
ABSL_FLAG(uint64_t, adaptive_interval, adaptive::Options{}.interval,
          "--paging=adaptive: guest instructions per decision interval");
ABSL_FLAG(double, adaptive_margin, adaptive::Options{}.margin,
          "--paging=adaptive: switch only when the other strategy is estimated cheaper by this "
          "fraction, in [0, 1)");
ABSL_FLAG(uint32_t, adaptive_streak, adaptive::Options{}.streak,
          "--paging=adaptive: ... for this many consecutive intervals");
ABSL_FLAG(uint32_t, adaptive_min_dwell, adaptive::Options{}.min_dwell,
          "--paging=adaptive: intervals a strategy runs at least before the next switch");
ABSL_FLAG(double, adaptive_urgent_factor, adaptive::Options{}.urgent_factor,
          "--paging=adaptive: savings of this many times the cost of switching switch at once "
          "(streak and dwell waived); at least 1");
ABSL_FLAG(bool, nested_large_pages, true,
          "soft backend, nested and adaptive: 2 MiB EPT entries where the backing allows");
ABSL_FLAG(uint64_t, soft_cpu_khz, 1000000,
          "soft backend: modelled CPU frequency in kHz (one instruction per cycle)");
ABSL_FLAG(uint64_t, soft_slice, 100000,
          "soft backend: guest instructions per vCPU turn when a VM has several vCPUs");
ABSL_FLAG(std::string, soft_hw_model, "exact",
          "soft backend: exact (the cost model's TLB model bounds the soft TLB), fast (it does "
          "not) or off (no hardware model and no modelled cycles: the interpreter's raw speed)");
ABSL_FLAG(bool, shadow_audit, false,
          "soft backend, --paging=shadow: audit the shadow tables at every resync (slow)");
ABSL_FLAG(std::string, cost_model, "",
          "soft backend: JSON file overriding some or all per-event costs of the cost model "
          "(docs/cost-model.md)");
ABSL_FLAG(std::string, ram, "64M", "guest RAM per VM, e.g. 64M or 1G");
ABSL_FLAG(int, vcpus, 1, "vCPUs per VM");
ABSL_FLAG(int, count, 3, "number of identical VMs (without --config)");
ABSL_FLAG(std::string, workload, "mix", "guest workload: compute, memtouch, ptchurn, tlbstress, dedupfill, idle, mix");
// The default keeps the built-in run short on hosts where guest kernel code is
// emulated (docs/platform.md): ptchurn's page-table traffic dominates there.
ABSL_FLAG(std::string, workload_args, "mib=4 ptchurn.iters=40",
          "workload parameters, e.g. \"mib=8 passes=2\"");
ABSL_FLAG(std::string, cmdline, "", "extra guest kernel command-line words");
ABSL_FLAG(std::string, host_budget, "", "host memory budget for all guests (default: their total RAM)");
ABSL_FLAG(std::string, report, "vmm-report.json", "where to write the JSON report");
ABSL_FLAG(std::string, log_dir, "vmm-logs", "directory for per-VM serial logs");
ABSL_FLAG(std::string, control_socket, "",
          "vmm run: the control interface's Unix socket (default <log_dir>/control.sock; off: none)");
ABSL_FLAG(std::string, socket, "vmm-logs/control.sock",
          "vmm ctl: the control socket of the running vmm");
ABSL_FLAG(std::string, kernel, "", "guest kernel ELF (default: the one built with this tree)");
ABSL_FLAG(double, timeout, 120, "seconds a VM may run before it is stopped as hung");
ABSL_FLAG(bool, echo_console, true, "print guest console lines to stdout with a [vm] prefix");

namespace {

// Names of the flags given on the command line. (This Abseil release keeps
// CommandLineFlag::IsSpecifiedOnCommandLine private, so look at argv.)
std::set<std::string>& GivenFlags() {
  static std::set<std::string> given;
  return given;
}
void RecordGivenFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--") break;
    if (a.size() < 2 || a[0] != '-') continue;
    a.remove_prefix(a[1] == '-' ? 2 : 1);
    a = a.substr(0, a.find('='));
    if (a.substr(0, 2) == "no") GivenFlags().insert(std::string(a.substr(2)));  // --nofoo
    GivenFlags().insert(std::string(a));
  }
}
bool Specified(const std::string& name) { return GivenFlags().count(name) != 0; }

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "vmm: %s\n", std::string(status.message()).c_str());
  return 2;
}

// vmm ctl: one request to a running vmm's control interface, the answer on
// stdout. Exit status 0 if it was answered ok, 1 if answered with an error,
// 2 if it could not be asked.
int Ctl(const std::vector<char*>& args) {
  using Json = vmm::ControlServer::Json;
  const std::string usage =
      "usage: vmm ctl [--socket=PATH] list | stats VM | counters VM [PREFIX] | balloon VM [SIZE] "
      "| paging VM [STRATEGY] | raw JSON";
  if (args.size() < 3) {
    std::fprintf(stderr, "vmm: %s\n", usage.c_str());
    return 2;
  }
  const std::string what = args[2];
  const size_t n = args.size() - 3;  // operands after the command
  Json request;
  if (what == "list" && n == 0) {
    request = {{"cmd", "list"}};
  } else if (what == "stats" && n == 1) {
    request = {{"cmd", "stats"}, {"vm", args[3]}};
  } else if (what == "counters" && (n == 1 || n == 2)) {
    request = {{"cmd", "counters"}, {"vm", args[3]}};
    if (n == 2) request["prefix"] = args[4];
  } else if (what == "balloon" && (n == 1 || n == 2)) {
    request = {{"cmd", "balloon"}, {"vm", args[3]}};
    if (n == 2) request["target"] = args[4];
  } else if (what == "paging" && (n == 1 || n == 2)) {
    request = {{"cmd", "paging"}, {"vm", args[3]}};
    if (n == 2) request["strategy"] = args[4];
  } else if (what == "raw" && n == 1) {
    request = Json::parse(args[3], nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded()) {
      std::fprintf(stderr, "vmm: ctl raw: not JSON: %s\n", args[3]);
      return 2;
    }
  } else {
    std::fprintf(stderr, "vmm: %s\n", usage.c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<vmm::ControlClient>> client =
      vmm::ControlClient::Connect(absl::GetFlag(FLAGS_socket));
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<Json> answer = (*client)->Call(request);
  if (!answer.ok()) return Fail(answer.status());
  std::printf("%s\n", answer->dump(2, ' ', false, Json::error_handler_t::replace).c_str());
  return answer->value("ok", false) ? 0 : 1;
}

absl::StatusOr<vmm::RunConfig> BuildConfig() {
  vmm::RunConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::StatusOr<vmm::RunConfig> loaded = vmm::LoadRunConfig(absl::GetFlag(FLAGS_config));
    if (!loaded.ok()) return loaded.status();
    config = *std::move(loaded);
  } else {
    vmm::VmConfig vm;
    const int count = absl::GetFlag(FLAGS_count);
    if (count < 1 || count > 1024) return absl::InvalidArgumentError("--count: expected 1..1024");
    for (int i = 0; i < count; ++i) {
      vm.name = absl::StrCat("vm", i);
      config.vms.push_back(vm);
    }
  }
  // Flags given on the command line override the file for every VM; without
  // a file, every flag applies (defaults included).
  const bool all = absl::GetFlag(FLAGS_config).empty();
  absl::StatusOr<uint64_t> ram = vmm::ParseSize(absl::GetFlag(FLAGS_ram));
  if (!ram.ok()) return absl::InvalidArgumentError(absl::StrCat("--ram: ", ram.status().message()));
  for (vmm::VmConfig& vm : config.vms) {
    if (all || Specified("backend")) vm.backend = absl::GetFlag(FLAGS_backend);
    if (all || Specified("paging")) vm.paging = absl::GetFlag(FLAGS_paging);
    if (all || Specified("ram")) vm.ram_bytes = *ram;
    if (all || Specified("vcpus")) vm.vcpus = absl::GetFlag(FLAGS_vcpus);
    if (all || Specified("workload")) vm.workload = absl::GetFlag(FLAGS_workload);
    if (all || Specified("workload_args")) vm.workload_args = absl::GetFlag(FLAGS_workload_args);
    if (all || Specified("cmdline")) vm.extra_cmdline = absl::GetFlag(FLAGS_cmdline);
    if (all || Specified("timeout")) vm.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  }
  if (!absl::GetFlag(FLAGS_host_budget).empty()) {
    absl::StatusOr<uint64_t> budget = vmm::ParseSize(absl::GetFlag(FLAGS_host_budget));
    if (!budget.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--host_budget: ", budget.status().message()));
    }
    config.host_budget_bytes = *budget;
  }
  if (all || Specified("report")) config.report_path = absl::GetFlag(FLAGS_report);
  if (all || Specified("log_dir")) config.log_dir = absl::GetFlag(FLAGS_log_dir);
  if (all || Specified("kernel")) config.kernel_path = absl::GetFlag(FLAGS_kernel);
  if (all || Specified("echo_console")) config.echo_console = absl::GetFlag(FLAGS_echo_console);
  if (all || Specified("soft_cpu_khz")) config.soft_cpu_khz = absl::GetFlag(FLAGS_soft_cpu_khz);
  if (all || Specified("soft_slice")) config.soft_slice = absl::GetFlag(FLAGS_soft_slice);
  if (all || Specified("shadow_audit")) config.shadow_audit = absl::GetFlag(FLAGS_shadow_audit);
  if (all || Specified("adaptive_interval")) config.adaptive_interval = absl::GetFlag(FLAGS_adaptive_interval);
  if (all || Specified("adaptive_margin")) config.adaptive_margin = absl::GetFlag(FLAGS_adaptive_margin);
  if (all || Specified("adaptive_streak")) config.adaptive_streak = absl::GetFlag(FLAGS_adaptive_streak);
  if (all || Specified("adaptive_min_dwell")) config.adaptive_min_dwell = absl::GetFlag(FLAGS_adaptive_min_dwell);
  if (all || Specified("adaptive_urgent_factor")) {
    config.adaptive_urgent_factor = absl::GetFlag(FLAGS_adaptive_urgent_factor);
  }
  if (all || Specified("nested_large_pages")) config.nested_large_pages = absl::GetFlag(FLAGS_nested_large_pages);
  if (all || Specified("soft_hw_model")) config.soft_hw_model = absl::GetFlag(FLAGS_soft_hw_model);
  if (all || Specified("cost_model")) config.cost_model = absl::GetFlag(FLAGS_cost_model);
  if (all || Specified("control_socket")) config.control_socket = absl::GetFlag(FLAGS_control_socket);
  return config;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "a hosted VMM with a pluggable memory manager.\n"
      "  vmm run [flags]    run guests (no flags: a few guests running the mix workload)\n"
      "  vmm ctl [--socket=PATH] list | stats VM | counters VM [PREFIX] | balloon VM [SIZE]\n"
      "          | paging VM [STRATEGY] | raw JSON\n"
      "                     ask a running vmm (docs/vmm.md, \"Control interface\")");
  RecordGivenFlags(argc, argv);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::fprintf(stderr, "vmm: missing command; try: vmm run  (see --help)\n");
    return 2;
  }
  const std::string command = args[1];
  if (command == "ctl") return Ctl(args);
  if (command != "run") {
    std::fprintf(stderr, "vmm: unknown command '%s'; try: vmm run\n", command.c_str());
    return 2;
  }
  if (args.size() > 2) {
    std::fprintf(stderr, "vmm: unexpected argument '%s'\n", args[2]);
    return 2;
  }
  absl::StatusOr<vmm::RunConfig> config = BuildConfig();
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<vmm::RunOutcome> outcome = vmm::RunVms(*config);
  if (!outcome.ok()) return Fail(outcome.status());
  int ok = 0;
  for (const vmm::MachineResult& r : outcome->vms) {
    std::string results;
    for (const vmm::GuestResult& g : r.results) absl::StrAppend(&results, " ", g.name, "=", g.value);
    std::printf("vm %-10s %-12s %6.2fs%s%s\n", r.name.c_str(),
                r.ok() ? "ok" : vmm::MachineOutcomeName(r.outcome), r.wall_seconds,
                r.failure.empty() ? "" : ("  " + r.failure).c_str(), results.c_str());
    ok += r.ok();
  }
  std::printf("%d of %zu VMs ok; report: %s\n", ok, outcome->vms.size(), outcome->report_path.c_str());
  if (!outcome->failed.empty()) {
    std::string names;
    for (const std::string& n : outcome->failed) absl::StrAppend(&names, names.empty() ? "" : ", ", n);
    std::fprintf(stderr, "vmm: failed VMs: %s\n", names.c_str());
  }
  return outcome->exit_status();
}

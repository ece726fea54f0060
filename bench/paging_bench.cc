// The paging-strategy matrix of the soft backend: each workload runs under
// each strategy (`vmm run --backend soft --paging <s>`, one VM, one vCPU),
// and the table gives host wall time (median over --runs), its ratio to
// native, the exits the strategy would take on hardware, and the strategy's
// own counters. Every run must give the same guest results as native (the
// checksums and counts the guest reports; on soft even elapsed_ns, which
// counts instructions), or the bench fails.
//
//   paging_bench [--runs=3]
//                [--strategies=native,shadow,nested,nested-4k,adaptive,adaptive-4k]
//                [--workloads=ptchurn,memtouch4k,tlbstress,compute,mix,phases]
//                [--cost_model=overrides.json]
//
// Wall time is host seconds around vmm::RunVms, boot included (the same for
// every strategy); the detail rows give the guest-side figures. Modelled
// cycles are the cost model's (docs/cost-model.md): the counters priced
// with the default table, or with --cost_model's overrides; their ratio to
// native is the figure to compare with the literature. Native is
// the "bare metal" reference and takes no exits. Timings on shared machines
// are noisy: medians and ratios only, never tests.
//
// Columns: a paging strategy (`--paging`), `nested-4k` (nested with 4 KiB
// EPT entries only, run config nested_large_pages false: the setting the
// literature's "shadow beats nested on TLB misses" is about), `adaptive`
// (starts on nested, chooses shadow or nested per interval; its counters
// are both strategies' summed, and the switches it made are shown), or
// `adaptive-4k` (adaptive whose nested periods use 4 KiB EPT entries).
// The last table compares each adaptive column's modelled cycles with the
// better of the two strategies it chooses between, in the same EPT setting.
//
// Rows: the workloads, and `phases`: mix run serially as ptchurn, tlbstress,
// ptchurn, tlbstress with long phases, the shape adaptive paging is for
// (table churn, where nested wins, then steady TLB misses over a mapped
// working set, where shadow wins against 4 KiB EPT entries).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/log.h"
#include "costmodel/cost_model.h"
#include "vmm-host/report.h"
#include "vmm-host/run_config.h"
#include "vmm-host/vmm_runner.h"

ABSL_FLAG(int, runs, 3, "repetitions per cell (medians are printed)");
ABSL_FLAG(std::string, strategies, "native,shadow,nested,nested-4k,adaptive,adaptive-4k",
          "paging strategies (or nested-4k, adaptive, adaptive-4k), the first is the reference");
ABSL_FLAG(std::string, workloads, "ptchurn,memtouch4k,tlbstress,compute,mix,phases",
          "rows: ptchurn, memtouch4k, tlbstress, compute, mix, phases");
ABSL_FLAG(std::string, cost_model, "", "JSON overrides of the cost model's table");

namespace {

using Clock = std::chrono::steady_clock;

struct Case {
  const char* row;
  const char* workload;
  const char* args;
  uint32_t memory_mib;
};

constexpr Case kCases[] = {
    {"ptchurn", "ptchurn", "ptchurn.iters=800 ptchurn.pages=64 ptchurn.procs=3", 128},
    {"memtouch4k", "memtouch", "memtouch.mib=64 memtouch.stride=4096 memtouch.passes=128", 256},
    {"tlbstress", "tlbstress", "tlbstress.mib=64 tlbstress.passes=128", 256},
    {"compute", "compute", "compute.iters=20000000", 128},
    {"mix", "mix", "", 128},
    {"phases", "mix",
     "mix.serial=1 mix.list=ptchurn,tlbstress,ptchurn,tlbstress ptchurn.iters=400 ptchurn.procs=1 "
     "tlbstress.mib=16 tlbstress.passes=3000",
     128},
};

// The counters the table shows, by strategy-independent meaning.
constexpr const char* kShownCounters[] = {
    "translations", "shadow_hits", "pf_fixed", "pf_guest", "emulated_writes", "mmu_pte_write",
    "mmu_unsync", "mmu_resync", "mmu_flooded", "mmu_shadow_zapped", "mmu_recycled",
    "mmu_cache_miss", "roots_reused", "cr3_writes", "invlpg", "tlb_fills", "walk_refs",
    "guest_refs", "ept_refs", "ept_violation", "ept_large_installs", "ept_splits", "guest_faults",
    "exits", "hw.tlb_hits", "hw.tlb_misses", "hw.pwc_misses", "hw.guest_refs", "hw.ntlb_hits",
    "hw.ept_refs", "hw.soft_tlb_evictions", "adaptive.intervals", "adaptive.to_shadow",
    "adaptive.to_nested"};

// A column's short name in the wide tables.
std::string Short(const std::string& column) {
  if (column == "nested-4k") return "n4k";
  if (column == "adaptive-4k") return "a4k";
  return column.substr(0, 3);
}

// A column without its "-4k" (the paging mode it runs), and whether it keeps
// 2 MiB EPT entries.
std::string PagingOf(const std::string& column) {
  return column.size() > 3 && column.ends_with("-4k") ? column.substr(0, column.size() - 3) : column;
}
bool LargeEptOf(const std::string& column) { return PagingOf(column) == column; }

struct Sample {
  double wall = 0;
  std::vector<vmm::GuestResult> results;
  std::map<std::string, uint64_t> counters;  // "<counter>" without the strategy prefix
  costmodel::ModelledCycles cycles;
};

const costmodel::CostTable* g_costs = nullptr;

std::optional<Sample> Run(const std::filesystem::path& dir, const Case& c,
                          const std::string& paging, std::string* error) {
  vmm::RunConfig config;
  config.log_dir = (dir / "logs").string();
  config.report_path = (dir / "report.json").string();
  config.echo_console = false;
  vmm::VmConfig vm;
  vm.name = c.row;
  vm.backend = "soft";
  // nested-4k, adaptive-4k: without 2 MiB EPT entries.
  vm.paging = PagingOf(paging);
  config.nested_large_pages = LargeEptOf(paging);
  vm.workload = c.workload;
  vm.workload_args = c.args;
  vm.ram_bytes = uint64_t{c.memory_mib} << 20;
  vm.timeout_seconds = 3600;
  config.vms.push_back(vm);
  const auto t0 = Clock::now();
  absl::StatusOr<vmm::RunOutcome> run = vmm::RunVms(config);
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!run.ok()) {
    *error = std::string(run.status().message());
    return std::nullopt;
  }
  const vmm::MachineResult& r = run->vms[0];
  if (!r.ok()) {
    *error = absl::StrCat(vmm::MachineOutcomeName(r.outcome), ": ", r.failure);
    return std::nullopt;
  }
  Sample s;
  s.wall = wall;
  s.results = r.results;
  // Every strategy's counters, without the strategy's name: one strategy's
  // for a plain column, the sum of those it ran for adaptive.
  for (const base::CounterValue& v : r.vm_stats) {
    if (v.name.rfind("adaptive.", 0) == 0) s.counters[v.name] = v.value;
    for (std::string_view strategy : costmodel::kStrategies) {
      const std::string prefix = absl::StrCat(std::string(strategy), ".");
      if (v.name.rfind(prefix, 0) == 0) s.counters[v.name.substr(prefix.size())] += v.value;
    }
  }
  s.cycles = vmm::ModelledCyclesOf(r, *g_costs);
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? NAN : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string Count(const std::map<std::string, uint64_t>& m, const char* name) {
  auto it = m.find(name);
  return it == m.end() ? "-" : std::to_string(it->second);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  base::SetMinLogSeverity(base::LogSeverity::kWarning);
  const int runs = std::max(1, absl::GetFlag(FLAGS_runs));
  std::vector<std::string> strategies =
      absl::StrSplit(absl::GetFlag(FLAGS_strategies), ',', absl::SkipEmpty());
  std::vector<const Case*> cases;
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_workloads), ',', absl::SkipEmpty())) {
    auto it = std::find_if(std::begin(kCases), std::end(kCases),
                           [&](const Case& c) { return name == c.row; });
    if (it == std::end(kCases)) {
      std::fprintf(stderr, "paging_bench: unknown workload row '%s'\n", std::string(name).c_str());
      return 2;
    }
    cases.push_back(&*it);
  }
  if (strategies.empty() || cases.empty()) {
    std::fprintf(stderr, "paging_bench: nothing to run\n");
    return 2;
  }
  costmodel::CostTable costs = costmodel::CostTable::Default();
  if (!absl::GetFlag(FLAGS_cost_model).empty()) {
    absl::StatusOr<costmodel::CostTable> t = costs.WithOverrideFile(absl::GetFlag(FLAGS_cost_model));
    if (!t.ok()) {
      std::fprintf(stderr, "paging_bench: %s\n", std::string(t.status().message()).c_str());
      return 2;
    }
    costs = *std::move(t);
  }
  g_costs = &costs;

  const auto dir = std::filesystem::temp_directory_path() / absl::StrCat("paging_bench_", getpid());
  std::filesystem::create_directories(dir);
  const auto t0 = Clock::now();
  std::printf("soft backend, one VM, one vCPU; host wall seconds around the whole run (boot\n"
              "included), median of %d; ratio = wall / %s's wall\n\n",
              runs, strategies[0].c_str());

  bool failed = false;
  // [case][strategy] -> walls, last sample
  std::vector<std::vector<std::vector<double>>> walls(
      cases.size(), std::vector<std::vector<double>>(strategies.size()));
  std::vector<std::vector<Sample>> last(cases.size(), std::vector<Sample>(strategies.size()));
  std::vector<std::vector<std::string>> errors(cases.size(),
                                               std::vector<std::string>(strategies.size()));
  for (int r = 0; r < runs; ++r) {
    for (size_t i = 0; i < cases.size(); ++i) {
      for (size_t s = 0; s < strategies.size(); ++s) {
        std::string err;
        std::optional<Sample> sample = Run(dir, *cases[i], strategies[s], &err);
        if (!sample) {
          if (errors[i][s].empty()) errors[i][s] = err;
          failed = true;
          continue;
        }
        walls[i][s].push_back(sample->wall);
        last[i][s] = std::move(*sample);
      }
    }
    std::fprintf(stderr, "paging_bench: repetition %d/%d done (%.0f s)\n", r + 1, runs,
                 std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::filesystem::remove_all(dir);

  std::printf("%-11s %-11s %9s %7s %10s %14s %7s   %s\n", "workload", "paging", "wall s", "ratio",
              "exits", "model Mcycles", "ratio", "results vs reference");
  for (size_t i = 0; i < cases.size(); ++i) {
    const double ref = Median(walls[i][0]);
    for (size_t s = 0; s < strategies.size(); ++s) {
      if (!errors[i][s].empty()) {
        std::printf("%-11s %-11s failed: %s\n", cases[i]->row, strategies[s].c_str(),
                    errors[i][s].c_str());
        continue;
      }
      const double w = Median(walls[i][s]);
      std::string same = "reference";
      if (s > 0) {
        same = last[i][s].results == last[i][0].results ? "identical" : "DIFFERENT";
        if (same != "identical") failed = true;
      }
      const double cycles = static_cast<double>(last[i][s].cycles.total);
      const double ref_cycles = static_cast<double>(last[i][0].cycles.total);
      std::printf("%-11s %-11s %9.3f %7.3f %10s %14.2f %7.3f   %s\n", cases[i]->row,
                  strategies[s].c_str(), w, w / ref, Count(last[i][s].counters, "exits").c_str(),
                  cycles / 1e6, ref_cycles > 0 ? cycles / ref_cycles : NAN, same.c_str());
    }
  }

  std::printf("\nstrategy counters (last repetition; '-' = the strategy has no such counter)\n");
  std::printf("%-18s", "counter");
  for (size_t i = 0; i < cases.size(); ++i) {
    for (size_t s = 0; s < strategies.size(); ++s) {
      std::printf(" %12s", absl::StrCat(cases[i]->row, "/", Short(strategies[s])).c_str());
    }
  }
  std::printf("\n");
  for (const char* name : kShownCounters) {
    std::printf("%-18s", name);
    for (size_t i = 0; i < cases.size(); ++i) {
      for (size_t s = 0; s < strategies.size(); ++s) {
        std::printf(" %12s", Count(last[i][s].counters, name).c_str());
      }
    }
    std::printf("\n");
  }
  std::printf("\nmodelled cycles by class, millions (table: %s)\n", costs.origin().c_str());
  std::printf("%-18s", "class");
  for (size_t i = 0; i < cases.size(); ++i) {
    for (size_t s = 0; s < strategies.size(); ++s) {
      std::printf(" %12s", absl::StrCat(cases[i]->row, "/", Short(strategies[s])).c_str());
    }
  }
  std::printf("\n");
  for (std::string_view klass : costmodel::kClasses) {
    std::printf("%-18s", std::string(klass).c_str());
    for (size_t i = 0; i < cases.size(); ++i) {
      for (size_t s = 0; s < strategies.size(); ++s) {
        std::printf(" %12.3f", static_cast<double>(last[i][s].cycles.Class(klass)) / 1e6);
      }
    }
    std::printf("\n");
  }
  // Adaptive's goal: at or below the better of shadow and nested (the nested
  // of the same EPT setting) on every row.
  auto column = [&](const std::string& name) -> int {
    auto it = std::find(strategies.begin(), strategies.end(), name);
    return it == strategies.end() ? -1 : static_cast<int>(it - strategies.begin());
  };
  for (const char* adaptive : {"adaptive", "adaptive-4k"}) {
    const int a = column(adaptive);
    const int sh = column("shadow");
    const int ne = column(LargeEptOf(adaptive) ? "nested" : "nested-4k");
    if (a < 0 || sh < 0 || ne < 0) continue;
    std::printf("\n%s against the better of shadow and %s (modelled cycles)\n", adaptive,
                strategies[ne].c_str());
    std::printf("%-11s %14s %14s %14s %9s %9s\n", "workload", "adaptive M", "shadow M",
                strategies[ne].c_str(), "switches", "vs best");
    for (size_t i = 0; i < cases.size(); ++i) {
      if (!errors[i][a].empty() || !errors[i][sh].empty() || !errors[i][ne].empty()) continue;
      const double ca = static_cast<double>(last[i][a].cycles.total);
      const double cs = static_cast<double>(last[i][sh].cycles.total);
      const double cn = static_cast<double>(last[i][ne].cycles.total);
      const auto& c = last[i][a].counters;
      const uint64_t switches = (c.contains("adaptive.to_shadow") ? c.at("adaptive.to_shadow") : 0) +
                                (c.contains("adaptive.to_nested") ? c.at("adaptive.to_nested") : 0);
      std::printf("%-11s %14.2f %14.2f %14.2f %9llu %9.3f\n", cases[i]->row, ca / 1e6, cs / 1e6,
                  cn / 1e6, static_cast<unsigned long long>(switches), ca / std::min(cs, cn));
    }
  }
  std::printf("\ntotal bench time %.1f s\n",
              std::chrono::duration<double>(Clock::now() - t0).count());
  return failed ? 1 : 0;
}

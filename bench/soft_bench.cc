// Macro benchmark of the soft backend (our x86-64 interpreter, `vmm run
// --backend soft`, paging strategy `native`) next to QEMU TCG, on the same
// guest image with the same workload command lines, in the same run:
//
//  compute     CPU-bound integer loop: guest instructions per host second.
//  memtouch4k  memtouch at page stride (memtouch.stride=4096): one word per
//              4 KiB page over 64 MiB, a sequential pass (each touch a demand
//              fault), then random-order passes (each touch a TLB miss; far
//              beyond either TLB's reach), then a verify; ops are page touches.
//              The bench checks the ops count, so an image whose memtouch
//              ignores `stride` fails instead of measuring word stride.
//  ptchurn     mmap / touch / munmap and fork / exit in three processes:
//              page tables built and torn down all the time.
// Optional rows (--workloads=...): `memtouch` at word stride and `tlbstress`
// (the guest's other one-word-per-page toucher).
//
// Host time, marginally. Neither backend's own clock is host time: on soft
// the guest's elapsed_ns is instruction-count time (the TSC counts retired
// instructions, docs/cpu.md), and QEMU's process wall time includes QEMU's
// start-up and the guest's boot. So every workload runs at two sizes that
// differ only in one loop count (same RAM, same everything else), and a
// figure is the difference of the two host wall times over the difference of
// the two ops counts (and, on soft, instruction counts):
//
//   ops/s = (ops_large - ops_small) / (wall_large - wall_small)
//
// Start-up, boot, the workload's fixed set-up (e.g. the first sequential
// write and the final verify of memtouch4k) and tear-down cancel. Host wall
// time is a steady clock around vmm::RunVms (one VM, one vCPU, console echo
// off, report and logs in a temp dir) and QEMU's whole-process wall time
// from guest::RunGuest. Ops come from the guest's RESULT lines, instructions
// from the VM's vcpu_stats, which the report prints as soft_vcpu_stats
// (`cpu.instructions`). Each repetition
// runs soft small, soft large, TCG small, TCG large back to back, and gives
// one marginal figure per backend; the table prints medians over --runs.
// The detail table gives the median walls and the fit's intercept,
// wall_small - ops_small / rate: start-up, boot and whatever in the small run
// does not cost the marginal rate per op (negative when the small run's ops,
// e.g. memtouch's sequential ones, are cheaper than the varied ones).
//
// Soft runs once per --hw_models value: `off` (no hardware TLB/PWC model:
// the interpreter against TCG like for like, neither models hardware) and
// `fast` (the cost model's model counting every soft-TLB miss, about 8% on
// ptchurn). Targets are judged on the first.
//
//   soft_bench [--runs=3] [--scale=1] [--workloads=compute,memtouch4k,ptchurn]
//              [--hw_models=off,fast] [--tcg=false] [--vmm_log]
//
// --scale multiplies the extra work of the large size (the small size stays).
// Without QEMU the soft figures are printed and the TCG columns say skipped.
// Timings on shared machines are noisy: figures are medians, never tests.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/log.h"
#include "guest/qemu_runner.h"
#include "vmm-host/run_config.h"
#include "vmm-host/vmm_runner.h"

ABSL_FLAG(int, runs, 3, "repetitions (each gives one marginal figure; medians are printed)");
ABSL_FLAG(double, scale, 1.0, "multiplies the extra work of each workload's large size");
ABSL_FLAG(std::string, workloads, "compute,memtouch4k,ptchurn",
          "rows to run: compute, memtouch4k, ptchurn, memtouch, tlbstress");
ABSL_FLAG(bool, tcg, true, "also run QEMU TCG (false: soft only)");
ABSL_FLAG(std::string, hw_models, "off,fast",
          "the soft runs' --soft_hw_model values, each a row (off: no hardware TLB model, like "
          "TCG; fast: the model counts but does not bound the soft TLB)");
ABSL_FLAG(bool, vmm_log, false, "keep the VMM's INFO log lines (one per VM exit) on stderr");

namespace {

using Clock = std::chrono::steady_clock;

// The targets.
constexpr double kComputeInsnTarget = 300e6;  // guest instructions per host second
constexpr double kRatioTarget = 1.0;          // soft/TCG ops per host second

struct Case {
  const char* row;        // table label
  const char* workload;   // guest workload name
  const char* args;       // workload arguments; "{n}" is the varied loop count
  uint64_t small;         // loop count of the small size
  uint64_t large;         // loop count of the large size at --scale=1
  uint32_t memory_mib;    // guest RAM (the same at both sizes)
  const char* op_unit;    // what one op is, for the per-op line
  bool per_op_line;       // print host ns per op
  // When ops_per_n != 0, the guest must report ops = fixed_ops + ops_per_n * n.
  uint64_t fixed_ops = 0, ops_per_n = 0;
};

// Sizes: the default run (3 repetitions) takes about 1.5 minutes on the 2-core
// build host. The large sizes give the TCG side about 1 s or more of marginal
// time (so timer noise of ~10 ms is ~1%), the soft side several seconds.
constexpr Case kCases[] = {
    {"compute", "compute", "compute.iters={n}", 1'000'000, 61'000'000, 128, "op", false},
    {"memtouch4k", "memtouch", "memtouch.mib=64 memtouch.stride=4096 memtouch.passes={n}", 2,
     1026, 256, "page touched", true, 2 * 16384, 16384},
    {"ptchurn", "ptchurn", "ptchurn.iters={n} ptchurn.pages=64 ptchurn.procs=3", 20, 2420, 128,
     "op (mmap, munmap, fork or exit)", true},
    {"memtouch", "memtouch", "memtouch.mib=16 memtouch.passes={n}", 1, 9, 128, "word touched",
     true, 2 * 2097152, 2097152},
    {"tlbstress", "tlbstress", "tlbstress.mib=64 tlbstress.passes={n}", 2, 1026, 256,
     "page touched", true, 2 * 16384, 16384},
};

std::string Args(const Case& c, uint64_t n) {
  std::string s = c.args;
  const size_t at = s.find("{n}");
  return s.replace(at, 3, std::to_string(n));
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? NAN : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// False (with a message) when the guest did not do the work asked for.
bool OpsAsExpected(const Case& c, uint64_t n, uint64_t ops, std::string* error) {
  if (c.ops_per_n == 0) return true;
  const uint64_t want = c.fixed_ops + c.ops_per_n * n;
  if (ops == want) return true;
  *error = absl::StrCat("guest reported ops=", ops, ", expected ", want,
                        " (does this image's ", c.workload, " take every parameter in '",
                        Args(c, n), "'?)");
  return false;
}

// One run of one size on one backend.
struct Sample {
  double wall = 0;      // host seconds
  uint64_t ops = 0;     // guest-reported ops
  uint64_t insns = 0;   // soft only: retired guest instructions
};

std::optional<Sample> RunSoft(const std::filesystem::path& dir, const Case& c, uint64_t n,
                              const std::string& hw_model, std::string* error) {
  vmm::RunConfig config;
  config.kernel_path = guest::GuestKernelPath();  // the image QEMU boots
  config.log_dir = (dir / "logs").string();
  config.report_path = (dir / "report.json").string();
  config.echo_console = false;
  vmm::VmConfig vm;
  vm.name = c.row;
  vm.backend = "soft";
  vm.paging = "native";
  // Never "exact": the cost model's hardware TLB model must not add soft-TLB
  // misses to the interpreter's speed (docs/cost-model.md).
  config.soft_hw_model = hw_model;
  vm.workload = c.workload;
  vm.workload_args = Args(c, n);
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
  for (const vmm::GuestResult& g : r.results) {
    if (g.name == absl::StrCat(c.workload, ".ops")) s.ops = g.value;
  }
  for (const base::CounterValue& v : r.vcpu_stats) {
    if (v.name == "cpu.instructions") s.insns = v.value;
  }
  if (s.ops == 0 || s.insns == 0) {
    *error = "no ops result or no cpu.instructions counter";
    return std::nullopt;
  }
  if (!OpsAsExpected(c, n, s.ops, error)) return std::nullopt;
  return s;
}

std::optional<Sample> RunTcg(const Case& c, uint64_t n, std::string* error) {
  guest::QemuOptions q;
  q.cmdline = absl::StrCat("workload=", c.workload, " ", Args(c, n));
  q.memory_mib = c.memory_mib;
  q.timeout_seconds = 3600;
  const guest::QemuRun run = guest::RunGuest(q);
  if (run.GuestExitCode() != 0u) {
    *error = absl::StrCat("qemu exit status ", run.exit_status, run.timed_out ? " (timed out)" : "");
    return std::nullopt;
  }
  auto results = run.Results();
  Sample s;
  s.wall = run.wall_seconds;
  s.ops = results[c.workload]["ops"];
  if (s.ops == 0) {
    *error = "no ops result";
    return std::nullopt;
  }
  if (!OpsAsExpected(c, n, s.ops, error)) return std::nullopt;
  return s;
}

// Marginal figures of one backend for one workload, over the repetitions.
struct Series {
  std::vector<double> ops_rate, insn_rate, wall_small, wall_large, fixed;
  uint64_t d_ops = 0, d_insns = 0;
  std::string error;  // the first failure, if any

  void Add(const Sample& a, const Sample& b) {
    wall_small.push_back(a.wall);
    wall_large.push_back(b.wall);
    const double dt = b.wall - a.wall;
    d_ops = b.ops - a.ops;
    d_insns = b.insns - a.insns;
    if (dt <= 0 || b.ops <= a.ops) return;  // noise swamped the difference
    const double rate = d_ops / dt;
    ops_rate.push_back(rate);
    if (b.insns > a.insns) insn_rate.push_back(d_insns / dt);
    fixed.push_back(a.wall - a.ops / rate);
  }
};

std::string Rate(double v) {
  if (std::isnan(v)) return "-";
  if (v >= 1e9) return absl::StrFormat("%.2f G", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.1f M", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1f k", v / 1e3);
  return absl::StrFormat("%.1f", v);
}

std::string Ns(double ops_per_s) {
  if (std::isnan(ops_per_s) || ops_per_s <= 0) return "-";
  const double ns = 1e9 / ops_per_s;
  return ns >= 1e4 ? absl::StrFormat("%.1f us", ns / 1e3) : absl::StrFormat("%.0f ns", ns);
}

std::string Spread(const std::vector<double>& v) {
  if (v.size() < 2) return "";
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return absl::StrFormat("%s..%s", Rate(*lo), Rate(*hi));
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_vmm_log)) base::SetMinLogSeverity(base::LogSeverity::kWarning);
  const int runs = std::max(1, absl::GetFlag(FLAGS_runs));
  const double scale = std::max(0.01, absl::GetFlag(FLAGS_scale));
  std::vector<const Case*> cases;
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_workloads), ',')) {
    bool found = false;
    for (const Case& c : kCases) {
      if (name == c.row) {
        cases.push_back(&c);
        found = true;
      }
    }
    if (!found && !name.empty()) {
      std::fprintf(stderr, "soft_bench: unknown workload row '%s'\n", std::string(name).c_str());
      return 2;
    }
  }

  std::string tcg_skip;
  if (!absl::GetFlag(FLAGS_tcg)) {
    tcg_skip = "--tcg=false";
  } else if (guest::FindQemu().empty()) {
    tcg_skip = "qemu-system-x86_64 not found (not configured and not on PATH)";
  }
  const bool tcg = tcg_skip.empty();
  std::vector<std::string> hw_models;
  for (absl::string_view m : absl::StrSplit(absl::GetFlag(FLAGS_hw_models), ',')) {
    if (m != "off" && m != "fast") {
      std::fprintf(stderr, "soft_bench: --hw_models takes off and fast, not '%s'\n", std::string(m).c_str());
      return 2;
    }
    hw_models.emplace_back(m);
  }
  if (hw_models.empty()) {
    std::fprintf(stderr, "soft_bench: --hw_models is empty\n");
    return 2;
  }

  const auto dir = std::filesystem::temp_directory_path() / absl::StrCat("soft_bench_", getpid());
  std::filesystem::create_directories(dir);
  const auto bench_t0 = Clock::now();

  std::printf("soft (interpreter, native paging, --soft_hw_model=%s) vs QEMU TCG: host-time rates\n"
              "by the marginal "
              "method (two sizes per workload, difference of host walls over difference of\n"
              "ops), median of %d repetition%s, scale %g; targets judged on hw model %s\n",
              absl::StrJoin(hw_models, ",").c_str(), runs, runs == 1 ? "" : "s", scale,
              hw_models[0].c_str());
  std::printf("image: %s\n", guest::GuestKernelPath().c_str());
  if (!tcg) std::printf("TCG column skipped: %s\n", tcg_skip.c_str());
  std::printf("\n");

  std::vector<uint64_t> large(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = *cases[i];
    large[i] = c.small + std::max<uint64_t>(1, std::llround((c.large - c.small) * scale));
    std::printf("  %-10s small: workload=%s %s\n", c.row, c.workload, Args(c, c.small).c_str());
    std::printf("  %-10s large: workload=%s %s  (-m %uM)\n", "", c.workload,
                Args(c, large[i]).c_str(), c.memory_mib);
  }
  std::printf("\n");
  std::fflush(stdout);

  // soft[m][i]: hardware model hw_models[m], workload cases[i].
  std::vector<std::vector<Series>> soft(hw_models.size(), std::vector<Series>(cases.size()));
  std::vector<Series> qemu(cases.size());
  for (int r = 0; r < runs; ++r) {
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = *cases[i];
      std::string err;
      for (size_t m = 0; m < hw_models.size(); ++m) {
        std::optional<Sample> a = RunSoft(dir, c, c.small, hw_models[m], &err);
        std::optional<Sample> b = a ? RunSoft(dir, c, large[i], hw_models[m], &err) : std::nullopt;
        if (a && b) {
          soft[m][i].Add(*a, *b);
        } else if (soft[m][i].error.empty()) {
          soft[m][i].error = err;
          std::fprintf(stderr, "soft_bench: %s on soft (hw model %s) failed: %s\n", c.row,
                       hw_models[m].c_str(), err.c_str());
        }
      }
      if (!tcg) continue;
      std::optional<Sample> a = RunTcg(c, c.small, &err);
      std::optional<Sample> b = a ? RunTcg(c, large[i], &err) : std::nullopt;
      if (a && b) {
        qemu[i].Add(*a, *b);
      } else if (qemu[i].error.empty()) {
        qemu[i].error = err;
        std::fprintf(stderr, "soft_bench: %s on TCG failed: %s\n", c.row, err.c_str());
      }
    }
    std::fprintf(stderr, "soft_bench: repetition %d/%d done (%.0f s)\n", r + 1, runs,
                 std::chrono::duration<double>(Clock::now() - bench_t0).count());
  }
  std::filesystem::remove_all(dir);

  // ---- main table ----
  std::printf("%-10s %-5s %14s %14s %14s %9s   %s\n", "workload", "hw", "soft insn/s", "soft ops/s",
              "TCG ops/s", "soft/TCG", "target");
  for (size_t i = 0; i < cases.size(); ++i) {
    for (size_t m = 0; m < hw_models.size(); ++m) {
      const Case& c = *cases[i];
      const double si = Median(soft[m][i].insn_rate), so = Median(soft[m][i].ops_rate);
      const double to = tcg ? Median(qemu[i].ops_rate) : NAN;
      const double ratio = so / to;
      std::string target;  // judged on the first hardware model only
      if (m > 0) {
        // no target column
      } else if (std::string(c.row) == "compute") {
        target = absl::StrFormat("soft insn/s >= %.0f M: %s", kComputeInsnTarget / 1e6,
                                 std::isnan(si) ? "?" : si >= kComputeInsnTarget ? "met" : "NOT met");
      } else if (std::string(c.row) == "memtouch4k" || std::string(c.row) == "ptchurn") {
        target = absl::StrFormat("ratio >= %.1f: %s", kRatioTarget,
                                 !tcg ? "? (TCG skipped)" : std::isnan(ratio) ? "?"
                                 : ratio >= kRatioTarget ? "met" : "NOT met");
      }
      std::printf("%-10s %-5s %14s %14s %14s %9s   %s\n", c.row, hw_models[m].c_str(), Rate(si).c_str(),
                  Rate(so).c_str(), tcg ? Rate(to).c_str() : "skipped",
                  std::isnan(ratio) ? "-" : absl::StrFormat("%.3f", ratio).c_str(), target.c_str());
    }
  }

  // ---- host time per op ----
  std::printf("\nhost time per op (median marginal)\n");
  std::printf("%-10s", "workload");
  for (const std::string& m : hw_models) std::printf(" %12s", absl::StrCat("soft ", m).c_str());
  std::printf(" %12s   %s\n", "TCG", "op");
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = *cases[i];
    if (!c.per_op_line) continue;
    std::printf("%-10s", c.row);
    for (size_t m = 0; m < hw_models.size(); ++m) {
      std::printf(" %12s", Ns(Median(soft[m][i].ops_rate)).c_str());
    }
    std::printf(" %12s   %s\n", tcg ? Ns(Median(qemu[i].ops_rate)).c_str() : "skipped", c.op_unit);
  }

  // ---- detail: what the marginal figures came from ----
  std::printf("\ndetail (medians; intercept = small wall - small ops / rate: start-up, boot and\n"
              "set-up that the difference cancels; range = min..max of the per-repetition ops/s)\n");
  std::printf("%-10s %-9s %9s %9s %12s %14s %11s %20s\n", "workload", "", "small s", "large s",
              "d ops", "d insns", "intercept s", "ops/s range");
  for (size_t i = 0; i < cases.size(); ++i) {
    const size_t num_soft = hw_models.size();
    for (size_t b = 0; b < num_soft + (tcg ? 1 : 0); ++b) {
      const bool is_soft = b < num_soft;
      const Series& s = is_soft ? soft[b][i] : qemu[i];
      const std::string who = is_soft ? absl::StrCat("soft ", hw_models[b]) : "TCG";
      if (!s.error.empty() && s.wall_small.empty()) {
        std::printf("%-10s %-9s failed: %s\n", cases[i]->row, who.c_str(), s.error.c_str());
        continue;
      }
      std::printf("%-10s %-9s %9.3f %9.3f %12llu %14s %11.3f %20s\n", cases[i]->row, who.c_str(),
                  Median(s.wall_small), Median(s.wall_large),
                  static_cast<unsigned long long>(s.d_ops),
                  is_soft ? std::to_string(s.d_insns).c_str() : "-", Median(s.fixed),
                  Spread(s.ops_rate).c_str());
      if (s.ops_rate.size() < s.wall_small.size()) {
        std::printf("%-10s %-9s %zu of %zu repetitions had no positive difference (noise)\n", "",
                    "", s.wall_small.size() - s.ops_rate.size(), s.wall_small.size());
      }
    }
  }
  std::printf("\ntotal bench time %.1f s\n",
              std::chrono::duration<double>(Clock::now() - bench_t0).count());

  bool failed = false;
  for (size_t i = 0; i < cases.size(); ++i) {
    for (const std::vector<Series>& per_model : soft) failed |= !per_model[i].error.empty();
    failed |= tcg && !qemu[i].error.empty();
  }
  return failed ? 1 : 0;
}

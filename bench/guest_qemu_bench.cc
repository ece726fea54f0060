// Macro benchmark: how long QEMU (TCG) takes to run each guest workload at a
// standard size. These figures are the outside peer's baseline for our
// software CPU. For each workload, reports the median over several boots of
// the whole QEMU run (wall) and of the guest's own elapsed_ns for the workload.
//
//   guest_qemu_bench [--runs=N] [--filter=SUBSTRING]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "guest/abi.h"
#include "guest/qemu_runner.h"
#include "guest/standard_workloads.h"

namespace {

using guest::kStandardWorkloads;
using Case = guest::StandardWorkload;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 3;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    if (strncmp(argv[i], "--runs=", 7) == 0) {
      runs = std::max(1, atoi(argv[i] + 7));
    } else if (strncmp(argv[i], "--filter=", 9) == 0) {
      filter = argv[i] + 9;
    } else {
      fprintf(stderr, "usage: %s [--runs=N] [--filter=SUBSTRING]\n", argv[0]);
      return 2;
    }
  }
  if (guest::FindQemu().empty()) {
    printf("guest_qemu_bench: skipped: qemu-system-x86_64 not found\n");
    return 0;
  }
  printf("QEMU TCG time per guest workload (median of %d runs)\n", runs);
  printf("%-10s %12s %14s %14s %16s  %s\n", "workload", "qemu_wall_ms", "guest_work_ms",
         "ops", "ops_per_guest_s", "cmdline");
  int failures = 0;
  for (const Case& c : kStandardWorkloads) {
    if (!filter.empty() && std::string(c.workload).find(filter) == std::string::npos) continue;
    std::vector<double> wall_ms, guest_ms;
    uint64_t ops = 0;
    bool ok = true;
    for (int r = 0; r < runs; ++r) {
      guest::QemuOptions o;
      o.cmdline = c.cmdline;
      o.memory_mib = c.memory_mib;
      o.timeout_seconds = 600;
      guest::QemuRun run = guest::RunGuest(o);
      auto results = run.Results();
      if (run.GuestExitCode() != guest::kExitSuccess || !results.count(c.workload)) {
        fprintf(stderr, "%s: run %d failed (exit status %d)\n%s\n", c.workload, r,
                run.exit_status, run.serial.c_str());
        ok = false;
        break;
      }
      const auto& w = results[c.workload];
      wall_ms.push_back(run.wall_seconds * 1e3);
      guest_ms.push_back(w.at("elapsed_ns") / 1e6);
      ops = w.at("ops");
    }
    if (!ok) {
      ++failures;
      continue;
    }
    double g = Median(guest_ms);
    printf("%-10s %12.1f %14.1f %14llu %16.0f  %s\n", c.workload, Median(wall_ms), g,
           static_cast<unsigned long long>(ops), g > 0 ? ops / (g / 1e3) : 0.0, c.cmdline);
    fflush(stdout);
  }
  return failures == 0 ? 0 : 1;
}

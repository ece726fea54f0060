// The run configuration: which VMs to run and with what. It comes from a JSON
// config file (schema in docs/vmm.md, "Run config") and/or command-line flags;
// flags override the file for every VM.
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "adaptive/controller.h"

namespace vmm {

// The workloads the guest kernel knows (guest/user/workloads.cc).
inline constexpr std::string_view kKnownWorkloads[] = {
    "compute", "memtouch", "ptchurn", "tlbstress", "dedupfill", "idle", "mix", "balloon"};
bool IsKnownWorkload(std::string_view name);

struct VmConfig {
  std::string name;
  std::string backend = "kvm";
  // The soft backend's paging strategy (docs/paging-strategies.md): every
  // guest memory access on `soft` goes through it. Ignored on kvm, except
  // "adaptive", which kvm refuses (it is a choice between soft strategies).
  std::string paging = "native";
  uint64_t ram_bytes = uint64_t{64} << 20;
  // More than 1 only on the soft backend (round-robin on the VM's thread)
  // with a kernel that expects the secondary vCPUs (our guest kernel is
  // uniprocessor): each starts at the kernel's entry with RDI = its index.
  int vcpus = 1;
  std::string workload = "mix";
  std::string workload_args;  // "key=value ..." for the workload
  std::string extra_cmdline;  // appended to the kernel command line verbatim
  // A virtio-balloon at virtio-mmio slot 0 (docs/balloon.md), announced to
  // the guest on its command line. Off by default for now: the entry changes
  // the guest command line that the cross-backend tests compare with QEMU's.
  bool balloon = false;
  // Balloon targets over time (needs `balloon`): at `at_seconds` after the
  // VM starts, the target becomes `target_bytes`. In time order.
  struct BalloonStep {
    double at_seconds = 0;
    uint64_t target_bytes = 0;
    bool operator==(const BalloonStep&) const = default;
  };
  std::vector<BalloonStep> balloon_schedule;
  // Paging strategy switches over time (soft only; docs/paging-strategies.md,
  // "Switching strategies while the VM runs"): at `at_seconds` after the VM
  // starts, it switches to `strategy`. In time order.
  struct PagingStep {
    double at_seconds = 0;
    std::string strategy;
    bool operator==(const PagingStep&) const = default;
  };
  std::vector<PagingStep> paging_schedule;
  double timeout_seconds = 120;
};

struct RunConfig {
  std::vector<VmConfig> vms;
  uint64_t host_budget_bytes = 0;  // 0: the sum of guest RAM, rounded up
  std::string kernel_path;         // empty: the guest image built with this tree
  std::string report_path = "vmm-report.json";
  std::string log_dir = "vmm-logs";
  bool echo_console = false;
  // The soft backend's modelled CPU frequency in kHz: one guest instruction
  // is one cycle of it (docs/cpu.md, "Time").
  uint64_t soft_cpu_khz = 1'000'000;
  // The soft backend's turn length when a VM has several vCPUs: guest
  // instructions each vCPU runs per round-robin turn (docs/cpu.md,
  // "Scheduling").
  uint64_t soft_slice = 100'000;
  // Shadow paging: check the shadow tables against the guest's at every
  // resync and after every FrameTable invalidation (slow; for debugging and
  // tests). Failures count as shadow.audit_failures (docs/shadow.md).
  bool shadow_audit = false;
  // The soft backend's hardware model: "exact" (default), "fast" or "off"
  // (SoftOptions::hw_model_exact and hw_model; docs/cost-model.md).
  std::string soft_hw_model = "exact";
  // paging "adaptive" (docs/paging-strategies.md, "The adaptive mode"):
  // guest instructions per interval, the fraction by which the other
  // strategy must be estimated cheaper, for how many consecutive intervals,
  // the intervals a strategy runs at least, and the savings (in switch
  // costs) that switch at once (adaptive::Options).
  uint64_t adaptive_interval = adaptive::Options{}.interval;
  double adaptive_margin = adaptive::Options{}.margin;
  uint32_t adaptive_streak = adaptive::Options{}.streak;
  uint32_t adaptive_min_dwell = adaptive::Options{}.min_dwell;
  double adaptive_urgent_factor = adaptive::Options{}.urgent_factor;
  // Nested paging (and adaptive): 2 MiB EPT entries where the backing
  // allows; false maps every gfn with a 4 KiB EPT entry.
  bool nested_large_pages = true;
  // A JSON file overriding some or all entries of the cost model's table
  // (docs/cost-model.md); "" keeps the default table.
  std::string cost_model;
  // The control interface's Unix socket (docs/vmm.md, "Control interface"):
  // "" means <log_dir>/control.sock, "off" means none.
  std::string control_socket;
};

// Parses "64M", "1G", "4096K", "1048576" (bytes) into bytes.
absl::StatusOr<uint64_t> ParseSize(std::string_view text);

// Parses a JSON run config. Errors name the field: "vms[1].ram: ...".
absl::StatusOr<RunConfig> ParseRunConfig(std::string_view json_text);
absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path);

// The adaptive paging mode's options from the config's adaptive_* fields.
adaptive::Options AdaptiveOptions(const RunConfig& config);

// Checks a complete config (after flags are applied): names unique and
// usable as file names, known workloads and backends, sizes sane.
absl::Status ValidateRunConfig(const RunConfig& config);

}  // namespace vmm

#include "vmm-host/vmm_runner.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/log.h"
#include "base/status.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/kvm_hypervisor.h"
#include "vmm-host/report.h"

namespace vmm {

std::string DefaultKernelPath() {
#ifdef VMM_DEFAULT_KERNEL
  return VMM_DEFAULT_KERNEL;
#else
  return "guest.elf";
#endif
}

absl::StatusOr<RunOutcome> RunVms(const RunConfig& config) {
  const auto call_time = std::chrono::steady_clock::now();
  TRY(ValidateRunConfig(config));
  const std::string kernel = config.kernel_path.empty() ? DefaultKernelPath() : config.kernel_path;
  ASSIGN_OR_RETURN(ElfImage image, LoadElfFile(kernel));

  uint64_t total_ram = 0;
  for (const VmConfig& vm : config.vms) total_ram += vm.ram_bytes;
  const uint64_t budget = config.host_budget_bytes != 0 ? config.host_budget_bytes : total_ram;
  if (budget & base::kPageMask) {
    return absl::InvalidArgumentError("host budget must be a multiple of 4 KiB");
  }
  if (total_ram > budget) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the guests need %u MiB of RAM but the host budget is %u MiB (over-commit needs the "
        "memory policies of later releases)",
        total_ram >> 20, budget >> 20));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Hypervisor> hv, KvmHypervisor::Create());
  FramePool::Options pool_options;
  pool_options.budget_bytes = budget;
  ASSIGN_OR_RETURN(std::unique_ptr<FramePool> pool, FramePool::Create(pool_options));

  MachineEnv env;
  env.hypervisor = hv.get();
  env.pool = pool.get();
  env.image = &image;
  env.log_dir = config.log_dir;
  env.echo_console = config.echo_console;
  std::vector<std::unique_ptr<Machine>> machines;
  for (const VmConfig& vm : config.vms) {
    // On failure the machines made so far are destroyed (not started) here.
    ASSIGN_OR_RETURN(std::unique_ptr<Machine> m, Machine::Create(vm, env));
    machines.push_back(std::move(m));
  }

  const auto start = std::chrono::steady_clock::now();
  std::vector<double> start_offsets;
  for (auto& m : machines) {
    start_offsets.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - call_time).count());
    m->Start();
  }
  for (;;) {
    bool all_done = true;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (auto& m : machines) {
      if (m->finished()) continue;
      all_done = false;
      if (elapsed > m->timeout_seconds()) {
        m->Stop(MachineOutcome::kTimedOut,
                absl::StrFormat("the guest did not exit within %.0f s", m->timeout_seconds()));
      }
    }
    if (all_done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  RunOutcome outcome;
  outcome.start_offset_seconds = std::move(start_offsets);
  std::vector<std::string> cmdlines;
  for (auto& m : machines) {
    outcome.vms.push_back(m->Wait());
    cmdlines.push_back(m->cmdline());
    const MachineResult& r = outcome.vms.back();
    if (!r.ok()) {
      outcome.failed.push_back(r.name);
      LOG(ERROR) << "vm " << r.name << " failed: " << MachineOutcomeName(r.outcome)
                 << (r.failure.empty() ? "" : ": ") << r.failure;
    }
  }
  HostReport host;
  host.backend = std::string(hv->name());
  host.paging_mode = hv->paging_mode();
  host.budget_frames = pool->capacity_frames();
  host.frames_charged = pool->frames_charged();
  if (absl::StatusOr<uint64_t> resident = pool->ResidentFrames(); resident.ok()) {
    host.frames_resident = *resident;
  }
  host.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  host.kernel_path = kernel;
  machines.clear();  // release every VM before the pool goes
  TRY(WriteReport(config.report_path, RenderReport(host, outcome.vms, cmdlines)));
  outcome.report_path = config.report_path;
  return outcome;
}

}  // namespace vmm

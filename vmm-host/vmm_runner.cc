#include "vmm-host/vmm_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/log.h"
#include "base/status.h"
#include "vmm-host/control_commands.h"
#include "vmm-host/control_server.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/kvm_hypervisor.h"
#include "vmm-host/report.h"
#include "vmm-host/soft_hypervisor.h"

namespace vmm {
namespace {

// Threads that create VMs concurrently.
constexpr size_t kCreateThreads = 8;

// VMs with the same key share a hypervisor.
std::string HypervisorKey(const VmConfig& vm) {
  return vm.backend == "soft" ? absl::StrCat("soft/", vm.paging) : vm.backend;
}

}  // namespace

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
  // The cost model's table (docs/cost-model.md): a bad override file ends the
  // run before anything starts, naming the key.
  costmodel::CostTable costs = costmodel::CostTable::Default();
  if (!config.cost_model.empty()) {
    ASSIGN_OR_RETURN(costs, costmodel::CostTable::Default().WithOverrideFile(config.cost_model));
  }
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
  // One hypervisor per backend (and, on soft, per paging strategy) in use.
  absl::flat_hash_map<std::string, std::unique_ptr<Hypervisor>> hypervisors;
  for (const VmConfig& vm : config.vms) {
    const std::string key = HypervisorKey(vm);
    if (hypervisors.contains(key)) continue;
    if (vm.backend == "kvm") {
      ASSIGN_OR_RETURN(hypervisors[key], KvmHypervisor::Create());
    } else {
      SoftOptions options;
      options.paging = vm.paging;
      options.cpu_khz = config.soft_cpu_khz;
      options.slice = config.soft_slice;
      options.shadow_audit = config.shadow_audit;
      options.hw_model_exact = config.soft_hw_model == "exact";
      options.hw_model = config.soft_hw_model != "off";
      options.adaptive = AdaptiveOptions(config);
      options.costs = std::make_shared<const costmodel::CostTable>(costs);  // adaptive prices with the run's table
      options.nested_large_pages = config.nested_large_pages;
      ASSIGN_OR_RETURN(hypervisors[key], SoftHypervisor::Create(options));
    }
  }
  FramePool::Options pool_options;
  pool_options.budget_bytes = budget;
  ASSIGN_OR_RETURN(std::unique_ptr<FramePool> pool, FramePool::Create(pool_options));

  MachineEnv env;
  env.pool = pool.get();
  env.image = &image;
  env.log_dir = config.log_dir;
  env.echo_console = config.echo_console;
  // Create the VMs on a few threads: most of a VM's creation time on KVM is
  // the memslot update's wait for an RCU grace period (about 7 ms on the
  // development hosts whatever the slot size), and those waits overlap.
  const size_t n = config.vms.size();
  std::vector<absl::StatusOr<std::unique_ptr<Machine>>> created(n);
  {
    std::atomic<size_t> next{0};
    const size_t workers = std::min<size_t>(n, kCreateThreads);
    std::vector<std::thread> threads;
    for (size_t w = 0; w < workers; ++w) {
      threads.emplace_back([&] {
        for (size_t i = next++; i < n; i = next++) {
          MachineEnv vm_env = env;
          vm_env.hypervisor = hypervisors.at(HypervisorKey(config.vms[i])).get();
          created[i] = Machine::Create(config.vms[i], vm_env);
        }
      });
    }
    for (std::thread& t : threads) t.join();
  }
  std::vector<std::unique_ptr<Machine>> machines;
  for (auto& c : created) {
    // The first failure in VM order wins; every machine made is destroyed
    // (none was started) when `created` goes out of scope.
    if (!c.ok()) return c.status();
    machines.push_back(*std::move(c));
  }

  // The control interface, while the VMs run (docs/vmm.md).
  std::unique_ptr<ControlServer> control;
  if (config.control_socket != "off") {
    const std::string path = config.control_socket.empty()
                                 ? absl::StrCat(config.log_dir, "/control.sock")
                                 : config.control_socket;
    std::vector<Machine*> list;
    for (auto& m : machines) list.push_back(m.get());
    ASSIGN_OR_RETURN(control, ControlServer::Start(path, MakeControlHandler(std::move(list))));
    LOG(INFO) << "control socket: " << path << " (vmm ctl --socket=" << path << " list)";
  }

  const auto start = std::chrono::steady_clock::now();
  std::vector<double> start_offsets;
  for (auto& m : machines) {
    start_offsets.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - call_time).count());
    m->Start();
  }
  std::vector<size_t> next_step(machines.size(), 0);    // balloon schedules
  std::vector<size_t> next_paging(machines.size(), 0);  // paging schedules
  for (;;) {
    bool all_done = true;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (size_t i = 0; i < machines.size(); ++i) {
      Machine* m = machines[i].get();
      if (m->finished()) continue;
      all_done = false;
      // Schedules count from the VM's own Start().
      const double since_start = elapsed - (start_offsets[i] - start_offsets[0]);
      const auto& schedule = config.vms[i].balloon_schedule;
      while (next_step[i] < schedule.size() && since_start >= schedule[next_step[i]].at_seconds) {
        const VmConfig::BalloonStep& step = schedule[next_step[i]++];
        if (absl::Status s = m->SetBalloonTarget(step.target_bytes); !s.ok()) {
          LOG(ERROR) << "vm " << m->name() << ": balloon schedule: " << s;
        } else {
          LOG(INFO) << "vm " << m->name() << ": balloon target " << (step.target_bytes >> 20)
                    << " MiB (schedule, " << step.at_seconds << " s)";
        }
      }
      const auto& paging = config.vms[i].paging_schedule;
      while (next_paging[i] < paging.size() && since_start >= paging[next_paging[i]].at_seconds) {
        const VmConfig::PagingStep& step = paging[next_paging[i]++];
        if (absl::Status s = m->SetPagingStrategy(step.strategy); !s.ok()) {
          LOG(ERROR) << "vm " << m->name() << ": paging schedule: " << s;
        } else {
          LOG(INFO) << "vm " << m->name() << ": paging strategy " << step.strategy << " (schedule, "
                    << step.at_seconds << " s)";
        }
      }
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
  // The backends and paging modes in use, in VM order, without repeats.
  std::vector<std::string> backends, modes;
  for (const VmConfig& vm : config.vms) {
    const Hypervisor& hv = *hypervisors.at(HypervisorKey(vm));
    if (std::find(backends.begin(), backends.end(), hv.name()) == backends.end()) {
      backends.emplace_back(hv.name());
    }
    if (std::find(modes.begin(), modes.end(), hv.paging_mode()) == modes.end()) {
      modes.push_back(hv.paging_mode());
    }
  }
  host.backend = absl::StrJoin(backends, "+");
  host.paging_mode = absl::StrJoin(modes, "+");
  host.budget_frames = pool->capacity_frames();
  host.frames_charged = pool->frames_charged();
  if (absl::StatusOr<uint64_t> resident = pool->ResidentFrames(); resident.ok()) {
    host.frames_resident = *resident;
  }
  host.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  host.kernel_path = kernel;
  if (control) {
    outcome.control_socket = control->path();
    control.reset();  // before the machines it answers for
  }
  machines.clear();  // release every VM before the pool goes
  TRY(WriteReport(config.report_path, RenderReport(host, outcome.vms, cmdlines, &costs)));
  outcome.report_path = config.report_path;
  return outcome;
}

}  // namespace vmm

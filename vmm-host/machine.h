// Machine: one running VM. It owns the VM's guest RAM (FrameTable over the
// shared FramePool), its backend Vm and vCPUs, its device bus (serial,
// debug-exit, results, paravirtual memory doorbell) and its vCPU thread, and
// produces a MachineResult when the guest exits, fails or times out.
//
// One vCPU runs on the thread through Vcpu::Run(). Several (VmConfig::vcpus,
// soft backend) run on the same one thread through the backend's
// VcpuScheduler, round-robin; every exit, whichever vCPU it comes from, goes
// through the same exit handler, and a vCPU's failure stops this VM only.
//
// Lifecycle: Create() builds everything and loads the guest, or fails with a
// clear status and leaves nothing behind (no thread, no file beyond the
// serial log it may have opened, no mapping). Start() spawns the vCPU
// thread. Stop() asks it to stop (any thread). Wait() joins and returns the
// result. The destructor stops and joins if needed.
//
// Thread safety: Create/Start/Wait from the owning thread; Stop() and the
// read-only accessors from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "balloon/balloon.h"
#include "vmm-host/debug_exit.h"
#include "vmm-host/elf_loader.h"
#include "vmm-host/exit_handler.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/hypervisor.h"
#include "vmm-host/io_bus.h"
#include "vmm-host/pv_mem_device.h"
#include "vmm-host/ram_fault_handler.h"
#include "vmm-host/results_port.h"
#include "vmm-host/run_config.h"
#include "vmm-host/serial.h"

namespace vmm {

enum class MachineOutcome : uint8_t {
  kExited,       // the guest wrote the debug-exit port
  kGuestFailed,  // triple fault, emulation failure, ...
  kTimedOut,     // the guest stopped answering within its timeout
  kStopped,      // stopped from outside (e.g. the run was interrupted)
  kHostError,    // the backend failed (an ioctl error)
};
const char* MachineOutcomeName(MachineOutcome outcome);

struct MachineResult {
  std::string name;
  std::string backend;      // "kvm", "soft"
  std::string paging_mode;  // Hypervisor::paging_mode(): how the VM started
  bool models_hardware = false;  // Hypervisor::models_hardware()
  // The paging strategy running at the end (soft: it may have been switched
  // while the VM ran, counted as vm.strategy_switches); empty on kvm.
  std::string paging_strategy;
  MachineOutcome outcome = MachineOutcome::kStopped;
  std::optional<uint32_t> exit_code;  // the guest's debug-exit code
  std::string failure;                // one line, when not a clean exit
  std::string registers;              // register dump, when the guest failed
  std::vector<GuestResult> results;   // what the guest reported, in order
  ExitCounters exits;
  BusCounters bus;
  double wall_seconds = 0;
  double seconds_to_first_exit = 0;    // from Start() to the first exit of any kind
  double seconds_to_workload_start = 0;  // from Start() to the guest's "workload start" line
  uint64_t ram_bytes = 0;
  uint64_t resident_frames = 0;  // measured in the frame pool, not counted
  BackendStats vm_stats;
  // With several vCPUs: each counter summed over them, then every vCPU's own
  // as "vcpu<i>.<name>".
  BackendStats vcpu_stats;
  std::string console_tail;

  // The guest exited with code 0 (every workload verified its data).
  bool ok() const { return outcome == MachineOutcome::kExited && exit_code == 0u; }
};

struct MachineEnv {
  Hypervisor* hypervisor = nullptr;
  FramePool* pool = nullptr;
  const ElfImage* image = nullptr;
  std::string log_dir;        // serial log: <log_dir>/<name>.serial.log
  bool echo_console = false;  // also print guest lines to stdout, prefixed
};

class Machine {
 public:
  static absl::StatusOr<std::unique_ptr<Machine>> Create(const VmConfig& config,
                                                         const MachineEnv& env);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  const std::string& name() const { return config_.name; }
  const std::string& cmdline() const { return cmdline_; }
  double timeout_seconds() const { return config_.timeout_seconds; }

  void Start();
  // Asks the vCPU to stop with `outcome` (unless it already finished).
  void Stop(MachineOutcome outcome, std::string why);
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  MachineResult Wait();
  // What Wait() would report, taken now from any thread while the VM runs
  // (the control interface): counters are read as they are at that moment;
  // the outcome stays kStopped until the VM finished.
  MachineResult Snapshot();

  // The VM's guest-physical memory: where memory policies (and tests) apply
  // FrameTable verbs while the VM runs. Valid until the Machine is destroyed.
  FrameTable& memory() { return *memory_; }

  // The VM's virtio-balloon, or nullptr when VmConfig::balloon is off. Valid
  // until the Machine is destroyed; any thread.
  balloon::Balloon* balloon() { return balloon_.get(); }
  // Sets the balloon's target (bytes of guest RAM the host wants back,
  // rounded down to 4 KiB pages) and tells the guest. FailedPrecondition
  // without a balloon; InvalidArgument above the VM's RAM. Any thread.
  absl::Status SetBalloonTarget(uint64_t bytes);
  // Switches the VM's paging strategy ("native", "shadow", "nested") while
  // it runs (docs/paging-strategies.md, "Switching strategies while the VM
  // runs"): the vCPU thread does it at its next safe point, after this
  // returns. FailedPrecondition on a backend that cannot switch (kvm);
  // InvalidArgument for an unknown name. Any thread.
  absl::Status SetPagingStrategy(std::string_view name);

 private:
  Machine(VmConfig config, MachineEnv env);
  absl::Status Init();
  void RunVcpu();
  void Finish(MachineOutcome outcome, std::string why);
  MachineResult Collect();
  // A register dump of `vcpu`, or of every vCPU (each line group headed by
  // its index when there are several).
  std::string RegistersOf(Vcpu& vcpu);
  std::string AllRegisters();

  VmConfig config_;
  MachineEnv env_;
  std::string cmdline_;
  std::unique_ptr<FrameTable> memory_;
  // kvm: serves guest touches of discarded RAM (userfaultfd), so that the
  // table sees them; null on soft (its vCPUs go through the table) or where
  // the host has no userfaultfd. Declared after memory_: it goes first.
  std::unique_ptr<RamFaultHandler> ram_faults_;
  std::unique_ptr<Vm> vm_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::unique_ptr<VcpuScheduler> scheduler_;  // with more than one vCPU; goes first
  IoBus bus_;
  std::shared_ptr<Serial> serial_;
  std::shared_ptr<DebugExit> debug_exit_;
  std::shared_ptr<ResultsPort> results_;
  std::shared_ptr<PvMemDevice> pv_mem_;
  // After memory_: destroyed first (it is memory_'s invalidation listener).
  std::unique_ptr<balloon::Balloon> balloon_;
  VcpuCounters counters_;

  std::thread thread_;
  std::chrono::steady_clock::time_point start_time_;
  std::atomic<int64_t> first_exit_ns_{-1};
  std::atomic<int64_t> workload_start_ns_{-1};
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> finished_{false};
  absl::Mutex mu_;
  MachineOutcome outcome_ ABSL_GUARDED_BY(mu_) = MachineOutcome::kStopped;
  std::string failure_ ABSL_GUARDED_BY(mu_);
  std::string registers_ ABSL_GUARDED_BY(mu_);
  double wall_seconds_ ABSL_GUARDED_BY(mu_) = 0;
};

// Builds the guest kernel command line for `config` (workload, its
// arguments, platform flags) as docs/boot.md specifies.
std::string GuestCommandLine(const VmConfig& config, bool trap_entry);

}  // namespace vmm

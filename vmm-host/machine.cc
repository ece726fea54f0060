#include "vmm-host/machine.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/log.h"
#include "base/status.h"
#include "guest/abi.h"
#include "guest/boot_info.h"
#include "vmm-host/boot_setup.h"
#include "vmm-host/memory_layout.h"

namespace vmm {
namespace {

// The guest prints this when its first user process starts (guest/kernel/
// proc.cc); the time to it is the "time to workload start" figure.
constexpr std::string_view kWorkloadStartMarker = "init: pid";

int64_t NanosSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t)
      .count();
}

}  // namespace

const char* MachineOutcomeName(MachineOutcome outcome) {
  switch (outcome) {
    case MachineOutcome::kExited: return "exited";
    case MachineOutcome::kGuestFailed: return "guest_failed";
    case MachineOutcome::kTimedOut: return "timed_out";
    case MachineOutcome::kStopped: return "stopped";
    case MachineOutcome::kHostError: return "host_error";
  }
  return "?";
}

std::string GuestCommandLine(const VmConfig& config, bool trap_entry) {
  std::string cmdline = absl::StrCat("workload=", config.workload);
  if (!config.workload_args.empty()) absl::StrAppend(&cmdline, " ", config.workload_args);
  if (trap_entry) absl::StrAppend(&cmdline, " entry=trap");
  if (!config.extra_cmdline.empty()) absl::StrAppend(&cmdline, " ", config.extra_cmdline);
  return cmdline;
}

Machine::Machine(VmConfig config, MachineEnv env) : config_(std::move(config)), env_(std::move(env)) {}

absl::StatusOr<std::unique_ptr<Machine>> Machine::Create(const VmConfig& config,
                                                         const MachineEnv& env) {
  CHECK(env.hypervisor != nullptr && env.pool != nullptr && env.image != nullptr);
  std::unique_ptr<Machine> m(new Machine(config, env));
  absl::Status s = m->Init();
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("vm ", config.name, ": ", s.message()));
  }
  return m;
}

absl::Status Machine::Init() {
  const MemoryLayout layout = MemoryLayout::ForRamSize(config_.ram_bytes);
  // Check the image against this VM's RAM before creating anything.
  TRY(CheckImageFitsRam(*env_.image, layout.ram_bytes(), [&](uint64_t gpa, uint64_t len) {
    return gpa >= 0x100000 && layout.IsRam(gpa, len);
  }));
  ASSIGN_OR_RETURN(memory_, FrameTable::Create(env_.pool, {config_.name, layout.ram, true}));
  ASSIGN_OR_RETURN(vm_, env_.hypervisor->CreateVm({.memory = memory_.get()}));
  for (const RamMapping& m : memory_->Mappings()) {
    TRY(vm_->MapRam(m.gpa, m.size_bytes, m.host));
  }
  ASSIGN_OR_RETURN(vcpu_, vm_->CreateVcpu(0));

  // Devices. The serial log is the only file a VM creates.
  std::error_code ec;
  std::filesystem::create_directories(env_.log_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create log dir ", env_.log_dir, ": ", ec.message()));
  SerialOptions serial_options;
  serial_options.vm_name = config_.name;
  serial_options.log_path = absl::StrCat(env_.log_dir, "/", config_.name, ".serial.log");
  serial_options.echo_stdout = env_.echo_console;
  serial_options.on_line = [this](std::string_view line) {
    if (workload_start_ns_.load(std::memory_order_relaxed) < 0 &&
        line.substr(0, kWorkloadStartMarker.size()) == kWorkloadStartMarker) {
      workload_start_ns_.store(NanosSince(start_time_), std::memory_order_relaxed);
    }
  };
  ASSIGN_OR_RETURN(std::unique_ptr<Serial> serial, Serial::Create(std::move(serial_options)));
  serial_ = std::move(serial);
  debug_exit_ = std::make_shared<DebugExit>([this](uint32_t code) {
    // Runs on the vCPU thread: the loop sees the flag right after this exit.
    stop_requested_.store(true, std::memory_order_release);
    (void)code;
  });
  results_ = std::make_shared<ResultsPort>();
  pv_mem_ = std::make_shared<PvMemDevice>(*memory_);
  TRY(bus_.Register(IoBus::Space::kPio, Serial::kCom1Port, Serial::kRegisterBytes, serial_));
  TRY(bus_.Register(IoBus::Space::kPio, DebugExit::kPort, DebugExit::kRegisterBytes, debug_exit_));
  TRY(bus_.Register(IoBus::Space::kPio, ResultsPort::kBasePort, ResultsPort::kRegisterBytes, results_));
  TRY(bus_.Register(IoBus::Space::kPio, PvMemDevice::kBasePort, PvMemDevice::kPorts, pv_mem_));

  // Boot: our VMM hands out zeroed RAM and implements the pv-mem doorbell.
  const bool trap_entry = env_.hypervisor->needs_trap_syscall_entry();
  cmdline_ = GuestCommandLine(config_, trap_entry);
  BootOptions boot;
  boot.cmdline = cmdline_;
  boot.flags = guest::kBootFlagRamZeroed | guest::kBootFlagPvMem |
               (trap_entry ? guest::kBootFlagTrapEntry : 0);
  boot.tsc_khz = vm_->TscKhz();
  ASSIGN_OR_RETURN(LongModeEntry entry, SetUpBoot(*env_.image, layout, boot, *memory_));
  TRY(vcpu_->SetLongModeEntry(entry));
  return absl::OkStatus();
}

Machine::~Machine() {
  if (thread_.joinable()) {
    Stop(MachineOutcome::kStopped, "machine destroyed");
    thread_.join();
  }
}

void Machine::Start() {
  CHECK(!thread_.joinable());
  start_time_ = std::chrono::steady_clock::now();
  thread_ = std::thread([this] { RunVcpu(); });
}

void Machine::Finish(MachineOutcome outcome, std::string why) {
  absl::MutexLock lock(&mu_);
  if (finished_.load(std::memory_order_relaxed)) return;
  outcome_ = outcome;
  failure_ = std::move(why);
  wall_seconds_ = NanosSince(start_time_) / 1e9;
  finished_.store(true, std::memory_order_release);
}

void Machine::Stop(MachineOutcome outcome, std::string why) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_.load(std::memory_order_relaxed)) return;
    // Recorded now; the vCPU thread finishes with it when it sees the flag.
    outcome_ = outcome;
    failure_ = std::move(why);
  }
  stop_requested_.store(true, std::memory_order_release);
  if (vcpu_) vcpu_->Kick();
}

void Machine::RunVcpu() {
  for (;;) {
    absl::StatusOr<VcpuExit> exit = vcpu_->Run();
    if (first_exit_ns_.load(std::memory_order_relaxed) < 0) {
      first_exit_ns_.store(NanosSince(start_time_), std::memory_order_relaxed);
    }
    if (!exit.ok()) {
      Finish(MachineOutcome::kHostError, std::string(exit.status().message()));
      break;
    }
    const ExitAction action = HandleExit(*exit, bus_, counters_);
    if (action == ExitAction::kGuestFailed) {
      absl::StatusOr<VcpuRegisters> regs = vcpu_->GetRegisters();
      {
        absl::MutexLock lock(&mu_);
        registers_ = regs.ok() ? FormatRegisters(*regs) : std::string(regs.status().message());
      }
      LOG(ERROR) << "vm " << config_.name << ": " << exit->description << "\n" << registers_;
      Finish(MachineOutcome::kGuestFailed,
             exit->description.empty() ? ExitReasonName(exit->reason) : exit->description);
      break;
    }
    if (debug_exit_->exit_code().has_value()) {
      Finish(MachineOutcome::kExited, "");
      break;
    }
    if (stop_requested_.load(std::memory_order_acquire)) {
      MachineOutcome outcome;
      std::string why;
      {
        absl::MutexLock lock(&mu_);
        outcome = outcome_;
        why = failure_;
      }
      if (outcome == MachineOutcome::kTimedOut || outcome == MachineOutcome::kGuestFailed) {
        absl::StatusOr<VcpuRegisters> regs = vcpu_->GetRegisters();
        absl::MutexLock lock(&mu_);
        registers_ = regs.ok() ? FormatRegisters(*regs) : std::string(regs.status().message());
      }
      Finish(outcome, std::move(why));
      break;
    }
    if (action == ExitAction::kHalted) {
      // No in-kernel APIC would wake us: a halted guest with interrupts off
      // is stuck. With the in-kernel irqchip KVM never exits for HLT.
      Finish(MachineOutcome::kGuestFailed, "guest halted with no interrupt source");
      break;
    }
  }
  serial_->Flush();
}

MachineResult Machine::Wait() {
  if (thread_.joinable()) thread_.join();
  MachineResult r;
  r.name = config_.name;
  r.backend = std::string(env_.hypervisor->name());
  r.paging_mode = env_.hypervisor->paging_mode();
  {
    absl::MutexLock lock(&mu_);
    r.outcome = outcome_;
    r.failure = failure_;
    r.registers = registers_;
    r.wall_seconds = wall_seconds_;
  }
  r.exit_code = debug_exit_->exit_code();
  if (r.outcome == MachineOutcome::kExited && r.exit_code != 0u) {
    r.failure = absl::StrCat("guest exit code ", *r.exit_code);
  }
  r.results = results_->results();
  r.exits = counters_.exits;
  r.bus = counters_.bus;
  r.seconds_to_first_exit = first_exit_ns_.load() / 1e9;
  r.seconds_to_workload_start = workload_start_ns_.load() / 1e9;
  r.ram_bytes = config_.ram_bytes;
  uint64_t resident = 0;
  for (const RamMapping& m : memory_->Mappings()) {
    absl::StatusOr<uint64_t> n =
        env_.pool->ResidentFrames(base::Hfn(m.fd_offset >> base::kPageShift), m.size_bytes >> base::kPageShift);
    if (n.ok()) resident += *n;
  }
  r.resident_frames = resident;
  if (absl::StatusOr<BackendStats> s = vm_->Stats(); s.ok()) r.vm_stats = std::move(*s);
  if (absl::StatusOr<BackendStats> s = vcpu_->Stats(); s.ok()) r.vcpu_stats = std::move(*s);
  r.console_tail = serial_->Tail();
  return r;
}

}  // namespace vmm

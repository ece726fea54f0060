#include "vmm-host/machine.h"

#include <algorithm>
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
  if (env_.hypervisor->name() == "kvm") {
    // KVM reaches RAM through the memslot, not the table: without this a
    // touch of a discarded page would back it behind the table's back.
    absl::StatusOr<std::unique_ptr<RamFaultHandler>> faults = RamFaultHandler::Create(memory_.get());
    if (faults.ok()) {
      ram_faults_ = *std::move(faults);
    } else {
      LOG(WARNING) << "vm '" << config_.name << "': guest touches of discarded pages stay unseen: "
                   << faults.status();
    }
  }
  for (const RamMapping& m : memory_->Mappings()) {
    TRY(vm_->MapRam(m.gpa, m.size_bytes, m.host));
  }
  if (config_.vcpus < 1 || config_.vcpus > BootAddresses::kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrCat("vcpus must be 1 to ", BootAddresses::kMaxVcpus, ", not ", config_.vcpus));
  }
  std::vector<Vcpu*> scheduled;
  for (int i = 0; i < config_.vcpus; ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<Vcpu> vcpu, vm_->CreateVcpu(i));
    scheduled.push_back(vcpu.get());
    vcpus_.push_back(std::move(vcpu));
  }
  if (vcpus_.size() > 1) {
    // Several vCPUs share the machine's one thread through the backend's
    // scheduler (soft); kvm has none and keeps to one vCPU per VM.
    absl::StatusOr<std::unique_ptr<VcpuScheduler>> scheduler = vm_->CreateScheduler(scheduled);
    if (!scheduler.ok()) {
      return absl::Status(scheduler.status().code(),
                          absl::StrCat(std::string(env_.hypervisor->name()), ": cannot run ", vcpus_.size(),
                                       " vCPUs on one thread: ", scheduler.status().message()));
    }
    scheduler_ = *std::move(scheduler);
  }

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
  // virtio-mmio devices: the balloon at slot 0 (memory_layout.h), its
  // interrupt an edge on the slot's IOAPIC pin.
  std::string virtio_cmdline;
  if (config_.balloon) {
    constexpr uint32_t kSlot = 0;
    const uint64_t base = MemoryLayout::VirtioMmioAddress(kSlot);
    const uint32_t gsi = MemoryLayout::kVirtioFirstGsi + kSlot;
    balloon::BalloonOptions options;
    options.name = absl::StrCat("virtio-balloon@0x", absl::Hex(base));
    // Guest touches reach the FrameTable on soft (MakeAvailable) and on kvm
    // through the userfaultfd handler; without it they fault straight into
    // the memfd.
    options.device.guest_touches_tracked = env_.hypervisor->name() == "soft" || ram_faults_ != nullptr;
    options.raise_irq = [this, gsi] {
      (void)vm_->SetIrqLine(gsi, true);
      (void)vm_->SetIrqLine(gsi, false);
    };
    ASSIGN_OR_RETURN(balloon_, balloon::Balloon::Create(*memory_, std::move(options)));
    TRY(bus_.Register(IoBus::Space::kMmio, base, VirtioMmioDevice::kRegionBytes, balloon_->bus_device()));
    virtio_cmdline = absl::StrCat(" virtio_mmio.device=0x", absl::Hex(VirtioMmioDevice::kRegionBytes), "@0x",
                                  absl::Hex(base), ":", gsi);
  }

  // Boot: our VMM hands out zeroed RAM. The pv-mem doorbell is always on the
  // bus, but the guest is told about it only where it pays off.
  const bool trap_entry = env_.hypervisor->needs_trap_syscall_entry();
  // The device entries go before the user's extra words, which stay last.
  VmConfig with_devices = config_;
  if (!virtio_cmdline.empty()) {
    with_devices.extra_cmdline = absl::StrCat(virtio_cmdline.substr(1), config_.extra_cmdline.empty() ? "" : " ",
                                              config_.extra_cmdline);
  }
  cmdline_ = GuestCommandLine(with_devices, trap_entry);
  BootOptions boot;
  boot.cmdline = cmdline_;
  boot.flags = guest::kBootFlagRamZeroed |
               (env_.hypervisor->pv_mem_pays_off() ? guest::kBootFlagPvMem : 0) |
               (trap_entry ? guest::kBootFlagTrapEntry : 0);
  boot.tsc_khz = vm_->TscKhz();
  ASSIGN_OR_RETURN(LongModeEntry entry, SetUpBoot(*env_.image, layout, boot, *memory_));
  TRY(vcpus_[0]->SetLongModeEntry(entry));
  // Secondary vCPUs start at the same entry with RDI = their index (the VMM
  // starts them; there is no INIT/SIPI).
  for (size_t i = 1; i < vcpus_.size(); ++i) {
    TRY(vcpus_[i]->SetLongModeEntry(SecondaryVcpuEntry(entry, static_cast<int>(i))));
  }
  return absl::OkStatus();
}

absl::Status Machine::SetBalloonTarget(uint64_t bytes) {
  if (balloon_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("vm ", config_.name, " has no balloon"));
  }
  if (bytes > config_.ram_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("balloon target of ", bytes, " bytes for vm ", config_.name,
                                                   " is larger than its RAM (", config_.ram_bytes, " bytes)"));
  }
  balloon_->SetTargetBytes(bytes);
  return absl::OkStatus();
}

absl::Status Machine::SetPagingStrategy(std::string_view name) {
  absl::Status s = vm_->SetPagingStrategy(name);
  if (absl::IsUnimplemented(s)) {
    return absl::FailedPreconditionError(absl::StrCat("vm ", config_.name, ": the ",
                                                      std::string(env_.hypervisor->name()),
                                                      " backend cannot switch paging strategies (soft only)"));
  }
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("vm ", config_.name, ": ", s.message()));
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
  if (scheduler_) {
    scheduler_->Kick();
  } else if (!vcpus_.empty()) {
    vcpus_[0]->Kick();
  }
}

std::string Machine::RegistersOf(Vcpu& vcpu) {
  absl::StatusOr<VcpuRegisters> regs = vcpu.GetRegisters();
  std::string text = regs.ok() ? FormatRegisters(*regs) : std::string(regs.status().message());
  return vcpus_.size() > 1 ? absl::StrCat("vcpu ", vcpu.index(), ":\n", text) : text;
}

std::string Machine::AllRegisters() {
  std::string text;
  for (const auto& v : vcpus_) {
    if (!text.empty() && text.back() != '\n') text += '\n';
    text += RegistersOf(*v);
  }
  return text;
}

void Machine::RunVcpu() {
  for (;;) {
    Vcpu* vcpu = vcpus_[0].get();
    absl::StatusOr<VcpuExit> exit;
    if (scheduler_) {
      absl::StatusOr<VcpuScheduler::Exit> next = scheduler_->Run();
      if (next.ok()) {
        vcpu = next->vcpu;
        exit = std::move(next->exit);
      } else {
        exit = next.status();
      }
    } else {
      exit = vcpu->Run();
    }
    if (first_exit_ns_.load(std::memory_order_relaxed) < 0) {
      first_exit_ns_.store(NanosSince(start_time_), std::memory_order_relaxed);
    }
    if (!exit.ok()) {
      Finish(MachineOutcome::kHostError, std::string(exit.status().message()));
      break;
    }
    const ExitAction action = HandleExit(*exit, bus_, counters_);
    if (action == ExitAction::kGuestFailed) {
      std::string registers = RegistersOf(*vcpu);
      std::string why = exit->description.empty() ? ExitReasonName(exit->reason) : exit->description;
      if (vcpus_.size() > 1) why = absl::StrCat("vcpu ", vcpu->index(), ": ", why);
      {
        absl::MutexLock lock(&mu_);
        registers_ = std::move(registers);
      }
      LOG(ERROR) << "vm " << config_.name << ": " << why << "\n" << registers_;
      Finish(MachineOutcome::kGuestFailed, std::move(why));
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
        std::string registers = AllRegisters();
        absl::MutexLock lock(&mu_);
        registers_ = std::move(registers);
      }
      Finish(outcome, std::move(why));
      break;
    }
    if (action == ExitAction::kHalted) {
      // No in-kernel APIC would wake us: a halted guest with interrupts off
      // is stuck. With the in-kernel irqchip KVM never exits for HLT.
      Finish(MachineOutcome::kGuestFailed, exit->description.empty()
                                               ? "guest halted with no interrupt source"
                                               : absl::StrCat("guest halted: ", exit->description));
      break;
    }
  }
  serial_->Flush();
}

MachineResult Machine::Wait() {
  if (thread_.joinable()) thread_.join();
  return Collect();
}

MachineResult Machine::Snapshot() { return Collect(); }

MachineResult Machine::Collect() {
  MachineResult r;
  r.name = config_.name;
  r.backend = std::string(env_.hypervisor->name());
  r.paging_mode = env_.hypervisor->paging_mode();
  r.models_hardware = env_.hypervisor->models_hardware();
  r.paging_strategy = vm_->PagingStrategyName();
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
  if (balloon_ != nullptr) {
    // The VM's devices count with it: balloon.* (docs/balloon.md).
    for (const base::CounterValue& c : balloon_->Snapshot()) r.vm_stats.push_back(c);
  }
  // The table's own: populations, discards, touches of ballooned pages...
  for (const base::CounterValue& c : memory_->counters().Snapshot("memory")) r.vm_stats.push_back(c);
  if (ram_faults_ != nullptr) {
    for (const base::CounterValue& c : ram_faults_->counters().Snapshot("ram_faults")) r.vm_stats.push_back(c);
  }
  if (vcpus_.size() == 1) {
    if (absl::StatusOr<BackendStats> s = vcpus_[0]->Stats(); s.ok()) r.vcpu_stats = std::move(*s);
  } else {
    // Totals first (in the first vCPU's order), then each vCPU's own.
    BackendStats per_vcpu;
    for (const auto& v : vcpus_) {
      absl::StatusOr<BackendStats> s = v->Stats();
      if (!s.ok()) continue;
      for (const base::CounterValue& c : *s) {
        auto it = std::find_if(r.vcpu_stats.begin(), r.vcpu_stats.end(),
                               [&](const base::CounterValue& t) { return t.name == c.name; });
        if (it == r.vcpu_stats.end()) {
          r.vcpu_stats.push_back(c);
        } else {
          it->value += c.value;
        }
        per_vcpu.push_back({absl::StrCat("vcpu", v->index(), ".", c.name), c.value});
      }
    }
    r.vcpu_stats.insert(r.vcpu_stats.end(), per_vcpu.begin(), per_vcpu.end());
  }
  r.console_tail = serial_->Tail();
  return r;
}

}  // namespace vmm

#include "vmm-host/soft_hypervisor.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "base/check.h"
#include "base/log.h"
#include "base/status.h"
#include "cpu/cpu_state.h"
#include "cpu/interpreter.h"
#include "cpu/ioapic.h"
#include "cpu/lapic.h"
#include "cpu/native_strategy.h"
#include "nested/nested_strategy.h"
#include "shadow/shadow_strategy.h"
#include "mmu/soft_tlb.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/memory_layout.h"
#include "vmm-host/strategy_listener.h"

namespace vmm {
namespace {

// The LAPIC timer's input clock: 1 GHz, what QEMU and KVM model and what the
// guest assumes when its boot info says 0 (guest/boot_info.h).
constexpr uint64_t kLapicKhz = 1'000'000;
// A halted vCPU with interrupts on but nothing armed waits for a posted
// interrupt or a kick this long between checks.
constexpr absl::Duration kIdleWait = absl::Milliseconds(2);

class SoftVm;

// The strategies --paging accepts.
absl::StatusOr<std::unique_ptr<mmu::PagingStrategy>> MakePagingStrategy(const SoftOptions& options,
                                                                        FrameTable* memory,
                                                                        uint32_t max_vcpus) {
  // Adaptive starts on nested: it adds no exits of its own to what the guest
  // does first (booting, building its tables), which shadow would trap.
  const std::string& name = options.paging == "adaptive" ? std::string("nested") : options.paging;
  const bool bound = options.hw_model_exact;
  if (name == "native") {
    ASSIGN_OR_RETURN(auto s, cpu::NativeStrategy::Create(
                                 memory, {.max_vcpus = max_vcpus,
                                          .hw_model_bounds_soft_tlb = bound,
                                          .hw_model = options.hw_model}));
    return std::unique_ptr<mmu::PagingStrategy>(std::move(s));
  }
  if (name == "shadow") {
    ASSIGN_OR_RETURN(auto s, shadow::ShadowStrategy::Create(
                                 memory, {.max_vcpus = max_vcpus,
                                          .hw_model_bounds_soft_tlb = bound,
                                          .hw_model = options.hw_model,
                                          .audit_on_resync = options.shadow_audit}));
    return std::unique_ptr<mmu::PagingStrategy>(std::move(s));
  }
  if (name == "nested") {
    ASSIGN_OR_RETURN(auto s, nested::NestedStrategy::Create(
                                 memory, {.max_vcpus = max_vcpus,
                                          .large_pages = options.nested_large_pages,
                                          .hw_model_bounds_soft_tlb = bound,
                                          .hw_model = options.hw_model}));
    return std::unique_ptr<mmu::PagingStrategy>(std::move(s));
  }
  return absl::InvalidArgumentError(absl::StrCat("soft: unknown paging strategy \"", name, "\""));
}

#define VMM_SOFT_VCPU_COUNTERS(X)                                                       \
  X(Runs, runs)                                                                         \
  X(IdleSkips, idle_skips)                   /* halts that jumped to the next timer event */ \
  X(IdleSkippedCycles, idle_skipped_cycles)                                             \
  X(IdleWaits, idle_waits)                   /* halted, waiting for a device interrupt */ \
  X(LapicAccesses, lapic_accesses)                                                      \
  X(IoapicAccesses, ioapic_accesses)
BASE_DEFINE_COUNTERS(SoftVcpuCounters, VMM_SOFT_VCPU_COUNTERS);

#define VMM_SOFT_SCHED_COUNTERS(X)                                                    \
  X(Rounds, rounds)            /* rounds every scheduled vCPU took a turn in */       \
  X(Turns, turns)              /* turns run (or idled) to the round's end */           \
  X(IdleJumps, idle_jumps)     /* all halted: rounds skipped to the next timer event */ \
  X(IdleWaits, idle_waits)     /* all halted, nothing armed: waits for a device */    \
  X(Parked, parked)            /* turns of a vCPU halted with interrupts off */
BASE_DEFINE_COUNTERS(SoftSchedCounters, VMM_SOFT_SCHED_COUNTERS);

#define VMM_SOFT_VM_COUNTERS(X)                                                        \
  X(StrategySwitches, strategy_switches)  /* paging strategy switches done */           \
  X(StrategySwitchFailures, strategy_switch_failures) /* new strategy not created */
BASE_DEFINE_COUNTERS(SoftVmCounters, VMM_SOFT_VM_COUNTERS);

// The adaptive mode (VMs started with paging "adaptive" only).
#define VMM_SOFT_ADAPTIVE_COUNTERS(X)                                                  \
  X(Intervals, intervals)    /* intervals the controller judged */                    \
  X(Switches, switches)      /* switches it decided */                                 \
  X(ToShadow, to_shadow)                                                                \
  X(ToNested, to_nested)                                                                \
  X(Current, current)        /* the strategy now: 1 shadow, 2 nested, 0 native (paused) */
BASE_DEFINE_COUNTERS(SoftAdaptiveCounters, VMM_SOFT_ADAPTIVE_COUNTERS);

// One vCPU: its architectural state, soft TLB, local APIC and interpreter.
// It is the interpreter's CpuPlatform: interrupt controller accesses are
// served here, everything else becomes an exit.
class SoftVcpu final : public Vcpu, public cpu::CpuPlatform {
 public:
  SoftVcpu(SoftVm* vm, int index);
  ~SoftVcpu() override;

  absl::Status Attach();

  int index() const override { return index_; }
  absl::StatusOr<VcpuExit> Run() override;
  void Kick() override;
  absl::Status SetLongModeEntry(const LongModeEntry& entry) override;
  absl::StatusOr<VcpuRegisters> GetRegisters() override;
  absl::StatusOr<BackendStats> Stats() override;

  // An interrupt from the I/O APIC (any thread).
  void PostInterrupt(uint8_t vector, bool level);
  uint8_t apic_id() const { return lapic_.id(); }
  // Strategy switching (SoftVm::ApplyPendingSwitch; this vCPU not running).
  mmu::VcpuMmu* mmu() { return &mmu_; }
  // Guest instructions retired since the last call (the adaptive intervals).
  uint64_t TakeRetired() {
    const uint64_t now = interp_->counters().Get(cpu::InterpreterCounters::kInstructions);
    return now - std::exchange(retired_reported_, now);
  }
  absl::Status SwitchStrategy(mmu::PagingStrategy* next) {
    TRY(next->AttachVcpu(&mmu_));  // flushes the soft TLB: its entries were the old strategy's
    interp_->set_strategy(next);
    return absl::OkStatus();
  }

  // Scheduling (SoftScheduler). RunUntil runs the vCPU until its clock
  // (Cycles()) reaches `until` (kDone; a halted vCPU idles there), an exit
  // (kExit, `*exit` set), or, in a scheduled run, a halt with interrupts off
  // that nothing can end (kParked, clock also moved to `until`). With
  // kUnscheduled it is Run(): a halt with interrupts off is a kHlt exit and
  // a halt with nothing armed waits for a device interrupt or a kick.
  static constexpr uint64_t kUnscheduled = UINT64_MAX;
  enum class Turn : uint8_t { kDone, kExit, kParked };
  Turn RunUntil(uint64_t until, VcpuExit* exit);
  // Guest time of this vCPU in cycles: the TSC less its offset.
  uint64_t Cycles() const { return state_.Cycles(); }
  // When this vCPU can next run: now if it is not halted, its next timer
  // event if it is halted with interrupts on, else UINT64_MAX.
  uint64_t WakeCycle() const;
  // A halted vCPU's clock idles forward to `cycle` (no earlier than its
  // next timer event, which the caller guarantees).
  void IdleTo(uint64_t cycle) {
    if (!halted_ || Cycles() >= cycle) return;
    counters_.Inc(SoftVcpuCounters::kIdleSkips);
    counters_.Add(SoftVcpuCounters::kIdleSkippedCycles, cycle - Cycles());
    state_.idle_cycles += cycle - Cycles();
  }

  // cpu::CpuPlatform.
  cpu::IoStatus PortIn(uint16_t port, uint8_t size, uint32_t* data) noexcept override;
  cpu::IoStatus PortOut(uint16_t port, uint8_t size, uint32_t data) noexcept override;
  cpu::IoStatus MmioRead(uint64_t gpa, uint8_t size, uint64_t* data) noexcept override;
  cpu::IoStatus MmioWrite(uint64_t gpa, uint8_t size, uint64_t data) noexcept override;
  bool ReadMsr(uint32_t msr, uint64_t* value) noexcept override;
  bool WriteMsr(uint32_t msr, uint64_t value) noexcept override;
  int PendingInterrupt() noexcept override { return lapic_.HighestDeliverable(); }
  void AcknowledgeInterrupt(uint8_t vector) noexcept override { lapic_.Acknowledge(vector); }
  uint8_t ReadCr8() noexcept override { return lapic_.cr8(); }
  void WriteCr8(uint8_t value) noexcept override { lapic_.set_cr8(value); }

 private:
  // Guest time in LAPIC input ticks.
  uint64_t LapicNow() const;
  // Guest cycles until LAPIC tick `tick` (at least 1), or UINT64_MAX.
  uint64_t CyclesUntil(uint64_t tick) const;
  // A write exit captured during Run, returned by later Run() calls in order.
  struct QueuedExit {
    VcpuExit exit;
    uint8_t data[8] = {};
  };
  void QueueWrite(ExitReason reason, uint64_t where, uint8_t size, uint64_t data);
  VcpuExit TakeQueued();
  // Starts the exit of a read whose value the VMM supplies (read_buf_); the
  // caller fills in the io/mmio part.
  VcpuExit& ExitForRead(ExitReason reason, uint8_t size);
  bool InLapic(uint64_t gpa) const {
    return (gpa & ~uint64_t{0xfff}) == (lapic_.apic_base_msr() & ~uint64_t{0xfff});
  }
  static bool InIoapic(uint64_t gpa) {
    return gpa >= MemoryLayout::kIoapicBase && gpa < MemoryLayout::kIoapicBase + 0x1000;
  }

  SoftVm* vm_;
  const int index_;
  cpu::CpuState state_;
  mmu::SoftTlb tlb_;
  mmu::VcpuMmu mmu_;
  cpu::Lapic lapic_;
  std::unique_ptr<cpu::Interpreter> interp_;
  bool attached_ = false;
  bool halted_ = false;

  // Exits: at most a few per instruction (a page-split MMIO write makes two).
  static constexpr size_t kMaxQueued = 8;
  QueuedExit queued_[kMaxQueued];
  size_t queued_head_ = 0, queued_count_ = 0;
  bool read_exit_pending_ = false;  // the last exit was a read; its data comes back in read_buf_
  uint8_t read_size_ = 0;
  uint8_t read_buf_[8] = {};
  VcpuExit read_exit_;

  std::atomic<bool> kicked_{false};
  uint64_t retired_reported_ = 0;  // TakeRetired

  SoftVcpuCounters counters_;
};

class SoftVm final : public Vm {
 public:
  SoftVm(const SoftOptions& options, FrameTable* memory) : options_(options), memory_(memory) {}
  ~SoftVm() override {
    if (listener_) memory_->UnregisterInvalidationListener(listener_.get());
  }

  absl::Status Init() {
    if (options_.paging == "adaptive") {
      TRY(options_.adaptive.Validate());
      costs_ = options_.costs ? options_.costs
                              : std::shared_ptr<const costmodel::CostTable>(
                                    &costmodel::CostTable::Default(), [](const costmodel::CostTable*) {});
      adaptive_ = std::make_unique<adaptive::Controller>(options_.adaptive, costs_.get(), adaptive::Mode::kNested);
      adaptive_counters_.Add(SoftAdaptiveCounters::kCurrent, 2);
    }
    ASSIGN_OR_RETURN(strategy_, MakePagingStrategy(options_, memory_, kMaxVcpus));
    listener_ = MakeListener(strategy_.get());
    memory_->RegisterInvalidationListener(listener_.get());
    ioapic_ = std::make_unique<cpu::Ioapic>([this](uint8_t dest, uint8_t vector, bool level) {
      absl::MutexLock lock(&mu_);
      for (SoftVcpu* v : vcpus_) {
        if (v->apic_id() == dest) v->PostInterrupt(vector, level);
      }
    });
    return absl::OkStatus();
  }

  absl::Status MapRam(base::Gpa gpa, uint64_t size, uint8_t* /*host*/) override {
    // Nothing to map: the strategy reaches RAM through the FrameTable. Check
    // that the range is RAM there, so the two views of the VM agree.
    if (size == 0 || !memory_->IsRam(gpa, size)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "soft: MapRam [%#x, +%#x) is not RAM of the VM's FrameTable", gpa.value(), size));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(int index) override {
    if (index < 0 || static_cast<uint32_t>(index) >= kMaxVcpus) {
      return absl::InvalidArgumentError(absl::StrCat("soft: no vCPU ", index));
    }
    auto vcpu = std::make_unique<SoftVcpu>(this, index);
    TRY(vcpu->Attach());
    absl::MutexLock lock(&mu_);
    vcpus_.push_back(vcpu.get());
    return std::unique_ptr<Vcpu>(std::move(vcpu));
  }

  void RemoveVcpu(SoftVcpu* vcpu) {
    absl::MutexLock lock(&mu_);
    std::erase(vcpus_, vcpu);
  }

  absl::Status SetIrqLine(uint32_t gsi, bool level) override {
    if (gsi >= cpu::Ioapic::kNumPins) {
      return absl::InvalidArgumentError(absl::StrCat("soft: no IOAPIC pin ", gsi));
    }
    ioapic_->SetIrq(gsi, level);
    return absl::OkStatus();
  }
  uint64_t TscKhz() const override { return options_.cpu_khz; }
  absl::StatusOr<std::unique_ptr<VcpuScheduler>> CreateScheduler(
      const std::vector<Vcpu*>& vcpus) override;
  absl::StatusOr<BackendStats> Stats() override {
    BackendStats out;
    {
      absl::MutexLock lock(&strategy_mu_);
      out = strategy_->Counters();
      // The strategies switched away from keep their counts: summed into
      // the current one's where the names agree, appended otherwise.
      for (const base::CounterValue& c : retired_) {
        auto it = std::find_if(out.begin(), out.end(),
                               [&](const base::CounterValue& o) { return o.name == c.name; });
        if (it == out.end()) {
          out.push_back(c);
        } else {
          it->value += c.value;
        }
      }
    }
    for (const auto& c : vm_counters_.Snapshot("vm")) out.push_back(c);
    if (adaptive_) {
      for (const auto& c : adaptive_counters_.Snapshot("adaptive")) out.push_back(c);
    }
    for (const auto& c : ioapic_->counters().Snapshot("ioapic")) out.push_back(c);
    if (scheduled_.load(std::memory_order_relaxed)) {
      for (const auto& c : sched_counters_.Snapshot("sched")) out.push_back(c);
    }
    return out;
  }

  absl::Status SetPagingStrategy(std::string_view name) override {
    if (!IsPagingStrategy(name)) {
      return absl::InvalidArgumentError(absl::StrCat("soft: unknown paging strategy \"", std::string(name),
                                                     "\" (available: ", kPagingStrategies, ")"));
    }
    {
      absl::MutexLock lock(&switch_mu_);
      pending_switch_ = std::string(name);
      switch_pending_.store(true, std::memory_order_release);
    }
    absl::MutexLock lock(&mu_);
    for (SoftVcpu* v : vcpus_) v->Kick();  // the vCPU thread switches at its next RunUntil
    return absl::OkStatus();
  }
  std::string PagingStrategyName() override {
    absl::MutexLock lock(&strategy_mu_);
    return std::string(strategy_->name());
  }
  // A switch was requested and not yet done (any thread; cheap).
  bool switch_pending() const { return switch_pending_.load(std::memory_order_acquire); }
  // Performs the requested switch (docs/paging-strategies.md, "Switching"):
  // on a vCPU thread outside RunUntil, which takes run_mu() shared for its
  // whole run, so holding it exclusively means no vCPU of this VM runs and
  // every one is quiescent. A strategy that cannot be created is counted
  // and the VM goes on with the old one; an error (a vCPU that cannot be
  // attached to the new strategy) fails the vCPU.
  absl::Status ApplyPendingSwitch();
  absl::Mutex& run_mu() { return run_mu_; }

  // The adaptive mode (docs/paging-strategies.md, "The adaptive mode"). A
  // vCPU thread reports the instructions it retired after each interpreter
  // run (holding run_mu() shared); at each interval's end the controller
  // judges the interval from the current strategy's counter deltas, and a
  // decision to switch is posted as SetPagingStrategy posts one: the vCPU
  // leaves its run (the kick) and switches at its next RunUntil.
  bool adaptive() const { return adaptive_ != nullptr; }
  void OnRetired(uint64_t instructions);

  // Wakes whatever waits for this VM's vCPUs (a halted vCPU's Run, or the
  // scheduler): a kick or a posted interrupt. Any thread.
  void Wake() {
    absl::MutexLock lock(&wake_mu_);
    wake_.SignalAll();
  }
  void WaitForWake(absl::Duration timeout) {
    absl::MutexLock lock(&wake_mu_);
    wake_.WaitWithTimeout(&wake_mu_, timeout);
  }
  SoftSchedCounters& sched_counters() { return sched_counters_; }

  const SoftOptions& options() const { return options_; }
  // vCPU threads (the strategy changes only under run_mu() held exclusively).
  mmu::PagingStrategy* strategy() { return strategy_.get(); }
  cpu::Ioapic* ioapic() { return ioapic_.get(); }

 private:
  static constexpr uint32_t kMaxVcpus = 64;
  std::unique_ptr<StrategyInvalidationListener> MakeListener(mmu::PagingStrategy* strategy) {
    return std::make_unique<StrategyInvalidationListener>(strategy, [this] {
      absl::MutexLock lock(&mu_);
      for (SoftVcpu* v : vcpus_) v->Kick();
    });
  }

  const SoftOptions options_;
  FrameTable* const memory_;
  // Adaptive only. The controller and its interval state are used by the
  // VM's vCPU thread (all of a soft VM's vCPUs run on one thread), under
  // adaptive_mu_ so that a VM run otherwise stays correct too.
  std::shared_ptr<const costmodel::CostTable> costs_;
  absl::Mutex adaptive_mu_;
  std::unique_ptr<adaptive::Controller> adaptive_ ABSL_PT_GUARDED_BY(adaptive_mu_);
  uint64_t adaptive_retired_ ABSL_GUARDED_BY(adaptive_mu_) = 0;  // in the current interval
  // The current strategy's counters when the interval began (empty: a
  // strategy that has just started, whose counters start at zero).
  std::map<std::string, uint64_t, std::less<>> adaptive_base_ ABSL_GUARDED_BY(adaptive_mu_);
  SoftAdaptiveCounters adaptive_counters_;
  // Replaced by ApplyPendingSwitch: written under run_mu_ (exclusive) and
  // strategy_mu_; read by vCPU threads (holding run_mu_ or not running) and
  // under strategy_mu_ (Stats, PagingStrategyName, any thread).
  absl::Mutex strategy_mu_;
  std::unique_ptr<mmu::PagingStrategy> strategy_;
  std::unique_ptr<StrategyInvalidationListener> listener_;
  BackendStats retired_ ABSL_GUARDED_BY(strategy_mu_);  // counters of replaced strategies
  // Held shared by every RunUntil, exclusively by a switch.
  absl::Mutex run_mu_;
  absl::Mutex switch_mu_;
  std::string pending_switch_ ABSL_GUARDED_BY(switch_mu_);
  std::atomic<bool> switch_pending_{false};
  SoftVmCounters vm_counters_;
  std::unique_ptr<cpu::Ioapic> ioapic_;
  absl::Mutex mu_;
  std::vector<SoftVcpu*> vcpus_ ABSL_GUARDED_BY(mu_);
  absl::Mutex wake_mu_;
  absl::CondVar wake_;
  // Written by the scheduler's thread, read by Stats() after it stopped.
  SoftSchedCounters sched_counters_;
  std::atomic<bool> scheduled_{false};
};

absl::Status SoftVm::ApplyPendingSwitch() {
  std::string name;
  {
    absl::MutexLock lock(&switch_mu_);
    name = std::exchange(pending_switch_, std::string());
    switch_pending_.store(false, std::memory_order_relaxed);
  }
  if (name.empty()) return absl::OkStatus();
  absl::WriterMutexLock run(&run_mu_);
  SoftOptions options = options_;
  options.paging = name;
  absl::StatusOr<std::unique_ptr<mmu::PagingStrategy>> next = MakePagingStrategy(options, memory_, kMaxVcpus);
  if (!next.ok()) {
    vm_counters_.Inc(SoftVmCounters::kStrategySwitchFailures);
    return absl::OkStatus();
  }
  std::vector<SoftVcpu*> vcpus;
  {
    absl::MutexLock lock(&mu_);
    vcpus = vcpus_;
  }
  // Every vCPU is quiescent (none is inside RunUntil). The old strategy lets
  // go of them and of the FrameTable; the new one starts empty.
  // The new listener goes in before the old one goes, so that every
  // invalidation reaches the strategy that serves the vCPUs afterwards (the
  // old one, without vCPUs, only counts what it hears meanwhile).
  for (SoftVcpu* v : vcpus) strategy_->DetachVcpu(v->mmu());
  std::unique_ptr<StrategyInvalidationListener> listener = MakeListener(next->get());
  memory_->RegisterInvalidationListener(listener.get());
  memory_->UnregisterInvalidationListener(listener_.get());
  std::unique_ptr<mmu::PagingStrategy> old_strategy;
  std::unique_ptr<StrategyInvalidationListener> old_listener;
  {
    absl::MutexLock lock(&strategy_mu_);
    for (const base::CounterValue& c : strategy_->Counters()) {
      auto it = std::find_if(retired_.begin(), retired_.end(),
                             [&](const base::CounterValue& r) { return r.name == c.name; });
      if (it == retired_.end()) {
        retired_.push_back(c);
      } else {
        it->value += c.value;
      }
    }
    old_strategy = std::exchange(strategy_, *std::move(next));
    old_listener = std::exchange(listener_, std::move(listener));
  }
  vm_counters_.Inc(SoftVmCounters::kStrategySwitches);
  if (adaptive_) {
    // The new strategy's counters start at zero: so does the next interval's
    // base. A switch the controller did not decide (control command,
    // schedule) is followed: shadow or nested, it judges from there with a
    // fresh dwell; native pauses it until the VM is switched back.
    absl::MutexLock lock(&adaptive_mu_);
    adaptive_base_.clear();
    adaptive_retired_ = 0;
    const adaptive::Mode mode = name == "shadow" ? adaptive::Mode::kShadow : adaptive::Mode::kNested;
    if (name != "native" && adaptive_->current() != mode) adaptive_->SetCurrent(mode);
    const uint64_t current = name == "native" ? 0 : name == "shadow" ? 1 : 2;
    adaptive_counters_.Add(SoftAdaptiveCounters::kCurrent,
                           current - adaptive_counters_.Get(SoftAdaptiveCounters::kCurrent));
  }
  for (SoftVcpu* v : vcpus) TRY(v->SwitchStrategy(strategy_.get()));
  return absl::OkStatus();
}

void SoftVm::OnRetired(uint64_t instructions) {
  absl::MutexLock lock(&adaptive_mu_);
  adaptive_retired_ += instructions;
  if (adaptive_retired_ < options_.adaptive.interval) return;
  adaptive_retired_ = 0;
  // Holding run_mu() shared: the strategy does not change under us.
  const std::string_view name = strategy_->name();
  std::map<std::string, uint64_t, std::less<>> now;
  for (const base::CounterValue& c : strategy_->Counters()) now[c.name] = c.value;
  if (name == "native") {
    adaptive_base_ = std::move(now);  // paused (a manual switch to native)
    return;
  }
  costmodel::CostInputs deltas;
  for (const auto& [counter, value] : now) {
    auto it = adaptive_base_.find(counter);
    deltas.counters[counter] = value - (it == adaptive_base_.end() ? 0 : it->second);
  }
  adaptive_base_ = std::move(now);
  const adaptive::Mode before = adaptive_->current();
  const adaptive::Mode next = adaptive_->OnInterval(deltas);
  adaptive_counters_.Inc(SoftAdaptiveCounters::kIntervals);
  VLOG(1) << "adaptive: interval " << adaptive_->intervals() << " on " << adaptive::ModeName(before)
          << ": " << static_cast<uint64_t>(adaptive_->last().current) << " MMU cycles, the other "
          << static_cast<uint64_t>(adaptive_->last().other) << " estimated";
  if (next == before) return;
  LOG(INFO) << "adaptive: " << adaptive::ModeName(before) << " -> " << adaptive::ModeName(next)
            << " after interval " << adaptive_->intervals() << " (" << adaptive::ModeName(before)
            << " " << static_cast<uint64_t>(adaptive_->last().current) << " MMU cycles, "
            << adaptive::ModeName(next) << " estimated " << static_cast<uint64_t>(adaptive_->last().other)
            << ")";
  adaptive_counters_.Inc(SoftAdaptiveCounters::kSwitches);
  adaptive_counters_.Inc(next == adaptive::Mode::kShadow ? SoftAdaptiveCounters::kToShadow
                                                         : SoftAdaptiveCounters::kToNested);
  // Served by ApplyPendingSwitch at the vCPU's next RunUntil (it kicks the
  // vCPUs out of this one); the name is valid, so this cannot fail.
  (void)SetPagingStrategy(adaptive::ModeName(next));
}

// ---------------------------------------------------------------------------

SoftVcpu::SoftVcpu(SoftVm* vm, int index)
    : vm_(vm),
      index_(index),
      tlb_(mmu::SoftTlb::Config{.num_entries = vm->options().tlb_entries}),
      lapic_(static_cast<uint8_t>(index), index == 0) {
  mmu_.tlb = &tlb_;
  mmu_.index = static_cast<uint32_t>(index);
  lapic_.set_eoi_callback([this](uint8_t vector) { vm_->ioapic()->OnEoi(vector); });
}

void SoftVcpu::Kick() {
  kicked_.store(true, std::memory_order_release);
  vm_->Wake();
}

void SoftVcpu::PostInterrupt(uint8_t vector, bool level) {
  lapic_.Post(vector, level);
  vm_->Wake();
}

SoftVcpu::~SoftVcpu() {
  vm_->RemoveVcpu(this);
  if (attached_) vm_->strategy()->DetachVcpu(&mmu_);
}

absl::Status SoftVcpu::Attach() {
  TRY(vm_->strategy()->AttachVcpu(&mmu_));
  attached_ = true;
  interp_ = std::make_unique<cpu::Interpreter>(&state_, &mmu_, vm_->strategy(), this);
  interp_->set_deliver_events(true);
  return absl::OkStatus();
}

absl::Status SoftVcpu::SetLongModeEntry(const LongModeEntry& e) {
  // The same entry state the kvm backend sets (docs/boot.md): CS 0x10 (64-bit
  // code), the data selectors 0x18, TR 0x40 (busy 64-bit TSS), no IDT.
  state_ = cpu::CpuState{};
  state_.rip = e.rip;
  state_.gpr[7] = e.rdi;
  state_.gpr[cpu::kRegRsp] = e.rsp;
  state_.SetRflags(0x2);
  state_.cr0 = 0x8005'0033;
  state_.cr3 = e.cr3;
  state_.cr4 = 0x220;
  state_.efer = 0xd01;
  state_.seg[cpu::kCs].selector = 0x10;
  for (uint8_t s : {cpu::kEs, cpu::kSs, cpu::kDs, cpu::kFs, cpu::kGs}) state_.seg[s].selector = 0x18;
  state_.gdtr = {e.gdt_base, e.gdt_limit};
  state_.idtr = {0, 0};
  state_.tr = 0x40;
  state_.tr_base = e.tss_base;
  state_.tr_limit = 0x67;
  state_.cpl = 0;
  interp_->SyncPagingRegisters();
  halted_ = false;
  return absl::OkStatus();
}

absl::StatusOr<VcpuRegisters> SoftVcpu::GetRegisters() {
  VcpuRegisters r;
  const auto& g = state_.gpr;
  r.rax = g[0]; r.rcx = g[1]; r.rdx = g[2]; r.rbx = g[3];
  r.rsp = g[4]; r.rbp = g[5]; r.rsi = g[6]; r.rdi = g[7];
  r.r8 = g[8]; r.r9 = g[9]; r.r10 = g[10]; r.r11 = g[11];
  r.r12 = g[12]; r.r13 = g[13]; r.r14 = g[14]; r.r15 = g[15];
  r.rip = state_.rip;
  r.rflags = state_.Rflags();
  r.cr0 = state_.cr0; r.cr2 = state_.cr2; r.cr3 = state_.cr3; r.cr4 = state_.cr4;
  r.efer = state_.efer;
  r.cs = state_.seg[cpu::kCs].selector;
  r.ss = state_.seg[cpu::kSs].selector;
  r.ds = state_.seg[cpu::kDs].selector;
  r.tr = state_.tr;
  r.gdt_base = state_.gdtr.base; r.gdt_limit = state_.gdtr.limit;
  r.idt_base = state_.idtr.base; r.idt_limit = state_.idtr.limit;
  return r;
}

absl::StatusOr<BackendStats> SoftVcpu::Stats() {
  BackendStats out = interp_->counters().Snapshot("cpu");
  for (const auto& c : lapic_.counters().Snapshot("lapic")) out.push_back(c);
  for (const auto& c : tlb_.counters().Snapshot("soft_tlb")) out.push_back(c);
  for (const auto& c : counters_.Snapshot("vcpu")) out.push_back(c);
  out.push_back({"cpu.cycles", state_.Cycles()});
  return out;
}

uint64_t SoftVcpu::LapicNow() const {
  const unsigned __int128 cycles = state_.Cycles();
  return static_cast<uint64_t>(cycles * kLapicKhz / vm_->options().cpu_khz);
}

uint64_t SoftVcpu::CyclesUntil(uint64_t tick) const {
  if (tick == cpu::Lapic::kNoEvent) return UINT64_MAX;
  const uint64_t now = LapicNow();
  if (tick <= now) return 1;
  // Round up, so the event has happened when the cycles have run.
  const unsigned __int128 ticks = tick - now;
  const unsigned __int128 cycles = (ticks * vm_->options().cpu_khz + kLapicKhz - 1) / kLapicKhz;
  return cycles > UINT64_MAX / 2 ? UINT64_MAX / 2 : static_cast<uint64_t>(cycles ? cycles : 1);
}

void SoftVcpu::QueueWrite(ExitReason reason, uint64_t where, uint8_t size, uint64_t data) {
  // A full queue can only come from one instruction making more than
  // kMaxQueued device writes, which no x86 instruction does.
  CHECK(queued_count_ < kMaxQueued);
  QueuedExit& q = queued_[(queued_head_ + queued_count_) % kMaxQueued];
  ++queued_count_;
  q.exit = VcpuExit{};
  q.exit.reason = reason;
  std::memcpy(q.data, &data, sizeof(q.data));
  if (reason == ExitReason::kIo) {
    q.exit.io = {static_cast<uint16_t>(where), size, true, 1, q.data};
  } else {
    q.exit.mmio = {where, size, true, q.data};
  }
}

VcpuExit& SoftVcpu::ExitForRead(ExitReason reason, uint8_t size) {
  // Unclaimed bytes read as all ones, as on a bus nothing answers.
  std::memset(read_buf_, 0xff, sizeof(read_buf_));
  read_exit_ = VcpuExit{};
  read_exit_.reason = reason;
  read_size_ = size;
  read_exit_pending_ = true;
  return read_exit_;
}

VcpuExit SoftVcpu::TakeQueued() {
  QueuedExit& q = queued_[queued_head_];
  queued_head_ = (queued_head_ + 1) % kMaxQueued;
  --queued_count_;
  return q.exit;  // data points into queued_, valid until the next Run
}

cpu::IoStatus SoftVcpu::PortIn(uint16_t port, uint8_t size, uint32_t* /*data*/) noexcept {
  ExitForRead(ExitReason::kIo, size).io = {port, size, false, 1, read_buf_};
  return cpu::IoStatus::kExit;
}

cpu::IoStatus SoftVcpu::PortOut(uint16_t port, uint8_t size, uint32_t data) noexcept {
  QueueWrite(ExitReason::kIo, port, size, data);
  return cpu::IoStatus::kExit;
}

cpu::IoStatus SoftVcpu::MmioRead(uint64_t gpa, uint8_t size, uint64_t* data) noexcept {
  if (InLapic(gpa) || InIoapic(gpa)) {
    // 32-bit registers; other sizes see the aligned register's bytes.
    const uint32_t offset = static_cast<uint32_t>(gpa & 0xffc);
    uint32_t reg;
    if (InLapic(gpa)) {
      counters_.Inc(SoftVcpuCounters::kLapicAccesses);
      reg = lapic_.Read(offset, LapicNow());
    } else {
      counters_.Inc(SoftVcpuCounters::kIoapicAccesses);
      reg = vm_->ioapic()->Read(offset);
    }
    *data = static_cast<uint64_t>(reg) >> ((gpa & 3) * 8);
    return cpu::IoStatus::kDone;
  }
  ExitForRead(ExitReason::kMmio, size).mmio = {gpa, size, false, read_buf_};
  return cpu::IoStatus::kExit;
}

cpu::IoStatus SoftVcpu::MmioWrite(uint64_t gpa, uint8_t size, uint64_t data) noexcept {
  if (InLapic(gpa)) {
    counters_.Inc(SoftVcpuCounters::kLapicAccesses);
    // Only aligned 32-bit writes reach a register (SDM Vol. 3A §11.4.1).
    if (size == 4 && (gpa & 3) == 0) {
      lapic_.Write(static_cast<uint32_t>(gpa & 0xfff), static_cast<uint32_t>(data), LapicNow());
    }
    interp_->RequestInterruptCheck();  // EOI, TPR, the timer may unmask something
    return cpu::IoStatus::kDone;
  }
  if (InIoapic(gpa)) {
    counters_.Inc(SoftVcpuCounters::kIoapicAccesses);
    if (size == 4 && (gpa & 3) == 0) vm_->ioapic()->Write(static_cast<uint32_t>(gpa & 0xfff), static_cast<uint32_t>(data));
    interp_->RequestInterruptCheck();
    return cpu::IoStatus::kDone;
  }
  QueueWrite(ExitReason::kMmio, gpa, size, data);
  return cpu::IoStatus::kExit;
}

bool SoftVcpu::ReadMsr(uint32_t msr, uint64_t* value) noexcept {
  if (msr == cpu::Lapic::kApicBaseMsr) {
    *value = lapic_.apic_base_msr();
    return true;
  }
  return false;
}

bool SoftVcpu::WriteMsr(uint32_t msr, uint64_t value) noexcept {
  if (msr == cpu::Lapic::kApicBaseMsr) return lapic_.SetApicBaseMsr(value);
  return false;
}

absl::StatusOr<VcpuExit> SoftVcpu::Run() {
  VcpuExit exit;
  RunUntil(kUnscheduled, &exit);
  return exit;
}

uint64_t SoftVcpu::WakeCycle() const {
  if (!halted_) return Cycles();
  if ((state_.rflags_other & cpu::kFlagIf) == 0) return UINT64_MAX;
  const uint64_t wait = CyclesUntil(lapic_.NextTimerEvent());
  return wait == UINT64_MAX ? UINT64_MAX : Cycles() + wait;
}

SoftVcpu::Turn SoftVcpu::RunUntil(uint64_t until, VcpuExit* exit) {
  const bool scheduled = until != kUnscheduled;
  counters_.Inc(SoftVcpuCounters::kRuns);
  // A requested paging-strategy switch happens here, between runs, where
  // this vCPU is quiescent (SoftVm::SetPagingStrategy kicks it here).
  if (vm_->switch_pending()) [[unlikely]] {
    if (absl::Status s = vm_->ApplyPendingSwitch(); !s.ok()) {
      *exit = VcpuExit{};
      exit->reason = ExitReason::kInternalError;
      exit->description = absl::StrCat("soft: paging strategy switch failed: ", s.message());
      return Turn::kExit;
    }
  }
  absl::ReaderMutexLock running(&vm_->run_mu());
  if (queued_count_ > 0) {
    *exit = TakeQueued();
    return Turn::kExit;
  }
  if (read_exit_pending_) {
    // The handler filled read_buf_: the instruction re-runs with it.
    uint64_t value = 0;
    std::memcpy(&value, read_buf_, read_size_ <= 8 ? read_size_ : 8);
    interp_->CompleteIoRead(value);
    read_exit_pending_ = false;
  }
  mmu::PagingStrategy& strategy = *vm_->strategy();
  strategy.LeaveQuiescence(mmu_);
  struct Quiesce {
    ~Quiesce() { mmu::PagingStrategy::EnterQuiescence(*mmu); }
    mmu::VcpuMmu* mmu;
  } quiesce{&mmu_};

  for (;;) {
    if (kicked_.exchange(false, std::memory_order_acq_rel)) {
      *exit = VcpuExit{};
      exit->reason = ExitReason::kInterrupted;
      return Turn::kExit;
    }
    lapic_.MergePosted();
    lapic_.AdvanceTo(LapicNow());
    const bool deliverable = lapic_.HighestDeliverable() >= 0;
    if (deliverable) interp_->RequestInterruptCheck();
    const bool interrupts_on = (state_.rflags_other & cpu::kFlagIf) != 0;
    if (halted_) {
      const uint64_t to_end = scheduled && until > Cycles() ? until - Cycles() : 0;
      if (deliverable && interrupts_on) {
        halted_ = false;  // the interpreter takes it at its first boundary
      } else if (!interrupts_on) {
        // Nothing can wake a vCPU halted with interrupts off.
        if (scheduled) {
          // Its clock keeps pace with the others' (docs/cpu.md, "Scheduling").
          state_.idle_cycles += to_end;
          return Turn::kParked;
        }
        *exit = VcpuExit{};
        exit->reason = ExitReason::kHlt;
        return Turn::kExit;
      } else if (uint64_t skip = CyclesUntil(lapic_.NextTimerEvent());
                 skip != UINT64_MAX || scheduled) {
        // Idle: guest time jumps to the next timer event (deterministic), or
        // in a scheduled run at most to the end of the turn.
        if (scheduled && skip > to_end) skip = to_end;
        if (skip == 0) return Turn::kDone;
        counters_.Inc(SoftVcpuCounters::kIdleSkips);
        counters_.Add(SoftVcpuCounters::kIdleSkippedCycles, skip);
        state_.idle_cycles += skip;
        continue;
      } else {
        // Waiting for a device interrupt from another thread, or a kick.
        counters_.Inc(SoftVcpuCounters::kIdleWaits);
        mmu::PagingStrategy::EnterQuiescence(mmu_);
        vm_->WaitForWake(kIdleWait);
        strategy.LeaveQuiescence(mmu_);
        continue;
      }
    }
    uint64_t budget = vm_->options().quantum;
    if (scheduled) {
      if (Cycles() >= until) return Turn::kDone;
      if (until - Cycles() < budget) budget = until - Cycles();
    }
    const uint64_t to_timer = CyclesUntil(lapic_.NextTimerEvent());
    if (to_timer < budget) budget = to_timer;
    const cpu::RunResult r = interp_->Run(budget);
    if (vm_->adaptive()) vm_->OnRetired(TakeRetired());
    switch (r.reason) {
      case cpu::StopReason::kBudget:
        break;
      case cpu::StopReason::kHalt:
        halted_ = true;
        break;
      case cpu::StopReason::kIoExit:
        if (read_exit_pending_) {
          *exit = read_exit_;
          return Turn::kExit;
        }
        if (queued_count_ > 0) {
          *exit = TakeQueued();
          return Turn::kExit;
        }
        break;  // a device write served here (LAPIC) needs no exit
      case cpu::StopReason::kTripleFault:
        *exit = VcpuExit{};
        exit->reason = ExitReason::kShutdown;
        exit->description = absl::StrFormat("soft cpu: %s (last fault vector %u, error code %#x)",
                                            r.detail, r.exception.vector, r.exception.error_code);
        return Turn::kExit;
      case cpu::StopReason::kHostError:
        *exit = VcpuExit{};
        exit->reason = ExitReason::kInternalError;
        exit->description = absl::StrFormat(
            "soft cpu: guest RAM could not be backed at rip %#x%s%s", state_.rip,
            r.detail.empty() ? "" : ": ", r.detail);
        return Turn::kExit;
      case cpu::StopReason::kException:
        *exit = VcpuExit{};
        exit->reason = ExitReason::kInternalError;
        exit->description = absl::StrFormat("soft cpu: undelivered exception %u", r.exception.vector);
        return Turn::kExit;
    }
  }
}

// ---------------------------------------------------------------------------
// Round-robin scheduling of several vCPUs on one thread (docs/cpu.md,
// "Scheduling"). Guest time is cut into rounds of `slice` cycles on a fixed
// grid: round r ends at horizon (r + 1) * slice. In a round every vCPU, in
// order, runs until its own clock reaches the horizon; a halted one idles
// there (or wakes on its timer on the way and runs the rest of the turn).
// So every vCPU's TSC and LAPIC clock is its own cycle count, the clocks are
// equal at each round's end and never more than one slice apart, and where
// a turn ends depends only on guest state: the interleaving is the same in
// every run. Kicks and exits return from Run() in the middle of a turn and
// the turn goes on at the next Run().
class SoftScheduler final : public VcpuScheduler {
 public:
  SoftScheduler(SoftVm* vm, std::vector<SoftVcpu*> vcpus)
      : vm_(vm), vcpus_(std::move(vcpus)), slice_(vm->options().slice) {
    uint64_t latest = 0;
    for (SoftVcpu* v : vcpus_) latest = std::max(latest, v->Cycles());
    horizon_ = (latest / slice_ + 1) * slice_;
  }

  absl::StatusOr<Exit> Run() override {
    SoftSchedCounters& counters = vm_->sched_counters();
    for (;;) {
      SoftVcpu* v = vcpus_[current_];
      VcpuExit exit;
      const SoftVcpu::Turn turn = v->RunUntil(horizon_, &exit);
      if (turn == SoftVcpu::Turn::kExit) return Exit{v, std::move(exit)};
      if (turn == SoftVcpu::Turn::kParked) {
        counters.Inc(SoftSchedCounters::kParked);
        ++parked_;
      } else {
        counters.Inc(SoftSchedCounters::kTurns);
      }
      if (++current_ < vcpus_.size()) continue;

      // The round is over: every clock is at the horizon.
      current_ = 0;
      const size_t parked = std::exchange(parked_, 0);
      if (parked == vcpus_.size()) {
        // Every vCPU halted with interrupts off: the VM cannot go on.
        Exit stuck{vcpus_.front(), VcpuExit{}};
        stuck.exit.reason = ExitReason::kHlt;
        stuck.exit.description = "every vCPU halted with interrupts off";
        return stuck;
      }
      uint64_t wake = UINT64_MAX;
      for (SoftVcpu* w : vcpus_) wake = std::min(wake, w->WakeCycle());
      if (wake == UINT64_MAX) {
        // All halted and nothing armed: wait for a device interrupt or a
        // kick, then replay the round at the same horizon (the vCPUs'
        // clocks stand still meanwhile, as a lone vCPU's do).
        counters.Inc(SoftSchedCounters::kIdleWaits);
        vm_->WaitForWake(kIdleWait);
        continue;
      }
      // The next round that holds `wake`: the following one if a vCPU can
      // run now, else (all halted) a jump straight to the earliest timer
      // event, on the same grid.
      counters.Inc(SoftSchedCounters::kRounds);
      const uint64_t rounds = (wake > horizon_ ? (wake - horizon_) / slice_ : 0) + 1;
      if (rounds > 1) {
        // Every clock starts the round together: the halted vCPUs idle
        // through the skipped rounds now, not only when their turn comes.
        counters.Add(SoftSchedCounters::kIdleJumps, rounds - 1);
        const uint64_t start = horizon_ + (rounds - 1) * slice_;
        for (SoftVcpu* w : vcpus_) w->IdleTo(start);
      }
      horizon_ += rounds * slice_;
    }
  }

  void Kick() override {
    for (SoftVcpu* v : vcpus_) v->Kick();
  }

 private:
  SoftVm* const vm_;
  const std::vector<SoftVcpu*> vcpus_;
  const uint64_t slice_;
  uint64_t horizon_ = 0;  // the end of the current round, in guest cycles
  size_t current_ = 0;    // whose turn it is
  size_t parked_ = 0;     // vCPUs parked in this round so far
};

absl::StatusOr<std::unique_ptr<VcpuScheduler>> SoftVm::CreateScheduler(
    const std::vector<Vcpu*>& vcpus) {
  if (vcpus.empty()) return absl::InvalidArgumentError("soft: a scheduler needs a vCPU");
  if (options_.slice == 0) return absl::InvalidArgumentError("soft: slice must be positive");
  std::vector<SoftVcpu*> soft;
  {
    absl::MutexLock lock(&mu_);
    for (Vcpu* given : vcpus) {
      auto it = std::find_if(vcpus_.begin(), vcpus_.end(),
                             [&](SoftVcpu* v) { return static_cast<Vcpu*>(v) == given; });
      if (it == vcpus_.end()) {
        return absl::InvalidArgumentError("soft: a scheduled vCPU is not one of this VM's");
      }
      if (std::find(soft.begin(), soft.end(), *it) != soft.end()) {
        return absl::InvalidArgumentError(absl::StrCat("soft: vCPU ", given->index(), " is scheduled twice"));
      }
      soft.push_back(*it);
    }
  }
  scheduled_.store(true, std::memory_order_relaxed);
  return std::unique_ptr<VcpuScheduler>(new SoftScheduler(this, std::move(soft)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SoftHypervisor>> SoftHypervisor::Create(SoftOptions options) {
  if (!IsPagingMode(options.paging)) {
    return absl::InvalidArgumentError(absl::StrCat("soft: unknown paging strategy \"",
                                                   options.paging, "\" (available: ",
                                                   kPagingModes, ")"));
  }
  if (options.paging == "adaptive") TRY(options.adaptive.Validate());
  if (options.paging == "adaptive" && !options.hw_model) {
    return absl::InvalidArgumentError("soft: adaptive paging needs the hardware model (soft_hw_model off)");
  }
  if (options.cpu_khz < 1000 || options.cpu_khz > 100'000'000) {
    return absl::InvalidArgumentError("soft: cpu_khz must be between 1000 (1 MHz) and 100000000 (100 GHz)");
  }
  if (options.quantum == 0) return absl::InvalidArgumentError("soft: quantum must be positive");
  if (options.tlb_entries < 2 || options.tlb_entries > (1u << 20) ||
      (options.tlb_entries & (options.tlb_entries - 1)) != 0) {
    return absl::InvalidArgumentError("soft: tlb_entries must be a power of two in [2, 1048576]");
  }
  return std::unique_ptr<SoftHypervisor>(new SoftHypervisor(std::move(options)));
}

absl::StatusOr<std::unique_ptr<Vm>> SoftHypervisor::CreateVm(const VmSetup& setup) {
  if (setup.memory == nullptr) {
    return absl::InvalidArgumentError("soft: a VM needs its FrameTable (VmSetup::memory)");
  }
  auto vm = std::make_unique<SoftVm>(options_, setup.memory);
  TRY(vm->Init());
  return std::unique_ptr<Vm>(std::move(vm));
}

}  // namespace vmm

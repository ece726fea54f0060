// The `soft` backend: guests run on cpu::Interpreter, our own x86-64 CPU,
// and every guest memory access goes through the VM's paging strategy and
// the vCPU's soft TLB (docs/cpu.md, docs/paging-strategies.md).
//
// SoftHypervisor -> SoftVm -> SoftVcpu implement hypervisor.h like the kvm
// backend, so the machine, the device bus and the exit handler are shared:
//   - Port I/O and MMIO outside the interrupt controllers leave Run() as
//     kIo/kMmio exits with KVM's semantics (a read's data is filled by the
//     handler and seen by the guest when Run() is called again).
//   - The local APIC (cpu/lapic.h) and the I/O APIC (cpu/ioapic.h) are
//     modelled here, where KVM has its in-kernel irqchip; SetIrqLine drives
//     the I/O APIC.
//   - Guest time is the instruction count at a modelled frequency
//     (SoftOptions::cpu_khz): the TSC advances one tick per retired
//     instruction and the LAPIC timer counts in the same time base. A halted
//     vCPU skips straight to its next timer event. So a run is deterministic:
//     the same image, command line and config give the same counts.
//   - A triple fault is a kShutdown exit; a RAM page the host cannot back is
//     kInternalError; both leave the host and the other VMs running.
//   - Several vCPUs of a VM run on one thread through SoftVm's
//     CreateScheduler: round-robin turns of SoftOptions::slice guest cycles,
//     each vCPU's clock (TSC, LAPIC) its own cycle count, all clocks equal
//     at every round's end (docs/cpu.md, "Scheduling").
//   - Vm::SetPagingStrategy switches a running VM's strategy: the vCPU
//     thread does it between two interpreter runs, every vCPU quiescent
//     (docs/paging-strategies.md, "Switching strategies while the VM runs").
//   - paging "adaptive" starts on nested and, every SoftOptions::adaptive.
//     interval guest instructions, lets adaptive::Controller choose between
//     shadow and nested from the interval's counters; a decision is a switch
//     as above (docs/paging-strategies.md, "The adaptive mode").
//
// Thread safety: as hypervisor.h. SetIrqLine, Kick and SetPagingStrategy
// from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "adaptive/controller.h"
#include "costmodel/cost_model.h"
#include "vmm-host/hypervisor.h"

namespace vmm {

// The paging strategies of the soft backend, as the CLI and configs name
// them: "native" (cpu/native_strategy.h), "shadow" (shadow/) and "nested"
// (nested/).
inline constexpr char kPagingStrategies[] = "native, shadow, nested";
inline bool IsPagingStrategy(std::string_view name) {
  return name == "native" || name == "shadow" || name == "nested";
}
// What a VM can start with: a strategy, or "adaptive" (adaptive/: starts on
// nested and switches between shadow and nested by itself).
inline constexpr char kPagingModes[] = "native, shadow, nested, adaptive";
inline bool IsPagingMode(std::string_view name) { return IsPagingStrategy(name) || name == "adaptive"; }

struct SoftOptions {
  // The paging mode every VM of this hypervisor starts with (IsPagingMode).
  std::string paging = "native";
  // paging == "adaptive": the decision's options (adaptive/controller.h) and
  // the cost table it prices intervals with (null: the default table).
  adaptive::Options adaptive = {};
  std::shared_ptr<const costmodel::CostTable> costs = nullptr;
  // Nested paging (and adaptive's nested periods): 2 MiB EPT entries where
  // the backing allows (nested::NestedStrategy::Options::large_pages).
  bool nested_large_pages = true;
  // The modelled CPU frequency: guest instructions per millisecond of guest
  // time. It is also the TSC frequency the guest is told.
  uint64_t cpu_khz = 1'000'000;
  // Soft-TLB entries per MMU index (a power of two). QEMU grows its TLB to
  // the working set (up to far larger sizes); a fixed large table gets the
  // same hit rate for page-stride work at 32 bytes an entry, and every flush
  // stays O(1) (an epoch).
  uint32_t tlb_entries = 16384;
  // Instructions a vCPU runs between two looks at Kick() and posted
  // interrupts. Only latency depends on it, never guest-visible timing.
  uint64_t quantum = 1'000'000;
  // Guest instructions (cycles) per turn when several vCPUs of a VM share
  // one thread (Vm::CreateScheduler): round r runs every vCPU in index order
  // up to guest time (r + 1) * slice. It sets the interleaving, so unlike
  // `quantum` it is guest-visible; a run stays deterministic for any value.
  uint64_t slice = 100'000;
  // Shadow paging only: ShadowStrategy::Options::audit_on_resync.
  bool shadow_audit = false;
  // The hardware TLB/PWC model behind the cost model (mmu/hw_paging_model.h)
  // keeps the soft TLB within its modelled STLB, so that every hardware-TLB
  // miss reaches it: exact modelled TLB counts, but many more soft-TLB misses
  // on large working sets. False: the model sees only the soft TLB's own
  // misses (an under-count) and the interpreter runs at full speed.
  bool hw_model_exact = true;
  // False: no hardware model at all ("off"): the interpreter's raw speed, no
  // modelled TLB and walk counts, and no modelled cycles in the report.
  // Adaptive paging needs the model.
  bool hw_model = true;
};

class SoftHypervisor final : public Hypervisor {
 public:
  static absl::StatusOr<std::unique_ptr<SoftHypervisor>> Create(SoftOptions options = {});

  std::string_view name() const override { return "soft"; }
  std::string paging_mode() const override { return "soft/" + options_.paging; }
  bool needs_trap_syscall_entry() const override { return false; }
  bool pv_mem_pays_off() const override { return false; }
  bool models_hardware() const override { return options_.hw_model; }
  // `setup.memory` is required: the strategy reads guest RAM through it.
  absl::StatusOr<std::unique_ptr<Vm>> CreateVm(const VmSetup& setup) override;

  const SoftOptions& options() const { return options_; }

 private:
  explicit SoftHypervisor(SoftOptions options) : options_(std::move(options)) {}
  SoftOptions options_;
};

}  // namespace vmm

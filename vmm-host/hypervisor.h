// The backend interfaces: Hypervisor -> Vm -> Vcpu.
//
// One implementation per backend: `kvm` (kvm_hypervisor.h) and `soft` (the
// software CPU, soft_hypervisor.h). Everything above this interface (the
// machine, devices, exit handling, reports) is backend-neutral, in the manner
// of Cloud Hypervisor's `hypervisor` crate: Vcpu::Run() returns an exit that a
// plain function (exit_handler.h) turns into device calls.
//
// Thread safety: a Hypervisor and its Vms may be used from any thread; each
// Vcpu is run from exactly one thread (its vCPU thread, or the thread of the
// VcpuScheduler that runs it), except Kick(), which any thread may call to
// make a running Run() return kInterrupted soon.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/addr.h"
#include "base/counters.h"

namespace vmm {

enum class ExitReason : uint8_t {
  kIo,             // port I/O: see VcpuExit::io
  kMmio,           // access to guest-physical memory that is not RAM
  kHlt,            // HLT without an in-kernel local APIC
  kShutdown,       // triple fault
  kInternalError,  // the backend could not emulate something
  kFailEntry,      // the backend refused to enter the guest
  kInterrupted,    // Kick() or a signal
  kSystemEvent,    // reset / shutdown request from the guest platform
  kUnknown,
};
const char* ExitReasonName(ExitReason reason);

// One exit. Pointers refer to the backend's exit buffer and are valid until
// the next Run(); for reads the handler fills them before calling Run() again.
struct VcpuExit {
  ExitReason reason = ExitReason::kUnknown;
  struct Io {
    uint16_t port = 0;
    uint8_t size = 0;       // 1, 2 or 4
    bool is_write = false;
    uint32_t count = 0;     // > 1 for rep ins/outs
    uint8_t* data = nullptr;  // count * size bytes
  } io;
  struct Mmio {
    uint64_t gpa = 0;
    uint8_t size = 0;       // 1..8
    bool is_write = false;
    uint8_t* data = nullptr;
  } mmio;
  // kInternalError: suberror; kFailEntry: hardware reason; kSystemEvent: type.
  uint64_t detail = 0;
  std::string description;  // human-readable detail for errors
};

// General-purpose and control registers, for the initial state and for
// reports of a failed guest.
struct VcpuRegisters {
  uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rbp = 0, rsp = 0;
  uint64_t r8 = 0, r9 = 0, r10 = 0, r11 = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
  uint64_t rip = 0, rflags = 0x2;
  uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, efer = 0;
  uint16_t cs = 0, ss = 0, ds = 0, tr = 0;
  uint64_t gdt_base = 0, idt_base = 0;
  uint16_t gdt_limit = 0, idt_limit = 0;
};
std::string FormatRegisters(const VcpuRegisters& regs);

// The long-mode state a vCPU starts in (see docs/boot.md).
struct LongModeEntry {
  uint64_t rip = 0;
  uint64_t rdi = 0;  // boot info
  uint64_t rsp = 0;
  uint64_t cr3 = 0;
  uint64_t gdt_base = 0;
  uint16_t gdt_limit = 0;
  uint64_t tss_base = 0;  // a present 64-bit TSS (selector 0x40 in the boot GDT)
};

// Named statistics the backend exposes (KVM's binary stats, the soft CPU's
// counters), by name.
using BackendStats = std::vector<base::CounterValue>;

class Vcpu {
 public:
  virtual ~Vcpu() = default;
  virtual int index() const = 0;
  // Enters the guest until the next exit. An error means the backend itself
  // failed (not the guest).
  virtual absl::StatusOr<VcpuExit> Run() = 0;
  // Makes Run() return kInterrupted as soon as possible. Any thread.
  virtual void Kick() = 0;
  virtual absl::Status SetLongModeEntry(const LongModeEntry& entry) = 0;
  virtual absl::StatusOr<VcpuRegisters> GetRegisters() = 0;
  virtual absl::StatusOr<BackendStats> Stats() = 0;
};

// Runs several vCPUs of one VM on the calling thread, taking turns, where the
// backend can (soft: round-robin in deterministic slices of guest
// instructions, docs/cpu.md "Scheduling"). Run() returns the next exit of
// any of them with the vCPU it came from; the caller handles it as it would
// a Vcpu::Run() exit (a read's data is filled before the next Run()). The
// scheduled vCPUs must outlive it and must not be run otherwise.
//
// Thread safety: Run() from one thread; Kick() from any thread.
class VcpuScheduler {
 public:
  struct Exit {
    Vcpu* vcpu = nullptr;
    VcpuExit exit;
  };
  virtual ~VcpuScheduler() = default;
  // An error means the backend itself failed (not the guest).
  virtual absl::StatusOr<Exit> Run() = 0;
  // Makes Run() return a kInterrupted exit as soon as possible. Any thread.
  virtual void Kick() = 0;
};

class Vm {
 public:
  virtual ~Vm() = default;
  // Maps host memory [host, host + size) as guest RAM at gpa. Page-aligned.
  virtual absl::Status MapRam(base::Gpa gpa, uint64_t size, uint8_t* host) = 0;
  virtual absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(int index) = 0;
  // Drives an interrupt line of the interrupt controller (GSI).
  virtual absl::Status SetIrqLine(uint32_t gsi, bool level) = 0;
  // The guest TSC frequency in kHz, or 0 if unknown.
  virtual uint64_t TscKhz() const = 0;
  // A scheduler that runs `vcpus` (of this VM, in this turn order) on one
  // thread. Unimplemented on backends whose vCPUs each need their own thread
  // (kvm).
  virtual absl::StatusOr<std::unique_ptr<VcpuScheduler>> CreateScheduler(
      const std::vector<Vcpu*>& /*vcpus*/) {
    return absl::UnimplementedError("this backend runs each vCPU on its own thread");
  }
  virtual absl::StatusOr<BackendStats> Stats() = 0;
  // Asks the VM to switch its paging strategy to `name` while it runs
  // (docs/paging-strategies.md, "Switching strategies while the VM runs").
  // Any thread; returns once the request is posted: the VM's vCPU thread
  // performs the switch at its next safe point (the vCPUs are kicked so that
  // it comes soon). Unimplemented on backends with one fixed translation
  // scheme (kvm).
  virtual absl::Status SetPagingStrategy(std::string_view /*name*/) {
    return absl::UnimplementedError("this backend cannot switch paging strategies (soft only)");
  }
  // The paging strategy the VM runs now ("native", "shadow", "nested"), or
  // empty where the backend has none to switch. Any thread.
  virtual std::string PagingStrategyName() { return ""; }
};

class FrameTable;

// What a backend is told about a VM it creates.
struct VmSetup {
  // The VM's guest RAM. The kvm backend maps it with Vm::MapRam; the soft
  // backend's paging strategy reads guest memory through it and listens to
  // its invalidations. Must outlive the Vm.
  FrameTable* memory = nullptr;
};

class Hypervisor {
 public:
  virtual ~Hypervisor() = default;
  virtual std::string_view name() const = 0;
  // How guest virtual addresses are translated on this backend, e.g.
  // "host shadow (pvm)", "ept", "npt", "shadow".
  virtual std::string paging_mode() const = 0;
  // True where `syscall` from CPL3 does not reach the guest kernel (PVM); the
  // guest is then told to use its trap-based entry.
  virtual bool needs_trap_syscall_entry() const = 0;
  // True where the guest kernel zeroing or copying a frame itself costs far
  // more than one port exit (PVM emulates kernel code: a `rep stosq` page is
  // about 250 us, an exit about 10 us; docs/platform.md). The guest is then
  // told that the pv-mem doorbell exists (guest::kBootFlagPvMem). Elsewhere
  // (VT-x, and the soft CPU, which does a page of REP STOS/MOVS at once) the
  // exit is the dearer way.
  virtual bool pv_mem_pays_off() const = 0;
  // True where the backend runs the hardware TLB/PWC model behind the cost
  // model (soft, unless --soft_hw_model=off): the report then has modelled
  // cycles.
  virtual bool models_hardware() const { return false; }
  virtual absl::StatusOr<std::unique_ptr<Vm>> CreateVm(const VmSetup& setup) = 0;
};

}  // namespace vmm

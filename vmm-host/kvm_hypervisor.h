// The `kvm` backend: guests run on /dev/kvm.
//
// Linux KVM API (Documentation/virt/kvm/api.rst): one VM fd per Vm, one vCPU
// fd plus its mmapped kvm_run page per Vcpu, RAM as user memory slots, the
// in-kernel irqchip (IOAPIC + LAPIC) for interrupts and the LAPIC timer.
// docs/platform.md lists what the KVM on the development machines (kvm_pvm) can
// and cannot do; the code is also correct on ordinary VT-x/AMD-V hosts.
//
// Thread safety: see hypervisor.h. KvmVcpu::Kick() signals the vCPU thread
// (SIGUSR1, handler installed once per process) after setting immediate_exit.
#pragma once

#include <linux/kvm.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "vmm-host/hypervisor.h"

namespace vmm {

class KvmHypervisor final : public Hypervisor {
 public:
  // Opens /dev/kvm (or `device_path`) and checks the API version and the
  // capabilities we rely on. Errors name the fix (load the module, permissions).
  static absl::StatusOr<std::unique_ptr<KvmHypervisor>> Create(
      const std::string& device_path = "/dev/kvm");
  ~KvmHypervisor() override;

  std::string_view name() const override { return "kvm"; }
  std::string paging_mode() const override { return paging_mode_; }
  bool needs_trap_syscall_entry() const override { return is_pvm_; }
  bool pv_mem_pays_off() const override { return is_pvm_; }
  absl::StatusOr<std::unique_ptr<Vm>> CreateVm(const VmSetup& setup) override;

  int fd() const { return kvm_fd_; }
  int vcpu_mmap_size() const { return vcpu_mmap_size_; }
  // The KVM_GET_SUPPORTED_CPUID answer in its C layout (kvm_abi.h).
  const uint8_t* supported_cpuid() const { return cpuid_storage_.get(); }

 private:
  KvmHypervisor() = default;

  int kvm_fd_ = -1;
  int vcpu_mmap_size_ = 0;
  bool is_pvm_ = false;
  std::string paging_mode_;
  std::unique_ptr<uint8_t[]> cpuid_storage_;
};

// Reads how this host's KVM translates guest addresses: "host shadow (pvm)"
// when the kvm_pvm module is loaded, else the kvm_intel `ept` or kvm_amd
// `npt` parameter ("ept", "npt", "shadow"), else "unknown".
std::string DetectKvmPagingMode(bool* is_pvm);

// Parses a KVM binary-stats fd (KVM_GET_STATS_FD, api.rst 4.133) into names
// and values. Histograms and arrays are summed into one value.
absl::StatusOr<BackendStats> ReadKvmBinaryStats(int stats_fd);

}  // namespace vmm

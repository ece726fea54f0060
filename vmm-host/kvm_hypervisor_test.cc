#include "vmm-host/kvm_hypervisor.h"

#include <fcntl.h>
#include <unistd.h>

#include "gtest/gtest.h"
#include "vmm-host/kvm_abi.h"

namespace vmm {
namespace {

TEST(KvmHypervisorTest, MissingDeviceIsOneClearLine) {
  absl::StatusOr<std::unique_ptr<KvmHypervisor>> hv = KvmHypervisor::Create("/nonexistent/kvm");
  ASSERT_FALSE(hv.ok());
  EXPECT_EQ(hv.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(hv.status().message().find("has no KVM"), std::string::npos) << hv.status();
}

TEST(KvmHypervisorTest, WrongDeviceIsRejected) {
  // /dev/null opens but answers no KVM ioctl.
  absl::StatusOr<std::unique_ptr<KvmHypervisor>> hv = KvmHypervisor::Create("/dev/null");
  ASSERT_FALSE(hv.ok());
  EXPECT_NE(hv.status().message().find("KVM API version"), std::string::npos) << hv.status();
}

TEST(KvmHypervisorTest, PagingModeIsDetected) {
  bool is_pvm = false;
  const std::string mode = DetectKvmPagingMode(&is_pvm);
  if (access("/sys/module/kvm_pvm", F_OK) == 0) {
    EXPECT_TRUE(is_pvm);
    EXPECT_EQ(mode, "host shadow (pvm)");
  } else {
    EXPECT_FALSE(is_pvm);
    EXPECT_TRUE(mode == "ept" || mode == "npt" || mode == "shadow" || mode == "unknown") << mode;
  }
}

TEST(KvmHypervisorTest, CreatesVmAndVcpuAndReadsBinaryStats) {
  if (access("/dev/kvm", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/kvm not usable here";
  absl::StatusOr<std::unique_ptr<KvmHypervisor>> hv = KvmHypervisor::Create();
  ASSERT_TRUE(hv.ok()) << hv.status();
  kvm_abi::Cpuid2Header header;
  std::memcpy(&header, (*hv)->supported_cpuid(), sizeof(header));
  EXPECT_GT(header.nent, 0u) << "KVM_GET_SUPPORTED_CPUID with the C layout";
  absl::StatusOr<std::unique_ptr<Vm>> vm = (*hv)->CreateVm({});
  ASSERT_TRUE(vm.ok()) << vm.status();
  absl::StatusOr<std::unique_ptr<Vcpu>> vcpu = (*vm)->CreateVcpu(0);
  ASSERT_TRUE(vcpu.ok()) << vcpu.status();
  // The in-kernel IOAPIC takes the virtio interrupt lines (GSI 5..).
  EXPECT_TRUE((*vm)->SetIrqLine(5, true).ok());
  EXPECT_TRUE((*vm)->SetIrqLine(5, false).ok());
  EXPECT_GT((*vm)->TscKhz(), 0u) << "KVM_GET_TSC_KHZ feeds the guest's boot info";
  absl::StatusOr<BackendStats> stats = (*vm)->Stats();
  if (!stats.ok()) GTEST_SKIP() << "KVM_GET_STATS_FD unsupported: " << stats.status();
  bool found = false;
  for (const base::CounterValue& v : *stats) found |= v.name == "remote_tlb_flush";
  EXPECT_TRUE(found) << "a VM stat every KVM has";
  absl::StatusOr<BackendStats> vcpu_stats = (*vcpu)->Stats();
  ASSERT_TRUE(vcpu_stats.ok());
  found = false;
  for (const base::CounterValue& v : *vcpu_stats) found |= v.name == "exits";
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace vmm

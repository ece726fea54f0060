// Boots the guest image under QEMU (TCG) and checks what it reports: every
// workload succeeds at a small size, a deliberately corrupted pattern is caught,
// a faulting user process is killed while the kernel goes on, and the boot
// paths and platform flags behave. Skips, saying why, when QEMU is missing.
#include <gtest/gtest.h>

#include <string>

#include "guest/abi.h"
#include "guest/qemu_runner.h"

namespace guest {
namespace {

// Small sizes: the whole suite should take seconds under TCG.
constexpr char kSmall[] =
    "mib=2 iters=40 passes=2 pages=16 procs=2 fork_every=4 sleep_ms=100 wake_ms=50 "
    "compute.iters=200000 tlbstress.mib=4";

class GuestQemuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (FindQemu().empty()) GTEST_SKIP() << "qemu-system-x86_64 not found (install qemu-system-x86)";
  }

  static QemuRun Run(const std::string& cmdline, const std::string& machine = "microvm",
                     std::vector<std::string> extra = {}) {
    QemuOptions o;
    o.cmdline = cmdline;
    o.machine = machine;
    o.extra_args = std::move(extra);
    QemuRun run = RunGuest(o);
    EXPECT_TRUE(run.started);
    EXPECT_FALSE(run.timed_out) << run.serial;
    return run;
  }

  static void ExpectSuccess(const QemuRun& run, const std::string& workload) {
    ASSERT_EQ(run.GuestExitCode(), kExitSuccess) << run.serial;
    auto results = run.Results();
    ASSERT_TRUE(results.count(workload)) << run.serial;
    const auto& r = results[workload];
    EXPECT_EQ(r.at("checksum_ok"), 1u) << run.serial;
    EXPECT_GT(r.at("ops"), 0u) << run.serial;
    EXPECT_TRUE(r.count("bytes")) << run.serial;
    EXPECT_GT(r.at("elapsed_ns"), 0u) << run.serial;
  }
};

class GuestWorkloadTest : public GuestQemuTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(GuestWorkloadTest, ReportsSuccess) {
  std::string w = GetParam();
  ExpectSuccess(Run("workload=" + w + " " + kSmall), w);
}

TEST_P(GuestWorkloadTest, CorruptedPatternIsReportedAsFailure) {
  std::string w = GetParam();
  QemuRun run = Run("workload=" + w + " corrupt=1 " + kSmall);
  EXPECT_EQ(run.GuestExitCode(), kExitWorkloadFailed) << run.serial;
  auto results = run.Results();
  ASSERT_TRUE(results.count(w)) << run.serial;
  EXPECT_EQ(results[w].at("checksum_ok"), 0u) << run.serial;
  EXPECT_NE(run.serial.find("mismatch"), std::string::npos) << run.serial;
}

INSTANTIATE_TEST_SUITE_P(AllWorkloads, GuestWorkloadTest,
                         ::testing::Values("compute", "memtouch", "ptchurn", "tlbstress",
                                           "dedupfill", "idle", "mix"),
                         [](const auto& param_info) { return std::string(param_info.param); });

TEST_F(GuestQemuTest, MixRunsEveryWorkloadConcurrently) {
  QemuRun run = Run(std::string("workload=mix ") + kSmall);
  ExpectSuccess(run, "mix");
  for (const char* w : {"compute", "memtouch", "ptchurn", "tlbstress", "dedupfill", "idle"}) {
    ExpectSuccess(run, w);
  }
}

TEST_F(GuestQemuTest, FaultingUserProcessIsKilledAndKernelContinues) {
  QemuRun run = Run("workload=fault");
  ExpectSuccess(run, "fault");
  EXPECT_EQ(run.Results()["fault"].at("killed"), 4u);
  EXPECT_NE(run.serial.find("KILL pid=2 name=fault vector=14 (#PF page fault)"), std::string::npos)
      << run.serial;
  EXPECT_NE(run.serial.find("vector=13 (#GP general protection)"), std::string::npos);
  EXPECT_NE(run.serial.find("vector=0 (#DE divide error)"), std::string::npos);
}

TEST_F(GuestQemuTest, FaultingInitEndsTheRunWithInitKilled) {
  QemuRun run = Run("workload=fault fault.init=1");
  EXPECT_EQ(run.GuestExitCode(), kExitInitKilled) << run.serial;
  EXPECT_NE(run.serial.find("KILL pid=1"), std::string::npos) << run.serial;
}

TEST_F(GuestQemuTest, KernelFaultPanicsWithRegisters) {
  QemuRun run = Run("workload=compute kfault=1");
  EXPECT_EQ(run.GuestExitCode(), kExitPanic) << run.serial;
  EXPECT_NE(run.serial.find("PANIC: kernel page fault"), std::string::npos) << run.serial;
  EXPECT_NE(run.serial.find("cr2=ffffc00000000000"), std::string::npos) << run.serial;
  EXPECT_NE(run.serial.find("rip="), std::string::npos) << run.serial;
}

TEST_F(GuestQemuTest, BadCommandLineIsABootError) {
  QemuRun run = Run("workload=compute entry=sometimes");
  EXPECT_EQ(run.GuestExitCode(), kExitBootError) << run.serial;
}

TEST_F(GuestQemuTest, TrapBasedSyscallEntryRunsWorkloads) {
  QemuRun run = Run(std::string("workload=mix entry=trap ") + kSmall);
  EXPECT_NE(run.serial.find("entry int3 trap"), std::string::npos) << run.serial;
  ExpectSuccess(run, "mix");
}

TEST_F(GuestQemuTest, BootsOnPcMachine) {
  QemuRun run = Run(std::string("workload=mix ") + kSmall, "pc");
  ExpectSuccess(run, "mix");
}

TEST_F(GuestQemuTest, FreshFramesNeedNoZeroingWhenRamStartsZeroed) {
  // dedupfill verifies its zero pages, so stale data in a fresh frame would
  // show up as a mismatch.
  QemuRun run = Run(std::string("workload=dedupfill ram_zeroed=1 ") + kSmall);
  ExpectSuccess(run, "dedupfill");
  EXPECT_NE(run.serial.find("zeroed_pages=0\n"), std::string::npos) << run.serial;
}

TEST_F(GuestQemuTest, ListsVirtioMmioDevicesQemuAppends) {
  // With ACPI off, microvm appends virtio_mmio.device= entries to the command line.
  QemuRun run = Run("workload=compute compute.iters=1000", "microvm,acpi=off",
                    {"-device", "virtio-balloon-device"});
  ExpectSuccess(run, "compute");
  EXPECT_NE(run.serial.find("virtio_mmio.device=512@0x"), std::string::npos) << run.serial;
  EXPECT_NE(run.serial.find("magic 74726976 version 1 device 5"), std::string::npos)
      << run.serial;
}

TEST_F(GuestQemuTest, ToleratesMalformedVirtioMmioEntries) {
  QemuRun run = Run(
      "workload=compute compute.iters=1000 virtio_mmio.device=junk "
      "virtio_mmio.device=4K@0x10000000:5 virtio_mmio.device=0x200@0xfeb00000:12");
  ExpectSuccess(run, "compute");
  EXPECT_NE(run.serial.find("malformed virtio_mmio.device entry ignored"), std::string::npos);
  EXPECT_NE(run.serial.find("virtio-mmio: 10000000 size 1000 irq 5 (outside"), std::string::npos)
      << run.serial;
  EXPECT_NE(run.serial.find("virtio-mmio: feb00000 size 200 irq 12 magic "), std::string::npos)
      << run.serial;
}

}  // namespace
}  // namespace guest

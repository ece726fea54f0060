// Boots the guest image under QEMU (TCG) and checks what it reports: every
// workload succeeds at a small size, a deliberately corrupted pattern is caught,
// a faulting user process is killed while the kernel goes on, and the boot
// paths and platform flags behave. Skips, saying why, when QEMU is missing.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

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

// ---- virtio-balloon against QEMU's device, driven over QMP ----

// QEMU's virtio-mmio transports are legacy (version 1) unless forced modern; our
// driver core speaks only version 2. microvm appends virtio_mmio.device= only
// with ACPI off.
std::vector<std::string> BalloonDeviceArgs() {
  return {"-global", "virtio-mmio.force-legacy=false", "-device",
          "virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on"};
}

class GuestBalloonQemuTest : public GuestQemuTest {
 protected:
  // Polls query-balloon until `actual` equals `bytes`; returns the last value seen.
  static uint64_t WaitForActual(QemuSession& s, uint64_t bytes, double timeout_seconds = 60) {
    uint64_t actual = 0;
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(static_cast<int>(timeout_seconds * 1000));
    while (std::chrono::steady_clock::now() < deadline && !s.Exited()) {
      actual = QmpInt(s.Qmp(R"({"execute":"query-balloon"})"), "actual").value_or(0);
      if (actual == bytes) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return actual;
  }
  static bool WaitForSerial(QemuSession& s, const std::string& text, double timeout_seconds = 60) {
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(static_cast<int>(timeout_seconds * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
      if (s.Serial().find(text) != std::string::npos) return true;
      if (s.Exited()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  static std::string SetTarget(QemuSession& s, uint64_t bytes) {
    return s.Qmp(R"({"execute":"balloon","arguments":{"value":)" + std::to_string(bytes) + "}}");
  }
};

TEST_F(GuestBalloonQemuTest, ActualFollowsQmpTargetWhileWorkloadVerifies) {
  constexpr uint64_t kMib = 1 << 20;
  QemuOptions o;
  o.machine = "microvm,acpi=off";
  o.memory_mib = 128;
  o.timeout_seconds = 120;
  // 64 MiB ballooned = 16384 pages. The guest keeps 8 MiB verified throughout,
  // touches and frees 16 MiB more once inflated, and reports free pages every
  // 20 ticks.
  o.cmdline =
      "workload=balloon balloon.mib=8 balloon.expect_pages=16384 balloon.release_pages=0 "
      "balloon.pressure_mib=16 balloon.hold_ms=1000 virtio_balloon.report_ticks=20";
  o.extra_args = BalloonDeviceArgs();
  QemuSession s;
  ASSERT_TRUE(s.Start(o)) << s.Serial();
  ASSERT_TRUE(WaitForSerial(s, "init: pid 1")) << s.Serial();
  EXPECT_EQ(WaitForActual(s, 128 * kMib, 5), 128 * kMib) << "nothing ballooned at start";

  ASSERT_NE(SetTarget(s, 64 * kMib).find("return"), std::string::npos);
  EXPECT_EQ(WaitForActual(s, 64 * kMib), 64 * kMib) << "inflate: actual must follow the target";
  ASSERT_TRUE(WaitForSerial(s, "balloon: inflated to 16384 pages")) << s.Serial();

  // The statistics queue: QEMU asks every second once polling is on (§5.5.6.3).
  s.Qmp(R"({"execute":"qom-set","arguments":{"path":"/machine/peripheral/balloon0",)"
        R"("property":"guest-stats-polling-interval","value":1}})");
  // The first buffer (from initialization, before any inflation) is already
  // there; wait for one the guest refilled after the device returned it.
  const std::string get_stats =
      R"({"execute":"qom-get","arguments":{"path":"/machine/peripheral/balloon0",)"
      R"("property":"guest-stats"}})";
  const uint64_t first_update = QmpInt(s.Qmp(get_stats), "last-update").value_or(0);
  std::string stats;
  for (int i = 0; i < 100; ++i) {
    stats = s.Qmp(get_stats);
    if (QmpInt(stats, "last-update").value_or(0) > first_update) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GT(QmpInt(stats, "last-update").value_or(0), first_update) << stats;
  EXPECT_GT(QmpInt(stats, "stat-total-memory").value_or(0), 100 * kMib) << stats;
  EXPECT_GT(QmpInt(stats, "stat-free-memory").value_or(0), 0u) << stats;
  EXPECT_LT(QmpInt(stats, "stat-free-memory").value_or(~0ull), 64 * kMib) << stats;
  EXPECT_GT(QmpInt(stats, "stat-minor-faults").value_or(0), 0u) << stats;
  EXPECT_EQ(QmpInt(stats, "stat-swap-in").value_or(1), 0u) << stats;

  ASSERT_NE(SetTarget(s, 128 * kMib).find("return"), std::string::npos);
  EXPECT_EQ(WaitForActual(s, 128 * kMib), 128 * kMib) << "deflate: actual must follow the target";

  QemuRun run = s.Finish();
  EXPECT_FALSE(run.timed_out) << run.serial;
  ExpectSuccess(run, "balloon");
  auto r = run.Results()["balloon"];
  EXPECT_EQ(r.at("max_pages"), 16384u) << run.serial;
  EXPECT_EQ(r.at("final_pages"), 0u) << run.serial;
  EXPECT_EQ(r.at("inflated"), 16384u) << run.serial;
  EXPECT_EQ(r.at("deflated"), 16384u) << run.serial;
  // The freed pressure pages are reported. (Deflated pages are not: they go
  // back to the allocator unwritten, in its table of pages the host dropped,
  // guest/kernel/pmm.h PmmFreeUntouched, and need no second report.)
  EXPECT_GT(r.at("reported_pages"), 0u) << "freed pages are reported\n" << run.serial;
  EXPECT_NE(run.serial.find("BALLOON target=0 actual=0 inflated=16384 deflated=16384"),
            std::string::npos)
      << run.serial;
}

TEST_F(GuestBalloonQemuTest, DeflatesOnOomAndWorkloadStillVerifies) {
  constexpr uint64_t kMib = 1 << 20;
  QemuOptions o;
  o.machine = "microvm,acpi=off";
  o.memory_mib = 96;
  o.timeout_seconds = 120;
  // 56 MiB ballooned (14336 pages), then 40 MiB touched: more than is free, so
  // the kernel's allocator must take pages back from the balloon.
  o.cmdline =
      "workload=balloon balloon.mib=4 balloon.expect_pages=14336 balloon.pressure_mib=40 "
      "balloon.release_pages=0 balloon.hold_ms=200";
  o.extra_args = BalloonDeviceArgs();
  QemuSession s;
  ASSERT_TRUE(s.Start(o)) << s.Serial();
  ASSERT_TRUE(WaitForSerial(s, "init: pid 1")) << s.Serial();
  ASSERT_NE(SetTarget(s, 40 * kMib).find("return"), std::string::npos);
  ASSERT_TRUE(WaitForSerial(s, "balloon: touched 10240 pressure pages")) << s.Serial();
  EXPECT_GT(WaitForActual(s, 40 * kMib, 1), 40 * kMib) << "the guest took pages back";
  ASSERT_NE(SetTarget(s, 96 * kMib).find("return"), std::string::npos);
  EXPECT_EQ(WaitForActual(s, 96 * kMib), 96 * kMib);
  QemuRun run = s.Finish();
  ExpectSuccess(run, "balloon");
  auto r = run.Results()["balloon"];
  EXPECT_GT(r.at("oom_deflated"), 0u) << run.serial;
  EXPECT_EQ(r.at("final_pages"), 0u) << run.serial;
}

TEST_F(GuestBalloonQemuTest, LegacyTransportIsReportedNotDriven) {
  QemuRun run = Run("workload=compute compute.iters=1000", "microvm,acpi=off",
                    {"-device", "virtio-balloon-device"});
  ExpectSuccess(run, "compute");
  EXPECT_NE(run.serial.find("balloon: device at feb00e00 not usable: kLegacyDevice"),
            std::string::npos)
      << run.serial;
}

}  // namespace
}  // namespace guest

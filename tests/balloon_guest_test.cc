// virtio-balloon end to end: our guest kernel's driver (guest-driver/,
// guest/kernel/balloon.*) against our device (balloon/), in real Machines on
// the soft backend and on kvm. Every property is measured, not counted:
//   - a target set by the host inflates the balloon while the guest keeps a
//     buffer checksum-verified (the `balloon` workload, next to memtouch, whose
//     freed frames are resident); the host's resident frames (FramePool,
//     SEEK_DATA) drop by the target within a few pages; the guest's free
//     memory drops by as much in the statistics it sends (statsq); `actual`
//     and the device's own count reach the target; a target of 0 deflates it
//     without making memory resident, and every checksum stays correct;
//   - DEFLATE_ON_OOM: a workload that needs memory beyond what the inflated
//     balloon leaves completes, the device seeing deflate requests while the
//     target is unchanged;
//   - free page reporting: after a workload frees memory, the host's resident
//     frames fall with no target ever set.
// The kvm cases skip, with the reason, where /dev/kvm is missing or unusable.
// On the PVM host guest kernel code is emulated (docs/platform.md), so the
// sizes are small: each case takes a few seconds on either backend.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/guest_results.h"
#include "vmm-host/elf_loader.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/kvm_hypervisor.h"
#include "vmm-host/machine.h"
#include "vmm-host/soft_hypervisor.h"
#include "vmm-host/vmm_runner.h"

namespace vmm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kPageBytes = 4096;
// Pages the host's resident frames may differ from a target by: the guest
// keeps running meanwhile (kernel stacks, the driver's page-list chunks, ring
// and statistics writes).
constexpr int64_t kResidentSlackPages = 16;

// Feature masks for virtio_balloon.features (guest-driver/virtio_balloon.h).
constexpr uint64_t kFeaturesNoReporting = 0x7;  // MUST_TELL_HOST, STATS_VQ, DEFLATE_ON_OOM

bool KvmUsable(std::string* why) {
  const int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *why = absl::StrCat("/dev/kvm not usable: ", std::strerror(errno));
    return false;
  }
  close(fd);
  return true;
}

class BalloonGuestTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("balloon_guest_test_", getpid(), "_", name);
    std::filesystem::create_directories(dir_);
    const std::string backend = GetParam();
    if (backend == "kvm") {
      std::string why;
      if (!KvmUsable(&why)) GTEST_SKIP() << why;
      absl::StatusOr<std::unique_ptr<KvmHypervisor>> kvm = KvmHypervisor::Create();
      if (!kvm.ok()) GTEST_SKIP() << "/dev/kvm not usable: " << kvm.status();
      hypervisor_ = *std::move(kvm);
    } else {
      absl::StatusOr<std::unique_ptr<SoftHypervisor>> soft = SoftHypervisor::Create();
      ASSERT_TRUE(soft.ok()) << soft.status();
      hypervisor_ = *std::move(soft);
    }
    absl::StatusOr<ElfImage> image = LoadElfFile(DefaultKernelPath());
    ASSERT_TRUE(image.ok()) << image.status();
    image_ = std::make_unique<ElfImage>(*std::move(image));
  }
  void TearDown() override {
    machine_.reset();
    pool_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A Machine with the balloon on, running `workload` with `args`.
  void CreateMachine(uint64_t ram_bytes, const std::string& workload, const std::string& args,
                     const std::string& extra_cmdline) {
    absl::StatusOr<std::unique_ptr<FramePool>> pool = FramePool::Create({.budget_bytes = 2 * ram_bytes});
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
    MachineEnv env;
    env.hypervisor = hypervisor_.get();
    env.pool = pool_.get();
    env.image = image_.get();
    env.log_dir = (dir_ / "logs").string();
    VmConfig config;
    config.name = "vm0";
    config.backend = GetParam();
    config.ram_bytes = ram_bytes;
    config.workload = workload;
    config.workload_args = args;
    config.extra_cmdline = extra_cmdline;
    config.balloon = true;
    config.timeout_seconds = 300;  // ASan runs the interpreter ~5x slower
    absl::StatusOr<std::unique_ptr<Machine>> machine = Machine::Create(config, env);
    ASSERT_TRUE(machine.ok()) << machine.status();
    machine_ = *std::move(machine);
    ASSERT_NE(machine_->balloon(), nullptr);
  }

  // Frames of the pool backed by host memory: this VM's RAM, measured.
  int64_t Resident() {
    absl::StatusOr<uint64_t> n = pool_->ResidentFrames();
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? static_cast<int64_t>(*n) : -1;
  }

  // Polls `done` every millisecond until it holds (true), the VM finished or
  // `seconds` passed (false, with `what` and the console in the failure).
  bool WaitFor(const std::function<bool()>& done, double seconds, const std::string& what) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
      if (done()) return true;
      if (machine_->finished()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (done()) return true;
    ADD_FAILURE() << "timed out waiting for " << what << (machine_->finished() ? " (the VM finished)" : "")
                  << "\n" << machine_->Snapshot().console_tail;
    return false;
  }

  bool HasResult(const std::string& name) {
    for (const GuestResult& g : machine_->Snapshot().results) {
      if (g.name == name) return true;
    }
    return false;
  }

  // Asks the driver for statistics and waits for the answer.
  std::optional<balloon::BalloonStats> FreshStats() {
    balloon::Balloon& b = *machine_->balloon();
    const uint64_t before = b.LastStats() ? b.LastStats()->sequence : 0;
    // The driver holds no buffer only between a request and its answer.
    if (!WaitFor([&] { return b.RequestStats(); }, 60, "the stats buffer")) return std::nullopt;
    if (!WaitFor([&] { return b.LastStats() && b.LastStats()->sequence > before; }, 60, "fresh statistics")) {
      return std::nullopt;
    }
    return b.LastStats();
  }

  MachineResult Finish() {
    MachineResult r = machine_->Wait();
    EXPECT_TRUE(r.ok()) << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n"
                        << r.registers << "\n" << r.console_tail;
    return r;
  }

  std::filesystem::path dir_;
  std::unique_ptr<Hypervisor> hypervisor_;
  std::unique_ptr<ElfImage> image_;
  std::unique_ptr<FramePool> pool_;
  std::unique_ptr<Machine> machine_;
};

// Ballooned down by a target and back up while memtouch and the balloon
// workload run, with free page reporting off so that only the balloon moves
// memory.
TEST_P(BalloonGuestTest, InflatesToTheTargetAndDeflatesWhileChecksumsHold) {
  constexpr uint64_t kTargetPages = 8192;  // 32 MiB of a 96 MiB guest
  ASSERT_NO_FATAL_FAILURE(CreateMachine(
      96 << 20, "mix",
      absl::StrCat("mix.list=memtouch,balloon memtouch.mib=36 memtouch.passes=1 memtouch.stride=4096 balloon.mib=4 "
                   "balloon.expect_pages=", kTargetPages, " balloon.hold_ms=200 balloon.timeout_ms=200000"),
      absl::StrCat("virtio_balloon.features=", kFeaturesNoReporting)));
  balloon::Balloon& b = *machine_->balloon();
  machine_->Start();
  // memtouch has touched 36 MiB and freed it: the guest's allocator hands
  // those resident frames out first, so inflation must return them.
  ASSERT_TRUE(WaitFor([&] { return HasResult("memtouch.checksum_ok"); }, 240, "memtouch"));
  ASSERT_TRUE(WaitFor([&] { return HasResult("balloon.buffer_pages"); }, 240, "the balloon buffer"));
  ASSERT_TRUE(WaitFor([&] { return b.negotiated_features() != 0; }, 60, "the driver"));
  EXPECT_EQ(b.negotiated_features() & (1u << 5), 0u) << "reporting was masked off";
  // The balloon workload's buffer is in place once it says so; then wait
  // until the guest's free memory holds still between two statistics (the
  // stats request itself may be in flight).
  std::optional<balloon::BalloonStats> before = FreshStats();
  ASSERT_TRUE(before.has_value());
  for (int i = 0; i < 50; ++i) {
    const std::optional<balloon::BalloonStats> again = FreshStats();
    ASSERT_TRUE(again.has_value());
    const bool still = again->Get(balloon::StatTag::kFreeMemory) == before->Get(balloon::StatTag::kFreeMemory);
    before = again;
    if (still) break;
  }
  const int64_t resident_before = Resident();

  const auto t0 = Clock::now();
  ASSERT_TRUE(machine_->SetBalloonTarget(kTargetPages * kPageBytes).ok());
  ASSERT_TRUE(WaitFor([&] { return b.actual_pages() == kTargetPages; }, 120, "inflation"));
  const double inflate_s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(b.inflated_pages(), kTargetPages) << "the device discarded what the guest reported";
  const int64_t resident_inflated = Resident();
  const std::optional<balloon::BalloonStats> after = FreshStats();
  ASSERT_TRUE(after.has_value());

  const int64_t reclaimed = resident_before - resident_inflated;
  EXPECT_NEAR(reclaimed, static_cast<int64_t>(kTargetPages), kResidentSlackPages)
      << "resident frames " << resident_before << " -> " << resident_inflated;
  const auto free_bytes = [](const balloon::BalloonStats& s) {
    return static_cast<int64_t>(s.Get(balloon::StatTag::kFreeMemory).value_or(0));
  };
  ASSERT_TRUE(before->Get(balloon::StatTag::kFreeMemory).has_value());
  const int64_t free_drop_pages = (free_bytes(*before) - free_bytes(*after)) / 4096;
  EXPECT_NEAR(free_drop_pages, static_cast<int64_t>(kTargetPages), kResidentSlackPages)
      << "guest free bytes " << free_bytes(*before) << " -> " << free_bytes(*after);

  // Back up: deflation is lazy, so nothing becomes resident until touched.
  const auto t1 = Clock::now();
  ASSERT_TRUE(machine_->SetBalloonTarget(0).ok());
  ASSERT_TRUE(WaitFor([&] { return b.actual_pages() == 0 && b.inflated_pages() == 0; }, 120, "deflation"));
  const double deflate_s = std::chrono::duration<double>(Clock::now() - t1).count();
  EXPECT_LE(Resident(), resident_inflated + kResidentSlackPages);
  EXPECT_EQ(b.counters().Get(balloon::BalloonCounters::kDeflatedPages), kTargetPages);

  const MachineResult r = Finish();
  std::map<std::string, uint64_t> data = vmm::testing::DataResults(r);
  EXPECT_EQ(data["mix.checksum_ok"], 1u);
  EXPECT_EQ(data["memtouch.checksum_ok"], 1u);
  EXPECT_EQ(data["balloon.checksum_ok"], 1u);
  EXPECT_LE(data["balloon.max_pages"], kTargetPages);  // sampled between passes
  EXPECT_EQ(data["balloon.final_pages"], 0u);
  EXPECT_EQ(data["balloon.inflated"], kTargetPages);
  EXPECT_EQ(data["balloon.deflated"], kTargetPages);
  EXPECT_EQ(data["balloon.oom_deflated"], 0u);
  EXPECT_GT(data["balloon.rounds"], 2u) << "the buffer was verified while the balloon moved";
  std::printf("%s: %llu pages inflated in %.3f s, deflated in %.3f s; resident %lld -> %lld; "
              "guest free %lld -> %lld bytes\n",
              GetParam().c_str(), static_cast<unsigned long long>(kTargetPages), inflate_s, deflate_s,
              static_cast<long long>(resident_before), static_cast<long long>(resident_inflated),
              static_cast<long long>(free_bytes(*before)), static_cast<long long>(free_bytes(*after)));
}

// The balloon holds 40 MiB of a 64 MiB guest, then the workload touches
// 24 MiB more: only DEFLATE_ON_OOM can make room. release_pages equals the
// target, so the host never lowers it: the workload completes only if the
// driver deflated on its own.
TEST_P(BalloonGuestTest, DeflatesOnOomAndTheWorkloadCompletes) {
  constexpr uint64_t kTargetPages = 10240;
  ASSERT_NO_FATAL_FAILURE(CreateMachine(
      64 << 20, "balloon",
      absl::StrCat("mib=4 pressure_mib=24 hold_ms=0 timeout_ms=200000 expect_pages=", kTargetPages,
                   " release_pages=", kTargetPages),
      // The guest kernel zeroes the pages it hands out itself (not through
      // the VMM's doorbell), so that its own stores are the first touches
      // of deflated pages.
      "pv_mem=0"));
  balloon::Balloon& b = *machine_->balloon();
  machine_->Start();
  ASSERT_TRUE(WaitFor([&] { return b.negotiated_features() != 0; }, 60, "the driver"));
  EXPECT_NE(b.negotiated_features() & (1u << 2), 0u) << "DEFLATE_ON_OOM negotiated";
  ASSERT_TRUE(machine_->SetBalloonTarget(kTargetPages * kPageBytes).ok());
  ASSERT_TRUE(WaitFor([&] { return b.actual_pages() == kTargetPages; }, 120, "inflation"));
  const MachineResult r = Finish();
  std::map<std::string, uint64_t> data = vmm::testing::DataResults(r);
  EXPECT_EQ(data["balloon.checksum_ok"], 1u);
  EXPECT_EQ(data["balloon.max_pages"], kTargetPages);
  EXPECT_GT(data["balloon.oom_deflated"], 0u);
  // The device saw the deflate requests, with the target never lowered.
  EXPECT_EQ(b.target_pages(), kTargetPages);
  EXPECT_GE(b.counters().Get(balloon::BalloonCounters::kDeflatedPages), data["balloon.oom_deflated"]);
  EXPECT_GT(b.counters().Get(balloon::BalloonCounters::kDeflatedPages), 0u);
  // The pressure pages reuse deflated ones, and each first touch reaches the
  // table: on soft through MakeAvailable, on kvm through the userfaultfd
  // handler (vmm-host/ram_fault_handler.h), which then serves the fault with
  // a zero page.
  const uint64_t touched = b.counters().Get(balloon::BalloonCounters::kDeflatedPagesTouched);
  EXPECT_GT(touched, 0u) << "no guest touch of a deflated page reached the table";
  if (GetParam() == "kvm") {
    std::map<std::string, uint64_t> stats;
    for (const base::CounterValue& c : r.vm_stats) stats[c.name] = c.value;
    EXPECT_GE(stats["ram_faults.repopulated"], touched) << "the guest's own stores found the holes";
    EXPECT_GT(stats["ram_faults.chunks_registered"], 0u);
    EXPECT_EQ(stats["ram_faults.errors"], 0u);
    EXPECT_EQ(stats["memory.ballooned_touched"], touched);
  }
  std::printf("%s: deflated pages touched %llu\n", GetParam().c_str(), static_cast<unsigned long long>(touched));
  std::printf("%s: oom_deflated %llu pages, device deflated %llu, final %llu\n", GetParam().c_str(),
              static_cast<unsigned long long>(data["balloon.oom_deflated"]),
              static_cast<unsigned long long>(b.counters().Get(balloon::BalloonCounters::kDeflatedPages)),
              static_cast<unsigned long long>(data["balloon.final_pages"]));
}

// memtouch touches 32 MiB and frees it, then idle sleeps (mix.serial: a
// loaded host can make memtouch outlast a concurrent idle): free page
// reporting (every 10 ticks here) must hand most of it back to the host with
// no target set.
TEST_P(BalloonGuestTest, ReportedFreePagesLeaveTheHostWithoutATarget) {
  constexpr int64_t kTouchedPages = 32 * 256;
  ASSERT_NO_FATAL_FAILURE(CreateMachine(
      64 << 20, "mix",
      "mix.list=memtouch,idle mix.serial=1 memtouch.mib=32 memtouch.passes=1 memtouch.stride=4096 idle.mib=1 "
      "idle.sleep_ms=4000 "
      "idle.wake_ms=100",
      "virtio_balloon.report_ticks=10"));
  balloon::Balloon& b = *machine_->balloon();
  machine_->Start();
  int64_t peak = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        peak = std::max(peak, Resident());
        return HasResult("memtouch.checksum_ok");
      },
      240, "memtouch"));
  EXPECT_GT(peak, kTouchedPages) << "memtouch made its footprint resident";
  // Half of what memtouch freed: reporting takes only whole, aligned 512 KiB
  // blocks of free frames, and the page tables memtouch's faults allocated
  // between its data frames leave about a quarter of the blocks incomplete
  // (70-75% come back, measured on both backends).
  int64_t now = peak;
  const bool fell = WaitFor(
      [&] {
        now = Resident();
        return peak - now >= kTouchedPages / 2;
      },
      120, "resident frames to fall");
  EXPECT_TRUE(fell) << "resident " << peak << " -> " << now;
  EXPECT_EQ(b.target_pages(), 0u);
  EXPECT_EQ(b.inflated_pages(), 0u);
  const MachineResult r = Finish();
  // After the run: the device counts a report once its discard is done, so
  // the count may trail the residency seen above.
  EXPECT_GE(static_cast<int64_t>(b.counters().Get(balloon::BalloonCounters::kReportedPages)), kTouchedPages / 2);
  std::map<std::string, uint64_t> data = vmm::testing::DataResults(r);
  EXPECT_EQ(data["mix.checksum_ok"], 1u);
  EXPECT_EQ(data["memtouch.checksum_ok"], 1u);
  EXPECT_EQ(data["idle.checksum_ok"], 1u);
  std::printf("%s: resident peak %lld -> %lld, device reported pages %llu\n", GetParam().c_str(),
              static_cast<long long>(peak), static_cast<long long>(now),
              static_cast<unsigned long long>(b.counters().Get(balloon::BalloonCounters::kReportedPages)));
}

INSTANTIATE_TEST_SUITE_P(Backends, BalloonGuestTest, ::testing::Values("soft", "kvm"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace vmm

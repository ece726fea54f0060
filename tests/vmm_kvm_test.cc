// Integration tests of the VMM on a real /dev/kvm: the guest kernel boots
// through our loader and runs every workload, alone and eight at a time;
// its results match the same workload under QEMU; a failing or hung guest is
// reported for that VM while the others finish. They skip, with the reason,
// where /dev/kvm (or, for the comparisons, QEMU) is missing.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "guest/qemu_runner.h"
#include "gtest/gtest.h"
#include "tests/fakes/tiny_elf.h"
#include "tests/support/guest_results.h"
#include "tests/support/qemu_balloon.h"
#include "tests/support/small_workload_args.h"
#include "vmm-host/vmm_runner.h"

namespace vmm {
namespace {

bool KvmUsable(std::string* why) {
  const int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *why = absl::StrCat("/dev/kvm not usable: ", std::strerror(errno));
    return false;
  }
  close(fd);
  return true;
}

#define SKIP_WITHOUT_KVM()                               \
  do {                                                   \
    std::string why;                                     \
    if (!KvmUsable(&why)) GTEST_SKIP() << why;           \
  } while (0)


class VmmKvmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("vmm_kvm_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  RunConfig Config(int count, const std::string& workload) {
    RunConfig c;
    c.log_dir = (dir_ / "logs").string();
    c.report_path = (dir_ / "report.json").string();
    for (int i = 0; i < count; ++i) {
      VmConfig vm;
      vm.name = absl::StrCat("vm", i);
      vm.workload = workload;
      vm.workload_args = vmm::testing::SmallWorkloadArgs().at(workload);
      vm.ram_bytes = 48 << 20;
      vm.timeout_seconds = 120;
      // With the virtio-balloon, and QEMU with its own below
      // (tests/support/qemu_balloon.h): the data must not depend on it.
      vm.balloon = true;
      c.vms.push_back(vm);
    }
    return c;
  }
  std::filesystem::path dir_;
};


class WorkloadKvmTest : public VmmKvmTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(WorkloadKvmTest, RunsAndMatchesQemu) {
  SKIP_WITHOUT_KVM();
  const std::string workload = GetParam();
  absl::StatusOr<RunOutcome> run = RunVms(Config(1, workload));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 1u);
  const MachineResult& r = run->vms[0];
  ASSERT_TRUE(r.ok()) << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n" << r.console_tail;
  const std::map<std::string, uint64_t> kvm = vmm::testing::DataResults(r);
  ASSERT_EQ(kvm.count(workload + ".checksum_ok"), 1u);
  EXPECT_EQ(kvm.at(workload + ".checksum_ok"), 1u);
  EXPECT_GT(r.exits.Get(ExitCounters::kIo), 0u);
  EXPECT_GT(r.resident_frames, 0u);
  EXPECT_TRUE(std::filesystem::exists(run->report_path));

  if (guest::FindQemu().empty()) GTEST_SKIP() << "QEMU not found: the KVM run passed, no comparison";
  guest::QemuOptions q;
  q.cmdline = absl::StrCat("workload=", workload, " ", vmm::testing::SmallWorkloadArgs().at(workload));
  q.memory_mib = 48;
  q.machine = vmm::testing::QemuBalloonMachine();
  q.extra_args = vmm::testing::QemuBalloonArgs();
  guest::QemuRun qemu = guest::RunGuest(q);
  ASSERT_TRUE(qemu.started);
  ASSERT_EQ(qemu.GuestExitCode(), 0u) << qemu.serial;
  std::map<std::string, uint64_t> tcg;
  for (const auto& [name, values] : qemu.Results()) {
    for (const auto& [key, value] : values) {
      const std::string full = absl::StrCat(name, ".", key);
      if (!vmm::testing::IsTimingResult(full)) tcg[full] = value;
    }
  }
  EXPECT_EQ(kvm, tcg) << "the same workload must compute the same data on KVM and under QEMU";
}

INSTANTIATE_TEST_SUITE_P(AllWorkloads, WorkloadKvmTest,
                         ::testing::Values("compute", "memtouch", "ptchurn", "tlbstress",
                                           "dedupfill", "idle", "mix"));

TEST_F(VmmKvmTest, EightVmsRunAtOnce) {
  SKIP_WITHOUT_KVM();
  RunConfig c = Config(8, "memtouch");
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 8u);
  for (const MachineResult& r : run->vms) {
    EXPECT_TRUE(r.ok()) << r.name << ": " << r.failure;
    EXPECT_EQ(vmm::testing::DataResults(r), vmm::testing::DataResults(run->vms[0])) << r.name;
    EXPECT_TRUE(std::filesystem::exists(dir_ / "logs" / (r.name + ".serial.log")));
  }
  EXPECT_EQ(run->exit_status(), 0);
}

// A guest image that triple-faults at once: it loads an empty IDT and
// executes ud2, so #UD, #DF and the shutdown cannot be delivered.
std::string TripleFaultImage() {
  const unsigned char code[] = {0x0f, 0x01, 0x1d, 0x02, 0x00, 0x00, 0x00,  // lidt [rip+2]
                                0x0f, 0x0b,                                // ud2
                                0, 0, 0, 0, 0, 0, 0, 0, 0, 0};             // IDTR: limit 0
  return testing::TinyElf(std::string(reinterpret_cast<const char*>(code), sizeof(code)));
}

TEST_F(VmmKvmTest, TripleFaultIsReportedWithRegistersWhileOthersFinish) {
  SKIP_WITHOUT_KVM();
  // One image per run, so this run holds only the bad guest; the test below
  // covers a failing guest next to healthy ones.
  const std::string bad = (dir_ / "triple.elf").string();
  {
    std::ofstream out(bad, std::ios::binary);
    out << TripleFaultImage();
  }
  RunConfig c = Config(1, "compute");
  c.kernel_path = bad;
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  const MachineResult& r = run->vms[0];
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.outcome, MachineOutcome::kGuestFailed);
  EXPECT_NE(r.failure.find("triple fault"), std::string::npos) << r.failure;
  EXPECT_NE(r.registers.find("rip="), std::string::npos);
  EXPECT_EQ(r.exits.Get(ExitCounters::kShutdown), 1u);
  EXPECT_EQ(run->exit_status(), 1);
}

TEST_F(VmmKvmTest, PanickingGuestFailsAloneAndTheOthersFinish) {
  SKIP_WITHOUT_KVM();
  RunConfig c = Config(3, "compute");
  c.vms[1].extra_cmdline = "kfault=1";  // the kernel takes a fault and panics
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(run->vms[0].ok());
  EXPECT_TRUE(run->vms[2].ok());
  const MachineResult& bad = run->vms[1];
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.exit_code, 3u) << "kExitPanic";
  EXPECT_NE(bad.console_tail.find("PANIC"), std::string::npos) << bad.console_tail;
  EXPECT_EQ(run->failed, std::vector<std::string>{"vm1"});
  std::ifstream report(run->report_path);
  std::string json((std::istreambuf_iterator<char>(report)), std::istreambuf_iterator<char>());
  EXPECT_NE(json.find("\"failed\": [\n      \"vm1\"\n    ]"), std::string::npos) << json.substr(0, 400);
}

TEST_F(VmmKvmTest, HungGuestTimesOutWithRegistersWhileOthersFinish) {
  SKIP_WITHOUT_KVM();
  RunConfig c = Config(2, "idle");
  c.vms[0].workload_args = "mib=1 sleep_ms=600000";
  c.vms[0].timeout_seconds = 3;
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  const MachineResult& hung = run->vms[0];
  EXPECT_EQ(hung.outcome, MachineOutcome::kTimedOut);
  EXPECT_NE(hung.registers.find("rip="), std::string::npos);
  EXPECT_LT(hung.wall_seconds, 10);
  EXPECT_TRUE(run->vms[1].ok()) << run->vms[1].failure;
}

int CountEntries(const char* dir) {
  int n = 0;
  if (DIR* d = opendir(dir)) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n;
}
// Mappings a VM makes: the frame pool's memfd and the vCPU's kvm_run page.
// (Counting every line would also count the allocator's own lazy mappings,
// which differ under AddressSanitizer.)
int CountVmMappings() {
  std::ifstream in("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (line.find("memfd:") != std::string::npos || line.find("kvm") != std::string::npos) ++n;
  }
  return n;
}

TEST_F(VmmKvmTest, FailedStartLeavesNoThreadsFdsOrMappings) {
  SKIP_WITHOUT_KVM();
  RunConfig c = Config(3, "compute");
  c.vms[2].extra_cmdline = std::string(4000, 'x');  // too long: fails after two VMs exist
  // One failed run first: process-wide one-time set-up (allocator arenas,
  // the kick signal handler) is not something a VM leaves behind.
  ASSERT_FALSE(RunVms(c).ok());
  const int tasks = CountEntries("/proc/self/task");
  const int fds = CountEntries("/proc/self/fd");
  const int maps = CountVmMappings();
  absl::StatusOr<RunOutcome> run = RunVms(c);
  EXPECT_FALSE(run.ok());
  EXPECT_NE(run.status().message().find("vm vm2"), std::string::npos) << run.status();
  EXPECT_NE(run.status().message().find("command line"), std::string::npos) << run.status();
  EXPECT_EQ(CountEntries("/proc/self/task"), tasks);
  EXPECT_EQ(CountEntries("/proc/self/fd"), fds);
  EXPECT_EQ(CountVmMappings(), maps);
}

}  // namespace
}  // namespace vmm

// Whole-guest tests of the `soft` backend: the real guest kernel boots on our
// interpreter through the VMM (vmm::RunVms, as `vmm run` does) and runs every
// workload. Each workload's data results must equal what the same image and
// command line compute under QEMU TCG and on KVM; two runs of one config must
// give identical guest results and backend counters (guest time is the
// instruction count); a triple-faulting guest fails alone; and the CLI takes
// `--backend soft`. The QEMU and KVM comparisons skip, with the reason, where
// those are missing; the soft runs themselves need nothing from the host.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "guest/qemu_runner.h"
#include "gtest/gtest.h"
#include "tests/support/run_command.h"
#include "nlohmann/json.hpp"
#include "tests/fakes/tiny_elf.h"
#include "tests/support/guest_results.h"
#include "tests/support/qemu_balloon.h"
#include "tests/support/small_workload_args.h"
#include "vmm-host/vmm_runner.h"

namespace vmm {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kRamBytes = 48 << 20;

bool KvmUsable(std::string* why) {
  const int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *why = absl::StrCat("/dev/kvm not usable: ", std::strerror(errno));
    return false;
  }
  close(fd);
  return true;
}


Json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  Json j = Json::parse(in, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << path << " is not JSON";
  return j;
}

class SoftGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name) {
      if (c == '/') c = '_';  // parameterized names
    }
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("soft_guest_test_", getpid(), "_", name);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  RunConfig Config(const std::string& backend, const std::string& workload, int count,
                   const std::string& tag = "run") {
    RunConfig c;
    c.log_dir = (dir_ / (tag + "-logs")).string();
    c.report_path = (dir_ / (tag + "-report.json")).string();
    for (int i = 0; i < count; ++i) {
      VmConfig vm;
      vm.name = absl::StrCat("vm", i);
      vm.backend = backend;
      vm.workload = workload;
      vm.workload_args = vmm::testing::SmallWorkloadArgs().at(workload);
      vm.ram_bytes = kRamBytes;
      vm.timeout_seconds = 300;  // generous: ASan builds run the interpreter ~5x slower
      // Every VM here has the virtio-balloon, and QEMU its own below
      // (tests/support/qemu_balloon.h): the data must not depend on it, and
      // the runs stay deterministic with the driver polling and reporting.
      vm.balloon = true;
      c.vms.push_back(vm);
    }
    return c;
  }

  std::filesystem::path dir_;
};

// ---------------------------------------------------------------------------
// Every workload: soft succeeds and agrees with QEMU TCG and KVM.

class SoftWorkloadTest : public SoftGuestTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(SoftWorkloadTest, SucceedsAndMatchesQemuAndKvm) {
  const std::string workload = GetParam();
  absl::StatusOr<RunOutcome> run = RunVms(Config("soft", workload, 1, "soft"));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 1u);
  const MachineResult& r = run->vms[0];
  ASSERT_TRUE(r.ok()) << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n"
                      << r.registers << "\n" << r.console_tail;
  EXPECT_EQ(r.backend, "soft");
  const std::map<std::string, uint64_t> soft = vmm::testing::DataResults(r);
  ASSERT_EQ(soft.count(workload + ".checksum_ok"), 1u) << r.console_tail;
  EXPECT_EQ(soft.at(workload + ".checksum_ok"), 1u);
  EXPECT_GT(r.exits.Get(ExitCounters::kIo), 0u);

  const Json report = ReadJson(run->report_path);
  ASSERT_TRUE(report["vms"].is_array());
  const Json& vm = report["vms"][0];
  EXPECT_EQ(report["host"]["backend"], "soft");
  EXPECT_EQ(vm["outcome"], "exited");
  const std::string cmdline = vm["cmdline"].get<std::string>();
  EXPECT_EQ(cmdline, absl::StrCat("workload=", workload, " ", vmm::testing::SmallWorkloadArgs().at(workload),
                                  " virtio_mmio.device=0x200@0xd0000000:5"));
  EXPECT_GT(vm["soft_vcpu_stats"]["cpu.instructions"].get<uint64_t>(), 0u);

  std::string missing;
  if (guest::FindQemu().empty()) {
    absl::StrAppend(&missing, "QEMU not found (install qemu-system-x86); ");
  } else {
    guest::QemuOptions q;
    // The very command line the soft guest booted with, but QEMU's own
    // balloon in place of ours (QEMU appends its virtio_mmio.device entry).
    q.cmdline = vmm::testing::WithoutVirtioMmioDevices(cmdline);
    q.machine = vmm::testing::QemuBalloonMachine();
    q.extra_args = vmm::testing::QemuBalloonArgs();
    q.memory_mib = kRamBytes >> 20;
    const guest::QemuRun qemu = guest::RunGuest(q);
    ASSERT_TRUE(qemu.started);
    ASSERT_EQ(qemu.GuestExitCode(), 0u) << qemu.serial;
    std::map<std::string, uint64_t> tcg;
    for (const auto& [name, values] : qemu.Results()) {
      for (const auto& [key, value] : values) {
        const std::string full = absl::StrCat(name, ".", key);
        if (!vmm::testing::IsTimingResult(full)) tcg[full] = value;
      }
    }
    EXPECT_EQ(soft, tcg) << "the same image and command line must compute the same data on "
                            "soft and under QEMU TCG";
  }

  if (std::string why; !KvmUsable(&why)) {
    absl::StrAppend(&missing, why, "; ");
  } else {
    // On hosts that need it the kvm backend adds entry=trap to the command
    // line (Hypervisor::needs_trap_syscall_entry); the data must not care.
    absl::StatusOr<RunOutcome> kvm_run = RunVms(Config("kvm", workload, 1, "kvm"));
    ASSERT_TRUE(kvm_run.ok()) << kvm_run.status();
    const MachineResult& k = kvm_run->vms[0];
    ASSERT_TRUE(k.ok()) << MachineOutcomeName(k.outcome) << ": " << k.failure;
    EXPECT_EQ(soft, vmm::testing::DataResults(k)) << "soft and kvm must compute the same data";
  }
  if (!missing.empty()) GTEST_SKIP() << "the soft run passed; not compared: " << missing;
}

INSTANTIATE_TEST_SUITE_P(AllWorkloads, SoftWorkloadTest,
                         ::testing::Values("compute", "memtouch", "ptchurn", "tlbstress",
                                           "dedupfill", "idle", "mix"),
                         [](const auto& param_info) { return param_info.param; });

// ---------------------------------------------------------------------------
// Determinism.

TEST_F(SoftGuestTest, TwoRunsGiveIdenticalCountersAndResults) {
  // Two VMs per run, running concurrently: neither the other VM nor the host
  // scheduling may leak into a VM's guest-visible time or its counters.
  std::vector<Json> vms;
  for (const char* tag : {"first", "second"}) {
    absl::StatusOr<RunOutcome> run = RunVms(Config("soft", "mix", 2, tag));
    ASSERT_TRUE(run.ok()) << run.status();
    for (const MachineResult& r : run->vms) ASSERT_TRUE(r.ok()) << r.name << ": " << r.failure;
    const Json report = ReadJson(run->report_path);
    for (const Json& vm : report["vms"]) vms.push_back(vm);
  }
  ASSERT_EQ(vms.size(), 4u);
  // Every counter must match, the decoded-block cache's included: it is
  // indexed by guest rip (interpreter.cc, BlockIndex), so which blocks evict
  // each other does not depend on where the host mapped guest RAM.
  const Json& ref = vms[0];
  ASSERT_TRUE(ref["results"].contains("compute.elapsed_ns"));
  ASSERT_TRUE(ref["soft_vcpu_stats"].contains("cpu.instructions"));
  ASSERT_TRUE(ref["soft_vcpu_stats"].contains("cpu.cycles"));
  ASSERT_GT(ref["soft_vm_stats"].size(), 0u);
  for (size_t i = 1; i < vms.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("report VM ", i, " (", vms[i]["name"].get<std::string>(), ")"));
    // Whole objects: every counter, and every guest result including
    // elapsed_ns (instruction-count time on soft).
    EXPECT_EQ(vms[i]["results"], ref["results"]);
    EXPECT_EQ(vms[i]["soft_vcpu_stats"], ref["soft_vcpu_stats"]);
    EXPECT_EQ(vms[i]["soft_vm_stats"], ref["soft_vm_stats"]);
    EXPECT_EQ(vms[i]["exits"], ref["exits"]);
    EXPECT_EQ(vms[i]["bus"], ref["bus"]);
  }
}

TEST_F(SoftGuestTest, TrapSyscallEntryComputesTheSameData) {
  // entry=trap makes user code enter the kernel with INT3 through a DPL 3
  // gate instead of SYSCALL: a different path through the soft CPU.
  RunConfig c = Config("soft", "mix", 2);
  c.vms[1].extra_cmdline = "entry=trap";
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  const MachineResult& syscall = run->vms[0];
  const MachineResult& trap = run->vms[1];
  ASSERT_TRUE(syscall.ok()) << syscall.failure;
  ASSERT_TRUE(trap.ok()) << trap.failure << "\n" << trap.console_tail;
  EXPECT_EQ(vmm::testing::DataResults(syscall), vmm::testing::DataResults(trap));
  std::ifstream log(dir_ / "run-logs" / "vm1.serial.log");
  const std::string serial((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(serial.find("entry int3 trap"), std::string::npos) << serial.substr(0, 2000);
  const Json report = ReadJson(run->report_path);
  EXPECT_GT(report["vms"][0]["soft_vcpu_stats"]["cpu.syscalls"].get<uint64_t>(), 0u)
      << "the default entry is SYSCALL";
  EXPECT_EQ(report["vms"][1]["soft_vcpu_stats"]["cpu.syscalls"].get<uint64_t>(), 0u);
}

TEST_F(SoftGuestTest, GlobalKernelPagesSurviveProcessSwitches) {
  // The guest maps its kernel half global and sets CR4.PGE; global_pages=0
  // turns that off. ptchurn switches address spaces and reloads CR3 often:
  // with global pages the kernel's translations come back from the soft
  // TLB's side table, not from walks, and the data stay the same.
  RunConfig c = Config("soft", "ptchurn", 2);
  c.vms[1].extra_cmdline = "global_pages=0";
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE(run->vms[0].ok()) << run->vms[0].failure;
  ASSERT_TRUE(run->vms[1].ok()) << run->vms[1].failure;
  EXPECT_EQ(vmm::testing::DataResults(run->vms[0]), vmm::testing::DataResults(run->vms[1]));
  const Json report = ReadJson(run->report_path);
  const Json& global = report["vms"][0]["soft_vcpu_stats"];
  const Json& flat = report["vms"][1]["soft_vcpu_stats"];
  EXPECT_GT(global["soft_tlb.flush_non_global"].get<uint64_t>(), 10u);
  EXPECT_GT(global["soft_tlb.global_refill"].get<uint64_t>(), 100u);
  EXPECT_EQ(flat["soft_tlb.global_refill"].get<uint64_t>(), 0u);
  // Each refill is a walk saved.
  EXPECT_LT(global["cpu.tlb_misses"].get<uint64_t>(), flat["cpu.tlb_misses"].get<uint64_t>() * 3 / 4);
}

TEST_F(SoftGuestTest, HwModelOffComputesTheSameAndModelsNothing) {
  // --soft_hw_model=off: no TLB/PWC model behind the cost model. The guest
  // computes the same; the report has no ".hw" counters and no modelled
  // cycles, which a run with the model has.
  RunConfig modelled = Config("soft", "ptchurn", 1, "fast");
  modelled.soft_hw_model = "fast";
  RunConfig off = Config("soft", "ptchurn", 1, "off");
  off.soft_hw_model = "off";
  absl::StatusOr<RunOutcome> a = RunVms(modelled);
  absl::StatusOr<RunOutcome> b = RunVms(off);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(a->vms[0].ok()) << a->vms[0].failure;
  ASSERT_TRUE(b->vms[0].ok()) << b->vms[0].failure;
  EXPECT_EQ(vmm::testing::DataResults(a->vms[0]), vmm::testing::DataResults(b->vms[0]));
  const Json with = ReadJson(a->report_path)["vms"][0];
  const Json without = ReadJson(b->report_path)["vms"][0];
  EXPECT_TRUE(with.contains("modelled_cycles"));
  EXPECT_GT(with["soft_vm_stats"]["native.hw.lookups"].get<uint64_t>(), 0u);
  EXPECT_FALSE(without.contains("modelled_cycles"));
  EXPECT_FALSE(without["soft_vm_stats"].contains("native.hw.lookups"));
  // The same guest work: the soft TLB and the strategy saw the same misses.
  EXPECT_EQ(with["soft_vcpu_stats"]["cpu.instructions"], without["soft_vcpu_stats"]["cpu.instructions"]);
  EXPECT_EQ(with["soft_vm_stats"]["native.translations"], without["soft_vm_stats"]["native.translations"]);
}

// ---------------------------------------------------------------------------
// A triple fault.

// A guest for one run shared by good and bad VMs (a run has one image): it
// triple-faults when its command line ends in '!', and otherwise exits with
// code 0. BootInfo (guest/boot_info.h) is at RDI; the boot page tables map
// 0..4 GiB one to one.
std::string TripleFaultOnBangImage() {
  const unsigned char code[] = {
      0x8b, 0x47, 0x20,                    // mov eax, [rdi + 0x20]   BootInfo.cmdline_gpa
      0x8b, 0x4f, 0x28,                    // mov ecx, [rdi + 0x28]   BootInfo.cmdline_len
      0x80, 0x7c, 0x08, 0xff, 0x21,        // cmp byte [rax + rcx - 1], '!'
      0x74, 0x07,                          // je .fault
      0x31, 0xc0,                          // xor eax, eax
      0xe7, 0xf4,                          // out 0xf4, eax           debug-exit, code 0
      0xf4,                                // hlt
      0xeb, 0xfd,                          // jmp .-1
      0x0f, 0x01, 0x1d, 0x02, 0, 0, 0,     // .fault: lidt [rip + 2]  an IDT with limit 0
      0x0f, 0x0b,                          // ud2: #UD, #GP, #DF cannot be delivered
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0};       // IDTR: limit 0, base 0
  return testing::TinyElf(std::string(reinterpret_cast<const char*>(code), sizeof(code)));
}

TEST_F(SoftGuestTest, TripleFaultFailsThatGuestAloneAndTheOthersFinish) {
  const std::string image = (dir_ / "triple.elf").string();
  {
    std::ofstream out(image, std::ios::binary);
    out << TripleFaultOnBangImage();
  }
  RunConfig c = Config("soft", "compute", 3);
  c.kernel_path = image;
  c.vms[1].extra_cmdline = "fault!";
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 3u);
  const MachineResult& bad = run->vms[1];
  EXPECT_EQ(bad.outcome, MachineOutcome::kGuestFailed);
  EXPECT_NE(bad.failure.find("triple fault"), std::string::npos) << bad.failure;
  EXPECT_NE(bad.registers.find("rip="), std::string::npos) << bad.registers;
  EXPECT_EQ(bad.exits.Get(ExitCounters::kShutdown), 1u);
  EXPECT_TRUE(run->vms[0].ok()) << run->vms[0].failure;
  EXPECT_TRUE(run->vms[2].ok()) << run->vms[2].failure;
  EXPECT_EQ(run->failed, std::vector<std::string>{"vm1"});
  EXPECT_EQ(run->exit_status(), 1);

  const Json report = ReadJson(run->report_path);
  const Json& vm = report["vms"][1];
  EXPECT_EQ(vm["outcome"], "guest_failed");
  EXPECT_NE(vm["failure"].get<std::string>().find("triple fault"), std::string::npos);
  EXPECT_EQ(vm["soft_vcpu_stats"]["cpu.triple_faults"], 1);
  EXPECT_EQ(vm["soft_vcpu_stats"]["cpu.double_faults"], 1);
  EXPECT_EQ(report["vms"][0]["soft_vcpu_stats"]["cpu.triple_faults"], 0);
  EXPECT_EQ(report["summary"]["failed"], Json::array({"vm1"}));
}

// ---------------------------------------------------------------------------
// Device reads: the value a port or MMIO read gets comes from the VMM's bus
// through a kIo/kMmio exit and the re-executed instruction (cpu/interpreter.h,
// IoStatus). The real guest never reads a device, so a tiny one does: it
// reads the serial LSR (THR empty and transmitter empty: 0x60) and an
// unclaimed MMIO address (all ones; the start of the hole, below the
// virtio-mmio slots at 0xd0000000 where the balloon sits), and exits with the LSR value only if
// the MMIO read saw all ones; otherwise it halts with interrupts off.
std::string DeviceReadImage() {
  const unsigned char code[] = {
      0x66, 0xba, 0xfd, 0x03,        // mov dx, 0x3fd          COM1 LSR
      0xec,                          // in al, dx
      0x89, 0xc1,                    // mov ecx, eax
      0xbe, 0x00, 0x00, 0x00, 0xc0,  // mov esi, 0xc0000000    MMIO hole, no device
      0x8b, 0x06,                    // mov eax, [rsi]
      0x83, 0xf8, 0xff,              // cmp eax, -1
      0x75, 0x05,                    // jne .bad
      0x0f, 0xb6, 0xc1,              // movzx eax, cl
      0xe7, 0xf4,                    // out 0xf4, eax          debug-exit with the LSR
      0xf4,                          // .bad: hlt
      0xeb, 0xfd};                   // jmp .-1
  return testing::TinyElf(std::string(reinterpret_cast<const char*>(code), sizeof(code)));
}

TEST_F(SoftGuestTest, DeviceReadsComeBackThroughTheExitLoop) {
  const std::string image = (dir_ / "reads.elf").string();
  {
    std::ofstream out(image, std::ios::binary);
    out << DeviceReadImage();
  }
  RunConfig c = Config("soft", "compute", 1);
  c.kernel_path = image;
  absl::StatusOr<RunOutcome> run = RunVms(c);
  ASSERT_TRUE(run.ok()) << run.status();
  const MachineResult& r = run->vms[0];
  ASSERT_EQ(r.outcome, MachineOutcome::kExited) << r.failure;
  EXPECT_EQ(r.exit_code, 0x60u);  // Serial: kLsrThre | kLsrTemt
  EXPECT_EQ(r.bus.Get(BusCounters::kPioReads), 1u);
  EXPECT_EQ(r.bus.Get(BusCounters::kMmioReads), 1u);
  EXPECT_EQ(r.bus.Get(BusCounters::kUnclaimedMmio), 1u);
}

// ---------------------------------------------------------------------------
// The CLI.

vmm::testing::CommandResult Vmm(const std::string& args) {
  return vmm::testing::RunCommand(absl::StrCat(VMM_BINARY, " ", args));
}

TEST_F(SoftGuestTest, CliRunsTheDefaultWorkloadOnSoft) {
  // The default workload and sizes (mix, "mib=4 ptchurn.iters=40", 64 MiB);
  // one VM rather than three to keep the test short. It takes seconds, but
  // about two minutes in the ASan build, hence a timeout above the default
  // 120 s (and below this test's ctest TIMEOUT).
  const std::string report = (dir_ / "cli-report.json").string();
  const vmm::testing::CommandResult r = Vmm(absl::StrCat("run --backend=soft --count=1 --echo_console=false",
                                       " --timeout=540 --report=", report,
                                       " --log_dir=", (dir_ / "logs").string()));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("1 of 1 VMs ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mix.checksum_ok=1"), std::string::npos) << r.out;
  const Json j = ReadJson(report);
  EXPECT_EQ(j["host"]["backend"], "soft");
  EXPECT_EQ(j["host"]["paging_mode"], "soft/native");
  EXPECT_EQ(j["vms"][0]["backend"], "soft");
  EXPECT_TRUE(j["vms"][0]["soft_vm_stats"].is_object());
  EXPECT_TRUE(std::filesystem::exists(dir_ / "logs" / "vm0.serial.log"));
}

TEST_F(SoftGuestTest, CliRejectsAnUnknownPagingStrategy) {
  const vmm::testing::CommandResult r = Vmm(absl::StrCat("run --backend=soft --paging=bogus --report=",
                                       (dir_ / "r.json").string(), " --log_dir=",
                                       (dir_ / "logs").string()));
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(".paging: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("native"), std::string::npos) << "names what is accepted: " << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "r.json")) << "rejected before anything ran";
}

}  // namespace
}  // namespace vmm

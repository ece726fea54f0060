// Macro benchmarks of the VMM on /dev/kvm. Three figures, each printed with
// its peer measured in the same run:
//
//  exit     the cost of one port-I/O exit through our VMM (guest `out` to
//           the device handler and back into the guest), next to a minimal
//           raw-KVM run loop written here; target ratio <= 1.15.
//  boot     time from RunVms (what `vmm run` calls) to each VM's first guest
//           exit and to its workload start, for 1 and 32 VMs; target under
//           10 ms per VM.
//  workload each standard workload (guest/standard_workloads.h) on kvm next
//           to QEMU TCG.
//
//   vmm_bench [--what=exit,boot,workload] [--runs=N] [--filter=SUBSTRING]
//
// Timings on shared machines are noisy: figures are medians, never tests.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "guest/qemu_runner.h"
#include "guest/standard_workloads.h"
#include "tests/fakes/tiny_elf.h"
#include "vmm-host/boot_setup.h"
#include "vmm-host/kvm_abi.h"
#include "vmm-host/vmm_runner.h"

ABSL_FLAG(std::string, what, "exit,boot,workload", "which benchmarks to run");
ABSL_FLAG(int, runs, 5, "repetitions per figure (medians are reported)");
ABSL_FLAG(std::string, filter, "", "only workloads whose name contains this");
ABSL_FLAG(int, exits, 4000, "port exits per guest run in the exit benchmark");

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::filesystem::path TempDir() {
  auto dir = std::filesystem::temp_directory_path() / absl::StrCat("vmm_bench_", getpid());
  std::filesystem::create_directories(dir);
  return dir;
}

// ---------------------------------------------------------------- exit -----

// A tiny guest: `count` port writes to 0x80, then exit code 0 on 0xf4.
//   mov ecx, count; mov dx, 0x80; 1: out dx, al; dec ecx; jnz 1b;
//   mov dx, 0xf4; xor eax, eax; out dx, eax; 2: hlt; jmp 2b
std::string OutLoopCode(uint32_t count) {
  const unsigned char code[] = {
      0xb9, static_cast<unsigned char>(count), static_cast<unsigned char>(count >> 8),
      static_cast<unsigned char>(count >> 16), static_cast<unsigned char>(count >> 24),  // mov ecx
      0x66, 0xba, 0x80, 0x00,  // mov dx, 0x80
      0xee,                    // 1: out dx, al
      0xff, 0xc9,              // dec ecx
      0x75, 0xfb,              // jnz 1b
      0x66, 0xba, 0xf4, 0x00,  // mov dx, 0xf4
      0x31, 0xc0,              // xor eax, eax
      0xef,                    // out dx, eax
      0xf4,                    // 2: hlt
      0xeb, 0xfd,              // jmp 2b
  };
  return std::string(reinterpret_cast<const char*>(code), sizeof(code));
}

// Seconds for one run of the out-loop guest through our whole VMM.
double OurRunSeconds(const std::filesystem::path& dir, uint32_t count) {
  const std::string path = (dir / absl::StrCat("outloop_", count, ".elf")).string();
  std::ofstream(path, std::ios::binary) << vmm::testing::TinyElf(OutLoopCode(count));
  vmm::RunConfig config;
  config.kernel_path = path;
  config.log_dir = (dir / "logs").string();
  config.report_path = (dir / "report.json").string();
  vmm::VmConfig vm;
  vm.name = "exitbench";
  vm.workload = "compute";
  vm.ram_bytes = 16 << 20;
  config.vms.push_back(vm);
  absl::StatusOr<vmm::RunOutcome> run = vmm::RunVms(config);
  if (!run.ok() || run->vms[0].exit_code != 0u) {
    std::fprintf(stderr, "exit bench: our run failed: %s\n",
                 run.ok() ? run->vms[0].failure.c_str() : std::string(run.status().message()).c_str());
    return -1;
  }
  return run->vms[0].wall_seconds;
}

// A flat guest memory for the raw loop's setup (the loop itself is raw KVM).
class RawMemory : public vmm::GuestMemory {
 public:
  RawMemory(uint8_t* base, uint64_t size) : base_(base), size_(size) {}
  uint8_t* HostPtr(base::Gpa gpa, uint64_t len) noexcept override {
    return vmm::RangeWithin(gpa.value(), len, 0, size_) ? base_ + gpa.value() : nullptr;
  }
  uint64_t ram_bytes() const noexcept override { return size_; }

 private:
  uint8_t* base_;
  uint64_t size_;
};

// Seconds for the same guest under a minimal KVM_RUN loop: no bus, no
// counters, no threads; the exit is recognised by port number alone.
double RawRunSeconds(uint32_t count) {
  const uint64_t ram = 16 << 20;
  const int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  const int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  ioctl(vm, KVM_CREATE_IRQCHIP, 0);
  void* mem = mmap(nullptr, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  kvm_userspace_memory_region region = {0, 0, 0, ram, reinterpret_cast<uintptr_t>(mem)};
  ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region);
  RawMemory guest(static_cast<uint8_t*>(mem), ram);
  absl::StatusOr<vmm::ElfImage> image = vmm::ParseElf(vmm::testing::TinyElf(OutLoopCode(count)), "raw");
  absl::StatusOr<vmm::LongModeEntry> entry =
      vmm::SetUpBoot(*image, vmm::MemoryLayout::ForRamSize(ram), {}, guest);
  const int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  // Without KVM_SET_CPUID2 every CPUID leaf reads zero, long mode included.
  {
    std::vector<uint8_t> cpuid(sizeof(vmm::kvm_abi::Cpuid2Header) + 256 * sizeof(kvm_cpuid_entry2));
    const vmm::kvm_abi::Cpuid2Header header = {256, 0};
    std::memcpy(cpuid.data(), &header, sizeof(header));
    ioctl(kvm, vmm::kvm_abi::kGetSupportedCpuid, cpuid.data());
    ioctl(vcpu, vmm::kvm_abi::kSetCpuid2, cpuid.data());
  }
  const int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  auto* run = static_cast<kvm_run*>(mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0));
  kvm_sregs sregs;
  ioctl(vcpu, KVM_GET_SREGS, &sregs);
  kvm_segment cs = {};
  cs.limit = 0xffffffff; cs.selector = 0x10; cs.type = 0xb; cs.present = 1; cs.s = 1; cs.l = 1; cs.g = 1;
  kvm_segment ds = cs;
  ds.selector = 0x18; ds.type = 0x3; ds.l = 0; ds.db = 1;
  kvm_segment tr = {};
  tr.base = entry->tss_base; tr.limit = 0x67; tr.selector = 0x40; tr.type = 0xb; tr.present = 1;
  sregs.cs = cs;
  sregs.ds = sregs.es = sregs.ss = sregs.fs = sregs.gs = ds;
  sregs.tr = tr;
  sregs.gdt.base = entry->gdt_base;
  sregs.gdt.limit = entry->gdt_limit;
  sregs.cr0 = 0x80050033;
  sregs.cr3 = entry->cr3;
  sregs.cr4 = 0x220;
  sregs.efer = 0xd01;
  ioctl(vcpu, KVM_SET_SREGS, &sregs);
  kvm_regs regs = {};
  regs.rip = entry->rip;
  regs.rflags = 2;
  ioctl(vcpu, KVM_SET_REGS, &regs);
  // A guard against a guest that never exits: SIGALRM interrupts KVM_RUN.
  struct sigaction sa = {};
  sa.sa_handler = [](int) {};
  sigaction(SIGALRM, &sa, nullptr);
  alarm(60);
  const auto t0 = Clock::now();
  bool ok = false;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) break;
    if (run->exit_reason != KVM_EXIT_IO) break;
    if (run->io.port == 0xf4) {
      ok = true;
      break;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  alarm(0);
  munmap(run, run_size);
  close(vcpu);
  munmap(mem, ram);
  close(vm);
  close(kvm);
  return ok ? seconds : -1;
}

void ExitBench(int runs) {
  const uint32_t n = static_cast<uint32_t>(absl::GetFlag(FLAGS_exits));
  const auto dir = TempDir();
  // Per-exit cost by difference of two loop lengths, which cancels VM
  // creation and boot (ours) or setup (raw).
  std::vector<double> ours, raw;
  for (int r = 0; r < runs; ++r) {
    const double o_long = OurRunSeconds(dir, 2 * n), o_short = OurRunSeconds(dir, n);
    const double r_long = RawRunSeconds(2 * n), r_short = RawRunSeconds(n);
      if (o_long < 0 || o_short < 0 || r_long < 0 || r_short < 0) {
      std::printf("exit round trip: a run failed (ours %.3f/%.3f s, raw %.3f/%.3f s)\n", o_long,
                  o_short, r_long, r_short);
      return;
    }
    ours.push_back((o_long - o_short) / n * 1e6);
    raw.push_back((r_long - r_short) / n * 1e6);
  }
  std::filesystem::remove_all(dir);
  const double o = Median(ours), w = Median(raw);
  std::printf("exit round trip (port out, %u exits by difference, median of %d)\n", n, runs);
  std::printf("  ours %8.2f us   raw KVM loop %8.2f us   ratio %.3f (target <= 1.15)\n", o, w, o / w);
}

// ---------------------------------------------------------------- boot -----

void BootBench(int runs) {
  const auto dir = TempDir();
  std::printf("time from RunVms to first guest exit / workload start (median of %d)\n", runs);
  for (int count : {1, 32}) {
    std::vector<double> first_ms, start_ms, create_ms;
    for (int r = 0; r < runs; ++r) {
      vmm::RunConfig config;
      config.log_dir = (dir / "logs").string();
      config.report_path = (dir / "report.json").string();
      for (int i = 0; i < count; ++i) {
        vmm::VmConfig vm;
        vm.name = absl::StrCat("b", i);
        vm.workload = "compute";
        vm.workload_args = "iters=1000";
        vm.ram_bytes = 32 << 20;
        config.vms.push_back(vm);
      }
      absl::StatusOr<vmm::RunOutcome> run = vmm::RunVms(config);
      if (!run.ok()) {
        std::fprintf(stderr, "boot bench: %s\n", std::string(run.status().message()).c_str());
        return;
      }
      double last_first = 0, last_start = 0;
      for (size_t i = 0; i < run->vms.size(); ++i) {
        last_first = std::max(last_first, run->start_offset_seconds[i] + run->vms[i].seconds_to_first_exit);
        last_start = std::max(last_start, run->start_offset_seconds[i] + run->vms[i].seconds_to_workload_start);
      }
      create_ms.push_back(run->start_offset_seconds.back() * 1e3);
      first_ms.push_back(last_first * 1e3);
      start_ms.push_back(last_start * 1e3);
    }
    std::printf("  %2d VM%s: all created %7.1f ms; last first exit %7.1f ms (%.2f ms/VM); "
                "last workload start %7.1f ms (%.2f ms/VM; target < 10 ms/VM)\n",
                count, count == 1 ? " " : "s", Median(create_ms), Median(first_ms),
                Median(first_ms) / count, Median(start_ms), Median(start_ms) / count);
  }
  std::filesystem::remove_all(dir);
}

// ------------------------------------------------------------ workload -----

void WorkloadBench(int runs, const std::string& filter) {
  const auto dir = TempDir();
  const bool have_qemu = !guest::FindQemu().empty();
  std::printf("standard workloads: kvm (ours) next to QEMU TCG, wall seconds (median of %d)\n", runs);
  std::printf("  %-10s %10s %10s %8s\n", "workload", "kvm_s", "tcg_s", "kvm/tcg");
  for (const guest::StandardWorkload& w : guest::kStandardWorkloads) {
    if (!filter.empty() && std::string(w.workload).find(filter) == std::string::npos) continue;
    std::vector<double> kvm_s, tcg_s;
    for (int r = 0; r < runs; ++r) {
      vmm::RunConfig config;
      config.log_dir = (dir / "logs").string();
      config.report_path = (dir / "report.json").string();
      vmm::VmConfig vm;
      vm.name = w.workload;
      vm.workload = w.workload;
      // The standard command line starts with "workload=<name> ".
      vm.workload_args = std::string(w.cmdline).substr(std::string("workload=").size() +
                                                       std::string(w.workload).size());
      vm.ram_bytes = uint64_t{w.memory_mib} << 20;
      vm.timeout_seconds = 1800;
      config.vms.push_back(vm);
      absl::StatusOr<vmm::RunOutcome> run = vmm::RunVms(config);
      if (run.ok() && run->vms[0].ok()) kvm_s.push_back(run->vms[0].wall_seconds);
      if (have_qemu) {
        guest::QemuOptions q;
        q.cmdline = w.cmdline;
        q.memory_mib = w.memory_mib;
        q.timeout_seconds = 1800;
        guest::QemuRun qr = guest::RunGuest(q);
        if (qr.GuestExitCode() == 0u) tcg_s.push_back(qr.wall_seconds);
      }
    }
    const double k = Median(kvm_s), t = Median(tcg_s);
    std::printf("  %-10s %10.2f %10.2f %8.2f\n", w.workload, k, t, t > 0 ? k / t : 0.0);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    std::printf("vmm_bench: skipped: /dev/kvm is not usable here\n");
    return 0;
  }
  const int runs = std::max(1, absl::GetFlag(FLAGS_runs));
  for (absl::string_view what : absl::StrSplit(absl::GetFlag(FLAGS_what), ',')) {
    if (what == "exit") ExitBench(runs);
    if (what == "boot") BootBench(runs);
    if (what == "workload") WorkloadBench(std::max(1, runs / 2), absl::GetFlag(FLAGS_filter));
  }
  return 0;
}

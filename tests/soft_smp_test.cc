// Several vCPUs of one `soft` VM on one host thread (docs/cpu.md,
// "Scheduling"): the VcpuScheduler runs them round-robin in slices of guest
// instructions. Tiny hand-assembled guests run on every vCPU of a VM: each
// takes tickets from a shared counter with LOCK XADD and logs its index at
// its ticket, so the log is the interleaving. The tests check that the
// interleaving follows the slice in vCPU order and is the same in every run,
// that exits reach the handler as the vCPU that made them, that halted vCPUs
// are skipped and follow guest time, that all-halted vCPUs jump to the next
// timer event, and, through the VMM (RunVms), that per-vCPU results and
// counters are reported and one vCPU's triple fault stops its VM alone.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/check.h"
#include "gtest/gtest.h"
#include "tests/fakes/tiny_elf.h"
#include "vmm-host/boot_setup.h"
#include "vmm-host/elf_loader.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/memory_layout.h"
#include "vmm-host/run_config.h"
#include "vmm-host/soft_hypervisor.h"
#include "vmm-host/vmm_runner.h"

namespace vmm {
namespace {

constexpr uint64_t kRamBytes = 32 << 20;
// The SMP guest's shared data: the ticket counter, the count of vCPUs done,
// the results-port lock, and from kLog on the log (one byte per ticket).
constexpr uint64_t kData = 0x200000;
constexpr uint64_t kLog = kData + 0x1000;
constexpr int kIterations = 3000;   // tickets each working vCPU takes
constexpr uint64_t kPrologue = 15;  // instructions before the loop (flag '.')
constexpr uint64_t kLoopInsns = 5;  // instructions per ticket; the LOCK XADD is the 2nd

// Every vCPU starts here: vCPU 0 with RDI = BootInfo, vCPU i > 0 with RDI =
// i (SecondaryVcpuEntry). The command line ends in two characters: the
// number of vCPUs ('1'..'9') and a flag: '.' all work, 'h' vCPU 1 halts at
// once, '!' vCPU 1 triple-faults. A working vCPU takes kIterations tickets,
// then publishes "v<i>" = its TSC through the results port under a spinlock.
// Every vCPU then counts itself done; the last one publishes "sum" = the
// tickets taken and writes debug-exit code 0. Interrupts stay off, so a
// vCPU that is done halts for good.
std::string SmpImage() {
  const unsigned char code[] = {
      0x48, 0x83, 0xff, 0x40,                      // cmp rdi,0x40
      0x19, 0xc0,                                  // sbb eax,eax
      0x21, 0xc7,                                  // and edi,eax
      0x41, 0x89, 0xff,                            // mov r15d,edi
      0x8b, 0x34, 0x25, 0x20, 0x80, 0x00, 0x00,    // mov esi,dword 0x8020
      0x8b, 0x0c, 0x25, 0x28, 0x80, 0x00, 0x00,    // mov ecx,dword 0x8028
      0x44, 0x0f, 0xb6, 0x74, 0x0e, 0xfe,          // movzx r14d,byte [rsi+rcx*1-0x2]
      0x41, 0x83, 0xee, 0x30,                      // sub r14d,0x30
      0x0f, 0xb6, 0x5c, 0x0e, 0xff,                // movzx ebx,byte [rsi+rcx*1-0x1]
      0x41, 0xbc, 0x00, 0x00, 0x20, 0x00,          // mov r12d,0x200000
      0x80, 0xfb, 0x68,                            // cmp bl,0x68
      0x75, 0x06,                                  // jne 0x39
      0x41, 0x83, 0xff, 0x01,                      // cmp r15d,0x1
      0x74, 0x72,                                  // je done
      0x80, 0xfb, 0x21,                            // cmp bl,0x21
      0x75, 0x0a,                                  // jne work
      0x41, 0x83, 0xff, 0x01,                      // cmp r15d,0x1
      0x0f, 0x84, 0x96, 0x00, 0x00, 0x00,          // je fault
      0xbd, 0xb8, 0x0b, 0x00, 0x00,                // work: mov ebp,0xbb8
      0xb8, 0x01, 0x00, 0x00, 0x00,                // loop: mov eax,0x1
      0xf0, 0x49, 0x0f, 0xc1, 0x04, 0x24,          // lock xadd qword [r12],rax
      0x45, 0x88, 0xbc, 0x04, 0x00, 0x10, 0x00, 0x00, // mov byte [r12+rax*1+0x1000],r15b
      0xff, 0xcd,                                  // dec ebp
      0x75, 0xe9,                                  // jne loop
      0x0f, 0x31,                                  // rdtsc
      0x48, 0xc1, 0xe2, 0x20,                      // shl rdx,0x20
      0x48, 0x09, 0xd0,                            // or rax,rdx
      0x49, 0x89, 0xc5,                            // mov r13,rax
      0xb8, 0x01, 0x00, 0x00, 0x00,                // spin: mov eax,0x1
      0x41, 0x87, 0x44, 0x24, 0x10,                // xchg dword [r12+0x10],eax
      0x85, 0xc0,                                  // test eax,eax
      0x74, 0x04,                                  // je locked
      0xf3, 0x90,                                  // pause
      0xeb, 0xee,                                  // jmp spin
      0x41, 0x8d, 0x47, 0x30,                      // locked: lea eax,[r15+0x30]
      0xc1, 0xe0, 0x08,                            // shl eax,0x8
      0x83, 0xc8, 0x76,                            // or eax,0x76
      0xba, 0x00, 0x07, 0x00, 0x00,                // mov edx,0x700
      0xef,                                        // out dx,eax
      0x44, 0x89, 0xe8,                            // mov eax,r13d
      0xb2, 0x04,                                  // mov dl,0x4
      0xef,                                        // out dx,eax
      0x4c, 0x89, 0xe8,                            // mov rax,r13
      0x48, 0xc1, 0xe8, 0x20,                      // shr rax,0x20
      0xb2, 0x08,                                  // mov dl,0x8
      0xef,                                        // out dx,eax
      0x41, 0xc7, 0x44, 0x24, 0x10, 0x00, 0x00, 0x00, 0x00, // mov dword [r12+0x10],0x0
      0xb8, 0x01, 0x00, 0x00, 0x00,                // done: mov eax,0x1
      0xf0, 0x49, 0x0f, 0xc1, 0x44, 0x24, 0x08,    // lock xadd qword [r12+0x8],rax
      0xff, 0xc0,                                  // inc eax
      0x44, 0x39, 0xf0,                            // cmp eax,r14d
      0x75, 0x1d,                                  // jne halt
      0xb8, 0x73, 0x75, 0x6d, 0x00,                // mov eax,0x6d7573
      0xba, 0x00, 0x07, 0x00, 0x00,                // mov edx,0x700
      0xef,                                        // out dx,eax
      0x49, 0x8b, 0x04, 0x24,                      // mov rax,qword [r12]
      0xb2, 0x04,                                  // mov dl,0x4
      0xef,                                        // out dx,eax
      0x48, 0xc1, 0xe8, 0x20,                      // shr rax,0x20
      0xb2, 0x08,                                  // mov dl,0x8
      0xef,                                        // out dx,eax
      0x31, 0xc0,                                  // xor eax,eax
      0xe7, 0xf4,                                  // out 0xf4,eax
      0xf4,                                        // halt: hlt
      0xeb, 0xfd,                                  // jmp halt
      0x0f, 0x01, 0x1d, 0x02, 0x00, 0x00, 0x00,    // fault: lidt [rip+0x2]
      0x0f, 0x0b,                                  // ud2
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // idtr
  };
  return testing::TinyElf(std::string(reinterpret_cast<const char*>(code), sizeof(code)));
}

// vCPU 0 enables its LAPIC and arms its timer (one-shot, 5,000,000 ticks of the 1 GHz LAPIC
// clock, vector 0x40) and halts with interrupts on; the others halt with
// interrupts on and nothing armed. So every vCPU is halted until the timer
// fires. The handler records its TSC, which vCPU 0 writes to port 0x80
// before writing debug-exit code 0.
std::string TimerImage() {
  const unsigned char code[] = {
      0x48, 0x83, 0xff, 0x40,                      // cmp rdi,0x40
      0x0f, 0x82, 0x8a, 0x00, 0x00, 0x00,          // jb idle
      0x48, 0x8d, 0x05, 0x6e, 0x00, 0x00, 0x00,    // lea rax,[rip+0x6e]
      0x66, 0x89, 0x04, 0x25, 0x00, 0x04, 0x21, 0x00, // mov word 0x210400,ax
      0x66, 0xc7, 0x04, 0x25, 0x02, 0x04, 0x21, 0x00, 0x10, 0x00, // mov word 0x210402,0x10
      0x66, 0xc7, 0x04, 0x25, 0x04, 0x04, 0x21, 0x00, 0x00, 0x8e, // mov word 0x210404,0x8e00
      0xc1, 0xe8, 0x10,                            // shr eax,0x10
      0x66, 0x89, 0x04, 0x25, 0x06, 0x04, 0x21, 0x00, // mov word 0x210406,ax
      0x0f, 0x01, 0x1d, 0x59, 0x00, 0x00, 0x00,    // lidt [rip+0x59]
      0xbe, 0x00, 0x00, 0xe0, 0xfe,                // mov esi,0xfee00000
      0xc7, 0x86, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00, // mov dword [rsi+0xf0],0x1ff
      0xc7, 0x86, 0xe0, 0x03, 0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, // mov dword [rsi+0x3e0],0xb
      0xc7, 0x86, 0x20, 0x03, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, // mov dword [rsi+0x320],0x40
      0xc7, 0x86, 0x80, 0x03, 0x00, 0x00, 0x40, 0x4b, 0x4c, 0x00, // mov dword [rsi+0x380],0x4c4b40
      0xfb,                                        // sti
      0xf4,                                        // hlt
      0xfa,                                        // cli
      0x8b, 0x04, 0x25, 0x00, 0x00, 0x22, 0x00,    // mov eax,dword 0x220000
      0xe7, 0x80,                                  // out 0x80,eax
      0x31, 0xc0,                                  // xor eax,eax
      0xe7, 0xf4,                                  // out 0xf4,eax
      0xf4,                                        // hlt
      0xeb, 0xfd,                                  // jmp 0x7c
      0x0f, 0x31,                                  // handler: rdtsc
      0x89, 0x04, 0x25, 0x00, 0x00, 0x22, 0x00,    // mov dword 0x220000,eax
      0xc7, 0x86, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // mov dword [rsi+0xb0],0x0
      0x48, 0xcf,                                  // iretq
      0xfb,                                        // idle: sti
      0xf4,                                        // hlt
      0xeb, 0xfc,                                  // jmp idle
      0x0f, 0x04, 0x00, 0x00, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, // idtr
  };
  return testing::TinyElf(std::string(reinterpret_cast<const char*>(code), sizeof(code)));
}

constexpr uint64_t kTimerTicks = 5'000'000;

// A port write as the exit handler saw it, with the vCPU it came from.
struct Out {
  int vcpu = 0;
  uint16_t port = 0;
  uint32_t value = 0;
  bool operator==(const Out&) const = default;
};

uint64_t StatValue(const BackendStats& stats, const std::string& name) {
  for (const base::CounterValue& c : stats) {
    if (c.name == name) return c.value;
  }
  ADD_FAILURE() << "no counter " << name;
  return 0;
}

// One soft VM with `vcpus` vCPUs, driven directly through its VcpuScheduler
// by a loop that records every port write and answers reads with all ones.
class SmpVm {
 public:
  SmpVm(const std::string& elf, const std::string& cmdline, int vcpus, uint64_t slice) {
    SoftOptions options;
    options.slice = slice;
    absl::StatusOr<std::unique_ptr<SoftHypervisor>> hv = SoftHypervisor::Create(options);
    CHECK_OK(hv.status());
    hv_ = *std::move(hv);
    const MemoryLayout layout = MemoryLayout::ForRamSize(kRamBytes);
    absl::StatusOr<std::unique_ptr<FramePool>> pool = FramePool::Create({.budget_bytes = kRamBytes});
    CHECK_OK(pool.status());
    pool_ = *std::move(pool);
    absl::StatusOr<std::unique_ptr<FrameTable>> memory =
        FrameTable::Create(pool_.get(), {"smp", layout.ram, true});
    CHECK_OK(memory.status());
    memory_ = *std::move(memory);
    absl::StatusOr<std::unique_ptr<Vm>> vm = hv_->CreateVm({.memory = memory_.get()});
    CHECK_OK(vm.status());
    vm_ = *std::move(vm);
    absl::StatusOr<ElfImage> image = ParseElf(elf, "smp");
    CHECK_OK(image.status());
    BootOptions boot;
    boot.cmdline = cmdline;
    absl::StatusOr<LongModeEntry> entry = SetUpBoot(*image, layout, boot, *memory_);
    CHECK_OK(entry.status());
    std::vector<Vcpu*> order;
    for (int i = 0; i < vcpus; ++i) {
      absl::StatusOr<std::unique_ptr<Vcpu>> vcpu = vm_->CreateVcpu(i);
      CHECK_OK(vcpu.status());
      CHECK_OK((*vcpu)->SetLongModeEntry(i == 0 ? *entry : SecondaryVcpuEntry(*entry, i)));
      order.push_back(vcpu->get());
      vcpus_.push_back(*std::move(vcpu));
    }
    absl::StatusOr<std::unique_ptr<VcpuScheduler>> scheduler = vm_->CreateScheduler(order);
    CHECK_OK(scheduler.status());
    scheduler_ = *std::move(scheduler);
  }

  // Runs until debug-exit, or an exit that stops the VM (kept in stop()).
  // A guest that never finishes fails after a minute: the watchdog kicks
  // (no kick happens otherwise, so counters stay comparable).
  void Run() {
    absl::Mutex mu;
    bool done = false;
    std::thread watchdog([&] {
      absl::MutexLock lock(&mu);
      if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(60))) {
        while (!done) {
          scheduler_->Kick();
          mu.AwaitWithTimeout(absl::Condition(&done), absl::Milliseconds(10));
        }
      }
    });
    RunLoop();
    {
      absl::MutexLock lock(&mu);
      done = true;
    }
    watchdog.join();
  }

 private:
  void RunLoop() {
    for (int n = 0; n < 100'000; ++n) {
      absl::StatusOr<VcpuScheduler::Exit> next = scheduler_->Run();
      ASSERT_TRUE(next.ok()) << next.status();
      const VcpuExit& e = next->exit;
      switch (e.reason) {
        case ExitReason::kIo: {
          if (!e.io.is_write) {
            std::memset(e.io.data, 0xff, e.io.size * e.io.count);
            break;
          }
          uint32_t value = 0;
          std::memcpy(&value, e.io.data, e.io.size);
          outs_.push_back({next->vcpu->index(), e.io.port, value});
          if (e.io.port == 0xf4) {
            exit_code_ = value;
            return;
          }
          break;
        }
        case ExitReason::kMmio:
          if (!e.mmio.is_write) std::memset(e.mmio.data, 0xff, e.mmio.size);
          break;
        case ExitReason::kInterrupted:
          FAIL() << "the guest did not finish within a minute";
        default:
          stop_ = e;
          stop_vcpu_ = next->vcpu->index();
          return;
      }
    }
    FAIL() << "the guest did not finish";
  }

 public:
  std::vector<uint8_t> Log(size_t n) const {
    std::vector<uint8_t> log(n);
    EXPECT_TRUE(memory_->Read(base::Gpa(kLog), log.data(), n));
    return log;
  }
  uint64_t Tickets() const {
    uint64_t v = 0;
    EXPECT_TRUE(memory_->Read(base::Gpa(kData), &v, sizeof(v)));
    return v;
  }
  BackendStats VcpuStats(int i) const {
    absl::StatusOr<BackendStats> s = vcpus_[i]->Stats();
    EXPECT_TRUE(s.ok());
    return s.ok() ? *s : BackendStats{};
  }
  uint64_t VcpuStat(int i, const std::string& name) const { return StatValue(VcpuStats(i), name); }
  BackendStats VmStats() const {
    absl::StatusOr<BackendStats> s = vm_->Stats();
    EXPECT_TRUE(s.ok());
    return s.ok() ? *s : BackendStats{};
  }
  uint64_t VmStat(const std::string& name) const { return StatValue(VmStats(), name); }

  const std::vector<Out>& outs() const { return outs_; }
  std::optional<uint32_t> exit_code() const { return exit_code_; }
  const std::optional<VcpuExit>& stop() const { return stop_; }
  int stop_vcpu() const { return stop_vcpu_; }
  int vcpus() const { return static_cast<int>(vcpus_.size()); }

 private:
  // Destroyed bottom-up: the scheduler before its vCPUs, the VM's RAM last.
  std::unique_ptr<SoftHypervisor> hv_;
  std::unique_ptr<FramePool> pool_;
  std::unique_ptr<FrameTable> memory_;
  std::unique_ptr<Vm> vm_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::unique_ptr<VcpuScheduler> scheduler_;
  std::vector<Out> outs_;
  std::optional<uint32_t> exit_code_;
  std::optional<VcpuExit> stop_;
  int stop_vcpu_ = -1;
};

// The log as runs of consecutive tickets taken by one vCPU.
struct TicketRun {
  int vcpu;
  size_t length;
};
std::vector<TicketRun> Runs(const std::vector<uint8_t>& log) {
  std::vector<TicketRun> runs;
  for (uint8_t v : log) {
    if (runs.empty() || runs.back().vcpu != v) runs.push_back({v, 0});
    ++runs.back().length;
  }
  return runs;
}

std::string Describe(const std::vector<TicketRun>& runs) {
  std::string s;
  for (const TicketRun& r : runs) absl::StrAppend(&s, r.vcpu, "x", r.length, " ");
  return s;
}

// ---------------------------------------------------------------------------
// The scheduler, driven directly.

TEST(SoftSmpTest, TurnsFollowTheSliceInVcpuOrder) {
  constexpr int kVcpus = 4;
  for (const uint64_t slice : {5000u, 7500u}) {
    SCOPED_TRACE(absl::StrCat("slice ", slice));
    SmpVm vm(SmpImage(), "4.", kVcpus, slice);
    vm.Run();
    ASSERT_EQ(vm.exit_code(), 0u) << (vm.stop() ? vm.stop()->description : "");
    ASSERT_EQ(vm.Tickets(), uint64_t{kVcpus} * kIterations);
    const std::vector<uint8_t> log = vm.Log(kVcpus * kIterations);
    const std::vector<TicketRun> runs = Runs(log);
    // Every vCPU made all its progress.
    std::map<int, size_t> per_vcpu;
    for (const TicketRun& r : runs) per_vcpu[r.vcpu] += r.length;
    for (int i = 0; i < kVcpus; ++i) EXPECT_EQ(per_vcpu[i], size_t{kIterations}) << "vCPU " << i;
    // Turns alternate 0, 1, 2, 3, 0, 1, ...: each turn is one run of tickets.
    for (size_t k = 0; k < runs.size(); ++k) {
      ASSERT_EQ(runs[k].vcpu, static_cast<int>(k % kVcpus)) << "run " << k << ": " << Describe(runs);
    }
    // A turn is `slice` instructions: the first holds the prologue and the
    // LOCK XADDs that fit after it, every full turn after it slice / 5.
    const size_t first = (slice - kPrologue - 2) / kLoopInsns + 1;
    const size_t full = slice / kLoopInsns;
    const size_t turns = 1 + (kIterations - first + full - 1) / full;
    ASSERT_EQ(runs.size(), kVcpus * turns) << Describe(runs);
    for (size_t k = 0; k < runs.size(); ++k) {
      if (k < kVcpus) {
        EXPECT_EQ(runs[k].length, first) << "run " << k << ": " << Describe(runs);
      } else if (k < runs.size() - kVcpus) {
        EXPECT_EQ(runs[k].length, full) << "run " << k << ": " << Describe(runs);
      }
    }
    EXPECT_GE(vm.VmStat("sched.rounds"), turns - 1);
  }
}

TEST(SoftSmpTest, TwoRunsInterleaveIdentically) {
  // Two VMs at once, each on its own thread, as the VMM runs them: neither
  // the other VM nor host scheduling may change a VM's interleaving.
  SmpVm a(SmpImage(), "3.", 3, 4000);
  SmpVm b(SmpImage(), "3.", 3, 4000);
  std::thread ta([&] { a.Run(); });
  std::thread tb([&] { b.Run(); });
  ta.join();
  tb.join();
  ASSERT_EQ(a.exit_code(), 0u);
  ASSERT_EQ(b.exit_code(), 0u);
  EXPECT_EQ(a.Log(3 * kIterations), b.Log(3 * kIterations));
  EXPECT_EQ(a.outs(), b.outs()) << "the same exits, from the same vCPUs, in the same order";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a.VcpuStats(i), b.VcpuStats(i)) << "vCPU " << i;
  EXPECT_EQ(a.VmStats(), b.VmStats());
  EXPECT_GT(Runs(a.Log(3 * kIterations)).size(), 3u) << "the vCPUs took several turns each";
}

TEST(SoftSmpTest, PortWritesReachTheHandlerAsTheVcpuThatMadeThem) {
  constexpr int kVcpus = 4;
  SmpVm vm(SmpImage(), "4.", kVcpus, 5000);
  vm.Run();
  ASSERT_EQ(vm.exit_code(), 0u);
  // Each vCPU's three writes of its record ("v<i>", TSC low, TSC high) come
  // from that vCPU; records never interleave (the guest's spinlock).
  std::map<int, int> records;
  const std::vector<Out>& outs = vm.outs();
  for (size_t k = 0; k < outs.size(); ++k) {
    if (outs[k].port != 0x700 || (outs[k].value & 0xff) != 'v') continue;
    const int who = static_cast<int>((outs[k].value >> 8) & 0xff) - '0';
    ASSERT_EQ(outs[k].vcpu, who) << "record " << k;
    ASSERT_LT(k + 2, outs.size());
    EXPECT_EQ(outs[k + 1].vcpu, who);
    EXPECT_EQ(outs[k + 1].port, 0x704);
    EXPECT_EQ(outs[k + 2].vcpu, who);
    EXPECT_EQ(outs[k + 2].port, 0x708);
    // Each vCPU's own clock: it retired the same instructions up to its
    // RDTSC as the others, whatever ran in between (the TSC is exact to
    // the decoded block).
    const uint64_t tsc = outs[k + 1].value | uint64_t{outs[k + 2].value} << 32;
    EXPECT_LE(tsc, kPrologue + kIterations * kLoopInsns) << "vCPU " << who;
    EXPECT_GE(tsc + 2048, kPrologue + kIterations * kLoopInsns) << "vCPU " << who;
    ++records[who];
  }
  for (int i = 0; i < kVcpus; ++i) EXPECT_EQ(records[i], 1) << "vCPU " << i;
  // The last writer published the sum and exited.
  ASSERT_GE(outs.size(), 4u);
  EXPECT_EQ(outs[outs.size() - 4].value, 0x6d7573u);  // "sum"
  EXPECT_EQ(outs[outs.size() - 3].value, uint32_t{kVcpus} * kIterations);
  EXPECT_EQ(outs.back().port, 0xf4);
  EXPECT_EQ(outs.size(), kVcpus * 3u + 4u);
  for (int i = 0; i < kVcpus; ++i) EXPECT_GT(vm.VcpuStat(i, "cpu.instructions"), 15000u);
}

TEST(SoftSmpTest, AHaltedVcpuIsSkippedAndFollowsGuestTime) {
  constexpr int kVcpus = 4;
  constexpr uint64_t kSlice = 5000;
  SmpVm vm(SmpImage(), "4h", kVcpus, kSlice);  // vCPU 1 halts at once, interrupts off
  vm.Run();
  ASSERT_EQ(vm.exit_code(), 0u) << (vm.stop() ? vm.stop()->description : "");
  EXPECT_EQ(vm.Tickets(), uint64_t{kVcpus - 1} * kIterations);
  const std::vector<TicketRun> runs = Runs(vm.Log((kVcpus - 1) * kIterations));
  const int order[] = {0, 2, 3};
  for (size_t k = 0; k < runs.size(); ++k) {
    ASSERT_EQ(runs[k].vcpu, order[k % 3]) << "run " << k << ": " << Describe(runs);
  }
  EXPECT_LT(vm.VcpuStat(1, "cpu.instructions"), 40u);
  EXPECT_GT(vm.VmStat("sched.parked"), 0u);
  // Guest time is coherent: the halted vCPU's clock kept pace with the
  // others', and no two clocks are more than one slice apart.
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int i = 0; i < kVcpus; ++i) {
    const uint64_t c = vm.VcpuStat(i, "cpu.cycles");
    lo = std::min(lo, c);
    hi = std::max(hi, c);
  }
  EXPECT_GE(vm.VcpuStat(1, "cpu.cycles"), kIterations * kLoopInsns);
  EXPECT_LE(hi - lo, kSlice);
}

TEST(SoftSmpTest, EveryVcpuHaltedWithInterruptsOffStopsTheVm) {
  // The guest waits for 9 vCPUs to finish but has 2: both halt, nothing
  // can wake them, and the scheduler says so with a kHlt exit.
  SmpVm vm(SmpImage(), "9.", 2, 5000);
  vm.Run();
  EXPECT_FALSE(vm.exit_code().has_value());
  ASSERT_TRUE(vm.stop().has_value());
  EXPECT_EQ(vm.stop()->reason, ExitReason::kHlt);
  EXPECT_NE(vm.stop()->description.find("every vCPU halted"), std::string::npos);
  EXPECT_EQ(vm.Tickets(), 2u * kIterations);
}

TEST(SoftSmpTest, AllHaltedJumpsToTheNextTimerEvent) {
  constexpr int kVcpus = 3;
  constexpr uint64_t kSlice = 10'000;
  SmpVm vm(TimerImage(), "", kVcpus, kSlice);
  vm.Run();
  ASSERT_EQ(vm.exit_code(), 0u) << (vm.stop() ? vm.stop()->description : "");
  ASSERT_EQ(vm.outs().size(), 2u);
  EXPECT_EQ(vm.outs()[0].vcpu, 0);
  EXPECT_EQ(vm.outs()[0].port, 0x80);
  // The timer fired 5,000,000 cycles after vCPU 0 armed it (one cycle per
  // LAPIC tick at the default 1 GHz), exactly, in guest time.
  const uint64_t tsc = vm.outs()[0].value;
  EXPECT_GE(tsc, kTimerTicks);
  EXPECT_LT(tsc, kTimerTicks + 100);
  EXPECT_LT(vm.VcpuStat(0, "cpu.instructions"), 100u);
  // Nobody could run in between: the rounds were skipped in one jump.
  EXPECT_GE(vm.VmStat("sched.idle_jumps"), kTimerTicks / kSlice - 2);
  EXPECT_LT(vm.VmStat("sched.rounds"), 10u);
  // The vCPUs that stayed halted followed guest time: every clock starts
  // the timer's round together.
  for (int i = 1; i < kVcpus; ++i) {
    EXPECT_GE(vm.VcpuStat(i, "cpu.cycles") + kSlice, kTimerTicks) << "vCPU " << i;
    EXPECT_LT(vm.VcpuStat(i, "cpu.instructions"), 10u) << "vCPU " << i;
  }
}

// ---------------------------------------------------------------------------
// Through the VMM: Machine runs the scheduler on the VM's thread.

class SoftSmpVmmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("soft_smp_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "smp.elf", std::ios::binary) << SmpImage();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  RunConfig Config(const std::vector<std::string>& cmdlines, const std::string& tag = "run") {
    RunConfig c;
    c.kernel_path = (dir_ / "smp.elf").string();
    c.log_dir = (dir_ / (tag + "-logs")).string();
    c.report_path = (dir_ / (tag + "-report.json")).string();
    c.soft_slice = 5000;
    for (size_t i = 0; i < cmdlines.size(); ++i) {
      VmConfig vm;
      vm.name = absl::StrCat("vm", i);
      vm.backend = "soft";
      vm.vcpus = 4;
      vm.ram_bytes = kRamBytes;
      vm.workload = "compute";
      vm.extra_cmdline = cmdlines[i];
      vm.timeout_seconds = 120;
      c.vms.push_back(vm);
    }
    return c;
  }

  std::filesystem::path dir_;
};

std::map<std::string, uint64_t> ResultMap(const MachineResult& r) {
  std::map<std::string, uint64_t> m;
  for (const GuestResult& g : r.results) m[g.name] = g.value;
  return m;
}

TEST_F(SoftSmpVmmTest, SeveralVcpusRunAndReportThroughTheVmm) {
  std::vector<MachineResult> runs;
  for (const char* tag : {"first", "second"}) {
    absl::StatusOr<RunOutcome> run = RunVms(Config({"4."}, tag));
    ASSERT_TRUE(run.ok()) << run.status();
    ASSERT_EQ(run->vms.size(), 1u);
    runs.push_back(run->vms[0]);
  }
  const MachineResult& r = runs[0];
  ASSERT_TRUE(r.ok()) << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n" << r.registers;
  const std::map<std::string, uint64_t> results = ResultMap(r);
  EXPECT_EQ(results.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(results.count(absl::StrCat("v", i)), 1u) << "vCPU " << i;
  EXPECT_EQ(results.at("sum"), 4u * kIterations);
  // Every vCPU's port writes went through the one exit handler.
  EXPECT_EQ(r.exits.Get(ExitCounters::kIo), 4u * 3 + 4);
  // Totals and each vCPU's own counters.
  uint64_t total = 0;
  for (int i = 0; i < 4; ++i) {
    const uint64_t n = StatValue(r.vcpu_stats, absl::StrCat("vcpu", i, ".cpu.instructions"));
    EXPECT_GT(n, 15000u) << "vCPU " << i;
    total += n;
  }
  EXPECT_EQ(StatValue(r.vcpu_stats, "cpu.instructions"), total);
  EXPECT_GT(StatValue(r.vm_stats, "sched.rounds"), 0u);
  // The second run is the same in every result and counter.
  EXPECT_EQ(runs[1].results, r.results);
  EXPECT_EQ(runs[1].vcpu_stats, r.vcpu_stats);
  EXPECT_EQ(runs[1].vm_stats, r.vm_stats);
}

TEST_F(SoftSmpVmmTest, OneVcpuTripleFaultStopsItsVmAndTheOtherVmFinishes) {
  absl::StatusOr<RunOutcome> run = RunVms(Config({"4.", "4!"}));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 2u);
  const MachineResult& good = run->vms[0];
  const MachineResult& bad = run->vms[1];
  EXPECT_TRUE(good.ok()) << good.failure;
  EXPECT_EQ(ResultMap(good)["sum"], 4u * kIterations);
  EXPECT_EQ(bad.outcome, MachineOutcome::kGuestFailed);
  EXPECT_NE(bad.failure.find("vcpu 1: "), std::string::npos) << bad.failure;
  EXPECT_NE(bad.failure.find("triple fault"), std::string::npos) << bad.failure;
  EXPECT_NE(bad.registers.find("vcpu 1:"), std::string::npos) << bad.registers;
  EXPECT_NE(bad.registers.find("rip="), std::string::npos) << bad.registers;
  EXPECT_EQ(bad.exits.Get(ExitCounters::kShutdown), 1u);
  EXPECT_EQ(StatValue(bad.vcpu_stats, "vcpu1.cpu.triple_faults"), 1u);
  EXPECT_EQ(StatValue(bad.vcpu_stats, "vcpu0.cpu.triple_faults"), 0u);
  EXPECT_EQ(run->failed, std::vector<std::string>{"vm1"});
}

TEST(SoftSmpConfigTest, SeveralVcpusNeedTheSoftBackendAndAKernelForThem) {
  RunConfig c;
  VmConfig vm;
  vm.name = "a";
  vm.backend = "soft";
  vm.vcpus = 2;
  c.vms.push_back(vm);
  absl::Status s = ValidateRunConfig(c);
  EXPECT_NE(s.message().find("supports exactly one vCPU"), std::string::npos) << s;
  c.kernel_path = "smp.elf";
  EXPECT_TRUE(ValidateRunConfig(c).ok());
  c.vms[0].backend = "kvm";
  s = ValidateRunConfig(c);
  EXPECT_NE(s.message().find("soft backend only"), std::string::npos) << s;
  c.vms[0].backend = "soft";
  c.vms[0].vcpus = 65;
  EXPECT_FALSE(ValidateRunConfig(c).ok());
}

}  // namespace
}  // namespace vmm

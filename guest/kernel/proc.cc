#include "guest/kernel/proc.h"

#include "guest/abi.h"
#include "guest/kernel/arch.h"
#include "guest/kernel/balloon.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lapic.h"
#include "guest/kernel/lib.h"
#include "guest/kernel/pmm.h"
#include "guest/kernel/vm.h"

extern "C" {
extern uint64_t boot_pml4[512];
extern const uint8_t user_image_start[];
extern const uint8_t user_image_end[];
}

namespace kernel {
namespace {

constexpr int kMaxProcs = 64;
constexpr uint64_t kKernelStackBytes = 16384;
constexpr uint64_t kMaxWrite = 4096;
constexpr int kNameBytes = 16;

enum class State : uint8_t { kUnused, kRunnable, kWaiting, kSleeping, kZombie };

struct Process {
  State state;
  bool killed;
  int pid;
  int parent;  // slot index, -1 for init
  int wait_pid;  // while kWaiting: the child waited for, 0 for any
  uint32_t status;
  uint64_t wake_tick;
  TrapFrame* frame;
  char name[kNameBytes];
  AddressSpace as;
};

Process procs[kMaxProcs];
alignas(16) uint8_t kernel_stacks[kMaxProcs][kKernelStackBytes];
// The info page: one kernel frame mapped read-only into every process.
alignas(4096) guest::UserInfo user_info;
static_assert(sizeof(guest::UserInfo) <= 4096);

Process* current = nullptr;
int next_pid = 1;
uint64_t ticks = 0;
int num_sleeping = 0;
uint64_t slice_ticks_left = 1;
// Run statistics for the summary line.
uint64_t num_forks = 0, num_killed = 0, num_results = 0, num_failed_checks = 0;
uint64_t num_syscalls = 0;

uint64_t KstackTop(const Process* p) {
  return reinterpret_cast<uint64_t>(kernel_stacks[p - procs]) + kKernelStackBytes;
}
TrapFrame* TopFrame(const Process* p) {
  return reinterpret_cast<TrapFrame*>(KstackTop(p) - sizeof(TrapFrame));
}

Process* AllocProcess() {
  for (Process& p : procs) {
    if (p.state == State::kUnused) {
      p = Process{};
      p.pid = next_pid++;
      p.parent = -1;
      p.frame = TopFrame(&p);
      return &p;
    }
  }
  return nullptr;
}

void CopyName(char* dst, const char* src) {
  int i = 0;
  for (; i < kNameBytes - 1 && src[i]; ++i) dst[i] = src[i];
  dst[i] = 0;
}

TrapFrame* SwitchTo(Process* p) {
  current = p;
  slice_ticks_left = 1;
  SetKernelStack(KstackTop(p));
  AsActivate(&p->as);
  return p->frame;
}

[[noreturn]] void Shutdown(const Process* init) {
  const PmmStats& m = GetPmmStats();
  uint32_t code = guest::kExitSuccess;
  if (init->killed) {
    code = guest::kExitInitKilled;
  } else if (init->status != 0 || num_failed_checks != 0) {
    code = guest::kExitWorkloadFailed;
  }
  Printk("SUMMARY exit=%u init_status=%u forks=%lu killed=%lu results=%lu failed_checks=%lu "
         "syscalls=%lu ticks=%lu uptime_ns=%lu\n",
         code, init->status, num_forks, num_killed, num_results, num_failed_checks, num_syscalls,
         ticks, NowNs());
  Printk("MEM total_pages=%lu free_pages=%lu fresh_allocs=%lu recycled_allocs=%lu "
         "zeroed_pages=%lu\n",
         m.total_pages, m.free_pages, m.fresh_allocs, m.recycled_allocs, m.zeroed_pages);
  BalloonPrintSummary();
  ExitGuest(code);
}

// Picks the next runnable process after the current one (round robin). With
// none runnable, halts with interrupts on; ticks wake sleepers.
TrapFrame* Schedule() {
  for (;;) {
    int start = current ? static_cast<int>(current - procs) + 1 : 0;
    for (int i = 0; i < kMaxProcs; ++i) {
      Process* p = &procs[(start + i) % kMaxProcs];
      if (p->state == State::kRunnable) return SwitchTo(p);
    }
    if (num_sleeping == 0) Panic("deadlock: no runnable or sleeping process", nullptr);
    EnableInterruptsAndHalt();
  }
}

// Completes a wait() in `parent` by reaping `child`.
void ReapInto(Process* parent, Process* child) {
  parent->frame->rax = static_cast<uint64_t>(child->pid) |
                       (static_cast<uint64_t>(child->status) << 32);
  child->state = State::kUnused;
}

void ExitCurrent(uint32_t status, bool killed) {
  Process* p = current;
  p->status = status;
  p->killed = killed;
  // Leave the address space before freeing it: the boot PML4 holds the same
  // kernel half.
  WriteCr3(reinterpret_cast<uint64_t>(boot_pml4));
  AsDestroy(&p->as);
  if (p == &procs[0]) Shutdown(p);
  // Orphans go to init, which reaps them if it waits.
  for (Process& c : procs) {
    if (c.state != State::kUnused && c.parent == p - procs) c.parent = 0;
  }
  for (Process& c : procs) {
    if (c.state == State::kZombie && c.parent == 0 && procs[0].state == State::kWaiting) {
      if (procs[0].wait_pid != 0 && procs[0].wait_pid != c.pid) continue;
      ReapInto(&procs[0], &c);
      procs[0].state = State::kRunnable;
    }
  }
  Process* parent = p->parent >= 0 ? &procs[p->parent] : nullptr;
  if (parent && parent->state == State::kWaiting &&
      (parent->wait_pid == 0 || parent->wait_pid == p->pid)) {
    // Reaping now is safe although this stack is still in use: the slot is
    // only reused by a fork, which runs after Schedule() has left this stack.
    ReapInto(parent, p);
    parent->state = State::kRunnable;
  } else {
    p->state = State::kZombie;
  }
}

// Copies a NUL-terminated user string (validated) into dst.
bool CopyUserString(char* dst, uint64_t dst_len, uint64_t user_va) {
  for (uint64_t i = 0; i < dst_len; ++i) {
    if (!AsRangeOk(&current->as, user_va + i, 1, false)) return false;
    // Guest input: the byte lies in a mapped user region; a not-yet-present
    // page is demand-faulted by the kernel-mode #PF path.
    dst[i] = *reinterpret_cast<const char*>(user_va + i);
    if (dst[i] == 0) return true;
  }
  dst[dst_len - 1] = 0;
  return true;
}

// Results protocol (docs/guest.md): name bytes to the name port, 4 at a time,
// then the value's halves; the high half commits the record. Mirrored as a
// serial line for hosts without the port (QEMU).
void PublishResult(const char* key, uint64_t value) {
  char name[guest::kResultsMaxNameBytes];
  uint32_t n = 0;
  for (const char* s = current->name; *s && n < sizeof(name) - 1; ++s) name[n++] = *s;
  if (n < sizeof(name) - 1) name[n++] = '.';
  for (const char* s = key; *s && n < sizeof(name) - 1; ++s) name[n++] = *s;
  while (n % 4 != 0) name[n++] = 0;
  for (uint32_t i = 0; i < n; i += 4) {
    uint32_t word;
    memcpy(&word, name + i, 4);
    Outl(guest::kResultsNamePort, word);
  }
  Outl(guest::kResultsValueLowPort, static_cast<uint32_t>(value));
  Outl(guest::kResultsValueHighPort, static_cast<uint32_t>(value >> 32));
  Printk("RESULT %s %s=%lu\n", current->name, key, value);
  ++num_results;
  if (StrEq(key, "checksum_ok") && value == 0) ++num_failed_checks;
}

int64_t SysWrite(uint64_t fd, uint64_t buf, uint64_t len) {
  if (fd != 1 && fd != 2) return -1;
  if (len > kMaxWrite) len = kMaxWrite;
  if (!AsRangeOk(&current->as, buf, len, false)) return -1;
  // Guest input: the range was checked against the process's regions above.
  ConsoleWrite(reinterpret_cast<const char*>(buf), len);
  return static_cast<int64_t>(len);
}

int64_t SysFork() {
  Process* child = AllocProcess();
  if (!child) return -1;
  if (!AsCreate(&child->as) || !AsFork(&current->as, &child->as)) {
    AsDestroy(&child->as);
    child->state = State::kUnused;
    return -1;
  }
  *child->frame = *current->frame;
  child->frame->rax = 0;
  child->parent = static_cast<int>(current - procs);
  CopyName(child->name, current->name);
  child->state = State::kRunnable;
  ++num_forks;
  return child->pid;
}

}  // namespace

void ProcInit(const KernelOptions& options, const char* cmdline, uint64_t cmdline_len) {
  user_info.magic = guest::kUserInfoMagic;
  user_info.flags = options.trap_entry ? guest::kUserFlagTrapEntry : 0;
  user_info.tsc_khz = TscKhz();
  user_info.tick_ns = TickNs();
  if (cmdline_len >= guest::kUserCmdlineMax) cmdline_len = guest::kUserCmdlineMax - 1;
  memcpy(user_info.cmdline, cmdline, cmdline_len);
  user_info.cmdline[cmdline_len] = 0;
  user_info.cmdline_len = static_cast<uint32_t>(cmdline_len);
}

void StartInit() {
  Process* p = AllocProcess();
  if (!p || !AsCreate(&p->as)) Panic("cannot create init", nullptr);
  uint64_t image_pages = (user_image_end - user_image_start) / kPageSize;
  bool ok = AsAddVma(&p->as, guest::kUserInfoVa, guest::kUserInfoVa + kPageSize, VmaKind::kInfo,
                     false) &&
            AsMapFixed(&p->as, guest::kUserInfoVa, KernelVirtToPhys(&user_info), 1) &&
            AsAddVma(&p->as, guest::kUserImageVa, guest::kUserImageVa + image_pages * kPageSize,
                     VmaKind::kImage, false) &&
            AsMapFixed(&p->as, guest::kUserImageVa, KernelVirtToPhys(user_image_start),
                       image_pages) &&
            AsAddVma(&p->as, guest::kUserStackTop - guest::kUserStackBytes, guest::kUserStackTop,
                     VmaKind::kStack, true);
  if (!ok) Panic("cannot map init", nullptr);
  CopyName(p->name, "init");
  TrapFrame* f = p->frame;
  *f = TrapFrame{};
  f->rip = guest::kUserImageVa;
  f->cs = kUserCs;
  f->ss = kUserDs;
  f->rflags = 0x202;  // IF
  f->rsp = guest::kUserStackTop;
  f->rdi = guest::kUserInfoVa;
  p->state = State::kRunnable;
  Printk("init: pid %d, user image %lu pages, entry %s\n", p->pid, image_pages,
         user_info.flags & guest::kUserFlagTrapEntry ? "int3 trap" : "syscall");
  EnterFrame(SwitchTo(p));
}

bool OnTimerTick() {
  ++ticks;
  if (num_sleeping > 0) {
    for (Process& p : procs) {
      if (p.state == State::kSleeping && p.wake_tick <= ticks) {
        p.state = State::kRunnable;
        --num_sleeping;
      }
    }
  }
  if (slice_ticks_left > 0) --slice_ticks_left;
  return slice_ticks_left == 0;
}

TrapFrame* Preempt(TrapFrame* f) {
  current->frame = f;
  return Schedule();
}

bool HandleUserPageFault(uint64_t va, uint64_t error, const char** why) {
  if (!current) {
    *why = "no process";
    return false;
  }
  switch (AsHandleFault(&current->as, va, error)) {
    case FaultResult::kFixed:
      CountMinorFault();
      return true;
    case FaultResult::kOutOfMemory:
      *why = "out of memory";
      return false;
    case FaultResult::kViolation:
      break;
  }
  *why = "bad access";
  return false;
}

TrapFrame* KillCurrent(TrapFrame* f, uint64_t fault_addr, const char* why) {
  current->frame = f;
  ++num_killed;
  Printk("KILL pid=%d name=%s vector=%lu (%s) rip=%lx addr=%lx error=%lx: %s\n", current->pid,
         current->name, f->vector, ExceptionName(f->vector), f->rip, fault_addr, f->error, why);
  ExitCurrent(guest::kWaitKilled | static_cast<uint32_t>(f->vector), /*killed=*/true);
  return Schedule();
}

TrapFrame* SyscallDispatch(TrapFrame* f) {
  current->frame = f;
  ++num_syscalls;
  uint64_t a0 = f->rdi, a1 = f->rsi;
  int64_t ret = 0;
  switch (f->rax) {
    case guest::kSysExit:
      ExitCurrent(static_cast<uint32_t>(a0 & 0xff), /*killed=*/false);
      return Schedule();
    case guest::kSysWrite:
      ret = SysWrite(a0, a1, f->rdx);
      break;
    case guest::kSysMmap: {
      uint64_t va = AsMmap(&current->as, a0, (a1 & guest::kProtWrite) != 0);
      ret = va ? static_cast<int64_t>(va) : -1;
      break;
    }
    case guest::kSysMunmap:
      ret = AsMunmap(&current->as, a0, a1) ? 0 : -1;
      break;
    case guest::kSysFork:
      ret = SysFork();
      break;
    case guest::kSysWait: {
      int self = static_cast<int>(current - procs);
      bool has_children = false;
      current->wait_pid = static_cast<int>(a0);
      for (Process& c : procs) {
        if (c.state == State::kUnused || c.parent != self) continue;
        if (a0 != 0 && c.pid != static_cast<int>(a0)) continue;
        if (c.state == State::kZombie) {
          ReapInto(current, &c);
          return f;
        }
        has_children = true;
      }
      if (!has_children) {
        ret = -1;
        break;
      }
      current->state = State::kWaiting;
      return Schedule();
    }
    case guest::kSysYield:
      f->rax = 0;
      return Schedule();
    case guest::kSysGetpid:
      ret = current->pid;
      break;
    case guest::kSysTime:
      ret = static_cast<int64_t>(NowNs());
      break;
    case guest::kSysReport: {
      char key[guest::kResultsMaxNameBytes];
      if (!CopyUserString(key, sizeof(key), a0)) {
        ret = -1;
        break;
      }
      PublishResult(key, a1);
      break;
    }
    case guest::kSysSleep: {
      uint64_t tick_ns = TickNs();
      current->wake_tick = ticks + (a0 + tick_ns - 1) / tick_ns;
      if (current->wake_tick == ticks) ++current->wake_tick;
      current->state = State::kSleeping;
      ++num_sleeping;
      f->rax = 0;
      return Schedule();
    }
    case guest::kSysSetName:
      if (!CopyUserString(current->name, kNameBytes, a0)) ret = -1;
      break;
    case guest::kSysMemInfo: {
      const PmmStats& m = GetPmmStats();
      ret = static_cast<int64_t>(a0 == guest::kMemTotalPages    ? m.total_pages
                                 : a0 == guest::kMemFreePages   ? m.free_pages
                                 : a0 == guest::kMemUsedPages   ? m.total_pages - m.free_pages
                                 : a0 == guest::kMemMinorFaults ? MinorFaults()
                                                                : BalloonMemInfo(a0));
      break;
    }
    default:
      ret = -1;
      break;
  }
  f->rax = static_cast<uint64_t>(ret);
  return f;
}

}  // namespace kernel

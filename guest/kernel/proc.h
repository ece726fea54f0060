// Processes, the round-robin scheduler and the system calls.
//
// Each process owns an address space and a kernel stack; while it is not
// running its whole user state is the TrapFrame at the top of that stack.
// Switching is returning a different frame to entry.S. The kernel never
// blocks inside a handler: a blocking call parks the caller's frame and picks
// another; when nothing is runnable the kernel halts with interrupts on until
// a tick wakes a sleeper. Single CPU, interrupts off in the kernel.
#pragma once

#include <stdint.h>

#include "guest/kernel/trap.h"

namespace kernel {

struct KernelOptions {
  bool trap_entry = false;
  uint64_t tick_us = 10000;
};

void ProcInit(const KernelOptions& options, const char* cmdline, uint64_t cmdline_len);
// Creates pid 1 running the user program and never returns.
[[noreturn]] void StartInit();

TrapFrame* SyscallDispatch(TrapFrame* f);
// Returns true when the running process's time slice is over.
bool OnTimerTick();
TrapFrame* Preempt(TrapFrame* f);
// Kills the current process on an unhandled user fault and switches away.
TrapFrame* KillCurrent(TrapFrame* f, uint64_t fault_addr, const char* why);
// Resolves a page fault on a user address in the current address space.
// Returns false, with *why set, when it cannot be resolved.
bool HandleUserPageFault(uint64_t va, uint64_t error, const char** why);

}  // namespace kernel

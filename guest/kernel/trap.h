// Descriptor tables (GDT, TSS, IDT), the `syscall` MSRs, trap dispatch and the
// kernel panic path. Single CPU; runs with interrupts off.
#pragma once

#include <stdint.h>

namespace kernel {

// Pushed by entry.S; field order mirrors the pushes (last pushed first).
struct TrapFrame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
  uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector;  // kSyscallVector for frames built by the `syscall` entry
  uint64_t error;
  // Pushed by the CPU (SDM Vol. 3A, 7.14.2) or emulated by syscall_entry.
  uint64_t rip, cs, rflags, rsp, ss;
};
static_assert(sizeof(TrapFrame) == 22 * 8);

inline constexpr uint64_t kSyscallVector = 0x100;
inline constexpr uint64_t kBreakpointVector = 3;
inline constexpr uint64_t kPageFaultVector = 14;
inline constexpr uint64_t kTimerVector = 0x20;
inline constexpr uint64_t kSpuriousVector = 0xff;

// Segment selectors: Linux's layout, which the PVM host requires (user CS 0x33).
inline constexpr uint16_t kKernelCs = 0x10;
inline constexpr uint16_t kKernelDs = 0x18;
inline constexpr uint16_t kUserDs = 0x2b;
inline constexpr uint16_t kUserCs = 0x33;
inline constexpr uint16_t kTssSelector = 0x38;

inline bool FromUser(const TrapFrame* f) { return (f->cs & 3) == 3; }

void TrapInit();
// Sets the stack the CPU switches to on a CPL3 -> CPL0 entry (TSS.RSP0 and the
// `syscall` entry's stack).
void SetKernelStack(uint64_t top);

// "#PF page fault" and the like, for console lines.
const char* ExceptionName(uint64_t vector);

[[noreturn]] void Panic(const char* why, const TrapFrame* f);
[[noreturn]] void ExitGuest(uint32_t code);

}  // namespace kernel

extern "C" [[noreturn]] void EnterFrame(kernel::TrapFrame* f);

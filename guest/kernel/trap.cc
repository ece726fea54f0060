#include "guest/kernel/trap.h"

#include "guest/abi.h"
#include "guest/kernel/arch.h"
#include "guest/kernel/balloon.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lapic.h"
#include "guest/kernel/proc.h"

extern "C" {
extern const uint64_t isr_table[32];
void isr_32();
void isr_255();
void syscall_entry();
extern uint64_t syscall_kernel_rsp;
}

namespace kernel {
namespace {

// 64-bit TSS (SDM Vol. 3A, 9.7 figure 9-11). No I/O bitmap: the base points
// past the limit, so port I/O from CPL3 faults (IOPL is 0) instead of reaching
// the platform, where it would corrupt RIP on the PVM host.
struct __attribute__((packed)) Tss {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t iomap_base;
};
static_assert(sizeof(Tss) == 104);

struct IdtEntry {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attr;
  uint16_t offset_mid;
  uint32_t offset_high;
  uint32_t reserved;
};
static_assert(sizeof(IdtEntry) == 16);

struct __attribute__((packed)) DescriptorPointer {
  uint16_t limit;
  uint64_t base;
};

alignas(16) Tss tss;
alignas(16) uint64_t gdt[9] = {
    0,
    0x00cf9a000000ffff,  // 0x08 kernel code, 32-bit (unused after boot)
    0x00af9a000000ffff,  // 0x10 kernel code, 64-bit
    0x00cf92000000ffff,  // 0x18 kernel data
    0x00cffa000000ffff,  // 0x20 user code, 32-bit (STAR base for SYSRET)
    0x00cff2000000ffff,  // 0x28 user data
    0x00affa000000ffff,  // 0x30 user code, 64-bit
    0,                   // 0x38 TSS, low half
    0,                   //      TSS, high half
};
alignas(16) IdtEntry idt[256];
alignas(16) uint8_t fault_stack[8192];  // IST1: #DF and NMI

const char* const kExceptionNames[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound",
    "#UD invalid opcode", "#NM no FPU", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization", "#CP control protection", "reserved 22",
    "reserved 23", "reserved 24", "reserved 25", "reserved 26", "reserved 27", "reserved 28",
    "#VC VMM communication", "#SX security", "reserved 31"};

void SetGate(int vector, uint64_t handler, uint8_t dpl, uint8_t ist) {
  IdtEntry& e = idt[vector];
  e.offset_low = static_cast<uint16_t>(handler);
  e.selector = kKernelCs;
  e.ist = ist;
  e.type_attr = static_cast<uint8_t>(0x8e | (dpl << 5));  // present 64-bit interrupt gate
  e.offset_mid = static_cast<uint16_t>(handler >> 16);
  e.offset_high = static_cast<uint32_t>(handler >> 32);
  e.reserved = 0;
}

}  // namespace

const char* ExceptionName(uint64_t vector) {
  return vector < 32 ? kExceptionNames[vector] : "interrupt";
}

void TrapInit() {
  uint64_t base = reinterpret_cast<uint64_t>(&tss);
  uint64_t limit = sizeof(Tss) - 1;
  tss.iomap_base = sizeof(Tss);
  tss.ist[0] = reinterpret_cast<uint64_t>(fault_stack + sizeof(fault_stack));
  gdt[7] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
           (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
  gdt[8] = base >> 32;
  DescriptorPointer gdtr{sizeof(gdt) - 1, reinterpret_cast<uint64_t>(gdt)};
  asm volatile(
      "lgdt %0\n\t"
      "mov %1, %%ds\n\t"
      "mov %1, %%es\n\t"
      "mov %1, %%ss\n\t"
      "pushq %2\n\t"
      "lea 1f(%%rip), %%rax\n\t"
      "push %%rax\n\t"
      "lretq\n"
      "1:\n\t"
      "ltr %w3"
      :
      : "m"(gdtr), "r"(static_cast<uint64_t>(kKernelDs)), "i"(kKernelCs), "r"(kTssSelector)
      : "rax", "memory");

  for (int v = 0; v < 32; ++v) {
    // #BP is the trap-based syscall entry: reachable from CPL3 with `int3`.
    uint8_t dpl = v == kBreakpointVector ? 3 : 0;
    uint8_t ist = (v == 2 || v == 8) ? 1 : 0;
    SetGate(v, isr_table[v], dpl, ist);
  }
  SetGate(kTimerVector, reinterpret_cast<uint64_t>(&isr_32), 0, 0);
  SetGate(kSpuriousVector, reinterpret_cast<uint64_t>(&isr_255), 0, 0);
  DescriptorPointer idtr{sizeof(idt) - 1, reinterpret_cast<uint64_t>(idt)};
  asm volatile("lidt %0" : : "m"(idtr));

  // SYSCALL/SYSRET (SDM Vol. 2B): STAR[47:32] = kernel CS (SS = +8);
  // STAR[63:48] = 0x23 so SYSRET loads CS = 0x23+16 = 0x33, SS = 0x23+8 = 0x2b.
  // SFMASK clears IF, TF, DF, IOPL, NT and AC on entry.
  uint64_t efer = Rdmsr(kMsrEfer);
  if (!(efer & 1)) Wrmsr(kMsrEfer, efer | 1);  // EFER.SCE
  Wrmsr(kMsrStar, (0x23ull << 48) | (static_cast<uint64_t>(kKernelCs) << 32));
  Wrmsr(kMsrLstar, reinterpret_cast<uint64_t>(&syscall_entry));
  Wrmsr(kMsrSfmask, 0x47700);
}

void SetKernelStack(uint64_t top) {
  tss.rsp[0] = top;
  syscall_kernel_rsp = top;
}

void ExitGuest(uint32_t code) {
  // isa-debug-exit: QEMU exits with status (code << 1) | 1. Our VMM reads the
  // same port. If nobody listens, stop here.
  Outl(guest::kDebugExitPort, code);
  for (;;) {
    asm volatile("cli; hlt");
  }
}

void Panic(const char* why, const TrapFrame* f) {
  Printk("PANIC: %s\n", why);
  if (f) {
    Printk("  vector=%lu (%s) error=%lx cr2=%016lx cr3=%016lx\n", f->vector,
           ExceptionName(f->vector), f->error, ReadCr2(), ReadCr3());
    Printk("  rip=%016lx cs=%lx rflags=%016lx rsp=%016lx ss=%lx\n", f->rip, f->cs, f->rflags,
           f->rsp, f->ss);
    Printk("  rax=%016lx rbx=%016lx rcx=%016lx rdx=%016lx\n", f->rax, f->rbx, f->rcx, f->rdx);
    Printk("  rsi=%016lx rdi=%016lx rbp=%016lx r8 =%016lx\n", f->rsi, f->rdi, f->rbp, f->r8);
    Printk("  r9 =%016lx r10=%016lx r11=%016lx r12=%016lx\n", f->r9, f->r10, f->r11, f->r12);
    Printk("  r13=%016lx r14=%016lx r15=%016lx\n", f->r13, f->r14, f->r15);
  }
  ExitGuest(guest::kExitPanic);
}

}  // namespace kernel

// Every entry into the kernel lands here (entry.S). Returns the frame to
// resume: the same one, or another process's after a switch.
extern "C" kernel::TrapFrame* TrapDispatch(kernel::TrapFrame* f) {
  using namespace kernel;
  uint64_t v = f->vector;
  if (v == kTimerVector) {
    LapicEoi();
    LapicTimerRearm();
    // The balloon's device interrupt is not wired (no IOAPIC set-up): poll it.
    BalloonTick();
    bool preempt = OnTimerTick();
    // A tick that interrupts the kernel (only the idle HLT runs with IF=1)
    // just records time; the idle loop itself picks the next process.
    if (!FromUser(f) || !preempt) return f;
    return Preempt(f);
  }
  if (v == kSyscallVector || (v == kBreakpointVector && FromUser(f))) return SyscallDispatch(f);
  if (v == kSpuriousVector) return f;  // no EOI for spurious (SDM Vol. 3A, 12.9)
  if (v == kPageFaultVector) {
    uint64_t addr = ReadCr2();
    const char* why = "kernel address";
    // Kernel accesses to user memory (syscall arguments) fault like user ones.
    if (addr < guest::kUserTop && HandleUserPageFault(addr, f->error, &why)) return f;
    if (FromUser(f)) return KillCurrent(f, addr, why);
    Panic("kernel page fault", f);
  }
  if (FromUser(f)) return KillCurrent(f, 0, "unhandled exception");
  Panic("unhandled kernel exception", f);
}

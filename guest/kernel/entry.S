// Kernel entry and exit: exception/interrupt stubs, the `syscall` entry, and
// the common path that builds a TrapFrame (guest/kernel/trap.h) and returns
// through whichever frame TrapDispatch hands back (that is how the scheduler
// switches processes: each process's frame sits on its own kernel stack).
//
// The kernel runs with interrupts off (interrupt gates, SFMASK clears IF), on
// one CPU, so the two scratch words below need no per-CPU area or swapgs.

#define SYSCALL_VECTOR 0x100

  .text
  .code64

  .macro STUB_NOERR n
  .globl isr_\n
isr_\n:
  pushq $0
  pushq $\n
  jmp trap_common
  .endm

  .macro STUB_ERR n
  .globl isr_\n
isr_\n:
  pushq $\n
  jmp trap_common
  .endm

// Vectors that push an error code: SDM Vol. 3A, 7.3 table 7-1
// (#DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21, #VC 29, #SX 30).
  STUB_NOERR 0
  STUB_NOERR 1
  STUB_NOERR 2
  STUB_NOERR 3
  STUB_NOERR 4
  STUB_NOERR 5
  STUB_NOERR 6
  STUB_NOERR 7
  STUB_ERR 8
  STUB_NOERR 9
  STUB_ERR 10
  STUB_ERR 11
  STUB_ERR 12
  STUB_ERR 13
  STUB_ERR 14
  STUB_NOERR 15
  STUB_NOERR 16
  STUB_ERR 17
  STUB_NOERR 18
  STUB_NOERR 19
  STUB_NOERR 20
  STUB_ERR 21
  STUB_NOERR 22
  STUB_NOERR 23
  STUB_NOERR 24
  STUB_NOERR 25
  STUB_NOERR 26
  STUB_NOERR 27
  STUB_NOERR 28
  STUB_ERR 29
  STUB_ERR 30
  STUB_NOERR 31
  STUB_NOERR 32
  STUB_NOERR 255

  .section .rodata
  .balign 8
  .globl isr_table
isr_table:
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  .quad isr_\n
  .endr
  .text

// `syscall` entry: RCX = user RIP, R11 = user RFLAGS, RSP still the user's
// (SDM Vol. 2B, SYSCALL). Build the same frame an interrupt from CPL3 builds.
  .globl syscall_entry
syscall_entry:
  mov %rsp, syscall_user_rsp(%rip)
  mov syscall_kernel_rsp(%rip), %rsp
  pushq $0x2b                       // SS
  pushq syscall_user_rsp(%rip)      // RSP
  push %r11                         // RFLAGS
  pushq $0x33                       // CS
  push %rcx                         // RIP
  pushq $0                          // error code
  pushq $SYSCALL_VECTOR
  // fall through

trap_common:
  push %rax
  push %rbx
  push %rcx
  push %rdx
  push %rsi
  push %rdi
  push %rbp
  push %r8
  push %r9
  push %r10
  push %r11
  push %r12
  push %r13
  push %r14
  push %r15
  mov %rsp, %rdi
  call TrapDispatch
  mov %rax, %rsp
  // fall through

  .globl trap_return
trap_return:
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %r11
  pop %r10
  pop %r9
  pop %r8
  pop %rbp
  pop %rdi
  pop %rsi
  pop %rdx
  pop %rcx
  pop %rbx
  pop %rax
  cmpq $SYSCALL_VECTOR, (%rsp)
  je 1f
  add $16, %rsp                     // vector, error code
  iretq
1:
  // Frames made by `syscall` return with SYSRETQ: RCX -> RIP, R11 -> RFLAGS,
  // CS/SS from STAR (SDM Vol. 2B, SYSRET). RIP came from SYSCALL, so it is
  // canonical. Interrupts stay off until RFLAGS is loaded, so running on the
  // user stack for two instructions is safe.
  mov 16(%rsp), %rcx
  mov 32(%rsp), %r11
  mov 40(%rsp), %rsp
  sysretq

// EnterFrame(TrapFrame*): start running a process from its saved frame.
  .globl EnterFrame
EnterFrame:
  mov %rdi, %rsp
  jmp trap_return

  .data
  .balign 8
  .globl syscall_kernel_rsp
syscall_kernel_rsp:
  .quad 0
syscall_user_rsp:
  .quad 0

// User program entry. The kernel starts pid 1 here with RSP at the top of its
// (16-byte aligned) stack and RDI pointing at the read-only UserInfo page.
  .section .text.start, "ax"
  .globl _ustart
_ustart:
  call UserMain
  ud2

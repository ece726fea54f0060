#include "vmm-host/hypervisor.h"

#include "absl/strings/str_format.h"

namespace vmm {

const char* ExitReasonName(ExitReason reason) {
  switch (reason) {
    case ExitReason::kIo: return "io";
    case ExitReason::kMmio: return "mmio";
    case ExitReason::kHlt: return "hlt";
    case ExitReason::kShutdown: return "shutdown";
    case ExitReason::kInternalError: return "internal_error";
    case ExitReason::kFailEntry: return "fail_entry";
    case ExitReason::kInterrupted: return "interrupted";
    case ExitReason::kSystemEvent: return "system_event";
    case ExitReason::kUnknown: return "unknown";
  }
  return "?";
}

std::string FormatRegisters(const VcpuRegisters& r) {
  return absl::StrFormat(
      "rip=%016x rsp=%016x rflags=%08x\n"
      "rax=%016x rbx=%016x rcx=%016x rdx=%016x\n"
      "rsi=%016x rdi=%016x rbp=%016x r8 =%016x\n"
      "r9 =%016x r10=%016x r11=%016x r12=%016x\n"
      "r13=%016x r14=%016x r15=%016x\n"
      "cr0=%016x cr2=%016x cr3=%016x cr4=%016x efer=%x\n"
      "cs=%04x ss=%04x ds=%04x tr=%04x gdt=%x/%x idt=%x/%x",
      r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10,
      r.r11, r.r12, r.r13, r.r14, r.r15, r.cr0, r.cr2, r.cr3, r.cr4, r.efer, r.cs, r.ss, r.ds,
      r.tr, r.gdt_base, r.gdt_limit, r.idt_base, r.idt_limit);
}

}  // namespace vmm

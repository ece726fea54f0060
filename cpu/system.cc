// The interpreter's system half: exception and interrupt delivery through the
// IDT, privilege transfers (SYSCALL/SYSRET, IRETQ, far RET), descriptor
// tables, control registers, MSRs, and string port I/O. Everything here is
// cold next to the integer path in interpreter.cc, so it favours being
// obviously right over being fast. Section numbers are Intel SDM Vol. 3A
// unless a volume is named.
#include <cstring>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "cpu/interpreter.h"
#include "cpu/interpreter_inl.h"

namespace cpu {

using mmu::Access;
using mmu::TranslateResult;

namespace {

// MSR numbers (SDM Vol. 4, Table 2-2).
constexpr uint32_t kMsrTsc = 0x10;
constexpr uint32_t kMsrPat = 0x277;
constexpr uint32_t kMsrEfer = 0xc000'0080;
constexpr uint32_t kMsrStar = 0xc000'0081;
constexpr uint32_t kMsrLstar = 0xc000'0082;
constexpr uint32_t kMsrCstar = 0xc000'0083;
constexpr uint32_t kMsrSfmask = 0xc000'0084;
constexpr uint32_t kMsrFsBase = 0xc000'0100;
constexpr uint32_t kMsrGsBase = 0xc000'0101;
constexpr uint32_t kMsrKernelGsBase = 0xc000'0102;
constexpr uint32_t kMsrTscAux = 0xc000'0103;

constexpr uint64_t kEferSce = 1u << 0;
constexpr uint64_t kEferLme = 1u << 8;
constexpr uint64_t kEferLma = 1u << 10;
constexpr uint64_t kEferNxe = 1u << 11;

constexpr uint64_t kCr0Pe = 1u << 0;
constexpr uint64_t kCr0Ts = 1u << 3;
constexpr uint64_t kCr0Nw = 1u << 29;
constexpr uint64_t kCr0Cd = 1u << 30;
constexpr uint64_t kCr0Pg = 1u << 31;
// CR0 bits that exist: PE MP EM TS ET NE WP AM NW CD PG (§2.5).
constexpr uint64_t kCr0Valid = 0xe005'003f;
constexpr uint64_t kCr4Pae = 1u << 5;
constexpr uint64_t kCr4Pge = 1u << 7;
// The CR4 bits this CPU offers (its CPUID, interpreter.cc): VME PVI TSD DE
// PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT. Setting any other is #GP (§2.5).
constexpr uint64_t kCr4Valid = 0x7ff;

// Descriptor fields (§3.4.5, §7.2.3 for system descriptors).
constexpr uint64_t kDescPresent = uint64_t{1} << 47;
constexpr uint64_t kDescCodeData = uint64_t{1} << 44;  // S: not a system descriptor
constexpr uint64_t kDescCode = uint64_t{1} << 43;
constexpr uint64_t kDescWritableOrReadable = uint64_t{1} << 41;
constexpr uint64_t kDescLong = uint64_t{1} << 53;
constexpr unsigned DescDpl(uint64_t d) { return static_cast<unsigned>((d >> 45) & 3); }
constexpr unsigned DescType(uint64_t d) { return static_cast<unsigned>((d >> 40) & 0xf); }
constexpr uint64_t DescBase32(uint64_t d) {
  return ((d >> 16) & 0xff'ffff) | (((d >> 56) & 0xff) << 24);
}
constexpr uint32_t DescLimit(uint64_t d) {
  uint32_t limit = static_cast<uint32_t>((d & 0xffff) | (((d >> 48) & 0xf) << 16));
  if (d & (uint64_t{1} << 55)) limit = (limit << 12) | 0xfff;  // G: 4 KiB units
  return limit;
}
constexpr unsigned kTypeTssAvailable = 0x9;
constexpr unsigned kTypeTssBusy = 0xb;
constexpr unsigned kTypeInterruptGate = 0xe;
constexpr unsigned kTypeTrapGate = 0xf;

bool IsCanonical(uint64_t va) {
  return static_cast<uint64_t>(static_cast<int64_t>(va << 16) >> 16) == va;
}

// Exception classes for the double-fault rule (Table 6-4).
enum class FaultClass { kBenign, kContributory, kPageFault, kDoubleFault };
FaultClass Classify(uint8_t vector) {
  switch (vector) {
    case 0: case 10: case 11: case 12: case 13: return FaultClass::kContributory;
    case 14: return FaultClass::kPageFault;
    case 8: return FaultClass::kDoubleFault;
    default: return FaultClass::kBenign;
  }
}

// Vectors whose exceptions push an error code (§6.13 and Table 6-1).
bool PushesErrorCode(uint8_t vector) {
  switch (vector) {
    case 8: case 10: case 11: case 12: case 13: case 14: case 17: case 21: case 29: case 30:
      return true;
    default:
      return false;
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Raising and delivering events.

Interpreter::Flow Interpreter::RaiseException(uint8_t vector, bool has_error_code,
                                              uint32_t error_code, uint64_t cr2) noexcept {
  counters_.Inc(InterpreterCounters::kExceptions);
  if (delivering_) {
    // A fault while delivering an event: TryDeliver combines it (§6.15).
    nested_ = {vector, has_error_code, error_code, cr2};
    return Flow::kStop;
  }
  if (!deliver_events_) {
    exception_ = {vector, has_error_code, error_code, cr2};
    stop_ = StopReason::kException;
    return Flow::kStop;
  }
  // CR2 is loaded as the #PF is delivered (§4.7); a #PF that becomes #DF
  // still leaves its address there.
  if (vector == kVectorPf) state_.cr2 = cr2;
  DeliverEvent(vector, EventKind::kException, has_error_code, error_code);
  return Flow::kStop;
}

void Interpreter::DeliverEvent(uint8_t vector, EventKind kind, bool has_error_code,
                               uint32_t error_code) noexcept {
  for (;;) {
    if (TryDeliver(vector, kind, has_error_code, error_code)) {
      delivered_ = true;
      return;
    }
    if (stop_ == StopReason::kHostError || stop_ == StopReason::kIoExit) return;
    // A fault interrupted the delivery. Combine per Table 6-5: the first
    // event's class and the second's decide between serial handling, #DF
    // and shutdown.
    const PendingException second = nested_;
    const FaultClass first_class =
        kind == EventKind::kException ? Classify(vector) : FaultClass::kBenign;
    const FaultClass second_class = Classify(second.vector);
    if (first_class == FaultClass::kDoubleFault) {
      counters_.Inc(InterpreterCounters::kTripleFaults);
      exception_ = second;
      stop_ = StopReason::kTripleFault;
      stop_detail_ = "triple fault: a fault while delivering a double fault";
      LOG(WARNING) << absl::StrFormat(
          "soft cpu: triple fault (vector %u while delivering #DF) at rip %#x", second.vector,
          state_.rip);
      return;
    }
    const bool second_serious =
        second_class == FaultClass::kContributory || second_class == FaultClass::kPageFault;
    const bool double_fault =
        (first_class == FaultClass::kContributory && second_class == FaultClass::kContributory) ||
        (first_class == FaultClass::kPageFault && second_serious);
    if (second.vector == kVectorPf) state_.cr2 = second.cr2;
    if (double_fault) {
      counters_.Inc(InterpreterCounters::kDoubleFaults);
      vector = kVectorDf;
      has_error_code = true;
      error_code = 0;
    } else {
      vector = second.vector;
      has_error_code = second.has_error_code;
      error_code = second.error_code;
    }
    kind = EventKind::kException;
  }
}

bool Interpreter::TryDeliver(uint8_t vector, EventKind kind, bool has_error_code,
                             uint32_t error_code) noexcept {
  struct DeliveringScope {
    explicit DeliveringScope(bool* flag) : flag_(flag) { *flag_ = true; }
    ~DeliveringScope() { *flag_ = false; }
    bool* flag_;
  } scope(&delivering_);

  // EXT (bit 0 of error codes that name a descriptor): the event came from
  // outside the program (§6.13).
  const uint32_t ext = kind == EventKind::kSoftwareInt ? 0 : 1;
  const uint32_t idt_error = static_cast<uint32_t>(vector) * 8 + 2 + ext;
  auto fault = [&](uint8_t v, uint32_t code) {
    RaiseException(v, true, code);
    return false;
  };

  // The gate (§6.14.1, Figure 6-8).
  if (static_cast<uint64_t>(vector) * 16 + 15 > state_.idtr.limit) return fault(kVectorGp, idt_error);
  uint64_t gate_lo = 0, gate_hi = 0;
  const uint64_t gate_addr = state_.idtr.base + static_cast<uint64_t>(vector) * 16;
  if (!ReadSystem(gate_addr, 8, &gate_lo) || !ReadSystem(gate_addr + 8, 8, &gate_hi)) return false;
  const unsigned type = DescType(gate_lo);
  if (type != kTypeInterruptGate && type != kTypeTrapGate) return fault(kVectorGp, idt_error);
  // INT n, INT3 check the gate's DPL against CPL; hardware events do not (§6.12.1.1).
  if (kind == EventKind::kSoftwareInt && DescDpl(gate_lo) < state_.cpl) {
    return fault(kVectorGp, idt_error);
  }
  if (!(gate_lo & kDescPresent)) return fault(kVectorNp, idt_error);
  const uint16_t selector = static_cast<uint16_t>(gate_lo >> 16);
  const uint64_t target = (gate_lo & 0xffff) | ((gate_lo >> 32) & 0xffff'0000) | (gate_hi << 32);
  const unsigned ist = static_cast<unsigned>((gate_lo >> 32) & 7);

  // The handler's code segment.
  if ((selector & ~3u) == 0) return fault(kVectorGp, ext);
  uint64_t code = 0;
  if (!ReadDescriptor(selector, &code)) return false;
  if (!(code & kDescCodeData) || !(code & kDescCode) || !(code & kDescLong) ||
      DescDpl(code) > state_.cpl) {
    return fault(kVectorGp, (selector & ~3u) + ext);
  }
  if (!(code & kDescPresent)) return fault(kVectorNp, (selector & ~3u) + ext);
  const bool conforming = (code & (uint64_t{1} << 42)) != 0;
  const uint8_t new_cpl = conforming ? state_.cpl : static_cast<uint8_t>(DescDpl(code));

  // The stack (§6.14.4, §6.14.5): IST if the gate names one, else RSPn of
  // the TSS on a privilege change, else the current stack.
  uint64_t rsp = state_.gpr[kRegRsp];
  if (ist != 0 || new_cpl < state_.cpl) {
    const uint32_t offset = ist != 0 ? 0x24 + (ist - 1) * 8 : 4 + new_cpl * 8;
    if (offset + 7 > state_.tr_limit) return fault(kVectorTs, (state_.tr & ~3u) + ext);
    if (!ReadSystem(state_.tr_base + offset, 8, &rsp)) return false;
    if (!IsCanonical(rsp)) return fault(kVectorSs, ext);
  }
  rsp &= ~uint64_t{15};

  // The frame: SS, RSP, RFLAGS, CS, RIP, error code (§6.14.2, Figure 6-9).
  // Pushed at the new CPL; nothing is committed until every push succeeded.
  // INT n and INT3 are traps: their frame holds the next instruction, while
  // rip stays on the INT until the delivery succeeded (a fault delivering
  // it is the INT's own fault).
  const uint16_t new_ss =
      new_cpl < state_.cpl ? static_cast<uint16_t>(new_cpl) : state_.seg[kSs].selector;
  const uint64_t frame[6] = {
      state_.seg[kSs].selector, state_.gpr[kRegRsp], state_.Rflags(), state_.seg[kCs].selector,
      kind == EventKind::kSoftwareInt ? next_rip_ : state_.rip, error_code};
  // Whether an error code is pushed is the vector's property (Table 6-1);
  // INT n and external interrupts never push one.
  (void)has_error_code;
  const bool push_error = kind == EventKind::kException && PushesErrorCode(vector);
  const unsigned words = push_error ? 6 : 5;
  const uint8_t old_cpl = state_.cpl;
  state_.cpl = new_cpl;
  for (unsigned i = 0; i < words; ++i) {
    rsp -= 8;
    if (!Write(rsp, 8, frame[i])) {
      state_.cpl = old_cpl;
      return false;
    }
  }

  state_.gpr[kRegRsp] = rsp;
  state_.seg[kSs].selector = new_ss;
  state_.seg[kCs].selector = static_cast<uint16_t>((selector & ~3u) | new_cpl);
  state_.rip = target;
  uint64_t clear = kFlagTf | kFlagNt | kFlagRf | kFlagVm;
  if (type == kTypeInterruptGate) clear |= kFlagIf;
  state_.rflags_other &= ~clear;
  state_.interrupt_shadow = false;
  return true;
}

void Interpreter::MaybeTakeInterrupt() noexcept {
  const int vector = platform_ != nullptr ? platform_->PendingInterrupt() : -1;
  if (vector < 0) {
    interrupt_check_ = false;
    return;
  }
  platform_->AcknowledgeInterrupt(static_cast<uint8_t>(vector));
  counters_.Inc(InterpreterCounters::kInterrupts);
  DeliverEvent(static_cast<uint8_t>(vector), EventKind::kExternal, false, 0);
}

// ---------------------------------------------------------------------------
// Segments and descriptor tables.

bool Interpreter::ReadSystem(uint64_t gva, unsigned size, uint64_t* value) noexcept {
  const uint8_t cpl = state_.cpl;
  state_.cpl = 0;
  const bool ok = Read(gva, size, value);
  state_.cpl = cpl;
  return ok;
}

bool Interpreter::WriteSystem(uint64_t gva, unsigned size, uint64_t value) noexcept {
  const uint8_t cpl = state_.cpl;
  state_.cpl = 0;
  const bool ok = Write(gva, size, value);
  state_.cpl = cpl;
  return ok;
}

bool Interpreter::ReadDescriptor(uint16_t selector, uint64_t* desc) noexcept {
  // TI = 1 selects the LDT, which this CPU does not offer (LLDT only loads
  // the null selector).
  if (selector & 4) {
    RaiseException(kVectorGp, true, selector & ~3u);
    return false;
  }
  const uint32_t offset = selector & ~7u;
  if (offset + 7 > state_.gdtr.limit) {
    RaiseException(kVectorGp, true, selector & ~3u);
    return false;
  }
  return ReadSystem(state_.gdtr.base + offset, 8, desc);
}

bool Interpreter::LoadCs(uint16_t selector, uint8_t new_cpl) noexcept {
  if ((selector & ~3u) == 0) {
    RaiseException(kVectorGp, true, 0);
    return false;
  }
  uint64_t desc = 0;
  if (!ReadDescriptor(selector, &desc)) return false;
  // Only 64-bit code exists here: compatibility mode is #GP (documented).
  if (!(desc & kDescCodeData) || !(desc & kDescCode) || !(desc & kDescLong) ||
      DescDpl(desc) != new_cpl) {
    RaiseException(kVectorGp, true, selector & ~3u);
    return false;
  }
  if (!(desc & kDescPresent)) {
    RaiseException(kVectorNp, true, selector & ~3u);
    return false;
  }
  state_.seg[kCs].selector = selector;
  SetCpl(new_cpl);
  return true;
}

bool Interpreter::LoadDataSegment(uint8_t sreg, uint16_t selector) noexcept {
  const unsigned rpl = selector & 3;
  if ((selector & ~3u) == 0) {
    // The null selector: always allowed for DS/ES/FS/GS; for SS in 64-bit
    // mode only below CPL 3 and with RPL = CPL (§5.8, "MOV" in Vol. 2B).
    if (sreg == kSs && (state_.cpl == 3 || rpl != state_.cpl)) {
      RaiseException(kVectorGp, true, 0);
      return false;
    }
    state_.seg[sreg].selector = selector;
    if (sreg == kFs || sreg == kGs) state_.seg[sreg].base = 0;
    return true;
  }
  uint64_t desc = 0;
  if (!ReadDescriptor(selector, &desc)) return false;
  const unsigned dpl = DescDpl(desc);
  const bool is_code = (desc & kDescCode) != 0;
  const uint32_t error = selector & ~3u;
  if (!(desc & kDescCodeData)) {
    RaiseException(kVectorGp, true, error);
    return false;
  }
  if (sreg == kSs) {
    // A writable data segment with RPL = DPL = CPL.
    if (is_code || !(desc & kDescWritableOrReadable) || rpl != state_.cpl || dpl != state_.cpl) {
      RaiseException(kVectorGp, true, error);
      return false;
    }
    if (!(desc & kDescPresent)) {
      RaiseException(kVectorSs, true, error);
      return false;
    }
  } else {
    // Data, or readable code; unless conforming code, max(CPL, RPL) <= DPL.
    const bool conforming = is_code && (desc & (uint64_t{1} << 42));
    if ((is_code && !(desc & kDescWritableOrReadable)) ||
        (!conforming && (rpl > dpl || state_.cpl > dpl))) {
      RaiseException(kVectorGp, true, error);
      return false;
    }
    if (!(desc & kDescPresent)) {
      RaiseException(kVectorNp, true, error);
      return false;
    }
  }
  state_.seg[sreg].selector = selector;
  // Only FS and GS have a base in 64-bit mode; loading them sets its low 32
  // bits from the descriptor (the MSRs give the full 64).
  if (sreg == kFs || sreg == kGs) state_.seg[sreg].base = DescBase32(desc);
  return true;
}

// The SS load of a return to an outer level (IRET, far RET), after CS and
// the CPL were already switched. SS is checked at the new CPL, but a fault
// on it is the returning instruction's, taken at the old CPL on the old
// stack with the old CS in its frame: its delivery is held back
// (RaiseException then only records it) until CS and the CPL are restored.
bool Interpreter::LoadReturnSs(uint16_t ss, uint16_t old_cs, uint8_t old_cpl) noexcept {
  const bool deliver = deliver_events_;
  deliver_events_ = false;
  const bool ss_ok = LoadDataSegment(kSs, ss);
  deliver_events_ = deliver;
  if (ss_ok) return true;
  state_.seg[kCs].selector = old_cs;
  SetCpl(old_cpl);
  if (deliver && stop_ == StopReason::kException) {
    stop_ = StopReason::kBudget;
    if (exception_.vector == kVectorPf) state_.cr2 = exception_.cr2;
    DeliverEvent(exception_.vector, EventKind::kException, exception_.has_error_code,
                 exception_.error_code);
  }
  return false;
}

// RETF (Vol. 2B "RET"): pops RIP and CS; a return to an outer privilege level
// also pops RSP and SS.
bool Interpreter::FarReturn(const DecodedInsn& in) noexcept {
  const unsigned size = in.operand_size;
  const uint64_t rsp = state_.gpr[kRegRsp];
  uint64_t rip = 0, cs = 0;
  if (!Read(rsp, size, &rip) || !Read(rsp + size, size, &cs)) return false;
  const uint16_t selector = static_cast<uint16_t>(cs);
  const uint8_t rpl = selector & 3;
  if (rpl < state_.cpl) {
    RaiseException(kVectorGp, true, selector & ~3u);
    return false;
  }
  const uint64_t imm = static_cast<uint64_t>(in.imm) & 0xffff;
  uint64_t new_rsp = rsp + 2 * size + imm;
  uint64_t ss = 0;
  if (rpl > state_.cpl) {
    uint64_t outer_rsp = 0;
    if (!Read(new_rsp, size, &outer_rsp) || !Read(new_rsp + size, size, &ss)) return false;
    new_rsp = outer_rsp + imm;
  }
  if (size == 4) rip &= 0xffff'ffff;
  if (!IsCanonical(rip)) {
    RaiseException(kVectorGp, true, 0);
    return false;
  }
  const uint8_t old_cpl = state_.cpl;
  const uint16_t old_cs = state_.seg[kCs].selector;
  if (!LoadCs(selector, rpl)) return false;
  if (rpl > old_cpl && !LoadReturnSs(static_cast<uint16_t>(ss), old_cs, old_cpl)) return false;
  state_.gpr[kRegRsp] = new_rsp;
  next_rip_ = rip;
  return true;
}

// IRET in 64-bit mode (Vol. 2A "IRET"): always pops RIP, CS, RFLAGS, RSP, SS.
bool Interpreter::Iret(const DecodedInsn& in) noexcept {
  const unsigned size = in.operand_size;
  uint64_t v[5];
  for (unsigned i = 0; i < 5; ++i) {
    if (!Read(state_.gpr[kRegRsp] + i * size, size, &v[i])) return false;
  }
  uint64_t rip = size == 4 ? v[0] & 0xffff'ffff : v[0];
  const uint16_t cs = static_cast<uint16_t>(v[1]);
  const uint64_t new_flags = v[2];
  const uint64_t new_rsp = v[3];
  const uint16_t ss = static_cast<uint16_t>(v[4]);
  const uint8_t rpl = cs & 3;
  if (rpl < state_.cpl) {
    RaiseException(kVectorGp, true, cs & ~3u);
    return false;
  }
  if (!IsCanonical(rip)) {
    RaiseException(kVectorGp, true, 0);
    return false;
  }
  const uint8_t old_cpl = state_.cpl;
  const uint16_t old_cs = state_.seg[kCs].selector;
  if (!LoadCs(cs, rpl)) return false;
  // SS is checked at the new CPL (a null SS is fine below CPL 3).
  if (!LoadReturnSs(ss, old_cs, old_cpl)) return false;
  // Which RFLAGS bits IRET may change: IOPL only from CPL 0, IF only when
  // CPL <= IOPL; VM stays clear in 64-bit mode.
  uint64_t mask = kArithFlags | kFlagTf | kFlagDf | kFlagNt | kFlagRf | kFlagAc | kFlagId |
                  kFlagVif | kFlagVip;
  const unsigned iopl = static_cast<unsigned>((state_.rflags_other & kFlagIopl) >> 12);
  if (old_cpl == 0) mask |= kFlagIopl;
  if (old_cpl <= iopl) mask |= kFlagIf;
  if (size == 4) mask &= 0xffff'ffff;
  state_.SetRflags((state_.Rflags() & ~mask) | (new_flags & mask));
  state_.gpr[kRegRsp] = new_rsp;
  next_rip_ = rip;
  interrupt_check_ = true;  // IF may have come on
  return true;
}

// ---------------------------------------------------------------------------
// Control registers and MSRs.

bool Interpreter::WriteCr(uint8_t cr, uint64_t value) noexcept {
  auto gp = [&] {
    RaiseException(kVectorGp, true, 0);
    return false;
  };
  switch (cr) {
    case 0: {
      // Long mode stays on: clearing PG or PE is #GP here (on hardware it
      // would leave 64-bit mode, which this CPU does not model).
      if ((value & ~kCr0Valid) || !(value & kCr0Pg) || !(value & kCr0Pe) ||
          ((value & kCr0Nw) && !(value & kCr0Cd))) {
        return gp();
      }
      state_.cr0 = value;
      SyncPagingRegisters();
      return true;
    }
    case 2: state_.cr2 = value; return true;
    case 3: {
      const int maxphyaddr = vcpu_.mode.maxphyaddr;
      if (value >> maxphyaddr) return gp();  // reserved bits (§4.5)
      counters_.Inc(InterpreterCounters::kCr3Writes);
      BreakChains();  // a new address space
      const uint64_t old = vcpu_.cr3;
      state_.cr3 = value;
      vcpu_.cr3 = value;
      strategy_->OnCr3Write(vcpu_, old, false);
      return true;
    }
    case 4: {
      if ((value & ~kCr4Valid) || !(value & kCr4Pae)) return gp();
      const uint64_t old = state_.cr4;
      state_.cr4 = value;
      SyncPagingRegisters();
      // Toggling PGE flushes global translations too (§4.10.4.1).
      if ((old ^ value) & kCr4Pge) strategy_->OnTlbFlush(vcpu_, mmu::TlbFlush::kAll);
      return true;
    }
    case 8:
      if (value >> 4) return gp();
      state_.cr8 = value;
      if (platform_ != nullptr) platform_->WriteCr8(static_cast<uint8_t>(value));
      interrupt_check_ = true;  // a lower priority may unmask a pending vector
      return true;
    default:
      return gp();
  }
}

void Interpreter::SyncPagingRegisters() noexcept {
  BreakChains();
  const bool old_paging = vcpu_.paging;
  const mmu::PagingMode old_mode = vcpu_.mode;
  mmu::PagingMode mode = mmu::PagingMode::FromRegisters(state_.cr0, state_.cr4, state_.efer,
                                                        old_mode.maxphyaddr, old_mode.gbpages,
                                                        old_mode.pkru);
  vcpu_.paging = (state_.cr0 & kCr0Pg) != 0;
  const bool changed = vcpu_.paging != old_paging || mode.levels != old_mode.levels ||
                       mode.wp != old_mode.wp || mode.nxe != old_mode.nxe ||
                       mode.smep != old_mode.smep || mode.smap != old_mode.smap ||
                       mode.pke != old_mode.pke;
  vcpu_.mode = mode;
  if (vcpu_.cr3 != state_.cr3) {
    const uint64_t old = vcpu_.cr3;
    vcpu_.cr3 = state_.cr3;
    strategy_->OnCr3Write(vcpu_, old, false);
  }
  if (changed) strategy_->OnModeChange(vcpu_, old_paging, old_mode);
}

bool Interpreter::ReadMsr(uint32_t msr, uint64_t* value) noexcept {
  switch (msr) {
    case kMsrTsc: *value = state_.Tsc(); return true;
    case kMsrPat: *value = state_.pat; return true;
    case kMsrEfer: *value = state_.efer; return true;
    case kMsrStar: *value = state_.star; return true;
    case kMsrLstar: *value = state_.lstar; return true;
    case kMsrCstar: *value = state_.cstar; return true;
    case kMsrSfmask: *value = state_.sfmask; return true;
    case kMsrFsBase: *value = state_.seg[kFs].base; return true;
    case kMsrGsBase: *value = state_.seg[kGs].base; return true;
    case kMsrKernelGsBase: *value = state_.kernel_gs_base; return true;
    case kMsrTscAux: *value = state_.tsc_aux; return true;
    default:
      return platform_ != nullptr && platform_->ReadMsr(msr, value);
  }
}

bool Interpreter::WriteMsr(uint32_t msr, uint64_t value) noexcept {
  switch (msr) {
    case kMsrTsc: state_.tsc_offset = value - state_.Cycles(); return true;
    case kMsrPat: {
      // Each byte a valid memory type: 0, 1, 4, 5, 6 or 7 (Vol. 3A §13.12.2).
      for (int i = 0; i < 8; ++i) {
        const unsigned t = (value >> (i * 8)) & 0xff;
        if (t == 2 || t == 3 || t > 7) return false;
      }
      state_.pat = value;
      return true;
    }
    case kMsrEfer: {
      // SCE and NXE are writable; LME must stay set and LMA is read-only
      // (64-bit mode only); the rest is reserved.
      if ((value & ~(kEferSce | kEferLme | kEferLma | kEferNxe)) || !(value & kEferLme)) return false;
      state_.efer = (value & (kEferSce | kEferNxe)) | kEferLme | kEferLma;
      SyncPagingRegisters();
      return true;
    }
    case kMsrStar: state_.star = value; return true;
    case kMsrLstar:
    case kMsrCstar:
    case kMsrFsBase:
    case kMsrGsBase:
    case kMsrKernelGsBase:
      if (!IsCanonical(value)) return false;
      switch (msr) {
        case kMsrLstar: state_.lstar = value; break;
        case kMsrCstar: state_.cstar = value; break;
        case kMsrFsBase: state_.seg[kFs].base = value; break;
        case kMsrGsBase: state_.seg[kGs].base = value; break;
        default: state_.kernel_gs_base = value; break;
      }
      return true;
    case kMsrSfmask: state_.sfmask = value & 0xffff'ffff; return true;
    case kMsrTscAux: state_.tsc_aux = value & 0xffff'ffff; return true;
    default:
      return platform_ != nullptr && platform_->WriteMsr(msr, value);
  }
}

// ---------------------------------------------------------------------------
// Port I/O and the replay protocol.

bool Interpreter::CheckIoPrivilege() noexcept {
  // CPL <= IOPL, else #GP(0): the TSS I/O bitmap is not consulted (the
  // guest's TSS has none, which is what that would find).
  const unsigned iopl = static_cast<unsigned>((state_.rflags_other & kFlagIopl) >> 12);
  if (state_.cpl > iopl) {
    RaiseException(kVectorGp, true, 0);
    return false;
  }
  return true;
}

void Interpreter::CompleteIoRead(uint64_t value) noexcept {
  if (io_replay_count_ < kMaxIoReplay) io_replay_[io_replay_count_++] = value;
}

bool Interpreter::PlatformPortIn(uint16_t port, uint8_t size, uint32_t* data) noexcept {
  counters_.Inc(InterpreterCounters::kPio);
  if (io_replay_pos_ < io_replay_count_) {
    *data = static_cast<uint32_t>(io_replay_[io_replay_pos_++]);
    return true;
  }
  *data = 0xffff'ffff;
  if (platform_ == nullptr) return true;
  if (platform_->PortIn(port, size, data) == IoStatus::kDone) return true;
  counters_.Inc(InterpreterCounters::kIoExits);
  stop_ = StopReason::kIoExit;
  io_read_pending_ = true;
  return false;
}

bool Interpreter::PlatformPortOut(uint16_t port, uint8_t size, uint32_t data) noexcept {
  counters_.Inc(InterpreterCounters::kPio);
  if (platform_ == nullptr || platform_->PortOut(port, size, data) == IoStatus::kDone) return true;
  counters_.Inc(InterpreterCounters::kIoExits);
  stop_ = StopReason::kIoExit;
  stop_after_ = true;
  block_dirty_ = true;
  return true;
}

bool Interpreter::PlatformMmioRead(uint64_t gpa, uint8_t size, uint64_t* data) noexcept {
  counters_.Inc(InterpreterCounters::kMmio);
  if (io_replay_pos_ < io_replay_count_) {
    *data = io_replay_[io_replay_pos_++];
    return true;
  }
  *data = ~uint64_t{0};
  // Event delivery never reads devices (an IDT or TSS in MMIO reads as an
  // unclaimed bus cycle): a half-delivered event cannot be replayed.
  if (platform_ == nullptr || delivering_) return true;
  if (platform_->MmioRead(gpa, size, data) == IoStatus::kDone) return true;
  counters_.Inc(InterpreterCounters::kIoExits);
  stop_ = StopReason::kIoExit;
  io_read_pending_ = true;
  return false;
}

bool Interpreter::PlatformMmioWrite(uint64_t gpa, uint8_t size, uint64_t data) noexcept {
  counters_.Inc(InterpreterCounters::kMmio);
  if (platform_ == nullptr || delivering_ ||
      platform_->MmioWrite(gpa, size, data) == IoStatus::kDone) {
    return true;
  }
  counters_.Inc(InterpreterCounters::kIoExits);
  stop_ = StopReason::kIoExit;
  stop_after_ = true;
  block_dirty_ = true;
  return true;
}

// INS/OUTS (Vol. 2A "INS", Vol. 2B "OUTS"), with REP. OUTS reads from the
// rSI operand (segment override allowed), INS writes to ES:rDI. Each
// iteration completes on its own, so an I/O exit or fault between iterations
// leaves rSI/rDI/rCX describing the rest, and re-execution resumes.
Interpreter::Flow Interpreter::StringIo(const DecodedInsn& in) noexcept {
  if (!CheckIoPrivilege()) return Flow::kStop;
  const bool rep = (in.prefixes & (kPrefixRep | kPrefixRepne)) != 0;
  const unsigned as = in.address_size;
  const unsigned size = in.operand_size;
  const int64_t step = (state_.rflags_other & kFlagDf) ? -static_cast<int64_t>(size) : size;
  const uint16_t port = static_cast<uint16_t>(state_.gpr[kRegRdx]);
  uint64_t seg_base = 0;
  if (in.segment == Segment::kFs) seg_base = state_.seg[kFs].base;
  if (in.segment == Segment::kGs) seg_base = state_.seg[kGs].base;
  for (;;) {
    if (rep && state_.ReadReg(kRegRcx, as) == 0) return Flow::kNext;
    if (in.op == Op::kOuts) {
      const uint64_t rsi = state_.ReadReg(6, as);
      uint64_t v = 0;
      if (!Read(seg_base + rsi, size, &v)) return Flow::kStop;
      PlatformPortOut(port, static_cast<uint8_t>(size), static_cast<uint32_t>(v));
      state_.WriteReg(6, as, rsi + step);
    } else {
      const uint64_t rdi = state_.ReadReg(7, as);
      // Probe the destination first so a fault does not lose the port read.
      uint64_t probe = 0;
      if (!Read(rdi, size, &probe)) return Flow::kStop;
      uint32_t v = 0;
      if (!PlatformPortIn(port, static_cast<uint8_t>(size), &v)) return Flow::kStop;
      // The replay value is for this iteration only.
      io_replay_count_ = io_replay_pos_ = 0;
      if (!Write(rdi, size, v)) return Flow::kStop;
      state_.WriteReg(7, as, rdi + step);
    }
    if (!rep) return Flow::kNext;
    const uint64_t left = state_.ReadReg(kRegRcx, as) - 1;
    state_.WriteReg(kRegRcx, as, left);
    if (stop_after_ && left != 0) {
      // An exit mid-way: stop between iterations, rip still on the
      // instruction (not retired).
      stop_after_ = false;
      return Flow::kStop;
    }
    if (stop_after_) return Flow::kNext;
  }
}

// ---------------------------------------------------------------------------
// The system instructions (kSize-independent, so not in the per-size table).

Interpreter::Flow Interpreter::ExecuteSystem(const DecodedInsn& in) noexcept {
  // Block links survive CPL changes (they carry the CPL they were made at);
  // what changes translations (MOV CR3, INVLPG, paging-mode writes) breaks
  // them where it happens.
  auto gp0 = [&] { return RaiseException(kVectorGp, true, 0); };
  const bool cpl0 = state_.cpl == 0;
  uint64_t v = 0;
  switch (in.op) {
    case Op::kIns:
    case Op::kOuts:
      return StringIo(in);
    case Op::kInt3:
    case Op::kInt: {
      // Traps: the frame holds the next instruction.
      const uint8_t vector = in.op == Op::kInt3 ? kVectorBp : static_cast<uint8_t>(in.imm);
      counters_.Inc(InterpreterCounters::kExceptions);
      if (!deliver_events_) {
        state_.rip = next_rip_;
        exception_ = {vector, false, 0, 0};
        stop_ = StopReason::kException;
        return Flow::kStop;
      }
      if (TryDeliver(vector, EventKind::kSoftwareInt, false, 0)) {
        delivered_ = true;
        delivered_trap_ = true;  // the INT retired
        return Flow::kStop;
      }
      if (stop_ == StopReason::kHostError || stop_ == StopReason::kIoExit) return Flow::kStop;
      // A fault delivering it (#GP for a gate with DPL < CPL, #NP, a #PF on
      // the stack) is a fault of the INT, which does not retire: delivered
      // with rip still on the INT (a benign first event: no #DF, §6.15).
      const PendingException fault = nested_;
      if (fault.vector == kVectorPf) state_.cr2 = fault.cr2;
      DeliverEvent(fault.vector, EventKind::kException, fault.has_error_code, fault.error_code);
      return Flow::kStop;
    }
    case Op::kIret:
      if (!Iret(in)) return Flow::kStop;
      return Flow::kNext;
    case Op::kRetFar:
      if (!FarReturn(in)) return Flow::kStop;
      return Flow::kNext;
    case Op::kSyscall: {
      // Vol. 2B "SYSCALL": RCX = next RIP, R11 = RFLAGS, CS/SS from
      // STAR[47:32], RFLAGS &= ~SFMASK, RIP = LSTAR, CPL 0.
      if (!(state_.efer & kEferSce)) return RaiseException(kVectorUd);
      counters_.Inc(InterpreterCounters::kSyscalls);
      state_.gpr[kRegRcx] = next_rip_;
      state_.gpr[11] = state_.Rflags() & ~kFlagRf;
      const uint16_t sel = static_cast<uint16_t>(state_.star >> 32) & 0xfffc;
      state_.seg[kCs].selector = sel;
      state_.seg[kSs].selector = static_cast<uint16_t>(sel + 8);
      state_.SetRflags(state_.Rflags() & ~(state_.sfmask | kFlagRf));
      SetCpl(0);
      next_rip_ = state_.lstar;
      return Flow::kNext;
    }
    case Op::kSysret: {
      // Vol. 2B "SYSRET": back to CPL 3 at RCX with RFLAGS = R11.
      if (!(state_.efer & kEferSce)) return RaiseException(kVectorUd);
      if (!cpl0) return gp0();
      // SYSRET without REX.W returns to compatibility mode, which this CPU
      // does not model.
      if (in.operand_size != 8) return Unimplemented(in);
      if (!IsCanonical(state_.gpr[kRegRcx])) return gp0();
      const uint16_t base = static_cast<uint16_t>(state_.star >> 48);
      state_.seg[kCs].selector = static_cast<uint16_t>((base + 16) | 3);
      state_.seg[kSs].selector = static_cast<uint16_t>((base + 8) | 3);
      state_.SetRflags((state_.gpr[11] & 0x3c'7fd7) | kFlagReserved1);
      SetCpl(3);
      next_rip_ = state_.gpr[kRegRcx];
      interrupt_check_ = true;
      return Flow::kNext;
    }
    case Op::kSwapgs:
      if (!cpl0) return gp0();
      std::swap(state_.seg[kGs].base, state_.kernel_gs_base);
      return Flow::kNext;
    case Op::kRdmsr:
    case Op::kWrmsr: {
      if (!cpl0) return gp0();
      const uint32_t msr = static_cast<uint32_t>(state_.gpr[kRegRcx]);
      if (in.op == Op::kRdmsr) {
        if (!ReadMsr(msr, &v)) {
          counters_.Inc(InterpreterCounters::kUnknownMsrs);
          if (unimplemented_logged_ < 16) {
            ++unimplemented_logged_;
            LOG(WARNING) << absl::StrFormat("soft cpu: #GP on rdmsr %#x", msr);
          }
          return gp0();
        }
        state_.WriteReg(kRegRax, 4, v & 0xffff'ffff);
        state_.WriteReg(kRegRdx, 4, v >> 32);
      } else {
        v = (state_.gpr[kRegRdx] << 32) | (state_.gpr[kRegRax] & 0xffff'ffff);
        if (!WriteMsr(msr, v)) {
          counters_.Inc(InterpreterCounters::kUnknownMsrs);
          if (unimplemented_logged_ < 16) {
            ++unimplemented_logged_;
            LOG(WARNING) << absl::StrFormat("soft cpu: #GP on wrmsr %#x value %#x", msr, v);
          }
          return gp0();
        }
      }
      return Flow::kNext;
    }
    case Op::kMovToCr:
      if (!cpl0) return gp0();
      if (!WriteCr(in.dst.reg, state_.gpr[in.src.reg])) return Flow::kStop;
      return Flow::kNext;
    case Op::kMovFromCr: {
      if (!cpl0) return gp0();
      switch (in.src.reg) {
        case 0: v = state_.cr0; break;
        case 2: v = state_.cr2; break;
        case 3: v = state_.cr3; break;
        case 4: v = state_.cr4; break;
        default: v = platform_ != nullptr ? platform_->ReadCr8() : state_.cr8; break;
      }
      state_.gpr[in.dst.reg] = v;
      return Flow::kNext;
    }
    case Op::kClts:
      if (!cpl0) return gp0();
      state_.cr0 &= ~kCr0Ts;
      return Flow::kNext;
    case Op::kWbinvd:
    case Op::kInvd:
      if (!cpl0) return gp0();
      return Flow::kNext;  // caches are coherent here
    case Op::kInvlpg:
      if (!cpl0) return gp0();
      counters_.Inc(InterpreterCounters::kInvlpgs);
      BreakChains();  // a link may lead into the page
      strategy_->OnInvlpg(vcpu_, EffectiveAddress(in));
      return Flow::kNext;
    case Op::kLgdt:
    case Op::kLidt: {
      if (!cpl0) return gp0();
      const uint64_t addr = EffectiveAddress(in);
      uint64_t limit = 0, base = 0;
      if (!Read(addr, 2, &limit) || !Read(addr + 2, 8, &base)) return Flow::kStop;
      DescriptorTableReg& reg = in.op == Op::kLgdt ? state_.gdtr : state_.idtr;
      reg.base = base;
      reg.limit = static_cast<uint16_t>(limit);
      return Flow::kNext;
    }
    case Op::kSgdt:
    case Op::kSidt: {
      // UMIP is not offered, so these work at any CPL.
      const uint64_t addr = EffectiveAddress(in);
      const DescriptorTableReg& reg = in.op == Op::kSgdt ? state_.gdtr : state_.idtr;
      if (!Write(addr, 2, reg.limit) || !Write(addr + 2, 8, reg.base)) return Flow::kStop;
      return Flow::kNext;
    }
    case Op::kLldt:
      if (!cpl0) return gp0();
      if (!ReadOperand(in, in.src, 2, &v)) return Flow::kStop;
      // Only the null selector: this CPU has no LDT (documented).
      if ((v & ~3u) != 0) return RaiseException(kVectorGp, true, static_cast<uint32_t>(v & ~3u));
      state_.ldtr = static_cast<uint16_t>(v);
      return Flow::kNext;
    case Op::kLtr: {
      // §7.2.4: a 16-byte available 64-bit TSS descriptor, marked busy.
      if (!cpl0) return gp0();
      if (!ReadOperand(in, in.src, 2, &v)) return Flow::kStop;
      const uint16_t sel = static_cast<uint16_t>(v);
      if ((sel & ~3u) == 0) return gp0();
      uint64_t lo = 0, hi = 0;
      if (!ReadDescriptor(sel, &lo)) return Flow::kStop;
      if ((sel & ~7u) + 15 > state_.gdtr.limit) return RaiseException(kVectorGp, true, sel & ~3u);
      const uint64_t addr = state_.gdtr.base + (sel & ~7u);
      if (!ReadSystem(addr + 8, 8, &hi)) return Flow::kStop;
      if ((lo & kDescCodeData) || DescType(lo) != kTypeTssAvailable) {
        return RaiseException(kVectorGp, true, sel & ~3u);
      }
      if (!(lo & kDescPresent)) return RaiseException(kVectorNp, true, sel & ~3u);
      if (!WriteSystem(addr, 8, lo | (uint64_t{kTypeTssBusy ^ kTypeTssAvailable} << 40))) {
        return Flow::kStop;
      }
      state_.tr = sel;
      state_.tr_base = DescBase32(lo) | (hi << 32);
      state_.tr_limit = DescLimit(lo);
      return Flow::kNext;
    }
    case Op::kSldt:
    case Op::kStr:
      if (!WriteOperand(in, in.dst, in.operand_size,
                        in.op == Op::kSldt ? state_.ldtr : state_.tr)) {
        return Flow::kStop;
      }
      return Flow::kNext;
    case Op::kMovToSreg: {
      if (!ReadOperand(in, in.src, 2, &v)) return Flow::kStop;
      if (!LoadDataSegment(in.dst.reg, static_cast<uint16_t>(v))) return Flow::kStop;
      if (in.dst.reg == kSs) {
        // MOV SS holds off interrupts for one instruction (§6.8.3).
        state_.interrupt_shadow = true;
        interrupt_check_ = true;
      }
      return Flow::kNext;
    }
    case Op::kMovFromSreg:
      // A register destination gets the selector zero-extended to the
      // operand size; memory gets 16 bits.
      if (!WriteOperand(in, in.dst, in.operand_size, state_.seg[in.src.reg].selector)) {
        return Flow::kStop;
      }
      return Flow::kNext;
    default:
      return Unimplemented(in);
  }
}

}  // namespace cpu

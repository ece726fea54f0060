// Names and text for decoded instructions. Not on the hot path: used for #UD
// logs, test failure messages and the objdump cross-check, so it favours
// matching objdump's Intel syntax over speed. Uses only the standard library so
// the decoder fuzzer can be built without the project's dependencies.
#include "cpu/insn.h"

#include <cinttypes>
#include <cstdio>

namespace cpu {
namespace {

constexpr const char* kOpNames[] = {
#define CPU_OP_NAME(name, mnemonic, attrs) mnemonic,
    CPU_OP_LIST(CPU_OP_NAME)
#undef CPU_OP_NAME
};
static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == static_cast<size_t>(Op::kNumOps));

// Condition-code suffixes as objdump prints them (SDM Vol. 1 Appendix B).
constexpr const char* kCondNames[16] = {"o", "no", "b",  "ae", "e", "ne", "be", "a",
                                        "s", "ns", "p",  "np", "l", "ge", "le", "g"};

constexpr const char* kReg64[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                    "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
constexpr const char* kReg32[16] = {"eax", "ecx", "edx",  "ebx",  "esp",  "ebp",  "esi",  "edi",
                                    "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d"};
constexpr const char* kReg16[16] = {"ax",  "cx",  "dx",   "bx",   "sp",   "bp",   "si",   "di",
                                    "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w", "r15w"};
constexpr const char* kReg8[20] = {"al",  "cl",  "dl",   "bl",   "spl",  "bpl",  "sil",
                                   "dil", "r8b", "r9b",  "r10b", "r11b", "r12b", "r13b",
                                   "r14b", "r15b", "ah", "ch",  "dh",   "bh"};
constexpr const char* kSregNames[6] = {"es", "cs", "ss", "ds", "fs", "gs"};

const char* RegName(uint8_t reg, int size) {
  if (size == 1) return reg < 20 ? kReg8[reg] : "?";
  if (reg >= 16) return "?";
  switch (size) {
    case 2: return kReg16[reg];
    case 4: return kReg32[reg];
    default: return kReg64[reg];
  }
}

const char* SizeKeyword(int size) {
  switch (size) {
    case 1: return "byte";
    case 2: return "word";
    case 4: return "dword";
    case 8: return "qword";
    case 16: return "xmmword";
    default: return "?";
  }
}

void AppendHex(std::string* s, uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
  *s += buf;
}

// Signed offset: "+0x10" / "-0x10".
void AppendSignedHex(std::string* s, int64_t v) {
  if (v < 0) {
    *s += '-';
    AppendHex(s, static_cast<uint64_t>(0) - static_cast<uint64_t>(v));
  } else {
    *s += '+';
    AppendHex(s, static_cast<uint64_t>(v));
  }
}

uint64_t Truncate(int64_t v, int size) {
  if (size >= 8) return static_cast<uint64_t>(v);
  return static_cast<uint64_t>(v) & ((uint64_t{1} << (8 * size)) - 1);
}

// Ops whose memory operand is an address, not a sized datum.
bool IsAddressOnly(Op op) {
  switch (op) {
    case Op::kLea: case Op::kLgdt: case Op::kLidt: case Op::kSgdt: case Op::kSidt:
    case Op::kInvlpg:
      return true;
    default:
      return false;
  }
}

void AppendMem(std::string* s, const DecodedInsn& insn, int size) {
  if (!IsAddressOnly(insn.op)) {
    *s += SizeKeyword(size);
    *s += " ptr ";
  }
  if (insn.segment == Segment::kFs) *s += "fs:";
  if (insn.segment == Segment::kGs) *s += "gs:";
  const MemOperand& m = insn.mem;
  const int asz = insn.address_size;
  if (m.base == kBaseAbs64) {
    *s += '[';
    AppendHex(s, static_cast<uint64_t>(insn.imm));
    *s += ']';
    return;
  }
  *s += '[';
  bool any = false;
  if (m.base == kBaseRip) {
    *s += asz == 4 ? "eip" : "rip";
    any = true;
  } else if (m.base != kRegNone) {
    *s += RegName(m.base, asz);
    any = true;
  }
  if (m.index != kRegNone) {
    if (any) *s += '+';
    *s += RegName(m.index, asz);
    *s += '*';
    *s += static_cast<char>('0' + (1 << m.scale_log2));
    any = true;
  }
  if (!any) {
    AppendHex(s, Truncate(m.disp, asz));
  } else if (m.disp != 0) {
    AppendSignedHex(s, m.disp);
  }
  *s += ']';
}

void AppendOperand(std::string* s, const DecodedInsn& insn, const Operand& op, int size) {
  switch (op.kind) {
    case OperandKind::kNone: break;
    case OperandKind::kReg: *s += RegName(op.reg, size); break;
    case OperandKind::kMem: AppendMem(s, insn, size); break;
    case OperandKind::kImm: AppendHex(s, Truncate(insn.imm, size)); break;
    case OperandKind::kCr:
      *s += "cr";
      *s += std::to_string(op.reg);
      break;
    case OperandKind::kSreg: *s += op.reg < 6 ? kSregNames[op.reg] : "?"; break;
  }
}

bool IsRelativeBranch(Op op) {
  switch (op) {
    case Op::kJcc: case Op::kJmp: case Op::kCall: case Op::kLoop: case Op::kLoope:
    case Op::kLoopne: case Op::kJrcxz:
      return true;
    default:
      return false;
  }
}

}  // namespace

const char* OpName(Op op) noexcept {
  const size_t i = static_cast<size_t>(op);
  return i < static_cast<size_t>(Op::kNumOps) ? kOpNames[i] : "(bad op)";
}

std::string Mnemonic(const DecodedInsn& insn) {
  std::string m;
  if (insn.prefixes & kPrefixLock) m = "lock ";
  const bool rep = (insn.prefixes & kPrefixRep) != 0;
  const bool repne = (insn.prefixes & kPrefixRepne) != 0;
  if (repne) {
    m += "repnz ";
  } else if (rep) {
    m += (insn.op == Op::kCmps || insn.op == Op::kScas) ? "repz " : "rep ";
  }
  const int size = insn.operand_size;
  const char* cc = kCondNames[insn.cond & 15];
  switch (insn.op) {
    case Op::kJcc: return m + "j" + cc;
    case Op::kSetcc: return m + "set" + cc;
    case Op::kCmovcc: return m + "cmov" + cc;
    case Op::kMov:
      if ((insn.prefixes & kEncodedImm64) ||
          (insn.mem.base == kBaseAbs64 && insn.address_size == 8 &&
           (insn.dst.kind == OperandKind::kMem || insn.src.kind == OperandKind::kMem))) {
        return m + "movabs";
      }
      return m + "mov";
    case Op::kCbw: return m + (size == 2 ? "cbw" : size == 4 ? "cwde" : "cdqe");
    case Op::kCwd: return m + (size == 2 ? "cwd" : size == 4 ? "cdq" : "cqo");
    case Op::kPush:
      return m + (size == 2 && insn.src.kind == OperandKind::kImm ? "pushw" : "push");
    case Op::kEnter: return m + (size == 2 ? "enterw" : "enter");
    case Op::kLeave: return m + (size == 2 ? "leavew" : "leave");
    case Op::kPushf: return m + (size == 2 ? "pushfw" : "pushf");
    case Op::kPopf: return m + (size == 2 ? "popfw" : "popf");
    case Op::kIret: return m + (size == 2 ? "iretw" : size == 4 ? "iret" : "iretq");
    case Op::kRetFar: return m + (size == 2 ? "retfw" : size == 4 ? "retf" : "retfq");
    case Op::kSysret: return m + (size == 8 ? "sysretq" : "sysretd");
    case Op::kJrcxz: return m + (insn.address_size == 4 ? "jecxz" : "jrcxz");
    case Op::kCmpxchg8b: return m + (size == 16 ? "cmpxchg16b" : "cmpxchg8b");
    default: return m + OpName(insn.op);
  }
}

std::string Disassemble(const DecodedInsn& insn) {
  std::string s = Mnemonic(insn);
  if (insn.op == Op::kInvalid) return s;
  if (IsRelativeBranch(insn.op)) {
    // Relative to this instruction, as GAS reads ".": target = . + length + imm.
    s += " .";
    AppendSignedHex(&s, static_cast<int64_t>(insn.length) + insn.imm);
    return s;
  }
  const int size = insn.operand_size;
  int dst_size = size;
  int src_size = insn.src_size != 0 ? insn.src_size : size;
  int src2_size = size;
  switch (insn.op) {
    case Op::kRol: case Op::kRor: case Op::kRcl: case Op::kRcr: case Op::kShl: case Op::kShr:
    case Op::kSar:
      src_size = 1;  // imm8, 1 or CL.
      break;
    case Op::kBt: case Op::kBts: case Op::kBtr: case Op::kBtc:
      if (insn.src.kind == OperandKind::kImm) src_size = 1;
      break;
    case Op::kShld: case Op::kShrd: src2_size = 1; break;
    case Op::kIn: src_size = 2; break;
    case Op::kOut: dst_size = 2; break;
    case Op::kEnter: {
      s += ' ';
      AppendHex(&s, static_cast<uint64_t>(insn.imm));
      s += ", ";
      AppendHex(&s, insn.enter_level);
      return s;
    }
    case Op::kRet: case Op::kRetFar:
      if (insn.imm != 0) {
        s += ' ';
        AppendHex(&s, static_cast<uint64_t>(insn.imm));
      }
      return s;
    case Op::kInt:
      s += ' ';
      AppendHex(&s, static_cast<uint64_t>(insn.imm));
      return s;
    default: break;
  }
  if (insn.op == Op::kIn && insn.src.kind == OperandKind::kImm) src_size = 1;
  if (insn.op == Op::kOut && insn.dst.kind == OperandKind::kImm) dst_size = 1;
  const Operand* ops[3] = {&insn.dst, &insn.src, &insn.src2};
  const int sizes[3] = {dst_size, src_size, src2_size};
  bool first = true;
  for (int i = 0; i < 3; ++i) {
    if (ops[i]->kind == OperandKind::kNone) continue;
    s += first ? " " : ", ";
    first = false;
    AppendOperand(&s, insn, *ops[i], sizes[i]);
  }
  return s;
}

}  // namespace cpu

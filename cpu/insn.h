// DecodedInsn: one decoded x86-64 instruction, the unit the soft CPU's
// interpreter executes and the per-page decode cache stores.
//
// The decoder (cpu/decoder.h) turns bytes into a DecodedInsn; the interpreter
// switches on `op` and reads the operand fields. A DecodedInsn is
// self-contained: it never points back at the guest's bytes, so a cached block
// stays valid until the code page is written (the cache's job, not ours).
//
// Operand model. Every explicit operand of the instruction is one of `dst`,
// `src`, `src2` (the Intel operand order: dst is the operand the instruction
// writes, or the first operand of CMP/TEST/BT and friends). Implicit operands
// (rAX/rDX of MUL/DIV/CWD, rSI/rDI/rCX of string instructions, the stack of
// PUSH/POP/CALL/RET) are not listed: the op implies them. At most one operand
// is memory (kMem); its address is in `mem`. At most one is an immediate
// (kImm); its value is in `imm`. Per-op conventions are documented on `Op`.
//
// Thread safety: plain data; the functions below are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cpu {

// X(name, mnemonic, attributes). The mnemonic is objdump's Intel-syntax name
// for the common form; Mnemonic() refines it by size and prefixes.
//
// Attributes: kLockable: LOCK is allowed (with a memory destination; SDM Vol. 2
// §2.1.1, LOCK prefix: anything else is #UD). kEndsBlock: block decode stops
// after it (control transfer, or a change of mode, of translation, of
// interrupt state, or an exit to the VMM). kString: REP/REPE/REPNE apply.
#define CPU_OP_LIST(X)                                                        \
  X(Invalid, "(bad)", kEndsBlock)                                             \
  /* Integer ALU: dst op= src. CMP/TEST only set flags. */                    \
  X(Add, "add", kLockable) X(Or, "or", kLockable) X(Adc, "adc", kLockable)    \
  X(Sbb, "sbb", kLockable) X(And, "and", kLockable) X(Sub, "sub", kLockable)  \
  X(Xor, "xor", kLockable) X(Cmp, "cmp", 0) X(Test, "test", 0)                \
  /* Unary on dst. */                                                         \
  X(Inc, "inc", kLockable) X(Dec, "dec", kLockable) X(Neg, "neg", kLockable)  \
  X(Not, "not", kLockable)                                                    \
  /* One-operand multiply/divide: src is the r/m operand; rAX (and rDX, or  */ \
  /* AH for bytes) are implicit.                                            */ \
  X(Mul, "mul", 0) X(Imul1, "imul", 0) X(Div, "div", 0) X(Idiv, "idiv", 0)    \
  /* IMUL dst, src (0F AF) and IMUL dst, src, imm (69/6B; src2 = kImm). */    \
  X(Imul2, "imul", 0) X(Imul3, "imul", 0)                                     \
  /* Shifts/rotates: dst by src (kImm count, 1 for D0/D1, or CL). */          \
  X(Rol, "rol", 0) X(Ror, "ror", 0) X(Rcl, "rcl", 0) X(Rcr, "rcr", 0)         \
  X(Shl, "shl", 0) X(Shr, "shr", 0) X(Sar, "sar", 0)                          \
  /* SHLD/SHRD dst, src, src2 (kImm or CL). */                                \
  X(Shld, "shld", 0) X(Shrd, "shrd", 0)                                       \
  /* Bit tests: dst is the bit base, src the offset (register or imm8). */   \
  X(Bt, "bt", 0) X(Bts, "bts", kLockable) X(Btr, "btr", kLockable)           \
  X(Btc, "btc", kLockable)                                                    \
  /* BSF/BSR dst, src. F3 0F BC/BD (TZCNT/LZCNT) decode as these: our CPUID */ \
  /* reports neither BMI1 nor LZCNT, and such a CPU ignores the F3 prefix.  */ \
  X(Bsf, "bsf", 0) X(Bsr, "bsr", 0)                                           \
  /* Moves. MOVZX/MOVSX/MOVSXD read src_size bytes. MOV with a kMem operand */ \
  /* whose base is kBaseAbs64 is MOVABS A0-A3 (address in imm).             */ \
  X(Mov, "mov", 0) X(Movzx, "movzx", 0) X(Movsx, "movsx", 0)                  \
  X(Movsxd, "movsxd", 0) X(Lea, "lea", 0)                                     \
  /* XCHG dst, src (locked implicitly when one is memory). */                 \
  X(Xchg, "xchg", kLockable)                                                  \
  /* CMPXCHG dst, src (rAX implicit); XADD dst, src. */                       \
  X(Cmpxchg, "cmpxchg", kLockable) X(Xadd, "xadd", kLockable)                 \
  /* CMPXCHG8B (operand_size 8) / CMPXCHG16B (16) on dst (memory). */        \
  X(Cmpxchg8b, "cmpxchg8b", kLockable)                                        \
  X(Bswap, "bswap", 0)                                                        \
  /* cond: the 4-bit condition code (SDM Vol. 1 Appendix B), low nibble    */ \
  /* of the opcode. CMOVcc dst, src; SETcc dst (byte).                      */ \
  X(Cmovcc, "cmov", 0) X(Setcc, "set", 0)                                     \
  /* Relative branches: target = rip + length + imm. */                       \
  X(Jcc, "j", kEndsBlock) X(Jmp, "jmp", kEndsBlock) X(Call, "call", kEndsBlock) \
  X(Loop, "loop", kEndsBlock) X(Loope, "loope", kEndsBlock)                   \
  X(Loopne, "loopne", kEndsBlock) X(Jrcxz, "jrcxz", kEndsBlock)              \
  /* Indirect branches: target read from src. */                              \
  X(JmpIndirect, "jmp", kEndsBlock) X(CallIndirect, "call", kEndsBlock)       \
  /* RET/RETF: imm = extra bytes to pop (0 for C3/CB). RETF pops          */ \
  /* operand_size-sized RIP and CS (48 CB is retfq).                       */ \
  X(Ret, "ret", kEndsBlock) X(RetFar, "retf", kEndsBlock)                     \
  /* Stack: PUSH src, POP dst; operand_size is 8 (or 2 with 66). */           \
  X(Push, "push", 0) X(Pop, "pop", 0) X(Pushf, "pushf", 0)                    \
  X(Popf, "popf", kEndsBlock) X(Leave, "leave", 0)                            \
  /* ENTER: imm = frame size (imm16), enter_level = nesting level (imm8). */ \
  X(Enter, "enter", 0)                                                        \
  /* CBW/CWDE/CDQE and CWD/CDQ/CQO by operand_size. */                        \
  X(Cbw, "cbw", 0) X(Cwd, "cwd", 0)                                           \
  /* String instructions; operand_size is the element size, address_size  */ \
  /* picks rSI/rDI/rCX; prefixes say REP/REPE (kPrefixRep) or REPNE.        */ \
  X(Movs, "movs", kString) X(Stos, "stos", kString) X(Lods, "lods", kString)  \
  X(Cmps, "cmps", kString) X(Scas, "scas", kString)                           \
  X(Ins, "ins", kString | kEndsBlock) X(Outs, "outs", kString | kEndsBlock)   \
  /* IN dst(rAX), src(port: kImm or DX); OUT dst(port), src(rAX). */          \
  X(In, "in", kEndsBlock) X(Out, "out", kEndsBlock)                           \
  /* Flag instructions. */                                                    \
  X(Cld, "cld", 0) X(Std, "std", 0) X(Cli, "cli", kEndsBlock)                 \
  X(Sti, "sti", kEndsBlock) X(Clc, "clc", 0) X(Stc, "stc", 0) X(Cmc, "cmc", 0) \
  X(Sahf, "sahf", 0) X(Lahf, "lahf", 0)                                       \
  /* NOP: 90, 0F 1F /r and the hint-NOP space 0F 0D, 0F 18-1E (prefetch,  */ \
  /* endbr64): may carry a memory operand that is never accessed.          */ \
  X(Nop, "nop", 0) X(Pause, "pause", 0)                                       \
  X(Hlt, "hlt", kEndsBlock) X(Cpuid, "cpuid", 0) X(Rdtsc, "rdtsc", 0)         \
  X(Rdtscp, "rdtscp", 0) X(Rdmsr, "rdmsr", 0) X(Wrmsr, "wrmsr", kEndsBlock)   \
  /* MOV to/from control registers: the CR is a kCr operand (0,2,3,4,8). */  \
  X(MovToCr, "mov", kEndsBlock) X(MovFromCr, "mov", 0)                        \
  /* MOV to/from segment registers: a kSreg operand (ES=0 .. GS=5). */        \
  X(MovToSreg, "mov", kEndsBlock) X(MovFromSreg, "mov", 0)                    \
  /* Descriptor tables: the memory operand is dst (SGDT/SIDT) or src. */      \
  X(Invlpg, "invlpg", kEndsBlock) X(Lgdt, "lgdt", kEndsBlock)                 \
  X(Lidt, "lidt", kEndsBlock) X(Lldt, "lldt", kEndsBlock)                     \
  X(Ltr, "ltr", kEndsBlock) X(Sgdt, "sgdt", 0) X(Sidt, "sidt", 0)             \
  X(Sldt, "sldt", 0) X(Str, "str", 0)                                         \
  X(Clts, "clts", kEndsBlock) X(Wbinvd, "wbinvd", 0) X(Invd, "invd", 0)       \
  /* IRET pops operand_size-sized frames (48 CF is iretq). SYSRET returns */ \
  /* to 64-bit mode when operand_size is 8 (48 0F 07, sysretq).           */ \
  X(Iret, "iret", kEndsBlock) X(Syscall, "syscall", kEndsBlock)               \
  X(Sysret, "sysret", kEndsBlock) X(Swapgs, "swapgs", kEndsBlock)             \
  /* INT3, INT imm8 (vector in imm), UD2 (always #UD, but not "unknown"). */ \
  X(Int3, "int3", kEndsBlock) X(Int, "int", kEndsBlock)                       \
  X(Ud2, "ud2", kEndsBlock)                                                   \
  X(Lfence, "lfence", 0) X(Mfence, "mfence", 0) X(Sfence, "sfence", 0)

// One value per operation the interpreter implements.
enum class Op : uint16_t {
#define CPU_OP_ENUM(name, mnemonic, attrs) k##name,
  CPU_OP_LIST(CPU_OP_ENUM)
#undef CPU_OP_ENUM
      kNumOps
};

// Op attribute bits (see CPU_OP_LIST).
inline constexpr uint8_t kLockable = 1 << 0;
inline constexpr uint8_t kEndsBlock = 1 << 1;
inline constexpr uint8_t kString = 1 << 2;

namespace internal {
inline constexpr uint8_t kOpAttributes[] = {
#define CPU_OP_ATTRS(name, mnemonic, attrs) static_cast<uint8_t>(attrs),
    CPU_OP_LIST(CPU_OP_ATTRS)
#undef CPU_OP_ATTRS
};
}  // namespace internal

constexpr uint8_t OpAttributes(Op op) noexcept {
  return static_cast<size_t>(op) < static_cast<size_t>(Op::kNumOps)
             ? internal::kOpAttributes[static_cast<size_t>(op)]
             : kEndsBlock;
}
// True if block decode must stop after `op`: the next instruction's address
// or the machine state it runs under is not known until `op` has executed.
constexpr bool EndsBlock(Op op) noexcept { return (OpAttributes(op) & kEndsBlock) != 0; }

// The op's base name ("add", "j" for Jcc, "cmov" for CMOVcc), never null.
const char* OpName(Op op) noexcept;

// What an operand is.
enum class OperandKind : uint8_t {
  kNone = 0,
  kReg,   // General register `reg` (see the register numbering below).
  kMem,   // Memory at DecodedInsn::mem.
  kImm,   // Immediate DecodedInsn::imm.
  kCr,    // Control register CR`reg` (MOV to/from CR only).
  kSreg,  // Segment register `reg`: ES=0, CS=1, SS=2, DS=3, FS=4, GS=5.
};

// General register numbering for kReg operands and memory base/index: 0..15 are
// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (the ModRM/REX encoding,
// SDM Vol. 2 §2.2.1.2, Table 2-4), used at the width of the operand. For byte
// operands without a REX prefix, encodings 4..7 mean AH, CH, DH, BH (SDM Vol. 2
// §2.2.1.2, "Byte-register addressing"); the decoder maps those to 16..19 so
// the interpreter never needs to know whether a REX prefix was present.
inline constexpr uint8_t kRegRax = 0;
inline constexpr uint8_t kRegRcx = 1;
inline constexpr uint8_t kRegRdx = 2;
inline constexpr uint8_t kRegRsp = 4;
inline constexpr uint8_t kRegAh = 16;  // AH, CH, DH, BH = 16..19: byte 1 of reg - 16.
inline constexpr uint8_t kRegCh = 17;
inline constexpr uint8_t kRegDh = 18;
inline constexpr uint8_t kRegBh = 19;
// Memory base values beyond the registers.
inline constexpr uint8_t kBaseRip = 16;    // RIP-relative: base is the NEXT rip (rip + length).
inline constexpr uint8_t kBaseAbs64 = 17;  // MOVABS moffs: the address is `imm` (no disp).
inline constexpr uint8_t kRegNone = 0xff;  // No base / no index.

// Segment override (SDM Vol. 2 §2.1.1): in 64-bit mode only FS and GS add a
// base; CS/DS/ES/SS overrides are accepted and ignored (SDM Vol. 1 §3.4.2.1).
enum class Segment : uint8_t { kNone = 0, kFs, kGs };

// DecodedInsn::prefixes bits.
// F0, validated: only on kLockable ops with a memory destination.
inline constexpr uint8_t kPrefixLock = 1 << 0;
// F3 on a string op: REP (MOVS/STOS/LODS/INS/OUTS) or REPE (CMPS/SCAS).
inline constexpr uint8_t kPrefixRep = 1 << 1;
// F2 on a string op: REPNE (CMPS/SCAS), plain REP on the others.
inline constexpr uint8_t kPrefixRepne = 1 << 2;
// Not a prefix but an encoding detail kept for Mnemonic(): the immediate was
// encoded as 64 bits (MOV r64, imm64, objdump's "movabs"). No semantic effect.
inline constexpr uint8_t kEncodedImm64 = 1 << 7;

struct Operand {
  OperandKind kind = OperandKind::kNone;
  uint8_t reg = 0;  // kReg/kCr/kSreg: the register number (see above).
};

// The memory operand. Effective address (before the segment base):
//   (base == kBaseRip ? rip + length : base == kRegNone ? 0 : reg[base])
//   + (index == kRegNone ? 0 : reg[index] << scale_log2) + disp,
// truncated to address_size bytes; or, when base == kBaseAbs64, just imm.
struct MemOperand {
  uint8_t base = kRegNone;   // 0..15, kBaseRip, kBaseAbs64 or kRegNone.
  uint8_t index = kRegNone;  // 0..15 or kRegNone (RSP can never be an index).
  uint8_t scale_log2 = 0;    // SIB.ss: index scaled by 1 << scale_log2.
  uint8_t reserved = 0;
  int32_t disp = 0;  // disp8 or disp32, sign-extended; 0 if none.
};

// One decoded instruction. 32 bytes, so two fit in a cache line and a 64-entry
// block is 2 KiB.
struct DecodedInsn {
  Op op = Op::kInvalid;
  uint8_t length = 0;        // Bytes, 1..15. For kInvalid: bytes examined (>= 1).
  uint8_t operand_size = 0;  // 1, 2, 4 or 8 (16 for CMPXCHG16B): the width of dst/src.
  uint8_t address_size = 8;  // 8, or 4 with the 67 prefix (SDM Vol. 2 §2.2.1.3): width of
                             // the effective address, of rSI/rDI/rCX in string ops and
                             // LOOP/JRCXZ.
  uint8_t prefixes = 0;      // kPrefix* bits that change semantics (others are dropped),
                             // plus kEncodedImm64.
  Segment segment = Segment::kNone;  // FS/GS override, for the memory operand(s).
  uint8_t cond = 0;          // Jcc/SETcc/CMOVcc: condition code 0..15 (O, NO, B, AE, E, NE,
                             // BE, A, S, NS, P, NP, L, GE, LE, G).
  Operand dst;               // Written (or first) operand.
  Operand src;               // Source (second) operand.
  Operand src2;              // Third operand (IMUL3 imm, SHLD/SHRD count).
  uint8_t src_size = 0;      // Width of src for MOVZX/MOVSX/MOVSXD/MOV Sreg (else operand_size).
  uint8_t enter_level = 0;   // ENTER's nesting level (imm8).
  MemOperand mem;            // Valid when an operand is kMem.
  // The immediate: arithmetic immediates (ALU, MOV, PUSH, TEST, IMUL) are
  // sign-extended to 64 bits as the SDM defines for the instruction (and
  // truncated by the interpreter to operand_size); unsigned ones (shift counts,
  // port numbers, INT vector, RET/ENTER sizes) are zero-extended. For relative
  // branches it is the displacement from the NEXT instruction. For MOVABS
  // moffs it is the 64-bit address.
  int64_t imm = 0;

  // The next instruction's address: RIP-relative addressing and relative
  // branches are relative to it (SDM Vol. 2 §2.2.1.6).
  uint64_t NextRip(uint64_t rip) const noexcept { return rip + length; }
  uint64_t BranchTarget(uint64_t rip) const noexcept {
    return rip + length + static_cast<uint64_t>(imm);
  }
};
static_assert(sizeof(DecodedInsn) == 32, "DecodedInsn must stay compact for the decode cache");

// objdump-style Intel mnemonic of the instruction: "cmova", "rep stos",
// "movabs", "retfq", "iretq", "cdqe", "lock xadd". Used by tests (checked
// against objdump on the guest image) and by Disassemble.
std::string Mnemonic(const DecodedInsn& insn);

// Intel-ish assembly text, e.g. "mov rax, qword ptr [rip+0x10]" or
// "jne .+0x12" (relative to the next instruction): for #UD logs and test
// failure messages. Not a hot path.
std::string Disassemble(const DecodedInsn& insn);

}  // namespace cpu

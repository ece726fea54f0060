// Lazy arithmetic flags for the software CPU.
//
// Why lazy: nearly every x86 integer instruction writes CF PF AF ZF SF OF, but
// almost none of those values are ever read. A typical guest stream is
// `cmp; jl`, `sub; jnz`, `test; je`, `add; ...; add; ...; cmp; jb`: each
// flag-writer is overwritten by the next before anything but a single
// condition is tested. So, as in QEMU's cc_op/cc_dst/cc_src and Bochs' lazy
// flags, a flag-setting instruction only records *what it did* (its operation
// kind, operand size, result and operands), and flags are derived when, and
// only as far as, they are read:
//   - Jcc/SETcc/CMOVcc call EvalCondition(), which for the common producers
//     (SUB/CMP/NEG, AND/OR/XOR/TEST, ADD, INC/DEC) answers from the recorded
//     operands directly: `jl` after `cmp a, b` is `int(a) < int(b)`, never a
//     build-up of SF and OF.
//   - PUSHF, LAHF, interrupt/exception delivery, and instructions that update
//     only some flags (BT*, BSF/BSR, rotates, RCL/RCR, SHLD/SHRD) call
//     Materialize() and continue from the materialised value (kind kEflags).
//   - INC/DEC preserve CF but write the rest (SDM Vol. 2 "INC", "DEC"): they
//     record CF in `carry_in` instead of materialising anything, so a loop of
//     `add; inc` never pays for flag computation.
//   - POPF/IRET/SYSRET/SAHF load the flags eagerly with LoadFromRflags().
//
// Layout (32 bytes, one cache-line quarter; copied by value in snapshots):
//   dst       the result of the last flag-setting operation, zero-extended
//             from its operand size; for kEflags: the materialised flag bits.
//   src1      the first operand (the destination's old value); see each kind.
//   src2      the second operand / shift count / overflow indicator.
//   kind      CcKind, what produced the flags.
//   size      the operand size in bytes: 1, 2, 4 or 8.
//   carry_in  CF going into ADC/SBB (0/1), and the CF kept by INC/DEC.
// Operands are stored zero-extended from the operand size so that unsigned
// comparisons need no masking; signed ones sign-extend with two shifts.
//
// How each kind derives the flags (W = operand width in bits, MSB = bit W-1;
// flag definitions from SDM Vol. 1 §3.4.3.1 and the Vol. 2 instruction pages):
//   kAdd  dst = a + b.           CF = dst < a.  OF = MSB((a ^ dst) & (b ^ dst)).
//   kAdc  dst = a + b + cin.     CF = cin ? dst <= a : dst < a.  OF as kAdd.
//   kSub  dst = a - b (SUB, CMP, NEG as 0 - b, CMPXCHG as acc - dest).
//                                CF = a < b.    OF = MSB((a ^ b) & (a ^ dst)).
//   kSbb  dst = a - b - cin.     CF = cin ? a <= b : a < b.  OF as kSub.
//         For all four, AF = bit 4 of (a ^ b ^ dst): the carry/borrow out of
//         bit 3 (SDM Vol. 1 §3.4.3.1).
//   kLogic AND/OR/XOR/TEST. CF = OF = 0 (defined). AF is undefined (SDM
//         "AND"); we produce 0, which is what Intel and AMD parts do.
//   kInc  dst = a + 1. CF = carry_in (preserved). OF = dst == 1 << (W-1).
//   kDec  dst = a - 1. CF = carry_in (preserved). OF = dst == (1 << (W-1)) - 1.
//         AF = bit 4 of (a ^ dst) for both.
//   kShl/kShr/kSar  src1 = a, src2 = masked count (never 0: a zero count
//         leaves the flags untouched and records nothing; SDM "SAL/SAR/SHL/SHR").
//         CF = the last bit shifted out. For SHL/SHR with count >= W the SDM
//         calls CF undefined; we shift in 64 bits, so CF is the bit that a wide
//         shift would have moved out (0 for SHL/SHR once count > W), which is
//         what the differential test found on the hosts we ran it on.
//         OF is defined only for count 1: SHL: MSB(dst) ^ CF; SHR: MSB(a);
//         SAR: 0. For count > 1 the SDM says undefined; we apply the count-1
//         rule to the last one-bit step, which gives SHL: MSB(dst) ^ CF,
//         SHR: 0, SAR: 0 (what the AMD EPYC host does; pinned by the
//         differential test). AF is undefined; we produce 0 (the AMD host
//         produces 1; the test does not compare it).
//   kMul  MUL/IMUL. src1 = 1 when the high half is significant (CF = OF = 1).
//         SF/ZF/AF/PF are undefined (SDM "MUL", "IMUL"); we derive SF/ZF/PF
//         from the low half and set AF = 0.
//   kEflags  dst holds the six arithmetic flags, already materialised.
// SF = MSB(dst), ZF = dst == 0, PF = even parity of dst's low byte, for every
// kind except kEflags.
//
// Thread safety: plain values, owned by one vCPU's interpreter.
#pragma once

#include <cstdint>
#include <string>

namespace cpu {

// RFLAGS bits (SDM Vol. 1 §3.4.3, Figure 3-8).
inline constexpr uint64_t kFlagCf = uint64_t{1} << 0;
inline constexpr uint64_t kFlagPf = uint64_t{1} << 2;
inline constexpr uint64_t kFlagAf = uint64_t{1} << 4;
inline constexpr uint64_t kFlagZf = uint64_t{1} << 6;
inline constexpr uint64_t kFlagSf = uint64_t{1} << 7;
inline constexpr uint64_t kFlagOf = uint64_t{1} << 11;
// The six status flags the ALU owns; everything else in RFLAGS (TF, IF, DF,
// IOPL, ...) belongs to the interpreter's RFLAGS register.
inline constexpr uint64_t kArithFlags = kFlagCf | kFlagPf | kFlagAf | kFlagZf | kFlagSf | kFlagOf;

// Condition codes: the low 4 bits of Jcc/SETcc/CMOVcc opcodes (SDM Vol. 1
// Appendix B, Table B-1). Odd codes are the negation of the even code below.
enum Condition : unsigned {
  kCondO = 0x0,   // OF = 1
  kCondNo = 0x1,
  kCondB = 0x2,   // CF = 1              (below / carry / NAE)
  kCondAe = 0x3,
  kCondE = 0x4,   // ZF = 1              (equal / zero)
  kCondNe = 0x5,
  kCondBe = 0x6,  // CF = 1 or ZF = 1    (below or equal / NA)
  kCondA = 0x7,
  kCondS = 0x8,   // SF = 1
  kCondNs = 0x9,
  kCondP = 0xA,   // PF = 1              (parity even)
  kCondNp = 0xB,
  kCondL = 0xC,   // SF != OF            (less / NGE)
  kCondGe = 0xD,
  kCondLe = 0xE,  // ZF = 1 or SF != OF  (less or equal / NG)
  kCondG = 0xF,
};

// What produced the current flags. See the header comment for each kind.
enum class CcKind : uint8_t {
  kEflags = 0,
  kAdd,
  kAdc,
  kSub,
  kSbb,
  kLogic,
  kInc,
  kDec,
  kShl,
  kShr,
  kSar,
  kMul,
};

struct LazyFlags {
  uint64_t dst = 0;
  uint64_t src1 = 0;
  uint64_t src2 = 0;
  CcKind kind = CcKind::kEflags;
  uint8_t size = 8;
  uint8_t carry_in = 0;
};
static_assert(sizeof(LazyFlags) <= 32, "LazyFlags must stay compact (copied per snapshot)");

namespace lazy_internal {

constexpr uint64_t SignBit(unsigned size_bytes) noexcept { return uint64_t{1} << (size_bytes * 8 - 1); }
constexpr int64_t SignExtend(uint64_t v, unsigned size_bytes) noexcept {
  const unsigned shift = 64 - size_bytes * 8;
  return static_cast<int64_t>(v << shift) >> shift;
}
// PF: set when the least-significant byte of the result has an even number of
// set bits (SDM Vol. 1 §3.4.3.1).
inline uint64_t Parity(uint64_t dst) noexcept {
  return __builtin_parity(static_cast<unsigned>(dst & 0xff)) ? 0 : kFlagPf;
}
// ZF, SF and PF from a result: common to every kind but kEflags.
inline uint64_t ResultFlags(uint64_t dst, unsigned size_bytes) noexcept {
  return (dst == 0 ? kFlagZf : 0) | ((dst & SignBit(size_bytes)) ? kFlagSf : 0) | Parity(dst);
}

inline uint64_t CarryFlag(const LazyFlags& f) noexcept {
  const uint64_t a = f.src1, b = f.src2, d = f.dst;
  switch (f.kind) {
    case CcKind::kEflags: return f.dst & kFlagCf;
    case CcKind::kAdd: return d < a;
    case CcKind::kAdc: return f.carry_in ? d <= a : d < a;
    case CcKind::kSub: return a < b;
    case CcKind::kSbb: return f.carry_in ? a <= b : a < b;
    case CcKind::kLogic: return 0;
    case CcKind::kInc:
    case CcKind::kDec: return f.carry_in;
    // b is in [1, 63]; a is zero-extended, so for SHL a wide shift left by
    // b - 1 puts the last bit out at MSB position W - 1 (or beyond, giving 0).
    case CcKind::kShl: return b - 1 < 64 ? ((a << (b - 1)) >> (f.size * 8 - 1)) & 1 : 0;
    case CcKind::kShr: return (a >> (b - 1)) & 1;
    case CcKind::kSar: return (static_cast<uint64_t>(SignExtend(a, f.size) >> (b - 1))) & 1;
    case CcKind::kMul: return a != 0;
  }
  return 0;
}

inline bool OverflowFlag(const LazyFlags& f) noexcept {
  const uint64_t a = f.src1, b = f.src2, d = f.dst, sign = SignBit(f.size);
  switch (f.kind) {
    case CcKind::kEflags: return f.dst & kFlagOf;
    case CcKind::kAdd:
    case CcKind::kAdc: return ((a ^ d) & (b ^ d) & sign) != 0;
    case CcKind::kSub:
    case CcKind::kSbb: return ((a ^ b) & (a ^ d) & sign) != 0;
    case CcKind::kLogic: return false;
    case CcKind::kInc: return d == sign;
    case CcKind::kDec: return d == sign - 1;
    case CcKind::kShl: return ((d & sign) != 0) != (CarryFlag(f) != 0);
    // The last one-bit step's OF: MSB of the operand before that step. This
    // is MSB(a) for count 1 and 0 for larger counts (pinned on the host).
    case CcKind::kShr: return b - 1 < 64 && ((a >> (b - 1)) & sign) != 0;
    case CcKind::kSar: return false;
    case CcKind::kMul: return a != 0;
  }
  return false;
}

inline uint64_t AuxFlag(const LazyFlags& f) noexcept {
  switch (f.kind) {
    case CcKind::kEflags: return f.dst & kFlagAf;
    case CcKind::kAdd:
    case CcKind::kAdc:
    case CcKind::kSub:
    case CcKind::kSbb: return (f.src1 ^ f.src2 ^ f.dst) & kFlagAf;
    case CcKind::kInc:
    case CcKind::kDec: return (f.src1 ^ f.dst) & kFlagAf;
    default: return 0;
  }
}

// Evaluates condition `cc` from materialised flags (SDM Vol. 1 Table B-1).
inline bool EvalFromRflags(uint64_t fl, unsigned cc) noexcept {
  const bool cf = fl & kFlagCf, zf = fl & kFlagZf, sf = fl & kFlagSf, of = fl & kFlagOf;
  bool r;
  switch ((cc >> 1) & 7) {
    case 0: r = of; break;
    case 1: r = cf; break;
    case 2: r = zf; break;
    case 3: r = cf || zf; break;
    case 4: r = sf; break;
    case 5: r = (fl & kFlagPf) != 0; break;
    case 6: r = sf != of; break;
    default: r = zf || (sf != of); break;
  }
  return r != (cc & 1);
}

}  // namespace lazy_internal

// Returns the six arithmetic flags of `f`, only those bits.
inline uint64_t MaterializeArith(const LazyFlags& f) noexcept {
  if (f.kind == CcKind::kEflags) return f.dst & kArithFlags;
  return lazy_internal::CarryFlag(f) | lazy_internal::AuxFlag(f) |
         lazy_internal::ResultFlags(f.dst, f.size) |
         (lazy_internal::OverflowFlag(f) ? kFlagOf : 0);
}

// Returns full RFLAGS: the arithmetic flags from `f`, every other bit from
// `rflags_other_bits` (whose CF PF AF ZF SF OF are ignored). For PUSHF, LAHF,
// interrupt delivery and snapshots.
inline uint64_t Materialize(const LazyFlags& f, uint64_t rflags_other_bits) noexcept {
  return (rflags_other_bits & ~kArithFlags) | MaterializeArith(f);
}

// Loads the arithmetic flags from an RFLAGS value (POPF, IRET, SYSRET, SAHF,
// state restore). Other bits of `rflags` are the caller's business.
inline void LoadFromRflags(LazyFlags* f, uint64_t rflags) noexcept {
  f->kind = CcKind::kEflags;
  f->dst = rflags & kArithFlags;
  f->src1 = f->src2 = 0;
  f->size = 8;
  f->carry_in = 0;
}

// Returns CF alone (ADC, SBB, RCL, RCR, INC/DEC bookkeeping, CMC). Cheap for
// every kind: no other flag is built.
inline uint64_t GetCarry(const LazyFlags& f) noexcept { return lazy_internal::CarryFlag(f); }

// Replaces the flags in `mask` with those in `bits` and keeps the rest: the
// path of instructions that write only some flags (BT*, BSF/BSR, rotates,
// SHLD/SHRD, CLC/STC/CMC). Materialises once.
[[gnu::always_inline]] inline void UpdateFlags(LazyFlags* f, uint64_t mask, uint64_t bits) noexcept {
  const uint64_t merged = (MaterializeArith(*f) & ~mask) | (bits & mask);
  LoadFromRflags(f, merged);
}

// Evaluates Jcc/SETcc/CMOVcc condition `cc` (0..15; SDM Vol. 1 Appendix B).
// The producers that dominate real code answer from their operands without
// building RFLAGS; everything else materialises.
//
// EvalConditionT<cc> is the same with the condition a compile-time constant:
// the interpreter's per-condition Jcc handlers use it so that only the
// switch on the flags' producer remains.
template <unsigned cc>
[[gnu::always_inline]] inline bool EvalConditionT(const LazyFlags& f) noexcept;

inline bool EvalCondition(const LazyFlags& f, unsigned cc) noexcept {
  using lazy_internal::SignExtend;
  const bool negate = cc & 1;
  switch (f.kind) {
    case CcKind::kSub: {
      // CMP/SUB/NEG: compare the operands as the guest wrote them.
      const uint64_t a = f.src1, b = f.src2;
      switch ((cc >> 1) & 7) {
        case 1: return (a < b) != negate;
        case 2: return (a == b) != negate;
        case 3: return (a <= b) != negate;
        case 6: return (SignExtend(a, f.size) < SignExtend(b, f.size)) != negate;
        case 7: return (SignExtend(a, f.size) <= SignExtend(b, f.size)) != negate;
        default: break;
      }
      break;
    }
    case CcKind::kLogic: {
      // CF = OF = 0, so B is never taken, BE is ZF, L is SF, LE is ZF | SF.
      const int64_t s = SignExtend(f.dst, f.size);
      switch ((cc >> 1) & 7) {
        case 0:
        case 1: return negate;
        case 2:
        case 3: return (s == 0) != negate;
        case 4:
        case 6: return (s < 0) != negate;
        case 7: return (s <= 0) != negate;
        default: break;
      }
      break;
    }
    case CcKind::kAdd:
    case CcKind::kInc:
    case CcKind::kDec:
    case CcKind::kShl:
    case CcKind::kShr:
    case CcKind::kSar:
    case CcKind::kMul:
    case CcKind::kAdc:
    case CcKind::kSbb: {
      // ZF and SF come straight from the result for every recorded kind.
      switch ((cc >> 1) & 7) {
        case 2: return (f.dst == 0) != negate;
        case 4: return ((f.dst & lazy_internal::SignBit(f.size)) != 0) != negate;
        case 1: return (lazy_internal::CarryFlag(f) != 0) != negate;
        default: break;
      }
      break;
    }
    case CcKind::kEflags: return lazy_internal::EvalFromRflags(f.dst, cc);
  }
  return lazy_internal::EvalFromRflags(MaterializeArith(f), cc);
}

namespace lazy_internal {
// The rare producers: materialise (kept out of line so the inlined fast
// paths stay small).
[[gnu::noinline]] inline bool EvalSlow(const LazyFlags& f, unsigned cc) noexcept {
  return EvalFromRflags(MaterializeArith(f), cc);
}
}  // namespace lazy_internal

template <unsigned cc>
inline bool EvalConditionT(const LazyFlags& f) noexcept {
  using lazy_internal::SignExtend;
  constexpr bool negate = cc & 1;
  constexpr unsigned kind = (cc >> 1) & 7;
  if (f.kind == CcKind::kSub) {
    const uint64_t a = f.src1, b = f.src2;
    if constexpr (kind == 1) return (a < b) != negate;
    if constexpr (kind == 2) return (a == b) != negate;
    if constexpr (kind == 3) return (a <= b) != negate;
    if constexpr (kind == 6) return (SignExtend(a, f.size) < SignExtend(b, f.size)) != negate;
    if constexpr (kind == 7) return (SignExtend(a, f.size) <= SignExtend(b, f.size)) != negate;
  } else if (f.kind == CcKind::kLogic) {
    const int64_t s = SignExtend(f.dst, f.size);
    if constexpr (kind == 0 || kind == 1) return negate;
    if constexpr (kind == 2 || kind == 3) return (s == 0) != negate;
    if constexpr (kind == 4 || kind == 6) return (s < 0) != negate;
    if constexpr (kind == 7) return (s <= 0) != negate;
  } else if (f.kind != CcKind::kEflags) {
    if constexpr (kind == 2) return (f.dst == 0) != negate;
    if constexpr (kind == 4) return ((f.dst & lazy_internal::SignBit(f.size)) != 0) != negate;
  } else {
    return lazy_internal::EvalFromRflags(f.dst, cc);
  }
  return lazy_internal::EvalSlow(f, cc);
}

// Debug text: "kind=sub size=4 dst=... src1=... src2=... cin=0 -> CF ZF".
std::string DescribeLazyFlags(const LazyFlags& f);
// The mnemonic suffix of a condition code ("o", "no", "b", ..., "g").
const char* ConditionName(unsigned cc);

}  // namespace cpu

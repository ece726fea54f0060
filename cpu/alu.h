// The integer ALU of the software CPU: x86 integer operations with exact flags.
//
// Every operation is an inline template over the operand size in bytes
// (kSizeBytes = 1, 2, 4 or 8). Inputs may carry junk above the operand size;
// results come back zero-extended from it. Writing a result back to a
// register (merge for 8/16-bit, zero-extend for 32-bit, SDM Vol. 1 §3.4.1.1)
// is the interpreter's job: use MergeIntoRegister().
//
// Flag-setting operations record themselves in a LazyFlags (lazy_flags.h) and
// never compute flags; operations that write only some flags (rotates, BT*,
// BSF/BSR, SHLD/SHRD) materialise once through UpdateFlags(). What each
// instruction defines and leaves undefined follows the SDM Vol. 2 instruction
// page named in each comment; where the SDM says "undefined" we state the value
// we produce, and alu_differential_test.cc pins it against the host CPU where
// the host is deterministic.
//
// Everything here is noexcept, allocation-free and safe on any guest input:
// a zero divisor or an overflowing quotient returns AluStatus::kDivideError,
// for the interpreter to inject #DE.
//
// Thread safety: pure functions of their arguments and the LazyFlags passed in.
#pragma once

#include <cstdint>

#include "cpu/lazy_flags.h"

namespace cpu {

// ---------------------------------------------------------------------------
// Size helpers.

template <int kSizeBytes>
inline constexpr bool kValidSize = kSizeBytes == 1 || kSizeBytes == 2 || kSizeBytes == 4 || kSizeBytes == 8;

template <int kSizeBytes>
constexpr uint64_t SizeMask() noexcept {
  static_assert(kValidSize<kSizeBytes>);
  return kSizeBytes == 8 ? ~uint64_t{0} : (uint64_t{1} << (kSizeBytes * 8)) - 1;
}
template <int kSizeBytes>
constexpr uint64_t SignBit() noexcept {
  return uint64_t{1} << (kSizeBytes * 8 - 1);
}
template <int kSizeBytes>
constexpr uint64_t Truncate(uint64_t v) noexcept {
  return v & SizeMask<kSizeBytes>();
}
// The low kSizeBytes of `v`, sign-extended to 64 bits (MOVSX, CBW family).
template <int kSizeBytes>
constexpr int64_t SignExtend(uint64_t v) noexcept {
  constexpr unsigned kShift = 64 - kSizeBytes * 8;
  return static_cast<int64_t>(v << kShift) >> kShift;
}
// The low kSizeBytes of `v`, zero-extended (MOVZX).
template <int kSizeBytes>
constexpr uint64_t ZeroExtend(uint64_t v) noexcept {
  return Truncate<kSizeBytes>(v);
}
// The register value after writing a kSizeBytes result into a register that
// held `old_reg`: 8- and 16-bit writes keep the upper bits, 32-bit writes
// zero-extend to 64, 64-bit writes replace (SDM Vol. 1 §3.4.1.1). AH/CH/DH/BH
// use MergeIntoHigh8().
template <int kSizeBytes>
constexpr uint64_t MergeIntoRegister(uint64_t old_reg, uint64_t value) noexcept {
  if constexpr (kSizeBytes >= 4) {
    return Truncate<kSizeBytes>(value);
  } else {
    return (old_reg & ~SizeMask<kSizeBytes>()) | Truncate<kSizeBytes>(value);
  }
}
constexpr uint64_t MergeIntoHigh8(uint64_t old_reg, uint64_t value) noexcept {
  return (old_reg & ~uint64_t{0xff00}) | ((value & 0xff) << 8);
}

namespace alu_internal {

template <int kSizeBytes>
inline void Record(LazyFlags* f, CcKind kind, uint64_t dst, uint64_t src1, uint64_t src2,
                   uint8_t carry_in = 0) noexcept {
  f->dst = dst;
  f->src1 = src1;
  f->src2 = src2;
  f->kind = kind;
  f->size = kSizeBytes;
  f->carry_in = carry_in;
}

// Shift and rotate counts are masked to 5 bits, or 6 bits for 64-bit operands
// (SDM Vol. 2 "SAL/SAR/SHL/SHR", "RCL/RCR/ROL/ROR", "SHLD", "SHRD").
template <int kSizeBytes>
constexpr unsigned MaskCount(uint64_t count) noexcept {
  return static_cast<unsigned>(count) & (kSizeBytes == 8 ? 0x3f : 0x1f);
}

inline uint64_t ResultFlags(uint64_t dst, unsigned size_bytes) noexcept {
  return lazy_internal::ResultFlags(dst, size_bytes);
}

}  // namespace alu_internal

// ---------------------------------------------------------------------------
// Add and subtract (SDM Vol. 2 "ADD", "ADC", "SUB", "SBB", "CMP", "NEG",
// "XADD"): OF SF ZF AF CF PF all defined.

template <int kSizeBytes>
inline uint64_t Add(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  a = Truncate<kSizeBytes>(a);
  b = Truncate<kSizeBytes>(b);
  const uint64_t r = Truncate<kSizeBytes>(a + b);
  alu_internal::Record<kSizeBytes>(f, CcKind::kAdd, r, a, b);
  return r;
}

// ADC: adds the current CF.
template <int kSizeBytes>
inline uint64_t Adc(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  const uint64_t cin = GetCarry(*f);
  a = Truncate<kSizeBytes>(a);
  b = Truncate<kSizeBytes>(b);
  const uint64_t r = Truncate<kSizeBytes>(a + b + cin);
  alu_internal::Record<kSizeBytes>(f, CcKind::kAdc, r, a, b, static_cast<uint8_t>(cin));
  return r;
}

template <int kSizeBytes>
inline uint64_t Sub(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  a = Truncate<kSizeBytes>(a);
  b = Truncate<kSizeBytes>(b);
  const uint64_t r = Truncate<kSizeBytes>(a - b);
  alu_internal::Record<kSizeBytes>(f, CcKind::kSub, r, a, b);
  return r;
}

// SBB: subtracts b and the current CF.
template <int kSizeBytes>
inline uint64_t Sbb(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  const uint64_t cin = GetCarry(*f);
  a = Truncate<kSizeBytes>(a);
  b = Truncate<kSizeBytes>(b);
  const uint64_t r = Truncate<kSizeBytes>(a - b - cin);
  alu_internal::Record<kSizeBytes>(f, CcKind::kSbb, r, a, b, static_cast<uint8_t>(cin));
  return r;
}

// CMP: SUB without the write-back.
template <int kSizeBytes>
inline void Cmp(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  Sub<kSizeBytes>(f, a, b);
}

// NEG: 0 - a. CF = (a != 0), which is exactly kSub's "0 < a" (SDM "NEG").
template <int kSizeBytes>
inline uint64_t Neg(LazyFlags* f, uint64_t a) noexcept {
  return Sub<kSizeBytes>(f, 0, a);
}

// INC/DEC: CF is not affected (SDM "INC", "DEC"), so it is carried over in
// carry_in rather than materialised.
template <int kSizeBytes>
inline uint64_t Inc(LazyFlags* f, uint64_t a) noexcept {
  const uint64_t cf = GetCarry(*f);
  a = Truncate<kSizeBytes>(a);
  const uint64_t r = Truncate<kSizeBytes>(a + 1);
  alu_internal::Record<kSizeBytes>(f, CcKind::kInc, r, a, 1, static_cast<uint8_t>(cf));
  return r;
}
template <int kSizeBytes>
inline uint64_t Dec(LazyFlags* f, uint64_t a) noexcept {
  const uint64_t cf = GetCarry(*f);
  a = Truncate<kSizeBytes>(a);
  const uint64_t r = Truncate<kSizeBytes>(a - 1);
  alu_internal::Record<kSizeBytes>(f, CcKind::kDec, r, a, 1, static_cast<uint8_t>(cf));
  return r;
}

// XADD: the interpreter stores Add(dest, src) to the destination and the old
// destination to the source register (SDM "XADD"); flags are ADD's.
template <int kSizeBytes>
inline uint64_t Xadd(LazyFlags* f, uint64_t dest, uint64_t src) noexcept {
  return Add<kSizeBytes>(f, dest, src);
}

// CMPXCHG dest, src: compares the accumulator with the destination and sets
// the flags as CMP acc, dest (SDM "CMPXCHG"). Returns true when equal.
// The interpreter then writes, matching hardware (and the differential test):
//   equal:     dest <- src. The accumulator is not written (for a 32-bit
//              operand the upper half of RAX survives).
//   not equal: accumulator <- dest (zero-extending EAX for 32-bit operands).
//              A memory destination receives a write cycle of its old value
//              (so a read-only page still faults); a register destination is
//              not written at all (its upper half survives). The PVM emulator
//              gets the accumulator update wrong; we follow the SDM.
template <int kSizeBytes>
inline bool Cmpxchg(LazyFlags* f, uint64_t accumulator, uint64_t dest) noexcept {
  return Sub<kSizeBytes>(f, accumulator, dest) == 0;
}

// ---------------------------------------------------------------------------
// Logic (SDM "AND", "OR", "XOR", "TEST", "NOT"): OF = CF = 0; SF ZF PF from
// the result; AF undefined (we produce 0). NOT affects no flags.

template <int kSizeBytes>
inline uint64_t And(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  const uint64_t r = Truncate<kSizeBytes>(a & b);
  alu_internal::Record<kSizeBytes>(f, CcKind::kLogic, r, 0, 0);
  return r;
}
template <int kSizeBytes>
inline uint64_t Or(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  const uint64_t r = Truncate<kSizeBytes>(a | b);
  alu_internal::Record<kSizeBytes>(f, CcKind::kLogic, r, 0, 0);
  return r;
}
template <int kSizeBytes>
inline uint64_t Xor(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  const uint64_t r = Truncate<kSizeBytes>(a ^ b);
  alu_internal::Record<kSizeBytes>(f, CcKind::kLogic, r, 0, 0);
  return r;
}
template <int kSizeBytes>
inline void Test(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  And<kSizeBytes>(f, a, b);
}
template <int kSizeBytes>
constexpr uint64_t Not(uint64_t a) noexcept {
  return Truncate<kSizeBytes>(~a);
}

// ---------------------------------------------------------------------------
// Shifts (SDM "SAL/SAR/SHL/SHR"). The count is masked to 5 bits (6 for
// 64-bit). A masked count of 0 changes neither the operand nor any flag.
// Otherwise CF = last bit shifted out, SF ZF PF from the result, OF defined
// for count 1 only, AF undefined (0). See lazy_flags.h for the choices made
// for the undefined cases (CF when count >= W, OF when count > 1).

template <int kSizeBytes>
inline uint64_t Shl(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  const uint64_t r = Truncate<kSizeBytes>(a << n);  // n <= 63: defined in C++.
  alu_internal::Record<kSizeBytes>(f, CcKind::kShl, r, a, n);
  return r;
}
template <int kSizeBytes>
inline uint64_t Shr(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  const uint64_t r = a >> n;
  alu_internal::Record<kSizeBytes>(f, CcKind::kShr, r, a, n);
  return r;
}
template <int kSizeBytes>
inline uint64_t Sar(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  // n <= 31 for W <= 32 and <= 63 for W = 64: never shifts out of the int64.
  const uint64_t r = Truncate<kSizeBytes>(static_cast<uint64_t>(SignExtend<kSizeBytes>(a) >> n));
  alu_internal::Record<kSizeBytes>(f, CcKind::kSar, r, a, n);
  return r;
}
template <int kSizeBytes>
inline uint64_t Sal(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  return Shl<kSizeBytes>(f, a, count);
}

// ---------------------------------------------------------------------------
// Rotates (SDM "RCL/RCR/ROL/ROR"): only CF and OF are affected; a masked
// count of 0 affects nothing. OF is defined for a masked count of 1; for
// other counts we apply the count-1 formula to the final result, which is
// what the host does (pinned in alu_differential_test.cc).

template <int kSizeBytes>
inline uint64_t Rol(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  const unsigned rot = n & (kBits - 1);
  const uint64_t r = rot == 0 ? a : Truncate<kSizeBytes>((a << rot) | (a >> (kBits - rot)));
  // CF = LSB(result); OF = MSB(result) XOR CF.
  const uint64_t cf = r & 1;
  const uint64_t of = ((r >> (kBits - 1)) ^ cf) & 1;
  UpdateFlags(f, kFlagCf | kFlagOf, cf | (of ? kFlagOf : 0));
  return r;
}
template <int kSizeBytes>
inline uint64_t Ror(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  const unsigned rot = n & (kBits - 1);
  const uint64_t r = rot == 0 ? a : Truncate<kSizeBytes>((a >> rot) | (a << (kBits - rot)));
  // CF = MSB(result); OF = MSB(result) XOR MSB-1(result).
  const uint64_t cf = (r >> (kBits - 1)) & 1;
  const uint64_t of = ((r >> (kBits - 1)) ^ (r >> (kBits - 2))) & 1;
  UpdateFlags(f, kFlagCf | kFlagOf, cf | (of ? kFlagOf : 0));
  return r;
}

// RCL/RCR rotate the (W+1)-bit value CF:operand. For 8- and 16-bit operands the
// masked count is further reduced modulo 9 and 17; when that leaves 0 the
// operand and CF are unchanged, but OF is still written (the host does so).
template <int kSizeBytes>
inline uint64_t Rcl(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  const unsigned rot = kSizeBytes <= 2 ? n % (kBits + 1) : n;
  const uint64_t cin = GetCarry(*f);
  using U128 = unsigned __int128;
  const U128 wide_mask = (U128{1} << (kBits + 1)) - 1;
  const U128 x = (U128{cin} << kBits) | a;
  const U128 y = rot == 0 ? x : (((x << rot) | (x >> (kBits + 1 - rot))) & wide_mask);
  const uint64_t r = Truncate<kSizeBytes>(static_cast<uint64_t>(y));
  const uint64_t cf = static_cast<uint64_t>(y >> kBits) & 1;
  // OF = MSB(result) XOR CF (SDM "RCL", count 1).
  const uint64_t of = ((r >> (kBits - 1)) ^ cf) & 1;
  UpdateFlags(f, kFlagCf | kFlagOf, cf | (of ? kFlagOf : 0));
  return r;
}
template <int kSizeBytes>
inline uint64_t Rcr(LazyFlags* f, uint64_t a, uint64_t count) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  a = Truncate<kSizeBytes>(a);
  if (n == 0) return a;
  const unsigned rot = kSizeBytes <= 2 ? n % (kBits + 1) : n;
  const uint64_t cin = GetCarry(*f);
  using U128 = unsigned __int128;
  const U128 wide_mask = (U128{1} << (kBits + 1)) - 1;
  const U128 x = (U128{cin} << kBits) | a;
  const U128 y = rot == 0 ? x : (((x >> rot) | (x << (kBits + 1 - rot))) & wide_mask);
  const uint64_t r = Truncate<kSizeBytes>(static_cast<uint64_t>(y));
  const uint64_t cf = static_cast<uint64_t>(y >> kBits) & 1;
  // OF = MSB(result) XOR MSB-1(result); for count 1 this equals the SDM's
  // "MSB(DEST) XOR CF" taken before the rotate.
  const uint64_t of = ((r >> (kBits - 1)) ^ (r >> (kBits - 2))) & 1;
  UpdateFlags(f, kFlagCf | kFlagOf, cf | (of ? kFlagOf : 0));
  return r;
}

// ---------------------------------------------------------------------------
// Double-precision shifts (SDM "SHLD", "SHRD"). Count masked to 5/6 bits; 0
// changes nothing. CF = last bit shifted out of dest, SF ZF PF from the
// result, OF defined for count 1 (sign change; for larger counts we take the
// last one-bit step's sign change, as the host does), AF undefined (0). For
// 16-bit operands a count above 16 leaves the result and flags undefined; our
// result matches the AMD EPYC host (see the patterns below), flags follow the
// same formulas but are not pinned.

template <int kSizeBytes>
inline uint64_t Shld(LazyFlags* f, uint64_t dest, uint64_t src, uint64_t count) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  dest = Truncate<kSizeBytes>(dest);
  src = Truncate<kSizeBytes>(src);
  if (n == 0) return dest;
  uint64_t r, cf;
  if constexpr (kSizeBytes == 2) {
    // The 48-bit pattern dest:src:src shifted left by n (n <= 31); for n > 16
    // this yields what the host produces (pinned), for n <= 16 plain SHLD.
    const uint64_t x = (dest << 32) | (src << 16) | src;
    r = (x >> (32 - n)) & 0xffff;
    cf = (x >> (48 - n)) & 1;
  } else {
    r = Truncate<kSizeBytes>((dest << n) | (src >> (kBits - n)));
    cf = (dest >> (kBits - n)) & 1;
  }
  // OF of the last one-bit step: MSB(result) XOR CF (SDM "SHLD": count 1).
  const uint64_t of = ((r >> (kBits - 1)) ^ cf) & 1;
  UpdateFlags(f, kArithFlags,
              cf | (of ? kFlagOf : 0) | alu_internal::ResultFlags(r, kSizeBytes));
  return r;
}
template <int kSizeBytes>
inline uint64_t Shrd(LazyFlags* f, uint64_t dest, uint64_t src, uint64_t count) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned n = alu_internal::MaskCount<kSizeBytes>(count);
  dest = Truncate<kSizeBytes>(dest);
  src = Truncate<kSizeBytes>(src);
  if (n == 0) return dest;
  uint64_t r, cf;
  if constexpr (kSizeBytes == 2) {
    // The 48-bit pattern src:src:dest shifted right by n (n <= 31); for n > 16
    // this yields what the host produces (pinned), for n <= 16 plain SHRD.
    const uint64_t x = (src << 32) | (src << 16) | dest;
    r = (x >> n) & 0xffff;
    cf = (x >> (n - 1)) & 1;
  } else {
    r = Truncate<kSizeBytes>((dest >> n) | (src << (kBits - n)));
    cf = (dest >> (n - 1)) & 1;
  }
  // OF of the last one-bit step: the sign change, MSB(result) XOR bit W-2.
  const uint64_t of = ((r >> (kBits - 1)) ^ (r >> (kBits - 2))) & 1;
  UpdateFlags(f, kArithFlags,
              cf | (of ? kFlagOf : 0) | alu_internal::ResultFlags(r, kSizeBytes));
  return r;
}

// ---------------------------------------------------------------------------
// Multiply (SDM "MUL", "IMUL"): CF = OF = 1 when the upper half of the product
// is significant; SF ZF AF PF undefined (we derive SF ZF PF from the low half,
// AF = 0).

struct MulResult {
  uint64_t low;   // AL/AX/EAX/RAX (zero-extended from the operand size).
  uint64_t high;  // AH/DX/EDX/RDX. For 8-bit MUL the caller stores AX = high:low.
};

template <int kSizeBytes>
inline MulResult Mul(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const unsigned __int128 p =
      static_cast<unsigned __int128>(Truncate<kSizeBytes>(a)) * Truncate<kSizeBytes>(b);
  const uint64_t low = Truncate<kSizeBytes>(static_cast<uint64_t>(p));
  const uint64_t high = Truncate<kSizeBytes>(static_cast<uint64_t>(p >> kBits));
  alu_internal::Record<kSizeBytes>(f, CcKind::kMul, low, high != 0, 0);
  return {low, high};
}

// One-operand IMUL: the signed double-width product. The two- and
// three-operand forms keep only `low`, with the same flags: CF = OF = 1 when
// the product does not fit the operand size.
template <int kSizeBytes>
inline MulResult Imul(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const __int128 p = static_cast<__int128>(SignExtend<kSizeBytes>(a)) * SignExtend<kSizeBytes>(b);
  const uint64_t low = Truncate<kSizeBytes>(static_cast<uint64_t>(p));
  const uint64_t high = Truncate<kSizeBytes>(static_cast<uint64_t>(p >> kBits));
  const bool overflow = static_cast<__int128>(SignExtend<kSizeBytes>(low)) != p;
  alu_internal::Record<kSizeBytes>(f, CcKind::kMul, low, overflow, 0);
  return {low, high};
}
// IMUL r, r/m and IMUL r, r/m, imm (the immediate already sign-extended).
template <int kSizeBytes>
inline uint64_t ImulTruncated(LazyFlags* f, uint64_t a, uint64_t b) noexcept {
  return Imul<kSizeBytes>(f, a, b).low;
}

// ---------------------------------------------------------------------------
// Divide (SDM "DIV", "IDIV"). The dividend is high:low (AH:AL, DX:AX,
// EDX:EAX, RDX:RAX). All flags are undefined; we leave them unchanged.
// #DE on a zero divisor or a quotient that does not fit; then nothing is
// written.

enum class AluStatus : uint8_t { kOk, kDivideError };

struct DivResult {
  AluStatus status;
  uint64_t quotient;   // AL/AX/EAX/RAX
  uint64_t remainder;  // AH/DX/EDX/RDX
};

template <int kSizeBytes>
inline DivResult Div(uint64_t high, uint64_t low, uint64_t divisor) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const uint64_t d = Truncate<kSizeBytes>(divisor);
  const uint64_t h = Truncate<kSizeBytes>(high);
  // Guest input: a zero divisor or high >= divisor (quotient needs more than
  // kBits) would trap on the host; both become #DE here.
  if (d == 0 || h >= d) [[unlikely]] return {AluStatus::kDivideError, 0, 0};
  const unsigned __int128 n = (static_cast<unsigned __int128>(h) << kBits) | Truncate<kSizeBytes>(low);
  return {AluStatus::kOk, static_cast<uint64_t>(n / d), static_cast<uint64_t>(n % d)};
}

template <int kSizeBytes>
inline DivResult Idiv(uint64_t high, uint64_t low, uint64_t divisor) noexcept {
  constexpr unsigned kBits = kSizeBytes * 8;
  const int64_t d = SignExtend<kSizeBytes>(divisor);
  if (d == 0) [[unlikely]] return {AluStatus::kDivideError, 0, 0};
  const unsigned __int128 raw =
      (static_cast<unsigned __int128>(Truncate<kSizeBytes>(high)) << kBits) | Truncate<kSizeBytes>(low);
  // Sign-extend the 2*kBits-bit dividend to 128 bits.
  const __int128 n = static_cast<__int128>(raw << (128 - 2 * kBits)) >> (128 - 2 * kBits);
  // Guest input: for 64-bit operands the dividend spans the whole __int128,
  // so -2^127 / -1 would overflow the host division itself; reject it before
  // dividing (its quotient does not fit 64 bits either).
  if (d == -1 && n == static_cast<__int128>(static_cast<unsigned __int128>(1) << 127)) [[unlikely]] {
    return {AluStatus::kDivideError, 0, 0};
  }
  const __int128 q = n / d;
  const __int128 r = n % d;
  const __int128 kMin = -(static_cast<__int128>(1) << (kBits - 1));
  const __int128 kMax = (static_cast<__int128>(1) << (kBits - 1)) - 1;
  if (q < kMin || q > kMax) [[unlikely]] return {AluStatus::kDivideError, 0, 0};
  return {AluStatus::kOk, Truncate<kSizeBytes>(static_cast<uint64_t>(q)),
          Truncate<kSizeBytes>(static_cast<uint64_t>(r))};
}

// ---------------------------------------------------------------------------
// Bit test (SDM "BT", "BTS", "BTR", "BTC"): CF = the selected bit; ZF is
// unchanged; OF SF AF PF are undefined (we leave them unchanged).
// For a register operand the bit offset is taken modulo the operand width.
// For a memory operand with a register offset the offset is signed and may
// address outside the operand: the interpreter adds BitBaseDisplacement() to
// the effective address and passes the offset modulo the width (SDM Vol. 2
// "BT", Description and Table 3-2 "Range of Bit Positions").

template <int kSizeBytes>
constexpr int64_t BitBaseDisplacement(uint64_t bit_offset) noexcept {
  constexpr int kShift = kSizeBytes == 2 ? 4 : kSizeBytes == 4 ? 5 : 6;
  static_assert(kSizeBytes >= 2, "BT* has no 8-bit form");
  return (SignExtend<kSizeBytes>(bit_offset) >> kShift) * kSizeBytes;
}

template <int kSizeBytes>
inline void Bt(LazyFlags* f, uint64_t base, uint64_t bit_offset) noexcept {
  const unsigned bit = static_cast<unsigned>(bit_offset) & (kSizeBytes * 8 - 1);
  UpdateFlags(f, kFlagCf, (base >> bit) & 1);
}
template <int kSizeBytes>
inline uint64_t Bts(LazyFlags* f, uint64_t base, uint64_t bit_offset) noexcept {
  const unsigned bit = static_cast<unsigned>(bit_offset) & (kSizeBytes * 8 - 1);
  UpdateFlags(f, kFlagCf, (base >> bit) & 1);
  return Truncate<kSizeBytes>(base | (uint64_t{1} << bit));
}
template <int kSizeBytes>
inline uint64_t Btr(LazyFlags* f, uint64_t base, uint64_t bit_offset) noexcept {
  const unsigned bit = static_cast<unsigned>(bit_offset) & (kSizeBytes * 8 - 1);
  UpdateFlags(f, kFlagCf, (base >> bit) & 1);
  return Truncate<kSizeBytes>(base & ~(uint64_t{1} << bit));
}
template <int kSizeBytes>
inline uint64_t Btc(LazyFlags* f, uint64_t base, uint64_t bit_offset) noexcept {
  const unsigned bit = static_cast<unsigned>(bit_offset) & (kSizeBytes * 8 - 1);
  UpdateFlags(f, kFlagCf, (base >> bit) & 1);
  return Truncate<kSizeBytes>(base ^ (uint64_t{1} << bit));
}

// ---------------------------------------------------------------------------
// Bit scan (SDM "BSF", "BSR"): ZF = (source == 0). When the source is 0 the
// destination is architecturally undefined; Intel and AMD parts leave it
// unchanged (AMD documents this), and so do we: the result is `old_dest`.
// The interpreter must then not write the register at all: for a 32-bit
// operand the upper half survives too (pinned on the host by the differential
// test). Write back with MergeIntoRegister() only when the source is nonzero.
// CF OF SF AF PF are undefined; we leave them unchanged.

template <int kSizeBytes>
inline uint64_t Bsf(LazyFlags* f, uint64_t old_dest, uint64_t src) noexcept {
  src = Truncate<kSizeBytes>(src);
  UpdateFlags(f, kFlagZf, src == 0 ? kFlagZf : 0);
  return src == 0 ? Truncate<kSizeBytes>(old_dest) : static_cast<uint64_t>(__builtin_ctzll(src));
}
template <int kSizeBytes>
inline uint64_t Bsr(LazyFlags* f, uint64_t old_dest, uint64_t src) noexcept {
  src = Truncate<kSizeBytes>(src);
  UpdateFlags(f, kFlagZf, src == 0 ? kFlagZf : 0);
  return src == 0 ? Truncate<kSizeBytes>(old_dest) : static_cast<uint64_t>(63 - __builtin_clzll(src));
}

// ---------------------------------------------------------------------------
// No-flag data movement helpers.

// BSWAP r32/r64 (SDM "BSWAP"). The 16-bit form is undefined and not provided.
template <int kSizeBytes>
constexpr uint64_t Bswap(uint64_t v) noexcept {
  static_assert(kSizeBytes == 4 || kSizeBytes == 8, "BSWAP r16 is undefined");
  if constexpr (kSizeBytes == 4) {
    return __builtin_bswap32(static_cast<uint32_t>(v));
  } else {
    return __builtin_bswap64(v);
  }
}

// CBW / CWDE / CDQE (SDM "CBW/CWDE/CDQE"): sign-extends the lower half of the
// accumulator into the whole kSizeBytes accumulator (2: AL->AX, 4: AX->EAX,
// 8: EAX->RAX). Returns the new accumulator value, zero-extended from kSizeBytes.
template <int kSizeBytes>
constexpr uint64_t SignExtendAccumulator(uint64_t acc) noexcept {
  static_assert(kSizeBytes >= 2);
  return Truncate<kSizeBytes>(static_cast<uint64_t>(SignExtend<kSizeBytes / 2>(acc)));
}

// CWD / CDQ / CQO (SDM "CWD/CDQ/CQO"): the new DX/EDX/RDX, all ones when the
// accumulator is negative, else zero.
template <int kSizeBytes>
constexpr uint64_t SignFill(uint64_t acc) noexcept {
  return SignExtend<kSizeBytes>(acc) < 0 ? SizeMask<kSizeBytes>() : 0;
}

// SETcc (SDM "SETcc"): the byte to store.
inline uint8_t Setcc(const LazyFlags& f, unsigned cc) noexcept { return EvalCondition(f, cc) ? 1 : 0; }

}  // namespace cpu

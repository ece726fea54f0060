// Differential tests: the soft ALU (alu.h, lazy_flags.h) against the host CPU.
//
// Each case runs the real instruction natively with inline asm, between a
// POPFQ that installs random input flags and a PUSHFQ that captures the
// output flags, and runs our implementation on the same inputs starting from
// LoadFromRflags(input flags). Results are compared as full 64-bit register
// values after write-back (so 8/16-bit merges and 32-bit zero-extension are
// covered), and flags are compared on the bits the SDM defines for that
// instruction plus the undefined bits this test pins to the host's behaviour
// (listed per op below and printed in the summary).
//
// Scale: CPU_DIFF_CASES=N runs N random cases per op and size (default 10000,
// plus the edge cases); e.g. CPU_DIFF_CASES=1000000 for a soak. CPU_DIFF_SEED
// picks the seed (default fixed, so failures reproduce).
//
// Only x86-64 hosts can run these; elsewhere the tests skip.
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cpu/alu.h"
#include "cpu/lazy_flags.h"
#include "gtest/gtest.h"

namespace cpu {
namespace {

#if defined(__x86_64__)

// Random input flags: the six arithmetic flags only (never TF, DF or AC), plus
// the always-one bit 1 and IF (which POPF at CPL 3 ignores anyway).
constexpr uint64_t kFixedFlags = 0x202;
constexpr uint64_t kAll = kArithFlags;

// The red zone: inline asm that pushes must first step below the 128 bytes
// under %rsp that the compiler may be using for locals (System V ABI §3.2.2).
#define PRE "lea -128(%%rsp), %%rsp\n\tpushq %[fin]\n\tpopfq\n\t"
#define POST "\n\tpushfq\n\tpopq %[fout]\n\tlea 128(%%rsp), %%rsp"

struct Native {
  uint64_t r1;     // the first register operand after the instruction
  uint64_t r2;     // the second register operand (or RDX) after it
  uint64_t flags;  // RFLAGS after it
};

// op a, b  (AT&T: op b, a) with both registers read-write: covers ALU ops,
// XADD (which writes both), BT* (a = base, b = offset) and BSF/BSR (a = dest).
#define NATIVE_RR(Name, M)                                                                  \
  template <int k>                                                                          \
  Native Native##Name(uint64_t a, uint64_t b, uint64_t fin) {                               \
    uint64_t fout;                                                                          \
    if constexpr (k == 1) {                                                                 \
      asm volatile(PRE M "b %b[b], %b[a]" POST                                              \
                   : [a] "+r"(a), [b] "+r"(b), [fout] "=&r"(fout) : [fin] "r"(fin) : "cc"); \
    } else if constexpr (k == 2) {                                                          \
      asm volatile(PRE M "w %w[b], %w[a]" POST                                              \
                   : [a] "+r"(a), [b] "+r"(b), [fout] "=&r"(fout) : [fin] "r"(fin) : "cc"); \
    } else if constexpr (k == 4) {                                                          \
      asm volatile(PRE M "l %k[b], %k[a]" POST                                              \
                   : [a] "+r"(a), [b] "+r"(b), [fout] "=&r"(fout) : [fin] "r"(fin) : "cc"); \
    } else {                                                                                \
      asm volatile(PRE M "q %q[b], %q[a]" POST                                              \
                   : [a] "+r"(a), [b] "+r"(b), [fout] "=&r"(fout) : [fin] "r"(fin) : "cc"); \
    }                                                                                       \
    return {a, b, fout};                                                                    \
  }

// op a
#define NATIVE_R(Name, M)                                                                 \
  template <int k>                                                                        \
  Native Native##Name(uint64_t a, uint64_t, uint64_t fin) {                               \
    uint64_t fout;                                                                        \
    if constexpr (k == 1) {                                                               \
      asm volatile(PRE M "b %b[a]" POST : [a] "+r"(a), [fout] "=&r"(fout) : [fin] "r"(fin) \
                   : "cc");                                                               \
    } else if constexpr (k == 2) {                                                        \
      asm volatile(PRE M "w %w[a]" POST : [a] "+r"(a), [fout] "=&r"(fout) : [fin] "r"(fin) \
                   : "cc");                                                               \
    } else if constexpr (k == 4) {                                                        \
      asm volatile(PRE M "l %k[a]" POST : [a] "+r"(a), [fout] "=&r"(fout) : [fin] "r"(fin) \
                   : "cc");                                                               \
    } else {                                                                              \
      asm volatile(PRE M "q %q[a]" POST : [a] "+r"(a), [fout] "=&r"(fout) : [fin] "r"(fin) \
                   : "cc");                                                               \
    }                                                                                     \
    return {a, 0, fout};                                                                  \
  }

// op %cl, a  (shifts and rotates; b is the whole RCX, the CPU reads CL).
#define NATIVE_CL(Name, M)                                                                  \
  template <int k>                                                                          \
  Native Native##Name(uint64_t a, uint64_t b, uint64_t fin) {                               \
    uint64_t fout;                                                                          \
    if constexpr (k == 1) {                                                                 \
      asm volatile(PRE M "b %%cl, %b[a]" POST                                               \
                   : [a] "+r"(a), [fout] "=&r"(fout) : "c"(b), [fin] "r"(fin) : "cc");      \
    } else if constexpr (k == 2) {                                                          \
      asm volatile(PRE M "w %%cl, %w[a]" POST                                               \
                   : [a] "+r"(a), [fout] "=&r"(fout) : "c"(b), [fin] "r"(fin) : "cc");      \
    } else if constexpr (k == 4) {                                                          \
      asm volatile(PRE M "l %%cl, %k[a]" POST                                               \
                   : [a] "+r"(a), [fout] "=&r"(fout) : "c"(b), [fin] "r"(fin) : "cc");      \
    } else {                                                                                \
      asm volatile(PRE M "q %%cl, %q[a]" POST                                               \
                   : [a] "+r"(a), [fout] "=&r"(fout) : "c"(b), [fin] "r"(fin) : "cc");      \
    }                                                                                       \
    return {a, b, fout};                                                                    \
  }

// SHLD/SHRD %cl, src, dest (c is the count).
#define NATIVE_DOUBLE(Name, M)                                                                  \
  template <int k>                                                                              \
  Native Native##Name(uint64_t a, uint64_t b, uint64_t c, uint64_t fin) {                       \
    uint64_t fout;                                                                              \
    if constexpr (k == 2) {                                                                     \
      asm volatile(PRE M "w %%cl, %w[b], %w[a]" POST                                            \
                   : [a] "+r"(a), [fout] "=&r"(fout) : [b] "r"(b), "c"(c), [fin] "r"(fin) : "cc"); \
    } else if constexpr (k == 4) {                                                              \
      asm volatile(PRE M "l %%cl, %k[b], %k[a]" POST                                            \
                   : [a] "+r"(a), [fout] "=&r"(fout) : [b] "r"(b), "c"(c), [fin] "r"(fin) : "cc"); \
    } else {                                                                                    \
      asm volatile(PRE M "q %%cl, %q[b], %q[a]" POST                                            \
                   : [a] "+r"(a), [fout] "=&r"(fout) : [b] "r"(b), "c"(c), [fin] "r"(fin) : "cc"); \
    }                                                                                           \
    return {a, b, fout};                                                                        \
  }

// One-operand MUL/IMUL/DIV/IDIV: RDX:RAX (or AX) with b as the source.
#define NATIVE_MULDIV(Name, M)                                                                 \
  template <int k>                                                                             \
  Native Native##Name(uint64_t rax, uint64_t rdx, uint64_t b, uint64_t fin) {                  \
    uint64_t fout;                                                                             \
    if constexpr (k == 1) {                                                                    \
      asm volatile(PRE M "b %b[b]" POST                                                        \
                   : "+a"(rax), "+d"(rdx), [fout] "=&r"(fout) : [b] "r"(b), [fin] "r"(fin) : "cc"); \
    } else if constexpr (k == 2) {                                                             \
      asm volatile(PRE M "w %w[b]" POST                                                        \
                   : "+a"(rax), "+d"(rdx), [fout] "=&r"(fout) : [b] "r"(b), [fin] "r"(fin) : "cc"); \
    } else if constexpr (k == 4) {                                                             \
      asm volatile(PRE M "l %k[b]" POST                                                        \
                   : "+a"(rax), "+d"(rdx), [fout] "=&r"(fout) : [b] "r"(b), [fin] "r"(fin) : "cc"); \
    } else {                                                                                   \
      asm volatile(PRE M "q %q[b]" POST                                                        \
                   : "+a"(rax), "+d"(rdx), [fout] "=&r"(fout) : [b] "r"(b), [fin] "r"(fin) : "cc"); \
    }                                                                                          \
    return {rax, rdx, fout};                                                                   \
  }

NATIVE_RR(Add, "add")
NATIVE_RR(Adc, "adc")
NATIVE_RR(Sub, "sub")
NATIVE_RR(Sbb, "sbb")
NATIVE_RR(Cmp, "cmp")
NATIVE_RR(And, "and")
NATIVE_RR(Or, "or")
NATIVE_RR(Xor, "xor")
NATIVE_RR(Test, "test")
NATIVE_RR(Xadd, "xadd")
NATIVE_RR(Bt, "bt")
NATIVE_RR(Bts, "bts")
NATIVE_RR(Btr, "btr")
NATIVE_RR(Btc, "btc")
NATIVE_RR(Bsf, "bsf")
NATIVE_RR(Bsr, "bsr")
NATIVE_RR(Imul2, "imul")
NATIVE_R(Inc, "inc")
NATIVE_R(Dec, "dec")
NATIVE_R(Neg, "neg")
NATIVE_R(Not, "not")
NATIVE_CL(Shl, "shl")
NATIVE_CL(Shr, "shr")
NATIVE_CL(Sar, "sar")
NATIVE_CL(Rol, "rol")
NATIVE_CL(Ror, "ror")
NATIVE_CL(Rcl, "rcl")
NATIVE_CL(Rcr, "rcr")
NATIVE_DOUBLE(Shld, "shld")
NATIVE_DOUBLE(Shrd, "shrd")
NATIVE_MULDIV(Mul, "mul")
NATIVE_MULDIV(Imul1, "imul")
NATIVE_MULDIV(Div, "div")
NATIVE_MULDIV(Idiv, "idiv")

// CMPXCHG src, dest with the accumulator in RAX.
template <int k>
Native NativeCmpxchg(uint64_t rax, uint64_t dest, uint64_t src, uint64_t fin) {
  uint64_t fout;
  if constexpr (k == 1) {
    asm volatile(PRE "cmpxchgb %b[s], %b[d]" POST
                 : "+a"(rax), [d] "+r"(dest), [fout] "=&r"(fout) : [s] "r"(src), [fin] "r"(fin) : "cc");
  } else if constexpr (k == 2) {
    asm volatile(PRE "cmpxchgw %w[s], %w[d]" POST
                 : "+a"(rax), [d] "+r"(dest), [fout] "=&r"(fout) : [s] "r"(src), [fin] "r"(fin) : "cc");
  } else if constexpr (k == 4) {
    asm volatile(PRE "cmpxchgl %k[s], %k[d]" POST
                 : "+a"(rax), [d] "+r"(dest), [fout] "=&r"(fout) : [s] "r"(src), [fin] "r"(fin) : "cc");
  } else {
    asm volatile(PRE "cmpxchgq %q[s], %q[d]" POST
                 : "+a"(rax), [d] "+r"(dest), [fout] "=&r"(fout) : [s] "r"(src), [fin] "r"(fin) : "cc");
  }
  return {rax, dest, fout};
}

// SETcc after installing `fin`: the host's own reading of condition `cc`.
bool NativeSetcc(unsigned cc, uint64_t fin) {
  uint64_t r = 0;
#define SETCC_CASE(n, name)                                                            \
  case n:                                                                              \
    asm volatile("lea -128(%%rsp), %%rsp\n\tpushq %[fin]\n\tpopfq\n\tset" name         \
                 " %b[r]\n\tlea 128(%%rsp), %%rsp"                                     \
                 : [r] "+r"(r) : [fin] "r"(fin) : "cc");                               \
    break;
  switch (cc) {
    SETCC_CASE(0, "o") SETCC_CASE(1, "no") SETCC_CASE(2, "b") SETCC_CASE(3, "ae")
    SETCC_CASE(4, "e") SETCC_CASE(5, "ne") SETCC_CASE(6, "be") SETCC_CASE(7, "a")
    SETCC_CASE(8, "s") SETCC_CASE(9, "ns") SETCC_CASE(10, "p") SETCC_CASE(11, "np")
    SETCC_CASE(12, "l") SETCC_CASE(13, "ge") SETCC_CASE(14, "le") SETCC_CASE(15, "g")
  }
#undef SETCC_CASE
  return (r & 0xff) != 0;
}

// The flags each condition reads (SDM Vol. 1 Table B-1).
uint64_t ConditionInputs(unsigned cc) {
  static constexpr uint64_t kInputs[8] = {kFlagOf, kFlagCf, kFlagZf, kFlagCf | kFlagZf,
                                          kFlagSf, kFlagPf, kFlagSf | kFlagOf,
                                          kFlagZf | kFlagSf | kFlagOf};
  return kInputs[(cc >> 1) & 7];
}

// ---------------------------------------------------------------------------
// Harness.

uint64_t NumRandomCases() {
  if (const char* env = std::getenv("CPU_DIFF_CASES")) return std::strtoull(env, nullptr, 0);
  return 10000;
}
uint64_t Seed() {
  if (const char* env = std::getenv("CPU_DIFF_SEED")) return std::strtoull(env, nullptr, 0);
  return 0x5eed'a1u;
}

// Cases run per op, summed over sizes, for the summary printed at the end.
std::map<std::string, uint64_t>& CaseCounts() {
  static auto* counts = new std::map<std::string, uint64_t>();
  return *counts;
}

struct Inputs {
  uint64_t a, b, c, fin;
};

class Generator {
 public:
  Generator(int size_bytes, uint64_t salt) : size_(size_bytes), rng_(Seed() ^ salt) {}

  uint64_t Flags() { return kFixedFlags | (rng_() & kArithFlags); }

  // An operand: edge values of the operand size, random values, with random
  // junk above the operand size half of the time (it must be ignored, or
  // preserved on write-back).
  uint64_t Operand() {
    const uint64_t mask = size_ == 8 ? ~uint64_t{0} : (uint64_t{1} << (size_ * 8)) - 1;
    const uint64_t sign = uint64_t{1} << (size_ * 8 - 1);
    uint64_t v;
    switch (rng_() % 12) {
      case 0: v = 0; break;
      case 1: v = 1; break;
      case 2: v = mask; break;                        // -1
      case 3: v = sign; break;                        // min signed
      case 4: v = sign - 1; break;                    // max signed
      case 5: v = uint64_t{1} << (rng_() % (size_ * 8)); break;  // power of two
      case 6: v = sign + 1; break;
      case 7: v = mask - 1; break;
      case 8: v = rng_() & 0xff; break;               // small
      default: v = rng_(); break;
    }
    v &= mask;
    if (rng_() & 1) v |= rng_() & ~mask;
    return v;
  }

  // A shift/rotate count: the edge counts, or any byte, with junk above CL.
  uint64_t Count() {
    static constexpr uint64_t kEdge[] = {0, 1, 31, 32, 33, 63, 64, 65, 255, 2, 7, 8, 9, 15, 16, 17};
    const unsigned w = size_ * 8;
    uint64_t c;
    switch (rng_() % 6) {
      case 0: c = kEdge[rng_() % (sizeof(kEdge) / sizeof(kEdge[0]))]; break;
      case 1: c = w - 1 + rng_() % 3; break;  // W-1, W, W+1
      case 2: c = 1; break;
      default: c = rng_() & 0xff; break;
    }
    if (rng_() & 1) c |= rng_() & ~uint64_t{0xff};
    return c;
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  int size_;
  std::mt19937_64 rng_;
};

struct Ours {
  uint64_t r1;
  uint64_t r2;
  LazyFlags flags;
};

// Flags and results the SDM leaves undefined are pinned to what the CPU this
// test was written on does (an AMD EPYC). Another vendor may differ there, so
// elsewhere the test compares only what the SDM defines (also forced with
// CPU_DIFF_SDM_ONLY=1).
bool PinnedHost() {
  static const bool pinned = [] {
    if (const char* env = std::getenv("CPU_DIFF_SDM_ONLY"); env != nullptr && env[0] == '1') {
      return false;
    }
    unsigned eax, ebx, ecx, edx;
    __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0));
    char vendor[13];
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    vendor[12] = 0;
    return std::string(vendor) == "AuthenticAMD";
  }();
  return pinned;
}
// A mask bit that says: the SDM leaves even the result undefined; skip.
constexpr uint64_t kSkipCase = uint64_t{1} << 63;

// Runs `n` cases of one op at one size. `gen` builds inputs, `native` and
// `ours` run them, `mask(in)` says which flags to compare, `compare_r2`
// whether the second register is an output.
template <typename Gen, typename NativeFn, typename OursFn, typename MaskFn>
void RunDiff(const std::string& op, int size_bytes, Gen gen, NativeFn native, OursFn ours,
             MaskFn mask, bool compare_r2) {
  Generator g(size_bytes, std::hash<std::string>{}(op) * 31 + size_bytes);
  const uint64_t n = NumRandomCases();
  int failures = 0;
  for (uint64_t i = 0; i < n && failures < 10; ++i) {
    const Inputs in = gen(g);
    const uint64_t m = mask(in);
    if (m & kSkipCase) continue;
    const Native want = native(in);
    const Ours got = ours(in);
    const uint64_t got_flags = MaterializeArith(got.flags);
    const bool ok = want.r1 == got.r1 && (!compare_r2 || want.r2 == got.r2) &&
                    (want.flags & m) == (got_flags & m);
    // Conditions: every cc whose inputs are all compared flags must agree with
    // what the host's flags say, through the lazy fast paths.
    bool cc_ok = true;
    unsigned bad_cc = 0;
    for (unsigned cc = 0; cc < 16 && ok; ++cc) {
      if ((ConditionInputs(cc) & ~m) != 0) continue;
      if (EvalCondition(got.flags, cc) != lazy_internal::EvalFromRflags(want.flags, cc)) {
        cc_ok = false;
        bad_cc = cc;
        break;
      }
    }
    if (!ok || !cc_ok) {
      ++failures;
      ADD_FAILURE() << absl::StrFormat(
          "%s/%d: a=%#x b=%#x c=%#x fin=%#x\n  host: r1=%#x r2=%#x flags=%#x\n  ours: r1=%#x "
          "r2=%#x flags=%#x (%s)\n  compared flags %#x%s",
          op, size_bytes, in.a, in.b, in.c, in.fin, want.r1, want.r2, want.flags & kAll, got.r1,
          got.r2, got_flags, DescribeLazyFlags(got.flags), m,
          cc_ok ? "" : absl::StrFormat(", condition %s differs", ConditionName(bad_cc)));
    }
  }
  CaseCounts()[op] += n;
}

Inputs TwoOperands(Generator& g) { return {g.Operand(), g.Operand(), 0, g.Flags()}; }
Inputs OneOperand(Generator& g) { return {g.Operand(), 0, 0, g.Flags()}; }
Inputs OperandAndCount(Generator& g) { return {g.Operand(), g.Count(), 0, g.Flags()}; }

LazyFlags FlagsFrom(uint64_t fin) {
  LazyFlags f;
  LoadFromRflags(&f, fin);
  return f;
}

// ---------------------------------------------------------------------------
// Binary arithmetic and logic.

template <int k, typename NativeFn, typename OpFn>
void DiffBinary(const std::string& op, NativeFn native, OpFn fn, uint64_t flags_mask, bool writes) {
  RunDiff(
      op, k, TwoOperands, [&](const Inputs& in) { return native(in.a, in.b, in.fin); },
      [&](const Inputs& in) {
        Ours o{in.a, in.b, FlagsFrom(in.fin)};
        const uint64_t r = fn(&o.flags, in.a, in.b);
        if (writes) o.r1 = MergeIntoRegister<k>(in.a, r);
        return o;
      },
      [&](const Inputs&) { return flags_mask; }, true);
}

template <int k>
void DiffArithmeticAtSize() {
  DiffBinary<k>("add", NativeAdd<k>, Add<k>, kAll, true);
  DiffBinary<k>("adc", NativeAdc<k>, Adc<k>, kAll, true);
  DiffBinary<k>("sub", NativeSub<k>, Sub<k>, kAll, true);
  DiffBinary<k>("sbb", NativeSbb<k>, Sbb<k>, kAll, true);
  DiffBinary<k>("cmp", NativeCmp<k>, Sub<k>, kAll, false);
  // AND/OR/XOR/TEST: AF is undefined (SDM "AND"); pinned: the host clears it.
  const uint64_t logic = PinnedHost() ? kAll : kAll & ~kFlagAf;
  DiffBinary<k>("and", NativeAnd<k>, And<k>, logic, true);
  DiffBinary<k>("or", NativeOr<k>, Or<k>, logic, true);
  DiffBinary<k>("xor", NativeXor<k>, Xor<k>, logic, true);
  DiffBinary<k>("test", NativeTest<k>, And<k>, logic, false);
  // XADD a, b: a <- a + b, b <- old a.
  RunDiff(
      "xadd", k, TwoOperands, [](const Inputs& in) { return NativeXadd<k>(in.a, in.b, in.fin); },
      [](const Inputs& in) {
        Ours o{0, 0, FlagsFrom(in.fin)};
        const uint64_t sum = Xadd<k>(&o.flags, in.a, in.b);
        o.r1 = MergeIntoRegister<k>(in.a, sum);
        o.r2 = MergeIntoRegister<k>(in.b, in.a);
        return o;
      },
      [](const Inputs&) { return kAll; }, true);
}

template <int k, typename NativeFn, typename OpFn>
void DiffUnary(const std::string& op, NativeFn native, OpFn fn) {
  RunDiff(
      op, k, OneOperand, [&](const Inputs& in) { return native(in.a, 0, in.fin); },
      [&](const Inputs& in) {
        Ours o{0, 0, FlagsFrom(in.fin)};
        o.r1 = MergeIntoRegister<k>(in.a, fn(&o.flags, in.a));
        return o;
      },
      [](const Inputs&) { return kAll; }, false);
}

template <int k>
void DiffUnaryAtSize() {
  DiffUnary<k>("inc", NativeInc<k>, Inc<k>);  // CF preserved: compared.
  DiffUnary<k>("dec", NativeDec<k>, Dec<k>);
  DiffUnary<k>("neg", NativeNeg<k>, Neg<k>);
  DiffUnary<k>("not", NativeNot<k>, [](LazyFlags*, uint64_t a) { return Not<k>(a); });
}

// ---------------------------------------------------------------------------
// Shifts and rotates.

template <int k>
unsigned MaskedCount(uint64_t c) {
  return static_cast<unsigned>(c) & (k == 8 ? 63 : 31);
}

template <int k, typename NativeFn, typename OpFn, typename MaskFn>
void DiffShift(const std::string& op, NativeFn native, OpFn fn, MaskFn mask) {
  RunDiff(
      op, k, OperandAndCount, [&](const Inputs& in) { return native(in.a, in.b, in.fin); },
      [&](const Inputs& in) {
        Ours o{0, in.b, FlagsFrom(in.fin)};
        o.r1 = MergeIntoRegister<k>(in.a, fn(&o.flags, in.a, in.b));
        return o;
      },
      mask, false);
}

template <int k>
void DiffShiftAtSize() {
  // Shifts: a zero masked count leaves every flag alone (compared). Otherwise
  // CF SF ZF PF are defined, OF for count 1; pinned to the host: OF for every
  // count (the last one-bit step's rule) and CF for count >= W. Not compared:
  // AF (undefined; this AMD host sets it to 1, we produce 0).
  const auto shift_mask = [](const Inputs& in) {
    const unsigned n = MaskedCount<k>(in.b);
    if (n == 0) return kAll;
    uint64_t m = kAll & ~kFlagAf;
    if (!PinnedHost()) {
      if (n != 1) m &= ~kFlagOf;         // OF: 1-bit shifts only (SDM "SAL/SAR/SHL/SHR")
      if (n >= k * 8) m &= ~kFlagCf;     // CF: undefined for counts >= the operand size
    }
    return m;
  };
  DiffShift<k>("shl", NativeShl<k>, Shl<k>, shift_mask);
  DiffShift<k>("shr", NativeShr<k>, Shr<k>, shift_mask);
  DiffShift<k>("sar", NativeSar<k>, Sar<k>, shift_mask);
  // Rotates: only CF and OF change; the rest must survive (compared).
  const auto rotate_mask = [](const Inputs& in) {
    // OF is defined for 1-bit rotates only (SDM "RCL/RCR/ROL/ROR").
    return PinnedHost() || MaskedCount<k>(in.b) == 1 ? kAll : kAll & ~kFlagOf;
  };
  DiffShift<k>("rol", NativeRol<k>, Rol<k>, rotate_mask);
  DiffShift<k>("ror", NativeRor<k>, Ror<k>, rotate_mask);
  DiffShift<k>("rcl", NativeRcl<k>, Rcl<k>, rotate_mask);
  DiffShift<k>("rcr", NativeRcr<k>, Rcr<k>, rotate_mask);
}

template <int k>
void DiffDoubleShiftAtSize() {
  const auto gen = [](Generator& g) { return Inputs{g.Operand(), g.Operand(), g.Count(), g.Flags()}; };
  // Count 0: nothing changes (all compared). Otherwise AF is undefined (not
  // compared; the host sets it), OF pinned for every count below the
  // operand width. 16-bit counts above 16: result pinned to the host, flags
  // not compared.
  const auto mask = [](const Inputs& in) {
    const unsigned n = MaskedCount<k>(in.c);
    if (n == 0) return kAll;
    if (!PinnedHost()) {
      // SDM "SHLD"/"SHRD": a count above the operand size leaves the result
      // and flags undefined; OF is defined for 1-bit shifts only.
      if (n > k * 8) return kSkipCase;
      return n == 1 ? kAll & ~kFlagAf : kAll & ~kFlagAf & ~kFlagOf;
    }
    if (k == 2 && n > 16) return uint64_t{0};
    // At exactly 16 the host's OF is not the last-step rule; not compared.
    if (k == 2 && n == 16) return kAll & ~kFlagAf & ~kFlagOf;
    return kAll & ~kFlagAf;
  };
  RunDiff(
      "shld", k, gen, [](const Inputs& in) { return NativeShld<k>(in.a, in.b, in.c, in.fin); },
      [](const Inputs& in) {
        Ours o{0, in.b, FlagsFrom(in.fin)};
        o.r1 = MergeIntoRegister<k>(in.a, Shld<k>(&o.flags, in.a, in.b, in.c));
        return o;
      },
      mask, false);
  RunDiff(
      "shrd", k, gen, [](const Inputs& in) { return NativeShrd<k>(in.a, in.b, in.c, in.fin); },
      [](const Inputs& in) {
        Ours o{0, in.b, FlagsFrom(in.fin)};
        o.r1 = MergeIntoRegister<k>(in.a, Shrd<k>(&o.flags, in.a, in.b, in.c));
        return o;
      },
      mask, false);
}

// ---------------------------------------------------------------------------
// Multiply and divide.

// Our one-operand MUL/IMUL/DIV/IDIV, written back to RAX/RDX as the
// interpreter will: 8-bit forms use AX (AH:AL), wider ones rDX:rAX.
template <int k>
void WriteBackPair(uint64_t* rax, uint64_t* rdx, uint64_t low, uint64_t high) {
  if constexpr (k == 1) {
    *rax = MergeIntoRegister<2>(*rax, (high << 8) | low);
  } else {
    *rax = MergeIntoRegister<k>(*rax, low);
    *rdx = MergeIntoRegister<k>(*rdx, high);
  }
}

constexpr uint64_t kMulFlags = kFlagCf | kFlagOf;  // SF ZF AF PF undefined.

template <int k>
void DiffMulAtSize() {
  const auto gen = [](Generator& g) { return Inputs{g.Operand(), g.Operand(), g.Operand(), g.Flags()}; };
  RunDiff(
      "mul", k, gen, [](const Inputs& in) { return NativeMul<k>(in.a, in.b, in.c, in.fin); },
      [](const Inputs& in) {
        Ours o{in.a, in.b, FlagsFrom(in.fin)};
        const MulResult m = Mul<k>(&o.flags, in.a, in.c);
        WriteBackPair<k>(&o.r1, &o.r2, m.low, m.high);
        return o;
      },
      [](const Inputs&) { return kMulFlags; }, true);
  RunDiff(
      "imul1", k, gen, [](const Inputs& in) { return NativeImul1<k>(in.a, in.b, in.c, in.fin); },
      [](const Inputs& in) {
        Ours o{in.a, in.b, FlagsFrom(in.fin)};
        const MulResult m = Imul<k>(&o.flags, in.a, in.c);
        WriteBackPair<k>(&o.r1, &o.r2, m.low, m.high);
        return o;
      },
      [](const Inputs&) { return kMulFlags; }, true);
  if constexpr (k > 1) {
    RunDiff(
        "imul2", k, TwoOperands, [](const Inputs& in) { return NativeImul2<k>(in.a, in.b, in.fin); },
        [](const Inputs& in) {
          Ours o{0, in.b, FlagsFrom(in.fin)};
          o.r1 = MergeIntoRegister<k>(in.a, ImulTruncated<k>(&o.flags, in.a, in.b));
          return o;
        },
        [](const Inputs&) { return kMulFlags; }, true);
  }
}

// Independent #DE predicates (SDM "DIV"/"IDIV": divisor 0, or the quotient
// does not fit the destination), written without alu.h.
template <int k>
bool DivFaults(uint64_t rax, uint64_t rdx, uint64_t divisor, bool is_signed) {
  constexpr int kBits = k * 8;
  using U = unsigned __int128;
  using S = __int128;
  const U mask = (U{1} << kBits) - 1;
  U dividend = k == 1 ? (U{rax} & 0xffff) : (((U{rdx} & mask) << kBits) | (U{rax} & mask));
  U dv = U{divisor} & mask;
  if (dv == 0) return true;
  if (!is_signed) return dividend / dv > mask;
  // Sign-extend both to 128 bits; |dividend| < 2^(2*kBits-1) <= 2^127.
  const S sd = static_cast<S>(dividend << (128 - 2 * kBits)) >> (128 - 2 * kBits);
  const S sv = static_cast<S>(dv << (128 - kBits)) >> (128 - kBits);
  if (sv == -1) {
    // -2^127 / -1 would overflow the host's own 128-bit division.
    if (sd == static_cast<S>(U{1} << 127)) return true;
    const S q = -sd;
    return q > (static_cast<S>(1) << (kBits - 1)) - 1 || q < -(static_cast<S>(1) << (kBits - 1));
  }
  const S q = sd / sv;
  return q > (static_cast<S>(1) << (kBits - 1)) - 1 || q < -(static_cast<S>(1) << (kBits - 1));
}

template <int k>
void DiffDivAtSize(bool is_signed) {
  const std::string op = is_signed ? "idiv" : "div";
  // Half the cases are built to not fault (high part below the divisor), so
  // that the quotient paths get exercised, not just #DE.
  const auto gen = [](Generator& g) {
    Inputs in{g.Operand(), g.Operand(), g.Operand(), g.Flags()};
    if (g.rng()() & 1) {
      const uint64_t mask = k == 8 ? ~uint64_t{0} : (uint64_t{1} << (k * 8)) - 1;
      const uint64_t sign = uint64_t{1} << (k * 8 - 1);
      // A small-magnitude high part, sign-consistent with the low part.
      if (k == 1) {
        in.a = (in.a & ~uint64_t{0xff00}) | ((g.rng()() & 0x3f) << 8);
      } else {
        in.b = (in.b & ~mask) | ((in.a & sign) ? mask : 0);
      }
    }
    return in;
  };
  uint64_t faults = 0;
  RunDiff(
      op, k, gen,
      [&](const Inputs& in) -> Native {
        if (DivFaults<k>(in.a, in.b, in.c, is_signed)) {
          ++faults;
          // Never execute a faulting division: the expected answer is #DE,
          // encoded as "registers unchanged" plus the marker below.
          return {in.a, in.b, 0xDEDE};
        }
        return is_signed ? NativeIdiv<k>(in.a, in.b, in.c, in.fin) : NativeDiv<k>(in.a, in.b, in.c, in.fin);
      },
      [&](const Inputs& in) {
        Ours o{in.a, in.b, FlagsFrom(in.fin)};
        const uint64_t high = k == 1 ? in.a >> 8 : in.b;
        const DivResult d = is_signed ? Idiv<k>(high, in.a, in.c) : Div<k>(high, in.a, in.c);
        if (d.status == AluStatus::kDivideError) {
          o.flags.kind = CcKind::kEflags;
          o.flags.dst = 0xDEDE & kAll;
          return o;
        }
        WriteBackPair<k>(&o.r1, &o.r2, d.quotient, d.remainder);
        return o;
      },
      // All flags undefined (SDM "DIV"); the #DE marker is compared through
      // the low bits that survive kAll.
      [&](const Inputs& in) { return DivFaults<k>(in.a, in.b, in.c, is_signed) ? kAll : 0; }, true);
  EXPECT_GT(faults, 0u) << op << "/" << k << ": no #DE case generated";
}

// ---------------------------------------------------------------------------
// Bit test and scan, CMPXCHG.

template <int k>
void DiffBitAtSize() {
  // BT*: CF defined, ZF unchanged (defined); OF SF AF PF undefined. Pinned to
  // the host: unchanged.
  const auto bt_mask = [](const Inputs&) { return kAll; };
  const auto run_bt = [&](const std::string& op, auto native, auto fn, bool writes) {
    RunDiff(
        op, k, TwoOperands, [&](const Inputs& in) { return native(in.a, in.b, in.fin); },
        [&](const Inputs& in) {
          Ours o{in.a, in.b, FlagsFrom(in.fin)};
          const uint64_t r = fn(&o.flags, in.a, in.b);
          if (writes) o.r1 = MergeIntoRegister<k>(in.a, r);
          return o;
        },
        bt_mask, true);
  };
  run_bt("bt", NativeBt<k>, [](LazyFlags* f, uint64_t a, uint64_t b) { Bt<k>(f, a, b); return a; }, false);
  run_bt("bts", NativeBts<k>, Bts<k>, true);
  run_bt("btr", NativeBtr<k>, Btr<k>, true);
  run_bt("btc", NativeBtc<k>, Btc<k>, true);

  // BSF/BSR dest, src: ZF defined, compared. CF OF SF AF PF are undefined
  // and not compared (this AMD host clears CF OF SF AF and sets PF from the
  // index; we leave them unchanged). The destination for a zero source is
  // pinned to the host: unchanged, and for 32-bit operands the register is not
  // zero-extended either.
  const auto bs_mask = [](const Inputs&) { return kFlagZf; };
  const auto run_bs = [&](const std::string& op, auto native, auto fn) {
    RunDiff(
        op, k,
        [](Generator& g) {
          Inputs in = TwoOperands(g);
          if (g.rng()() % 4 == 0) in.b &= ~((k == 8 ? ~uint64_t{0} : (uint64_t{1} << (k * 8)) - 1));
          return in;
        },
        [&](const Inputs& in) { return native(in.a, in.b, in.fin); },
        [&](const Inputs& in) {
          Ours o{in.a, in.b, FlagsFrom(in.fin)};
          const uint64_t r = fn(&o.flags, in.a, in.b);
          if (Truncate<k>(in.b) != 0) o.r1 = MergeIntoRegister<k>(in.a, r);
          return o;
        },
        bs_mask, true);
  };
  run_bs("bsf", NativeBsf<k>, Bsf<k>);
  run_bs("bsr", NativeBsr<k>, Bsr<k>);
}

template <int k>
void DiffCmpxchgAtSize() {
  RunDiff(
      "cmpxchg", k,
      [](Generator& g) {
        Inputs in{g.Operand(), g.Operand(), g.Operand(), g.Flags()};
        if (g.rng()() & 1) in.b = (in.b & ~SizeMask<k>()) | Truncate<k>(in.a);  // Make it succeed.
        return in;
      },
      [](const Inputs& in) { return NativeCmpxchg<k>(in.a, in.b, in.c, in.fin); },
      [](const Inputs& in) {
        // The write-back rules documented at Cmpxchg() in alu.h.
        Ours o{in.a, in.b, FlagsFrom(in.fin)};
        if (Cmpxchg<k>(&o.flags, in.a, in.b)) {
          o.r2 = MergeIntoRegister<k>(in.b, in.c);
        } else {
          o.r1 = MergeIntoRegister<k>(in.a, in.b);
        }
        return o;
      },
      [](const Inputs&) { return kAll; }, true);
}

template <int k>
void AllAtSize() {
  DiffArithmeticAtSize<k>();
  DiffUnaryAtSize<k>();
  DiffShiftAtSize<k>();
  DiffMulAtSize<k>();
  DiffDivAtSize<k>(false);
  DiffDivAtSize<k>(true);
  DiffCmpxchgAtSize<k>();
  if constexpr (k > 1) {
    DiffDoubleShiftAtSize<k>();
    DiffBitAtSize<k>();
  }
}

TEST(AluDifferentialTest, Size8) { AllAtSize<1>(); }
TEST(AluDifferentialTest, Size16) { AllAtSize<2>(); }
TEST(AluDifferentialTest, Size32) { AllAtSize<4>(); }
TEST(AluDifferentialTest, Size64) { AllAtSize<8>(); }

// Every condition code against the host's SETcc, for every combination of
// the flags they read.
TEST(AluDifferentialTest, ConditionsMatchHostSetcc) {
  for (uint64_t bits = 0; bits < 64; ++bits) {
    uint64_t fin = kFixedFlags;
    const uint64_t order[6] = {kFlagCf, kFlagPf, kFlagAf, kFlagZf, kFlagSf, kFlagOf};
    for (int i = 0; i < 6; ++i) {
      if (bits & (uint64_t{1} << i)) fin |= order[i];
    }
    const LazyFlags f = FlagsFrom(fin);
    for (unsigned cc = 0; cc < 16; ++cc) {
      EXPECT_EQ(EvalCondition(f, cc), NativeSetcc(cc, fin))
          << "cc=" << ConditionName(cc) << " flags=" << std::hex << fin;
    }
  }
  CaseCounts()["setcc"] += 64 * 16;
}

// Prints the per-op case counts (for the record; see the file comment).
class SummaryPrinter : public ::testing::EmptyTestEventListener {
  void OnTestProgramEnd(const ::testing::UnitTest&) override {
    if (CaseCounts().empty()) return;
    std::string line = "alu differential cases:";
    for (const auto& [op, n] : CaseCounts()) absl::StrAppendFormat(&line, " %s=%d", op, n);
    std::printf("%s\n", line.c_str());
  }
};
const bool kSummaryRegistered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SummaryPrinter);
  return true;
}();

#else  // !defined(__x86_64__)

TEST(AluDifferentialTest, NeedsX86Host) { GTEST_SKIP() << "the differential test runs x86-64 instructions natively"; }

#endif

}  // namespace
}  // namespace cpu

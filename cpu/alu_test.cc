// Unit tests of the lazy flags (lazy_flags.h) and of ALU corner cases
// (alu.h) that do not need the host CPU. The host comparison lives in
// alu_differential_test.cc.
#include <cstdint>
#include <random>

#include "cpu/alu.h"
#include "cpu/lazy_flags.h"
#include "gtest/gtest.h"

namespace cpu {
namespace {

// The condition from materialised flags, written from SDM Vol. 1 Table B-1
// independently of lazy_internal::EvalFromRflags.
bool Reference(uint64_t fl, unsigned cc) {
  const bool cf = fl & kFlagCf, pf = fl & kFlagPf, zf = fl & kFlagZf, sf = fl & kFlagSf,
             of = fl & kFlagOf;
  const bool table[16] = {of,  !of,       cf,        !cf,         zf, !zf, cf || zf, !(cf || zf),
                          sf,  !sf,       pf,        !pf,         sf != of, sf == of,
                          zf || sf != of, !(zf || sf != of)};
  return table[cc];
}

LazyFlags From(uint64_t rflags) {
  LazyFlags f;
  LoadFromRflags(&f, rflags);
  return f;
}

TEST(LazyFlagsTest, IsCompact) { EXPECT_LE(sizeof(LazyFlags), 32u); }

TEST(LazyFlagsTest, MaterializeAdd) {
  LazyFlags f;
  EXPECT_EQ(Add<1>(&f, 0xff, 1), 0u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagZf | kFlagAf | kFlagPf);
  EXPECT_EQ(Add<1>(&f, 0x7f, 1), 0x80u);
  EXPECT_EQ(MaterializeArith(f), kFlagOf | kFlagSf | kFlagAf);
  EXPECT_EQ(Add<8>(&f, ~uint64_t{0}, 2), 1u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagAf);
}

TEST(LazyFlagsTest, MaterializeSubAndCmp) {
  LazyFlags f;
  Cmp<4>(&f, 1, 2);  // 1 - 2 = 0xffffffff: borrow, sign, even parity.
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagSf | kFlagAf | kFlagPf);
  Cmp<2>(&f, 0x8000, 1);  // min - 1 overflows.
  EXPECT_EQ(MaterializeArith(f), kFlagOf | kFlagAf | kFlagPf);
  Cmp<8>(&f, 5, 5);
  EXPECT_EQ(MaterializeArith(f), kFlagZf | kFlagPf);
}

TEST(LazyFlagsTest, MaterializeAdcSbbUseCarryIn) {
  LazyFlags f = From(kFlagCf);
  EXPECT_EQ(Adc<1>(&f, 0xff, 0), 0u);  // 0xff + 0 + 1 carries.
  EXPECT_EQ(MaterializeArith(f) & (kFlagCf | kFlagZf), kFlagCf | kFlagZf);
  f = From(kFlagCf);
  EXPECT_EQ(Sbb<1>(&f, 0, 0), 0xffu);  // 0 - 0 - 1 borrows.
  EXPECT_EQ(MaterializeArith(f) & (kFlagCf | kFlagSf), kFlagCf | kFlagSf);
  f = From(0);
  EXPECT_EQ(Sbb<1>(&f, 0, 0), 0u);
  EXPECT_EQ(MaterializeArith(f), kFlagZf | kFlagPf);
}

TEST(LazyFlagsTest, MaterializeLogicClearsCfOfAf) {
  LazyFlags f = From(kArithFlags);
  EXPECT_EQ(Xor<8>(&f, 0xf0, 0xf0), 0u);
  EXPECT_EQ(MaterializeArith(f), kFlagZf | kFlagPf);
  Or<1>(&f, 0x80, 0x01);  // Two bits set: even parity.
  EXPECT_EQ(MaterializeArith(f), kFlagSf | kFlagPf);
}

TEST(LazyFlagsTest, IncDecKeepCarry) {
  // The ADD's CF survives INC (SDM "INC": CF not affected).
  LazyFlags f;
  Add<4>(&f, 0xffffffff, 1);
  ASSERT_TRUE(MaterializeArith(f) & kFlagCf);
  EXPECT_EQ(Inc<4>(&f, 0x7fffffff), 0x80000000u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagOf | kFlagSf | kFlagAf | kFlagPf);
  EXPECT_EQ(Dec<4>(&f, 0x80000000), 0x7fffffffu);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagOf | kFlagAf | kFlagPf);
  // And a clear CF stays clear through a chain.
  Add<4>(&f, 1, 1);
  Inc<4>(&f, 0xffffffff);
  EXPECT_EQ(MaterializeArith(f), kFlagZf | kFlagAf | kFlagPf);
  EXPECT_TRUE(EvalCondition(f, kCondAe));
}

TEST(LazyFlagsTest, NegFlags) {
  LazyFlags f;
  EXPECT_EQ(Neg<1>(&f, 0), 0u);
  EXPECT_EQ(MaterializeArith(f), kFlagZf | kFlagPf);
  EXPECT_EQ(Neg<1>(&f, 0x80), 0x80u);
  EXPECT_EQ(MaterializeArith(f) & (kFlagCf | kFlagOf), kFlagCf | kFlagOf);
}

TEST(LazyFlagsTest, ShiftCountZeroLeavesFlags) {
  LazyFlags f = From(kFlagCf | kFlagOf | kFlagAf);
  EXPECT_EQ(Shl<4>(&f, 0x1234, 32), 0x1234u);  // 32 & 31 = 0.
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagOf | kFlagAf);
  EXPECT_EQ(Rol<1>(&f, 0x81, 0x20), 0x81u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagOf | kFlagAf);
}

TEST(LazyFlagsTest, ShiftFlags) {
  LazyFlags f;
  EXPECT_EQ(Shl<1>(&f, 0xc0, 1), 0x80u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagSf);  // OF = 1 ^ 1.
  EXPECT_EQ(Shr<1>(&f, 0x81, 1), 0x40u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagOf);  // OF = MSB(a).
  EXPECT_EQ(Sar<1>(&f, 0x81, 1), 0xc0u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagSf | kFlagPf);
  EXPECT_EQ(Sar<8>(&f, uint64_t{1} << 63, 63), ~uint64_t{0});
  EXPECT_EQ(Shl<2>(&f, 1, 16), 0u);  // CF = bit 0 for count == W.
  EXPECT_TRUE(MaterializeArith(f) & kFlagCf);
}

TEST(LazyFlagsTest, RotatesTouchOnlyCfOf) {
  LazyFlags f;
  Cmp<8>(&f, 0, 0);  // ZF PF set.
  EXPECT_EQ(Rol<1>(&f, 0x80, 1), 0x01u);
  EXPECT_EQ(MaterializeArith(f), kFlagZf | kFlagPf | kFlagCf | kFlagOf);
  f = From(kFlagCf);
  EXPECT_EQ(Rcl<1>(&f, 0x00, 1), 0x01u);
  EXPECT_EQ(MaterializeArith(f), 0u);
  f = From(kFlagCf);
  EXPECT_EQ(Rcr<8>(&f, 0, 1), uint64_t{1} << 63);
  EXPECT_EQ(MaterializeArith(f), kFlagOf);
  f = From(0);
  EXPECT_EQ(Rcl<1>(&f, 0x55, 9), 0x55u);  // 9 mod 9: rotated all the way.
}

TEST(LazyFlagsTest, MulFlags) {
  LazyFlags f;
  MulResult m = Mul<1>(&f, 0x10, 0x10);
  EXPECT_EQ(m.low, 0u);
  EXPECT_EQ(m.high, 1u);
  EXPECT_EQ(MaterializeArith(f) & (kFlagCf | kFlagOf), kFlagCf | kFlagOf);
  m = Imul<2>(&f, 0xffff, 0xffff);  // -1 * -1 = 1 fits.
  EXPECT_EQ(m.low, 1u);
  EXPECT_EQ(m.high, 0u);
  EXPECT_EQ(MaterializeArith(f) & (kFlagCf | kFlagOf), 0u);
  EXPECT_EQ(ImulTruncated<8>(&f, uint64_t{1} << 62, 2), uint64_t{1} << 63);
  EXPECT_EQ(MaterializeArith(f) & (kFlagCf | kFlagOf), kFlagCf | kFlagOf);
}

TEST(AluTest, DivideErrors) {
  EXPECT_EQ(Div<4>(0, 10, 0).status, AluStatus::kDivideError);
  EXPECT_EQ(Div<4>(5, 0, 5).status, AluStatus::kDivideError);  // Quotient 2^32.
  const DivResult ok = Div<4>(4, 0, 5);
  EXPECT_EQ(ok.status, AluStatus::kOk);
  EXPECT_EQ(ok.quotient, (uint64_t{4} << 32) / 5);
  EXPECT_EQ(ok.remainder, (uint64_t{4} << 32) % 5);
  // INT_MIN / -1 at every size, including the one that spans all 128 bits.
  EXPECT_EQ(Idiv<1>(0xff, 0x80, 0xff).status, AluStatus::kDivideError);
  EXPECT_EQ(Idiv<8>(uint64_t{1} << 63, 0, ~uint64_t{0}).status, AluStatus::kDivideError);
  EXPECT_EQ(Idiv<8>(~uint64_t{0}, uint64_t{1} << 63, ~uint64_t{0}).status, AluStatus::kDivideError);
  const DivResult neg = Idiv<2>(0xffff, 0xfff9, 2);  // -7 / 2 = -3 rem -1.
  EXPECT_EQ(neg.status, AluStatus::kOk);
  EXPECT_EQ(neg.quotient, 0xfffdu);
  EXPECT_EQ(neg.remainder, 0xffffu);
}

TEST(AluTest, BitScanKeepsDestinationOnZero) {
  LazyFlags f = From(kFlagCf);
  EXPECT_EQ(Bsf<4>(&f, 0x1234, 0), 0x1234u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf | kFlagZf);
  EXPECT_EQ(Bsr<8>(&f, 0, uint64_t{1} << 40), 40u);
  EXPECT_EQ(MaterializeArith(f), kFlagCf);
  EXPECT_EQ(BitBaseDisplacement<4>(static_cast<uint64_t>(-1)), -4);
  EXPECT_EQ(BitBaseDisplacement<2>(35), 4);
}

TEST(AluTest, CmpxchgComparesAccumulator) {
  LazyFlags f;
  EXPECT_TRUE(Cmpxchg<4>(&f, 7, 7));
  EXPECT_TRUE(EvalCondition(f, kCondE));
  EXPECT_FALSE(Cmpxchg<4>(&f, 1, 2));
  EXPECT_TRUE(EvalCondition(f, kCondB));
}

TEST(AluTest, SizeHelpers) {
  EXPECT_EQ(MergeIntoRegister<1>(0x1122334455667788, 0xaa), 0x11223344556677aau);
  EXPECT_EQ(MergeIntoRegister<2>(0x1122334455667788, 0xaabb), 0x112233445566aabbu);
  EXPECT_EQ(MergeIntoRegister<4>(0x1122334455667788, 0xaabbccdd), 0xaabbccddu);
  EXPECT_EQ(MergeIntoHigh8(0x1122, 0x33), 0x3322u);
  EXPECT_EQ(SignExtend<1>(0x80), -128);
  EXPECT_EQ(SignExtendAccumulator<2>(0x80), 0xff80u);          // CBW
  EXPECT_EQ(SignExtendAccumulator<8>(0x80000000), 0xffffffff80000000u);  // CDQE
  EXPECT_EQ(SignFill<4>(0x80000000), 0xffffffffu);              // CDQ
  EXPECT_EQ(SignFill<8>(1), 0u);                                // CQO
  EXPECT_EQ(Bswap<4>(0x11223344), 0x44332211u);
  EXPECT_EQ(Not<2>(0x00ff), 0xff00u);
}

TEST(LazyFlagsTest, LoadFromRflagsRoundTrip) {
  for (uint64_t bits = 0; bits < 64; ++bits) {
    uint64_t rflags = 0x202 | (uint64_t{1} << 10);  // IF, DF and bit 1: not ours.
    const uint64_t order[6] = {kFlagCf, kFlagPf, kFlagAf, kFlagZf, kFlagSf, kFlagOf};
    for (int i = 0; i < 6; ++i) {
      if (bits & (uint64_t{1} << i)) rflags |= order[i];
    }
    LazyFlags f;
    LoadFromRflags(&f, rflags);
    EXPECT_EQ(Materialize(f, rflags), rflags);
    EXPECT_EQ(Materialize(f, 0x202), (rflags & kArithFlags) | 0x202);
    for (unsigned cc = 0; cc < 16; ++cc) {
      EXPECT_EQ(EvalCondition(f, cc), Reference(rflags, cc)) << ConditionName(cc);
    }
  }
}

TEST(LazyFlagsTest, UpdateFlagsIsPartial) {
  LazyFlags f;
  Sub<1>(&f, 0, 1);  // CF SF AF PF.
  UpdateFlags(&f, kFlagCf, 0);
  EXPECT_EQ(MaterializeArith(f), kFlagSf | kFlagAf | kFlagPf);
}

// Jl after CMP on the fast path against the operand comparison.
TEST(LazyFlagsTest, FastPathsCompareOperands) {
  LazyFlags f;
  Cmp<4>(&f, 0xffffffff, 1);  // -1 < 1 signed, above unsigned.
  EXPECT_TRUE(EvalCondition(f, kCondL));
  EXPECT_TRUE(EvalCondition(f, kCondA));
  EXPECT_FALSE(EvalCondition(f, kCondG));
  cpu::Test<8>(&f, uint64_t{1} << 63, ~uint64_t{0});
  EXPECT_TRUE(EvalCondition(f, kCondL));
  EXPECT_TRUE(EvalCondition(f, kCondNe));
  EXPECT_FALSE(EvalCondition(f, kCondB));
}

// For random sequences of every op kind: EvalCondition agrees with the
// condition computed from Materialize, and Materialize is stable under
// LoadFromRflags.
TEST(LazyFlagsTest, RandomConsistency) {
  std::mt19937_64 rng(1234);
  LazyFlags f;
  const auto operand = [&] {
    switch (rng() % 6) {
      case 0: return uint64_t{0};
      case 1: return ~uint64_t{0};
      case 2: return uint64_t{1} << (rng() % 64);
      case 3: return (uint64_t{1} << (rng() % 64)) - 1;
      default: return static_cast<uint64_t>(rng());
    }
  };
  for (int i = 0; i < 200000; ++i) {
    const uint64_t a = operand(), b = operand();
    const int size = 1 << (rng() % 4);
    const unsigned op = rng() % 17;
#define SIZED(call)                  \
  switch (size) {                    \
    case 1: { constexpr int k = 1; call; break; } \
    case 2: { constexpr int k = 2; call; break; } \
    case 4: { constexpr int k = 4; call; break; } \
    default: { constexpr int k = 8; call; break; } \
  }
    switch (op) {
      case 0: SIZED(Add<k>(&f, a, b)); break;
      case 1: SIZED(Adc<k>(&f, a, b)); break;
      case 2: SIZED(Sub<k>(&f, a, b)); break;
      case 3: SIZED(Sbb<k>(&f, a, b)); break;
      case 4: SIZED(And<k>(&f, a, b)); break;
      case 5: SIZED(Xor<k>(&f, a, b)); break;
      case 6: SIZED(Inc<k>(&f, a)); break;
      case 7: SIZED(Dec<k>(&f, a)); break;
      case 8: SIZED(Neg<k>(&f, a)); break;
      case 9: SIZED(Shl<k>(&f, a, b)); break;
      case 10: SIZED(Shr<k>(&f, a, b)); break;
      case 11: SIZED(Sar<k>(&f, a, b)); break;
      case 12: SIZED(Rcl<k>(&f, a, b)); break;
      case 13: SIZED(Mul<k>(&f, a, b)); break;
      case 14: SIZED(Imul<k>(&f, a, b)); break;
      case 15: SIZED(Bsf<k>(&f, a, b)); break;
      default: LoadFromRflags(&f, rng()); break;
    }
#undef SIZED
    const uint64_t fl = MaterializeArith(f);
    for (unsigned cc = 0; cc < 16; ++cc) {
      ASSERT_EQ(EvalCondition(f, cc), Reference(fl, cc))
          << "cc=" << ConditionName(cc) << " " << DescribeLazyFlags(f);
    }
    LazyFlags copy;
    LoadFromRflags(&copy, Materialize(f, 0x202));
    ASSERT_EQ(MaterializeArith(copy), fl);
    ASSERT_EQ(GetCarry(f), fl & kFlagCf);
  }
}

}  // namespace
}  // namespace cpu

// Differential tests of REP MOVS/STOS against the host CPU: the same string
// instruction, operands, direction and memory contents run natively on a host
// buffer and in the interpreter on guest memory laid out at the same page
// offsets. Memory, rSI, rDI and rCX must match. The interpreter does forward
// 64-bit REP STOS/MOVS a page at a time on soft TLB hits (Interpreter::
// RepRunInPage); these cases cross pages, overlap in both directions and run
// backwards, where it must fall back to the element loop.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/interpreter_test_fixture.h"
#include "gtest/gtest.h"

namespace cpu {
namespace {

using namespace cpu::testing;

constexpr uint64_t kRegion = kData;  // three pages of guest RAM
constexpr size_t kRegionBytes = 3 * 4096;

struct Case {
  bool movs = false;
  unsigned size = 1;
  bool backward = false;
  uint64_t count = 0;
  uint64_t src = 0, dst = 0;  // offsets in the region
  uint64_t value = 0;
};

struct Regs {
  uint64_t rsi, rdi, rcx;
};

// Runs `c` natively on `buf` (4 KiB-aligned, kRegionBytes long).
template <unsigned kSize>
Regs NativeRep(const Case& c, uint8_t* buf) {
  uint8_t* s = buf + c.src;
  uint8_t* d = buf + c.dst;
  uint64_t n = c.count;
  const uint64_t v = c.value;
  if (c.backward) asm volatile("std" ::: "cc");
  if (c.movs) {
    if constexpr (kSize == 1) asm volatile("rep movsb" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
    if constexpr (kSize == 2) asm volatile("rep movsw" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
    if constexpr (kSize == 4) asm volatile("rep movsl" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
    if constexpr (kSize == 8) asm volatile("rep movsq" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
  } else {
    if constexpr (kSize == 1) asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(v) : "memory");
    if constexpr (kSize == 2) asm volatile("rep stosw" : "+D"(d), "+c"(n) : "a"(v) : "memory");
    if constexpr (kSize == 4) asm volatile("rep stosl" : "+D"(d), "+c"(n) : "a"(v) : "memory");
    if constexpr (kSize == 8) asm volatile("rep stosq" : "+D"(d), "+c"(n) : "a"(v) : "memory");
  }
  if (c.backward) asm volatile("cld" ::: "cc");
  return {static_cast<uint64_t>(s - buf), static_cast<uint64_t>(d - buf), n};
}

Regs Native(const Case& c, uint8_t* buf) {
  switch (c.size) {
    case 1: return NativeRep<1>(c, buf);
    case 2: return NativeRep<2>(c, buf);
    case 4: return NativeRep<4>(c, buf);
    default: return NativeRep<8>(c, buf);
  }
}

// Where the interpreter's copy of each (op, size) instruction sits: one
// "rep op; hlt" per 16 bytes, loaded once (rewriting one code address between
// cases would be a host write behind the decode cache).
uint64_t CodeAt(bool movs, unsigned size) {
  const unsigned size_index = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3;
  return kCode + 16 * ((movs ? 4 : 0) + size_index);
}

class StringDifferentialTest : public InterpreterTest {
 protected:
  void LoadStringCode() {
    for (bool movs : {false, true}) {
      for (unsigned size : {1u, 2u, 4u, 8u}) {
        std::vector<uint8_t> code;
        if (size == 2) code.push_back(0x66);
        code.push_back(0xf3);
        if (size == 8) code.push_back(0x48);
        code.push_back(static_cast<uint8_t>((movs ? 0xa4 : 0xaa) + (size == 1 ? 0 : 1)));
        code.push_back(0xf4);  // hlt
        Poke(CodeAt(movs, size), code.data(), code.size());
      }
    }
  }

  // A random case whose every access stays inside the region.
  Case RandomCase(std::mt19937_64& rng) {
    Case c;
    c.movs = rng() % 2;
    const unsigned sizes[] = {1, 2, 4, 8};
    c.size = sizes[rng() % 4];
    c.backward = rng() % 4 == 0;
    const uint64_t max_count = kRegionBytes / c.size;
    // Mostly long runs (a page or more), some short ones and zero.
    switch (rng() % 4) {
      case 0: c.count = rng() % 8; break;
      case 1: c.count = rng() % 64; break;
      default: c.count = rng() % max_count; break;
    }
    const uint64_t span = c.count * c.size;
    auto offset = [&]() -> uint64_t {
      // Forward: [off, off + span); backward: [off - span + size, off + size).
      const uint64_t room = kRegionBytes - span - (c.count == 0 ? c.size : 0);
      uint64_t off = room == 0 ? 0 : rng() % (room + 1);
      if (rng() % 2) off &= ~uint64_t{c.size - 1};  // often aligned
      if (c.backward && c.count > 0) off += span - c.size;
      return off;
    };
    c.dst = offset();
    c.src = rng() % 3 == 0 ? c.dst + (rng() % 33) - 16 : offset();  // overlaps too
    if (c.src > kRegionBytes - c.size || (c.backward ? c.src + c.size < span : c.src + span > kRegionBytes)) {
      c.src = c.dst;
    }
    c.value = rng();
    return c;
  }
};

TEST_F(StringDifferentialTest, RepMovsAndStosMatchTheHostCpu) {
  LoadStringCode();
  alignas(4096) static uint8_t host[kRegionBytes];
  std::mt19937_64 rng(20261206);
  for (int i = 0; i < 600; ++i) {
    const Case c = RandomCase(rng);
    SCOPED_TRACE(::testing::Message() << "case " << i << (c.movs ? " movs" : " stos") << c.size
                                    << (c.backward ? " backward" : " forward") << " count " << c.count
                                    << " src " << c.src << " dst " << c.dst);
    for (size_t b = 0; b < kRegionBytes; ++b) host[b] = static_cast<uint8_t>(rng());
    Poke(kRegion, host, kRegionBytes);
    const Regs want = Native(c, host);

    state_.rip = CodeAt(c.movs, c.size);
    state_.gpr[kRsi] = kRegion + c.src;
    state_.gpr[kRdi] = kRegion + c.dst;
    state_.gpr[kRcx] = c.count;
    state_.gpr[kRax] = c.value;
    if (c.backward) {
      state_.rflags_other |= kFlagDf;
    } else {
      state_.rflags_other &= ~kFlagDf;
    }
    RunToHalt();
    std::vector<uint8_t> got(kRegionBytes);
    Peek(kRegion, got.data(), got.size());
    ASSERT_EQ(std::memcmp(got.data(), host, kRegionBytes), 0);
    if (c.movs) {
      EXPECT_EQ(state_.gpr[kRsi], kRegion + want.rsi);
    }
    EXPECT_EQ(state_.gpr[kRdi], kRegion + want.rdi);
    EXPECT_EQ(state_.gpr[kRcx], want.rcx);
    EXPECT_EQ(state_.gpr[kRax], c.value);
  }
  // The page-at-once path ran (and was checked above).
  EXPECT_GT(Counter("rep_page_runs"), 100u);
}

// Stores into the page of the running code take the element loop (the page
// has no writable soft TLB entry), so the decode cache sees them: REP STOSB
// over the instructions right after it turns a UD2 into NOPs.
TEST_F(StringDifferentialTest, RepStosOverTheRunningCodeIsSeen) {
  const uint8_t code[] = {
      0xf3, 0xaa,        // rep stosb (rdi = the ud2 below, rcx = 2, al = nop)
      0x0f, 0x0b,        // ud2, overwritten
      0xf4,              // hlt
  };
  // Decode the block once with the UD2 in place (stopped before it).
  Load(code, code + sizeof(code));
  state_.gpr[kRcx] = 0;
  ASSERT_EQ(interp_->Run(1).reason, StopReason::kBudget);
  state_.rip = kCode;
  state_.gpr[kRdi] = kCode + 2;
  state_.gpr[kRcx] = 2;
  state_.gpr[kRax] = 0x90;
  RunToHalt();
  EXPECT_EQ(Peek64(kCode) & 0xffffffffff, 0xf490'90aa'f3u);
  EXPECT_EQ(Counter("ud"), 0u);
}

// REP STOS into MMIO reaches the platform one element at a time.
TEST_F(StringDifferentialTest, RepStosIntoMmioIsOneWritePerElement) {
  const uint8_t code[] = {0xf3, 0x48, 0xab, 0xf4};  // rep stosq; hlt
  Load(code, code + sizeof(code));
  state_.gpr[kRdi] = kMmio + 0x40;
  state_.gpr[kRcx] = 4;
  state_.gpr[kRax] = 0x1122334455667788;
  RunToHalt();
  ASSERT_EQ(platform_.mmio_writes.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(platform_.mmio_writes[i].where, kMmio + 0x40 + 8 * i);
    EXPECT_EQ(platform_.mmio_writes[i].size, 8);
    EXPECT_EQ(platform_.mmio_writes[i].data, 0x1122334455667788u);
  }
  EXPECT_EQ(state_.gpr[kRcx], 0u);
}

}  // namespace
}  // namespace cpu

// Differential tests of the string instructions against the host CPU: the
// same instruction (MOVS, STOS, LODS with REP; CMPS, SCAS with REPE or
// REPNE), operand size, operands, direction, flags and memory contents run
// natively on a host buffer and in the interpreter on guest memory laid out
// at the same page offsets. Memory, rSI, rDI, rCX, rAX and (for CMPS/SCAS)
// the arithmetic flags must match. The interpreter does forward 64-bit REP
// STOS/MOVS a page at a time on soft TLB hits (Interpreter::RepRunInPage);
// these cases cross pages, overlap in both directions and run backwards,
// where it must fall back to the element loop.
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

enum class StrOp { kMovs, kStos, kLods, kCmps, kScas };
constexpr StrOp kOps[] = {StrOp::kMovs, StrOp::kStos, StrOp::kLods, StrOp::kCmps, StrOp::kScas};
const char* Name(StrOp op) {
  switch (op) {
    case StrOp::kMovs: return "movs";
    case StrOp::kStos: return "stos";
    case StrOp::kLods: return "lods";
    case StrOp::kCmps: return "cmps";
    default: return "scas";
  }
}
bool Compares(StrOp op) { return op == StrOp::kCmps || op == StrOp::kScas; }
// CF, PF, AF, ZF, SF, OF: what CMPS and SCAS define.
constexpr uint64_t kArithFlags = 0x8d5;

struct Case {
  StrOp op = StrOp::kMovs;
  bool repne = false;  // CMPS/SCAS: REPNE instead of REPE
  unsigned size = 1;
  bool backward = false;
  uint64_t count = 0;
  uint64_t src = 0, dst = 0;  // offsets in the region
  uint64_t value = 0;          // rAX
  uint64_t flags = 0;          // RFLAGS before (arithmetic flags only)
};

struct Regs {
  uint64_t rsi, rdi, rcx, rax, flags;
};

// One native string instruction: `kAsm` with rSI, rDI, rCX, rAX and RFLAGS
// loaded from and stored back to the arguments. The stack pointer first
// steps over the red zone (the pushes must not overwrite the compiler's
// locals there), and DF is cleared afterwards, as the ABI requires.
#define NATIVE_STRING(kAsm)                                                                   \
  asm volatile("lea -128(%%rsp), %%rsp\n\tpushq %[f]\n\tpopfq\n\t" kAsm                      \
               "\n\tpushfq\n\tpopq %[f]\n\tcld\n\tlea 128(%%rsp), %%rsp"                      \
               : "+S"(s), "+D"(d), "+c"(n), "+a"(a), [f] "+r"(f)                              \
               :                                                                              \
               : "memory", "cc")

// Runs `c` natively on `buf` (4 KiB-aligned, kRegionBytes long).
template <unsigned kSize>
Regs NativeRep(const Case& c, uint8_t* buf) {
  uint8_t* s = buf + c.src;
  uint8_t* d = buf + c.dst;
  uint64_t n = c.count;
  uint64_t a = c.value;
  uint64_t f = c.flags | (c.backward ? uint64_t{0x400} : 0) | 2;  // DF, and the reserved bit
  switch (c.op) {
    case StrOp::kMovs:
      if constexpr (kSize == 1) NATIVE_STRING("rep movsb");
      if constexpr (kSize == 2) NATIVE_STRING("rep movsw");
      if constexpr (kSize == 4) NATIVE_STRING("rep movsl");
      if constexpr (kSize == 8) NATIVE_STRING("rep movsq");
      break;
    case StrOp::kStos:
      if constexpr (kSize == 1) NATIVE_STRING("rep stosb");
      if constexpr (kSize == 2) NATIVE_STRING("rep stosw");
      if constexpr (kSize == 4) NATIVE_STRING("rep stosl");
      if constexpr (kSize == 8) NATIVE_STRING("rep stosq");
      break;
    case StrOp::kLods:
      if constexpr (kSize == 1) NATIVE_STRING("rep lodsb");
      if constexpr (kSize == 2) NATIVE_STRING("rep lodsw");
      if constexpr (kSize == 4) NATIVE_STRING("rep lodsl");
      if constexpr (kSize == 8) NATIVE_STRING("rep lodsq");
      break;
    case StrOp::kCmps:
      if (c.repne) {
        if constexpr (kSize == 1) NATIVE_STRING("repne cmpsb");
        if constexpr (kSize == 2) NATIVE_STRING("repne cmpsw");
        if constexpr (kSize == 4) NATIVE_STRING("repne cmpsl");
        if constexpr (kSize == 8) NATIVE_STRING("repne cmpsq");
      } else {
        if constexpr (kSize == 1) NATIVE_STRING("repe cmpsb");
        if constexpr (kSize == 2) NATIVE_STRING("repe cmpsw");
        if constexpr (kSize == 4) NATIVE_STRING("repe cmpsl");
        if constexpr (kSize == 8) NATIVE_STRING("repe cmpsq");
      }
      break;
    case StrOp::kScas:
      if (c.repne) {
        if constexpr (kSize == 1) NATIVE_STRING("repne scasb");
        if constexpr (kSize == 2) NATIVE_STRING("repne scasw");
        if constexpr (kSize == 4) NATIVE_STRING("repne scasl");
        if constexpr (kSize == 8) NATIVE_STRING("repne scasq");
      } else {
        if constexpr (kSize == 1) NATIVE_STRING("repe scasb");
        if constexpr (kSize == 2) NATIVE_STRING("repe scasw");
        if constexpr (kSize == 4) NATIVE_STRING("repe scasl");
        if constexpr (kSize == 8) NATIVE_STRING("repe scasq");
      }
      break;
  }
  return {static_cast<uint64_t>(s - buf), static_cast<uint64_t>(d - buf), n, a, f & kArithFlags};
}

Regs Native(const Case& c, uint8_t* buf) {
  switch (c.size) {
    case 1: return NativeRep<1>(c, buf);
    case 2: return NativeRep<2>(c, buf);
    case 4: return NativeRep<4>(c, buf);
    default: return NativeRep<8>(c, buf);
  }
}

// Where the interpreter's copy of each (op, prefix, size) instruction sits:
// one "rep op; hlt" per 16 bytes, loaded once (rewriting one code address
// between cases would be a host write behind the decode cache).
uint64_t CodeAt(StrOp op, bool repne, unsigned size) {
  const unsigned size_index = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3;
  return kCode + 16 * ((static_cast<unsigned>(op) * 2 + (repne ? 1 : 0)) * 4 + size_index);
}
uint8_t Opcode(StrOp op) {  // the byte form; +1 for the larger sizes
  switch (op) {
    case StrOp::kMovs: return 0xa4;
    case StrOp::kStos: return 0xaa;
    case StrOp::kLods: return 0xac;
    case StrOp::kCmps: return 0xa6;
    default: return 0xae;
  }
}

class StringDifferentialTest : public InterpreterTest {
 protected:
  void LoadStringCode() {
    for (StrOp op : kOps) {
      for (bool repne : {false, true}) {
        for (unsigned size : {1u, 2u, 4u, 8u}) {
          std::vector<uint8_t> code;
          if (size == 2) code.push_back(0x66);
          code.push_back(repne ? 0xf2 : 0xf3);
          if (size == 8) code.push_back(0x48);
          code.push_back(static_cast<uint8_t>(Opcode(op) + (size == 1 ? 0 : 1)));
          code.push_back(0xf4);  // hlt
          Poke(CodeAt(op, repne, size), code.data(), code.size());
        }
      }
    }
  }

  // A random case whose every access stays inside the region.
  Case RandomCase(std::mt19937_64& rng) {
    Case c;
    // Mostly MOVS and STOS (the page-at-once path), all five throughout.
    const StrOp weighted[] = {StrOp::kMovs, StrOp::kMovs, StrOp::kStos, StrOp::kStos,
                              StrOp::kLods, StrOp::kCmps, StrOp::kScas};
    c.op = weighted[rng() % 7];
    c.repne = Compares(c.op) && rng() % 2;
    c.flags = rng() & kArithFlags;
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
    if (Compares(c.op) && rng() % 2) {
      // Long equal runs, so REPE goes far: the compared data repeat.
      c.value = 0;
    }
    return c;
  }
};

TEST_F(StringDifferentialTest, StringInstructionsMatchTheHostCpu) {
  LoadStringCode();
  alignas(4096) static uint8_t host[kRegionBytes];
  std::mt19937_64 rng(20261206);
  int ran[5] = {};
  for (int i = 0; i < 1000; ++i) {
    const Case c = RandomCase(rng);
    SCOPED_TRACE(::testing::Message() << "case " << i << " " << (c.repne ? "repne " : "") << Name(c.op)
                                    << c.size << (c.backward ? " backward" : " forward") << " count "
                                    << c.count << " src " << c.src << " dst " << c.dst);
    if (Compares(c.op) && c.value == 0) {
      // Mostly zeros with a few random bytes: runs of equal elements.
      for (size_t b = 0; b < kRegionBytes; ++b) host[b] = rng() % 64 == 0 ? static_cast<uint8_t>(rng()) : 0;
    } else {
      for (size_t b = 0; b < kRegionBytes; ++b) host[b] = static_cast<uint8_t>(rng());
    }
    Poke(kRegion, host, kRegionBytes);
    const Regs want = Native(c, host);

    state_.rip = CodeAt(c.op, c.repne, c.size);
    state_.gpr[kRsi] = kRegion + c.src;
    state_.gpr[kRdi] = kRegion + c.dst;
    state_.gpr[kRcx] = c.count;
    state_.gpr[kRax] = c.value;
    state_.SetRflags(c.flags | (c.backward ? kFlagDf : 0));
    RunToHalt();
    std::vector<uint8_t> got(kRegionBytes);
    Peek(kRegion, got.data(), got.size());
    ASSERT_EQ(std::memcmp(got.data(), host, kRegionBytes), 0);
    EXPECT_EQ(state_.gpr[kRsi], kRegion + want.rsi);
    EXPECT_EQ(state_.gpr[kRdi], kRegion + want.rdi);
    EXPECT_EQ(state_.gpr[kRcx], want.rcx);
    EXPECT_EQ(state_.gpr[kRax], want.rax);
    EXPECT_EQ(state_.Rflags() & kArithFlags, want.flags);
    ++ran[static_cast<size_t>(c.op)];
  }
  for (StrOp op : kOps) EXPECT_GT(ran[static_cast<size_t>(op)], 40) << Name(op);
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

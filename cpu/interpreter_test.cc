// Tests of cpu::Interpreter: small guest programs (cpu/testdata/programs.S,
// assembled by the host assembler) run in a fake guest memory with
// identity-mapped 4-level page tables and the native paging strategy.
#include "cpu/interpreter.h"

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/interpreter_test_fixture.h"
#include "gtest/gtest.h"
#include "mmu/paging_mode.h"

#define DECLARE_PROGRAM(name) extern "C" const uint8_t name[], name##_end[];
DECLARE_PROGRAM(prog_fib)
DECLARE_PROGRAM(prog_xorshift)
DECLARE_PROGRAM(prog_follow)
DECLARE_PROGRAM(prog_jmps)
DECLARE_PROGRAM(prog_mem)
DECLARE_PROGRAM(prog_fact)
DECLARE_PROGRAM(prog_rep)
DECLARE_PROGRAM(prog_cmps)
DECLARE_PROGRAM(prog_strlen)
DECLARE_PROGRAM(prog_div0)
DECLARE_PROGRAM(prog_write_ro)
DECLARE_PROGRAM(prog_smc)
DECLARE_PROGRAM(prog_cross)
DECLARE_PROGRAM(prog_pio)
DECLARE_PROGRAM(prog_mmio)
DECLARE_PROGRAM(prog_misc)
DECLARE_PROGRAM(prog_misc2)
extern "C" const uint8_t prog_div0_fault[], prog_write_ro_fault[];

namespace cpu {
namespace {

using namespace cpu::testing;  // the fixture, its layout constants and Reg

TEST_F(InterpreterTest, FibonacciLoop) {
  Load(prog_fib, prog_fib_end);
  const RunResult r = RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], 12586269025ull);
  EXPECT_EQ(r.instructions, 3u + 50 * 5 + 1);
  EXPECT_EQ(state_.rip, kCode + (prog_fib_end - prog_fib));
  EXPECT_GT(Counter("block_cache_hits"), 40u);
}

TEST_F(InterpreterTest, XorshiftChecksumMatchesHost) {
  Load(prog_xorshift, prog_xorshift_end);
  RunToHalt();
  uint64_t x = 88172645463325252ull, sum = 0;
  for (int i = 0; i < 1000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    sum += x;
    sum = (sum << 5) | (sum >> 59);
  }
  EXPECT_EQ(state_.gpr[kRax], x);
  EXPECT_EQ(state_.gpr[kRdx], sum);
  EXPECT_EQ(state_.gpr[kRcx], 0u);
}

TEST_F(InterpreterTest, BudgetStopsAndResumes) {
  Load(prog_xorshift, prog_xorshift_end);
  uint64_t total = 0;
  RunResult r;
  do {
    r = interp_->Run(7);
    total += r.instructions;
    ASSERT_LE(r.instructions, 7u);
  } while (r.reason == StopReason::kBudget);
  EXPECT_EQ(r.reason, StopReason::kHalt);
  EXPECT_EQ(total, 3u + 1000 * 13 + 1);
  EXPECT_EQ(state_.instructions, total);
}

// A Jcc inside a superblock that is taken on nearly every round is
// followed after kHotSideExits exits: the block is decoded again on through
// the branch target, and the rare not-taken path leaves it. Every round
// still computes what the host computes, whether the budget cuts the run
// anywhere or not.
TEST_F(InterpreterTest, HotForwardBranchIsFollowedAndStaysExact) {
  uint64_t want = 0;
  for (uint64_t c = 0; c < 5000; ++c) {
    want += c;
    if ((c & 0xff) == 0) want = (want + 1000) * 3;
    want = (want << 3) | (want >> 61);
  }
  Load(prog_follow, prog_follow_end);
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], want);
  EXPECT_GE(Counter("followed_jccs"), 1u);
  const uint64_t whole_run_blocks = Counter("block_cache_hits");

  Load(prog_follow, prog_follow_end);
  RunResult r;
  do {
    r = interp_->Run(5);
  } while (r.reason == StopReason::kBudget);
  EXPECT_EQ(r.reason, StopReason::kHalt);
  EXPECT_EQ(state_.gpr[kRax], want);
  // 8 instructions a round; a followed block runs 32 of them at a time.
  EXPECT_LT(whole_run_blocks, 5000u * 8 / 16);
}

TEST_F(InterpreterTest, FollowedJmpsRunExactlyAndLengthenBlocks) {
  uint64_t want = 0;
  for (uint64_t c = 0; c < 3000; ++c) {
    if (c & 1) {
      want += c;
    } else {
      want ^= c;
      want = (want << 5) | (want >> 59);
    }
  }
  Load(prog_jmps, prog_jmps_end);
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], want);
  const uint64_t blocks = Counter("block_cache_hits");
  // About 8 instructions a round; without followed JMPs a block would end at
  // each JMP (two or three blocks a round).
  EXPECT_LT(blocks, 3000u);
  // Single steps (a block cut after every instruction) agree.
  Load(prog_jmps, prog_jmps_end);
  RunResult r;
  do {
    r = interp_->Run(1);
  } while (r.reason == StopReason::kBudget);
  EXPECT_EQ(r.reason, StopReason::kHalt);
  EXPECT_EQ(state_.gpr[kRax], want);
}

// Regression: the block cache was direct-mapped, and two hot blocks whose
// rips hashed to one slot (the guest kernel's fault entry and exit in
// ptchurn) evicted each other on every turn: a decode every 300
// instructions. Two blocks of one set now both stay.
TEST_F(InterpreterTest, TwoHotBlocksOfOneCacheSetBothStay) {
  // The cache's set of a rip (interpreter.cc, BlockSet).
  constexpr uint64_t kSets = Interpreter::kNumBlocks / Interpreter::kBlockWays;
  auto set_of = [](uint64_t rip) { return (rip * 0x9E3779B97F4A7C15ull) >> (64 - std::countr_zero(kSets)); };
  const uint64_t a = kCode;
  uint64_t b = a + 64;
  while (set_of(b) != set_of(a)) ++b;
  ASSERT_LT(b, kData);
  // a: dec ecx; jz +5 (to the hlt); jmp b; hlt     b: jmp a
  auto rel32 = [](uint64_t from_next, uint64_t to) {
    const uint32_t r = static_cast<uint32_t>(to - from_next);
    return std::array<uint8_t, 4>{static_cast<uint8_t>(r), static_cast<uint8_t>(r >> 8),
                                  static_cast<uint8_t>(r >> 16), static_cast<uint8_t>(r >> 24)};
  };
  const auto to_b = rel32(a + 9, b);
  const uint8_t code_a[] = {0xff, 0xc9, 0x74, 0x05, 0xe9, to_b[0], to_b[1], to_b[2], to_b[3], 0xf4};
  const auto to_a = rel32(b + 5, a);
  const uint8_t code_b[] = {0xe9, to_a[0], to_a[1], to_a[2], to_a[3]};
  Load(code_b, code_b + sizeof(code_b), b);
  Load(code_a, code_a + sizeof(code_a), a);
  state_.gpr[kRcx] = 1000;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRcx], 0u);
  EXPECT_LE(Counter("blocks_decoded"), 4u);
}

TEST_F(InterpreterTest, LoadsStoresAndRipRelative) {
  Load(prog_mem, prog_mem_end);
  state_.gpr[kRdi] = kData;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], 0x1234u);
  EXPECT_EQ(state_.gpr[kRbx], 0xffu);
  EXPECT_EQ(state_.gpr[kRcx], ~uint64_t{0});
  EXPECT_EQ(state_.gpr[kRdx], 0x1000000000u);
  EXPECT_EQ(state_.gpr[kRsi], 0x1000001234u);
  EXPECT_EQ(state_.gpr[kR9], ~uint64_t{0});
  EXPECT_EQ(state_.gpr[kR10], 0xffffff80u);
  EXPECT_EQ(Peek64(kData), 0x1000001234u);
  EXPECT_EQ(state_.gpr[kR11], kCode + (prog_mem_end - prog_mem) - 8);
}

TEST_F(InterpreterTest, RecursiveCallsUseTheStack) {
  Load(prog_fact, prog_fact_end);
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], 3628800u);
  EXPECT_EQ(state_.gpr[kRsp], kStackTop);
}

TEST_F(InterpreterTest, RepMovsbAndStosq) {
  Load(prog_rep, prog_rep_end);
  std::vector<uint8_t> src(100);
  for (int i = 0; i < 100; ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
  Poke(kData, src.data(), src.size());
  state_.gpr[kRsi] = kData;
  state_.gpr[kRdi] = kData + 0x1000;
  state_.gpr[kRdx] = kData2 + 0xf00;  // 512 bytes: crosses into the next page
  RunToHalt();
  std::vector<uint8_t> dst(100);
  Peek(kData + 0x1000, dst.data(), dst.size());
  EXPECT_EQ(dst, src);
  EXPECT_EQ(state_.gpr[kRsi], kData + 100);
  EXPECT_EQ(state_.gpr[kRdi], kData2 + 0xf00 + 512);
  EXPECT_EQ(state_.gpr[kRcx], 0u);
  for (uint64_t i = 0; i < 512; i += 8) EXPECT_EQ(Peek64(kData2 + 0xf00 + i), 0x0101010101010101u);
  EXPECT_EQ(Peek64(kData2 + 0xf00 + 512), 0u);
}

TEST_F(InterpreterTest, RepeCmpsbStopsAtTheFirstDifference) {
  Load(prog_cmps, prog_cmps_end);
  std::string a(64, 'x'), b(64, 'x');
  b[37] = 'y';
  Poke(kData, a.data(), 64);
  Poke(kData + 0x100, b.data(), 64);
  state_.gpr[kRsi] = kData;
  state_.gpr[kRdi] = kData + 0x100;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRbx] & 0xff, 1u);
  EXPECT_EQ(state_.gpr[kRcx], 64u - 38);
  EXPECT_EQ(state_.gpr[kRsi], kData + 38);
}

TEST_F(InterpreterTest, RepneScasbStrlen) {
  Load(prog_strlen, prog_strlen_end);
  const char kText[] = "hello, soft cpu";
  Poke(kData, kText, sizeof(kText));
  state_.gpr[kRdi] = kData;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], sizeof(kText) - 1);
}

TEST_F(InterpreterTest, DivideByZeroRaisesDe) {
  Load(prog_div0, prog_div0_end);
  const RunResult r = interp_->Run(100);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorDe);
  EXPECT_FALSE(r.exception.has_error_code);
  EXPECT_EQ(state_.rip, kCode + (prog_div0_fault - prog_div0));
  EXPECT_EQ(state_.gpr[kR8], 14u);
  EXPECT_EQ(state_.gpr[kR9], 2u);
  EXPECT_EQ(r.instructions, 7u);
}

TEST_F(InterpreterTest, WriteToReadOnlyPageRaisesPageFault) {
  Load(prog_write_ro, prog_write_ro_end);
  Poke(kReadOnly + 0x10, "\x11\x22", 2);
  state_.gpr[kRdi] = kReadOnly + 0x10;
  const RunResult r = interp_->Run(100);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorPf);
  EXPECT_TRUE(r.exception.has_error_code);
  EXPECT_EQ(r.exception.error_code, mmu::pfec::kPresent | mmu::pfec::kWrite);
  EXPECT_EQ(r.exception.cr2, kReadOnly + 0x10);
  EXPECT_EQ(state_.rip, kCode + (prog_write_ro_fault - prog_write_ro));
  EXPECT_EQ(state_.gpr[kRax], 0x2211u);
}

TEST_F(InterpreterTest, SelfModifyingCodeIsSeen) {
  Load(prog_smc, prog_smc_end);
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], 99u);
  EXPECT_EQ(state_.gpr[kRbx], 42u);
  EXPECT_GE(Counter("smc_invalidations"), 2u);
}

TEST_F(InterpreterTest, PageCrossingInstructionAndData) {
  // The 10-byte movabs starts 5 bytes before the end of a code page.
  Load(prog_cross, prog_cross_end, kCode + 0x1000 - 5);
  state_.gpr[kRdi] = kData + 0x1000 - 4;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], 0x1222334455667789u);
  EXPECT_EQ(state_.gpr[kRcx], 0x1222334455667789u);
  EXPECT_EQ(Peek64(kData + 0x1000 - 4), 0x1222334455667789u);
  EXPECT_GE(Counter("cross_page_insns"), 1u);
}

TEST_F(InterpreterTest, PageCrossingWriteFaultsOnTheSecondPageWithoutStoring) {
  // A store whose second half lands on the read-only page.
  Load(prog_write_ro, prog_write_ro_end);
  state_.gpr[kRdi] = kReadOnly - 4;
  Poke(kReadOnly - 4, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
  const uint64_t before = Peek64(kReadOnly - 4);
  // Make the read-back value different so a partial store would show.
  const RunResult r0 = interp_->Run(1);  // the load
  ASSERT_EQ(r0.reason, StopReason::kBudget);
  state_.gpr[kRax] = 0xffffffffffffffffull;
  const RunResult r = interp_->Run(10);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorPf);
  EXPECT_EQ(r.exception.cr2, kReadOnly);
  EXPECT_EQ(Peek64(kReadOnly - 4), before);
}

TEST_F(InterpreterTest, PortIoReachesThePlatform) {
  Load(prog_pio, prog_pio_end);
  RunToHalt();
  ASSERT_EQ(platform_.outs.size(), 3u);
  EXPECT_EQ(platform_.outs[0].where, 0x3f8u);
  EXPECT_EQ(platform_.outs[0].data, 'H');
  EXPECT_EQ(platform_.outs[1].data, 'i');
  EXPECT_EQ(platform_.outs[2].where, 0x80u);
  EXPECT_EQ(platform_.outs[2].size, 4u);
  EXPECT_EQ(platform_.outs[2].data, 0x12345678u);
  ASSERT_EQ(platform_.ins.size(), 1u);
  EXPECT_EQ(state_.gpr[kRax], 0x1234565au);
  EXPECT_EQ(Counter("pio"), 4u);
}

TEST_F(InterpreterTest, MmioReachesThePlatform) {
  Load(prog_mmio, prog_mmio_end);
  state_.gpr[kRdi] = kMmio + 0x20;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kRax], 0xabcdu);
  ASSERT_EQ(platform_.mmio_reads.size(), 1u);
  EXPECT_EQ(platform_.mmio_reads[0].where, kMmio + 0x20);
  EXPECT_EQ(platform_.mmio_reads[0].size, 8u);
  ASSERT_EQ(platform_.mmio_writes.size(), 1u);
  EXPECT_EQ(platform_.mmio_writes[0].where, kMmio + 0x28);
  EXPECT_EQ(platform_.mmio_writes[0].data, 0x77u);
}

TEST_F(InterpreterTest, MiscInstructions) {
  Load(prog_misc, prog_misc_end);
  state_.gpr[kRdi] = kData;
  state_.gpr[kRbp] = 0x1234;
  RunToHalt();
  EXPECT_EQ(state_.gpr[kR8], 7u);
  EXPECT_EQ(state_.gpr[kR9], 0u);
  EXPECT_EQ(state_.gpr[kR12], static_cast<uint64_t>(-3));
  EXPECT_EQ(state_.gpr[kR13], static_cast<uint64_t>(-1));
  EXPECT_EQ(Peek64(kData), 25u);
  EXPECT_EQ(state_.gpr[kR15], 20u);
  EXPECT_EQ(state_.gpr[kR10], 111u);
  EXPECT_EQ(state_.gpr[kRsi], 1u);
  EXPECT_EQ(state_.gpr[kRbp], 0x1234u);
  EXPECT_EQ(state_.gpr[kRsp], kStackTop);
  EXPECT_EQ(Peek64(kData + 8), 4u);                       // bsf
  EXPECT_EQ(Peek64(kData + 16), 7u);                      // bsr
  EXPECT_EQ(Peek64(kData + 24), 0x0807060504030201u);     // bswap
  // CPUID leaf 0 overwrote rbx/rcx/rdx with the vendor.
  char vendor[13] = {};
  std::memcpy(vendor, &state_.gpr[kRbx], 4);
  std::memcpy(vendor + 4, &state_.gpr[kRdx], 4);
  std::memcpy(vendor + 8, &state_.gpr[kRcx], 4);
  EXPECT_STREQ(vendor, "VMMSoftCPU64");
  EXPECT_EQ(state_.gpr[kRax], 1u);
}

TEST_F(InterpreterTest, BackwardsRepMovsLoopSahfLahfMemoryShiftsEnterLeave) {
  Load(prog_misc2, prog_misc2_end);
  Poke(kData, "ABCDEFGH", 8);
  state_.gpr[kRsi] = kData + 7;
  state_.gpr[kRdi] = kData + 0x100 + 7;
  state_.gpr[kRdx] = kData + 0x200;
  RunToHalt();
  char copy[9] = {};
  Peek(kData + 0x100, copy, 8);
  EXPECT_STREQ(copy, "ABCDEFGH");
  EXPECT_EQ(state_.gpr[kRsi], kData - 1);
  EXPECT_EQ(state_.rflags_other & kFlagDf, 0u);
  EXPECT_EQ(state_.gpr[kRbx], 55u);
  EXPECT_EQ(state_.gpr[kR8], 0xd7u);
  EXPECT_EQ(state_.gpr[kR9], 8u);
  EXPECT_EQ(state_.gpr[kR10], kStackTop - 8 - 32);
  EXPECT_EQ(state_.gpr[kRsp], kStackTop);
}

TEST_F(InterpreterTest, RepStosFaultMidwayIsResumable) {
  // rep stosq over 4 qwords of which the last two are on the read-only page.
  const uint8_t code[] = {0xf3, 0x48, 0xab, 0xf4};  // rep stosq; hlt
  Load(code, code + sizeof(code));
  state_.gpr[kRdi] = kReadOnly - 16;
  state_.gpr[kRcx] = 4;
  state_.gpr[kRax] = 0x5555;
  const RunResult r = interp_->Run(10);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorPf);
  EXPECT_EQ(r.exception.cr2, kReadOnly);
  EXPECT_EQ(state_.rip, kCode);
  EXPECT_EQ(state_.gpr[kRcx], 2u);
  EXPECT_EQ(state_.gpr[kRdi], kReadOnly);
  EXPECT_EQ(Peek64(kReadOnly - 8), 0x5555u);
}

TEST_F(InterpreterTest, CpuidReportsLongModeAndNx) {
  uint32_t r[4];
  Interpreter::Cpuid(0x80000001, 0, r);
  EXPECT_NE(r[3] & (1u << 29), 0u);  // LM
  EXPECT_NE(r[3] & (1u << 20), 0u);  // NX
  EXPECT_EQ(r[2] & (1u << 5), 0u);   // no LZCNT
  Interpreter::Cpuid(7, 0, r);
  EXPECT_EQ(r[1] & (1u << 3), 0u);   // no BMI1
}

TEST_F(InterpreterTest, Ud2RaisesUd) {
  const uint8_t code[] = {0x90, 0x0f, 0x0b};
  Load(code, code + sizeof(code));
  const RunResult r = interp_->Run(10);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorUd);
  EXPECT_EQ(state_.rip, kCode + 1);
  EXPECT_EQ(Counter("ud"), 1u);
}

TEST_F(InterpreterTest, UnimplementedOpRaisesUdAndIsCounted) {
  const uint8_t code[] = {0xc8, 0x10, 0x00, 0x01};  // enter 16, 1: nesting levels are not run
  Load(code, code + sizeof(code));
  const RunResult r = interp_->Run(10);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorUd);
  EXPECT_EQ(Counter("unimplemented"), 1u);
}

TEST_F(InterpreterTest, FetchFromUnmappedPageRaisesPageFault) {
  state_.rip = 0x7000'0000'0000ull;
  const RunResult r = interp_->Run(10);
  ASSERT_EQ(r.reason, StopReason::kException);
  EXPECT_EQ(r.exception.vector, kVectorPf);
  EXPECT_EQ(r.exception.cr2, 0x7000'0000'0000ull);
  EXPECT_EQ(r.exception.error_code, mmu::pfec::kFetch);
}


// The handlers specialised per operand form (MOV, the ALU ops, IMUL, shifts
// and rotates, MOVZX/MOVSX/MOVSXD) must do exactly what the general
// per-(size, op) handlers do: a random program over register, immediate and
// memory forms runs once with each, from the same state, and must end in the
// same registers, flags and memory.
TEST_F(InterpreterTest, SpecialisedHandlersMatchGeneralOnes) {
  const std::vector<std::vector<uint8_t>> forms = {
      {0x48, 0x89, 0xc8},                          // mov rax, rcx
      {0x89, 0xd1},                                // mov ecx, edx
      {0x66, 0x89, 0xd6},                          // mov si, dx
      {0x88, 0xe0},                                // mov al, ah
      {0x48, 0x8b, 0x43, 0x08},                    // mov rax, [rbx+8]
      {0x48, 0x89, 0x4b, 0x10},                    // mov [rbx+16], rcx
      {0xc7, 0x43, 0x18, 0x78, 0x56, 0x34, 0x12},  // mov dword [rbx+24], 0x12345678
      {0x48, 0xc7, 0xc6, 0xf0, 0xff, 0xff, 0xff},  // mov rsi, -16
      {0x48, 0x01, 0xd0},                          // add rax, rdx
      {0x01, 0x4b, 0x20},                          // add [rbx+32], ecx
      {0x48, 0x03, 0x4b, 0x08},                    // add rcx, [rbx+8]
      {0x83, 0xc2, 0x7f},                          // add edx, 127
      {0x48, 0x29, 0xc8},                          // sub rax, rcx
      {0x80, 0x6b, 0x28, 0x05},                    // sub byte [rbx+40], 5
      {0x48, 0x21, 0xf2},                          // and rdx, rsi
      {0x09, 0xc8},                                // or eax, ecx
      {0x48, 0x31, 0xd1},                          // xor rcx, rdx
      {0x48, 0x39, 0xc8},                          // cmp rax, rcx
      {0x48, 0x85, 0xd2},                          // test rdx, rdx
      {0x84, 0xe4},                                // test ah, ah
      {0x48, 0x0f, 0xaf, 0xc1},                    // imul rax, rcx
      {0x0f, 0xaf, 0x4b, 0x08},                    // imul ecx, [rbx+8]
      {0x48, 0xc1, 0xe0, 0x05},                    // shl rax, 5
      {0x48, 0xd3, 0xea},                          // shr rdx, cl
      {0xc1, 0xf8, 0x03},                          // sar eax, 3
      {0x48, 0xc1, 0xc0, 0x11},                    // rol rax, 17
      {0xd1, 0xc9},                                // ror ecx, 1
      {0x66, 0xd3, 0xe6},                          // shl si, cl
      {0xd2, 0xe8},                                // shr al, cl
      {0xc1, 0x63, 0x30, 0x07},                    // shl dword [rbx+48], 7
      {0x0f, 0xb6, 0xc4},                          // movzx eax, ah
      {0x48, 0x0f, 0xbe, 0x43, 0x09},              // movsx rax, byte [rbx+9]
      {0x48, 0x63, 0xca},                          // movsxd rcx, edx
      {0x0f, 0xb7, 0x53, 0x0a},                    // movzx edx, word [rbx+10]
      {0x9c, 0x41, 0x58},                          // pushf; pop r8 (the flags so far)
  };
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  auto next = [&seed] {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
  };
  std::vector<uint8_t> program;
  for (int i = 0; i < 3000; ++i) {
    const auto& f = forms[next() % forms.size()];
    program.insert(program.end(), f.begin(), f.end());
  }
  program.push_back(0xf4);  // hlt
  Load(program.data(), program.data() + program.size());

  std::array<uint64_t, 16> regs;
  for (uint64_t& r : regs) r = next();
  regs[kRbx] = kData;
  regs[kRsp] = kStackTop;
  uint8_t data[64];
  for (uint8_t& b : data) b = static_cast<uint8_t>(next());

  struct End {
    std::array<uint64_t, 16> gpr;
    uint64_t rflags, rip;
    uint8_t data[64];
  };
  auto run = [&](bool specialised) {
    state_.gpr = regs;
    state_.SetRflags(0x2);
    state_.rip = kCode;
    Poke(kData, data, sizeof(data));
    Interpreter interp(&state_, &vcpu_, strategy_.get(), &platform_);
    interp.set_specialised_handlers_for_testing(specialised);
    const RunResult r = interp.Run(100000);
    EXPECT_EQ(r.reason, StopReason::kHalt);
    End e;
    e.gpr = state_.gpr;
    e.rflags = state_.Rflags();
    e.rip = state_.rip;
    Peek(kData, e.data, sizeof(e.data));
    return e;
  };
  const End general = run(false);
  const End specialised = run(true);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(specialised.gpr[i], general.gpr[i]) << "register " << i;
  EXPECT_EQ(specialised.rflags, general.rflags);
  EXPECT_EQ(specialised.rip, general.rip);
  EXPECT_EQ(0, std::memcmp(specialised.data, general.data, sizeof(general.data)));
}

}  // namespace
}  // namespace cpu

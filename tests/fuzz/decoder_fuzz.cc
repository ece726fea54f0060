// libFuzzer target for the soft CPU's instruction decoder (cpu/decoder.h): the
// guest controls every byte the decoder reads, so arbitrary bytes must never
// crash it, hang it, read outside the buffer (ASan) or trip UBSan, and every
// answer must obey the decoder's contract:
//  - kOk: 1 <= length <= min(15, available), op is not kInvalid, sizes legal;
//  - kNeedMoreBytes only when fewer than 15 bytes were available, and giving
//    the decoder the whole input then never shortens the instruction;
//  - decoding is a pure function of the bytes it consumed (same result with
//    trailing bytes cut right after the instruction);
//  - DecodeBlock stays inside its page and its out[] and agrees with Decode.
//
// The input is used twice: as an instruction stream (walked like a linear
// sweep) and as one code page for DecodeBlock at a fuzzer-chosen offset.
//
// Build: clang (-fsanitize=fuzzer); see tests/fuzz/CMakeLists.txt. It needs
// only cpu/decoder.cc and cpu/insn.cc (standard library only).
// Run:   ./decoder_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/decoder.h"

namespace {

void Require(bool condition) {
  if (!condition) std::abort();
}

void CheckOne(const uint8_t* bytes, size_t available) {
  // Copy into an exactly-sized heap buffer so ASan catches any overread.
  uint8_t* copy = static_cast<uint8_t*>(std::malloc(available == 0 ? 1 : available));
  if (available != 0) std::memcpy(copy, bytes, available);
  cpu::DecodedInsn insn;
  const cpu::DecodeStatus status = cpu::Decode(copy, available, &insn);
  switch (status) {
    case cpu::DecodeStatus::kOk: {
      Require(insn.length >= 1 && insn.length <= cpu::kMaxInsnBytes && insn.length <= available);
      Require(insn.op != cpu::Op::kInvalid);
      Require(insn.operand_size == 1 || insn.operand_size == 2 || insn.operand_size == 4 ||
              insn.operand_size == 8 || insn.operand_size == 16);
      Require(insn.address_size == 4 || insn.address_size == 8);
      // Exactly the consumed bytes give the same instruction.
      cpu::DecodedInsn again;
      Require(cpu::Decode(copy, insn.length, &again) == cpu::DecodeStatus::kOk);
      Require(std::memcmp(&again, &insn, sizeof(insn)) == 0);
      // And one byte fewer asks for more.
      Require(cpu::Decode(copy, insn.length - 1u, &again) == cpu::DecodeStatus::kNeedMoreBytes);
      const std::string text = cpu::Disassemble(insn);
      Require(!text.empty());
      break;
    }
    case cpu::DecodeStatus::kNeedMoreBytes:
      Require(available < cpu::kMaxInsnBytes);
      break;
    case cpu::DecodeStatus::kInvalid:
    case cpu::DecodeStatus::kTooLong:
      Require(insn.op == cpu::Op::kInvalid);
      Require(insn.length >= 1 && insn.length <= cpu::kMaxInsnBytes);
      (void)cpu::Disassemble(insn);
      break;
  }
  std::free(copy);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 1. Linear sweep over the input, each instruction decoded from an
  //    exactly-sized buffer of what is left (capped at 15 + a little).
  size_t pos = 0;
  for (int steps = 0; pos < size && steps < 4096; ++steps) {
    const size_t left = size - pos;
    CheckOne(data + pos, left < 20 ? left : 20);
    cpu::DecodedInsn insn;
    const cpu::DecodeStatus status = cpu::Decode(data + pos, left, &insn);
    pos += status == cpu::DecodeStatus::kOk ? insn.length : 1;
  }

  // 2. DecodeBlock on a page made of the input, at an offset near the end so
  //    page-crossing instructions are common.
  static uint8_t page[cpu::kCodePageBytes];
  std::memset(page, 0x90, sizeof(page));
  const size_t n = size < sizeof(page) ? size : sizeof(page);
  const uint32_t offset = static_cast<uint32_t>(cpu::kCodePageBytes - (n == 0 ? 1 : n));
  if (n != 0) std::memcpy(page + offset, data, n);
  constexpr size_t kMaxInsns = 64;
  // One spare entry past max_insns, poisoned, to catch writes beyond it.
  cpu::DecodedInsn out[kMaxInsns + 1];
  std::memset(&out[kMaxInsns], 0xa5, sizeof(out[kMaxInsns]));
  cpu::DecodedInsn guard;
  std::memset(&guard, 0xa5, sizeof(guard));
  const cpu::DecodedBlock block = cpu::DecodeBlock(page, offset, out, kMaxInsns);
  Require(std::memcmp(&out[kMaxInsns], &guard, sizeof(guard)) == 0);
  Require(block.num_insns <= kMaxInsns);
  Require(offset + block.num_bytes <= cpu::kCodePageBytes);
  uint32_t at = offset;
  for (uint32_t i = 0; i < block.num_insns; ++i) {
    cpu::DecodedInsn insn;
    const cpu::DecodeStatus status = cpu::Decode(page + at, cpu::kCodePageBytes - at, &insn);
    Require(std::memcmp(&insn, &out[i], sizeof(insn)) == 0);
    const bool last = i + 1 == block.num_insns;
    if (status != cpu::DecodeStatus::kOk) Require(last && block.end == cpu::BlockEnd::kInvalid);
    if (cpu::EndsBlock(insn.op)) Require(last);
    at += insn.length;
  }
  Require(at == offset + block.num_bytes);
  return 0;
}

// The soft CPU's x86-64 instruction decoder (64-bit mode only).
//
// Decode() turns the bytes at the guest's RIP into a DecodedInsn (cpu/insn.h);
// DecodeBlock() decodes a straight-line run of instructions from one code page
// into caller-provided storage: the unit the per-page decode cache keeps and a
// later translating tier would compile.
//
// Coverage: the general-purpose integer instruction set a compiler emits for
// freestanding code, and the system instructions our guest kernel uses (see
// the Op list in insn.h). Everything else (x87, SSE/AVX, VEX/EVEX, far
// calls/jumps, instructions invalid in 64-bit mode) is kInvalid, which the
// interpreter turns into #UD, counted and logged with the bytes.
//
// Robustness: the guest controls every byte. Decode never reads past
// `available`, never looks at more than 15 bytes, and never allocates; any
// input is either an instruction, kNeedMoreBytes, kInvalid or kTooLong. The
// libFuzzer target tests/fuzz/decoder_fuzz.cc holds it to that.
//
// Thread safety: pure functions; call from any thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/insn.h"

namespace cpu {

// The architectural limit on instruction length (SDM Vol. 2 §2.3.11).
inline constexpr size_t kMaxInsnBytes = 15;
// Code pages are 4 KiB; a block never crosses one.
inline constexpr uint32_t kCodePageBytes = 4096;

enum class DecodeStatus : uint8_t {
  kOk,             // *out holds the instruction.
  kNeedMoreBytes,  // The instruction continues past `available` (which is < 15): fetch
                   // the rest (e.g. from the next page) and decode again. Only the
                   // fetch of bytes the instruction really has may fault.
  kInvalid,        // Undefined or unsupported encoding: #UD. out->length is the
                   // number of bytes examined, for the log.
  kTooLong,        // The instruction would exceed 15 bytes: #GP(0) (SDM Vol. 2 §2.3.11).
};

// Decodes the instruction at bytes[0..available). On kOk fills *out completely
// (1 <= out->length <= min(15, available)). On kInvalid/kTooLong sets
// out->op = Op::kInvalid and out->length. On kNeedMoreBytes *out is unspecified.
[[nodiscard]] DecodeStatus Decode(const uint8_t* bytes, size_t available,
                                  DecodedInsn* out) noexcept;

// Why DecodeBlock stopped.
enum class BlockEnd : uint8_t {
  kEndsBlock,   // The last instruction ends the block (EndsBlock(op), see insn.h).
  kInvalid,     // The last instruction is kInvalid (undefined, unsupported or too long;
                // to tell #UD from #GP, Decode() its bytes again: a rare path).
  kPageEnd,     // The next instruction starts on the next page.
  kCrossPage,   // The next instruction straddles the page end: not decoded here;
                // the caller decodes it with Decode() from a 15-byte fetch.
  kMaxInsns,    // `max_insns` instructions were decoded.
};

struct DecodedBlock {
  uint32_t num_insns = 0;  // Entries written to `out`.
  uint32_t num_bytes = 0;  // The sum of their lengths.
  // The page offset just past the last instruction: its fall-through
  // address. offset + num_bytes unless a Jcc was followed.
  uint32_t end_offset = 0;
  // Bit i: out[i] is a Jcc whose taken path was followed (the next entry is
  // its target; the block must be left when it is not taken), or a direct
  // JMP that was followed.
  uint64_t followed = 0;
  BlockEnd end = BlockEnd::kMaxInsns;
};

// Decodes instructions from page_bytes[offset] onward (page_bytes is one
// kCodePageBytes code page) into out[0..max_insns) until an instruction that
// ends a block, an invalid one (stored as the last entry, op kInvalid), the end
// of the page, or max_insns. Requires offset < kCodePageBytes and max_insns >= 1.
// Allocation-free.
//
// `through_jcc`: decode on past conditional branches along their fall-through
// path (a superblock), so a loop whose early exits are rarely taken is one
// block. The caller must then leave the block wherever a Jcc is taken.
// `follow` (with through_jcc): page offsets of Jccs that are mostly taken;
// decoding goes on at such a Jcc's target instead, when the target is on
// this page, and `followed` marks it (the caller leaves the block wherever
// it is not taken). A hot loop whose body branches forward then becomes one
// block, unrolled up to max_insns. With through_jcc a direct JMP whose
// target is on this page is followed too (always taken; also marked in
// `followed`, so offsets can be recomputed), so if/else joins and loop
// back-edges do not end the block.
[[nodiscard]] DecodedBlock DecodeBlock(const uint8_t* page_bytes, uint32_t offset,
                                       DecodedInsn* out, size_t max_insns,
                                       bool through_jcc = false, const uint16_t* follow = nullptr,
                                       size_t num_follow = 0) noexcept;

}  // namespace cpu

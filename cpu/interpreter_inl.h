// Operand access helpers of cpu::Interpreter, inline so that both halves of
// the interpreter (interpreter.cc, the integer path; system.cc, the system
// instructions) get them without a call. Internal to cpu/.
#pragma once

#include <cstdint>

#include "cpu/interpreter.h"

namespace cpu {

inline uint64_t MaskDyn(uint64_t v, unsigned size) noexcept {
  return size >= 8 ? v : v & ((uint64_t{1} << (size * 8)) - 1);
}

inline uint64_t Interpreter::LeaAddress(const DecodedInsn& in) const noexcept {
  const MemOperand& m = in.mem;
  if (m.base == kBaseAbs64) return static_cast<uint64_t>(in.imm);
  uint64_t ea = static_cast<uint64_t>(static_cast<int64_t>(m.disp));
  if (m.base == kBaseRip) {
    ea += in.NextRip(state_.rip);
  } else if (m.base != kRegNone) {
    ea += state_.gpr[m.base];
  }
  if (m.index != kRegNone) ea += state_.gpr[m.index] << m.scale_log2;
  if (in.address_size == 4) ea &= 0xffff'ffff;
  return ea;
}

inline uint64_t Interpreter::EffectiveAddress(const DecodedInsn& in) const noexcept {
  uint64_t ea = LeaAddress(in);
  // Only FS and GS add a base in 64-bit mode (SDM Vol. 1 §3.4.2.1).
  if (in.segment == Segment::kFs) [[unlikely]] {
    ea += state_.seg[kFs].base;
  } else if (in.segment == Segment::kGs) [[unlikely]] {
    ea += state_.seg[kGs].base;
  }
  return ea;
}

inline bool Interpreter::ReadOperand(const DecodedInsn& in, const Operand& op, unsigned size,
                              uint64_t* v) noexcept {
  switch (op.kind) {
    case OperandKind::kReg: *v = state_.ReadReg(op.reg, size); return true;
    case OperandKind::kImm: *v = MaskDyn(static_cast<uint64_t>(in.imm), size); return true;
    case OperandKind::kMem: return Read(EffectiveAddress(in), size, v);
    default: *v = 0; return true;
  }
}

inline bool Interpreter::WriteOperand(const DecodedInsn& in, const Operand& op, unsigned size,
                               uint64_t v) noexcept {
  if (op.kind == OperandKind::kReg) [[likely]] {
    state_.WriteReg(op.reg, size, v);
    return true;
  }
  if (op.kind == OperandKind::kMem) return Write(EffectiveAddress(in), size, v);
  return true;
}

inline bool Interpreter::Push(unsigned size, uint64_t v) noexcept {
  const uint64_t rsp = state_.gpr[kRegRsp] - size;
  if (!Write(rsp, size, v)) return false;
  state_.gpr[kRegRsp] = rsp;
  return true;
}

inline bool Interpreter::Pop(unsigned size, uint64_t* v) noexcept {
  if (!Read(state_.gpr[kRegRsp], size, v)) return false;
  state_.gpr[kRegRsp] += size;
  return true;
}

}  // namespace cpu

// CpuState: the architectural state of one soft-CPU vCPU (64-bit mode).
//
// Plain data, owned by the vCPU and executed on by cpu::Interpreter
// (cpu/interpreter.h). The arithmetic flags live in a LazyFlags (see
// cpu/lazy_flags.h); every other RFLAGS bit (IF, DF, TF, IOPL, AC, ...) lives in
// `rflags_other`. Rflags()/SetRflags() convert between the split form and the
// architectural register.
//
// Register numbering is the decoder's (cpu/insn.h): 0..15 are RAX..R15, and
// for byte operands 16..19 are AH, CH, DH, BH. ReadReg/WriteReg apply the x86
// write rules: 8- and 16-bit writes merge, 32-bit writes zero-extend to 64,
// 64-bit writes replace (SDM Vol. 1 §3.4.1.1).
//
// Thread safety: none; the vCPU thread owns it.
#pragma once

#include <array>
#include <cstdint>

#include "cpu/alu.h"
#include "cpu/insn.h"
#include "cpu/lazy_flags.h"

namespace cpu {

// Non-arithmetic RFLAGS bits (SDM Vol. 1 §3.4.3, Figure 3-8).
inline constexpr uint64_t kFlagReserved1 = uint64_t{1} << 1;  // always 1
inline constexpr uint64_t kFlagTf = uint64_t{1} << 8;
inline constexpr uint64_t kFlagIf = uint64_t{1} << 9;
inline constexpr uint64_t kFlagDf = uint64_t{1} << 10;
inline constexpr uint64_t kFlagIopl = uint64_t{3} << 12;
inline constexpr uint64_t kFlagNt = uint64_t{1} << 14;
inline constexpr uint64_t kFlagRf = uint64_t{1} << 16;
inline constexpr uint64_t kFlagVm = uint64_t{1} << 17;
inline constexpr uint64_t kFlagAc = uint64_t{1} << 18;
inline constexpr uint64_t kFlagVif = uint64_t{1} << 19;
inline constexpr uint64_t kFlagVip = uint64_t{1} << 20;
inline constexpr uint64_t kFlagId = uint64_t{1} << 21;

// A segment register as 64-bit mode uses it: the selector, and the base
// (meaningful only for FS and GS, SDM Vol. 1 §3.4.2.1).
struct SegmentReg {
  uint16_t selector = 0;
  uint64_t base = 0;
};

// GDTR/IDTR (SDM Vol. 3A §2.4).
struct DescriptorTableReg {
  uint64_t base = 0;
  uint16_t limit = 0xffff;
};

// Indices of CpuState::seg, the decoder's kSreg numbering.
enum SregIndex : uint8_t { kEs = 0, kCs = 1, kSs = 2, kDs = 3, kFs = 4, kGs = 5 };

struct CpuState {
  std::array<uint64_t, 16> gpr{};
  uint64_t rip = 0;
  LazyFlags flags;
  // RFLAGS without the six arithmetic flags; bit 1 is always set.
  uint64_t rflags_other = kFlagReserved1;

  std::array<SegmentReg, 6> seg{};  // ES CS SS DS FS GS; FS/GS .base are the bases
  uint64_t kernel_gs_base = 0;      // IA32_KERNEL_GS_BASE (SWAPGS)
  DescriptorTableReg gdtr;
  DescriptorTableReg idtr;
  uint16_t ldtr = 0;
  uint16_t tr = 0;
  uint64_t tr_base = 0;
  uint32_t tr_limit = 0;

  // Long mode with paging on by default: the interpreter only runs 64-bit code.
  uint64_t cr0 = 0x8000'0011;  // PG | ET | PE
  uint64_t cr2 = 0;
  uint64_t cr3 = 0;
  uint64_t cr4 = 0x20;         // PAE
  uint64_t cr8 = 0;
  uint64_t efer = 0xd01;       // SCE | LME | LMA | NXE
  uint64_t star = 0, lstar = 0, cstar = 0, sfmask = 0;
  uint64_t tsc_aux = 0;
  uint64_t pat = 0x0007'0406'0007'0406;  // IA32_PAT power-up value

  uint8_t cpl = 0;
  // Interrupts are inhibited until one more instruction retires (after STI
  // that set IF, and after MOV SS; SDM Vol. 3A §6.8.3).
  bool interrupt_shadow = false;

  // Guest time (docs/cpu.md, "Time"): one cycle per retired instruction, plus
  // the cycles a halted vCPU skipped to its next timer event. Nothing here
  // reads the host clock, so a run is deterministic.
  uint64_t instructions = 0;  // retired since reset
  uint64_t idle_cycles = 0;   // skipped while halted
  // IA32_TSC writes: TSC = cycles + tsc_offset.
  uint64_t tsc_offset = 0;

  uint64_t Cycles() const noexcept { return instructions + idle_cycles; }
  uint64_t Tsc() const noexcept { return Cycles() + tsc_offset; }

  uint64_t Rflags() const noexcept { return Materialize(flags, rflags_other) | kFlagReserved1; }
  void SetRflags(uint64_t v) noexcept {
    LoadFromRflags(&flags, v);
    rflags_other = (v & ~kArithFlags) | kFlagReserved1;
  }

  // The value of register `reg` (decoder numbering) at `size` bytes,
  // zero-extended.
  uint64_t ReadReg(uint8_t reg, unsigned size) const noexcept {
    if (reg >= kRegAh) return (gpr[reg - kRegAh] >> 8) & 0xff;
    const uint64_t v = gpr[reg];
    switch (size) {
      case 1: return v & 0xff;
      case 2: return v & 0xffff;
      case 4: return v & 0xffff'ffff;
      default: return v;
    }
  }
  void WriteReg(uint8_t reg, unsigned size, uint64_t value) noexcept {
    if (reg >= kRegAh) {
      gpr[reg - kRegAh] = MergeIntoHigh8(gpr[reg - kRegAh], value);
      return;
    }
    uint64_t& r = gpr[reg];
    switch (size) {
      case 1: r = MergeIntoRegister<1>(r, value); break;
      case 2: r = MergeIntoRegister<2>(r, value); break;
      case 4: r = MergeIntoRegister<4>(r, value); break;
      default: r = value; break;
    }
  }
};

}  // namespace cpu

// Lapic: the xAPIC local APIC of one soft-backend vCPU.
//
// Section references are to the APIC chapter of the Intel SDM Vol. 3A,
// "Advanced Programmable Interrupt Controller (APIC)": chapter 11 in current
// editions (chapter 10 before 2023; the sub-section numbers are the same).
// Titles are quoted so the references survive another renumbering.
//
// What is modelled, and why that much:
//   - The xAPIC MMIO register page (§11.4.1 "The Local APIC Block Diagram",
//     Table 11-1), at the IA32_APIC_BASE address (§11.4.4). x2APIC is not
//     offered: a guest kernel runs fine on xAPIC MMIO, and it keeps one
//     register interface.
//   - Fixed interrupts through IRR/ISR/TMR with the TPR/PPR priority rules
//     (§11.8.3 "Interrupt, Task, and Processor Priority", §11.8.4 "Interrupt
//     Acceptance for Fixed Interrupts", §11.8.5 "Signaling Interrupt Servicing
//     Completion"). This is what a kernel's timer and device interrupts need.
//   - The APIC timer in one-shot and periodic modes (§11.5.4 "APIC Timer").
//     TSC-deadline mode is not offered (CPUID.01H:ECX[24] stays 0), so mode
//     10b (and the reserved 11b) behave as one-shot.
//   - Self-IPIs (ICR shorthand "self", or fixed delivery to our own APIC ID),
//     enough for a kernel's irq_work and self-directed rescheduling; every
//     other IPI is dropped and counted (one vCPU per Lapic; SMP is later).
//   - NMI, SMI, INIT, SIPI, ExtINT, LINT0/LINT1 pins, thermal/perf/error
//     sources, ESR and APR are registers only: they hold what the guest writes
//     (LVTs) or read 0 (ESR, APR) and never raise anything.
//
// Clocking: `now` is virtual time in LAPIC input-clock ticks (the timer's
// clock before the divide configuration). The vCPU derives it from its
// instruction count, so runs are deterministic; it must be monotonic. The
// model is lazy: nothing happens between calls. Read() and Write() first
// process timer expiries up to `now` (AdvanceTo), so what the guest sees is
// exactly what a continuously running timer would show; NextTimerEvent() tells
// the CPU how far it may run (or skip while halted) before it must call
// AdvanceTo again.
//
// Interrupt acceptance: the CPU, when RFLAGS.IF allows, asks
// HighestDeliverable(); if it is >= 0 it calls Acknowledge(vector) and
// delivers the vector through the IDT. The guest's write to EOI retires the
// highest ISR bit; for a level-triggered vector (TMR) the EOI callback tells
// the I/O APIC, which clears that pin's Remote IRR (§11.8.5).
//
// Threads: one Lapic per vCPU. Everything is called on that vCPU's thread
// except Post() (any thread, lock-free) and the const accessors id() and
// counters(). Other threads post external interrupts (from the I/O APIC or a
// device) with Post(); the vCPU folds them into IRR with MergePosted(), which
// costs one relaxed load when nothing was posted. Post() does not wake a
// halted vCPU: whoever posts must also kick the vCPU's thread.
//
// No allocation after construction (set_eoi_callback aside, called at setup).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>

#include "base/counters.h"

namespace cpu {

#define CPU_LAPIC_COUNTERS(X)                                                      \
  X(TimerFires, timer_fires)             /* timer expiries that set IRR */          \
  X(TimerOverruns, timer_overruns)       /* expiries folded into a pending one */   \
  X(InterruptsAccepted, interrupts_accepted) /* IRR -> ISR (Acknowledge) */         \
  X(Eois, eois)                          /* EOI writes that retired an ISR bit */   \
  X(Posted, posted)                      /* Post() calls, folded in by MergePosted */ \
  X(IllegalVectors, illegal_vectors)     /* vectors 0-15 dropped */                 \
  X(RegisterReads, register_reads)                                                  \
  X(RegisterWrites, register_writes)                                                \
  X(IpisIgnored, ipis_ignored)           /* ICR writes not aimed at this APIC */    \
  X(DroppedDisabled, dropped_disabled)   /* fixed interrupts while SVR disabled */
BASE_DEFINE_COUNTERS(LapicCounters, CPU_LAPIC_COUNTERS);

class Lapic {
 public:
  // IA32_APIC_BASE (MSR 0x1b, §11.4.4 "Local APIC Status and Location").
  static constexpr uint32_t kApicBaseMsr = 0x1b;
  static constexpr uint64_t kDefaultBase = 0xfee00000;
  static constexpr uint64_t kApicBaseBsp = 1ull << 8;
  static constexpr uint64_t kApicBaseEnable = 1ull << 11;
  static constexpr uint32_t kMmioSize = 0x1000;

  // Register offsets within the page (Table 11-1 "Local APIC Register
  // Address Map"). Registers are 16-byte aligned.
  static constexpr uint32_t kRegId = 0x20;
  static constexpr uint32_t kRegVersion = 0x30;
  static constexpr uint32_t kRegTpr = 0x80;
  static constexpr uint32_t kRegApr = 0x90;
  static constexpr uint32_t kRegPpr = 0xa0;
  static constexpr uint32_t kRegEoi = 0xb0;
  static constexpr uint32_t kRegLdr = 0xd0;
  static constexpr uint32_t kRegDfr = 0xe0;
  static constexpr uint32_t kRegSvr = 0xf0;
  static constexpr uint32_t kRegIsr = 0x100;  // 8 registers, 0x100-0x170
  static constexpr uint32_t kRegTmr = 0x180;  // 0x180-0x1f0
  static constexpr uint32_t kRegIrr = 0x200;  // 0x200-0x270
  static constexpr uint32_t kRegEsr = 0x280;
  static constexpr uint32_t kRegIcrLow = 0x300;
  static constexpr uint32_t kRegIcrHigh = 0x310;
  static constexpr uint32_t kRegLvtTimer = 0x320;
  static constexpr uint32_t kRegLvtThermal = 0x330;
  static constexpr uint32_t kRegLvtPerf = 0x340;
  static constexpr uint32_t kRegLvtLint0 = 0x350;
  static constexpr uint32_t kRegLvtLint1 = 0x360;
  static constexpr uint32_t kRegLvtError = 0x370;
  static constexpr uint32_t kRegTimerInitial = 0x380;
  static constexpr uint32_t kRegTimerCurrent = 0x390;
  static constexpr uint32_t kRegTimerDivide = 0x3e0;

  // Version register: version 0x14 (an integrated xAPIC), max LVT entry 5
  // (six LVTs, no CMCI), bit 24 clear (no EOI-broadcast suppression).
  static constexpr uint32_t kVersion = 0x00050014;

  // LVT and SVR bits (§11.5.1 "Local Vector Table", Figure 11-8; §11.9
  // "Spurious Interrupt", Figure 11-23).
  static constexpr uint32_t kLvtMasked = 1u << 16;
  static constexpr uint32_t kLvtTimerPeriodic = 1u << 17;  // mode bits 18:17 = 01b
  static constexpr uint32_t kSvrEnable = 1u << 8;

  static constexpr uint64_t kNoEvent = std::numeric_limits<uint64_t>::max();

  // State after power-up/reset (§11.4.7.1): everything zero except DFR (all
  // ones), SVR (0xff, software-disabled) and the LVTs (masked).
  explicit Lapic(uint8_t apic_id = 0, bool bsp = true) noexcept;
  Lapic(const Lapic&) = delete;
  Lapic& operator=(const Lapic&) = delete;

  // Back to the power-up state (INIT). Posted-but-unmerged interrupts are
  // dropped, like interrupts in flight at a hardware reset.
  void Reset() noexcept;

  // MMIO: 32-bit accesses at `offset` within the page. Offsets that are not a
  // register (unaligned, unassigned, write-only EOI) read 0; writes to them
  // and to read-only registers are ignored.
  uint32_t Read(uint32_t offset, uint64_t now) noexcept;
  void Write(uint32_t offset, uint32_t value, uint64_t now) noexcept;

  // The absolute tick at which the timer's next expiry raises an interrupt
  // (it may be <= the current time if AdvanceTo has not processed it yet), or
  // kNoEvent if the timer is stopped, spent (one-shot) or masked.
  uint64_t NextTimerEvent() const noexcept {
    return (timer_armed_ && !(lvt_[kLvtIndexTimer] & kLvtMasked)) ? deadline_ : kNoEvent;
  }

  // Processes timer expiries up to and including `now`.
  void AdvanceTo(uint64_t now) noexcept;

  // The highest IRR vector whose priority class (vector >> 4) is above the
  // PPR's class, or -1 (§11.8.4).
  int HighestDeliverable() const noexcept;
  // The CPU takes `vector` (which HighestDeliverable returned): IRR -> ISR.
  void Acknowledge(uint8_t vector) noexcept;
  // What the CPU delivers if HighestDeliverable's vector has vanished by
  // the time it acknowledges (§11.9).
  uint8_t spurious_vector() const noexcept { return static_cast<uint8_t>(svr_ & 0xff); }

  // Called on the vCPU thread, from Write(EOI), with the vector of a
  // level-triggered interrupt that the guest just completed. It may call
  // Post() (the I/O APIC redelivering a still-asserted line).
  void set_eoi_callback(std::function<void(uint8_t vector)> cb) { eoi_callback_ = std::move(cb); }

  // An external fixed interrupt, from any thread. Lock-free; takes effect at
  // the vCPU's next MergePosted(). Vectors 0-15 are dropped there (§11.5.2
  // "Valid Interrupt Vectors") and counted.
  void Post(uint8_t vector, bool level) noexcept;
  // vCPU thread: moves posted interrupts into IRR (TMR per trigger mode).
  void MergePosted() noexcept {
    if (!posted_.any.load(std::memory_order_relaxed)) [[likely]] return;
    MergePostedSlow();
  }

  // TPR as MOV to/from CR8 sees it: CR8[3:0] = TPR[7:4] (§11.8.6 "Task
  // Priority in IA-32e Mode").
  uint8_t cr8() const noexcept { return static_cast<uint8_t>(tpr_ >> 4); }
  void set_cr8(uint64_t value) noexcept { tpr_ = static_cast<uint32_t>((value & 0xf) << 4); }

  uint32_t ppr() const noexcept;
  bool software_enabled() const noexcept { return (svr_ & kSvrEnable) != 0; }
  // The APIC ID (ID register bits 31:24). Any thread.
  uint8_t id() const noexcept { return static_cast<uint8_t>(id_reg_.load(std::memory_order_relaxed) >> 24); }

  uint64_t apic_base_msr() const noexcept { return apic_base_; }
  // WRMSR IA32_APIC_BASE. Only rewriting the current value (same base, xAPIC
  // enabled, no x2APIC, no reserved bits; BSP is read-only here) is
  // accepted. Relocating or disabling the APIC and x2APIC are not offered:
  // false means the CPU raises #GP.
  bool SetApicBaseMsr(uint64_t value) noexcept;

  const LapicCounters& counters() const noexcept { return counters_; }

 private:
  static constexpr int kNumLvts = 6;  // timer, thermal, perf, LINT0, LINT1, error
  static constexpr int kLvtIndexTimer = 0;

  // 256-bit vector sets, bit v of word v/64.
  using Bits256 = std::array<uint64_t, 4>;
  static bool TestBit(const Bits256& b, uint8_t v) noexcept { return (b[v >> 6] >> (v & 63)) & 1; }
  static void SetBit(Bits256& b, uint8_t v) noexcept { b[v >> 6] |= 1ull << (v & 63); }
  static void ClearBit(Bits256& b, uint8_t v) noexcept { b[v >> 6] &= ~(1ull << (v & 63)); }
  static int Highest(const Bits256& b) noexcept;

  void MergePostedSlow() noexcept;
  // A fixed interrupt arrives at this APIC (timer, self-IPI, posted).
  void AcceptFixed(uint8_t vector, bool level) noexcept;
  void FireTimer(uint64_t expiries) noexcept;
  uint32_t CurrentCount(uint64_t now) const noexcept;
  void WriteSvr(uint32_t value) noexcept;
  void WriteTimerDivide(uint32_t value, uint64_t now) noexcept;
  void WriteTimerInitial(uint32_t value, uint64_t now) noexcept;
  void WriteIcrLow(uint32_t value) noexcept;
  void Eoi() noexcept;

  // Registers (vCPU thread).
  std::atomic<uint32_t> id_reg_{0};  // atomic only so id() may be read anywhere
  uint32_t tpr_ = 0;
  uint32_t ldr_ = 0;
  uint32_t dfr_ = 0xf0000000;  // bits 31:28; 27:0 read as ones
  uint32_t svr_ = 0xff;
  uint32_t icr_low_ = 0;
  uint32_t icr_high_ = 0;
  std::array<uint32_t, kNumLvts> lvt_{};
  Bits256 irr_{};
  Bits256 isr_{};
  Bits256 tmr_{};
  uint64_t apic_base_ = 0;

  // Timer. While armed, the count reaches 0 at `deadline_`; in periodic
  // mode the next period then ends at deadline_ + period_ (no drift).
  uint32_t timer_initial_ = 0;
  uint32_t timer_divide_ = 0;   // the register's bits 3,1,0
  uint32_t divide_shift_ = 1;   // divisor = 1 << divide_shift_
  bool timer_armed_ = false;
  uint64_t deadline_ = 0;
  uint64_t period_ = 0;         // timer_initial_ << divide_shift_

  std::function<void(uint8_t)> eoi_callback_;
  LapicCounters counters_;

  // Written by other threads: on its own cache line, away from the
  // registers the vCPU touches on every access.
  struct alignas(64) Posted {
    std::array<std::atomic<uint64_t>, 4> pending{};
    std::array<std::atomic<uint64_t>, 4> level{};
    std::atomic<uint64_t> calls{0};
    std::atomic<bool> any{false};
  };
  Posted posted_;
};

}  // namespace cpu

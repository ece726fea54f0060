#include "cpu/lapic.h"

#include "base/check.h"

namespace cpu {

namespace {

// Writable bits of each LVT (§11.5.1, Figure 11-8). Delivery status (12) and
// Remote IRR (14) are read-only and always read 0 here: delivery is instant
// and the LINT pins are not wired.
constexpr uint32_t kLvtWritable[6] = {
    0x000700ff,  // timer: vector, mask, mode 18:17
    0x000107ff,  // thermal: vector, delivery mode, mask
    0x000107ff,  // perf
    0x0001a7ff,  // LINT0: vector, delivery mode, polarity, trigger, mask
    0x0001a7ff,  // LINT1
    0x000100ff,  // error: vector, mask
};
constexpr uint32_t kLvtTimerModeMask = 3u << 17;

// SVR: vector, software enable, focus checking. Bit 12 (EOI-broadcast
// suppression) is reserved because the version register does not offer it.
constexpr uint32_t kSvrWritable = 0x3ff;

// ICR (§11.6.1 "Interrupt Command Register (ICR)", Figure 11-12).
constexpr uint32_t kIcrLowWritable = 0x000ccfff;  // vector, mode, dest mode, level, trigger, shorthand
constexpr uint32_t kIcrHighWritable = 0xff000000;
constexpr uint32_t kIcrShorthandNone = 0;
constexpr uint32_t kIcrShorthandSelf = 1;
constexpr uint32_t kIcrShorthandAllIncludingSelf = 2;

// Divide Configuration Register (§11.5.4, Figure 11-10): bits 3,1,0 form a
// 3-bit value v; 111b divides by 1, otherwise by 2^(v+1).
constexpr uint32_t kDivideWritable = 0xb;
uint32_t DivideShift(uint32_t dcr) {
  const uint32_t v = ((dcr >> 1) & 4) | (dcr & 3);
  return (v + 1) & 7;
}

}  // namespace

Lapic::Lapic(uint8_t apic_id, bool bsp) noexcept {
  id_reg_.store(static_cast<uint32_t>(apic_id) << 24, std::memory_order_relaxed);
  apic_base_ = kDefaultBase | kApicBaseEnable | (bsp ? kApicBaseBsp : 0);
  Reset();
}

void Lapic::Reset() noexcept {
  // §11.4.7.1 "Local APIC State After Power-Up or Reset". The APIC ID and
  // IA32_APIC_BASE keep their values (INIT does not change them).
  tpr_ = 0;
  ldr_ = 0;
  dfr_ = 0xf0000000;
  svr_ = 0xff;
  icr_low_ = icr_high_ = 0;
  lvt_.fill(kLvtMasked);
  irr_ = {};
  isr_ = {};
  tmr_ = {};
  timer_initial_ = 0;
  timer_divide_ = 0;
  divide_shift_ = DivideShift(0);
  timer_armed_ = false;
  deadline_ = period_ = 0;
  for (auto& w : posted_.pending) w.store(0, std::memory_order_relaxed);
  for (auto& w : posted_.level) w.store(0, std::memory_order_relaxed);
  posted_.any.store(false, std::memory_order_relaxed);
}

int Lapic::Highest(const Bits256& b) noexcept {
  for (int w = 3; w >= 0; --w) {
    if (b[w] != 0) return w * 64 + 63 - __builtin_clzll(b[w]);
  }
  return -1;
}

uint32_t Lapic::ppr() const noexcept {
  // §11.8.3.1 "Task and Processor Priorities": the higher of the TPR and the
  // class of the highest in-service vector (ISRV; 0 if none).
  const int isr = Highest(isr_);
  const uint32_t isrv = isr < 0 ? 0 : static_cast<uint32_t>(isr);
  if ((tpr_ & 0xf0) >= (isrv & 0xf0)) return tpr_ & 0xff;
  return isrv & 0xf0;
}

int Lapic::HighestDeliverable() const noexcept {
  const int v = Highest(irr_);
  if (v < 0) return -1;
  // §11.8.4: the highest-priority IRR interrupt is dispatched only if its
  // priority class is above the processor-priority class.
  if ((static_cast<uint32_t>(v) >> 4) <= (ppr() >> 4)) return -1;
  return v;
}

void Lapic::Acknowledge(uint8_t vector) noexcept {
  DCHECK(TestBit(irr_, vector)) << "acknowledging vector " << int{vector} << " not in IRR";
  if (!TestBit(irr_, vector)) return;
  // §11.8.4: the IRR bit moves to ISR when the processor core takes the
  // interrupt. TMR was set or cleared when the interrupt entered IRR.
  ClearBit(irr_, vector);
  SetBit(isr_, vector);
  counters_.Inc(LapicCounters::kInterruptsAccepted);
}

void Lapic::Eoi() noexcept {
  // §11.8.5: an EOI retires the highest-priority in-service interrupt; for
  // a level-triggered one (TMR set) the APIC sends an EOI message to the I/O
  // APICs (always: EOI-broadcast suppression is not offered).
  const int v = Highest(isr_);
  if (v < 0) return;
  const auto vector = static_cast<uint8_t>(v);
  ClearBit(isr_, vector);
  counters_.Inc(LapicCounters::kEois);
  if (TestBit(tmr_, vector) && eoi_callback_) eoi_callback_(vector);
}

void Lapic::AcceptFixed(uint8_t vector, bool level) noexcept {
  if (vector < 16) {
    // §11.5.2 "Valid Interrupt Vectors": 0-15 are reserved; the APIC
    // records "received illegal vector" in ESR and does not accept it.
    counters_.Inc(LapicCounters::kIllegalVectors);
    return;
  }
  if (!software_enabled()) {
    // §11.4.7.2 "Local APIC State After It Has Been Software Disabled": the
    // APIC still responds to INIT, NMI, SMI and SIPI only. Fixed interrupts
    // are dropped, as KVM does (kvm's __apic_accept_irq).
    counters_.Inc(LapicCounters::kDroppedDisabled);
    return;
  }
  // §11.8.4: on acceptance into IRR, TMR is set for level-triggered and
  // cleared for edge-triggered interrupts.
  SetBit(irr_, vector);
  if (level) {
    SetBit(tmr_, vector);
  } else {
    ClearBit(tmr_, vector);
  }
}

void Lapic::Post(uint8_t vector, bool level) noexcept {
  // Sequentially consistent so that MergePostedSlow's "clear `any`, then
  // take the words" can never miss a vector: if its exchange of a word
  // precedes our fetch_or, our store of `any` follows its clear in the total
  // order and the next MergePosted sees it. The level bit is written before
  // the pending bit so that the merge that takes the pending bit sees it.
  const uint64_t bit = 1ull << (vector & 63);
  std::atomic<uint64_t>& lvl = posted_.level[vector >> 6];
  if (level) {
    lvl.fetch_or(bit);
  } else {
    lvl.fetch_and(~bit);
  }
  posted_.pending[vector >> 6].fetch_or(bit);
  posted_.calls.fetch_add(1, std::memory_order_relaxed);
  posted_.any.store(true);
}

void Lapic::MergePostedSlow() noexcept {
  posted_.any.store(false);
  counters_.Add(LapicCounters::kPosted, posted_.calls.exchange(0, std::memory_order_relaxed));
  for (int w = 0; w < 4; ++w) {
    uint64_t bits = posted_.pending[w].exchange(0);
    if (bits == 0) continue;
    const uint64_t level = posted_.level[w].load();
    while (bits != 0) {
      const int b = __builtin_ctzll(bits);
      bits &= bits - 1;
      AcceptFixed(static_cast<uint8_t>(w * 64 + b), (level >> b) & 1);
    }
  }
}

// ---------------------------------------------------------------------------
// Timer (§11.5.4 "APIC Timer").

void Lapic::AdvanceTo(uint64_t now) noexcept {
  if (!timer_armed_ || now < deadline_) return;
  uint64_t expiries = 1;
  if ((lvt_[kLvtIndexTimer] & kLvtTimerModeMask) == kLvtTimerPeriodic) {
    // Periodic: the count reloads from the initial count at each expiry, so
    // deadlines stay on the grid start + k * period whatever the caller's
    // granularity. Periods that all ended by `now` collapse into one.
    expiries += (now - deadline_) / period_;
    deadline_ += expiries * period_;
  } else {
    // One-shot (and TSC-deadline, not offered): the count stays at 0.
    timer_armed_ = false;
  }
  FireTimer(expiries);
}

void Lapic::FireTimer(uint64_t expiries) noexcept {
  const uint32_t lvt = lvt_[kLvtIndexTimer];
  // A masked timer keeps counting (guests calibrate it by polling the
  // current count) but raises nothing.
  if (lvt & kLvtMasked) return;
  const auto vector = static_cast<uint8_t>(lvt & 0xff);
  if (vector < 16 || !software_enabled()) {
    AcceptFixed(vector, /*level=*/false);  // dropped and counted there
    return;
  }
  if (TestBit(irr_, vector)) {
    // Still pending from an earlier expiry: IRR holds one request per vector.
    counters_.Add(LapicCounters::kTimerOverruns, expiries);
    return;
  }
  AcceptFixed(vector, /*level=*/false);
  counters_.Inc(LapicCounters::kTimerFires);
  counters_.Add(LapicCounters::kTimerOverruns, expiries - 1);
}

uint32_t Lapic::CurrentCount(uint64_t now) const noexcept {
  // The count drops by one every divisor ticks from the arming time, so with
  // `r` ticks left to the deadline it is ceil(r / divisor). Callers have run
  // AdvanceTo(now), so an armed timer's deadline is ahead of `now`.
  if (!timer_armed_ || now >= deadline_) return 0;
  const uint64_t left = deadline_ - now;
  const uint64_t count = (left + (1ull << divide_shift_) - 1) >> divide_shift_;
  // Only a non-monotonic `now` (before the arming time) could exceed it.
  return count > timer_initial_ ? timer_initial_ : static_cast<uint32_t>(count);
}

void Lapic::WriteTimerInitial(uint32_t value, uint64_t now) noexcept {
  // Writing the initial count (re)starts the count-down from it; 0 stops the
  // timer in both modes.
  timer_initial_ = value;
  period_ = static_cast<uint64_t>(value) << divide_shift_;
  timer_armed_ = value != 0;
  deadline_ = now + period_;
}

void Lapic::WriteTimerDivide(uint32_t value, uint64_t now) noexcept {
  timer_divide_ = value & kDivideWritable;
  const uint32_t shift = DivideShift(timer_divide_);
  if (shift == divide_shift_) return;
  if (timer_armed_) {
    // The remaining count goes on at the new rate (the phase within the
    // current tick of the old divisor is lost; guests set the divisor before
    // arming).
    const uint64_t count = CurrentCount(now);
    deadline_ = now + (count << shift);
  }
  divide_shift_ = shift;
  period_ = static_cast<uint64_t>(timer_initial_) << shift;
}

// ---------------------------------------------------------------------------
// Registers.

void Lapic::WriteSvr(uint32_t value) noexcept {
  svr_ = value & kSvrWritable;
  // §11.4.7.2: software-disabling sets every LVT mask bit; while disabled
  // they cannot be cleared (Write forces them on).
  if (!software_enabled()) {
    for (auto& lvt : lvt_) lvt |= kLvtMasked;
  }
}

void Lapic::WriteIcrLow(uint32_t value) noexcept {
  icr_low_ = value & kIcrLowWritable;  // delivery status (12) reads 0: sent at once
  const auto vector = static_cast<uint8_t>(value & 0xff);
  const uint32_t mode = (value >> 8) & 7;
  const bool logical = (value >> 11) & 1;
  const uint32_t shorthand = (value >> 18) & 3;
  // Only this APIC exists in this model: "self" and "all including self"
  // reach it, and so does a fixed IPI addressed physically to our ID (or to
  // the broadcast ID 0xff). Fixed IPIs are edge-triggered (the trigger-mode
  // bit applies to INIT level de-assert only).
  bool to_self = false;
  if (mode == 0) {
    if (shorthand == kIcrShorthandSelf || shorthand == kIcrShorthandAllIncludingSelf) {
      to_self = true;
    } else if (shorthand == kIcrShorthandNone && !logical) {
      const uint32_t dest = icr_high_ >> 24;
      to_self = dest == id() || dest == 0xff;
    }
  }
  if (!to_self) {
    counters_.Inc(LapicCounters::kIpisIgnored);
    return;
  }
  AcceptFixed(vector, /*level=*/false);
}

uint32_t Lapic::Read(uint32_t offset, uint64_t now) noexcept {
  counters_.Inc(LapicCounters::kRegisterReads);
  if ((offset & 0xf) != 0 || offset >= kMmioSize) return 0;
  AdvanceTo(now);
  switch (offset) {
    case kRegId: return id_reg_.load(std::memory_order_relaxed);
    case kRegVersion: return kVersion;
    case kRegTpr: return tpr_;
    case kRegApr: return 0;
    case kRegPpr: return ppr();
    case kRegLdr: return ldr_;
    case kRegDfr: return dfr_ | 0x0fffffff;
    case kRegSvr: return svr_;
    case kRegEsr: return 0;
    case kRegIcrLow: return icr_low_;
    case kRegIcrHigh: return icr_high_;
    case kRegLvtTimer:
    case kRegLvtThermal:
    case kRegLvtPerf:
    case kRegLvtLint0:
    case kRegLvtLint1:
    case kRegLvtError: return lvt_[(offset - kRegLvtTimer) >> 4];
    case kRegTimerInitial: return timer_initial_;
    case kRegTimerCurrent: return CurrentCount(now);
    case kRegTimerDivide: return timer_divide_;
    default: break;
  }
  if (offset >= kRegIsr && offset < kRegEsr) {
    // ISR, TMR, IRR: eight 32-bit registers each, vectors 32i..32i+31.
    const uint32_t index = (offset - kRegIsr) >> 4;  // 0..23
    const Bits256& bits = index < 8 ? isr_ : index < 16 ? tmr_ : irr_;
    const uint32_t i = index & 7;
    return static_cast<uint32_t>(bits[i >> 1] >> ((i & 1) * 32));
  }
  return 0;
}

void Lapic::Write(uint32_t offset, uint32_t value, uint64_t now) noexcept {
  counters_.Inc(LapicCounters::kRegisterWrites);
  if ((offset & 0xf) != 0 || offset >= kMmioSize) return;
  // Expiries before this write happen under the old register values.
  AdvanceTo(now);
  switch (offset) {
    case kRegId: id_reg_.store(value & 0xff000000, std::memory_order_relaxed); break;
    case kRegTpr: tpr_ = value & 0xff; break;
    case kRegEoi: Eoi(); break;
    case kRegLdr: ldr_ = value & 0xff000000; break;
    case kRegDfr: dfr_ = value & 0xf0000000; break;
    case kRegSvr: WriteSvr(value); break;
    case kRegEsr: break;  // arms the next read of ESR, which is always 0 here
    case kRegIcrLow: WriteIcrLow(value); break;
    case kRegIcrHigh: icr_high_ = value & kIcrHighWritable; break;
    case kRegLvtTimer:
    case kRegLvtThermal:
    case kRegLvtPerf:
    case kRegLvtLint0:
    case kRegLvtLint1:
    case kRegLvtError: {
      const uint32_t index = (offset - kRegLvtTimer) >> 4;
      uint32_t v = value & kLvtWritable[index];
      if (!software_enabled()) v |= kLvtMasked;
      // Changing the timer mode does not restart the count (§11.5.4): the
      // new mode applies from the next expiry.
      lvt_[index] = v;
      break;
    }
    case kRegTimerInitial: WriteTimerInitial(value, now); break;
    case kRegTimerDivide: WriteTimerDivide(value, now); break;
    default: break;  // read-only or unassigned
  }
}

bool Lapic::SetApicBaseMsr(uint64_t value) noexcept {
  // Bits 7:0, 9 and above MAXPHYADDR are reserved, bit 10 would enable
  // x2APIC, clearing bit 11 would disable the APIC and a new base would move
  // it: none is offered, so only the current value (BSP bit aside, which the
  // processor owns) is accepted.
  return (value & ~kApicBaseBsp) == (apic_base_ & ~kApicBaseBsp);
}

}  // namespace cpu

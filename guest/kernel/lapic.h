// Local APIC timer (xAPIC MMIO, SDM Vol. 3A, chapter 12) and guest time (TSC).
//
// The LAPIC timer input clock is taken as 1 GHz unless told otherwise: that is
// what QEMU (TCG) and KVM's in-kernel LAPIC emulate. No PIT is needed (QEMU's
// microvm has none). The TSC frequency comes from the boot info / command
// line, else CPUID 0x15/0x16, else a short calibration against the LAPIC
// timer's current-count register.
#pragma once

#include <stdint.h>

namespace kernel {

// Masks the 8259 PICs and LVT0, enables the LAPIC, finds the TSC frequency and
// starts the periodic tick. tsc_khz and lapic_khz may be 0 (unknown/default).
void LapicInit(uint64_t tsc_khz, uint64_t lapic_khz, uint64_t tick_us);
void LapicEoi();
// Called on every tick; re-arms the timer when it runs in one-shot mode.
void LapicTimerRearm();

uint64_t TscKhz();
uint64_t TickNs();
uint64_t NowNs();
// Converts a TSC delta to nanoseconds without 128-bit arithmetic.
uint64_t TscToNs(uint64_t ticks);

}  // namespace kernel

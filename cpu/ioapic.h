// Ioapic: an 82093AA-style I/O APIC with 24 pins, version 0x20 (the I/O
// APIC of the ICH chipsets, which adds the EOI register at offset 0x40).
//
// References are to the Intel 82093AA I/O Advanced Programmable Interrupt
// Controller (IOAPIC) datasheet (order 290566), §3 "Register Description",
// and for the EOI register to the ICH datasheets' "I/O APIC EOI Register".
//
// What is modelled:
//   - Indirect register access: IOREGSEL (0x00) selects a register, IOWIN
//     (0x10) reads or writes it; the EOI register (0x40) clears Remote IRR
//     of the level-triggered pins whose vector is written. Registers: ID
//     (0x00), version (0x01 = 0x00170020: max redirection entry 23, version
//     0x20), arbitration (0x02, the ID's copy, read-only) and the
//     redirection table (0x10 + 2*pin low dword, +1 high dword).
//   - Edge-triggered pins deliver on a rising edge while unmasked; a masked
//     edge is lost (datasheet: "Edge-sensitive interrupts signaled on a
//     masked interrupt pin are ignored").
//   - Level-triggered pins deliver while asserted and unmasked and set
//     Remote IRR, which blocks redelivery until the local APIC's EOI message
//     (OnEoi, or a write to the EOI register) clears it; the pin then
//     redelivers if still asserted. Unmasking an asserted level pin
//     delivers.
//   - Destinations: physical mode, fixed and lowest-priority delivery (both
//     go to the destination APIC ID; with one vCPU per APIC there is no
//     arbitration). Logical mode and the SMI/NMI/INIT/ExtINT delivery modes
//     are dropped and counted (`unsupported`).
//   - The polarity bit is stored for the guest but not applied: SetIrq's
//     `level` is the line's logical state (true = asserted), as in QEMU and
//     KVM, so device models need not know how the guest wired the pin.
//   - As in KVM, making a pin edge-triggered clears its Remote IRR (the
//     fallback by which Linux un-sticks Remote IRR on I/O APICs without an
//     EOI register).
//
// Threads: SetIrq may be called from any thread (device threads); Read,
// Write and OnEoi from the vCPU thread. All state is behind one mutex. The
// delivery callback is called with the mutex released, on the calling
// thread, so it may take other locks or post to a Lapic (Lapic::Post is
// lock-free); it may also call back into this Ioapic. Deliveries from
// different threads may reach the callback in either order, as interrupt
// messages on a real APIC bus may.
//
// No allocation after construction.
#pragma once

#include <array>
#include <cstdint>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "base/counters.h"

namespace cpu {

#define CPU_IOAPIC_COUNTERS(X)                                                       \
  X(Deliveries, deliveries)                                                          \
  X(Coalesced, coalesced)       /* edge: assert while asserted; level: Remote IRR set */ \
  X(Masked, masked)             /* assertions of a masked pin, dropped */             \
  X(Unsupported, unsupported)   /* logical destination or non-fixed delivery mode */ \
  X(Eois, eois)                 /* Remote IRR bits cleared by an EOI */              \
  X(BadPins, bad_pins)          /* SetIrq with pin >= kNumPins */                    \
  X(RegisterReads, register_reads)                                                   \
  X(RegisterWrites, register_writes)
BASE_DEFINE_COUNTERS(IoapicCounters, CPU_IOAPIC_COUNTERS);

class Ioapic {
 public:
  static constexpr uint64_t kDefaultBase = 0xfec00000;
  static constexpr uint32_t kMmioSize = 0x1000;
  static constexpr uint32_t kNumPins = 24;

  // MMIO offsets.
  static constexpr uint32_t kIoRegSel = 0x00;
  static constexpr uint32_t kIoWin = 0x10;
  static constexpr uint32_t kEoi = 0x40;

  // Indirect registers (selected through IOREGSEL).
  static constexpr uint32_t kRegId = 0x00;
  static constexpr uint32_t kRegVersion = 0x01;
  static constexpr uint32_t kRegArbitration = 0x02;
  static constexpr uint32_t kRegRedirBase = 0x10;  // pin p: 0x10 + 2p (low), +1 (high)
  static constexpr uint32_t kVersion = 0x00170020;

  // Redirection entry bits (datasheet §3.2.4, "IOREDTBL").
  static constexpr uint64_t kRedirDeliveryStatus = 1ull << 12;  // read-only
  static constexpr uint64_t kRedirPolarityLow = 1ull << 13;
  static constexpr uint64_t kRedirRemoteIrr = 1ull << 14;       // read-only
  static constexpr uint64_t kRedirLevel = 1ull << 15;
  static constexpr uint64_t kRedirMasked = 1ull << 16;

  // Called once per delivered interrupt message, outside the Ioapic's lock.
  using DeliverFn = std::function<void(uint8_t dest_apic_id, uint8_t vector, bool level)>;

  // Every pin starts masked, edge-triggered, vector 0, destination 0.
  explicit Ioapic(DeliverFn deliver, uint8_t id = 0);
  Ioapic(const Ioapic&) = delete;
  Ioapic& operator=(const Ioapic&) = delete;

  // MMIO, 32-bit accesses at `offset` within the page. IOREGSEL reads back;
  // unassigned offsets and registers read 0 and ignore writes.
  uint32_t Read(uint32_t offset) ABSL_LOCKS_EXCLUDED(mu_);
  void Write(uint32_t offset, uint32_t value) ABSL_LOCKS_EXCLUDED(mu_);

  // Drives input `pin` to `level` (true = asserted). Any thread. A pin out of
  // range is counted and ignored.
  void SetIrq(uint32_t pin, bool level) ABSL_LOCKS_EXCLUDED(mu_);

  // The local APIC's EOI message for a level-triggered `vector` (wire it to
  // Lapic::set_eoi_callback).
  void OnEoi(uint8_t vector) ABSL_LOCKS_EXCLUDED(mu_);

  // The 64-bit redirection entry of `pin` (for tests and state dumps).
  uint64_t redirection_entry(uint32_t pin) const ABSL_LOCKS_EXCLUDED(mu_);

  const IoapicCounters& counters() const { return counters_; }

 private:
  struct Delivery {
    uint8_t dest;
    uint8_t vector;
    bool level;
  };
  // Deliveries decided under the lock, made after it is released. One
  // operation delivers at most once per pin.
  struct Outbox {
    std::array<Delivery, kNumPins> items;
    uint32_t count = 0;
  };

  // Sends pin's interrupt if it is unmasked and (level) not blocked by
  // Remote IRR; sets Remote IRR for level pins.
  void ServiceLocked(uint32_t pin, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EoiLocked(uint8_t vector, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t ReadRegisterLocked(uint32_t index) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteRegisterLocked(uint32_t index, uint32_t value, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Send(const Outbox& out) ABSL_LOCKS_EXCLUDED(mu_);

  const DeliverFn deliver_;
  mutable absl::Mutex mu_;
  uint32_t ioregsel_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t id_ ABSL_GUARDED_BY(mu_) = 0;  // bits 27:24
  std::array<uint64_t, kNumPins> redir_ ABSL_GUARDED_BY(mu_){};
  uint32_t lines_ ABSL_GUARDED_BY(mu_) = 0;  // bit p: pin p asserted
  // Written only with mu_ held (so one writer at a time); read anywhere.
  IoapicCounters counters_;
};

}  // namespace cpu

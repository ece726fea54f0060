#include "cpu/ioapic.h"

#include <utility>

namespace cpu {

namespace {

// Writable bits of a redirection entry: vector, delivery mode, destination
// mode, polarity, trigger mode, mask (low dword) and the destination (high
// dword). Delivery status and Remote IRR are read-only. The 82093AA decodes
// 4 destination bits in physical mode; all 8 are kept, as xAPIC IDs are 8-bit.
constexpr uint64_t kRedirWritable = 0xff00'0000'0001'afffull;
constexpr uint32_t kIdWritable = 0x0f000000;  // ID register bits 27:24

constexpr uint32_t kDeliveryFixed = 0;
constexpr uint32_t kDeliveryLowestPriority = 1;

}  // namespace

Ioapic::Ioapic(DeliverFn deliver, uint8_t id) : deliver_(std::move(deliver)) {
  absl::MutexLock lock(&mu_);
  id_ = (static_cast<uint32_t>(id) << 24) & kIdWritable;
  redir_.fill(kRedirMasked);
}

void Ioapic::ServiceLocked(uint32_t pin, Outbox& out) {
  uint64_t& e = redir_[pin];
  if (e & kRedirMasked) {
    counters_.Inc(IoapicCounters::kMasked);
    return;
  }
  const bool level = (e & kRedirLevel) != 0;
  if (level) {
    if (e & kRedirRemoteIrr) {
      // The local APIC has not yet sent the EOI for the last delivery: the
      // interrupt is still being serviced, so this assertion is part of it.
      counters_.Inc(IoapicCounters::kCoalesced);
      return;
    }
  }
  const uint32_t mode = (e >> 8) & 7;
  const bool logical = (e >> 11) & 1;
  if (logical || (mode != kDeliveryFixed && mode != kDeliveryLowestPriority)) {
    counters_.Inc(IoapicCounters::kUnsupported);
    return;
  }
  // Remote IRR: set when the local APIC accepts a level-triggered interrupt,
  // cleared by its EOI (datasheet §3.2.4). Delivery is instantaneous here,
  // so acceptance is now and Delivery Status never reads 1.
  if (level) e |= kRedirRemoteIrr;
  out.items[out.count++] = {static_cast<uint8_t>(e >> 56), static_cast<uint8_t>(e & 0xff), level};
  counters_.Inc(IoapicCounters::kDeliveries);
}

void Ioapic::EoiLocked(uint8_t vector, Outbox& out) {
  for (uint32_t pin = 0; pin < kNumPins; ++pin) {
    uint64_t& e = redir_[pin];
    if ((e & 0xff) != vector || !(e & kRedirLevel) || !(e & kRedirRemoteIrr)) continue;
    e &= ~kRedirRemoteIrr;
    counters_.Inc(IoapicCounters::kEois);
    // A level line still asserted after the EOI is a new request.
    if (lines_ & (1u << pin)) ServiceLocked(pin, out);
  }
}

void Ioapic::Send(const Outbox& out) {
  for (uint32_t i = 0; i < out.count; ++i) {
    deliver_(out.items[i].dest, out.items[i].vector, out.items[i].level);
  }
}

void Ioapic::SetIrq(uint32_t pin, bool level) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (pin >= kNumPins) {
      counters_.Inc(IoapicCounters::kBadPins);
      return;
    }
    const uint32_t bit = 1u << pin;
    const bool was = (lines_ & bit) != 0;
    if (level) {
      lines_ |= bit;
    } else {
      lines_ &= ~bit;
    }
    if (level) {
      if (redir_[pin] & kRedirLevel) {
        ServiceLocked(pin, out);
      } else if (!was) {
        ServiceLocked(pin, out);  // rising edge
      } else {
        counters_.Inc(IoapicCounters::kCoalesced);  // no edge: already asserted
      }
    }
  }
  Send(out);
}

void Ioapic::OnEoi(uint8_t vector) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    EoiLocked(vector, out);
  }
  Send(out);
}

uint32_t Ioapic::ReadRegisterLocked(uint32_t index) const {
  switch (index) {
    case kRegId: return id_;
    case kRegVersion: return kVersion;
    case kRegArbitration: return id_;  // loaded from the ID register
    default: break;
  }
  if (index >= kRegRedirBase && index < kRegRedirBase + 2 * kNumPins) {
    const uint64_t e = redir_[(index - kRegRedirBase) / 2];
    return static_cast<uint32_t>((index & 1) ? e >> 32 : e);
  }
  return 0;
}

void Ioapic::WriteRegisterLocked(uint32_t index, uint32_t value, Outbox& out) {
  if (index == kRegId) {
    id_ = value & kIdWritable;
    return;
  }
  if (index < kRegRedirBase || index >= kRegRedirBase + 2 * kNumPins) return;  // read-only or none
  const uint32_t pin = (index - kRegRedirBase) / 2;
  uint64_t& e = redir_[pin];
  const bool high = index & 1;
  const uint64_t mask = kRedirWritable & (high ? 0xffff'ffff'0000'0000ull : 0xffff'ffffull);
  const uint64_t v = high ? static_cast<uint64_t>(value) << 32 : value;
  e = (e & ~mask) | (v & mask);
  if (high) return;
  if (!(e & kRedirLevel)) {
    // Remote IRR is undefined for edge-triggered pins; clear it so that a
    // level -> edge -> level rewrite (Linux's Remote IRR fallback for I/O
    // APICs without an EOI register) un-sticks the pin, as KVM does.
    e &= ~kRedirRemoteIrr;
    return;
  }
  // A level pin that is asserted, unmasked and not awaiting an EOI
  // delivers now: this is how unmasking an asserted line raises it.
  if ((lines_ & (1u << pin)) && !(e & kRedirMasked) && !(e & kRedirRemoteIrr)) {
    ServiceLocked(pin, out);
  }
}

uint32_t Ioapic::Read(uint32_t offset) {
  absl::MutexLock lock(&mu_);
  counters_.Inc(IoapicCounters::kRegisterReads);
  switch (offset) {
    case kIoRegSel: return ioregsel_;
    case kIoWin: return ReadRegisterLocked(ioregsel_);
    default: return 0;  // EOI is write-only; the rest is unassigned
  }
}

void Ioapic::Write(uint32_t offset, uint32_t value) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    counters_.Inc(IoapicCounters::kRegisterWrites);
    switch (offset) {
      case kIoRegSel: ioregsel_ = value & 0xff; break;
      case kIoWin: WriteRegisterLocked(ioregsel_, value, out); break;
      case kEoi: EoiLocked(static_cast<uint8_t>(value & 0xff), out); break;
      default: break;
    }
  }
  Send(out);
}

uint64_t Ioapic::redirection_entry(uint32_t pin) const {
  absl::MutexLock lock(&mu_);
  return pin < kNumPins ? redir_[pin] : 0;
}

}  // namespace cpu

// Tests of the I/O APIC model (cpu/ioapic.h): the indirect register
// interface, edge and level delivery with Remote IRR, pins out of range,
// SetIrq from many threads, and the I/O APIC wired to a Lapic.
#include "cpu/ioapic.h"

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "cpu/lapic.h"
#include "gtest/gtest.h"

namespace cpu {
namespace {

struct Msg {
  uint8_t dest;
  uint8_t vector;
  bool level;
  bool operator==(const Msg&) const = default;
};

// Records deliveries (from any thread).
class Recorder {
 public:
  Ioapic::DeliverFn Fn() {
    return [this](uint8_t dest, uint8_t vector, bool level) {
      absl::MutexLock lock(&mu_);
      msgs_.push_back({dest, vector, level});
    };
  }
  std::vector<Msg> Take() {
    absl::MutexLock lock(&mu_);
    std::vector<Msg> out;
    out.swap(msgs_);
    return out;
  }

 private:
  absl::Mutex mu_;
  std::vector<Msg> msgs_;
};

uint32_t ReadReg(Ioapic& io, uint32_t index) {
  io.Write(Ioapic::kIoRegSel, index);
  return io.Read(Ioapic::kIoWin);
}
void WriteReg(Ioapic& io, uint32_t index, uint32_t value) {
  io.Write(Ioapic::kIoRegSel, index);
  io.Write(Ioapic::kIoWin, value);
}
// Programs pin's redirection entry (high dword first, as guests do).
void Program(Ioapic& io, uint32_t pin, uint64_t entry) {
  WriteReg(io, Ioapic::kRegRedirBase + 2 * pin + 1, static_cast<uint32_t>(entry >> 32));
  WriteReg(io, Ioapic::kRegRedirBase + 2 * pin, static_cast<uint32_t>(entry));
}
uint64_t Entry(uint8_t vector, uint8_t dest, bool level, bool masked = false) {
  return vector | (uint64_t{dest} << 56) | (level ? Ioapic::kRedirLevel : 0) |
         (masked ? Ioapic::kRedirMasked : 0);
}

TEST(IoapicTest, IdVersionAndArbitrationRegisters) {
  Recorder rec;
  Ioapic io(rec.Fn(), /*id=*/2);
  EXPECT_EQ(ReadReg(io, Ioapic::kRegVersion), 0x00170020u);
  EXPECT_EQ(ReadReg(io, Ioapic::kRegId), 2u << 24);
  EXPECT_EQ(ReadReg(io, Ioapic::kRegArbitration), 2u << 24);
  WriteReg(io, Ioapic::kRegId, 0xffffffff);
  EXPECT_EQ(ReadReg(io, Ioapic::kRegId), 0x0f000000u);
  EXPECT_EQ(ReadReg(io, Ioapic::kRegArbitration), 0x0f000000u);
  WriteReg(io, Ioapic::kRegVersion, 0);  // read-only
  EXPECT_EQ(ReadReg(io, Ioapic::kRegVersion), 0x00170020u);
  WriteReg(io, Ioapic::kRegArbitration, 0);  // read-only
  EXPECT_EQ(ReadReg(io, Ioapic::kRegArbitration), 0x0f000000u);
  // IOREGSEL reads back; unassigned registers and offsets read 0.
  io.Write(Ioapic::kIoRegSel, 0x3f);
  EXPECT_EQ(io.Read(Ioapic::kIoRegSel), 0x3fu);
  EXPECT_EQ(io.Read(Ioapic::kIoWin), 0u);  // past the table (0x10..0x3f)
  EXPECT_EQ(ReadReg(io, 0x40), 0u);
  EXPECT_EQ(ReadReg(io, 0x03), 0u);
  EXPECT_EQ(io.Read(Ioapic::kEoi), 0u);
  EXPECT_EQ(io.Read(0x20), 0u);
}

TEST(IoapicTest, RedirectionEntriesAndReadOnlyBits) {
  Recorder rec;
  Ioapic io(rec.Fn());
  for (uint32_t pin = 0; pin < Ioapic::kNumPins; ++pin) {
    EXPECT_EQ(ReadReg(io, 0x10 + 2 * pin), Ioapic::kRedirMasked) << pin;
    EXPECT_EQ(ReadReg(io, 0x11 + 2 * pin), 0u) << pin;
  }
  // Delivery status (12) and Remote IRR (14) are not writable.
  WriteReg(io, 0x10 + 2 * 5, 0xffffffff);
  EXPECT_EQ(ReadReg(io, 0x10 + 2 * 5), 0x0001afffu);
  WriteReg(io, 0x11 + 2 * 5, 0xffffffff);
  EXPECT_EQ(ReadReg(io, 0x11 + 2 * 5), 0xff000000u);
  EXPECT_EQ(io.redirection_entry(5), 0xff000000'0001afffull);
  // Neighbouring entries are untouched.
  EXPECT_EQ(io.redirection_entry(4), Ioapic::kRedirMasked);
  EXPECT_EQ(io.redirection_entry(6), Ioapic::kRedirMasked);

  // Remote IRR, once set by a delivery, survives rewrites of the entry
  // (the guest cannot clear it by writing 0 there).
  Program(io, 7, Entry(0x47, 0, /*level=*/true));
  io.SetIrq(7, true);
  ASSERT_TRUE(io.redirection_entry(7) & Ioapic::kRedirRemoteIrr);
  WriteReg(io, 0x10 + 2 * 7, static_cast<uint32_t>(Entry(0x47, 0, true) | Ioapic::kRedirMasked));
  EXPECT_TRUE(io.redirection_entry(7) & Ioapic::kRedirRemoteIrr);
  // Switching the pin to edge clears it (KVM's behaviour, Linux's fallback).
  WriteReg(io, 0x10 + 2 * 7, static_cast<uint32_t>(Entry(0x47, 0, false, true)));
  EXPECT_FALSE(io.redirection_entry(7) & Ioapic::kRedirRemoteIrr);
}

TEST(IoapicTest, MaskedPinDoesNotDeliver) {
  Recorder rec;
  Ioapic io(rec.Fn());
  io.SetIrq(3, true);  // masked at reset
  io.SetIrq(3, false);
  Program(io, 3, Entry(0x33, 0, /*level=*/false, /*masked=*/true));
  io.SetIrq(3, true);
  EXPECT_TRUE(rec.Take().empty());
  // A masked edge is lost, not held: unmasking does not deliver it.
  Program(io, 3, Entry(0x33, 0, /*level=*/false));
  EXPECT_TRUE(rec.Take().empty());
  EXPECT_EQ(io.counters().Get(IoapicCounters::kMasked), 2u);
  EXPECT_EQ(io.counters().Get(IoapicCounters::kDeliveries), 0u);
}

TEST(IoapicTest, EdgePinDeliversOnRisingEdgeOnly) {
  Recorder rec;
  Ioapic io(rec.Fn());
  Program(io, 1, Entry(0x31, 0, /*level=*/false));
  io.SetIrq(1, true);
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{0, 0x31, false}}));
  io.SetIrq(1, true);  // still high: no edge
  io.SetIrq(1, false);
  EXPECT_TRUE(rec.Take().empty());
  io.SetIrq(1, true);
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{0, 0x31, false}}));
  // EOIs do not concern edge pins.
  io.OnEoi(0x31);
  EXPECT_TRUE(rec.Take().empty());
  EXPECT_EQ(io.counters().Get(IoapicCounters::kDeliveries), 2u);
  EXPECT_EQ(io.counters().Get(IoapicCounters::kCoalesced), 1u);
  EXPECT_EQ(io.counters().Get(IoapicCounters::kEois), 0u);
}

TEST(IoapicTest, LevelPinRemoteIrrAndEoiRedelivery) {
  Recorder rec;
  Ioapic io(rec.Fn());
  Program(io, 9, Entry(0x49, 2, /*level=*/true));
  io.SetIrq(9, true);
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{2, 0x49, true}}));
  EXPECT_TRUE(io.redirection_entry(9) & Ioapic::kRedirRemoteIrr);
  // Held off by Remote IRR while the interrupt is in service.
  io.SetIrq(9, true);
  EXPECT_TRUE(rec.Take().empty());
  EXPECT_EQ(io.counters().Get(IoapicCounters::kCoalesced), 1u);
  // EOI for another vector: nothing.
  io.OnEoi(0x48);
  EXPECT_TRUE(rec.Take().empty());
  // EOI while still asserted: the line is redelivered.
  io.OnEoi(0x49);
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{2, 0x49, true}}));
  EXPECT_TRUE(io.redirection_entry(9) & Ioapic::kRedirRemoteIrr);
  // The device deasserts, then the EOI arrives (through the EOI register
  // this time): Remote IRR clears, nothing is redelivered.
  io.SetIrq(9, false);
  io.Write(Ioapic::kEoi, 0x49);
  EXPECT_TRUE(rec.Take().empty());
  EXPECT_FALSE(io.redirection_entry(9) & Ioapic::kRedirRemoteIrr);
  // A new assertion delivers again.
  io.SetIrq(9, true);
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{2, 0x49, true}}));
  EXPECT_EQ(io.counters().Get(IoapicCounters::kDeliveries), 3u);
  EXPECT_EQ(io.counters().Get(IoapicCounters::kEois), 2u);
}

TEST(IoapicTest, UnmaskingAnAssertedLevelPinDelivers) {
  Recorder rec;
  Ioapic io(rec.Fn());
  Program(io, 11, Entry(0x5b, 1, /*level=*/true, /*masked=*/true));
  io.SetIrq(11, true);
  EXPECT_TRUE(rec.Take().empty());
  Program(io, 11, Entry(0x5b, 1, /*level=*/true));
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{1, 0x5b, true}}));
  // Rewriting the (unmasked) entry while Remote IRR is set: no duplicate.
  Program(io, 11, Entry(0x5b, 1, /*level=*/true));
  EXPECT_TRUE(rec.Take().empty());
  // Unmasking a deasserted level pin delivers nothing.
  Program(io, 12, Entry(0x5c, 1, /*level=*/true, /*masked=*/true));
  Program(io, 12, Entry(0x5c, 1, /*level=*/true));
  EXPECT_TRUE(rec.Take().empty());
}

TEST(IoapicTest, DeliveryModesAndDestinationModes) {
  Recorder rec;
  Ioapic io(rec.Fn());
  Program(io, 0, Entry(0x60, 3, false) | (1u << 8));  // lowest priority
  io.SetIrq(0, true);
  EXPECT_EQ(rec.Take(), (std::vector<Msg>{{3, 0x60, false}}));
  Program(io, 1, Entry(0x61, 1, false) | (1u << 11));  // logical destination
  io.SetIrq(1, true);
  Program(io, 2, Entry(0x62, 0, false) | (4u << 8));  // NMI
  io.SetIrq(2, true);
  EXPECT_TRUE(rec.Take().empty());
  EXPECT_EQ(io.counters().Get(IoapicCounters::kUnsupported), 2u);
}

TEST(IoapicTest, BadPinsAreCountedAndIgnored) {
  Recorder rec;
  Ioapic io(rec.Fn());
  io.SetIrq(Ioapic::kNumPins, true);
  io.SetIrq(1000, true);
  io.SetIrq(UINT32_MAX, false);
  EXPECT_TRUE(rec.Take().empty());
  EXPECT_EQ(io.counters().Get(IoapicCounters::kBadPins), 3u);
  EXPECT_EQ(io.redirection_entry(Ioapic::kNumPins), 0u);
  // Redirection registers past pin 23 do not exist.
  WriteReg(io, 0x10 + 2 * Ioapic::kNumPins, 0x12345);
  EXPECT_EQ(ReadReg(io, 0x10 + 2 * Ioapic::kNumPins), 0u);
  WriteReg(io, 0xff, 0x12345);
  EXPECT_EQ(ReadReg(io, 0xff), 0u);
}

TEST(IoapicTest, ConcurrentSetIrq) {
  std::array<std::atomic<uint32_t>, 256> per_vector{};
  Ioapic io([&](uint8_t, uint8_t vector, bool) { per_vector[vector].fetch_add(1); });
  constexpr uint32_t kThreads = 4;
  constexpr uint32_t kPinsPerThread = Ioapic::kNumPins / kThreads;
  constexpr uint32_t kEdges = 2000;
  for (uint32_t pin = 0; pin < Ioapic::kNumPins; ++pin) {
    Program(io, pin, Entry(static_cast<uint8_t>(0x20 + pin), 0, /*level=*/false));
  }
  std::atomic<bool> stop{false};
  // The vCPU reads registers and sends EOIs meanwhile.
  std::thread vcpu([&] {
    while (!stop.load()) {
      (void)ReadReg(io, Ioapic::kRegRedirBase);
      io.OnEoi(0x20);
    }
  });
  std::vector<std::thread> devices;
  for (uint32_t t = 0; t < kThreads; ++t) {
    devices.emplace_back([&io, t] {
      for (uint32_t i = 0; i < kEdges; ++i) {
        for (uint32_t p = 0; p < kPinsPerThread; ++p) {
          const uint32_t pin = t * kPinsPerThread + p;
          io.SetIrq(pin, true);
          io.SetIrq(pin, false);
        }
      }
    });
  }
  for (auto& d : devices) d.join();
  stop.store(true);
  vcpu.join();
  // Each thread owns its pins, so every rising edge is exactly one message.
  for (uint32_t pin = 0; pin < Ioapic::kNumPins; ++pin) {
    EXPECT_EQ(per_vector[0x20 + pin].load(), kEdges) << pin;
  }
  EXPECT_EQ(io.counters().Get(IoapicCounters::kDeliveries), uint64_t{kEdges} * Ioapic::kNumPins);
}

TEST(IoapicTest, ConcurrentLevelPinsWithEois) {
  // Devices toggle level lines while the vCPU EOIs whatever arrives: no
  // deadlock, and every delivery is matched by Remote IRR (at most one
  // outstanding message per pin).
  std::array<std::atomic<int>, Ioapic::kNumPins> outstanding{};
  std::atomic<bool> violation{false};
  Ioapic io([&](uint8_t, uint8_t vector, bool level) {
    EXPECT_TRUE(level);
    if (outstanding[vector - 0x20].fetch_add(1) != 0) violation.store(true);
  });
  for (uint32_t pin = 0; pin < Ioapic::kNumPins; ++pin) {
    Program(io, pin, Entry(static_cast<uint8_t>(0x20 + pin), 0, /*level=*/true));
  }
  std::atomic<bool> stop{false};
  std::thread vcpu([&] {
    while (!stop.load()) {
      for (uint32_t pin = 0; pin < Ioapic::kNumPins; ++pin) {
        if (outstanding[pin].load() > 0) {
          outstanding[pin].fetch_sub(1);
          io.OnEoi(static_cast<uint8_t>(0x20 + pin));
        }
      }
    }
  });
  std::vector<std::thread> devices;
  for (uint32_t t = 0; t < 4; ++t) {
    devices.emplace_back([&io, t] {
      for (uint32_t i = 0; i < 2000; ++i) {
        const uint32_t pin = (t * 7 + i) % Ioapic::kNumPins;
        io.SetIrq(pin, (i & 1) == 0);
      }
    });
  }
  for (auto& d : devices) d.join();
  stop.store(true);
  vcpu.join();
  EXPECT_FALSE(violation.load());
}

// The two models wired together as the soft backend will wire them.
TEST(IoapicTest, WiredToLapic) {
  Lapic apic(0);
  Ioapic io([&apic](uint8_t dest, uint8_t vector, bool level) {
    if (dest == apic.id()) apic.Post(vector, level);
  });
  apic.set_eoi_callback([&io](uint8_t vector) { io.OnEoi(vector); });
  apic.Write(Lapic::kRegSvr, Lapic::kSvrEnable | 0xff, 0);
  Program(io, 10, Entry(0x5a, 0, /*level=*/true));
  Program(io, 4, Entry(0x34, 0, /*level=*/false));

  io.SetIrq(10, true);
  apic.MergePosted();
  ASSERT_EQ(apic.HighestDeliverable(), 0x5a);
  apic.Acknowledge(0x5a);
  // EOI with the line still asserted: redelivered to IRR at once.
  apic.Write(Lapic::kRegEoi, 0, 0);
  apic.MergePosted();
  ASSERT_EQ(apic.HighestDeliverable(), 0x5a);
  apic.Acknowledge(0x5a);
  // The handler quiets the device before the EOI: no redelivery.
  io.SetIrq(10, false);
  apic.Write(Lapic::kRegEoi, 0, 0);
  apic.MergePosted();
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_FALSE(io.redirection_entry(10) & Ioapic::kRedirRemoteIrr);

  // Edge pins never reach the I/O APIC's EOI path.
  io.SetIrq(4, true);
  apic.MergePosted();
  ASSERT_EQ(apic.HighestDeliverable(), 0x34);
  apic.Acknowledge(0x34);
  apic.Write(Lapic::kRegEoi, 0, 0);
  EXPECT_EQ(io.counters().Get(IoapicCounters::kEois), 2u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kEois), 3u);
}

}  // namespace
}  // namespace cpu

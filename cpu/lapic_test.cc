// Tests of the xAPIC local APIC model (cpu/lapic.h): register reset values
// and write masks, priorities, the timer against virtual time, interrupt
// acceptance and EOI, and posting from other threads.
#include "cpu/lapic.h"

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace cpu {
namespace {

constexpr uint64_t kNone = Lapic::kNoEvent;
constexpr uint8_t kTimerVector = 0x40;

// Bit `v` of one of the 256-bit registers (ISR/TMR/IRR), through MMIO.
bool RegBit(Lapic& apic, uint32_t base, uint8_t v, uint64_t now = 0) {
  return (apic.Read(base + 0x10 * (v / 32), now) >> (v % 32)) & 1;
}

void Enable(Lapic& apic, uint8_t spurious = 0xff) {
  apic.Write(Lapic::kRegSvr, Lapic::kSvrEnable | spurious, 0);
}

// Posts and merges a fixed interrupt, as the vCPU would see it.
void Raise(Lapic& apic, uint8_t vector, bool level = false) {
  apic.Post(vector, level);
  apic.MergePosted();
}

TEST(LapicTest, ResetValues) {
  Lapic apic(3);
  EXPECT_EQ(apic.Read(Lapic::kRegId, 0), 3u << 24);
  EXPECT_EQ(apic.id(), 3);
  EXPECT_EQ(apic.Read(Lapic::kRegVersion, 0), 0x00050014u);
  EXPECT_EQ(apic.Read(Lapic::kRegTpr, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegApr, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegLdr, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegDfr, 0), 0xffffffffu);
  EXPECT_EQ(apic.Read(Lapic::kRegSvr, 0), 0xffu);
  EXPECT_FALSE(apic.software_enabled());
  EXPECT_EQ(apic.spurious_vector(), 0xff);
  for (uint32_t i = 0; i < 8; ++i) {
    EXPECT_EQ(apic.Read(Lapic::kRegIsr + 0x10 * i, 0), 0u);
    EXPECT_EQ(apic.Read(Lapic::kRegTmr + 0x10 * i, 0), 0u);
    EXPECT_EQ(apic.Read(Lapic::kRegIrr + 0x10 * i, 0), 0u);
  }
  EXPECT_EQ(apic.Read(Lapic::kRegEsr, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegIcrLow, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegIcrHigh, 0), 0u);
  for (uint32_t off = Lapic::kRegLvtTimer; off <= Lapic::kRegLvtError; off += 0x10) {
    EXPECT_EQ(apic.Read(off, 0), Lapic::kLvtMasked) << std::hex << off;
  }
  EXPECT_EQ(apic.Read(Lapic::kRegTimerInitial, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerDivide, 0), 0u);
  EXPECT_EQ(apic.apic_base_msr(), 0xfee00900u);
  EXPECT_EQ(Lapic(1, /*bsp=*/false).apic_base_msr(), 0xfee00800u);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  // Not a register: unaligned, unassigned, write-only, outside the page.
  EXPECT_EQ(apic.Read(Lapic::kRegVersion + 4, 0), 0u);
  EXPECT_EQ(apic.Read(0x3f0, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegEoi, 0), 0u);
  EXPECT_EQ(apic.Read(0x1000, 0), 0u);
}

TEST(LapicTest, RegisterWriteMasks) {
  Lapic apic(0);
  apic.Write(Lapic::kRegVersion, 0, 0);  // read-only
  EXPECT_EQ(apic.Read(Lapic::kRegVersion, 0), Lapic::kVersion);
  apic.Write(Lapic::kRegId, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegId, 0), 0xff000000u);
  EXPECT_EQ(apic.id(), 0xff);
  apic.Write(Lapic::kRegTpr, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegTpr, 0), 0xffu);
  apic.Write(Lapic::kRegLdr, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegLdr, 0), 0xff000000u);
  apic.Write(Lapic::kRegDfr, 0x0, 0);  // cluster model
  EXPECT_EQ(apic.Read(Lapic::kRegDfr, 0), 0x0fffffffu);
  apic.Write(Lapic::kRegSvr, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegSvr, 0), 0x3ffu);
  apic.Write(Lapic::kRegIcrHigh, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegIcrHigh, 0), 0xff000000u);
  apic.Write(Lapic::kRegTimerDivide, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerDivide, 0), 0xbu);
  // LVTs keep their writable bits only; delivery status and remote IRR
  // are read-only.
  apic.Write(Lapic::kRegLvtTimer, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegLvtTimer, 0), 0x000700ffu);
  apic.Write(Lapic::kRegLvtLint0, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegLvtLint0, 0), 0x0001a7ffu);
  apic.Write(Lapic::kRegLvtError, 0xffffffff, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegLvtError, 0), 0x000100ffu);
  apic.Write(Lapic::kRegTimerCurrent, 1234, 0);  // read-only
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 0), 0u);
  apic.Write(Lapic::kRegTpr + 4, 0x80, 0);  // unaligned: ignored
  EXPECT_EQ(apic.Read(Lapic::kRegTpr, 0), 0xffu);
}

TEST(LapicTest, TprAndPprMaskByPriorityClass) {
  Lapic apic(0);
  Enable(apic);
  Raise(apic, 0x51);
  Raise(apic, 0x35);
  EXPECT_EQ(apic.HighestDeliverable(), 0x51);

  // Only classes above the TPR's class are delivered.
  apic.Write(Lapic::kRegTpr, 0x50, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0x50u);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  apic.Write(Lapic::kRegTpr, 0x4f, 0);
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0x4fu);
  EXPECT_EQ(apic.HighestDeliverable(), 0x51);

  // In service: PPR is the ISR vector's class when that is higher.
  apic.Acknowledge(0x51);
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0x50u);
  EXPECT_EQ(apic.HighestDeliverable(), -1);  // 0x35: class 3 <= 5
  Raise(apic, 0x5f);
  EXPECT_EQ(apic.HighestDeliverable(), -1);  // same class as in service
  Raise(apic, 0x60);
  EXPECT_EQ(apic.HighestDeliverable(), 0x60);
  apic.Acknowledge(0x60);
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0x60u);
  apic.Write(Lapic::kRegEoi, 0, 0);  // retires 0x60
  apic.Write(Lapic::kRegEoi, 0, 0);  // retires 0x51
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0x4fu);
  EXPECT_EQ(apic.HighestDeliverable(), 0x5f);

  // CR8 is TPR[7:4].
  apic.set_cr8(0x6);
  EXPECT_EQ(apic.Read(Lapic::kRegTpr, 0), 0x60u);
  EXPECT_EQ(apic.cr8(), 0x6);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  apic.set_cr8(0);
  EXPECT_EQ(apic.HighestDeliverable(), 0x5f);
}

// Arms a one-shot or periodic timer on kTimerVector at `now`.
void ArmTimer(Lapic& apic, uint32_t dcr, uint32_t count, uint64_t now, bool periodic = false,
              bool masked = false) {
  apic.Write(Lapic::kRegLvtTimer,
             kTimerVector | (periodic ? Lapic::kLvtTimerPeriodic : 0) | (masked ? Lapic::kLvtMasked : 0),
             now);
  apic.Write(Lapic::kRegTimerDivide, dcr, now);
  apic.Write(Lapic::kRegTimerInitial, count, now);
}

TEST(LapicTest, OneShotExpiresAfterCountTimesDivisor) {
  struct Case {
    uint32_t dcr;
    uint64_t divisor;
  };
  // SDM figure "Divide Configuration Register": bits 3,1,0.
  const Case cases[] = {{0x0, 2},  {0x1, 4},  {0x2, 8},   {0x3, 16},
                        {0x8, 32}, {0x9, 64}, {0xa, 128}, {0xb, 1}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "dcr " << c.dcr);
    Lapic apic(0);
    Enable(apic);
    const uint64_t t0 = 1000;
    ArmTimer(apic, c.dcr, 100, t0);
    const uint64_t deadline = t0 + 100 * c.divisor;
    EXPECT_EQ(apic.NextTimerEvent(), deadline);
    EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, t0), 100u);
    apic.AdvanceTo(deadline - 1);
    EXPECT_EQ(apic.HighestDeliverable(), -1);
    EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, deadline - 1), 1u);
    apic.AdvanceTo(deadline);
    EXPECT_EQ(apic.HighestDeliverable(), kTimerVector);
    EXPECT_FALSE(RegBit(apic, Lapic::kRegTmr, kTimerVector));  // edge
    EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, deadline), 0u);
    EXPECT_EQ(apic.Read(Lapic::kRegTimerInitial, deadline), 100u);
    EXPECT_EQ(apic.NextTimerEvent(), kNone);
    EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerFires), 1u);
    // Spent: nothing more, however long we wait.
    apic.Acknowledge(kTimerVector);
    apic.Write(Lapic::kRegEoi, 0, deadline);
    apic.AdvanceTo(deadline + 1'000'000);
    EXPECT_EQ(apic.HighestDeliverable(), -1);
  }
}

TEST(LapicTest, ReadingAfterTheDeadlineFiresTheTimer) {
  // A guest that polls IRR or the count past the deadline sees the expiry
  // even if the CPU never called AdvanceTo.
  Lapic apic(0);
  Enable(apic);
  ArmTimer(apic, 0xb, 50, 0);
  EXPECT_FALSE(RegBit(apic, Lapic::kRegIrr, kTimerVector, 49));
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIrr, kTimerVector, 50));
}

TEST(LapicTest, CurrentCountDecrementsOncePerDivisorTicks) {
  Lapic apic(0);
  Enable(apic);
  ArmTimer(apic, 0x3, 10, 0);  // divide by 16: deadline 160
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 0), 10u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 1), 10u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 15), 10u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 16), 9u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 80), 5u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 159), 1u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 160), 0u);
  EXPECT_EQ(apic.HighestDeliverable(), kTimerVector);

  // Re-arming restarts from the new initial count; 0 stops the timer.
  apic.Write(Lapic::kRegTimerInitial, 4, 1000);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 1000), 4u);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 1017), 3u);
  apic.Write(Lapic::kRegTimerInitial, 0, 1020);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 1021), 0u);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
}

TEST(LapicTest, DivideChangeWhileCountingKeepsTheCount) {
  Lapic apic(0);
  Enable(apic);
  ArmTimer(apic, 0xb, 100, 0);  // divide by 1
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 40), 60u);
  apic.Write(Lapic::kRegTimerDivide, 0x0, 40);  // divide by 2 from here
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 40), 60u);
  EXPECT_EQ(apic.NextTimerEvent(), 40u + 60 * 2);
}

TEST(LapicTest, PeriodicTimerDoesNotDrift) {
  Lapic apic(0);
  Enable(apic);
  const uint64_t t0 = 5, period = 1000 * 4;
  ArmTimer(apic, 0x1, 1000, t0, /*periodic=*/true);  // divide by 4
  for (uint64_t k = 1; k <= 2000; ++k) {
    ASSERT_EQ(apic.NextTimerEvent(), t0 + k * period) << k;
    // The CPU reaches the event a little late (an instruction's worth), and
    // the guest reads the count in its handler: neither moves the grid.
    const uint64_t now = apic.NextTimerEvent() + k % 7;
    apic.AdvanceTo(now);
    ASSERT_EQ(apic.HighestDeliverable(), kTimerVector) << k;
    apic.Acknowledge(kTimerVector);
    ASSERT_EQ(apic.Read(Lapic::kRegTimerCurrent, now), 1000 - (k % 7) / 4) << k;
    apic.Write(Lapic::kRegEoi, 0, now);
  }
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerFires), 2000u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerOverruns), 0u);

  // Several periods at once: one interrupt, the rest counted, grid kept.
  const uint64_t last = t0 + 2000 * period;
  apic.AdvanceTo(last + 3 * period + period / 2);
  EXPECT_EQ(apic.HighestDeliverable(), kTimerVector);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerFires), 2001u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerOverruns), 2u);
  EXPECT_EQ(apic.NextTimerEvent(), last + 4 * period);
  // Not acknowledged by the next expiry: that one folds into IRR too.
  apic.AdvanceTo(last + 4 * period);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerFires), 2001u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerOverruns), 3u);
  EXPECT_EQ(apic.NextTimerEvent(), last + 5 * period);
}

TEST(LapicTest, MaskedTimerCountsButRaisesNothing) {
  Lapic apic(0);
  Enable(apic);
  // How a kernel calibrates: masked, polled.
  ArmTimer(apic, 0xb, 1000, 0, /*periodic=*/false, /*masked=*/true);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 300), 700u);
  apic.AdvanceTo(5000);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 5000), 0u);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_FALSE(RegBit(apic, Lapic::kRegIrr, kTimerVector, 5000));
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerFires), 0u);
  // Unmasking a spent one-shot raises nothing either.
  apic.Write(Lapic::kRegLvtTimer, kTimerVector, 6000);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);

  // Periodic and masked: the count wraps; unmasking exposes the next deadline.
  ArmTimer(apic, 0xb, 1000, 10000, /*periodic=*/true, /*masked=*/true);
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 12500), 500u);
  apic.Write(Lapic::kRegLvtTimer, kTimerVector | Lapic::kLvtTimerPeriodic, 12500);
  EXPECT_EQ(apic.NextTimerEvent(), 13000u);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  apic.AdvanceTo(13000);
  EXPECT_EQ(apic.HighestDeliverable(), kTimerVector);
}

TEST(LapicTest, SoftwareDisableMasksLvtsAndDropsInterrupts) {
  Lapic apic(0);
  Enable(apic);
  ArmTimer(apic, 0xb, 100, 0);
  EXPECT_EQ(apic.NextTimerEvent(), 100u);
  apic.Write(Lapic::kRegSvr, 0xff, 10);  // software disable
  EXPECT_FALSE(apic.software_enabled());
  for (uint32_t off = Lapic::kRegLvtTimer; off <= Lapic::kRegLvtError; off += 0x10) {
    EXPECT_TRUE(apic.Read(off, 10) & Lapic::kLvtMasked) << std::hex << off;
  }
  EXPECT_EQ(apic.Read(Lapic::kRegLvtTimer, 10) & 0xff, kTimerVector);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  // The mask cannot be cleared while disabled.
  apic.Write(Lapic::kRegLvtTimer, kTimerVector, 20);
  EXPECT_TRUE(apic.Read(Lapic::kRegLvtTimer, 20) & Lapic::kLvtMasked);
  // The timer still counts; expiry raises nothing.
  EXPECT_EQ(apic.Read(Lapic::kRegTimerCurrent, 50), 50u);
  apic.AdvanceTo(200);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  // Fixed interrupts are dropped.
  Raise(apic, 0x80);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kDroppedDisabled), 1u);
  // Re-enabling leaves the LVTs masked until software unmasks them.
  Enable(apic);
  EXPECT_TRUE(apic.Read(Lapic::kRegLvtTimer, 300) & Lapic::kLvtMasked);
  apic.Write(Lapic::kRegLvtTimer, kTimerVector, 300);
  EXPECT_FALSE(apic.Read(Lapic::kRegLvtTimer, 300) & Lapic::kLvtMasked);
  Raise(apic, 0x80);
  EXPECT_EQ(apic.HighestDeliverable(), 0x80);
}

TEST(LapicTest, NestedInterruptsFollowPriorityAndEoiRetiresHighest) {
  Lapic apic(0);
  Enable(apic);
  Raise(apic, 0x30);
  ASSERT_EQ(apic.HighestDeliverable(), 0x30);
  apic.Acknowledge(0x30);
  EXPECT_FALSE(RegBit(apic, Lapic::kRegIrr, 0x30));
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIsr, 0x30));

  Raise(apic, 0x80);  // higher class: nests
  ASSERT_EQ(apic.HighestDeliverable(), 0x80);
  apic.Acknowledge(0x80);
  Raise(apic, 0x40);  // class 4 < 8 in service: waits
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIsr, 0x30));
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIsr, 0x80));
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIrr, 0x40));

  apic.Write(Lapic::kRegEoi, 0, 0);  // retires 0x80, the highest
  EXPECT_FALSE(RegBit(apic, Lapic::kRegIsr, 0x80));
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIsr, 0x30));
  ASSERT_EQ(apic.HighestDeliverable(), 0x40);  // 4 > 3
  apic.Acknowledge(0x40);
  apic.Write(Lapic::kRegEoi, 0, 0);  // 0x40
  EXPECT_FALSE(RegBit(apic, Lapic::kRegIsr, 0x40));
  EXPECT_TRUE(RegBit(apic, Lapic::kRegIsr, 0x30));
  apic.Write(Lapic::kRegEoi, 0, 0);  // 0x30
  EXPECT_FALSE(RegBit(apic, Lapic::kRegIsr, 0x30));
  apic.Write(Lapic::kRegEoi, 0, 0);  // nothing in service: no effect
  EXPECT_EQ(apic.counters().Get(LapicCounters::kInterruptsAccepted), 3u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kEois), 3u);
  EXPECT_EQ(apic.Read(Lapic::kRegPpr, 0), 0u);

  // The same vector can be pending again while in service.
  Raise(apic, 0x90);
  apic.Acknowledge(0x90);
  Raise(apic, 0x90);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  apic.Write(Lapic::kRegEoi, 0, 0);
  EXPECT_EQ(apic.HighestDeliverable(), 0x90);
}

TEST(LapicTest, EoiCallbackOnlyForLevelTriggeredVectors) {
  Lapic apic(0);
  Enable(apic);
  std::vector<uint8_t> eois;
  apic.set_eoi_callback([&](uint8_t v) { eois.push_back(v); });
  Raise(apic, 0x50, /*level=*/true);
  Raise(apic, 0x60, /*level=*/false);
  EXPECT_TRUE(RegBit(apic, Lapic::kRegTmr, 0x50));
  EXPECT_FALSE(RegBit(apic, Lapic::kRegTmr, 0x60));
  apic.Acknowledge(static_cast<uint8_t>(apic.HighestDeliverable()));  // 0x60
  apic.Write(Lapic::kRegEoi, 0, 0);
  EXPECT_TRUE(eois.empty());
  ASSERT_EQ(apic.HighestDeliverable(), 0x50);
  apic.Acknowledge(0x50);
  apic.Write(Lapic::kRegEoi, 0, 0);
  EXPECT_EQ(eois, std::vector<uint8_t>{0x50});

  // An edge interrupt accepted on a vector clears its TMR bit.
  Raise(apic, 0x50, /*level=*/false);
  EXPECT_FALSE(RegBit(apic, Lapic::kRegTmr, 0x50));
  apic.Acknowledge(0x50);
  apic.Write(Lapic::kRegEoi, 0, 0);
  EXPECT_EQ(eois.size(), 1u);
}

TEST(LapicTest, PostFromManyThreadsReachesIrr) {
  Lapic apic(0);
  Enable(apic);
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&apic, &done, t] {
      for (int r = 0; r < kRounds; ++r) {
        for (int v = 16 + t; v < 256; v += kThreads) {
          apic.Post(static_cast<uint8_t>(v), /*level=*/(v & 1) != 0);
        }
      }
      apic.Post(static_cast<uint8_t>(t), false);  // illegal: 0-3
      done.fetch_add(1);
    });
  }
  // The vCPU merges while the posters run.
  while (done.load() < kThreads) apic.MergePosted();
  for (auto& th : threads) th.join();
  apic.MergePosted();

  for (int v = 16; v < 256; ++v) {
    EXPECT_TRUE(RegBit(apic, Lapic::kRegIrr, static_cast<uint8_t>(v))) << v;
    EXPECT_EQ(RegBit(apic, Lapic::kRegTmr, static_cast<uint8_t>(v)), (v & 1) != 0) << v;
  }
  for (int v = 0; v < 16; ++v) EXPECT_FALSE(RegBit(apic, Lapic::kRegIrr, static_cast<uint8_t>(v)));
  EXPECT_EQ(apic.counters().Get(LapicCounters::kPosted), 240u * kRounds + kThreads);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kIllegalVectors), uint64_t{kThreads});
  EXPECT_EQ(apic.HighestDeliverable(), 255);
}

TEST(LapicTest, MergeIsANoOpWhenNothingWasPosted) {
  Lapic apic(0);
  Enable(apic);
  apic.MergePosted();
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kPosted), 0u);
  apic.Post(0x77, false);
  EXPECT_EQ(apic.HighestDeliverable(), -1);  // not merged yet
  apic.MergePosted();
  EXPECT_EQ(apic.HighestDeliverable(), 0x77);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kPosted), 1u);
}

TEST(LapicTest, NextTimerEvent) {
  Lapic apic(0);
  Enable(apic);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);  // never armed
  ArmTimer(apic, 0x0, 100, 50);             // divide by 2
  EXPECT_EQ(apic.NextTimerEvent(), 250u);
  apic.Write(Lapic::kRegLvtTimer, kTimerVector | Lapic::kLvtMasked, 60);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);  // masked: raises nothing
  apic.Write(Lapic::kRegLvtTimer, kTimerVector, 70);
  EXPECT_EQ(apic.NextTimerEvent(), 250u);
  apic.AdvanceTo(249);
  EXPECT_EQ(apic.NextTimerEvent(), 250u);
  apic.AdvanceTo(250);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);  // one-shot spent
  // Switching to periodic does not restart a spent timer.
  apic.Write(Lapic::kRegLvtTimer, kTimerVector | Lapic::kLvtTimerPeriodic, 300);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  apic.Write(Lapic::kRegTimerInitial, 10, 400);
  EXPECT_EQ(apic.NextTimerEvent(), 420u);
  apic.AdvanceTo(425);
  EXPECT_EQ(apic.NextTimerEvent(), 440u);
  // Periodic -> one-shot while counting: the next expiry is the last.
  apic.Write(Lapic::kRegLvtTimer, kTimerVector, 430);
  EXPECT_EQ(apic.NextTimerEvent(), 440u);
  apic.AdvanceTo(440);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  apic.Write(Lapic::kRegTimerInitial, 10, 500);
  apic.Write(Lapic::kRegTimerInitial, 0, 505);  // stop
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  // Mode 10b (TSC-deadline, not offered) behaves as one-shot.
  apic.Write(Lapic::kRegLvtTimer, kTimerVector | (2u << 17), 600);
  apic.Write(Lapic::kRegTimerInitial, 10, 600);
  EXPECT_EQ(apic.NextTimerEvent(), 620u);
  apic.AdvanceTo(10'000);
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
}

TEST(LapicTest, IllegalVectorsAreDropped) {
  Lapic apic(0);
  Enable(apic);
  Raise(apic, 5);
  Raise(apic, 15);
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_EQ(apic.Read(Lapic::kRegIrr, 0), 0u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kIllegalVectors), 2u);
  // A timer LVT with an illegal vector.
  apic.Write(Lapic::kRegLvtTimer, 3, 0);
  apic.Write(Lapic::kRegTimerDivide, 0xb, 0);
  apic.Write(Lapic::kRegTimerInitial, 10, 0);
  apic.AdvanceTo(10);
  EXPECT_EQ(apic.Read(Lapic::kRegIrr, 0), 0u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kIllegalVectors), 3u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kTimerFires), 0u);
  // A self-IPI with an illegal vector.
  apic.Write(Lapic::kRegIcrLow, (1u << 18) | 7, 20);
  EXPECT_EQ(apic.Read(Lapic::kRegIrr, 0), 0u);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kIllegalVectors), 4u);
  Raise(apic, 16);  // the lowest legal vector
  EXPECT_EQ(apic.HighestDeliverable(), 16);
}

TEST(LapicTest, SelfIpis) {
  Lapic apic(2);
  Enable(apic);
  apic.Write(Lapic::kRegIcrLow, (1u << 18) | 0x70, 0);  // shorthand self
  EXPECT_EQ(apic.HighestDeliverable(), 0x70);
  EXPECT_EQ(apic.Read(Lapic::kRegIcrLow, 0), (1u << 18) | 0x70u);  // delivery status idle
  apic.Acknowledge(0x70);
  apic.Write(Lapic::kRegEoi, 0, 0);
  apic.Write(Lapic::kRegIcrHigh, 2u << 24, 0);  // physical, to our ID
  apic.Write(Lapic::kRegIcrLow, 0x71, 0);
  EXPECT_EQ(apic.HighestDeliverable(), 0x71);
  apic.Acknowledge(0x71);
  apic.Write(Lapic::kRegEoi, 0, 0);
  apic.Write(Lapic::kRegIcrHigh, 3u << 24, 0);  // another APIC
  apic.Write(Lapic::kRegIcrLow, 0x72, 0);
  apic.Write(Lapic::kRegIcrLow, (3u << 18) | 0x73, 0);  // all excluding self
  apic.Write(Lapic::kRegIcrLow, (1u << 18) | (4u << 8) | 0x74, 0);  // NMI: not modelled
  EXPECT_EQ(apic.HighestDeliverable(), -1);
  EXPECT_EQ(apic.counters().Get(LapicCounters::kIpisIgnored), 3u);
}

TEST(LapicTest, ApicBaseMsr) {
  Lapic apic(0);
  EXPECT_TRUE(apic.SetApicBaseMsr(0xfee00900));
  EXPECT_TRUE(apic.SetApicBaseMsr(0xfee00800));  // BSP is not writable; ignored
  EXPECT_EQ(apic.apic_base_msr(), 0xfee00900u);
  EXPECT_FALSE(apic.SetApicBaseMsr(0xfee00100));  // disable
  EXPECT_FALSE(apic.SetApicBaseMsr(0xfee00d00));  // x2APIC
  EXPECT_FALSE(apic.SetApicBaseMsr(0xfed00900));  // relocate
  EXPECT_FALSE(apic.SetApicBaseMsr(0xfee00901));  // reserved bit
  EXPECT_EQ(apic.apic_base_msr(), 0xfee00900u);
}

TEST(LapicTest, ResetReturnsToPowerUpState) {
  Lapic apic(4);
  Enable(apic);
  ArmTimer(apic, 0xb, 10, 0);
  Raise(apic, 0x90);
  apic.Post(0x91, false);  // posted, not merged
  apic.Reset();
  EXPECT_EQ(apic.id(), 4);
  EXPECT_FALSE(apic.software_enabled());
  EXPECT_EQ(apic.NextTimerEvent(), kNone);
  apic.MergePosted();
  EXPECT_EQ(apic.Read(Lapic::kRegIrr + 0x40, 0), 0u);
  EXPECT_EQ(apic.Read(Lapic::kRegLvtTimer, 0), Lapic::kLvtMasked);
}

}  // namespace
}  // namespace cpu

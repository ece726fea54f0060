#include "guest/kernel/lapic.h"

#include "guest/kernel/arch.h"
#include "guest/kernel/console.h"
#include "guest/kernel/trap.h"

namespace kernel {
namespace {

// Register offsets (SDM Vol. 3A, 12.4.1 table 12-1).
constexpr uint32_t kRegTpr = 0x80;
constexpr uint32_t kRegEoi = 0xb0;
constexpr uint32_t kRegSvr = 0xf0;
constexpr uint32_t kRegLvtTimer = 0x320;
constexpr uint32_t kRegLvtLint0 = 0x350;
constexpr uint32_t kRegInitialCount = 0x380;
constexpr uint32_t kRegCurrentCount = 0x390;
constexpr uint32_t kRegDivide = 0x3e0;
constexpr uint32_t kLvtMasked = 1u << 16;
constexpr uint32_t kLvtPeriodic = 1u << 17;
constexpr uint32_t kDivideBy1 = 0xb;   // SDM Vol. 3A, 12.5.4 figure 12-10
constexpr uint32_t kDivideBy16 = 0x3;
constexpr uint64_t kCalibrateUs = 5000;

volatile uint32_t* lapic = nullptr;
// Set when the periodic mode bit did not stick (KVM drops it when the VMM did
// not set CPUID): the tick handler then re-arms a one-shot count instead.
bool one_shot = false;
uint32_t tick_count = 0;
uint64_t tsc_khz_ = 0;
uint64_t tick_ns_ = 0;
uint64_t boot_tsc = 0;

uint32_t Read(uint32_t reg) { return lapic[reg / 4]; }
void Write(uint32_t reg, uint32_t v) { lapic[reg / 4] = v; }

uint64_t TscFromCpuid() {
  uint32_t max_leaf = Cpuid(0).eax;
  if (max_leaf >= 0x15) {
    CpuidResult r = Cpuid(0x15);  // TSC/crystal ratio and crystal Hz
    if (r.eax != 0 && r.ebx != 0 && r.ecx != 0) {
      return static_cast<uint64_t>(r.ecx) / 1000 * r.ebx / r.eax;
    }
  }
  if (max_leaf >= 0x16) {
    uint32_t mhz = Cpuid(0x16).eax & 0xffff;  // processor base frequency
    if (mhz != 0) return static_cast<uint64_t>(mhz) * 1000;
  }
  return 0;
}

// Counts TSC ticks over kCalibrateUs of LAPIC time (one-shot, masked, /1).
uint64_t CalibrateTsc(uint64_t lapic_khz) {
  uint64_t counts = lapic_khz * kCalibrateUs / 1000;
  Write(kRegDivide, kDivideBy1);
  Write(kRegLvtTimer, kLvtMasked | kTimerVector);
  Write(kRegInitialCount, 0xffffffff);
  uint32_t start = Read(kRegCurrentCount);
  uint64_t t0 = Rdtsc();
  uint32_t now;
  do {
    now = Read(kRegCurrentCount);
  } while (start - now < counts && now != 0);
  uint64_t t1 = Rdtsc();
  Write(kRegInitialCount, 0);
  uint64_t elapsed = start - now;
  if (elapsed == 0) return 0;
  return (t1 - t0) * lapic_khz / elapsed;
}

}  // namespace

void LapicInit(uint64_t tsc_khz, uint64_t lapic_khz, uint64_t tick_us) {
  boot_tsc = Rdtsc();
  // Mask both 8259s: otherwise legacy GSIs may also arrive as PIC vectors.
  Outb(0x21, 0xff);
  Outb(0xa1, 0xff);
  uint64_t base = Rdmsr(kMsrApicBase) & 0xffffff000ull;
  lapic = PhysToVirt<volatile uint32_t>(base);
  Write(kRegTpr, 0);
  Write(kRegLvtLint0, kLvtMasked);
  Write(kRegSvr, 0x100 | kSpuriousVector);  // software enable
  if (lapic_khz == 0) lapic_khz = 1000000;
  const char* source = "boot info / command line";
  if (tsc_khz == 0) {
    tsc_khz = TscFromCpuid();
    source = "cpuid";
  }
  if (tsc_khz == 0) {
    tsc_khz = CalibrateTsc(lapic_khz);
    source = "lapic calibration";
  }
  if (tsc_khz == 0) tsc_khz = 1000000;  // last resort: a 1 GHz guess
  tsc_khz_ = tsc_khz;
  tick_ns_ = tick_us * 1000;
  uint64_t count = lapic_khz * tick_us / 1000 / 16;
  tick_count = static_cast<uint32_t>(count ? count : 1);
  Write(kRegDivide, kDivideBy16);
  Write(kRegLvtTimer, kLvtPeriodic | kTimerVector);
  one_shot = !(Read(kRegLvtTimer) & kLvtPeriodic);
  Write(kRegInitialCount, tick_count);
  Printk("timer: lapic at %lx, %lu kHz input, tick %lu us (%s); tsc %lu kHz (%s)\n", base,
         lapic_khz, tick_us, one_shot ? "one-shot re-armed" : "periodic", tsc_khz_, source);
}

void LapicEoi() { Write(kRegEoi, 0); }

void LapicTimerRearm() {
  if (one_shot) Write(kRegInitialCount, tick_count);
}

uint64_t TscKhz() { return tsc_khz_; }
uint64_t TickNs() { return tick_ns_; }

uint64_t TscToNs(uint64_t ticks) {
  return ticks / tsc_khz_ * 1000000 + (ticks % tsc_khz_) * 1000000 / tsc_khz_;
}

uint64_t NowNs() { return TscToNs(Rdtsc() - boot_tsc); }

}  // namespace kernel

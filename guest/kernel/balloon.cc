#include "guest/kernel/balloon.h"

#include "guest/abi.h"
#include "guest/kernel/arch.h"
#include "guest/kernel/console.h"
#include "guest/kernel/lib.h"
#include "guest/kernel/pmm.h"
#include "guest/kernel/virtio_table.h"
#include "guest-driver/virtio_balloon.h"
#include "guest-driver/virtio_mmio.h"

#include <new>

namespace kernel {
namespace {

namespace gd = guest_driver;

// Device registers are in the uncached 3..4 GiB window of the direct map.
constexpr uint64_t kMmioWindowBase = 0xc0000000;
constexpr uint64_t kMmioWindowEnd = 0x100000000;
constexpr uint64_t kDirectMapEnd = kDirectMapBase + (512ull << 30);

// VirtioEnv over the direct map and the page allocator.
class KernelVirtioEnv final : public gd::VirtioEnv {
 public:
  uint32_t MmioRead32(uintptr_t addr) override { return *reinterpret_cast<volatile uint32_t*>(addr); }
  void MmioWrite32(uintptr_t addr, uint32_t v) override { *reinterpret_cast<volatile uint32_t*>(addr) = v; }
  uint16_t MmioRead16(uintptr_t addr) override { return *reinterpret_cast<volatile uint16_t*>(addr); }
  void MmioWrite16(uintptr_t addr, uint16_t v) override { *reinterpret_cast<volatile uint16_t*>(addr) = v; }
  uint8_t MmioRead8(uintptr_t addr) override { return *reinterpret_cast<volatile uint8_t*>(addr); }
  void MmioWrite8(uintptr_t addr, uint8_t v) override { *reinterpret_cast<volatile uint8_t*>(addr) = v; }
  void* AllocZeroedPages(size_t num_pages, uint64_t* gpa) override {
    uint64_t pa;
    if (num_pages == 1) {
      pa = AllocPage(/*zero=*/true);
    } else {
      // Only at set-up (rings larger than a page): contiguous fresh frames.
      pa = PmmCarveContiguous(num_pages);
      for (size_t i = 0; pa != 0 && i < num_pages; ++i) ZeroFrame(pa + i * kPageSize);
    }
    if (pa == 0) return nullptr;
    *gpa = pa;
    return PhysToVirt(pa);
  }
  void FreePages(void* virt, uint64_t gpa, size_t num_pages) override {
    (void)virt;
    if (num_pages == 1) FreePage(gpa);  // carved ranges are never returned
  }
  uint64_t VirtToPhys(const void* virt) override {
    const uint64_t va = reinterpret_cast<uint64_t>(virt);
    if (va >= kDirectMapBase && va < kDirectMapEnd) return va - kDirectMapBase;
    return KernelVirtToPhys(virt);
  }
  void* PhysToVirt(uint64_t gpa) override { return kernel::PhysToVirt(gpa); }
};

uint64_t minor_faults = 0;

class KernelBalloonMemory final : public gd::BalloonMemory {
 public:
  uint64_t AllocPage() override { return AllocPageNoOom(reserve_pages); }
  void FreePage(uint64_t gpa) override { kernel::FreePage(gpa); }
  // Deflated pages go to the allocator's table of untouched frames (pmm.h).
  void FreeDeflatedPage(uint64_t gpa) override { PmmFreeUntouched(gpa); }
  uint32_t TakeFreeBlocks(uint32_t order, uint64_t* gpas, uint32_t max_blocks) override {
    // Bounded work per scan: at most a few blocks' worth of frames visited.
    uint64_t visit = (uint64_t{max_blocks} << order) * 2;
    if (visit < 1024) visit = 1024;
    if (visit > 65536) visit = 65536;
    return PmmTakeFreeBlocks(order, gpas, max_blocks, static_cast<uint32_t>(visit));
  }
  void ReturnReportedBlocks(uint32_t order, const uint64_t* gpas, uint32_t n) override {
    PmmReturnReportedBlocks(order, gpas, n);
  }
  void ReadStats(gd::BalloonGuestStats* out) override;

  uint64_t reserve_pages = 256;
};

KernelVirtioEnv env;
KernelBalloonMemory memory;
// Constructed in place once a device is found (no global constructors run
// before KernelMain... they do not run at all: the kernel has no init_array).
alignas(gd::VirtioMmioDevice) uint8_t device_storage[sizeof(gd::VirtioMmioDevice)];
alignas(gd::VirtioBalloon) uint8_t balloon_storage[sizeof(gd::VirtioBalloon)];
gd::VirtioBalloon* balloon = nullptr;
uint64_t poll_ticks = 1;
uint64_t ticks_to_poll = 1;
bool reported_failure = false;

void KernelBalloonMemory::ReadStats(gd::BalloonGuestStats* out) {
  const PmmStats& m = GetPmmStats();
  // Without DEFLATE_ON_OOM the balloon's pages are gone from the guest (Linux
  // lowers totalram the same way); with it they can come back, so they count.
  uint64_t total = m.total_pages;
  if (balloon != nullptr && !(balloon->features() & gd::balloon::kFeatureDeflateOnOom)) {
    total -= balloon->held_pages();
  }
  *out = {};
  out->minor_faults = minor_faults;
  out->free_bytes = m.free_pages * kPageSize;
  out->total_bytes = total * kPageSize;
  out->available_bytes = m.free_pages * kPageSize;  // no caches to drop
}

uint64_t OomHook() {
  return balloon != nullptr ? balloon->DeflateForOom(0xffffffffu) : 0;
}

}  // namespace

bool BalloonParseOption(const CmdlineWord& w, BalloonConfig* c, bool* ok) {
  constexpr char kPrefix[] = "virtio_balloon";
  constexpr uint32_t kPrefixLen = sizeof(kPrefix) - 1;
  if (w.key_len < kPrefixLen || memcmp(w.key, kPrefix, kPrefixLen) != 0) return false;
  if (w.key_len == kPrefixLen) {
    uint64_t v = 1;
    if (w.value && !ParseU64(w.value, w.value_len, &v)) *ok = false;
    c->enabled = v != 0;
    return true;
  }
  if (w.key[kPrefixLen] != '.') return false;
  const char* key = w.key + kPrefixLen + 1;
  const uint32_t key_len = w.key_len - kPrefixLen - 1;
  uint64_t* field = StrEqN(key, key_len, "batch")          ? &c->batch
                    : StrEqN(key, key_len, "report_order") ? &c->report_order
                    : StrEqN(key, key_len, "report_ticks") ? &c->report_ticks
                    : StrEqN(key, key_len, "poll_ticks")   ? &c->poll_ticks
                    : StrEqN(key, key_len, "poll_pages")   ? &c->poll_pages
                    : StrEqN(key, key_len, "reserve_pages") ? &c->reserve_pages
                    : StrEqN(key, key_len, "features")     ? &c->features
                                                           : nullptr;
  if (field == nullptr) {
    Printk("boot: unknown option '%s'\n", w.key);
    *ok = false;
  } else if (!w.value || !ParseU64(w.value, w.value_len, field)) {
    Printk("boot: bad number in '%s'\n", w.key);
    *ok = false;
  }
  return true;
}

void BalloonInit(const BalloonConfig& config) {
  if (!config.enabled) return;
  for (int i = 0; i < VirtioDeviceCount(); ++i) {
    const VirtioMmioDevice& d = VirtioDevice(i);
    if (d.base < kMmioWindowBase || d.base + d.size > kMmioWindowEnd || d.size < 0x200) continue;
    auto* dev = new (device_storage) gd::VirtioMmioDevice(
        env, reinterpret_cast<uintptr_t>(PhysToVirt(d.base)), static_cast<uint32_t>(d.size));
    gd::VirtioStatus s = dev->Probe(gd::device_id::kBalloon);
    if (s == gd::VirtioStatus::kWrongDevice || s == gd::VirtioStatus::kNoDevice) continue;
    if (s != gd::VirtioStatus::kOk) {
      // QEMU's virtio-mmio is legacy unless -global virtio-mmio.force-legacy=false.
      Printk("balloon: device at %lx not usable: %s\n", d.base, gd::VirtioStatusName(s));
      continue;
    }
    memory.reserve_pages = config.reserve_pages;
    gd::BalloonOptions o;
    o.features &= config.features;
    o.batch_pages = static_cast<uint32_t>(config.batch);
    o.poll_pages = static_cast<uint32_t>(config.poll_pages > 0xffffffffull ? 0xffffffffull : config.poll_pages);
    o.report_order = static_cast<uint32_t>(config.report_order);
    o.report_interval_polls = static_cast<uint32_t>(
        config.report_ticks / (config.poll_ticks ? config.poll_ticks : 1) + 1);
    auto* b = new (balloon_storage) gd::VirtioBalloon(*dev, memory);
    s = b->Init(o);
    if (s != gd::VirtioStatus::kOk) {
      Printk("balloon: device at %lx failed to start: %s\n", d.base, gd::VirtioStatusName(s));
      return;
    }
    balloon = b;
    poll_ticks = ticks_to_poll = config.poll_ticks ? config.poll_ticks : 1;
    PmmSetOomHook(&OomHook);
    Printk("balloon: device at %lx irq %u (polled every %lu ticks), features %lx, "
           "target %u pages, report order %lu, reporting queue %u\n",
           d.base, d.irq, poll_ticks, b->features(), b->target_pages(), config.report_order,
           b->report_queue_index());
    return;
  }
}

void BalloonTick() {
  if (balloon == nullptr || --ticks_to_poll != 0) return;
  ticks_to_poll = poll_ticks;
  const gd::VirtioStatus s = balloon->Poll();
  if (s != gd::VirtioStatus::kOk && !reported_failure) {
    reported_failure = true;
    Printk("balloon: stopped: %s\n", gd::VirtioStatusName(s));
  }
}

uint64_t BalloonMemInfo(uint64_t which) {
  if (balloon == nullptr) return 0;
  const gd::VirtioBalloon::Counters& c = balloon->counters();
  switch (which) {
    case guest::kMemBalloonPages: return balloon->actual_pages();
    case guest::kMemBalloonTargetPages: return balloon->target_pages();
    case guest::kMemBalloonInflated: return c.inflated_pages;
    case guest::kMemBalloonDeflated: return c.deflated_pages;
    case guest::kMemBalloonOomDeflated: return c.oom_deflated_pages;
    case guest::kMemBalloonReportedPages: return c.reported_pages;
    default: return 0;
  }
}

uint64_t MinorFaults() { return minor_faults; }
void CountMinorFault() { ++minor_faults; }

void BalloonPrintSummary() {
  if (balloon == nullptr) return;
  const gd::VirtioBalloon::Counters& c = balloon->counters();
  Printk("BALLOON target=%u actual=%u inflated=%lu deflated=%lu oom_deflated=%lu "
         "reported_pages=%lu report_requests=%lu stats_reports=%lu alloc_failures=%lu "
         "config_changes=%lu polls=%lu failed=%d\n",
         balloon->target_pages(), balloon->actual_pages(), c.inflated_pages, c.deflated_pages,
         c.oom_deflated_pages, c.reported_pages, c.report_requests, c.stats_reports,
         c.alloc_failures, c.config_changes, c.polls, balloon->failed() ? 1 : 0);
}

}  // namespace kernel

// libFuzzer target for the virtio-balloon device (balloon/balloon_device.h)
// behind the real virtio-mmio transport, over a real FrameTable and
// FramePool (memfd): the guest-facing surface of ballooning, in the manner of
// Cloud Hypervisor's balloon fuzzer.
//
// The input is a little program of guest and host actions: MMIO reads and
// writes of any offset and width, raw writes into guest RAM (PFN arrays,
// stats buffers, descriptors, rings), a driver bring-up macro with any
// feature subset, chains of 1..4 buffers at any address, notifications, host
// target changes and stats requests, guest touches of pages (MakeAvailable)
// and other policies changing pages (discard, pin). The device must never
// crash (ASan, UBSan), never hand FrameTable a gfn it refuses as outside RAM
// ("discard ... is not inside one RAM range" is never logged as a host
// error here, since verbs are only called on checked gfns), and never
// change another VM's memory: a second VM on the same pool keeps its
// contents and states, checked after every input.
//
// Build: with clang (-fsanitize=fuzzer); see tests/fuzz/CMakeLists.txt.
// Run:   ./balloon_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "balloon/balloon.h"
#include "balloon/balloon_test_driver.h"
#include "base/log.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"

namespace {

using balloon::testing::DriverRing;
using balloon::testing::MmioDriver;

constexpr uint64_t kLowBytes = 512 * 1024;
constexpr uint64_t kHighBase = uint64_t{4} << 30;
constexpr uint64_t kHighBytes = 64 * 1024;
constexpr uint64_t kRingBase = 0x10000;  // four rings of 16 entries, 0x1000 apart
constexpr uint64_t kBufBase = 0x20000;   // driver buffers
constexpr uint32_t kRingSize = 16;
constexpr uint64_t kOtherVmBytes = 64 * 1024;
constexpr uint8_t kCanary = 0x3c;

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  template <typename T>
  T Take() {
    T v{};
    const size_t n = size_ - pos_ < sizeof(T) ? size_ - pos_ : sizeof(T);
    std::memcpy(&v, data_ + pos_, n);
    pos_ += n;
    return v;
  }
  size_t TakeBytes(uint8_t* out, size_t want) {
    const size_t n = size_ - pos_ < want ? size_ - pos_ : want;
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

struct Shared {
  std::unique_ptr<vmm::FramePool> pool;
  std::unique_ptr<vmm::FrameTable> other_vm;  // must never change
};

Shared& GetShared() {
  static Shared* shared = [] {
    base::SetMinLogSeverity(base::LogSeverity::kFatal);
    auto* s = new Shared;
    auto pool = vmm::FramePool::Create({.budget_bytes = 2 << 20, .address_space_bytes = 2 << 20});
    if (!pool.ok()) std::abort();
    s->pool = std::move(*pool);
    auto other = vmm::FrameTable::Create(s->pool.get(), {.vm_name = "other", .ram_ranges = {{0, kOtherVmBytes}}});
    if (!other.ok()) std::abort();
    s->other_vm = std::move(*other);
    std::vector<uint8_t> page(4096, kCanary);
    for (uint64_t gpa = 0; gpa < kOtherVmBytes; gpa += 4096) {
      if (!s->other_vm->Write(base::Gpa(gpa), page.data(), page.size())) std::abort();
    }
    return s;
  }();
  return *shared;
}

void CheckOtherVm(vmm::FrameTable& other) {
  for (uint64_t gfn = 0; gfn < kOtherVmBytes / 4096; ++gfn) {
    if (other.Lookup(base::Gfn(gfn)).state() != vmm::GfnState::kPresent) std::abort();
    const uint8_t* p = other.Translate(base::Gfn(gfn));
    if (p == nullptr) std::abort();
    for (int i = 0; i < 4096; ++i) {
      if (p[i] != kCanary) std::abort();
    }
  }
}

// A gfn: mostly in or near RAM, sometimes anywhere in 32 bits.
uint32_t PickPfn(Input& in) {
  const uint8_t how = in.Take<uint8_t>();
  const uint32_t raw = in.Take<uint16_t>();
  switch (how % 4) {
    case 0: return raw % (kLowBytes / 4096 + 4);
    case 1: return static_cast<uint32_t>((kHighBase >> 12) - 2 + raw % (kHighBytes / 4096 + 4));
    case 2: return 0xd0000 + raw % 16;  // the MMIO hole
    default: return raw | (uint32_t{in.Take<uint16_t>()} << 16);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Shared& shared = GetShared();
  Input in(data, size);
  const uint8_t flags = in.Take<uint8_t>();
  auto table = vmm::FrameTable::Create(
      shared.pool.get(), {.vm_name = "fuzz", .ram_ranges = {{0, kLowBytes}, {kHighBase, kHighBytes}}});
  if (!table.ok()) std::abort();
  vmm::FrameTable& mem = **table;
  {
    balloon::BalloonOptions options;
    options.device.stats = (flags & 1) != 0;
    options.device.free_page_reporting = (flags & 2) != 0;
    options.device.deflate_on_oom = (flags & 4) != 0;
    options.device.guest_touches_tracked = (flags & 8) != 0;
    options.device.queue_size = 16;
    options.offer_event_idx = (flags & 16) != 0;
    options.raise_irq = [] {};
    auto created = balloon::Balloon::Create(mem, std::move(options));
    if (!created.ok()) std::abort();
    balloon::Balloon& b = **created;
    vmm::VirtioMmioDevice& dev = b.transport();
    MmioDriver driver(dev);
    std::vector<std::unique_ptr<DriverRing>> rings;
    for (int q = 0; q < 4; ++q) {
      rings.push_back(std::make_unique<DriverRing>(mem, base::Gpa(kRingBase + 0x1000 * q), kRingSize));
    }
    uint16_t next_desc[4] = {};

    for (int steps = 0; steps < 192 && !in.empty(); ++steps) {
      switch (in.Take<uint8_t>() % 11) {
        case 0: {  // MMIO write, any offset and width.
          const uint64_t off = in.Take<uint16_t>() % vmm::VirtioMmioDevice::kRegionBytes;
          static constexpr uint32_t kWidths[] = {1, 2, 4, 8};
          uint32_t width = kWidths[in.Take<uint8_t>() % 4];
          if (off + width > vmm::VirtioMmioDevice::kRegionBytes) width = 1;
          uint8_t bytes[8] = {};
          in.TakeBytes(bytes, width);
          dev.Write(off, bytes, width);
          break;
        }
        case 1: {  // MMIO read.
          const uint64_t off = in.Take<uint16_t>() % vmm::VirtioMmioDevice::kRegionBytes;
          uint8_t bytes[4];
          dev.Read(off, bytes, off + 4 <= vmm::VirtioMmioDevice::kRegionBytes ? 4 : 1);
          break;
        }
        case 2: {  // Raw guest RAM write (rings, descriptors, buffers).
          const uint64_t gpa = in.Take<uint32_t>() % kLowBytes;
          uint8_t bytes[64];
          const size_t n = in.TakeBytes(bytes, 1 + in.Take<uint8_t>() % 64);
          (void)mem.Write(base::Gpa(gpa), bytes, n);
          break;
        }
        case 3: {  // Bring-up with any feature subset and any number of queues.
          const uint64_t features = vmm::virtio_mmio::kFVersion1 | (in.Take<uint8_t>() & 0x3f) |
                                    (in.Take<uint8_t>() & 1 ? vmm::virtio_mmio::kFEventIdx : 0);
          (void)driver.Negotiate(features);
          const int n = 1 + in.Take<uint8_t>() % 4;
          for (int q = 0; q < n; ++q) driver.SetUpQueue(static_cast<uint16_t>(q), rings[q]->config());
          driver.DriverOk();
          for (uint16_t& d : next_desc) d = 0;
          break;
        }
        case 4: {  // A PFN array chain on queue q (PFNs near and far from RAM).
          const uint16_t q = in.Take<uint8_t>() % 4;
          const uint32_t n = in.Take<uint8_t>() % 32;
          const uint64_t gpa = kBufBase + 0x1000 * (in.Take<uint8_t>() % 16);
          for (uint32_t i = 0; i < n; ++i) (void)mem.WriteObj(base::Gpa(gpa + 4 * i), PickPfn(in));
          const uint32_t len = n * 4 + (in.Take<uint8_t>() % 8 == 0 ? in.Take<uint8_t>() % 4 : 0);
          const bool writable = in.Take<uint8_t>() % 8 == 0;
          rings[q]->SetChain(next_desc[q], {{gpa, len, writable}});
          rings[q]->Publish(next_desc[q]);
          next_desc[q] = static_cast<uint16_t>((next_desc[q] + 1) % kRingSize);
          driver.Notify(q);
          break;
        }
        case 5: {  // A chain of 1..4 buffers anywhere (reporting ranges, stats, junk).
          const uint16_t q = in.Take<uint8_t>() % 4;
          const int n = 1 + in.Take<uint8_t>() % 4;
          std::vector<DriverRing::Buf> bufs;
          for (int i = 0; i < n; ++i) {
            uint64_t gpa;
            switch (in.Take<uint8_t>() % 3) {
              case 0: gpa = in.Take<uint32_t>() % kLowBytes; break;
              case 1: gpa = kHighBase + in.Take<uint32_t>() % kHighBytes; break;
              default: gpa = in.Take<uint64_t>(); break;
            }
            bufs.push_back({gpa, in.Take<uint32_t>() % 0x10000, (in.Take<uint8_t>() & 1) != 0});
          }
          rings[q]->SetChain(next_desc[q], bufs);
          rings[q]->Publish(next_desc[q]);
          next_desc[q] = static_cast<uint16_t>((next_desc[q] + n) % kRingSize);
          driver.Notify(q);
          break;
        }
        case 6:
          driver.Notify(in.Take<uint8_t>() % 6);
          break;
        case 7:
          if (in.Take<uint8_t>() & 1) {
            b.SetTargetPages(in.Take<uint32_t>());
          } else {
            (void)b.RequestStats();
          }
          break;
        case 8:  // A guest touch (the soft CPU's slow path).
          (void)mem.MakeAvailable(PickPfn(in), (in.Take<uint8_t>() & 1) != 0);
          break;
        case 9: {  // Another policy or device changes a page.
          const uint32_t gfn = PickPfn(in);
          switch (in.Take<uint8_t>() % 3) {
            case 0: (void)mem.Discard(base::Gfn(gfn), 1, vmm::FrameTable::DiscardTo::kZero); break;
            case 1: (void)mem.SetFlags(base::Gfn(gfn), 1, vmm::kGfnPinned, true); break;
            default: (void)mem.SetFlags(base::Gfn(gfn), 1, vmm::kGfnPinned, false); break;
          }
          break;
        }
        case 10:
          driver.W(vmm::virtio_mmio::kStatus, 0);  // reset
          break;
      }
    }
    // The device's own count can never exceed the VM's RAM.
    if (b.inflated_pages() > mem.num_frames()) std::abort();
    if (b.Snapshot().empty()) std::abort();
  }
  CheckOtherVm(*shared.other_vm);
  return 0;
}

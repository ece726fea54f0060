// libFuzzer target for the guest-facing virtio surface: the virtio-mmio register
// file (vmm-host/virtio_mmio_device.h) and the device side of split virtqueues
// (vmm-host/virtqueue.h), in the manner of Cloud Hypervisor's fuzz/ targets.
//
// The input is a little program of guest actions against one device in a small
// fake guest RAM with a hole: MMIO reads and writes of any offset and width,
// raw writes into guest RAM (descriptor tables, rings, buffers), queue
// notifications, a correct driver bring-up macro (so the fuzzer reaches live
// queues quickly) and host-side returns of held chains. The device must never
// crash, never touch memory outside RAM (ASan), and never hand a device model a
// buffer outside RAM (checked below).
//
// Build: clang only (-fsanitize=fuzzer); see tests/fuzz/CMakeLists.txt.
// Run:   ./virtqueue_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "base/log.h"
#include "tests/fakes/fake_guest_memory.h"
#include "tests/fakes/fake_virtio_backend.h"
#include "vmm-host/virtio_mmio_device.h"
#include "vmm-host/virtqueue.h"

namespace {

using vmm::testing::FakeGuestMemory;
using vmm::testing::FakeVirtioBackend;
namespace mmio = vmm::virtio_mmio;

constexpr uint64_t kLowBytes = 64 * 1024;
constexpr uint64_t kHighBase = 0x100000;
constexpr uint64_t kHighBytes = 16 * 1024;

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

// A backend that also checks every chain it is handed stays in RAM.
class CheckingBackend : public FakeVirtioBackend {
 public:
  using FakeVirtioBackend::FakeVirtioBackend;
  void OnQueueNotify(uint16_t queue_index, vmm::Virtqueue& queue) override {
    vmm::DescriptorChain chain;
    int budget = 64;
    while (budget-- > 0 && queue.Pop(&chain) == vmm::Virtqueue::PopStatus::kOk) {
      for (const vmm::ChainBuffer& b : chain.buffers()) {
        if (memory->HostPtr(b.gpa, b.len) == nullptr) std::abort();
      }
      if (chain.buffers().size() > queue.size()) std::abort();
      if ((chain.head() & 1) != 0) {
        held.push_back(chain.token());
      } else {
        (void)queue.PushUsed(chain, Echo(chain));
      }
    }
    (void)queue_index;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    base::SetMinLogSeverity(base::LogSeverity::kFatal);
    return true;
  }();
  (void)quiet;

  FakeGuestMemory mem({{0, kLowBytes}, {kHighBase, kHighBytes}});
  FakeVirtioBackend::Knobs knobs;
  knobs.queue_max = {16, 4};
  auto backend = std::make_unique<CheckingBackend>(knobs);
  backend->memory = &mem;
  CheckingBackend* be = backend.get();
  vmm::VirtioMmioOptions options;
  options.raise_irq = [] {};
  auto created = vmm::VirtioMmioDevice::Create(mem, std::move(backend), std::move(options));
  if (!created.ok()) std::abort();
  vmm::VirtioMmioDevice& dev = **created;

  auto write32 = [&](uint64_t off, uint32_t v) { dev.Write(off, reinterpret_cast<uint8_t*>(&v), 4); };

  Input in(data, size);
  for (int steps = 0; steps < 256 && !in.empty(); ++steps) {
    switch (in.Take<uint8_t>() % 7) {
      case 0: {  // MMIO write, any offset and width.
        const uint64_t off = in.Take<uint16_t>() % vmm::VirtioMmioDevice::kRegionBytes;
        static constexpr uint32_t kWidths[] = {1, 2, 4, 8};
        uint32_t width = kWidths[in.Take<uint8_t>() % 4];
        if (off + width > vmm::VirtioMmioDevice::kRegionBytes) width = 1;
        uint8_t bytes[8];
        in.TakeBytes(bytes, width);
        dev.Write(off, bytes, width);
        break;
      }
      case 1: {  // MMIO read.
        const uint64_t off = in.Take<uint16_t>() % vmm::VirtioMmioDevice::kRegionBytes;
        uint8_t bytes[8];
        dev.Read(off, bytes, off + 4 <= vmm::VirtioMmioDevice::kRegionBytes ? 4 : 1);
        break;
      }
      case 2: {  // Guest writes its RAM (rings, descriptors, buffers).
        const bool high = in.Take<uint8_t>() & 1;
        const uint64_t off = in.Take<uint16_t>() % (high ? kHighBytes : kLowBytes);
        uint8_t bytes[64];
        const size_t n = in.TakeBytes(bytes, 1 + in.Take<uint8_t>() % 64);
        mem.Write(base::Gpa((high ? kHighBase : 0) + off), bytes, n);
        break;
      }
      case 3: {  // A correct bring-up with rings at fuzzer-chosen places.
        const uint64_t feat = in.Take<uint8_t>() & 1 ? mmio::kFEventIdx : 0;
        write32(mmio::kStatus, 0);
        write32(mmio::kStatus, mmio::kStatusAcknowledge | mmio::kStatusDriver);
        write32(mmio::kDriverFeaturesSel, 0);
        write32(mmio::kDriverFeatures, static_cast<uint32_t>(feat));
        write32(mmio::kDriverFeaturesSel, 1);
        write32(mmio::kDriverFeatures, 1);  // VERSION_1
        write32(mmio::kStatus, mmio::kStatusAcknowledge | mmio::kStatusDriver | mmio::kStatusFeaturesOk);
        for (uint32_t q = 0; q < 2; ++q) {
          write32(mmio::kQueueSel, q);
          write32(mmio::kQueueNum, 1u << (in.Take<uint8_t>() % 5));
          write32(mmio::kQueueDescLow, (in.Take<uint16_t>() % kLowBytes) & ~15u);
          write32(mmio::kQueueDriverLow, (in.Take<uint16_t>() % kLowBytes) & ~1u);
          write32(mmio::kQueueDeviceLow, (in.Take<uint16_t>() % kLowBytes) & ~3u);
          write32(mmio::kQueueReady, 1);
        }
        write32(mmio::kStatus, mmio::kStatusAcknowledge | mmio::kStatusDriver |
                                   mmio::kStatusFeaturesOk | mmio::kStatusDriverOk);
        break;
      }
      case 4:  // Notify.
        write32(mmio::kQueueNotify, in.Take<uint8_t>() % 3);
        break;
      case 5:  // Host returns a held chain (maybe stale).
        if (!be->held.empty()) {
          const vmm::ChainToken token = be->held.back();
          be->held.pop_back();
          dev.WithQueue(in.Take<uint8_t>() % 2,
                        [&](vmm::Virtqueue& q) { (void)q.PushUsed(token, in.Take<uint32_t>()); });
        }
        break;
      case 6:  // Host config change.
        dev.UpdateConfig([&] { be->config()[in.Take<uint8_t>() % 16] = in.Take<uint8_t>(); });
        break;
    }
  }
  return 0;
}

#include "balloon/balloon.h"

#include <algorithm>
#include <utility>

#include "base/status.h"

namespace balloon {

absl::StatusOr<std::unique_ptr<Balloon>> Balloon::Create(vmm::FrameTable& memory, BalloonOptions options) {
  if (options.device.queue_size == 0 ||
      (options.device.queue_size & (options.device.queue_size - 1)) != 0 ||
      options.device.queue_size > vmm::virtq::kMaxSize) {
    return absl::InvalidArgumentError("balloon: queue_size must be a power of two in 1..32768");
  }
  auto device = std::make_unique<BalloonDevice>(memory, options.device);
  BalloonDevice* raw = device.get();
  vmm::VirtioMmioOptions mmio;
  mmio.name = options.name;
  mmio.offer_event_idx = options.offer_event_idx;
  mmio.raise_irq = std::move(options.raise_irq);
  ASSIGN_OR_RETURN(std::unique_ptr<vmm::VirtioMmioDevice> transport,
                   vmm::VirtioMmioDevice::Create(memory, std::move(device), std::move(mmio)));
  std::unique_ptr<Balloon> b(new Balloon(memory, raw, std::move(transport)));
  memory.RegisterInvalidationListener(raw);
  return b;
}

Balloon::Balloon(vmm::FrameTable& memory, BalloonDevice* device,
                 std::shared_ptr<vmm::VirtioMmioDevice> transport)
    : memory_(memory), device_(device), transport_(std::move(transport)) {}

Balloon::~Balloon() { memory_.UnregisterInvalidationListener(device_); }

void Balloon::SetTargetPages(uint32_t num_pages) {
  transport_->UpdateConfig([&] { device_->SetTargetLocked(num_pages); });
}

void Balloon::SetTargetBytes(uint64_t bytes) {
  const uint64_t pages = bytes >> virtio_balloon::kPfnShift;
  SetTargetPages(static_cast<uint32_t>(std::min<uint64_t>(pages, UINT32_MAX)));
}

bool Balloon::RequestStats() {
  const std::optional<uint16_t> index = device_->stats_queue_index();
  if (!index) return false;
  bool pushed = false;
  const bool ran = transport_->WithQueue(*index, [&](vmm::Virtqueue& q) { pushed = device_->RequestStatsLocked(q); });
  return ran && pushed;
}

base::CounterSnapshot Balloon::Snapshot() const {
  base::CounterSnapshot out = device_->counters().Snapshot("balloon");
  out.push_back({"balloon.target_pages", target_pages()});
  out.push_back({"balloon.actual_pages", actual_pages()});
  out.push_back({"balloon.inflated_pages", inflated_pages()});
  return out;
}

}  // namespace balloon

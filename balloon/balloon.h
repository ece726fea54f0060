// Balloon: the host's handle on one VM's virtio-balloon. It owns the device
// (a VirtioMmioDevice with a BalloonDevice behind it), registers the device
// as an invalidation listener of the VM's FrameTable, and gives the VMM the
// balloon's controls: set the target, read what the guest reports and what
// the device measured, ask for and read memory statistics, read counters.
//
// The VMM puts bus_device() on the VM's IoBus at a virtio-mmio slot
// (vmm-host/memory_layout.h) and announces it to the guest
// (`virtio_mmio.device=` on the command line, docs/boot.md). See
// docs/balloon.md for the protocol, the counters and the limits.
//
// Thread safety: every method may be called from any thread once Create
// returned (the control interface, a run-config schedule, reports); guest
// accesses arrive on vCPU threads through the bus. The FrameTable must
// outlive the Balloon, and the Balloon must outlive every vCPU that may
// still reach it through the bus.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "balloon/balloon_device.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/virtio_mmio_device.h"

namespace balloon {

struct BalloonOptions {
  // For logs, e.g. "virtio-balloon@0xd0000000".
  std::string name = "virtio-balloon";
  BalloonDeviceOptions device;
  // Offer VIRTIO_F_EVENT_IDX.
  bool offer_event_idx = true;
  // The device's interrupt (one call per event; see VirtioMmioOptions).
  std::function<void()> raise_irq;
};

class Balloon {
 public:
  static absl::StatusOr<std::unique_ptr<Balloon>> Create(vmm::FrameTable& memory, BalloonOptions options);
  ~Balloon();
  Balloon(const Balloon&) = delete;
  Balloon& operator=(const Balloon&) = delete;

  // For IoBus::Register (MMIO, VirtioMmioDevice::kRegionBytes).
  std::shared_ptr<vmm::BusDevice> bus_device() const { return transport_; }
  vmm::VirtioMmioDevice& transport() { return *transport_; }

  // The target: how many 4 KiB pages the host wants in the balloon. Writes
  // num_pages and sends a configuration change interrupt if the driver is
  // live (§5.5.6: the driver then inflates or deflates towards it).
  void SetTargetPages(uint32_t num_pages);
  // The same in bytes (rounded down to whole pages, clamped to 2^32-1 pages).
  void SetTargetBytes(uint64_t bytes);
  uint32_t target_pages() const { return device_->target_pages(); }
  // What the guest says is in the balloon (config `actual`; untrusted).
  uint32_t actual_pages() const { return device_->actual_pages(); }
  // What the device put into the balloon and is still there (measured by
  // the device from the PFNs it discarded; a guest cannot inflate it).
  uint64_t inflated_pages() const { return device_->inflated_pages(); }

  // Asks the driver for fresh statistics by returning its held stats buffer
  // (§5.5.6.3). False if the device is not live, statsq was not negotiated
  // or no buffer is held (the driver has not answered the last request).
  bool RequestStats();
  // The last statistics the driver sent, with when they were parsed.
  std::optional<BalloonStats> LastStats() const { return device_->last_stats(); }

  const BalloonCounters& counters() const { return device_->counters(); }
  // Counters for reports: "balloon.<name>" for the device's, plus
  // "balloon.target_pages", "balloon.actual_pages", "balloon.inflated_pages".
  base::CounterSnapshot Snapshot() const;
  // Negotiated features (0 until FEATURES_OK).
  uint64_t negotiated_features() const { return device_->negotiated_features(); }

 private:
  Balloon(vmm::FrameTable& memory, BalloonDevice* device, std::shared_ptr<vmm::VirtioMmioDevice> transport);

  vmm::FrameTable& memory_;
  BalloonDevice* const device_;  // owned by transport_
  const std::shared_ptr<vmm::VirtioMmioDevice> transport_;
};

}  // namespace balloon

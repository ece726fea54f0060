// The kernel's virtio-balloon: finds a balloon device (DeviceID 5) among the
// virtio-mmio devices of the command line (virtio_table.h), runs the driver of
// guest-driver/virtio_balloon.h over the kernel's page allocator, and gives it
// a chance to work on every timer tick.
//
// Notification: the kernel does not program the IOAPIC, so the device's
// interrupt line is never delivered. Instead BalloonTick() polls the device's
// InterruptStatus register every `poll_ticks` ticks (one MMIO read, about 10 us
// on the PVM host against a 10 ms tick) and does at most `poll_pages` pages of
// work, in requests of `batch` pages.
//
// Command line (docs/guest.md): virtio_balloon=0 turns it off;
// virtio_balloon.batch=N (PFNs per request, 256), virtio_balloon.report_order=N
// (free page reporting block order, 7), virtio_balloon.report_ticks=N (ticks
// between report scans, 100), virtio_balloon.poll_ticks=N (1),
// virtio_balloon.poll_pages=N (pages inflated or deflated at most per poll,
// in batches, while the device completes each at once, 4096),
// virtio_balloon.reserve_pages=N (free pages inflation leaves, 256),
// virtio_balloon.features=MASK (balloon feature bits to ask for).
//
// Single CPU, interrupts off in the kernel: no locking.
#pragma once

#include <stdint.h>

#include "guest/kernel/cmdline.h"

namespace kernel {

struct BalloonConfig {
  bool enabled = true;
  uint64_t batch = 256;
  uint64_t report_order = 7;
  uint64_t report_ticks = 100;
  uint64_t poll_ticks = 1;
  uint64_t poll_pages = 4096;  // pages inflated/deflated at most per poll
  uint64_t reserve_pages = 256;
  uint64_t features = ~0ull;  // everything the driver supports
};

// Handles a `virtio_balloon` / `virtio_balloon.*` word; false if it is not
// one. Sets *ok false on a bad number.
bool BalloonParseOption(const CmdlineWord& w, BalloonConfig* config, bool* ok);

// Probes the virtio-mmio table for a balloon and starts the driver.
void BalloonInit(const BalloonConfig& config);
// From the timer interrupt.
void BalloonTick();

// Counters for meminfo and the summary (guest::MemInfoWhich values).
uint64_t BalloonMemInfo(uint64_t which);
uint64_t MinorFaults();
void CountMinorFault();
void BalloonPrintSummary();

}  // namespace kernel

// VirtioBalloon: the guest side of a traditional memory balloon device (virtio 1.2
// §5.5, device ID 5) on the virtio-mmio core of this folder. It owns the balloon's
// virtqueues (inflateq, deflateq, statsq, reporting_vq), a page-sized PFN buffer
// per request queue, the statistics buffer and the list of pages held in the
// balloon; the pages themselves come from, and go back to, the kernel's allocator
// through BalloonMemory.
//
// What it does:
// - Inflate (§5.5.6.1): while the device's num_pages is above `actual`, takes up
//   to `batch_pages` 4 KiB pages from the allocator, sends their PFNs (le32,
//   page address >> 12) as one buffer on inflateq and, once the device has used
//   the buffer, raises `actual` in the configuration space.
// - Deflate: while `actual` is above num_pages, sends up to `batch_pages` PFNs on
//   deflateq. Without VIRTIO_BALLOON_F_MUST_TELL_HOST the pages go back to the
//   allocator at once; with it, only after the device used the buffer.
// - Statistics (§5.5.6.3, VIRTIO_BALLOON_F_STATS_VQ): one buffer of tag/value
//   pairs is kept available on statsq; each time the device returns it (its way
//   of asking), the driver refills it from BalloonMemory::ReadStats and adds it
//   again.
// - VIRTIO_BALLOON_F_DEFLATE_ON_OOM: DeflateForOom() gives pages back to the
//   allocator when it is about to fail an allocation, and tells the device.
// - Free page reporting (§5.5.6.7, VIRTIO_BALLOON_F_PAGE_REPORTING): every
//   `report_interval_polls` polls, asks BalloonMemory for up to one queue's worth
//   of free blocks of 2^report_order pages, hands them to the device as one chain
//   of device-writable buffers (as Linux does), and gives them back to the
//   allocator when the device has used the chain.
//
// Notification: the kernel calls Poll() from its interrupt handler or, where the
// device's interrupt line is not wired, from the timer tick. A Poll reads
// InterruptStatus (one MMIO read); everything else it does is bounded: inflate
// or deflate requests of `batch_pages` pages, one after another while the
// device completes each during its notify, up to `poll_pages` pages, and one
// report request.
//
// Queue numbering (§5.5.2): inflateq 0, deflateq 1, then statsq, free_page_vq and
// reporting_vq, each present only with its feature, numbered compactly in that
// order as Linux's driver and QEMU's device do (QEMU always creates statsq and
// always offers STATS_VQ, so with QEMU the reporting queue is 3).
// VIRTIO_BALLOON_F_FREE_PAGE_HINT and PAGE_POISON are never negotiated.
//
// Cost (docs/platform.md: guest CPL0 code is emulated, about 1 us/instruction):
// per ballooned page one allocator call, one 4-byte PFN store in the request
// buffer and one in the balloon's page list; per request a few ring stores, at
// most one QueueNotify and one config write. Pages are never zeroed or touched.
//
// Thread safety: none. One CPU; Poll, DeflateForOom and the accessors must not
// run concurrently (the guest kernel calls them with interrupts off).
#ifndef GUEST_DRIVER_VIRTIO_BALLOON_H_
#define GUEST_DRIVER_VIRTIO_BALLOON_H_

#include <cstddef>
#include <cstdint>

#include "guest-driver/virtio_env.h"
#include "guest-driver/virtio_mmio.h"
#include "guest-driver/virtio_spec.h"
#include "guest-driver/virtio_status.h"
#include "guest-driver/virtqueue.h"

namespace guest_driver {

// §5.5.3 feature bits, §5.5.4 configuration layout, §5.5.6.3 statistics tags.
namespace balloon {
inline constexpr uint64_t kFeatureMustTellHost = 1ull << 0;
inline constexpr uint64_t kFeatureStatsVq = 1ull << 1;
inline constexpr uint64_t kFeatureDeflateOnOom = 1ull << 2;
inline constexpr uint64_t kFeatureFreePageHint = 1ull << 3;
inline constexpr uint64_t kFeaturePagePoison = 1ull << 4;
inline constexpr uint64_t kFeaturePageReporting = 1ull << 5;

inline constexpr uint32_t kConfigNumPages = 0;  // le32, device-written: the target.
inline constexpr uint32_t kConfigActual = 4;    // le32, driver-written.

inline constexpr uint32_t kPfnShift = 12;  // VIRTIO_BALLOON_PFN_SHIFT: 4 KiB units.

inline constexpr uint16_t kStatSwapIn = 0;   // bytes
inline constexpr uint16_t kStatSwapOut = 1;  // bytes
inline constexpr uint16_t kStatMajorFaults = 2;
inline constexpr uint16_t kStatMinorFaults = 3;
inline constexpr uint16_t kStatMemFree = 4;       // bytes
inline constexpr uint16_t kStatMemTotal = 5;      // bytes
inline constexpr uint16_t kStatAvailable = 6;     // bytes
inline constexpr uint16_t kStatCaches = 7;        // bytes

// §5.5.6.3: struct virtio_balloon_stat { le16 tag; le64 val; } packed.
struct __attribute__((packed)) Stat {
  uint16_t tag;
  uint64_t val;
};
static_assert(sizeof(Stat) == 10);
inline constexpr uint32_t kNumStats = 8;
}  // namespace balloon

// The guest's memory figures the driver reports on statsq.
struct BalloonGuestStats {
  uint64_t swap_in_bytes = 0;
  uint64_t swap_out_bytes = 0;
  uint64_t major_faults = 0;
  uint64_t minor_faults = 0;
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;
  uint64_t caches_bytes = 0;
};

// What the kernel's page allocator provides to the balloon. Addresses are
// guest-physical, page-aligned. Called only from VirtioBalloon's own calls.
class BalloonMemory {
 public:
  // One 4 KiB page for the balloon or for its bookkeeping, or 0. Must not call
  // back into the balloon (no out-of-memory deflation here) and should refuse
  // when the guest is short of memory: a balloon must not cause an OOM.
  virtual uint64_t AllocPage() = 0;
  virtual void FreePage(uint64_t gpa) = 0;
  // A page leaving the balloon: the host may have dropped its frame, so an
  // allocator that can should take it back without writing it (a write makes
  // the host back the page again, undoing the reclaim before the guest needs
  // the page). The default is FreePage.
  virtual void FreeDeflatedPage(uint64_t gpa) { FreePage(gpa); }
  // Free page reporting: removes up to `max_blocks` free, not yet reported,
  // naturally aligned blocks of 2^order pages from the allocator (they stay
  // counted as free) and stores their base addresses. Returns how many.
  virtual uint32_t TakeFreeBlocks(uint32_t order, uint64_t* gpas, uint32_t max_blocks) = 0;
  // Gives blocks from TakeFreeBlocks back, now reported to the device.
  virtual void ReturnReportedBlocks(uint32_t order, const uint64_t* gpas, uint32_t num_blocks) = 0;
  virtual void ReadStats(BalloonGuestStats* out) = 0;

 protected:
  ~BalloonMemory() = default;
};

struct BalloonOptions {
  // Features to ask for; each is used only if the device offers it.
  uint64_t features = balloon::kFeatureStatsVq | balloon::kFeatureDeflateOnOom |
                      balloon::kFeaturePageReporting | balloon::kFeatureMustTellHost;
  uint32_t batch_pages = 256;  // PFNs per inflate/deflate request (Linux: 256).
  uint32_t report_order = 7;   // Free page reporting block: 2^order pages.
  uint32_t report_interval_polls = 100;  // Polls between report requests.
  uint32_t oom_pages = 256;    // Pages DeflateForOom releases at most per call.
  // Pages inflated or deflated at most per Poll, in batches, while the device
  // completes each request during its notify (at least one batch).
  uint32_t poll_pages = 4096;
};

class VirtioBalloon {
 public:
  static constexpr uint32_t kMaxBatchPages = kPageSize / sizeof(uint32_t);  // 1024
  static constexpr uint32_t kMaxReportBlocks = 32;
  static constexpr uint32_t kMaxReportOrder = 18;  // 1 GiB blocks.

  struct Counters {
    uint64_t inflated_pages = 0;      // acknowledged by the device
    uint64_t deflated_pages = 0;      // acknowledged by the device
    uint64_t oom_deflated_pages = 0;  // part of deflated_pages, from DeflateForOom
    uint64_t inflate_requests = 0;
    uint64_t deflate_requests = 0;
    uint64_t alloc_failures = 0;      // inflate stopped because the allocator refused
    uint64_t stats_reports = 0;
    uint64_t report_requests = 0;
    uint64_t reported_pages = 0;
    uint64_t config_changes = 0;
    uint64_t polls = 0;
  };

  // `dev` must be probed (Probe(device_id::kBalloon) returned kOk) and outlive this.
  VirtioBalloon(VirtioMmioDevice& dev, BalloonMemory& mem) : dev_(&dev), mem_(&mem) {}
  VirtioBalloon(const VirtioBalloon&) = delete;
  VirtioBalloon& operator=(const VirtioBalloon&) = delete;

  // §3.1.1 initialization with the balloon's queues, the first stats buffer and the
  // first read of num_pages. On failure the device is marked FAILED.
  VirtioStatus Init(const BalloonOptions& options);

  // The notification path: reads and acknowledges InterruptStatus, rereads
  // num_pages on a configuration change, harvests used buffers and starts
  // inflate or deflate requests (up to options.poll_pages pages while the device
  // completes them during the notify, else one) and at most one report request. Returns kOk, or the
  // error that stopped the balloon (it then does nothing more; see failed()).
  VirtioStatus Poll();

  // With DEFLATE_ON_OOM: takes up to options.oom_pages (and at most `max_pages`)
  // pages out of the balloon, returns them to the allocator and tells the device.
  // Returns how many pages the allocator got back now (0 without the feature,
  // with an empty balloon, or while a deflate request is still in flight; with
  // MUST_TELL_HOST, pages come back only once the device acknowledges).
  uint32_t DeflateForOom(uint32_t max_pages);

  bool failed() const { return failed_; }
  uint64_t features() const { return dev_->features(); }
  uint32_t target_pages() const { return target_; }   // num_pages
  uint32_t actual_pages() const { return actual_; }   // acknowledged, in config
  uint32_t held_pages() const { return held_; }        // in the page list
  const Counters& counters() const { return counters_; }
  const Virtqueue& inflate_queue() const { return inflate_vq_; }
  const Virtqueue& deflate_queue() const { return deflate_vq_; }
  const Virtqueue& stats_queue() const { return stats_vq_; }
  const Virtqueue& report_queue() const { return report_vq_; }
  uint16_t report_queue_index() const { return report_queue_index_; }

 private:
  // The balloon's page list: a stack of PFNs in chunk pages from BalloonMemory,
  // so a ballooned page is never written (the host may have discarded it).
  struct Chunk {
    uint64_t next_gpa;
    uint32_t count;
    uint32_t reserved;
    uint32_t pfns[(kPageSize - 16) / 4];
  };
  static_assert(sizeof(Chunk) == kPageSize);

  VirtioStatus SetUpQueues();
  VirtioStatus Fail(VirtioStatus why);
  bool PushPfn(uint32_t pfn);
  bool PopPfn(uint32_t* pfn);
  VirtioStatus Harvest();
  VirtioStatus ReadTarget();
  VirtioStatus WriteActual();
  VirtioStatus StartInflate();
  // Sends up to `max_pages` PFNs on deflateq; returns pages freed now.
  VirtioStatus StartDeflate(uint32_t max_pages, bool oom, uint32_t* freed_now);
  VirtioStatus SendStats();
  VirtioStatus StartReport();
  VirtioStatus AddOne(Virtqueue& vq, uint64_t gpa, uint32_t len, bool device_writable);

  VirtioMmioDevice* dev_;
  BalloonMemory* mem_;
  BalloonOptions options_;
  bool initialized_ = false;
  bool failed_ = false;
  bool must_tell_ = false;

  Virtqueue inflate_vq_;
  Virtqueue deflate_vq_;
  Virtqueue stats_vq_;
  Virtqueue report_vq_;
  uint16_t report_queue_index_ = 0;

  // One page each, from VirtioEnv::AllocZeroedPages.
  uint32_t* inflate_pfns_ = nullptr;
  uint64_t inflate_pfns_gpa_ = 0;
  uint32_t* deflate_pfns_ = nullptr;
  uint64_t deflate_pfns_gpa_ = 0;
  balloon::Stat* stats_ = nullptr;
  uint64_t stats_gpa_ = 0;

  uint32_t inflate_in_flight_ = 0;  // PFNs in the request on inflateq, 0 if none.
  uint32_t deflate_in_flight_ = 0;
  bool deflate_in_flight_oom_ = false;
  bool stats_in_flight_ = false;
  uint32_t report_in_flight_ = 0;   // Blocks in the request on reporting_vq.
  uint64_t report_gpas_[kMaxReportBlocks] = {};
  uint32_t polls_until_report_ = 0;
  uint32_t oom_holdoff_polls_ = 0;
  uint64_t pages_returned_ = 0;  // Balloon pages given back to the allocator.

  uint64_t top_chunk_gpa_ = 0;
  Chunk* top_chunk_ = nullptr;
  uint32_t held_ = 0;     // PFNs in the page list (inflated or being inflated).
  uint32_t target_ = 0;   // Last num_pages read.
  uint32_t actual_ = 0;   // Pages the device acknowledged, as written to `actual`.
  Counters counters_;
};

}  // namespace guest_driver

#endif  // GUEST_DRIVER_VIRTIO_BALLOON_H_

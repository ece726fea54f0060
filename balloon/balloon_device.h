// BalloonDevice: the device model of virtio-balloon (OASIS virtio 1.2 §5.5,
// "Traditional Memory Balloon Device"), behind the virtio-mmio transport
// (vmm-host/virtio_mmio_device.h) as its VirtioDeviceBackend.
//
// What it owns: the device's view of the guest's balloon (which pages are in
// it), the configuration space (num_pages, the host's target; actual, the
// guest's answer), the last memory statistics and the held stats buffer, and
// its counters. It changes guest memory only through FrameTable verbs:
//   - inflateq: each listed 4 KiB PFN (§5.5.6: balloon pages are always
//     4 KiB, VIRTIO_BALLOON_PFN_SHIFT 12) goes FrameTable::Discard(...,
//     kBallooned); the host frame is hole-punched, so the memory really goes
//     back to the host. Contiguous PFNs of a batch are discarded as one run.
//   - deflateq: the pages leave the balloon. Nothing is done eagerly: a later
//     guest touch repopulates the page zero-filled (FrameTable::MakeAvailable)
//     and is counted (deflated_pages_touched). With `guest_touches_tracked`
//     false (kvm today: guest touches never reach the table) the pages are
//     made Present on their still-punched home frames instead (bookkeeping
//     only, no memory is touched), so that device reads of them see the data
//     the guest writes there.
//   - statsq (VIRTIO_BALLOON_F_STATS_VQ, §5.5.6.3): the driver's buffer of
//     (le16 tag, le64 value) pairs is parsed and kept with a timestamp; the
//     buffer is held and returned to the driver to ask for fresh statistics
//     (RequestStatsLocked).
//   - reporting_vq (VIRTIO_BALLOON_F_PAGE_REPORTING, §5.5.6.7): each buffer of
//     a chain is a free guest range; its whole pages are discarded (to Zero)
//     with no effect on the balloon's size or target.
//   - VIRTIO_BALLOON_F_DEFLATE_ON_OOM is offered (the driver may deflate
//     under memory pressure without being asked); the device needs nothing
//     for it.
//
// Queue numbering (§5.5.2 with the negotiated features): inflateq 0,
// deflateq 1, then statsq, free_page_vq and reporting_vq each *only if its
// feature was negotiated*, numbered compactly (the queues that exist take the
// next index). This is what Linux's virtio_find_vqs does; QEMU instead fixes
// the indices by its device configuration, which agrees whenever the driver
// accepts every offered feature. FREE_PAGE_HINT is never offered.
//
// Guest input, and the rule for a batch (docs/balloon.md, "Hostile guests"):
// every PFN is judged on its own. A PFN outside guest RAM (past the end, in
// the MMIO hole), repeated within the batch, already in the balloon (inflate)
// or not in it (deflate), or that FrameTable refuses (pinned, swapped) is
// skipped and counted under its own name; every other PFN of the same batch
// is still handled, and the chain is always returned. A chain whose buffers
// have the wrong direction, a stats buffer of the wrong size and a reported
// range that is not RAM are dropped and counted likewise. Malformed chains
// (loops, out-of-range indices, buffers outside RAM) never reach this class:
// the transport's Virtqueue rejects them and sets DEVICE_NEEDS_RESET
// (vmm-host/virtqueue.h). Nothing here can touch another VM's memory: every
// change is a verb of this VM's FrameTable, which checks each gfn itself.
//
// Thread safety: the VirtioDeviceBackend methods and every *Locked method
// run under the transport's lock (VirtioMmioDevice serialises them; host
// threads get there through WithQueue/UpdateConfig). The accessors (target,
// actual, inflated_pages, last_stats, counters) may be called from any
// thread. InvalidateGfns (the FrameTable listener) runs on any verb's thread.
// Lock order: transport lock, then FrameTable's verb mutex, then mu_; mu_ is
// never held while a FrameTable verb runs.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/addr.h"
#include "base/counters.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/virtio_mmio_device.h"
#include "vmm-host/virtqueue.h"

namespace balloon {

// virtio 1.2 §5.5 constants (device-side copy; the guest driver has its own).
namespace virtio_balloon {
inline constexpr uint32_t kDeviceId = 5;
// §5.5.3 feature bits.
inline constexpr uint64_t kFMustTellHost = 1ull << 0;
inline constexpr uint64_t kFStatsVq = 1ull << 1;
inline constexpr uint64_t kFDeflateOnOom = 1ull << 2;
inline constexpr uint64_t kFFreePageHint = 1ull << 3;
inline constexpr uint64_t kFPagePoison = 1ull << 4;
inline constexpr uint64_t kFPageReporting = 1ull << 5;
// §5.5.6: PFNs are in 4 KiB units whatever the guest's page size.
inline constexpr uint32_t kPfnShift = 12;
// §5.5.4 configuration layout (le32 each). free_page_hint_cmd_id and
// poison_val exist only with features this device never offers.
inline constexpr uint32_t kConfigNumPages = 0;
inline constexpr uint32_t kConfigActual = 4;
inline constexpr uint32_t kConfigBytes = 8;
// §5.5.6.3 struct virtio_balloon_stat { le16 tag; le64 val; } (packed).
inline constexpr uint32_t kStatEntryBytes = 10;
}  // namespace virtio_balloon

// §5.5.6.3.1 statistic tags (10..15 are Linux's later additions, same
// numbering as include/uapi/linux/virtio_balloon.h).
enum class StatTag : uint16_t {
  kSwapIn = 0,
  kSwapOut = 1,
  kMajorFaults = 2,
  kMinorFaults = 3,
  kFreeMemory = 4,
  kTotalMemory = 5,
  kAvailableMemory = 6,
  kDiskCaches = 7,
  kHugetlbAllocations = 8,
  kHugetlbFailures = 9,
  kOomKills = 10,
  kAllocStalls = 11,
  kAsyncScans = 12,
  kDirectScans = 13,
  kAsyncReclaims = 14,
  kDirectReclaims = 15,
};
inline constexpr uint16_t kNumStatTags = 16;
// A name for reports ("swap_in", "free_memory", ...).
std::string_view StatTagName(StatTag tag);

// The role of a virtqueue. kNone: an index with no queue for the features.
enum class BalloonQueue : uint8_t { kInflate, kDeflate, kStats, kFreePageHint, kReporting, kNone };
std::string_view BalloonQueueName(BalloonQueue queue);
// The role of transport queue `index` given the negotiated features (compact
// numbering, see above), and the inverse.
BalloonQueue QueueRole(uint64_t features, uint16_t index);
std::optional<uint16_t> QueueIndex(uint64_t features, BalloonQueue role);

// The guest's last memory statistics. A tag the guest did not send is absent.
struct BalloonStats {
  std::array<std::optional<uint64_t>, kNumStatTags> values;
  absl::Time updated_at;  // when the device parsed the buffer
  uint64_t sequence = 0;  // 1 for the first statistics since the device was created
  std::optional<uint64_t> Get(StatTag tag) const { return values[static_cast<uint16_t>(tag)]; }
};

#define BALLOON_COUNTERS(X)                                                                   \
  /* inflateq */                                                                              \
  X(InflateChains, inflate_chains)                                                            \
  X(InflatePfns, inflate_pfns)               /* PFN entries read */                           \
  X(InflatedPages, inflated_pages)           /* pages discarded into the balloon */           \
  X(InflateDiscardRuns, inflate_discard_runs) /* FrameTable::Discard calls (one per run) */   \
  X(InflatePfnNotRam, inflate_pfn_not_ram)   /* beyond RAM or in the MMIO hole */             \
  X(InflatePfnDuplicate, inflate_pfn_duplicate) /* repeated within one batch */               \
  X(InflatePfnAlreadyBallooned, inflate_pfn_already_ballooned)                                \
  X(InflatePfnRefused, inflate_pfn_refused)  /* FrameTable refused: pinned or swapped */      \
  /* deflateq */                                                                              \
  X(DeflateChains, deflate_chains)                                                            \
  X(DeflatePfns, deflate_pfns)                                                                \
  X(DeflatedPages, deflated_pages)                                                            \
  X(DeflatePfnNotRam, deflate_pfn_not_ram)                                                    \
  X(DeflatePfnDuplicate, deflate_pfn_duplicate)                                               \
  X(DeflatePfnNotInflated, deflate_pfn_not_inflated) /* not in the balloon */                 \
  X(DeflatePopulateFailed, deflate_populate_failed) /* populate_on_deflate refused */         \
  X(DeflatedPagesTouched, deflated_pages_touched) /* repopulated zero-filled on touch */      \
  X(InflatedPagesTouched, inflated_pages_touched) /* touched while in the balloon */          \
  /* both PFN queues */                                                                       \
  X(PfnArrayBadLength, pfn_array_bad_length) /* not a multiple of 4 bytes: tail ignored */    \
  X(PfnArrayUnreadable, pfn_array_unreadable) /* RAM changed under the buffer */              \
  X(ChainWrongDirection, chain_wrong_direction) /* writable buffer where the device reads */  \
  /* statsq */                                                                                \
  X(StatsUpdates, stats_updates)                                                              \
  X(StatsBadSize, stats_bad_size)            /* empty, not a multiple of 10, too long */      \
  X(StatsUnknownTags, stats_unknown_tags)    /* entries ignored */                            \
  X(StatsRequests, stats_requests)           /* buffers returned to ask for statistics */     \
  X(StatsRequestNoBuffer, stats_request_no_buffer) /* asked while no buffer was held */       \
  X(StatsBufferReplaced, stats_buffer_replaced) /* a second buffer before being asked */      \
  /* reporting_vq */                                                                          \
  X(ReportChains, report_chains)                                                              \
  X(ReportRanges, report_ranges)                                                              \
  X(ReportedPages, reported_pages)           /* pages discarded */                            \
  X(ReportPagesNotResident, report_pages_not_resident) /* nothing to discard */               \
  X(ReportPagesRefused, report_pages_refused) /* pinned or swapped */                         \
  X(ReportRangeUnaligned, report_range_unaligned) /* partial pages at the ends ignored */     \
  X(ReportRangeNotRam, report_range_not_ram)                                                  \
  /* anything else */                                                                         \
  X(QueueWithoutRole, queue_without_role)    /* chains on a queue the features do not have */ \
  X(ConfigWriteIgnored, config_write_ignored) /* guest writes to num_pages */                 \
  X(TargetUpdates, target_updates)
BASE_DEFINE_COUNTERS(BalloonCounters, BALLOON_COUNTERS);

struct BalloonDeviceOptions {
  // Offer VIRTIO_BALLOON_F_STATS_VQ, _DEFLATE_ON_OOM, _PAGE_REPORTING.
  bool stats = true;
  bool deflate_on_oom = true;
  bool free_page_reporting = true;
  // QueueNumMax of every queue (a power of two).
  uint16_t queue_size = 128;
  // Whether guest touches of non-Present pages reach the FrameTable
  // (MakeAvailable: the soft backend). False (kvm today) makes deflate and
  // free page reporting leave the pages Present on punched home frames.
  bool guest_touches_tracked = true;
};

class BalloonDevice final : public vmm::VirtioDeviceBackend, public vmm::InvalidationListener {
 public:
  // PFN entries handled per step: duplicates are found within a step, and
  // this bounds the scratch memory a guest can make the device allocate.
  static constexpr uint32_t kMaxPfnsPerStep = 4096;
  // The largest stats buffer accepted (every tag once, with room to spare).
  static constexpr uint32_t kMaxStatsEntries = 64;

  // `memory` must outlive the device. Registers nothing: the owner (Balloon)
  // registers the device as `memory`'s invalidation listener.
  BalloonDevice(vmm::FrameTable& memory, BalloonDeviceOptions options);

  // --- vmm::VirtioDeviceBackend (under the transport lock) ------------------
  std::string_view name() const override { return "virtio-balloon"; }
  uint32_t device_id() const override { return virtio_balloon::kDeviceId; }
  uint64_t device_features() const override { return offered_features_; }
  uint16_t num_queues() const override { return num_queues_; }
  uint16_t queue_max_size(uint16_t) const override { return options_.queue_size; }
  uint32_t config_size() const override { return virtio_balloon::kConfigBytes; }
  void ReadConfig(uint32_t offset, uint8_t* data, uint32_t size) override;
  void WriteConfig(uint32_t offset, const uint8_t* data, uint32_t size) override;
  bool AcceptFeatures(uint64_t driver_features) override;
  void OnDriverOk(uint64_t features) override;
  void OnQueueNotify(uint16_t queue_index, vmm::Virtqueue& queue) override;
  void OnReset() override;

  // --- vmm::InvalidationListener (counts touches of balloon pages) ----------
  void InvalidateGfns(base::Gfn first, uint64_t count, vmm::InvalidationReason reason) override;

  // --- Host side, under the transport lock (VirtioMmioDevice::UpdateConfig
  // and WithQueue) ------------------------------------------------------------
  void SetTargetLocked(uint32_t num_pages);
  // Returns the held stats buffer to the driver, asking for new statistics
  // (§5.5.6.3). False (counted) if no buffer is held.
  bool RequestStatsLocked(vmm::Virtqueue& stats_queue);
  // The statsq's transport index under the negotiated features, if any.
  std::optional<uint16_t> stats_queue_index() const;

  // --- Any thread -----------------------------------------------------------
  uint32_t target_pages() const { return num_pages_.load(std::memory_order_relaxed); }
  // What the guest wrote to `actual` (untrusted; see inflated_pages()).
  uint32_t actual_pages() const { return actual_.load(std::memory_order_relaxed); }
  // Pages the device put into the balloon and that are still in it, as the
  // device counted them (the guest cannot inflate this number).
  uint64_t inflated_pages() const;
  std::optional<BalloonStats> last_stats() const;
  const BalloonCounters& counters() const { return counters_; }
  uint64_t offered_features() const { return offered_features_; }
  uint64_t negotiated_features() const { return features_.load(std::memory_order_relaxed); }

 private:
  // One page set over the VM's RAM, indexed like FrameTable entries.
  class PageSet {
   public:
    void Resize(uint64_t bits) { words_.assign((bits + 63) / 64, 0); }
    bool Test(uint64_t i) const { return (words_[i / 64] >> (i % 64)) & 1; }
    void Set(uint64_t i) { words_[i / 64] |= uint64_t{1} << (i % 64); }
    void Clear(uint64_t i) { words_[i / 64] &= ~(uint64_t{1} << (i % 64)); }
    void ClearAll() { std::fill(words_.begin(), words_.end(), 0); }

   private:
    std::vector<uint64_t> words_;
  };
  struct Run {
    uint64_t first_gfn;
    uint64_t count;
  };

  // Index of `gfn` among the VM's RAM gfns, or nullopt outside RAM.
  std::optional<uint64_t> RamIndex(uint64_t gfn) const;

  // Reads a chain's PFN array step by step into pfns_ and calls `handle`.
  template <typename Handle>
  void ForEachPfnStep(const vmm::DescriptorChain& chain, Handle&& handle);
  void HandlePfnQueue(vmm::Virtqueue& queue, bool inflate);
  void Inflate(std::span<uint32_t> pfns);
  void Deflate(std::span<uint32_t> pfns);
  // Discards `run` into the balloon (bits already set); on a refusal retries
  // page by page and clears the bits of the pages that stayed out.
  void DiscardRun(const Run& run);
  void HandleStatsQueue(vmm::Virtqueue& queue);
  void HandleReportingQueue(vmm::Virtqueue& queue);
  void DiscardReported(base::Gpa gpa, uint64_t len);
  // Pages that go back to the guest without a touch the table would see
  // (guest_touches_tracked false): Present on their home frames.
  void PopulateUntracked(const std::vector<Run>& runs, BalloonCounters::Id failure_counter);

  vmm::FrameTable& memory_;
  const BalloonDeviceOptions options_;
  const uint64_t offered_features_;
  const uint16_t num_queues_;
  // RAM layout: first gfn, frames and entry index of each range.
  struct RamRun {
    uint64_t first_gfn;
    uint64_t num_frames;
    uint64_t index;
  };
  std::vector<RamRun> ram_;

  std::atomic<uint32_t> num_pages_{0};
  std::atomic<uint32_t> actual_{0};
  std::atomic<uint64_t> features_{0};

  // Under the transport lock only.
  std::optional<vmm::ChainToken> held_stats_;
  std::vector<uint32_t> pfns_;
  std::vector<Run> runs_;
  vmm::DescriptorChain chain_;

  mutable absl::Mutex mu_;
  PageSet inflated_ ABSL_GUARDED_BY(mu_);   // in the balloon
  PageSet deflated_ ABSL_GUARDED_BY(mu_);   // left it, not touched since
  uint64_t num_inflated_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<BalloonStats> stats_ ABSL_GUARDED_BY(mu_);
  uint64_t stats_sequence_ ABSL_GUARDED_BY(mu_) = 0;

  // Written under the transport lock, or under mu_ by the listener for the
  // *Touched counters (base/counters.h: one writer per block at a time; the
  // listener's two counters are written only under mu_).
  BalloonCounters counters_;
};

}  // namespace balloon

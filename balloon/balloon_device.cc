#include "balloon/balloon_device.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/log.h"

namespace balloon {
namespace {

using vmm::DescriptorChain;
using vmm::FrameTable;
using vmm::GfnState;
using vmm::Virtqueue;

uint64_t OfferedFeatures(const BalloonDeviceOptions& o) {
  return (o.stats ? virtio_balloon::kFStatsVq : 0) |
         (o.deflate_on_oom ? virtio_balloon::kFDeflateOnOom : 0) |
         (o.free_page_reporting ? virtio_balloon::kFPageReporting : 0);
}

uint16_t MaxQueues(uint64_t offered) {
  // inflateq and deflateq, then one per offered optional queue.
  return static_cast<uint16_t>(2 + ((offered & virtio_balloon::kFStatsVq) ? 1 : 0) +
                               ((offered & virtio_balloon::kFFreePageHint) ? 1 : 0) +
                               ((offered & virtio_balloon::kFPageReporting) ? 1 : 0));
}

}  // namespace

std::string_view StatTagName(StatTag tag) {
  switch (tag) {
    case StatTag::kSwapIn: return "swap_in";
    case StatTag::kSwapOut: return "swap_out";
    case StatTag::kMajorFaults: return "major_faults";
    case StatTag::kMinorFaults: return "minor_faults";
    case StatTag::kFreeMemory: return "free_memory";
    case StatTag::kTotalMemory: return "total_memory";
    case StatTag::kAvailableMemory: return "available_memory";
    case StatTag::kDiskCaches: return "disk_caches";
    case StatTag::kHugetlbAllocations: return "hugetlb_allocations";
    case StatTag::kHugetlbFailures: return "hugetlb_failures";
    case StatTag::kOomKills: return "oom_kills";
    case StatTag::kAllocStalls: return "alloc_stalls";
    case StatTag::kAsyncScans: return "async_scans";
    case StatTag::kDirectScans: return "direct_scans";
    case StatTag::kAsyncReclaims: return "async_reclaims";
    case StatTag::kDirectReclaims: return "direct_reclaims";
  }
  return "?";
}

std::string_view BalloonQueueName(BalloonQueue queue) {
  switch (queue) {
    case BalloonQueue::kInflate: return "inflateq";
    case BalloonQueue::kDeflate: return "deflateq";
    case BalloonQueue::kStats: return "statsq";
    case BalloonQueue::kFreePageHint: return "free_page_vq";
    case BalloonQueue::kReporting: return "reporting_vq";
    case BalloonQueue::kNone: return "none";
  }
  return "?";
}

BalloonQueue QueueRole(uint64_t features, uint16_t index) {
  // §5.5.2: the optional queues exist only with their features; the ones
  // that exist take the next index in this order.
  static constexpr std::pair<BalloonQueue, uint64_t> kOrder[] = {
      {BalloonQueue::kInflate, 0},
      {BalloonQueue::kDeflate, 0},
      {BalloonQueue::kStats, virtio_balloon::kFStatsVq},
      {BalloonQueue::kFreePageHint, virtio_balloon::kFFreePageHint},
      {BalloonQueue::kReporting, virtio_balloon::kFPageReporting},
  };
  uint16_t next = 0;
  for (const auto& [role, feature] : kOrder) {
    if (feature != 0 && (features & feature) == 0) continue;
    if (next++ == index) return role;
  }
  return BalloonQueue::kNone;
}

std::optional<uint16_t> QueueIndex(uint64_t features, BalloonQueue role) {
  for (uint16_t i = 0; i < 5; ++i) {
    if (QueueRole(features, i) == role) return i;
  }
  return std::nullopt;
}

BalloonDevice::BalloonDevice(FrameTable& memory, BalloonDeviceOptions options)
    : memory_(memory),
      options_(options),
      offered_features_(OfferedFeatures(options)),
      num_queues_(MaxQueues(offered_features_)) {
  // FrameTable numbers its entries across the RAM ranges in gpa order.
  std::vector<vmm::RamRange> ranges = memory.ram_ranges();
  std::sort(ranges.begin(), ranges.end(),
            [](const vmm::RamRange& a, const vmm::RamRange& b) { return a.gpa < b.gpa; });
  uint64_t index = 0;
  for (const vmm::RamRange& r : ranges) {
    ram_.push_back({r.gpa >> base::kPageShift, r.size >> base::kPageShift, index});
    index += r.size >> base::kPageShift;
  }
  absl::MutexLock lock(&mu_);
  inflated_.Resize(index);
  deflated_.Resize(index);
}

std::optional<uint64_t> BalloonDevice::RamIndex(uint64_t gfn) const {
  for (const RamRun& r : ram_) {
    if (gfn >= r.first_gfn && gfn - r.first_gfn < r.num_frames) return r.index + (gfn - r.first_gfn);
  }
  return std::nullopt;
}

// --- Config space (§5.5.4) -------------------------------------------------------

void BalloonDevice::ReadConfig(uint32_t offset, uint8_t* data, uint32_t size) {
  // The transport checked offset + size <= kConfigBytes.
  uint8_t bytes[virtio_balloon::kConfigBytes];
  const uint32_t num_pages = num_pages_.load(std::memory_order_relaxed);
  const uint32_t actual = actual_.load(std::memory_order_relaxed);
  std::memcpy(bytes + virtio_balloon::kConfigNumPages, &num_pages, 4);  // little-endian host
  std::memcpy(bytes + virtio_balloon::kConfigActual, &actual, 4);
  std::memcpy(data, bytes + offset, size);
}

void BalloonDevice::WriteConfig(uint32_t offset, const uint8_t* data, uint32_t size) {
  // Guest input: only `actual` is the driver's to write (§5.5.4); bytes of
  // num_pages are ignored and counted. Any width, byte by byte.
  uint32_t actual = actual_.load(std::memory_order_relaxed);
  bool ignored = false;
  for (uint32_t i = 0; i < size; ++i) {
    const uint32_t at = offset + i;
    if (at >= virtio_balloon::kConfigActual && at < virtio_balloon::kConfigActual + 4) {
      const uint32_t shift = 8 * (at - virtio_balloon::kConfigActual);
      actual = (actual & ~(0xffu << shift)) | (uint32_t{data[i]} << shift);
    } else {
      ignored = true;
    }
  }
  actual_.store(actual, std::memory_order_relaxed);
  if (ignored) counters_.Inc(BalloonCounters::kConfigWriteIgnored);
}

void BalloonDevice::SetTargetLocked(uint32_t num_pages) {
  num_pages_.store(num_pages, std::memory_order_relaxed);
  counters_.Inc(BalloonCounters::kTargetUpdates);
}

// --- Lifecycle ----------------------------------------------------------------------

bool BalloonDevice::AcceptFeatures(uint64_t driver_features) {
  // Any subset of the offer works; the queue roles follow from it.
  features_.store(driver_features, std::memory_order_relaxed);
  return true;
}

void BalloonDevice::OnDriverOk(uint64_t features) {
  features_.store(features, std::memory_order_relaxed);
}

void BalloonDevice::OnReset() {
  // §5.5.6: after a reset the driver owns all of its memory again (its
  // balloon is empty and it starts over from actual = 0). The punched pages
  // stay punched and come back zero-filled when touched.
  held_stats_.reset();
  features_.store(0, std::memory_order_relaxed);
  actual_.store(0, std::memory_order_relaxed);
  std::vector<Run> runs;
  {
    absl::MutexLock lock(&mu_);
    for (const RamRun& r : ram_) {
      for (uint64_t i = 0; i < r.num_frames; ++i) {
        if (!inflated_.Test(r.index + i)) continue;
        inflated_.Clear(r.index + i);
        deflated_.Set(r.index + i);
        if (!runs.empty() && runs.back().first_gfn + runs.back().count == r.first_gfn + i) {
          ++runs.back().count;
        } else {
          runs.push_back({r.first_gfn + i, 1});
        }
      }
    }
    num_inflated_ = 0;
  }
  PopulateUntracked(runs, BalloonCounters::kDeflatePopulateFailed);
}

std::optional<uint16_t> BalloonDevice::stats_queue_index() const {
  const uint64_t f = negotiated_features();
  if ((f & virtio_balloon::kFStatsVq) == 0) return std::nullopt;
  return QueueIndex(f, BalloonQueue::kStats);
}

void BalloonDevice::OnQueueNotify(uint16_t queue_index, Virtqueue& queue) {
  switch (QueueRole(negotiated_features(), queue_index)) {
    case BalloonQueue::kInflate: HandlePfnQueue(queue, /*inflate=*/true); return;
    case BalloonQueue::kDeflate: HandlePfnQueue(queue, /*inflate=*/false); return;
    case BalloonQueue::kStats: HandleStatsQueue(queue); return;
    case BalloonQueue::kReporting: HandleReportingQueue(queue); return;
    case BalloonQueue::kFreePageHint:  // never offered
    case BalloonQueue::kNone: break;
  }
  // A queue the negotiated features do not have: return its chains unused.
  while (queue.Pop(&chain_) == Virtqueue::PopStatus::kOk) {
    counters_.Inc(BalloonCounters::kQueueWithoutRole);
    (void)queue.PushUsed(chain_, 0);
  }
}

// --- inflateq / deflateq (§5.5.6.1, §5.5.6.2) ---------------------------------------

template <typename Handle>
void BalloonDevice::ForEachPfnStep(const DescriptorChain& chain, Handle&& handle) {
  const uint32_t bytes = chain.readable_bytes();
  if (bytes % 4 != 0) counters_.Inc(BalloonCounters::kPfnArrayBadLength);
  const uint64_t total = bytes / 4;
  for (uint64_t done = 0; done < total;) {
    const uint64_t n = std::min<uint64_t>(total - done, kMaxPfnsPerStep);
    pfns_.resize(n);
    // Guest input: the chain was validated (every buffer in RAM); the copy is
    // bounded by the readable part and by pfns_' size.
    const uint64_t got = chain.ReadReadable(memory_, done * 4, pfns_.data(), n * 4);
    if (got != n * 4) {
      counters_.Inc(BalloonCounters::kPfnArrayUnreadable);
      pfns_.resize(got / 4);
      handle(std::span<uint32_t>(pfns_));
      return;
    }
    handle(std::span<uint32_t>(pfns_));
    done += n;
  }
}

void BalloonDevice::HandlePfnQueue(Virtqueue& queue, bool inflate) {
  while (queue.Pop(&chain_) == Virtqueue::PopStatus::kOk) {
    counters_.Inc(inflate ? BalloonCounters::kInflateChains : BalloonCounters::kDeflateChains);
    // §5.5.6.1: the PFN arrays are device-readable. A writable buffer means
    // a confused driver: drop the whole chain rather than guess.
    if (!chain_.writable().empty()) {
      counters_.Inc(BalloonCounters::kChainWrongDirection);
    } else {
      ForEachPfnStep(chain_, [&](std::span<uint32_t> pfns) {
        if (inflate) {
          Inflate(pfns);
        } else {
          Deflate(pfns);
        }
      });
    }
    (void)queue.PushUsed(chain_, 0);
  }
}

void BalloonDevice::Inflate(std::span<uint32_t> pfns) {
  counters_.Add(BalloonCounters::kInflatePfns, pfns.size());
  // Sorted, so that duplicates are neighbours and contiguous PFNs form runs.
  std::sort(pfns.begin(), pfns.end());
  runs_.clear();
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < pfns.size(); ++i) {
      const uint64_t gfn = pfns[i];
      if (i > 0 && pfns[i - 1] == pfns[i]) {
        counters_.Inc(BalloonCounters::kInflatePfnDuplicate);
        continue;
      }
      // Guest input: the PFN is checked against this VM's RAM ranges (the
      // MMIO hole and everything past RAM are not RAM).
      const std::optional<uint64_t> index = RamIndex(gfn);
      if (!index) {
        counters_.Inc(BalloonCounters::kInflatePfnNotRam);
        continue;
      }
      if (inflated_.Test(*index)) {
        counters_.Inc(BalloonCounters::kInflatePfnAlreadyBallooned);
        continue;
      }
      const vmm::GfnEntry e = memory_.Lookup(base::Gfn(gfn));
      if (e.state() == GfnState::kSwapped || e.has_flag(vmm::kGfnPinned)) {
        counters_.Inc(BalloonCounters::kInflatePfnRefused);
        continue;
      }
      // In the balloon from now on, so that a touch racing with the discard
      // below is seen by the listener.
      inflated_.Set(*index);
      deflated_.Clear(*index);
      ++num_inflated_;
      if (!runs_.empty() && runs_.back().first_gfn + runs_.back().count == gfn &&
          RamIndex(gfn - 1).has_value()) {
        ++runs_.back().count;
      } else {
        runs_.push_back({gfn, 1});
      }
    }
  }
  // The verbs run without mu_ (the listener takes it).
  for (const Run& run : runs_) DiscardRun(run);
}

void BalloonDevice::DiscardRun(const Run& run) {
  counters_.Inc(BalloonCounters::kInflateDiscardRuns);
  absl::Status s = memory_.Discard(base::Gfn(run.first_gfn), run.count, FrameTable::DiscardTo::kBallooned);
  if (s.ok()) {
    counters_.Add(BalloonCounters::kInflatedPages, run.count);
    return;
  }
  // A page changed state since the check (another policy pinned or swapped
  // it, or a run crossed two RAM ranges): page by page, keeping what works.
  for (uint64_t i = 0; i < run.count; ++i) {
    const uint64_t gfn = run.first_gfn + i;
    if (i > 0) counters_.Inc(BalloonCounters::kInflateDiscardRuns);
    if (memory_.Discard(base::Gfn(gfn), 1, FrameTable::DiscardTo::kBallooned).ok()) {
      counters_.Inc(BalloonCounters::kInflatedPages);
      continue;
    }
    counters_.Inc(BalloonCounters::kInflatePfnRefused);
    absl::MutexLock lock(&mu_);
    const std::optional<uint64_t> index = RamIndex(gfn);
    if (index && inflated_.Test(*index)) {
      inflated_.Clear(*index);
      --num_inflated_;
    }
  }
}

void BalloonDevice::Deflate(std::span<uint32_t> pfns) {
  counters_.Add(BalloonCounters::kDeflatePfns, pfns.size());
  std::sort(pfns.begin(), pfns.end());
  runs_.clear();
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < pfns.size(); ++i) {
      const uint64_t gfn = pfns[i];
      if (i > 0 && pfns[i - 1] == pfns[i]) {
        counters_.Inc(BalloonCounters::kDeflatePfnDuplicate);
        continue;
      }
      const std::optional<uint64_t> index = RamIndex(gfn);  // Guest input: checked.
      if (!index) {
        counters_.Inc(BalloonCounters::kDeflatePfnNotRam);
        continue;
      }
      if (!inflated_.Test(*index)) {
        counters_.Inc(BalloonCounters::kDeflatePfnNotInflated);
        continue;
      }
      // Nothing to do to the memory: the page stays punched and Ballooned
      // until the guest touches it (then zero-filled, counted below).
      inflated_.Clear(*index);
      deflated_.Set(*index);
      --num_inflated_;
      counters_.Inc(BalloonCounters::kDeflatedPages);
      if (!runs_.empty() && runs_.back().first_gfn + runs_.back().count == gfn &&
          RamIndex(gfn - 1).has_value()) {
        ++runs_.back().count;
      } else {
        runs_.push_back({gfn, 1});
      }
    }
  }
  PopulateUntracked(runs_, BalloonCounters::kDeflatePopulateFailed);
}

void BalloonDevice::PopulateUntracked(const std::vector<Run>& runs, BalloonCounters::Id failure_counter) {
  if (options_.guest_touches_tracked) return;
  for (const Run& run : runs) {
    // Only Ballooned/Zero/Unbacked pages change; a page some other policy
    // moved meanwhile (Shared, Swapped) makes Populate refuse the run, so go
    // page by page then.
    if (memory_.Populate(base::Gfn(run.first_gfn), run.count).ok()) continue;
    for (uint64_t i = 0; i < run.count; ++i) {
      if (!memory_.Populate(base::Gfn(run.first_gfn + i), 1).ok()) counters_.Inc(failure_counter);
    }
  }
}

void BalloonDevice::InvalidateGfns(base::Gfn first, uint64_t count, vmm::InvalidationReason reason) {
  // Runs under the FrameTable's verb mutex, before the change: Lookup still
  // shows the old state. A Ballooned page becoming Present is a guest touch
  // (MakeAvailable) or a populate.
  if (reason != vmm::InvalidationReason::kPopulate && reason != vmm::InvalidationReason::kRestore) return;
  absl::MutexLock lock(&mu_);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t gfn = first.value() + i;
    if (memory_.Lookup(base::Gfn(gfn)).state() != GfnState::kBallooned) continue;
    const std::optional<uint64_t> index = RamIndex(gfn);
    if (!index) continue;
    if (deflated_.Test(*index)) {
      deflated_.Clear(*index);
      counters_.Inc(BalloonCounters::kDeflatedPagesTouched);
    } else if (inflated_.Test(*index)) {
      // The guest touched a page it gave away: it is resident again, so it
      // no longer counts as reclaimed (a later deflate of it is counted as
      // not inflated, a later inflate reclaims it again).
      inflated_.Clear(*index);
      --num_inflated_;
      counters_.Inc(BalloonCounters::kInflatedPagesTouched);
    }
  }
}

uint64_t BalloonDevice::inflated_pages() const {
  absl::MutexLock lock(&mu_);
  return num_inflated_;
}

// --- statsq (§5.5.6.3) ----------------------------------------------------------------

void BalloonDevice::HandleStatsQueue(Virtqueue& queue) {
  while (queue.Pop(&chain_) == Virtqueue::PopStatus::kOk) {
    // The buffer goes back to the driver only when the host asks for
    // statistics; a second one before that replaces the first.
    if (held_stats_) {
      counters_.Inc(BalloonCounters::kStatsBufferReplaced);
      (void)queue.PushUsed(*held_stats_, 0);
      held_stats_.reset();
    }
    held_stats_ = chain_.token();
    if (!chain_.writable().empty()) {
      counters_.Inc(BalloonCounters::kChainWrongDirection);
      continue;
    }
    const uint32_t bytes = chain_.readable_bytes();
    if (bytes == 0 || bytes % virtio_balloon::kStatEntryBytes != 0 ||
        bytes / virtio_balloon::kStatEntryBytes > kMaxStatsEntries) {
      counters_.Inc(BalloonCounters::kStatsBadSize);
      continue;
    }
    uint8_t raw[kMaxStatsEntries * virtio_balloon::kStatEntryBytes];
    // Guest input: bytes <= sizeof(raw), checked above.
    if (chain_.ReadReadable(memory_, 0, raw, bytes) != bytes) {
      counters_.Inc(BalloonCounters::kStatsBadSize);
      continue;
    }
    BalloonStats stats;
    for (uint32_t at = 0; at < bytes; at += virtio_balloon::kStatEntryBytes) {
      uint16_t tag;
      uint64_t value;
      std::memcpy(&tag, raw + at, 2);
      std::memcpy(&value, raw + at + 2, 8);
      if (tag >= kNumStatTags) {
        counters_.Inc(BalloonCounters::kStatsUnknownTags);
        continue;
      }
      stats.values[tag] = value;
    }
    stats.updated_at = absl::Now();
    counters_.Inc(BalloonCounters::kStatsUpdates);
    absl::MutexLock lock(&mu_);
    stats.sequence = ++stats_sequence_;
    stats_ = stats;
  }
}

bool BalloonDevice::RequestStatsLocked(Virtqueue& stats_queue) {
  if (!held_stats_) {
    counters_.Inc(BalloonCounters::kStatsRequestNoBuffer);
    return false;
  }
  const vmm::ChainToken token = *held_stats_;
  held_stats_.reset();
  counters_.Inc(BalloonCounters::kStatsRequests);
  return stats_queue.PushUsed(token, 0);
}

std::optional<BalloonStats> BalloonDevice::last_stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

// --- reporting_vq (§5.5.6.7) -------------------------------------------------------------

void BalloonDevice::HandleReportingQueue(Virtqueue& queue) {
  while (queue.Pop(&chain_) == Virtqueue::PopStatus::kOk) {
    counters_.Inc(BalloonCounters::kReportChains);
    // Linux hands each free range as a device-writable buffer (the device
    // "writes" by discarding it); a readable buffer is a confused driver.
    if (!chain_.readable().empty()) {
      counters_.Inc(BalloonCounters::kChainWrongDirection);
    } else {
      for (const vmm::ChainBuffer& b : chain_.writable()) DiscardReported(b.gpa, b.len);
    }
    (void)queue.PushUsed(chain_, 0);
  }
}

void BalloonDevice::DiscardReported(base::Gpa gpa, uint64_t len) {
  counters_.Inc(BalloonCounters::kReportRanges);
  // Guest input: the transport checked [gpa, gpa + len) is RAM; checked again
  // here page by page (RamIndex) so that no verb ever sees a gfn outside RAM.
  if (len == 0 || len > UINT64_MAX - gpa.value()) {
    counters_.Inc(BalloonCounters::kReportRangeNotRam);
    return;
  }
  const uint64_t end = gpa.value() + len;
  const uint64_t first = (gpa.value() + base::kPageSize - 1) >> base::kPageShift;  // whole pages only
  const uint64_t last = end >> base::kPageShift;                                 // exclusive
  if ((gpa.value() | end) & (base::kPageSize - 1)) counters_.Inc(BalloonCounters::kReportRangeUnaligned);
  if (first >= last) return;
  for (uint64_t gfn = first; gfn < last; ++gfn) {
    if (!RamIndex(gfn)) {
      counters_.Inc(BalloonCounters::kReportRangeNotRam);
      return;
    }
  }
  // Runs of pages that hold a frame; pages without one have nothing to give.
  runs_.clear();
  for (uint64_t gfn = first; gfn < last; ++gfn) {
    const vmm::GfnEntry e = memory_.Lookup(base::Gfn(gfn));
    if (e.state() == GfnState::kSwapped || e.has_flag(vmm::kGfnPinned)) {
      counters_.Inc(BalloonCounters::kReportPagesRefused);
      continue;
    }
    if (!e.has_frame()) {
      counters_.Inc(BalloonCounters::kReportPagesNotResident);
      continue;
    }
    if (!runs_.empty() && runs_.back().first_gfn + runs_.back().count == gfn && RamIndex(gfn - 1)) {
      ++runs_.back().count;
    } else {
      runs_.push_back({gfn, 1});
    }
  }
  for (const Run& run : runs_) {
    if (memory_.Discard(base::Gfn(run.first_gfn), run.count, FrameTable::DiscardTo::kZero).ok()) {
      counters_.Add(BalloonCounters::kReportedPages, run.count);
      continue;
    }
    for (uint64_t i = 0; i < run.count; ++i) {
      if (memory_.Discard(base::Gfn(run.first_gfn + i), 1, FrameTable::DiscardTo::kZero).ok()) {
        counters_.Inc(BalloonCounters::kReportedPages);
      } else {
        counters_.Inc(BalloonCounters::kReportPagesRefused);
      }
    }
  }
  // The guest reuses reported pages as soon as the chain is returned.
  PopulateUntracked(runs_, BalloonCounters::kReportPagesRefused);
}

}  // namespace balloon

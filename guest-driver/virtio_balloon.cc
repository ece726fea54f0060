#include "guest-driver/virtio_balloon.h"

namespace guest_driver {
namespace {

// Queue sizes asked for; the transport lowers them to what the device allows.
// One request at a time is in flight per queue, so small rings suffice, except
// the reporting queue, whose chains use one descriptor per block.
constexpr uint32_t kRequestQueueSize = 8;
constexpr uint32_t kReportQueueSize = 32;
// Polls without inflating after an out-of-memory deflate, so the balloon does not
// take back at once the pages the guest just needed.
constexpr uint32_t kOomHoldoffPolls = 100;

constexpr uint32_t Min(uint32_t a, uint32_t b) { return a < b ? a : b; }

}  // namespace

VirtioStatus VirtioBalloon::Fail(VirtioStatus why) {
  failed_ = true;
  dev_->MarkFailed();
  return why;
}

VirtioStatus VirtioBalloon::Init(const BalloonOptions& options) {
  if (initialized_ || dev_->device_id() != device_id::kBalloon) return VirtioStatus::kBadState;
  options_ = options;
  if (options_.batch_pages == 0) options_.batch_pages = 1;
  if (options_.batch_pages > kMaxBatchPages) options_.batch_pages = kMaxBatchPages;
  if (options_.report_order > kMaxReportOrder) options_.report_order = kMaxReportOrder;
  if (options_.report_interval_polls == 0) options_.report_interval_polls = 1;
  if (options_.poll_pages < options_.batch_pages) options_.poll_pages = options_.batch_pages;
  // Free page hinting and page poisoning are not implemented: never ask for them.
  const uint64_t wanted = options_.features & (balloon::kFeatureMustTellHost |
                                               balloon::kFeatureStatsVq |
                                               balloon::kFeatureDeflateOnOom |
                                               balloon::kFeaturePageReporting);
  VirtioStatus s = dev_->Begin();
  if (s != VirtioStatus::kOk) return s;
  s = dev_->NegotiateFeatures(wanted | feature::kEventIdx);
  if (s != VirtioStatus::kOk) return s;
  must_tell_ = dev_->HasFeature(balloon::kFeatureMustTellHost);

  VirtioEnv& env = dev_->env();
  inflate_pfns_ = static_cast<uint32_t*>(env.AllocZeroedPages(1, &inflate_pfns_gpa_));
  deflate_pfns_ = static_cast<uint32_t*>(env.AllocZeroedPages(1, &deflate_pfns_gpa_));
  stats_ = static_cast<balloon::Stat*>(env.AllocZeroedPages(1, &stats_gpa_));
  if (inflate_pfns_ == nullptr || deflate_pfns_ == nullptr || stats_ == nullptr) {
    return Fail(VirtioStatus::kNoMemory);
  }
  s = SetUpQueues();
  if (s != VirtioStatus::kOk) return Fail(s);
  s = dev_->DriverOk();
  if (s != VirtioStatus::kOk) return Fail(s);
  initialized_ = true;
  // §5.5.6.3: the driver supplies the first statistics buffer at once; the
  // device returns it when it wants fresh figures.
  if (dev_->HasFeature(balloon::kFeatureStatsVq)) {
    s = SendStats();
    if (s != VirtioStatus::kOk) return Fail(s);
  }
  polls_until_report_ = options_.report_interval_polls;
  s = ReadTarget();
  if (s != VirtioStatus::kOk) return Fail(s);
  return VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::SetUpQueues() {
  // §5.5.2: inflateq, deflateq, then the optional queues in order, numbered
  // compactly (see the header).
  uint16_t next = 0;
  VirtioStatus s = dev_->SetupQueue(next++, kRequestQueueSize, inflate_vq_);
  if (s == VirtioStatus::kOk) s = dev_->SetupQueue(next++, kRequestQueueSize, deflate_vq_);
  if (s == VirtioStatus::kOk && dev_->HasFeature(balloon::kFeatureStatsVq)) {
    s = dev_->SetupQueue(next++, kRequestQueueSize, stats_vq_);
  }
  if (s == VirtioStatus::kOk && dev_->HasFeature(balloon::kFeaturePageReporting)) {
    report_queue_index_ = next;
    s = dev_->SetupQueue(next++, kReportQueueSize, report_vq_);
  }
  return s;
}

bool VirtioBalloon::PushPfn(uint32_t pfn) {
  if (top_chunk_ == nullptr || top_chunk_->count == sizeof(Chunk::pfns) / sizeof(uint32_t)) {
    const uint64_t gpa = mem_->AllocPage();
    if (gpa == 0) return false;
    auto* chunk = static_cast<Chunk*>(dev_->env().PhysToVirt(gpa));
    chunk->next_gpa = top_chunk_gpa_;
    chunk->count = 0;
    top_chunk_gpa_ = gpa;
    top_chunk_ = chunk;
  }
  top_chunk_->pfns[top_chunk_->count++] = pfn;
  ++held_;
  return true;
}

bool VirtioBalloon::PopPfn(uint32_t* pfn) {
  if (top_chunk_ == nullptr) return false;
  *pfn = top_chunk_->pfns[--top_chunk_->count];
  --held_;
  if (top_chunk_->count == 0) {
    const uint64_t empty = top_chunk_gpa_;
    top_chunk_gpa_ = top_chunk_->next_gpa;
    top_chunk_ = top_chunk_gpa_ == 0 ? nullptr
                                     : static_cast<Chunk*>(dev_->env().PhysToVirt(top_chunk_gpa_));
    mem_->FreePage(empty);
  }
  return true;
}

VirtioStatus VirtioBalloon::ReadTarget() {
  uint32_t num_pages = 0;
  const VirtioStatus s = dev_->ReadConfigField(balloon::kConfigNumPages, &num_pages);
  if (s != VirtioStatus::kOk) return s;
  target_ = num_pages;
  return VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::WriteActual() {
  // §5.5.6.1: the driver reports the pages it has given the device in `actual`.
  return dev_->WriteConfig(balloon::kConfigActual, &actual_, sizeof(actual_));
}

VirtioStatus VirtioBalloon::AddOne(Virtqueue& vq, uint64_t gpa, uint32_t len,
                                   bool device_writable) {
  const VirtqBuffer buffer{gpa, len, device_writable};
  uint16_t head;
  const VirtioStatus s = vq.Add(&buffer, 1, &head);
  if (s != VirtioStatus::kOk) return s;
  dev_->Kick(vq);
  return VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::SendStats() {
  BalloonGuestStats g;
  mem_->ReadStats(&g);
  const balloon::Stat stats[balloon::kNumStats] = {
      {balloon::kStatSwapIn, g.swap_in_bytes},     {balloon::kStatSwapOut, g.swap_out_bytes},
      {balloon::kStatMajorFaults, g.major_faults}, {balloon::kStatMinorFaults, g.minor_faults},
      {balloon::kStatMemFree, g.free_bytes},       {balloon::kStatMemTotal, g.total_bytes},
      {balloon::kStatAvailable, g.available_bytes}, {balloon::kStatCaches, g.caches_bytes},
  };
  for (uint32_t i = 0; i < balloon::kNumStats; ++i) stats_[i] = stats[i];
  const VirtioStatus s = AddOne(stats_vq_, stats_gpa_, sizeof(stats), false);
  if (s == VirtioStatus::kOk) {
    stats_in_flight_ = true;
    ++counters_.stats_reports;
  }
  return s;
}

VirtioStatus VirtioBalloon::StartInflate() {
  const uint32_t want = Min(target_ - actual_, options_.batch_pages);
  uint32_t n = 0;
  while (n < want) {
    const uint64_t gpa = mem_->AllocPage();
    if (gpa == 0) break;
    const uint32_t pfn = static_cast<uint32_t>(gpa >> balloon::kPfnShift);
    if (!PushPfn(pfn)) {
      mem_->FreePage(gpa);
      break;
    }
    inflate_pfns_[n++] = pfn;
  }
  if (n < want) ++counters_.alloc_failures;
  if (n == 0) return VirtioStatus::kOk;
  const VirtioStatus s = AddOne(inflate_vq_, inflate_pfns_gpa_, n * 4, false);
  if (s != VirtioStatus::kOk) return s;
  inflate_in_flight_ = n;
  ++counters_.inflate_requests;
  return VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::StartDeflate(uint32_t max_pages, bool oom, uint32_t* freed_now) {
  *freed_now = 0;
  const uint32_t want = Min(max_pages, options_.batch_pages);
  uint32_t n = 0;
  uint32_t pfn;
  while (n < want && PopPfn(&pfn)) deflate_pfns_[n++] = pfn;
  if (n == 0) return VirtioStatus::kOk;
  const VirtioStatus s = AddOne(deflate_vq_, deflate_pfns_gpa_, n * 4, false);
  if (s != VirtioStatus::kOk) return s;
  deflate_in_flight_ = n;
  deflate_in_flight_oom_ = oom;
  ++counters_.deflate_requests;
  if (!must_tell_) {
    // §5.5.6.1: without MUST_TELL_HOST the pages may be reused before the device
    // acknowledges the deflate request.
    for (uint32_t i = 0; i < n; ++i) {
      mem_->FreeDeflatedPage(uint64_t{deflate_pfns_[i]} << balloon::kPfnShift);
    }
    pages_returned_ += n;
    *freed_now = n;
  }
  return VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::StartReport() {
  const uint32_t max = Min(kMaxReportBlocks, report_vq_.size());
  const uint32_t n = mem_->TakeFreeBlocks(options_.report_order, report_gpas_, max);
  if (n == 0) return VirtioStatus::kOk;
  VirtqBuffer chain[kMaxReportBlocks];
  const uint32_t block_bytes = static_cast<uint32_t>(kPageSize << options_.report_order);
  for (uint32_t i = 0; i < n; ++i) chain[i] = {report_gpas_[i], block_bytes, true};
  uint16_t head;
  const VirtioStatus s = report_vq_.Add(chain, n, &head);
  if (s != VirtioStatus::kOk) {
    mem_->ReturnReportedBlocks(options_.report_order, report_gpas_, n);
    return s;
  }
  dev_->Kick(report_vq_);
  report_in_flight_ = n;
  ++counters_.report_requests;
  return VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::Harvest() {
  VirtqCompletion c;
  VirtioStatus s;
  bool actual_changed = false;
  // Each queue has at most one request in flight. A queue is looked at whenever
  // its used index moved (one ring read), so a device that completes what was
  // never sent, or completes twice, is caught by PollUsed's checks.
  if (inflate_vq_.HasUsed()) {
    s = inflate_vq_.PollUsed(&c);
    if (s != VirtioStatus::kOk) return s;
    actual_ += inflate_in_flight_;
    counters_.inflated_pages += inflate_in_flight_;
    inflate_in_flight_ = 0;
    actual_changed = true;
  }
  if (deflate_vq_.HasUsed()) {
    s = deflate_vq_.PollUsed(&c);
    if (s != VirtioStatus::kOk) return s;
    if (must_tell_) {
      for (uint32_t i = 0; i < deflate_in_flight_; ++i) {
        mem_->FreeDeflatedPage(uint64_t{deflate_pfns_[i]} << balloon::kPfnShift);
      }
      pages_returned_ += deflate_in_flight_;
    }
    actual_ -= deflate_in_flight_;
    counters_.deflated_pages += deflate_in_flight_;
    if (deflate_in_flight_oom_) counters_.oom_deflated_pages += deflate_in_flight_;
    deflate_in_flight_ = 0;
    actual_changed = true;
  }
  if (stats_vq_.is_set_up() && stats_vq_.HasUsed()) {
    s = stats_vq_.PollUsed(&c);
    if (s != VirtioStatus::kOk) return s;
    // The device used the buffer: it asks for new statistics (§5.5.6.3).
    stats_in_flight_ = false;
    s = SendStats();
    if (s != VirtioStatus::kOk) return s;
  }
  if (report_vq_.is_set_up() && report_vq_.HasUsed()) {
    s = report_vq_.PollUsed(&c);
    if (s != VirtioStatus::kOk) return s;
    mem_->ReturnReportedBlocks(options_.report_order, report_gpas_, report_in_flight_);
    counters_.reported_pages += uint64_t{report_in_flight_} << options_.report_order;
    report_in_flight_ = 0;
  }
  return actual_changed ? WriteActual() : VirtioStatus::kOk;
}

VirtioStatus VirtioBalloon::Poll() {
  if (!initialized_) return VirtioStatus::kBadState;
  if (failed_) return VirtioStatus::kDeviceError;
  ++counters_.polls;
  const uint32_t pending = dev_->ReadAndAckInterrupt();
  VirtioStatus s;
  if (pending & mmio::kInterruptConfigChange) {
    ++counters_.config_changes;
    // §2.1.2: a configuration change interrupt also signals DEVICE_NEEDS_RESET.
    if (dev_->NeedsReset()) return Fail(VirtioStatus::kDeviceNeedsReset);
    s = ReadTarget();
    if (s != VirtioStatus::kOk) return Fail(s);
  }
  s = Harvest();
  if (s != VirtioStatus::kOk) return Fail(s);
  // Inflate or deflate towards the target. A device that completes each
  // request during its notify (ours does, and QEMU under TCG) gets the next
  // one at once, up to `poll_pages` pages per poll: with one batch per 10 ms
  // tick, 1 GiB would take ten seconds of guest time. A device that completes
  // later gets one request per poll.
  uint32_t budget = options_.poll_pages;
  while (inflate_in_flight_ == 0 && deflate_in_flight_ == 0) {
    uint32_t freed;
    uint32_t started = 0;
    if (target_ > actual_) {
      if (oom_holdoff_polls_ > 0) {
        --oom_holdoff_polls_;
        break;
      }
      s = StartInflate();
      started = inflate_in_flight_;
    } else if (actual_ > target_) {
      s = StartDeflate(actual_ - target_, false, &freed);
      started = deflate_in_flight_;
    }
    if (s != VirtioStatus::kOk) return Fail(s);
    if (started == 0 || started >= budget) break;  // done, allocator refused, or budget spent
    budget -= started;
    s = Harvest();
    if (s != VirtioStatus::kOk) return Fail(s);
  }
  if (report_in_flight_ == 0 && dev_->HasFeature(balloon::kFeaturePageReporting) &&
      --polls_until_report_ == 0) {
    polls_until_report_ = options_.report_interval_polls;
    s = StartReport();
    if (s != VirtioStatus::kOk) return Fail(s);
  }
  // A device that completes requests during the notify (QEMU under TCG does)
  // lets the balloon move on, and `actual` be updated, without waiting a poll.
  s = Harvest();
  if (s != VirtioStatus::kOk) return Fail(s);
  return VirtioStatus::kOk;
}

uint32_t VirtioBalloon::DeflateForOom(uint32_t max_pages) {
  if (!initialized_ || failed_ || !dev_->HasFeature(balloon::kFeatureDeflateOnOom)) return 0;
  if (Harvest() != VirtioStatus::kOk) {
    (void)Fail(VirtioStatus::kDeviceError);
    return 0;
  }
  // Pages of an inflate request still in flight are in the list, and the deflate
  // buffer is busy while a deflate request is: give up this time.
  if (inflate_in_flight_ != 0 || deflate_in_flight_ != 0) return 0;
  oom_holdoff_polls_ = kOomHoldoffPolls;
  const uint64_t returned_before = pages_returned_;
  uint32_t freed = 0;
  if (StartDeflate(Min(max_pages, options_.oom_pages), true, &freed) != VirtioStatus::kOk ||
      Harvest() != VirtioStatus::kOk) {
    (void)Fail(VirtioStatus::kDeviceError);
  }
  // With MUST_TELL_HOST the pages come back in Harvest, if the device already
  // acknowledged (a device that completes during the notify).
  return static_cast<uint32_t>(pages_returned_ - returned_before);
}

}  // namespace guest_driver

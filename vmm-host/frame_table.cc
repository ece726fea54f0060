#include "vmm-host/frame_table.h"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/log.h"
#include "base/status.h"

namespace vmm {
namespace {

using base::Gfn;
using base::Gpa;
using base::Hfn;
using base::kPageShift;
using base::kPageSize;

// Guest-physical addresses are at most 52 bits wide (SDM §4.1.4, MAXPHYADDR).
constexpr uint64_t kMaxGpaBits = 52;

// What HostPtrForRead serves for pages that read as zero (Zero, Unbacked,
// Ballooned) without populating them.
alignas(4096) const uint8_t kZeroPage[kPageSize] = {};

std::string GfnText(Gfn gfn) {
  std::ostringstream os;
  os << gfn;
  return os.str();
}

}  // namespace

const char* GfnStateName(GfnState state) {
  switch (state) {
    case GfnState::kUnbacked: return "Unbacked";
    case GfnState::kPresent: return "Present";
    case GfnState::kZero: return "Zero";
    case GfnState::kShared: return "Shared";
    case GfnState::kBallooned: return "Ballooned";
    case GfnState::kSwapped: return "Swapped";
    case GfnState::kNotRam: return "NotRam";
  }
  return "?";
}

const char* InvalidationReasonName(InvalidationReason reason) {
  switch (reason) {
    case InvalidationReason::kPopulate: return "populate";
    case InvalidationReason::kDiscard: return "discard";
    case InvalidationReason::kShare: return "share";
    case InvalidationReason::kBreakShare: return "break_share";
    case InvalidationReason::kEvict: return "evict";
    case InvalidationReason::kRestore: return "restore";
    case InvalidationReason::kHarvest: return "harvest";
  }
  return "?";
}

// --- Creation ------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<FrameTable>> FrameTable::Create(FramePool* pool, Options options) {
  CHECK(pool != nullptr);
  const std::string vm = absl::StrCat("vm '", options.vm_name, "'");
  std::vector<RamRange> ranges = std::move(options.ram_ranges);
  if (ranges.empty()) return absl::InvalidArgumentError(absl::StrCat(vm, " has no RAM ranges"));
  std::sort(ranges.begin(), ranges.end(),
            [](const RamRange& a, const RamRange& b) { return a.gpa < b.gpa; });
  std::vector<Range> layout;
  uint64_t total = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const RamRange& r = ranges[i];
    if (r.size == 0 || r.gpa % kPageSize != 0 || r.size % kPageSize != 0) {
      return absl::InvalidArgumentError(absl::StrCat("RAM range at gpa 0x", absl::Hex(r.gpa), " of ", r.size,
                                                     " bytes for ", vm, " is empty or not 4 KiB aligned"));
    }
    const uint64_t limit = uint64_t{1} << kMaxGpaBits;
    if (r.gpa >= limit || r.size > limit - r.gpa) {
      return absl::InvalidArgumentError(
          absl::StrCat("RAM range of ", FormatBytes(r.size), " for ", vm, " ends beyond 2^52"));
    }
    if (i > 0 && ranges[i - 1].gpa + ranges[i - 1].size > r.gpa) {
      return absl::InvalidArgumentError(absl::StrCat("RAM ranges of ", vm, " overlap"));
    }
    layout.push_back({r.gpa >> kPageShift, r.size >> kPageShift, total});
    total += r.size >> kPageShift;
  }

  const std::string what = absl::StrCat("guest RAM of ", FormatBytes(total << kPageShift), " for ", vm);
  TRY(pool->Charge(total, what));
  absl::StatusOr<Extent> home = pool->AllocateExtent(total);
  if (!home.ok()) {
    pool->Uncharge(total);
    return absl::Status(home.status().code(), absl::StrCat(what, ": ", home.status().message()));
  }
  std::unique_ptr<FrameTable> table(new FrameTable(pool, std::move(options.vm_name), std::move(ranges),
                                                   std::move(layout), total, *home));
  if (options.populate) {
    for (uint64_t i = 0; i < total; ++i) {
      table->entries_[i].store(GfnEntry::Make(GfnState::kPresent, home->first.value() + i).raw(),
                               std::memory_order_relaxed);
    }
  }
  return table;
}

FrameTable::FrameTable(FramePool* pool, std::string vm_name, std::vector<RamRange> ranges,
                       std::vector<Range> layout, uint64_t num_frames, Extent home)
    : pool_(pool),
      vm_name_(std::move(vm_name)),
      ranges_(std::move(ranges)),
      layout_(std::move(layout)),
      num_frames_(num_frames),
      home_(home),
      entries_(new std::atomic<uint64_t>[num_frames]) {
  for (uint64_t i = 0; i < num_frames_; ++i) entries_[i].store(0, std::memory_order_relaxed);
}

FrameTable::~FrameTable() {
  for (uint64_t i = 0; i < num_frames_; ++i) {
    const GfnEntry e(entries_[i].load(std::memory_order_relaxed));
    if (e.has_frame() && !IsHome(i, e.hfn())) pool_->Unref(e.hfn());
  }
  pool_->FreeExtent(home_);
  pool_->Uncharge(num_frames_);
}

// --- Listeners -----------------------------------------------------------------

void FrameTable::RegisterInvalidationListener(InvalidationListener* listener) {
  CHECK(listener != nullptr);
  absl::MutexLock lock(&mu_);
  CHECK(std::find(listeners_.begin(), listeners_.end(), listener) == listeners_.end());
  listeners_.push_back(listener);
}

void FrameTable::UnregisterInvalidationListener(InvalidationListener* listener) {
  absl::MutexLock lock(&mu_);
  auto it = std::find(listeners_.begin(), listeners_.end(), listener);
  CHECK(it != listeners_.end()) << "listener was not registered";
  listeners_.erase(it);
}

void FrameTable::InvalidateLocked(Gfn first, uint64_t count, InvalidationReason reason) {
  counters_.Inc(FrameTableCounters::kInvalidations);
  counters_.Add(FrameTableCounters::kInvalidatedGfns, count);
  for (InvalidationListener* l : listeners_) l->InvalidateGfns(first, count, reason);
}

// --- Lock-free reads -----------------------------------------------------------

GfnEntry FrameTable::Lookup(Gfn gfn) const noexcept {
  const uint64_t index = IndexOf(gfn.value());
  if (index == kNoIndex) return GfnEntry::Make(GfnState::kNotRam, 0);
  return GfnEntry(entries_[index].load(std::memory_order_acquire));
}

uint8_t* FrameTable::Translate(Gfn gfn) const noexcept {
  const uint64_t index = IndexOf(gfn.value());
  if (index == kNoIndex) return nullptr;
  const GfnEntry e(entries_[index].load(std::memory_order_acquire));
  return e.state() == GfnState::kPresent ? pool_->HostPtr(e.hfn()) : nullptr;
}

const uint8_t* FrameTable::TranslateForRead(Gfn gfn) const noexcept {
  const uint64_t index = IndexOf(gfn.value());
  if (index == kNoIndex) return nullptr;
  const GfnEntry e(entries_[index].load(std::memory_order_acquire));
  return e.has_frame() ? pool_->HostPtr(e.hfn()) : nullptr;
}

void FrameTable::NoteAccess(uint64_t gfn, bool write) noexcept {
  const uint64_t index = IndexOf(gfn);
  if (index == kNoIndex) return;
  const uint64_t bits = GfnEntry::kAccessedBit | (write ? GfnEntry::kDirtyBit : 0);
  // Skip the locked RMW (and the cache-line transfer) when already noted.
  if ((entries_[index].load(std::memory_order_relaxed) & bits) == bits) return;
  entries_[index].fetch_or(bits, std::memory_order_relaxed);
}

uint8_t* FrameTable::HostPtr(Gpa gpa, uint64_t len) noexcept {
  // Guest input: gpa and len may come from the guest. RangeWithin is
  // overflow-safe, and every page of the range is checked to be Present on
  // consecutive host frames before a pointer is formed.
  for (const Range& r : layout_) {
    const uint64_t range_base = r.first_gfn << kPageShift;
    if (!RangeWithin(gpa.value(), len, range_base, r.num_frames << kPageShift)) continue;
    const uint64_t first_index = r.index + ((gpa.value() - range_base) >> kPageShift);
    if (len == 0) return pool_->HostPtr(home_.first + first_index) + base::PageOffset(gpa);
    const uint64_t num_pages = ((gpa.value() + len - 1) >> kPageShift) - (gpa.value() >> kPageShift) + 1;
    const GfnEntry e0(entries_[first_index].load(std::memory_order_acquire));
    if (e0.state() != GfnState::kPresent) return nullptr;
    for (uint64_t i = 1; i < num_pages; ++i) {
      const GfnEntry e(entries_[first_index + i].load(std::memory_order_acquire));
      if (e.state() != GfnState::kPresent || e.hfn() != e0.hfn() + i) return nullptr;
    }
    return pool_->HostPtr(e0.hfn()) + base::PageOffset(gpa);
  }
  return nullptr;
}

bool FrameTable::IsRam(Gpa gpa, uint64_t len) noexcept {
  // Guest input: overflow-safe. A range may cross from one RAM range into an
  // adjacent one (each page is RAM), as GuestMemory's page-wise check allows.
  if (len > UINT64_MAX - gpa.value()) return false;
  if (len == 0) return IndexOf(gpa.value() >> kPageShift) != kNoIndex;
  const uint64_t first = gpa.value() >> kPageShift;
  const uint64_t last = (gpa.value() + len - 1) >> kPageShift;
  uint64_t gfn = first;
  while (true) {
    // Skip to the end of the RAM range holding gfn (few ranges: no per-page loop).
    bool found = false;
    for (const Range& r : layout_) {
      if (gfn - r.first_gfn < r.num_frames) {
        const uint64_t range_last = r.first_gfn + r.num_frames - 1;
        if (range_last >= last) return true;
        gfn = range_last + 1;
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
}

bool FrameTable::Prepare(Gpa gpa, uint64_t len, bool for_write) noexcept {
  if (!IsRam(gpa, len)) return false;
  if (len == 0) return true;
  const uint64_t first = gpa.value() >> kPageShift;
  const uint64_t last = (gpa.value() + len - 1) >> kPageShift;
  for (uint64_t gfn = first; gfn <= last; ++gfn) {
    if (!for_write) {
      // Reads are served by HostPtrForRead from the frame or the zero page;
      // only a Swapped page needs its contents back.
      const GfnState state = Lookup(Gfn(gfn)).state();
      if (state != GfnState::kSwapped) continue;
    } else if (HostPage(gfn, true) != nullptr) {
      continue;
    }
    if (MakeAvailable(gfn, for_write) != mmu::BackingStatus::kReady) return false;
  }
  return true;
}

const uint8_t* FrameTable::HostPtrForRead(Gpa gpa, uint64_t len) noexcept {
  if (const uint8_t* p = HostPtr(gpa, len)) return p;
  // Guest input: only a range inside one page is served below; the page is
  // bound-checked by IndexOf and the offset stays inside it.
  if (len > UINT64_MAX - gpa.value()) return nullptr;
  if (len > 0 && ((gpa.value() + len - 1) >> kPageShift) != (gpa.value() >> kPageShift)) return nullptr;
  const uint64_t index = IndexOf(gpa.value() >> kPageShift);
  if (index == kNoIndex) return nullptr;
  const GfnEntry e(entries_[index].load(std::memory_order_acquire));
  switch (e.state()) {
    case GfnState::kPresent:
    case GfnState::kShared:
      return pool_->HostPtr(e.hfn()) + base::PageOffset(gpa);
    case GfnState::kZero:
    case GfnState::kUnbacked:
    case GfnState::kBallooned:
      return kZeroPage + base::PageOffset(gpa);
    default:
      return nullptr;
  }
}

// --- mmu::GuestPhysMemory ------------------------------------------------------

uint8_t* FrameTable::HostPage(uint64_t gfn, bool for_write) noexcept {
  // Guest input: the gfn comes from guest tables; IndexOf bound-checks it.
  const uint64_t index = IndexOf(gfn);
  if (index == kNoIndex) return nullptr;
  const GfnEntry e(entries_[index].load(std::memory_order_acquire));
  switch (e.state()) {
    case GfnState::kPresent: return pool_->HostPtr(e.hfn());
    case GfnState::kShared: return for_write ? nullptr : pool_->HostPtr(e.hfn());
    default: return nullptr;
  }
}

mmu::BackingStatus FrameTable::MakeAvailable(uint64_t gfn, bool for_write) noexcept {
  // Guest input: the gfn comes from guest tables; IndexOf bound-checks it.
  const uint64_t index = IndexOf(gfn);
  if (index == kNoIndex) return mmu::BackingStatus::kNotRam;
  absl::MutexLock lock(&mu_);
  // Decided under the verb mutex: no verb can change the state in between.
  const GfnEntry e(entries_[index].load(std::memory_order_relaxed));
  absl::Status status;
  switch (e.state()) {
    case GfnState::kPresent:
      return mmu::BackingStatus::kReady;
    case GfnState::kShared:
      if (!for_write) return mmu::BackingStatus::kReady;
      status = BreakShareLocked(Gfn(gfn), index).status();
      if (status.ok()) counters_.Inc(FrameTableCounters::kMakeAvailableCowBreaks);
      break;
    case GfnState::kUnbacked:
    case GfnState::kZero:
    case GfnState::kBallooned:
      status = PopulateLocked(Gfn(gfn), 1, index);
      if (status.ok()) {
        // Ballooned pages touched again are zero-filled, as QEMU/Linux behave
        // (the frame was punched when the page was ballooned).
        counters_.Inc(e.state() == GfnState::kBallooned ? FrameTableCounters::kBalloonedTouched
                                                       : FrameTableCounters::kMakeAvailablePopulated);
      }
      break;
    case GfnState::kSwapped:
      // Restoring needs the swap store (the swap issue wires it in and
      // Restores here). Until then a swapped page cannot be made available.
      counters_.Inc(FrameTableCounters::kSwapInUnavailable);
      status = absl::UnavailableError(absl::StrCat("gfn ", GfnText(Gfn(gfn)),
                                                   " is swapped out and no swap store is attached"));
      break;
    case GfnState::kNotRam:
      return mmu::BackingStatus::kNotRam;
  }
  if (status.ok()) return mmu::BackingStatus::kReady;
  counters_.Inc(FrameTableCounters::kMakeAvailableFailed);
  LOG(ERROR) << "vm '" << vm_name_ << "': MakeAvailable(" << (for_write ? "write" : "read") << "): " << status;
  return mmu::BackingStatus::kFailed;
}

// --- Helpers -------------------------------------------------------------------

absl::StatusOr<uint64_t> FrameTable::CheckRange(Gfn first, uint64_t count, const char* verb) const {
  // Guest input: balloon and device requests pass guest-supplied frame
  // numbers; anything outside one RAM range is an error, never a CHECK.
  if (count > 0) {
    for (const Range& r : layout_) {
      const uint64_t off = first.value() - r.first_gfn;
      if (first.value() >= r.first_gfn && off < r.num_frames && count <= r.num_frames - off) {
        return r.index + off;
      }
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(verb, " of ", count, " frames at ", GfnText(first),
                                                 " is not inside one RAM range of vm '", vm_name_, "'"));
}

void FrameTable::SetStateLocked(uint64_t index, GfnState state, uint64_t payload) {
  const uint64_t old = entries_[index].load(std::memory_order_relaxed);
  // Flags change only under mu_; the A/D bits are reset on purpose, so a
  // racing NoteAccess that is overwritten loses nothing that should survive.
  const uint64_t next = (old & GfnEntry::kFlagsMask) | GfnEntry::Make(state, payload).raw();
  entries_[index].store(next, std::memory_order_release);
}

void FrameTable::ReleaseFrameLocked(uint64_t index, GfnEntry old, std::vector<Extent>* punch) {
  if (!old.has_frame()) return;
  if (old.state() == GfnState::kPresent && IsHome(index, old.hfn())) {
    if (!punch->empty() && punch->back().end() == old.hfn()) {
      ++punch->back().num_frames;
    } else {
      punch->push_back(Extent{old.hfn(), 1});
    }
    return;
  }
  pool_->Unref(old.hfn());
}

void FrameTable::PunchRuns(const std::vector<Extent>& punch) {
  for (const Extent& run : punch) {
    // A failed punch leaves memory resident but the state correct (the gfn
    // is no longer Present and reads are not served from it): log and go on.
    absl::Status s = pool_->Discard(run.first, run.num_frames);
    if (!s.ok()) LOG(ERROR) << "vm '" << vm_name_ << "': " << s;
  }
}

// --- Verbs ---------------------------------------------------------------------

absl::Status FrameTable::Populate(Gfn first, uint64_t count) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(first, count, "Populate"));
  absl::MutexLock lock(&mu_);
  return PopulateLocked(first, count, index);
}

absl::Status FrameTable::PopulateLocked(Gfn first, uint64_t count, uint64_t index) {
  uint64_t changes = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const GfnEntry e(entries_[index + i].load(std::memory_order_relaxed));
    switch (e.state()) {
      case GfnState::kPresent: break;
      case GfnState::kUnbacked:
      case GfnState::kZero:
      case GfnState::kBallooned: ++changes; break;
      default:
        return absl::FailedPreconditionError(absl::StrCat("Populate of ", GfnText(first + i), " which is ",
                                                          GfnStateName(e.state())));
    }
  }
  if (changes == 0) return absl::OkStatus();
  BackingChange change(this);
  InvalidateLocked(first, count, InvalidationReason::kPopulate);
  for (uint64_t i = 0; i < count; ++i) {
    const GfnEntry e(entries_[index + i].load(std::memory_order_relaxed));
    if (e.state() == GfnState::kPresent) continue;
    SetStateLocked(index + i, GfnState::kPresent, home_.first.value() + index + i);
  }
  counters_.Add(FrameTableCounters::kPopulated, changes);
  return absl::OkStatus();
}

absl::Status FrameTable::Discard(Gfn first, uint64_t count, DiscardTo to) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(first, count, "Discard"));
  const GfnState target = to == DiscardTo::kZero       ? GfnState::kZero
                          : to == DiscardTo::kUnbacked ? GfnState::kUnbacked
                                                       : GfnState::kBallooned;
  absl::MutexLock lock(&mu_);
  uint64_t changes = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const GfnEntry e(entries_[index + i].load(std::memory_order_relaxed));
    if (e.state() == GfnState::kSwapped || e.has_flag(kGfnPinned)) {
      return absl::FailedPreconditionError(
          absl::StrCat("Discard of ", GfnText(first + i), " which is ",
                       e.has_flag(kGfnPinned) ? "pinned" : GfnStateName(e.state())));
    }
    if (e.state() != target) ++changes;
  }
  if (changes == 0) return absl::OkStatus();
  BackingChange change(this);
  InvalidateLocked(first, count, InvalidationReason::kDiscard);
  std::vector<Extent> punch;
  for (uint64_t i = 0; i < count; ++i) {
    const GfnEntry e(entries_[index + i].load(std::memory_order_relaxed));
    if (e.state() == target) continue;
    SetStateLocked(index + i, target, 0);
    ReleaseFrameLocked(index + i, e, &punch);
  }
  PunchRuns(punch);
  counters_.Add(target == GfnState::kZero       ? FrameTableCounters::kZeroed
                : target == GfnState::kUnbacked ? FrameTableCounters::kUnbacked
                                                : FrameTableCounters::kBallooned,
                changes);
  return absl::OkStatus();
}

absl::Status FrameTable::ShareReadOnly(Gfn gfn, Hfn shared_hfn) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(gfn, 1, "ShareReadOnly"));
  if (pool_->RefCount(shared_hfn) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShareReadOnly of ", GfnText(gfn), ": the shared frame is not a single pool frame"));
  }
  absl::MutexLock lock(&mu_);
  const GfnEntry e(entries_[index].load(std::memory_order_relaxed));
  if (e.state() != GfnState::kPresent || e.has_flag(kGfnPinned)) {
    return absl::FailedPreconditionError(
        absl::StrCat("ShareReadOnly of ", GfnText(gfn), " which is ",
                     e.has_flag(kGfnPinned) ? "pinned" : GfnStateName(e.state())));
  }
  if (e.hfn() == shared_hfn) {
    return absl::InvalidArgumentError(absl::StrCat("ShareReadOnly of ", GfnText(gfn), " onto its own frame"));
  }
  // Listeners first: once they return no writable translation of the gfn
  // exists, so the comparison below sees the final contents.
  BackingChange change(this);
  InvalidateLocked(gfn, 1, InvalidationReason::kShare);
  if (std::memcmp(pool_->HostPtr(e.hfn()), pool_->HostPtr(shared_hfn), kPageSize) != 0) {
    counters_.Inc(FrameTableCounters::kShareMismatches);
    return absl::AbortedError(absl::StrCat("ShareReadOnly of ", GfnText(gfn), ": contents changed"));
  }
  pool_->Ref(shared_hfn);
  SetStateLocked(index, GfnState::kShared, shared_hfn.value());
  std::vector<Extent> punch;
  ReleaseFrameLocked(index, e, &punch);
  PunchRuns(punch);
  counters_.Inc(FrameTableCounters::kShared);
  return absl::OkStatus();
}

absl::StatusOr<Hfn> FrameTable::BreakShare(Gfn gfn) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(gfn, 1, "BreakShare"));
  absl::MutexLock lock(&mu_);
  return BreakShareLocked(gfn, index);
}

absl::StatusOr<Hfn> FrameTable::BreakShareLocked(Gfn gfn, uint64_t index) {
  const GfnEntry e(entries_[index].load(std::memory_order_relaxed));
  if (e.state() != GfnState::kShared) {
    return absl::FailedPreconditionError(
        absl::StrCat("BreakShare of ", GfnText(gfn), " which is ", GfnStateName(e.state())));
  }
  // The home frame is not mapped by anyone while the gfn is Shared (it was
  // punched when the gfn was shared), so it can be filled before the switch.
  const Hfn home = home_.first + index;
  std::memcpy(pool_->HostPtr(home), pool_->HostPtr(e.hfn()), kPageSize);
  BackingChange change(this);
  InvalidateLocked(gfn, 1, InvalidationReason::kBreakShare);
  SetStateLocked(index, GfnState::kPresent, home.value());
  std::vector<Extent> punch;
  ReleaseFrameLocked(index, e, &punch);
  counters_.Inc(FrameTableCounters::kCowBreaks);
  return home;
}

absl::Status FrameTable::Evict(Gfn gfn, uint64_t swap_slot,
                               const std::function<absl::Status(const uint8_t* page)>& save) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(gfn, 1, "Evict"));
  if (swap_slot > GfnEntry::kMaxPayload) {
    return absl::InvalidArgumentError(absl::StrCat("swap slot ", swap_slot, " does not fit a frame table entry"));
  }
  absl::MutexLock lock(&mu_);
  const GfnEntry e(entries_[index].load(std::memory_order_relaxed));
  if (!e.has_frame() || e.has_flag(kGfnPinned)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Evict of ", GfnText(gfn), " which is ",
                     e.has_flag(kGfnPinned) ? "pinned" : GfnStateName(e.state())));
  }
  BackingChange change(this);
  InvalidateLocked(gfn, 1, InvalidationReason::kEvict);
  TRY(save(pool_->HostPtr(e.hfn())));
  SetStateLocked(index, GfnState::kSwapped, swap_slot);
  std::vector<Extent> punch;
  ReleaseFrameLocked(index, e, &punch);
  PunchRuns(punch);
  counters_.Inc(FrameTableCounters::kEvicted);
  return absl::OkStatus();
}

absl::Status FrameTable::Restore(Gfn gfn, Hfn hfn) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(gfn, 1, "Restore"));
  if (!IsHome(index, hfn) && pool_->RefCount(hfn) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Restore of ", GfnText(gfn), ": the frame is neither its home frame nor a single pool frame"));
  }
  absl::MutexLock lock(&mu_);
  const GfnEntry e(entries_[index].load(std::memory_order_relaxed));
  if (e.has_frame()) {
    return absl::FailedPreconditionError(
        absl::StrCat("Restore of ", GfnText(gfn), " which is ", GfnStateName(e.state())));
  }
  BackingChange change(this);
  InvalidateLocked(gfn, 1, InvalidationReason::kRestore);
  SetStateLocked(index, GfnState::kPresent, hfn.value());
  counters_.Inc(FrameTableCounters::kRestored);
  return absl::OkStatus();
}

absl::Status FrameTable::SetFlags(Gfn first, uint64_t count, uint8_t flags, bool set) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(first, count, "SetFlags"));
  if ((flags & ~kGfnAllFlags) != 0) return absl::InvalidArgumentError("unknown gfn flags");
  const uint64_t bits = uint64_t{flags} << GfnEntry::kFlagsShift;
  absl::MutexLock lock(&mu_);
  for (uint64_t i = 0; i < count; ++i) {
    if (set) {
      entries_[index + i].fetch_or(bits, std::memory_order_release);
    } else {
      entries_[index + i].fetch_and(~bits, std::memory_order_release);
    }
  }
  return absl::OkStatus();
}

absl::Status FrameTable::Harvest(Gfn first, uint64_t count, std::vector<uint8_t>* out) {
  ASSIGN_OR_RETURN(const uint64_t index, CheckRange(first, count, "Harvest"));
  CHECK(out != nullptr);
  absl::MutexLock lock(&mu_);
  out->assign(count, 0);
  constexpr uint64_t kBits = GfnEntry::kAccessedBit | GfnEntry::kDirtyBit;
  for (uint64_t i = 0; i < count; ++i) {
    const GfnEntry old(entries_[index + i].fetch_and(~kBits, std::memory_order_acq_rel));
    (*out)[i] = static_cast<uint8_t>((old.accessed() ? kHarvestAccessed : 0) | (old.dirty() ? kHarvestDirty : 0));
  }
  // After clearing, not before: see the header. The seqlock moves as for a
  // backing change: a translation that raced with it is retried (and so
  // noted again), as with FakeGuestPhysMemory::Harvest.
  BackingChange change(this);
  InvalidateLocked(first, count, InvalidationReason::kHarvest);
  counters_.Inc(FrameTableCounters::kHarvests);
  return absl::OkStatus();
}

// --- Layout --------------------------------------------------------------------

std::vector<RamMapping> FrameTable::Mappings() const {
  std::vector<RamMapping> out;
  for (size_t i = 0; i < ranges_.size(); ++i) {
    const Hfn first = home_.first + layout_[i].index;
    out.push_back({Gpa(ranges_[i].gpa), ranges_[i].size, pool_->HostPtr(first), pool_->fd(),
                   pool_->OffsetOf(first)});
  }
  return out;
}

std::optional<Hfn> FrameTable::HomeHfn(Gfn gfn) const noexcept {
  const uint64_t index = IndexOf(gfn.value());
  if (index == kNoIndex) return std::nullopt;
  return home_.first + index;
}

uint64_t FrameTable::CountState(GfnState state) const {
  uint64_t n = 0;
  for (uint64_t i = 0; i < num_frames_; ++i) {
    if (GfnEntry(entries_[i].load(std::memory_order_relaxed)).state() == state) ++n;
  }
  return n;
}

}  // namespace vmm

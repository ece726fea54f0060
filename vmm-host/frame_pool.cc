#include "vmm-host/frame_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace vmm {
namespace {

using base::Hfn;
using base::kPageShift;
using base::kPageSize;

absl::Status ErrnoError(int error_number, std::string_view what) {
  return absl::ErrnoToStatus(error_number, absl::string_view(what.data(), what.size()));
}

}  // namespace

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  uint64_t whole = bytes;
  uint64_t rest = 0;  // remainder below `whole`, in the unit below
  while (whole >= 1024 && unit < 6) {
    rest = whole % 1024;
    whole /= 1024;
    ++unit;
  }
  if (rest == 0) return absl::StrCat(whole, " ", kUnits[unit]);
  // One decimal, truncated: 1.5 GiB, 100.9 MiB.
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%" PRIu64 ".%" PRIu64 " %s", whole, rest * 10 / 1024, kUnits[unit]);
  return buf;
}

absl::StatusOr<std::unique_ptr<FramePool>> FramePool::Create(const Options& options) {
  if (options.budget_bytes == 0) {
    return absl::InvalidArgumentError("frame pool budget must be greater than 0 bytes");
  }
  if (options.budget_bytes % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("frame pool budget of ", options.budget_bytes,
                                                   " bytes is not a multiple of 4 KiB"));
  }
  const uint64_t space_bytes =
      options.address_space_bytes == 0 ? options.budget_bytes : options.address_space_bytes;
  if (space_bytes % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("frame pool address space of ", space_bytes,
                                                   " bytes is not a multiple of 4 KiB"));
  }
  if (space_bytes < options.budget_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame pool address space (", FormatBytes(space_bytes),
                     ") is smaller than its budget (", FormatBytes(options.budget_bytes), ")"));
  }
  // off_t is signed; a larger memfd cannot be expressed (and could not be mapped).
  if (space_bytes > (uint64_t{1} << 62)) {
    return absl::InvalidArgumentError(absl::StrCat("frame pool address space of ",
                                                   FormatBytes(space_bytes), " is too large"));
  }

  const int fd = memfd_create(options.name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("memfd_create(\"", options.name, "\")"));
  if (ftruncate(fd, static_cast<off_t>(space_bytes)) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoError(err, absl::StrCat("ftruncate of the frame pool memfd to ", FormatBytes(space_bytes)));
  }
  // MAP_NORESERVE: the memfd is sparse and over-committed; the budget, not
  // the kernel's commit accounting, bounds what becomes resident.
  //
  // The mapping starts on a 2 MiB boundary, as extents of 2 MiB multiples do
  // inside it (AllocateExtent), so an aligned 2 MiB range of guest RAM is an
  // aligned 2 MiB range of host memory: what a large EPT entry (nested
  // paging) and a transparent huge page need. mmap alone gives no such
  // alignment (where it lands depends on the process's other mappings), so
  // reserve 2 MiB more than needed, place the memfd at the first aligned
  // address inside the reservation and give back the slack.
  const uint64_t reserve_bytes = space_bytes + kLargeAlignBytes;
  void* reserved = mmap(nullptr, reserve_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserved == MAP_FAILED) {
    const int err = errno;
    close(fd);
    return ErrnoError(err, absl::StrCat("mmap of the frame pool memfd (", FormatBytes(space_bytes),
                                        "): reserving a 2 MiB-aligned range"));
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(reserved);
  const uintptr_t aligned = (start + kLargeAlignBytes - 1) & ~uintptr_t{kLargeAlignBytes - 1};
  void* base = mmap(reinterpret_cast<void*>(aligned), space_bytes, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    munmap(reserved, reserve_bytes);
    close(fd);
    return ErrnoError(err, absl::StrCat("mmap of the frame pool memfd (", FormatBytes(space_bytes), ")"));
  }
  if (aligned > start) munmap(reserved, aligned - start);
  const uintptr_t tail = aligned + space_bytes;
  if (start + reserve_bytes > tail) munmap(reinterpret_cast<void*>(tail), start + reserve_bytes - tail);
  return std::unique_ptr<FramePool>(new FramePool(fd, static_cast<uint8_t*>(base),
                                                  options.budget_bytes >> kPageShift,
                                                  space_bytes >> kPageShift));
}

FramePool::FramePool(int fd, uint8_t* base, uint64_t capacity_frames, uint64_t address_space_frames)
    : fd_(fd),
      base_(base),
      capacity_frames_(capacity_frames),
      address_space_frames_(address_space_frames) {
  absl::MutexLock lock(&mu_);
  free_ranges_.emplace(0, address_space_frames_);
  frames_free_address_space_ = address_space_frames_;
}

FramePool::~FramePool() {
  munmap(base_, address_space_frames_ << kPageShift);
  close(fd_);
}

// --- Address space -------------------------------------------------------------

void FramePool::InsertFreeLocked(uint64_t first, uint64_t n) {
  DCHECK_GT(n, 0u);
  frames_free_address_space_ += n;
  auto next = free_ranges_.lower_bound(first);
  // Host invariant: a range being freed overlaps no free range.
  if (next != free_ranges_.end()) CHECK_LE(first + n, next->first) << "double free of hfn " << first;
  if (next != free_ranges_.begin()) {
    auto prev = std::prev(next);
    CHECK_LE(prev->first + prev->second, first) << "double free of hfn " << first;
    if (prev->first + prev->second == first) {
      prev->second += n;
      if (next != free_ranges_.end() && prev->first + prev->second == next->first) {
        prev->second += next->second;
        free_ranges_.erase(next);
      }
      return;
    }
  }
  if (next != free_ranges_.end() && first + n == next->first) {
    const uint64_t merged = n + next->second;
    free_ranges_.erase(next);
    free_ranges_.emplace(first, merged);
    return;
  }
  free_ranges_.emplace(first, n);
}

absl::StatusOr<Extent> FramePool::AllocateExtent(uint64_t num_frames) {
  if (num_frames == 0) return absl::InvalidArgumentError("an extent must have at least one frame");
  absl::MutexLock lock(&mu_);
  // An extent of at least 2 MiB starts on a 2 MiB boundary when a free run
  // allows it (the first such run), so its 2 MiB-aligned guest ranges are
  // aligned host ranges (see Create); otherwise, and for smaller extents, the
  // first run that fits.
  auto take = [&](std::map<uint64_t, uint64_t>::iterator it, uint64_t first) {
    const uint64_t run_first = it->first, run_frames = it->second;
    free_ranges_.erase(it);
    if (first > run_first) free_ranges_.emplace(run_first, first - run_first);
    const uint64_t end = first + num_frames, run_end = run_first + run_frames;
    if (run_end > end) free_ranges_.emplace(end, run_end - end);
    frames_free_address_space_ -= num_frames;
    extents_.emplace(first, num_frames);
    counters_.Inc(FramePoolCounters::kExtentsAllocated);
    return Extent{Hfn(first), num_frames};
  };
  if (num_frames >= kLargeAlignFrames) {
    for (auto it = free_ranges_.begin(); it != free_ranges_.end(); ++it) {
      const uint64_t first = (it->first + kLargeAlignFrames - 1) & ~(kLargeAlignFrames - 1);
      if (first + num_frames <= it->first + it->second) return take(it, first);
    }
  }
  uint64_t largest = 0;
  for (auto it = free_ranges_.begin(); it != free_ranges_.end(); ++it) {
    if (it->second >= num_frames) return take(it, it->first);
    largest = std::max(largest, it->second);
  }
  counters_.Inc(FramePoolCounters::kExtentAllocFailures);
  return absl::ResourceExhaustedError(absl::StrCat(
      "no contiguous run of ", FormatBytes(num_frames << kPageShift),
      " in the frame pool's address space: ", FormatBytes(frames_free_address_space_ << kPageShift),
      " free of ", FormatBytes(address_space_frames_ << kPageShift), " in ", free_ranges_.size(),
      " runs, the largest ", FormatBytes(largest << kPageShift)));
}

void FramePool::FreeExtent(const Extent& extent) {
  {
    absl::MutexLock lock(&mu_);
    auto it = extents_.find(extent.first.value());
    CHECK(it != extents_.end() && it->second == extent.num_frames)
        << "FreeExtent of " << extent.first << "+" << extent.num_frames << " which was not allocated";
    // Out of extents_ but not yet free: nobody can be handed these frames
    // until they are punched below.
    extents_.erase(it);
  }
  CHECK_OK(Punch(extent.first.value(), extent.num_frames));
  absl::MutexLock lock(&mu_);
  InsertFreeLocked(extent.first.value(), extent.num_frames);
  counters_.Inc(FramePoolCounters::kExtentsFreed);
}

std::optional<Hfn> FramePool::AllocateFrame() noexcept {
  absl::MutexLock lock(&mu_);
  if (free_ranges_.empty()) [[unlikely]] {
    counters_.Inc(FramePoolCounters::kFrameAllocFailures);
    return std::nullopt;
  }
  auto last = std::prev(free_ranges_.end());
  const uint64_t hfn = last->first + last->second - 1;
  if (--last->second == 0) free_ranges_.erase(last);
  --frames_free_address_space_;
  refcounts_.emplace(hfn, 1);
  counters_.Inc(FramePoolCounters::kFramesAllocated);
  return Hfn(hfn);
}

void FramePool::ReleaseSingle(uint64_t hfn) {
  // The frame is in neither refcounts_ nor free_ranges_ now, so it cannot be
  // handed out while it is punched; the punch is done without the lock.
  CHECK_OK(Punch(hfn, 1));
  absl::MutexLock lock(&mu_);
  InsertFreeLocked(hfn, 1);
  counters_.Inc(FramePoolCounters::kFramesFreed);
}

void FramePool::FreeFrame(Hfn hfn) {
  {
    absl::MutexLock lock(&mu_);
    auto it = refcounts_.find(hfn.value());
    CHECK(it != refcounts_.end()) << "FreeFrame of " << hfn << " which is not an allocated frame";
    CHECK_EQ(it->second, 1u) << "FreeFrame of " << hfn << " which has other references";
    refcounts_.erase(it);
  }
  ReleaseSingle(hfn.value());
}

void FramePool::Ref(Hfn hfn) {
  absl::MutexLock lock(&mu_);
  auto it = refcounts_.find(hfn.value());
  CHECK(it != refcounts_.end()) << "Ref of " << hfn << " which is not an allocated frame";
  CHECK_LT(it->second, UINT32_MAX);
  ++it->second;
}

bool FramePool::Unref(Hfn hfn) {
  {
    absl::MutexLock lock(&mu_);
    auto it = refcounts_.find(hfn.value());
    CHECK(it != refcounts_.end()) << "Unref of " << hfn << " which is not an allocated frame";
    if (--it->second > 0) return false;
    refcounts_.erase(it);
  }
  ReleaseSingle(hfn.value());
  return true;
}

uint32_t FramePool::RefCount(Hfn hfn) const {
  absl::MutexLock lock(&mu_);
  auto it = refcounts_.find(hfn.value());
  return it == refcounts_.end() ? 0 : it->second;
}

uint64_t FramePool::frames_allocated() const {
  absl::MutexLock lock(&mu_);
  return address_space_frames_ - frames_free_address_space_;
}

uint64_t FramePool::address_space_frames_free() const {
  absl::MutexLock lock(&mu_);
  return frames_free_address_space_;
}

// --- Budget --------------------------------------------------------------------

bool FramePool::TryCharge(uint64_t num_frames) noexcept {
  uint64_t charged = frames_charged_.load(std::memory_order_relaxed);
  do {
    if (num_frames > capacity_frames_ - charged) {
      absl::MutexLock lock(&counters_mu_);
      counters_.Inc(FramePoolCounters::kChargeFailures);
      return false;
    }
  } while (!frames_charged_.compare_exchange_weak(charged, charged + num_frames, std::memory_order_relaxed));
  return true;
}

absl::Status FramePool::Charge(uint64_t num_frames, std::string_view what) {
  if (TryCharge(num_frames)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(absl::string_view(what.data(), what.size()), " does not fit the host budget: ",
                                                   FormatBytes(frames_free() << kPageShift), " free of ",
                                                   FormatBytes(capacity_frames_ << kPageShift)));
}

void FramePool::Uncharge(uint64_t num_frames) noexcept {
  const uint64_t before = frames_charged_.fetch_sub(num_frames, std::memory_order_relaxed);
  CHECK_LE(num_frames, before) << "Uncharge of more frames than were charged";
}

// --- Memory --------------------------------------------------------------------

absl::Status FramePool::Punch(uint64_t first, uint64_t n) {
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(first << kPageShift),
                static_cast<off_t>(n << kPageShift)) != 0) {
    return ErrnoError(errno, absl::StrCat("fallocate(PUNCH_HOLE) of ", n, " frames at hfn ", first));
  }
  absl::MutexLock lock(&counters_mu_);
  counters_.Inc(FramePoolCounters::kPunches);
  counters_.Add(FramePoolCounters::kPunchedFrames, n);
  return absl::OkStatus();
}

absl::Status FramePool::Discard(Hfn first, uint64_t num_frames) {
  CHECK(Contains(first, num_frames)) << "Discard of " << first << "+" << num_frames << " outside the pool";
  if (num_frames == 0) return absl::OkStatus();
  return Punch(first.value(), num_frames);
}

absl::StatusOr<uint64_t> FramePool::ResidentFrames() const {
  return ResidentFrames(Hfn(0), address_space_frames_);
}

absl::StatusOr<uint64_t> FramePool::ResidentFrames(Hfn first, uint64_t num_frames) const {
  CHECK(Contains(first, num_frames));
  const off_t end = static_cast<off_t>((first.value() + num_frames) << kPageShift);
  off_t pos = static_cast<off_t>(first.value() << kPageShift);
  uint64_t bytes = 0;
  while (pos < end) {
    const off_t data = lseek(fd_, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data at or after pos
      return ErrnoError(errno, "lseek(SEEK_DATA) on the frame pool memfd");
    }
    if (data >= end) break;
    off_t hole = lseek(fd_, data, SEEK_HOLE);
    if (hole < 0) return ErrnoError(errno, "lseek(SEEK_HOLE) on the frame pool memfd");
    if (hole > end) hole = end;
    bytes += static_cast<uint64_t>(hole - data);
    pos = hole;
  }
  return bytes >> kPageShift;
}

}  // namespace vmm

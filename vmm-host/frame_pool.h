// FramePool: the host's memory for guests.
//
// The pool owns one memfd, mapped once (MAP_SHARED) into the VMM, and hands
// out its 4 KiB pages as host frames: an Hfn is the page's offset in the memfd
// divided by 4096, and HostPtr(hfn) is base + offset in the single mapping.
// The memfd is sparse: only frames that were written are resident, and every
// frame the pool takes back is hole-punched (fallocate PUNCH_HOLE), so what the
// pool hands out is always zero-filled and what it takes back stops costing
// host memory at once. The budget is therefore real resident memory, measured
// by ResidentFrames(), not bookkeeping.
//
// Two things are managed separately (see docs/vmm-memory.md):
//   - Address space: frames of the memfd handed out either as contiguous
//     extents (a VM's RAM: one extent per VM, so that each RAM range maps into
//     KVM as one contiguous memslot, at fd()/OffsetOf(extent.first)) or as
//     single refcounted frames (shared dedup frames, COW copies, swap-in
//     frames). The address space may be larger than the budget: guest RAM is
//     over-committed.
//   - The budget: capacity_frames() is the most frames that may be backed at
//     once. Charge()/TryCharge() reserve budget, Uncharge() returns it. Today a
//     VM charges all of its RAM when it is created (so a VM that does not fit
//     fails to start with a clear message); with over-commit, charging moves to
//     population time. The pool itself never charges: allocation of address
//     space and charging are the caller's two steps.
//
// Frame lifetimes:
//   - Extent frames live until FreeExtent(); Discard() punches some of them
//     (contents become zero, memory is released, the address space stays
//     allocated).
//   - A single frame starts with refcount 1 (AllocateFrame). Ref()/Unref()
//     share it; when the count drops to 0 it is punched and returned. Its
//     memory is released before its address space can be handed out again.
//
// Invariant: every frame of the memfd that is not allocated is a hole.
//
// Thread safety: every method may be called from any thread. Allocation, free
// and refcounting take an internal absl::Mutex; TryCharge/Uncharge are
// lock-free; HostPtr/HostAddress/OffsetOf/fd are lock-free and never fail.
// Counters have one writer per slot at a time (each slot is written under one
// of two internal mutexes) and may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/addr.h"
#include "base/counters.h"

namespace vmm {

// A contiguous run of host frames [first, first + num_frames).
struct Extent {
  base::Hfn first;
  uint64_t num_frames = 0;

  base::Hfn end() const { return first + num_frames; }
  uint64_t size_bytes() const { return num_frames << base::kPageShift; }
  bool operator==(const Extent&) const = default;
};

#define VMM_FRAME_POOL_COUNTERS(X)                                      \
  X(FramesAllocated, frames_allocated) /* AllocateFrame successes */    \
  X(FramesFreed, frames_freed)         /* single frames returned */     \
  X(FrameAllocFailures, frame_alloc_failures)                           \
  X(ExtentsAllocated, extents_allocated)                                \
  X(ExtentsFreed, extents_freed)                                        \
  X(ExtentAllocFailures, extent_alloc_failures)                         \
  X(Punches, punches)               /* fallocate(PUNCH_HOLE) calls */   \
  X(PunchedFrames, punched_frames)  /* frames covered by those calls */ \
  X(ChargeFailures, charge_failures)

BASE_DEFINE_COUNTERS(FramePoolCounters, VMM_FRAME_POOL_COUNTERS);

// "4 KiB", "100 MiB", "1.5 GiB": sizes for error messages and reports.
std::string FormatBytes(uint64_t bytes);

class FramePool {
 public:
  // The mapping and every extent of at least this size start on such a
  // boundary: a 2 MiB page (large EPT entries, transparent huge pages).
  static constexpr uint64_t kLargeAlignBytes = uint64_t{2} << 20;
  static constexpr uint64_t kLargeAlignFrames = kLargeAlignBytes >> base::kPageShift;

  struct Options {
    // The host budget: the most bytes of guest memory that may be backed at
    // once. A positive multiple of 4 KiB.
    uint64_t budget_bytes = 0;
    // Size of the memfd (the address space extents and frames come from).
    // 0 means budget_bytes. A multiple of 4 KiB, at least budget_bytes.
    uint64_t address_space_bytes = 0;
    // The memfd's name, seen in /proc/PID/maps and /proc/PID/fd.
    std::string name = "vmm-frame-pool";
  };

  static absl::StatusOr<std::unique_ptr<FramePool>> Create(const Options& options);

  // Unmaps and closes the memfd. Every extent and frame handed out becomes
  // invalid; owners (FrameTables) must be destroyed first.
  ~FramePool();
  FramePool(const FramePool&) = delete;
  FramePool& operator=(const FramePool&) = delete;

  // --- Address space ---------------------------------------------------------

  // A contiguous run of num_frames zero-filled frames (first fit from the
  // bottom of the memfd). ResourceExhausted, with the free space and the
  // largest free run in the message, if no run is long enough. Does not
  // charge the budget.
  absl::StatusOr<Extent> AllocateExtent(uint64_t num_frames);
  // Punches the whole extent and returns its address space. `extent` must be
  // exactly one that AllocateExtent returned (a host invariant: CHECKed).
  void FreeExtent(const Extent& extent);

  // One zero-filled frame with refcount 1, taken from the top of the memfd
  // (away from extents, so single frames do not fragment the space extents
  // need). nullopt when the address space is full. Does not charge.
  std::optional<base::Hfn> AllocateFrame() noexcept;
  // Returns a frame whose only reference the caller holds (refcount must be
  // exactly 1: CHECKed). Punches it first.
  void FreeFrame(base::Hfn hfn);
  // Adds a reference to a single frame (e.g. one more gfn shares it).
  void Ref(base::Hfn hfn);
  // Drops a reference; at 0 the frame is punched and returned. Returns true
  // when this call freed the frame.
  bool Unref(base::Hfn hfn);
  // The refcount of a single frame; 0 for a frame that is not an allocated
  // single frame (free, or part of an extent).
  uint32_t RefCount(base::Hfn hfn) const;

  // --- Budget ----------------------------------------------------------------

  // Reserves num_frames of the budget if they fit. Lock-free.
  [[nodiscard]] bool TryCharge(uint64_t num_frames) noexcept;
  // The same, with an error that names what did not fit:
  //   Charge(n, "guest RAM of 512 MiB for vm 'x'") fails with
  //   "guest RAM of 512 MiB for vm 'x' does not fit the host budget:
  //    100 MiB free of 256 MiB".
  absl::Status Charge(uint64_t num_frames, std::string_view what);
  // Returns budget (CHECKs that no more is returned than was charged).
  void Uncharge(uint64_t num_frames) noexcept;

  uint64_t capacity_frames() const { return capacity_frames_; }
  uint64_t frames_charged() const { return frames_charged_.load(std::memory_order_relaxed); }
  // Budget not charged: capacity_frames() - frames_charged().
  uint64_t frames_free() const { return capacity_frames_ - frames_charged(); }

  // --- Memory ----------------------------------------------------------------

  // Punches [first, first + num_frames): the memory is released and the
  // frames read back as zero; nothing is freed or uncharged. The range must
  // lie inside the memfd (CHECKed). Errors carry errno's text.
  absl::Status Discard(base::Hfn first, uint64_t num_frames);

  // Frames of the memfd that are actually backed by host memory, counted by
  // walking it with lseek(SEEK_DATA/SEEK_HOLE). A measurement, for tests and
  // reports; costs one syscall pair per backed run.
  absl::StatusOr<uint64_t> ResidentFrames() const;
  absl::StatusOr<uint64_t> ResidentFrames(base::Hfn first, uint64_t num_frames) const;

  // --- Addresses ---------------------------------------------------------------

  // The frame's bytes in the VMM's single mapping. hfn must be inside the
  // memfd (DCHECKed). Lock-free.
  uint8_t* HostPtr(base::Hfn hfn) const noexcept {
    return base_ + (hfn.value() << base::kPageShift);
  }
  base::Hva HostAddress(base::Hfn hfn) const noexcept { return base::HvaOf(HostPtr(hfn)); }
  // The memfd and a frame's offset in it: what a second mmap (for example a
  // KVM memslot's userspace range) of the same frames needs.
  int fd() const { return fd_; }
  uint64_t OffsetOf(base::Hfn hfn) const { return hfn.value() << base::kPageShift; }
  // True if [first, first + num_frames) lies inside the memfd (overflow-safe).
  bool Contains(base::Hfn first, uint64_t num_frames) const {
    return first.value() <= address_space_frames_ &&
           num_frames <= address_space_frames_ - first.value();
  }
  // The start of the single mapping (HostPtr(Hfn(0))).
  uint8_t* mapping_base() const { return base_; }

  uint64_t address_space_frames() const { return address_space_frames_; }
  // Frames of address space handed out (extents plus single frames).
  uint64_t frames_allocated() const;
  // Frames of address space not handed out.
  uint64_t address_space_frames_free() const;

  const FramePoolCounters& counters() const { return counters_; }

 private:
  FramePool(int fd, uint8_t* base, uint64_t capacity_frames, uint64_t address_space_frames);

  // Inserts [first, first + n) into free_ranges_, merging with neighbours.
  void InsertFreeLocked(uint64_t first, uint64_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Punches without taking the lock and counts the punch.
  absl::Status Punch(uint64_t first, uint64_t n);
  // Unref/FreeFrame after the count reached 0: punch, then return the frame.
  void ReleaseSingle(uint64_t hfn);

  const int fd_;
  uint8_t* const base_;
  const uint64_t capacity_frames_;
  const uint64_t address_space_frames_;

  std::atomic<uint64_t> frames_charged_{0};

  mutable absl::Mutex mu_;
  // Free address space: first frame -> number of frames; disjoint, never
  // adjacent (merged on insert).
  std::map<uint64_t, uint64_t> free_ranges_ ABSL_GUARDED_BY(mu_);
  uint64_t frames_free_address_space_ ABSL_GUARDED_BY(mu_) = 0;
  // Allocated extents: first frame -> number of frames.
  absl::flat_hash_map<uint64_t, uint64_t> extents_ ABSL_GUARDED_BY(mu_);
  // Allocated single frames -> refcount (>= 1).
  absl::flat_hash_map<uint64_t, uint32_t> refcounts_ ABSL_GUARDED_BY(mu_);

  // Each slot has one writer at a time: the allocation counters are written
  // under mu_; Punches, PunchedFrames and ChargeFailures (bumped by paths that
  // do not hold mu_) under counters_mu_.
  FramePoolCounters counters_;
  absl::Mutex counters_mu_;
};

}  // namespace vmm

// FrameTable: what backs each guest frame of one VM.
//
// One FrameTable per VM maps every gfn of the VM's RAM ranges to a backing
// state, packed into one 64-bit word per gfn:
//   Unbacked      nothing behind it yet (never populated, or dropped)
//   Present(hfn)  a private, writable host frame
//   Zero          discarded: reads as zero, no memory behind it
//   Shared(hfn)   a read-only frame shared with other gfns (dedup); a write
//                 must BreakShare() first (copy-on-write)
//   Ballooned     given back by the guest's balloon driver
//   Swapped(slot) contents saved in a VMM swap slot, no memory behind it
// plus per-gfn flags (guest page-table page, disk-backed, pinned) and the
// accessed/dirty bits that Harvest() reads. Gfns outside the RAM ranges (the
// MMIO hole, beyond RAM) are kNotRam.
//
// It is the only code that changes what a gfn is backed by. Every change
// first calls every registered InvalidationListener (the paging strategy's
// reverse map, the soft TLB, the KVM mapping) for the affected gfns, and only
// then frees or reuses the old frame, so no translation to a frame survives
// the frame's release. Policies (balloon, ksm, swap) act only through the
// verbs below.
//
// Frames. At creation the table allocates one extent from the FramePool that
// holds every gfn's *home* frame (gfn i of the RAM, counted across ranges in
// gpa order, is home.first + i), and charges the whole RAM against the host
// budget ("for now a VM charges all of its RAM at creation"; see
// docs/vmm-memory.md for charge-on-population under over-commit). Each RAM
// range is therefore one contiguous run of the memfd: Mappings() gives the
// host pointer and fd offset a KVM memslot needs. A Present gfn is backed by
// its home frame or by a single pool frame (a COW copy, a swap-in frame) on
// which the table holds one reference; a Shared gfn holds one reference on
// the shared frame. Releasing a home frame punches it (its address space
// stays reserved for the gfn); releasing a single frame drops the reference.
// Every backing change resets the gfn's accessed/dirty bits.
//
// mmu::GuestPhysMemory. FrameTable also is the VM's mmu::GuestPhysMemory
// (multiple inheritance beside GuestMemory: one object, two interfaces, no
// adapter to keep alive): HostPage, MakeAvailable, NoteAccess and
// BackingSeq serve the soft CPU's paging strategies. BackingSeq is a
// seqlock counter: every verb that calls the listeners (Populate, Discard,
// ShareReadOnly, BreakShare, Evict, Restore, Harvest) makes it odd before the
// listeners run and even again once the new state is stored (and the old
// frame released), so a strategy's lock-free Translate can tell that its
// answer may be stale (mmu/paging_strategy.h, "Cross-thread invalidation
// protocol"). Listeners that serve vCPUs: vmm-host/strategy_listener.h.
//
// Under KVM the guest reaches RAM through the memslot mapping whatever the
// table says; the table records what backs it, and the KVM listener (a later
// issue) makes the mapping agree (remap, MADV_DONTNEED, userfaultfd WP).
//
// Thread safety: the verbs (Populate, Discard, ShareReadOnly, BreakShare,
// Evict, Restore, SetFlags, Harvest, listener registration) may be called from
// any thread (a VMM control thread, a policy thread) and are serialised by an
// internal mutex, which is held while listeners run (MakeAvailable and
// GuestMemory::Prepare take it too). Lookup, Translate, TranslateForRead,
// HostPtr, HostPtrForRead, HostPage, BackingSeq and NoteAccess are lock-free
// and may be called from vCPU threads at any time; they see each gfn's state before or after a
// verb's change, never a torn one. A pointer from Translate/HostPtr stays
// usable until a listener is told to invalidate its gfn: the listener must not
// return while a vCPU may still use an old translation (kick and wait).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/addr.h"
#include "base/counters.h"
#include "mmu/paging_strategy.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/guest_memory.h"
#include "vmm-host/memory_layout.h"  // RamRange

namespace vmm {

// What backs a gfn. Values are the 3-bit state field of the packed entry.
enum class GfnState : uint8_t {
  kUnbacked = 0,
  kPresent = 1,
  kZero = 2,
  kShared = 3,
  kBallooned = 4,
  kSwapped = 5,
  kNotRam = 7,  // never stored: Lookup's answer outside the RAM ranges
};
const char* GfnStateName(GfnState state);

// Per-gfn flags, set by SetFlags (no invalidation: they do not change what
// backs the gfn).
enum GfnFlag : uint8_t {
  kGfnPageTable = 1 << 0,   // holds a guest page table (shadow write-protects it)
  kGfnDiskBacked = 1 << 1,  // guest page-cache page with a copy on disk (double paging)
  kGfnPinned = 1 << 2,      // must stay Present (DMA, device rings): Discard,
                            // ShareReadOnly and Evict refuse it
};
inline constexpr uint8_t kGfnAllFlags = kGfnPageTable | kGfnDiskBacked | kGfnPinned;

// One gfn's packed state word, decoded. Layout (bit 0 = LSB):
//   2:0   GfnState
//   5:3   GfnFlag bits
//   6     accessed (since the last Harvest)
//   7     dirty (since the last Harvest)
//   11:8  reserved, zero
//   63:12 payload: the hfn (Present, Shared) or swap slot (Swapped), else 0
class GfnEntry {
 public:
  static constexpr uint64_t kStateMask = 0x7;
  static constexpr uint64_t kFlagsShift = 3;
  static constexpr uint64_t kFlagsMask = uint64_t{kGfnAllFlags} << kFlagsShift;
  static constexpr uint64_t kAccessedBit = uint64_t{1} << 6;
  static constexpr uint64_t kDirtyBit = uint64_t{1} << 7;
  static constexpr uint64_t kPayloadShift = 12;
  static constexpr uint64_t kMaxPayload = (uint64_t{1} << (64 - kPayloadShift)) - 1;

  constexpr GfnEntry() = default;
  constexpr explicit GfnEntry(uint64_t raw) : raw_(raw) {}
  static constexpr GfnEntry Make(GfnState state, uint64_t payload, uint8_t flags = 0) {
    return GfnEntry(static_cast<uint64_t>(state) | (uint64_t{flags} << kFlagsShift) |
                    (payload << kPayloadShift));
  }

  constexpr GfnState state() const { return static_cast<GfnState>(raw_ & kStateMask); }
  constexpr uint8_t flags() const { return static_cast<uint8_t>((raw_ & kFlagsMask) >> kFlagsShift); }
  constexpr bool has_flag(GfnFlag flag) const { return (flags() & flag) != 0; }
  constexpr bool accessed() const { return (raw_ & kAccessedBit) != 0; }
  constexpr bool dirty() const { return (raw_ & kDirtyBit) != 0; }
  // Present or Shared: a host frame holds the contents.
  constexpr bool has_frame() const {
    return state() == GfnState::kPresent || state() == GfnState::kShared;
  }
  // The frame of a Present or Shared gfn (meaningless otherwise).
  constexpr base::Hfn hfn() const { return base::Hfn(raw_ >> kPayloadShift); }
  // The slot of a Swapped gfn (meaningless otherwise).
  constexpr uint64_t swap_slot() const { return raw_ >> kPayloadShift; }
  constexpr uint64_t raw() const { return raw_; }
  constexpr bool operator==(const GfnEntry&) const = default;

 private:
  uint64_t raw_ = 0;
};

// How one RAM range lies in host memory: what KVM_SET_USER_MEMORY_REGION (or
// a second mmap of the pool's memfd) needs.
struct RamMapping {
  base::Gpa gpa;
  uint64_t size_bytes = 0;
  uint8_t* host = nullptr;  // in the pool's single mapping
  int fd = -1;              // the pool's memfd
  uint64_t fd_offset = 0;   // offset of the range's first home frame
};

// Why a listener is told to drop translations of some gfns.
enum class InvalidationReason : uint8_t {
  kPopulate,     // Unbacked/Zero/Ballooned -> Present
  kDiscard,      // -> Zero / Unbacked / Ballooned
  kShare,        // Present -> Shared (drop every writable translation)
  kBreakShare,   // Shared -> Present (new private copy)
  kEvict,        // -> Swapped
  kRestore,      // -> Present
  kHarvest,      // A/D bits were cleared: re-observe accesses (no backing change)
};
const char* InvalidationReasonName(InvalidationReason reason);

// Told before any change to what backs a gfn. Runs on the thread of the verb,
// with the table's mutex held: it may call Lookup/Translate (they show the old
// state) but no verb. It must not return while any translation of the gfns
// (soft TLB entry, shadow/EPT entry, KVM mapping) may still be used.
class InvalidationListener {
 public:
  virtual ~InvalidationListener() = default;
  virtual void InvalidateGfns(base::Gfn first, uint64_t count, InvalidationReason reason) = 0;
};

#define VMM_FRAME_TABLE_COUNTERS(X)                                       \
  X(Populated, populated)          /* gfns made Present by Populate */    \
  X(Zeroed, zeroed)                /* gfns discarded to Zero */           \
  X(Unbacked, unbacked)            /* gfns discarded to Unbacked */       \
  X(Ballooned, ballooned)          /* gfns discarded to Ballooned */      \
  X(Shared, shared)                /* gfns made Shared */                 \
  X(ShareMismatches, share_mismatches) /* ShareReadOnly refused: contents differ */ \
  X(CowBreaks, cow_breaks)                                                \
  X(Evicted, evicted)                                                     \
  X(Restored, restored)                                                   \
  X(Invalidations, invalidations)  /* invalidation batches issued */      \
  X(InvalidatedGfns, invalidated_gfns)                                    \
  X(Harvests, harvests)                                                   \
  X(MakeAvailablePopulated, make_available_populated) /* Unbacked/Zero gfns populated on demand */ \
  X(MakeAvailableCowBreaks, make_available_cow_breaks) /* shares broken on demand (writes) */ \
  X(BalloonedTouched, ballooned_touched) /* ballooned gfns touched again: populated zero-filled */ \
  X(SwapInUnavailable, swap_in_unavailable) /* MakeAvailable of a Swapped gfn: no swap store yet */ \
  X(MakeAvailableFailed, make_available_failed) /* every kFailed answer (includes the above) */

BASE_DEFINE_COUNTERS(FrameTableCounters, VMM_FRAME_TABLE_COUNTERS);

class FrameTable final : public GuestMemory, public mmu::GuestPhysMemory {
 public:
  struct Options {
    std::string vm_name;               // for messages
    std::vector<RamRange> ram_ranges;  // non-empty, disjoint, 4 KiB aligned, any order
                                       // (MemoryLayout::ram)
    // Present(home) for every gfn from the start (today's behaviour: RAM is
    // charged and mapped at creation). False leaves gfns Unbacked until
    // Populate (the extent is still allocated and charged).
    bool populate = true;
  };

  // Allocates the home extent and charges all RAM to `pool`. Fails with
  // InvalidArgument for bad ranges and ResourceExhausted, e.g. "guest RAM of
  // 512 MiB for vm 'x' does not fit the host budget: 100 MiB free of 256 MiB".
  // `pool` must outlive the table.
  static absl::StatusOr<std::unique_ptr<FrameTable>> Create(FramePool* pool, Options options);

  // Returns every frame (punches the home extent, drops single-frame
  // references) and the budget. The VM must no longer run; listeners are not
  // called.
  ~FrameTable() override;
  FrameTable(const FrameTable&) = delete;
  FrameTable& operator=(const FrameTable&) = delete;

  // --- Listeners -------------------------------------------------------------
  // `listener` must outlive its registration.
  void RegisterInvalidationListener(InvalidationListener* listener);
  void UnregisterInvalidationListener(InvalidationListener* listener);

  // --- Lock-free reads (any thread) --------------------------------------------
  // The gfn's state (kNotRam outside the RAM ranges).
  GfnEntry Lookup(base::Gfn gfn) const noexcept;
  // Host pointer to the frame of a Present gfn (writable), else nullptr.
  uint8_t* Translate(base::Gfn gfn) const noexcept;
  // Host pointer to the frame of a Present or Shared gfn, for reads only
  // (writing a Shared frame would change every sharer), else nullptr.
  const uint8_t* TranslateForRead(base::Gfn gfn) const noexcept;
  // Records an access by the strategy or backend that translated it (soft
  // TLB fill, shadow/EPT A/D, KVM dirty log). Ignored outside RAM. The
  // uint64_t form is mmu::GuestPhysMemory's.
  void NoteAccess(base::Gfn gfn, bool write) noexcept { NoteAccess(gfn.value(), write); }
  void NoteAccess(uint64_t gfn, bool write) noexcept override;

  // --- mmu::GuestPhysMemory (the soft CPU's paging strategies) --------------
  // Lock-free. Present -> its frame; Shared -> its frame for reads only
  // (nullptr when for_write); Unbacked, Zero, Ballooned, Swapped and gfns
  // outside RAM -> nullptr. Guest input: the gfn is bound-checked.
  uint8_t* HostPage(uint64_t gfn, bool for_write) noexcept override;
  // The slow path behind a nullptr from HostPage (takes the verb mutex and
  // may run the listeners on the calling thread; the caller's vCPU must be
  // quiescent, and it must not be called from a listener):
  //   Present                  -> kReady
  //   Shared, read             -> kReady
  //   Shared, write            -> BreakShare, kReady
  //   Unbacked, Zero           -> Populate (reads back zero), kReady
  //   Ballooned                -> Populate, zero-filled, counted as
  //                               ballooned_touched: ballooned pages touched
  //                               again are zero-filled, as QEMU/Linux behave
  //   Swapped                  -> kFailed, counted as swap_in_unavailable:
  //                               restoring needs the swap store, which the
  //                               swap issue wires in (it will Restore here)
  //   outside RAM              -> kNotRam
  //   a verb error (e.g. the host budget, once Populate charges) -> kFailed
  // Every kFailed is counted (make_available_failed) and logged.
  mmu::BackingStatus MakeAvailable(uint64_t gfn, bool for_write) noexcept override;
  // The seqlock counter (see the top of this file). Acquire load.
  uint64_t BackingSeq() const noexcept override {
    return backing_seq_.load(std::memory_order_acquire);
  }

  // GuestMemory: a pointer to [gpa, gpa + len) if it lies inside one RAM
  // range and every gfn it touches is Present on host frames that are
  // contiguous (always so for home frames), else nullptr. Shared, Zero,
  // Swapped... pages give nullptr: callers that mean to access them use
  // Read/Write, HostPtrForRead/HostPtrForWrite or Prepare (below).
  uint8_t* HostPtr(base::Gpa gpa, uint64_t len) noexcept override;
  // GuestMemory with intent (guest_memory.h): IsRam is a pure bounds check
  // (every page in some RAM range, whatever backs it); Prepare runs
  // MakeAvailable on every page (for reads only Swapped pages need it: the
  // others are readable through HostPtrForRead); HostPtrForRead answers
  // like HostPtr, and also for a range inside one page that is Shared (its
  // frame) or Zero/Unbacked/Ballooned (a static zero page, nothing populated).
  bool IsRam(base::Gpa gpa, uint64_t len) noexcept override;
  bool Prepare(base::Gpa gpa, uint64_t len, bool for_write) noexcept override;
  const uint8_t* HostPtrForRead(base::Gpa gpa, uint64_t len) noexcept override;
  uint64_t ram_bytes() const noexcept override { return num_frames_ << base::kPageShift; }

  // --- Verbs (serialised; listeners first) -----------------------------------
  // Every verb checks all of its gfns before it changes any: on error nothing
  // changed and no listener was called (except where noted).

  // Unbacked/Zero/Ballooned -> Present(home). Present gfns are left alone.
  // FailedPrecondition for Shared or Swapped gfns (BreakShare/Restore them).
  absl::Status Populate(base::Gfn first, uint64_t count);

  enum class DiscardTo : uint8_t { kZero, kUnbacked, kBallooned };
  // Any state but Swapped -> `to`; the frame is released (home punched,
  // single frame unreferenced), so the gfn reads back zero once populated
  // again. FailedPrecondition for pinned or Swapped gfns (the swap policy owns
  // the slot: Restore or drop it through its own path first).
  absl::Status Discard(base::Gfn first, uint64_t count, DiscardTo to = DiscardTo::kZero);

  // Present -> Shared(shared_hfn) for a gfn whose contents equal the frame
  // `shared_hfn` (a single pool frame the dedup policy owns; the table takes
  // one more reference). The contents are compared after the listeners have
  // dropped every writable translation, so a racing guest write cannot be
  // lost: if they differ, Aborted and the gfn stays Present (listeners were
  // called; translations refill on demand). FailedPrecondition if the gfn is
  // not Present or is pinned.
  absl::Status ShareReadOnly(base::Gfn gfn, base::Hfn shared_hfn);

  // Shared(s) -> Present(private copy of s), the copy-on-write break. The
  // copy goes to the gfn's home frame. Returns the new frame.
  absl::StatusOr<base::Hfn> BreakShare(base::Gfn gfn);

  // Present/Shared -> Swapped(swap_slot). After the listeners ran (no
  // writable translation left) `save` is called with the page; if it fails
  // the gfn is unchanged and its error is returned. Then the frame is
  // released. FailedPrecondition for pinned gfns or gfns without a frame.
  absl::Status Evict(base::Gfn gfn, uint64_t swap_slot,
                     const std::function<absl::Status(const uint8_t* page)>& save);

  // Swapped/Zero/Unbacked/Ballooned -> Present(hfn). `hfn` is the gfn's home
  // frame (see HomeHfn) or a single pool frame whose reference the caller
  // hands to the table; the caller filled it already. FailedPrecondition if
  // the gfn is Present or Shared.
  absl::Status Restore(base::Gfn gfn, base::Hfn hfn);

  // Sets (set=true) or clears the given flags on [first, first + count).
  absl::Status SetFlags(base::Gfn first, uint64_t count, uint8_t flags, bool set);

  // Accessed/dirty harvesting. Reads and clears the A/D bits of [first,
  // first + count) into `out` (bit 0 accessed, bit 1 dirty, one byte per gfn),
  // then tells the listeners (kHarvest) so that later accesses are observed
  // and noted again. Clearing before invalidating is what makes dirty
  // tracking exact: a writable translation that survives until the
  // invalidation can only exist if the gfn was already noted dirty, so writes
  // through it are reported by this harvest.
  absl::Status Harvest(base::Gfn first, uint64_t count, std::vector<uint8_t>* out);
  static constexpr uint8_t kHarvestAccessed = 1;
  static constexpr uint8_t kHarvestDirty = 2;

  // --- Layout ------------------------------------------------------------------
  const std::vector<RamRange>& ram_ranges() const { return ranges_; }
  std::vector<RamMapping> Mappings() const;
  uint64_t num_frames() const { return num_frames_; }
  const Extent& home_extent() const { return home_; }
  // The gfn's home frame, nullopt outside RAM.
  std::optional<base::Hfn> HomeHfn(base::Gfn gfn) const noexcept;
  // Gfns in a state (a linear scan; for tests and reports).
  uint64_t CountState(GfnState state) const;
  FramePool* pool() const { return pool_; }
  const std::string& vm_name() const { return vm_name_; }

  // Written under the verb mutex; read from anywhere.
  const FrameTableCounters& counters() const { return counters_; }

 private:
  struct Range {
    uint64_t first_gfn;
    uint64_t num_frames;
    uint64_t index;  // index of first_gfn in entries_ (and in the home extent)
  };
  static constexpr uint64_t kNoIndex = ~uint64_t{0};

  FrameTable(FramePool* pool, std::string vm_name, std::vector<RamRange> ranges,
             std::vector<Range> layout, uint64_t num_frames, Extent home);

  // Index of gfn in entries_, or kNoIndex outside RAM.
  uint64_t IndexOf(uint64_t gfn) const noexcept {
    for (const Range& r : layout_) {
      const uint64_t off = gfn - r.first_gfn;  // wraps (huge) below the range
      if (off < r.num_frames) return r.index + off;
    }
    return kNoIndex;
  }
  // IndexOf(first) if [first, first + count) is inside one RAM range (count >
  // 0), else an InvalidArgument error.
  absl::StatusOr<uint64_t> CheckRange(base::Gfn first, uint64_t count, const char* verb) const;
  bool IsHome(uint64_t index, base::Hfn hfn) const { return hfn == home_.first + index; }

  void InvalidateLocked(base::Gfn first, uint64_t count, InvalidationReason reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The BackingSeq write side: odd from construction (before the listeners)
  // to destruction (after the new state is stored). Under mu_.
  class BackingChange {
   public:
    explicit BackingChange(FrameTable* table) : table_(table) {
      table_->backing_seq_.fetch_add(1, std::memory_order_seq_cst);  // odd
    }
    ~BackingChange() { table_->backing_seq_.fetch_add(1, std::memory_order_seq_cst); }  // even
    BackingChange(const BackingChange&) = delete;
    BackingChange& operator=(const BackingChange&) = delete;

   private:
    FrameTable* const table_;
  };
  // The verbs' bodies, for the verbs and MakeAvailable (which decides under
  // the same lock hold).
  absl::Status PopulateLocked(base::Gfn first, uint64_t count, uint64_t index)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<base::Hfn> BreakShareLocked(base::Gfn gfn, uint64_t index)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stores a new state and payload, keeping the flags, clearing A/D.
  void SetStateLocked(uint64_t index, GfnState state, uint64_t payload) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the table's hold on a gfn's old frame (after the listeners ran).
  // Home frames are collected into `punch` runs and punched together.
  void ReleaseFrameLocked(uint64_t index, GfnEntry old, std::vector<Extent>* punch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PunchRuns(const std::vector<Extent>& punch);

  FramePool* const pool_;
  const std::string vm_name_;
  const std::vector<RamRange> ranges_;  // sorted by gpa
  const std::vector<Range> layout_;
  const uint64_t num_frames_;
  const Extent home_;

  // One packed GfnEntry per RAM gfn. Written under mu_ (NoteAccess and
  // Harvest use atomic read-modify-writes on the A/D bits); read lock-free.
  std::unique_ptr<std::atomic<uint64_t>[]> entries_;

  // BackingSeq's counter: written under mu_ (BackingChange), read lock-free.
  std::atomic<uint64_t> backing_seq_{0};

  absl::Mutex mu_;
  std::vector<InvalidationListener*> listeners_ ABSL_GUARDED_BY(mu_);
  FrameTableCounters counters_;
};

}  // namespace vmm

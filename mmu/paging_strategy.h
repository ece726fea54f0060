// PagingStrategy: how the soft CPU's guest-virtual accesses reach host memory.
//
// The soft backend's CPU looks every access up in its SoftTlb (soft_tlb.h).
// On a miss it asks the VM's paging strategy, which translates the address
// under its own scheme and fills the soft TLB:
//   native  walks the guest's own tables; guest-physical equals host frame
//           through the FrameTable (cpu/native_strategy.h). The reference
//           and the "bare metal" baseline.
//   shadow  walks VMM-built shadow tables (gva -> hfn), built from the
//           guest's write-protected tables (shadow/, later).
//   nested  does the 2-D walk through VMM-built EPT tables (nested/, later).
// One strategy serves all vCPUs of a VM. It is chosen per VM and may be
// switched while the VM runs: the new strategy starts with no state and
// rebuilds it lazily (see "Switching" below). See docs/paging-strategies.md.
//
// The pieces, all in namespace mmu:
//   GuestPhysMemory   what backs guest-physical memory as a strategy sees it
//                     (vmm::FrameTable implements it, in vmm-host).
//   GuestPhysView     adapter: a GuestPhysMemory as a walker memory view.
//   VcpuMmu           one vCPU's paging state (registers, soft TLB, the
//                     invalidation mailbox, recent fills for Audit).
//   TranslateResult   the small answer enum of Translate.
//   TranslateOutcome  the details that go with it.
//   GfnChange         why a range of gfns is invalidated.
//   PagingStrategy    the interface.
//
// Error handling. Translate and the event methods are hot or warm paths:
// noexcept, no allocation, answers are enums (docs/architecture.md, "Conventions"). A guest can never make
// them fail: bad guest tables become an injected fault. Only a broken host
// (RAM that cannot be backed) gives TranslateResult::kHostError. The control
// plane (AttachVcpu, Audit) returns absl::Status.
//
// Thread safety (the contract every strategy implements):
//   - Translate, SyncInvalidations, On* events and Audit for a vCPU run on
//     that vCPU's thread only (its SoftTlb is single-threaded, soft_tlb.h).
//     Different vCPUs call them concurrently: a strategy's shared state must
//     tolerate that (native has none beyond counters in per-vCPU blocks).
//   - InvalidateGfns and AllVcpusSynced may be called from any thread (in
//     practice the FrameTable verb's thread, under the FrameTable mutex, so
//     one at a time). InvalidateGfns does not touch any SoftTlb: it posts a
//     flush request that each vCPU applies in SyncInvalidations.
//   - AttachVcpu/DetachVcpu: control thread, while the vCPU is not running.
//   - Counters: any thread.
//
// Cross-thread invalidation protocol (KVM's kick-and-wait plus its
// mmu_invalidate_seq, in our terms). FrameTable calls its listeners *before*
// it changes a gfn's backing and frees the old frame; the listener must not
// return while any vCPU may still use an old translation:
//   1. The listener (the vmm-host adapter) calls
//        ticket = strategy.InvalidateGfns(first, count, change);
//      which updates the strategy's own structures and bumps a flush
//      generation.
//   2. It kicks every vCPU thread out of its run loop and waits until
//      strategy.AllVcpusSynced(ticket). A vCPU thread calls
//      SyncInvalidations(vcpu) between instructions; that flushes its soft
//      TLB if the generation moved and acknowledges. A vCPU marked quiescent
//      (halted, paused, blocked in GuestPhysMemory::MakeAvailable) counts as
//      synced: it calls SyncInvalidations when it leaves quiescence, before
//      it uses its soft TLB again (VcpuMmu::LeaveQuiescence does both).
//   3. Between the listeners returning and the new state being stored, a
//      vCPU could translate again and pick up the old frame. BackingSeq()
//      closes that window: GuestPhysMemory makes it odd before it calls the
//      listeners and even again after the new state is stored. Translate
//      refuses to start while it is odd and discards (kRetry, its own fill
//      undone) any answer during which it changed. A strategy with entries
//      of its own builds them only while the counter, read under the lock
//      its DropGfns takes, still has the value the translation began with:
//      a verb whose listeners already ran would otherwise leave an entry to
//      the old frame behind.
//
// Accessed/dirty harvesting is push-based: whenever a strategy installs a
// translation it first reports it with GuestPhysMemory::NoteAccess(gfn,
// write) (write = the translation allows writes, or the access was a write).
// FrameTable::Harvest clears its A/D bits and then invalidates with
// GfnChange::kHarvest; a strategy whose own entries hold A/D bits (shadow
// sptes, EPT entries) transfers them with NoteAccess before dropping them.
// Because a writable translation is reported dirty before it exists and is
// dropped at every harvest, a write can never go unreported.
//
// Switching strategies while the VM runs: pause every vCPU (quiescent),
// old->DetachVcpu(v) for each, unregister the old listener adapter, register
// the new one, new->AttachVcpu(v) for each (which flushes v's soft TLB: its
// entries were the old strategy's), resume. The new strategy rebuilds lazily.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "base/addr.h"
#include "base/counters.h"
#include "mmu/paging_mode.h"
#include "mmu/soft_tlb.h"

namespace mmu {

// ---------------------------------------------------------------------------
// Guest-physical memory as a strategy sees it.
// ---------------------------------------------------------------------------

// The answer of GuestPhysMemory::MakeAvailable.
enum class BackingStatus : uint8_t {
  kReady,   // HostPage(gfn, for_write) now gives a page (until the next change)
  kNotRam,  // not RAM (the MMIO hole, beyond RAM): the CPU does a bus access
  kFailed,  // RAM that cannot be backed now (host out of memory, swap-in I/O
            // error): a host condition, reported and counted, never a guest fault
};

// What backs guest-physical memory. One per VM; vmm::FrameTable implements it
// (in vmm-host, above mmu/), tests use tests/fakes/fake_guest_phys_memory.h.
//
// Thread safety: HostPage, BackingSeq and NoteAccess are lock-free and called
// from any vCPU thread at any time. MakeAvailable may block and may run the
// invalidation listeners (and so this VM's strategy's InvalidateGfns) on the
// calling vCPU thread; the caller marks its vCPU quiescent around the call.
class GuestPhysMemory {
 public:
  virtual ~GuestPhysMemory() = default;

  // The host address of the 4 KiB frame behind `gfn`, usable for reads, and
  // for writes when `for_write`; nullptr when the gfn is not RAM, or is RAM
  // whose contents are not resident (Zero, Unbacked, Ballooned, Swapped), or
  // (for_write) is backed by a shared copy-on-write frame. Never blocks. The
  // pointer stays valid until the listeners are told to invalidate the gfn.
  // Guest input: `gfn` comes from guest tables; implementations bound-check it.
  virtual uint8_t* HostPage(uint64_t gfn, bool for_write) noexcept = 0;

  // The slow path behind a nullptr from HostPage: makes the gfn usable for
  // the access (populate a zero page, restore from swap, break a share for a
  // write) or says why not. May block and may call the invalidation
  // listeners. Afterwards the caller must retry from the start: the answer
  // is a hint, the state may change again at once.
  virtual BackingStatus MakeAvailable(uint64_t gfn, bool for_write) noexcept = 0;

  // Records that a translation of `gfn` was installed (write: it allows
  // writes, or the access wrote). Feeds FrameTable::Harvest. Ignored outside
  // RAM.
  virtual void NoteAccess(uint64_t gfn, bool write) noexcept = 0;

  // A sequence count of backing changes (a seqlock's counter): odd from just
  // before the invalidation listeners are called until the new state is
  // stored, even otherwise; it never repeats a value. Read with acquire
  // ordering (see "Cross-thread invalidation protocol" above).
  virtual uint64_t BackingSeq() const noexcept = 0;
};

// A GuestPhysMemory as a walker memory view (walker.h's PhysMemoryView), for
// read-only uses: the reference check in Audit, debuggers, dumps. It hands
// out read pages; a walker that sets A/D bits through it could write a shared
// frame, so strategies walk with the write-aware GuestPhysStage
// (mmu/guest_phys_walk.h) instead.
class GuestPhysView {
 public:
  explicit GuestPhysView(GuestPhysMemory& mem) : mem_(mem) {}
  uint64_t* PageAt(uint64_t page_pa) noexcept {
    return reinterpret_cast<uint64_t*>(mem_.HostPage(page_pa >> base::kPageShift, false));
  }

 private:
  GuestPhysMemory& mem_;
};

// ---------------------------------------------------------------------------
// Per-vCPU paging state.
// ---------------------------------------------------------------------------

// One vCPU's paging state, owned by the vCPU (the soft CPU) and passed to every
// strategy call. The CPU writes the register fields and then tells the
// strategy (OnCr3Write, OnModeChange). CPL, EFLAGS.AC and whether an access
// is implicit come with each AccessRequest.
//
// Thread safety: the register fields, tlb, and recent fills belong to the
// vCPU thread. synced_generation and quiescent are the cross-thread mailbox
// (atomics; see PagingStrategy).
struct VcpuMmu {
  // --- Registers (vCPU thread) ---
  // CR0.PG. When clear, linear addresses are physical (SDM Vol. 3A §4.1.1),
  // truncated to 32 bits; no access rights apply.
  bool paging = true;
  // CR0.WP, CR4.LA57/SMEP/SMAP/PKE, EFER.NXE, PKRU, and the CPUID facts.
  PagingMode mode;
  // CR3 as the guest wrote it, without bit 63 (the PCID no-flush hint, which
  // is an argument of OnCr3Write). Bits 11:0 are the PCID when CR4.PCIDE=1.
  uint64_t cr3 = 0;

  SoftTlb* tlb = nullptr;  // this vCPU's soft TLB (not owned)
  uint32_t index = 0;      // vCPU number, < the strategy's max_vcpus

  // --- Cross-thread invalidation mailbox ---
  // The strategy's flush generation this vCPU has applied to its soft TLB.
  std::atomic<uint64_t> synced_generation{0};
  // True while the vCPU thread uses no translation (not running, halted,
  // blocked in MakeAvailable). A quiescent vCPU counts as synced; it must
  // call LeaveQuiescence before it touches its soft TLB again.
  std::atomic<bool> quiescent{true};

  // --- Recent fills, for Audit (vCPU thread) ---
  // The SoftTlb does not expose its entries; strategies record each fill
  // here (RecordFill) so that Audit can re-check the most recent ones.
  static constexpr size_t kRecentFills = 64;
  struct Fill {
    uint64_t gva_page = 0;
    SoftTlb::MmuIdx mmu_idx = SoftTlb::MmuIdx::kSupervisor;
  };
  std::array<Fill, kRecentFills> recent_fills{};
  uint32_t num_recent_fills = 0;  // total fills recorded (the ring wraps)

  void RecordFill(uint64_t gva, SoftTlb::MmuIdx idx) noexcept {
    recent_fills[num_recent_fills % kRecentFills] = {gva & ~base::kPageMask, idx};
    ++num_recent_fills;
  }
  size_t recent_fill_count() const noexcept {
    return num_recent_fills < kRecentFills ? num_recent_fills : kRecentFills;
  }
};

// ---------------------------------------------------------------------------
// Translate's answer.
// ---------------------------------------------------------------------------

enum class TranslateResult : uint8_t {
  // The access may proceed at outcome.host_page + (gva & 0xfff). If
  // outcome.filled, later accesses of the allowed kinds hit the soft TLB.
  kFixed,
  // Nothing was decided (guest tables or backing changed under the walk):
  // re-execute the access. The CPU may yield first.
  kRetry,
  // Deliver outcome.vector (#PF with error_code and cr2, or #GP(0)).
  kInjectGuestFault,
  // Not RAM: the CPU performs a bus access at outcome.gpa. Never filled.
  kMmio,
  // The fault was already fixed (another vCPU got there first): re-execute.
  // Native never returns it; shadow does.
  kSpurious,
  // RAM that cannot be backed (BackingStatus::kFailed): stop the vCPU and
  // report. A host condition, counted, never a guest fault.
  kHostError,
};

constexpr const char* TranslateResultName(TranslateResult r) {
  switch (r) {
    case TranslateResult::kFixed: return "fixed";
    case TranslateResult::kRetry: return "retry";
    case TranslateResult::kInjectGuestFault: return "inject_guest_fault";
    case TranslateResult::kMmio: return "mmio";
    case TranslateResult::kSpurious: return "spurious";
    case TranslateResult::kHostError: return "host_error";
  }
  return "?";
}

// Exception vectors a translation can raise (SDM Vol. 3A §6.15).
inline constexpr uint8_t kVectorGp = 13;  // #GP(0): non-canonical address
inline constexpr uint8_t kVectorPf = 14;  // #PF(error code), CR2 = linear address

struct TranslateOutcome {
  // kFixed: the host address of the 4 KiB page containing the gva.
  uint8_t* host_page = nullptr;
  // kFixed, kMmio: the guest-physical address of the access (offset kept).
  uint64_t gpa = 0;
  // kFixed: whether a soft-TLB entry was installed, where, with what.
  bool filled = false;
  SoftTlb::MmuIdx mmu_idx = SoftTlb::MmuIdx::kSupervisor;
  SoftTlb::Perms perms;
  uint64_t page_size_bytes = base::kPageSize;  // size of the guest mapping

  // kInjectGuestFault. For a non-canonical address vector is kVectorGp with
  // error code 0; the CPU substitutes #SS(0) for a stack-segment reference
  // (SDM Vol. 1 §3.3.7.1), which the strategy cannot know.
  uint8_t vector = 0;
  uint32_t error_code = 0;
  uint64_t cr2 = 0;  // #PF only

  // Guest-table references the translation made (all walks of it, retries
  // included), for the cost model.
  uint32_t walk_refs = 0;
};

// Why InvalidateGfns is called. vmm::InvalidationReason maps onto it:
// kShare -> kWriteProtect, kHarvest -> kHarvest, everything else -> kBacking.
enum class GfnChange : uint8_t {
  kBacking,       // the frame is replaced or removed: drop every translation
  kWriteProtect,  // becomes a shared read-only frame: drop writable ones (a
                  // strategy that caches the frame's address must drop all:
                  // the shared frame replaces the old one, which is freed)
  kHarvest,       // A/D bits harvested: report own A/D (NoteAccess), then drop
                  // so later accesses are observed again
};

// Which entries a guest TLB-flush instruction removes (SDM Vol. 3A §4.10.4).
enum class TlbFlush : uint8_t {
  kNonGlobal,  // INVPCID type 1/3, MOV to CR3 semantics: globals may stay
  kAll,        // INVPCID type 2, CR4.PGE toggle: globals too
};

// ---------------------------------------------------------------------------
// The interface.
// ---------------------------------------------------------------------------
class PagingStrategy {
 public:
  virtual ~PagingStrategy() = default;
  PagingStrategy(const PagingStrategy&) = delete;
  PagingStrategy& operator=(const PagingStrategy&) = delete;

  // "native", "shadow", "nested": the name reports and the CLI use.
  virtual std::string_view name() const noexcept = 0;

  // --- vCPUs (control thread, vCPU not running) ---
  // Starts serving `vcpu` (which must outlive the attachment): flushes its
  // soft TLB and marks it synced. Fails for an index >= max_vcpus or a vCPU
  // already attached.
  absl::Status AttachVcpu(VcpuMmu* vcpu);
  // Stops serving it (strategy state for it is dropped). No-op if unknown.
  void DetachVcpu(VcpuMmu* vcpu);

  // --- The miss path (vCPU thread) ---
  // Translates one access that missed the soft TLB, which must not cross a
  // page (the CPU splits such accesses first). On kFixed the strategy has
  // filled the soft TLB where that keeps later hits correct.
  [[nodiscard]] virtual TranslateResult Translate(VcpuMmu& vcpu, const AccessRequest& req,
                                                  TranslateOutcome* out) noexcept = 0;

  // --- Guest events (vCPU thread; the CPU updates VcpuMmu first) ---
  // MOV to CR3: vcpu.cr3 holds the new value. `no_flush` is bit 63 of the
  // source with CR4.PCIDE = 1 (SDM §4.10.4.1).
  virtual void OnCr3Write(VcpuMmu& vcpu, uint64_t old_cr3, bool no_flush) noexcept = 0;
  // A write to CR0, CR4, EFER or PKRU that changed vcpu.paging or vcpu.mode.
  virtual void OnModeChange(VcpuMmu& vcpu, bool old_paging, const PagingMode& old_mode) noexcept = 0;
  // INVLPG gva, or INVPCID type 0 (individual address).
  virtual void OnInvlpg(VcpuMmu& vcpu, uint64_t gva) noexcept = 0;
  // INVPCID types 1-3 and other whole-TLB flushes.
  virtual void OnTlbFlush(VcpuMmu& vcpu, TlbFlush scope) noexcept = 0;

  // --- FrameTable invalidation (any thread; see the protocol above) ---
  // Drops the strategy's own state for [first, first + count) and posts a
  // soft-TLB flush to every attached vCPU. Returns the ticket to pass to
  // AllVcpusSynced. Forward vmm::InvalidationListener::InvalidateGfns here.
  uint64_t InvalidateGfns(base::Gfn first, uint64_t count, GfnChange change) noexcept;
  // True once every attached vCPU applied the flush of `ticket` or is quiescent.
  bool AllVcpusSynced(uint64_t ticket) const noexcept;
  // vCPU thread, between instructions (and from LeaveQuiescence): applies
  // posted flushes to this vCPU's soft TLB and acknowledges them. One
  // relaxed-cheap atomic load when nothing is pending.
  void SyncInvalidations(VcpuMmu& vcpu) noexcept;
  // vCPU thread: quiescent.store(false), then SyncInvalidations (this order
  // is what lets AllVcpusSynced skip quiescent vCPUs safely).
  void LeaveQuiescence(VcpuMmu& vcpu) noexcept;
  // vCPU thread: the vCPU stops using translations until LeaveQuiescence.
  static void EnterQuiescence(VcpuMmu& vcpu) noexcept {
    vcpu.quiescent.store(true, std::memory_order_seq_cst);
  }

  // --- Observability ---
  // Every counter, summed over vCPUs, named "<name>.<counter>".
  virtual base::CounterSnapshot Counters() const = 0;
  // Checks the strategy's cached state for `vcpu` against a fresh walk of
  // the current guest tables that writes nothing (vCPU thread, or the vCPU
  // paused). Meaningful where the guest has invalidated what it changed: a
  // stale entry the guest did not flush is architecturally allowed but is
  // reported here. Returns FailedPrecondition naming the first disagreement.
  virtual absl::Status Audit(VcpuMmu& vcpu) = 0;

  uint32_t max_vcpus() const noexcept { return max_vcpus_; }
  GuestPhysMemory& memory() const noexcept { return mem_; }
  // The current flush generation (tests, reports).
  uint64_t flush_generation() const noexcept {
    return flush_generation_.load(std::memory_order_acquire);
  }

 protected:
  PagingStrategy(GuestPhysMemory* mem, uint32_t max_vcpus);

  // The strategy-specific part of InvalidateGfns (its reverse map, counters),
  // called before the flush generation moves. Any thread, one at a time.
  virtual void DropGfns(base::Gfn first, uint64_t count, GfnChange change) noexcept = 0;
  // Posts a flush of every attached vCPU's whole soft TLB, applied at each
  // one's next SyncInvalidations (for a strategy whose own state changed
  // under other vCPUs, e.g. shadow write protection). Any thread.
  void RequestFlushAllVcpus() noexcept {
    flush_generation_.fetch_add(1, std::memory_order_seq_cst);
  }
  // Strategy hooks around attachment (control thread).
  virtual void OnAttach(VcpuMmu& /*vcpu*/) {}
  virtual void OnDetach(VcpuMmu& /*vcpu*/) {}

 private:
  GuestPhysMemory& mem_;
  const uint32_t max_vcpus_;
  std::atomic<uint64_t> flush_generation_{0};
  mutable std::mutex vcpus_mu_;            // guards vcpus_ (control plane)
  std::vector<VcpuMmu*> vcpus_;            // indexed by VcpuMmu::index
};

// ---------------------------------------------------------------------------
// Inline definitions of the shared protocol (header-only: mmu stays one
// library and the vmm-host adapter needs nothing else).
// ---------------------------------------------------------------------------

inline PagingStrategy::PagingStrategy(GuestPhysMemory* mem, uint32_t max_vcpus)
    : mem_(*mem), max_vcpus_(max_vcpus), vcpus_(max_vcpus, nullptr) {}

inline absl::Status PagingStrategy::AttachVcpu(VcpuMmu* vcpu) {
  if (vcpu == nullptr || vcpu->tlb == nullptr) {
    return absl::InvalidArgumentError("AttachVcpu: vCPU without a soft TLB");
  }
  {
    std::lock_guard<std::mutex> lock(vcpus_mu_);
    if (vcpu->index >= max_vcpus_) {
      return absl::InvalidArgumentError("AttachVcpu: vCPU index out of range");
    }
    if (vcpus_[vcpu->index] != nullptr) {
      return absl::AlreadyExistsError("AttachVcpu: vCPU index already attached");
    }
    vcpus_[vcpu->index] = vcpu;
  }
  vcpu->tlb->FlushAll();
  vcpu->synced_generation.store(flush_generation_.load(std::memory_order_seq_cst),
                                std::memory_order_release);
  vcpu->num_recent_fills = 0;
  OnAttach(*vcpu);
  return absl::OkStatus();
}

inline void PagingStrategy::DetachVcpu(VcpuMmu* vcpu) {
  if (vcpu == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(vcpus_mu_);
    if (vcpu->index >= max_vcpus_ || vcpus_[vcpu->index] != vcpu) return;
    vcpus_[vcpu->index] = nullptr;
  }
  OnDetach(*vcpu);
}

inline uint64_t PagingStrategy::InvalidateGfns(base::Gfn first, uint64_t count,
                                               GfnChange change) noexcept {
  DropGfns(first, count, change);
  // seq_cst pairs with LeaveQuiescence (store quiescent, then load this).
  return flush_generation_.fetch_add(1, std::memory_order_seq_cst) + 1;
}

inline bool PagingStrategy::AllVcpusSynced(uint64_t ticket) const noexcept {
  std::lock_guard<std::mutex> lock(vcpus_mu_);
  for (const VcpuMmu* v : vcpus_) {
    if (v == nullptr) continue;
    if (v->quiescent.load(std::memory_order_seq_cst)) continue;
    if (v->synced_generation.load(std::memory_order_acquire) < ticket) return false;
  }
  return true;
}

inline void PagingStrategy::SyncInvalidations(VcpuMmu& vcpu) noexcept {
  const uint64_t gen = flush_generation_.load(std::memory_order_seq_cst);
  if (gen == vcpu.synced_generation.load(std::memory_order_relaxed)) [[likely]] return;
  vcpu.tlb->FlushAll();
  vcpu.synced_generation.store(gen, std::memory_order_release);
}

inline void PagingStrategy::LeaveQuiescence(VcpuMmu& vcpu) noexcept {
  vcpu.quiescent.store(false, std::memory_order_seq_cst);
  SyncInvalidations(vcpu);
}

}  // namespace mmu

// FakeGuestPhysMemory: an mmu::GuestPhysMemory over an mmu::FlatMemory, for
// tests of paging strategies (cpu/native_strategy_test.cc and the shared
// conformance suite tests/strategy_conformance.h).
//
// Guest-physical page g is FlatMemory page g (so the reference walker can walk
// the same tables), with a per-gfn state that mimics FrameTable's:
//   kPrivate      present and writable
//   kShared       a read-only copy-on-write frame: HostPage(g, false) gives a
//                 separate buffer holding the same bytes, HostPage(g, true)
//                 gives nullptr; MakeAvailable(g, true) "breaks the share"
//                 (copies back, invalidates, becomes kPrivate)
//   kNotResident  RAM with nothing behind it (swapped, zero): HostPage gives
//                 nullptr; MakeAvailable makes it kPrivate
//   kMmio         not RAM: MakeAvailable says kNotRam
//   kBroken       RAM that cannot be backed: MakeAvailable says kFailed
// Gfns beyond the FlatMemory are not RAM either.
//
// Every backing change goes as FrameTable's do: BackingSeq() turns odd, the
// invalidation hook (set by the test; usually forwards to the strategy) is
// called, the state changes, BackingSeq() turns even.
//
// NoteAccess records accessed/dirty per gfn (Harvest reads and clears them).
//
// Thread safety: none; single-threaded tests.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "base/addr.h"
#include "base/check.h"
#include "mmu/paging_strategy.h"
#include "mmu/phys_memory.h"

namespace mmu::testing {

class FakeGuestPhysMemory final : public GuestPhysMemory {
 public:
  enum class State : uint8_t { kPrivate, kShared, kNotResident, kMmio, kBroken };
  using Hook = std::function<void(uint64_t first_gfn, uint64_t count, GfnChange change)>;

  // `flat` must outlive this object; every page of it starts kPrivate.
  explicit FakeGuestPhysMemory(FlatMemory& flat)
      : flat_(flat),
        num_gfns_(flat.size_bytes() >> base::kPageShift),
        state_(num_gfns_, State::kPrivate),
        accessed_(num_gfns_, false),
        dirty_(num_gfns_, false) {}

  // Called before every backing change (the FrameTable listeners).
  void set_invalidation_hook(Hook hook) { hook_ = std::move(hook); }
  // Called at every HostPage call: lets a test play a concurrent change.
  void set_host_page_hook(std::function<void()> hook) { on_host_page_ = std::move(hook); }
  // Called once, at the next BackingSeq call, after it read the counter: lets
  // a test start a change just after a strategy sampled the counter.
  void set_backing_seq_hook(std::function<void()> hook) { on_backing_seq_ = std::move(hook); }

  // --- GuestPhysMemory ---
  uint8_t* HostPage(uint64_t gfn, bool for_write) noexcept override {
    ++host_page_calls_;
    if (on_host_page_) on_host_page_();
    if (gfn >= num_gfns_) return nullptr;  // bound check: not RAM
    switch (state_[gfn]) {
      case State::kPrivate:
        return FlatPage(gfn);
      case State::kShared:
        return for_write ? nullptr : shared_.at(gfn).get();
      default:
        return nullptr;
    }
  }

  BackingStatus MakeAvailable(uint64_t gfn, bool for_write) noexcept override {
    ++make_available_calls_;
    if (gfn >= num_gfns_) return BackingStatus::kNotRam;
    switch (state_[gfn]) {
      case State::kMmio:
        return BackingStatus::kNotRam;
      case State::kBroken:
        return BackingStatus::kFailed;
      case State::kNotResident:
        Change(gfn, GfnChange::kBacking, State::kPrivate);
        return BackingStatus::kReady;
      case State::kShared:
        if (for_write) BreakShare(gfn);
        return BackingStatus::kReady;
      case State::kPrivate:
        return BackingStatus::kReady;
    }
    return BackingStatus::kFailed;
  }

  void NoteAccess(uint64_t gfn, bool write) noexcept override {
    if (gfn >= num_gfns_) return;
    accessed_[gfn] = true;
    if (write) dirty_[gfn] = true;
  }

  // Returns the counter as it was when called; a one-shot hook (below) runs
  // after the value is read, as a change starting on another thread would.
  uint64_t BackingSeq() const noexcept override {
    const uint64_t seq = seq_;
    if (on_backing_seq_) {
      const std::function<void()> hook = std::move(on_backing_seq_);
      on_backing_seq_ = nullptr;
      hook();
    }
    return seq;
  }

  // --- Test controls (the FrameTable verbs, in miniature) ---
  // Marks a gfn without invalidation: for setting up before any vCPU runs.
  void SetStateQuietly(uint64_t gfn, State state) {
    CHECK_LT(gfn, num_gfns_);
    if (state == State::kShared) MakeSharedCopy(gfn);
    state_[gfn] = state;
  }
  // Present -> Shared, with invalidation (kWriteProtect), like ShareReadOnly.
  void Share(uint64_t gfn) {
    CHECK_LT(gfn, num_gfns_);
    if (state_[gfn] != State::kPrivate) return;
    BeginChange();
    if (hook_) hook_(gfn, 1, GfnChange::kWriteProtect);
    MakeSharedCopy(gfn);
    state_[gfn] = State::kShared;
    EndChange();
  }
  // Shared -> Present (copy-on-write break), with invalidation.
  void BreakShare(uint64_t gfn) {
    CHECK_LT(gfn, num_gfns_);
    if (state_[gfn] != State::kShared) return;
    BeginChange();
    if (hook_) hook_(gfn, 1, GfnChange::kBacking);
    std::memcpy(FlatPage(gfn), shared_.at(gfn).get(), base::kPageSize);
    shared_.erase(gfn);
    state_[gfn] = State::kPrivate;
    ++share_breaks_;
    EndChange();
  }
  // Any state -> `to`, with invalidation (Discard, Evict, Restore...). The
  // contents in FlatMemory are kept, so the reference walker still sees them.
  void Change(uint64_t gfn, GfnChange change, State to) {
    StartChange(gfn, change);
    FinishChange(gfn, to);
  }
  // Change() in two halves, as another thread's verb is seen by a vCPU
  // between them: the counter is odd and the listeners have run, but the
  // gfn still has its old state (and frame).
  void StartChange(uint64_t gfn, GfnChange change) {
    CHECK_LT(gfn, num_gfns_);
    BeginChange();
    if (hook_) hook_(gfn, 1, change);
  }
  void FinishChange(uint64_t gfn, State to) {
    CHECK_LT(gfn, num_gfns_);
    CHECK(seq_ & 1) << "FinishChange without StartChange";
    if (state_[gfn] == State::kShared) {
      std::memcpy(FlatPage(gfn), shared_.at(gfn).get(), base::kPageSize);
      shared_.erase(gfn);
    }
    if (to == State::kShared) MakeSharedCopy(gfn);
    state_[gfn] = to;
    EndChange();
  }
  // Reads and clears the A/D bits of one gfn, then invalidates (kHarvest).
  // Returns bit 0 accessed, bit 1 dirty.
  uint8_t Harvest(uint64_t gfn) {
    CHECK_LT(gfn, num_gfns_);
    const uint8_t bits = static_cast<uint8_t>((accessed_[gfn] ? 1 : 0) | (dirty_[gfn] ? 2 : 0));
    accessed_[gfn] = dirty_[gfn] = false;
    BeginChange();
    if (hook_) hook_(gfn, 1, GfnChange::kHarvest);
    EndChange();
    return bits;
  }
  // A guest store of 8 bytes at `gpa` (guest page-table edits): breaks a
  // share first, as the CPU's write would.
  void GuestWrite64(uint64_t gpa, uint64_t value) {
    const uint64_t gfn = gpa >> base::kPageShift;
    CHECK_LT(gfn, num_gfns_);
    if (state_[gfn] == State::kShared) BreakShare(gfn);
    flat_.Write64(gpa, value);
  }
  // Holds BackingSeq odd (a change in progress on another thread) or ends it.
  void BeginChange() { ++seq_; }
  void EndChange() { ++seq_; }

  State state(uint64_t gfn) const { return gfn < num_gfns_ ? state_[gfn] : State::kMmio; }
  bool accessed(uint64_t gfn) const { return accessed_.at(gfn); }
  bool dirty(uint64_t gfn) const { return dirty_.at(gfn); }
  uint64_t num_gfns() const { return num_gfns_; }
  uint8_t* FlatPage(uint64_t gfn) {
    return reinterpret_cast<uint8_t*>(flat_.PageAt(gfn << base::kPageShift));
  }
  FlatMemory& flat() { return flat_; }
  uint64_t make_available_calls() const { return make_available_calls_; }
  uint64_t host_page_calls() const { return host_page_calls_; }
  uint64_t share_breaks() const { return share_breaks_; }

 private:
  struct FreeAligned {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  void MakeSharedCopy(uint64_t gfn) {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(base::kPageSize, base::kPageSize));
    CHECK(p != nullptr);
    std::memcpy(p, FlatPage(gfn), base::kPageSize);
    shared_[gfn] = std::unique_ptr<uint8_t, FreeAligned>(p);
  }

  FlatMemory& flat_;
  const uint64_t num_gfns_;
  std::vector<State> state_;
  std::vector<bool> accessed_;
  std::vector<bool> dirty_;
  std::map<uint64_t, std::unique_ptr<uint8_t, FreeAligned>> shared_;
  Hook hook_;
  std::function<void()> on_host_page_;
  mutable std::function<void()> on_backing_seq_;
  uint64_t seq_ = 0;
  uint64_t make_available_calls_ = 0;
  uint64_t host_page_calls_ = 0;
  uint64_t share_breaks_ = 0;
};

}  // namespace mmu::testing

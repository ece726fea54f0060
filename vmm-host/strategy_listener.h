// StrategyInvalidationListener: connects a FrameTable to the VM's paging
// strategy (the soft backend's soft TLBs).
//
// FrameTable calls its listeners before it changes what backs a gfn, and a
// listener must not return while any translation of those gfns may still be
// used (frame_table.h). This adapter is the vmm-host side of the protocol in
// mmu/paging_strategy.h ("Cross-thread invalidation protocol"):
//   1. ticket = strategy->InvalidateGfns(first, count, change), with
//        kShare   -> GfnChange::kWriteProtect
//        kHarvest -> GfnChange::kHarvest
//        others   -> GfnChange::kBacking;
//   2. until strategy->AllVcpusSynced(ticket): call `kick` (supplied by the
//      machine: it knocks every vCPU thread out of its run loop so that it
//      calls SyncInvalidations between instructions), spin briefly, then
//      yield; kick again every kKickEveryRounds rounds of yielding.
// The wait has no deadline: returning early would let a vCPU use a frame
// after its release. Each round is bounded (kSpins pause loops, one yield),
// and a wait that takes longer than kSlowWait is logged once per call.
//
// Thread safety: InvalidateGfns runs on the verb's thread (a control or
// policy thread, or a vCPU thread inside MakeAvailable, whose vCPU is then
// quiescent and so counts as synced), with the FrameTable mutex held, one
// call at a time. It never touches a soft TLB itself: the vCPU threads sync
// themselves. `kick` is called from that thread and must be safe to call
// from any thread at any time (an eventfd write, a signal, or nothing for
// vCPU threads that poll SyncInvalidations anyway). The strategy and the
// listener must outlive the listener's registration with the FrameTable.
#pragma once

#include <cstdint>
#include <functional>

#include "base/addr.h"
#include "base/counters.h"
#include "mmu/paging_strategy.h"
#include "vmm-host/frame_table.h"

namespace vmm {

#define VMM_STRATEGY_LISTENER_COUNTERS(X)                              \
  X(Invalidations, invalidations) /* InvalidateGfns calls forwarded */ \
  X(Waits, waits)                 /* calls that had to wait for vCPUs */ \
  X(Kicks, kicks)                                                      \
  X(Yields, yields)                                                    \
  X(SlowWaits, slow_waits)        /* waits longer than kSlowWait */
BASE_DEFINE_COUNTERS(StrategyListenerCounters, VMM_STRATEGY_LISTENER_COUNTERS);

class StrategyInvalidationListener final : public InvalidationListener {
 public:
  // Busy-wait iterations between two AllVcpusSynced checks before a yield.
  static constexpr int kSpins = 64;
  // Rounds of yielding between two kicks (a vCPU may miss a kick that lands
  // just before it enters its run loop).
  static constexpr int kKickEveryRounds = 256;
  // A wait longer than this (ms) is logged (once per call) and counted.
  static constexpr int kSlowWaitMs = 1000;

  // `strategy` must outlive this object; `kick` may be empty (vCPU threads
  // that sync on their own, tests).
  StrategyInvalidationListener(mmu::PagingStrategy* strategy, std::function<void()> kick);

  void InvalidateGfns(base::Gfn first, uint64_t count, InvalidationReason reason) override;

  static mmu::GfnChange ToGfnChange(InvalidationReason reason) noexcept;

  // Written on the verb thread (under the FrameTable mutex); read anywhere.
  const StrategyListenerCounters& counters() const { return counters_; }

 private:
  mmu::PagingStrategy* const strategy_;
  const std::function<void()> kick_;
  StrategyListenerCounters counters_;
};

}  // namespace vmm

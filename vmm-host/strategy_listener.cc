#include "vmm-host/strategy_listener.h"

#include <chrono>
#include <thread>
#include <utility>

#include "base/check.h"
#include "base/log.h"

namespace vmm {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

StrategyInvalidationListener::StrategyInvalidationListener(mmu::PagingStrategy* strategy,
                                                           std::function<void()> kick)
    : strategy_(strategy), kick_(std::move(kick)) {
  CHECK(strategy_ != nullptr);
}

mmu::GfnChange StrategyInvalidationListener::ToGfnChange(InvalidationReason reason) noexcept {
  switch (reason) {
    case InvalidationReason::kShare: return mmu::GfnChange::kWriteProtect;
    case InvalidationReason::kHarvest: return mmu::GfnChange::kHarvest;
    case InvalidationReason::kPopulate:
    case InvalidationReason::kDiscard:
    case InvalidationReason::kBreakShare:
    case InvalidationReason::kEvict:
    case InvalidationReason::kRestore: return mmu::GfnChange::kBacking;
  }
  return mmu::GfnChange::kBacking;
}

void StrategyInvalidationListener::InvalidateGfns(base::Gfn first, uint64_t count,
                                                  InvalidationReason reason) {
  counters_.Inc(StrategyListenerCounters::kInvalidations);
  const uint64_t ticket = strategy_->InvalidateGfns(first, count, ToGfnChange(reason));
  if (strategy_->AllVcpusSynced(ticket)) return;

  counters_.Inc(StrategyListenerCounters::kWaits);
  const auto start = std::chrono::steady_clock::now();
  bool logged = false;
  for (uint64_t round = 0;; ++round) {
    if (round % kKickEveryRounds == 0 && kick_) {
      counters_.Inc(StrategyListenerCounters::kKicks);
      kick_();
    }
    for (int i = 0; i < kSpins; ++i) {
      if (strategy_->AllVcpusSynced(ticket)) return;
      CpuRelax();
    }
    counters_.Inc(StrategyListenerCounters::kYields);
    std::this_thread::yield();
    if (!logged && round % kKickEveryRounds == kKickEveryRounds - 1 &&
        std::chrono::steady_clock::now() - start > std::chrono::milliseconds(kSlowWaitMs)) {
      logged = true;
      counters_.Inc(StrategyListenerCounters::kSlowWaits);
      LOG(WARNING) << "invalidation of " << count << " gfns (" << InvalidationReasonName(reason)
                   << ") still waits for the vCPUs of strategy '" << strategy_->name()
                   << "' after " << kSlowWaitMs << " ms";
    }
  }
}

}  // namespace vmm

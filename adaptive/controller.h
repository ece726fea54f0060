// The `adaptive` paging mode's decision: shadow or nested, chosen per
// interval of guest instructions from what the current strategy's counters
// show (docs/paging-strategies.md, "The adaptive mode").
//
// The signals are the ones the literature uses (Wang et al., "Selective
// Hardware/Software Memory Virtualization", VEE 2011; Gandhi et al., "Agile
// Paging", ISCA 2016): how often the guest changes its page tables against
// how often it misses the TLB. Shadow paging pays for every table change
// (an exit, an emulated write or a resync) and walks 1-D; nested paging pays
// nothing for table changes and walks 2-D. Each interval the controller
//   - prices the interval's MMU events under the current strategy with the
//     run's cost table (costmodel::Compute on the deltas: TLB, PWC, walk
//     references, the strategy's own exits);
//   - estimates what the same interval would have cost under the other:
//       on shadow -> nested: the observed walks (STLB misses) priced as 2-D
//         walks: the shadow walk's cost plus the EPT share of a walk last
//         measured under nested (a prior before any nested interval);
//       on nested -> shadow: the guest-dimension share of the walks, plus
//         the table-change traffic shadow would trap, from what nested sees
//         without trapping: guest page faults (each one a reinjected fault,
//         a table write and a shadow fill under shadow), INVLPGs (a changed
//         PTE, then an exit), CR3 writes and guest TLB flushes (an exit
//         each). That proxy is scaled by a correction learnt on shadow
//         intervals (actual trapped cost / the proxy of the same interval).
//   - switches when the other estimate is cheaper by `margin` for `streak`
//     consecutive intervals, the savings those intervals show add up to at
//     least the cost of switching (below), and the current strategy has run
//     at least `min_dwell` intervals;
//   - or at once, streak and dwell waived, when the savings so far are
//     `urgent_factor` times the cost of switching: the decision is not
//     close (page-table churn that starts while on shadow costs tens of
//     times what nested would; every interval spent on a streak is lost).
//     Not in the first interval after a switch, which pays the rebuild.
// A switch drops the strategy's tables and the new one rebuilds them: under
// shadow one shadow fault per page in use, under nested one EPT violation
// per 2 MiB (or 4 KiB) range. That cost is a prior until a switch measured
// it: the cost of the first interval after a switch beyond what its events
// explain (shadow: trapped cost beyond the corrected proxy; nested: its EPT
// violations). The measure is only ever raised from the prior (a rebuild
// that spans several intervals is under-counted by the first one). Going
// to shadow costs at least a shadow fault per page that nested mapped
// since it started (4 KiB EPT installs, 512 per 2 MiB one): a bound on the
// working set shadow must fault in again, known before any switch, which
// keeps a short TLB-miss phase over much memory on nested.
//
// Thread safety: none; one controller per VM, used by its vCPU thread.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "costmodel/cost_model.h"

namespace adaptive {

enum class Mode : uint8_t { kShadow, kNested };
std::string_view ModeName(Mode mode);  // "shadow", "nested"

struct Options {
  // Guest instructions (all the VM's vCPUs) per interval.
  uint64_t interval = 4'000'000;
  // The other strategy must be estimated cheaper than the current one by
  // this fraction of the current one's MMU cost (0.25: at most 75% of it).
  double margin = 0.25;
  // ... for this many consecutive intervals.
  uint32_t streak = 3;
  // Intervals a strategy runs at least before the next switch (the first of
  // them pays the rebuild of its tables).
  uint32_t min_dwell = 8;
  // Savings this many times the cost of switching switch at once (streak and
  // dwell waived). At least 1.
  double urgent_factor = 10;
  // The EPT share of one 2-D walk, in cycles, before any nested interval
  // measured it: a walk whose EPT lookups hit the nested TLB (5 translated
  // gpas) and one EPT leaf reference (a 4 KiB-mapped range), with the
  // default table 5 * 1 + 12. Adaptive starts on nested, so the measured
  // value replaces it before it is ever used in a run.
  double prior_ept_cycles_per_walk = 17;
  // The cost of a switch (the new strategy's rebuild) before one measured
  // it. To shadow: 2300 shadow faults at the default table's 3500 cycles, a
  // working set of 9 MiB rebuilt; to nested: 100 EPT violations.
  double prior_switch_to_shadow_cycles = 8'000'000;
  double prior_switch_to_nested_cycles = 220'000;
  // Price a switch to shadow at least at a shadow fault per page nested has
  // mapped (above). Off only to test switching itself.
  bool rebuild_by_working_set = true;
  // Intervals with fewer MMU cycles than this, under both estimates, are
  // counted but decide nothing (an idle guest's noise).
  double min_interval_cycles = 10'000;

  // Errors name the option: "adaptive_margin: must be in [0, 1)".
  absl::Status Validate() const;
};

// The last interval's figures (for tests, logs and the bench).
struct Estimate {
  double current = 0;  // MMU cycles of the interval under the current strategy
  double other = 0;    // the estimate under the other one
  bool decided = false;  // above min_interval_cycles: it counted for the streak
};

class Controller {
 public:
  // `costs` must outlive the controller.
  Controller(const Options& options, const costmodel::CostTable* costs, Mode start = Mode::kNested);

  // One interval: `deltas` are the current strategy's counters (their report
  // names, `nested.hw.tlb_misses`, `shadow.pf_guest`, ...) over it. Returns
  // the mode to run next; a change is a decision to switch, and the
  // controller's current mode is the new one from then on.
  Mode OnInterval(const costmodel::CostInputs& deltas);

  // The strategy was changed from outside (a manual switch): follow it, and
  // start its dwell again.
  void SetCurrent(Mode mode);

  Mode current() const { return current_; }
  const Estimate& last() const { return last_; }
  uint64_t intervals() const { return intervals_; }
  uint64_t switches() const { return to_shadow_ + to_nested_; }
  uint64_t to_shadow() const { return to_shadow_; }
  uint64_t to_nested() const { return to_nested_; }
  // The learnt figures (tests, docs).
  double ept_cycles_per_walk() const { return ept_per_walk_; }
  double shadow_correction() const { return correction_; }
  // What switching to `to` is expected to cost now (the learnt or prior
  // rebuild; to shadow, at least the pages nested has mapped).
  double switch_cost(Mode to) const;
  // Pages nested has mapped since it started (the working-set bound).
  double nested_mapped_pages() const { return nested_pages_; }

 private:
  Estimate OnNested(const costmodel::CostInputs& d);
  Estimate OnShadow(const costmodel::CostInputs& d);
  // The cycles shadow would trap for `faults` guest faults, `invlpg`
  // INVLPGs, `cr3` CR3 writes and `flushes` guest TLB flushes, before the
  // correction.
  double UpdateProxy(uint64_t faults, uint64_t invlpg, uint64_t cr3, uint64_t flushes) const;

  Options options_;
  const costmodel::CostTable* costs_;
  Mode current_;
  uint32_t dwell_ = 0;   // intervals on the current mode
  uint32_t streak_ = 0;  // consecutive intervals that favoured the other
  uint64_t intervals_ = 0, to_shadow_ = 0, to_nested_ = 0;
  double ept_per_walk_;
  bool ept_measured_ = false;
  double correction_ = 1;
  double switch_cost_[2];  // by Mode
  double credit_ = 0;      // the savings of the current streak
  double nested_pages_ = 0;  // pages nested mapped since it started
  Estimate last_;
};

}  // namespace adaptive

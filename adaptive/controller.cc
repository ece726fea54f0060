#include "adaptive/controller.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace adaptive {
namespace {

// A learnt figure moves halfway to each new sample: one odd interval (a
// rebuild, a burst) does not decide alone, and a phase change shows within
// a few intervals.
constexpr double kLearnRate = 0.5;
// Too few walks or trapped events say nothing about their mean cost.
constexpr uint64_t kMinSamples = 64;
// The correction stays within these bounds: a proxy off by more than that
// is a workload the proxy does not describe, and the hysteresis is what
// protects the run then.
constexpr double kMinCorrection = 0.25;
constexpr double kMaxCorrection = 16;

// The MMU part of a priced interval: everything but the instructions and the
// machine's exits, which are the same under every strategy.
double MmuCycles(const costmodel::ModelledCycles& m) {
  double out = 0;
  for (const auto& [name, cycles] : m.classes) {
    if (name == "instructions" || name.rfind("exits_", 0) == 0) continue;
    out += static_cast<double>(cycles);
  }
  return out;
}

}  // namespace

std::string_view ModeName(Mode mode) { return mode == Mode::kShadow ? "shadow" : "nested"; }

absl::Status Options::Validate() const {
  if (interval == 0) return absl::InvalidArgumentError("adaptive_interval: must be a positive number of guest instructions");
  if (!(margin >= 0 && margin < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adaptive_margin: must be in [0, 1) (the fraction by which the other strategy must be "
        "cheaper), got ", margin));
  }
  if (streak == 0) return absl::InvalidArgumentError("adaptive_streak: must be at least 1 interval");
  if (!(urgent_factor >= 1) || !std::isfinite(urgent_factor)) {
    return absl::InvalidArgumentError(absl::StrCat("adaptive_urgent_factor: must be a finite number >= 1, got ",
                                                   urgent_factor));
  }
  if (!(prior_ept_cycles_per_walk >= 0) || !std::isfinite(prior_ept_cycles_per_walk)) {
    return absl::InvalidArgumentError("adaptive prior_ept_cycles_per_walk: must be a finite number >= 0");
  }
  if (!(prior_switch_to_shadow_cycles >= 0) || !std::isfinite(prior_switch_to_shadow_cycles) ||
      !(prior_switch_to_nested_cycles >= 0) || !std::isfinite(prior_switch_to_nested_cycles)) {
    return absl::InvalidArgumentError("adaptive prior switch costs: must be finite numbers >= 0");
  }
  if (!(min_interval_cycles >= 0) || !std::isfinite(min_interval_cycles)) {
    return absl::InvalidArgumentError("adaptive min_interval_cycles: must be a finite number >= 0");
  }
  return absl::OkStatus();
}

Controller::Controller(const Options& options, const costmodel::CostTable* costs, Mode start)
    : options_(options),
      costs_(costs),
      current_(start),
      ept_per_walk_(options.prior_ept_cycles_per_walk),
      switch_cost_{options.prior_switch_to_shadow_cycles, options.prior_switch_to_nested_cycles} {}

void Controller::SetCurrent(Mode mode) {
  current_ = mode;
  dwell_ = 0;
  streak_ = 0;
  credit_ = 0;
  nested_pages_ = 0;  // a new nested period starts with empty EPT tables
}

double Controller::switch_cost(Mode to) const {
  const double learnt = switch_cost_[static_cast<int>(to)];
  if (to != Mode::kShadow || !options_.rebuild_by_working_set) return learnt;
  return std::max(learnt, nested_pages_ * costs_->cycles("shadow_page_fault"));
}

double Controller::UpdateProxy(uint64_t faults, uint64_t invlpg, uint64_t cr3, uint64_t flushes) const {
  const costmodel::CostTable& t = *costs_;
  // A guest page fault under shadow: the #PF exits and is reinjected, the
  // guest writes the PTE that fixes it (a write to a shadowed table: emulated,
  // or an unsync and a later resync), and the retried access takes a shadow
  // fault that builds the spte.
  const double per_fault = t.cycles("shadow_guest_fault") + t.cycles("emulated_pte_write") +
                           t.cycles("shadow_page_fault");
  // An INVLPG follows a changed PTE: the change is trapped, then the INVLPG exits.
  const double per_invlpg = t.cycles("shadow_invlpg") + t.cycles("emulated_pte_write");
  return static_cast<double>(faults) * per_fault + static_cast<double>(invlpg) * per_invlpg +
         static_cast<double>(cr3) * t.cycles("shadow_cr3_write") +
         static_cast<double>(flushes) * t.cycles("shadow_tlb_flush");
}

Estimate Controller::OnNested(const costmodel::CostInputs& d) {
  const costmodel::CostTable& t = *costs_;
  const costmodel::ModelledCycles m = costmodel::Compute(t, d);
  Estimate e;
  e.current = MmuCycles(m);
  // The EPT dimension of the walks, and the EPT violations: what shadow
  // would not pay.
  const uint64_t ept_pwc_hits = d.Get("nested.hw.ept_pwc_hits_l2") + d.Get("nested.hw.ept_pwc_hits_l3") +
                                d.Get("nested.hw.ept_pwc_hits_l4");
  const double ept_walk = static_cast<double>(m.Class("walk_refs_ept")) +
                          static_cast<double>(d.Get("nested.hw.ntlb_hits")) * t.cycles("nested_tlb_hit") +
                          static_cast<double>(ept_pwc_hits) * t.cycles("pwc_hit");
  const double violations = static_cast<double>(m.Class("ept_violations"));
  nested_pages_ += static_cast<double>(d.Get("nested.ept_installs")) +
                   512.0 * static_cast<double>(d.Get("nested.ept_large_installs"));
  const uint64_t walks = d.Get("nested.hw.tlb_misses");
  if (walks >= kMinSamples) {
    const double sample = ept_walk / static_cast<double>(walks);
    ept_per_walk_ = ept_measured_ ? ept_per_walk_ + kLearnRate * (sample - ept_per_walk_) : sample;
    ept_measured_ = true;
  }
  if (dwell_ == 0) {
    // The first interval on nested: its EPT violations are the rebuild.
    double& cost = switch_cost_[static_cast<int>(Mode::kNested)];
    cost = std::max(cost, violations);
  }
  const double guest_walk = std::max(0.0, e.current - ept_walk - violations);
  const double trapped = UpdateProxy(d.Get("nested.guest_faults"), d.Get("nested.invlpg"),
                                     d.Get("nested.cr3_writes"), d.Get("nested.tlb_flush"));
  e.other = guest_walk + correction_ * trapped;
  return e;
}

Estimate Controller::OnShadow(const costmodel::CostInputs& d) {
  const costmodel::CostTable& t = *costs_;
  const costmodel::ModelledCycles m = costmodel::Compute(t, d);
  Estimate e;
  e.current = MmuCycles(m);
  // The 1-D walks of the shadow tables; the rest is what shadow traps.
  const double walk = static_cast<double>(m.Class("tlb") + m.Class("pwc") + m.Class("walk_refs_guest") +
                                          m.Class("walk_refs_ept"));
  const double trapped = std::max(0.0, e.current - walk);
  const double proxy = UpdateProxy(d.Get("shadow.pf_guest"), d.Get("shadow.invlpg"),
                                   d.Get("shadow.cr3_writes"), d.Get("shadow.tlb_flush"));
  // Learn how far the nested-side proxy is from what shadow really traps,
  // from the same guest-visible events, except in the first interval on
  // shadow: that one pays the rebuild of the shadow tables.
  const uint64_t events = d.Get("shadow.pf_guest") + d.Get("shadow.invlpg") + d.Get("shadow.cr3_writes") +
                          d.Get("shadow.tlb_flush");
  if (dwell_ > 0 && events >= kMinSamples && proxy > 0) {
    const double sample = std::clamp(trapped / proxy, kMinCorrection, kMaxCorrection);
    correction_ += kLearnRate * (sample - correction_);
  }
  if (dwell_ == 0) {
    // The first interval on shadow: what its guest-visible events do not
    // explain is the shadow tables' rebuild.
    double& cost = switch_cost_[static_cast<int>(Mode::kShadow)];
    cost = std::max(cost, trapped - correction_ * proxy);
  }
  // The same walks as 2-D walks: each STLB miss also translates its guest
  // tables' and its data's gpas.
  e.other = walk + static_cast<double>(d.Get("shadow.hw.tlb_misses")) * ept_per_walk_;
  return e;
}

Mode Controller::OnInterval(const costmodel::CostInputs& deltas) {
  ++intervals_;
  last_ = current_ == Mode::kNested ? OnNested(deltas) : OnShadow(deltas);
  ++dwell_;
  last_.decided = std::max(last_.current, last_.other) >= options_.min_interval_cycles;
  if (last_.decided) {
    if (last_.other < last_.current * (1 - options_.margin)) {
      ++streak_;
      credit_ += last_.current - last_.other;
    } else {
      streak_ = 0;
      credit_ = 0;
    }
  }
  const Mode next = current_ == Mode::kNested ? Mode::kShadow : Mode::kNested;
  const double cost = switch_cost(next);
  const bool settled = streak_ >= options_.streak && dwell_ >= options_.min_dwell && credit_ >= cost;
  const bool urgent = streak_ > 0 && dwell_ > 1 && credit_ >= options_.urgent_factor * cost;
  if (settled || urgent) {
    ++(next == Mode::kShadow ? to_shadow_ : to_nested_);
    SetCurrent(next);
  }
  return current_;
}

}  // namespace adaptive

// The cost model: per-event costs in cycles (a documented table) turned into
// modelled cycles per VM from the counters a soft run keeps
// (docs/cost-model.md).
//
//   CostTable     the table: every known event, its cycles, unit and source.
//                 Default() is costmodel/default_costs.json, compiled in;
//                 WithOverride applies a run's override file on top.
//   CostInputs    the counters of one VM, by their report names.
//   ModelledCycles  the total and its classes, computed by Compute().
//
// This library sits above base and below vmm-host: it knows counters only
// by name (`<strategy>.hw.*`, `shadow.*`, `nested.*`, `cpu.*`, exits), so it
// needs none of the strategies. A run that switched strategies has several
// strategies' counters; each is priced, and the sums are the run's.
//
// Errors: loading is control plane and returns absl::Status naming the key
// ("costs.tlb_hit: negative cycles"). Compute never fails: a counter that
// is absent counts zero.
//
// Thread safety: plain values; CostTable::Default() is built once, thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/counters.h"

namespace costmodel {

// One entry of the table.
struct Cost {
  double cycles = 0;
  std::string unit;
  std::string source;
  bool overridden = false;  // set by WithOverride
};

class CostTable {
 public:
  // Every key the model knows, in table order.
  static const std::vector<std::string_view>& Keys();

  // The compiled-in default table (costmodel/default_costs.json).
  // CHECK-fails if that file is invalid (a build bug; a unit test loads it).
  static const CostTable& Default();

  // Parses a full table: {"schema": "memvmm.costs/1", "costs": {KEY: {"cycles",
  // "unit", "source"}, ...}}. Every known key must be there, with cycles >= 0
  // and a non-empty unit and source; an unknown key is an error.
  static absl::StatusOr<CostTable> Parse(std::string_view json_text);

  // This table with some or all entries replaced by an override:
  // {"costs": {KEY: CYCLES or {"cycles": CYCLES, "source": "..."}}}, or the
  // bare object {KEY: ...}. Unknown keys, non-numbers and negative values
  // are errors naming the key. `origin` names the override in reports.
  absl::StatusOr<CostTable> WithOverride(std::string_view json_text, std::string origin) const;
  // The same from a file.
  absl::StatusOr<CostTable> WithOverrideFile(const std::string& path) const;

  double cycles(std::string_view key) const;
  const Cost& at(std::string_view key) const;
  // "default", or "default + <origin>" after an override.
  const std::string& origin() const { return origin_; }

 private:
  std::map<std::string, Cost, std::less<>> costs_;
  std::string origin_ = "default";
};

// One VM's counters, by report name: the strategy's (`native.hw.tlb_hits`,
// `shadow.pf_fixed`, ...; soft_vm_stats), the vCPU's (`cpu.instructions`;
// soft_vcpu_stats) and the machine's exits (`exits.io`, ...).
struct CostInputs {
  // The strategy the run started with ("native", "shadow", "nested" or
  // "adaptive"); informational. Compute prices every strategy's counters
  // found in `counters`, so a run that switched is priced by what each
  // strategy did while it ran.
  std::string strategy;
  std::map<std::string, uint64_t, std::less<>> counters;

  // Adds a snapshot, each name prefixed with `prefix` + "." when not empty.
  void Add(const base::CounterSnapshot& snapshot, std::string_view prefix = "");
  uint64_t Get(std::string_view name) const;
};

// Modelled cycles by class, in report order. Every class is rounded to a
// whole cycle, and total is their exact sum.
struct ModelledCycles {
  std::vector<std::pair<std::string, uint64_t>> classes;
  // The event counts behind each table key (for the report and the bench).
  std::vector<std::pair<std::string, uint64_t>> events;
  uint64_t total = 0;

  uint64_t Class(std::string_view name) const;
};

// The report's classes, in order.
inline constexpr std::string_view kClasses[] = {
    "instructions", "tlb",           "pwc",           "walk_refs_guest",
    "walk_refs_ept", "exits_io",     "exits_mmio",    "exits_hlt",
    "exits_interrupt", "exits_other", "shadow_page_faults", "shadow_cr3_writes",
    "shadow_invlpg", "shadow_tlb_flushes", "shadow_resyncs", "emulated_pte_writes",
    "ept_violations"};

// The strategies whose counters Compute prices (`<name>.hw.*`, `shadow.*`,
// `nested.*`).
inline constexpr std::string_view kStrategies[] = {"native", "shadow", "nested"};

ModelledCycles Compute(const CostTable& table, const CostInputs& inputs);

}  // namespace costmodel

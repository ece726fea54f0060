#include "costmodel/cost_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "nlohmann/json.hpp"

namespace costmodel {

// The compiled-in default table (costmodel/default_costs.json, embedded by
// the build: costmodel/CMakeLists.txt).
extern const char* const kDefaultCostsJson;

namespace {

using Json = nlohmann::json;

absl::Status KeyError(std::string_view key, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("costs.", std::string(key), ": ", std::string(what)));
}

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view what) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": expected a JSON object"));
  return j;
}

absl::StatusOr<double> Cycles(std::string_view key, const Json& v) {
  if (!v.is_number()) return KeyError(key, "cycles must be a number");
  const double c = v.get<double>();
  if (!std::isfinite(c)) return KeyError(key, "cycles must be finite");
  if (c < 0) return KeyError(key, "negative cycles");
  return c;
}

}  // namespace

const std::vector<std::string_view>& CostTable::Keys() {
  static const std::vector<std::string_view> kKeys = {
      "instruction",        "tlb_hit",          "tlb_miss",         "pwc_hit",
      "nested_tlb_hit",     "walk_ref_upper",   "walk_ref_leaf",    "exit_io",
      "exit_mmio",          "exit_hlt",         "exit_interrupt",   "exit_other",
      "shadow_page_fault",  "shadow_guest_fault", "shadow_cr3_write", "shadow_invlpg",
      "shadow_tlb_flush",   "shadow_resync_page", "emulated_pte_write", "ept_violation"};
  return kKeys;
}

const CostTable& CostTable::Default() {
  static const CostTable* table = [] {
    absl::StatusOr<CostTable> t = Parse(kDefaultCostsJson);
    CHECK(t.ok()) << "costmodel/default_costs.json: " << t.status().message();
    return new CostTable(*std::move(t));
  }();
  return *table;
}

absl::StatusOr<CostTable> CostTable::Parse(std::string_view json_text) {
  absl::StatusOr<Json> root = ParseJson(json_text, "cost table");
  if (!root.ok()) return root.status();
  for (const auto& [key, v] : root->items()) {
    if (key != "schema" && key != "note" && key != "costs") {
      return absl::InvalidArgumentError(absl::StrCat(key, ": unknown field"));
    }
  }
  if (!root->contains("schema") || (*root)["schema"] != "memvmm.costs/1") {
    return absl::InvalidArgumentError("schema: expected \"memvmm.costs/1\"");
  }
  if (!root->contains("costs") || !(*root)["costs"].is_object()) {
    return absl::InvalidArgumentError("costs: expected an object");
  }
  const Json& costs = (*root)["costs"];
  CostTable table;
  const auto& keys = Keys();
  for (const auto& [key, v] : costs.items()) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) return KeyError(key, "unknown key");
    if (!v.is_object()) return KeyError(key, "expected {\"cycles\", \"unit\", \"source\"}");
    for (const auto& [field, unused] : v.items()) {
      if (field != "cycles" && field != "unit" && field != "source") {
        return KeyError(key, absl::StrCat(field, ": unknown field"));
      }
    }
    if (!v.contains("cycles")) return KeyError(key, "missing cycles");
    absl::StatusOr<double> c = Cycles(key, v["cycles"]);
    if (!c.ok()) return c.status();
    Cost cost;
    cost.cycles = *c;
    if (!v.contains("unit") || !v["unit"].is_string() || v["unit"].get<std::string>().empty()) {
      return KeyError(key, "missing unit");
    }
    if (!v.contains("source") || !v["source"].is_string() || v["source"].get<std::string>().empty()) {
      return KeyError(key, "missing source (every cost cites where it comes from)");
    }
    cost.unit = v["unit"].get<std::string>();
    cost.source = v["source"].get<std::string>();
    table.costs_[key] = std::move(cost);
  }
  for (std::string_view key : keys) {
    if (!table.costs_.contains(key)) return KeyError(key, "missing key");
  }
  return table;
}

absl::StatusOr<CostTable> CostTable::WithOverride(std::string_view json_text,
                                                  std::string origin) const {
  absl::StatusOr<Json> root = ParseJson(json_text, origin);
  if (!root.ok()) return root.status();
  const Json* costs = &*root;
  if (root->contains("costs")) {
    for (const auto& [key, v] : root->items()) {
      if (key != "schema" && key != "note" && key != "costs") {
        return absl::InvalidArgumentError(absl::StrCat(origin, ": ", key, ": unknown field"));
      }
    }
    costs = &(*root)["costs"];
    if (!costs->is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": costs: expected an object"));
  }
  CostTable out = *this;
  for (const auto& [key, v] : costs->items()) {
    auto it = out.costs_.find(key);
    auto fail = [&](absl::Status s) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": ", s.message()));
    };
    if (it == out.costs_.end()) return fail(KeyError(key, "unknown key"));
    const Json* cycles = &v;
    if (v.is_object()) {
      for (const auto& [field, unused] : v.items()) {
        if (field != "cycles" && field != "unit" && field != "source") {
          return fail(KeyError(key, absl::StrCat(field, ": unknown field")));
        }
      }
      if (!v.contains("cycles")) return fail(KeyError(key, "missing cycles"));
      cycles = &v["cycles"];
      if (v.contains("source")) {
        if (!v["source"].is_string()) return fail(KeyError(key, "source must be a string"));
        it->second.source = v["source"].get<std::string>();
      }
      if (v.contains("unit")) {
        if (!v["unit"].is_string()) return fail(KeyError(key, "unit must be a string"));
        it->second.unit = v["unit"].get<std::string>();
      }
    }
    absl::StatusOr<double> c = Cycles(key, *cycles);
    if (!c.ok()) return fail(c.status());
    it->second.cycles = *c;
    it->second.overridden = true;
    if (!v.is_object() || !v.contains("source")) {
      it->second.source = absl::StrCat("override from ", origin);
    }
  }
  out.origin_ = absl::StrCat(origin_, " + ", origin);
  return out;
}

absl::StatusOr<CostTable> CostTable::WithOverrideFile(const std::string& path) const {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cost model ", path, ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  return WithOverride(text.str(), path);
}

double CostTable::cycles(std::string_view key) const { return at(key).cycles; }

const Cost& CostTable::at(std::string_view key) const {
  auto it = costs_.find(key);
  CHECK(it != costs_.end()) << "unknown cost key " << key;
  return it->second;
}

void CostInputs::Add(const base::CounterSnapshot& snapshot, std::string_view prefix) {
  for (const base::CounterValue& v : snapshot) {
    counters[prefix.empty() ? v.name : absl::StrCat(std::string(prefix), ".", v.name)] += v.value;
  }
}

uint64_t CostInputs::Get(std::string_view name) const {
  auto it = counters.find(name);
  return it == counters.end() ? 0 : it->second;
}

uint64_t ModelledCycles::Class(std::string_view name) const {
  for (const auto& [n, v] : classes) {
    if (n == name) return v;
  }
  return 0;
}

ModelledCycles Compute(const CostTable& table, const CostInputs& in) {
  // A run may have switched strategies (docs/paging-strategies.md): each
  // strategy's hardware-model counters count only the misses it served, and
  // the events are priced by the same keys whichever strategy took them, so
  // the run's cost is every strategy's counters priced and summed. The
  // strategy-specific exits below have their own names and add up the same way.
  auto hwc = [&](std::string_view name) {
    uint64_t n = 0;
    for (std::string_view s : kStrategies) n += in.Get(std::string(s) + ".hw." + std::string(name));
    return n;
  };
  ModelledCycles out;
  std::map<std::string, double, std::less<>> cls;
  for (std::string_view c : kClasses) cls[std::string(c)] = 0;
  auto charge = [&](std::string_view klass, std::string_view key, uint64_t count) {
    cls[std::string(klass)] += static_cast<double>(count) * table.cycles(key);
    bool found = false;
    for (auto& [k, n] : out.events) {
      if (k == key) {
        n += count;
        found = true;
      }
    }
    if (!found) out.events.emplace_back(std::string(key), count);
  };

  charge("instructions", "instruction", in.Get("cpu.instructions"));
  // The hardware model (mmu/hw_paging_model.h), whatever the strategy.
  charge("tlb", "tlb_hit", hwc("tlb_hits"));
  charge("tlb", "tlb_miss", hwc("tlb_misses"));
  uint64_t pwc_hits = hwc("pwc_hits_l2") + hwc("pwc_hits_l3") + hwc("pwc_hits_l4") +
                      hwc("pwc_hits_l5") + hwc("ept_pwc_hits_l2") + hwc("ept_pwc_hits_l3") +
                      hwc("ept_pwc_hits_l4");
  charge("pwc", "pwc_hit", pwc_hits);
  charge("pwc", "nested_tlb_hit", hwc("ntlb_hits"));
  charge("walk_refs_guest", "walk_ref_leaf", hwc("guest_refs_l1"));
  charge("walk_refs_guest", "walk_ref_upper",
         hwc("guest_refs_l2") + hwc("guest_refs_l3") + hwc("guest_refs_l4") + hwc("guest_refs_l5"));
  charge("walk_refs_ept", "walk_ref_leaf", hwc("ept_refs_l1"));
  charge("walk_refs_ept", "walk_ref_upper",
         hwc("ept_refs_l2") + hwc("ept_refs_l3") + hwc("ept_refs_l4"));
  // The machine's exits (every strategy takes them alike).
  charge("exits_io", "exit_io", in.Get("exits.io"));
  charge("exits_mmio", "exit_mmio", in.Get("exits.mmio"));
  charge("exits_hlt", "exit_hlt", in.Get("exits.hlt"));
  charge("exits_interrupt", "exit_interrupt", in.Get("cpu.interrupts"));
  charge("exits_other", "exit_other",
         in.Get("exits.shutdown") + in.Get("exits.system_event") + in.Get("exits.internal_error") +
             in.Get("exits.fail_entry") + in.Get("exits.unknown"));
  // Shadow paging's exits by reason.
  charge("shadow_page_faults", "shadow_page_fault",
         in.Get("shadow.pf_fixed") + in.Get("shadow.pf_spurious"));
  charge("shadow_page_faults", "shadow_guest_fault", in.Get("shadow.pf_guest"));
  charge("shadow_cr3_writes", "shadow_cr3_write", in.Get("shadow.cr3_writes"));
  charge("shadow_invlpg", "shadow_invlpg", in.Get("shadow.invlpg"));
  charge("shadow_tlb_flushes", "shadow_tlb_flush", in.Get("shadow.tlb_flush"));
  charge("shadow_resyncs", "shadow_resync_page", in.Get("shadow.mmu_resync"));
  charge("emulated_pte_writes", "emulated_pte_write", in.Get("shadow.emulated_writes"));
  // Nested paging's exits.
  charge("ept_violations", "ept_violation", in.Get("nested.ept_violation"));

  for (std::string_view c : kClasses) {
    const uint64_t v = static_cast<uint64_t>(std::llround(cls[std::string(c)]));
    out.classes.emplace_back(std::string(c), v);
    out.total += v;
  }
  return out;
}

}  // namespace costmodel

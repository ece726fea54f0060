// Unit tests of the cost table (loading, validation, overrides) and of the
// arithmetic that turns counters into modelled cycles.
#include "costmodel/cost_model.h"

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "base/check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace costmodel {
namespace {

using ::testing::HasSubstr;

std::string ReadDefaultFile() {
  std::ifstream in(COSTMODEL_DEFAULT_TABLE_PATH);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The default file with one edit applied to its JSON.
template <typename Edit>
std::string EditedDefault(Edit edit) {
  nlohmann::json j = nlohmann::json::parse(ReadDefaultFile());
  edit(j);
  return j.dump();
}

TEST(CostTableTest, TheDefaultFileIsCompleteAndCitesEveryEntry) {
  const std::string text = ReadDefaultFile();
  ASSERT_FALSE(text.empty()) << COSTMODEL_DEFAULT_TABLE_PATH;
  absl::StatusOr<CostTable> t = CostTable::Parse(text);
  ASSERT_TRUE(t.ok()) << t.status();
  for (std::string_view key : CostTable::Keys()) {
    EXPECT_GE(t->cycles(key), 0) << key;
    EXPECT_FALSE(t->at(key).source.empty()) << key;
    EXPECT_FALSE(t->at(key).unit.empty()) << key;
    // The compiled-in copy is the file.
    EXPECT_EQ(CostTable::Default().cycles(key), t->cycles(key)) << key;
  }
  EXPECT_EQ(CostTable::Default().origin(), "default");
}

TEST(CostTableTest, AnUnknownKeyIsNamed) {
  const std::string text = EditedDefault([](nlohmann::json& j) {
    j["costs"]["tlb_hitt"] = {{"cycles", 1}, {"unit", "u"}, {"source", "s"}};
  });
  absl::StatusOr<CostTable> t = CostTable::Parse(text);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("costs.tlb_hitt: unknown key"));
}

TEST(CostTableTest, AMissingKeyIsNamed) {
  const std::string text = EditedDefault([](nlohmann::json& j) { j["costs"].erase("ept_violation"); });
  absl::StatusOr<CostTable> t = CostTable::Parse(text);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("costs.ept_violation: missing key"));
}

TEST(CostTableTest, ANegativeValueIsNamed) {
  const std::string text =
      EditedDefault([](nlohmann::json& j) { j["costs"]["walk_ref_leaf"]["cycles"] = -3; });
  absl::StatusOr<CostTable> t = CostTable::Parse(text);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("costs.walk_ref_leaf: negative cycles"));
}

TEST(CostTableTest, AnEntryWithoutSourceIsRefused) {
  const std::string text =
      EditedDefault([](nlohmann::json& j) { j["costs"]["exit_io"].erase("source"); });
  absl::StatusOr<CostTable> t = CostTable::Parse(text);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("costs.exit_io: missing source"));
}

TEST(CostTableTest, BadJsonAndBadSchemaAreRefused) {
  EXPECT_FALSE(CostTable::Parse("{").ok());
  EXPECT_FALSE(CostTable::Parse("[]").ok());
  EXPECT_THAT(CostTable::Parse(EditedDefault([](nlohmann::json& j) { j["schema"] = "x"; }))
                  .status()
                  .message(),
              HasSubstr("schema"));
}

TEST(CostTableTest, AnOverrideReplacesSomeEntriesAndKeepsTheRest) {
  const CostTable& d = CostTable::Default();
  absl::StatusOr<CostTable> t = d.WithOverride(
      R"({"costs": {"exit_io": 9000, "ept_violation": {"cycles": 1234.5, "source": "my host"}}})",
      "run.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->cycles("exit_io"), 9000);
  EXPECT_TRUE(t->at("exit_io").overridden);
  EXPECT_THAT(t->at("exit_io").source, HasSubstr("run.json"));
  EXPECT_EQ(t->cycles("ept_violation"), 1234.5);
  EXPECT_EQ(t->at("ept_violation").source, "my host");
  EXPECT_EQ(t->cycles("tlb_hit"), d.cycles("tlb_hit"));
  EXPECT_FALSE(t->at("tlb_hit").overridden);
  EXPECT_EQ(t->origin(), "default + run.json");
  // The bare form, without "costs".
  absl::StatusOr<CostTable> bare = d.WithOverride(R"({"instruction": 0.5})", "x");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->cycles("instruction"), 0.5);
}

TEST(CostTableTest, OverrideErrorsNameTheKey) {
  const CostTable& d = CostTable::Default();
  EXPECT_THAT(d.WithOverride(R"({"costs": {"exit_pio": 1}})", "o.json").status().message(),
              HasSubstr("o.json: costs.exit_pio: unknown key"));
  EXPECT_THAT(d.WithOverride(R"({"costs": {"exit_io": -1}})", "o.json").status().message(),
              HasSubstr("costs.exit_io: negative cycles"));
  EXPECT_THAT(d.WithOverride(R"({"costs": {"exit_io": "fast"}})", "o.json").status().message(),
              HasSubstr("costs.exit_io: cycles must be a number"));
  EXPECT_THAT(d.WithOverride(R"({"costs": {"exit_io": {"cyc": 1}}})", "o.json").status().message(),
              HasSubstr("costs.exit_io: cyc: unknown field"));
  EXPECT_FALSE(d.WithOverrideFile("/nonexistent/costs.json").ok());
}

// A table in which every cost is a distinct power of two, so each class's
// value shows exactly which counters went into it.
CostTable PowersOfTwo() {
  std::string text = R"({"costs": {)";
  double v = 1;
  bool first = true;
  for (std::string_view key : CostTable::Keys()) {
    if (!first) text += ",";
    first = false;
    text += "\"" + std::string(key) + "\": " + std::to_string(v);
    v *= 2;
  }
  text += "}}";
  absl::StatusOr<CostTable> t = CostTable::Default().WithOverride(text, "test");
  CHECK(t.ok());
  return *t;
}

TEST(ComputeTest, EachClassIsItsCountersTimesTheirCostsAndTheTotalIsTheSum) {
  const CostTable t = PowersOfTwo();
  CostInputs in;
  in.strategy = "nested";
  in.counters = {{"cpu.instructions", 1000},
                 {"nested.hw.tlb_hits", 3},
                 {"nested.hw.tlb_misses", 5},
                 {"nested.hw.pwc_hits_l2", 7},
                 {"nested.hw.ept_pwc_hits_l3", 1},
                 {"nested.hw.ntlb_hits", 2},
                 {"nested.hw.guest_refs_l1", 11},
                 {"nested.hw.guest_refs_l4", 13},
                 {"nested.hw.ept_refs_l1", 17},
                 {"nested.hw.ept_refs_l2", 19},
                 {"exits.io", 23},
                 {"exits.shutdown", 1},
                 {"exits.interrupted", 99},  // host kicks: never charged
                 {"cpu.interrupts", 4},
                 {"nested.ept_violation", 29},
                 {"shadow.pf_fixed", 31}};
  const ModelledCycles m = Compute(t, in);
  auto c = [&](std::string_view key) { return t.cycles(key); };
  EXPECT_EQ(m.Class("instructions"), 1000 * c("instruction"));
  EXPECT_EQ(m.Class("tlb"), 3 * c("tlb_hit") + 5 * c("tlb_miss"));
  EXPECT_EQ(m.Class("pwc"), 8 * c("pwc_hit") + 2 * c("nested_tlb_hit"));
  EXPECT_EQ(m.Class("walk_refs_guest"), 11 * c("walk_ref_leaf") + 13 * c("walk_ref_upper"));
  EXPECT_EQ(m.Class("walk_refs_ept"), 17 * c("walk_ref_leaf") + 19 * c("walk_ref_upper"));
  EXPECT_EQ(m.Class("exits_io"), 23 * c("exit_io"));
  EXPECT_EQ(m.Class("exits_other"), 1 * c("exit_other"));
  EXPECT_EQ(m.Class("exits_interrupt"), 4 * c("exit_interrupt"));
  EXPECT_EQ(m.Class("ept_violations"), 29 * c("ept_violation"));
  EXPECT_EQ(m.Class("shadow_page_faults"), 31 * c("shadow_page_fault"));
  uint64_t sum = 0;
  for (const auto& [name, v] : m.classes) sum += v;
  EXPECT_EQ(sum, m.total);
  EXPECT_EQ(m.classes.size(), std::size(kClasses));
}

// A run that switched strategies (native -> shadow -> nested, or adaptive)
// has each strategy's counters: each is priced with its own events, and the
// run costs their sum, whatever strategy it started with.
TEST(ComputeTest, ASwitchedRunIsPricedAsTheSumOfItsStrategies) {
  const CostTable t = PowersOfTwo();
  const std::map<std::string, uint64_t, std::less<>> native = {{"native.hw.tlb_hits", 3},
                                                               {"native.hw.tlb_misses", 5},
                                                               {"native.hw.guest_refs_l1", 7}};
  const std::map<std::string, uint64_t, std::less<>> shadow = {{"shadow.hw.tlb_misses", 11},
                                                               {"shadow.hw.guest_refs_l2", 13},
                                                               {"shadow.pf_fixed", 17},
                                                               {"shadow.emulated_writes", 19}};
  const std::map<std::string, uint64_t, std::less<>> nested = {{"nested.hw.tlb_misses", 23},
                                                               {"nested.hw.ntlb_hits", 29},
                                                               {"nested.hw.ept_refs_l1", 31},
                                                               {"nested.ept_violation", 37}};
  auto priced = [&](std::string strategy,
                    std::vector<const std::map<std::string, uint64_t, std::less<>>*> parts) {
    CostInputs in;
    in.strategy = std::move(strategy);
    in.counters = {{"cpu.instructions", 1000}};
    for (const auto* part : parts) in.counters.insert(part->begin(), part->end());
    return Compute(t, in);
  };
  const ModelledCycles whole = priced("native", {&native, &shadow, &nested});
  const ModelledCycles n = priced("native", {&native});
  const ModelledCycles s = priced("shadow", {&shadow});
  const ModelledCycles e = priced("nested", {&nested});
  auto c = [&](std::string_view key) { return t.cycles(key); };
  EXPECT_EQ(whole.Class("tlb"), 3 * c("tlb_hit") + (5 + 11 + 23) * c("tlb_miss"));
  EXPECT_EQ(whole.Class("walk_refs_guest"), 7 * c("walk_ref_leaf") + 13 * c("walk_ref_upper"));
  EXPECT_EQ(whole.Class("walk_refs_ept"), 31 * c("walk_ref_leaf"));
  EXPECT_EQ(whole.Class("pwc"), 29 * c("nested_tlb_hit"));
  EXPECT_EQ(whole.Class("shadow_page_faults"), 17 * c("shadow_page_fault"));
  EXPECT_EQ(whole.Class("emulated_pte_writes"), 19 * c("emulated_pte_write"));
  EXPECT_EQ(whole.Class("ept_violations"), 37 * c("ept_violation"));
  // Every class but the instructions (counted once) is the parts' sum.
  for (const auto& [name, value] : whole.classes) {
    if (name == "instructions") continue;
    EXPECT_EQ(value, n.Class(name) + s.Class(name) + e.Class(name)) << name;
  }
  EXPECT_EQ(whole.total, n.total + s.total + e.total - 2 * 1000 * static_cast<uint64_t>(c("instruction")));
  // The strategy named as the start changes nothing.
  EXPECT_EQ(priced("nested", {&native, &shadow, &nested}).total, whole.total);
  EXPECT_EQ(priced("adaptive", {&native, &shadow, &nested}).total, whole.total);
}

TEST(ComputeTest, FractionalCostsRoundPerClassAndStillSum) {
  absl::StatusOr<CostTable> t =
      CostTable::Default().WithOverride(R"({"instruction": 0.7, "tlb_hit": 0.3})", "t");
  ASSERT_TRUE(t.ok());
  CostInputs in;
  in.strategy = "native";
  in.counters = {{"cpu.instructions", 3}, {"native.hw.tlb_hits", 3}};
  const ModelledCycles m = Compute(*t, in);
  EXPECT_EQ(m.Class("instructions"), 2u);  // 2.1
  EXPECT_EQ(m.Class("tlb"), 1u);           // 0.9
  uint64_t sum = 0;
  for (const auto& [name, v] : m.classes) sum += v;
  EXPECT_EQ(sum, m.total);
}

TEST(ComputeTest, NoCountersCostNothing) {
  CostInputs in;
  in.strategy = "shadow";
  EXPECT_EQ(Compute(CostTable::Default(), in).total, 0u);
}

}  // namespace
}  // namespace costmodel

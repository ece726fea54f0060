// The adaptive decision on synthetic interval streams, priced with the
// default cost table: what each stream should pick, hysteresis, dwell.
#include "adaptive/controller.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace adaptive {
namespace {

using Counters = std::map<std::string, uint64_t, std::less<>>;

costmodel::CostInputs Deltas(Counters c) {
  costmodel::CostInputs in;
  in.counters = std::move(c);
  return in;
}

// ptchurn under nested: processes come and go, every page is demand-faulted
// and every exit of a process switches CR3; the walks are modest.
costmodel::CostInputs ChurnOnNested() {
  return Deltas({{"nested.hw.tlb_misses", 20'000},
                 {"nested.hw.guest_refs_l1", 20'000},
                 {"nested.hw.ntlb_hits", 100'000},
                 {"nested.guest_faults", 5'000},
                 {"nested.cr3_writes", 2'000},
                 {"nested.invlpg", 500},
                 {"nested.ept_violation", 10}});
}
// The same interval under shadow: the faults are reinjected and filled, the
// table writes emulated or resynced.
costmodel::CostInputs ChurnOnShadow() {
  return Deltas({{"shadow.hw.tlb_misses", 20'000},
                 {"shadow.hw.guest_refs_l1", 20'000},
                 {"shadow.pf_guest", 5'000},
                 {"shadow.pf_fixed", 7'000},
                 {"shadow.emulated_writes", 600},
                 {"shadow.mmu_resync", 1'000},
                 {"shadow.cr3_writes", 2'000},
                 {"shadow.invlpg", 500}});
}
// tlbstress in steady state with a 4 KiB-mapped EPT: every STLB miss walks
// both dimensions; nothing changes the guest's tables.
costmodel::CostInputs TlbMissesOnNested4k() {
  return Deltas({{"nested.hw.tlb_misses", 100'000},
                 {"nested.hw.guest_refs_l1", 100'000},
                 {"nested.hw.ept_refs_l1", 500'000},
                 {"nested.hw.ept_refs_l2", 200'000}});
}
// The same with 2 MiB EPT leaves: the nested TLB answers the EPT dimension.
costmodel::CostInputs TlbMissesOnNestedLarge() {
  return Deltas({{"nested.hw.tlb_misses", 100'000},
                 {"nested.hw.guest_refs_l1", 100'000},
                 {"nested.hw.ntlb_hits", 500'000}});
}
costmodel::CostInputs TlbMissesOnShadow() {
  return Deltas({{"shadow.hw.tlb_misses", 100'000}, {"shadow.hw.guest_refs_l1", 100'000}});
}

const costmodel::CostTable* Table() { return &costmodel::CostTable::Default(); }

TEST(ControllerTest, PageTableChurnStaysOnNested) {
  Controller c({}, Table());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(c.OnInterval(ChurnOnNested()), Mode::kNested) << i;
  EXPECT_EQ(c.switches(), 0u);
  EXPECT_EQ(c.intervals(), 100u);
  // Shadow would trap every fault: far dearer.
  EXPECT_GT(c.last().other, 10 * c.last().current);
}

// Churn on shadow costs tens of times what nested would, and the switch to
// nested is cheap: no streak or dwell is waited for, only the first
// interval (which pays shadow's rebuild) is not judged alone.
TEST(ControllerTest, PageTableChurnOnShadowGoesToNestedAtOnce) {
  const Options o;
  Controller c(o, Table(), Mode::kShadow);
  EXPECT_EQ(c.OnInterval(ChurnOnShadow()), Mode::kShadow);
  EXPECT_EQ(c.OnInterval(ChurnOnShadow()), Mode::kNested);
  EXPECT_EQ(c.to_nested(), 1u);
  EXPECT_EQ(c.to_shadow(), 0u);
  EXPECT_LT(o.urgent_factor * c.switch_cost(Mode::kNested), c.last().current - c.last().other);
  // Without the urgent rule the dwell decides.
  Controller patient({.urgent_factor = 1e12}, Table(), Mode::kShadow);
  for (uint32_t i = 1; i < o.min_dwell; ++i) {
    EXPECT_EQ(patient.OnInterval(ChurnOnShadow()), Mode::kShadow) << i;
  }
  EXPECT_EQ(patient.OnInterval(ChurnOnShadow()), Mode::kNested);
}

TEST(ControllerTest, TlbMissesWithoutTableUpdatesPickShadowWhereItIsCheaper) {
  const Options o;
  Controller c(o, Table());
  uint32_t i = 0;
  while (c.current() == Mode::kNested && i < 100) {
    c.OnInterval(TlbMissesOnNested4k());
    ++i;
  }
  EXPECT_EQ(c.current(), Mode::kShadow);
  EXPECT_EQ(i, o.min_dwell);  // the streak (3) is long reached; the dwell decides
  EXPECT_EQ(c.to_shadow(), 1u);
  // On shadow the same stream stays there: the walks priced as 2-D walks
  // with the EPT share measured on nested are still dearer.
  EXPECT_DOUBLE_EQ(c.ept_cycles_per_walk(), (500'000 * 12.0 + 200'000 * 4.0) / 100'000);
  for (int k = 0; k < 100; ++k) EXPECT_EQ(c.OnInterval(TlbMissesOnShadow()), Mode::kShadow);
  EXPECT_EQ(c.switches(), 1u);
}

TEST(ControllerTest, TlbMissesWithLargeEptPagesStayOnNested) {
  // The 2-D walk costs only nested-TLB hits more than shadow's 1-D walk:
  // shadow is cheaper, but not by the margin.
  Controller c({}, Table());
  for (int i = 0; i < 100; ++i) c.OnInterval(TlbMissesOnNestedLarge());
  EXPECT_EQ(c.switches(), 0u);
  EXPECT_LT(c.last().other, c.last().current);
  EXPECT_GT(c.last().other, c.last().current * 0.75);
  // With no margin it would go.
  Controller eager({.margin = 0}, Table());
  for (int i = 0; i < 100; ++i) eager.OnInterval(TlbMissesOnNestedLarge());
  EXPECT_EQ(eager.current(), Mode::kShadow);
}

TEST(ControllerTest, AlternatingSignalsDoNotFlap) {
  Controller c({}, Table());
  for (int i = 0; i < 200; ++i) {
    c.OnInterval(i % 2 ? ChurnOnNested() : TlbMissesOnNested4k());
  }
  EXPECT_EQ(c.switches(), 0u);
  // Two intervals of each: still shorter than the streak.
  Controller d({}, Table());
  for (int i = 0; i < 200; ++i) d.OnInterval((i / 2) % 2 ? ChurnOnNested() : TlbMissesOnNested4k());
  EXPECT_EQ(d.switches(), 0u);
}

TEST(ControllerTest, TheMinimumDwellHolds) {
  const Options o{.streak = 1, .min_dwell = 10, .urgent_factor = 1e12};
  Controller c(o, Table());
  uint64_t switched_at = 0;
  for (uint64_t i = 1; i <= 10; ++i) {
    if (c.OnInterval(TlbMissesOnNested4k()) == Mode::kShadow) {
      switched_at = i;
      break;
    }
  }
  EXPECT_EQ(switched_at, 10u);
  // Shadow now sees churn, which favours nested from the first interval:
  // it stays until its own dwell is over.
  for (uint32_t i = 1; i < o.min_dwell; ++i) EXPECT_EQ(c.OnInterval(ChurnOnShadow()), Mode::kShadow) << i;
  EXPECT_EQ(c.OnInterval(ChurnOnShadow()), Mode::kNested);
  EXPECT_EQ(c.to_shadow(), 1u);
  EXPECT_EQ(c.to_nested(), 1u);
  // A manual switch restarts the dwell too.
  c.SetCurrent(Mode::kShadow);
  for (uint32_t i = 1; i < o.min_dwell; ++i) EXPECT_EQ(c.OnInterval(ChurnOnShadow()), Mode::kShadow) << i;
}

// mix's shape: a TLB-miss phase of three intervals, where shadow would save
// a little, between phases of page-table churn. The saving of one phase is
// below the cost of rebuilding the shadow tables: no switch.
TEST(ControllerTest, ASavingBelowTheSwitchCostDoesNotSwitch) {
  const Options o{.margin = 0};
  Controller c(o, Table());
  for (int i = 0; i < 300; ++i) c.OnInterval((i / 3) % 2 ? ChurnOnNested() : TlbMissesOnNestedLarge());
  EXPECT_EQ(c.switches(), 0u);
  // Measured: 0.5 M cycles an interval, 1.5 M a phase, against 8 M.
  EXPECT_EQ(c.switch_cost(Mode::kShadow), o.prior_switch_to_shadow_cycles);
  // A long phase pays for the switch.
  for (int i = 0; i < 40; ++i) c.OnInterval(TlbMissesOnNestedLarge());
  EXPECT_EQ(c.current(), Mode::kShadow);
}

TEST(ControllerTest, TheSwitchCostIsMeasuredAfterASwitch) {
  Controller c({.streak = 1, .min_dwell = 1}, Table());
  c.OnInterval(TlbMissesOnNested4k());  // saves 6.8 M cycles: not yet the 8 M a switch costs
  EXPECT_EQ(c.current(), Mode::kNested);
  c.OnInterval(TlbMissesOnNested4k());
  ASSERT_EQ(c.current(), Mode::kShadow);
  // The first shadow interval rebuilds 10000 pages: 35 M cycles of shadow
  // faults no guest event explains.
  c.OnInterval(Deltas({{"shadow.hw.tlb_misses", 100'000},
                       {"shadow.hw.guest_refs_l1", 100'000},
                       {"shadow.pf_fixed", 10'000}}));
  EXPECT_DOUBLE_EQ(c.switch_cost(Mode::kShadow), 10'000 * Table()->cycles("shadow_page_fault"));
}

// Going to shadow costs at least a shadow fault per page nested has mapped:
// a TLB-miss phase over much memory must save that much first.
TEST(ControllerTest, TheSwitchToShadowIsPricedByThePagesNestedMapped) {
  const Options o{.streak = 1, .min_dwell = 1};
  Controller c(o, Table());
  costmodel::CostInputs wide = TlbMissesOnNested4k();
  wide.counters["nested.ept_installs"] = 10'000;  // 40 MiB reached in the first interval
  c.OnInterval(wide);
  const double rebuild = 10'000 * Table()->cycles("shadow_page_fault");
  EXPECT_DOUBLE_EQ(c.switch_cost(Mode::kShadow), rebuild);
  EXPECT_GT(rebuild, o.prior_switch_to_shadow_cycles);
  // Each interval saves 6.8 M cycles: it takes ceil(35 M / 6.8 M) = 6 of them.
  int intervals = 1;
  while (c.current() == Mode::kNested && intervals < 100) {
    c.OnInterval(TlbMissesOnNested4k());
    ++intervals;
  }
  EXPECT_EQ(c.current(), Mode::kShadow);
  EXPECT_EQ(intervals, 6);
  // 2 MiB EPT entries count 512 pages each.
  Controller large(o, Table());
  large.OnInterval(Deltas({{"nested.ept_large_installs", 4}}));
  EXPECT_DOUBLE_EQ(large.nested_mapped_pages(), 2048);
  // A new nested period starts from nothing.
  large.SetCurrent(Mode::kShadow);
  large.SetCurrent(Mode::kNested);
  EXPECT_EQ(large.nested_mapped_pages(), 0);
}

TEST(ControllerTest, IdleIntervalsDecideNothing) {
  Controller c({.streak = 1, .min_dwell = 1}, Table());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(c.OnInterval(Deltas({})), Mode::kNested);
  EXPECT_FALSE(c.last().decided);
  EXPECT_EQ(c.intervals(), 50u);
  EXPECT_EQ(c.switches(), 0u);
}

TEST(ControllerTest, TheShadowCorrectionIsLearntFromShadowIntervals) {
  Controller c({.streak = 1, .min_dwell = 1}, Table(), Mode::kShadow);
  EXPECT_EQ(c.shadow_correction(), 1);
  // Stay on shadow: TLB misses only make nested dearer.
  c.OnInterval(TlbMissesOnShadow());
  // Churn whose trapped cost is exactly its proxy's: the correction stays 1.
  const costmodel::CostTable& t = *Table();
  const double proxy = 5'000 * (t.cycles("shadow_guest_fault") + t.cycles("emulated_pte_write") +
                                t.cycles("shadow_page_fault"));
  const uint64_t emulated = static_cast<uint64_t>((proxy - 5'000 * t.cycles("shadow_guest_fault")) /
                                                  t.cycles("emulated_pte_write"));
  Controller d({.streak = 100, .min_dwell = 1, .urgent_factor = 1e12}, Table(), Mode::kShadow);
  d.OnInterval(TlbMissesOnShadow());
  d.OnInterval(Deltas({{"shadow.pf_guest", 5'000}, {"shadow.emulated_writes", emulated}}));
  EXPECT_NEAR(d.shadow_correction(), 1.0, 1e-3);
  // Twice the trapped cost: the correction moves halfway to 2.
  const uint64_t emulated2 = static_cast<uint64_t>((2 * proxy - 5'000 * t.cycles("shadow_guest_fault")) /
                                                   t.cycles("emulated_pte_write"));
  d.OnInterval(Deltas({{"shadow.pf_guest", 5'000}, {"shadow.emulated_writes", emulated2}}));
  EXPECT_NEAR(d.shadow_correction(), 1.5, 0.01);
}

TEST(OptionsTest, BadOptionsAreRefusedNamingTheOption) {
  EXPECT_TRUE(Options{}.Validate().ok());
  absl::Status s = Options{.margin = -0.1}.Validate();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("adaptive_margin"), std::string_view::npos) << s;
  EXPECT_FALSE(Options{.margin = 1}.Validate().ok());
  s = Options{.interval = 0}.Validate();
  EXPECT_NE(s.message().find("adaptive_interval"), std::string_view::npos) << s;
  s = Options{.streak = 0}.Validate();
  EXPECT_NE(s.message().find("adaptive_streak"), std::string_view::npos) << s;
  s = Options{.urgent_factor = 0.5}.Validate();
  EXPECT_NE(s.message().find("adaptive_urgent_factor"), std::string_view::npos) << s;
}

}  // namespace
}  // namespace adaptive

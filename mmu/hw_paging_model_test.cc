// Unit tests of HwPagingModel: what the modelled STLB, PWCs and nested TLB
// make of real 1-D and 2-D walks.
#include "mmu/hw_paging_model.h"

#include <cstdint>

#include "gtest/gtest.h"
#include "mmu/table_builder.h"
#include "mmu/walker.h"

namespace mmu {
namespace {

constexpr uint64_t kRwx = epte::kRead | epte::kWrite | epte::kExecute;
constexpr uint64_t kWb = uint64_t{6} << epte::kMemTypeShift;
constexpr uint64_t kP = pte::kPresent, kW = pte::kWritable;
constexpr uint64_t kGuestBase = 2 << 20;
constexpr uint64_t kGuestBytes = 1 << 20;

AccessRequest Req(uint64_t va, Access access = Access::kRead) {
  AccessRequest r;
  r.va = va;
  r.access = access;
  return r;
}

uint64_t Get(const HwPagingModel& m, HwModelCounters::Id id) { return m.counters().Get(id); }

class HwPagingModelTest : public ::testing::Test {
 protected:
  HwPagingModelTest() : host_(4 << 20), ept_(host_, 4, true), view_(host_, kGuestBase), guest_(view_, 4) {
    ctx_.eptp = MakeEptp(ept_.root(), 4, false);
    for (uint64_t g = 0; g < kGuestBytes; g += 0x1000) {
      EXPECT_TRUE(ept_.Map(g, kGuestBase + g, PageSize::k4K, kRwx | kWb));
    }
  }
  WalkResult Walk2(uint64_t va) {
    WalkResult r;
    EXPECT_EQ(Walk2D(mode_, guest_.root(), ctx_, Req(va), host_, &r), WalkStatus::kOk);
    return r;
  }
  WalkResult Walk1(uint64_t va) {
    WalkResult r;
    EXPECT_EQ(Walk1D(mode_, guest_.root(), Req(va), view_, &r), WalkStatus::kOk);
    return r;
  }

  FlatMemory host_;
  TableBuilder<FlatMemory> ept_;
  WindowMemory<FlatMemory> view_;
  TableBuilder<WindowMemory<FlatMemory>> guest_;
  EptContext ctx_;
  PagingMode mode_;
};

TEST_F(HwPagingModelTest, ColdTwoDimensionalWalkCostsTwentyFourReferences) {
  HwPagingModel m(HwModelConfig::TwoD());
  const uint64_t va = 0x0000'1234'5678'9000ull;
  ASSERT_TRUE(guest_.Map(va, 0x8'0000, PageSize::k4K, kP | kW));
  m.OnWalk2D(Req(va), Walk2(va), nullptr);
  EXPECT_EQ(Get(m, HwModelCounters::kTlbMisses), 1u);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefs), 4u);
  // Five gpas (4 tables and the data page): the first EPT walk is cold, the
  // later ones start below the EPT PML4E/PDPTE/PDE the earlier ones cached
  // where they share them.
  EXPECT_EQ(Get(m, HwModelCounters::kNtlbMisses), 5u);
  EXPECT_EQ(Get(m, HwModelCounters::kEptPwcMisses), 1u);
  EXPECT_LT(Get(m, HwModelCounters::kEptRefs), 20u);
  EXPECT_GE(Get(m, HwModelCounters::kEptRefs), 4u + 4u);
}

TEST_F(HwPagingModelTest, StlbHitSkipsTheWalk) {
  HwPagingModel m(HwModelConfig::TwoD());
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  const WalkResult r = Walk2(va);
  m.OnWalk2D(Req(va), r, nullptr);
  const uint64_t refs = Get(m, HwModelCounters::kEptRefs) + Get(m, HwModelCounters::kGuestRefs);
  m.OnWalk2D(Req(va + 8), r, nullptr);
  EXPECT_EQ(Get(m, HwModelCounters::kTlbHits), 1u);
  EXPECT_EQ(Get(m, HwModelCounters::kEptRefs) + Get(m, HwModelCounters::kGuestRefs), refs);
}

TEST_F(HwPagingModelTest, WarmPwcAndNestedTlbShortenTheNextPagesWalk) {
  HwPagingModel m(HwModelConfig::TwoD());
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  ASSERT_TRUE(guest_.Map(va + 0x1000, 0x9'1000, PageSize::k4K, kP | kW));
  m.OnWalk2D(Req(va), Walk2(va), nullptr);
  const uint64_t guest0 = Get(m, HwModelCounters::kGuestRefs);
  const uint64_t ept0 = Get(m, HwModelCounters::kEptRefs);
  m.OnWalk2D(Req(va + 0x1000), Walk2(va + 0x1000), nullptr);
  // The PDE cache hit leaves one guest reference (the PTE, read by host
  // address from the combined PWC entry) and one gpa to translate, the data
  // page, whose EPT walk starts below the cached EPT PDE: one reference.
  EXPECT_EQ(Get(m, HwModelCounters::kPwcHitsL2), 1u);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefs) - guest0, 1u);
  EXPECT_EQ(Get(m, HwModelCounters::kEptRefs) - ept0, 1u);
}

TEST_F(HwPagingModelTest, OneDimensionalWalkSkipsCachedLevels) {
  HwPagingModel m;
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  ASSERT_TRUE(guest_.Map(va + 0x1000, 0x9'1000, PageSize::k4K, kP | kW));
  m.OnWalk1D(Req(va), Walk1(va), nullptr);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefs), 4u);
  m.OnWalk1D(Req(va + 0x1000), Walk1(va + 0x1000), nullptr);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefs), 5u);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefsL1), 2u);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefsL4), 1u);
  EXPECT_EQ(Get(m, HwModelCounters::kEptRefs), 0u);
}

TEST_F(HwPagingModelTest, Cr3WriteKeepsGlobalsAndDropsThePwc) {
  HwPagingModel m;
  m.OnShadowWalk(Req(0x40'0000), 4, true, nullptr);
  m.OnCr3Write();
  m.OnShadowWalk(Req(0x40'0000), 4, true, nullptr);
  EXPECT_EQ(Get(m, HwModelCounters::kTlbMisses), 2u);
  EXPECT_EQ(Get(m, HwModelCounters::kPwcMisses), 2u);
  EXPECT_EQ(Get(m, HwModelCounters::kGuestRefs), 8u);
}

TEST_F(HwPagingModelTest, SyncFlushesOncePerGeneration) {
  HwPagingModel m;
  m.OnShadowWalk(Req(0x40'0000), 4, true, nullptr);
  m.Sync(1);
  m.Sync(1);
  EXPECT_EQ(Get(m, HwModelCounters::kFlushes), 1u);
  m.OnShadowWalk(Req(0x40'0000), 4, true, nullptr);
  EXPECT_EQ(Get(m, HwModelCounters::kTlbMisses), 2u);
}

TEST_F(HwPagingModelTest, StlbEvictionsEvictFromTheSoftTlb) {
  // A one-set, two-way STLB: the third page evicts the first, from the
  // soft TLB too.
  HwModelConfig config;
  config.tlb = TlbConfig::Unified(1, 2);
  HwPagingModel m(config);
  SoftTlb soft(SoftTlb::Config{.num_entries = 64});
  alignas(4096) static uint8_t pages[3][4096];
  const uint64_t va[3] = {0x1000, 0x2000, 0x3000};
  for (int i = 0; i < 3; ++i) {
    soft.Fill(SoftTlb::MmuIdx::kSupervisor, va[i], pages[i], {true, true, true});
    m.OnShadowWalk(Req(va[i]), 4, true, &soft);
  }
  EXPECT_EQ(Get(m, HwModelCounters::kSoftTlbEvictions), 1u);
  EXPECT_EQ(soft.Lookup<Access::kRead>(SoftTlb::MmuIdx::kSupervisor, va[0], 1), nullptr);
  EXPECT_NE(soft.Lookup<Access::kRead>(SoftTlb::MmuIdx::kSupervisor, va[2], 1), nullptr);
}

}  // namespace
}  // namespace mmu

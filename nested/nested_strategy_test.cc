// The nested strategy: the shared conformance suite (every access gives the
// reference walker's answer; soft-TLB hits stay right across edits, flushes
// and FrameTable changes), plus its own rules: EPT tables built lazily on
// violations, the 2-D walk's reference count, 2 MiB EPT entries and their
// split, and invalidations clearing exactly the gfns' entries.
#include "nested/nested_strategy.h"

#include <memory>

#include "gtest/gtest.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "tests/fakes/fake_guest_phys_memory.h"
#include "tests/strategy_conformance.h"

namespace nested {
namespace {

using mmu::Access;
using mmu::AccessRequest;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
namespace pte = mmu::pte;

std::unique_ptr<mmu::PagingStrategy> MakeNested(mmu::GuestPhysMemory* mem, uint32_t max_vcpus) {
  auto s = NestedStrategy::Create(mem, {.max_vcpus = max_vcpus});
  CHECK(s.ok());
  return *std::move(s);
}

std::unique_ptr<mmu::PagingStrategy> MakeNestedAd(mmu::GuestPhysMemory* mem, uint32_t max_vcpus) {
  auto s = NestedStrategy::Create(mem, {.max_vcpus = max_vcpus, .ept_ad = true});
  CHECK(s.ok());
  return *std::move(s);
}

using mmu::testing::StrategyConformanceTest;
INSTANTIATE_TEST_SUITE_P(Nested, StrategyConformanceTest,
                         ::testing::Values(mmu::testing::StrategyFactory{"nested", MakeNested},
                                           mmu::testing::StrategyFactory{"nested_ad", MakeNestedAd}),
                         [](const auto& param_info) { return param_info.param.name; });

// 8 MiB of guest RAM (four 2 MiB ranges, 2 MiB-aligned in host memory too)
// with 4-level tables mapping gva kVa.. at gpa data_.. with 4 KiB pages.
class NestedTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kRamBytes = 8 << 20;
  static constexpr uint64_t kVa = 0x4000'0000;

  void SetUp() override { Build({}); }

  void Build(NestedStrategy::Options options) {
    if (strategy_) strategy_->DetachVcpu(&vcpu_);
    strategy_.reset();
    flat_ = std::make_unique<mmu::FlatMemory>(kRamBytes);
    // FlatMemory aligns memories of 2 MiB or more to 2 MiB in host memory.
    ASSERT_EQ(reinterpret_cast<uintptr_t>(flat_->PageAt(0)) % (2 << 20), 0u);
    mem_ = std::make_unique<mmu::testing::FakeGuestPhysMemory>(*flat_);
    auto s = NestedStrategy::Create(mem_.get(), options);
    ASSERT_TRUE(s.ok()) << s.status();
    strategy_ = *std::move(s);
    mem_->set_invalidation_hook([this](uint64_t first, uint64_t count, mmu::GfnChange change) {
      const uint64_t ticket = strategy_->InvalidateGfns(base::Gfn(first), count, change);
      strategy_->SyncInvalidations(vcpu_);
      CHECK(strategy_->AllVcpusSynced(ticket));
    });
    vcpu_.tlb = &tlb_;
    vcpu_.index = 0;
    ASSERT_TRUE(strategy_->AttachVcpu(&vcpu_).ok());
    strategy_->LeaveQuiescence(vcpu_);
    // Tables in gfns 1..3 plus the root in gfn 4; 16 pages mapped.
    constexpr uint64_t kTable = pte::kPresent | pte::kWritable;
    const uint64_t pml4 = 0x4000, pdpt = 0x1000, pd = 0x2000, pt = 0x3000;
    flat_->Write64(pml4 + mmu::LevelIndex(kVa, 4) * 8, pdpt | kTable);
    flat_->Write64(pdpt + mmu::LevelIndex(kVa, 3) * 8, pd | kTable);
    flat_->Write64(pd + mmu::LevelIndex(kVa, 2) * 8, pt | kTable);
    for (uint64_t i = 0; i < 16; ++i) {
      flat_->Write64(pt + (mmu::LevelIndex(kVa, 1) + i) * 8, (data_ + i * 4096) | kTable);
    }
    vcpu_.cr3 = pml4;
    strategy_->OnCr3Write(vcpu_, 0, false);
  }

  TranslateResult Translate(uint64_t va, Access access) {
    AccessRequest req;
    req.va = va;
    req.access = access;
    return strategy_->Translate(vcpu_, req, &out_);
  }
  uint64_t Count(const char* name) {
    for (const auto& c : strategy_->Counters()) {
      if (c.name == std::string("nested.") + name) return c.value;
    }
    ADD_FAILURE() << "no counter " << name;
    return 0;
  }

  // The EPT leaf that maps `gpa` now (0 if none), read as the walker does.
  uint64_t EptLeaf(uint64_t gpa) {
    const auto* table = reinterpret_cast<const uint64_t*>(strategy_->ept().root());
    for (int l = NestedStrategy::kEptLevels; l >= 1; --l) {
      const uint64_t e = table[mmu::LevelIndex(gpa, l)];
      if (!(e & mmu::epte::kPermMask)) return 0;
      if (l == 1 || (e & mmu::epte::kPageSize)) return e;
      table = reinterpret_cast<const uint64_t*>(e & 0x000f'ffff'ffff'f000ull);
    }
    return 0;
  }

  std::unique_ptr<mmu::FlatMemory> flat_;
  std::unique_ptr<mmu::testing::FakeGuestPhysMemory> mem_;
  std::unique_ptr<NestedStrategy> strategy_;
  mmu::SoftTlb tlb_;
  mmu::VcpuMmu vcpu_;
  TranslateOutcome out_;
  uint64_t data_ = 0x40'0000;  // gfn 0x400: the third 2 MiB range
};

TEST_F(NestedTest, ViolationsBuildTheEptThenAWalkCostsTwentyFourReferences) {
  Build({.large_pages = false});
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, flat_->PageAt(data_) ? reinterpret_cast<uint8_t*>(flat_->PageAt(data_))
                                                 : nullptr);
  // Four guest tables and the data page: five EPT violations, one per gfn.
  EXPECT_EQ(Count("ept_violation"), 5u);
  EXPECT_EQ(Count("exits"), 5u);
  EXPECT_EQ(Count("guest_faults"), 0u);
  // The EPT is warm now: a cold 4-level/4-level walk (no paging-structure
  // caches) reads 4 guest entries and 5 x 4 EPT entries, with no exit.
  tlb_.FlushAll();
  ASSERT_EQ(Translate(kVa, Access::kWrite), TranslateResult::kFixed);
  EXPECT_EQ(out_.walk_refs, 24u);
  EXPECT_EQ(Count("ept_violation"), 5u);

  EXPECT_TRUE(strategy_->Audit(vcpu_).ok()) << strategy_->Audit(vcpu_);
}

TEST_F(NestedTest, GuestFaultsNeedNoExit) {
  Build({.large_pages = false});
  ASSERT_EQ(Translate(kVa + 16 * 4096, Access::kRead), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorPf);
  EXPECT_EQ(out_.cr2, kVa + 16 * 4096);
  EXPECT_EQ(out_.error_code, 0u);  // not present, read, supervisor
  EXPECT_EQ(Count("guest_faults"), 1u);
  EXPECT_EQ(Count("ept_violation"), 4u);  // the four tables only
}

TEST_F(NestedTest, ALargeEntryMapsAPopulatedRangeAndSplitsForOneGfn) {
  // Everything is private and contiguous in the flat memory: the data
  // page's 2 MiB range gets one large EPT entry.
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_GE(Count("ept_large_installs"), 1u);
  EXPECT_GE(strategy_->large_mappings(), 1u);
  // Large EPT leaves end EPT walks a level early: fewer than 24 references.
  tlb_.FlushAll();
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_LT(out_.walk_refs, 24u);
  EXPECT_EQ(Count("ept_violation"), 2u);  // the tables' range and the data's
  const uint64_t large_before = strategy_->large_mappings();
  // Sharing one gfn of it needs a 4 KiB granule: the entry is split, that
  // gfn cleared, the rest still mapped.
  mem_->Share(data_ >> 12);
  EXPECT_EQ(Count("ept_splits"), 1u);
  EXPECT_EQ(strategy_->large_mappings(), large_before - 1);
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok()) << strategy_->Audit(vcpu_);
  // The shared page reads the shared copy; a write breaks the share.
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, mem_->HostPage(data_ >> 12, false));
  EXPECT_FALSE(out_.perms.write);
  ASSERT_EQ(Translate(kVa, Access::kWrite), TranslateResult::kFixed);
  EXPECT_EQ(mem_->state(data_ >> 12), mmu::testing::FakeGuestPhysMemory::State::kPrivate);
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok()) << strategy_->Audit(vcpu_);
}

TEST_F(NestedTest, WithoutLargePagesEveryEntryIsFourKiB) {
  Build({.large_pages = false});
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_EQ(Count("ept_large_installs"), 0u);
  EXPECT_EQ(Count("ept_installs"), 5u);
}

TEST_F(NestedTest, InvalidationClearsTheGfnAndTheNextAccessReinstallsIt) {
  Build({.large_pages = false});
  ASSERT_EQ(Translate(kVa, Access::kWrite), TranslateResult::kFixed);
  const uint64_t violations = Count("ept_violation");
  mem_->Change(data_ >> 12, mmu::GfnChange::kBacking,
               mmu::testing::FakeGuestPhysMemory::State::kNotResident);
  EXPECT_EQ(Count("ept_clears"), 1u);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(mmu::SoftTlb::MmuIdx::kSupervisor, kVa, 8), nullptr);
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_EQ(Count("ept_violation"), violations + 1);  // populate and install in one exit
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok()) << strategy_->Audit(vcpu_);
}

TEST_F(NestedTest, AGfnOutsideRamIsMmioAndATableThereIsANotPresentFault) {
  // Point the last PTE at a gpa beyond RAM.
  const uint64_t pt = 0x3000;
  const uint64_t va = kVa + 15 * 4096;
  flat_->Write64(pt + mmu::LevelIndex(va, 1) * 8, 0xfee0'0000 | pte::kPresent | pte::kWritable);
  ASSERT_EQ(Translate(va + 0x30, Access::kRead), TranslateResult::kMmio);
  EXPECT_EQ(out_.gpa, 0xfee0'0030u);
  EXPECT_EQ(Count("mmio"), 1u);
  // And a PDE pointing outside RAM.
  const uint64_t pd = 0x2000;
  flat_->Write64(pd + mmu::LevelIndex(kVa, 2) * 8, 0xfee0'0000 | pte::kPresent | pte::kWritable);
  strategy_->OnInvlpg(vcpu_, kVa);
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorPf);
}

// EPT A/D on: the walk sets the EPT leaf's A (and D on a write) and those
// bits decide what is reported; a harvest clears them without clearing the
// leaf, so re-observing the page needs no EPT violation, and a page that was
// only read after the harvest is not reported dirty.
TEST_F(NestedTest, EptAccessDirtyBitsFeedHarvestingWithoutExits) {
  Build({.large_pages = false, .ept_ad = true});
  const uint64_t gfn = data_ >> 12;
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_TRUE(EptLeaf(data_) & mmu::epte::kAccessed);
  EXPECT_FALSE(EptLeaf(data_) & mmu::epte::kDirty);
  EXPECT_FALSE(out_.perms.write) << "writable only over an EPT-dirty leaf";
  EXPECT_TRUE(mem_->accessed(gfn));
  EXPECT_FALSE(mem_->dirty(gfn)) << "installed writable, but only read";
  // The guest's tables: the walk may write their A/D bits, so they count
  // as written.
  for (uint64_t table_gfn = 1; table_gfn <= 4; ++table_gfn) EXPECT_TRUE(mem_->dirty(table_gfn));

  ASSERT_EQ(Translate(kVa, Access::kWrite), TranslateResult::kFixed);
  EXPECT_TRUE(EptLeaf(data_) & mmu::epte::kDirty);
  EXPECT_TRUE(out_.perms.write);
  EXPECT_TRUE(mem_->dirty(gfn));

  const uint64_t violations = Count("ept_violation");
  EXPECT_EQ(mem_->Harvest(gfn), 3u);  // accessed and dirty
  EXPECT_EQ(Count("ept_clears"), 0u) << "a harvest keeps the leaf";
  EXPECT_EQ(Count("ept_ad_clears"), 1u);
  EXPECT_NE(EptLeaf(data_), 0u);
  EXPECT_FALSE(EptLeaf(data_) & (mmu::epte::kAccessed | mmu::epte::kDirty));
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(mmu::SoftTlb::MmuIdx::kSupervisor, kVa, 8), nullptr);
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_EQ(Count("ept_violation"), violations) << "re-observed by a walk, not an exit";
  EXPECT_TRUE(mem_->accessed(gfn));
  EXPECT_FALSE(mem_->dirty(gfn));
  EXPECT_EQ(mem_->Harvest(gfn), 1u);  // accessed only
  ASSERT_EQ(Translate(kVa, Access::kWrite), TranslateResult::kFixed);
  EXPECT_EQ(mem_->Harvest(gfn), 3u);
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok()) << strategy_->Audit(vcpu_);
}

// Without EPT A/D (the default) a harvest clears the leaf: the next access
// is an EPT violation, and a writable install reports the page dirty.
TEST_F(NestedTest, WithoutEptAccessDirtyAHarvestCostsAViolation) {
  Build({.large_pages = false});
  const uint64_t gfn = data_ >> 12;
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_TRUE(mem_->dirty(gfn)) << "reported at install: writable";
  const uint64_t violations = Count("ept_violation");
  EXPECT_EQ(mem_->Harvest(gfn), 3u);
  EXPECT_EQ(EptLeaf(data_), 0u);
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_EQ(Count("ept_violation"), violations + 1);
}

// A large leaf keeps its 2 MiB on a harvest with EPT A/D: no split.
TEST_F(NestedTest, EptAccessDirtyHarvestOfALargeLeafDoesNotSplitIt) {
  Build({.ept_ad = true});
  ASSERT_EQ(Translate(kVa, Access::kWrite), TranslateResult::kFixed);
  ASSERT_TRUE(EptLeaf(data_) & mmu::epte::kPageSize);
  EXPECT_TRUE(EptLeaf(data_) & mmu::epte::kDirty);
  EXPECT_EQ(mem_->Harvest(data_ >> 12), 3u);
  EXPECT_EQ(Count("ept_splits"), 0u);
  EXPECT_TRUE(EptLeaf(data_) & mmu::epte::kPageSize);
  EXPECT_FALSE(EptLeaf(data_) & mmu::epte::kDirty);
  ASSERT_EQ(Translate(kVa, Access::kRead), TranslateResult::kFixed);
  EXPECT_FALSE(mem_->dirty(data_ >> 12));
}

TEST(NestedCreateTest, BadOptionsAreRejected) {
  EXPECT_FALSE(NestedStrategy::Create(nullptr, {}).ok());
  mmu::FlatMemory flat(1 << 20);
  mmu::testing::FakeGuestPhysMemory mem(flat);
  EXPECT_FALSE(NestedStrategy::Create(&mem, {.max_vcpus = 0}).ok());
  EXPECT_TRUE(NestedStrategy::Create(&mem, {.max_vcpus = 2}).ok());
}

}  // namespace
}  // namespace nested

#include "mmu/tlb_model.h"

#include <gtest/gtest.h>

namespace mmu {
namespace {

constexpr uint64_t k4K = 0x1000;
constexpr uint64_t k2M = 0x20'0000;
constexpr uint64_t k1G = 0x4000'0000;

TlbTranslation Page(uint64_t frame, PageSize size = PageSize::k4K, bool global = false,
                    bool dirty = true) {
  TlbTranslation t;
  t.frame_base = frame;
  t.page_size = size;
  t.global = global;
  t.writable = true;
  t.user = true;
  t.dirty = dirty;
  return t;
}

bool Hits(TlbModel& tlb, const TlbTag& tag, uint64_t va, Access access = Access::kRead) {
  return tlb.Lookup(tag, va, access) != nullptr;
}

TEST(TlbModelTest, HitReturnsTranslationAndCountsBySize) {
  TlbModel tlb;
  const TlbTag tag = TlbTag::Linear(0, 0);
  EXPECT_FALSE(Hits(tlb, tag, 0x1234));
  tlb.Insert(tag, 0x1234, Page(0xabc000));
  const TlbEntry* e = tlb.Lookup(tag, 0x1ff8, Access::kRead);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->Translate(0x1ff8), 0xabcff8u);
  EXPECT_FALSE(Hits(tlb, tag, 0x2000));
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kHit4K), 1u);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kMiss), 2u);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kInsert4K), 1u);
}

TEST(TlbModelTest, LruEvictsLeastRecentlyUsedWayOfTheSet) {
  // One set of four ways: every page competes for the same set.
  TlbModel tlb(TlbConfig::Unified(1, 4));
  const TlbTag tag;
  for (uint64_t p = 0; p < 4; ++p) tlb.Insert(tag, p * k4K, Page(0x100000 + p * k4K));
  // Touch 0, 2, 3 so that 1 is the least recently used.
  ASSERT_TRUE(Hits(tlb, tag, 0 * k4K));
  ASSERT_TRUE(Hits(tlb, tag, 2 * k4K));
  ASSERT_TRUE(Hits(tlb, tag, 3 * k4K));
  tlb.Insert(tag, 4 * k4K, Page(0x200000));
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kEvict), 1u);
  EXPECT_EQ(tlb.Probe(tag, 1 * k4K), nullptr);
  EXPECT_NE(tlb.Probe(tag, 0 * k4K), nullptr);
  EXPECT_NE(tlb.Probe(tag, 2 * k4K), nullptr);
  EXPECT_NE(tlb.Probe(tag, 3 * k4K), nullptr);
  EXPECT_NE(tlb.Probe(tag, 4 * k4K), nullptr);
  // Next victim is 0 (touched before 2, 3; 4 was just inserted).
  tlb.Insert(tag, 5 * k4K, Page(0x300000));
  EXPECT_EQ(tlb.Probe(tag, 0 * k4K), nullptr);
  EXPECT_NE(tlb.Probe(tag, 2 * k4K), nullptr);
}

TEST(TlbModelTest, SetsAreIndexedByPageNumber) {
  // Two sets of one way: pages 0 and 2 collide, page 1 does not.
  TlbModel tlb(TlbConfig::Unified(2, 1));
  const TlbTag tag;
  tlb.Insert(tag, 0, Page(0x10000));
  tlb.Insert(tag, k4K, Page(0x11000));
  tlb.Insert(tag, 2 * k4K, Page(0x12000));
  EXPECT_EQ(tlb.Probe(tag, 0), nullptr);
  EXPECT_NE(tlb.Probe(tag, k4K), nullptr);
  EXPECT_NE(tlb.Probe(tag, 2 * k4K), nullptr);
}

TEST(TlbModelTest, ReinsertingSamePageReplacesInPlace) {
  TlbModel tlb(TlbConfig::Unified(1, 2));
  const TlbTag tag;
  tlb.Insert(tag, 0, Page(0x10000));
  tlb.Insert(tag, 0, Page(0x20000));
  tlb.Insert(tag, k4K, Page(0x30000));
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kEvict), 0u);
  EXPECT_EQ(tlb.CountValid(), 2u);
  EXPECT_EQ(tlb.Probe(tag, 0)->Translate(0), 0x20000u);
}

TEST(TlbModelTest, TwoMegEntryHitsForEvery4KWithin) {
  TlbModel tlb;
  const TlbTag tag = TlbTag::Linear(1, 5);
  const uint64_t base = 0x7f00'0020'0000;
  tlb.Insert(tag, base + 0x12345, Page(0x4000'0000, PageSize::k2M));
  for (uint64_t off = 0; off < k2M; off += 0x1f001) {
    const TlbEntry* e = tlb.Lookup(tag, base + off, Access::kRead);
    ASSERT_NE(e, nullptr) << off;
    EXPECT_EQ(e->page_size, PageSize::k2M);
    EXPECT_EQ(e->Translate(base + off), 0x4000'0000 + off);
  }
  EXPECT_FALSE(Hits(tlb, tag, base + k2M));
  EXPECT_FALSE(Hits(tlb, tag, base - 1));
  EXPECT_GT(tlb.counters().Get(TlbModelCounters::kHit2M), 0u);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kHit4K), 0u);
}

TEST(TlbModelTest, OneGigEntryHitsInL1dGeometry) {
  TlbModel tlb(TlbConfig::SkylakeL1d());
  const TlbTag tag;
  tlb.Insert(tag, 3 * k1G + 5, Page(k1G, PageSize::k1G));
  const TlbEntry* e = tlb.Lookup(tag, 3 * k1G + 0x3fff'f000, Access::kRead);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->Translate(3 * k1G + 0x3fff'f000), k1G + 0x3fff'f000);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kHit1G), 1u);
}

TEST(TlbModelTest, InvlpgInsideTwoMegPageRemovesIt) {
  TlbModel tlb;
  const TlbTag tag = TlbTag::Linear(0, 3);
  tlb.Insert(tag, 0x4000'0000, Page(0x8000'0000, PageSize::k2M));
  tlb.Insert(tag, 0x5000'0000, Page(0x9000'0000));
  tlb.InvLpg(0, 3, 0x4000'0000 + 0x1ff123);
  EXPECT_EQ(tlb.Probe(tag, 0x4000'0000), nullptr);
  EXPECT_NE(tlb.Probe(tag, 0x5000'0000), nullptr);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kEntriesInvalidated), 1u);
}

TEST(TlbModelTest, InvlpgRemovesGlobalOfAnyPcidButNotOtherPcidsNonGlobal) {
  TlbModel tlb;
  const uint64_t va = 0xffff'8000'0000'1000;
  tlb.Insert(TlbTag::Linear(0, 1), va, Page(0x1000));               // current PCID
  tlb.Insert(TlbTag::Linear(0, 2), va, Page(0x2000));               // other PCID
  tlb.Insert(TlbTag::Linear(0, 3), va, Page(0x3000, PageSize::k4K, /*global=*/true));
  tlb.InvLpg(0, 1, va);
  EXPECT_EQ(tlb.Probe(TlbTag::Linear(0, 1), va), nullptr);
  // The global entry from PCID 3 is gone too: PCID 1 would have matched it.
  EXPECT_EQ(tlb.Probe(TlbTag::Linear(0, 3), va), nullptr);
  ASSERT_NE(tlb.Probe(TlbTag::Linear(0, 2), va), nullptr);
  EXPECT_EQ(tlb.Probe(TlbTag::Linear(0, 2), va)->Translate(va), 0x2000u);
}

TEST(TlbModelTest, InvlpgRemovesEverySplinterOfALargeMapping) {
  // No 1 GiB array: a 1 GiB mapping is cached as 2 MiB pieces.
  TlbConfig config = TlbConfig::SkylakeStlb();
  config.arrays.pop_back();
  TlbModel tlb(config);
  const TlbTag tag;
  tlb.Insert(tag, k1G + 0x10'0000, Page(4 * k1G, PageSize::k1G));
  tlb.Insert(tag, k1G + 0x3000'0000, Page(4 * k1G, PageSize::k1G));
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kSplinter), 2u);
  const TlbEntry* e = tlb.Probe(tag, k1G + 0x3000'1234);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->page_size, PageSize::k2M);
  EXPECT_EQ(e->Translate(k1G + 0x3000'1234), 4 * k1G + 0x3000'1234);
  // A piece not yet filled misses.
  EXPECT_EQ(tlb.Probe(tag, k1G + 0x2000'0000), nullptr);
  tlb.InvLpg(0, 0, k1G + 0x10'0000);
  EXPECT_EQ(tlb.CountValid(), 0u);
}

TEST(TlbModelTest, GlobalMatchesOtherPcidOfSameVpidOnly) {
  TlbModel tlb;
  const uint64_t va = 0xffff'ffff'8000'0000;
  tlb.Insert(TlbTag::Linear(4, 1), va, Page(0x5000, PageSize::k4K, /*global=*/true));
  EXPECT_TRUE(Hits(tlb, TlbTag::Linear(4, 9), va));
  EXPECT_FALSE(Hits(tlb, TlbTag::Linear(5, 1), va));
  EXPECT_FALSE(Hits(tlb, TlbTag::Combined(4, 1, 0x7000), va));
}

TEST(TlbModelTest, Cr3FlushKeepsGlobalsAndOtherPcids) {
  TlbModel tlb;
  tlb.Insert(TlbTag::Linear(0, 1), 0x1000, Page(0x10000));
  tlb.Insert(TlbTag::Linear(0, 1), 0x2000, Page(0x20000, PageSize::k4K, /*global=*/true));
  tlb.Insert(TlbTag::Linear(0, 2), 0x1000, Page(0x30000));
  tlb.FlushPcid(0, 1);
  EXPECT_EQ(tlb.Probe(TlbTag::Linear(0, 1), 0x1000), nullptr);
  EXPECT_NE(tlb.Probe(TlbTag::Linear(0, 1), 0x2000), nullptr);
  EXPECT_NE(tlb.Probe(TlbTag::Linear(0, 2), 0x1000), nullptr);
  tlb.FlushPcid(0, 1, /*keep_global=*/false);
  EXPECT_EQ(tlb.Probe(TlbTag::Linear(0, 1), 0x2000), nullptr);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kFlushPcid), 2u);
}

// The fixture for the INVPCID types: in VPID 0, PCIDs 1 and 2 each map
// 0x1000 (non-global) and 0x2000 (non-global); PCID 1 also maps a global
// page at 0x3000.
class InvPcidTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (uint16_t pcid : {1, 2}) {
      tlb_.Insert(TlbTag::Linear(0, pcid), 0x1000, Page(0x100000 * pcid));
      tlb_.Insert(TlbTag::Linear(0, pcid), 0x2000, Page(0x100000 * pcid + 0x1000));
    }
    tlb_.Insert(TlbTag::Linear(0, 1), 0x3000, Page(0x900000, PageSize::k4K, /*global=*/true));
    // Another VPID's identical entries must survive everything below.
    tlb_.Insert(TlbTag::Linear(7, 1), 0x1000, Page(0x700000));
  }
  bool Has(uint16_t pcid, uint64_t va) const {
    return tlb_.Probe(TlbTag::Linear(0, pcid), va) != nullptr;
  }
  bool OtherVpidIntact() const { return tlb_.Probe(TlbTag::Linear(7, 1), 0x1000) != nullptr; }
  TlbModel tlb_;
};

TEST_F(InvPcidTest, Type0RemovesOneAddressOfOnePcidKeepingGlobals) {
  tlb_.InvPcid(InvPcidType::kIndividualAddress, 0, 1, 0x1000);
  EXPECT_FALSE(Has(1, 0x1000));
  EXPECT_TRUE(Has(1, 0x2000));
  EXPECT_TRUE(Has(2, 0x1000));
  // A global translation for the named address survives type 0.
  tlb_.InvPcid(InvPcidType::kIndividualAddress, 0, 1, 0x3000);
  EXPECT_TRUE(Has(1, 0x3000));
  EXPECT_TRUE(OtherVpidIntact());
  EXPECT_EQ(tlb_.counters().Get(TlbModelCounters::kFlushInvpcidAddress), 2u);
}

TEST_F(InvPcidTest, Type1RemovesOnePcidKeepingGlobals) {
  tlb_.InvPcid(InvPcidType::kSingleContext, 0, 1, 0);
  EXPECT_FALSE(Has(1, 0x1000));
  EXPECT_FALSE(Has(1, 0x2000));
  EXPECT_TRUE(Has(1, 0x3000));
  EXPECT_TRUE(Has(2, 0x1000));
  EXPECT_TRUE(Has(2, 0x2000));
  EXPECT_TRUE(OtherVpidIntact());
}

TEST_F(InvPcidTest, Type2RemovesEveryPcidIncludingGlobals) {
  tlb_.InvPcid(InvPcidType::kAllContextsWithGlobals, 0, 0, 0);
  EXPECT_FALSE(Has(1, 0x1000));
  EXPECT_FALSE(Has(2, 0x2000));
  EXPECT_FALSE(Has(1, 0x3000));
  EXPECT_FALSE(Has(2, 0x3000));  // would have matched the global
  EXPECT_TRUE(OtherVpidIntact());
}

TEST_F(InvPcidTest, Type3RemovesEveryPcidKeepingGlobals) {
  tlb_.InvPcid(InvPcidType::kAllContexts, 0, 0, 0);
  EXPECT_FALSE(Has(1, 0x1000));
  EXPECT_FALSE(Has(1, 0x2000));
  EXPECT_FALSE(Has(2, 0x1000));
  EXPECT_FALSE(Has(2, 0x2000));
  EXPECT_TRUE(Has(1, 0x3000));
  EXPECT_TRUE(Has(2, 0x3000));  // the global matches PCID 2 too
  EXPECT_TRUE(OtherVpidIntact());
}

TEST(TlbModelTest, VpidsAreIsolated) {
  TlbModel tlb;
  tlb.Insert(TlbTag::Linear(1, 0), 0x4000, Page(0x11000));
  tlb.Insert(TlbTag::Linear(2, 0), 0x4000, Page(0x22000));
  EXPECT_EQ(tlb.Lookup(TlbTag::Linear(1, 0), 0x4000, Access::kRead)->Translate(0x4000), 0x11000u);
  EXPECT_EQ(tlb.Lookup(TlbTag::Linear(2, 0), 0x4000, Access::kRead)->Translate(0x4000), 0x22000u);
  EXPECT_FALSE(Hits(tlb, TlbTag::Linear(3, 0), 0x4000));
  EXPECT_FALSE(Hits(tlb, TlbTag::Linear(0, 0), 0x4000));
  // Flushing one VPID (a CR4.PGE toggle in that guest) leaves the other.
  tlb.FlushVpid(1);
  EXPECT_FALSE(Hits(tlb, TlbTag::Linear(1, 0), 0x4000));
  EXPECT_TRUE(Hits(tlb, TlbTag::Linear(2, 0), 0x4000));
}

TEST(TlbModelTest, FlushVpidRemovesGlobalsOfEveryPcidAndEp4ta) {
  TlbModel tlb;
  tlb.Insert(TlbTag::Linear(0, 1), 0x1000, Page(0x1000, PageSize::k4K, /*global=*/true));
  tlb.Insert(TlbTag::Combined(0, 2, 0x5000), 0x1000, Page(0x2000));
  tlb.Insert(TlbTag::Linear(3, 1), 0x1000, Page(0x3000));
  // VM entry with "enable VPID" = 0 flushes VPID 0 (SDM Vol. 3C §29.4.3.3).
  tlb.FlushVpid(0);
  EXPECT_EQ(tlb.CountValid(), 1u);
  EXPECT_NE(tlb.Probe(TlbTag::Linear(3, 1), 0x1000), nullptr);
}

class InvVpidTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (uint16_t vpid : {0, 1, 2}) {
      tlb_.Insert(TlbTag::Linear(vpid, 1), 0x1000, Page(0x10000 + vpid * 0x1000));
      tlb_.Insert(TlbTag::Combined(vpid, 2, 0xe000), 0x1000, Page(0x20000 + vpid * 0x1000));
      tlb_.Insert(TlbTag::Linear(vpid, 1), 0x2000,
                  Page(0x30000 + vpid * 0x1000, PageSize::k4K, /*global=*/true));
    }
  }
  size_t Count(uint16_t vpid) const {
    size_t n = 0;
    n += tlb_.Probe(TlbTag::Linear(vpid, 1), 0x1000) != nullptr;
    n += tlb_.Probe(TlbTag::Combined(vpid, 2, 0xe000), 0x1000) != nullptr;
    n += tlb_.Probe(TlbTag::Linear(vpid, 1), 0x2000) != nullptr;
    return n;
  }
  TlbModel tlb_;
};

TEST_F(InvVpidTest, Type0RemovesAddressInEveryPcidAndEp4taIncludingGlobal) {
  ASSERT_TRUE(tlb_.InvVpid(InvVpidType::kIndividualAddress, 1, 0x1000));
  EXPECT_EQ(tlb_.Probe(TlbTag::Linear(1, 1), 0x1000), nullptr);
  EXPECT_EQ(tlb_.Probe(TlbTag::Combined(1, 2, 0xe000), 0x1000), nullptr);
  EXPECT_EQ(Count(1), 1u);
  ASSERT_TRUE(tlb_.InvVpid(InvVpidType::kIndividualAddress, 1, 0x2000));
  EXPECT_EQ(Count(1), 0u);
  EXPECT_EQ(Count(0), 3u);
  EXPECT_EQ(Count(2), 3u);
}

TEST_F(InvVpidTest, Type1RemovesWholeVpid) {
  ASSERT_TRUE(tlb_.InvVpid(InvVpidType::kSingleContext, 2, 0));
  EXPECT_EQ(Count(2), 0u);
  EXPECT_EQ(Count(1), 3u);
  EXPECT_EQ(Count(0), 3u);
}

TEST_F(InvVpidTest, Type2RemovesEveryVpidExceptZero) {
  ASSERT_TRUE(tlb_.InvVpid(InvVpidType::kAllContexts, 0, 0));
  EXPECT_EQ(Count(1), 0u);
  EXPECT_EQ(Count(2), 0u);
  EXPECT_EQ(Count(0), 3u);
}

TEST_F(InvVpidTest, Type3KeepsGlobals) {
  ASSERT_TRUE(tlb_.InvVpid(InvVpidType::kSingleContextRetainingGlobals, 1, 0));
  EXPECT_EQ(Count(1), 1u);
  EXPECT_NE(tlb_.Probe(TlbTag::Linear(1, 1), 0x2000), nullptr);
}

TEST_F(InvVpidTest, VpidZeroFailsForSingleVpidTypes) {
  EXPECT_FALSE(tlb_.InvVpid(InvVpidType::kIndividualAddress, 0, 0x1000));
  EXPECT_FALSE(tlb_.InvVpid(InvVpidType::kSingleContext, 0, 0));
  EXPECT_FALSE(tlb_.InvVpid(InvVpidType::kSingleContextRetainingGlobals, 0, 0));
  EXPECT_EQ(Count(0), 3u);
}

TEST(TlbModelTest, InvEptRemovesCombinedAndGuestPhysicalMappingsOfThatEp4ta) {
  TlbModel linear;
  TlbModel guest_physical(TlbConfig::GuestPhysical());
  linear.Insert(TlbTag::Linear(1, 0), 0x1000, Page(0x10000));
  linear.Insert(TlbTag::Combined(1, 0, 0xa000), 0x2000, Page(0x20000));
  linear.Insert(TlbTag::Combined(2, 5, 0xa000), 0x3000, Page(0x30000));
  linear.Insert(TlbTag::Combined(1, 0, 0xb000), 0x4000, Page(0x40000));
  guest_physical.Insert(TlbTag::GuestPhysical(0xa000), 0x8000, Page(0x80000));
  guest_physical.Insert(TlbTag::GuestPhysical(0xb000), 0x8000, Page(0x90000));

  for (TlbModel* tlb : {&linear, &guest_physical}) tlb->InvEpt(InvEptType::kSingleContext, 0xa000);
  EXPECT_NE(linear.Probe(TlbTag::Linear(1, 0), 0x1000), nullptr);
  EXPECT_EQ(linear.Probe(TlbTag::Combined(1, 0, 0xa000), 0x2000), nullptr);
  EXPECT_EQ(linear.Probe(TlbTag::Combined(2, 5, 0xa000), 0x3000), nullptr);
  EXPECT_NE(linear.Probe(TlbTag::Combined(1, 0, 0xb000), 0x4000), nullptr);
  EXPECT_EQ(guest_physical.Probe(TlbTag::GuestPhysical(0xa000), 0x8000), nullptr);
  ASSERT_NE(guest_physical.Probe(TlbTag::GuestPhysical(0xb000), 0x8000), nullptr);
  EXPECT_EQ(guest_physical.Probe(TlbTag::GuestPhysical(0xb000), 0x8000)->Translate(0x8000),
            0x90000u);

  for (TlbModel* tlb : {&linear, &guest_physical}) tlb->InvEpt(InvEptType::kGlobal, 0);
  EXPECT_EQ(linear.CountValid(), 1u);  // only the linear mapping is left
  EXPECT_EQ(guest_physical.CountValid(), 0u);
  EXPECT_EQ(linear.counters().Get(TlbModelCounters::kFlushInveptContext), 1u);
  EXPECT_EQ(linear.counters().Get(TlbModelCounters::kFlushInveptGlobal), 1u);
}

TEST(TlbModelTest, GuestInstructionsReachCombinedMappingsOfEveryEp4ta) {
  TlbModel tlb;
  tlb.Insert(TlbTag::Combined(1, 0, 0xa000), 0x2000, Page(0x20000));
  tlb.Insert(TlbTag::Combined(1, 0, 0xb000), 0x2000, Page(0x30000));
  tlb.InvLpg(1, 0, 0x2000);
  EXPECT_EQ(tlb.CountValid(), 0u);
}

TEST(TlbModelTest, WriteToCleanEntryMissesUntilReinsertedDirty) {
  TlbModel tlb;
  const TlbTag tag;
  tlb.Insert(tag, 0x6000, Page(0x60000, PageSize::k4K, false, /*dirty=*/false));
  EXPECT_TRUE(Hits(tlb, tag, 0x6000, Access::kRead));
  EXPECT_TRUE(Hits(tlb, tag, 0x6000, Access::kFetch));
  EXPECT_FALSE(Hits(tlb, tag, 0x6000, Access::kWrite));
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kMissWriteClean), 1u);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kMiss), 1u);
  // The walk sets D and refills: the write now hits, in the same way.
  tlb.Insert(tag, 0x6000, Page(0x60000, PageSize::k4K, false, /*dirty=*/true));
  EXPECT_TRUE(Hits(tlb, tag, 0x6000, Access::kWrite));
  EXPECT_EQ(tlb.CountValid(), 1u);
}

TEST(TlbModelTest, FlushAllEmptiesEverything) {
  TlbModel tlb;
  for (uint64_t i = 0; i < 100; ++i) tlb.Insert(TlbTag::Linear(i % 3, i % 5), i * k4K, Page(i * k4K));
  tlb.Insert(TlbTag::Linear(0, 0), 0, Page(0, PageSize::k1G, /*global=*/true));
  tlb.FlushAll();
  EXPECT_EQ(tlb.CountValid(), 0u);
  EXPECT_EQ(tlb.counters().Get(TlbModelCounters::kEntriesInvalidated), 101u);
}

TEST(TlbModelTest, SkylakeGeometryHasDocumentedCapacity) {
  EXPECT_EQ(TlbModel(TlbConfig::SkylakeStlb()).capacity(), 1536u + 16u);
  EXPECT_EQ(TlbModel(TlbConfig::SkylakeL1d()).capacity(), 64u + 32u + 4u);
}

TEST(TlbModelTest, IsDeterministic) {
  auto run = [] {
    TlbModel tlb(TlbConfig::SkylakeL1d());
    uint64_t x = 12345;
    for (int i = 0; i < 5000; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const uint64_t va = (x >> 20) & 0xff'ffff'f000;
      const TlbTag tag = TlbTag::Linear(0, (x >> 8) & 3);
      if (!tlb.Lookup(tag, va, Access::kRead)) tlb.Insert(tag, va, Page(va));
    }
    return std::make_pair(tlb.counters().Get(TlbModelCounters::kHit4K),
                          tlb.counters().Get(TlbModelCounters::kEvict));
  };
  EXPECT_EQ(run(), run());
}

}  // namespace
}  // namespace mmu

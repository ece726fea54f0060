#include "mmu/page_walk_cache.h"

#include <gtest/gtest.h>

namespace mmu {
namespace {

constexpr uint64_t kTag = PageWalkCache::LinearTag(0, 1);

// Caches every non-leaf level of a 4-level walk of `va`, with the tables at
// 0x1000 * level + base.
void InsertWalk(PageWalkCache& pwc, uint64_t tag, uint64_t va, uint64_t base, int top = 4) {
  for (int level = top; level >= 2; --level) {
    pwc.Insert(tag, va, level, base + 0x1000 * level, true, true, false);
  }
}

TEST(PageWalkCacheTest, MissWhenEmpty) {
  PageWalkCache pwc;
  PwcHit hit;
  EXPECT_FALSE(pwc.Lookup(kTag, 0x1234, 4, &hit));
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kMiss), 1u);
}

TEST(PageWalkCacheTest, LookupReturnsDeepestLevel) {
  PageWalkCache pwc;
  const uint64_t va = 0x0000'7f12'3456'7000;
  InsertWalk(pwc, kTag, va, 0x100000);
  PwcHit hit;
  ASSERT_TRUE(pwc.Lookup(kTag, va, 4, &hit));
  EXPECT_EQ(hit.level, 2);  // the PDE cache: next read is the PTE
  EXPECT_EQ(hit.next_table_pa, 0x102000u);
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kHitPde), 1u);

  // Another 2 MiB region in the same 1 GiB: the PDPTE cache is the deepest.
  const uint64_t same_gig = va ^ (uint64_t{1} << 21);
  ASSERT_TRUE(pwc.Lookup(kTag, same_gig, 4, &hit));
  EXPECT_EQ(hit.level, 3);
  EXPECT_EQ(hit.next_table_pa, 0x103000u);
  // Another 1 GiB region in the same 512 GiB: the PML4E cache.
  ASSERT_TRUE(pwc.Lookup(kTag, va ^ (uint64_t{1} << 30), 4, &hit));
  EXPECT_EQ(hit.level, 4);
  EXPECT_EQ(hit.next_table_pa, 0x104000u);
  // Another 512 GiB region: nothing.
  EXPECT_FALSE(pwc.Lookup(kTag, va ^ (uint64_t{1} << 39), 4, &hit));
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kHitPdpte), 1u);
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kHitPml4e), 1u);
}

TEST(PageWalkCacheTest, KeysCoverExactlyTheSdmAddressBits) {
  PageWalkCache pwc;
  const uint64_t va = 0x0000'4000'0020'0000;
  pwc.Insert(kTag, va, 2, 0x5000, true, true, false);
  PwcHit hit;
  // Bits 20:0 are not part of a PDE-cache key ...
  EXPECT_TRUE(pwc.Lookup(kTag, va + 0x1f'ffff, 4, &hit));
  // ... bit 21 and bit 47 are.
  EXPECT_FALSE(pwc.Lookup(kTag, va + 0x20'0000, 4, &hit));
  EXPECT_FALSE(pwc.Lookup(kTag, va | (uint64_t{1} << 47), 4, &hit));
}

TEST(PageWalkCacheTest, Pml5eCacheOnlyProbedWithFiveLevels) {
  PageWalkCache pwc;
  const uint64_t va = 0x00ab'cd00'0000'0000;
  pwc.Insert(kTag, va, 5, 0x9000, true, true, false);
  PwcHit hit;
  EXPECT_FALSE(pwc.Lookup(kTag, va, 4, &hit));
  ASSERT_TRUE(pwc.Lookup(kTag, va, 5, &hit));
  EXPECT_EQ(hit.level, 5);
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kHitPml5e), 1u);
}

TEST(PageWalkCacheTest, CarriesCombinedPermissions) {
  // The walker passes the AND of R/W and U/S and the OR of XD of the levels
  // so far (SDM §4.10.3.1); the cache must hand back exactly that per level.
  PageWalkCache pwc;
  const uint64_t va = 0x1234'5678'9000;
  pwc.Insert(kTag, va, 4, 0x4000, /*writable=*/true, /*user=*/true, /*nx=*/false);
  pwc.Insert(kTag, va, 3, 0x3000, /*writable=*/false, /*user=*/true, /*nx=*/false);
  pwc.Insert(kTag, va, 2, 0x2000, /*writable=*/false, /*user=*/false, /*nx=*/true);
  PwcHit hit;
  ASSERT_TRUE(pwc.Lookup(kTag, va, 4, &hit));
  EXPECT_EQ(hit.level, 2);
  EXPECT_FALSE(hit.writable);
  EXPECT_FALSE(hit.user);
  EXPECT_TRUE(hit.nx);
  ASSERT_TRUE(pwc.Lookup(kTag, va ^ (uint64_t{1} << 21), 4, &hit));
  EXPECT_EQ(hit.level, 3);
  EXPECT_FALSE(hit.writable);
  EXPECT_TRUE(hit.user);
  EXPECT_FALSE(hit.nx);
}

TEST(PageWalkCacheTest, TagsAreIsolated) {
  PageWalkCache pwc;
  const uint64_t va = 0x5000'0000;
  InsertWalk(pwc, PageWalkCache::LinearTag(0, 1), va, 0x100000);
  InsertWalk(pwc, PageWalkCache::LinearTag(0, 2), va, 0x200000);
  PwcHit hit;
  ASSERT_TRUE(pwc.Lookup(PageWalkCache::LinearTag(0, 2), va, 4, &hit));
  EXPECT_EQ(hit.next_table_pa, 0x202000u);
  EXPECT_FALSE(pwc.Lookup(PageWalkCache::LinearTag(1, 1), va, 4, &hit));
  EXPECT_FALSE(pwc.Lookup(PageWalkCache::LinearTag(0, 3), va, 4, &hit));
}

TEST(PageWalkCacheTest, InvlpgFlushesEveryEntryOfThePcid) {
  PageWalkCache pwc;
  const uint64_t va = 0x7000'0000'0000;
  const uint64_t far_va = 0x1000'0000;  // different PML4E, PDPTE and PDE
  InsertWalk(pwc, kTag, va, 0x100000);
  InsertWalk(pwc, kTag, far_va, 0x200000);
  InsertWalk(pwc, PageWalkCache::LinearTag(0, 2), va, 0x300000);
  pwc.InvalidateForInvlpg(kTag);
  PwcHit hit;
  // SDM §4.10.4.1: all entries of the PCID, not only those for va.
  EXPECT_FALSE(pwc.Lookup(kTag, va, 4, &hit));
  EXPECT_FALSE(pwc.Lookup(kTag, far_va, 4, &hit));
  EXPECT_TRUE(pwc.Lookup(PageWalkCache::LinearTag(0, 2), va, 4, &hit));
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kEntriesInvalidated), 6u);
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kFlushInvlpg), 1u);
}

TEST(PageWalkCacheTest, InvalidateVaRemovesOnlyEntriesCoveringVa) {
  PageWalkCache pwc;
  const uint64_t va = 0x7000'0000'0000;
  InsertWalk(pwc, kTag, va, 0x100000);
  // Same PML4E and PDPTE as va, different PDE.
  const uint64_t neighbour = va + (uint64_t{1} << 21);
  pwc.Insert(kTag, neighbour, 2, 0x555000, true, true, false);
  pwc.InvalidateVa(kTag, va);
  PwcHit hit;
  EXPECT_FALSE(pwc.Lookup(kTag, va, 4, &hit));
  ASSERT_TRUE(pwc.Lookup(kTag, neighbour, 4, &hit));
  EXPECT_EQ(hit.level, 2);
  EXPECT_EQ(hit.next_table_pa, 0x555000u);
}

TEST(PageWalkCacheTest, FlushTagMaskedFlushesEveryPcidOfAVpid) {
  PageWalkCache pwc;
  InsertWalk(pwc, PageWalkCache::LinearTag(3, 1), 0x1000, 0x100000);
  InsertWalk(pwc, PageWalkCache::LinearTag(3, 2), 0x1000, 0x200000);
  InsertWalk(pwc, PageWalkCache::LinearTag(4, 1), 0x1000, 0x300000);
  pwc.FlushTagMasked(PageWalkCache::LinearTag(3, 0), PageWalkCache::kVpidTagMask);
  PwcHit hit;
  EXPECT_FALSE(pwc.Lookup(PageWalkCache::LinearTag(3, 1), 0x1000, 4, &hit));
  EXPECT_FALSE(pwc.Lookup(PageWalkCache::LinearTag(3, 2), 0x1000, 4, &hit));
  EXPECT_TRUE(pwc.Lookup(PageWalkCache::LinearTag(4, 1), 0x1000, 4, &hit));
}

TEST(PageWalkCacheTest, FlushTagAndFlushAll) {
  PageWalkCache pwc;
  InsertWalk(pwc, 1, 0x1000, 0x100000);
  InsertWalk(pwc, 2, 0x1000, 0x200000);
  pwc.FlushTag(1);
  EXPECT_EQ(pwc.CountValid(2), 1u);
  pwc.FlushAll();
  for (int level = 2; level <= 5; ++level) EXPECT_EQ(pwc.CountValid(level), 0u);
}

TEST(PageWalkCacheTest, LruEvictionPerLevel) {
  PwcConfig config;
  config.pde_entries = 2;
  PageWalkCache pwc(config);
  const uint64_t a = 0x0020'0000, b = 0x0040'0000, c = 0x0060'0000;
  pwc.Insert(kTag, a, 2, 0xa000, true, true, false);
  pwc.Insert(kTag, b, 2, 0xb000, true, true, false);
  PwcHit hit;
  ASSERT_TRUE(pwc.Lookup(kTag, a, 4, &hit));  // b is now least recently used
  pwc.Insert(kTag, c, 2, 0xc000, true, true, false);
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kEvict), 1u);
  EXPECT_TRUE(pwc.Lookup(kTag, a, 4, &hit));
  EXPECT_FALSE(pwc.Lookup(kTag, b, 4, &hit));
  EXPECT_TRUE(pwc.Lookup(kTag, c, 4, &hit));
  // Re-inserting an existing key updates it without evicting.
  pwc.Insert(kTag, c, 2, 0xd000, true, true, false);
  EXPECT_EQ(pwc.counters().Get(PwcCounters::kEvict), 1u);
  ASSERT_TRUE(pwc.Lookup(kTag, c, 4, &hit));
  EXPECT_EQ(hit.next_table_pa, 0xd000u);
}

TEST(PageWalkCacheTest, DisabledLevelCachesNothing) {
  PwcConfig config;
  config.pde_entries = 0;
  PageWalkCache pwc(config);
  InsertWalk(pwc, kTag, 0x1000, 0x100000);
  PwcHit hit;
  ASSERT_TRUE(pwc.Lookup(kTag, 0x1000, 4, &hit));
  EXPECT_EQ(hit.level, 3);
}

TEST(PageWalkCacheTest, EptDimensionKeyedByGpaAndEp4ta) {
  // A second instance serves the EPT dimension: tag = EP4TA, va = gpa.
  PageWalkCache ept_pwc;
  const uint64_t ep4ta_a = 0x12'3000, ep4ta_b = 0x45'6000;
  const uint64_t gpa = 0x1'2340'5000;
  InsertWalk(ept_pwc, ep4ta_a, gpa, 0x100000);
  PwcHit hit;
  ASSERT_TRUE(ept_pwc.Lookup(ep4ta_a, gpa, 4, &hit));
  EXPECT_EQ(hit.level, 2);
  EXPECT_FALSE(ept_pwc.Lookup(ep4ta_b, gpa, 4, &hit));
  ept_pwc.FlushTag(ep4ta_a);  // INVEPT single-context
  EXPECT_FALSE(ept_pwc.Lookup(ep4ta_a, gpa, 4, &hit));
}

}  // namespace
}  // namespace mmu

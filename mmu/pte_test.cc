#include "mmu/pte.h"

#include "gtest/gtest.h"
#include "mmu/ept.h"

namespace mmu {
namespace {

TEST(PteTest, ReservedBitsFollowMaxPhyAddr) {
  // MAXPHYADDR 39: bits 51:39 reserved in every entry.
  const uint64_t rsvd = ReservedBits(1, false, 39, true, true);
  EXPECT_EQ(rsvd, 0x000f'ff80'0000'0000ull);
  EXPECT_EQ(ReservedBits(1, false, 52, true, true), 0u);
}

TEST(PteTest, XdIsReservedWithoutNxe) {
  EXPECT_TRUE(ReservedBits(3, false, 52, false, true) & pte::kNoExecute);
  EXPECT_FALSE(ReservedBits(3, false, 52, true, true) & pte::kNoExecute);
}

TEST(PteTest, PageSizeBitReservedAboveLevelThreeAndWithoutGbPages) {
  EXPECT_TRUE(ReservedBits(5, false, 52, true, true) & pte::kPageSize);
  EXPECT_TRUE(ReservedBits(4, false, 52, true, true) & pte::kPageSize);
  EXPECT_FALSE(ReservedBits(3, false, 52, true, true) & pte::kPageSize);
  EXPECT_TRUE(ReservedBits(3, false, 52, true, false) & pte::kPageSize);
  EXPECT_FALSE(ReservedBits(2, false, 52, true, false) & pte::kPageSize);
}

TEST(PteTest, LargeLeafTargetsDropPatAndOffset) {
  const uint64_t e = 0x4020'1000ull | pte::kPresent | pte::kPageSize;  // PAT bit 12 set
  EXPECT_EQ(EntryTarget(e, 3, true, 52), 0x4000'0000ull);
  EXPECT_EQ(EntryTarget(e, 2, true, 52), 0x4020'0000ull);
  EXPECT_EQ(EntryTarget(e, 1, false, 52), 0x4020'1000ull);
}

TEST(PteTest, LevelIndexSelectsNineBits) {
  const uint64_t va = 0x0000'7f12'3456'7890ull;
  EXPECT_EQ(LevelIndex(va, 1), (va >> 12) & 511);
  EXPECT_EQ(LevelIndex(va, 4), 0xfeu);
  EXPECT_EQ(LevelPageSize(2), 2u << 20);
}

TEST(EptTest, MisconfiguredPermissionCombinations) {
  EptCaps caps;
  EXPECT_TRUE(EptPermsMisconfigured(epte::kWrite, false, caps));  // write-only
  EXPECT_TRUE(EptPermsMisconfigured(epte::kWrite | epte::kExecute, false, caps));
  EXPECT_FALSE(EptPermsMisconfigured(epte::kExecute, false, caps));  // execute-only supported
  caps.execute_only = false;
  EXPECT_TRUE(EptPermsMisconfigured(epte::kExecute, false, caps));
  // Leaf memory types 2, 3, 7 are reserved.
  for (uint64_t t = 0; t < 8; ++t) {
    const uint64_t e = epte::kRead | (t << epte::kMemTypeShift);
    EXPECT_EQ(EptPermsMisconfigured(e, true, caps), t == 2 || t == 3 || t == 7) << t;
    EXPECT_FALSE(EptPermsMisconfigured(e, false, caps)) << "non-leaf bits 5:3 are reserved instead";
  }
}

TEST(EptTest, PresentIncludesUserExecuteOnlyWithMbec) {
  EptCaps caps;
  EXPECT_FALSE(EptPresent(epte::kUserExecute, caps));
  caps.mode_based_execute = true;
  EXPECT_TRUE(EptPresent(epte::kUserExecute, caps));
}

}  // namespace
}  // namespace mmu

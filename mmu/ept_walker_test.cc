// Unit tests of the EPT walker (Intel SDM Vol. 3C §29.3).
#include "mmu/ept_walker.h"

#include "gtest/gtest.h"
#include "mmu/table_builder.h"

namespace mmu {
namespace {

constexpr uint64_t kRwx = epte::kRead | epte::kWrite | epte::kExecute;
constexpr uint64_t kWb = uint64_t{6} << epte::kMemTypeShift;

class EptWalkerTest : public ::testing::Test {
 protected:
  EptWalkerTest() : host_(4 << 20), ept_(host_, 4, /*ept=*/true) {
    ctx_.eptp = MakeEptp(ept_.root(), 4, /*enable_ad=*/false);
  }
  EptWalk Translate(uint64_t gpa, Access access, bool user_linear = false) {
    EptWalk w;
    EptTranslate(ctx_, gpa, access, user_linear, host_, &w);
    return w;
  }
  FlatMemory host_;
  TableBuilder<FlatMemory> ept_;
  EptContext ctx_;
};

TEST_F(EptWalkerTest, TranslatesAndCountsFourReferences) {
  ASSERT_TRUE(ept_.Map(0x1000, 0x30'0000, PageSize::k4K, kRwx | kWb));
  EptWalk w = Translate(0x1abc, Access::kWrite);
  ASSERT_EQ(w.status, WalkStatus::kOk);
  EXPECT_EQ(w.hpa, 0x30'0abcu);
  EXPECT_EQ(w.references(), 4);
}

TEST_F(EptWalkerTest, LargeEptPages) {
  ASSERT_TRUE(ept_.Map(0x4000'0000, 0x0, PageSize::k1G, kRwx | kWb));
  ASSERT_TRUE(ept_.Map(0x20'0000, 0x20'0000, PageSize::k2M, kRwx | kWb));
  EptWalk g = Translate(0x4012'3456, Access::kRead);
  ASSERT_EQ(g.status, WalkStatus::kOk);
  EXPECT_EQ(g.hpa, 0x12'3456u);
  EXPECT_EQ(g.page_size, PageSize::k1G);
  EXPECT_EQ(g.references(), 2);
  EptWalk m = Translate(0x20'0008, Access::kRead);
  EXPECT_EQ(m.hpa, 0x20'0008u);
  EXPECT_EQ(m.page_size, PageSize::k2M);
}

TEST_F(EptWalkerTest, NotPresentIsAViolationWithNoPermissions) {
  EptWalk w = Translate(0x5000, Access::kRead);
  EXPECT_EQ(w.status, WalkStatus::kEptViolation);
  EXPECT_EQ(w.fault_level, 4);
  EXPECT_EQ(w.PermissionBits(), 0u);
}

TEST_F(EptWalkerTest, PermissionViolationsReportTheAndOfRights) {
  ASSERT_TRUE(ept_.Map(0x6000, 0x6000, PageSize::k4K, epte::kRead | epte::kExecute | kWb));
  EXPECT_EQ(Translate(0x6000, Access::kRead).status, WalkStatus::kOk);
  EXPECT_EQ(Translate(0x6000, Access::kFetch).status, WalkStatus::kOk);
  EptWalk w = Translate(0x6000, Access::kWrite);
  EXPECT_EQ(w.status, WalkStatus::kEptViolation);
  EXPECT_EQ(w.PermissionBits(), ept_qual::kReadable | ept_qual::kExecutable);
  *ept_.Entry(0x6000, 3) &= ~epte::kExecute;  // a non-leaf level removes X
  EXPECT_EQ(Translate(0x6000, Access::kFetch).status, WalkStatus::kEptViolation);
}

TEST_F(EptWalkerTest, MisconfigurationsBeatViolations) {
  ASSERT_TRUE(ept_.Map(0x7000, 0x7000, PageSize::k4K, epte::kWrite | kWb));  // write-only
  EptWalk w = Translate(0x7000, Access::kRead);
  EXPECT_EQ(w.status, WalkStatus::kEptMisconfig);
  EXPECT_EQ(w.fault_level, 1);
  ASSERT_TRUE(ept_.Map(0x8000, 0x8000, PageSize::k4K, kRwx | (uint64_t{2} << 3)));  // type 2
  EXPECT_EQ(Translate(0x8000, Access::kRead).status, WalkStatus::kEptMisconfig);
  ASSERT_TRUE(ept_.Map(0x9000, 0x9000, PageSize::k4K, kRwx | kWb));
  *ept_.Entry(0x9000, 4) |= uint64_t{1} << 3;  // bits 7:3 of a PML4E are reserved
  EXPECT_EQ(Translate(0x9000, Access::kRead).status, WalkStatus::kEptMisconfig);
}

TEST_F(EptWalkerTest, ModeBasedExecuteUsesUserExecuteForUserAddresses) {
  ctx_.caps.mode_based_execute = true;
  ASSERT_TRUE(ept_.Map(0xa000, 0xa000, PageSize::k4K, epte::kRead | epte::kExecute | kWb));
  // Tables made by the builder lack bit 10, so user fetches fail.
  EXPECT_EQ(Translate(0xa000, Access::kFetch, /*user_linear=*/false).status, WalkStatus::kOk);
  EXPECT_EQ(Translate(0xa000, Access::kFetch, /*user_linear=*/true).status,
            WalkStatus::kEptViolation);
}

TEST_F(EptWalkerTest, AccessDirtyCommitSetsAEverywhereAndDOnWrite) {
  ctx_.eptp = MakeEptp(ept_.root(), 4, true);
  ASSERT_TRUE(ept_.Map(0xb000, 0xb000, PageSize::k4K, kRwx | kWb));
  EptWalk r = Translate(0xb000, Access::kRead);
  ASSERT_TRUE(CommitEptAccessDirty(r, false));
  for (int l = 4; l >= 1; --l) EXPECT_TRUE(*ept_.Entry(0xb000, l) & epte::kAccessed);
  EXPECT_FALSE(*ept_.Entry(0xb000, 1) & epte::kDirty);
  EptWalk w = Translate(0xb000, Access::kWrite);
  ASSERT_TRUE(CommitEptAccessDirty(w, true));
  EXPECT_TRUE(*ept_.Entry(0xb000, 1) & epte::kDirty);
  EXPECT_FALSE(*ept_.Entry(0xb000, 2) & epte::kDirty);
  // A concurrent change of the entry (not just A/D) makes the commit fail.
  EptWalk stale = Translate(0xb000, Access::kWrite);
  *ept_.Entry(0xb000, 1) &= ~epte::kWrite;
  EXPECT_FALSE(CommitEptAccessDirty(stale, true));
}

}  // namespace
}  // namespace mmu

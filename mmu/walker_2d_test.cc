// Unit tests of the 2-D (guest tables through EPT) walker.
#include <cstdint>

#include "gtest/gtest.h"
#include "mmu/reference_walker.h"
#include "mmu/table_builder.h"
#include "mmu/walker.h"

namespace mmu {
namespace {

constexpr uint64_t kRwx = epte::kRead | epte::kWrite | epte::kExecute;
constexpr uint64_t kWb = uint64_t{6} << epte::kMemTypeShift;
constexpr uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser;

// Guest-physical memory is the host range [kGuestBase, kGuestBase + 1 MiB),
// mapped 1:1 by EPT (gpa g -> hpa kGuestBase + g) with 4 KiB EPT pages unless a
// test says otherwise. Guest tables are built through a view of that range.
constexpr uint64_t kGuestBase = 2 << 20;
constexpr uint64_t kGuestBytes = 1 << 20;

// Guest-physical memory as seen through the 1:1 layout, for building tables.
using GuestBuildView = WindowMemory<FlatMemory>;

class Walker2DTest : public ::testing::Test {
 protected:
  Walker2DTest() : host_(4 << 20), ept_(host_, 4, true), view_(host_, kGuestBase), guest_(view_, 4) {
    ctx_.eptp = MakeEptp(ept_.root(), 4, false);
  }
  void MapAllGuestMemory(uint64_t perms = kRwx) {
    for (uint64_t g = 0; g < kGuestBytes; g += 0x1000) {
      ASSERT_TRUE(ept_.Map(g, kGuestBase + g, PageSize::k4K, perms | kWb));
    }
  }
  WalkResult Walk(const AccessRequest& req) {
    FlatMemory copy = host_;
    WalkResult r;
    Walk2D(mode_, guest_.root(), ctx_, req, host_, &r);
    reference::Outcome ref = reference::Walk2D(copy, mode_, guest_.root(), ctx_.eptp, ctx_.caps, req);
    EXPECT_EQ(r.status, ref.status);
    EXPECT_EQ(r.error_code, ref.error_code);
    EXPECT_EQ(r.ept_qualification, ref.ept_qualification);
    EXPECT_EQ(r.refs.Total(), ref.memory_references);
    if (r.status == WalkStatus::kOk) {
      EXPECT_EQ(r.hpa, ref.hpa);
    }
    if (r.status == WalkStatus::kEptViolation) {
      EXPECT_EQ(r.fault_gpa, ref.fault_gpa);
    }
    bool same = true;
    for (uint64_t pa = 0; pa < host_.size_bytes() && same; pa += 8) same = host_.Read64(pa) == copy.Read64(pa);
    EXPECT_TRUE(same) << "A/D updates differ from the reference";
    return r;
  }
  AccessRequest Req(uint64_t va, Access access, int cpl = 0) {
    AccessRequest r;
    r.va = va;
    r.access = access;
    r.cpl = static_cast<uint8_t>(cpl);
    return r;
  }

  FlatMemory host_;
  TableBuilder<FlatMemory> ept_;
  GuestBuildView view_;
  TableBuilder<GuestBuildView> guest_;
  EptContext ctx_;
  PagingMode mode_;
};

TEST_F(Walker2DTest, ColdFourByFourWalkMakesTwentyFourReferences) {
  MapAllGuestMemory();
  const uint64_t va = 0x0000'1234'5678'9000ull;
  ASSERT_TRUE(guest_.Map(va, 0x8'0000, PageSize::k4K, kP | kW | kU));
  WalkResult r = Walk(Req(va + 0x10, Access::kRead, 3));
  ASSERT_EQ(r.status, WalkStatus::kOk);
  EXPECT_EQ(r.gpa, 0x8'0010u);
  EXPECT_EQ(r.hpa, kGuestBase + 0x8'0010u);
  EXPECT_EQ(r.refs.Total(), 24);
  EXPECT_EQ(r.refs.GuestTotal(), 4);
  EXPECT_EQ(r.refs.EptTotal(), 20);
  for (int level = 1; level <= 4; ++level) {
    EXPECT_EQ(r.refs.guest[level], 1) << level;
    EXPECT_EQ(r.refs.ept[level], 5) << level;
    EXPECT_EQ(r.refs.nested[level], 4) << "EPT refs for guest level " << level;
  }
  EXPECT_EQ(r.refs.nested[0], 4) << "EPT refs for the final gpa";
}

TEST_F(Walker2DTest, FiveLevelDimensionsScaleTheWalk) {
  FlatMemory host(4 << 20);
  TableBuilder<FlatMemory> ept(host, 5, true);
  for (uint64_t g = 0; g < kGuestBytes; g += 0x1000) ASSERT_TRUE(ept.Map(g, kGuestBase + g, PageSize::k4K, kRwx | kWb));
  GuestBuildView view(host, kGuestBase);
  TableBuilder<GuestBuildView> guest(view, 5);
  const uint64_t va = 0x0012'3456'789a'b000ull;
  ASSERT_TRUE(guest.Map(va, 0x8'0000, PageSize::k4K, kP | kW));
  PagingMode mode;
  mode.levels = 5;
  EptContext ctx;
  ctx.eptp = MakeEptp(ept.root(), 5, false);
  WalkResult r;
  ASSERT_EQ(Walk2D(mode, guest.root(), ctx, Req(va, Access::kRead), host, &r), WalkStatus::kOk);
  EXPECT_EQ(r.refs.Total(), 35);  // (5 + 1) * 5 + 5
}

TEST_F(Walker2DTest, LargeEptPagesShortenTheSecondDimension) {
  ASSERT_TRUE(ept_.Map(0, kGuestBase, PageSize::k2M, kRwx | kWb));
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  WalkResult r = Walk(Req(va, Access::kRead));
  ASSERT_EQ(r.status, WalkStatus::kOk);
  EXPECT_EQ(r.refs.Total(), 4 * (3 + 1) + 3);
}

TEST_F(Walker2DTest, GuestPageFaultIsDeliveredWithTheSameCodeAs1D) {
  MapAllGuestMemory();
  const uint64_t va = 0x50'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP));  // supervisor, read-only
  WalkResult r = Walk(Req(va, Access::kWrite, 3));
  EXPECT_EQ(r.status, WalkStatus::kPageFault);
  EXPECT_EQ(r.error_code, pfec::kPresent | pfec::kWrite | pfec::kUser);
  EXPECT_EQ(r.refs.nested[0], 0) << "no final translation after a guest fault";
}

TEST_F(Walker2DTest, ViolationOnAGuestTableReportsAPagingStructureAccess) {
  MapAllGuestMemory();
  const uint64_t va = 0x60'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  const uint64_t pd_gpa = *guest_.Entry(va, 3) & pte::kAddrMask52;
  *ept_.Entry(pd_gpa, 1) = 0;  // the guest PD page is not mapped
  WalkResult r = Walk(Req(va, Access::kRead));
  ASSERT_EQ(r.status, WalkStatus::kEptViolation);
  EXPECT_EQ(r.fault_gpa, pd_gpa + LevelIndex(va, 2) * 8);
  EXPECT_EQ(r.ept_qualification, ept_qual::kRead | ept_qual::kGlaValid);
}

TEST_F(Walker2DTest, ViolationOnTheFinalAddressCarriesGuestRights) {
  MapAllGuestMemory();
  const uint64_t va = 0x70'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW | kU | pte::kAccessed | pte::kDirty));
  *ept_.Entry(0x9'0000, 1) &= ~epte::kWrite;  // read-only in EPT
  WalkResult r = Walk(Req(va + 4, Access::kWrite, 3));
  ASSERT_EQ(r.status, WalkStatus::kEptViolation);
  EXPECT_EQ(r.fault_gpa, 0x9'0004u);
  EXPECT_EQ(r.ept_qualification, ept_qual::kWrite | ept_qual::kReadable | ept_qual::kExecutable |
                                     ept_qual::kGlaValid | ept_qual::kGlaTranslated |
                                     ept_qual::kGlaUser | ept_qual::kGlaWritable);
}

TEST_F(Walker2DTest, GuestAccessedBitUpdateNeedsEptWriteOnTheTable) {
  MapAllGuestMemory();
  const uint64_t va = 0x80'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  const uint64_t pt_gpa = *guest_.Entry(va, 2) & pte::kAddrMask52;
  *ept_.Entry(pt_gpa, 1) &= ~epte::kWrite;  // guest PT write-protected by EPT
  WalkResult r = Walk(Req(va, Access::kRead));
  ASSERT_EQ(r.status, WalkStatus::kEptViolation);
  EXPECT_EQ(r.fault_gpa, pt_gpa + LevelIndex(va, 1) * 8);
  EXPECT_EQ(r.ept_qualification, ept_qual::kWrite | ept_qual::kReadable | ept_qual::kExecutable |
                                     ept_qual::kGlaValid);
  // With the guest A bit already set, the walk needs no write and succeeds.
  *guest_.Entry(va, 1) |= pte::kAccessed;
  EXPECT_EQ(Walk(Req(va, Access::kRead)).status, WalkStatus::kOk);
}

TEST_F(Walker2DTest, EptAccessDirtyTreatsGuestTableAccessesAsWrites) {
  MapAllGuestMemory();
  ctx_.eptp = MakeEptp(ept_.root(), 4, /*enable_ad=*/true);
  const uint64_t va = 0x90'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  ASSERT_EQ(Walk(Req(va, Access::kRead)).status, WalkStatus::kOk);
  const uint64_t pt_gpa = *guest_.Entry(va, 2) & pte::kAddrMask52;
  EXPECT_TRUE(*ept_.Entry(pt_gpa, 1) & epte::kDirty) << "table pages become EPT-dirty";
  EXPECT_TRUE(*ept_.Entry(0x9'0000, 1) & epte::kAccessed);
  EXPECT_FALSE(*ept_.Entry(0x9'0000, 1) & epte::kDirty) << "the data page was only read";
  // A read-only guest table under EPT A/D faults even on a read walk.
  *ept_.Entry(pt_gpa, 1) &= ~epte::kWrite;
  WalkResult r = Walk(Req(va, Access::kRead));
  EXPECT_EQ(r.status, WalkStatus::kEptViolation);
  EXPECT_TRUE(r.ept_qualification & ept_qual::kWrite);
}

TEST_F(Walker2DTest, MisconfiguredEptEntryStopsTheWalk) {
  MapAllGuestMemory();
  const uint64_t va = 0xa0'0000;
  ASSERT_TRUE(guest_.Map(va, 0x9'0000, PageSize::k4K, kP | kW));
  *ept_.Entry(0x9'0000, 1) = (kGuestBase + 0x9'0000) | epte::kWrite | kWb;  // write-only
  WalkResult r = Walk(Req(va, Access::kRead));
  EXPECT_EQ(r.status, WalkStatus::kEptMisconfig);
  EXPECT_EQ(r.fault_gpa, 0x9'0000u);
}

}  // namespace
}  // namespace mmu

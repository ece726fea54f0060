// Unit tests of the 1-D walker, one or more per rule of Intel SDM Vol. 3A
// §4.5-4.8, each also checked against the reference walker.
#include <cstdint>

#include "gtest/gtest.h"
#include "mmu/reference_walker.h"
#include "mmu/table_builder.h"
#include "mmu/walker.h"

namespace mmu {
namespace {

constexpr uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser;
constexpr uint64_t kA = pte::kAccessed, kD = pte::kDirty, kXd = pte::kNoExecute;

class WalkerTest : public ::testing::Test {
 protected:
  WalkerTest() : mem_(4 << 20), tables_(mem_, 4) {}

  AccessRequest Req(uint64_t va, Access access, int cpl = 0) {
    AccessRequest r;
    r.va = va;
    r.access = access;
    r.cpl = static_cast<uint8_t>(cpl);
    return r;
  }
  // Walks with the real walker on mem_, and with the reference walker on a copy,
  // and checks both agree on everything and leave the same memory behind.
  WalkResult Walk(const AccessRequest& req) {
    FlatMemory copy = mem_;
    WalkResult r;
    Walk1D(mode_, tables_.root(), req, mem_, &r);
    reference::Outcome ref = reference::Walk1D(copy, mode_, tables_.root(), req);
    EXPECT_EQ(r.status, ref.status);
    EXPECT_EQ(r.error_code, ref.error_code);
    if (r.status == WalkStatus::kOk) {
      EXPECT_EQ(r.gpa, ref.gpa);
      EXPECT_EQ(r.page_size, ref.page_size);
    }
    if (r.status == WalkStatus::kPageFault) {
      EXPECT_EQ(r.fault_level, ref.fault_level);
    }
    EXPECT_EQ(r.refs.Total(), ref.memory_references);
    for (uint64_t pa = 0; pa < mem_.size_bytes(); pa += 8) {
      if (mem_.Read64(pa) != copy.Read64(pa)) {
        ADD_FAILURE() << "A/D differ at pa 0x" << std::hex << pa;
        break;
      }
    }
    return r;
  }
  uint64_t EntryAt(uint64_t va, int level) { return *tables_.Entry(va, level); }

  FlatMemory mem_;
  TableBuilder<FlatMemory> tables_;
  PagingMode mode_;
};

TEST_F(WalkerTest, Translates4KPageAndSetsAccessedAtEveryLevel) {
  const uint64_t va = 0x0000'1234'5678'9000ull;
  ASSERT_TRUE(tables_.Map(va, 0x20'0000, PageSize::k4K, kP | kW));
  WalkResult r = Walk(Req(va + 0x123, Access::kRead));
  ASSERT_EQ(r.status, WalkStatus::kOk);
  EXPECT_EQ(r.gpa, 0x20'0123u);
  EXPECT_EQ(r.page_size, PageSize::k4K);
  EXPECT_EQ(r.refs.guest[4] + r.refs.guest[3] + r.refs.guest[2] + r.refs.guest[1], 4);
  for (int level = 4; level >= 1; --level) {
    EXPECT_TRUE(EntryAt(va, level) & kA) << "level " << level;
    EXPECT_FALSE(EntryAt(va, level) & kD) << "a read sets no D";
  }
}

TEST_F(WalkerTest, WriteSetsDirtyOnlyInTheLeaf) {
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(tables_.Map(va, 0x30'0000, PageSize::k4K, kP | kW));
  ASSERT_EQ(Walk(Req(va, Access::kWrite)).status, WalkStatus::kOk);
  EXPECT_TRUE(EntryAt(va, 1) & kD);
  for (int level = 4; level >= 2; --level) EXPECT_FALSE(EntryAt(va, level) & kD);
  WalkResult again = Walk(Req(va, Access::kWrite));
  EXPECT_TRUE(again.dirty);
}

TEST_F(WalkerTest, LargePagesTranslateWithTheirOffset) {
  ASSERT_TRUE(tables_.Map(0x4000'0000, 0x8000'0000, PageSize::k1G, kP | kW));
  ASSERT_TRUE(tables_.Map(0x20'0000, 0x60'0000, PageSize::k2M, kP | kW));
  WalkResult g = Walk(Req(0x4000'0000 + 0x1234'5678, Access::kRead));
  ASSERT_EQ(g.status, WalkStatus::kOk);
  EXPECT_EQ(g.gpa, 0x8000'0000u + 0x1234'5678u);
  EXPECT_EQ(g.page_size, PageSize::k1G);
  EXPECT_EQ(g.refs.GuestTotal(), 2);
  WalkResult m = Walk(Req(0x20'0000 + 0x1f'fff8, Access::kWrite));
  ASSERT_EQ(m.status, WalkStatus::kOk);
  EXPECT_EQ(m.gpa, 0x60'0000u + 0x1f'fff8u);
  EXPECT_EQ(m.page_size, PageSize::k2M);
  EXPECT_TRUE(EntryAt(0x20'0000, 2) & kD);
}

TEST_F(WalkerTest, NotPresentFaultsReportTheLevelAndClearP) {
  const uint64_t va = 0x7000'0000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kU));
  for (int level = 4; level >= 1; --level) {
    uint64_t* e = tables_.Entry(va, level);
    const uint64_t saved = *e;
    *e &= ~kP;
    WalkResult r = Walk(Req(va, Access::kWrite, 3));
    EXPECT_EQ(r.status, WalkStatus::kPageFault);
    EXPECT_EQ(r.error_code, pfec::kWrite | pfec::kUser) << "P=0: not-present";
    EXPECT_EQ(r.fault_level, level);
    *e = saved;
  }
}

TEST_F(WalkerTest, NoAccessedBitsAreSetByAFaultingWalk) {
  const uint64_t va = 0x7000'0000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP));  // read-only
  WalkResult r = Walk(Req(va, Access::kWrite, 3));
  ASSERT_EQ(r.status, WalkStatus::kPageFault);
  for (int level = 4; level >= 1; --level) EXPECT_FALSE(EntryAt(va, level) & kA);
}

TEST_F(WalkerTest, ReservedPhysicalAddressBitsFaultWithRsvd) {
  mode_.maxphyaddr = 39;
  const uint64_t va = 0x5000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW));
  *tables_.Entry(va, 1) |= uint64_t{1} << 40;
  WalkResult r = Walk(Req(va, Access::kRead));
  EXPECT_EQ(r.status, WalkStatus::kPageFault);
  EXPECT_EQ(r.error_code, pfec::kPresent | pfec::kRsvd);
  EXPECT_EQ(r.fault_level, 1);
}

TEST_F(WalkerTest, PageSizeInPml4eIsReserved) {
  const uint64_t va = 0x5000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW));
  *tables_.Entry(va, 4) |= pte::kPageSize;
  WalkResult r = Walk(Req(va, Access::kRead));
  EXPECT_EQ(r.error_code, pfec::kPresent | pfec::kRsvd);
  EXPECT_EQ(r.fault_level, 4);
}

TEST_F(WalkerTest, LargeLeafReservedBitsAndGbPagesSupport) {
  ASSERT_TRUE(tables_.Map(0x20'0000, 0x40'0000, PageSize::k2M, kP | kW));
  *tables_.Entry(0x20'0000, 2) |= uint64_t{1} << 13;  // bits 20:13 of a 2 MiB leaf
  EXPECT_EQ(Walk(Req(0x20'0000, Access::kRead)).error_code, pfec::kPresent | pfec::kRsvd);
  *tables_.Entry(0x20'0000, 2) &= ~(uint64_t{1} << 13);
  *tables_.Entry(0x20'0000, 2) |= pte::kPatLarge;  // bit 12 is PAT: fine
  EXPECT_EQ(Walk(Req(0x20'0000, Access::kRead)).status, WalkStatus::kOk);

  ASSERT_TRUE(tables_.Map(0x8000'0000, 0x4000'0000, PageSize::k1G, kP | kW));
  EXPECT_EQ(Walk(Req(0x8000'0000, Access::kRead)).status, WalkStatus::kOk);
  mode_.gbpages = false;  // PS in a PDPTE becomes reserved
  WalkResult r = Walk(Req(0x8000'0000, Access::kRead));
  EXPECT_EQ(r.error_code, pfec::kPresent | pfec::kRsvd);
  EXPECT_EQ(r.fault_level, 3);
}

TEST_F(WalkerTest, XdIsReservedWithoutNxeAndBlocksFetchesWithIt) {
  const uint64_t va = 0x9000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kU | kXd));
  WalkResult fetch = Walk(Req(va, Access::kFetch, 3));
  EXPECT_EQ(fetch.status, WalkStatus::kPageFault);
  EXPECT_EQ(fetch.error_code, pfec::kPresent | pfec::kUser | pfec::kFetch);
  EXPECT_EQ(Walk(Req(va, Access::kRead, 3)).status, WalkStatus::kOk);
  mode_.nxe = false;
  WalkResult rsvd = Walk(Req(va, Access::kRead, 3));
  EXPECT_EQ(rsvd.error_code, pfec::kPresent | pfec::kUser | pfec::kRsvd);
}

TEST_F(WalkerTest, FetchFlagOnlyWithNxeOrSmep) {
  const uint64_t va = 0x9000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW));  // supervisor page
  mode_.nxe = false;
  EXPECT_EQ(Walk(Req(va, Access::kFetch, 3)).error_code, pfec::kPresent | pfec::kUser);
  mode_.smep = true;
  EXPECT_EQ(Walk(Req(va, Access::kFetch, 3)).error_code,
            pfec::kPresent | pfec::kUser | pfec::kFetch);
}

TEST_F(WalkerTest, UserAccessNeedsUserAtEveryLevel) {
  const uint64_t va = 0x0000'4000'0000'0000ull;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kU));
  EXPECT_EQ(Walk(Req(va, Access::kRead, 3)).status, WalkStatus::kOk);
  *tables_.Entry(va, 3) &= ~kU;  // one supervisor level makes it a supervisor page
  WalkResult r = Walk(Req(va, Access::kRead, 3));
  EXPECT_EQ(r.error_code, pfec::kPresent | pfec::kUser);
  EXPECT_EQ(r.fault_level, 1) << "protection faults are reported at the leaf";
  EXPECT_EQ(Walk(Req(va, Access::kRead, 0)).status, WalkStatus::kOk);
}

TEST_F(WalkerTest, UserWritesNeedRwWhateverWp) {
  const uint64_t va = 0xa000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kU));
  mode_.wp = false;
  EXPECT_EQ(Walk(Req(va, Access::kWrite, 3)).error_code,
            pfec::kPresent | pfec::kWrite | pfec::kUser);
}

TEST_F(WalkerTest, SupervisorWritesObeyCr0Wp) {
  const uint64_t va = 0xa000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW));
  *tables_.Entry(va, 2) &= ~kW;  // read-only through a non-leaf level
  mode_.wp = true;
  EXPECT_EQ(Walk(Req(va, Access::kWrite)).error_code, pfec::kPresent | pfec::kWrite);
  mode_.wp = false;
  WalkResult r = Walk(Req(va, Access::kWrite));
  EXPECT_EQ(r.status, WalkStatus::kOk);
  EXPECT_FALSE(r.writable);
  EXPECT_TRUE(EntryAt(va, 1) & kD) << "a write allowed by WP=0 still sets D";
}

TEST_F(WalkerTest, SmepBlocksSupervisorFetchFromUserPages) {
  const uint64_t va = 0xb000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kU));
  EXPECT_EQ(Walk(Req(va, Access::kFetch)).status, WalkStatus::kOk);
  mode_.smep = true;
  EXPECT_EQ(Walk(Req(va, Access::kFetch)).error_code, pfec::kPresent | pfec::kFetch);
  EXPECT_EQ(Walk(Req(va, Access::kRead)).status, WalkStatus::kOk) << "SMEP is about fetches";
}

TEST_F(WalkerTest, SmapBlocksSupervisorDataAccessUnlessAcOnExplicitAccess) {
  const uint64_t va = 0xc000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kU));
  mode_.smap = true;
  AccessRequest req = Req(va, Access::kRead);
  EXPECT_EQ(Walk(req).error_code, pfec::kPresent);
  req.rflags_ac = true;
  EXPECT_EQ(Walk(req).status, WalkStatus::kOk);
  req.access = Access::kWrite;
  EXPECT_EQ(Walk(req).status, WalkStatus::kOk);
  req.implicit_supervisor = true;  // e.g. a GDT read: AC does not help
  EXPECT_EQ(Walk(req).error_code, pfec::kPresent | pfec::kWrite);
  // An implicit access at CPL 3 is a supervisor access: U/S clear in the code.
  req.cpl = 3;
  EXPECT_EQ(Walk(req).error_code, pfec::kPresent | pfec::kWrite);
}

TEST_F(WalkerTest, ProtectionKeysGateDataAccessesToUserPages) {
  const uint64_t va = 0xd000;
  const uint64_t key5 = uint64_t{5} << pte::kProtKeyShift;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kU | key5));
  mode_.pke = true;
  mode_.pkru = 1u << (2 * 5);  // AD5
  EXPECT_EQ(Walk(Req(va, Access::kRead, 3)).error_code,
            pfec::kPresent | pfec::kUser | pfec::kPk);
  EXPECT_EQ(Walk(Req(va, Access::kFetch, 3)).status, WalkStatus::kOk) << "keys never gate fetches";
  mode_.pkru = 2u << (2 * 5);  // WD5
  EXPECT_EQ(Walk(Req(va, Access::kRead, 3)).status, WalkStatus::kOk);
  EXPECT_EQ(Walk(Req(va, Access::kWrite, 3)).error_code,
            pfec::kPresent | pfec::kWrite | pfec::kUser | pfec::kPk);
  mode_.wp = false;
  EXPECT_EQ(Walk(Req(va, Access::kWrite, 0)).status, WalkStatus::kOk) << "WD binds CPL0 only with WP";
  mode_.wp = true;
  EXPECT_EQ(Walk(Req(va, Access::kWrite, 0)).error_code, pfec::kPresent | pfec::kWrite | pfec::kPk);
  mode_.pkru = 0xffff'ffff & ~(3u << 10);  // every other key disabled
  EXPECT_EQ(Walk(Req(va, Access::kWrite, 3)).status, WalkStatus::kOk);
}

TEST_F(WalkerTest, NonCanonicalAddressesNeverWalk) {
  WalkResult r = Walk(Req(0x0000'8000'0000'0000ull, Access::kRead));
  EXPECT_EQ(r.status, WalkStatus::kNonCanonical);
  EXPECT_EQ(r.refs.Total(), 0);
  EXPECT_EQ(Walk(Req(0xffff'0000'0000'0000ull, Access::kRead)).status, WalkStatus::kNonCanonical);
}

TEST_F(WalkerTest, UnbackedTableAddressIsReported) {
  const uint64_t va = 0xe000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW));
  *tables_.Entry(va, 2) = (uint64_t{1} << 35) | kP | kW;  // beyond the 4 MiB of memory
  WalkResult r = Walk(Req(va, Access::kRead));
  EXPECT_EQ(r.status, WalkStatus::kBadTableAddress);
  EXPECT_EQ(r.fault_level, 1);
}

TEST_F(WalkerTest, AccessedBitsAlreadySetAreNotRewritten) {
  const uint64_t va = 0xf000;
  ASSERT_TRUE(tables_.Map(va, 0x10'0000, PageSize::k4K, kP | kW | kA | kD));
  const uint64_t leaf_before = EntryAt(va, 1);
  ASSERT_EQ(Walk(Req(va, Access::kWrite)).status, WalkStatus::kOk);
  EXPECT_EQ(EntryAt(va, 1), leaf_before);
}

TEST(WalkerFiveLevelTest, FiveLevelWalkUsesLa57Addresses) {
  FlatMemory mem(1 << 20);
  TableBuilder<FlatMemory> tables(mem, 5);
  const uint64_t va = 0x00ab'cdef'1234'5000ull;  // canonical only with 57 bits
  ASSERT_TRUE(tables.Map(va, 0x8000, PageSize::k4K, kP | kW | kU));
  PagingMode mode;
  mode.levels = 5;
  AccessRequest req;
  req.va = va + 8;
  WalkResult r;
  ASSERT_EQ(Walk1D(mode, tables.root(), req, mem, &r), WalkStatus::kOk);
  EXPECT_EQ(r.gpa, 0x8008u);
  EXPECT_EQ(r.refs.GuestTotal(), 5);
  EXPECT_TRUE(*tables.Entry(va, 5) & kA);
  mode.levels = 4;
  EXPECT_EQ(Walk1D(mode, tables.root(), req, mem, &r), WalkStatus::kNonCanonical);
  mode.levels = 5;
  *tables.Entry(va, 5) |= pte::kPageSize;
  EXPECT_EQ(Walk1D(mode, tables.root(), req, mem, &r), WalkStatus::kPageFault);
  EXPECT_EQ(r.error_code, pfec::kPresent | pfec::kRsvd);
  EXPECT_EQ(r.fault_level, 5);
}

}  // namespace
}  // namespace mmu

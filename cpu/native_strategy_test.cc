// Tests of the native paging strategy: unit tests of each rule in
// cpu/native_strategy.h, then the shared strategy conformance suite
// (tests/strategy_conformance.h) instantiated for native.
#include "cpu/native_strategy.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mmu/guest_phys_walk.h"
#include "mmu/paging_strategy.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/soft_tlb.h"
#include "mmu/table_builder.h"
#include "tests/fakes/fake_guest_phys_memory.h"
#include "tests/strategy_conformance.h"

namespace cpu {
namespace {

using mmu::Access;
using mmu::AccessRequest;
using mmu::PageSize;
using mmu::SoftTlb;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
using mmu::VcpuMmu;
using mmu::testing::FakeGuestPhysMemory;
using State = FakeGuestPhysMemory::State;
namespace pfec = mmu::pfec;
namespace pte = mmu::pte;

constexpr uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser;
constexpr uint64_t kA = pte::kAccessed, kD = pte::kDirty, kXd = pte::kNoExecute;
constexpr SoftTlb::MmuIdx kSup = SoftTlb::MmuIdx::kSupervisor;
constexpr SoftTlb::MmuIdx kUsr = SoftTlb::MmuIdx::kUser;

// Guest RAM: 2 MiB (512 gfns). Tables are allocated from the bottom by the
// TableBuilder; data pages live at fixed gfns above 256.
constexpr uint64_t kRamBytes = 2 << 20;
constexpr uint64_t kData = 0x100000;    // gfn 256: a private data page
constexpr uint64_t kData2 = 0x101000;   // gfn 257
constexpr uint64_t kMmioGpa = 0x180000; // gfn 384, marked MMIO
constexpr uint64_t kBeyondRam = 0xfee00000;  // not RAM at all

constexpr uint64_t kVa = 0x0000'4000'0000ull;
constexpr uint64_t kVa2 = 0x0000'4000'1000ull;

class NativeStrategyTest : public ::testing::Test {
 protected:
  NativeStrategyTest() : flat_(kRamBytes), mem_(flat_), tables_(flat_, 4) {
    auto s = NativeStrategy::Create(&mem_, {.max_vcpus = 2});
    CHECK(s.ok()) << s.status();
    strategy_ = std::move(*s);
    vcpu_.tlb = &tlb_;
    vcpu_.index = 0;
    vcpu_.cr3 = tables_.root();
    CHECK(strategy_->AttachVcpu(&vcpu_).ok());
    strategy_->LeaveQuiescence(vcpu_);
    mem_.SetStateQuietly(kMmioGpa >> 12, State::kMmio);
    mem_.set_invalidation_hook([this](uint64_t first, uint64_t count, mmu::GfnChange change) {
      last_ticket_ = strategy_->InvalidateGfns(base::Gfn(first), count, change);
      ++invalidations_;
    });
  }
  ~NativeStrategyTest() override { strategy_->DetachVcpu(&vcpu_); }

  static AccessRequest Req(uint64_t va, Access access, int cpl = 0, bool ac = false) {
    AccessRequest r;
    r.va = va;
    r.access = access;
    r.cpl = static_cast<uint8_t>(cpl);
    r.rflags_ac = ac;
    return r;
  }
  TranslateResult Translate(const AccessRequest& req) {
    out_ = TranslateOutcome{};
    return strategy_->Translate(vcpu_, req, &out_);
  }
  uint8_t* Host(uint64_t gpa) { return mem_.FlatPage(gpa >> 12); }
  uint64_t* Leaf(uint64_t va) { return tables_.Entry(va, 1); }
  uint64_t Counter(std::string_view name) {
    for (const auto& v : strategy_->Counters()) {
      if (v.name == name) return v.value;
    }
    ADD_FAILURE() << "no counter " << name;
    return 0;
  }

  mmu::FlatMemory flat_;
  FakeGuestPhysMemory mem_;
  mmu::TableBuilder<mmu::FlatMemory> tables_;
  std::unique_ptr<NativeStrategy> strategy_;
  SoftTlb tlb_;
  VcpuMmu vcpu_;
  TranslateOutcome out_;
  uint64_t last_ticket_ = 0;
  int invalidations_ = 0;
};

TEST_F(NativeStrategyTest, ReadMissFillsAndLaterLookupsHitTheRightHostPage) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa + 8, 8), nullptr);
  ASSERT_EQ(Translate(Req(kVa + 8, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, Host(kData));
  EXPECT_EQ(out_.gpa, kData + 8);
  EXPECT_TRUE(out_.filled);
  EXPECT_EQ(out_.mmu_idx, kUsr);
  EXPECT_TRUE(out_.perms.read && out_.perms.write && out_.perms.fetch);
  EXPECT_EQ(out_.walk_refs, 4u);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa + 0x10, 8), Host(kData) + 0x10);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa + 0xff8, 8), Host(kData) + 0xff8);
  EXPECT_EQ(tlb_.Lookup<Access::kFetch>(kUsr, kVa, 1), Host(kData));
  // User and supervisor are separate MMU indexes.
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa + 8, 8), nullptr);
  EXPECT_EQ(Counter("native.walks"), 1u);
  EXPECT_EQ(Counter("native.tlb_fills"), 1u);
  EXPECT_EQ(Counter("native.walk_refs"), 4u);
  EXPECT_TRUE(mem_.accessed(kData >> 12));
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok());
}

TEST_F(NativeStrategyTest, SupervisorFillDoesNotServeUserAccessesToSupervisorPages) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kA | kD));  // U/S = 0
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 0)), TranslateResult::kFixed);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa, 8), Host(kData));
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa, 8), nullptr);
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorPf);
  EXPECT_EQ(out_.error_code, pfec::kPresent | pfec::kUser);
  EXPECT_EQ(out_.cr2, kVa);
}

TEST_F(NativeStrategyTest, FirstWriteToCleanPageMissesWalksAndSetsDirty) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU));
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.perms.read);
  EXPECT_FALSE(out_.perms.write) << "a clean page must not be writable in the soft TLB";
  EXPECT_EQ(*Leaf(kVa) & (kA | kD), kA);
  EXPECT_FALSE(mem_.dirty(kData >> 12));
  EXPECT_NE(tlb_.Lookup<Access::kRead>(kUsr, kVa, 8), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa, 8), nullptr);

  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kFixed);
  EXPECT_EQ(*Leaf(kVa) & (kA | kD), kA | kD);
  EXPECT_TRUE(out_.perms.write);
  EXPECT_TRUE(mem_.dirty(kData >> 12));
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa + 4, 4), Host(kData) + 4);
  EXPECT_EQ(Counter("native.walks"), 2u);
}

TEST_F(NativeStrategyTest, WriteToReadOnlyPteInjectsPageFaultWithExactCode) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kU | kA | kD));
  ASSERT_EQ(Translate(Req(kVa + 0x123, Access::kWrite, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorPf);
  EXPECT_EQ(out_.error_code, pfec::kPresent | pfec::kWrite | pfec::kUser);
  EXPECT_EQ(out_.cr2, kVa + 0x123);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa, 1), nullptr);
  // A read of the same page is fine and fills without write permission.
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_FALSE(out_.perms.write);
  // Supervisor writes: denied under CR0.WP = 1, allowed under WP = 0.
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 0)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, pfec::kPresent | pfec::kWrite);
  const mmu::PagingMode old = vcpu_.mode;
  vcpu_.mode.wp = false;
  strategy_->OnModeChange(vcpu_, true, old);
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 0)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.perms.write);
  EXPECT_EQ(Counter("native.guest_faults"), 2u);
}

TEST_F(NativeStrategyTest, NotPresentGivesNotPresentPageFault) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kU | kW));  // P = 0
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, pfec::kWrite | pfec::kUser);
  // Nothing mapped at all (PML4E not present), a supervisor fetch with NXE.
  ASSERT_EQ(Translate(Req(0x7000'0000'0000ull, Access::kFetch, 0)),
            TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, pfec::kFetch);
  EXPECT_EQ(out_.cr2, 0x7000'0000'0000ull);
}

TEST_F(NativeStrategyTest, NonCanonicalAddressGivesGeneralProtection) {
  ASSERT_EQ(Translate(Req(0x0000'8000'0000'0000ull, Access::kRead, 0)),
            TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorGp);
  EXPECT_EQ(out_.error_code, 0u);
  EXPECT_EQ(Counter("native.walk_refs"), 0u);
}

TEST_F(NativeStrategyTest, MmioIsNeverFilled) {
  ASSERT_TRUE(tables_.Map(kVa, kMmioGpa, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa2, kBeyondRam, PageSize::k4K, kP | kW | kU | kA | kD));
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(Translate(Req(kVa + 0x10, Access::kWrite, 3)), TranslateResult::kMmio);
    EXPECT_EQ(out_.gpa, kMmioGpa + 0x10);
    EXPECT_FALSE(out_.filled);
    EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa + 0x10, 4), nullptr);
    EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa + 0x10, 4), nullptr);
  }
  ASSERT_EQ(Translate(Req(kVa2 + 4, Access::kRead, 0)), TranslateResult::kMmio);
  EXPECT_EQ(out_.gpa, kBeyondRam + 4);
  EXPECT_EQ(Counter("native.mmio"), 3u);
  EXPECT_EQ(Counter("native.tlb_fills"), 0u);
}

TEST_F(NativeStrategyTest, PageTableOutsideRamGivesNotPresentPageFault) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  uint64_t* pde = tables_.Entry(kVa, 2);
  *pde = (*pde & ~pte::kAddrMask52) | kMmioGpa;  // the PT now lies in MMIO
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorPf);
  EXPECT_EQ(out_.error_code, pfec::kWrite | pfec::kUser);
}

TEST_F(NativeStrategyTest, SharedFrameIsReadOnlyInTheTlbAndAWriteBreaksTheShare) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  mem_.SetStateQuietly(kData >> 12, State::kShared);
  uint8_t* shared_copy = mem_.HostPage(kData >> 12, false);
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, shared_copy);
  EXPECT_FALSE(out_.perms.write) << "D is set but the frame is shared";
  EXPECT_FALSE(mem_.dirty(kData >> 12));
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa, 8), nullptr);

  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kFixed);
  EXPECT_EQ(mem_.state(kData >> 12), State::kPrivate);
  EXPECT_EQ(out_.host_page, Host(kData));
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa, 8), Host(kData));
  EXPECT_TRUE(mem_.dirty(kData >> 12));
  EXPECT_EQ(Counter("native.backing_requests"), 1u);
  EXPECT_EQ(mem_.share_breaks(), 1u);
}

TEST_F(NativeStrategyTest, SharedPageTableIsBrokenBeforeTheWalkerSetsAccessedBits) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU));  // leaf A = 0
  const uint64_t pt_gfn = (*tables_.Entry(kVa, 2) & pte::kAddrMask52) >> 12;
  mem_.SetStateQuietly(pt_gfn, State::kShared);
  // The walk reads the shared copy, then must break the share (a private
  // copy) before it sets A: writing the shared frame would change every
  // sharer.
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(mem_.state(pt_gfn), State::kPrivate);
  EXPECT_EQ(mem_.share_breaks(), 1u);
  EXPECT_EQ(*Leaf(kVa) & kA, kA);
  EXPECT_TRUE(mem_.dirty(pt_gfn));
}

TEST_F(NativeStrategyTest, NonResidentPagesAreMadeAvailableAndBrokenRamIsAHostError) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa2, kData2, PageSize::k4K, kP | kW | kU | kA | kD));
  mem_.SetStateQuietly(kData >> 12, State::kNotResident);
  mem_.SetStateQuietly(kData2 >> 12, State::kBroken);
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, Host(kData));
  ASSERT_EQ(Translate(Req(kVa2, Access::kRead, 3)), TranslateResult::kHostError);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa2, 1), nullptr);
  EXPECT_EQ(Counter("native.host_errors"), 1u);
}

TEST_F(NativeStrategyTest, Cr3WriteFlushesEverything) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD | pte::kGlobal));
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 0)), TranslateResult::kFixed);
  strategy_->OnCr3Write(vcpu_, vcpu_.cr3, /*no_flush=*/true);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa, 1), nullptr);
  EXPECT_EQ(Counter("native.cr3_writes"), 1u);
}

TEST_F(NativeStrategyTest, InvlpgFlushesOnlyThatPageAtEveryPrivilege) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa2, kData2, PageSize::k4K, kP | kW | kU | kA | kD));
  for (int cpl : {0, 3}) {
    ASSERT_EQ(Translate(Req(kVa, Access::kRead, cpl)), TranslateResult::kFixed);
    ASSERT_EQ(Translate(Req(kVa2, Access::kRead, cpl)), TranslateResult::kFixed);
  }
  // The guest remaps kVa and invalidates it.
  *Leaf(kVa) = kData2 | kP | kW | kU | kA | kD;
  strategy_->OnInvlpg(vcpu_, kVa + 0x800);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa2, 1), Host(kData2));
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa2, 1), Host(kData2));
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, Host(kData2));
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok());
}

TEST_F(NativeStrategyTest, InvalidateGfnsFlushesEveryVcpuThroughTheMailbox) {
  SoftTlb tlb1;
  VcpuMmu vcpu1;
  vcpu1.tlb = &tlb1;
  vcpu1.index = 1;
  vcpu1.cr3 = vcpu_.cr3;
  ASSERT_TRUE(strategy_->AttachVcpu(&vcpu1).ok());
  strategy_->LeaveQuiescence(vcpu1);
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa2, kData2, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  ASSERT_EQ(Translate(Req(kVa2, Access::kRead, 3)), TranslateResult::kFixed);
  TranslateOutcome out1;
  ASSERT_EQ(strategy_->Translate(vcpu1, Req(kVa, Access::kWrite, 3), &out1),
            TranslateResult::kFixed);

  // FrameTable evicts kData: the listener posts the flush...
  const uint64_t ticket = strategy_->InvalidateGfns(base::Gfn(kData >> 12), 1,
                                                    mmu::GfnChange::kBacking);
  EXPECT_FALSE(strategy_->AllVcpusSynced(ticket));
  // ...which no TLB sees before its vCPU syncs (between instructions).
  EXPECT_NE(tlb_.Lookup<Access::kRead>(kUsr, kVa, 1), nullptr);
  strategy_->SyncInvalidations(vcpu_);
  EXPECT_FALSE(strategy_->AllVcpusSynced(ticket));
  // No reverse map: the whole soft TLB goes, unrelated pages included.
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa2, 1), nullptr);
  // A quiescent vCPU counts as synced, and syncs when it leaves quiescence.
  mmu::PagingStrategy::EnterQuiescence(vcpu1);
  EXPECT_TRUE(strategy_->AllVcpusSynced(ticket));
  EXPECT_NE(tlb1.Lookup<Access::kWrite>(kUsr, kVa, 1), nullptr);
  strategy_->LeaveQuiescence(vcpu1);
  EXPECT_EQ(tlb1.Lookup<Access::kWrite>(kUsr, kVa, 1), nullptr);
  EXPECT_TRUE(strategy_->AllVcpusSynced(ticket));
  EXPECT_EQ(Counter("native.invalidations"), 1u);
  EXPECT_EQ(Counter("native.invalidated_gfns"), 1u);
  strategy_->DetachVcpu(&vcpu1);
}

TEST_F(NativeStrategyTest, TranslateRefusesToStartDuringABackingChange) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  mem_.BeginChange();
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kRetry);
  EXPECT_EQ(mem_.host_page_calls(), 0u);
  mem_.EndChange();
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
}

TEST_F(NativeStrategyTest, ABackingChangeDuringTheTranslationDiscardsItsFill) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  // Every HostPage call races with a complete change on another thread.
  mem_.set_host_page_hook([this] {
    mem_.BeginChange();
    mem_.EndChange();
  });
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kRetry);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa, 1), nullptr);
  EXPECT_EQ(Counter("native.retries"), 1u);
  // One race only: the second attempt succeeds.
  int races = 1;
  mem_.set_host_page_hook([&] {
    if (races-- > 0) {
      mem_.BeginChange();
      mem_.EndChange();
    }
  });
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kVa, 1), Host(kData));
  mem_.set_host_page_hook(nullptr);
}

TEST_F(NativeStrategyTest, SmapSupervisorAccessToUserPagesIsNeverFilled) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  const mmu::PagingMode old = vcpu_.mode;
  vcpu_.mode.smap = true;
  strategy_->OnModeChange(vcpu_, true, old);
  // EFLAGS.AC = 0: a protection fault.
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 0, /*ac=*/false)),
            TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, pfec::kPresent);
  // EFLAGS.AC = 1: allowed, but only for this access.
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 0, /*ac=*/true)), TranslateResult::kFixed);
  EXPECT_FALSE(out_.filled);
  EXPECT_EQ(out_.host_page, Host(kData));
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kSup, kVa, 1), nullptr);
  EXPECT_EQ(Counter("native.unfilled_smap"), 1u);
  // User accesses are unaffected and filled.
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.filled);
  // Supervisor pages are filled as usual under SMAP.
  ASSERT_TRUE(tables_.Map(kVa2, kData2, PageSize::k4K, kP | kW | kA | kD));
  ASSERT_EQ(Translate(Req(kVa2, Access::kRead, 0)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.filled);
}

TEST_F(NativeStrategyTest, SmepForbidsSupervisorFetchesFromUserPages) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  const mmu::PagingMode old = vcpu_.mode;
  vcpu_.mode.smep = true;
  strategy_->OnModeChange(vcpu_, true, old);
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 0)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.perms.read);
  EXPECT_FALSE(out_.perms.fetch);
  EXPECT_EQ(tlb_.Lookup<Access::kFetch>(kSup, kVa, 1), nullptr);
  ASSERT_EQ(Translate(Req(kVa, Access::kFetch, 0)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, pfec::kPresent | pfec::kFetch);
  // A user fetch is fine.
  ASSERT_EQ(Translate(Req(kVa, Access::kFetch, 3)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.perms.fetch);
}

TEST_F(NativeStrategyTest, NoExecutePagesAreNotFetchable) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD | kXd));
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_FALSE(out_.perms.fetch);
  ASSERT_EQ(Translate(Req(kVa, Access::kFetch, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, pfec::kPresent | pfec::kUser | pfec::kFetch);
}

TEST_F(NativeStrategyTest, LargePageIsFilledPerPieceAndInvlpgDropsEveryPiece) {
  constexpr uint64_t kLargeVa = 0x0000'4020'0000ull;
  ASSERT_TRUE(tables_.Map(kLargeVa, 0, PageSize::k2M, kP | kW | kU | kA | kD));
  ASSERT_EQ(Translate(Req(kLargeVa + 0x5010, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(out_.page_size_bytes, base::kLargePageSize2M);
  EXPECT_EQ(out_.host_page, Host(0x5000));
  ASSERT_EQ(Translate(Req(kLargeVa + 0x7000, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kLargeVa + 0x5010, 1), Host(0x5000) + 0x10);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kLargeVa + 0x6000, 1), nullptr);
  strategy_->OnInvlpg(vcpu_, kLargeVa + 0x1f'f000);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kLargeVa + 0x5010, 1), nullptr);
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kUsr, kLargeVa + 0x7000, 1), nullptr);
}

TEST_F(NativeStrategyTest, PagingDisabledIsIdentityOn32Bits) {
  const mmu::PagingMode mode = vcpu_.mode;
  vcpu_.paging = false;
  strategy_->OnModeChange(vcpu_, true, mode);
  ASSERT_EQ(Translate(Req(0xdead'0000'0000'0000ull | kData | 0x44, Access::kWrite, 0)),
            TranslateResult::kFixed);
  EXPECT_EQ(out_.gpa, kData | 0x44);
  EXPECT_EQ(out_.host_page, Host(kData));
  EXPECT_TRUE(out_.perms.read && out_.perms.write && out_.perms.fetch);
  EXPECT_EQ(out_.walk_refs, 0u);
  ASSERT_EQ(Translate(Req(kMmioGpa, Access::kRead, 0)), TranslateResult::kMmio);
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok());
}

TEST_F(NativeStrategyTest, HarvestDropsTranslationsSoThatWritesAreNotedAgain) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kFixed);
  EXPECT_EQ(mem_.Harvest(kData >> 12), 3);  // accessed and dirty
  EXPECT_EQ(invalidations_, 1);
  EXPECT_FALSE(strategy_->AllVcpusSynced(last_ticket_));
  strategy_->SyncInvalidations(vcpu_);  // the kick
  EXPECT_TRUE(strategy_->AllVcpusSynced(last_ticket_));
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kUsr, kVa, 1), nullptr);
  EXPECT_EQ(mem_.Harvest(kData >> 12), 0);
  strategy_->SyncInvalidations(vcpu_);
  // A read makes a writable translation (D is set in the guest PTE), so it
  // is noted dirty before it can be used.
  ASSERT_EQ(Translate(Req(kVa, Access::kRead, 3)), TranslateResult::kFixed);
  EXPECT_TRUE(out_.perms.write);
  EXPECT_EQ(mem_.Harvest(kData >> 12), 3);
}

TEST_F(NativeStrategyTest, AuditCatchesAStaleEntryTheGuestDidNotInvalidate) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kFixed);
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok());
  *Leaf(kVa) &= ~kW;  // no INVLPG
  const absl::Status audit = strategy_->Audit(vcpu_);
  EXPECT_EQ(audit.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(audit.message()).find("write"), std::string::npos) << audit;
  strategy_->OnInvlpg(vcpu_, kVa);
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok());
  // A clean leaf behind a writable entry is caught too.
  *Leaf(kVa) = kData | kP | kW | kU | kA | kD;
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kFixed);
  *Leaf(kVa) &= ~kD;
  EXPECT_FALSE(strategy_->Audit(vcpu_).ok());
}

TEST_F(NativeStrategyTest, AuditWritesNothing) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kU | kA | kD));
  ASSERT_EQ(Translate(Req(kVa, Access::kWrite, 3)), TranslateResult::kFixed);
  // Clear A in the upper levels (allowed to stay cached): Audit must not set it.
  uint64_t* pde = tables_.Entry(kVa, 2);
  *pde &= ~kA;
  const mmu::FlatMemory before = flat_;
  EXPECT_TRUE(strategy_->Audit(vcpu_).ok());
  for (uint64_t pa = 0; pa < kRamBytes; pa += 8) ASSERT_EQ(flat_.Read64(pa), before.Read64(pa));
}

TEST_F(NativeStrategyTest, AttachRejectsBadAndDuplicateVcpus) {
  SoftTlb tlb;
  VcpuMmu bad;
  bad.tlb = &tlb;
  bad.index = 2;  // max_vcpus is 2
  EXPECT_EQ(strategy_->AttachVcpu(&bad).code(), absl::StatusCode::kInvalidArgument);
  VcpuMmu dup;
  dup.tlb = &tlb;
  dup.index = 0;
  EXPECT_EQ(strategy_->AttachVcpu(&dup).code(), absl::StatusCode::kAlreadyExists);
  VcpuMmu no_tlb;
  EXPECT_EQ(strategy_->AttachVcpu(&no_tlb).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NativeStrategy::Create(&mem_, {.max_vcpus = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NativeStrategy::Create(nullptr, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(NativeStrategyTest, CountersAreNamedAndSummedOverVcpus) {
  const base::CounterSnapshot snap = strategy_->Counters();
  std::vector<std::string> names;
  for (const auto& v : snap) names.push_back(v.name);
  for (const char* want : {"native.translations", "native.walks", "native.walk_refs",
                           "native.tlb_fills", "native.guest_faults", "native.mmio",
                           "native.invalidations"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
  EXPECT_EQ(strategy_->name(), "native");
}

// The shared conformance suite.
std::unique_ptr<mmu::PagingStrategy> MakeNative(mmu::GuestPhysMemory* mem, uint32_t max_vcpus) {
  auto s = NativeStrategy::Create(mem, {.max_vcpus = max_vcpus});
  CHECK(s.ok()) << s.status();
  return std::move(*s);
}

using mmu::testing::StrategyConformanceTest;
INSTANTIATE_TEST_SUITE_P(Native, StrategyConformanceTest,
                         ::testing::Values(mmu::testing::StrategyFactory{"native", MakeNative}),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace cpu

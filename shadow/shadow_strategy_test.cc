// Unit tests of the shadow strategy's rules (shadow/shadow_strategy.h), one
// rule per test, each followed by Audit. Guest table edits are made as the
// guest makes them: a Translate for a write through an alias mapping of the
// table page, then the store into out.host_page (the strategy sees nothing
// else). The differential and conformance tests are in
// shadow_property_test.cc.
#include "shadow/shadow_strategy.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mmu/paging_strategy.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/soft_tlb.h"
#include "mmu/table_builder.h"
#include "tests/fakes/fake_guest_phys_memory.h"

namespace shadow {
namespace {

using mmu::Access;
using mmu::AccessRequest;
using mmu::PageSize;
using mmu::SoftTlb;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
using mmu::testing::FakeGuestPhysMemory;
namespace pte = mmu::pte;

constexpr uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser;
constexpr uint64_t kA = pte::kAccessed, kD = pte::kDirty;
constexpr SoftTlb::MmuIdx kSup = SoftTlb::MmuIdx::kSupervisor;

constexpr uint64_t kRamBytes = 2 << 20;
constexpr uint64_t kData = 0x100000, kData2 = 0x101000, kData3 = 0x102000;
constexpr uint64_t kVa = 0x0000'4000'0000ull;
constexpr uint64_t kVa2 = 0x0000'4000'1000ull;
constexpr uint64_t kVa3 = 0x0000'4000'2000ull;
// The alias region: gfn g of RAM at kAlias + g * 4 KiB (supervisor, R/W).
constexpr uint64_t kAlias = 0x0000'0080'0000'0000ull;

class ShadowStrategyTest : public ::testing::Test {
 protected:
  ShadowStrategyTest() : flat_(kRamBytes), mem_(flat_), tables_(flat_, 4) {}
  ~ShadowStrategyTest() override {
    if (strategy_ != nullptr) strategy_->DetachVcpu(&vcpu_);
  }

  void Start(ShadowStrategy::Options o = {}) {
    o.max_vcpus = 1;
    auto s = ShadowStrategy::Create(&mem_, o);
    ASSERT_TRUE(s.ok()) << s.status();
    strategy_ = std::move(*s);
    vcpu_.tlb = &tlb_;
    vcpu_.cr3 = tables_.root();
    ASSERT_TRUE(strategy_->AttachVcpu(&vcpu_).ok());
    strategy_->LeaveQuiescence(vcpu_);
    mem_.set_invalidation_hook([this](uint64_t first, uint64_t count, mmu::GfnChange change) {
      strategy_->InvalidateGfns(base::Gfn(first), count, change);
      strategy_->SyncInvalidations(vcpu_);
    });
    strategy_->OnCr3Write(vcpu_, 0, false);
  }
  // Maps the alias region over the first 512 gfns (one guest PT).
  void MapAlias() {
    for (uint64_t g = 0; g < kRamBytes >> 12; ++g) {
      ASSERT_TRUE(tables_.Map(kAlias + (g << 12), g << 12, PageSize::k4K, kP | kW | kA | kD));
    }
  }
  static AccessRequest Req(uint64_t va, Access access, int cpl = 0) {
    AccessRequest r;
    r.va = va;
    r.access = access;
    r.cpl = static_cast<uint8_t>(cpl);
    return r;
  }
  TranslateResult Translate(const AccessRequest& req) {
    out_ = TranslateOutcome{};
    return strategy_->Translate(vcpu_, req, &out_);
  }
  // The gfn an access reaches now (soft TLB first, as the CPU), or ~0.
  uint64_t GfnOf(uint64_t va, Access access = Access::kRead) {
    AccessRequest req = Req(va, access);
    const uint8_t* hit = access == Access::kRead ? tlb_.Lookup<Access::kRead>(kSup, va, 1)
                                                 : tlb_.Lookup<Access::kWrite>(kSup, va, 1);
    if (hit != nullptr) return (hit - mem_.FlatPage(0)) >> 12;
    if (Translate(req) != TranslateResult::kFixed) return ~uint64_t{0};
    return (out_.host_page - mem_.FlatPage(0)) >> 12;
  }
  // A guest store of `value` at gpa `entry_gpa`, through the alias, as the
  // CPU makes it. Returns whether the store translation was filled writable.
  bool GuestStore(uint64_t entry_gpa, uint64_t value) {
    const uint64_t va = kAlias + entry_gpa;
    uint8_t* p = tlb_.Lookup<Access::kWrite>(kSup, va, 8);
    bool tlb_writable = p != nullptr;
    if (p == nullptr) {
      EXPECT_EQ(Translate(Req(va, Access::kWrite)), TranslateResult::kFixed);
      EXPECT_EQ(out_.gpa, entry_gpa);
      p = out_.host_page + (va & 0xfff);
      tlb_writable = out_.filled && out_.perms.write;
    }
    std::memcpy(p, &value, 8);
    return tlb_writable;
  }
  uint64_t EntryGpa(uint64_t va, int level) {
    return static_cast<uint64_t>(reinterpret_cast<uint8_t*>(tables_.Entry(va, level)) -
                                 mem_.FlatPage(0));
  }
  uint64_t C(ShadowCounters::Id id) const { return strategy_->counters().Get(id); }
  void ExpectAudit() {
    const absl::Status s = strategy_->Audit(vcpu_);
    EXPECT_TRUE(s.ok()) << s;
  }

  mmu::FlatMemory flat_;
  FakeGuestPhysMemory mem_;
  mmu::TableBuilder<mmu::FlatMemory> tables_;
  SoftTlb tlb_;
  mmu::VcpuMmu vcpu_;
  std::unique_ptr<ShadowStrategy> strategy_;
  TranslateOutcome out_;
};

TEST_F(ShadowStrategyTest, CreateRejectsBadOptions) {
  EXPECT_EQ(ShadowStrategy::Create(nullptr, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShadowStrategy::Create(&mem_, {.max_vcpus = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShadowStrategy::Create(&mem_, {.max_vcpus = ShadowStrategy::kMaxVcpus + 1})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShadowStrategy::Create(&mem_, {.max_shadow_pages = 15}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShadowStrategy::Create(&mem_, {.flood_threshold = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ShadowStrategy::Create(&mem_, {.max_shadow_pages = 16}).ok());
  auto s = ShadowStrategy::Create(&mem_, {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->name(), "shadow");
}

TEST_F(ShadowStrategyTest, ShadowPagesAreReusedAcrossCr3Switches) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kA | kD));
  mmu::TableBuilder<mmu::FlatMemory> other(flat_, 4);
  ASSERT_TRUE(other.Map(kVa, kData2, PageSize::k4K, kP | kW | kA | kD));
  Start();
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  const uint64_t created = C(ShadowCounters::kMmuCacheMiss);
  const uint64_t reused = C(ShadowCounters::kRootsReused);
  for (int i = 0; i < 3; ++i) {
    vcpu_.cr3 = other.root();
    strategy_->OnCr3Write(vcpu_, tables_.root(), false);
    EXPECT_EQ(GfnOf(kVa), kData2 >> 12);
    vcpu_.cr3 = tables_.root();
    strategy_->OnCr3Write(vcpu_, other.root(), false);
    EXPECT_EQ(GfnOf(kVa), kData >> 12);
    ExpectAudit();
  }
  // The second space's four pages were built once; every later switch found
  // its root (and everything below it) in the cache.
  EXPECT_EQ(C(ShadowCounters::kMmuCacheMiss), created + 4);
  EXPECT_EQ(C(ShadowCounters::kRootsReused), reused + 5);
  EXPECT_GT(C(ShadowCounters::kShadowHits), 0u);
}

TEST_F(ShadowStrategyTest, GuestTableWriteTrapsAndTheNewEntryIsUsedAtOnce) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kA | kD));
  MapAlias();
  Start({.unsync = false});
  EXPECT_EQ(GfnOf(kVa), kData >> 12);  // shadows kVa's PT
  const uint64_t pte_gpa = EntryGpa(kVa, 1);
  // The PT page is never host-writable while shadowed: a write misses.
  EXPECT_EQ(Translate(Req(kAlias + pte_gpa, Access::kWrite)), TranslateResult::kFixed);
  EXPECT_FALSE(out_.filled && out_.perms.write);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kSup, kAlias + pte_gpa, 8), nullptr);
  ExpectAudit();
  // (That write was emulated too, and zapped kVa's spte: build it again.)
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  const uint64_t emulated = C(ShadowCounters::kEmulatedWrites);
  const uint64_t zapped = C(ShadowCounters::kMmuPteWrite);
  // Retarget kVa: trapped, emulated, and used by the very next access (no
  // INVLPG needed: the spte was zapped before the store landed).
  EXPECT_FALSE(GuestStore(pte_gpa, kData2 | kP | kW | kA | kD));
  EXPECT_EQ(C(ShadowCounters::kEmulatedWrites), emulated + 1);
  EXPECT_EQ(C(ShadowCounters::kMmuPteWrite), zapped + 1);
  EXPECT_EQ(GfnOf(kVa), kData2 >> 12);
  EXPECT_EQ(C(ShadowCounters::kMmuUnsync), 0u);
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, LeafGoesUnsyncAndIsResyncedAtInvlpgAndCr3Write) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa2, kData, PageSize::k4K, kP | kW | kA | kD));
  MapAlias();
  Start({.unsync = true, .audit_on_resync = true});
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  EXPECT_EQ(GfnOf(kVa2), kData >> 12);
  // The first write to the leaf table unsyncs it: no emulation, and the
  // alias is now filled writable (later writes do not trap).
  const uint64_t emulated = C(ShadowCounters::kEmulatedWrites);
  GuestStore(EntryGpa(kVa, 1), kData2 | kP | kW | kA | kD);
  EXPECT_EQ(C(ShadowCounters::kMmuUnsync), 1u);
  EXPECT_EQ(C(ShadowCounters::kEmulatedWrites), emulated);
  EXPECT_TRUE(GuestStore(EntryGpa(kVa2, 1), kData3 | kP | kW | kA | kD));
  // Until the guest invalidates, the old translation may legally stay.
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  // INVLPG resyncs that one entry.
  strategy_->OnInvlpg(vcpu_, kVa);
  EXPECT_EQ(GfnOf(kVa), kData2 >> 12);
  EXPECT_EQ(GfnOf(kVa2), kData >> 12);  // not invalidated yet: stale is legal
  // A CR3 write resyncs the whole page and write-protects it again.
  strategy_->OnCr3Write(vcpu_, vcpu_.cr3, false);
  EXPECT_EQ(C(ShadowCounters::kMmuResync), 1u);
  EXPECT_EQ(GfnOf(kVa2), kData3 >> 12);
  EXPECT_EQ(Translate(Req(kAlias + EntryGpa(kVa, 1), Access::kWrite)), TranslateResult::kFixed);
  EXPECT_EQ(C(ShadowCounters::kMmuUnsync), 2u);  // the next write unsyncs it again
  EXPECT_TRUE(strategy_->audit_failure().ok()) << strategy_->audit_failure();
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, WriteFloodingUnshadowsATable) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kA | kD));
  MapAlias();
  Start({.flood_threshold = 3, .unsync = false});
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  const uint64_t pt = EntryGpa(kVa, 1) & ~uint64_t{0xfff};
  // Three writes to unused entries of the PT, no fault using it between.
  for (int i = 1; i <= 3; ++i) GuestStore(pt + 8 * (100 + i), 0);
  EXPECT_EQ(C(ShadowCounters::kEmulatedWrites), 3u);
  EXPECT_EQ(C(ShadowCounters::kMmuFlooded), 1u);
  ExpectAudit();
  // Unshadowed: the next write is filled writable and no longer traps.
  EXPECT_TRUE(GuestStore(pt + 8 * 200, 0));
  EXPECT_TRUE(GuestStore(pt + 8 * 201, 0));
  EXPECT_EQ(C(ShadowCounters::kEmulatedWrites), 3u);
  // Used as a table again: shadowed and write-protected again.
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kSup, kAlias + pt, 8), nullptr);
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, GuestAccessedAndDirtyBitsAreSetAsHardwareDoes) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW));
  Start();
  uint64_t* leaf = tables_.Entry(kVa, 1);
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  EXPECT_EQ(*leaf & (kA | kD), kA);  // a read sets A only
  // The spte is read-only while D is clear: the first write misses...
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kSup, kVa, 1), nullptr);
  EXPECT_NE(tlb_.Lookup<Access::kRead>(kSup, kVa, 1), nullptr);
  const uint64_t fixed = C(ShadowCounters::kPfFixed);
  EXPECT_EQ(GfnOf(kVa, Access::kWrite), kData >> 12);
  // ...walks, sets D, and only then is the page writable without a trap.
  EXPECT_EQ(*leaf & (kA | kD), kA | kD);
  EXPECT_EQ(C(ShadowCounters::kPfFixed), fixed + 1);
  EXPECT_NE(tlb_.Lookup<Access::kWrite>(kSup, kVa, 1), nullptr);
  // The upper entries got A as well.
  for (int level = 2; level <= 4; ++level) EXPECT_TRUE(*tables_.Entry(kVa, level) & kA);
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, GuestPageFaultsAreInjectedWithErrorCodeAndCr2) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kU | kA));  // user, read-only
  Start();
  const uint64_t guest_faults = C(ShadowCounters::kPfGuest);
  // Not present: W|U.
  EXPECT_EQ(Translate(Req(kVa2 + 0x123, Access::kWrite, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.vector, mmu::kVectorPf);
  EXPECT_EQ(out_.error_code, mmu::pfec::kWrite | mmu::pfec::kUser);
  EXPECT_EQ(out_.cr2, kVa2 + 0x123);
  // Present but read-only, even after a read built the spte: P|W|U.
  EXPECT_EQ(GfnOf(kVa), kData >> 12);
  EXPECT_EQ(Translate(Req(kVa + 8, Access::kWrite, 3)), TranslateResult::kInjectGuestFault);
  EXPECT_EQ(out_.error_code, mmu::pfec::kPresent | mmu::pfec::kWrite | mmu::pfec::kUser);
  EXPECT_EQ(out_.cr2, kVa + 8);
  EXPECT_EQ(C(ShadowCounters::kPfGuest), guest_faults + 2);
  EXPECT_FALSE(*tables_.Entry(kVa, 1) & kD);  // a failed walk sets no D
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, InvalidateGfnsZapsExactlyTheSptesOfTheGfn) {
  ASSERT_TRUE(tables_.Map(kVa, kData, PageSize::k4K, kP | kW | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa2, kData, PageSize::k4K, kP | kW | kA | kD));
  ASSERT_TRUE(tables_.Map(kVa3, kData2, PageSize::k4K, kP | kW | kA | kD));
  Start();
  auto touch_all = [&] {
    for (uint64_t va : {kVa, kVa2, kVa3}) GfnOf(va, Access::kWrite);
  };
  touch_all();
  // kBacking: both sptes of kData go through the rmap; kData2's stays.
  strategy_->InvalidateGfns(base::Gfn(kData >> 12), 1, mmu::GfnChange::kBacking);
  strategy_->SyncInvalidations(vcpu_);
  EXPECT_EQ(C(ShadowCounters::kRmapZaps), 2u);
  ExpectAudit();
  const uint64_t hits = C(ShadowCounters::kShadowHits);
  EXPECT_EQ(GfnOf(kVa3), kData2 >> 12);  // answered by its surviving spte
  EXPECT_EQ(C(ShadowCounters::kShadowHits), hits + 1);
  const uint64_t fixed = C(ShadowCounters::kPfFixed);
  EXPECT_EQ(GfnOf(kVa), kData >> 12);  // rebuilt
  EXPECT_EQ(C(ShadowCounters::kPfFixed), fixed + 1);
  touch_all();

  // kWriteProtect (a share): no writable translation survives, and reads
  // reach the shared frame, not the old private one (zapped, not only made
  // read-only: sharing moves the gfn to another frame).
  mem_.Share(kData >> 12);
  EXPECT_EQ(C(ShadowCounters::kRmapZaps), 4u);
  EXPECT_EQ(tlb_.Lookup<Access::kWrite>(kSup, kVa, 1), nullptr);
  EXPECT_EQ(Translate(Req(kVa, Access::kRead)), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, mem_.HostPage(kData >> 12, false));
  EXPECT_NE(out_.host_page, mem_.FlatPage(kData >> 12));
  EXPECT_FALSE(out_.perms.write);
  ExpectAudit();
  // A write breaks the share and gets the private frame back.
  EXPECT_EQ(Translate(Req(kVa, Access::kWrite)), TranslateResult::kFixed);
  EXPECT_EQ(out_.host_page, mem_.FlatPage(kData >> 12));
  ExpectAudit();

  // kHarvest: the sptes go, so the next access is reported again.
  touch_all();
  mem_.Harvest(kData2 >> 12);
  EXPECT_FALSE(mem_.accessed(kData2 >> 12));
  EXPECT_EQ(tlb_.Lookup<Access::kRead>(kSup, kVa3, 1), nullptr);
  EXPECT_EQ(GfnOf(kVa3, Access::kWrite), kData2 >> 12);
  EXPECT_TRUE(mem_.accessed(kData2 >> 12));
  EXPECT_TRUE(mem_.dirty(kData2 >> 12));
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, ShadowPagesStayWithinTheBound) {
  // 48 pages in 48 different 2 MiB regions: a PT each, far beyond 16 pages.
  for (uint64_t i = 0; i < 48; ++i) {
    ASSERT_TRUE(tables_.Map(kVa + (i << 21), kData + ((i % 8) << 12), PageSize::k4K,
                            kP | kW | kA | kD));
  }
  Start({.max_shadow_pages = 16});
  for (int round = 0; round < 2; ++round) {
    for (uint64_t i = 0; i < 48; ++i) {
      EXPECT_EQ(GfnOf(kVa + (i << 21)), (kData >> 12) + i % 8);
      EXPECT_LE(strategy_->shadow_pages(), 16u);
    }
  }
  EXPECT_GT(C(ShadowCounters::kMmuRecycled), 60u);
  ExpectAudit();
}

TEST_F(ShadowStrategyTest, CountersAreNamed) {
  Start();
  std::vector<std::string> names;
  for (const auto& v : strategy_->Counters()) names.push_back(v.name);
  for (const char* want : {"shadow.pf_fixed", "shadow.pf_guest", "shadow.emulated_writes",
                           "shadow.mmu_unsync", "shadow.mmu_resync", "shadow.mmu_flooded",
                           "shadow.mmu_recycled", "shadow.roots_reused", "shadow.rmap_zaps"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
}

}  // namespace
}  // namespace shadow

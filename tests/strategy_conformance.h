// The conformance suite every paging strategy must pass, written once against
// the mmu::PagingStrategy interface and the reference walker.
//
// Usage, in exactly one test file per test binary (the TEST_Ps below are
// defined in this header):
//
//   #include "tests/strategy_conformance.h"
//   INSTANTIATE_TEST_SUITE_P(Native, StrategyConformanceTest,
//       ::testing::Values(mmu::testing::StrategyFactory{"native", MakeNative}));
//
// Links: mmu_reference, GTest.
//
// What it checks (the core correctness property of a strategy):
//   1. On random guest tables (shared and cyclic tables, large pages,
//      reserved bits, protection keys, tables and data outside RAM, shared
//      copy-on-write and non-resident frames, MMIO and broken gfns), a
//      CPU-like loop (soft-TLB lookup, Translate on a miss) gives, for every
//      access, the reference walker's answer: the host page of the gpa, the
//      #PF error code and CR2, #GP(0), or MMIO at the gpa; and it leaves the
//      guest's tables exactly as the reference does (A/D bits).
//   2. After any sequence of accesses, guest PTE edits followed by the
//      INVLPGs a correct guest would issue, CR3 reloads, mode changes and
//      FrameTable changes (share, break, evict, harvest), every soft-TLB hit,
//      at either privilege and for any access kind, is what a fresh reference
//      walk allows, to the same host page, with no A/D update skipped. And
//      the strategy's own Audit() agrees.
//
// Tracked writes. A strategy that write-protects guest tables (shadow) sees a
// guest's table edits only when the guest makes them through the MMU: a
// Translate for a write (or a soft-TLB write hit), then the store into the
// host page. With StrategyFactory::tracked_writes the harness adds an alias
// mapping of the table pages to every scenario (supervisor, read/write, in a
// root slot no scenario address uses, with its own tables just above the
// scenario's) and makes every entry edit such a store through it, as a guest
// kernel edits its tables. Without it, edits are written straight into guest
// memory (GuestWrite64), which native may see like any walk.
//
// MMU_PROPERTY_SEED=<n> replays one seed.
//
// Thread safety: single-threaded tests.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mmu/paging_strategy.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/reference_walker.h"
#include "mmu/soft_tlb.h"
#include "tests/fakes/fake_guest_phys_memory.h"

namespace mmu::testing {

struct StrategyFactory {
  std::string name;
  std::function<std::unique_ptr<PagingStrategy>(GuestPhysMemory* mem, uint32_t max_vcpus)> make;
  // Whether the strategy sets guest A/D bits exactly when the reference does.
  bool compares_memory = true;
  // Guest table edits must be guest stores through the MMU (see the file
  // comment): the strategy caches guest tables and tracks writes to them.
  bool tracked_writes = false;
};

inline void PrintTo(const StrategyFactory& f, std::ostream* os) { *os << f.name; }

// One VM with one vCPU over a small guest memory, driven like the soft CPU
// drives its strategy.
class StrategyHarness {
 public:
  static constexpr uint64_t kRamPages = 48;        // gfns [0, 48) are RAM
  static constexpr uint64_t kTablePages = 32;      // tables come from gfns [1, 32)
  static constexpr uint64_t kDataPages = 64;       // data targets in gfns [0, 64)
  // With tracked writes: the alias mapping's own tables (up to 4, for 5
  // levels) in gfns [kAliasTables, kAliasTables + 4), kept RAM.
  static constexpr uint64_t kAliasTables = kTablePages;
  static constexpr uint64_t kAliasTableCount = 4;

  explicit StrategyHarness(const StrategyFactory& factory)
      : flat_(kRamPages << base::kPageShift), mem_(flat_), tracked_(factory.tracked_writes) {
    auto s = factory.make(&mem_, 1);
    strategy_ = std::move(s);
    vcpu_.tlb = &tlb_;
    vcpu_.index = 0;
    CHECK(strategy_->AttachVcpu(&vcpu_).ok());
    strategy_->LeaveQuiescence(vcpu_);
    // The FrameTable listener, with the kick-and-wait of a single vCPU: the
    // vCPU applies the flush at once (it would at its next instruction).
    mem_.set_invalidation_hook([this](uint64_t first, uint64_t count, GfnChange change) {
      pending_ticket_ = strategy_->InvalidateGfns(base::Gfn(first), count, change);
      if (!defer_sync_) SyncVcpu();
    });
  }
  // With deferral on, the vCPU syncs only at SyncVcpu(): the invalidation
  // reaches it after the Translate under way returns, as it does a vCPU
  // thread at its next instruction while the verb's thread waits.
  void set_defer_sync(bool defer) { defer_sync_ = defer; }
  void SyncVcpu() {
    strategy_->SyncInvalidations(vcpu_);
    CHECK(strategy_->AllVcpusSynced(pending_ticket_));
  }
  ~StrategyHarness() { strategy_->DetachVcpu(&vcpu_); }

  FlatMemory& flat() { return flat_; }
  FakeGuestPhysMemory& mem() { return mem_; }
  bool tracked() const { return tracked_; }
  uint64_t tracked_stores() const { return tracked_stores_; }

  static bool IsAliasTable(uint64_t gfn) {
    return gfn >= kAliasTables && gfn < kAliasTables + kAliasTableCount;
  }
  // Whether the entry at `epa` belongs to the alias mapping (which edits
  // must leave alone).
  bool OnAliasPath(uint64_t epa) const {
    return tracked_ && (IsAliasTable(epa >> base::kPageShift) || epa == alias_slot_epa_);
  }

  // With tracked writes: maps every RAM page g at alias_base + g * 4 KiB
  // (supervisor, read/write, A and D set) through a free slot of the root
  // table at `cr3` that none of `vas` uses. Quiet writes: call it while
  // building, before the strategy sees the tables.
  void AddAlias(const PagingMode& mode, uint64_t cr3, const std::vector<uint64_t>& vas) {
    if (!tracked_) return;
    const uint64_t root = cr3 & ~uint64_t{0xfff};
    uint64_t slot = 1;
    for (;; ++slot) {
      CHECK_LT(slot, 256u);
      bool used = flat_.Read64(root + slot * 8) != 0;
      for (uint64_t va : vas) used |= LevelIndex(va, mode.levels) == slot;
      if (!used) break;
    }
    alias_slot_epa_ = root + slot * 8;
    alias_base_ = slot << LevelShift(mode.levels);
    constexpr uint64_t kTable = pte::kPresent | pte::kWritable | pte::kAccessed;
    uint64_t epa = alias_slot_epa_;
    uint64_t table = kAliasTables;
    for (int level = mode.levels; level > 1; --level, ++table) {
      flat_.Write64(epa, (table << base::kPageShift) | kTable);
      epa = table << base::kPageShift;  // index 0 at every lower level
    }
    for (uint64_t g = 0; g < kRamPages; ++g) {
      flat_.Write64(epa + g * 8, (g << base::kPageShift) | kTable | pte::kDirty);
    }
  }

  // A guest store of 8 bytes at `gpa`. With tracked writes, as the CPU makes
  // it at CPL 0 through the alias: a soft-TLB write hit stores through the
  // hit pointer, a miss asks Translate and stores through out.host_page.
  // Returns false (and stores nothing) if the store could not be made.
  bool GuestStore64(uint64_t gpa, uint64_t value) {
    if (!tracked_) {
      mem_.GuestWrite64(gpa, value);
      return true;
    }
    const uint64_t va = alias_base_ + gpa;
    uint8_t* p = tlb_.Lookup<Access::kWrite>(SoftTlb::MmuIdx::kSupervisor, va, 8);
    if (p == nullptr) {
      AccessRequest req;
      req.va = va;
      req.access = Access::kWrite;
      req.cpl = 0;
      TranslateOutcome out;
      const TranslateResult r = strategy_->Translate(vcpu_, req, &out);
      if (r != TranslateResult::kFixed || out.gpa != gpa) return false;
      p = out.host_page + (va & base::kPageMask);
    }
    std::memcpy(p, &value, sizeof(value));
    ++tracked_stores_;
    return true;
  }
  PagingStrategy& strategy() { return *strategy_; }
  VcpuMmu& vcpu() { return vcpu_; }
  SoftTlb& tlb() { return tlb_; }

  static SoftTlb::MmuIdx IdxOf(const AccessRequest& req) {
    return req.user_access() ? SoftTlb::MmuIdx::kUser : SoftTlb::MmuIdx::kSupervisor;
  }
  uint8_t* Lookup(SoftTlb::MmuIdx idx, uint64_t va, Access access) {
    switch (access) {
      case Access::kRead: return tlb_.Lookup<Access::kRead>(idx, va, 1);
      case Access::kWrite: return tlb_.Lookup<Access::kWrite>(idx, va, 1);
      case Access::kFetch: return tlb_.Lookup<Access::kFetch>(idx, va, 1);
    }
    return nullptr;
  }

 private:
  FlatMemory flat_;
  FakeGuestPhysMemory mem_;
  const bool tracked_;
  uint64_t alias_base_ = 0;
  uint64_t alias_slot_epa_ = ~uint64_t{0};
  uint64_t tracked_stores_ = 0;
  bool defer_sync_ = false;
  uint64_t pending_ticket_ = 0;
  SoftTlb tlb_;
  VcpuMmu vcpu_;
  std::unique_ptr<PagingStrategy> strategy_;
};

class StrategyConformanceTest : public ::testing::TestWithParam<StrategyFactory> {
 protected:
  using Rng = std::mt19937_64;
#ifdef MMU_PROPERTY_LONG
  static constexpr int kScenarios = 3000;
#else
  static constexpr int kScenarios = 60;
#endif
  static constexpr int kOpsPerScenario = 60;

  static bool Chance(Rng& rng, int percent) { return static_cast<int>(rng() % 100) < percent; }
  static uint64_t SeedFor(int scenario, uint64_t salt) {
    if (const char* env = std::getenv("MMU_PROPERTY_SEED")) return std::strtoull(env, nullptr, 0);
    return salt * 1'000'003 + static_cast<uint64_t>(scenario);
  }
  static bool SameMemory(const FlatMemory& a, const FlatMemory& b) {
    for (uint64_t pa = 0; pa < a.size_bytes(); pa += 8) {
      if (a.Read64(pa) != b.Read64(pa)) return false;
    }
    return true;
  }

  // Random entry bits (after walker_property_test.cc's generator).
  static uint64_t RandomFlags(Rng& rng, int level, bool* is_large) {
    uint64_t e = 0;
    if (Chance(rng, 97)) e |= pte::kPresent;
    if (Chance(rng, 90)) e |= pte::kWritable;
    if (Chance(rng, 92)) e |= pte::kUser;
    if (Chance(rng, 40)) e |= pte::kAccessed;
    if (Chance(rng, 30)) e |= pte::kDirty;
    if (Chance(rng, 5)) e |= pte::kNoExecute;
    if (Chance(rng, 20)) e |= pte::kGlobal;
    if (Chance(rng, 20)) e |= (rng() & 0xf) << pte::kProtKeyShift;
    *is_large = false;
    if ((level == 2 || level == 3) && Chance(rng, 15)) {
      e |= pte::kPageSize;
      *is_large = true;
    } else if (level >= 4 && Chance(rng, 2)) {
      e |= pte::kPageSize;  // reserved
    }
    if (Chance(rng, 2)) e |= uint64_t{1} << (36 + rng() % 16);  // maybe reserved
    return e;
  }

  struct Scenario {
    PagingMode mode;
    uint64_t cr3 = 0;
    std::vector<uint64_t> vas;  // addresses the tables were built for
  };

  // Builds random tables in gfns [1, kTablePages) for 8 random addresses.
  static Scenario Build(Rng& rng, FlatMemory& flat) {
    Scenario s;
    s.mode.levels = Chance(rng, 20) ? 5 : 4;
    s.mode.wp = Chance(rng, 70);
    s.mode.nxe = Chance(rng, 80);
    s.mode.smep = Chance(rng, 30);
    s.mode.smap = Chance(rng, 30);
    s.mode.pke = Chance(rng, 15);
    s.mode.gbpages = Chance(rng, 80);
    static constexpr int kMaxPhy[] = {36, 39, 46, 52};
    s.mode.maxphyaddr = kMaxPhy[rng() % 4];
    s.mode.pkru = static_cast<uint32_t>(rng()) & 0x5555'5555;
    std::vector<uint64_t> tables;
    auto new_table = [&]() -> uint64_t {
      if (!tables.empty() &&
          (Chance(rng, 10) || tables.size() + 1 >= StrategyHarness::kTablePages)) {
        return tables[rng() % tables.size()];
      }
      tables.push_back((tables.size() + 1) << base::kPageShift);
      return tables.back();
    };
    s.cr3 = new_table() | (Chance(rng, 20) ? 0x18 : 0);
    const int va_bits = s.mode.levels == 5 ? 57 : 48;
    for (int i = 0; i < 8; ++i) {
      uint64_t va = rng() & ((uint64_t{1} << va_bits) - 1);
      if (Chance(rng, 50)) va &= 0x7fff'ffffull;
      if (va >> (va_bits - 1)) va |= ~((uint64_t{1} << va_bits) - 1);
      s.vas.push_back(va);
    }
    // Pass 0 builds each path, sometimes replacing entries that earlier
    // paths use; pass 1 only fills holes so most paths end in a leaf.
    for (int pass = 0; pass < 2; ++pass) for (uint64_t va : s.vas) {
      uint64_t table = s.cr3 & ~uint64_t{0xfff};
      for (int level = s.mode.levels; level >= 1; --level) {
        const uint64_t epa = table + LevelIndex(va, level) * 8;
        uint64_t e = flat.Read64(epa);
        if (e == 0 || (pass == 0 && Chance(rng, 10))) {
          bool large = false;
          const uint64_t flags = RandomFlags(rng, level, &large);
          uint64_t target;
          if (level == 1 || large) {
            const uint64_t align = LevelPageSize(level);
            target = Chance(rng, 90)
                         ? ((rng() % StrategyHarness::kDataPages) << base::kPageShift)
                         : (rng() & 0x000f'ffff'ffff'f000ull);
            target &= ~(align - 1);
          } else {
            target = new_table();
          }
          e = flags | (target & pte::kAddrMask52);
          flat.Write64(epa, e);
        }
        if (!(e & pte::kPresent)) break;
        if (level == 1 || ((level == 2 || level == 3) && (e & pte::kPageSize))) break;
        table = e & pte::kAddrMask52;
        if (table >= flat.size_bytes()) break;
      }
    }
    return s;
  }

  // Backing states for data-only gfns (never for table gfns below
  // kTablePages, which must stay RAM for the reference to agree, nor for the
  // alias tables of tracked writes), and shared / non-resident states for
  // any RAM gfn.
  static void RandomBacking(Rng& rng, FakeGuestPhysMemory& mem, bool tracked = false) {
    for (uint64_t g = 0; g < mem.num_gfns(); ++g) {
      const int r = static_cast<int>(rng() % 100);
      const bool data_only =
          g >= StrategyHarness::kTablePages && !(tracked && StrategyHarness::IsAliasTable(g));
      if (r < 10) {
        mem.SetStateQuietly(g, FakeGuestPhysMemory::State::kShared);
      } else if (r < 15) {
        mem.SetStateQuietly(g, FakeGuestPhysMemory::State::kNotResident);
      } else if (data_only && r < 20) {
        mem.SetStateQuietly(g, FakeGuestPhysMemory::State::kMmio);
      } else if (data_only && r < 21) {
        mem.SetStateQuietly(g, FakeGuestPhysMemory::State::kBroken);
      }
    }
  }

  static AccessRequest RandomRequest(Rng& rng, const std::vector<uint64_t>& vas) {
    AccessRequest req;
    req.va = vas[rng() % vas.size()];
    if (Chance(rng, 30)) req.va += rng() % 0x1000;  // same page
    if (Chance(rng, 10)) req.va += rng() % 0x3000;  // maybe the next ones
    if (Chance(rng, 3)) req.va = rng();
    req.access = static_cast<Access>(rng() % 3);
    req.cpl = Chance(rng, 50) ? 3 : 0;
    req.implicit_supervisor = Chance(rng, 5);
    req.rflags_ac = Chance(rng, 50);
    return req;
  }

  // The guest-physical addresses of the entries on va's path (what a guest
  // that edits one of them must INVLPG va for).
  static std::vector<uint64_t> PathOf(FlatMemory& flat, const PagingMode& mode, uint64_t cr3,
                                      uint64_t va) {
    std::vector<uint64_t> path;
    uint64_t table = cr3 & ~uint64_t{0xfff};
    for (int level = mode.levels; level >= 1; --level) {
      if (table >= flat.size_bytes()) break;
      const uint64_t epa = table + LevelIndex(va, level) * 8;
      path.push_back(epa);
      const uint64_t e = flat.Read64(epa);
      if (!(e & pte::kPresent)) break;
      if (level == 1 || ((level == 2 || level == 3) && (e & pte::kPageSize))) break;
      table = e & pte::kAddrMask52;
    }
    return path;
  }

  // One access as the soft CPU makes it: the soft TLB, else Translate, each
  // checked against the reference walker on a copy of memory.
  void Access1(StrategyHarness& h, const Scenario& s, const AccessRequest& req, bool compare_mem,
               int* stats) {
    const SoftTlb::MmuIdx idx = StrategyHarness::IdxOf(req);
    if (h.Lookup(idx, req.va, req.access) != nullptr) {
      ++stats[0];
      return;  // hits are checked by CheckHits
    }
    FlatMemory ref_mem = h.flat();
    const reference::Outcome ref = reference::Walk1D(ref_mem, s.mode, h.vcpu().cr3, req);
    TranslateOutcome out;
    const TranslateResult result = h.strategy().Translate(h.vcpu(), req, &out);
    SCOPED_TRACE(::testing::Message() << "va 0x" << std::hex << req.va << std::dec << " "
                                      << req.access << " cpl " << int{req.cpl} << " implicit "
                                      << req.implicit_supervisor << " ac " << req.rflags_ac
                                      << " ref " << ref.status << " got "
                                      << TranslateResultName(result));
    switch (ref.status) {
      case WalkStatus::kOk: {
        const uint64_t gfn = ref.gpa >> base::kPageShift;
        const auto state = h.mem().state(gfn);
        if (state == FakeGuestPhysMemory::State::kMmio) {
          ASSERT_EQ(result, TranslateResult::kMmio);
          ASSERT_EQ(out.gpa, ref.gpa);
          ++stats[1];
        } else if (state == FakeGuestPhysMemory::State::kBroken) {
          ASSERT_EQ(result, TranslateResult::kHostError);
        } else {
          ASSERT_EQ(result, TranslateResult::kFixed);
          ASSERT_EQ(out.gpa, ref.gpa);
          ASSERT_EQ(out.host_page, h.mem().HostPage(gfn, req.access == Access::kWrite));
          ASSERT_NE(out.host_page, nullptr);
          ++stats[2];
        }
        break;
      }
      case WalkStatus::kPageFault:
        ASSERT_EQ(result, TranslateResult::kInjectGuestFault);
        ASSERT_EQ(out.vector, kVectorPf);
        ASSERT_EQ(out.error_code, ref.error_code);
        ASSERT_EQ(out.cr2, req.va);
        ++stats[3];
        break;
      case WalkStatus::kNonCanonical:
        ASSERT_EQ(result, TranslateResult::kInjectGuestFault);
        ASSERT_EQ(out.vector, kVectorGp);
        ASSERT_EQ(out.error_code, 0u);
        break;
      case WalkStatus::kBadTableAddress:
        ASSERT_EQ(result, TranslateResult::kInjectGuestFault);
        ASSERT_EQ(out.vector, kVectorPf);
        ASSERT_EQ(out.error_code, BaseErrorCode(s.mode, req));
        break;
      default:
        FAIL() << "unexpected reference status";
    }
    if (compare_mem) {
      ASSERT_TRUE(SameMemory(h.flat(), ref_mem)) << "accessed/dirty bits differ";
    }
  }

  // Property 2: every hit is what a fresh reference walk allows.
  void CheckHits(StrategyHarness& h, const Scenario& s, const std::set<uint64_t>& vas,
                 int* checked) {
    for (uint64_t va : vas) {
      for (auto idx : {SoftTlb::MmuIdx::kSupervisor, SoftTlb::MmuIdx::kUser}) {
        for (Access access : {Access::kRead, Access::kWrite, Access::kFetch}) {
          uint8_t* hit = h.Lookup(idx, va, access);
          if (hit == nullptr) continue;
          AccessRequest req;
          req.va = va;
          req.access = access;
          req.cpl = idx == SoftTlb::MmuIdx::kUser ? 3 : 0;
          req.rflags_ac = false;
          FlatMemory ref_mem = h.flat();
          const reference::Outcome ref = reference::Walk1D(ref_mem, s.mode, h.vcpu().cr3, req);
          SCOPED_TRACE(::testing::Message()
                       << "soft-TLB hit: va 0x" << std::hex << va << std::dec << " " << access
                       << (idx == SoftTlb::MmuIdx::kUser ? " user" : " supervisor"));
          ASSERT_EQ(ref.status, WalkStatus::kOk) << "error code " << ref.error_code;
          ASSERT_EQ(hit - (va & base::kPageMask),
                    h.mem().HostPage(ref.gpa >> base::kPageShift, access == Access::kWrite));
          ASSERT_TRUE(SameMemory(h.flat(), ref_mem)) << "the hit skipped an A/D update";
          ++*checked;
        }
      }
    }
  }
};

TEST_P(StrategyConformanceTest, RandomTablesAgreeWithReferenceWalker) {
  int stats[4] = {};  // hits, mmio, fixed, page faults
  for (int i = 0; i < kScenarios; ++i) {
    const uint64_t seed = SeedFor(i, 11);
    Rng rng(seed);
    StrategyHarness h(GetParam());
    const Scenario s = Build(rng, h.flat());
    h.AddAlias(s.mode, s.cr3, s.vas);
    RandomBacking(rng, h.mem(), h.tracked());
    h.vcpu().mode = s.mode;
    h.vcpu().cr3 = s.cr3;
    h.strategy().OnCr3Write(h.vcpu(), 0, false);
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    for (int p = 0; p < kOpsPerScenario; ++p) {
      ASSERT_NO_FATAL_FAILURE(
          Access1(h, s, RandomRequest(rng, s.vas), GetParam().compares_memory, stats));
    }
  }
  // The generator must exercise every outcome, or the test proves little.
  const int total = kScenarios * kOpsPerScenario;
  EXPECT_GT(stats[0], total / 50) << "soft-TLB hits";
  EXPECT_GT(stats[1], 0) << "MMIO";
  EXPECT_GT(stats[2], total / 20) << "fills";
  EXPECT_GT(stats[3], total / 20) << "page faults";
  std::printf("%s: hits %d mmio %d fixed %d #PF %d\n", GetParam().name.c_str(), stats[0],
              stats[1], stats[2], stats[3]);
}

TEST_P(StrategyConformanceTest, SoftTlbHitsStayCorrectAcrossEditsFlushesAndBackingChanges) {
  int stats[4] = {};
  int edits = 0, backing_changes = 0, hits_checked = 0;
  uint64_t tracked_stores = 0;
  for (int i = 0; i < kScenarios; ++i) {
    const uint64_t seed = SeedFor(i, 12);
    Rng rng(seed);
    StrategyHarness h(GetParam());
    Scenario s = Build(rng, h.flat());
    h.AddAlias(s.mode, s.cr3, s.vas);
    RandomBacking(rng, h.mem(), h.tracked());
    h.vcpu().mode = s.mode;
    h.vcpu().cr3 = s.cr3;
    h.strategy().OnCr3Write(h.vcpu(), 0, false);
    std::set<uint64_t> touched;  // every va accessed: all fills come from these
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    for (int op = 0; op < kOpsPerScenario; ++op) {
      SCOPED_TRACE(::testing::Message() << "op " << op);
      const int what = static_cast<int>(rng() % 100);
      if (what < 75) {
        const AccessRequest req = RandomRequest(rng, s.vas);
        touched.insert(req.va);
        ASSERT_NO_FATAL_FAILURE(Access1(h, s, req, GetParam().compares_memory, stats));
      } else if (what < 90 && !touched.empty()) {
        // Edit one entry on a touched address's path, then INVLPG every
        // touched address whose path uses that entry (a correct guest).
        auto it = touched.begin();
        std::advance(it, rng() % touched.size());
        const std::vector<uint64_t> path = PathOf(h.flat(), s.mode, h.vcpu().cr3, *it);
        if (path.empty()) continue;
        const bool leaf = Chance(rng, 70);
        const uint64_t epa = leaf ? path.back() : path[rng() % path.size()];
        if (h.OnAliasPath(epa)) continue;  // a scenario path reached the alias tables
        uint64_t e = h.flat().Read64(epa);
        static constexpr uint64_t kBits[] = {pte::kPresent, pte::kWritable, pte::kUser,
                                             pte::kAccessed, pte::kDirty, pte::kNoExecute};
        e ^= kBits[rng() % 6];
        if (leaf && epa == path.back() && Chance(rng, 25) && !(e & pte::kPageSize)) {
          e = (e & ~pte::kAddrMask52) |
              ((rng() % StrategyHarness::kDataPages) << base::kPageShift);  // retarget
        }
        ASSERT_TRUE(h.GuestStore64(epa, e)) << "the guest's table edit did not go through";
        ++edits;
        if (Chance(rng, 20)) {
          h.strategy().OnCr3Write(h.vcpu(), h.vcpu().cr3, false);
        } else {
          for (uint64_t va : touched) {
            const std::vector<uint64_t> p = PathOf(h.flat(), s.mode, h.vcpu().cr3, va);
            // Compare against the path before the edit too: the edit may
            // have cut the path short.
            bool uses = false;
            for (uint64_t x : p) uses |= x == epa;
            for (uint64_t x : path) uses |= (va == *it && x == epa);
            if (uses) h.strategy().OnInvlpg(h.vcpu(), va);
          }
        }
      } else if (what < 93) {
        h.strategy().OnCr3Write(h.vcpu(), h.vcpu().cr3, Chance(rng, 50));
      } else if (what < 95) {
        const PagingMode old = h.vcpu().mode;
        switch (rng() % 3) {
          case 0: h.vcpu().mode.wp = !h.vcpu().mode.wp; break;
          case 1: h.vcpu().mode.smap = !h.vcpu().mode.smap; break;
          default: h.vcpu().mode.smep = !h.vcpu().mode.smep; break;
        }
        s.mode = h.vcpu().mode;
        h.strategy().OnModeChange(h.vcpu(), true, old);
      } else {
        // FrameTable changes a data or table frame's backing.
        const uint64_t gfn = rng() % StrategyHarness::kTablePages;
        switch (rng() % 4) {
          case 0: h.mem().Share(gfn); break;
          case 1: h.mem().BreakShare(gfn); break;
          case 2:
            if (h.mem().state(gfn) != FakeGuestPhysMemory::State::kMmio) {
              h.mem().Change(gfn, GfnChange::kBacking, FakeGuestPhysMemory::State::kNotResident);
            }
            break;
          default: h.mem().Harvest(gfn); break;
        }
        ++backing_changes;
      }
      ASSERT_NO_FATAL_FAILURE(CheckHits(h, s, touched, &hits_checked));
      const absl::Status audit = h.strategy().Audit(h.vcpu());
      ASSERT_TRUE(audit.ok()) << audit;
    }
    tracked_stores += h.tracked_stores();
  }
  EXPECT_GT(stats[0], kScenarios / 4) << "soft-TLB hits";
  EXPECT_GT(hits_checked, kScenarios * 10) << "hits checked against the reference";
  EXPECT_GT(edits, kScenarios);
  EXPECT_GT(backing_changes, kScenarios / 2);
  if (GetParam().tracked_writes) {
    EXPECT_EQ(tracked_stores, static_cast<uint64_t>(edits)) << "edits made as guest stores";
  }
  std::printf("%s: hits %d mmio %d fixed %d #PF %d edits %d backing changes %d hits checked %d\n",
              GetParam().name.c_str(), stats[0], stats[1], stats[2], stats[3], edits,
              backing_changes, hits_checked);
}

// A FrameTable verb on another thread bumps the counter and runs the
// listeners (the strategy's DropGfns) just after a Translate sampled the
// counter, and stores the gfn's new backing only once the vCPU has synced.
// Whatever the Translate built meanwhile from the old backing (an EPT or
// shadow entry, a soft-TLB fill) must not outlive the change: every later
// access and hit agrees with the reference and the new backing, and the
// strategy's Audit agrees. A strategy that built an entry after its DropGfns
// had run would keep mapping the old frame (a share's writes lost).
TEST_P(StrategyConformanceTest, AChangeStartedDuringATranslationLeavesNothingStale) {
  int stats[4] = {};
  int races = 0, hits_checked = 0;
  for (int i = 0; i < kScenarios; ++i) {
    const uint64_t seed = SeedFor(i, 13);
    Rng rng(seed);
    StrategyHarness h(GetParam());
    Scenario s = Build(rng, h.flat());
    h.AddAlias(s.mode, s.cr3, s.vas);
    RandomBacking(rng, h.mem(), h.tracked());
    h.vcpu().mode = s.mode;
    h.vcpu().cr3 = s.cr3;
    h.strategy().OnCr3Write(h.vcpu(), 0, false);
    std::set<uint64_t> touched;
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    for (int op = 0; op < kOpsPerScenario; ++op) {
      SCOPED_TRACE(::testing::Message() << "op " << op);
      const AccessRequest req = RandomRequest(rng, s.vas);
      touched.insert(req.va);
      const SoftTlb::MmuIdx idx = StrategyHarness::IdxOf(req);
      if (Chance(rng, 50) || h.Lookup(idx, req.va, req.access) != nullptr) {
        ASSERT_NO_FATAL_FAILURE(Access1(h, s, req, GetParam().compares_memory, stats));
        continue;
      }
      // The gfn the change hits: a table on the access's path or its target.
      std::vector<uint64_t> gfns;
      for (uint64_t epa : PathOf(h.flat(), s.mode, h.vcpu().cr3, req.va)) {
        gfns.push_back(epa >> base::kPageShift);
      }
      FlatMemory ref_mem = h.flat();
      const reference::Outcome ref = reference::Walk1D(ref_mem, s.mode, h.vcpu().cr3, req);
      if (ref.status == WalkStatus::kOk) gfns.push_back(ref.gpa >> base::kPageShift);
      if (gfns.empty()) continue;
      const uint64_t gfn = gfns[rng() % gfns.size()];
      const auto state = h.mem().state(gfn);
      if (gfn >= h.mem().num_gfns() || state == FakeGuestPhysMemory::State::kMmio ||
          state == FakeGuestPhysMemory::State::kBroken) {
        continue;
      }
      // Private frames become shared (the lost-write case), others go.
      const bool share = state == FakeGuestPhysMemory::State::kPrivate;
      const GfnChange change = share ? GfnChange::kWriteProtect : GfnChange::kBacking;
      bool started = false;
      h.set_defer_sync(true);
      h.mem().set_backing_seq_hook([&] {
        h.mem().StartChange(gfn, change);
        started = true;
      });
      TranslateOutcome out;
      (void)h.strategy().Translate(h.vcpu(), req, &out);
      h.mem().set_backing_seq_hook(nullptr);
      h.set_defer_sync(false);
      if (!started) continue;
      ++races;
      h.SyncVcpu();
      h.mem().FinishChange(gfn, share ? FakeGuestPhysMemory::State::kShared
                                      : FakeGuestPhysMemory::State::kNotResident);
      const absl::Status audit = h.strategy().Audit(h.vcpu());
      ASSERT_TRUE(audit.ok()) << audit;
      ASSERT_NO_FATAL_FAILURE(CheckHits(h, s, touched, &hits_checked));
      ASSERT_NO_FATAL_FAILURE(Access1(h, s, req, GetParam().compares_memory, stats));
    }
  }
  EXPECT_GT(races, kScenarios * 5) << "changes raced with a translation";
  EXPECT_GT(stats[2], kScenarios) << "fills";
  std::printf("%s: races %d fixed %d hits checked %d\n", GetParam().name.c_str(), races, stats[2],
              hits_checked);
}

}  // namespace mmu::testing

// Property tests: random page tables and random (address, access, mode)
// triples. The 1-D and 2-D walkers must agree with the reference walker on the
// outcome (translation, #PF error code, EPT exit information), on the number
// of memory references, and on every accessed/dirty bit written.
//
// The default suite runs a few thousand cases per walker; building with
// -DVMM_LONG_TESTS=ON runs a hundred times more. MMU_PROPERTY_SEED=<n> in the
// environment replays one seed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "mmu/reference_walker.h"
#include "mmu/walker.h"

namespace mmu {
namespace {

#ifdef MMU_PROPERTY_LONG
constexpr int kScenarios = 20000;
#else
constexpr int kScenarios = 200;
#endif
constexpr int kProbesPerScenario = 24;

using Rng = std::mt19937_64;

bool Chance(Rng& rng, int percent) { return static_cast<int>(rng() % 100) < percent; }

// Guest-physical memory as the generator sees it: where each guest page lives
// in host memory. For 1-D walks it is the identity.
class GuestLayout {
 public:
  GuestLayout(FlatMemory& host, std::vector<uint64_t> gfn_to_host) :
      host_(host), gfn_to_host_(std::move(gfn_to_host)) {}
  uint64_t num_pages() const { return gfn_to_host_.size(); }
  uint64_t* EntryAt(uint64_t gpa) {
    return host_.PageAt(gfn_to_host_[gpa >> 12] << 12) + (gpa & 0xfff) / 8;
  }

 private:
  FlatMemory& host_;
  std::vector<uint64_t> gfn_to_host_;
};

// Random bits for an entry at `level`; `leaf` entries may get PS.
uint64_t RandomFlags(Rng& rng, int level, bool* is_large) {
  uint64_t e = 0;
  if (Chance(rng, 96)) e |= pte::kPresent;
  if (Chance(rng, 90)) e |= pte::kWritable;
  if (Chance(rng, 88)) e |= pte::kUser;
  if (Chance(rng, 40)) e |= pte::kAccessed;
  if (Chance(rng, 30)) e |= pte::kDirty;
  if (Chance(rng, 10)) e |= pte::kNoExecute;
  if (Chance(rng, 20)) e |= pte::kGlobal;
  if (Chance(rng, 10)) e |= pte::kWriteThrough | pte::kCacheDisable;
  if (Chance(rng, 30)) e |= (rng() & 0xf) << pte::kProtKeyShift;
  if (Chance(rng, 15)) e |= (rng() & 0x7) << 9;  // ignored bits 11:9
  *is_large = false;
  if (level == 2 || level == 3) {
    if (Chance(rng, 20)) {
      e |= pte::kPageSize;
      *is_large = true;
    }
  } else if (level >= 4 && Chance(rng, 2)) {
    e |= pte::kPageSize;  // reserved
  } else if (level == 1 && Chance(rng, 20)) {
    e |= pte::kPat4K;
  }
  if (Chance(rng, 2)) e |= uint64_t{1} << (36 + rng() % 16);  // maybe reserved for MAXPHYADDR
  if (*is_large && Chance(rng, 5)) e |= uint64_t{1} << 13;   // reserved in a large leaf
  return e;
}

struct Scenario {
  PagingMode mode;
  uint64_t cr3 = 0;
  std::vector<uint64_t> probe_vas;
};

// Fills random guest tables reachable from a root page for a set of probe
// addresses. Table pages are drawn from guest pages [1, num_pages); some
// entries point at already-used tables (sharing, even cycles), some leaves at
// addresses outside guest memory.
Scenario BuildGuestTables(Rng& rng, GuestLayout& guest) {
  Scenario s;
  s.mode.levels = Chance(rng, 25) ? 5 : 4;
  s.mode.wp = Chance(rng, 70);
  s.mode.nxe = Chance(rng, 80);
  s.mode.smep = Chance(rng, 40);
  s.mode.smap = Chance(rng, 40);
  s.mode.pke = Chance(rng, 30);
  s.mode.gbpages = Chance(rng, 80);
  static constexpr int kMaxPhy[] = {36, 39, 46, 52};
  s.mode.maxphyaddr = kMaxPhy[rng() % 4];
  s.mode.pkru = static_cast<uint32_t>(rng());
  if (Chance(rng, 50)) s.mode.pkru &= 0x5555'5555;  // fewer access-disables

  const uint64_t pages = guest.num_pages();
  std::vector<uint64_t> tables;  // guest-physical addresses of table pages
  auto new_table = [&]() -> uint64_t {
    if (!tables.empty() && (Chance(rng, 10) || tables.size() + 1 >= pages)) {
      return tables[rng() % tables.size()];  // share (or loop back to) a table
    }
    uint64_t gpa = (tables.size() + 1) * 0x1000;
    tables.push_back(gpa);
    return gpa;
  };
  s.cr3 = new_table() | (Chance(rng, 20) ? 0x18 : 0);  // PWT/PCD bits are not address bits

  const int va_bits = s.mode.levels == 5 ? 57 : 48;
  for (int i = 0; i < 8; ++i) {
    uint64_t va = rng() & ((uint64_t{1} << va_bits) - 1);
    if (Chance(rng, 50)) va &= 0x0000'0000'7fff'ffffull;  // cluster low addresses to share tables
    if (va >> (va_bits - 1)) va |= ~((uint64_t{1} << va_bits) - 1);  // sign-extend
    s.probe_vas.push_back(va);
    uint64_t table = s.cr3 & ~uint64_t{0xfff};
    for (int level = s.mode.levels; level >= 1; --level) {
      uint64_t* e = guest.EntryAt(table + LevelIndex(va, level) * 8);
      bool large = false;
      if (*e == 0 || Chance(rng, 15)) {
        uint64_t flags = RandomFlags(rng, level, &large);
        const bool leaf = level == 1 || large;
        uint64_t target;
        if (leaf) {
          // Data pages: mostly inside guest memory, sometimes far outside.
          const uint64_t align = LevelPageSize(level);
          const int where = static_cast<int>(rng() % 100);
          if (where < 70) {
            target = (rng() % (pages * 0x1000)) & ~(align - 1);
          } else if (where < 85) {
            target = ((2 << 20) + rng() % (2 << 20)) & ~(align - 1);  // the large-EPT range
          } else {
            target = (rng() & 0x000f'ffff'ffff'f000ull) & ~(align - 1);
          }
        } else {
          target = new_table();
        }
        *e = flags | (target & pte::kAddrMask52);
      }
      const uint64_t v = *e;
      if (!(v & pte::kPresent)) break;
      if (level == 1 || ((level == 2 || level == 3) && (v & pte::kPageSize))) break;
      table = v & pte::kAddrMask52 & ((uint64_t{1} << 36) - 1);
      if (table >= pages * 0x1000) break;  // points outside guest memory
    }
  }
  return s;
}

AccessRequest RandomRequest(Rng& rng, const Scenario& s) {
  AccessRequest req;
  req.va = s.probe_vas[rng() % s.probe_vas.size()];
  if (Chance(rng, 50)) req.va += rng() % 0x3000;
  if (Chance(rng, 3)) req.va = rng();  // often non-canonical
  req.access = static_cast<Access>(rng() % 3);
  req.cpl = Chance(rng, 50) ? 3 : 0;
  req.implicit_supervisor = Chance(rng, 10);
  req.rflags_ac = Chance(rng, 40);
  return req;
}

uint64_t SeedFor(int scenario, uint64_t salt) {
  if (const char* env = std::getenv("MMU_PROPERTY_SEED")) return std::strtoull(env, nullptr, 0);
  return salt * 1'000'003 + static_cast<uint64_t>(scenario);
}

bool SameMemory(const FlatMemory& a, const FlatMemory& b) {
  for (uint64_t pa = 0; pa < a.size_bytes(); pa += 8) {
    if (a.Read64(pa) != b.Read64(pa)) return false;
  }
  return true;
}

TEST(WalkerPropertyTest, OneDimensionalWalkerAgreesWithReference) {
  int ok = 0, faults = 0, others = 0;
  for (int i = 0; i < kScenarios; ++i) {
    const uint64_t seed = SeedFor(i, 1);
    Rng rng(seed);
    constexpr uint64_t kPages = 48;
    FlatMemory mem(kPages * 0x1000);
    std::vector<uint64_t> identity(kPages);
    for (uint64_t g = 0; g < kPages; ++g) identity[g] = g;
    GuestLayout layout(mem, identity);
    Scenario s = BuildGuestTables(rng, layout);
    for (int p = 0; p < kProbesPerScenario; ++p) {
      const AccessRequest req = RandomRequest(rng, s);
      FlatMemory ref_mem = mem;
      WalkResult r;
      Walk1D(s.mode, s.cr3, req, mem, &r);
      reference::Outcome ref = reference::Walk1D(ref_mem, s.mode, s.cr3, req);
      SCOPED_TRACE(testing::Message() << "seed " << seed << " probe " << p << " va 0x" << std::hex
                                      << req.va << std::dec << " " << req.access << " cpl "
                                      << int{req.cpl});
      ASSERT_EQ(r.status, ref.status);
      ASSERT_EQ(r.error_code, ref.error_code);
      ASSERT_EQ(r.refs.Total(), ref.memory_references);
      if (r.status == WalkStatus::kOk) {
        ASSERT_EQ(r.gpa, ref.gpa);
        ASSERT_EQ(r.hpa, ref.hpa);
        ASSERT_EQ(r.page_size, ref.page_size);
        ++ok;
      } else if (r.status == WalkStatus::kPageFault) {
        ASSERT_EQ(r.fault_level, ref.fault_level);
        ++faults;
      } else {
        ++others;
      }
      ASSERT_TRUE(SameMemory(mem, ref_mem)) << "accessed/dirty bits differ";
    }
  }
  // The generator must exercise both outcomes, or the test proves nothing.
  EXPECT_GT(ok, kScenarios * kProbesPerScenario / 10);
  EXPECT_GT(faults, kScenarios * kProbesPerScenario / 10);
  std::printf("1-D: ok %d faults %d other %d\n", ok, faults, others);
  RecordProperty("translations", ok);
  RecordProperty("page_faults", faults);
  RecordProperty("other", others);
}

// EPT layout for the 2-D property test: host pages [1, 128) hold EPT tables,
// guest-physical pages [0, kGuestPages) map to host pages from 256 on, with
// random rights; one 2 MiB guest-physical range maps through a large EPT page.
TEST(WalkerPropertyTest, TwoDimensionalWalkerAgreesWithReference) {
  int ok = 0, guest_faults = 0, violations = 0, misconfigs = 0;
  constexpr uint64_t kGuestPages = 48;
  constexpr uint64_t kHostPages = 512;  // 2 MiB; the large EPT page maps beyond it
  for (int i = 0; i < kScenarios; ++i) {
    const uint64_t seed = SeedFor(i, 2);
    Rng rng(seed);
    FlatMemory host(kHostPages * 0x1000);
    EptContext ctx;
    ctx.caps.execute_only = Chance(rng, 70);
    ctx.caps.mode_based_execute = Chance(rng, 20);
    ctx.caps.gbpages = Chance(rng, 80);
    const int ept_levels = Chance(rng, 20) ? 5 : 4;
    uint64_t next_ept_page = 1;
    auto alloc_ept = [&] { return (next_ept_page++) * 0x1000; };
    const uint64_t ept_root = alloc_ept();
    ctx.eptp = MakeEptp(ept_root, ept_levels, Chance(rng, 40));

    // Guest page g lives in host page 256 + perm[g].
    std::vector<uint64_t> gfn_to_host(kGuestPages);
    for (uint64_t g = 0; g < kGuestPages; ++g) gfn_to_host[g] = 256 + g;
    std::shuffle(gfn_to_host.begin(), gfn_to_host.end(), rng);

    auto map_ept = [&](uint64_t gpa, uint64_t hpa, int leaf_level, uint64_t flags) {
      uint64_t table = ept_root;
      for (int level = ept_levels; level > leaf_level; --level) {
        uint64_t* e = host.PageAt(table) + LevelIndex(gpa, level);
        if (*e == 0) {
          *e = alloc_ept() | epte::kRead | epte::kWrite | epte::kExecute |
               (Chance(rng, 50) ? epte::kUserExecute : 0);
          if (Chance(rng, 2)) *e &= ~(rng() & 7);  // occasionally restrict an upper level
        }
        if (!(*e & epte::kPermMask)) return;
        table = *e & pte::kAddrMask52;
      }
      *(host.PageAt(table) + LevelIndex(gpa, leaf_level)) = hpa | flags;
    };
    auto random_ept_flags = [&](bool leaf) {
      uint64_t f = epte::kRead | epte::kWrite | epte::kExecute | epte::kUserExecute;
      if (Chance(rng, 5)) f &= ~epte::kWrite;
      if (Chance(rng, 10)) f &= ~epte::kExecute;
      if (Chance(rng, 30)) f &= ~epte::kUserExecute;
      if (Chance(rng, 1)) f &= ~epte::kRead;              // maybe misconfigured / exec-only
      if (Chance(rng, 2)) f = 0;                          // not present
      if (Chance(rng, 20)) f |= epte::kAccessed;
      if (leaf) f |= (Chance(rng, 1) ? uint64_t{2} : uint64_t{6}) << epte::kMemTypeShift;
      return f;
    };
    for (uint64_t g = 0; g < kGuestPages; ++g) {
      map_ept(g * 0x1000, gfn_to_host[g] * 0x1000, 1, random_ept_flags(true));
    }
    // gpa [2 MiB, 4 MiB) -> hpa [4 MiB, 6 MiB) with one large EPT page.
    map_ept(2 << 20, 4 << 20, 2, random_ept_flags(true));
    ASSERT_LT(next_ept_page, 256u) << "EPT tables overflowed their host range";

    GuestLayout layout(host, gfn_to_host);
    Scenario s = BuildGuestTables(rng, layout);
    for (int p = 0; p < kProbesPerScenario; ++p) {
      AccessRequest req = RandomRequest(rng, s);
      FlatMemory ref_host = host;
      WalkResult r;
      Walk2D(s.mode, s.cr3, ctx, req, host, &r);
      reference::Outcome ref = reference::Walk2D(ref_host, s.mode, s.cr3, ctx.eptp, ctx.caps, req);
      SCOPED_TRACE(testing::Message() << "seed " << seed << " probe " << p << " va 0x" << std::hex
                                      << req.va << std::dec << " " << req.access);
      ASSERT_EQ(r.status, ref.status);
      ASSERT_EQ(r.error_code, ref.error_code);
      ASSERT_EQ(r.ept_qualification, ref.ept_qualification);
      ASSERT_EQ(r.refs.Total(), ref.memory_references);
      switch (r.status) {
        case WalkStatus::kOk:
          ASSERT_EQ(r.gpa, ref.gpa);
          ASSERT_EQ(r.hpa, ref.hpa);
          ++ok;
          break;
        case WalkStatus::kPageFault:
          ASSERT_EQ(r.fault_level, ref.fault_level);
          ++guest_faults;
          break;
        case WalkStatus::kEptViolation:
          ASSERT_EQ(r.fault_gpa, ref.fault_gpa);
          ++violations;
          break;
        case WalkStatus::kEptMisconfig:
          ASSERT_EQ(r.fault_gpa, ref.fault_gpa);
          ++misconfigs;
          break;
        default:
          break;
      }
      ASSERT_TRUE(SameMemory(host, ref_host)) << "accessed/dirty bits differ";
    }
  }
  const int total = kScenarios * kProbesPerScenario;
  EXPECT_GT(ok, total / 40);
  EXPECT_GT(guest_faults, total / 20);
  EXPECT_GT(violations, total / 100);
  EXPECT_GT(misconfigs, 0);
  std::printf("ok %d guest_faults %d violations %d misconfigs %d\n", ok, guest_faults, violations, misconfigs);
  RecordProperty("translations", ok);
  RecordProperty("guest_faults", guest_faults);
  RecordProperty("ept_violations", violations);
  RecordProperty("ept_misconfigs", misconfigs);
}

}  // namespace
}  // namespace mmu

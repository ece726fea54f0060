// Property tests of the shadow strategy:
//
//  1. Differential (ShadowDifferentialTest): random guest programs of
//     page-table operations run on shadow and on native (the reference
//     strategy), each with its own copy of the same guest memory. Every
//     table edit is a guest store made as the CPU makes it (a soft-TLB write
//     hit stores through the hit pointer; a miss asks Translate and stores
//     through out.host_page), through an alias region that maps every guest
//     page or through the recursive PML4 slot. Operations: map (4 KiB, 2 MiB,
//     1 GiB), unmap, remap, permission flips (R/W, U/S, XD, A, D, G, PS),
//     table sharing, reuse of table pages (zeroed through the alias), bursts
//     of writes to one table, CR3 switches between three address spaces that
//     share their kernel half, INVLPG, guest TLB flushes, CR3 reloads, and
//     CR0.WP / CR4.SMEP / CR4.SMAP changes. A correct guest invalidates what
//     it changed: after each edit it INVLPGs every address it ever used whose
//     path used the edited entry (before or after), or it defers and ends the
//     burst with a full flush. After each such synchronisation point, probe
//     accesses at CPL 0 and 3 and of every kind must give the same outcome
//     on both (host page / gpa, MMIO gpa, #PF vector, error code, CR2), the
//     two guest memories must stay byte-identical (A/D bits), and shadow's
//     Audit must pass (and, with audit_on_resync, the audit at every resync).
//     Run with unsync on and off and with a tiny max_shadow_pages; the
//     counters prove each mechanism ran.
//  2. The shared conformance suite (tests/strategy_conformance.h) for shadow
//     with unsync on and off, with tracked table writes; and for native with
//     tracked writes, which checks the tracked-write harness itself.
//
// SHADOW_PROPERTY_SEED=<n> replays one program of the differential test.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cpu/native_strategy.h"
#include "gtest/gtest.h"
#include "mmu/paging_strategy.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/soft_tlb.h"
#include "shadow/shadow_strategy.h"
#include "tests/fakes/fake_guest_phys_memory.h"
#include "tests/strategy_conformance.h"

namespace shadow {
namespace {

using mmu::Access;
using mmu::AccessRequest;
using mmu::FlatMemory;
using mmu::PagingMode;
using mmu::SoftTlb;
using mmu::TranslateOutcome;
using mmu::TranslateResult;
using mmu::testing::FakeGuestPhysMemory;
namespace pte = mmu::pte;

// ---------------------------------------------------------------------------
// The differential test.

// Guest-physical layout (gfns).
constexpr uint64_t kRamPages = 64;
constexpr uint64_t kPml4[] = {1, 2, 3};  // three address spaces
constexpr int kSpaces = 3;
constexpr uint64_t kKernelPdpt = 4;      // shared by every PML4's kernel slot
constexpr uint64_t kAliasPdpt = 5, kAliasPd = 6, kAliasPt = 7;
constexpr uint64_t kPoolFirst = 8, kPoolEnd = 40;  // tables the program allocates
constexpr uint64_t kDataFirst = 40;                 // data pages [40, 64)
constexpr uint64_t kKernelSlot = 256, kAliasSlot = 300, kRecSlot = 510;

constexpr uint64_t SignExtend48(uint64_t va) {
  return static_cast<uint64_t>(static_cast<int64_t>(va << 16) >> 16);
}
constexpr uint64_t kAliasBase = SignExtend48(kAliasSlot << 39);
constexpr uint64_t kKernelBase = SignExtend48(kKernelSlot << 39);

// The address of the level-`level` entry of `va`'s path through the
// recursive slot (level 1: the PTE ... level 4: the PML4 entry).
uint64_t RecursiveVa(int level, uint64_t va) {
  uint64_t r = kRecSlot << 39;
  for (int i = 1; i < level; ++i) r |= kRecSlot << (39 - 9 * i);
  const uint64_t index_bits = (va & 0x0000'ffff'ffff'f000ull) >> (12 + 9 * (level - 1));
  return SignExtend48(r | (index_bits << 3));
}

struct DiffConfig {
  std::string name;
  bool unsync = true;
  uint32_t max_shadow_pages = 1024;
  bool audit_on_resync = false;
};
void PrintTo(const DiffConfig& c, std::ostream* os) { *os << c.name; }

// One strategy with its own copy of guest memory, soft TLB and vCPU.
struct Side {
  Side(const DiffConfig* shadow_config) : flat(kRamPages << base::kPageShift), mem(flat) {
    if (shadow_config != nullptr) {
      ShadowStrategy::Options o;
      o.unsync = shadow_config->unsync;
      o.max_shadow_pages = shadow_config->max_shadow_pages;
      o.audit_on_resync = shadow_config->audit_on_resync;
      auto s = ShadowStrategy::Create(&mem, o);
      CHECK(s.ok()) << s.status();
      shadow = s->get();
      strategy = std::move(*s);
    } else {
      auto s = cpu::NativeStrategy::Create(&mem, {.max_vcpus = 1});
      CHECK(s.ok()) << s.status();
      strategy = std::move(*s);
    }
    vcpu.tlb = &tlb;
    CHECK(strategy->AttachVcpu(&vcpu).ok());
    strategy->LeaveQuiescence(vcpu);
  }
  ~Side() { strategy->DetachVcpu(&vcpu); }
  uint64_t GfnOf(const uint8_t* host_page) {
    return static_cast<uint64_t>(host_page - mem.FlatPage(0)) >> base::kPageShift;
  }

  FlatMemory flat;
  FakeGuestPhysMemory mem;
  SoftTlb tlb;
  mmu::VcpuMmu vcpu;
  std::unique_ptr<mmu::PagingStrategy> strategy;
  ShadowStrategy* shadow = nullptr;
};

// What one access gave, in terms both sides can compare.
struct Outcome {
  TranslateResult kind = TranslateResult::kRetry;
  bool hit = false;
  uint64_t gfn = 0;     // kFixed
  uint64_t gpa = 0;     // kFixed from Translate, kMmio
  uint8_t vector = 0;   // kInjectGuestFault
  uint32_t error_code = 0;
  uint64_t cr2 = 0;
  uint64_t page_size = 0;
  uint8_t* host_page = nullptr;
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  os << TranslateResultName(o.kind) << (o.hit ? " (soft-TLB hit)" : "") << std::hex;
  if (o.kind == TranslateResult::kFixed) os << " gfn 0x" << o.gfn << " gpa 0x" << o.gpa;
  if (o.kind == TranslateResult::kMmio) os << " gpa 0x" << o.gpa;
  if (o.kind == TranslateResult::kInjectGuestFault) {
    os << " vector " << std::dec << int{o.vector} << std::hex << " error code 0x" << o.error_code
       << " cr2 0x" << o.cr2;
  }
  return os << std::dec;
}

// The access as the soft CPU makes it: the soft TLB, else Translate.
Outcome AccessOnce(Side& side, const AccessRequest& req, uint32_t size) {
  Outcome o;
  const SoftTlb::MmuIdx idx =
      req.user_access() ? SoftTlb::MmuIdx::kUser : SoftTlb::MmuIdx::kSupervisor;
  uint8_t* hit = nullptr;
  switch (req.access) {
    case Access::kRead: hit = side.tlb.Lookup<Access::kRead>(idx, req.va, size); break;
    case Access::kWrite: hit = side.tlb.Lookup<Access::kWrite>(idx, req.va, size); break;
    case Access::kFetch: hit = side.tlb.Lookup<Access::kFetch>(idx, req.va, size); break;
  }
  if (hit != nullptr) {
    o.kind = TranslateResult::kFixed;
    o.hit = true;
    o.host_page = hit - (req.va & base::kPageMask);
    o.gfn = side.GfnOf(o.host_page);
    o.gpa = (o.gfn << base::kPageShift) | (req.va & base::kPageMask);
    return o;
  }
  TranslateOutcome out;
  o.kind = side.strategy->Translate(side.vcpu, req, &out);
  switch (o.kind) {
    case TranslateResult::kFixed:
      o.host_page = out.host_page;
      o.gfn = side.GfnOf(out.host_page);
      o.gpa = out.gpa;
      o.page_size = out.page_size_bytes;
      break;
    case TranslateResult::kMmio: o.gpa = out.gpa; break;
    case TranslateResult::kInjectGuestFault:
      o.vector = out.vector;
      o.error_code = out.error_code;
      o.cr2 = out.cr2;
      break;
    default: break;
  }
  return o;
}

bool SameOutcome(const Outcome& a, const Outcome& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case TranslateResult::kFixed: return a.gfn == b.gfn && a.gpa == b.gpa;
    case TranslateResult::kMmio: return a.gpa == b.gpa;
    case TranslateResult::kInjectGuestFault:
      return a.vector == b.vector && a.error_code == b.error_code && a.cr2 == b.cr2;
    default: return true;
  }
}

struct DiffStats {
  uint64_t programs = 0, edits = 0, alias_stores = 0, recursive_stores = 0, tlb_hit_stores = 0;
  uint64_t invlpgs = 0, full_flushes = 0, cr3_switches = 0, mode_changes = 0, table_reuses = 0;
  uint64_t probes = 0, probe_faults = 0, probe_fixed = 0, probe_mmio = 0, large_pages = 0;
  uint64_t audits = 0;
  std::map<std::string, uint64_t> shadow;  // shadow counters summed over programs
};

class GuestProgram {
 public:
  using Rng = std::mt19937_64;

  GuestProgram(const DiffConfig& config, uint64_t seed, DiffStats* stats)
      : native_(nullptr), shadow_(&config), rng_(seed), config_(config), stats_(stats) {
    // Three address spaces: each PML4 maps the shared kernel PDPT, the alias
    // region and itself (the recursive slot). The alias maps gfn g at
    // kAliasBase + g * 4 KiB, supervisor-only, read/write, not executable.
    for (Side* side : {&native_, &shadow_}) {
      FlatMemory& m = side->flat;
      constexpr uint64_t kTable = pte::kPresent | pte::kWritable;
      for (uint64_t pml4 : kPml4) {
        m.Write64((pml4 << 12) + kKernelSlot * 8, (kKernelPdpt << 12) | kTable | pte::kUser);
        m.Write64((pml4 << 12) + kAliasSlot * 8, (kAliasPdpt << 12) | kTable);
        m.Write64((pml4 << 12) + kRecSlot * 8, (pml4 << 12) | kTable);
      }
      m.Write64(kAliasPdpt << 12, (kAliasPd << 12) | kTable);
      m.Write64(kAliasPd << 12, (kAliasPt << 12) | kTable);
      for (uint64_t g = 0; g < kRamPages; ++g) {
        m.Write64((kAliasPt << 12) + g * 8, (g << 12) | kTable | pte::kNoExecute);
      }
    }
    for (uint64_t g = kPoolFirst; g < kPoolEnd; ++g) free_tables_.push_back(g);
    // The addresses the program maps and probes: user ones in PML4 slots 0-1
    // and kernel ones, clustered so that tables are shared, some far into
    // their 2 MiB region (probes of large pages).
    for (int i = 0; i < 40; ++i) {
      const bool kernel = i >= 26;
      uint64_t va = (kernel ? kKernelBase : (rng_() % 2) << 39) | (rng_() % 3) << 30 |
                    (rng_() % 4) << 21 | (Chance(70) ? rng_() % 8 : rng_() % 64) << 12;
      vas_.push_back(va);
      known_.insert(va);
    }
    mode_.levels = 4;
    mode_.nxe = true;
    mode_.wp = Chance(70);
    mode_.smep = Chance(30);
    mode_.smap = Chance(30);
    mode_.gbpages = true;
    mode_.maxphyaddr = 46;
    for (Side* side : {&native_, &shadow_}) {
      side->vcpu.mode = mode_;
      side->vcpu.cr3 = kPml4[0] << 12;
      side->strategy->OnCr3Write(side->vcpu, 0, false);
    }
  }

  void Run(int rounds) {
    // The guest maps its addresses first (through the same edits).
    for (uint64_t va : vas_) ASSERT_NO_FATAL_FAILURE(Map(va, /*deferred=*/false));
    for (int round = 0; round < rounds; ++round) {
      SCOPED_TRACE(::testing::Message() << "round " << round);
      const int what = static_cast<int>(rng_() % 100);
      if (what < 70) {
        ASSERT_NO_FATAL_FAILURE(EditRound());
      } else if (what < 82) {
        // MOV to CR3: another address space (or the same one reloaded).
        space_ = static_cast<int>(rng_() % kSpaces);
        for (Side* side : {&native_, &shadow_}) {
          const uint64_t old = side->vcpu.cr3;
          side->vcpu.cr3 = kPml4[space_] << 12;
          side->strategy->OnCr3Write(side->vcpu, old, false);
        }
        ++stats_->cr3_switches;
      } else if (what < 90) {
        const PagingMode old = mode_;
        switch (rng_() % 3) {
          case 0: mode_.wp = !mode_.wp; break;
          case 1: mode_.smep = !mode_.smep; break;
          default: mode_.smap = !mode_.smap; break;
        }
        for (Side* side : {&native_, &shadow_}) {
          side->vcpu.mode = mode_;
          side->strategy->OnModeChange(side->vcpu, true, old);
        }
        ++stats_->mode_changes;
      } else if (what < 95) {
        FullFlush();
      } else {
        // An INVLPG of something that did not change: harmless.
        Invlpg(vas_[rng_() % vas_.size()]);
      }
      ASSERT_NO_FATAL_FAILURE(Probe());
    }
    ++stats_->programs;
    for (const auto& c : shadow_.strategy->Counters()) stats_->shadow[c.name] += c.value;
  }

 private:
  bool Chance(int percent) { return static_cast<int>(rng_() % 100) < percent; }
  uint64_t Cr3() const { return kPml4[space_] << 12; }
  // The guest's view of its own memory (both copies are compared equal at
  // every synchronisation point).
  uint64_t Read(uint64_t gpa) { return native_.flat.Read64(gpa); }
  static bool IsLeaf(uint64_t e, int level) {
    return level == 1 || ((level == 2 || level == 3) && (e & pte::kPageSize));
  }

  // The gpas of the entries on va's path now (in the current space).
  std::vector<uint64_t> PathOf(uint64_t va) {
    std::vector<uint64_t> path;
    uint64_t table = Cr3();
    for (int level = 4; level >= 1; --level) {
      if (table >= kRamPages << 12) break;
      const uint64_t epa = table + mmu::LevelIndex(va, level) * 8;
      path.push_back(epa);
      const uint64_t e = Read(epa);
      if (!(e & pte::kPresent) || IsLeaf(e, level)) break;
      table = e & pte::kAddrMask52;
    }
    return path;
  }
  std::map<uint64_t, std::vector<uint64_t>> AllPaths() {
    std::map<uint64_t, std::vector<uint64_t>> paths;
    for (uint64_t va : known_) paths[va] = PathOf(va);
    return paths;
  }

  void Invlpg(uint64_t va) {
    for (Side* side : {&native_, &shadow_}) side->strategy->OnInvlpg(side->vcpu, va);
    ++stats_->invlpgs;
  }
  void FullFlush() {
    if (Chance(50)) {
      for (Side* side : {&native_, &shadow_}) {
        side->strategy->OnTlbFlush(side->vcpu, mmu::TlbFlush::kAll);
      }
    } else {
      // A CR3 reload flushes all but global entries: enough when no global
      // entry was edited since the last full flush.
      for (Side* side : {&native_, &shadow_}) {
        if (edited_global_) {
          side->strategy->OnTlbFlush(side->vcpu, mmu::TlbFlush::kAll);
        } else {
          side->strategy->OnCr3Write(side->vcpu, side->vcpu.cr3, false);
        }
      }
    }
    edited_global_ = false;
    ++stats_->full_flushes;
  }

  // A CPL-0 8-byte store at `va` on both sides, meant to reach `gpa`.
  // Both must agree on the translation; false if it does not reach gpa.
  bool StoreVia(uint64_t va, uint64_t gpa, uint64_t value) {
    AccessRequest req;
    req.va = va;
    req.access = Access::kWrite;
    req.cpl = 0;
    known_.insert(va);
    const Outcome n = AccessOnce(native_, req, 8);
    const Outcome s = AccessOnce(shadow_, req, 8);
    EXPECT_TRUE(SameOutcome(n, s)) << "store at va 0x" << std::hex << va << ": native " << n
                                   << ", shadow " << s;
    last_store_ = n;
    if (!SameOutcome(n, s) || n.kind != TranslateResult::kFixed || n.gpa != gpa) return false;
    std::memcpy(n.host_page + (va & base::kPageMask), &value, 8);
    std::memcpy(s.host_page + (va & base::kPageMask), &value, 8);
    if (n.hit) ++stats_->tlb_hit_stores;
    return true;
  }

  // The guest edits the entry at `epa` (the level-`level` entry of `va`'s
  // path, or level 0: no path known). Immediate: through the recursive slot
  // or the alias, then INVLPG every known address whose path used it.
  // Deferred: through the alias, invalidated by the round's final flush.
  void Edit(uint64_t epa, uint64_t value, uint64_t va, int level, bool deferred) {
    // The alias tables and the fixed PML4 slots stay as built, wherever a
    // path reaches them (a leaf entry read as a table can lead anywhere).
    const uint64_t gfn = epa >> base::kPageShift;
    if (gfn == kAliasPdpt || gfn == kAliasPd || gfn == kAliasPt) return;
    if (gfn >= kPml4[0] && gfn <= kPml4[kSpaces - 1] && (epa & 0xfff) / 8 >= 256) return;
    const uint64_t old = Read(epa);
    if ((old | value) & pte::kGlobal) edited_global_ = true;
    std::map<uint64_t, std::vector<uint64_t>> before;
    if (!deferred) before = AllPaths();
    bool done = false;
    if (!deferred && level > 0 && Chance(40)) {
      done = StoreVia(RecursiveVa(level, va), epa, value);
      if (done) ++stats_->recursive_stores;
    }
    if (!done) {
      ASSERT_TRUE(StoreVia(kAliasBase + epa, epa, value))
          << "alias store failed: epa 0x" << std::hex << epa << " " << last_store_;
      ++stats_->alias_stores;
    }
    ++stats_->edits;
    if (deferred) return;
    for (uint64_t kva : known_) {
      bool uses = false;
      for (uint64_t x : before[kva]) uses |= x == epa;
      for (uint64_t x : PathOf(kva)) uses |= x == epa;
      if (uses) Invlpg(kva);
    }
  }

  // A table page for a new path: a never-used one, else a reused one (the
  // guest frees it wherever it is still linked and zeroes it through the
  // alias, then flushes), else (rarely) one shared as it is.
  uint64_t AllocTable(bool deferred, bool* flushed) {
    if (!free_tables_.empty() && Chance(90)) {
      const uint64_t t = free_tables_.back();
      free_tables_.pop_back();
      return t;
    }
    const uint64_t t = kPoolFirst + rng_() % (kPoolEnd - kPoolFirst);
    if (Chance(20)) return t;  // shared: the same table under two parents
    ++stats_->table_reuses;
    for (int i = 0; i < 512; ++i) {
      const uint64_t epa = (t << 12) + static_cast<uint64_t>(i) * 8;
      if (Read(epa) != 0) Edit(epa, 0, 0, 0, /*deferred=*/true);
    }
    if (!deferred) {
      FullFlush();
      *flushed = true;
    }
    return t;
  }

  uint64_t RandomLeaf(int level, bool user) {
    uint64_t e = 0;
    if (Chance(95)) e |= pte::kPresent;
    if (Chance(75)) e |= pte::kWritable;
    if (user ? Chance(80) : Chance(15)) e |= pte::kUser;
    if (Chance(15)) e |= pte::kNoExecute;
    if (Chance(30)) e |= pte::kAccessed;
    if (Chance(20)) e |= pte::kDirty;
    if (Chance(10)) e |= pte::kGlobal;
    if (level > 1) return e | pte::kPageSize;  // gpa 0: RAM, then not RAM (MMIO)
    const int r = static_cast<int>(rng_() % 100);
    uint64_t gfn;
    if (r < 70) {
      gfn = kDataFirst + rng_() % (kRamPages - kDataFirst);
    } else if (r < 93) {
      gfn = 1 + rng_() % (kPoolEnd - 1);  // a guest table, mapped as data
    } else {
      gfn = 0x100 + rng_() % 16;  // not RAM
    }
    return e | (gfn << 12);
  }
  uint64_t TableEntry(uint64_t table_gfn, bool user) {
    uint64_t e = (table_gfn << 12) | pte::kPresent;
    if (Chance(92)) e |= pte::kWritable;
    if (user ? Chance(92) : Chance(30)) e |= pte::kUser;
    if (Chance(5)) e |= pte::kNoExecute;
    if (Chance(30)) e |= pte::kAccessed;
    return e;
  }

  // Maps vas_[i] with a leaf at level 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB).
  void Map(uint64_t va, bool deferred) {
    const bool user = (va >> 47) == 0;
    const int leaf_level = Chance(80) ? 1 : Chance(70) ? 2 : 3;
    uint64_t table = Cr3();
    for (int level = 4; level > leaf_level; --level) {
      const uint64_t epa = table + mmu::LevelIndex(va, level) * 8;
      uint64_t e = Read(epa);
      if (level == 4 && (epa & 0xfff) / 8 >= 256) {
        // The kernel, alias and recursive slots stay as built.
      } else if (!(e & pte::kPresent) || IsLeaf(e, level) ||
                 (e & pte::kAddrMask52) >= (kRamPages << 12)) {
        bool flushed = false;
        const uint64_t t = AllocTable(deferred, &flushed);
        e = TableEntry(t, user);
        ASSERT_NO_FATAL_FAILURE(Edit(epa, e, va, level, deferred));
      }
      table = e & pte::kAddrMask52;
      if (table >= (kRamPages << 12)) return;
    }
    const uint64_t epa = table + mmu::LevelIndex(va, leaf_level) * 8;
    ASSERT_NO_FATAL_FAILURE(Edit(epa, RandomLeaf(leaf_level, user), va, leaf_level, deferred));
  }

  // Changes one entry on va's path (not the fixed PML4 slots).
  void Change(uint64_t va, bool deferred) {
    const std::vector<uint64_t> path = PathOf(va);
    const int pick = Chance(60) ? static_cast<int>(path.size()) - 1
                                : static_cast<int>(rng_() % path.size());
    const int level = 4 - pick;
    const uint64_t epa = path[pick];
    if (level == 4 && (epa & 0xfff) / 8 >= 256) return;
    uint64_t e = Read(epa);
    const int r = static_cast<int>(rng_() % 100);
    if (r < 12) {
      e &= ~pte::kPresent;  // unmap
    } else if (r < 17) {
      e = 0;
    } else if (r < 40 && IsLeaf(e, level) && level == 1) {
      e = (e & ~pte::kAddrMask52) | (RandomLeaf(1, true) & pte::kAddrMask52);  // remap
    } else if (r < 52 && !IsLeaf(e, level)) {
      // Point at another table: shared tables, maybe cycles.
      e = (e & ~pte::kAddrMask52) | ((kPoolFirst + rng_() % (kPoolEnd - kPoolFirst)) << 12);
    } else if (r < 55 && (level == 2 || level == 3)) {
      e ^= pte::kPageSize;  // table <-> large page (maybe reserved bits)
    } else {
      static constexpr uint64_t kBits[] = {pte::kWritable, pte::kUser,  pte::kNoExecute,
                                           pte::kAccessed, pte::kDirty, pte::kGlobal,
                                           pte::kPresent};
      e ^= kBits[rng_() % 7];
    }
    ASSERT_NO_FATAL_FAILURE(Edit(epa, e, va, level, deferred));
  }

  // Several writes to one table without using it in between (what write
  // flooding detects): entries that nothing maps.
  void Scribble(uint64_t va, bool deferred) {
    const std::vector<uint64_t> path = PathOf(va);
    const uint64_t table = path[rng_() % path.size()] & ~uint64_t{0xfff};
    if (table == Cr3()) return;
    for (int n = 0; n < 4; ++n) {
      const uint64_t epa = table + (rng_() % 512) * 8;
      if (Read(epa) & pte::kPresent) continue;
      ASSERT_NO_FATAL_FAILURE(Edit(epa, rng_() & ~(pte::kPresent | pte::kPageSize), 0, 0, deferred));
    }
  }

  void EditRound() {
    const bool deferred = Chance(30);
    const int n = 1 + static_cast<int>(rng_() % 5);
    for (int i = 0; i < n; ++i) {
      const uint64_t va = vas_[rng_() % vas_.size()];
      SCOPED_TRACE(::testing::Message() << "edit " << i << " va 0x" << std::hex << va);
      const int what = static_cast<int>(rng_() % 100);
      if (what < 50) {
        ASSERT_NO_FATAL_FAILURE(Map(va, deferred));
      } else if (what < 90) {
        ASSERT_NO_FATAL_FAILURE(Change(va, deferred));
      } else {
        ASSERT_NO_FATAL_FAILURE(Scribble(va, deferred));
      }
    }
    if (deferred) FullFlush();
  }

  // The synchronisation point: everything must agree.
  void Probe() {
    ASSERT_EQ(std::memcmp(native_.mem.FlatPage(0), shadow_.mem.FlatPage(0),
                          kRamPages << base::kPageShift),
              0)
        << "guest memories differ";
    std::vector<uint64_t> probe_vas;
    for (int i = 0; i < 8; ++i) {
      uint64_t va = vas_[rng_() % vas_.size()];
      if (Chance(15)) va = RecursiveVa(1 + static_cast<int>(rng_() % 4), va);
      if (Chance(5)) va = kAliasBase + ((rng_() % kRamPages) << 12);
      probe_vas.push_back(va + (rng_() % 512) * 8);
    }
    for (uint64_t va : probe_vas) {
      known_.insert(va & ~base::kPageMask);
      for (int cpl : {0, 3}) {
        for (Access access : {Access::kRead, Access::kWrite, Access::kFetch}) {
          AccessRequest req;
          req.va = va;
          req.access = access;
          req.cpl = static_cast<uint8_t>(cpl);
          req.rflags_ac = Chance(30);
          const Outcome n = AccessOnce(native_, req, 1);
          const Outcome s = AccessOnce(shadow_, req, 1);
          ASSERT_TRUE(SameOutcome(n, s))
              << "va 0x" << std::hex << va << std::dec << " " << access << " cpl " << cpl
              << " ac " << req.rflags_ac << ": native " << n << ", shadow " << s;
          ASSERT_EQ(std::memcmp(native_.mem.FlatPage(0), shadow_.mem.FlatPage(0),
                                kRamPages << base::kPageShift),
                    0)
              << "guest A/D bits differ after va 0x" << std::hex << va << std::dec << " "
              << access << " cpl " << cpl;
          ++stats_->probes;
          if (n.kind == TranslateResult::kInjectGuestFault) ++stats_->probe_faults;
          if (n.kind == TranslateResult::kFixed) ++stats_->probe_fixed;
          if (n.kind == TranslateResult::kMmio) ++stats_->probe_mmio;
          if (n.page_size > base::kPageSize || s.page_size > base::kPageSize) {
            ++stats_->large_pages;
          }
        }
      }
    }
    const absl::Status audit = shadow_.strategy->Audit(shadow_.vcpu);
    ASSERT_TRUE(audit.ok()) << audit;
    ASSERT_TRUE(shadow_.shadow->audit_failure().ok()) << shadow_.shadow->audit_failure();
    ++stats_->audits;
    if (config_.max_shadow_pages < 1024) {
      // The bound holds (pinned roots aside, which the tests never exceed).
      ASSERT_LE(shadow_.shadow->shadow_pages(), config_.max_shadow_pages);
    }
  }

  Side native_;
  Side shadow_;
  Rng rng_;
  const DiffConfig& config_;
  DiffStats* stats_;
  PagingMode mode_;
  int space_ = 0;
  bool edited_global_ = false;
  Outcome last_store_;
  std::vector<uint64_t> vas_;
  std::set<uint64_t> known_;  // every address accessed: what INVLPGs consider
  std::vector<uint64_t> free_tables_;
};

class ShadowDifferentialTest : public ::testing::TestWithParam<DiffConfig> {};

TEST_P(ShadowDifferentialTest, RandomTableProgramsAgreeWithNative) {
#ifdef MMU_PROPERTY_LONG
  constexpr int kPrograms = 400;
#else
  constexpr int kPrograms = 40;
#endif
  constexpr int kRounds = 60;
  const DiffConfig& config = GetParam();
  DiffStats stats;
  const char* env = std::getenv("SHADOW_PROPERTY_SEED");
  for (int i = 0; i < (env ? 1 : kPrograms); ++i) {
    const uint64_t seed = env ? std::strtoull(env, nullptr, 0) : 7'000'003ull * 17 + i;
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " (SHADOW_PROPERTY_SEED)");
    GuestProgram program(config, seed, &stats);
    ASSERT_NO_FATAL_FAILURE(program.Run(kRounds));
  }
  auto c = [&](const char* name) { return stats.shadow["shadow." + std::string(name)]; };
  std::printf(
      "%s: programs %lu edits %lu (alias %lu recursive %lu via soft-TLB hit %lu) invlpg %lu "
      "flushes %lu cr3 switches %lu mode changes %lu table reuses %lu\n"
      "  probes %lu (fixed %lu #PF %lu mmio %lu large %lu) audits %lu\n"
      "  shadow: emulated_writes %lu mmu_pte_write %lu mmu_unsync %lu mmu_resync %lu "
      "mmu_flooded %lu mmu_recycled %lu pf_guest %lu pf_fixed %lu roots_reused %lu "
      "write_protects %lu\n",
      config.name.c_str(), stats.programs, stats.edits, stats.alias_stores,
      stats.recursive_stores, stats.tlb_hit_stores, stats.invlpgs, stats.full_flushes,
      stats.cr3_switches, stats.mode_changes, stats.table_reuses, stats.probes, stats.probe_fixed,
      stats.probe_faults, stats.probe_mmio, stats.large_pages, stats.audits, c("emulated_writes"),
      c("mmu_pte_write"), c("mmu_unsync"), c("mmu_resync"), c("mmu_flooded"), c("mmu_recycled"),
      c("pf_guest"), c("pf_fixed"), c("roots_reused"), c("write_protects"));
  if (env) return;
  // The generator must exercise every mechanism, or the test proves little.
  EXPECT_GT(stats.recursive_stores, 50u);
  EXPECT_GT(stats.tlb_hit_stores, 50u);
  EXPECT_GT(stats.table_reuses, 5u);
  EXPECT_GT(stats.probe_faults, stats.probes / 20);
  EXPECT_GT(stats.probe_fixed, stats.probes / 10);
  EXPECT_GT(stats.probe_mmio, 0u);
  EXPECT_GT(stats.large_pages, 50u);
  EXPECT_GT(c("emulated_writes"), 100u);
  EXPECT_GT(c("mmu_pte_write"), 50u);
  EXPECT_GT(c("mmu_flooded"), 5u);
  EXPECT_GT(c("pf_guest"), 100u);
  EXPECT_GT(c("roots_reused"), 20u);
  if (config.unsync) {
    EXPECT_GT(c("mmu_unsync"), 50u);
    EXPECT_GT(c("mmu_resync"), 50u);
  } else {
    EXPECT_EQ(c("mmu_unsync"), 0u);
  }
  if (config.max_shadow_pages < 1024) {
    EXPECT_GT(c("mmu_recycled"), 50u);
  } else {
    EXPECT_EQ(c("mmu_recycled"), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, ShadowDifferentialTest,
    ::testing::Values(DiffConfig{"unsync", true, 1024, false},
                      DiffConfig{"sync", false, 1024, false},
                      DiffConfig{"unsync_tiny", true, 20, true},
                      DiffConfig{"sync_tiny", false, 16, true}),
    [](const auto& param_info) { return param_info.param.name; });

// ---------------------------------------------------------------------------
// The shared conformance suite.

std::unique_ptr<mmu::PagingStrategy> MakeShadow(mmu::GuestPhysMemory* mem, uint32_t max_vcpus,
                                                bool unsync) {
  ShadowStrategy::Options o;
  o.max_vcpus = max_vcpus;
  o.unsync = unsync;
  auto s = ShadowStrategy::Create(mem, o);
  CHECK(s.ok()) << s.status();
  return std::move(*s);
}

std::unique_ptr<mmu::PagingStrategy> MakeNative(mmu::GuestPhysMemory* mem, uint32_t max_vcpus) {
  auto s = cpu::NativeStrategy::Create(mem, {.max_vcpus = max_vcpus});
  CHECK(s.ok()) << s.status();
  return std::move(*s);
}

using mmu::testing::StrategyConformanceTest;
using mmu::testing::StrategyFactory;
INSTANTIATE_TEST_SUITE_P(
    Shadow, StrategyConformanceTest,
    ::testing::Values(
        StrategyFactory{"shadow_unsync",
                        [](mmu::GuestPhysMemory* m, uint32_t n) { return MakeShadow(m, n, true); },
                        /*compares_memory=*/true, /*tracked_writes=*/true},
        StrategyFactory{"shadow_sync",
                        [](mmu::GuestPhysMemory* m, uint32_t n) { return MakeShadow(m, n, false); },
                        /*compares_memory=*/true, /*tracked_writes=*/true},
        // The tracked-write harness itself, checked with the reference strategy.
        StrategyFactory{"native_tracked", MakeNative, /*compares_memory=*/true,
                        /*tracked_writes=*/true}),
    [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace shadow

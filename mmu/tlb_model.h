// An architectural model of an x86-64 TLB, for counting and for the cost
// studies of the shadow and nested paging strategies.
//
// What it models (Intel SDM Vol. 3A §4.10 "Caching Translation Information",
// Vol. 3C §29.4 "Caching Translation Information" with VPIDs and EPT):
//   - A set-associative TLB made of one or more arrays, each holding some page
//     sizes (separate 4K/2M/1G arrays like an L1 dTLB, or a unified 4K+2M array
//     like the STLB). Replacement is true LRU per set and deterministic: the
//     same sequence of calls gives the same hits, misses and evictions.
//   - Entries tagged with (VPID, PCID, EP4TA). EP4TA 0 means "EPT off": the
//     entry is a *linear mapping*; a non-zero EP4TA makes it a *combined
//     mapping* (SDM Vol. 3C §29.4.1). Global entries (G=1) match any PCID of
//     their VPID (SDM §4.10.2.4), never another VPID or EP4TA.
//   - Every invalidation the SDM defines, with exactly the scope it defines
//     (see the methods). Where the SDM allows a processor to invalidate more,
//     the model invalidates exactly what is required and no more, so counts
//     are a lower bound on real flush damage.
//   - The same class, constructed with TlbKind::kGuestPhysical, is the
//     "guest-physical mappings" TLB of SDM Vol. 3C §29.4.1 (gpa -> hpa, tagged
//     by EP4TA only), used by the 2-D walker to cache final EPT translations.
//
// What it does not model: a multi-level hierarchy (one TlbModel is one level;
// a study that wants L1 + STLB composes two instances and fills the L1 from the
// STLB itself); page-size prediction; speculative fills; INVVPID/INVEPT
// failure for non-canonical addresses or unsupported types (the caller, which
// emulates the VMX instruction, checks those).
//
// The model does not check permissions on a hit; the caller compares the
// returned entry's writable/user/nx with the access. The one exception is the
// dirty rule: a write that hits an entry whose dirty flag is clear misses, so
// that the walker runs and sets D in the paging-structure entry (SDM §4.8: the
// processor sets D on the first write through a translation; a TLB entry
// created for a read does not let it skip that).
//
// Thread safety: none. A TlbModel belongs to one vCPU and is used only from
// that vCPU's thread. Its counters may be read from any thread (see
// base/counters.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/counters.h"
#include "mmu/paging_mode.h"
#include "mmu/pte.h"

namespace mmu {

// What one TLB holds.
enum class TlbKind : uint8_t {
  // Linear and combined mappings: linear address -> physical page.
  kLinear,
  // Guest-physical mappings: gpa -> hpa, tagged by EP4TA only (VPID and PCID
  // must be 0, nothing is global).
  kGuestPhysical,
};

// One set-associative array.
struct TlbArrayConfig {
  uint32_t num_sets = 1;  // a power of two
  uint32_t num_ways = 1;
  bool holds_4k = false;
  bool holds_2m = false;
  bool holds_1g = false;
};

// The geometry of one TLB level. A page size that no array holds is
// "splintered": a 1 GiB translation is cached as the 2 MiB (or, failing that,
// 4 KiB) piece that contains the looked-up address, as SDM §4.10.2.3 allows
// ("a processor may ... cache translations for a large page as several TLB
// entries for smaller pages"). At least the 4 KiB size must be held.
struct TlbConfig {
  TlbKind kind = TlbKind::kLinear;
  std::vector<TlbArrayConfig> arrays;

  // Skylake-class second-level TLB (the default): 1536 entries, 12-way, shared
  // by 4 KiB and 2 MiB pages, plus 16 entries, 4-way, for 1 GiB pages. Source:
  // Intel 64 and IA-32 Architectures Optimization Reference Manual, Skylake
  // microarchitecture, "TLB parameters" table. The STLB is the level whose
  // misses cause page walks, which is what the cost model charges.
  static TlbConfig SkylakeStlb();
  // Skylake-class first-level data TLB: 4 KiB 64 entries 4-way, 2 MiB 32
  // entries 4-way, 1 GiB 4 entries fully associative (same source).
  static TlbConfig SkylakeL1d();
  // One array of num_sets x num_ways holding every page size.
  static TlbConfig Unified(uint32_t num_sets, uint32_t num_ways);
  // The defaults for a guest-physical TLB: the STLB geometry, kind
  // kGuestPhysical (Intel does not publish a separate size for it).
  static TlbConfig GuestPhysical();
};

// The tag that every entry carries and every lookup must match.
struct TlbTag {
  // 0 is the host (or a guest run with VPIDs disabled), SDM Vol. 3C §29.1.
  uint16_t vpid = 0;
  // CR3[11:0] with CR4.PCIDE=1, else 0 (SDM §4.10.1).
  uint16_t pcid = 0;
  // EPTP bits 51:12 (the EPT PML4/PML5 table address) or 0 when EPT is off.
  uint64_t ep4ta = 0;

  static constexpr TlbTag Linear(uint16_t vpid, uint16_t pcid) { return {vpid, pcid, 0}; }
  static constexpr TlbTag Combined(uint16_t vpid, uint16_t pcid, uint64_t ep4ta) {
    return {vpid, pcid, ep4ta};
  }
  static constexpr TlbTag GuestPhysical(uint64_t ep4ta) { return {0, 0, ep4ta}; }
  bool operator==(const TlbTag&) const = default;
};

// The translation part of an entry, as the walker hands it to Insert().
struct TlbTranslation {
  // Physical base of the page (hpa, or gpa in a native-without-EPT study),
  // aligned to page_size.
  uint64_t frame_base = 0;
  PageSize page_size = PageSize::k4K;
  // G of the leaf, only meaningful with CR4.PGE=1: the caller passes false
  // when CR4.PGE=0 (SDM §4.10.2.4).
  bool global = false;
  // The combined rights of the whole walk (SDM §4.10.2.2: "the logical-AND of
  // the R/W flags", "of the U/S flags", "the logical-OR of the XD flags").
  bool writable = false;
  bool user = false;
  bool nx = false;
  // False only for execute-only EPT mappings (guest-physical or combined).
  bool readable = true;
  // The D flag of the leaf after the walk.
  bool dirty = false;
};

// A cached translation.
struct TlbEntry {
  bool valid = false;
  TlbTag tag;
  // The page size this entry covers and the page number at that size.
  PageSize page_size = PageSize::k4K;
  uint64_t vpn = 0;
  // The size of the mapping the entry came from: larger than page_size when
  // the mapping was splintered. INVLPG of any address in the mapping removes
  // every piece (SDM §4.10.4.1, footnote on multiple entries for one page).
  PageSize mapping_size = PageSize::k4K;
  TlbTranslation translation;

  // The physical address of `va`, which must lie in this entry's page.
  uint64_t Translate(uint64_t va) const {
    return translation.frame_base | (va & (BytesOf(page_size) - 1));
  }
};

enum class InvPcidType : uint8_t {
  kIndividualAddress = 0,        // this PCID, this address, globals kept
  kSingleContext = 1,            // this PCID, globals kept
  kAllContextsWithGlobals = 2,   // every PCID, globals too
  kAllContexts = 3,              // every PCID, globals kept
};

enum class InvVpidType : uint8_t {
  kIndividualAddress = 0,             // this VPID, this address, globals too
  kSingleContext = 1,                 // this VPID, globals too
  kAllContexts = 2,                   // every VPID except 0
  kSingleContextRetainingGlobals = 3, // this VPID, globals kept
};

enum class InvEptType : uint8_t {
  kSingleContext = 1,  // mappings tagged with one EP4TA
  kGlobal = 2,         // mappings tagged with any EP4TA
};

#define MMU_TLB_MODEL_COUNTERS(X)                                        \
  X(Hit4K, hit_4k)                                                       \
  X(Hit2M, hit_2m)                                                       \
  X(Hit1G, hit_1g)                                                       \
  X(Miss, miss)                                                          \
  /* Misses because a write found a clean entry (also counted in miss). */ \
  X(MissWriteClean, miss_write_clean)                                    \
  /* Insertions by the size of the mapping (= walks that filled). */     \
  X(Insert4K, insert_4k)                                                 \
  X(Insert2M, insert_2m)                                                 \
  X(Insert1G, insert_1g)                                                 \
  X(Splinter, splinter)                                                  \
  X(Evict, evict)                                                        \
  X(FlushInvlpg, flush_invlpg)                                           \
  X(FlushPcid, flush_pcid)                                               \
  X(FlushInvpcidAddress, flush_invpcid_address)                          \
  X(FlushInvpcidContext, flush_invpcid_context)                          \
  X(FlushInvpcidAllGlobal, flush_invpcid_all_global)                     \
  X(FlushInvpcidAll, flush_invpcid_all)                                  \
  X(FlushVpid, flush_vpid)                                               \
  X(FlushInvvpidAddress, flush_invvpid_address)                          \
  X(FlushInvvpidContext, flush_invvpid_context)                          \
  X(FlushInvvpidAll, flush_invvpid_all)                                  \
  X(FlushInvvpidContextKeepGlobal, flush_invvpid_context_keep_global)    \
  X(FlushInveptContext, flush_invept_context)                            \
  X(FlushInveptGlobal, flush_invept_global)                              \
  X(FlushAll, flush_all)                                                 \
  /* Entries removed by any of the flushes above. */                     \
  X(EntriesInvalidated, entries_invalidated)
BASE_DEFINE_COUNTERS(TlbModelCounters, MMU_TLB_MODEL_COUNTERS);

class TlbModel {
 public:
  // CHECK-fails on an invalid geometry (host configuration, not guest input).
  explicit TlbModel(const TlbConfig& config = TlbConfig::SkylakeStlb());

  TlbModel(const TlbModel&) = delete;
  TlbModel& operator=(const TlbModel&) = delete;

  // Looks up the translation of `va` (a gpa for a kGuestPhysical TLB) for
  // `tag`. Returns the entry, valid until the next non-const call, or nullptr
  // on a miss. A hit refreshes the entry's LRU position. Counts a hit by the
  // entry's page size, or a miss. Only Access::kWrite changes the outcome (the
  // dirty rule above).
  const TlbEntry* Lookup(const TlbTag& tag, uint64_t va, Access access) noexcept;

  // Like Lookup but without counting or touching LRU (audits and tests).
  const TlbEntry* Probe(const TlbTag& tag, uint64_t va) const noexcept;

  // Caches the translation of the page containing `va`, after a successful
  // walk. An entry with the same tag and page is replaced in place; otherwise
  // the LRU way of the set is evicted; when `evicted` is given it receives a
  // copy of the entry that was evicted (valid = false when none was).
  void Insert(const TlbTag& tag, uint64_t va, const TlbTranslation& translation,
              TlbEntry* evicted = nullptr) noexcept;

  // --- Invalidation by guest instructions (linear TLB only). Per SDM Vol. 3C
  // §29.4.3.1 these act on the current VPID and, for combined mappings, on
  // every EP4TA, so they take no EP4TA.

  // INVLPG (SDM §4.10.4.1): removes the entries for the page containing `va`
  // of any page size that are associated with `pcid`, and the global entries
  // for that page whatever their PCID. The paging-structure caches are the
  // PageWalkCache's job (PageWalkCache::InvalidateForInvlpg).
  void InvLpg(uint16_t vpid, uint16_t pcid, uint64_t va) noexcept;

  // MOV to CR3 (SDM §4.10.4.1): with CR4.PCIDE=0, or with PCIDE=1 and bit 63
  // of the source clear, removes every entry of (vpid, pcid) except global
  // ones. With PCIDE=1 and bit 63 set the instruction invalidates nothing and
  // the caller does not call this. keep_global=false removes globals too:
  // for MOV to CR4 changing PAE, or SMEP from 0 to 1, which invalidate "all
  // TLB entries ... for the current PCID" (SDM §4.10.4.1).
  void FlushPcid(uint16_t vpid, uint16_t pcid, bool keep_global = true) noexcept;

  // INVPCID (SDM Vol. 2 "INVPCID", §4.10.4.1), exactly the four types:
  // 0 (va, pcid) except globals; 1 pcid except globals; 2 every pcid with
  // globals; 3 every pcid except globals. `va` is used by type 0 only.
  void InvPcid(InvPcidType type, uint16_t vpid, uint16_t pcid, uint64_t va) noexcept;

  // Removes every entry of `vpid`, globals included, in every PCID and EP4TA.
  // For: MOV to CR4 changing PGE, or PCIDE from 1 to 0 (SDM §4.10.4.1, the
  // CR4 rule); MOV to CR0 changing PG; and VM entry/exit with "enable VPID" =
  // 0, which flush VPID 0 (SDM Vol. 3C §29.4.3.3).
  void FlushVpid(uint16_t vpid) noexcept;

  // INVVPID (SDM Vol. 3C "INVVPID", §29.4.3.3). Linear and combined mappings,
  // every PCID and EP4TA. Type 0: the page of `va` in `vpid`, globals too;
  // 1: all of `vpid`; 2: every VPID except 0; 3: all of `vpid` except globals.
  // Returns false, and does nothing, where the instruction would VMfail on
  // the VPID (types 0, 1 and 3 with vpid 0).
  bool InvVpid(InvVpidType type, uint16_t vpid, uint64_t va) noexcept;

  // INVEPT (SDM Vol. 3C "INVEPT", §29.4.3.3): removes guest-physical and
  // combined mappings (every VPID and PCID) tagged with `ep4ta` (single
  // context) or with any EP4TA (global). Linear mappings (EP4TA 0) stay.
  // Call it on both the linear TLB (combined mappings) and the
  // guest-physical TLB; `ep4ta` is ignored for kGlobal.
  void InvEpt(InvEptType type, uint64_t ep4ta) noexcept;

  // Removes everything (model reset, strategy switch).
  void FlushAll() noexcept;

  // Number of valid entries (tests, reports). O(entries).
  size_t CountValid() const;
  size_t capacity() const { return entries_.size(); }
  const TlbConfig& config() const { return config_; }

  const TlbModelCounters& counters() const { return counters_; }
  TlbModelCounters& mutable_counters() { return counters_; }

 private:
  struct Array {
    TlbArrayConfig config;
    size_t first_entry = 0;  // index into entries_
  };
  static constexpr size_t kNotFound = ~size_t{0};

  // The array that holds `size`, or nullptr.
  const Array* ArrayFor(PageSize size) const;
  // The index of the first way of the set that `va` selects at `size`.
  size_t SetBegin(const Array& array, PageSize size, uint64_t va) const;
  // The index of the entry of `array` that translates `va` at `size` for
  // `tag` (globals match any PCID), or kNotFound.
  size_t FindInSet(const Array& array, const TlbTag& tag, PageSize size, uint64_t va) const;
  // The same over every array and held size.
  size_t Find(const TlbTag& tag, uint64_t va) const;

  // Removes the entries for which pred(entry) holds; counts them.
  template <typename Pred>
  void InvalidateIf(Pred pred) noexcept;
  // Removes the entries covering `va` (by mapping, so every splinter goes)
  // for which pred(entry) holds. Probes only the sets `va` selects unless
  // splintering is possible.
  template <typename Pred>
  void InvalidateAddress(uint64_t va, Pred pred) noexcept;

  // keys_[i]: entries_[i]'s validity, page size and vpn in one word (0 when
  // invalid), so that probing a 12-way set reads 96 bytes instead of 12
  // entries, and a flush skips invalid entries without touching them.
  static constexpr uint64_t KeyOf(PageSize size, uint64_t vpn) {
    return (vpn << 3) | (static_cast<uint64_t>(size) << 1) | 1;
  }
  void Invalidate(size_t i) noexcept {
    entries_[i].valid = false;
    keys_[i] = 0;
  }

  TlbConfig config_;
  std::vector<Array> arrays_;
  std::vector<TlbEntry> entries_;  // the arrays' sets, way by way
  std::vector<uint64_t> keys_;     // parallel to entries_ (KeyOf)
  std::vector<uint64_t> stamps_;   // parallel to entries_: LRU stamps
  // Whether some page size is held by no array (then entries may be pieces of
  // larger mappings, and address invalidation scans the whole TLB).
  bool splinters_ = false;
  uint64_t clock_ = 0;
  TlbModelCounters counters_;
};

}  // namespace mmu

// A model of the x86 paging-structure caches ("page-walk caches", PWC).
//
// Intel SDM Vol. 3A §4.10.3 "Paging-Structure Caches". Besides the TLB, a
// processor caches *partial* translations: for the upper bits of a linear
// address, the physical address of a paging structure further down, so that
// a TLB miss can skip the upper levels of the walk. One cache per level:
//   level 5  PML5E cache (5-level paging only), keyed by va bits 56:48
//   level 4  PML4E cache, keyed by va bits 47:39 (56:39 with LA57)
//   level 3  PDPTE cache, keyed by va bits 47:30 (56:30)
//   level 2  PDE cache,   keyed by va bits 47:21 (56:21)
// (levels numbered as in mmu/pte.h). The keys here are always the va bits
// 56:shift: in 4-level paging bits 56:48 of a canonical address copy bit 47,
// so they add no aliasing, and 4- and 5-level entries never meet because
// changing CR4.LA57 requires paging off, which flushes everything.
//
// An entry at level L holds what SDM §4.10.3.1 lists: the physical address
// of the paging structure that the level-L entry references (the next table),
// the logical-AND of the R/W flags and of the U/S flags, and the logical-OR
// of the XD flags, of the entries at levels top..L. Only non-leaf entries are
// cached: a PDPTE or PDE with PS=1 maps a page and belongs in the TLB. The
// walker inserts an entry only for a present, non-leaf entry with A=1 and no
// reserved bit set (the SDM's conditions for creating one). PCD/PWT are not
// modelled.
//
// Tags. A tag is an opaque 64-bit value; lookups and flushes match it
// exactly, or under a mask (FlushTagMasked). Conventions:
//   - Guest (linear) dimension: LinearTag(vpid, pcid). INVLPG, MOV to CR3 and
//     INVPCID type 0/1 flush one tag; INVPCID type 2/3, INVVPID single-context
//     and CR4 flushes flush all PCIDs of a VPID with
//     FlushTagMasked(LinearTag(vpid, 0), kVpidTagMask). The walker of a nested
//     guest keeps one PWC per EP4TA or flushes the guest-dimension PWC on
//     INVEPT (invalidating more than required is always allowed, SDM
//     §4.10.4.3).
//   - EPT dimension of a 2-D walk: a separate PageWalkCache instance, tag =
//     EP4TA (EPTP bits 51:12), `va` = the guest-physical address being
//     translated, levels = EPT levels (mmu/ept.h numbering). For EPT pass
//     writable = AND of the W bits, nx = !(AND of the X bits), user = true
//     (or the AND of user-execute under mode-based execute control). The EPT
//     walker does not cache a non-leaf entry with R=0. INVEPT is
//     FlushTag(ep4ta) (single context) or FlushAll() (global).
//
// Replacement: each level is a small fully associative array with true LRU,
// deterministic. Lookup and Insert are noexcept, allocation-free, and scan at
// most the configured entries of each probed level.
//
// Thread safety: none. A PageWalkCache belongs to one vCPU and is used only
// from that vCPU's thread. Its counters may be read from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/counters.h"
#include "mmu/pte.h"

namespace mmu {

// Entries per level. Intel does not publish the sizes of its
// paging-structure caches; these defaults are a modelling assumption of the
// order that measurement and simulation studies use (a few tens of entries
// for the PDE cache; upper levels matter less since each entry covers 1 GiB
// or more). Change them per study; 0 disables a level.
struct PwcConfig {
  uint32_t pml5e_entries = 32;
  uint32_t pml4e_entries = 32;
  uint32_t pdpte_entries = 32;
  uint32_t pde_entries = 32;
};

// What a lookup found: the deepest cached level and its entry. The walker's
// next read is the entry at level `level - 1` of the table at next_table_pa.
struct PwcHit {
  int level = 0;  // 2 = PDE cache ... 5 = PML5E cache
  uint64_t next_table_pa = 0;
  bool writable = false;  // AND of R/W, levels top..level
  bool user = false;      // AND of U/S
  bool nx = false;        // OR of XD
};

#define MMU_PWC_COUNTERS(X)                         \
  X(HitPde, hit_pde)                                \
  X(HitPdpte, hit_pdpte)                            \
  X(HitPml4e, hit_pml4e)                            \
  X(HitPml5e, hit_pml5e)                            \
  X(Miss, miss)                                     \
  X(Insert, insert)                                 \
  X(Evict, evict)                                   \
  X(InvalidateVa, invalidate_va)                    \
  X(FlushInvlpg, flush_invlpg)                      \
  X(FlushTag, flush_tag)                            \
  X(FlushAll, flush_all)                            \
  /* Entries removed by any invalidation above. */  \
  X(EntriesInvalidated, entries_invalidated)
BASE_DEFINE_COUNTERS(PwcCounters, MMU_PWC_COUNTERS);

class PageWalkCache {
 public:
  static constexpr int kMinLevel = 2;  // the PDE cache
  static constexpr int kMaxLevel = 5;  // the PML5E cache
  // The VPID half of a LinearTag, for FlushTagMasked.
  static constexpr uint64_t kVpidTagMask = uint64_t{0xffff} << 16;

  static constexpr uint64_t LinearTag(uint16_t vpid, uint16_t pcid) {
    return (uint64_t{vpid} << 16) | pcid;
  }

  explicit PageWalkCache(const PwcConfig& config = {});

  PageWalkCache(const PageWalkCache&) = delete;
  PageWalkCache& operator=(const PageWalkCache&) = delete;

  // Finds the deepest cached partial translation of `va` for `tag`, probing
  // the PDE cache first and up to `top_level` (4 or 5: the paging mode's or
  // the EPT's number of levels). On a hit fills *out, refreshes the entry's
  // LRU position, counts a hit for that level and returns true; otherwise
  // counts a miss and returns false.
  bool Lookup(uint64_t tag, uint64_t va, int top_level, PwcHit* out) noexcept;

  // Caches the non-leaf entry at `level` (2..5) of the walk of `va`:
  // next_table_pa is the address in that entry; writable/user/nx are the
  // combined rights of levels top..level. Replaces an entry for the same
  // (tag, key) in place, else evicts the level's LRU entry.
  void Insert(uint64_t tag, uint64_t va, int level, uint64_t next_table_pa, bool writable,
              bool user, bool nx) noexcept;

  // Removes the entries of `tag`, at every level, whose region contains
  // `va`. This is the minimum for an address-specific invalidation; the
  // x86 instructions below require more, see InvalidateForInvlpg.
  void InvalidateVa(uint64_t tag, uint64_t va) noexcept;

  // INVLPG: SDM §4.10.4.1 says INVLPG "invalidates all entries in all
  // paging-structure caches associated with the current PCID, regardless of
  // the linear addresses to which they correspond". So this flushes the whole
  // tag, not only the entries for the address. INVPCID type 0 has the same
  // rule (SDM §4.10.4.1). For INVVPID type 0 the strategy flushes every PCID
  // of the VPID with FlushTagMasked (it does not know which PCIDs map the
  // address, and invalidating more is always allowed, SDM §4.10.4.3).
  void InvalidateForInvlpg(uint64_t tag) noexcept;

  // MOV to CR3 (no-flush bit clear), INVPCID type 1, INVEPT single-context
  // on an EPT-dimension PWC: every entry of `tag`.
  void FlushTag(uint64_t tag) noexcept;
  // Every entry whose tag satisfies (tag & mask) == value.
  void FlushTagMasked(uint64_t value, uint64_t mask) noexcept;
  // MOV to CR4 changing PGE/PCIDE/..., MOV to CR0 changing PG, INVEPT
  // global: everything.
  void FlushAll() noexcept;

  // Number of valid entries at `level` (tests, reports).
  size_t CountValid(int level) const;

  const PwcCounters& counters() const { return counters_; }
  PwcCounters& mutable_counters() { return counters_; }

 private:
  // One level's fully associative array. Keys and tags sit apart from the
  // payload so that the scan touches as few cache lines as possible.
  struct KeyTag {
    uint64_t key;  // va bits 56:LevelShift(level); kInvalidKey when empty
    uint64_t tag;
  };
  struct Payload {
    uint64_t next_table_pa = 0;
    uint64_t last_use = 0;
    bool writable = false;
    bool user = false;
    bool nx = false;
  };
  struct Level {
    std::vector<KeyTag> keys;
    std::vector<Payload> payloads;
  };
  // No real key has bits set above bit 56 - 21.
  static constexpr uint64_t kInvalidKey = ~uint64_t{0};

  static uint64_t KeyOf(uint64_t va, int level);
  Level& LevelAt(int level) { return levels_[level - kMinLevel]; }
  const Level& LevelAt(int level) const { return levels_[level - kMinLevel]; }

  template <typename Pred>
  void InvalidateIf(Pred pred) noexcept;

  std::array<Level, kMaxLevel - kMinLevel + 1> levels_;
  uint64_t clock_ = 0;
  PwcCounters counters_;
};

}  // namespace mmu

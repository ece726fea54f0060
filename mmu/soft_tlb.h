// The software CPU's TLB: the hit path of every guest memory access.
//
// The soft CPU's interpreter asks this table, on every load, store and
// instruction fetch, for the host pointer behind a guest virtual address. A
// hit is one indexed load, one compare and one add; everything else (the
// guest walk, the paging strategy, permission faults, A/D updates, MMIO,
// write-protected pages) happens on a miss, in the strategy's Translate(),
// which then calls Fill(). This is the design of QEMU's softmmu TLB
// (CPUTLBEntry with addr_read / addr_write / addr_code / addend), described
// here in our own terms.
//
// Layout. Direct-mapped, num_entries (a power of two) per MMU index, indexed
// by gva bits 12.. . Each entry has one page tag per access type and an
// addend:
//   tag[kRead], tag[kWrite], tag[kFetch]: the 4 KiB-aligned gva of the page
//     the entry maps, OR-ed with the table's current epoch in bits 11:0, when
//     that access is allowed; kInvalidTag (all ones) when it is not. A page
//     that may be read but not written (read-only PTE, a write-protected
//     guest page table under shadow paging, a COW/shared frame, a page whose
//     dirty bit must still be set) has an invalid write tag, so writes miss
//     and go to the strategy while reads keep hitting.
//   addend: host_page - gva_page, so that host pointer = addend + gva.
//
// Why one table per MMU index (kSupervisor, kUser) rather than one table with
// permission bits: whether an access may proceed depends on CPL (U/S), and
// for supervisor accesses also on CR0.WP, CR4.SMEP/SMAP and EFLAGS.AC (SDM
// §4.6). With one table per privilege, each entry's tags already encode the
// answer for that privilege and the hit path stays a single compare; a
// combined table would need a load and test of permission bits on every
// access. The cost is that a page used from both rings occupies two entries.
// Changes to CR0.WP, CR4.SMAP/SMEP or EFLAGS.AC (if the strategy folds AC
// into the supervisor table) call FlushMmuIdx(kSupervisor).
//
// Page-crossing accesses. The compare uses the page of the access's *last*
// byte, (gva + size_bytes - 1) with bits 11:0 cleared, while the index comes
// from the first byte's page. An access that stays in one page compares its
// own page; one that crosses into the next page compares the next page's
// number against an entry that can only hold the first page (two adjacent
// pages never share an index when num_entries >= 2), so it always misses and
// the caller splits it. Non-canonical addresses always miss too: no tag is
// ever non-canonical.
//
// O(1) FlushAll. Every tag carries the table's epoch in bits 11:0 and every
// compare ORs the current epoch into the compared page, so bumping the epoch
// makes every entry stale at once. When the epoch would reach kInvalidTag's
// low bits the table is cleared for real (every 4095 flushes).
//
// Large pages. The table holds only 4 KiB entries; a 2 MiB or 1 GiB guest
// mapping is filled 4 KiB at a time. Fill() records the union of large-page
// ranges it has filled (as QEMU does), and FlushPage() of an address inside
// that range flushes the whole MMU index, because INVLPG of any address in a
// large page must remove every piece of it (SDM §4.10.4.1).
//
// Global pages (SDM §4.10.2.4). A translation the strategy fills as global
// (G = 1 in the leaf, with CR4.PGE = 1) also goes into a side table of
// kGlobalEntries per MMU index, which FlushNonGlobal (MOV to CR3) leaves
// alone while it empties the main tables. The hit path does not change:
// after a CR3 write such a page misses once, and the miss path's first step,
// RefillGlobal, copies it back from the side table without asking the
// strategy (no walk). Every other flush (FlushAll, FlushMmuIdx, FlushPage,
// and so host invalidations, INVLPG and CR4.PGE toggles) empties the side
// table too. A guest kernel maps itself global, so its pages stay translated
// across process switches, as on hardware.
//
// Thread safety: none. A SoftTlb belongs to one vCPU and is used only from
// that vCPU's thread; invalidations requested by other threads (FrameTable
// hooks, remote TLB shootdowns) are delivered to the vCPU thread, which calls
// the Flush methods between instructions. Counters may be read from any
// thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "base/addr.h"
#include "base/counters.h"
#include "mmu/paging_mode.h"

namespace mmu {

#define MMU_SOFT_TLB_COUNTERS(X)                                  \
  X(Fill, fill)                                                   \
  X(FlushPage, flush_page)                                        \
  /* FlushPage calls that hit a tracked large page and flushed */ \
  /* the whole MMU index instead. */                              \
  X(FlushPageLarge, flush_page_large)                             \
  X(FlushMmuIdx, flush_mmu_idx)                                   \
  X(FlushAll, flush_all)                                          \
  X(FlushNonGlobal, flush_non_global) /* MOV to CR3: globals stay */ \
  X(GlobalRefill, global_refill)  /* misses served by the side table */ \
  /* Real clears of a table when its epoch wrapped. */            \
  X(EpochWrap, epoch_wrap)
BASE_DEFINE_COUNTERS(SoftTlbCounters, MMU_SOFT_TLB_COUNTERS);

class SoftTlb {
 public:
  // mmu::Access (paging_mode.h) indexes the tags: kRead 0, kWrite 1, kFetch 2.
  static constexpr Access kRead = Access::kRead;
  static constexpr Access kWrite = Access::kWrite;
  static constexpr Access kFetch = Access::kFetch;

  // The privilege an access is checked at: CPL 3 data and code accesses use
  // kUser; CPL 0-2 accesses and implicit supervisor accesses (descriptor
  // tables, the TSS) use kSupervisor (SDM §4.6.1).
  enum class MmuIdx : uint8_t { kSupervisor = 0, kUser = 1 };
  static constexpr size_t kNumMmuIdx = 2;

  // What a filled page allows at its MMU index.
  struct Perms {
    bool read = false;
    bool write = false;
    bool fetch = false;
  };

  struct Config {
    // Entries per MMU index, a power of two >= 2. 256 entries x 32 bytes x 2
    // indexes = 16 KiB, well within a host L1 data cache; QEMU starts at 256
    // per MMU index too (and resizes dynamically, which we do not).
    uint32_t num_entries = 256;
  };

  static constexpr uint64_t kInvalidTag = ~uint64_t{0};
  // Side-table entries per MMU index for global pages (direct-mapped): a
  // guest kernel's hot pages, not all it maps.
  static constexpr uint32_t kGlobalEntries = 1024;
  // Epochs run 0..kMaxEpoch; kMaxEpoch < 0xfff keeps every valid tag distinct
  // from kInvalidTag even for the page at the very top of the address space.
  static constexpr uint64_t kMaxEpoch = base::kPageMask - 1;

  SoftTlb() : SoftTlb(Config{}) {}
  // CHECK-fails on a bad geometry (host configuration).
  explicit SoftTlb(const Config& config);

  SoftTlb(const SoftTlb&) = delete;
  SoftTlb& operator=(const SoftTlb&) = delete;

  // The hit path. Returns the host pointer for the `size_bytes` (1..4096)
  // bytes at `gva`, or nullptr when the access misses: no entry, the access
  // type not allowed, or the access crosses a page boundary.
  template <Access kAccess>
  uint8_t* Lookup(MmuIdx mmu_idx, uint64_t gva, uint32_t size_bytes) const noexcept {
    const Table& t = tables_[static_cast<size_t>(mmu_idx)];
    const Entry& e = t.entries[(gva >> base::kPageShift) & index_mask_];
    const uint64_t last_page = (gva + size_bytes - 1) & ~base::kPageMask;
    if (e.tag[static_cast<size_t>(kAccess)] != (last_page | t.epoch)) [[unlikely]] {
      return nullptr;
    }
    return reinterpret_cast<uint8_t*>(e.addend + gva);
  }

  // Installs the page containing `gva` at `mmu_idx`: `host_page` is the host
  // address of that 4 KiB page (not of a large page's base), `perms` what the
  // strategy allows without a trap. page_size_bytes is the size of the guest
  // mapping (4 KiB, 2 MiB or 1 GiB), recorded for FlushPage. Replaces what
  // the slot held.
  // `global`: the translation is global (see "Global pages"); a non-global
  // fill of a page drops any global copy of it.
  void Fill(MmuIdx mmu_idx, uint64_t gva, uint8_t* host_page, Perms perms,
            uint64_t page_size_bytes = base::kPageSize, bool global = false) noexcept;

  // The miss path's first step: when the page of `gva` is a global
  // translation that only FlushNonGlobal removed, installs it in the main
  // table again and returns the host pointer of `gva` for `access`. nullptr:
  // no such translation, or it does not allow `access` (ask the strategy).
  uint8_t* RefillGlobal(MmuIdx mmu_idx, uint64_t gva, Access access) noexcept;

  // Takes write permission away from the page of `gva` at `mmu_idx`, in the
  // main table and the global side table (a page that now holds decoded
  // code).
  void DropWrite(MmuIdx mmu_idx, uint64_t gva) noexcept;

  // Removes the page containing `gva` from every MMU index (INVLPG, a guest
  // PTE change seen by the strategy, FrameTable invalidation). If the address
  // lies in a large page that was filled piecewise, flushes that MMU index.
  void FlushPage(uint64_t gva) noexcept;
  // Removes every entry of one MMU index. O(1) (epoch).
  void FlushMmuIdx(MmuIdx mmu_idx) noexcept;
  // Removes every entry. O(1) (epoch).
  void FlushAll() noexcept;
  // Removes every entry except global ones (MOV to CR3). O(1) (epoch).
  void FlushNonGlobal() noexcept;

  uint32_t num_entries() const { return index_mask_ + 1; }
  const SoftTlbCounters& counters() const { return counters_; }
  SoftTlbCounters& mutable_counters() { return counters_; }

 private:
  struct alignas(32) Entry {
    std::array<uint64_t, 3> tag;  // indexed by Access
    uintptr_t addend;
  };
  static_assert(sizeof(Entry) == 32);
  static_assert(static_cast<int>(Access::kRead) == 0 && static_cast<int>(Access::kWrite) == 1 &&
                static_cast<int>(Access::kFetch) == 2);

  struct Table {
    Entry* entries = nullptr;
    // Per entry of the side table of global pages: the size of the guest
    // mapping, to track large pages in `entries` again on a refill.
    uint64_t* page_sizes = nullptr;
    uint64_t epoch = 0;
    // The aligned range covering every large page filled since the last
    // flush of this index: gva is in it when (gva & large_mask) == large_base.
    bool has_large = false;
    uint64_t large_base = 0;
    uint64_t large_mask = 0;
    // Side tables: something was installed since the last flush. A guest
    // without global pages (or an MMU index without them, usually the
    // user's) then costs the miss path nothing.
    bool in_use = false;
  };

  void ClearTable(Table& table, uint64_t mask) noexcept;
  void FlushTable(Table& table, uint64_t mask) noexcept;
  static void Install(Table& t, uint64_t index, uint64_t gva, uintptr_t addend, Perms perms,
                      uint64_t page_size_bytes) noexcept;
  // Clears the entry of the page of `gva`; *in_large: it lies in the range
  // of large pages the table tracks.
  static void FlushPageIn(Table& t, uint64_t index, uint64_t gva, bool* in_large) noexcept;

  uint64_t index_mask_ = 0;
  std::array<Table, kNumMmuIdx> tables_{};
  std::array<Table, kNumMmuIdx> globals_{};  // the side tables of global pages
  std::unique_ptr<Entry[]> storage_;
  std::unique_ptr<Entry[]> global_storage_;
  std::unique_ptr<uint64_t[]> global_page_sizes_;
  SoftTlbCounters counters_;
};

}  // namespace mmu

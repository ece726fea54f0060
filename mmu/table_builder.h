// Builds x86-64 page tables and EPT tables in a physical memory: used by tests,
// benchmarks and the demo, and by the VMM to build a guest's boot-time tables.
//
// The memory type must provide `uint64_t* PageAt(uint64_t)` and
// `uint64_t AllocPage()` (a zeroed page's physical address, 0 when out of
// memory), like FlatMemory.
//
// Thread safety: none; build tables before any vCPU uses them.
#pragma once

#include <cstdint>

#include "mmu/ept.h"
#include "mmu/pte.h"

namespace mmu {

template <typename Mem>
class TableBuilder {
 public:
  // `ept` selects EPT entry formats (permission bits R/W/X for tables) rather
  // than guest formats (P/R/W/U for tables).
  TableBuilder(Mem& mem, int levels, bool ept = false)
      : mem_(mem), levels_(levels), ept_(ept), root_(mem.AllocPage()) {}

  uint64_t root() const { return root_; }
  int levels() const { return levels_; }

  // Maps the page of `size` at `va` to `pa` with leaf bits `leaf_flags` (for a
  // guest table: P, R/W, U/S, ...; PS is added for large pages. For EPT: R/W/X,
  // memory type, ...; PS added likewise). Intermediate tables are created with
  // `table_flags` (guest default: P|RW|US; EPT default: R|W|X).
  // Returns false if a table could not be allocated or a leaf is in the way.
  bool Map(uint64_t va, uint64_t pa, PageSize size, uint64_t leaf_flags) {
    return Map(va, pa, size, leaf_flags, DefaultTableFlags());
  }
  bool Map(uint64_t va, uint64_t pa, PageSize size, uint64_t leaf_flags, uint64_t table_flags) {
    const int leaf_level = static_cast<int>(size);
    uint64_t table = root_;
    for (int level = levels_; level > leaf_level; --level) {
      uint64_t* entry = EntryPtr(table, va, level);
      if (*entry == 0) {
        const uint64_t next = mem_.AllocPage();
        if (next == 0) return false;
        *entry = next | table_flags;
      } else if (IsLeaf(*entry, level)) {
        return false;
      }
      table = *entry & pte::kAddrMask52;
    }
    uint64_t leaf = pa | leaf_flags;
    if (leaf_level > 1) leaf |= ept_ ? epte::kPageSize : pte::kPageSize;
    *EntryPtr(table, va, leaf_level) = leaf;
    return true;
  }

  // The entry at `level` on the path of `va`, or nullptr if a table on the way
  // is missing. Lets tests flip individual bits.
  uint64_t* Entry(uint64_t va, int level) {
    uint64_t table = root_;
    for (int l = levels_; l > level; --l) {
      uint64_t e = *EntryPtr(table, va, l);
      if (e == 0 || IsLeaf(e, l)) return nullptr;
      table = e & pte::kAddrMask52;
    }
    return EntryPtr(table, va, level);
  }

 private:
  uint64_t DefaultTableFlags() const {
    return ept_ ? (epte::kRead | epte::kWrite | epte::kExecute)
                : (pte::kPresent | pte::kWritable | pte::kUser);
  }
  bool IsLeaf(uint64_t e, int level) const {
    return level == 1 || ((level == 2 || level == 3) && (e & pte::kPageSize));
  }
  uint64_t* EntryPtr(uint64_t table, uint64_t va, int level) {
    return mem_.PageAt(table) + LevelIndex(va, level);
  }

  Mem& mem_;
  int levels_;
  bool ept_;
  uint64_t root_;
};

}  // namespace mmu

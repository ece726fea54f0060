// Setting accessed/dirty bits in a paging-structure entry, as the processor
// does: a locked read-modify-write that only adds the flags, and only if the
// entry still says what the walk read (SDM Vol. 3A §4.8; Vol. 3C §29.3.5).
//
// Thread safety: safe against concurrent writers of the same entry (other
// vCPUs walking, or the guest rewriting its tables).
#pragma once

#include <atomic>
#include <cstdint>

namespace mmu {

// Adds `flags` to *entry unless it changed, in bits other than `ad_mask`, from
// `expected` (the value the walk used). Returns false when the entry changed
// under the walk, in which case the walk must be redone.
inline bool SetEntryFlags(uint64_t* entry, uint64_t expected, uint64_t flags,
                          uint64_t ad_mask) noexcept {
  std::atomic_ref<uint64_t> ref(*entry);
  uint64_t current = ref.load(std::memory_order_relaxed);
  for (;;) {
    if ((current & ~ad_mask) != (expected & ~ad_mask)) return false;
    if ((current & flags) == flags) return true;
    if (ref.compare_exchange_weak(current, current | flags, std::memory_order_relaxed)) return true;
  }
}

inline uint64_t LoadEntry(const uint64_t* entry) noexcept {
  return std::atomic_ref<const uint64_t>(*entry).load(std::memory_order_relaxed);
}

}  // namespace mmu

// A shadow page: one VMM-built table of the shadow paging structures, and
// the role that says what it shadows. See docs/shadow.md.
//
// A shadow page shadows one guest table page at one level under one role:
// its 512 shadow entries (sptes) mirror the guest's 512 entries (gptes).
//   - A non-leaf spte points to the child shadow page (the address of its
//     `spt`, which starts the 4 KiB-aligned ShadowPage) with P|W|U set: the
//     access rights live in the leaf, combined over the whole guest path.
//   - A leaf spte (level 1) holds the host address of the guest frame, the
//     combined guest rights (W, U, XD, protection key) and the software bit
//     kHostWritable: writes may go straight to the frame (the guest D bit is
//     set, the frame is private, and the gfn is not a write-protected guest
//     table).
// "Direct" shadow pages shadow a piece of a guest large page rather than a
// guest table: their gfn is the first gfn of the piece and their sptes map
// consecutive frames. The soft TLB holds only 4 KiB entries, so shadow
// tables do too.
//
// Thread safety: none; the ShadowStrategy mutex guards every shadow page.
#pragma once

#include <cstdint>

#include "absl/container/inlined_vector.h"
#include "base/addr.h"
#include "mmu/pte.h"

namespace shadow {

// What a shadow page shadows beyond its gfn (KVM's kvm_mmu_page_role, in our
// terms). Two guest walks may share a shadow page only if they agree on all
// of it: the level, whether it shadows a guest table or a large page, the
// access rights combined over the guest entries above it, and the control
// bits that change how the guest's entries are interpreted or checked.
struct Role {
  uint8_t level = 0;     // 1..5: the level of the guest table shadowed
  bool direct = false;   // shadows a piece of a guest large page
  // Combined rights of the guest entries above this page: R/W and U/S ANDed,
  // XD ORed (kAcc* bits). A direct page's include the large leaf's.
  uint8_t access = 0;
  // For a direct page: the large leaf's D bit. A clean large page and a
  // dirty one never share sptes, so the first write through each walks and
  // sets D. (Folding D into W instead let a clean writable page share a
  // dirty read-only one's host-writable sptes.)
  bool dirty = false;
  // For a direct page: the level of the guest large page (2 or 3).
  uint8_t large_level = 0;
  // For a direct page: the large page's protection key.
  uint8_t pkey = 0;
  bool cr0_wp = false;
  bool smep = false;
  bool smap = false;
  bool nxe = false;
  bool la57 = false;

  static constexpr uint8_t kAccWrite = 1;
  static constexpr uint8_t kAccUser = 2;
  static constexpr uint8_t kAccNoExec = 4;
  static constexpr uint8_t kAccAll = kAccWrite | kAccUser;  // W, U, executable

  uint32_t Pack() const {
    return uint32_t{level} | uint32_t{direct} << 4 | uint32_t{access} << 5 |
           uint32_t{large_level} << 8 | uint32_t{cr0_wp} << 12 | uint32_t{smep} << 13 |
           uint32_t{smap} << 14 | uint32_t{nxe} << 15 | uint32_t{la57} << 16 |
           uint32_t{pkey} << 17 | uint32_t{dirty} << 21;
  }
  bool operator==(const Role& o) const { return Pack() == o.Pack(); }
};

// Software-defined bits of a shadow entry (the hardware-defined ones are the
// guest's: mmu::pte).
namespace spte {
inline constexpr uint64_t kPresent = mmu::pte::kPresent;
inline constexpr uint64_t kWritable = mmu::pte::kWritable;  // combined guest R/W
inline constexpr uint64_t kUser = mmu::pte::kUser;          // combined guest U/S
inline constexpr uint64_t kNoExecute = mmu::pte::kNoExecute;
inline constexpr uint64_t kProtKeyMask = mmu::pte::kProtKeyMask;
inline constexpr uint64_t kHostWritable = uint64_t{1} << 9;  // writes need no trap
// A host virtual address of a 4 KiB page (user-space addresses fit in 47 bits).
inline constexpr uint64_t kAddrMask = 0x0000'ffff'ffff'f000ull;
inline constexpr uint64_t kNonLeaf = kPresent | kWritable | kUser;
}  // namespace spte

inline constexpr int kEntries = 512;

struct ShadowPage;

// Where a child shadow page is linked from.
struct ParentLink {
  ShadowPage* parent;
  uint16_t index;
  bool operator==(const ParentLink&) const = default;
};

struct alignas(base::kPageSize) ShadowPage {
  // The shadow entries. First, so that a non-leaf spte's address is the
  // child ShadowPage's address.
  uint64_t spt[kEntries] = {};
  // For a non-direct leaf page: the guest entry each present spte was built
  // from, as it was then. A resync keeps an spte only if its gpte is unchanged.
  uint64_t gpte[kEntries] = {};

  uint64_t gfn = 0;
  Role role;
  absl::InlinedVector<ParentLink, 2> parents;
  // A leaf page the guest writes without traps until its next TLB flush.
  bool unsync = false;
  // Emulated writes since this page was last used by a shadow fault.
  uint32_t write_flooding = 0;
  // vCPUs using it as their root, current or recent (pins it).
  uint32_t root_count = 0;
  uint32_t present = 0;  // present sptes
  // The last shadow fault whose path went through this page (recycling
  // spares the path of the fault in progress).
  uint64_t fault_stamp = 0;
  // Least-recently-used order of all pages (most recent at the head).
  ShadowPage* lru_prev = nullptr;
  ShadowPage* lru_next = nullptr;

  static ShadowPage* FromSpte(const uint64_t* spte) {
    return reinterpret_cast<ShadowPage*>(reinterpret_cast<uintptr_t>(spte) & ~base::kPageMask);
  }
  static ShadowPage* Child(uint64_t non_leaf_spte) {
    return reinterpret_cast<ShadowPage*>(non_leaf_spte & spte::kAddrMask);
  }
  uint16_t IndexOf(const uint64_t* spte) const { return static_cast<uint16_t>(spte - spt); }
  // The gfn a present leaf spte at `index` maps.
  uint64_t TargetGfn(int index) const {
    return role.direct ? gfn + static_cast<uint64_t>(index)
                       : (gpte[index] & mmu::pte::kAddrMask52) >> base::kPageShift;
  }
};

}  // namespace shadow

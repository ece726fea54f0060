// A deliberately simple page walker, written for clarity and used only by
// tests as the oracle the real walkers are checked against.
//
// It follows the Intel SDM text sentence by sentence (Vol. 3A §4.5-4.8, Vol. 3C
// §29.3) with none of the real walkers' structure: no templates, no policies,
// no early-outs shared between cases, values copied rather than pointed to. It
// applies the project's documented A/D policy (updates only when the whole
// translation succeeds; guest entries top-down, then EPT entries) so that the
// memory it leaves behind can be compared byte for byte.
//
// Thread safety: none; single-threaded tests only.
#pragma once

#include <cstdint>
#include <optional>

#include "mmu/ept_walker.h"
#include "mmu/paging_mode.h"
#include "mmu/phys_memory.h"
#include "mmu/walk_result.h"

namespace mmu::reference {

struct Outcome {
  WalkStatus status = WalkStatus::kOk;
  uint64_t gpa = 0;
  uint64_t hpa = 0;
  PageSize page_size = PageSize::k4K;
  uint32_t error_code = 0;        // for kPageFault
  int fault_level = 0;            // for kPageFault
  uint64_t ept_qualification = 0; // for kEptViolation
  uint64_t fault_gpa = 0;         // for kEptViolation / kEptMisconfig
  int memory_references = 0;      // every entry read, guest and EPT
};

// A 1-D walk of guest tables in `mem` (guest-physical = mem's addresses).
Outcome Walk1D(FlatMemory& mem, const PagingMode& mode, uint64_t cr3, const AccessRequest& req);

// A 2-D walk: guest tables at guest-physical addresses, translated by the EPT
// tables of `eptp` in host memory `host`.
Outcome Walk2D(FlatMemory& host, const PagingMode& mode, uint64_t cr3, uint64_t eptp,
               const EptCaps& caps, const AccessRequest& req);

}  // namespace mmu::reference

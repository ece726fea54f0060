#include "mmu/walk_result.h"

namespace mmu {

const char* WalkStatusName(WalkStatus s) {
  switch (s) {
    case WalkStatus::kOk: return "ok";
    case WalkStatus::kPageFault: return "page_fault";
    case WalkStatus::kNonCanonical: return "non_canonical";
    case WalkStatus::kBadTableAddress: return "bad_table_address";
    case WalkStatus::kEptViolation: return "ept_violation";
    case WalkStatus::kEptMisconfig: return "ept_misconfig";
    case WalkStatus::kRetry: return "retry";
  }
  return "unknown";
}

}  // namespace mmu

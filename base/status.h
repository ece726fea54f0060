// Status propagation macros over absl::Status / absl::StatusOr.
//
// Debian's Abseil (20220623) has no RETURN_IF_ERROR/ASSIGN_OR_RETURN, so the
// project defines its own:
//   TRY(expr);                      // return expr's status if it is not OK
//   ASSIGN_OR_RETURN(lhs, expr);    // lhs = std::move(*expr) or return status
// Both work in functions returning absl::Status or absl::StatusOr<T>. They are
// for the control plane (config, ioctls, files, device setup); hot paths return
// small enums instead (see docs/architecture.md, "Conventions").
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace base::internal {

inline const absl::Status& AsStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace base::internal

#define BASE_STATUS_CONCAT_INNER(a, b) a##b
#define BASE_STATUS_CONCAT(a, b) BASE_STATUS_CONCAT_INNER(a, b)

#define TRY(expr)                                                        \
  do {                                                                   \
    auto&& _try_result = (expr);                                         \
    if (!_try_result.ok()) [[unlikely]] {                                \
      return ::base::internal::AsStatus(_try_result);                    \
    }                                                                    \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  BASE_ASSIGN_OR_RETURN_IMPL(BASE_STATUS_CONCAT(_status_or_, __LINE__), lhs, expr)

#define BASE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) [[unlikely]] {                    \
    return std::move(tmp).status();                \
  }                                                \
  lhs = std::move(tmp).value()

// CHECK and DCHECK: assertions of host invariants.
//
//   CHECK(ptr != nullptr) << "while mapping " << gpa;
//   CHECK_EQ(a, b);  CHECK_NE, CHECK_LT, CHECK_LE, CHECK_GT, CHECK_GE
//   DCHECK(...), DCHECK_EQ(...), ...   // checked only in debug builds
//
// A failed check logs the condition, the operands of a comparison and the
// streamed message, then aborts. Use it only for broken *host* invariants: a
// guest can never be allowed to trip a CHECK (bad guest input becomes an
// injected fault, a virtio NEEDS_RESET or a counted drop; see docs/architecture.md, "Conventions").
// DCHECKs compile to nothing under NDEBUG but their operands still type-check.
#pragma once

#include <utility>

#include "base/log.h"

namespace base::internal {

template <typename A, typename B>
struct CheckOpValues {
  A lhs;
  B rhs;
};
template <typename A, typename B>
CheckOpValues<A, B> MakeCheckOpValues(const A& a, const B& b) {
  return {a, b};
}

}  // namespace base::internal

#define CHECK(cond)                                                           \
  while (!(cond)) [[unlikely]]                                                \
  ::base::internal::LogMessage(__FILE__, __LINE__, ::base::LogSeverity::kFatal) \
          .stream()                                                           \
      << "Check failed: " #cond " "

#define BASE_CHECK_OP(op, a, b)                                                \
  for (auto _check_values = ::base::internal::MakeCheckOpValues((a), (b));     \
       !(_check_values.lhs op _check_values.rhs);)                             \
  ::base::internal::LogMessage(__FILE__, __LINE__, ::base::LogSeverity::kFatal) \
          .stream()                                                            \
      << "Check failed: " #a " " #op " " #b " (" << _check_values.lhs << " vs " \
      << _check_values.rhs << ") "

#define CHECK_EQ(a, b) BASE_CHECK_OP(==, a, b)
#define CHECK_NE(a, b) BASE_CHECK_OP(!=, a, b)
#define CHECK_LT(a, b) BASE_CHECK_OP(<, a, b)
#define CHECK_LE(a, b) BASE_CHECK_OP(<=, a, b)
#define CHECK_GT(a, b) BASE_CHECK_OP(>, a, b)
#define CHECK_GE(a, b) BASE_CHECK_OP(>=, a, b)
// Checks that an absl::Status (or StatusOr) is OK.
#define CHECK_OK(expr)                                                         \
  for (auto&& _check_status = (expr); !_check_status.ok();)                    \
  ::base::internal::LogMessage(__FILE__, __LINE__, ::base::LogSeverity::kFatal) \
          .stream()                                                            \
      << "Check failed: " #expr " is OK: " << _check_status << " "

#ifdef NDEBUG
#define DCHECK(cond) \
  while (false && (cond)) CHECK(true)
#define BASE_DCHECK_OP(op, a, b) \
  while (false && ((a)op(b))) CHECK(true)
#else
#define DCHECK(cond) CHECK(cond)
#define BASE_DCHECK_OP(op, a, b) BASE_CHECK_OP(op, a, b)
#endif

#define DCHECK_EQ(a, b) BASE_DCHECK_OP(==, a, b)
#define DCHECK_NE(a, b) BASE_DCHECK_OP(!=, a, b)
#define DCHECK_LT(a, b) BASE_DCHECK_OP(<, a, b)
#define DCHECK_LE(a, b) BASE_DCHECK_OP(<=, a, b)
#define DCHECK_GT(a, b) BASE_DCHECK_OP(>, a, b)
#define DCHECK_GE(a, b) BASE_DCHECK_OP(>=, a, b)

#include "base/check.h"

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace base {
namespace {

TEST(CheckDeathTest, FailedCheckAbortsWithMessage) {
  EXPECT_DEATH(CHECK(1 + 1 == 3) << "arithmetic", "Check failed: 1 \\+ 1 == 3 arithmetic");
}

TEST(CheckDeathTest, ComparisonShowsOperands) {
  int a = 3, b = 4;
  EXPECT_DEATH(CHECK_EQ(a, b), "Check failed: a == b \\(3 vs 4\\)");
  EXPECT_DEATH(CHECK_OK(absl::InternalError("boom")), "boom");
}

TEST(CheckTest, PassingChecksEvaluateOperandsOnce) {
  int n = 0;
  CHECK_EQ(++n, 1);
  CHECK(++n == 2);
  CHECK_LT(n++, 3);
  EXPECT_EQ(n, 3);
  CHECK_OK(absl::OkStatus());
}

TEST(CheckTest, DcheckMatchesBuildType) {
#ifdef NDEBUG
  DCHECK(false) << "not evaluated in release";
  SUCCEED();
#else
  EXPECT_DEATH(DCHECK_EQ(1, 2), "Check failed");
#endif
}

}  // namespace
}  // namespace base

#include "base/status.h"

#include <memory>

#include "gtest/gtest.h"

namespace base {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Check(int x, int* calls) {
  ++*calls;
  TRY(Half(x));
  return absl::OkStatus();
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(int v) { return std::make_unique<int>(v); }

absl::StatusOr<int> Unbox() {
  ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(9));  // move-only value
  return *box;
}

TEST(StatusTest, TryPropagatesError) {
  int calls = 0;
  EXPECT_TRUE(Check(4, &calls).ok());
  absl::Status s = Check(3, &calls);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd");
  EXPECT_EQ(calls, 2);
}

TEST(StatusTest, AssignOrReturnAssignsAndPropagates) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().message(), "odd");  // second step fails
  EXPECT_EQ(Quarter(5).status().message(), "odd");  // first step fails
  EXPECT_EQ(*Unbox(), 9);
}

}  // namespace
}  // namespace base

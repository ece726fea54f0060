// Unit tests of the shadow strategy's rules.
#include "shadow/shadow_strategy.h"

#include "gtest/gtest.h"

namespace shadow {
namespace {

TEST(ShadowStrategyTest, CreateRejectsBadOptions) {
  EXPECT_FALSE(ShadowStrategy::Create(nullptr, {}).ok());
}

}  // namespace
}  // namespace shadow

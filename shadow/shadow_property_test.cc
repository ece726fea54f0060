// Property tests of the shadow strategy against native.
#include <cstdint>
#include <memory>

#include "cpu/native_strategy.h"
#include "gtest/gtest.h"
#include "shadow/shadow_strategy.h"
#include "tests/strategy_conformance.h"

namespace shadow {
namespace {

std::unique_ptr<mmu::PagingStrategy> MakeShadow(mmu::GuestPhysMemory* mem, uint32_t max_vcpus,
                                                bool unsync) {
  ShadowStrategy::Options o;
  o.max_vcpus = max_vcpus;
  o.unsync = unsync;
  auto s = ShadowStrategy::Create(mem, o);
  CHECK(s.ok()) << s.status();
  return std::move(*s);
}

std::unique_ptr<mmu::PagingStrategy> MakeNative(mmu::GuestPhysMemory* mem, uint32_t max_vcpus) {
  auto s = cpu::NativeStrategy::Create(mem, {.max_vcpus = max_vcpus});
  CHECK(s.ok()) << s.status();
  return std::move(*s);
}

using mmu::testing::StrategyConformanceTest;
using mmu::testing::StrategyFactory;
INSTANTIATE_TEST_SUITE_P(
    Shadow, StrategyConformanceTest,
    ::testing::Values(
        StrategyFactory{"shadow_unsync",
                        [](mmu::GuestPhysMemory* m, uint32_t n) { return MakeShadow(m, n, true); },
                        /*compares_memory=*/true, /*tracked_writes=*/true},
        StrategyFactory{"shadow_sync",
                        [](mmu::GuestPhysMemory* m, uint32_t n) { return MakeShadow(m, n, false); },
                        /*compares_memory=*/true, /*tracked_writes=*/true},
        // The tracked-write harness itself, checked with the reference strategy.
        StrategyFactory{"native_tracked", MakeNative, /*compares_memory=*/true,
                        /*tracked_writes=*/true}),
    [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace shadow

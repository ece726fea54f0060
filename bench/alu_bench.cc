// Lazy-flags micro-benchmarks (Google Benchmark): what a flag consumer costs.
//
//   BM_AddThenJl          Add<4> + EvalCondition(jl): the interpreter's common
//                         case, answered from the recorded operands/result.
//   BM_CmpThenJl          Cmp<4> + EvalCondition(jl): the kSub fast path.
//   BM_AddThenMaterialize Add<4> + Materialize: the PUSHF / interrupt path.
//   BM_AddIncThenJb       Add<4>, Inc<4>, EvalCondition(jb): CF carried by INC.
// Operands come from a fixed pseudo-random table so the branches inside
// EvalCondition see realistic data. Run with
//   build/release/bench/alu_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <cstdint>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "cpu/alu.h"
#include "cpu/lazy_flags.h"

namespace cpu {
namespace {

constexpr int kOperands = 1024;

std::vector<uint64_t> MakeOperands() {
  std::mt19937_64 rng(42);
  std::vector<uint64_t> v(kOperands);
  for (auto& x : v) x = rng();
  return v;
}

void BM_AddThenJl(benchmark::State& state) {
  const std::vector<uint64_t> ops = MakeOperands();
  LazyFlags f;
  unsigned i = 0, taken = 0;
  for (auto _ : state) {
    const uint64_t r = Add<4>(&f, ops[i], ops[i + 1]);
    taken += EvalCondition(f, kCondL);
    benchmark::DoNotOptimize(r);
    i = (i + 2) & (kOperands - 1);
  }
  benchmark::DoNotOptimize(taken);
}
BENCHMARK(BM_AddThenJl);

void BM_CmpThenJl(benchmark::State& state) {
  const std::vector<uint64_t> ops = MakeOperands();
  LazyFlags f;
  unsigned i = 0, taken = 0;
  for (auto _ : state) {
    Cmp<4>(&f, ops[i], ops[i + 1]);
    taken += EvalCondition(f, kCondL);
    i = (i + 2) & (kOperands - 1);
  }
  benchmark::DoNotOptimize(taken);
}
BENCHMARK(BM_CmpThenJl);

void BM_AddThenMaterialize(benchmark::State& state) {
  const std::vector<uint64_t> ops = MakeOperands();
  LazyFlags f;
  unsigned i = 0;
  uint64_t acc = 0;
  for (auto _ : state) {
    const uint64_t r = Add<4>(&f, ops[i], ops[i + 1]);
    acc += Materialize(f, 0x202);
    benchmark::DoNotOptimize(r);
    i = (i + 2) & (kOperands - 1);
  }
  benchmark::DoNotOptimize(acc);
}
BENCHMARK(BM_AddThenMaterialize);

void BM_AddIncThenJb(benchmark::State& state) {
  const std::vector<uint64_t> ops = MakeOperands();
  LazyFlags f;
  unsigned i = 0, taken = 0;
  for (auto _ : state) {
    const uint64_t r = Add<4>(&f, ops[i], ops[i + 1]);
    const uint64_t s = Inc<4>(&f, r);
    taken += EvalCondition(f, kCondB);
    benchmark::DoNotOptimize(s);
    i = (i + 2) & (kOperands - 1);
  }
  benchmark::DoNotOptimize(taken);
}
BENCHMARK(BM_AddIncThenJb);

}  // namespace
}  // namespace cpu

BENCHMARK_MAIN();

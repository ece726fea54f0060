// Micro-benchmarks of the soft TLB: the hit path that the interpreter takes
// on every guest memory access (target: under 2 ns per hit), and the
// miss-plus-fill path.
//
// Run with repetitions to get a median, e.g.
//   soft_tlb_bench --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
// Each benchmark reports `target_ns` (2) next to its time per lookup.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "mmu/soft_tlb.h"

namespace mmu {
namespace {

constexpr double kTargetNs = 2.0;
constexpr uint64_t kGvaBase = 0x0000'7f00'0000'0000;
constexpr size_t kNumAccesses = 4096;  // a power of two

struct Fixture {
  explicit Fixture(uint32_t num_entries)
      : tlb(SoftTlb::Config{.num_entries = num_entries}),
        host(static_cast<uint8_t*>(std::aligned_alloc(base::kPageSize, num_entries * base::kPageSize))) {
    // One resident page per slot: every access below hits.
    for (uint32_t i = 0; i < num_entries; ++i) {
      tlb.Fill(SoftTlb::MmuIdx::kUser, kGvaBase + i * base::kPageSize,
               host.get() + i * base::kPageSize, {.read = true, .write = true, .fetch = true});
    }
    // A random mix of resident pages and 8-byte aligned offsets.
    std::mt19937_64 rng(42);
    gvas.resize(kNumAccesses);
    for (uint64_t& gva : gvas) {
      gva = kGvaBase + (rng() % num_entries) * base::kPageSize + (rng() % 512) * 8;
    }
  }
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  SoftTlb tlb;
  std::unique_ptr<uint8_t, Free> host;
  std::vector<uint64_t> gvas;
};

// One lookup per iteration, so the Time column is ns per lookup; the target
// rides along as a counter and in the label so the output states both.
void SetCounters(benchmark::State& state, const char* label) {
  state.counters["target_ns"] = kTargetNs;
  state.SetLabel(label);
}

// Throughput of independent hits: one Lookup per iteration, the result kept
// alive with DoNotOptimize.
void BM_SoftTlbHit(benchmark::State& state) {
  Fixture f(static_cast<uint32_t>(state.range(0)));
  size_t i = 0;
  for (auto _ : state) {
    uint8_t* p = f.tlb.Lookup<SoftTlb::kRead>(SoftTlb::MmuIdx::kUser, f.gvas[i], 8);
    benchmark::DoNotOptimize(p);
    i = (i + 1) & (kNumAccesses - 1);
  }
  SetCounters(state, "hit, ns/lookup vs target 2 ns");
}
BENCHMARK(BM_SoftTlbHit)->Arg(256)->Arg(1024);

// Latency of a dependent chain: each access's address depends on the byte
// loaded through the previous hit (as the interpreter's next access often
// depends on the previous load). The time includes loading the next gva and
// the host byte; BM_DirectDependent is the same chain without the TLB, so the
// difference of the two is the hit path's latency.
void BM_SoftTlbHitDependent(benchmark::State& state) {
  Fixture f(static_cast<uint32_t>(state.range(0)));
  // All host bytes are zero, so the chain stays on the precomputed mix.
  std::fill_n(f.host.get(), state.range(0) * base::kPageSize, uint8_t{0});
  size_t i = 0;
  for (auto _ : state) {
    uint8_t* p = f.tlb.Lookup<SoftTlb::kWrite>(SoftTlb::MmuIdx::kUser, f.gvas[i], 8);
    i = (i + 1 + *p) & (kNumAccesses - 1);
  }
  benchmark::DoNotOptimize(i);
  SetCounters(state, "dependent chain incl. 2 loads; subtract BM_DirectDependent");
}
BENCHMARK(BM_SoftTlbHitDependent)->Arg(256);

void BM_DirectDependent(benchmark::State& state) {
  Fixture f(static_cast<uint32_t>(state.range(0)));
  std::fill_n(f.host.get(), state.range(0) * base::kPageSize, uint8_t{0});
  uint8_t* const host = f.host.get();
  benchmark::DoNotOptimize(host);
  size_t i = 0;
  for (auto _ : state) {
    uint8_t* p = host + (f.gvas[i] - kGvaBase);
    i = (i + 1 + *p) & (kNumAccesses - 1);
  }
  benchmark::DoNotOptimize(i);
  state.SetLabel("baseline: same chain, no TLB");
}
BENCHMARK(BM_DirectDependent)->Arg(256);

// A miss followed by the fill the strategy would do (without the strategy's
// own walk): the floor of the slow path.
void BM_SoftTlbMissAndFill(benchmark::State& state) {
  Fixture f(256);
  uint64_t page = 0;
  for (auto _ : state) {
    // Pages beyond the resident window: always a miss, each refill evicts.
    const uint64_t gva = kGvaBase + (256 + (page++ & 0xffff)) * base::kPageSize;
    uint8_t* p = f.tlb.Lookup<SoftTlb::kRead>(SoftTlb::MmuIdx::kUser, gva, 8);
    if (p == nullptr) {
      f.tlb.Fill(SoftTlb::MmuIdx::kUser, gva, f.host.get(), {.read = true});
      p = f.tlb.Lookup<SoftTlb::kRead>(SoftTlb::MmuIdx::kUser, gva, 8);
    }
    benchmark::DoNotOptimize(p);
  }
  SetCounters(state, "miss + fill + hit (no walk)");
}
BENCHMARK(BM_SoftTlbMissAndFill);

void BM_SoftTlbFlushAll(benchmark::State& state) {
  Fixture f(256);
  for (auto _ : state) f.tlb.FlushAll();
  state.SetLabel("O(1) epoch flush, amortised clear");
}
BENCHMARK(BM_SoftTlbFlushAll);

}  // namespace
}  // namespace mmu

BENCHMARK_MAIN();

// Page-walk micro-benchmarks (Google Benchmark).
//
// Targets from the foundation issue (medians; timing is never a test):
//   1-D 4-level walk with tables hot in cache   < 30 ns
//   2-D 4-level/4-level walk                    < 150 ns
// Each walk translates one of 64 (or 256) mapped pages spread over the address space,
// in a fixed pseudo-random order, after a warm-up pass (so A/D bits are
// already set and the tables are in the host's caches). Run with
//   build/release/bench/walker_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
// and read the _median rows.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "mmu/table_builder.h"
#include "mmu/walker.h"

namespace mmu {
namespace {

constexpr int kMaxPages = 256;
constexpr uint64_t kGuestBase = 16 << 20;
constexpr uint64_t kWb = uint64_t{6} << epte::kMemTypeShift;

using GuestView = WindowMemory<FlatMemory>;

struct Setup {
  Setup(int levels, int pages, int spread_bits)
      : host(32 << 20), view(host, kGuestBase), guest(view, levels), ept(host, 4, true), num_pages(pages) {
    std::mt19937_64 rng(42);
    const int va_bits = std::min(spread_bits, levels == 5 ? 56 : 47);
    for (int i = 0; i < pages; ++i) {
      const uint64_t va = (rng() & ((uint64_t{1} << va_bits) - 1)) & ~uint64_t{0xfff};
      guest.Map(va, (4 << 20) + uint64_t(i) * 0x1000, PageSize::k4K,
                pte::kPresent | pte::kWritable | pte::kUser);
      vas.push_back(va);
    }
    for (uint64_t g = 0; g < (8 << 20); g += 0x1000) {
      ept.Map(g, kGuestBase + g, PageSize::k4K, epte::kRead | epte::kWrite | epte::kExecute | kWb);
    }
    ctx.eptp = MakeEptp(ept.root(), 4, false);
    mode.levels = levels;
  }
  FlatMemory host;
  GuestView view;
  TableBuilder<GuestView> guest;
  TableBuilder<FlatMemory> ept;
  EptContext ctx;
  PagingMode mode;
  std::vector<uint64_t> vas;
  int num_pages;
};

void BM_Walk1D(benchmark::State& state) {
  Setup s(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
          static_cast<int>(state.range(2)));
  AccessRequest req;
  req.cpl = 3;
  WalkResult r;
  for (uint64_t va : s.vas) {  // warm-up: sets A bits
    req.va = va;
    Walk1D(s.mode, s.guest.root(), req, s.view, &r);
  }
  size_t i = 0;
  for (auto _ : state) {
    req.va = s.vas[i++ & (s.num_pages - 1)];
    Walk1D(s.mode, s.guest.root(), req, s.view, &r);
    benchmark::DoNotOptimize(r.gpa);
  }
  if (r.status != WalkStatus::kOk) state.SkipWithError("walk failed");
  state.SetLabel(state.range(0) == 4 ? "4-level, target < 30 ns" : "5-level");
}
// Args: paging levels; number of pages walked in turn; the span they are
// spread over, in address bits. 30 (1 GiB) is a process's working set: tables
// share upper levels and stay in the host's caches and TLB, the case the
// targets are for. 56 spreads them over the whole address space, so every
// level is a different host page: a worst case bounded by host TLB misses.
BENCHMARK(BM_Walk1D)->Args({4, 64, 30})->Args({4, 256, 30})->Args({4, 64, 56})->Args({5, 64, 30});

void BM_Walk2D(benchmark::State& state) {
  Setup s(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
          static_cast<int>(state.range(2)));
  AccessRequest req;
  req.cpl = 3;
  WalkResult r;
  for (uint64_t va : s.vas) {
    req.va = va;
    Walk2D(s.mode, s.guest.root(), s.ctx, req, s.host, &r);
  }
  size_t i = 0;
  for (auto _ : state) {
    req.va = s.vas[i++ & (s.num_pages - 1)];
    Walk2D(s.mode, s.guest.root(), s.ctx, req, s.host, &r);
    benchmark::DoNotOptimize(r.hpa);
  }
  if (r.status != WalkStatus::kOk || r.refs.Total() != (s.mode.levels + 1) * 4 + s.mode.levels) {
    state.SkipWithError("walk failed or made the wrong number of references");
  }
  state.counters["refs"] = r.refs.Total();
  state.SetLabel(state.range(0) == 4 ? "4/4, target < 150 ns" : "5/4");
}
BENCHMARK(BM_Walk2D)->Args({4, 64, 30})->Args({4, 256, 30})->Args({4, 64, 56})->Args({5, 64, 30});

}  // namespace
}  // namespace mmu

BENCHMARK_MAIN();

// Micro-benchmarks of the TLB and page-walk-cache models: what one modelled
// lookup costs the soft backend on a soft-TLB miss (tens of ns is the budget).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "mmu/page_walk_cache.h"
#include "mmu/tlb_model.h"

namespace mmu {
namespace {

constexpr size_t kNumAccesses = 4096;  // a power of two

std::vector<uint64_t> RandomPages(uint64_t num_pages) {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> vas(kNumAccesses);
  for (uint64_t& va : vas) va = 0x7f00'0000'0000 + (rng() % num_pages) * 0x1000;
  return vas;
}

// Lookups in the Skylake-class STLB over a working set that fits (1024 pages).
void BM_TlbModelLookupHit(benchmark::State& state) {
  TlbModel tlb;
  const std::vector<uint64_t> vas = RandomPages(1024);
  const TlbTag tag = TlbTag::Linear(1, 1);
  for (uint64_t va : vas) {
    if (!tlb.Probe(tag, va)) tlb.Insert(tag, va, {.frame_base = va, .writable = true, .dirty = true});
  }
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(tlb.Lookup(tag, vas[i], Access::kRead));
    i = (i + 1) & (kNumAccesses - 1);
  }
}
BENCHMARK(BM_TlbModelLookupHit);

// Lookup, and Insert on a miss, over a working set four times the STLB.
void BM_TlbModelLookupOrInsert(benchmark::State& state) {
  TlbModel tlb;
  const std::vector<uint64_t> vas = RandomPages(8192);
  const TlbTag tag = TlbTag::Linear(1, 1);
  size_t i = 0;
  for (auto _ : state) {
    if (!tlb.Lookup(tag, vas[i], Access::kRead)) {
      tlb.Insert(tag, vas[i], {.frame_base = vas[i], .writable = true, .dirty = true});
    }
    i = (i + 1) & (kNumAccesses - 1);
  }
}
BENCHMARK(BM_TlbModelLookupOrInsert);

void BM_TlbModelFlushPcid(benchmark::State& state) {
  TlbModel tlb;
  for (auto _ : state) tlb.FlushPcid(1, 1);
}
BENCHMARK(BM_TlbModelFlushPcid);

// A PDE-cache hit with full default caches (32 entries per level).
void BM_PwcLookup(benchmark::State& state) {
  PageWalkCache pwc;
  std::vector<uint64_t> vas(32);
  for (size_t i = 0; i < vas.size(); ++i) {
    vas[i] = 0x7f00'0000'0000 + i * 0x20'0000;
    for (int level = 4; level >= 2; --level) pwc.Insert(1, vas[i], level, 0x1000 * level, true, true, false);
  }
  size_t i = 0;
  PwcHit hit;
  for (auto _ : state) {
    benchmark::DoNotOptimize(pwc.Lookup(1, vas[i], 4, &hit));
    i = (i + 1) & 31;
  }
}
BENCHMARK(BM_PwcLookup);

}  // namespace
}  // namespace mmu

BENCHMARK_MAIN();

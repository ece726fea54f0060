// Micro-benchmarks of the memory core: FramePool single-frame allocation
// (the path dedup and COW take per page), FrameTable lookups and translations
// (the lock-free reads vCPU threads make), and GuestMemory::HostPtr (every
// device access to guest RAM).
//
// Run with repetitions to get a median, e.g.
//   frame_pool_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "base/check.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/memory_layout.h"

namespace vmm {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr size_t kNumAccesses = 4096;  // a power of two

std::unique_ptr<FramePool> MakePool(uint64_t budget_bytes) {
  auto pool = FramePool::Create({.budget_bytes = budget_bytes});
  CHECK_OK(pool.status());
  return std::move(*pool);
}

// One AllocateFrame + FreeFrame pair per iteration, on a frame that was
// never written (the punch on free finds nothing to release).
void BM_AllocateFreeFrame(benchmark::State& state) {
  auto pool = MakePool(64 * kMiB);
  for (auto _ : state) {
    auto hfn = pool->AllocateFrame();
    benchmark::DoNotOptimize(hfn);
    pool->FreeFrame(*hfn);
  }
}
BENCHMARK(BM_AllocateFreeFrame);

// The same with the frame written, so the free really punches a resident
// page: the cost of returning memory to the host.
void BM_AllocateTouchFreeFrame(benchmark::State& state) {
  auto pool = MakePool(64 * kMiB);
  for (auto _ : state) {
    auto hfn = pool->AllocateFrame();
    pool->HostPtr(*hfn)[0] = 1;
    pool->FreeFrame(*hfn);
  }
}
BENCHMARK(BM_AllocateTouchFreeFrame);

// Allocation alone, with many frames held (the free map stays small: frames
// come off the top of one range).
void BM_AllocateFrameOnly(benchmark::State& state) {
  auto pool = MakePool(1 * kGiB);
  std::vector<base::Hfn> held;
  held.reserve(1 << 18);
  for (auto _ : state) {
    auto hfn = pool->AllocateFrame();
    if (!hfn) [[unlikely]] {
      state.PauseTiming();
      for (base::Hfn h : held) pool->FreeFrame(h);
      held.clear();
      state.ResumeTiming();
      continue;
    }
    held.push_back(*hfn);
  }
  for (base::Hfn h : held) pool->FreeFrame(h);  // after the timed loop
}
BENCHMARK(BM_AllocateFrameOnly);

struct TableFixture {
  TableFixture() : pool(MakePool(4 * kGiB)) {
    // The real layout of a 4 GiB VM: two RAM ranges around the MMIO hole.
    const MemoryLayout layout = MemoryLayout::ForRamSize(4 * kGiB);
    auto t = FrameTable::Create(pool.get(), {.vm_name = "bench", .ram_ranges = layout.ram});
    CHECK_OK(t.status());
    table = std::move(*t);
    std::mt19937_64 rng(42);
    const uint64_t low_frames = MemoryLayout::kMmioHoleStart >> base::kPageShift;
    for (size_t i = 0; i < kNumAccesses; ++i) {
      // 3/4 low RAM, 1/4 high RAM, like the ranges' sizes.
      const uint64_t idx = rng() % table->num_frames();
      const uint64_t gfn = idx < low_frames ? idx : (MemoryLayout::kMmioHoleEnd >> base::kPageShift) + idx - low_frames;
      gfns.push_back(base::Gfn(gfn));
      gpas.push_back(base::GpaOf(base::Gfn(gfn)) + (rng() % 512) * 8);
    }
  }
  std::unique_ptr<FramePool> pool;
  std::unique_ptr<FrameTable> table;
  std::vector<base::Gfn> gfns;
  std::vector<base::Gpa> gpas;
};

void BM_Lookup(benchmark::State& state) {
  TableFixture f;
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.table->Lookup(f.gfns[i++ & (kNumAccesses - 1)]));
  }
}
BENCHMARK(BM_Lookup);

void BM_Translate(benchmark::State& state) {
  TableFixture f;
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.table->Translate(f.gfns[i++ & (kNumAccesses - 1)]));
  }
}
BENCHMARK(BM_Translate);

// GuestMemory::HostPtr of an 8-byte field (a virtqueue descriptor's address).
void BM_GuestHostPtr8(benchmark::State& state) {
  TableFixture f;
  GuestMemory& mem = *f.table;
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(mem.HostPtr(f.gpas[i++ & (kNumAccesses - 1)], 8));
  }
}
BENCHMARK(BM_GuestHostPtr8);

// GuestMemory::HostPtr of a 64 KiB buffer (a block request): 16 or 17 pages
// checked.
void BM_GuestHostPtr64K(benchmark::State& state) {
  TableFixture f;
  GuestMemory& mem = *f.table;
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(mem.HostPtr(f.gpas[i++ & (kNumAccesses - 1)], 64 * 1024));
  }
}
BENCHMARK(BM_GuestHostPtr64K);

// FramePool::HostPtr: base + offset.
void BM_PoolHostPtr(benchmark::State& state) {
  auto pool = MakePool(64 * kMiB);
  std::mt19937_64 rng(7);
  std::vector<base::Hfn> hfns;
  for (size_t i = 0; i < kNumAccesses; ++i) hfns.push_back(base::Hfn(rng() % pool->address_space_frames()));
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(pool->HostPtr(hfns[i++ & (kNumAccesses - 1)]));
  }
}
BENCHMARK(BM_PoolHostPtr);

}  // namespace
}  // namespace vmm

BENCHMARK_MAIN();

// Soft-CPU interpreter throughput (Google Benchmark): guest instructions per
// second on a tight integer loop (cpu/testdata/programs.S, prog_bench:
// xorshift64 plus a 256-entry table update, 16 instructions per iteration,
// with loads, stores and a taken branch), in a fake guest memory with
// identity-mapped 4-level tables and the native strategy. Steady state: every
// fetch and data access hits the soft TLB and the block cache. Run with
//   build/release/bench/interpreter_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
// The "insns/s" counter is the figure to compare with the target.
#include <cstdint>
#include <memory>

#include "base/check.h"
#include "benchmark/benchmark.h"
#include "cpu/interpreter.h"
#include "cpu/native_strategy.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/soft_tlb.h"
#include "mmu/table_builder.h"
#include "tests/fakes/fake_guest_phys_memory.h"

extern "C" const uint8_t prog_bench[], prog_bench_end[];

namespace cpu {
namespace {

constexpr uint64_t kRamBytes = 4 << 20;
constexpr uint64_t kCode = 0x200000;
constexpr uint64_t kTable = 0x280000;
constexpr uint64_t kStackTop = 0x300000;

void BM_InterpreterIntegerLoop(benchmark::State& st) {
  mmu::FlatMemory flat(kRamBytes);
  mmu::testing::FakeGuestPhysMemory mem(flat);
  mmu::TableBuilder<mmu::FlatMemory> tables(flat, 4);
  namespace pte = mmu::pte;
  for (uint64_t va = 0x100000; va < 0x400000; va += 4096) {
    CHECK(tables.Map(va, va, mmu::PageSize::k4K,
                     pte::kPresent | pte::kWritable | pte::kAccessed | pte::kDirty));
  }
  auto strategy = NativeStrategy::Create(&mem, {.max_vcpus = 1});
  CHECK(strategy.ok());
  mmu::SoftTlb tlb;
  mmu::VcpuMmu vcpu;
  vcpu.tlb = &tlb;
  vcpu.cr3 = tables.root();
  CHECK((*strategy)->AttachVcpu(&vcpu).ok());
  (*strategy)->LeaveQuiescence(vcpu);
  for (const uint8_t* p = prog_bench; p < prog_bench_end; ++p) {
    const uint64_t gpa = kCode + static_cast<uint64_t>(p - prog_bench);
    mem.FlatPage(gpa >> 12)[gpa & 0xfff] = *p;
  }
  CpuState state;
  state.rip = kCode;
  state.gpr[4] = kStackTop;
  state.gpr[7] = kTable;
  Interpreter interp(&state, &vcpu, strategy->get(), nullptr);
  constexpr uint64_t kBatch = 1'000'000;
  interp.Run(kBatch);  // warm the TLB and the block cache
  uint64_t total = 0;
  for (auto _ : st) {
    const RunResult r = interp.Run(kBatch);
    total += r.instructions;
    benchmark::DoNotOptimize(state.gpr[0]);
  }
  st.counters["insns/s"] = benchmark::Counter(static_cast<double>(total), benchmark::Counter::kIsRate);
  (*strategy)->DetachVcpu(&vcpu);
}
BENCHMARK(BM_InterpreterIntegerLoop)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace cpu

BENCHMARK_MAIN();

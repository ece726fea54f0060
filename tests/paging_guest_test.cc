// The soft backend's paging strategies, shadow (shadow/) and nested
// (nested/), on the real guest image:
//   - every workload under each computes exactly what it computes under
//     native (every result, elapsed_ns included: on soft guest time counts
//     instructions, and paging must not change one). soft_guest_test checks
//     native against QEMU TCG and kvm, so both agree with all three. Shadow
//     tables are audited at every resync meanwhile;
//   - FrameTable invalidations of random gfns (harvests, copy-on-write
//     shares and their breaks) while a workload runs lose no data; under
//     shadow the audit after each finds the shadow tables exact;
//   - switching the strategy at random moments while a workload runs
//     changes none of its results;
//   - the adaptive mode computes what native computes, and counts its
//     decisions.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/guest_results.h"
#include "tests/support/small_workload_args.h"
#include "vmm-host/elf_loader.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/machine.h"
#include "vmm-host/report.h"
#include "vmm-host/soft_hypervisor.h"
#include "vmm-host/vmm_runner.h"

namespace vmm {
namespace {

constexpr uint64_t kRamBytes = 64ull << 20;

std::map<std::string, uint64_t> Stats(const BackendStats& stats) {
  std::map<std::string, uint64_t> out;
  for (const auto& c : stats) out[c.name] = c.value;
  return out;
}

class PagingGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("paging_guest_test_", getpid(), "_", name);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  VmConfig Vm(const std::string& name, const std::string& paging, const std::string& workload) {
    VmConfig vm;
    vm.name = name;
    vm.backend = "soft";
    vm.paging = paging;
    vm.workload = workload;
    vm.workload_args = vmm::testing::SmallWorkloadArgs().at(workload);
    vm.ram_bytes = kRamBytes;
    vm.timeout_seconds = 300;  // ASan runs the interpreter ~5x slower
    return vm;
  }

  std::filesystem::path dir_;
};

using StrategyAndWorkload = std::tuple<std::string, std::string>;

class StrategyWorkloadTest : public PagingGuestTest,
                             public ::testing::WithParamInterface<StrategyAndWorkload> {};

TEST_P(StrategyWorkloadTest, ComputesWhatNativeComputes) {
  const auto& [strategy, workload] = GetParam();
  RunConfig config;
  config.log_dir = (dir_ / "logs").string();
  config.report_path = (dir_ / "report.json").string();
  config.shadow_audit = true;
  config.vms.push_back(Vm("native", "native", workload));
  config.vms.push_back(Vm(strategy, strategy, workload));
  absl::StatusOr<RunOutcome> run = RunVms(config);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 2u);
  for (const MachineResult& r : run->vms) {
    ASSERT_TRUE(r.ok()) << r.name << ": " << MachineOutcomeName(r.outcome) << ": " << r.failure
                        << "\n" << r.registers << "\n" << r.console_tail;
  }
  const MachineResult& native = run->vms[0];
  const MachineResult& other = run->vms[1];
  EXPECT_EQ(other.paging_mode, "soft/" + strategy);
  const std::map<std::string, uint64_t> data = vmm::testing::DataResults(other);
  ASSERT_EQ(data.count(workload + ".checksum_ok"), 1u) << other.console_tail;
  EXPECT_EQ(data.at(workload + ".checksum_ok"), 1u);
  // Every result, timing ones included: the instruction streams are equal.
  EXPECT_EQ(other.results, native.results);
  EXPECT_EQ(Stats(other.vcpu_stats).at("cpu.instructions"),
            Stats(native.vcpu_stats).at("cpu.instructions"));

  const std::map<std::string, uint64_t> s = Stats(other.vm_stats);
  if (strategy == "shadow") {
    EXPECT_GT(s.at("shadow.pf_fixed"), 0u);
    EXPECT_GT(s.at("shadow.mmu_cache_miss"), 0u);
    EXPECT_GT(s.at("shadow.audits"), 0u) << "the audit never ran";
    EXPECT_EQ(s.at("shadow.audit_failures"), 0u) << "see the ERROR line in the log";
    if (workload == "ptchurn" || workload == "mix") {
      // Processes come and go: tables are written while shadowed.
      EXPECT_GT(s.at("shadow.emulated_writes") + s.at("shadow.mmu_unsync"), 0u);
      EXPECT_GT(s.at("shadow.mmu_resync"), 0u);
      EXPECT_GT(s.at("shadow.roots_reused"), 0u);
    }
  } else {
    EXPECT_GT(s.at("nested.walks"), 0u);
    EXPECT_GT(s.at("nested.ept_violation"), 0u);
    EXPECT_GT(s.at("nested.ept_refs"), s.at("nested.guest_refs")) << "a 2-D walk reads more EPT entries";
    EXPECT_EQ(s.at("nested.ept_misconfig"), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllWorkloads, StrategyWorkloadTest,
    ::testing::Combine(::testing::Values("shadow", "nested"),
                       ::testing::Values("compute", "memtouch", "ptchurn", "tlbstress",
                                         "dedupfill", "idle", "mix")),
    [](const auto& param_info) {
      return std::get<0>(param_info.param) + "_" + std::get<1>(param_info.param);
    });

// A host thread changes the backing of random gfns while the guest runs:
// Harvest (kHarvest: zap through the rmap), ShareReadOnly of a copy (kShare:
// host-write removed), and the guest's next write breaks the share
// (kBacking). Guest page tables are among the targets.
class InvalidationTest : public PagingGuestTest,
                         public ::testing::WithParamInterface<std::string> {};

TEST_P(InvalidationTest, InvalidationsDuringAWorkloadLoseNoData) {
  const std::string strategy = GetParam();
  absl::StatusOr<ElfImage> image = LoadElfFile(DefaultKernelPath());
  ASSERT_TRUE(image.ok()) << image.status();
  absl::StatusOr<std::unique_ptr<SoftHypervisor>> hv =
      SoftHypervisor::Create({.paging = strategy, .shadow_audit = true});
  ASSERT_TRUE(hv.ok()) << hv.status();
  // Shared copies come from single frames of the pool: room for them.
  absl::StatusOr<std::unique_ptr<FramePool>> pool =
      FramePool::Create({.budget_bytes = 2 * kRamBytes});
  ASSERT_TRUE(pool.ok()) << pool.status();
  MachineEnv env;
  env.hypervisor = hv->get();
  env.pool = pool->get();
  env.image = &*image;
  env.log_dir = (dir_ / "logs").string();
  VmConfig config = Vm("vm0", strategy, "mix");
  absl::StatusOr<std::unique_ptr<Machine>> machine = Machine::Create(config, env);
  ASSERT_TRUE(machine.ok()) << machine.status();
  FrameTable& memory = (*machine)->memory();
  const uint64_t pages = kRamBytes >> base::kPageShift;

  (*machine)->Start();
  std::mt19937_64 rng(42);
  uint64_t harvests = 0, shares = 0;
  std::vector<uint8_t> ad;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(250);
  while (!(*machine)->finished() && std::chrono::steady_clock::now() < deadline) {
    const base::Gfn gfn(rng() % pages);
    if (rng() % 2 == 0) {
      const uint64_t count = std::min<uint64_t>(1 + rng() % 32, pages - gfn.value());
      if (memory.Harvest(gfn, count, &ad).ok()) ++harvests;
    } else if (memory.Lookup(gfn).state() == GfnState::kPresent) {
      // A copy of the page as it is now: the share succeeds unless the guest
      // writes it meanwhile (Aborted, nothing changed).
      std::optional<base::Hfn> copy = (*pool)->AllocateFrame();
      ASSERT_TRUE(copy.has_value());
      const uint8_t* now = memory.HostPage(gfn.value(), /*for_write=*/false);
      if (now != nullptr) {
        std::memcpy((*pool)->HostPtr(*copy), now, base::kPageSize);
        if (memory.ShareReadOnly(gfn, *copy).ok()) ++shares;
      }
      (*pool)->Unref(*copy);  // the table keeps its own reference
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  const MachineResult r = (*machine)->Wait();
  ASSERT_TRUE(r.ok()) << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n"
                      << r.console_tail;
  const std::map<std::string, uint64_t> data = vmm::testing::DataResults(r);
  EXPECT_EQ(data.at("mix.checksum_ok"), 1u);
  for (const char* w : {"compute", "memtouch", "ptchurn", "tlbstress", "dedupfill", "idle"}) {
    EXPECT_EQ(data.at(absl::StrCat(w, ".checksum_ok")), 1u) << w;
  }
  const std::map<std::string, uint64_t> s = Stats(r.vm_stats);
  EXPECT_GT(harvests, 20u);
  EXPECT_GT(shares, 20u);
  EXPECT_GT(s.at(strategy + ".invalidations"), 40u);
  if (strategy == "shadow") {
    EXPECT_GT(s.at("shadow.rmap_zaps"), 0u) << "no invalidation hit a mapped gfn";
    EXPECT_GT(s.at("shadow.audits"), 0u);
    EXPECT_EQ(s.at("shadow.audit_failures"), 0u) << "see the ERROR line in the log";
  } else {
    EXPECT_GT(s.at("nested.ept_clears"), 0u) << "no invalidation hit a mapped gfn";
  }
  std::printf("%s: harvests %llu shares %llu invalidations %llu\n", strategy.c_str(),
              static_cast<unsigned long long>(harvests), static_cast<unsigned long long>(shares),
              static_cast<unsigned long long>(s.at(strategy + ".invalidations")));
}

INSTANTIATE_TEST_SUITE_P(Strategies, InvalidationTest, ::testing::Values("shadow", "nested"),
                         [](const auto& param_info) { return param_info.param; });

// A host thread switches the VM's paging strategy (native, shadow, nested)
// at random moments, many times, while the guest runs mix, and changes the
// backing of random gfns meanwhile (harvests, copy-on-write shares): each
// switch drops the old strategy's state and the new one rebuilds it lazily
// (docs/paging-strategies.md, "Switching strategies while the VM runs").
// The guest never notices: it computes exactly what an unswitched native run
// computes (every result, timing included: guest time counts instructions).
// A switch that kept stale soft-TLB entries (no flush on attach) would let
// the guest write page tables shadow has write-protected (the audit at each
// resync reports it) or write frames that a share replaced (data lost); one
// that kept the old invalidation listener would miss the shares.
TEST_F(PagingGuestTest, SwitchingStrategiesWhileRunningChangesNothing) {
  absl::StatusOr<ElfImage> image = LoadElfFile(DefaultKernelPath());
  ASSERT_TRUE(image.ok()) << image.status();
  absl::StatusOr<std::unique_ptr<SoftHypervisor>> hv =
      SoftHypervisor::Create({.paging = "native", .shadow_audit = true});
  ASSERT_TRUE(hv.ok()) << hv.status();
  absl::StatusOr<std::unique_ptr<FramePool>> pool =
      FramePool::Create({.budget_bytes = 3 * kRamBytes});
  ASSERT_TRUE(pool.ok()) << pool.status();
  MachineEnv env;
  env.hypervisor = hv->get();
  env.pool = pool->get();
  env.image = &*image;
  env.log_dir = (dir_ / "logs").string();

  // The reference: native, never switched.
  MachineResult reference;
  {
    absl::StatusOr<std::unique_ptr<Machine>> m = Machine::Create(Vm("ref", "native", "mix"), env);
    ASSERT_TRUE(m.ok()) << m.status();
    (*m)->Start();
    reference = (*m)->Wait();
    ASSERT_TRUE(reference.ok()) << reference.failure << "\n" << reference.console_tail;
  }

  absl::StatusOr<std::unique_ptr<Machine>> machine = Machine::Create(Vm("switched", "native", "mix"), env);
  ASSERT_TRUE(machine.ok()) << machine.status();
  FrameTable& memory = (*machine)->memory();
  const uint64_t pages = kRamBytes >> base::kPageShift;
  EXPECT_FALSE((*machine)->SetPagingStrategy("bogus").ok());
  (*machine)->Start();
  std::mt19937_64 rng(std::random_device{}());
  const char* const kStrategies[] = {"native", "shadow", "nested"};
  uint64_t requests = 0, shares = 0;
  std::vector<uint8_t> ad;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(250);
  while (!(*machine)->finished() && std::chrono::steady_clock::now() < deadline) {
    if (rng() % 4 == 0) {
      ASSERT_TRUE((*machine)->SetPagingStrategy(kStrategies[rng() % 3]).ok());
      ++requests;
    }
    const base::Gfn gfn(rng() % pages);
    if (rng() % 2 == 0) {
      (void)memory.Harvest(gfn, std::min<uint64_t>(1 + rng() % 32, pages - gfn.value()), &ad);
    } else if (memory.Lookup(gfn).state() == GfnState::kPresent) {
      std::optional<base::Hfn> copy = (*pool)->AllocateFrame();
      ASSERT_TRUE(copy.has_value());
      const uint8_t* now = memory.HostPage(gfn.value(), /*for_write=*/false);
      if (now != nullptr) {
        std::memcpy((*pool)->HostPtr(*copy), now, base::kPageSize);
        if (memory.ShareReadOnly(gfn, *copy).ok()) ++shares;
      }
      (*pool)->Unref(*copy);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50 + rng() % 1000));
  }
  const MachineResult r = (*machine)->Wait();
  ASSERT_TRUE(r.ok()) << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n" << r.console_tail;
  const std::map<std::string, uint64_t> data = vmm::testing::DataResults(r);
  EXPECT_EQ(data.at("mix.checksum_ok"), 1u);
  EXPECT_EQ(data, vmm::testing::DataResults(reference));
  EXPECT_EQ(r.results, reference.results);
  EXPECT_EQ(Stats(r.vcpu_stats).at("cpu.instructions"), Stats(reference.vcpu_stats).at("cpu.instructions"));

  const std::map<std::string, uint64_t> s = Stats(r.vm_stats);
  EXPECT_EQ(r.paging_mode, "soft/native");  // how it started
  EXPECT_TRUE(IsPagingStrategy(r.paging_strategy)) << r.paging_strategy;
  EXPECT_GT(s.at("vm.strategy_switches"), 20u);
  EXPECT_LE(s.at("vm.strategy_switches"), requests);  // requests not yet served coalesce
  EXPECT_EQ(s.at("vm.strategy_switch_failures"), 0u);
  EXPECT_GT(shares, 20u);
  // Every FrameTable invalidation reached the strategy serving the vCPU at
  // the time (the listener follows the switches; the old and the new one
  // may both hear one made during a switch).
  EXPECT_GE(s.at("native.invalidations") + s.at("shadow.invalidations") + s.at("nested.invalidations"),
            memory.counters().Get(FrameTableCounters::kInvalidations));
  // Every strategy ran, and the replaced ones' counters are kept.
  EXPECT_GT(s.at("native.walks"), 0u);
  EXPECT_GT(s.at("shadow.pf_fixed"), 0u);
  EXPECT_GT(s.at("nested.walks"), 0u);
  EXPECT_GT(s.at("shadow.audits"), 0u) << "the shadow audit never ran";
  EXPECT_EQ(s.at("shadow.audit_failures"), 0u) << "see the ERROR line in the log";
  std::printf("switch requests %llu, switches %llu, shares %llu\n", static_cast<unsigned long long>(requests),
              static_cast<unsigned long long>(s.at("vm.strategy_switches")),
              static_cast<unsigned long long>(shares));
}

// paging "adaptive" (docs/paging-strategies.md, "The adaptive mode") runs
// mix and computes exactly what native computes; its decisions are counted.
TEST_F(PagingGuestTest, AdaptiveComputesWhatNativeComputes) {
  RunConfig config;
  config.log_dir = (dir_ / "logs").string();
  config.report_path = (dir_ / "report.json").string();
  config.vms.push_back(Vm("native", "native", "mix"));
  config.vms.push_back(Vm("adaptive", "adaptive", "mix"));
  absl::StatusOr<RunOutcome> run = RunVms(config);
  ASSERT_TRUE(run.ok()) << run.status();
  for (const MachineResult& r : run->vms) {
    ASSERT_TRUE(r.ok()) << r.name << ": " << MachineOutcomeName(r.outcome) << ": " << r.failure << "\n"
                        << r.console_tail;
  }
  const MachineResult& native = run->vms[0];
  const MachineResult& adaptive = run->vms[1];
  EXPECT_EQ(adaptive.paging_mode, "soft/adaptive");
  EXPECT_TRUE(adaptive.paging_strategy == "nested" || adaptive.paging_strategy == "shadow")
      << adaptive.paging_strategy;
  EXPECT_EQ(vmm::testing::DataResults(adaptive).at("mix.checksum_ok"), 1u);
  EXPECT_EQ(adaptive.results, native.results);
  EXPECT_EQ(Stats(adaptive.vcpu_stats).at("cpu.instructions"), Stats(native.vcpu_stats).at("cpu.instructions"));
  const std::map<std::string, uint64_t> s = Stats(adaptive.vm_stats);
  EXPECT_GT(s.at("adaptive.intervals"), 0u);
  EXPECT_EQ(s.at("adaptive.switches"), s.at("adaptive.to_shadow") + s.at("adaptive.to_nested"));
  EXPECT_EQ(s.at("adaptive.switches"), s.at("vm.strategy_switches"));
  EXPECT_EQ(s.at("adaptive.current"), adaptive.paging_strategy == "shadow" ? 1u : 2u);
  EXPECT_GT(s.at("nested.walks"), 0u) << "adaptive starts on nested";
  EXPECT_FALSE(Stats(native.vm_stats).contains("adaptive.intervals"));
}

// The same with a controller that switches at the least hint (no margin, no
// streak or dwell to speak of, switches priced at nothing, short intervals):
// many switches in both directions, and still every result is native's; the
// cost model prices each strategy's share of the run.
TEST_F(PagingGuestTest, AdaptiveSwitchingOftenChangesNothing) {
  absl::StatusOr<ElfImage> image = LoadElfFile(DefaultKernelPath());
  ASSERT_TRUE(image.ok()) << image.status();
  SoftOptions options;
  options.paging = "adaptive";
  options.shadow_audit = true;
  // 4 KiB EPT entries: with 2 MiB ones nested is so cheap on mix that even
  // this controller leaves it only once, near the end.
  options.nested_large_pages = false;
  options.adaptive = {.interval = 200'000, .margin = 0, .streak = 1, .min_dwell = 1,
                      .prior_switch_to_shadow_cycles = 0, .prior_switch_to_nested_cycles = 0,
                      .rebuild_by_working_set = false};
  absl::StatusOr<std::unique_ptr<SoftHypervisor>> hv = SoftHypervisor::Create(options);
  ASSERT_TRUE(hv.ok()) << hv.status();
  options.adaptive.margin = -0.5;
  EXPECT_FALSE(SoftHypervisor::Create(options).ok()) << "a negative margin is refused";
  absl::StatusOr<std::unique_ptr<FramePool>> pool = FramePool::Create({.budget_bytes = 2 * kRamBytes});
  ASSERT_TRUE(pool.ok()) << pool.status();
  MachineEnv env;
  env.hypervisor = hv->get();
  env.pool = pool->get();
  env.image = &*image;
  env.log_dir = (dir_ / "logs").string();
  MachineResult results[2];
  for (int i = 0; i < 2; ++i) {
    // Native first, on its own hypervisor, as the reference.
    absl::StatusOr<std::unique_ptr<SoftHypervisor>> native = SoftHypervisor::Create({});
    ASSERT_TRUE(native.ok());
    MachineEnv e = env;
    if (i == 0) e.hypervisor = native->get();
    absl::StatusOr<std::unique_ptr<Machine>> m =
        Machine::Create(Vm(i == 0 ? "native" : "adaptive", i == 0 ? "native" : "adaptive", "mix"), e);
    ASSERT_TRUE(m.ok()) << m.status();
    (*m)->Start();
    results[i] = (*m)->Wait();
    ASSERT_TRUE(results[i].ok()) << results[i].failure << "\n" << results[i].console_tail;
  }
  const MachineResult& r = results[1];
  EXPECT_EQ(r.results, results[0].results);
  EXPECT_EQ(vmm::testing::DataResults(r).at("mix.checksum_ok"), 1u);
  const std::map<std::string, uint64_t> s = Stats(r.vm_stats);
  EXPECT_GE(s.at("adaptive.to_shadow"), 1u);
  EXPECT_GE(s.at("adaptive.to_nested"), 1u);
  EXPECT_EQ(s.at("adaptive.switches"), s.at("vm.strategy_switches"));
  EXPECT_EQ(s.at("vm.strategy_switch_failures"), 0u);
  EXPECT_EQ(s.at("shadow.audit_failures"), 0u) << "see the ERROR line in the log";
  const costmodel::ModelledCycles m = ModelledCyclesOf(r, costmodel::CostTable::Default());
  EXPECT_GT(m.Class("shadow_page_faults"), 0u);
  EXPECT_GT(m.Class("walk_refs_ept"), 0u);
  std::printf("adaptive: %llu intervals, %llu switches\n",
              static_cast<unsigned long long>(s.at("adaptive.intervals")),
              static_cast<unsigned long long>(s.at("adaptive.switches")));
}

}  // namespace
}  // namespace vmm

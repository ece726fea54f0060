// Shadow paging (shadow/) on the real guest image, on the soft backend:
//   - every workload under --paging shadow computes exactly what it computes
//     under native (every result, elapsed_ns included: on soft guest time
//     counts instructions, and paging must not change one). soft_guest_test
//     checks native against QEMU TCG and kvm, so shadow agrees with all
//     three. The shadow tables are audited at every resync meanwhile;
//   - FrameTable invalidations of random gfns (harvests, copy-on-write
//     shares and their breaks) while a workload runs lose no data, and the
//     audit after each finds the shadow tables exact.
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

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/guest_results.h"
#include "tests/support/small_workload_args.h"
#include "vmm-host/elf_loader.h"
#include "vmm-host/frame_pool.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/machine.h"
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

class ShadowGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("shadow_guest_test_", getpid(), "_", name);
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

class ShadowWorkloadTest : public ShadowGuestTest,
                           public ::testing::WithParamInterface<std::string> {};

TEST_P(ShadowWorkloadTest, ComputesWhatNativeComputesWithExactShadowTables) {
  const std::string workload = GetParam();
  RunConfig config;
  config.log_dir = (dir_ / "logs").string();
  config.report_path = (dir_ / "report.json").string();
  config.shadow_audit = true;
  config.vms.push_back(Vm("native", "native", workload));
  config.vms.push_back(Vm("shadow", "shadow", workload));
  absl::StatusOr<RunOutcome> run = RunVms(config);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->vms.size(), 2u);
  for (const MachineResult& r : run->vms) {
    ASSERT_TRUE(r.ok()) << r.name << ": " << MachineOutcomeName(r.outcome) << ": " << r.failure
                        << "\n" << r.registers << "\n" << r.console_tail;
  }
  const MachineResult& native = run->vms[0];
  const MachineResult& shadow = run->vms[1];
  EXPECT_EQ(shadow.paging_mode, "soft/shadow");
  const std::map<std::string, uint64_t> data = vmm::testing::DataResults(shadow);
  ASSERT_EQ(data.count(workload + ".checksum_ok"), 1u) << shadow.console_tail;
  EXPECT_EQ(data.at(workload + ".checksum_ok"), 1u);
  // Every result, timing ones included: the instruction streams are equal.
  EXPECT_EQ(shadow.results, native.results);
  EXPECT_EQ(Stats(shadow.vcpu_stats).at("cpu.instructions"),
            Stats(native.vcpu_stats).at("cpu.instructions"));

  const std::map<std::string, uint64_t> s = Stats(shadow.vm_stats);
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
}

INSTANTIATE_TEST_SUITE_P(AllWorkloads, ShadowWorkloadTest,
                         ::testing::Values("compute", "memtouch", "ptchurn", "tlbstress",
                                           "dedupfill", "idle", "mix"),
                         [](const auto& param_info) { return param_info.param; });

// A host thread changes the backing of random gfns while the guest runs:
// Harvest (kHarvest: zap through the rmap), ShareReadOnly of a copy (kShare:
// host-write removed), and the guest's next write breaks the share
// (kBacking). Guest page tables are among the targets.
TEST_F(ShadowGuestTest, InvalidationsDuringAWorkloadLoseNoData) {
  absl::StatusOr<ElfImage> image = LoadElfFile(DefaultKernelPath());
  ASSERT_TRUE(image.ok()) << image.status();
  absl::StatusOr<std::unique_ptr<SoftHypervisor>> hv =
      SoftHypervisor::Create({.paging = "shadow", .shadow_audit = true});
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
  VmConfig config = Vm("vm0", "shadow", "mix");
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
  EXPECT_GT(s.at("shadow.invalidations"), 40u);
  EXPECT_GT(s.at("shadow.rmap_zaps"), 0u) << "no invalidation hit a mapped gfn";
  EXPECT_GT(s.at("shadow.audits"), 0u);
  EXPECT_EQ(s.at("shadow.audit_failures"), 0u) << "see the ERROR line in the log";
  std::printf("harvests %llu shares %llu invalidations %llu rmap_zaps %llu audits %llu\n",
              static_cast<unsigned long long>(harvests), static_cast<unsigned long long>(shares),
              static_cast<unsigned long long>(s.at("shadow.invalidations")),
              static_cast<unsigned long long>(s.at("shadow.rmap_zaps")),
              static_cast<unsigned long long>(s.at("shadow.audits")));
}

}  // namespace
}  // namespace vmm

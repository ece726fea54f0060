// The cost model on the real guest (docs/cost-model.md): a soft run's
// report carries modelled_cycles whose classes sum to the total, priced
// with the run's table; and the model sees what the literature says a 2-D
// walk costs (more walk cycles than native on the same workload). These are
// properties of the whole chain (HwPagingModel fed by the strategies, the
// counters, costmodel::Compute, the report): a break anywhere fails them.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/small_workload_args.h"
#include "vmm-host/vmm_runner.h"

namespace vmm {
namespace {

using Json = nlohmann::json;

class CostModelGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("cost_model_guest_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs one soft VM and returns its object from the written report.
  Json RunOne(const std::string& paging, const std::string& workload,
              const std::string& cost_model = "") {
    RunConfig config;
    config.log_dir = (dir_ / "logs").string();
    config.report_path = (dir_ / absl::StrCat(paging, ".json")).string();
    config.cost_model = cost_model;
    config.control_socket = "off";
    VmConfig vm;
    vm.name = paging;
    vm.backend = "soft";
    vm.paging = paging;
    vm.workload = workload;
    vm.workload_args = vmm::testing::SmallWorkloadArgs().at(workload);
    vm.ram_bytes = 64ull << 20;
    vm.timeout_seconds = 300;
    config.vms.push_back(vm);
    absl::StatusOr<RunOutcome> run = RunVms(config);
    EXPECT_TRUE(run.ok()) << run.status();
    if (!run.ok()) return Json();
    EXPECT_TRUE(run->vms[0].ok()) << run->vms[0].failure;
    std::ifstream in(config.report_path);
    std::stringstream text;
    text << in.rdbuf();
    Json report = Json::parse(text.str(), nullptr, false);
    EXPECT_FALSE(report.is_discarded());
    return report["vms"][0];
  }

  static uint64_t SumOfClasses(const Json& mc) {
    uint64_t sum = 0;
    for (const auto& [name, v] : mc["by_class"].items()) sum += v.get<uint64_t>();
    return sum;
  }

  std::filesystem::path dir_;
};

TEST_F(CostModelGuestTest, EveryStrategysReportHasClassesThatSumToTheTotal) {
  for (const std::string paging : {"native", "shadow", "nested"}) {
    SCOPED_TRACE(paging);
    const Json vm = RunOne(paging, "ptchurn");
    ASSERT_TRUE(vm.contains("modelled_cycles")) << vm.dump();
    const Json& mc = vm["modelled_cycles"];
    EXPECT_EQ(mc["table"], "default");
    EXPECT_EQ(SumOfClasses(mc), mc["total"].get<uint64_t>());
    // Instructions alone are in it, and walks were modelled.
    EXPECT_GE(mc["by_class"]["instructions"].get<uint64_t>(),
              vm["soft_vcpu_stats"]["cpu.instructions"].get<uint64_t>());
    EXPECT_GT(mc["by_class"]["walk_refs_guest"].get<uint64_t>(), 0u);
    EXPECT_GT(vm["soft_vm_stats"][paging + ".hw.tlb_misses"].get<uint64_t>(), 0u);
  }
}

TEST_F(CostModelGuestTest, TwoDimensionalWalksCostMoreWalkCyclesThanNative) {
  const Json native = RunOne("native", "tlbstress");
  const Json nested = RunOne("nested", "tlbstress");
  ASSERT_TRUE(native.contains("modelled_cycles"));
  ASSERT_TRUE(nested.contains("modelled_cycles"));
  auto walk = [](const Json& vm) {
    const Json& c = vm["modelled_cycles"]["by_class"];
    return c["walk_refs_guest"].get<uint64_t>() + c["walk_refs_ept"].get<uint64_t>();
  };
  EXPECT_EQ(native["modelled_cycles"]["by_class"]["walk_refs_ept"], 0u);
  EXPECT_GT(nested["modelled_cycles"]["by_class"]["walk_refs_ept"].get<uint64_t>(), 0u);
  EXPECT_GT(walk(nested), walk(native));
  // Same guest, same instructions: the paging strategy changes only the model.
  EXPECT_EQ(native["modelled_cycles"]["by_class"]["instructions"],
            nested["modelled_cycles"]["by_class"]["instructions"]);
}

TEST_F(CostModelGuestTest, ARunsOverrideFileReprices) {
  const std::string path = (dir_ / "costs.json").string();
  std::ofstream(path) << R"({"costs": {"instruction": 2, "walk_ref_leaf": 0, "walk_ref_upper": 0}})";
  const Json vm = RunOne("native", "compute", path);
  const Json& mc = vm["modelled_cycles"];
  EXPECT_EQ(mc["table"], absl::StrCat("default + ", path));
  EXPECT_EQ(mc["by_class"]["instructions"].get<uint64_t>(),
            2 * vm["soft_vcpu_stats"]["cpu.instructions"].get<uint64_t>());
  EXPECT_EQ(mc["by_class"]["walk_refs_guest"], 0u);
  EXPECT_EQ(SumOfClasses(mc), mc["total"].get<uint64_t>());
}

TEST_F(CostModelGuestTest, ABadOverrideFileStopsTheRunNamingTheKey) {
  const std::string path = (dir_ / "bad.json").string();
  std::ofstream(path) << R"({"costs": {"tlb_hit": -1}})";
  RunConfig config;
  config.log_dir = (dir_ / "logs").string();
  config.report_path = (dir_ / "r.json").string();
  config.cost_model = path;
  config.control_socket = "off";
  VmConfig vm;
  vm.name = "v";
  vm.backend = "soft";
  vm.workload = "compute";
  config.vms.push_back(vm);
  absl::StatusOr<RunOutcome> run = RunVms(config);
  ASSERT_FALSE(run.ok());
  EXPECT_NE(std::string(run.status().message()).find("costs.tlb_hit: negative cycles"),
            std::string::npos)
      << run.status();
}

}  // namespace
}  // namespace vmm

// The control interface end to end: a real `vmm run` (soft backend, so no
// KVM is needed) answers `vmm ctl` while its VMs run, and the socket is gone
// once the run ends.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/run_command.h"

namespace {

using Json = nlohmann::json;

class VmmControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("vmm_control_", getpid());
    std::filesystem::create_directories(dir_);
    socket_ = (dir_ / "c.sock").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  vmm::testing::CommandResult Ctl(const std::string& args) {
    return vmm::testing::RunCommand(absl::StrCat(VMM_BINARY, " ctl --socket=", socket_, " ", args));
  }
  static Json Parse(const std::string& out) {
    Json j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << out;
    return j;
  }

  std::filesystem::path dir_;
  std::string socket_;
};

TEST_F(VmmControlTest, CtlListsAndReadsRunningVmsAndNamesErrors) {
  // Two soft VMs computing for a few seconds (the sanitizer build runs the
  // interpreter tens of times slower: a tenth of the work).
#if defined(__SANITIZE_ADDRESS__)
  constexpr int kIters = 2'000'000;
#else
  constexpr int kIters = 20'000'000;
#endif
  const std::string run = absl::StrCat(
      VMM_BINARY, " run --backend=soft --count=2 --workload=compute --timeout=600",
      " --workload_args=iters=", kIters, " --echo_console=false --log_dir=", dir_.string(),
      " --report=", (dir_ / "report.json").string(), " --control_socket=", socket_);
  std::thread runner([&] {
    const vmm::testing::CommandResult r = vmm::testing::RunCommand(run);
    EXPECT_EQ(r.status, 0) << r.out;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::filesystem::exists(socket_) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(std::filesystem::exists(socket_)) << "vmm run never opened its control socket";

  vmm::testing::CommandResult r = Ctl("list");
  ASSERT_EQ(r.status, 0) << r.out;
  Json j = Parse(r.out);
  ASSERT_EQ(j["vms"].size(), 2u) << r.out;
  EXPECT_EQ(j["vms"][0]["name"], "vm0");
  EXPECT_EQ(j["vms"][1]["backend"], "soft");
  EXPECT_EQ(j["vms"][1]["paging_mode"], "soft/native");

  r = Ctl("stats vm1");
  ASSERT_EQ(r.status, 0) << r.out;
  j = Parse(r.out);
  EXPECT_EQ(j["vm"], "vm1");
  EXPECT_EQ(j["stats"]["backend"], "soft");
  EXPECT_EQ(j["stats"]["memory"]["guest_ram_bytes"], 64u << 20);
  EXPECT_TRUE(j["stats"]["soft_vm_stats"].contains("native.translations")) << r.out;

  // Counters move while the guest runs. They are published at the end of
  // each interpreter run (a quantum), so poll: until the count moves, or
  // the VM has finished.
  r = Ctl("counters vm0 vcpu.cpu.instructions");
  ASSERT_EQ(r.status, 0) << r.out;
  j = Parse(r.out);
  ASSERT_EQ(j["counters"].size(), 1u) << r.out;
  const uint64_t first = j["counters"]["vcpu.cpu.instructions"].get<uint64_t>();
  uint64_t second = first;
  bool finished = false;
  while (second == first && !finished && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    second = Parse(Ctl("counters vm0 vcpu.cpu.instructions").out)["counters"]
                 ["vcpu.cpu.instructions"]
                     .get<uint64_t>();
    finished = Parse(Ctl("list").out)["vms"][0]["state"] == "finished";
  }
  EXPECT_TRUE(second > first || finished) << first << " then " << second;

  r = Ctl("balloon vm0 16M");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("has no balloon"), std::string::npos) << r.out;

  // Switching the paging strategy of a running VM: the vCPU thread does it
  // at its next safe point (docs/paging-strategies.md, "Switching").
  r = Ctl("paging vm1 shadow");
  ASSERT_EQ(r.status, 0) << r.out;
  j = Parse(r.out);
  EXPECT_EQ(j["requested"], "shadow");
  EXPECT_EQ(j["paging_mode"], "soft/native");
  bool switched = false;
  for (int i = 0; i < 200 && !switched; ++i) {
    j = Parse(Ctl("paging vm1").out);
    switched = j["strategy"] == "shadow";
    if (!switched) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (switched) {
    EXPECT_GE(j["switches"].get<uint64_t>(), 1u) << j.dump();
    j = Parse(Ctl("stats vm1").out);
    EXPECT_EQ(j["stats"]["paging_strategy"], "shadow") << j.dump();
    // The old strategy's counters stay in the report.
    EXPECT_TRUE(j["stats"]["soft_vm_stats"].contains("native.translations")) << j.dump();
    EXPECT_TRUE(j["stats"]["soft_vm_stats"].contains("shadow.pf_fixed")) << j.dump();
  } else {
    EXPECT_EQ(Parse(Ctl("list").out)["vms"][1]["state"], "finished") << "the switch never happened";
  }
  r = Ctl("paging vm1 ept");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("unknown paging strategy"), std::string::npos) << r.out;

  r = Ctl("stats nosuch");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("unknown VM 'nosuch'"), std::string::npos) << r.out;
  r = Ctl("raw '{\"cmd\": \"reboot\"}'");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("unknown command 'reboot'"), std::string::npos) << r.out;
  r = Ctl("frobnicate");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("usage: vmm ctl"), std::string::npos) << r.out;

  runner.join();
  EXPECT_FALSE(std::filesystem::exists(socket_)) << "the socket outlived the run";
  r = Ctl("list");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("is a vmm running?"), std::string::npos) << r.out;
}

// A guest that waits for its balloon to reach 16 MiB and then to empty
// again, driven by `vmm ctl balloon`: the device reclaims the pages and the
// guest's own checks pass.
TEST_F(VmmControlTest, CtlBalloonInflatesAndDeflatesARunningGuest) {
  const std::string config = (dir_ / "run.json").string();
  {
    FILE* f = std::fopen(config.c_str(), "w");
    std::fputs(absl::StrCat(R"({"vms": [{"name": "b0", "backend": "soft", "ram": "64M",
        "balloon": true, "workload": "balloon",
        "workload_args": "mib=2 expect_pages=4096 release_pages=0 timeout_ms=60000"}]})")
                   .c_str(),
               f);
    std::fclose(f);
  }
  const std::string run = absl::StrCat(VMM_BINARY, " run --config=", config,
                                       " --echo_console=false --log_dir=", dir_.string(),
                                       " --report=", (dir_ / "report.json").string(),
                                       " --control_socket=", socket_);
  vmm::testing::CommandResult run_result;
  std::thread runner([&] { run_result = vmm::testing::RunCommand(run); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::filesystem::exists(socket_) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(std::filesystem::exists(socket_));

  vmm::testing::CommandResult r = Ctl("balloon b0 16M");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(Parse(r.out)["target_bytes"], 16u << 20);
  // Wait until the guest has given the 16 MiB: actual and the host's count.
  Json j;
  while (std::chrono::steady_clock::now() < deadline) {
    j = Parse(Ctl("balloon b0").out);
    if (j["actual_bytes"] == 16u << 20 && j["inflated_bytes"] == 16u << 20) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(j["actual_bytes"], 16u << 20) << j.dump();
  EXPECT_EQ(j["inflated_bytes"], 16u << 20) << j.dump();
  r = Ctl("balloon b0 1G");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("larger than its RAM"), std::string::npos) << r.out;
  r = Ctl("balloon b0 0");
  ASSERT_EQ(r.status, 0) << r.out;
  runner.join();
  EXPECT_EQ(run_result.status, 0) << run_result.out;
  EXPECT_NE(run_result.out.find("balloon.max_pages=4096"), std::string::npos) << run_result.out;
  EXPECT_NE(run_result.out.find("balloon.final_pages=0"), std::string::npos) << run_result.out;
}

}  // namespace

// Tests of the `vmm` command line as a user meets it: each error is one clear
// line on stderr with a non-zero status, before any VM is created. These run
// the real binary and need no KVM (every error here is found first).
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/run_command.h"

namespace {

vmm::testing::CommandResult Vmm(const std::string& args) {
  return vmm::testing::RunCommand(absl::StrCat(VMM_BINARY, " ", args));
}

int Lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(VmmCliTest, UnknownWorkloadIsOneLineNamingTheField) {
  vmm::testing::CommandResult r = Vmm("run --workload=bitcoin");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(Lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("workload: unknown workload 'bitcoin'"), std::string::npos) << r.out;
}

TEST(VmmCliTest, UnusableImageIsOneLine) {
  vmm::testing::CommandResult r = Vmm("run --kernel=/dev/null");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(Lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("guest image /dev/null: truncated"), std::string::npos) << r.out;
}

TEST(VmmCliTest, SizesBeyondTheBudgetAreOneLine) {
  vmm::testing::CommandResult r = Vmm("run --count=4 --ram=64M --host_budget=128M");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(Lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("need 256 MiB of RAM but the host budget is 128 MiB"), std::string::npos) << r.out;
}

TEST(VmmCliTest, BadSizesAndConfigFieldsAreNamed) {
  vmm::testing::CommandResult r = Vmm("run --ram=lots");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--ram: bad size 'lots'"), std::string::npos) << r.out;
  const std::string config = ::testing::TempDir() + "/bad_config.json";
  {
    FILE* f = std::fopen(config.c_str(), "w");
    std::fputs(R"({"vms": [{"name": "a", "ram": "64M", "colour": "red"}]})", f);
    std::fclose(f);
  }
  r = Vmm("run --config=" + config);
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(Lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("vms[0].colour: unknown field"), std::string::npos) << r.out;
  r = Vmm("run --config=/nonexistent.json");
  EXPECT_NE(r.out.find("cannot open"), std::string::npos) << r.out;
}

TEST(VmmCliTest, UsageErrors) {
  EXPECT_EQ(Vmm("").status, 2);
  vmm::testing::CommandResult r = Vmm("frobnicate");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown command 'frobnicate'"), std::string::npos);
  r = Vmm("run extra");
  EXPECT_EQ(r.status, 2);
  r = Vmm("run --no_such_flag=1");
  EXPECT_NE(r.status, 0);
  r = Vmm("run --vcpus=2");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("vcpus: the guest kernel supports exactly one vCPU"), std::string::npos) << r.out;
}

}  // namespace

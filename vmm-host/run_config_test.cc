#include "vmm-host/run_config.h"

#include "gtest/gtest.h"

namespace vmm {
namespace {

TEST(RunConfigTest, ParsesSizes) {
  EXPECT_EQ(*ParseSize("64M"), uint64_t{64} << 20);
  EXPECT_EQ(*ParseSize("2g"), uint64_t{2} << 30);
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("M").ok());
  EXPECT_FALSE(ParseSize("12Q").ok());
  EXPECT_FALSE(ParseSize("99999999999999999999T").ok());
  EXPECT_FALSE(ParseSize("-1M").ok());
}

TEST(RunConfigTest, DefaultsApplyToEveryVmAndCountExpands) {
  absl::StatusOr<RunConfig> c = ParseRunConfig(R"({
    "host_budget": "1G",
    "vms": [
      {"name": "web", "count": 3, "workload": "memtouch", "workload_args": "mib=8"},
      {"name": "db", "ram": "128M", "workload": "compute"}
    ],
    "defaults": {"ram": "96M", "timeout": 30}
  })");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->host_budget_bytes, uint64_t{1} << 30);
  ASSERT_EQ(c->vms.size(), 4u);
  EXPECT_EQ(c->vms[0].name, "web-0");
  EXPECT_EQ(c->vms[2].name, "web-2");
  EXPECT_EQ(c->vms[0].ram_bytes, uint64_t{96} << 20);
  EXPECT_EQ(c->vms[0].workload_args, "mib=8");
  EXPECT_EQ(c->vms[3].ram_bytes, uint64_t{128} << 20);
  EXPECT_EQ(c->vms[3].timeout_seconds, 30);
  EXPECT_TRUE(ValidateRunConfig(*c).ok());
}

TEST(RunConfigTest, ErrorsNameTheField) {
  auto error = [](const char* json) {
    absl::StatusOr<RunConfig> c = ParseRunConfig(json);
    if (c.ok()) return std::string(ValidateRunConfig(*c).message());
    return std::string(c.status().message());
  };
  EXPECT_EQ(error("{"), "config: not valid JSON");
  EXPECT_EQ(error(R"({"vms": [{"ram": "lots"}]})"),
            "config: vms[0].ram: bad size 'lots' (use a number with an optional K, M or G suffix)");
  EXPECT_EQ(error(R"({"vms": [{"colour": "red"}]})"), "config: vms[0].colour: unknown field");
  EXPECT_EQ(error(R"({"budget": 1})"), "config: budget: unknown field");
  EXPECT_EQ(error(R"({"vms": [{"vcpus": "two"}]})"), "config: vms[0].vcpus: expected an integer");
  EXPECT_NE(error(R"({"vms": [{"workload": "bitcoin"}]})").find("vms[0] (vm0).workload: unknown workload 'bitcoin'"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"name": "a"}, {"name": "a"}]})").find("duplicate"), std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"ram": "15M"}]})").find(".ram"), std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"name": "../etc"}]})").find(".name"), std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"count": 0}]})").find("vms[0].count"), std::string::npos);
  EXPECT_NE(error(R"({"vms": []})").find("no VMs"), std::string::npos);
}

TEST(RunConfigTest, BalloonScheduleParsesAndIsChecked) {
  absl::StatusOr<RunConfig> c = ParseRunConfig(R"({"vms": [{"ram": "64M", "balloon": true,
      "balloon_schedule": [{"at": 0.5, "target": "16M"}, {"at": 2, "target": 0}]}],
      "control_socket": "off"})");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(ValidateRunConfig(*c).ok()) << ValidateRunConfig(*c);
  EXPECT_EQ(c->control_socket, "off");
  const std::vector<VmConfig::BalloonStep> want = {{0.5, 16u << 20}, {2, 0}};
  EXPECT_EQ(c->vms[0].balloon_schedule, want);

  auto error = [](const char* json) {
    absl::StatusOr<RunConfig> r = ParseRunConfig(json);
    if (r.ok()) return std::string(ValidateRunConfig(*r).message());
    return std::string(r.status().message());
  };
  EXPECT_NE(error(R"({"vms": [{"balloon_schedule": [{"at": 1, "target": "8M"}]}]})")
                .find("balloon_schedule[0]: a balloon schedule needs \"balloon\": true"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"balloon": true, "balloon_schedule":
                  [{"at": 2, "target": "8M"}, {"at": 1, "target": "4M"}]}]})")
                .find("balloon_schedule[1].at: times must be non-negative and in order"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"ram": "64M", "balloon": true, "balloon_schedule":
                  [{"at": 1, "target": "128M"}]}]})")
                .find("balloon_schedule[0].target: larger than the VM's RAM"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"balloon": true, "balloon_schedule": [{"at": 1}]}]})")
                .find("balloon_schedule[0]: expected {\"at\": seconds, \"target\": size}"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"balloon": true, "balloon_schedule": [{"at": 1, "target": "x"}]}]})")
                .find("balloon_schedule[0].target: bad size"),
            std::string::npos);
}

TEST(RunConfigTest, PagingScheduleParsesAndIsChecked) {
  absl::StatusOr<RunConfig> c = ParseRunConfig(R"({"vms": [{"backend": "soft",
      "paging_schedule": [{"at": 0.5, "strategy": "shadow"}, {"at": 0.5, "strategy": "nested"},
                          {"at": 2, "strategy": "native"}]}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(ValidateRunConfig(*c).ok()) << ValidateRunConfig(*c);
  const std::vector<VmConfig::PagingStep> want = {{0.5, "shadow"}, {0.5, "nested"}, {2, "native"}};
  EXPECT_EQ(c->vms[0].paging_schedule, want);

  auto error = [](const char* json) {
    absl::StatusOr<RunConfig> r = ParseRunConfig(json);
    if (r.ok()) return std::string(ValidateRunConfig(*r).message());
    return std::string(r.status().message());
  };
  EXPECT_NE(error(R"({"vms": [{"backend": "kvm", "paging_schedule": [{"at": 1, "strategy": "shadow"}]}]})")
                .find("paging_schedule[0]: switching paging strategies needs the soft backend"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule":
                  [{"at": 2, "strategy": "shadow"}, {"at": 1, "strategy": "native"}]}]})")
                .find("paging_schedule[1].at: times must be non-negative and in order"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule": [{"at": -1, "strategy": "shadow"}]}]})")
                .find("paging_schedule[0].at: times must be non-negative and in order"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule": [{"at": 1, "strategy": "ept"}]}]})")
                .find("paging_schedule[0].strategy: unknown paging strategy \"ept\""),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule": [{"at": 1}]}]})")
                .find("paging_schedule[0]: expected {\"at\": seconds, \"strategy\": name}"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule": [{"at": 1, "strategy": 3}]}]})")
                .find("paging_schedule[0].strategy: expected a string"),
            std::string::npos);
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule": {"at": 1}}]})")
                .find("paging_schedule: expected an array"),
            std::string::npos);
}

TEST(RunConfigTest, SoftHwModelTakesExactFastOrOff) {
  auto validate = [](const char* json) {
    absl::StatusOr<RunConfig> c = ParseRunConfig(json);
    return c.ok() ? ValidateRunConfig(*c) : c.status();
  };
  for (const char* json : {R"({"soft_hw_model": "exact", "vms": [{"backend": "soft"}]})",
                           R"({"soft_hw_model": "fast", "vms": [{"backend": "soft"}]})",
                           R"({"soft_hw_model": "off", "vms": [{"backend": "soft"}]})"}) {
    EXPECT_TRUE(validate(json).ok()) << json << ": " << validate(json);
  }
  EXPECT_EQ(validate(R"({"soft_hw_model": "none", "vms": [{"backend": "soft"}]})").message(),
            "config: soft_hw_model: expected \"exact\", \"fast\" or \"off\"");
  // Adaptive paging prices the model's counts: it cannot run without it.
  EXPECT_NE(validate(R"({"soft_hw_model": "off", "vms": [{"backend": "soft", "paging": "adaptive"}]})")
                .message()
                .find("vms[0] (vm0).paging: adaptive needs the hardware model"),
            std::string::npos);
}

TEST(RunConfigTest, AdaptivePagingParsesAndIsChecked) {
  absl::StatusOr<RunConfig> c = ParseRunConfig(R"({"adaptive_interval": 1000000, "adaptive_margin": 0.1,
      "adaptive_streak": 2, "adaptive_min_dwell": 4, "adaptive_urgent_factor": 20, "nested_large_pages": false,
      "vms": [{"backend": "soft", "paging": "adaptive"}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(ValidateRunConfig(*c).ok()) << ValidateRunConfig(*c);
  EXPECT_EQ(c->vms[0].paging, "adaptive");
  const adaptive::Options o = AdaptiveOptions(*c);
  EXPECT_EQ(o.interval, 1'000'000u);
  EXPECT_EQ(o.margin, 0.1);
  EXPECT_EQ(o.streak, 2u);
  EXPECT_EQ(o.min_dwell, 4u);
  EXPECT_EQ(o.urgent_factor, 20);
  EXPECT_FALSE(c->nested_large_pages);

  auto error = [](const char* json) {
    absl::StatusOr<RunConfig> r = ParseRunConfig(json);
    if (r.ok()) return std::string(ValidateRunConfig(*r).message());
    return std::string(r.status().message());
  };
  EXPECT_NE(error(R"({"vms": [{"backend": "kvm", "paging": "adaptive"}]})")
                .find("vms[0] (vm0).paging: adaptive chooses between the soft backend's strategies"),
            std::string::npos)
      << error(R"({"vms": [{"backend": "kvm", "paging": "adaptive"}]})");
  EXPECT_NE(error(R"({"adaptive_margin": -0.2, "vms": [{"backend": "soft", "paging": "adaptive"}]})")
                .find("adaptive_margin: must be in [0, 1)"),
            std::string::npos);
  EXPECT_NE(error(R"({"adaptive_streak": 0, "vms": [{"backend": "soft", "paging": "adaptive"}]})")
                .find("adaptive_streak: must be at least 1"),
            std::string::npos);
  EXPECT_NE(error(R"({"adaptive_urgent_factor": 0.5, "vms": [{"backend": "soft", "paging": "adaptive"}]})")
                .find("adaptive_urgent_factor: must be a finite number >= 1"),
            std::string::npos);
  EXPECT_NE(error(R"({"adaptive_interval": 0, "vms": [{"backend": "soft"}]})")
                .find("adaptive_interval: expected a positive integer"),
            std::string::npos);
  EXPECT_NE(error(R"({"nested_large_pages": 1, "vms": [{"backend": "soft"}]})")
                .find("nested_large_pages: expected true or false"),
            std::string::npos);
  // A schedule switches between strategies; adaptive is a mode to start in.
  EXPECT_NE(error(R"({"vms": [{"backend": "soft", "paging_schedule": [{"at": 1, "strategy": "adaptive"}]}]})")
                .find("paging_schedule[0].strategy: unknown paging strategy \"adaptive\""),
            std::string::npos);
}

}  // namespace
}  // namespace vmm

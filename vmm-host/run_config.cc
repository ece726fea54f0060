#include "vmm-host/run_config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "nlohmann/json.hpp"
#include "vmm-host/memory_layout.h"
#include "vmm-host/soft_hypervisor.h"

namespace vmm {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("config: ", field, ": ", why));
}

absl::StatusOr<uint64_t> SizeField(const Json& v, absl::string_view field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_string()) {
    absl::StatusOr<uint64_t> size = ParseSize(v.get<std::string>());
    if (!size.ok()) return FieldError(field, size.status().message());
    return *size;
  }
  return FieldError(field, "expected a size such as \"256M\" or a number of bytes");
}

absl::StatusOr<std::string> StringField(const Json& v, absl::string_view field) {
  if (!v.is_string()) return FieldError(field, "expected a string");
  return v.get<std::string>();
}

absl::StatusOr<double> NumberField(const Json& v, absl::string_view field) {
  if (!v.is_number()) return FieldError(field, "expected a number");
  return v.get<double>();
}

absl::StatusOr<VmConfig> ParseVm(const Json& j, const std::string& where, VmConfig vm) {
  if (!j.is_object()) return FieldError(where, "expected an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const std::string field = absl::StrCat(where, ".", key);
    const Json& v = it.value();
    if (key == "name") {
      ASSIGN_OR_RETURN(vm.name, StringField(v, field));
    } else if (key == "backend") {
      ASSIGN_OR_RETURN(vm.backend, StringField(v, field));
    } else if (key == "paging") {
      ASSIGN_OR_RETURN(vm.paging, StringField(v, field));
    } else if (key == "ram") {
      ASSIGN_OR_RETURN(vm.ram_bytes, SizeField(v, field));
    } else if (key == "vcpus") {
      if (!v.is_number_integer()) return FieldError(field, "expected an integer");
      vm.vcpus = v.get<int>();
    } else if (key == "workload") {
      ASSIGN_OR_RETURN(vm.workload, StringField(v, field));
    } else if (key == "workload_args") {
      ASSIGN_OR_RETURN(vm.workload_args, StringField(v, field));
    } else if (key == "cmdline") {
      ASSIGN_OR_RETURN(vm.extra_cmdline, StringField(v, field));
    } else if (key == "timeout") {
      ASSIGN_OR_RETURN(vm.timeout_seconds, NumberField(v, field));
    } else if (key == "balloon") {
      if (!v.is_boolean()) return FieldError(field, "expected true or false");
      vm.balloon = v.get<bool>();
    } else if (key == "balloon_schedule") {
      if (!v.is_array()) return FieldError(field, "expected an array of {\"at\": seconds, \"target\": size}");
      vm.balloon_schedule.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string step = absl::StrCat(field, "[", i, "]");
        const Json& s = v[i];
        if (!s.is_object() || s.size() != 2 || !s.contains("at") || !s.contains("target")) {
          return FieldError(step, "expected {\"at\": seconds, \"target\": size}");
        }
        VmConfig::BalloonStep b;
        ASSIGN_OR_RETURN(b.at_seconds, NumberField(s["at"], absl::StrCat(step, ".at")));
        ASSIGN_OR_RETURN(b.target_bytes, SizeField(s["target"], absl::StrCat(step, ".target")));
        vm.balloon_schedule.push_back(b);
      }
    } else if (key == "paging_schedule") {
      if (!v.is_array()) {
        return FieldError(field, "expected an array of {\"at\": seconds, \"strategy\": name}");
      }
      vm.paging_schedule.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string step = absl::StrCat(field, "[", i, "]");
        const Json& s = v[i];
        if (!s.is_object() || s.size() != 2 || !s.contains("at") || !s.contains("strategy")) {
          return FieldError(step, "expected {\"at\": seconds, \"strategy\": name}");
        }
        VmConfig::PagingStep p;
        ASSIGN_OR_RETURN(p.at_seconds, NumberField(s["at"], absl::StrCat(step, ".at")));
        ASSIGN_OR_RETURN(p.strategy, StringField(s["strategy"], absl::StrCat(step, ".strategy")));
        vm.paging_schedule.push_back(std::move(p));
      }
    } else if (key == "count") {
      // handled by the caller
    } else {
      return FieldError(field, "unknown field");
    }
  }
  return vm;
}

}  // namespace

bool IsKnownWorkload(std::string_view name) {
  for (std::string_view w : kKnownWorkloads) {
    if (w == name) return true;
  }
  return false;
}

absl::StatusOr<uint64_t> ParseSize(std::string_view text_in) {
  const absl::string_view text(text_in.data(), text_in.size());
  absl::string_view digits = text;
  uint64_t multiplier = 1;
  if (!digits.empty()) {
    switch (absl::ascii_toupper(digits.back())) {
      case 'K': multiplier = uint64_t{1} << 10; break;
      case 'M': multiplier = uint64_t{1} << 20; break;
      case 'G': multiplier = uint64_t{1} << 30; break;
      case 'T': multiplier = uint64_t{1} << 40; break;
      default: break;
    }
    if (multiplier != 1) digits.remove_suffix(1);
  }
  uint64_t value = 0;
  if (digits.empty() || !absl::SimpleAtoi(digits, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad size '", text, "' (use a number with an optional K, M or G suffix)"));
  }
  if (value > (~uint64_t{0}) / multiplier) {
    return absl::InvalidArgumentError(absl::StrCat("size '", text, "' is too large"));
  }
  return value * multiplier;
}

absl::StatusOr<RunConfig> ParseRunConfig(std::string_view json_text) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config: not valid JSON");
  if (!root.is_object()) return FieldError("(top level)", "expected an object");
  RunConfig config;
  VmConfig defaults;
  // "defaults" first, so that every VM starts from it whatever the key order.
  if (root.contains("defaults")) {
    ASSIGN_OR_RETURN(defaults, ParseVm(root["defaults"], "defaults", defaults));
  }
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    const Json& v = it.value();
    if (key == "defaults") continue;
    if (key == "host_budget") {
      ASSIGN_OR_RETURN(config.host_budget_bytes, SizeField(v, key));
    } else if (key == "kernel") {
      ASSIGN_OR_RETURN(config.kernel_path, StringField(v, key));
    } else if (key == "report") {
      ASSIGN_OR_RETURN(config.report_path, StringField(v, key));
    } else if (key == "log_dir") {
      ASSIGN_OR_RETURN(config.log_dir, StringField(v, key));
    } else if (key == "cost_model") {
      ASSIGN_OR_RETURN(config.cost_model, StringField(v, key));
    } else if (key == "echo_console") {
      if (!v.is_boolean()) return FieldError(key, "expected true or false");
      config.echo_console = v.get<bool>();
    } else if (key == "soft_cpu_khz") {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
        return FieldError(key, "expected a positive integer (kHz)");
      }
      config.soft_cpu_khz = v.get<uint64_t>();
    } else if (key == "soft_slice") {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
        return FieldError(key, "expected a positive integer (guest instructions)");
      }
      config.soft_slice = v.get<uint64_t>();
    } else if (key == "adaptive_interval") {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
        return FieldError(key, "expected a positive integer (guest instructions)");
      }
      config.adaptive_interval = v.get<uint64_t>();
    } else if (key == "adaptive_margin") {
      ASSIGN_OR_RETURN(config.adaptive_margin, NumberField(v, key));
    } else if (key == "adaptive_urgent_factor") {
      ASSIGN_OR_RETURN(config.adaptive_urgent_factor, NumberField(v, key));
    } else if (key == "adaptive_streak" || key == "adaptive_min_dwell") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 1'000'000) {
        return FieldError(key, "expected an integer in 0..1000000 (intervals)");
      }
      (key == "adaptive_streak" ? config.adaptive_streak : config.adaptive_min_dwell) = v.get<uint32_t>();
    } else if (key == "nested_large_pages") {
      if (!v.is_boolean()) return FieldError(key, "expected true or false");
      config.nested_large_pages = v.get<bool>();
    } else if (key == "control_socket") {
      ASSIGN_OR_RETURN(config.control_socket, StringField(v, key));
    } else if (key == "soft_hw_model") {
      ASSIGN_OR_RETURN(config.soft_hw_model, StringField(v, key));
    } else if (key == "shadow_audit") {
      if (!v.is_boolean()) return FieldError(key, "expected true or false");
      config.shadow_audit = v.get<bool>();
    } else if (key == "vms") {
      if (!v.is_array()) return FieldError(key, "expected an array of VM objects");
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string where = absl::StrCat("vms[", i, "]");
        ASSIGN_OR_RETURN(VmConfig vm, ParseVm(v[i], where, defaults));
        int count = 1;
        if (v[i].is_object() && v[i].contains("count")) {
          const Json& c = v[i]["count"];
          if (!c.is_number_integer() || c.get<int>() < 1 || c.get<int>() > 1024) {
            return FieldError(absl::StrCat(where, ".count"), "expected an integer in 1..1024");
          }
          count = c.get<int>();
        }
        const std::string base_name = vm.name.empty() ? absl::StrCat("vm", config.vms.size()) : vm.name;
        for (int k = 0; k < count; ++k) {
          VmConfig copy = vm;
          copy.name = count == 1 ? base_name : absl::StrCat(base_name, "-", k);
          config.vms.push_back(std::move(copy));
        }
      }
    } else {
      return FieldError(key, "unknown field");
    }
  }
  return config;
}

absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("config ", path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<RunConfig> config = ParseRunConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

adaptive::Options AdaptiveOptions(const RunConfig& config) {
  adaptive::Options o;
  o.interval = config.adaptive_interval;
  o.margin = config.adaptive_margin;
  o.streak = config.adaptive_streak;
  o.min_dwell = config.adaptive_min_dwell;
  o.urgent_factor = config.adaptive_urgent_factor;
  return o;
}

absl::Status ValidateRunConfig(const RunConfig& config) {
  if (config.soft_cpu_khz < 1000 || config.soft_cpu_khz > 100'000'000) {
    return FieldError("soft_cpu_khz", "expected 1000 (1 MHz) to 100000000 (100 GHz)");
  }
  if (config.soft_slice == 0) return FieldError("soft_slice", "expected a positive integer");
  if (config.soft_hw_model != "exact" && config.soft_hw_model != "fast" && config.soft_hw_model != "off") {
    return FieldError("soft_hw_model", "expected \"exact\", \"fast\" or \"off\"");
  }
  // The messages name the option ("adaptive_margin: ...").
  if (absl::Status s = AdaptiveOptions(config).Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", s.message()));
  }
  if (config.vms.empty()) return absl::InvalidArgumentError("config: vms: no VMs to run");
  std::set<std::string> names;
  for (size_t i = 0; i < config.vms.size(); ++i) {
    const VmConfig& vm = config.vms[i];
    const std::string where = absl::StrCat("vms[", i, "] (", vm.name, ")");
    if (vm.name.empty() || vm.name.size() > 64 ||
        vm.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
            std::string::npos) {
      return FieldError(absl::StrCat(where, ".name"), "use 1-64 letters, digits, '-', '_' or '.'");
    }
    if (!names.insert(vm.name).second) {
      return FieldError(absl::StrCat(where, ".name"), "duplicate VM name");
    }
    if (vm.backend != "kvm" && vm.backend != "soft") {
      return FieldError(absl::StrCat(where, ".backend"), "expected \"kvm\" or \"soft\"");
    }
    if (!IsPagingMode(vm.paging)) {
      return FieldError(absl::StrCat(where, ".paging"),
                        absl::StrCat("unknown paging strategy \"", vm.paging, "\" (available: ",
                                     kPagingModes, ")"));
    }
    if (vm.paging == "adaptive" && vm.backend != "soft") {
      // kvm's translation is the hardware's: there is nothing to choose.
      return FieldError(absl::StrCat(where, ".paging"),
                        "adaptive chooses between the soft backend's strategies: it needs "
                        "backend soft");
    }
    if (vm.paging == "adaptive" && config.soft_hw_model == "off") {
      // The controller prices the hardware model's counts.
      return FieldError(absl::StrCat(where, ".paging"),
                        "adaptive needs the hardware model: soft_hw_model \"exact\" or \"fast\", not "
                        "\"off\"");
    }
    if (!IsKnownWorkload(vm.workload)) {
      std::string known;
      for (std::string_view w : kKnownWorkloads) absl::StrAppend(&known, known.empty() ? "" : ", ", std::string(w));
      return FieldError(absl::StrCat(where, ".workload"),
                        absl::StrCat("unknown workload '", vm.workload, "' (known: ", known, ")"));
    }
    if (vm.ram_bytes < MemoryLayout::kMinRamBytes || (vm.ram_bytes & 0x1fffff) != 0 ||
        vm.ram_bytes > (uint64_t{64} << 30)) {
      return FieldError(absl::StrCat(where, ".ram"),
                        "guest RAM must be a multiple of 2 MiB between 16 MiB and 64 GiB");
    }
    if (vm.vcpus < 1 || vm.vcpus > 64) {
      return FieldError(absl::StrCat(where, ".vcpus"), "expected 1 to 64");
    }
    if (vm.vcpus != 1 && config.kernel_path.empty()) {
      // The built guest kernel is uniprocessor: it has no SMP boot and would
      // take the secondary vCPUs' entry (RDI = index) for its boot info.
      return FieldError(absl::StrCat(where, ".vcpus"),
                        "the guest kernel supports exactly one vCPU (several need a kernel "
                        "built for them, given with `kernel`, on the soft backend)");
    }
    if (vm.vcpus != 1 && vm.backend != "soft") {
      return FieldError(absl::StrCat(where, ".vcpus"),
                        "several vCPUs per VM run on the soft backend only");
    }
    if (!(vm.timeout_seconds > 0)) {
      return FieldError(absl::StrCat(where, ".timeout"), "expected a positive number of seconds");
    }
    double last_at = 0;
    for (size_t s = 0; s < vm.balloon_schedule.size(); ++s) {
      const VmConfig::BalloonStep& step = vm.balloon_schedule[s];
      const std::string field = absl::StrCat(where, ".balloon_schedule[", s, "]");
      if (!vm.balloon) return FieldError(field, "a balloon schedule needs \"balloon\": true");
      if (!(step.at_seconds >= last_at)) {
        return FieldError(absl::StrCat(field, ".at"), "times must be non-negative and in order");
      }
      if (step.target_bytes > vm.ram_bytes) {
        return FieldError(absl::StrCat(field, ".target"), "larger than the VM's RAM");
      }
      last_at = step.at_seconds;
    }
    last_at = 0;
    for (size_t s = 0; s < vm.paging_schedule.size(); ++s) {
      const VmConfig::PagingStep& step = vm.paging_schedule[s];
      const std::string field = absl::StrCat(where, ".paging_schedule[", s, "]");
      if (vm.backend != "soft") {
        return FieldError(field, "switching paging strategies needs the soft backend");
      }
      if (!(step.at_seconds >= last_at)) {
        return FieldError(absl::StrCat(field, ".at"), "times must be non-negative and in order");
      }
      if (!IsPagingStrategy(step.strategy)) {
        return FieldError(absl::StrCat(field, ".strategy"),
                          absl::StrCat("unknown paging strategy \"", step.strategy, "\" (available: ",
                                       kPagingStrategies, ")"));
      }
      last_at = step.at_seconds;
    }
  }
  return absl::OkStatus();
}

}  // namespace vmm

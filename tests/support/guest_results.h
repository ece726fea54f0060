// The guest results a cross-backend comparison may expect to be equal: the
// workload's data (checksums, counts, bytes), not what measures time, which
// on QEMU and KVM follows the host clock.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "vmm-host/machine.h"

namespace vmm::testing {

inline bool IsTimingResult(const std::string& name) {
  return name.ends_with("elapsed_ns") || name.ends_with("wakeups") || name.starts_with("idle.ops");
}

inline std::map<std::string, uint64_t> DataResults(const MachineResult& r) {
  std::map<std::string, uint64_t> out;
  for (const GuestResult& g : r.results) {
    if (!IsTimingResult(g.name)) out[g.name] = g.value;
  }
  return out;
}

}  // namespace vmm::testing

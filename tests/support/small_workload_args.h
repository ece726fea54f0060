// Small parameters for every guest workload, shared by the whole-guest
// integration tests (kvm and soft): each workload takes well under two
// seconds on either backend, also under AddressSanitizer, and page-table
// heavy work stays short on hosts where guest kernel code is emulated
// (docs/platform.md).
#pragma once

#include <map>
#include <string>

namespace vmm::testing {

inline const std::map<std::string, std::string>& SmallWorkloadArgs() {
  static const auto* args = new std::map<std::string, std::string>{
      {"compute", "iters=300000"},
      {"memtouch", "mib=2 passes=1"},
      {"ptchurn", "iters=8 pages=16 procs=2"},
      {"tlbstress", "mib=2 passes=1"},
      {"dedupfill", "mib=2 rounds=1"},
      {"idle", "mib=1 sleep_ms=300 wake_ms=100"},
      {"mix", "mib=1 compute.iters=300000 ptchurn.iters=6 ptchurn.procs=1 idle.sleep_ms=300"},
  };
  return *args;
}

}  // namespace vmm::testing

// The standard size of each guest workload, used by every benchmark that puts
// one backend next to another (QEMU TCG, our kvm and soft backends), so their
// figures are comparable. Documented in docs/guest.md ("Standard sizes").
#pragma once

#include <cstdint>

namespace guest {

struct StandardWorkload {
  const char* workload;
  const char* cmdline;  // the whole guest command line for the workload
  uint32_t memory_mib;  // guest RAM
};

inline constexpr StandardWorkload kStandardWorkloads[] = {
    {"compute", "workload=compute compute.iters=20000000", 128},
    {"memtouch", "workload=memtouch memtouch.mib=32 memtouch.passes=2", 128},
    {"ptchurn", "workload=ptchurn ptchurn.iters=400 ptchurn.pages=64 ptchurn.procs=3", 128},
    {"tlbstress", "workload=tlbstress tlbstress.mib=64 tlbstress.passes=64", 256},
    {"dedupfill", "workload=dedupfill dedupfill.mib=32 dedupfill.rounds=2", 128},
    {"idle", "workload=idle idle.mib=16 idle.sleep_ms=1000", 128},
    {"mix", "workload=mix mib=8 iters=100 compute.iters=5000000 sleep_ms=500", 256},
};

}  // namespace guest

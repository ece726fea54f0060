// Turns one vCPU exit into device calls: the backend-neutral part of the run
// loop. A plain function, so unit tests drive it with scripted exits and no
// KVM (exit_handler_test.cc), in the manner of Firecracker's vcpu exit
// handling.
//
// Thread safety: called from the exiting vCPU's thread; the bus dispatches to
// devices that serialise themselves. `counters` belong to that vCPU.
#pragma once

#include "base/counters.h"
#include "vmm-host/hypervisor.h"
#include "vmm-host/io_bus.h"

namespace vmm {

#define VMM_EXIT_COUNTERS(X)             \
  X(Io, io)                              \
  X(Mmio, mmio)                          \
  X(Hlt, hlt)                            \
  X(Shutdown, shutdown)                  \
  X(InternalError, internal_error)       \
  X(FailEntry, fail_entry)               \
  X(Interrupted, interrupted)            \
  X(SystemEvent, system_event)           \
  X(Unknown, unknown)
BASE_DEFINE_COUNTERS(ExitCounters, VMM_EXIT_COUNTERS);

enum class ExitAction : uint8_t {
  kContinue,     // run the vCPU again
  kHalted,       // the vCPU halted with no in-kernel APIC to wake it: wait
  kInterrupted,  // kicked: check for a stop request, then continue
  kGuestFailed,  // triple fault, emulation failure, entry failure: stop the VM
};

struct VcpuCounters {
  ExitCounters exits;
  BusCounters bus;
};

// Handles `exit`: port I/O and MMIO go to `bus` (reads fill exit.io.data /
// exit.mmio.data for the backend to complete the instruction).
ExitAction HandleExit(const VcpuExit& exit, IoBus& bus, VcpuCounters& counters);

}  // namespace vmm

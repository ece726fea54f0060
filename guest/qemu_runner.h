// Runs the guest image under qemu-system-x86_64 (TCG) and collects what it
// printed, its exit status and the RESULT lines. Host-side; used by the guest
// tests and the QEMU bench. Not thread-safe per object; separate runs may go
// in parallel.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace guest {

struct QemuOptions {
  std::string cmdline;               // kernel command line (-append)
  std::string machine = "microvm";   // -M
  uint32_t memory_mib = 128;         // -m
  std::vector<std::string> extra_args;
  double timeout_seconds = 60;
};

struct QemuRun {
  bool started = false;    // false: QEMU could not be run at all
  bool timed_out = false;
  int exit_status = -1;    // QEMU's exit status; isa-debug-exit gives (code << 1) | 1
  double wall_seconds = 0;
  std::string serial;      // everything the guest wrote to COM1

  // The guest exit code, when QEMU exited through isa-debug-exit.
  std::optional<uint32_t> GuestExitCode() const;
  // RESULT <workload> <key>=<value> lines: results["memtouch"]["ops"].
  std::map<std::string, std::map<std::string, uint64_t>> Results() const;
};

// The qemu-system-x86_64 to use: the one found at configure time, else PATH.
// Empty when there is none.
std::string FindQemu();
// The guest image built by this tree.
std::string GuestKernelPath();

QemuRun RunGuest(const QemuOptions& options);

}  // namespace guest

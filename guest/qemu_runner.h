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

// A guest run that a test talks to while it runs: QEMU is started with a QMP
// socket (-qmp unix:PATH,server,nowait), the serial output is collected in the
// background, and Qmp() sends one command and returns its reply line. Finish()
// waits for QEMU to exit (or kills it at the timeout) and returns the run.
// One thread uses a session; the collector thread only appends to the output.
class QemuSession {
 public:
  QemuSession() = default;
  ~QemuSession();
  QemuSession(const QemuSession&) = delete;
  QemuSession& operator=(const QemuSession&) = delete;

  // False when QEMU could not be started or its QMP socket did not answer.
  bool Start(const QemuOptions& options);
  // Sends `command_json` (one JSON object) and returns the reply line: the
  // first line with "return" or "error" (events are skipped). Empty on failure.
  std::string Qmp(const std::string& command_json, double timeout_seconds = 10);
  // The serial output so far.
  std::string Serial() const;
  bool Exited();
  QemuRun Finish();

 private:
  QemuOptions options_;
  int pid_ = -1;
  int out_fd_ = -1;
  int qmp_fd_ = -1;
  std::string qmp_buffer_;
  std::string socket_path_;
  double start_ = 0;
  struct Collector;
  Collector* collector_ = nullptr;
  QemuRun run_;
};

// The integer after "key": in a QMP reply, e.g. QmpInt(reply, "actual").
std::optional<uint64_t> QmpInt(const std::string& reply, const std::string& key);

}  // namespace guest

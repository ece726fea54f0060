#include "guest/qemu_runner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace guest {
namespace {

bool IsExecutable(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         access(path.c_str(), X_OK) == 0;
}

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

}  // namespace

std::string FindQemu() {
  if (IsExecutable(GUEST_QEMU_PATH)) return GUEST_QEMU_PATH;
  const char* path = getenv("PATH");
  if (!path) return "";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = dir + "/qemu-system-x86_64";
    if (IsExecutable(candidate)) return candidate;
  }
  return "";
}

std::string GuestKernelPath() { return GUEST_KERNEL_PATH; }

std::optional<uint32_t> QemuRun::GuestExitCode() const {
  if (!started || timed_out || exit_status < 0 || (exit_status & 1) == 0) return std::nullopt;
  return static_cast<uint32_t>(exit_status >> 1);
}

std::map<std::string, std::map<std::string, uint64_t>> QemuRun::Results() const {
  std::map<std::string, std::map<std::string, uint64_t>> out;
  std::stringstream lines(serial);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("RESULT ", 0) != 0) continue;
    std::stringstream words(line.substr(7));
    std::string workload, kv;
    words >> workload >> kv;
    size_t eq = kv.find('=');
    if (workload.empty() || eq == std::string::npos) continue;
    out[workload][kv.substr(0, eq)] = std::strtoull(kv.c_str() + eq + 1, nullptr, 10);
  }
  return out;
}

QemuRun RunGuest(const QemuOptions& options) {
  QemuRun run;
  std::string qemu = FindQemu();
  if (qemu.empty()) return run;
  std::vector<std::string> args = {
      qemu, "-M", options.machine, "-accel", "tcg", "-m", std::to_string(options.memory_mib),
      "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
      "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
      "-kernel", GuestKernelPath(), "-append", options.cmdline};
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());

  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return run;
  double start = Now();
  pid_t pid = fork();
  if (pid < 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return run;
  }
  if (pid == 0) {
    int null_fd = open("/dev/null", O_RDWR);
    dup2(null_fd, STDIN_FILENO);
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(out_pipe[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  run.started = true;
  char buf[4096];
  for (;;) {
    double left = options.timeout_seconds - (Now() - start);
    if (left <= 0) {
      run.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd pfd{out_pipe[0], POLLIN, 0};
    int r = poll(&pfd, 1, static_cast<int>(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = read(out_pipe[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // QEMU closed its output: it is exiting
    run.serial.append(buf, static_cast<size_t>(n));
  }
  close(out_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  run.wall_seconds = Now() - start;
  if (!run.timed_out && WIFEXITED(status)) run.exit_status = WEXITSTATUS(status);
  return run;
}

}  // namespace guest

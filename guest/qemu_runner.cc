#include "guest/qemu_runner.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>

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

namespace {

std::vector<std::string> QemuArgs(const std::string& qemu, const QemuOptions& options) {
  std::vector<std::string> args = {
      qemu, "-M", options.machine, "-accel", "tcg", "-m", std::to_string(options.memory_mib),
      "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
      "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
      "-kernel", GuestKernelPath(), "-append", options.cmdline};
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  return args;
}

// Starts QEMU with stdout/stderr on a pipe; returns the pid or -1.
pid_t Spawn(std::vector<std::string> args, int* out_fd) {
  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return -1;
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
  *out_fd = out_pipe[0];
  return pid;
}

}  // namespace

QemuRun RunGuest(const QemuOptions& options) {
  QemuRun run;
  std::string qemu = FindQemu();
  if (qemu.empty()) return run;
  std::vector<std::string> args = QemuArgs(qemu, options);
  double start = Now();
  int out_fd = -1;
  pid_t pid = Spawn(args, &out_fd);
  if (pid < 0) return run;
  run.started = true;
  char buf[4096];
  for (;;) {
    double left = options.timeout_seconds - (Now() - start);
    if (left <= 0) {
      run.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd pfd{out_fd, POLLIN, 0};
    int r = poll(&pfd, 1, static_cast<int>(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = read(out_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // QEMU closed its output: it is exiting
    run.serial.append(buf, static_cast<size_t>(n));
  }
  close(out_fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  run.wall_seconds = Now() - start;
  if (!run.timed_out && WIFEXITED(status)) run.exit_status = WEXITSTATUS(status);
  return run;
}

}  // namespace guest

namespace guest {

struct QemuSession::Collector {
  std::thread thread;
  mutable std::mutex mu;
  std::string serial;
  bool eof = false;
};

QemuSession::~QemuSession() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    Finish();
  }
}

bool QemuSession::Start(const QemuOptions& options) {
  options_ = options;
  std::string qemu = FindQemu();
  if (qemu.empty()) return false;
  char dir_template[] = "/tmp/guest-qmp-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return false;
  socket_path_ = std::string(dir_template) + "/qmp.sock";
  std::vector<std::string> args = QemuArgs(qemu, options);
  args.push_back("-qmp");
  args.push_back("unix:" + socket_path_ + ",server=on,wait=off");
  start_ = Now();
  pid_ = Spawn(args, &out_fd_);
  if (pid_ < 0) return false;
  run_.started = true;
  collector_ = new Collector;
  collector_->thread = std::thread([c = collector_, fd = out_fd_] {
    char buf[4096];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard<std::mutex> lock(c->mu);
      if (n <= 0) {
        c->eof = true;
        return;
      }
      c->serial.append(buf, static_cast<size_t>(n));
    }
  });
  // QEMU creates the socket during start-up; connect as soon as it is there.
  while (Now() - start_ < 10) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_path_.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      qmp_fd_ = fd;
      break;
    }
    close(fd);
    usleep(20000);
  }
  if (qmp_fd_ < 0) return false;
  // The greeting, then capabilities negotiation (QMP spec: qmp_capabilities first).
  return !Qmp("{\"execute\":\"qmp_capabilities\"}").empty();
}

std::string QemuSession::Qmp(const std::string& command_json, double timeout_seconds) {
  if (qmp_fd_ < 0) return "";
  std::string line = command_json + "\n";
  if (write(qmp_fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return "";
  double deadline = Now() + timeout_seconds;
  for (;;) {
    size_t nl;
    while ((nl = qmp_buffer_.find('\n')) != std::string::npos) {
      std::string reply = qmp_buffer_.substr(0, nl);
      qmp_buffer_.erase(0, nl + 1);
      if (reply.find("\"return\"") != std::string::npos ||
          reply.find("\"error\"") != std::string::npos) {
        return reply;
      }
    }
    double left = deadline - Now();
    if (left <= 0) return "";
    pollfd pfd{qmp_fd_, POLLIN, 0};
    int r = poll(&pfd, 1, static_cast<int>(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    ssize_t n = read(qmp_fd_, buf, sizeof(buf));
    if (n <= 0) return "";
    qmp_buffer_.append(buf, static_cast<size_t>(n));
  }
}

std::string QemuSession::Serial() const {
  if (!collector_) return "";
  std::lock_guard<std::mutex> lock(collector_->mu);
  return collector_->serial;
}

bool QemuSession::Exited() {
  if (!collector_) return true;
  std::lock_guard<std::mutex> lock(collector_->mu);
  return collector_->eof;
}

QemuRun QemuSession::Finish() {
  if (pid_ <= 0) return run_;
  while (!Exited() && Now() - start_ < options_.timeout_seconds) usleep(20000);
  if (!Exited()) {
    run_.timed_out = true;
    kill(pid_, SIGKILL);
  }
  collector_->thread.join();
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  run_.wall_seconds = Now() - start_;
  if (!run_.timed_out && WIFEXITED(status)) run_.exit_status = WEXITSTATUS(status);
  run_.serial = collector_->serial;
  delete collector_;
  collector_ = nullptr;
  close(out_fd_);
  if (qmp_fd_ >= 0) close(qmp_fd_);
  qmp_fd_ = -1;
  unlink(socket_path_.c_str());
  rmdir(socket_path_.substr(0, socket_path_.rfind('/')).c_str());
  return run_;
}

std::optional<uint64_t> QmpInt(const std::string& reply, const std::string& key) {
  size_t at = reply.find("\"" + key + "\"");
  if (at == std::string::npos) return std::nullopt;
  at = reply.find(':', at);
  if (at == std::string::npos) return std::nullopt;
  ++at;
  while (at < reply.size() && reply[at] == ' ') ++at;
  if (at >= reply.size() || reply[at] < '0' || reply[at] > '9') return std::nullopt;
  return std::strtoull(reply.c_str() + at, nullptr, 10);
}

}  // namespace guest

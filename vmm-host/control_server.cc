#include "vmm-host/control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/log.h"

namespace vmm {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::ErrnoToStatus(errno, absl::StrCat("control socket: ", what));
}

absl::StatusOr<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "control socket: path must be 1 to ", sizeof(addr.sun_path) - 1, " bytes: '", path, "'"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Writes all of `data`; false if the peer went away.
bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

ControlServer::Json ControlServer::Error(absl::string_view message) {
  return Json{{"ok", false}, {"error", std::string(message)}};
}

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& path,
                                                                    Handler handler) {
  absl::StatusOr<sockaddr_un> addr = Address(path);
  if (!addr.ok()) return addr.status();
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(
          absl::StrCat("control socket: '", path, "' exists and is not a socket"));
    }
    // A socket file: in use if someone answers, else stale (a killed run).
    const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = probe >= 0 && connect(probe, reinterpret_cast<const sockaddr*>(&*addr),
                                            sizeof(*addr)) == 0;
    if (probe >= 0) close(probe);
    if (live) {
      return absl::AlreadyExistsError(
          absl::StrCat("control socket: '", path, "' is in use by another vmm"));
    }
    unlink(path.c_str());
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Errno("socket");
  if (bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 ||
      listen(fd, kMaxClients) != 0) {
    const absl::Status s = Errno(absl::StrCat("bind/listen '", path, "'"));
    close(fd);
    return s;
  }
  int wake[2];
  if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    const absl::Status s = Errno("pipe");
    close(fd);
    unlink(path.c_str());
    return s;
  }
  auto server = std::unique_ptr<ControlServer>(new ControlServer(path, fd, wake, std::move(handler)));
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

ControlServer::ControlServer(std::string path, int listen_fd, int wake_fd[2], Handler handler)
    : path_(std::move(path)),
      listen_fd_(listen_fd),
      wake_read_(wake_fd[0]),
      wake_write_(wake_fd[1]),
      handler_(std::move(handler)) {}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const char byte = 1;
  (void)!write(wake_write_, &byte, 1);
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_read_);
  close(wake_write_);
  unlink(path_.c_str());
}

bool ControlServer::Answer(int fd, std::string_view line) {
  Json answer;
  Json request = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) {
    answer = Error("request is not JSON");
  } else if (!request.is_object()) {
    answer = Error("request must be a JSON object");
  } else if (!request.contains("cmd") || !request["cmd"].is_string()) {
    answer = Error("request needs a string \"cmd\"");
  } else {
    answer = handler_(request);
    if (!answer.is_object()) answer = Error("internal: the handler gave no object");
    if (!answer.contains("ok")) answer["ok"] = true;
  }
  return WriteAll(fd, answer.dump(-1, ' ', /*ensure_ascii=*/true, Json::error_handler_t::replace) + "\n");
}

void ControlServer::Serve() {
  struct Client {
    int fd;
    std::string buffer;
  };
  std::vector<Client> clients;
  for (;;) {
    std::vector<pollfd> fds;
    fds.push_back({wake_read_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const Client& c : clients) fds.push_back({c.fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      LOG(ERROR) << "control socket: poll failed: " << std::strerror(errno);
      break;
    }
    if (fds[0].revents) break;  // Stop()
    // Only the clients polled this round (fds[2 + i] is clients[i]); one
    // accepted below waits for the next round.
    const size_t polled = fds.size() - 2;
    if (fds[1].revents & POLLIN) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        if (clients.size() >= static_cast<size_t>(kMaxClients)) {
          WriteAll(fd, Error("too many control clients").dump() + "\n");
          close(fd);
        } else {
          clients.push_back({fd, {}});
        }
      }
    }
    // From the back, so that closing one keeps the indexes of the rest.
    for (size_t i = polled; i-- > 0;) {
      if (!fds[2 + i].revents) continue;
      Client& c = clients[i];
      char chunk[4096];
      const ssize_t n = recv(c.fd, chunk, sizeof(chunk), 0);
      bool keep = n > 0 || (n < 0 && (errno == EINTR || errno == EAGAIN));
      if (n > 0) c.buffer.append(chunk, static_cast<size_t>(n));
      size_t start = 0;
      for (size_t nl; keep && (nl = c.buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
        keep = Answer(c.fd, std::string_view(c.buffer).substr(start, nl - start));
      }
      c.buffer.erase(0, start);
      if (keep && c.buffer.size() > kMaxLineBytes) {
        WriteAll(c.fd, Error(absl::StrCat("request line longer than ", kMaxLineBytes,
                                          " bytes; closing"))
                           .dump() +
                           "\n");
        keep = false;
      }
      if (!keep) {
        close(c.fd);
        clients.erase(clients.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
  }
  for (const Client& c : clients) close(c.fd);
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& path) {
  absl::StatusOr<sockaddr_un> addr = Address(path);
  if (!addr.ok()) return addr.status();
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  if (connect(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    const absl::Status s = Errno(absl::StrCat("connect to '", path, "' (is a vmm running?)"));
    close(fd);
    return s;
  }
  return std::unique_ptr<ControlClient>(new ControlClient(fd));
}

ControlClient::~ControlClient() { close(fd_); }

absl::StatusOr<std::string> ControlClient::CallRaw(std::string_view bytes, int timeout_ms) {
  if (!WriteAll(fd_, bytes)) return Errno("send");
  for (;;) {
    if (const size_t nl = pending_.find('\n'); nl != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      return line;
    }
    pollfd p{fd_, POLLIN, 0};
    const int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return absl::DeadlineExceededError("control socket: no answer in time");
    if (r < 0) return Errno("poll");
    char chunk[4096];
    const ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
    if (n == 0) return absl::UnavailableError("control socket: the vmm closed the connection");
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("recv");
    }
    pending_.append(chunk, static_cast<size_t>(n));
  }
}

absl::StatusOr<ControlClient::Json> ControlClient::Call(const Json& request, int timeout_ms) {
  absl::StatusOr<std::string> line = CallRaw(request.dump() + "\n", timeout_ms);
  if (!line.ok()) return line.status();
  Json answer = Json::parse(*line, nullptr, /*allow_exceptions=*/false);
  if (answer.is_discarded() || !answer.is_object()) {
    return absl::DataLossError("control socket: the answer is not a JSON object");
  }
  return answer;
}

}  // namespace vmm

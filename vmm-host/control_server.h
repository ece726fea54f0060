// The control interface of a running `vmm` process: a JSON-lines protocol on
// a Unix stream socket (docs/vmm.md, "Control interface"). Each request is
// one JSON object on one line, with a "cmd" string; each answer is one JSON
// object on one line, {"ok": true, ...} or {"ok": false, "error": "..."}.
//
// ControlServer owns the socket and the framing; what the commands do is the
// handler's (vmm_runner.cc answers for the running VMs). The server itself
// answers framing errors: a line that is not JSON, not an object, without a
// string "cmd", or longer than kMaxLineBytes (the connection is then
// closed). Several clients may be connected; requests are answered one at a
// time, in arrival order per client.
//
// ControlClient is the other end, for `vmm ctl` and tests.
//
// Thread safety: Start/Stop from one thread. The handler runs on the server
// thread, one request at a time.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace vmm {

class ControlServer {
 public:
  using Json = nlohmann::ordered_json;
  // Answers one well-formed request (an object with a string "cmd"). The
  // answer should carry "ok"; the server adds "ok": true if it does not.
  using Handler = std::function<Json(const Json& request)>;

  static constexpr size_t kMaxLineBytes = 64 * 1024;
  static constexpr int kMaxClients = 16;

  // Listens on `path`. A stale socket file (nobody listening) is replaced;
  // any other existing file is an error.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(const std::string& path,
                                                             Handler handler);
  ~ControlServer();  // Stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Closes every connection, removes the socket file, joins the thread.
  void Stop();
  const std::string& path() const { return path_; }

  // An error answer.
  static Json Error(absl::string_view message);

 private:
  ControlServer(std::string path, int listen_fd, int wake_fd[2], Handler handler);
  void Serve();
  // Answers one line; false when the connection must close.
  bool Answer(int fd, std::string_view line);

  const std::string path_;
  const int listen_fd_;
  const int wake_read_, wake_write_;
  Handler handler_;
  std::thread thread_;
  bool stopped_ = false;
};

class ControlClient {
 public:
  using Json = nlohmann::ordered_json;
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(const std::string& path);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Sends one request and waits for its answer (up to `timeout_ms`).
  absl::StatusOr<Json> Call(const Json& request, int timeout_ms = 10'000);
  // Sends raw bytes (tests of the framing) and reads one answer line.
  absl::StatusOr<std::string> CallRaw(std::string_view bytes, int timeout_ms = 10'000);

 private:
  explicit ControlClient(int fd) : fd_(fd) {}
  int fd_;
  std::string pending_;  // bytes after the last answer line
};

}  // namespace vmm

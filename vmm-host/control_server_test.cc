// The control interface's server and client over a real Unix socket: the
// framing rules, several clients, stale sockets, and clean shutdown.
#include "vmm-host/control_server.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace vmm {
namespace {

using Json = ControlServer::Json;

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("ctl_", getpid());
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "control.sock").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Echoes the request back with a call count.
  std::unique_ptr<ControlServer> StartEcho() {
    auto server = ControlServer::Start(path_, [this](const Json& request) -> Json {
      ++calls_;
      if (request["cmd"] == "fail") return ControlServer::Error("asked to fail");
      return {{"echo", request}};
    });
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  std::filesystem::path dir_;
  std::string path_;
  std::atomic<int> calls_{0};
};

TEST_F(ControlServerTest, AnswersEachRequestLineInOrder) {
  auto server = StartEcho();
  ASSERT_NE(server, nullptr);
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<Json> a = (*client)->Call({{"cmd", "hello"}, {"n", 1}});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)["ok"], true);  // added by the server
  EXPECT_EQ((*a)["echo"]["n"], 1);
  // Two requests in one write: two answers, in order.
  absl::StatusOr<std::string> first =
      (*client)->CallRaw("{\"cmd\":\"a\"}\n{\"cmd\":\"fail\"}\n");
  ASSERT_TRUE(first.ok());
  EXPECT_NE(first->find("\"a\""), std::string::npos) << *first;
  absl::StatusOr<std::string> second = (*client)->CallRaw("");
  ASSERT_TRUE(second.ok());
  const Json b = Json::parse(*second);
  EXPECT_EQ(b["ok"], false);
  EXPECT_EQ(b["error"], "asked to fail");
  EXPECT_EQ(calls_.load(), 3);
}

TEST_F(ControlServerTest, FramingErrorsAreAnsweredWithoutTheHandler) {
  auto server = StartEcho();
  ASSERT_NE(server, nullptr);
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  struct Case {
    const char* line;
    const char* error;
  };
  for (const Case& c : {Case{"not json", "request is not JSON"},
                        Case{"[1,2]", "request must be a JSON object"},
                        Case{"{\"cmd\": 7}", "request needs a string \"cmd\""},
                        Case{"{}", "request needs a string \"cmd\""},
                        Case{"{\"cmd\": \"\\ud800\"}", "request is not JSON"}}) {
    absl::StatusOr<std::string> line = (*client)->CallRaw(absl::StrCat(c.line, "\n"));
    ASSERT_TRUE(line.ok()) << c.line;
    const Json a = Json::parse(*line);
    EXPECT_EQ(a["ok"], false) << c.line;
    EXPECT_EQ(a["error"], c.error) << c.line;
  }
  EXPECT_EQ(calls_.load(), 0);
  // The connection survived every error.
  absl::StatusOr<Json> ok = (*client)->Call({{"cmd", "still-here"}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)["ok"], true);
}

TEST_F(ControlServerTest, AnOverlongLineIsRefusedAndTheConnectionClosed) {
  auto server = StartEcho();
  ASSERT_NE(server, nullptr);
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  const std::string huge(ControlServer::kMaxLineBytes + 4096, 'x');
  absl::StatusOr<std::string> line = (*client)->CallRaw(huge);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_NE(line->find("longer than"), std::string::npos) << *line;
  absl::StatusOr<std::string> after = (*client)->CallRaw("{\"cmd\":\"x\"}\n", 2000);
  EXPECT_FALSE(after.ok());
  // Other clients are unaffected.
  auto other = ControlClient::Connect(path_);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE((*other)->Call({{"cmd", "x"}}).ok());
  EXPECT_EQ(calls_.load(), 1);
}

TEST_F(ControlServerTest, SeveralClientsAreServed) {
  auto server = StartEcho();
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<ControlClient>> clients;
  for (int i = 0; i < 4; ++i) {
    auto c = ControlClient::Connect(path_);
    ASSERT_TRUE(c.ok());
    clients.push_back(*std::move(c));
  }
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < clients.size(); ++i) {
      absl::StatusOr<Json> a = clients[i]->Call({{"cmd", "n"}, {"i", i}});
      ASSERT_TRUE(a.ok());
      EXPECT_EQ((*a)["echo"]["i"], i);
    }
  }
  EXPECT_EQ(calls_.load(), 12);
}

TEST_F(ControlServerTest, StaleSocketIsReplacedButALiveOneOrAFileIsNot) {
  {
    // A socket file nobody listens on (a killed vmm).
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    ASSERT_EQ(bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);
  }
  auto server = StartEcho();
  ASSERT_NE(server, nullptr);
  // A second server on the same live path is refused.
  auto second = ControlServer::Start(path_, [](const Json&) { return Json::object(); });
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("in use"), std::string::npos);
  server->Stop();
  EXPECT_FALSE(std::filesystem::exists(path_)) << "Stop removes the socket file";
  // A regular file is never replaced.
  std::ofstream(path_) << "precious";
  auto third = ControlServer::Start(path_, [](const Json&) { return Json::object(); });
  ASSERT_FALSE(third.ok());
  EXPECT_NE(third.status().message().find("not a socket"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(ControlServerTest, ClientReportsAMissingServerClearly) {
  auto client = ControlClient::Connect(path_);
  ASSERT_FALSE(client.ok());
  EXPECT_NE(client.status().message().find("is a vmm running?"), std::string::npos);
}

}  // namespace
}  // namespace vmm

#include "base/log.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace base {
namespace {

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    previous_ = SetLogSink([this](LogSeverity s, std::string_view line) {
      lines_.emplace_back(line);
      severities_.push_back(s);
    });
  }
  void TearDown() override {
    SetLogSink(previous_);
    SetMinLogSeverity(LogSeverity::kInfo);
    SetLogVerbosity(0);
  }
  LogSink previous_;
  std::vector<std::string> lines_;
  std::vector<LogSeverity> severities_;
};

TEST_F(LogTest, FormatsOneLinePerMessage) {
  LOG(WARNING) << "value=" << 42;
  ASSERT_EQ(lines_.size(), 1u);
  EXPECT_EQ(lines_[0][0], 'W');
  EXPECT_NE(lines_[0].find("log_test.cc:"), std::string::npos);
  EXPECT_NE(lines_[0].find("] value=42"), std::string::npos);
  EXPECT_EQ(severities_[0], LogSeverity::kWarning);
}

TEST_F(LogTest, FiltersBelowMinimumWithoutEvaluating) {
  int evaluated = 0;
  auto side_effect = [&] { return ++evaluated; };
  SetMinLogSeverity(LogSeverity::kError);
  LOG(INFO) << side_effect();
  LOG(ERROR) << side_effect();
  EXPECT_EQ(lines_.size(), 1u);
  EXPECT_EQ(evaluated, 1);
}

TEST_F(LogTest, VerbosityGatesVlog) {
  VLOG(1) << "hidden";
  SetLogVerbosity(2);
  SetMinLogSeverity(LogSeverity::kDebug);
  VLOG(2) << "shown";
  VLOG(3) << "hidden";
  ASSERT_EQ(lines_.size(), 1u);
  EXPECT_NE(lines_[0].find("shown"), std::string::npos);
}

TEST_F(LogTest, ConcurrentLinesStayWhole) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 100; ++i) LOG(INFO) << "thread " << t << " line " << i << " end";
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(lines_.size(), 400u);
  for (const auto& l : lines_) EXPECT_EQ(l.substr(l.size() - 4), " end");
}

TEST(LogDeathTest, FatalAborts) { EXPECT_DEATH(LOG(FATAL) << "fatal reason", "fatal reason"); }

}  // namespace
}  // namespace base

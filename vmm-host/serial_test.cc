#include "vmm-host/serial.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "gmock/gmock.h"

namespace vmm {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string base = dir != nullptr ? dir : ::testing::TempDir();
  if (!base.empty() && base.back() != '/') base += '/';
  return base + name + "." + std::to_string(getpid());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Out(Serial& s, uint64_t reg, uint8_t v) { s.Write(reg, &v, 1); }
uint8_t In(Serial& s, uint64_t reg) {
  uint8_t v = 0xee;
  s.Read(reg, &v, 1);
  return v;
}
void Print(Serial& s, std::string_view text) {
  for (char c : text) Out(s, Serial::kRegData, static_cast<uint8_t>(c));
}

TEST(SerialTest, AssemblesLinesIntoLogFileTailAndCallback) {
  const std::string path = TempPath("serial_lines");
  std::vector<std::string> lines;
  SerialOptions options;
  options.vm_name = "vm0";
  options.log_path = path;
  options.on_line = [&](std::string_view l) { lines.emplace_back(l); };
  auto serial = Serial::Create(options);
  ASSERT_TRUE(serial.ok()) << serial.status();
  Serial& s = **serial;

  Print(s, "hello\nworld\r\npart");
  EXPECT_THAT(lines, ::testing::ElementsAre("hello", "world"));
  // Flushed per line: the file already has both lines.
  EXPECT_EQ(ReadFile(path), "hello\nworld\n");
  EXPECT_EQ(s.Tail(), "hello\nworld\n");
  s.Flush();
  EXPECT_THAT(lines, ::testing::ElementsAre("hello", "world", "part"));
  EXPECT_EQ(ReadFile(path), "hello\nworld\npart\n");
  EXPECT_EQ(s.counters().Get(SerialCounters::kLinesOut), 3u);
  EXPECT_EQ(s.counters().Get(SerialCounters::kBytesOut), 17u);
  std::remove(path.c_str());
}

TEST(SerialTest, LogFileIsTruncatedOnCreate) {
  const std::string path = TempPath("serial_trunc");
  {
    std::ofstream f(path);
    f << "old contents that must go\n";
  }
  SerialOptions options;
  options.log_path = path;
  {
    auto serial = Serial::Create(options);
    ASSERT_TRUE(serial.ok());
    Print(**serial, "new\n");
  }
  EXPECT_EQ(ReadFile(path), "new\n");
  std::remove(path.c_str());
}

TEST(SerialTest, UnopenableLogFileIsAnError) {
  SerialOptions options;
  options.log_path = "/nonexistent-dir-for-serial-test/x.log";
  EXPECT_FALSE(Serial::Create(options).ok());
}

TEST(SerialTest, DestructorEmitsPartialLine) {
  const std::string path = TempPath("serial_dtor");
  SerialOptions options;
  options.log_path = path;
  {
    auto serial = Serial::Create(options);
    ASSERT_TRUE(serial.ok());
    Print(**serial, "no newline");
  }
  EXPECT_EQ(ReadFile(path), "no newline\n");
  std::remove(path.c_str());
}

TEST(SerialTest, StdoutEchoOffAndOn) {
  SerialOptions options;
  options.vm_name = "vm7";
  {
    ::testing::internal::CaptureStdout();
    auto serial = Serial::Create(options);  // echo off by default
    ASSERT_TRUE(serial.ok());
    Print(**serial, "quiet\n");
    EXPECT_EQ(::testing::internal::GetCapturedStdout(), "");
  }
  {
    options.echo_stdout = true;
    ::testing::internal::CaptureStdout();
    auto serial = Serial::Create(options);
    ASSERT_TRUE(serial.ok());
    Print(**serial, "loud\n");
    // A guest cannot send terminal escape sequences to the operator.
    Print(**serial, "\x1b[2Jgone?\x07\n");
    EXPECT_EQ(::testing::internal::GetCapturedStdout(),
              "[vm7] loud\n[vm7] \\x1b[2Jgone?\\x07\n");
  }
}

TEST(SerialTest, LsrReportsTransmitterEmptyAndDataReady) {
  auto serial = Serial::Create({});
  ASSERT_TRUE(serial.ok());
  Serial& s = **serial;
  EXPECT_EQ(In(s, Serial::kRegLsr), Serial::kLsrThre | Serial::kLsrTemt);
  Print(s, "x");  // The transmitter never backs up.
  EXPECT_EQ(In(s, Serial::kRegLsr) & (Serial::kLsrThre | Serial::kLsrTemt),
            Serial::kLsrThre | Serial::kLsrTemt);
  EXPECT_EQ(s.QueueInput("ab"), 2u);
  EXPECT_EQ(In(s, Serial::kRegLsr) & Serial::kLsrDataReady, Serial::kLsrDataReady);
  EXPECT_EQ(In(s, Serial::kRegData), 'a');
  EXPECT_EQ(In(s, Serial::kRegData), 'b');
  EXPECT_EQ(In(s, Serial::kRegLsr) & Serial::kLsrDataReady, 0);
  EXPECT_EQ(In(s, Serial::kRegData), 0);  // Empty RBR reads 0.
  // MSR: carrier, data set ready and clear to send.
  EXPECT_EQ(In(s, Serial::kRegMsr), Serial::kMsrDcd | Serial::kMsrDsr | Serial::kMsrCts);
}

TEST(SerialTest, DivisorLatchSharesDataAndIerPorts) {
  auto serial = Serial::Create({});
  ASSERT_TRUE(serial.ok());
  Serial& s = **serial;
  // Linux/firmware sequence: DLAB on, divisor 1 (115200), DLAB off, 8N1.
  Out(s, Serial::kRegIer, 0x05);
  Out(s, Serial::kRegLcr, 0x80);
  Out(s, Serial::kRegData, 0x01);
  Out(s, Serial::kRegIer, 0x00);
  EXPECT_EQ(In(s, Serial::kRegData), 0x01);
  EXPECT_EQ(In(s, Serial::kRegIer), 0x00);
  Out(s, Serial::kRegLcr, 0x03);
  EXPECT_EQ(s.divisor(), 1u);
  EXPECT_EQ(In(s, Serial::kRegLcr), 0x03);
  // The latch writes were not output, and IER kept its own value.
  EXPECT_EQ(s.counters().Get(SerialCounters::kBytesOut), 0u);
  EXPECT_EQ(In(s, Serial::kRegIer), 0x05);
  Out(s, Serial::kRegScr, 0x5a);
  EXPECT_EQ(In(s, Serial::kRegScr), 0x5a);
}

TEST(SerialTest, IirReflectsEnabledConditions) {
  auto serial = Serial::Create({});
  ASSERT_TRUE(serial.ok());
  Serial& s = **serial;
  EXPECT_EQ(In(s, Serial::kRegIirFcr), Serial::kIirNoInterrupt);
  Out(s, Serial::kRegIirFcr, Serial::kFcrFifoEnable);
  EXPECT_EQ(In(s, Serial::kRegIirFcr), Serial::kIirFifoEnabled | Serial::kIirNoInterrupt);
  Out(s, Serial::kRegIer, Serial::kIerThrEmpty | Serial::kIerRxAvailable);
  EXPECT_EQ(In(s, Serial::kRegIirFcr), Serial::kIirFifoEnabled | Serial::kIirThrEmpty);
  s.QueueInput("z");
  EXPECT_EQ(In(s, Serial::kRegIirFcr), Serial::kIirFifoEnabled | Serial::kIirRxAvailable);
  Out(s, Serial::kRegIirFcr, Serial::kFcrFifoEnable | 0x02);  // Clear the receive FIFO.
  EXPECT_EQ(In(s, Serial::kRegLsr) & Serial::kLsrDataReady, 0);
}

TEST(SerialTest, LoopbackReturnsTransmittedBytes) {
  auto serial = Serial::Create({});
  ASSERT_TRUE(serial.ok());
  Serial& s = **serial;
  Out(s, Serial::kRegMcr, Serial::kMcrLoop | 0x0a);  // LOOP, RTS, OUT2
  EXPECT_EQ(In(s, Serial::kRegMsr), Serial::kMsrCts | Serial::kMsrDcd);
  Out(s, Serial::kRegData, 0x5a);
  EXPECT_EQ(In(s, Serial::kRegData), 0x5a);
  EXPECT_EQ(s.counters().Get(SerialCounters::kBytesOut), 0u);
}

TEST(SerialTest, InputIsBounded) {
  SerialOptions options;
  options.input_capacity_bytes = 4;
  auto serial = Serial::Create(options);
  ASSERT_TRUE(serial.ok());
  EXPECT_EQ((*serial)->QueueInput("abcdef"), 4u);
  EXPECT_EQ((*serial)->counters().Get(SerialCounters::kInputDropped), 2u);
}

TEST(SerialTest, HostileGuestCannotGrowLineOrTailWithoutBound) {
  SerialOptions options;
  options.tail_bytes = 1024;
  size_t longest = 0;
  options.on_line = [&](std::string_view l) { longest = std::max(longest, l.size()); };
  auto serial = Serial::Create(options);
  ASSERT_TRUE(serial.ok());
  Serial& s = **serial;
  for (int i = 0; i < 100000; ++i) Out(s, Serial::kRegData, 'A');
  EXPECT_LE(longest, Serial::kMaxLineBytes);
  EXPECT_EQ(s.counters().Get(SerialCounters::kLinesCut), 100000 / Serial::kMaxLineBytes);
  EXPECT_EQ(s.Tail().size(), 1024u);
  // Writes to read-only registers are ignored.
  Out(s, Serial::kRegLsr, 0);
  Out(s, Serial::kRegMsr, 0);
  EXPECT_EQ(In(s, Serial::kRegLsr), Serial::kLsrThre | Serial::kLsrTemt);
}

TEST(SerialTest, ConcurrentWritersProduceWholeLines) {
  const std::string path = TempPath("serial_mt");
  SerialOptions options;
  options.log_path = path;
  auto serial = Serial::Create(options);
  ASSERT_TRUE(serial.ok());
  // Each thread writes whole lines of one letter; per-byte locking may mix
  // bytes of concurrent lines (as a real UART would), but never corrupts state.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) Print(**serial, std::string(10, static_cast<char>('a' + t)) + "\n");
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ((*serial)->counters().Get(SerialCounters::kBytesOut), 4u * 200 * 11);
  EXPECT_EQ((*serial)->counters().Get(SerialCounters::kLinesOut), 4u * 200);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace vmm

#include "vmm-host/debug_exit.h"

#include <atomic>
#include <thread>
#include <vector>

#include "guest/abi.h"
#include "gtest/gtest.h"
#include "vmm-host/io_bus.h"

namespace vmm {
namespace {

void WriteCode(IoBus& bus, uint32_t code, uint32_t size = 4) {
  uint8_t bytes[4];
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<uint8_t>(code >> (8 * i));
  bus.Write(IoBus::Space::kPio, DebugExit::kPort, bytes, size);
}

TEST(DebugExitTest, StatusMatchesQemuIsaDebugExit) {
  // QEMU: exit((code << 1) | 1); what waitpid sees is the low 8 bits.
  EXPECT_EQ(DebugExit::StatusFor(0), 1);
  EXPECT_EQ(DebugExit::StatusFor(1), 3);
  EXPECT_EQ(DebugExit::StatusFor(4), 9);
  EXPECT_EQ(DebugExit::StatusFor(0x7f), 0xff);
  EXPECT_EQ(DebugExit::StatusFor(0x80), 1);
  EXPECT_EQ(DebugExit::StatusFor(0xffffffff), 0xff);
  for (uint32_t code = 0; code < 64; ++code) {
    EXPECT_EQ(DebugExit::StatusFor(code), guest::QemuExitStatus(code));
  }
}

TEST(DebugExitTest, GuestExitCodesReachCallbackOnce) {
  for (uint32_t code : {guest::kExitSuccess, guest::kExitWorkloadFailed, guest::kExitInitKilled,
                        guest::kExitPanic, guest::kExitBootError}) {
    IoBus bus;
    std::vector<uint32_t> calls;
    auto dev = std::make_shared<DebugExit>([&](uint32_t c) { calls.push_back(c); });
    ASSERT_TRUE(bus.Register(IoBus::Space::kPio, DebugExit::kPort, DebugExit::kRegisterBytes, dev).ok());
    EXPECT_FALSE(dev->exit_code().has_value());
    WriteCode(bus, code);  // outl, as guest/kernel/trap.cc ExitGuest does
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0], code);
    EXPECT_EQ(dev->exit_code(), code);
    EXPECT_EQ(dev->exit_status(), guest::QemuExitStatus(code));
    // A second request is counted and ignored.
    WriteCode(bus, 99);
    EXPECT_EQ(calls.size(), 1u);
    EXPECT_EQ(dev->exit_code(), code);
    EXPECT_EQ(dev->extra_writes(), 1u);
  }
}

TEST(DebugExitTest, ByteWideWriteAndReads) {
  IoBus bus;
  auto dev = std::make_shared<DebugExit>();  // No callback is fine.
  ASSERT_TRUE(bus.Register(IoBus::Space::kPio, DebugExit::kPort, DebugExit::kRegisterBytes, dev).ok());
  uint32_t v = 0xffffffff;
  bus.Read(IoBus::Space::kPio, DebugExit::kPort, reinterpret_cast<uint8_t*>(&v), 4);
  EXPECT_EQ(v, 0u);
  WriteCode(bus, 0x1234, 1);  // outb: only the low byte is the code
  EXPECT_EQ(dev->exit_code(), 0x34u);
}

TEST(DebugExitTest, RacingVcpusRecordExactlyOneExit) {
  std::atomic<int> calls{0};
  DebugExit dev([&](uint32_t) { calls.fetch_add(1); });
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t) {
    threads.emplace_back([&dev, t] {
      for (int i = 0; i < 1000; ++i) {
        const uint32_t code = t + 1;
        dev.Write(0, reinterpret_cast<const uint8_t*>(&code), 4);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(calls.load(), 1);
  ASSERT_TRUE(dev.exit_code().has_value());
  EXPECT_GE(*dev.exit_code(), 1u);
  EXPECT_LE(*dev.exit_code(), 4u);
  EXPECT_EQ(dev.extra_writes(), 3999u);
}

}  // namespace
}  // namespace vmm

#include "vmm-host/exit_handler.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"

namespace vmm {
namespace {

// Records every access and answers reads with a counter.
class RecordingDevice : public BusDevice {
 public:
  std::string_view name() const override { return "recorder"; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override {
    reads.push_back(offset);
    for (uint32_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(next++);
  }
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override {
    writes.push_back({offset, std::vector<uint8_t>(data, data + size)});
  }
  std::vector<uint64_t> reads;
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
  int next = 1;
};

class ExitHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(bus_.Register(IoBus::Space::kPio, 0x3f8, 8, port_).ok());
    ASSERT_TRUE(bus_.Register(IoBus::Space::kMmio, 0xd0000000, 0x1000, mmio_).ok());
  }
  VcpuExit Io(uint16_t port, uint8_t size, bool write, uint32_t count) {
    VcpuExit e;
    e.reason = ExitReason::kIo;
    e.io = {port, size, write, count, buffer_};
    return e;
  }
  IoBus bus_;
  std::shared_ptr<RecordingDevice> port_ = std::make_shared<RecordingDevice>();
  std::shared_ptr<RecordingDevice> mmio_ = std::make_shared<RecordingDevice>();
  VcpuCounters counters_;
  uint8_t buffer_[64] = {};
};

TEST_F(ExitHandlerTest, PortWriteReachesTheDeviceAtItsOffset) {
  buffer_[0] = 'A';
  EXPECT_EQ(HandleExit(Io(0x3f8, 1, true, 1), bus_, counters_), ExitAction::kContinue);
  ASSERT_EQ(port_->writes.size(), 1u);
  EXPECT_EQ(port_->writes[0].first, 0u);
  EXPECT_EQ(port_->writes[0].second, std::vector<uint8_t>{'A'});
  EXPECT_EQ(counters_.exits.Get(ExitCounters::kIo), 1u);
  EXPECT_EQ(counters_.bus.Get(BusCounters::kPioWrites), 1u);
}

TEST_F(ExitHandlerTest, RepOutsBecomesOneWritePerItem) {
  for (int i = 0; i < 6; ++i) buffer_[i] = static_cast<uint8_t>('a' + i);
  HandleExit(Io(0x3fd, 2, true, 3), bus_, counters_);
  ASSERT_EQ(port_->writes.size(), 3u);
  EXPECT_EQ(port_->writes[2].first, 5u);
  EXPECT_EQ(port_->writes[2].second, (std::vector<uint8_t>{'e', 'f'}));
}

TEST_F(ExitHandlerTest, PortReadFillsTheExitBuffer) {
  HandleExit(Io(0x3f9, 4, false, 1), bus_, counters_);
  EXPECT_EQ(buffer_[0], 1);
  EXPECT_EQ(buffer_[3], 4);
  EXPECT_EQ(port_->reads, std::vector<uint64_t>{1});
}

TEST_F(ExitHandlerTest, UnclaimedPortReadsAllOnesAndIsCounted) {
  HandleExit(Io(0x80, 2, false, 1), bus_, counters_);
  EXPECT_EQ(buffer_[0], 0xff);
  EXPECT_EQ(buffer_[1], 0xff);
  EXPECT_EQ(counters_.bus.Get(BusCounters::kUnclaimedPio), 1u);
}

TEST_F(ExitHandlerTest, MmioGoesToTheMmioSpace) {
  VcpuExit e;
  e.reason = ExitReason::kMmio;
  uint8_t data[8] = {9, 8, 7, 6};
  e.mmio = {0xd0000070, 4, true, data};
  EXPECT_EQ(HandleExit(e, bus_, counters_), ExitAction::kContinue);
  ASSERT_EQ(mmio_->writes.size(), 1u);
  EXPECT_EQ(mmio_->writes[0].first, 0x70u);
  e.mmio.is_write = false;
  HandleExit(e, bus_, counters_);
  EXPECT_EQ(data[0], 1);
  EXPECT_TRUE(port_->writes.empty()) << "MMIO never reaches port devices";
}

TEST_F(ExitHandlerTest, GuestFailuresStopTheVmAndAreCountedByReason) {
  for (ExitReason r : {ExitReason::kShutdown, ExitReason::kInternalError, ExitReason::kFailEntry,
                       ExitReason::kUnknown}) {
    VcpuExit e;
    e.reason = r;
    EXPECT_EQ(HandleExit(e, bus_, counters_), ExitAction::kGuestFailed) << ExitReasonName(r);
  }
  EXPECT_EQ(counters_.exits.Get(ExitCounters::kShutdown), 1u);
  EXPECT_EQ(counters_.exits.Get(ExitCounters::kInternalError), 1u);
  VcpuExit kick;
  kick.reason = ExitReason::kInterrupted;
  EXPECT_EQ(HandleExit(kick, bus_, counters_), ExitAction::kInterrupted);
  VcpuExit hlt;
  hlt.reason = ExitReason::kHlt;
  EXPECT_EQ(HandleExit(hlt, bus_, counters_), ExitAction::kHalted);
}

}  // namespace
}  // namespace vmm

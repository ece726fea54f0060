#include "vmm-host/io_bus.h"

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace vmm {
namespace {

// Remembers the last access; reads return the offset's low byte in every byte.
class RecordingDevice : public BusDevice {
 public:
  explicit RecordingDevice(std::string name = "rec") : name_(std::move(name)) {}
  std::string_view name() const override { return name_; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override {
    reads.fetch_add(1);
    last_offset = offset;
    last_size = size;
    std::memset(data, static_cast<int>(offset & 0xff), size);
  }
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override {
    writes.fetch_add(1);
    last_offset = offset;
    last_size = size;
    last_value = 0;
    std::memcpy(&last_value, data, size);
  }
  std::atomic<uint64_t> reads{0}, writes{0};
  uint64_t last_offset = ~0ull;
  uint32_t last_size = 0;
  uint64_t last_value = 0;

 private:
  std::string name_;
};

// Counts writes only; safe to call from many threads at once.
class CountingDevice : public BusDevice {
 public:
  std::string_view name() const override { return "count"; }
  void Read(uint64_t, uint8_t* data, uint32_t size) override { std::memset(data, 0, size); }
  void Write(uint64_t, const uint8_t*, uint32_t) override { writes.fetch_add(1); }
  std::atomic<uint64_t> writes{0};
};

using Space = IoBus::Space;

TEST(IoBusTest, DispatchesWithOffsetIntoRange) {
  IoBus bus;
  auto serial = std::make_shared<RecordingDevice>("serial");
  auto mmio = std::make_shared<RecordingDevice>("mmio");
  ASSERT_TRUE(bus.Register(Space::kPio, 0x3f8, 8, serial).ok());
  ASSERT_TRUE(bus.Register(Space::kMmio, 0xd0000000, 0x200, mmio).ok());

  const uint8_t byte = 'x';
  EXPECT_TRUE(bus.Write(Space::kPio, 0x3f8, &byte, 1));
  EXPECT_EQ(serial->last_offset, 0u);
  EXPECT_EQ(serial->last_value, 'x');
  uint8_t out = 0;
  EXPECT_TRUE(bus.Read(Space::kPio, 0x3fd, &out, 1));
  EXPECT_EQ(serial->last_offset, 5u);
  EXPECT_EQ(out, 5);

  const uint32_t word = 0x12345678;
  EXPECT_TRUE(bus.Write(Space::kMmio, 0xd0000070, reinterpret_cast<const uint8_t*>(&word), 4));
  EXPECT_EQ(mmio->last_offset, 0x70u);
  EXPECT_EQ(mmio->last_size, 4u);
  EXPECT_EQ(mmio->last_value, 0x12345678u);
  EXPECT_EQ(serial->writes.load(), 1u);  // MMIO went to the MMIO device only.

  EXPECT_EQ(bus.counters().Get(BusCounters::kPioWrites), 1u);
  EXPECT_EQ(bus.counters().Get(BusCounters::kPioReads), 1u);
  EXPECT_EQ(bus.counters().Get(BusCounters::kMmioWrites), 1u);
  EXPECT_EQ(bus.DeviceAt(Space::kPio, 0x3ff), serial.get());
  EXPECT_EQ(bus.DeviceAt(Space::kPio, 0x400), nullptr);
}

TEST(IoBusTest, SpacesAreIndependent) {
  IoBus bus;
  auto a = std::make_shared<RecordingDevice>("a");
  auto b = std::make_shared<RecordingDevice>("b");
  ASSERT_TRUE(bus.Register(Space::kPio, 0x700, 12, a).ok());
  ASSERT_TRUE(bus.Register(Space::kMmio, 0x700, 12, b).ok());  // Same numbers, other space.
  uint8_t d[4] = {};
  EXPECT_TRUE(bus.Write(Space::kMmio, 0x704, d, 4));
  EXPECT_EQ(b->writes.load(), 1u);
  EXPECT_EQ(a->writes.load(), 0u);
}

TEST(IoBusTest, RejectsOverlapsInEveryShape) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Register(Space::kMmio, 0x1000, 0x100, dev).ok());
  ASSERT_TRUE(bus.Register(Space::kMmio, 0x3000, 0x100, dev).ok());
  struct Case {
    uint64_t base, length;
  };
  for (Case c : {Case{0x1000, 0x100}, Case{0xf00, 0x101}, Case{0x10ff, 0x10}, Case{0x1010, 0x10},
                 Case{0x800, 0x1000}, Case{0x10ff, 0x2000}, Case{0x0, UINT64_MAX}}) {
    absl::Status s = bus.Register(Space::kMmio, c.base, c.length, dev);
    EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << std::hex << c.base << "+" << c.length;
  }
  // Adjacent on both sides is fine.
  EXPECT_TRUE(bus.Register(Space::kMmio, 0xf00, 0x100, dev).ok());
  EXPECT_TRUE(bus.Register(Space::kMmio, 0x1100, 0x1f00, dev).ok());
  EXPECT_EQ(bus.Ranges().size(), 4u);
  // Sorted by base.
  std::vector<uint64_t> bases;
  for (const auto& r : bus.Ranges()) bases.push_back(r.base);
  EXPECT_EQ(bases, (std::vector<uint64_t>{0xf00, 0x1000, 0x1100, 0x3000}));
}

TEST(IoBusTest, RejectsBadRanges) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  EXPECT_EQ(bus.Register(Space::kMmio, 0x1000, 0, dev).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.Register(Space::kMmio, UINT64_MAX - 0xf, 0x20, dev).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.Register(Space::kPio, 0xfff0, 0x20, dev).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.Register(Space::kPio, 0x10000, 1, dev).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.Register(Space::kPio, 0x10, 1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  // The very top of the address space is a valid range.
  EXPECT_TRUE(bus.Register(Space::kMmio, UINT64_MAX - 0xf, 0x10, dev).ok());
  EXPECT_TRUE(bus.Register(Space::kPio, 0xfff0, 0x10, dev).ok());
  uint8_t d[2] = {};
  EXPECT_TRUE(bus.Read(Space::kMmio, UINT64_MAX, d, 1));
  EXPECT_FALSE(bus.Read(Space::kMmio, UINT64_MAX, d, 2));  // Would wrap.
}

TEST(IoBusTest, UnclaimedAccessesAreCountedAndReadAllOnes) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Register(Space::kPio, 0xf4, 4, dev).ok());
  uint8_t data[8];
  std::memset(data, 0, sizeof(data));
  EXPECT_FALSE(bus.Read(Space::kPio, 0x80, data, 4));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(data[i], 0xff);
  EXPECT_EQ(data[4], 0);  // Only `size` bytes are filled.
  EXPECT_FALSE(bus.Write(Space::kPio, 0x80, data, 1));
  EXPECT_FALSE(bus.Write(Space::kMmio, 0xfee00000, data, 4));
  // Straddling the end of a range, or an impossible width, is unclaimed too.
  EXPECT_FALSE(bus.Write(Space::kPio, 0xf6, data, 4));
  EXPECT_FALSE(bus.Write(Space::kPio, 0xf4, data, 3));
  EXPECT_FALSE(bus.Read(Space::kPio, 0xf4, data, 0));
  EXPECT_EQ(dev->writes.load(), 0u);
  EXPECT_EQ(dev->reads.load(), 0u);
  EXPECT_EQ(bus.counters().Get(BusCounters::kUnclaimedPio), 5u);
  EXPECT_EQ(bus.counters().Get(BusCounters::kUnclaimedMmio), 1u);
  // Below every range.
  EXPECT_FALSE(bus.Read(Space::kPio, 0, data, 1));
}

TEST(IoBusTest, ConcurrentDispatchWithPerVcpuCounters) {
  IoBus bus;
  auto dev = std::make_shared<CountingDevice>();
  ASSERT_TRUE(bus.Register(Space::kPio, 0x3f8, 8, dev).ok());
  constexpr int kThreads = 4;
  constexpr int kIters = 20000;
  std::vector<BusCounters> counters(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint8_t b = 1;
      for (int i = 0; i < kIters; ++i) {
        bus.Write(Space::kPio, 0x3f8 + (i % 8), &b, 1, &counters[t]);
        bus.Write(Space::kPio, 0x2f8, &b, 1, &counters[t]);  // Unclaimed.
      }
    });
  }
  for (auto& th : threads) th.join();
  BusCounters total;
  for (const auto& c : counters) total.Accumulate(c);
  EXPECT_EQ(total.Get(BusCounters::kPioWrites), 2u * kThreads * kIters);
  EXPECT_EQ(total.Get(BusCounters::kUnclaimedPio), 1u * kThreads * kIters);
  EXPECT_EQ(dev->writes.load(), 1u * kThreads * kIters);
}

}  // namespace
}  // namespace vmm

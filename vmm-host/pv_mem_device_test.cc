#include "vmm-host/pv_mem_device.h"

#include <cstring>

#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_memory.h"

namespace vmm {
namespace {

void Out(PvMemDevice& dev, uint64_t offset, uint32_t value) {
  dev.Write(offset, reinterpret_cast<const uint8_t*>(&value), sizeof(value));
}

TEST(PvMemDeviceTest, ZeroesAndCopiesWholeFrames) {
  testing::FakeGuestMemory mem({{0, 1 << 20}});
  PvMemDevice dev(mem);
  std::memset(mem.HostPtr(base::Gpa(0x3000), 4096), 0xab, 4096);
  std::memset(mem.HostPtr(base::Gpa(0x5000), 4096), 0x11, 4096);
  Out(dev, 0, 0x3);  // zero gfn 3
  EXPECT_EQ(mem.HostPtr(base::Gpa(0x3000), 4096)[4095], 0);
  Out(dev, 4, 0x5);  // copy gfn 5 -> gfn 7
  Out(dev, 8, 0x7);
  EXPECT_EQ(mem.HostPtr(base::Gpa(0x7000), 4096)[0], 0x11);
  EXPECT_EQ(mem.HostPtr(base::Gpa(0x7000), 4096)[4095], 0x11);
  EXPECT_EQ(dev.counters().Get(PvMemCounters::kZeroed), 1u);
  EXPECT_EQ(dev.counters().Get(PvMemCounters::kCopied), 1u);
}

TEST(PvMemDeviceTest, HostileGfnsAreCountedAndIgnored) {
  testing::FakeGuestMemory mem({{0, 1 << 20}});
  PvMemDevice dev(mem);
  Out(dev, 0, 0xffffffff);  // far beyond RAM
  Out(dev, 8, 0x2);         // copy with no latched source
  Out(dev, 4, 0x100);       // source just beyond 1 MiB
  Out(dev, 8, 0x2);
  EXPECT_EQ(dev.counters().Get(PvMemCounters::kBadGfn), 4u);
  uint8_t byte = 1;
  dev.Write(0, &byte, 1);  // wrong width
  EXPECT_EQ(dev.counters().Get(PvMemCounters::kBadAccess), 1u);
  EXPECT_EQ(dev.counters().Get(PvMemCounters::kZeroed) + dev.counters().Get(PvMemCounters::kCopied), 0u);
}

}  // namespace
}  // namespace vmm

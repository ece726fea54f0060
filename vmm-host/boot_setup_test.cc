#include "vmm-host/boot_setup.h"

#include <elf.h>

#include <cstring>
#include <vector>

#include "guest/boot_info.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_memory.h"
#include "mmu/walker.h"

namespace vmm {
namespace {

// Guest RAM that the mmu walker can also read page tables from.
struct WalkableMemory : testing::FakeGuestMemory {
  explicit WalkableMemory(uint64_t size) : FakeGuestMemory({{0, size}}) {}
  uint64_t* PageAt(uint64_t pa) noexcept {
    return reinterpret_cast<uint64_t*>(HostPtr(base::Gpa(pa), 4096));
  }
};

ElfImage TinyImage(uint64_t paddr, uint64_t size) {
  ElfImage image;
  image.name = "tiny";
  image.bytes = std::string(size, '\x90');
  image.entry = paddr;
  image.segments.push_back({paddr, 0, size, size, true});
  return image;
}

class BootSetupTest : public ::testing::Test {
 protected:
  BootSetupTest() : mem_(32 << 20), layout_(MemoryLayout::ForRamSize(32 << 20)) {}
  WalkableMemory mem_;
  MemoryLayout layout_;
};

TEST_F(BootSetupTest, WritesBootInfoMemoryMapAndCommandLine) {
  BootOptions options;
  options.cmdline = "workload=memtouch mib=4";
  options.flags = guest::kBootFlagTrapEntry | guest::kBootFlagRamZeroed;
  options.tsc_khz = 2'600'000;
  absl::StatusOr<LongModeEntry> entry = SetUpBoot(TinyImage(0x100000, 64), layout_, options, mem_);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(entry->rip, 0x100000u);
  EXPECT_EQ(entry->rdi, BootAddresses::kBootInfo);

  guest::BootInfo info;
  ASSERT_TRUE(mem_.ReadObj(base::Gpa(entry->rdi), &info));
  EXPECT_EQ(info.magic, guest::kBootInfoMagic);
  EXPECT_EQ(info.version, guest::kBootInfoVersion);
  EXPECT_EQ(info.flags, options.flags);
  EXPECT_EQ(info.tsc_khz, 2'600'000u);
  std::string cmdline(info.cmdline_len, '\0');
  ASSERT_TRUE(mem_.Read(base::Gpa(info.cmdline_gpa), cmdline.data(), cmdline.size()));
  EXPECT_EQ(cmdline, options.cmdline);
  ASSERT_EQ(info.mem_map_entries, 2u);
  guest::BootMemEntry map[2];
  ASSERT_TRUE(mem_.Read(base::Gpa(info.mem_map_gpa), map, sizeof(map)));
  EXPECT_EQ(map[0].type, guest::kBootMemReserved);
  EXPECT_EQ(map[1].base, 0x100000u);
  EXPECT_EQ(map[1].length, (32u << 20) - 0x100000u);
  EXPECT_EQ(map[1].type, guest::kBootMemUsable);
  EXPECT_EQ(mem_.HostPtr(base::Gpa(0x100000), 1)[0], 0x90) << "the image is loaded";
}

TEST_F(BootSetupTest, PageTablesIdentityMapLowMemoryAndTheMmioHole) {
  absl::StatusOr<LongModeEntry> entry = SetUpBoot(TinyImage(0x100000, 64), layout_, {}, mem_);
  ASSERT_TRUE(entry.ok());
  // Check the tables with the mmu walker itself.
  mmu::PagingMode mode;
  for (uint64_t va : {uint64_t{0x100000}, uint64_t{0x8000}, uint64_t{0x1ff'ffff},
                      MemoryLayout::kVirtioMmioBase, MemoryLayout::kLapicBase}) {
    mmu::AccessRequest req;
    req.va = va;
    req.access = mmu::Access::kWrite;
    mmu::WalkResult r;
    ASSERT_EQ(mmu::Walk1D(mode, entry->cr3, req, mem_, &r), mmu::WalkStatus::kOk) << std::hex << va;
    EXPECT_EQ(r.gpa, va);
    EXPECT_EQ(r.page_size, mmu::PageSize::k2M);
    const bool uncached = r.entry[2] & mmu::pte::kCacheDisable;
    EXPECT_EQ(uncached, va >= MemoryLayout::kMmioHoleStart) << std::hex << va;
  }
}

TEST_F(BootSetupTest, GdtHasLinuxLayoutAndAPresentTss) {
  absl::StatusOr<LongModeEntry> entry = SetUpBoot(TinyImage(0x100000, 64), layout_, {}, mem_);
  ASSERT_TRUE(entry.ok());
  uint64_t gdt[10];
  ASSERT_TRUE(mem_.Read(base::Gpa(entry->gdt_base), gdt, sizeof(gdt)));
  EXPECT_EQ(entry->gdt_limit + 1, 80);
  EXPECT_EQ(gdt[0x10 / 8], 0x00af9a000000ffffu) << "64-bit kernel code at 0x10";
  EXPECT_EQ(gdt[0x30 / 8] & (uint64_t{3} << 45), uint64_t{3} << 45) << "user code DPL 3 at 0x33";
  const uint64_t tss = gdt[0x40 / 8];
  EXPECT_EQ((tss >> 40) & 0xff, 0x89u) << "present, available 64-bit TSS";
  EXPECT_EQ(((tss >> 16) & 0xffffff) | (((tss >> 56) & 0xff) << 24), entry->tss_base);
}

TEST_F(BootSetupTest, RejectsLongCommandLineAndImagesOutsideRam) {
  BootOptions options;
  options.cmdline = std::string(BootAddresses::kCmdlineMax + 1, 'x');
  absl::StatusOr<LongModeEntry> r = SetUpBoot(TinyImage(0x100000, 64), layout_, options, mem_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("command line"), std::string::npos);
  r = SetUpBoot(TinyImage(31 << 20, 2 << 20), layout_, {}, mem_);
  EXPECT_NE(r.status().message().find("does not fit"), std::string::npos) << r.status();
  r = SetUpBoot(TinyImage(0x8000, 64), layout_, {}, mem_);
  EXPECT_FALSE(r.ok()) << "below 1 MiB collides with the boot structures";
}

TEST(MemoryLayoutTest, RamAboveThreeGibMovesAboveTheHole) {
  MemoryLayout l = MemoryLayout::ForRamSize(uint64_t{5} << 30);
  ASSERT_EQ(l.ram.size(), 2u);
  EXPECT_EQ(l.ram[0].size, uint64_t{3} << 30);
  EXPECT_EQ(l.ram[1].gpa, uint64_t{4} << 30);
  EXPECT_EQ(l.ram_bytes(), uint64_t{5} << 30);
  EXPECT_FALSE(l.IsRam(MemoryLayout::kVirtioMmioBase, 4));
  EXPECT_TRUE(l.IsRam((uint64_t{3} << 30) - 4, 4));
  EXPECT_FALSE(l.IsRam((uint64_t{3} << 30) - 4, 8)) << "crosses into the hole";
  EXPECT_FALSE(l.IsRam(~uint64_t{0} - 2, 8)) << "wraps";
}

}  // namespace
}  // namespace vmm

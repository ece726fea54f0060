// Real reclaim: inflating lowers the frame pool's *measured* resident frames
// (SEEK_DATA over the memfd), deflating costs nothing until the guest
// touches the pages, and touched pages come back zero-filled.
#include <vector>

#include "balloon/balloon_test_fixture.h"
#include "gtest/gtest.h"

namespace balloon {
namespace {

using testing::BalloonFixture;
using C = BalloonCounters;

class BalloonReclaimTest : public BalloonFixture {};

TEST_F(BalloonReclaimTest, InflateReturnsMemoryAndTouchBringsZeroPagesBack) {
  BringUp();
  constexpr uint32_t kFirst = 0x200;  // 2 MiB
  constexpr uint32_t kPages = 1024;   // 4 MiB
  Fill(kFirst, kPages, 0xc3);
  const uint64_t before = Resident();
  ASSERT_GE(before, kPages);

  // Inflate in Linux-sized chains of 256 PFNs.
  for (uint32_t at = 0; at < kPages; at += 256) {
    std::vector<uint32_t> pfns;
    for (uint32_t i = 0; i < 256; ++i) pfns.push_back(kFirst + at + i);
    Inflate(pfns);
  }
  const uint64_t inflated = Resident();
  EXPECT_EQ(Count(C::kInflatedPages), kPages);
  EXPECT_EQ(Count(C::kInflateDiscardRuns), 4u);
  // Within a few pages (the driver's own PFN arrays and ring pages become
  // resident as they are written).
  EXPECT_LE(inflated, before - kPages + kSlack);
  EXPECT_GE(inflated + kPages, before);

  // Deflate half: nothing becomes resident by itself.
  for (uint32_t at = 0; at < kPages / 2; at += 256) {
    std::vector<uint32_t> pfns;
    for (uint32_t i = 0; i < 256; ++i) pfns.push_back(kFirst + at + i);
    Deflate(pfns);
  }
  EXPECT_LE(Resident(), inflated + kSlack);
  EXPECT_EQ(balloon_->inflated_pages(), kPages / 2);

  // The guest touches 100 of the deflated pages: each comes back zero-filled
  // and resident; reads of the others give zeros without making them so.
  std::vector<uint8_t> page(4096);
  for (uint32_t i = 0; i < 100; ++i) {
    const base::Gpa gpa(uint64_t{kFirst + i} << 12);
    ASSERT_TRUE(table_->Read(gpa, page.data(), page.size()));
    for (uint8_t byte : page) ASSERT_EQ(byte, 0);
    const uint8_t one = 1;
    ASSERT_TRUE(table_->Write(gpa + 17, &one, 1));
    ASSERT_TRUE(table_->Read(gpa, page.data(), page.size()));
    EXPECT_EQ(page[17], 1);
    EXPECT_EQ(page[16], 0);
    EXPECT_EQ(page[4095], 0);
  }
  EXPECT_EQ(Count(C::kDeflatedPagesTouched), 100u);
  EXPECT_EQ(table_->counters().Get(vmm::FrameTableCounters::kBalloonedTouched), 100u);
  const uint64_t touched = Resident();
  EXPECT_GE(touched, inflated + 100);
  EXPECT_LE(touched, inflated + 100 + kSlack);
}

TEST_F(BalloonReclaimTest, FreePageReportingReturnsMemoryWithoutATarget) {
  BringUp();
  Fill(0x400, 512, 0x77);
  const uint64_t before = Resident();
  // 2 MiB reported as four 512 KiB ranges (Linux reports order >= 9 blocks).
  Send(3, {{0x400000, 0x80000, true}, {0x480000, 0x80000, true}, {0x500000, 0x80000, true},
           {0x580000, 0x80000, true}});
  EXPECT_EQ(Count(C::kReportedPages), 512u);
  EXPECT_LE(Resident(), before - 512 + kSlack);
  EXPECT_EQ(balloon_->target_pages(), 0u);
  EXPECT_EQ(balloon_->inflated_pages(), 0u);
  // The guest reuses them at once: zero-filled.
  uint64_t v = 1;
  ASSERT_TRUE(table_->ReadObj(base::Gpa(0x400000), &v));
  EXPECT_EQ(v, 0u);
}

}  // namespace
}  // namespace balloon

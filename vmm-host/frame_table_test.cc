#include "vmm-host/frame_table.h"

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "base/check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm-host/memory_layout.h"

namespace vmm {
namespace {

using base::Gfn;
using base::Gpa;
using base::Hfn;
using base::kPageSize;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

std::unique_ptr<FramePool> MakePool(uint64_t budget_bytes, uint64_t space_bytes = 0) {
  auto pool = FramePool::Create({.budget_bytes = budget_bytes, .address_space_bytes = space_bytes});
  CHECK_OK(pool.status());
  return std::move(*pool);
}

std::unique_ptr<FrameTable> MakeTable(FramePool* pool, std::vector<RamRange> ranges, bool populate = true) {
  auto table = FrameTable::Create(pool, {.vm_name = "t", .ram_ranges = std::move(ranges), .populate = populate});
  CHECK_OK(table.status());
  return std::move(*table);
}

uint64_t Tag(const uint8_t* page) {
  uint64_t head, tail;
  std::memcpy(&head, page, 8);
  std::memcpy(&tail, page + kPageSize - 8, 8);
  return head == tail ? head : ~uint64_t{0};  // torn: never a valid tag
}
void WriteTag(uint8_t* page, uint64_t tag) {
  std::memcpy(page, &tag, 8);
  std::memcpy(page + kPageSize - 8, &tag, 8);
}

// A listener that records every call.
class RecordingListener : public InvalidationListener {
 public:
  struct Call {
    Gfn first;
    uint64_t count;
    InvalidationReason reason;
  };
  void InvalidateGfns(Gfn first, uint64_t count, InvalidationReason reason) override {
    calls.push_back({first, count, reason});
    if (on_invalidate) on_invalidate(first, count, reason);
  }
  bool Covered(Gfn gfn) const {
    for (const Call& c : calls) {
      if (gfn >= c.first && gfn - c.first < c.count) return true;
    }
    return false;
  }
  std::vector<Call> calls;
  std::function<void(Gfn, uint64_t, InvalidationReason)> on_invalidate;
};

// --- Creation ------------------------------------------------------------------

TEST(FrameTableCreate, RejectsBadRanges) {
  auto pool = MakePool(64 * kMiB);
  auto check = [&](std::vector<RamRange> ranges, const char* text) {
    auto t = FrameTable::Create(pool.get(), {.vm_name = "v", .ram_ranges = std::move(ranges)});
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(text));
  };
  check({}, "no RAM ranges");
  check({{0, 0}}, "empty or not 4 KiB aligned");
  check({{100, kPageSize}}, "empty or not 4 KiB aligned");
  check({{0, kPageSize + 1}}, "empty or not 4 KiB aligned");
  check({{0, 2 * kMiB}, {kMiB, kMiB}}, "overlap");
  check({{(uint64_t{1} << 52) - kPageSize, 2 * kPageSize}}, "beyond 2^52");
  check({{~uint64_t{0} - kPageSize + 1, kPageSize}}, "beyond 2^52");  // would wrap past 2^64
  EXPECT_EQ(pool->frames_charged(), 0u);
  EXPECT_EQ(pool->frames_allocated(), 0u);
}

TEST(FrameTableCreate, RamThatDoesNotFitTheBudgetFailsClearly) {
  auto pool = MakePool(256 * kMiB, 2 * kGiB);
  auto a = MakeTable(pool.get(), {{0, 156 * kMiB}}, /*populate=*/false);
  auto x = FrameTable::Create(pool.get(), {.vm_name = "x", .ram_ranges = {{0, 512 * kMiB}}});
  ASSERT_FALSE(x.ok());
  EXPECT_EQ(x.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(x.status().message(),
            "guest RAM of 512 MiB for vm 'x' does not fit the host budget: 100 MiB free of 256 MiB");
  EXPECT_EQ(pool->frames_charged(), 156 * kMiB / kPageSize);
  a.reset();
  EXPECT_EQ(pool->frames_charged(), 0u);
}

TEST(FrameTableCreate, AddressSpaceFailureIsReportedAndUncharged) {
  auto pool = MakePool(8 * kMiB, 8 * kMiB);
  auto hold = *pool->AllocateExtent(1);  // the rest is one run of 8 MiB - 4 KiB
  auto x = FrameTable::Create(pool.get(), {.vm_name = "x", .ram_ranges = {{0, 8 * kMiB - kPageSize}}});
  EXPECT_TRUE(x.ok());
  x->reset();
  auto y = FrameTable::Create(pool.get(), {.vm_name = "y", .ram_ranges = {{0, 8 * kMiB}}});
  ASSERT_FALSE(y.ok());
  EXPECT_THAT(std::string(y.status().message()), HasSubstr("guest RAM of 8 MiB for vm 'y'"));
  EXPECT_EQ(pool->frames_charged(), 0u);
  pool->FreeExtent(hold);
}

TEST(FrameTableCreate, ChargesMapsAndReturnsEverything) {
  auto pool = MakePool(64 * kMiB);
  const uint64_t before_resident = *pool->ResidentFrames();
  {
    auto table = MakeTable(pool.get(), {{4 * kMiB, 2 * kMiB}, {0, kMiB}});  // any order
    EXPECT_EQ(table->num_frames(), 768u);
    EXPECT_EQ(table->ram_bytes(), 3 * kMiB);
    EXPECT_EQ(pool->frames_charged(), 768u);
    EXPECT_EQ(table->CountState(GfnState::kPresent), 768u);
    // Ranges are sorted by gpa; each is one contiguous run of the memfd.
    const std::vector<RamMapping> maps = table->Mappings();
    ASSERT_EQ(maps.size(), 2u);
    EXPECT_EQ(maps[0].gpa, Gpa(0));
    EXPECT_EQ(maps[0].size_bytes, kMiB);
    EXPECT_EQ(maps[1].gpa, Gpa(4 * kMiB));
    EXPECT_EQ(maps[1].fd_offset, maps[0].fd_offset + kMiB);
    EXPECT_EQ(maps[1].host, maps[0].host + kMiB);
    EXPECT_EQ(maps[0].fd, pool->fd());
    EXPECT_EQ(table->Lookup(Gfn(0)).hfn(), table->home_extent().first);
    EXPECT_EQ(table->Lookup(base::GfnOf(Gpa(4 * kMiB))).hfn(), table->home_extent().first + 256);
    EXPECT_EQ(table->Translate(Gfn(1)), maps[0].host + kPageSize);
    std::memset(maps[1].host, 1, 2 * kMiB);  // the guest touches its RAM
    EXPECT_EQ(*pool->ResidentFrames(), before_resident + 512);
  }
  EXPECT_EQ(pool->frames_charged(), 0u);
  EXPECT_EQ(pool->frames_allocated(), 0u);
  EXPECT_EQ(*pool->ResidentFrames(), 0u);
}

TEST(FrameTableCreate, UnpopulatedStartsUnbacked) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}}, /*populate=*/false);
  EXPECT_EQ(table->CountState(GfnState::kUnbacked), 256u);
  EXPECT_EQ(table->Translate(Gfn(0)), nullptr);
  EXPECT_EQ(table->HostPtr(Gpa(0), 1), nullptr);
  ASSERT_TRUE(table->Populate(Gfn(10), 5).ok());
  EXPECT_EQ(table->CountState(GfnState::kPresent), 5u);
  EXPECT_EQ(table->Lookup(Gfn(12)).hfn(), table->home_extent().first + 12);
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kPopulated), 5u);
}

// --- Lookup and GuestMemory bounds ----------------------------------------------------

TEST(FrameTableGuestMemory, BoundsChecksWithTheMmioHole) {
  // 4 GiB of RAM: [0, 3 GiB) and [4 GiB, 5 GiB), the hole in between. The
  // memfd is sparse, so this costs only the table (8 bytes per gfn).
  const MemoryLayout layout = MemoryLayout::ForRamSize(4 * kGiB);
  auto pool = MakePool(4 * kGiB);
  auto table = MakeTable(pool.get(), layout.ram);
  GuestMemory& mem = *table;
  const std::vector<RamMapping> maps = table->Mappings();
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(mem.ram_bytes(), 4 * kGiB);

  EXPECT_EQ(mem.HostPtr(Gpa(0), 8), maps[0].host);
  EXPECT_EQ(mem.HostPtr(Gpa(3 * kGiB - 8), 8), maps[0].host + 3 * kGiB - 8);
  EXPECT_EQ(mem.HostPtr(Gpa(0), 3 * kGiB), maps[0].host);            // the whole range
  EXPECT_EQ(mem.HostPtr(Gpa(0), 3 * kGiB + 1), nullptr);            // one byte too many
  EXPECT_EQ(mem.HostPtr(Gpa(3 * kGiB - 4), 8), nullptr);            // crosses the range end
  EXPECT_EQ(mem.HostPtr(Gpa(3 * kGiB), 1), nullptr);                // the hole
  EXPECT_EQ(mem.HostPtr(Gpa(MemoryLayout::kVirtioMmioBase), 4), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(MemoryLayout::kLapicBase), 4), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(4 * kGiB - 1), 2), nullptr);            // from the hole into RAM
  EXPECT_EQ(mem.HostPtr(Gpa(4 * kGiB), 8), maps[1].host);
  EXPECT_EQ(mem.HostPtr(Gpa(5 * kGiB - 1), 1), maps[1].host + kGiB - 1);
  EXPECT_EQ(mem.HostPtr(Gpa(5 * kGiB), 1), nullptr);                // beyond RAM
  EXPECT_EQ(mem.HostPtr(Gpa(2 * kGiB), 2 * kGiB), nullptr);         // spans the hole
  // Overflow near 2^64.
  EXPECT_EQ(mem.HostPtr(Gpa(~uint64_t{0}), 1), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(~uint64_t{0} - 7), 16), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(4 * kGiB), ~uint64_t{0}), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(8), ~uint64_t{0} - 7), nullptr);          // gpa + len wraps to 0
  EXPECT_EQ(mem.HostPtr(Gpa(4 * kGiB + 16), ~uint64_t{0} - 15), nullptr);
  // len 0: inside or at the end of a range.
  EXPECT_NE(mem.HostPtr(Gpa(5 * kGiB), 0), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(3 * kGiB + 1), 0), nullptr);

  // Lookup.
  EXPECT_EQ(table->Lookup(base::GfnOf(Gpa(3 * kGiB))).state(), GfnState::kNotRam);
  EXPECT_EQ(table->Lookup(base::GfnOf(Gpa(5 * kGiB))).state(), GfnState::kNotRam);
  EXPECT_EQ(table->Lookup(Gfn(~uint64_t{0})).state(), GfnState::kNotRam);
  EXPECT_EQ(table->Lookup(base::GfnOf(Gpa(4 * kGiB))).state(), GfnState::kPresent);
  EXPECT_EQ(table->Translate(base::GfnOf(Gpa(3 * kGiB))), nullptr);
  EXPECT_EQ(table->HomeHfn(base::GfnOf(Gpa(4 * kGiB))), table->home_extent().first + 3 * kGiB / kPageSize);

  // Read/Write through the interface land in the mapping.
  const uint64_t v = 0x1122334455667788;
  EXPECT_TRUE(mem.WriteObj(Gpa(4 * kGiB + 4090), v));  // crosses a page, both Present
  uint64_t back = 0;
  EXPECT_TRUE(mem.ReadObj(Gpa(4 * kGiB + 4090), &back));
  EXPECT_EQ(back, v);
  EXPECT_EQ(std::memcmp(maps[1].host + 4090, &v, 8), 0);
  EXPECT_FALSE(mem.WriteObj(Gpa(3 * kGiB - 4), v));
}

TEST(FrameTableGuestMemory, OnlyPresentContiguousFramesAreReachable) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  GuestMemory& mem = *table;
  ASSERT_TRUE(table->Discard(Gfn(5), 1).ok());
  EXPECT_NE(mem.HostPtr(Gpa(4 * kPageSize), kPageSize), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(5 * kPageSize), 1), nullptr);
  EXPECT_EQ(mem.HostPtr(Gpa(4 * kPageSize + 100), kPageSize), nullptr);  // runs into gfn 5
  EXPECT_EQ(mem.HostPtr(Gpa(4 * kPageSize), 3 * kPageSize), nullptr);
  EXPECT_NE(mem.HostPtr(Gpa(6 * kPageSize), 10 * kPageSize), nullptr);

  // A gfn restored into a single (non-home) frame is reachable alone but not
  // together with its neighbours: their host frames are not contiguous.
  const Hfn single = *pool->AllocateFrame();
  WriteTag(pool->HostPtr(single), 42);
  ASSERT_TRUE(table->Restore(Gfn(5), single).ok());
  EXPECT_EQ(mem.HostPtr(Gpa(5 * kPageSize), kPageSize), pool->HostPtr(single));
  EXPECT_EQ(mem.HostPtr(Gpa(5 * kPageSize - 4), 8), nullptr);
  EXPECT_EQ(Tag(table->Translate(Gfn(5))), 42u);

  // Shared pages are not writable through GuestMemory.
  const Hfn shared = *pool->AllocateFrame();
  ASSERT_TRUE(table->ShareReadOnly(Gfn(7), shared).ok());
  EXPECT_EQ(mem.HostPtr(Gpa(7 * kPageSize), 1), nullptr);
  EXPECT_NE(table->TranslateForRead(Gfn(7)), nullptr);
  EXPECT_EQ(table->Translate(Gfn(7)), nullptr);
  pool->Unref(shared);
}

// --- Verbs -----------------------------------------------------------------------

TEST(FrameTableVerbs, DiscardPunchesAndRepopulatesZero) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  for (uint64_t g = 0; g < 256; ++g) WriteTag(table->Translate(Gfn(g)), g + 1);
  EXPECT_EQ(*pool->ResidentFrames(), 256u);
  ASSERT_TRUE(table->Discard(Gfn(16), 32).ok());
  ASSERT_TRUE(table->Discard(Gfn(100), 4, FrameTable::DiscardTo::kBallooned).ok());
  ASSERT_TRUE(table->Discard(Gfn(200), 1, FrameTable::DiscardTo::kUnbacked).ok());
  EXPECT_EQ(*pool->ResidentFrames(), 256u - 37);
  EXPECT_EQ(table->Lookup(Gfn(16)).state(), GfnState::kZero);
  EXPECT_EQ(table->Lookup(Gfn(101)).state(), GfnState::kBallooned);
  EXPECT_EQ(table->Lookup(Gfn(200)).state(), GfnState::kUnbacked);
  EXPECT_EQ(table->Translate(Gfn(16)), nullptr);
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kZeroed), 32u);
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kBallooned), 4u);
  EXPECT_EQ(pool->frames_charged(), 256u);  // charged at creation, kept

  ASSERT_TRUE(table->Populate(Gfn(0), 256).ok());
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kPopulated), 37u);
  EXPECT_EQ(Tag(table->Translate(Gfn(16))), 0u);
  EXPECT_EQ(Tag(table->Translate(Gfn(15))), 16u);
  EXPECT_EQ(Tag(table->Translate(Gfn(101))), 0u);

  // Errors: outside RAM, across the end, zero count.
  EXPECT_EQ(table->Discard(Gfn(250), 7).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table->Discard(Gfn(256), 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table->Discard(Gfn(~uint64_t{0}), 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table->Discard(Gfn(0), 0).code(), absl::StatusCode::kInvalidArgument);
}

TEST(FrameTableVerbs, ShareBreakShareEvictRestore) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  WriteTag(table->Translate(Gfn(1)), 7);
  WriteTag(table->Translate(Gfn(2)), 7);
  const uint64_t resident0 = *pool->ResidentFrames();

  // Dedup: two gfns onto one frame. The policy owns one reference.
  const Hfn s = *pool->AllocateFrame();
  std::memcpy(pool->HostPtr(s), table->Translate(Gfn(1)), kPageSize);
  ASSERT_TRUE(table->ShareReadOnly(Gfn(1), s).ok());
  ASSERT_TRUE(table->ShareReadOnly(Gfn(2), s).ok());
  EXPECT_EQ(pool->RefCount(s), 3u);
  EXPECT_EQ(table->Lookup(Gfn(2)).state(), GfnState::kShared);
  EXPECT_EQ(table->Lookup(Gfn(2)).hfn(), s);
  EXPECT_EQ(*pool->ResidentFrames(), resident0 - 2 + 1);  // two homes punched, s resident
  pool->Unref(s);  // the policy drops its reference

  // A different page is refused and stays Present.
  WriteTag(table->Translate(Gfn(3)), 8);
  EXPECT_EQ(table->ShareReadOnly(Gfn(3), s).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(table->Lookup(Gfn(3)).state(), GfnState::kPresent);
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kShareMismatches), 1u);

  // COW break: a private copy in the home frame.
  auto copy = table->BreakShare(Gfn(1));
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(*copy, *table->HomeHfn(Gfn(1)));
  EXPECT_EQ(Tag(table->Translate(Gfn(1))), 7u);
  EXPECT_EQ(pool->RefCount(s), 1u);
  EXPECT_FALSE(table->BreakShare(Gfn(1)).ok());  // not Shared any more

  // Evict the other sharer: its reference goes, and with it the frame.
  std::vector<uint8_t> saved;
  ASSERT_TRUE(table->Evict(Gfn(2), 99, [&](const uint8_t* p) {
                       saved.assign(p, p + kPageSize);
                       return absl::OkStatus();
                     }).ok());
  EXPECT_EQ(pool->RefCount(s), 0u);
  EXPECT_EQ(table->Lookup(Gfn(2)).state(), GfnState::kSwapped);
  EXPECT_EQ(table->Lookup(Gfn(2)).swap_slot(), 99u);
  EXPECT_EQ(Tag(saved.data()), 7u);

  // A failed save leaves the gfn as it was.
  EXPECT_EQ(table->Evict(Gfn(3), 5, [](const uint8_t*) { return absl::UnavailableError("disk"); }).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(table->Lookup(Gfn(3)).state(), GfnState::kPresent);
  EXPECT_EQ(Tag(table->Translate(Gfn(3))), 8u);

  // Restore into the home frame.
  std::memcpy(pool->HostPtr(*table->HomeHfn(Gfn(2))), saved.data(), kPageSize);
  ASSERT_TRUE(table->Restore(Gfn(2), *table->HomeHfn(Gfn(2))).ok());
  EXPECT_EQ(Tag(table->Translate(Gfn(2))), 7u);
  EXPECT_EQ(table->Restore(Gfn(2), *table->HomeHfn(Gfn(2))).code(), absl::StatusCode::kFailedPrecondition);
  // Restore with a frame that is neither home nor allocated.
  ASSERT_TRUE(table->Discard(Gfn(9), 1).ok());
  EXPECT_EQ(table->Restore(Gfn(9), *table->HomeHfn(Gfn(10))).code(), absl::StatusCode::kInvalidArgument);

  const FrameTableCounters& c = table->counters();
  EXPECT_EQ(c.Get(FrameTableCounters::kShared), 2u);
  EXPECT_EQ(c.Get(FrameTableCounters::kCowBreaks), 1u);
  EXPECT_EQ(c.Get(FrameTableCounters::kEvicted), 1u);
  EXPECT_EQ(c.Get(FrameTableCounters::kRestored), 1u);
}

TEST(FrameTableVerbs, PinnedGfnsRefuseReclaimAndFlagsSurviveChanges) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  ASSERT_TRUE(table->SetFlags(Gfn(4), 2, kGfnPinned | kGfnPageTable, true).ok());
  EXPECT_TRUE(table->Lookup(Gfn(5)).has_flag(kGfnPinned));
  EXPECT_TRUE(table->Lookup(Gfn(5)).has_flag(kGfnPageTable));
  EXPECT_EQ(table->Discard(Gfn(0), 8).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table->Lookup(Gfn(0)).state(), GfnState::kPresent);  // nothing changed
  const Hfn s = *pool->AllocateFrame();
  EXPECT_EQ(table->ShareReadOnly(Gfn(4), s).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table->Evict(Gfn(4), 1, [](const uint8_t*) { return absl::OkStatus(); }).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(table->SetFlags(Gfn(4), 2, kGfnPinned, false).ok());
  ASSERT_TRUE(table->Discard(Gfn(4), 2).ok());
  EXPECT_TRUE(table->Lookup(Gfn(4)).has_flag(kGfnPageTable));  // flags are per gfn, not per frame
  EXPECT_FALSE(table->Lookup(Gfn(4)).has_flag(kGfnPinned));
  EXPECT_EQ(table->SetFlags(Gfn(0), 1, 0x80, true).code(), absl::StatusCode::kInvalidArgument);
  pool->FreeFrame(s);
}

TEST(FrameTableVerbs, HarvestReadsAndClearsAccessDirtyThenInvalidates) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  RecordingListener listener;
  std::vector<uint8_t> bits_at_invalidate;
  listener.on_invalidate = [&](Gfn first, uint64_t count, InvalidationReason reason) {
    ASSERT_EQ(reason, InvalidationReason::kHarvest);
    // Cleared before the listeners run (see frame_table.h).
    for (uint64_t i = 0; i < count; ++i) {
      bits_at_invalidate.push_back(table->Lookup(first + i).accessed() | table->Lookup(first + i).dirty());
    }
  };
  table->RegisterInvalidationListener(&listener);
  table->NoteAccess(Gfn(1), false);
  table->NoteAccess(Gfn(2), true);
  table->NoteAccess(Gfn(2), false);
  table->NoteAccess(base::GfnOf(Gpa(kMiB)), true);  // outside RAM: ignored
  std::vector<uint8_t> out;
  ASSERT_TRUE(table->Harvest(Gfn(0), 4, &out).ok());
  EXPECT_EQ(out, (std::vector<uint8_t>{0, FrameTable::kHarvestAccessed,
                                       FrameTable::kHarvestAccessed | FrameTable::kHarvestDirty, 0}));
  EXPECT_EQ(bits_at_invalidate, std::vector<uint8_t>(4, 0));
  ASSERT_EQ(listener.calls.size(), 1u);
  EXPECT_EQ(listener.calls[0].first, Gfn(0));
  EXPECT_EQ(listener.calls[0].count, 4u);
  ASSERT_TRUE(table->Harvest(Gfn(0), 4, &out).ok());
  EXPECT_EQ(out, std::vector<uint8_t>(4, 0));
  // A backing change resets the bits.
  table->NoteAccess(Gfn(3), true);
  listener.on_invalidate = nullptr;
  ASSERT_TRUE(table->Discard(Gfn(3), 1).ok());
  EXPECT_FALSE(table->Lookup(Gfn(3)).dirty());
  table->UnregisterInvalidationListener(&listener);
}

// Every change calls the listeners first, while the old frame is still the
// gfn's, still allocated and still holds its contents.
TEST(FrameTableHooks, ListenersRunBeforeTheOldFrameIsReleased) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  for (uint64_t g = 0; g < 16; ++g) WriteTag(table->Translate(Gfn(g)), 100 + g);
  RecordingListener a, b;
  int checks = 0;
  auto check_intact = [&](Gfn first, uint64_t count, InvalidationReason) {
    for (uint64_t i = 0; i < count; ++i) {
      const GfnEntry e = table->Lookup(first + i);
      if (!e.has_frame()) continue;
      ++checks;
      if (e.hfn() != *table->HomeHfn(first + i)) {
        EXPECT_GT(pool->RefCount(e.hfn()), 0u) << "frame already freed at hook time";
      } else {
        EXPECT_EQ(*pool->ResidentFrames(e.hfn(), 1), 1u) << "home frame already punched at hook time";
      }
      EXPECT_EQ(Tag(pool->HostPtr(e.hfn())), 100 + (first + i).value()) << "contents gone at hook time";
    }
  };
  a.on_invalidate = check_intact;
  b.on_invalidate = check_intact;
  table->RegisterInvalidationListener(&a);
  table->RegisterInvalidationListener(&b);

  ASSERT_TRUE(table->Discard(Gfn(0), 4).ok());
  const Hfn s = *pool->AllocateFrame();
  std::memcpy(pool->HostPtr(s), table->Translate(Gfn(5)), kPageSize);
  ASSERT_TRUE(table->ShareReadOnly(Gfn(5), s).ok());
  pool->Unref(s);  // only the table holds s now
  ASSERT_TRUE(table->Evict(Gfn(5), 3, [](const uint8_t*) { return absl::OkStatus(); }).ok());
  ASSERT_TRUE(table->Evict(Gfn(6), 4, [](const uint8_t*) { return absl::OkStatus(); }).ok());
  EXPECT_EQ(checks, 2 * (4 + 1 + 1 + 1));
  ASSERT_EQ(a.calls.size(), 4u);
  EXPECT_EQ(a.calls[0].reason, InvalidationReason::kDiscard);
  EXPECT_EQ(a.calls[1].reason, InvalidationReason::kShare);
  EXPECT_EQ(a.calls[2].reason, InvalidationReason::kEvict);
  EXPECT_EQ(b.calls.size(), 4u);
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kInvalidations), 4u);
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kInvalidatedGfns), 7u);

  // A refused verb calls no listener; an idempotent one neither.
  EXPECT_FALSE(table->Discard(Gfn(5), 1).ok());  // Swapped
  ASSERT_TRUE(table->Populate(Gfn(8), 4).ok());  // already Present
  EXPECT_EQ(a.calls.size(), 4u);
  table->UnregisterInvalidationListener(&a);
  table->UnregisterInvalidationListener(&b);
}

// A guest write that lands while the listeners drop writable translations
// must not be lost by dedup: the comparison happens after the listeners.
TEST(FrameTableHooks, ShareReadOnlyComparesAfterTheListeners) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, kMiB}});
  const Hfn s = *pool->AllocateFrame();  // zero, like gfn 9
  RecordingListener racing_vcpu;
  racing_vcpu.on_invalidate = [&](Gfn first, uint64_t, InvalidationReason) {
    WriteTag(table->Translate(first), 55);  // the last write through the old translation
  };
  table->RegisterInvalidationListener(&racing_vcpu);
  EXPECT_EQ(table->ShareReadOnly(Gfn(9), s).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(table->Lookup(Gfn(9)).state(), GfnState::kPresent);
  EXPECT_EQ(Tag(table->Translate(Gfn(9))), 55u);
  table->UnregisterInvalidationListener(&racing_vcpu);
  pool->FreeFrame(s);
}

// --- The property test: random verbs against a simple model ---------------------------

class FrameTableModelTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  // Two RAM ranges of 32 frames with a hole between them.
  static constexpr uint64_t kRangeFrames = 32;
  static constexpr uint64_t kSecondGfn = 256;
  static constexpr uint64_t kFrames = 2 * kRangeFrames;

  struct ModelGfn {
    GfnState state = GfnState::kPresent;
    bool home = true;  // Present: on the home frame (else on `hfn`)
    uint64_t hfn = 0;  // Present non-home, Shared
    uint64_t slot = 0;
    uint64_t tag = 0;  // expected contents (0: zero page)
    uint8_t flags = 0;
    bool accessed = false;
    bool dirty = false;
    bool SameBacking(const ModelGfn& o) const {
      return state == o.state && home == o.home && hfn == o.hfn && slot == o.slot;
    }
  };

  static Gfn GfnAt(uint64_t i) { return Gfn(i < kRangeFrames ? i : kSecondGfn + (i - kRangeFrames)); }

  void SetUp() override {
    pool_ = MakePool(4 * kMiB);
    table_ = MakeTable(pool_.get(), {{0, kRangeFrames * kPageSize}, {kSecondGfn * kPageSize, kRangeFrames * kPageSize}});
    model_.resize(kFrames);
    for (uint64_t i = 0; i < kFrames; ++i) {
      model_[i].tag = NewTag();
      WriteTag(table_->Translate(GfnAt(i)), model_[i].tag);
    }
    listener_.on_invalidate = [this](Gfn first, uint64_t count, InvalidationReason) {
      // At hook time: nothing has changed yet and every old frame is intact.
      for (uint64_t k = 0; k < count; ++k) {
        const uint64_t i = IndexOf(first + k);
        ASSERT_LT(i, kFrames);
        const ModelGfn& m = model_[i];
        const GfnEntry e = table_->Lookup(first + k);
        ASSERT_EQ(e.state(), m.state) << "state changed before the listeners ran";
        if (e.has_frame()) {
          if (!(m.state == GfnState::kPresent && m.home)) {
            ASSERT_GT(pool_->RefCount(e.hfn()), 0u);
          }
          ASSERT_EQ(Tag(pool_->HostPtr(e.hfn())), m.tag) << "old frame reused before the listeners ran";
        }
      }
    };
    table_->RegisterInvalidationListener(&listener_);
  }
  void TearDown() override {
    table_->UnregisterInvalidationListener(&listener_);
    table_.reset();
    EXPECT_EQ(pool_->frames_allocated(), 0u);
    EXPECT_EQ(pool_->frames_charged(), 0u);
    EXPECT_EQ(*pool_->ResidentFrames(), 0u);
  }

  uint64_t IndexOf(Gfn gfn) const {
    if (gfn.value() < kRangeFrames) return gfn.value();
    if (gfn.value() >= kSecondGfn && gfn.value() < kSecondGfn + kRangeFrames) return gfn.value() - kSecondGfn + kRangeFrames;
    return ~uint64_t{0};
  }
  uint64_t NewTag() { return ++tag_counter_ * 0x9e3779b97f4a7c15 | 1; }
  Hfn Home(uint64_t i) const { return table_->home_extent().first + i; }

  // Everything the table and the pool say agrees with the model.
  void Verify() {
    std::map<uint64_t, uint32_t> refs;  // single frame -> references the table holds
    std::set<uint64_t> shared_frames;
    uint64_t present = 0;
    for (uint64_t i = 0; i < kFrames; ++i) {
      const ModelGfn& m = model_[i];
      const Gfn gfn = GfnAt(i);
      const GfnEntry e = table_->Lookup(gfn);
      ASSERT_EQ(e.state(), m.state) << "gfn index " << i;
      ASSERT_EQ(e.flags(), m.flags) << i;
      ASSERT_EQ(e.accessed(), m.accessed) << i;
      ASSERT_EQ(e.dirty(), m.dirty) << i;
      const bool home_in_use = m.state == GfnState::kPresent && m.home;
      if (!home_in_use) {
        ASSERT_EQ(*pool_->ResidentFrames(Home(i), 1), 0u) << "home frame of " << i << " not punched";
      }
      switch (m.state) {
        case GfnState::kPresent:
          ++present;
          ASSERT_EQ(e.hfn(), m.home ? Home(i) : Hfn(m.hfn)) << i;
          if (!m.home) ++refs[m.hfn];
          ASSERT_EQ(Tag(table_->Translate(gfn)), m.tag) << i;
          ASSERT_EQ(table_->HostPtr(base::GpaOf(gfn), kPageSize), table_->Translate(gfn));
          break;
        case GfnState::kShared:
          ASSERT_EQ(e.hfn(), Hfn(m.hfn));
          ++refs[m.hfn];
          shared_frames.insert(m.hfn);
          ASSERT_EQ(table_->Translate(gfn), nullptr);
          ASSERT_EQ(Tag(table_->TranslateForRead(gfn)), m.tag);
          ASSERT_EQ(table_->HostPtr(base::GpaOf(gfn), 1), nullptr);
          break;
        case GfnState::kSwapped:
          ASSERT_EQ(e.swap_slot(), m.slot);
          [[fallthrough]];
        default:
          ASSERT_EQ(table_->TranslateForRead(gfn), nullptr);
          ASSERT_EQ(table_->HostPtr(base::GpaOf(gfn), 1), nullptr);
      }
    }
    for (const auto& [hfn, n] : refs) ASSERT_EQ(pool_->RefCount(Hfn(hfn)), n) << "hfn " << hfn;
    ASSERT_EQ(pool_->frames_allocated(), kFrames + refs.size()) << "a frame leaked or was freed early";
    // Residency is measured, not counted: every frame read above is resident;
    // every released frame was punched.
    ASSERT_EQ(*pool_->ResidentFrames(), present + shared_frames.size());
    ASSERT_EQ(table_->CountState(GfnState::kPresent), present);
  }

  // Runs one random verb; updates the model to what the verb must do.
  void Step(std::mt19937_64& rng) {
    auto pick = [&](uint64_t n) { return static_cast<uint64_t>(rng() % n); };
    const uint64_t i = pick(kFrames);
    const Gfn gfn = GfnAt(i);
    ModelGfn& m = model_[i];
    const uint64_t range_start = i < kRangeFrames ? 0 : kRangeFrames;
    const uint64_t count = 1 + pick(std::min<uint64_t>(8, range_start + kRangeFrames - i));
    auto any = [&](auto pred) {
      for (uint64_t k = i; k < i + count; ++k)
        if (pred(model_[k])) return true;
      return false;
    };
    auto reset_ad = [](ModelGfn& x) { x.accessed = x.dirty = false; };

    switch (pick(11)) {
      case 0: {  // the guest writes a Present page
        if (m.state != GfnState::kPresent) break;
        m.tag = NewTag();
        WriteTag(table_->Translate(gfn), m.tag);
        break;
      }
      case 1: {  // Populate
        const bool bad = any([](const ModelGfn& x) {
          return x.state == GfnState::kShared || x.state == GfnState::kSwapped;
        });
        absl::Status s = table_->Populate(gfn, count);
        ASSERT_EQ(s.ok(), !bad) << s;
        if (bad) break;
        for (uint64_t k = i; k < i + count; ++k) {
          if (model_[k].state == GfnState::kPresent) continue;
          model_[k].state = GfnState::kPresent;
          model_[k].home = true;
          model_[k].tag = 0;
          reset_ad(model_[k]);
        }
        break;
      }
      case 2: {  // Discard (zero / unbacked / balloon)
        const auto to = static_cast<FrameTable::DiscardTo>(pick(3));
        const GfnState target = to == FrameTable::DiscardTo::kZero       ? GfnState::kZero
                                : to == FrameTable::DiscardTo::kUnbacked ? GfnState::kUnbacked
                                                                          : GfnState::kBallooned;
        const bool bad = any([](const ModelGfn& x) {
          return x.state == GfnState::kSwapped || (x.flags & kGfnPinned);
        });
        absl::Status s = table_->Discard(gfn, count, to);
        ASSERT_EQ(s.ok(), !bad) << s;
        if (bad) break;
        for (uint64_t k = i; k < i + count; ++k) {
          if (model_[k].state == target) continue;
          model_[k] = ModelGfn{.state = target, .home = true, .flags = model_[k].flags};
        }
        break;
      }
      case 3:
      case 4: {  // ShareReadOnly onto a new frame, or onto one already shared
        const bool ok = m.state == GfnState::kPresent && !(m.flags & kGfnPinned);
        uint64_t s = 0;
        bool fresh = true;
        for (uint64_t k = 0; k < kFrames && pick(2); ++k) {
          if (model_[k].state == GfnState::kShared && k != i) {
            s = model_[k].hfn;
            fresh = false;
            break;
          }
        }
        if (fresh) {
          s = pool_->AllocateFrame()->value();
          if (ok) std::memcpy(pool_->HostPtr(Hfn(s)), table_->Translate(gfn), kPageSize);
        } else if (ok) {
          // The guest happens to write what the shared frame holds.
          std::memcpy(table_->Translate(gfn), pool_->HostPtr(Hfn(s)), kPageSize);
          m.tag = Tag(pool_->HostPtr(Hfn(s)));
          m.dirty = m.accessed = false;  // (re-noted below only by NoteAccess)
        }
        const bool mismatch = ok && fresh && pick(8) == 0;
        if (mismatch) WriteTag(pool_->HostPtr(Hfn(s)), NewTag());
        absl::Status st = table_->ShareReadOnly(gfn, Hfn(s));
        if (!ok) {
          ASSERT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
        } else if (mismatch) {
          ASSERT_EQ(st.code(), absl::StatusCode::kAborted) << st;
        } else {
          ASSERT_TRUE(st.ok()) << st;
          m.state = GfnState::kShared;
          m.hfn = s;
          m.home = false;
          reset_ad(m);
        }
        if (fresh) pool_->Unref(Hfn(s));  // the policy's own reference
        break;
      }
      case 5: {  // BreakShare
        auto r = table_->BreakShare(gfn);
        ASSERT_EQ(r.ok(), m.state == GfnState::kShared) << r.status();
        if (!r.ok()) break;
        ASSERT_EQ(*r, Home(i));
        m.state = GfnState::kPresent;
        m.home = true;
        m.hfn = 0;
        reset_ad(m);
        break;
      }
      case 6: {  // Evict, sometimes with a failing save
        const bool ok = (m.state == GfnState::kPresent || m.state == GfnState::kShared) && !(m.flags & kGfnPinned);
        const bool fail = pick(6) == 0;
        const uint64_t slot = next_slot_++;
        uint64_t saved = 0;
        absl::Status s = table_->Evict(gfn, slot, [&](const uint8_t* page) {
          if (fail) return absl::DataLossError("swap device");
          saved = Tag(page);
          return absl::OkStatus();
        });
        ASSERT_EQ(s.ok(), ok && !fail) << s;
        if (!s.ok()) break;
        ASSERT_EQ(saved, m.tag);
        swap_[slot] = saved;
        m.state = GfnState::kSwapped;
        m.slot = slot;
        m.home = true;
        m.hfn = 0;
        reset_ad(m);
        break;
      }
      case 7: {  // Restore into the home frame or into a single frame
        const bool ok = m.state != GfnState::kPresent && m.state != GfnState::kShared;
        const uint64_t tag = m.state == GfnState::kSwapped ? swap_[m.slot] : 0;
        const bool home = pick(2) == 0;
        Hfn frame = home ? Home(i) : *pool_->AllocateFrame();
        if (ok && tag != 0) WriteTag(pool_->HostPtr(frame), tag);
        absl::Status s = table_->Restore(gfn, frame);
        ASSERT_EQ(s.ok(), ok) << s;
        if (!ok) {
          if (!home) pool_->FreeFrame(frame);
          break;
        }
        if (m.state == GfnState::kSwapped) swap_.erase(m.slot);
        m.state = GfnState::kPresent;
        m.home = home;
        m.hfn = home ? 0 : frame.value();
        m.tag = tag;
        reset_ad(m);
        break;
      }
      case 8: {  // flags
        const uint8_t flags = static_cast<uint8_t>(1u << pick(3));
        const bool set = pick(3) != 0 && flags != kGfnPinned ? true : pick(2) == 0;
        ASSERT_TRUE(table_->SetFlags(gfn, count, flags, set).ok());
        for (uint64_t k = i; k < i + count; ++k) {
          model_[k].flags = set ? (model_[k].flags | flags) : (model_[k].flags & ~flags);
        }
        break;
      }
      case 9: {  // accesses noted by a strategy
        for (uint64_t k = i; k < i + count; ++k) {
          const bool write = pick(2) == 0;
          table_->NoteAccess(GfnAt(k), write);
          model_[k].accessed = true;
          model_[k].dirty |= write;
        }
        break;
      }
      case 10: {  // Harvest
        std::vector<uint8_t> out;
        ASSERT_TRUE(table_->Harvest(gfn, count, &out).ok());
        for (uint64_t k = i; k < i + count; ++k) {
          const uint8_t want = (model_[k].accessed ? FrameTable::kHarvestAccessed : 0) |
                               (model_[k].dirty ? FrameTable::kHarvestDirty : 0);
          ASSERT_EQ(out[k - i], want);
          reset_ad(model_[k]);
        }
        break;
      }
    }
  }

  std::unique_ptr<FramePool> pool_;
  std::unique_ptr<FrameTable> table_;
  RecordingListener listener_;
  std::vector<ModelGfn> model_;
  std::map<uint64_t, uint64_t> swap_;  // slot -> tag
  uint64_t next_slot_ = 1;
  uint64_t tag_counter_ = 0;
};

TEST_P(FrameTableModelTest, RandomVerbsAgreeWithTheModel) {
  std::mt19937_64 rng(GetParam());
  constexpr int kSteps = 4000;
  for (int step = 0; step < kSteps; ++step) {
    SCOPED_TRACE(::testing::Message() << "seed " << GetParam() << " step " << step);
    const std::vector<ModelGfn> before = model_;
    listener_.calls.clear();
    ASSERT_NO_FATAL_FAILURE(Step(rng));
    // Every gfn whose backing changed was invalidated during this step.
    for (uint64_t i = 0; i < kFrames; ++i) {
      if (!before[i].SameBacking(model_[i])) {
        ASSERT_TRUE(listener_.Covered(GfnAt(i))) << "gfn index " << i << " changed without invalidation";
      }
    }
    ASSERT_NO_FATAL_FAILURE(Verify());
  }
  // Every verb ran many times.
  const FrameTableCounters& c = table_->counters();
  for (auto id : {FrameTableCounters::kPopulated, FrameTableCounters::kZeroed, FrameTableCounters::kUnbacked,
                  FrameTableCounters::kBallooned, FrameTableCounters::kShared, FrameTableCounters::kCowBreaks,
                  FrameTableCounters::kEvicted, FrameTableCounters::kRestored, FrameTableCounters::kHarvests}) {
    EXPECT_GT(c.Get(id), 20u) << FrameTableCounters::NameOf(id);
  }
  EXPECT_GT(c.Get(FrameTableCounters::kShareMismatches), 5u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, FrameTableModelTest, ::testing::Values(1, 2, 3, 4));

// --- Lock-free readers against a verb thread ------------------------------------------

TEST(FrameTableConcurrency, LookupsSeeWholeStatesWhileVerbsRun) {
  auto pool = MakePool(4 * kMiB);
  auto table = MakeTable(pool.get(), {{0, 64 * kPageSize}});
  const Hfn home = table->home_extent().first;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, reads{0};
  std::atomic<int> started{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      started.fetch_add(1);
      while (!stop.load(std::memory_order_relaxed)) {
        for (uint64_t g = 0; g < 64; ++g) {
          const GfnEntry e = table->Lookup(Gfn(g));
          const bool ok = (e.state() == GfnState::kPresent && e.hfn() == home + g) ||
                          (e.state() == GfnState::kZero && e.raw() >> 12 == 0) ||
                          (e.state() == GfnState::kSwapped && e.swap_slot() == g + 1000);
          if (!ok) bad.fetch_add(1);
          table->NoteAccess(Gfn(g), g % 2);
          reads.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  while (started.load() < 2) std::this_thread::yield();
  // Run until the readers have done real work alongside the verbs (bounded).
  for (int round = 0; round < 300 || (reads.load() < 100000 && round < 1000000); ++round) {
    const Gfn g(round % 64);
    ASSERT_TRUE(table->Discard(g, 1).ok());
    ASSERT_TRUE(table->Populate(g, 1).ok());
    ASSERT_TRUE(table->Evict(g, g.value() + 1000, [](const uint8_t*) { return absl::OkStatus(); }).ok());
    ASSERT_TRUE(table->Restore(g, home + g.value()).ok());
    std::vector<uint8_t> out;
    ASSERT_TRUE(table->Harvest(Gfn(0), 64, &out).ok());
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GE(reads.load(), 100000u) << "the readers barely ran: the test proved nothing";
}

}  // namespace
}  // namespace vmm

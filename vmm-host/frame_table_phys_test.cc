// FrameTable as mmu::GuestPhysMemory (the soft CPU's view of guest RAM), its
// BackingSeq seqlock, GuestMemory access with intent (device access to pages
// that are not Present), and StrategyInvalidationListener end to end with the
// native strategy.
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "base/check.h"
#include "cpu/native_strategy.h"
#include "gtest/gtest.h"
#include "mmu/paging_strategy.h"
#include "mmu/soft_tlb.h"
#include "vmm-host/frame_table.h"
#include "vmm-host/strategy_listener.h"

namespace vmm {
namespace {

using base::Gfn;
using base::Gpa;
using base::Hfn;
using base::kPageSize;
using mmu::BackingStatus;

constexpr uint64_t kMiB = uint64_t{1} << 20;
// RAM: 1 MiB at 0 (gfns 0..255) and 1 MiB at 16 MiB (gfns 4096..4351);
// gfn 256..4095 is a hole.
constexpr uint64_t kHighGfn = 4096;
constexpr uint64_t kHoleGfn = 1000;

std::unique_ptr<FramePool> MakePool() {
  auto pool = FramePool::Create({.budget_bytes = 8 * kMiB, .address_space_bytes = 16 * kMiB});
  CHECK_OK(pool.status());
  return std::move(*pool);
}

std::unique_ptr<FrameTable> MakeTable(FramePool* pool, bool populate = true) {
  auto table = FrameTable::Create(
      pool, {.vm_name = "phys", .ram_ranges = {{0, kMiB}, {kHighGfn * kPageSize, kMiB}}, .populate = populate});
  CHECK_OK(table.status());
  return std::move(*table);
}

void Fill(uint8_t* page, uint8_t byte) { std::memset(page, byte, kPageSize); }
bool AllBytes(const uint8_t* p, uint64_t n, uint8_t byte) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != byte) return false;
  }
  return true;
}

// A single pool frame filled with `byte` (the caller owns its reference).
Hfn SingleFrame(FramePool* pool, uint8_t byte) {
  std::optional<Hfn> hfn = pool->AllocateFrame();
  CHECK(hfn.has_value());
  Fill(pool->HostPtr(*hfn), byte);
  return *hfn;
}

// Shares `gfn` (filled with `byte`) onto a fresh single frame; the table
// holds the only reference afterwards.
void MakeShared(FrameTable* table, uint64_t gfn, uint8_t byte) {
  FramePool* pool = table->pool();
  Fill(table->Translate(Gfn(gfn)), byte);
  const Hfn s = SingleFrame(pool, byte);
  CHECK_OK(table->ShareReadOnly(Gfn(gfn), s));
  pool->Unref(s);  // the table's reference remains
}

absl::Status SaveNothing(const uint8_t*) { return absl::OkStatus(); }

class SeqCheckingListener : public InvalidationListener {
 public:
  explicit SeqCheckingListener(const FrameTable* table) : table_(table) {}
  void InvalidateGfns(Gfn, uint64_t, InvalidationReason) override {
    ++calls;
    if ((table_->BackingSeq() & 1) == 0) ++even_during_call;
  }
  int calls = 0;
  int even_during_call = 0;

 private:
  const FrameTable* table_;
};

// --- The seqlock ---------------------------------------------------------------

TEST(FrameTablePhys, BackingSeqIsOddWhileListenersRunAndEvenAfterEveryVerb) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  SeqCheckingListener listener(table.get());
  table->RegisterInvalidationListener(&listener);
  uint64_t seq = table->BackingSeq();
  EXPECT_EQ(seq % 2, 0u);
  auto verb_done = [&](const char* what) {
    const uint64_t now = table->BackingSeq();
    EXPECT_EQ(now % 2, 0u) << what;
    EXPECT_GT(now, seq) << what << " did not move the sequence";
    seq = now;
  };

  ASSERT_TRUE(table->Discard(Gfn(1), 2).ok());
  verb_done("Discard");
  ASSERT_TRUE(table->Populate(Gfn(1), 2).ok());
  verb_done("Populate");
  MakeShared(table.get(), 3, 0x33);
  verb_done("ShareReadOnly");
  ASSERT_TRUE(table->BreakShare(Gfn(3)).ok());
  verb_done("BreakShare");
  ASSERT_TRUE(table->Evict(Gfn(4), 7, SaveNothing).ok());
  verb_done("Evict");
  ASSERT_TRUE(table->Restore(Gfn(4), *table->HomeHfn(Gfn(4))).ok());
  verb_done("Restore");
  std::vector<uint8_t> ad;
  ASSERT_TRUE(table->Harvest(Gfn(0), 8, &ad).ok());
  verb_done("Harvest");
  // The refusals that happen after the listeners end the change too.
  const Hfn other = SingleFrame(pool.get(), 0x77);
  Fill(table->Translate(Gfn(5)), 0x55);
  EXPECT_EQ(table->ShareReadOnly(Gfn(5), other).code(), absl::StatusCode::kAborted);
  verb_done("ShareReadOnly (aborted)");
  pool->Unref(other);
  EXPECT_FALSE(table->Evict(Gfn(6), 8, [](const uint8_t*) { return absl::InternalError("disk"); }).ok());
  verb_done("Evict (save failed)");
  EXPECT_EQ(table->Lookup(Gfn(6)).state(), GfnState::kPresent);
  // MakeAvailable's verbs.
  ASSERT_TRUE(table->Discard(Gfn(9), 1).ok());
  verb_done("Discard");
  EXPECT_EQ(table->MakeAvailable(9, true), BackingStatus::kReady);
  verb_done("MakeAvailable");

  // A verb refused before the listeners, and a no-op, leave it alone.
  EXPECT_FALSE(table->BreakShare(Gfn(9)).ok());
  EXPECT_TRUE(table->Populate(Gfn(9), 1).ok());
  EXPECT_EQ(table->BackingSeq(), seq);
  EXPECT_EQ(listener.even_during_call, 0);
  EXPECT_EQ(listener.calls, 11);
  table->UnregisterInvalidationListener(&listener);
}

// A reader samples HostPage under the seqlock while the gfn keeps changing
// frames (home, shared single frames that are freed, restored single
// frames). Every validated read must see the gfn's contents: a freed frame is
// punched (reads zero), so a stale pointer shows up as a wrong byte.
TEST(FrameTablePhys, SeqlockReaderNeverSeesAFreedFrame) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  constexpr uint64_t kGfn = 10;
  constexpr uint8_t kByte = 0xa5;
  Fill(table->Translate(Gfn(kGfn)), kByte);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> validated{0}, retried{0}, bad{0};
  std::thread reader([&] {
    std::vector<uint8_t> copy(kPageSize);
    uint64_t samples = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const uint64_t seq = table->BackingSeq();
      if (seq & 1) {
        retried.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      const uint8_t* p = table->HostPage(kGfn, false);
      // Use the translation a while later (as a vCPU does), so that the
      // verbs' frees land inside the window.
      if ((++samples & 1) != 0) std::this_thread::yield();
      if (p != nullptr) std::memcpy(copy.data(), p, kPageSize);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (table->BackingSeq() != seq) {
        retried.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (p == nullptr) continue;  // Swapped for the moment
      validated.fetch_add(1, std::memory_order_relaxed);
      if (!AllBytes(copy.data(), kPageSize, kByte)) bad.fetch_add(1, std::memory_order_relaxed);
    }
  });

  const uint64_t frames_before = pool->frames_allocated();
  for (int round = 0; round < 1000; ++round) {
    // Present(home) -> Shared(s): home punched.
    const Hfn s = SingleFrame(pool.get(), kByte);
    ASSERT_TRUE(table->ShareReadOnly(Gfn(kGfn), s).ok());
    pool->Unref(s);
    // Shared(s) -> Swapped: s freed (punched, back to the pool).
    ASSERT_TRUE(table->Evict(Gfn(kGfn), 1, SaveNothing).ok());
    // Swapped -> Present(single frame r).
    const Hfn r = SingleFrame(pool.get(), kByte);
    ASSERT_TRUE(table->Restore(Gfn(kGfn), r).ok());
    // Present(r) -> Shared(s2): r freed.
    const Hfn s2 = SingleFrame(pool.get(), kByte);
    ASSERT_TRUE(table->ShareReadOnly(Gfn(kGfn), s2).ok());
    pool->Unref(s2);
    // Shared(s2) -> Present(home, copy): s2 freed.
    ASSERT_TRUE(table->BreakShare(Gfn(kGfn)).ok());
    // Now and then let the reader validate a read while nothing changes
    // (bounded: the reader may be descheduled).
    if (round % 50 == 49) {
      const uint64_t v = validated.load();
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      while (validated.load() == v && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    }
  }
  // And at the end, once for sure.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (validated.load() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0u) << "a validated read saw a frame that no longer backs the gfn";
  EXPECT_GT(validated.load(), 0u);
  EXPECT_EQ(pool->frames_allocated(), frames_before) << "single frames leaked";
  EXPECT_EQ(table->BackingSeq() % 2, 0u);
}

// --- HostPage and MakeAvailable per state ----------------------------------------

TEST(FrameTablePhys, HostPagePerState) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  uint8_t* home1 = table->Translate(Gfn(1));
  ASSERT_NE(home1, nullptr);
  EXPECT_EQ(table->HostPage(1, false), home1);
  EXPECT_EQ(table->HostPage(1, true), home1);
  EXPECT_EQ(table->HostPage(kHighGfn, true), table->Translate(Gfn(kHighGfn)));

  MakeShared(table.get(), 2, 0x22);
  const Hfn shared = table->Lookup(Gfn(2)).hfn();
  EXPECT_EQ(table->HostPage(2, false), pool->HostPtr(shared));
  EXPECT_EQ(table->HostPage(2, true), nullptr);

  ASSERT_TRUE(table->Discard(Gfn(3), 1, FrameTable::DiscardTo::kZero).ok());
  ASSERT_TRUE(table->Discard(Gfn(4), 1, FrameTable::DiscardTo::kUnbacked).ok());
  ASSERT_TRUE(table->Discard(Gfn(5), 1, FrameTable::DiscardTo::kBallooned).ok());
  ASSERT_TRUE(table->Evict(Gfn(6), 3, SaveNothing).ok());
  for (uint64_t gfn : {3, 4, 5, 6}) {
    EXPECT_EQ(table->HostPage(gfn, false), nullptr) << gfn;
    EXPECT_EQ(table->HostPage(gfn, true), nullptr) << gfn;
  }
  // Not RAM: the hole, beyond RAM, and absurd gfns from guest tables.
  for (uint64_t gfn : {kHoleGfn, kHighGfn + 256, uint64_t{1} << 40, ~uint64_t{0}}) {
    EXPECT_EQ(table->HostPage(gfn, false), nullptr) << gfn;
    EXPECT_EQ(table->MakeAvailable(gfn, false), BackingStatus::kNotRam) << gfn;
  }
}

TEST(FrameTablePhys, MakeAvailablePerState) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  SeqCheckingListener listener(table.get());
  table->RegisterInvalidationListener(&listener);
  const auto& c = table->counters();

  // Present: nothing to do, no listener.
  EXPECT_EQ(table->MakeAvailable(1, true), BackingStatus::kReady);
  EXPECT_EQ(listener.calls, 0);

  // Shared: a read leaves the share, a write breaks it.
  MakeShared(table.get(), 2, 0x22);
  const int after_share = listener.calls;
  EXPECT_EQ(table->MakeAvailable(2, false), BackingStatus::kReady);
  EXPECT_EQ(table->Lookup(Gfn(2)).state(), GfnState::kShared);
  EXPECT_EQ(listener.calls, after_share);
  EXPECT_EQ(table->MakeAvailable(2, true), BackingStatus::kReady);
  EXPECT_EQ(table->Lookup(Gfn(2)).state(), GfnState::kPresent);
  ASSERT_NE(table->HostPage(2, true), nullptr);
  EXPECT_TRUE(AllBytes(table->HostPage(2, true), kPageSize, 0x22));
  EXPECT_EQ(c.Get(FrameTableCounters::kMakeAvailableCowBreaks), 1u);

  // Zero and Unbacked: populated, read back zero.
  Fill(table->Translate(Gfn(3)), 0x33);
  ASSERT_TRUE(table->Discard(Gfn(3), 1, FrameTable::DiscardTo::kZero).ok());
  ASSERT_TRUE(table->Discard(Gfn(4), 1, FrameTable::DiscardTo::kUnbacked).ok());
  EXPECT_EQ(table->MakeAvailable(3, false), BackingStatus::kReady);
  EXPECT_EQ(table->MakeAvailable(4, true), BackingStatus::kReady);
  for (uint64_t gfn : {3, 4}) {
    EXPECT_EQ(table->Lookup(Gfn(gfn)).state(), GfnState::kPresent);
    EXPECT_TRUE(AllBytes(table->HostPage(gfn, true), kPageSize, 0)) << gfn;
  }
  EXPECT_EQ(c.Get(FrameTableCounters::kMakeAvailablePopulated), 2u);

  // Ballooned: populated zero-filled, and counted.
  Fill(table->Translate(Gfn(5)), 0x55);
  ASSERT_TRUE(table->Discard(Gfn(5), 1, FrameTable::DiscardTo::kBallooned).ok());
  EXPECT_EQ(table->MakeAvailable(5, false), BackingStatus::kReady);
  EXPECT_EQ(table->Lookup(Gfn(5)).state(), GfnState::kPresent);
  EXPECT_TRUE(AllBytes(table->HostPage(5, false), kPageSize, 0));
  EXPECT_EQ(c.Get(FrameTableCounters::kBalloonedTouched), 1u);

  // Swapped: no swap store yet, a counted failure; nothing changes.
  ASSERT_TRUE(table->Evict(Gfn(6), 3, SaveNothing).ok());
  const uint64_t seq = table->BackingSeq();
  const int calls = listener.calls;
  EXPECT_EQ(table->MakeAvailable(6, false), BackingStatus::kFailed);
  EXPECT_EQ(table->MakeAvailable(6, true), BackingStatus::kFailed);
  EXPECT_EQ(table->Lookup(Gfn(6)).state(), GfnState::kSwapped);
  EXPECT_EQ(table->BackingSeq(), seq);
  EXPECT_EQ(listener.calls, calls);
  EXPECT_EQ(c.Get(FrameTableCounters::kSwapInUnavailable), 2u);
  EXPECT_EQ(c.Get(FrameTableCounters::kMakeAvailableFailed), 2u);

  // Not RAM.
  EXPECT_EQ(table->MakeAvailable(kHoleGfn, true), BackingStatus::kNotRam);
  EXPECT_EQ(listener.even_during_call, 0);
  table->UnregisterInvalidationListener(&listener);
}

TEST(FrameTablePhys, NoteAccessIsTheInterfaceMethod) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  mmu::GuestPhysMemory& phys = *table;
  phys.NoteAccess(7, false);
  phys.NoteAccess(8, true);
  phys.NoteAccess(kHoleGfn, true);  // ignored
  std::vector<uint8_t> ad;
  ASSERT_TRUE(table->Harvest(Gfn(7), 2, &ad).ok());
  EXPECT_EQ(ad[0], FrameTable::kHarvestAccessed);
  EXPECT_EQ(ad[1], FrameTable::kHarvestAccessed | FrameTable::kHarvestDirty);
}

// --- Devices: GuestMemory with intent -----------------------------------------------

TEST(FrameTablePhys, DeviceWritesLandInAPrivateFrameAndReadBack) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  GuestMemory& mem = *table;
  MakeShared(table.get(), 20, 0x20);
  const Hfn shared = table->Lookup(Gfn(20)).hfn();
  pool->Ref(shared);  // a second "sharer": its contents must not change
  ASSERT_TRUE(table->Discard(Gfn(21), 1, FrameTable::DiscardTo::kZero).ok());
  ASSERT_TRUE(table->Discard(Gfn(22), 1, FrameTable::DiscardTo::kBallooned).ok());
  ASSERT_TRUE(table->Discard(Gfn(23), 1, FrameTable::DiscardTo::kUnbacked).ok());

  // HostPtr keeps its contract (Present only), but the pages are RAM.
  for (uint64_t gfn = 20; gfn < 24; ++gfn) {
    EXPECT_EQ(mem.HostPtr(base::GpaOf(Gfn(gfn)), 8), nullptr) << gfn;
    EXPECT_TRUE(mem.Accessible(base::GpaOf(Gfn(gfn)), kPageSize)) << gfn;
  }
  EXPECT_TRUE(mem.Accessible(Gpa(20 * kPageSize), 4 * kPageSize));
  EXPECT_FALSE(mem.Accessible(base::GpaOf(Gfn(kHoleGfn)), 1));
  EXPECT_FALSE(mem.Accessible(Gpa(255 * kPageSize), 2 * kPageSize));  // runs into the hole

  // One write across the four pages, 100 bytes into the first.
  std::vector<uint8_t> data(4 * kPageSize - 200);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 1);
  const Gpa at(20 * kPageSize + 100);
  ASSERT_TRUE(mem.Write(at, data.data(), data.size()));
  for (uint64_t gfn = 20; gfn < 24; ++gfn) {
    EXPECT_EQ(table->Lookup(Gfn(gfn)).state(), GfnState::kPresent) << gfn;
    EXPECT_NE(table->Lookup(Gfn(gfn)).hfn(), shared) << gfn;
  }
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(mem.Read(at, back.data(), back.size()));
  EXPECT_EQ(back, data);
  // The broken share kept its other bytes; the other sharer is untouched.
  EXPECT_TRUE(AllBytes(table->Translate(Gfn(20)), 100, 0x20));
  EXPECT_TRUE(AllBytes(pool->HostPtr(shared), kPageSize, 0x20));
  // Ballooned and Zero pages came back zero-filled outside the write.
  EXPECT_TRUE(AllBytes(table->Translate(Gfn(23)) + kPageSize - 100, 100, 0));
  EXPECT_EQ(table->counters().Get(FrameTableCounters::kBalloonedTouched), 1u);
  pool->Unref(shared);

  // HostPtrForWrite populates too; a write outside RAM or to a Swapped page fails.
  ASSERT_TRUE(table->Discard(Gfn(30), 1).ok());
  uint8_t* p = mem.HostPtrForWrite(Gpa(30 * kPageSize + 8), 8);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p, table->Translate(Gfn(30)) + 8);
  EXPECT_EQ(mem.HostPtrForWrite(base::GpaOf(Gfn(kHoleGfn)), 8), nullptr);
  ASSERT_TRUE(table->Evict(Gfn(31), 1, SaveNothing).ok());
  const uint64_t value = 42;
  EXPECT_FALSE(mem.WriteObj(Gpa(31 * kPageSize), value));
  EXPECT_EQ(table->Lookup(Gfn(31)).state(), GfnState::kSwapped);
  EXPECT_FALSE(mem.WriteObj(Gpa(~uint64_t{0} - 3), value));  // wraps
}

TEST(FrameTablePhys, DeviceReadsOfZeroPagesGiveZerosWithoutPopulating) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  GuestMemory& mem = *table;
  for (uint64_t gfn = 40; gfn < 44; ++gfn) Fill(table->Translate(Gfn(gfn)), 0xee);
  ASSERT_TRUE(table->Discard(Gfn(40), 1, FrameTable::DiscardTo::kZero).ok());
  ASSERT_TRUE(table->Discard(Gfn(41), 1, FrameTable::DiscardTo::kUnbacked).ok());
  ASSERT_TRUE(table->Discard(Gfn(42), 1, FrameTable::DiscardTo::kBallooned).ok());
  MakeShared(table.get(), 43, 0x43);
  auto resident = pool->ResidentFrames();
  ASSERT_TRUE(resident.ok());
  const uint64_t seq = table->BackingSeq();

  std::vector<uint8_t> buf(4 * kPageSize, 0x99);
  ASSERT_TRUE(mem.Read(Gpa(40 * kPageSize), buf.data(), buf.size()));
  EXPECT_TRUE(AllBytes(buf.data(), 3 * kPageSize, 0));
  EXPECT_TRUE(AllBytes(buf.data() + 3 * kPageSize, kPageSize, 0x43));
  // Nothing was populated or broken: same states, same residency, no change.
  EXPECT_EQ(table->Lookup(Gfn(40)).state(), GfnState::kZero);
  EXPECT_EQ(table->Lookup(Gfn(41)).state(), GfnState::kUnbacked);
  EXPECT_EQ(table->Lookup(Gfn(42)).state(), GfnState::kBallooned);
  EXPECT_EQ(table->Lookup(Gfn(43)).state(), GfnState::kShared);
  EXPECT_EQ(table->BackingSeq(), seq);
  auto resident_after = pool->ResidentFrames();
  ASSERT_TRUE(resident_after.ok());
  EXPECT_EQ(*resident_after, *resident);
  EXPECT_EQ(mem.HostPtrForRead(Gpa(40 * kPageSize + 16), 16)[0], 0);
  EXPECT_EQ(mem.HostPtrForRead(Gpa(40 * kPageSize + 16), kPageSize), nullptr);  // crosses a page

  // A Swapped page cannot be read (no swap store yet), outside RAM neither.
  ASSERT_TRUE(table->Evict(Gfn(44), 1, SaveNothing).ok());
  uint64_t word = 0;
  EXPECT_FALSE(mem.ReadObj(Gpa(44 * kPageSize), &word));
  EXPECT_FALSE(mem.ReadObj(base::GpaOf(Gfn(kHoleGfn)), &word));
}

// --- StrategyInvalidationListener ---------------------------------------------------

TEST(StrategyInvalidationListener, MapsReasons) {
  using L = StrategyInvalidationListener;
  EXPECT_EQ(L::ToGfnChange(InvalidationReason::kShare), mmu::GfnChange::kWriteProtect);
  EXPECT_EQ(L::ToGfnChange(InvalidationReason::kHarvest), mmu::GfnChange::kHarvest);
  for (InvalidationReason r : {InvalidationReason::kPopulate, InvalidationReason::kDiscard,
                               InvalidationReason::kBreakShare, InvalidationReason::kEvict,
                               InvalidationReason::kRestore}) {
    EXPECT_EQ(L::ToGfnChange(r), mmu::GfnChange::kBacking) << InvalidationReasonName(r);
  }
}

// Checks, when called after the strategy listener, that every vCPU synced.
class SyncedChecker : public InvalidationListener {
 public:
  explicit SyncedChecker(const mmu::PagingStrategy* s) : s_(s) {}
  void InvalidateGfns(Gfn, uint64_t, InvalidationReason) override {
    ++calls;
    if (!s_->AllVcpusSynced(s_->flush_generation())) ++unsynced;
  }
  std::atomic<int> calls{0};
  std::atomic<int> unsynced{0};

 private:
  const mmu::PagingStrategy* s_;
};

// A FrameTable verb on a page that a vCPU thread has in its soft TLB: once the
// verb returns, that vCPU's soft TLB no longer hits for it. The vCPU thread
// then touches the page again, which goes through MakeAvailable (populate,
// running the listeners on the vCPU thread while it is quiescent) and a
// write to a shared page breaks the share.
TEST(StrategyInvalidationListener, DiscardDropsTheVcpusSoftTlbEntryBeforeTheVerbReturns) {
  auto pool = MakePool();
  auto table = MakeTable(pool.get());
  auto strategy_or = cpu::NativeStrategy::Create(table.get(), {.max_vcpus = 2});
  ASSERT_TRUE(strategy_or.ok()) << strategy_or.status();
  cpu::NativeStrategy& strategy = **strategy_or;
  // The machine's kick: here it sets a flag the vCPU thread polls (a real
  // one interrupts the vCPU's run loop).
  std::atomic<int> kicks{0};
  std::atomic<bool> kicked{false};
  StrategyInvalidationListener listener(&strategy, [&] {
    kicks.fetch_add(1);
    kicked = true;
  });
  SyncedChecker checker(&strategy);
  table->RegisterInvalidationListener(&listener);
  table->RegisterInvalidationListener(&checker);

  constexpr uint64_t kGfn = 50, kGfn2 = 51;
  constexpr uint64_t kVa = kGfn * kPageSize, kVa2 = kGfn2 * kPageSize;
  Fill(table->Translate(Gfn(kGfn)), 0x50);
  MakeShared(table.get(), kGfn2, 0x51);

  mmu::SoftTlb tlb;
  mmu::VcpuMmu vcpu;
  vcpu.tlb = &tlb;
  vcpu.index = 0;
  vcpu.paging = false;  // linear = physical: no guest tables needed
  ASSERT_TRUE(strategy.AttachVcpu(&vcpu).ok());

  enum Phase : int { kStart, kFilled, kDiscarded, kDone };
  std::atomic<int> phase{kStart};
  std::atomic<bool> hit_before{false}, hit_after{true}, refilled_zero{false}, cow_ok{false};
  std::thread vcpu_thread([&] {
    strategy.LeaveQuiescence(vcpu);
    auto translate = [&](uint64_t va, mmu::Access access, mmu::TranslateOutcome* out) {
      mmu::AccessRequest req;
      req.va = va;
      req.access = access;
      for (int i = 0; i < 100; ++i) {
        const mmu::TranslateResult r = strategy.Translate(vcpu, req, out);
        if (r != mmu::TranslateResult::kRetry) return r;
        strategy.SyncInvalidations(vcpu);
      }
      return mmu::TranslateResult::kRetry;
    };
    mmu::TranslateOutcome out;
    if (translate(kVa, mmu::Access::kRead, &out) == mmu::TranslateResult::kFixed) {
      const uint8_t* hit = tlb.Lookup<mmu::Access::kRead>(mmu::SoftTlb::MmuIdx::kSupervisor, kVa, 8);
      hit_before = hit != nullptr && hit[0] == 0x50;
    }
    phase = kFilled;
    // The vCPU "runs" and syncs only when kicked out of its run loop, so
    // without the listener's kick-and-wait its soft TLB would keep the page.
    while (phase.load() != kDiscarded) {
      if (kicked.exchange(false)) strategy.SyncInvalidations(vcpu);
    }
    // No SyncInvalidations here: the verb returned, so the flush must
    // already have been applied.
    hit_after = tlb.Lookup<mmu::Access::kRead>(mmu::SoftTlb::MmuIdx::kSupervisor, kVa, 8) != nullptr;
    // Touch it again: MakeAvailable populates it (zero) on this thread.
    if (translate(kVa, mmu::Access::kRead, &out) == mmu::TranslateResult::kFixed) {
      refilled_zero = AllBytes(out.host_page, kPageSize, 0);
    }
    // A write to the shared page breaks the share through MakeAvailable.
    if (translate(kVa2, mmu::Access::kWrite, &out) == mmu::TranslateResult::kFixed) {
      cow_ok = out.host_page == table->HostPage(kGfn2, true) && AllBytes(out.host_page, kPageSize, 0x51);
    }
    mmu::PagingStrategy::EnterQuiescence(vcpu);
    phase = kDone;
  });

  while (phase.load() != kFilled) std::this_thread::yield();
  ASSERT_TRUE(table->Discard(Gfn(kGfn), 1).ok());
  EXPECT_EQ(checker.unsynced.load(), 0) << "the strategy listener returned before the vCPU synced";
  phase = kDiscarded;
  vcpu_thread.join();

  EXPECT_TRUE(hit_before.load());
  EXPECT_FALSE(hit_after.load()) << "the vCPU's soft TLB still hits for a discarded page";
  EXPECT_TRUE(refilled_zero.load());
  EXPECT_TRUE(cow_ok.load());
  EXPECT_GE(kicks.load(), 1);
  EXPECT_EQ(table->Lookup(Gfn(kGfn)).state(), GfnState::kPresent);
  EXPECT_EQ(table->Lookup(Gfn(kGfn2)).state(), GfnState::kPresent);
  EXPECT_EQ(checker.unsynced.load(), 0);
  EXPECT_GE(listener.counters().Get(StrategyListenerCounters::kInvalidations), 3u);
  strategy.DetachVcpu(&vcpu);
  table->UnregisterInvalidationListener(&checker);
  table->UnregisterInvalidationListener(&listener);
}

}  // namespace
}  // namespace vmm

// The test fixture shared by cpu/interpreter_test.cc (instruction-level tests)
// and cpu/system_test.cc (exceptions, privilege, system instructions): a 4 MiB
// fake guest memory whose 0x100000..0x400000 is identity-mapped by 4-level
// page tables, the native paging strategy, one vCPU and a scriptable
// CpuPlatform.
//
// It lives in a named namespace (not an anonymous one) because gtest requires
// every TEST_F of a suite to use the very same fixture class, and each test
// file that includes this header must see one type.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string_view>
#include <vector>

#include "base/check.h"
#include "cpu/interpreter.h"
#include "cpu/native_strategy.h"
#include "gtest/gtest.h"
#include "mmu/paging_mode.h"
#include "mmu/phys_memory.h"
#include "mmu/pte.h"
#include "mmu/soft_tlb.h"
#include "mmu/table_builder.h"
#include "tests/fakes/fake_guest_phys_memory.h"

namespace cpu::testing {

inline constexpr uint64_t kRamBytes = 4 << 20;
inline constexpr uint64_t kMapStart = 0x100000;
inline constexpr uint64_t kMapEnd = 0x400000;
inline constexpr uint64_t kCode = 0x200000;
inline constexpr uint64_t kData = 0x280000;
inline constexpr uint64_t kData2 = 0x290000;
inline constexpr uint64_t kReadOnly = 0x2f0000;
inline constexpr uint64_t kStackTop = 0x300000;
inline constexpr uint64_t kMmio = 0x3f0000;

enum Reg { kRax, kRcx, kRdx, kRbx, kRsp, kRbp, kRsi, kRdi, kR8, kR9, kR10, kR11, kR12, kR13, kR14, kR15 };

// Records every access. By default it answers at once (each IN reads
// in_value, which then counts up so a sequence of reads is told apart; MMIO
// reads mmio_value); the exit_on_* switches make it answer
// IoStatus::kExit instead, as the soft backend's vCPU does for devices that
// live in the VMM. It also plays the interrupt controller (pending: the
// vector PendingInterrupt offers, cleared when acknowledged), holds extra
// MSRs (`msrs`: those that exist; writes to others are refused) and CR8.
class FakePlatform : public CpuPlatform {
 public:
  struct Io {
    uint64_t where;
    uint8_t size;
    uint64_t data;
  };

  IoStatus PortIn(uint16_t port, uint8_t size, uint32_t* data) noexcept override {
    ins.push_back({port, size, 0});
    *data = in_value++;
    // The value just handed out is not what an exit's caller sees: it must
    // come back through CompleteIoRead.
    return exit_on_in ? IoStatus::kExit : IoStatus::kDone;
  }
  IoStatus PortOut(uint16_t port, uint8_t size, uint32_t data) noexcept override {
    outs.push_back({port, size, data});
    return exit_on_out ? IoStatus::kExit : IoStatus::kDone;
  }
  IoStatus MmioRead(uint64_t gpa, uint8_t size, uint64_t* data) noexcept override {
    mmio_reads.push_back({gpa, size, 0});
    *data = mmio_value;
    return exit_on_mmio_read ? IoStatus::kExit : IoStatus::kDone;
  }
  IoStatus MmioWrite(uint64_t gpa, uint8_t size, uint64_t data) noexcept override {
    mmio_writes.push_back({gpa, size, data});
    return exit_on_mmio_write ? IoStatus::kExit : IoStatus::kDone;
  }
  bool ReadMsr(uint32_t msr, uint64_t* value) noexcept override {
    auto it = msrs.find(msr);
    if (it == msrs.end()) return false;
    *value = it->second;
    return true;
  }
  bool WriteMsr(uint32_t msr, uint64_t value) noexcept override {
    auto it = msrs.find(msr);
    if (it == msrs.end()) return false;
    it->second = value;
    return true;
  }
  int PendingInterrupt() noexcept override {
    ++pending_queries;
    return pending;
  }
  void AcknowledgeInterrupt(uint8_t vector) noexcept override {
    acked.push_back(vector);
    pending = -1;
  }
  uint8_t ReadCr8() noexcept override { return cr8; }
  void WriteCr8(uint8_t value) noexcept override {
    cr8_writes.push_back(value);
    cr8 = value;
  }

  std::vector<Io> ins, outs, mmio_reads, mmio_writes;
  uint32_t in_value = 0x5a;
  uint64_t mmio_value = 0xabcd;
  bool exit_on_in = false, exit_on_out = false;
  bool exit_on_mmio_read = false, exit_on_mmio_write = false;
  std::map<uint32_t, uint64_t> msrs;
  int pending = -1;
  int pending_queries = 0;
  std::vector<uint8_t> acked;
  uint8_t cr8 = 0;
  std::vector<uint8_t> cr8_writes;
};

class InterpreterTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kRw = mmu::pte::kPresent | mmu::pte::kWritable |
                                  mmu::pte::kAccessed | mmu::pte::kDirty;

  InterpreterTest() : flat_(kRamBytes), mem_(flat_), tables_(flat_, 4) {
    for (uint64_t va = kMapStart; va < kMapEnd; va += 4096) {
      const uint64_t flags = va == kReadOnly ? (kRw & ~mmu::pte::kWritable) : kRw;
      CHECK(tables_.Map(va, va, mmu::PageSize::k4K, flags));
    }
    mem_.SetStateQuietly(kMmio >> 12, mmu::testing::FakeGuestPhysMemory::State::kMmio);
    auto s = NativeStrategy::Create(&mem_, {.max_vcpus = 1});
    CHECK(s.ok());
    strategy_ = std::move(*s);
    vcpu_.tlb = &tlb_;
    vcpu_.cr3 = tables_.root();
    CHECK(strategy_->AttachVcpu(&vcpu_).ok());
    strategy_->LeaveQuiescence(vcpu_);
    state_.cr3 = tables_.root();
    state_.rip = kCode;
    state_.gpr[kRsp] = kStackTop;
    interp_ = std::make_unique<Interpreter>(&state_, &vcpu_, strategy_.get(), &platform_);
  }
  ~InterpreterTest() override { strategy_->DetachVcpu(&vcpu_); }

  uint8_t* Host(uint64_t gpa) { return mem_.FlatPage(gpa >> 12) + (gpa & 0xfff); }
  void Poke(uint64_t gpa, const void* src, size_t n) {
    for (size_t i = 0; i < n; ++i) *Host(gpa + i) = static_cast<const uint8_t*>(src)[i];
  }
  void Poke64(uint64_t gpa, uint64_t v) { Poke(gpa, &v, 8); }
  void Peek(uint64_t gpa, void* dst, size_t n) {
    for (size_t i = 0; i < n; ++i) static_cast<uint8_t*>(dst)[i] = *Host(gpa + i);
  }
  uint64_t Peek64(uint64_t gpa) {
    uint64_t v;
    Peek(gpa, &v, 8);
    return v;
  }
  void Load(const uint8_t* begin, const uint8_t* end, uint64_t at = kCode) {
    Poke(at, begin, static_cast<size_t>(end - begin));
    state_.rip = at;
  }
  RunResult RunToHalt(uint64_t budget = 1'000'000) {
    RunResult r = interp_->Run(budget);
    EXPECT_EQ(r.reason, StopReason::kHalt) << "stopped at rip " << std::hex << state_.rip;
    return r;
  }
  uint64_t Counter(std::string_view name) {
    uint64_t v = 0;
    interp_->counters().ForEach([&](std::string_view n, uint64_t value) {
      if (n == name) v = value;
    });
    return v;
  }

  mmu::FlatMemory flat_;
  mmu::testing::FakeGuestPhysMemory mem_;
  mmu::TableBuilder<mmu::FlatMemory> tables_;
  std::unique_ptr<NativeStrategy> strategy_;
  mmu::SoftTlb tlb_;
  mmu::VcpuMmu vcpu_;
  CpuState state_;
  FakePlatform platform_;
  std::unique_ptr<Interpreter> interp_;
};

}  // namespace cpu::testing

// The device bus: port I/O and MMIO dispatch to device models.
//
// Both backends (kvm and soft) hand every port access and every access to the
// MMIO hole to one IoBus per VM, so every device works unchanged on both.
// Devices register a range; an access is routed to the device whose range
// contains the whole access, with the offset into that range. An access that
// hits no device (or straddles a range's end, or has a width other than 1, 2,
// 4 or 8 bytes) is counted and ignored: reads return all ones, as on a PC
// where nobody drives the bus.
//
// Cost: dispatch is a binary search over a sorted vector of ranges plus one
// virtual call; it allocates nothing and takes no lock.
//
// Thread safety: Register happens before any vCPU runs (it is not safe to call
// concurrently with dispatch). Dispatch may be called from any vCPU thread
// concurrently; each device serialises its own state (most take a mutex).
// Each vCPU passes its own BusCounters block (counter blocks are single-writer);
// the overloads without a block count into the bus's own block and are meant
// for tests and single-threaded callers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "base/counters.h"

namespace vmm {

// A device model on the bus. Offsets are relative to the registered base.
// `data` holds `size` bytes (1, 2, 4 or 8), little-endian; `offset + size` never
// exceeds the registered length. Read must fill all `size` bytes.
//
// Called concurrently from several vCPU threads: implementations serialise
// their own state. Guest input: offset, size and data are guest-controlled
// (within the registered range); a device must treat any value as possible.
class BusDevice {
 public:
  virtual ~BusDevice() = default;
  virtual std::string_view name() const = 0;
  virtual void Read(uint64_t offset, uint8_t* data, uint32_t size) = 0;
  virtual void Write(uint64_t offset, const uint8_t* data, uint32_t size) = 0;
};

#define VMM_BUS_COUNTERS(X)          \
  X(PioReads, pio_reads)             \
  X(PioWrites, pio_writes)           \
  X(MmioReads, mmio_reads)           \
  X(MmioWrites, mmio_writes)         \
  X(UnclaimedPio, unclaimed_pio)     \
  X(UnclaimedMmio, unclaimed_mmio)
BASE_DEFINE_COUNTERS(BusCounters, VMM_BUS_COUNTERS);

class IoBus {
 public:
  enum class Space : uint8_t { kPio, kMmio };

  // One registered range, for reports and tests.
  struct RangeInfo {
    Space space;
    uint64_t base;
    uint64_t length;
    std::string device_name;
  };

  IoBus() = default;
  IoBus(const IoBus&) = delete;
  IoBus& operator=(const IoBus&) = delete;

  // Registers `device` for [base, base + length) in `space`. InvalidArgument for
  // a null device, an empty range, a range that wraps past 2^64 or (PIO) leaves
  // the 64 KiB port space; AlreadyExists on an overlap with a registered range.
  // Not thread-safe: only before vCPUs run.
  absl::Status Register(Space space, uint64_t base, uint64_t length,
                        std::shared_ptr<BusDevice> device);

  // Dispatch. Returns false if no device claims the access (reads then fill
  // `data` with 0xff). Counts into the bus's own block: single-threaded use.
  bool Read(Space space, uint64_t addr, uint8_t* data, uint32_t size) noexcept;
  bool Write(Space space, uint64_t addr, const uint8_t* data, uint32_t size) noexcept;

  // Dispatch from a vCPU thread, counting into that vCPU's own block.
  bool Read(Space space, uint64_t addr, uint8_t* data, uint32_t size,
            BusCounters* counters) noexcept;
  bool Write(Space space, uint64_t addr, const uint8_t* data, uint32_t size,
             BusCounters* counters) noexcept;

  // The device whose range contains [addr, addr + size), or nullptr.
  BusDevice* DeviceAt(Space space, uint64_t addr, uint32_t size = 1) const noexcept;

  // Every registered range, PIO first, each space sorted by base.
  std::vector<RangeInfo> Ranges() const;

  // The bus's own block (the overloads without a counters argument).
  const BusCounters& counters() const { return counters_; }

 private:
  struct Range {
    uint64_t base;
    uint64_t length;
    std::shared_ptr<BusDevice> device;
  };
  // The range that wholly contains [addr, addr + size), or nullptr.
  const Range* Find(Space space, uint64_t addr, uint32_t size) const noexcept;
  const std::vector<Range>& RangesOf(Space space) const {
    return space == Space::kPio ? pio_ : mmio_;
  }

  std::vector<Range> pio_;   // sorted by base, non-overlapping
  std::vector<Range> mmio_;  // sorted by base, non-overlapping
  BusCounters counters_;
};

}  // namespace vmm

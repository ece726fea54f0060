// The paravirtual memory doorbell: lets the guest kernel ask the VMM to zero
// or copy whole guest frames (guest/abi.h ports 0x710..0x71b; enabled by the
// guest::kBootFlagPvMem boot flag). On the PVM host a guest kernel zeroes a
// page in about 250 us and copies one in about 0.5 ms, while one port exit
// costs about 10 us (docs/platform.md), so this is a large win there.
//
//   out 0x710 <- gfn        zero frame gfn
//   out 0x714 <- gfn        latch the copy source
//   out 0x718 <- gfn        copy the latched source frame to gfn
//
// Guest input: every gfn is checked through GuestMemory; a bad gfn, or a
// copy without a latched source, is counted and ignored.
//
// Thread safety: the latch is per device; the guest kernel issues a
// latch/copy pair from one CPU (ours has one vCPU). A mutex keeps it sane.
#pragma once

#include <cstdint>
#include <mutex>
#include <string_view>

#include "base/counters.h"
#include "vmm-host/guest_memory.h"
#include "vmm-host/io_bus.h"

namespace vmm {

#define VMM_PV_MEM_COUNTERS(X) \
  X(Zeroed, frames_zeroed)     \
  X(Copied, frames_copied)     \
  X(BadGfn, bad_gfn)           \
  X(BadAccess, bad_access)
BASE_DEFINE_COUNTERS(PvMemCounters, VMM_PV_MEM_COUNTERS);

class PvMemDevice final : public BusDevice {
 public:
  static constexpr uint16_t kBasePort = 0x710;
  static constexpr uint64_t kPorts = 12;

  explicit PvMemDevice(GuestMemory& memory) : memory_(memory) {}

  std::string_view name() const override { return "pv-mem"; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override;
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override;

  const PvMemCounters& counters() const { return counters_; }

 private:
  uint8_t* Frame(uint64_t gfn);
  const uint8_t* SourceFrame(uint64_t gfn);

  GuestMemory& memory_;
  std::mutex mu_;
  bool have_source_ = false;
  uint64_t source_gfn_ = 0;
  PvMemCounters counters_;
};

}  // namespace vmm

// RamFaultHandler: makes a KVM guest's touches of discarded RAM visible to
// the FrameTable, through userfaultfd.
//
// Under KVM the guest reaches its RAM through the memslot, a window on the
// frame pool's memfd mapping; a discarded page (the balloon's, free page
// reporting's) is a punched hole there. Without help a guest touch of such a
// page faults straight into the memfd: the kernel hands out a zero page and
// the table never learns that the gfn is backed again, so its state (and the
// balloon's count of touched pages) goes stale. The soft backend has no such
// gap: its vCPUs reach non-Present pages through FrameTable::MakeAvailable.
//
// This handler closes it the way QEMU's postcopy does: userfaultfd in
// MISSING mode on the guest RAM that may hold holes. It is the table's
// InvalidationListener; before a Discard punches gfns it registers the 2 MiB
// chunks of the mapping that cover them (registration splits the mapping's
// VMA, so chunks bound their number: one per 2 MiB at most, and adjacent
// chunks merge again). Pages that are never discarded never pay for a
// fault round trip (about 40 us here, docs/platform.md).
//
// A fault on a registered page (from a vCPU's KVM_RUN, or a VMM thread that
// touches guest RAM) is served on the handler's own thread:
//   - the gfn's state is read lock-free; if it has no memory behind it
//     (Ballooned, Zero, Unbacked), FrameTable::MakeAvailable makes it Present
//     and counts it (ballooned_touched for a page still in the balloon; the
//     balloon device counts deflated pages touched);
//   - UFFDIO_ZEROPAGE then maps a zeroed page, which wakes the faulting
//     thread: the guest reads zeros, as QEMU/Linux give it.
// Other states (a Present page of a registered chunk whose frame was never
// written) get the zero page alone, which is what the memfd holds anyway.
//
// Deadlock freedom: MakeAvailable takes the table's verb mutex, so no thread
// may fault on a Ballooned/Zero/Unbacked page while it holds that mutex.
// None does: verbs read only Present or Shared frames, and listeners read
// no guest memory.
//
// Lifetime: Create registers the listener and starts the thread; the
// destructor unregisters, stops the thread and closes the userfaultfd, which
// drops every registration and wakes any thread still waiting (it then
// faults in the ordinary way). Destroy it only after the VM's vCPUs stopped,
// and before the table.
//
// Thread safety: InvalidateGfns runs on the verb's thread under the table's
// mutex; the fault thread is internal; counters are readable anywhere (the
// chunk counters are written by the verb's thread, the others by the fault
// thread).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "base/addr.h"
#include "base/counters.h"
#include "vmm-host/frame_table.h"

namespace vmm {

#define VMM_RAM_FAULT_COUNTERS(X)                                                  \
  X(Faults, faults)                   /* page faults read from the userfaultfd */ \
  X(Repopulated, repopulated)         /* of which made Present in the table */    \
  X(ZeroFills, zero_fills)            /* UFFDIO_ZEROPAGE that mapped a page */    \
  X(Wakes, wakes)                     /* already mapped (a racing fault): woken */ \
  X(ChunksRegistered, chunks_registered) /* 2 MiB chunks under userfaultfd */     \
  X(RegisterErrors, register_errors)  /* chunks left unregistered (logged) */     \
  X(Errors, errors)                   /* faults not served at once (logged) */
BASE_DEFINE_COUNTERS(RamFaultCounters, VMM_RAM_FAULT_COUNTERS);

class RamFaultHandler final : public InvalidationListener {
 public:
  static constexpr uint64_t kChunkBytes = 2 << 20;

  // Opens a userfaultfd (with MISSING faults on shared memory), registers
  // with `table` and starts the fault thread. Fails with Unavailable and
  // the reason (no userfaultfd in this kernel, not permitted, no shmem
  // support) where the host cannot do it; the caller decides whether to run
  // without. `table` must outlive the handler.
  static absl::StatusOr<std::unique_ptr<RamFaultHandler>> Create(FrameTable* table);
  ~RamFaultHandler() override;
  RamFaultHandler(const RamFaultHandler&) = delete;
  RamFaultHandler& operator=(const RamFaultHandler&) = delete;

  // InvalidationListener: kDiscard registers the chunks covering the gfns.
  void InvalidateGfns(base::Gfn first, uint64_t count, InvalidationReason reason) override;

  const RamFaultCounters& counters() const { return counters_; }

 private:
  struct Range {
    RamMapping mapping;
    uint64_t first_gfn = 0;
    std::vector<bool> registered;  // per 2 MiB chunk of the mapping
  };

  RamFaultHandler(FrameTable* table, int uffd, int stop_fd);
  void Run();
  void Serve(uint64_t address, bool write);
  // The gfn whose frame is at host `address`, or nullopt outside guest RAM.
  std::optional<base::Gfn> GfnAt(uint64_t address) const;

  FrameTable* const table_;
  const int uffd_;
  const int stop_fd_;  // an eventfd: written to stop the thread
  std::vector<Range> ranges_;  // chunk bits written under the table's mutex
  RamFaultCounters counters_;
  std::thread thread_;
};

}  // namespace vmm

// DebugExit: QEMU's isa-debug-exit device (iobase 0xf4, iosize 4), which lets
// a guest end the VM with an exit code.
//
// A write of value v (any width up to 4 bytes; the bytes written, zero-extended)
// records "the guest requested exit with code v" and calls the exit callback,
// which the VMM uses to stop that VM's vCPUs. Like QEMU, the VMM reports the
// process-style status (v << 1) | 1 (StatusFor), so a guest can never make the
// run look like a plain success (status 0). Reads return 0.
//
// Only the first request counts: later writes (another vCPU racing, a guest
// that keeps writing) are counted and otherwise ignored, and the callback runs
// exactly once.
//
// Thread safety: any thread. The callback runs on the writing vCPU's thread,
// without any lock held, and may call back into this object.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <utility>

#include "vmm-host/io_bus.h"

namespace vmm {

class DebugExit final : public BusDevice {
 public:
  static constexpr uint16_t kPort = 0xf4;
  static constexpr uint64_t kRegisterBytes = 4;

  using ExitCallback = std::function<void(uint32_t code)>;
  explicit DebugExit(ExitCallback on_exit = nullptr) : on_exit_(std::move(on_exit)) {}

  // The process exit status QEMU gives for code v: ((v << 1) | 1), truncated to
  // the 8 bits a process status has (as waitpid would see QEMU's).
  static constexpr int StatusFor(uint32_t code) {
    return static_cast<int>(((uint64_t{code} << 1) | 1) & 0xff);
  }

  std::string_view name() const override { return "debug-exit"; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override;
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override;

  // The code of the first exit request, if the guest made one.
  std::optional<uint32_t> exit_code() const;
  // StatusFor(exit_code()), if the guest requested an exit.
  std::optional<int> exit_status() const;
  // Writes after the first (ignored).
  uint64_t extra_writes() const { return extra_writes_.load(std::memory_order_relaxed); }

 private:
  const ExitCallback on_exit_;
  // Bit 32 set: a code was recorded; bits 31..0: the code. One word so that
  // "first writer wins" is one compare-exchange.
  std::atomic<uint64_t> state_{0};
  std::atomic<uint64_t> extra_writes_{0};
};

}  // namespace vmm

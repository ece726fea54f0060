#include "vmm-host/debug_exit.h"

#include <cstring>

#include "base/log.h"

namespace vmm {
namespace {
constexpr uint64_t kRecorded = uint64_t{1} << 32;
}  // namespace

void DebugExit::Read(uint64_t, uint8_t* data, uint32_t size) { std::memset(data, 0, size); }

void DebugExit::Write(uint64_t offset, const uint8_t* data, uint32_t size) {
  // Guest input: any offset and width; the value is the bytes written, zero-extended
  // (QEMU passes the access's value to exit()). The bus keeps offset + size <= 4.
  uint32_t code = 0;
  const uint32_t n = size < 4 ? size : 4;
  for (uint32_t i = 0; i < n; ++i) code |= uint32_t{data[i]} << (8 * i);
  (void)offset;
  uint64_t expected = 0;
  if (!state_.compare_exchange_strong(expected, kRecorded | code, std::memory_order_acq_rel)) {
    extra_writes_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  LOG(INFO) << "debug-exit: guest requested exit with code " << code << " (status "
            << StatusFor(code) << ")";
  if (on_exit_) on_exit_(code);
}

std::optional<uint32_t> DebugExit::exit_code() const {
  const uint64_t s = state_.load(std::memory_order_acquire);
  if ((s & kRecorded) == 0) return std::nullopt;
  return static_cast<uint32_t>(s);
}

std::optional<int> DebugExit::exit_status() const {
  const std::optional<uint32_t> code = exit_code();
  if (!code) return std::nullopt;
  return StatusFor(*code);
}

}  // namespace vmm

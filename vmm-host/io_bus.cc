#include "vmm-host/io_bus.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace vmm {
namespace {

constexpr uint64_t kPioSpaceBytes = 0x10000;

bool ValidAccessSize(uint32_t size) { return size == 1 || size == 2 || size == 4 || size == 8; }

}  // namespace

absl::Status IoBus::Register(Space space, uint64_t base, uint64_t length,
                             std::shared_ptr<BusDevice> device) {
  if (device == nullptr) return absl::InvalidArgumentError("IoBus::Register: null device");
  if (length == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("IoBus::Register(%s): empty range at 0x%x", device->name(), base));
  }
  if (length - 1 > UINT64_MAX - base) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IoBus::Register(%s): range 0x%x+0x%x wraps", device->name(), base, length));
  }
  if (space == Space::kPio && (base >= kPioSpaceBytes || length > kPioSpaceBytes - base)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IoBus::Register(%s): ports 0x%x+0x%x leave the 64 KiB port space", device->name(), base,
        length));
  }
  std::vector<Range>& ranges = space == Space::kPio ? pio_ : mmio_;
  // First range starting after `base`; the one before it (if any) must end at
  // or before `base`, and this one must start at or after our end.
  auto next = std::upper_bound(ranges.begin(), ranges.end(), base,
                               [](uint64_t b, const Range& r) { return b < r.base; });
  const uint64_t last = base + (length - 1);  // Inclusive end: no overflow.
  const Range* clash = nullptr;
  if (next != ranges.begin()) {
    const Range& prev = *(next - 1);
    if (prev.base + (prev.length - 1) >= base) clash = &prev;
  }
  if (clash == nullptr && next != ranges.end() && next->base <= last) clash = &*next;
  if (clash != nullptr) {
    return absl::AlreadyExistsError(absl::StrFormat(
        "IoBus::Register(%s): %s 0x%x+0x%x overlaps %s at 0x%x+0x%x", device->name(),
        space == Space::kPio ? "ports" : "mmio", base, length, clash->device->name(), clash->base,
        clash->length));
  }
  ranges.insert(next, Range{base, length, std::move(device)});
  return absl::OkStatus();
}

const IoBus::Range* IoBus::Find(Space space, uint64_t addr, uint32_t size) const noexcept {
  const std::vector<Range>& ranges = RangesOf(space);
  auto next = std::upper_bound(ranges.begin(), ranges.end(), addr,
                               [](uint64_t a, const Range& r) { return a < r.base; });
  if (next == ranges.begin()) return nullptr;
  const Range& r = *(next - 1);
  // Guest input: addr and size come from the exit; the check is overflow-safe
  // (offset < length, then size <= length - offset).
  const uint64_t offset = addr - r.base;
  if (offset >= r.length || size > r.length - offset) return nullptr;
  return &r;
}

BusDevice* IoBus::DeviceAt(Space space, uint64_t addr, uint32_t size) const noexcept {
  const Range* r = Find(space, addr, size);
  return r == nullptr ? nullptr : r->device.get();
}

bool IoBus::Read(Space space, uint64_t addr, uint8_t* data, uint32_t size) noexcept {
  return Read(space, addr, data, size, &counters_);
}

bool IoBus::Write(Space space, uint64_t addr, const uint8_t* data, uint32_t size) noexcept {
  return Write(space, addr, data, size, &counters_);
}

bool IoBus::Read(Space space, uint64_t addr, uint8_t* data, uint32_t size,
                 BusCounters* counters) noexcept {
  const bool pio = space == Space::kPio;
  counters->Inc(pio ? BusCounters::kPioReads : BusCounters::kMmioReads);
  const Range* r = ValidAccessSize(size) ? Find(space, addr, size) : nullptr;
  if (r == nullptr) [[unlikely]] {
    counters->Inc(pio ? BusCounters::kUnclaimedPio : BusCounters::kUnclaimedMmio);
    std::memset(data, 0xff, size);
    return false;
  }
  r->device->Read(addr - r->base, data, size);
  return true;
}

bool IoBus::Write(Space space, uint64_t addr, const uint8_t* data, uint32_t size,
                  BusCounters* counters) noexcept {
  const bool pio = space == Space::kPio;
  counters->Inc(pio ? BusCounters::kPioWrites : BusCounters::kMmioWrites);
  const Range* r = ValidAccessSize(size) ? Find(space, addr, size) : nullptr;
  if (r == nullptr) [[unlikely]] {
    counters->Inc(pio ? BusCounters::kUnclaimedPio : BusCounters::kUnclaimedMmio);
    return false;
  }
  r->device->Write(addr - r->base, data, size);
  return true;
}

std::vector<IoBus::RangeInfo> IoBus::Ranges() const {
  std::vector<RangeInfo> out;
  for (Space space : {Space::kPio, Space::kMmio}) {
    for (const Range& r : RangesOf(space)) {
      out.push_back({space, r.base, r.length, std::string(r.device->name())});
    }
  }
  return out;
}

}  // namespace vmm

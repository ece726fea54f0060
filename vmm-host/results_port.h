// ResultsPort: the guest's results protocol (guest/abi.h, guest/kernel/proc.cc
// PublishResult), collecting named 64-bit results per VM in order.
//
// The guest kernel publishes one result as 32-bit `out` writes:
//   0x700 (kResultsNamePort)       4 name bytes per write, little-endian, as many
//                                   writes as the name needs (NUL-padded to a
//                                   multiple of 4; at most kResultsMaxNameBytes)
//   0x704 (kResultsValueLowPort)   value bits 31..0
//   0x708 (kResultsValueHighPort)  value bits 63..32, and commits the record
// The name is the bytes up to the first NUL ("workload.key").
//
// A hostile guest cannot exhaust host memory: names longer than
// kMaxNameBytes are truncated, at most `max_results` records are kept, and
// every malformed or excess record is counted (name_truncated, empty_name,
// bad_access, dropped). Non-printable name bytes become '?', so names are safe
// to print and to put in reports.
//
// The protocol state is per VM, not per vCPU: the guest kernel publishes from
// one CPU at a time (its results path runs with interrupts off on CPU 0). Two
// vCPUs interleaving writes would mix their records, never break the host.
//
// Thread safety: any thread. The result callback runs under the port's lock on
// the committing vCPU's thread and must not call back into this object.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "base/counters.h"
#include "guest/abi.h"
#include "vmm-host/io_bus.h"

namespace vmm {

#define VMM_RESULTS_COUNTERS(X)        \
  X(Results, results)                  \
  X(Dropped, dropped)                  \
  X(NameTruncated, name_truncated)     \
  X(EmptyName, empty_name)             \
  X(BadAccess, bad_access)
BASE_DEFINE_COUNTERS(ResultsCounters, VMM_RESULTS_COUNTERS);

struct GuestResult {
  std::string name;
  uint64_t value = 0;
  bool operator==(const GuestResult&) const = default;
};

struct ResultsPortOptions {
  size_t max_results = 4096;
  // Called for each committed (kept) result, under the port's lock.
  std::function<void(const GuestResult&)> on_result;
};

class ResultsPort final : public BusDevice {
 public:
  static constexpr uint16_t kBasePort = guest::kResultsNamePort;  // 0x700
  static constexpr uint64_t kRegisterBytes = 12;                 // 0x700..0x70b
  static constexpr uint64_t kNameOffset = guest::kResultsNamePort - kBasePort;
  static constexpr uint64_t kValueLowOffset = guest::kResultsValueLowPort - kBasePort;
  static constexpr uint64_t kValueHighOffset = guest::kResultsValueHighPort - kBasePort;
  static constexpr size_t kMaxNameBytes = guest::kResultsMaxNameBytes;

  explicit ResultsPort(ResultsPortOptions options = {}) : options_(std::move(options)) {}

  // BusDevice. Only aligned 32-bit writes are part of the protocol; anything
  // else is counted (bad_access) and ignored. Reads return 0.
  std::string_view name() const override { return "results"; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override;
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override;

  // The kept results, in commit order.
  std::vector<GuestResult> results() const;
  // The value of the last result called `name`, if any.
  std::optional<uint64_t> Find(std::string_view name) const;
  ResultsCounters counters() const;

 private:
  void CommitLocked(uint32_t high) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ResultsPortOptions options_;
  mutable absl::Mutex mu_;
  char name_[kMaxNameBytes] ABSL_GUARDED_BY(mu_) = {};
  size_t name_len_ ABSL_GUARDED_BY(mu_) = 0;
  bool name_truncated_ ABSL_GUARDED_BY(mu_) = false;
  uint32_t low_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<GuestResult> results_ ABSL_GUARDED_BY(mu_);
  ResultsCounters counters_;  // Written under mu_ only.
};

}  // namespace vmm

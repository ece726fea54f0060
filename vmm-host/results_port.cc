#include "vmm-host/results_port.h"

#include <cstring>
#include <utility>

#include "base/log.h"

namespace vmm {

void ResultsPort::Read(uint64_t, uint8_t* data, uint32_t size) { std::memset(data, 0, size); }

void ResultsPort::Write(uint64_t offset, const uint8_t* data, uint32_t size) {
  absl::MutexLock lock(&mu_);
  // Guest input: only whole, aligned 32-bit registers take part in the protocol.
  if (size != 4 || offset % 4 != 0) {
    counters_.Inc(ResultsCounters::kBadAccess);
    return;
  }
  uint32_t word;
  std::memcpy(&word, data, 4);
  switch (offset) {
    case kNameOffset:
      for (int i = 0; i < 4; ++i) {
        // Guest input: a name longer than kMaxNameBytes is cut, never grown.
        if (name_len_ == kMaxNameBytes) {
          if (!name_truncated_) counters_.Inc(ResultsCounters::kNameTruncated);
          name_truncated_ = true;
          break;
        }
        name_[name_len_++] = static_cast<char>(word >> (8 * i));
      }
      break;
    case kValueLowOffset:
      low_ = word;
      break;
    case kValueHighOffset:
      CommitLocked(word);
      break;
    default:
      counters_.Inc(ResultsCounters::kBadAccess);
      break;
  }
}

void ResultsPort::CommitLocked(uint32_t high) {
  GuestResult result;
  result.value = (uint64_t{high} << 32) | low_;
  size_t len = 0;
  while (len < name_len_ && name_[len] != 0) ++len;
  result.name.assign(name_, len);
  for (char& c : result.name) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  // The next record starts from scratch whatever happens to this one.
  name_len_ = 0;
  name_truncated_ = false;
  low_ = 0;

  if (result.name.empty()) {
    counters_.Inc(ResultsCounters::kEmptyName);
    return;
  }
  if (results_.size() >= options_.max_results) {
    if (counters_.Get(ResultsCounters::kDropped) == 0) {
      LOG(WARNING) << "results: more than " << options_.max_results
                   << " results from the guest; dropping the rest";
    }
    counters_.Inc(ResultsCounters::kDropped);
    return;
  }
  counters_.Inc(ResultsCounters::kResults);
  results_.push_back(std::move(result));
  if (options_.on_result) options_.on_result(results_.back());
}

std::vector<GuestResult> ResultsPort::results() const {
  absl::MutexLock lock(&mu_);
  return results_;
}

std::optional<uint64_t> ResultsPort::Find(std::string_view name) const {
  absl::MutexLock lock(&mu_);
  for (auto it = results_.rbegin(); it != results_.rend(); ++it) {
    if (it->name == name) return it->value;
  }
  return std::nullopt;
}

ResultsCounters ResultsPort::counters() const { return counters_; }

}  // namespace vmm

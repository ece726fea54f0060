// Named event counters.
//
// Every layer counts its events (shadow faults, TLB misses, exits by reason,
// pages shared, ...) so that a run can report them. A layer declares its
// counters once, with an X-macro list of (EnumName, report_name):
//
//   #define SHADOW_COUNTERS(X) X(PfFixed, pf_fixed) X(PfGuest, pf_guest)
//   BASE_DEFINE_COUNTERS(ShadowCounters, SHADOW_COUNTERS);
//
// which yields `enum class ShadowCounters::Id { kPfFixed, kPfGuest }` and a
// block type with one 64-bit slot per counter:
//
//   ShadowCounters counters;
//   counters.Inc(ShadowCounters::kPfFixed);       // the hot-path operation
//   counters.Get(ShadowCounters::kPfFixed);
//   counters.ForEach([](std::string_view name, uint64_t value) {...});
//
// Cost: Inc/Add is one relaxed load, an add and one relaxed store to a slot
// owned by this block; no lock prefix, no fence, no branch, no call.
//
// Thread safety: single writer, many readers. Each block is written by the one
// thread that owns it (a vCPU thread, a policy's thread); any thread may read
// it at any time and sees a recent value of each counter (never a torn one).
// Two threads must not write the same block concurrently; give each its own
// block and sum them when reporting.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace base {

// One named value, as read by a report.
struct CounterValue {
  std::string name;
  uint64_t value = 0;
  bool operator==(const CounterValue&) const = default;
};

// The counters of a block, in declaration order, with names qualified by a
// prefix ("shadow.pf_fixed"). Used by reports and for interval deltas.
using CounterSnapshot = std::vector<CounterValue>;

// `after - before` element-wise (same names in the same order required).
CounterSnapshot CounterDelta(const CounterSnapshot& before, const CounterSnapshot& after);

// The storage and operations shared by every counter block. Derived types come
// from BASE_DEFINE_COUNTERS and fix the Id enum and the names.
template <typename IdEnum, size_t N>
class CounterBlock {
 public:
  using Id = IdEnum;
  static constexpr size_t kNumCounters = N;

  CounterBlock() = default;
  // Copies take a snapshot of the values; a copy is a new, separately owned block.
  CounterBlock(const CounterBlock& other) { CopyFrom(other); }
  CounterBlock& operator=(const CounterBlock& other) {
    CopyFrom(other);
    return *this;
  }

  void Inc(Id id) noexcept { Add(id, 1); }
  void Add(Id id, uint64_t delta) noexcept {
    std::atomic<uint64_t>& slot = values_[static_cast<size_t>(id)];
    slot.store(slot.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
  }
  uint64_t Get(Id id) const noexcept {
    return values_[static_cast<size_t>(id)].load(std::memory_order_relaxed);
  }
  // Resets every counter to zero. Owner thread only.
  void Reset() noexcept {
    for (auto& v : values_) v.store(0, std::memory_order_relaxed);
  }
  // Adds every counter of `other` into this block (for summing per-vCPU blocks).
  void Accumulate(const CounterBlock& other) noexcept {
    for (size_t i = 0; i < N; ++i) Add(static_cast<Id>(i), other.values_[i].load(std::memory_order_relaxed));
  }

 protected:
  std::array<std::atomic<uint64_t>, N> values_{};

 private:
  void CopyFrom(const CounterBlock& other) {
    for (size_t i = 0; i < N; ++i)
      values_[i].store(other.values_[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
};

}  // namespace base

#define BASE_COUNTER_ENUM_ENTRY(EnumName, report_name) k##EnumName,
#define BASE_COUNTER_NAME_ENTRY(EnumName, report_name) #report_name,
#define BASE_COUNTER_COUNT_ENTRY(EnumName, report_name) +1

// Defines `struct Name` : a counter block with the counters of LIST (see above).
#define BASE_DEFINE_COUNTERS(Name, LIST)                                                \
  enum class Name##Id : uint32_t { LIST(BASE_COUNTER_ENUM_ENTRY) };                     \
  struct Name : ::base::CounterBlock<Name##Id, 0 LIST(BASE_COUNTER_COUNT_ENTRY)> {      \
    using Id = Name##Id;                                                                \
    LIST(BASE_COUNTER_STATIC_ID)                                                        \
    static constexpr std::array<std::string_view, kNumCounters> kNames = {              \
        LIST(BASE_COUNTER_NAME_ENTRY)};                                                 \
    static constexpr std::string_view NameOf(Id id) { return kNames[static_cast<size_t>(id)]; } \
    template <typename F>                                                               \
    void ForEach(F&& f) const {                                                         \
      for (size_t i = 0; i < kNumCounters; ++i)                                         \
        f(kNames[i], values_[i].load(std::memory_order_relaxed));                       \
    }                                                                                   \
    ::base::CounterSnapshot Snapshot(std::string_view prefix) const {                   \
      ::base::CounterSnapshot out;                                                      \
      out.reserve(kNumCounters);                                                        \
      ForEach([&](std::string_view n, uint64_t v) {                                     \
        std::string full(prefix);                                                       \
        if (!full.empty()) full += '.';                                                 \
        full += n;                                                                      \
        out.push_back({std::move(full), v});                                            \
      });                                                                               \
      return out;                                                                       \
    }                                                                                   \
  }

// Lets callers write ShadowCounters::kPfFixed instead of ShadowCounters::Id::kPfFixed.
#define BASE_COUNTER_STATIC_ID(EnumName, report_name) \
  static constexpr Id k##EnumName = Id::k##EnumName;

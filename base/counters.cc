#include "base/counters.h"

#include "base/check.h"

namespace base {

CounterSnapshot CounterDelta(const CounterSnapshot& before, const CounterSnapshot& after) {
  CHECK_EQ(before.size(), after.size()) << "snapshots of different counter sets";
  CounterSnapshot out;
  out.reserve(after.size());
  for (size_t i = 0; i < after.size(); ++i) {
    CHECK_EQ(before[i].name, after[i].name);
    out.push_back({after[i].name, after[i].value - before[i].value});
  }
  return out;
}

}  // namespace base

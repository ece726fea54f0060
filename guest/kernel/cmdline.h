// The kernel command line: space-separated words, `key=value` or bare `key`.
// The kernel reads its own options here; the rest (workload selection and
// parameters) is published to user space untouched.
#pragma once

#include <stdint.h>

namespace kernel {

struct CmdlineWord {
  const char* key;
  uint32_t key_len;
  const char* value;  // nullptr for a bare word
  uint32_t value_len;
};

// Calls fn(word) for each word; stops early if fn returns false.
template <typename Fn>
void ForEachCmdlineWord(const char* s, uint64_t len, Fn fn) {
  uint64_t i = 0;
  while (i < len) {
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n')) ++i;
    if (i >= len || s[i] == 0) return;
    uint64_t start = i;
    while (i < len && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != 0) ++i;
    CmdlineWord w{s + start, static_cast<uint32_t>(i - start), nullptr, 0};
    for (uint32_t k = 0; k < w.key_len; ++k) {
      if (w.key[k] == '=') {
        w.value = w.key + k + 1;
        w.value_len = w.key_len - k - 1;
        w.key_len = k;
        break;
      }
    }
    if (!fn(w)) return;
  }
}

}  // namespace kernel

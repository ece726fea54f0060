#include "guest/user/runtime.h"

#include <stdarg.h>

#include "guest/format.h"

extern "C" {
// The compiler may emit calls to these for struct copies and initialisers.
void* memset(void* dst, int c, size_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<uint8_t>(c);
  return dst;
}
void* memcpy(void* dst, const void* src, size_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  auto* s = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
  return dst;
}
}

namespace user {
namespace {

void WriteOut(const char* s, uint64_t n) { Write(s, n); }
using Line = guest::LineBuffer<200, WriteOut>;

size_t Len(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

// Finds "key" (exact) in the command line; returns the value span.
bool FindWord(const char* key, const char** value, size_t* value_len) {
  const char* s = Info()->cmdline;
  size_t key_len = Len(key);
  size_t i = 0;
  while (s[i]) {
    while (s[i] == ' ') ++i;
    size_t start = i;
    while (s[i] && s[i] != ' ') ++i;
    size_t word_len = i - start;
    if (word_len > key_len && s[start + key_len] == '=') {
      bool match = true;
      for (size_t k = 0; k < key_len && match; ++k) match = s[start + k] == key[k];
      if (match) {
        *value = s + start + key_len + 1;
        *value_len = word_len - key_len - 1;
        return true;
      }
    }
  }
  return false;
}

bool FindParam(const char* workload, const char* key, const char** value, size_t* value_len) {
  char full[64];
  size_t n = 0;
  for (const char* p = workload; *p && n < 30; ++p) full[n++] = *p;
  full[n++] = '.';
  for (const char* p = key; *p && n < 62; ++p) full[n++] = *p;
  full[n] = 0;
  return FindWord(full, value, value_len) || FindWord(key, value, value_len);
}

}  // namespace

void Exit(int code) {
  Syscall(guest::kSysExit, static_cast<uint64_t>(code));
  __builtin_unreachable();
}

void Write(const char* s, size_t n) { Syscall(guest::kSysWrite, 1, reinterpret_cast<uint64_t>(s), n); }
void Print(const char* s) { Write(s, Len(s)); }

void Printf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  Line line;
  guest::FormatV(line, fmt, ap);
  line.Flush();
  va_end(ap);
}

uint64_t NowNs() {
  uint64_t khz = Info()->tsc_khz;
  uint64_t t = Rdtsc();
  return t / khz * 1000000 + (t % khz) * 1000000 / khz;
}

uint64_t ParamU64(const char* workload, const char* key, uint64_t default_value) {
  const char* v;
  size_t n;
  if (!FindParam(workload, key, &v, &n)) return default_value;
  uint64_t x = 0;
  size_t i = 0;
  uint64_t base = 10;
  if (n > 2 && v[0] == '0' && v[1] == 'x') base = 16, i = 2;
  for (; i < n; ++i) {
    char c = v[i];
    if (c >= '0' && c <= '9') {
      x = x * base + (c - '0');
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      x = x * base + (c - 'a' + 10);
    } else if (c == 'k' || c == 'K') {
      x <<= 10;
    } else if (c == 'm' || c == 'M') {
      x <<= 20;
    } else if (c == 'g' || c == 'G') {
      x <<= 30;
    } else {
      break;
    }
  }
  return x;
}

bool ParamStr(const char* workload, const char* key, char* out, size_t out_len) {
  const char* v;
  size_t n;
  if (!FindParam(workload, key, &v, &n)) return false;
  if (n >= out_len) n = out_len - 1;
  for (size_t i = 0; i < n; ++i) out[i] = v[i];
  out[n] = 0;
  return true;
}

bool StrEq(const char* a, const char* b) {
  while (*a && *a == *b) ++a, ++b;
  return *a == *b;
}

void ReportRun(uint64_t ops, uint64_t bytes, uint64_t elapsed_ns, bool ok) {
  Report("ops", ops);
  Report("bytes", bytes);
  Report("elapsed_ns", elapsed_ns);
  Report("checksum_ok", ok ? 1 : 0);
}

bool RunWorkload(const char* name) {
  if (StrEq(name, "compute")) return RunCompute();
  if (StrEq(name, "memtouch")) return RunMemtouch();
  if (StrEq(name, "ptchurn")) return RunPtchurn();
  if (StrEq(name, "tlbstress")) return RunTlbstress();
  if (StrEq(name, "dedupfill")) return RunDedupfill();
  if (StrEq(name, "idle")) return RunIdle();
  if (StrEq(name, "mix")) return RunMix();
  if (StrEq(name, "fault")) return RunFault();
  if (StrEq(name, "balloon")) return RunBalloon();
  Printf("unknown workload '%s'\n", name);
  return false;
}

}  // namespace user

// pid 1: runs the workload the command line names (default: mix).
extern "C" [[noreturn]] void UserMain() {
  using namespace user;
  char name[16];
  if (!ParamStr("", "workload", name, sizeof(name))) {
    name[0] = 'm', name[1] = 'i', name[2] = 'x', name[3] = 0;
  }
  SetName(name);
  bool ok = RunWorkload(name);
  Exit(ok ? 0 : 1);
}

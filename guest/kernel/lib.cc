#include "guest/kernel/lib.h"

#include "guest/abi.h"
#include "guest/kernel/arch.h"

extern "C" {

void* memset(void* dst, int c, size_t n) {
  void* d = dst;
  asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return dst;
}

void* memcpy(void* dst, const void* src, size_t n) {
  void* d = dst;
  asm volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
  return dst;
}

void* memmove(void* dst, const void* src, size_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  auto* s = static_cast<const uint8_t*>(src);
  if (d <= s || d >= s + n) return memcpy(dst, src, n);
  while (n--) d[n] = s[n];
  return dst;
}

int memcmp(const void* a, const void* b, size_t n) {
  auto* x = static_cast<const uint8_t*>(a);
  auto* y = static_cast<const uint8_t*>(b);
  for (size_t i = 0; i < n; ++i) {
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  }
  return 0;
}

size_t strlen(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

}  // extern "C"

namespace kernel {
namespace {
bool pv_mem = false;
}  // namespace

bool StrEq(const char* a, const char* b) {
  while (*a && *a == *b) ++a, ++b;
  return *a == *b;
}

bool StrEqN(const char* a, size_t n, const char* b) {
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i] || b[i] == 0) return false;
  }
  return b[n] == 0;
}

bool ParseU64(const char* s, size_t n, uint64_t* out) {
  if (n == 0) return false;
  uint64_t v = 0;
  size_t i = 0;
  uint64_t base = 10;
  if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    i = 2;
  }
  size_t digits = 0;
  for (; i < n; ++i, ++digits) {
    char c = s[i];
    uint64_t d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      break;
    }
    v = v * base + d;
  }
  if (digits == 0) return false;
  if (i < n) {
    if (i + 1 != n) return false;
    switch (s[i]) {
      case 'k': case 'K': v <<= 10; break;
      case 'm': case 'M': v <<= 20; break;
      case 'g': case 'G': v <<= 30; break;
      default: return false;
    }
  }
  *out = v;
  return true;
}

void SetPvMem(bool on) { pv_mem = on; }

void ZeroFrame(uint64_t pa) {
  if (pv_mem) {
    Outl(guest::kPvZeroFramePort, static_cast<uint32_t>(pa >> 12));
    return;
  }
  void* d = PhysToVirt(pa);
  uint64_t n = kPageSize / 8;
  asm volatile("rep stosq" : "+D"(d), "+c"(n) : "a"(0ull) : "memory");
}

void CopyFrame(uint64_t dst_pa, uint64_t src_pa) {
  if (pv_mem) {
    Outl(guest::kPvCopySrcPort, static_cast<uint32_t>(src_pa >> 12));
    Outl(guest::kPvCopyDstPort, static_cast<uint32_t>(dst_pa >> 12));
    return;
  }
  void* d = PhysToVirt(dst_pa);
  const void* s = PhysToVirt(src_pa);
  uint64_t n = kPageSize / 8;
  asm volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

}  // namespace kernel

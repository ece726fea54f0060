// A minimal printf for the guest kernel and its user programs (freestanding,
// header-only, so both builds compile it with their own flags).
//
// Supports %s %c %d %u %x %p %% with an optional '0' pad, a width, and 'l'
// for 64-bit arguments. Output goes to a LineBuffer that hands whole buffers
// to a sink: under KVM every sink call is one exit, so batching matters.
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

namespace guest {

// Collects characters and passes them to Sink(data, len) when full or flushed.
template <size_t kBytes, void (*Sink)(const char*, uint64_t)>
struct LineBuffer {
  char data[kBytes];
  size_t len = 0;
  void Put(char c) {
    if (len == kBytes) Flush();
    data[len++] = c;
  }
  void Flush() {
    if (len) Sink(data, len);
    len = 0;
  }
};

template <typename Out>
void FormatNumber(Out& out, uint64_t v, uint32_t base, int width, char pad, bool negative) {
  char tmp[24];
  int n = 0;
  do {
    const uint32_t d = static_cast<uint32_t>(v % base);
    tmp[n++] = static_cast<char>(d < 10 ? '0' + d : 'a' + d - 10);
    v /= base;
  } while (v != 0);
  if (negative) tmp[n++] = '-';
  for (int i = n; i < width; ++i) out.Put(pad);
  while (n > 0) out.Put(tmp[--n]);
}

template <typename Out>
void FormatV(Out& out, const char* fmt, va_list ap) {
  for (const char* p = fmt; *p; ++p) {
    if (*p != '%') {
      out.Put(*p);
      continue;
    }
    ++p;
    char pad = ' ';
    if (*p == '0') {
      pad = '0';
      ++p;
    }
    int width = 0;
    while (*p >= '0' && *p <= '9') width = width * 10 + (*p++ - '0');
    bool is_long = false;
    while (*p == 'l') {
      is_long = true;
      ++p;
    }
    switch (*p) {
      case 's': {
        const char* s = va_arg(ap, const char*);
        if (!s) s = "(null)";
        int len = 0;
        while (s[len]) ++len;
        for (int i = len; i < width; ++i) out.Put(' ');
        for (int i = 0; i < len; ++i) out.Put(s[i]);
        break;
      }
      case 'c':
        out.Put(static_cast<char>(va_arg(ap, int)));
        break;
      case 'd': {
        const int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
        const bool neg = v < 0;
        FormatNumber(out, neg ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v), 10, width,
                     pad, neg);
        break;
      }
      case 'u':
        FormatNumber(out, is_long ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 10, width, pad, false);
        break;
      case 'x':
        FormatNumber(out, is_long ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 16, width, pad, false);
        break;
      case 'p':
        out.Put('0');
        out.Put('x');
        FormatNumber(out, reinterpret_cast<uint64_t>(va_arg(ap, void*)), 16, 16, '0', false);
        break;
      case '%':
        out.Put('%');
        break;
      default:
        out.Put('%');
        if (*p) out.Put(*p);
        if (!*p) --p;
        break;
    }
  }
}

}  // namespace guest

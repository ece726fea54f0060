#include "guest/kernel/console.h"

#include "guest/abi.h"
#include "guest/kernel/arch.h"

namespace kernel {
namespace {

// Formats into a line buffer first so the output loop is a tight `outb` loop.
struct Buf {
  char data[256];
  uint32_t len = 0;
  void Put(char c) {
    if (len == sizeof(data)) Flush();
    data[len++] = c;
  }
  void Flush() {
    ConsoleWrite(data, len);
    len = 0;
  }
};

void PutNumber(Buf& b, uint64_t v, uint32_t base, int width, char pad, bool negative) {
  char tmp[24];
  int n = 0;
  do {
    uint32_t d = static_cast<uint32_t>(v % base);
    tmp[n++] = static_cast<char>(d < 10 ? '0' + d : 'a' + d - 10);
    v /= base;
  } while (v != 0);
  if (negative) tmp[n++] = '-';
  for (int i = n; i < width; ++i) b.Put(pad);
  while (n > 0) b.Put(tmp[--n]);
}

}  // namespace

// One `rep outsb` per buffer: a virtual UART is always ready to transmit, and
// under KVM the whole string leaves the guest in one exit instead of one exit
// per byte (each exit costs about 10 us on the PVM host, docs/guest.md).
void ConsoleWrite(const char* s, uint64_t n) {
  if (n == 0) return;
  asm volatile("cld; rep outsb" : "+S"(s), "+c"(n) : "d"(guest::kSerialPort) : "memory");
}

void VPrintk(const char* fmt, va_list ap) {
  Buf b;
  for (const char* p = fmt; *p; ++p) {
    if (*p != '%') {
      b.Put(*p);
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
        for (int i = len; i < width; ++i) b.Put(' ');
        for (int i = 0; i < len; ++i) b.Put(s[i]);
        break;
      }
      case 'c':
        b.Put(static_cast<char>(va_arg(ap, int)));
        break;
      case 'd': {
        int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
        bool neg = v < 0;
        PutNumber(b, neg ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v), 10, width, pad,
                  neg);
        break;
      }
      case 'u':
        PutNumber(b, is_long ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 10, width, pad, false);
        break;
      case 'x':
        PutNumber(b, is_long ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 16, width, pad, false);
        break;
      case 'p':
        b.Put('0');
        b.Put('x');
        PutNumber(b, reinterpret_cast<uint64_t>(va_arg(ap, void*)), 16, 16, '0', false);
        break;
      case '%':
        b.Put('%');
        break;
      default:
        b.Put('%');
        if (*p) b.Put(*p);
        if (!*p) --p;
        break;
    }
  }
  b.Flush();
}

void Printk(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  VPrintk(fmt, ap);
  va_end(ap);
}

}  // namespace kernel

#include "guest/kernel/console.h"

#include "guest/abi.h"
#include "guest/format.h"
#include "guest/kernel/arch.h"

namespace kernel {

// One `rep outsb` per buffer: a virtual UART is always ready to transmit, and
// under KVM the whole string leaves the guest in one exit instead of one exit
// per byte (each exit costs about 10 us on the PVM host, docs/guest.md).
void ConsoleWrite(const char* s, uint64_t n) {
  if (n == 0) return;
  asm volatile("cld; rep outsb" : "+S"(s), "+c"(n) : "d"(guest::kSerialPort) : "memory");
}

void VPrintk(const char* fmt, va_list ap) {
  guest::LineBuffer<256, ConsoleWrite> out;
  guest::FormatV(out, fmt, ap);
  out.Flush();
}

void Printk(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  VPrintk(fmt, ap);
  va_end(ap);
}

}  // namespace kernel

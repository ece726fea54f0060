// Serial console on COM1 (port 0x3f8) and the kernel's printf.
//
// Single CPU, interrupts off in the kernel: no locking. The UART is assumed to
// be a virtual one that never overruns (QEMU's and ours), so the transmitter
// status is not polled: that halves the port exits per character.
#pragma once

#include <stdarg.h>
#include <stdint.h>

namespace kernel {

void ConsoleWrite(const char* s, uint64_t n);
// Supports %s %c %d %u %x %p with optional '0', width and 'l' modifiers.
void Printk(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void VPrintk(const char* fmt, va_list ap);

}  // namespace kernel

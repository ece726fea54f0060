// Freestanding replacements for the few libc routines the kernel needs, and
// page-sized zero/copy helpers. The page helpers use `rep stosq`/`rep movsq`
// (a single emulated instruction each on the PVM host, far cheaper than a C
// loop there) or, with the pv_mem platform flag, the VMM's doorbell.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {
void* memset(void* dst, int c, size_t n);
void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
int memcmp(const void* a, const void* b, size_t n);
size_t strlen(const char* s);
}

namespace kernel {

bool StrEq(const char* a, const char* b);
// Compares the first n bytes of a with the NUL-terminated b.
bool StrEqN(const char* a, size_t n, const char* b);
// Parses an unsigned number: decimal, 0x hex, optional K/M/G suffix.
bool ParseU64(const char* s, size_t n, uint64_t* out);

void ZeroFrame(uint64_t pa);
void CopyFrame(uint64_t dst_pa, uint64_t src_pa);
// Selects the paravirtual doorbell instead of zeroing/copying in the guest.
void SetPvMem(bool on);

}  // namespace kernel

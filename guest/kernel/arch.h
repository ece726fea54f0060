// Thin wrappers over privileged x86-64 instructions and the kernel's virtual
// layout. Kernel-only (CPL0). Every helper is one or two instructions because
// on the PVM host each kernel instruction is emulated (about 1 us each).
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace kernel {

// Virtual layout (docs/guest.md): a direct map of guest-physical memory at
// PML4 slot 256 and the kernel image at -2 GiB (PML4 slot 511).
inline constexpr uint64_t kDirectMapBase = 0xffff800000000000ull;
inline constexpr uint64_t kKernelVirtBase = 0xffffffff80000000ull;
inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kPageMask = ~(kPageSize - 1);

template <typename T = void>
inline T* PhysToVirt(uint64_t pa) {
  return reinterpret_cast<T*>(pa + kDirectMapBase);
}
// Only for addresses inside the kernel image (linked at kKernelVirtBase).
inline uint64_t KernelVirtToPhys(const void* va) {
  return reinterpret_cast<uint64_t>(va) - kKernelVirtBase;
}

inline void Outb(uint16_t port, uint8_t v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
inline void Outl(uint16_t port, uint32_t v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
inline uint8_t Inb(uint16_t port) {
  uint8_t v;
  asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

inline uint64_t Rdmsr(uint32_t msr) {
  uint32_t lo, hi;
  asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
inline void Wrmsr(uint32_t msr, uint64_t v) {
  asm volatile("wrmsr" : : "c"(msr), "a"(static_cast<uint32_t>(v)),
               "d"(static_cast<uint32_t>(v >> 32)));
}
inline uint64_t Rdtsc() {
  uint32_t lo, hi;
  asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
struct CpuidResult {
  uint32_t eax, ebx, ecx, edx;
};
inline CpuidResult Cpuid(uint32_t leaf, uint32_t subleaf = 0) {
  CpuidResult r;
  asm volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
  return r;
}

inline uint64_t ReadCr2() {
  uint64_t v;
  asm volatile("mov %%cr2, %0" : "=r"(v));
  return v;
}
inline uint64_t ReadCr3() {
  uint64_t v;
  asm volatile("mov %%cr3, %0" : "=r"(v));
  return v;
}
inline void WriteCr3(uint64_t v) { asm volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }
inline uint64_t ReadCr4() {
  uint64_t v;
  asm volatile("mov %%cr4, %0" : "=r"(v));
  return v;
}
inline void WriteCr4(uint64_t v) { asm volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }
constexpr uint64_t kCr4Pge = 1ull << 7;
constexpr uint32_t kCpuid1EdxPge = 1u << 13;
inline void Invlpg(uint64_t va) { asm volatile("invlpg (%0)" : : "r"(va) : "memory"); }
inline void Hlt() { asm volatile("hlt"); }
// STI's one-instruction interrupt shadow makes "sti; hlt" race-free: an
// interrupt pending at STI is taken after HLT starts waiting (SDM Vol. 2B, STI).
inline void EnableInterruptsAndHalt() { asm volatile("sti; hlt; cli" : : : "memory"); }

inline constexpr uint32_t kMsrEfer = 0xc0000080;
inline constexpr uint32_t kMsrStar = 0xc0000081;
inline constexpr uint32_t kMsrLstar = 0xc0000082;
inline constexpr uint32_t kMsrSfmask = 0xc0000084;
inline constexpr uint32_t kMsrApicBase = 0x1b;

}  // namespace kernel

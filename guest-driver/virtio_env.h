// VirtioEnv: everything the guest-side virtio core needs from the kernel it runs
// in, and nothing more. The guest kernel implements it over its MMIO mapping and
// physical page allocator; host unit tests implement it over a fake device and a
// block of host memory that plays guest-physical RAM.
//
// Memory barriers are not part of the interface: they are a property of the ISA,
// not of the platform, and they sit on the per-request path, where an indirect call
// costs real time on the emulated CPL0 of docs/platform.md. They are inline functions
// below instead.
//
// Thread safety: the core never calls the environment concurrently from more than
// the thread that calls the core; an implementation needs no locking of its own
// unless the kernel shares it between devices on several CPUs.
#ifndef GUEST_DRIVER_VIRTIO_ENV_H_
#define GUEST_DRIVER_VIRTIO_ENV_H_

#include <cstddef>
#include <cstdint>

namespace guest_driver {

class VirtioEnv {
 public:
  // MMIO accesses at `addr` (the device's mapped base plus a register offset).
  // Each must be one access of exactly that width, little-endian, not merged or
  // split by the compiler: a volatile load/store on x86. Control registers are only
  // accessed 32 bits wide; 8- and 16-bit accesses are used for device-specific
  // configuration fields of that width (§4.2.2.2).
  virtual uint32_t MmioRead32(uintptr_t addr) = 0;
  virtual void MmioWrite32(uintptr_t addr, uint32_t value) = 0;
  virtual uint16_t MmioRead16(uintptr_t addr) = 0;
  virtual void MmioWrite16(uintptr_t addr, uint16_t value) = 0;
  virtual uint8_t MmioRead8(uintptr_t addr) = 0;
  virtual void MmioWrite8(uintptr_t addr, uint8_t value) = 0;

  // Allocates `num_pages` physically contiguous, zero-filled 4 KiB pages. Returns
  // their kernel virtual address and stores their guest-physical address in *gpa,
  // or returns nullptr. The VMM hands out zero pages, so the kernel should not
  // zero them again (zeroing a page at CPL0 costs about 250 us on docs/platform.md's KVM).
  virtual void* AllocZeroedPages(size_t num_pages, uint64_t* gpa) = 0;
  // Returns pages from AllocZeroedPages. May be a no-op in a kernel that never frees.
  virtual void FreePages(void* virt, uint64_t gpa, size_t num_pages) = 0;

  // Address conversions for buffers the drivers hand to the device.
  virtual uint64_t VirtToPhys(const void* virt) = 0;
  virtual void* PhysToVirt(uint64_t gpa) = 0;

 protected:
  // Not deleted through this interface, so no virtual destructor (which would drag
  // operator delete into the freestanding kernel).
  ~VirtioEnv() = default;
};

// Barriers for memory shared with the device (§2.7.13.3, §2.7.14: the driver
// publishes descriptors and ring entries before the index that makes them visible,
// and reads used entries only after the used index that covers them).
//
// On x86-64 ring memory is ordinary write-back RAM, so TSO already keeps stores in
// order and loads in order: a compiler barrier is all that read/write ordering needs.
// Store-then-load ordering (publish avail idx, then read the device's suppression
// flags) needs a real fence; a locked no-op on the stack is one, and unlike `mfence`
// it is not an SSE instruction (the CPL0 emulator of docs/platform.md rejects SSE).
inline void VirtioCompilerBarrier() { __asm__ __volatile__("" ::: "memory"); }

#if defined(__x86_64__)
inline void VirtioReadBarrier() { VirtioCompilerBarrier(); }
inline void VirtioWriteBarrier() { VirtioCompilerBarrier(); }
inline void VirtioFullBarrier() { __asm__ __volatile__("lock; orq $0, (%%rsp)" ::: "memory", "cc"); }
#else
inline void VirtioReadBarrier() { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
inline void VirtioWriteBarrier() { __atomic_thread_fence(__ATOMIC_RELEASE); }
inline void VirtioFullBarrier() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#endif

}  // namespace guest_driver

#endif  // GUEST_DRIVER_VIRTIO_ENV_H_

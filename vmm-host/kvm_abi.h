// C-layout definitions for the KVM structures whose <linux/kvm.h> form is
// wrong in C++.
//
// linux-libc-dev declares flexible arrays with __DECLARE_FLEX_ARRAY, which
// in C++ (before the kernel's 6.x fix) expands to a struct holding an empty
// struct plus the array. An empty struct has size 1 in C++, so in C++
// sizeof(kvm_cpuid2) is 12 instead of 8, its entries start at offset 12
// instead of 8, and the ioctl numbers that encode the size are wrong
// (KVM_GET_SUPPORTED_CPUID becomes 0xc00cae05, which KVM rejects with
// EINVAL). The same applies to kvm_stats_desc's name. We therefore use our
// own headers with the C layout, pinned by static_asserts to the numbers the
// kernel ABI defines.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace vmm::kvm_abi {

// struct kvm_cpuid2 without its entries; kvm_cpuid_entry2 follow at offset 8.
struct Cpuid2Header {
  uint32_t nent;
  uint32_t padding;
};
static_assert(sizeof(Cpuid2Header) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40);

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
static_assert(kGetSupportedCpuid == 0xc008ae05ul);
static_assert(kSetCpuid2 == 0x4008ae90ul);

// struct kvm_stats_desc without its name; the name (header.name_size bytes)
// follows at offset 16 (Documentation/virt/kvm/api.rst, KVM_GET_STATS_FD).
struct StatsDesc {
  uint32_t flags;
  int16_t exponent;
  uint16_t size;
  uint32_t offset;
  uint32_t bucket_size;
};
static_assert(sizeof(StatsDesc) == 16);

}  // namespace vmm::kvm_abi

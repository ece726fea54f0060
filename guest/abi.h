// The guest's fixed interfaces: I/O ports, exit codes, syscall numbers, the
// user address-space layout and the read-only info page every process sees.
//
// Shared by the guest kernel, the guest's user programs and host code (tests,
// benches, later the VMM's results and paravirtual devices). Fixed-width types
// only; docs/guest.md and docs/boot.md describe each item.
#pragma once

#include <stdint.h>

namespace guest {

// ---- I/O ports (all written from CPL0 only; see docs/boot.md) ----
inline constexpr uint16_t kSerialPort = 0x3f8;     // COM1 data register
inline constexpr uint16_t kDebugExitPort = 0xf4;   // QEMU isa-debug-exit
// Results block. Unused by QEMU's pc and microvm machines (0x510 is fw_cfg,
// 0x600 the ACPI PM block); writes there are ignored under QEMU.
inline constexpr uint16_t kResultsNamePort = 0x700;       // 32-bit: 4 name bytes
inline constexpr uint16_t kResultsValueLowPort = 0x704;   // 32-bit: value[31:0]
inline constexpr uint16_t kResultsValueHighPort = 0x708;  // 32-bit: value[63:32], commits
// Paravirtual memory doorbell (only with kBootFlagPvMem / pv_mem=1).
inline constexpr uint16_t kPvZeroFramePort = 0x710;  // 32-bit gfn: zero that frame
inline constexpr uint16_t kPvCopySrcPort = 0x714;    // 32-bit gfn: latch the source
inline constexpr uint16_t kPvCopyDstPort = 0x718;    // 32-bit gfn: copy source -> this
inline constexpr uint32_t kResultsMaxNameBytes = 32;

// ---- Exit codes written to kDebugExitPort ----
enum ExitCode : uint32_t {
  kExitSuccess = 0,         // init exited 0 and every checksum verdict was 1
  kExitWorkloadFailed = 1,  // a checksum_ok=0 result, or init exited non-zero
  kExitInitKilled = 2,      // the init process died of an unhandled fault
  kExitPanic = 3,           // unhandled kernel fault or kernel assertion
  kExitBootError = 4,       // unusable boot info, memory map or command line
};
// QEMU's isa-debug-exit turns a written code into this process exit status.
constexpr int QemuExitStatus(uint32_t code) { return static_cast<int>((code << 1) | 1); }

// ---- Syscalls ----
// Number in RAX; arguments in RDI, RSI, RDX, R10, R8, R9; result in RAX.
// Negative results are errors. `syscall` clobbers RCX and R11; the trap entry
// (int3) preserves every register but RAX.
enum Sys : uint64_t {
  kSysExit = 0,      // (code) -> never returns
  kSysWrite = 1,     // (fd, buf, len) -> len; fd 1 and 2 go to the console
  kSysMmap = 2,      // (len, prot) -> address of fresh demand-zero anonymous memory
  kSysMunmap = 3,    // (addr, len) -> 0
  kSysFork = 4,      // () -> child pid in the parent, 0 in the child
  kSysWait = 5,      // (pid or 0 for any) -> pid | status << 32, or -1 without such child
  kSysYield = 6,     // () -> 0
  kSysGetpid = 7,    // () -> pid
  kSysTime = 8,      // () -> guest nanoseconds since boot (TSC based)
  kSysReport = 9,    // (key, value) -> 0: publish a named result
  kSysSleep = 10,    // (ns) -> 0
  kSysSetName = 11,  // (name) -> 0: the workload name used in results
  kSysMemInfo = 12,  // (which) -> page counts (MemInfoWhich)
  kSysCount = 13,
};
inline constexpr uint64_t kProtRead = 1;
inline constexpr uint64_t kProtWrite = 2;
// Wait status: exit code in bits 7..0, or kWaitKilled | vector for a process
// the kernel killed on an unhandled fault.
inline constexpr uint32_t kWaitKilled = 0x100;
enum MemInfoWhich : uint64_t {
  kMemTotalPages = 0,
  kMemFreePages = 1,
  kMemUsedPages = 2,
  // virtio-balloon (0 without a balloon device): pages in the balloon as told
  // to the device (`actual`), the device's target (num_pages), and the running
  // totals of pages inflated, deflated, deflated on out-of-memory and reported
  // free.
  kMemBalloonPages = 3,
  kMemBalloonTargetPages = 4,
  kMemBalloonInflated = 5,
  kMemBalloonDeflated = 6,
  kMemBalloonOomDeflated = 7,
  kMemBalloonReportedPages = 8,
  kMemMinorFaults = 9,  // user page faults resolved by the kernel
};

// ---- User address-space layout (lower canonical half) ----
inline constexpr uint64_t kUserInfoVa = 0x200000;          // UserInfo page, read-only
inline constexpr uint64_t kUserImageVa = 0x400000;         // user program, read/execute
inline constexpr uint64_t kUserMmapBase = 0x100000000ull;  // mmap grows upward from 4 GiB
inline constexpr uint64_t kUserStackTop = 0x7ff000000000ull;
inline constexpr uint64_t kUserStackBytes = 1ull << 20;
inline constexpr uint64_t kUserTop = 0x800000000000ull;    // end of the lower half

// ---- The info page the kernel publishes to every process ----
inline constexpr uint64_t kUserInfoMagic = 0x4f464e4955564d4dull;  // "MMVUINFO"
inline constexpr uint64_t kUserFlagTrapEntry = 1ull << 0;  // use int3, not syscall
inline constexpr uint32_t kUserCmdlineMax = 3072;
struct UserInfo {
  uint64_t magic;
  uint64_t flags;    // kUserFlag*
  uint64_t tsc_khz;  // for RDTSC-based timing in user mode
  uint64_t tick_ns;  // scheduler tick
  uint32_t cmdline_len;
  uint32_t reserved;
  char cmdline[kUserCmdlineMax];  // NUL-terminated copy of the kernel command line
};

}  // namespace guest

// The user-mode runtime every workload builds on: system calls, console
// output, command-line parameters, random numbers, timing and results.
//
// Runs at CPL3. Never uses port I/O (on the PVM host it corrupts RIP) and has
// no writable globals (the image is shared read-only; see user.ld).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "guest/abi.h"

namespace user {

inline const guest::UserInfo* Info() {
  return reinterpret_cast<const guest::UserInfo*>(guest::kUserInfoVa);
}

// One entry point for both kernel entries: `syscall`, or `int3` through the
// DPL-3 gate when the kernel says the platform needs the trap-based entry.
inline int64_t Syscall(uint64_t nr, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0) {
  int64_t ret;
  if (Info()->flags & guest::kUserFlagTrapEntry) {
    asm volatile("int3" : "=a"(ret) : "a"(nr), "D"(a0), "S"(a1), "d"(a2) : "memory");
  } else {
    asm volatile("syscall"
                 : "=a"(ret)
                 : "a"(nr), "D"(a0), "S"(a1), "d"(a2)
                 : "rcx", "r11", "memory");
  }
  return ret;
}

[[noreturn]] void Exit(int code);
void Write(const char* s, size_t n);
void Print(const char* s);
// Supports %s %d %u %x with an optional 'l'.
void Printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

inline void* Mmap(uint64_t len) {
  int64_t r = Syscall(guest::kSysMmap, len, guest::kProtRead | guest::kProtWrite);
  return r < 0 ? nullptr : reinterpret_cast<void*>(r);
}
inline bool Munmap(void* p, uint64_t len) {
  return Syscall(guest::kSysMunmap, reinterpret_cast<uint64_t>(p), len) == 0;
}
inline int64_t Fork() { return Syscall(guest::kSysFork); }
struct WaitResult {
  int64_t pid;  // -1: no children
  uint32_t status;
};
// Waits for child `pid`, or for any child when pid is 0.
inline WaitResult Wait(int64_t pid = 0) {
  int64_t r = Syscall(guest::kSysWait, static_cast<uint64_t>(pid));
  if (r < 0) return {-1, 0};
  return {r & 0xffffffff, static_cast<uint32_t>(static_cast<uint64_t>(r) >> 32)};
}
inline void Yield() { Syscall(guest::kSysYield); }
inline int64_t Getpid() { return Syscall(guest::kSysGetpid); }
inline void SleepNs(uint64_t ns) { Syscall(guest::kSysSleep, ns); }
inline void SetName(const char* name) { Syscall(guest::kSysSetName, reinterpret_cast<uint64_t>(name)); }
inline uint64_t MemInfo(uint64_t which) {
  return static_cast<uint64_t>(Syscall(guest::kSysMemInfo, which));
}
inline void Report(const char* key, uint64_t value) {
  Syscall(guest::kSysReport, reinterpret_cast<uint64_t>(key), value);
}

inline uint64_t Rdtsc() {
  uint32_t lo, hi;
  asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
// Guest nanoseconds from the TSC, without a system call.
uint64_t NowNs();

// Command-line parameters: "<workload>.<key>=v" overrides "<key>=v".
uint64_t ParamU64(const char* workload, const char* key, uint64_t default_value);
// Copies a string parameter into out (NUL-terminated). False if absent.
bool ParamStr(const char* workload, const char* key, char* out, size_t out_len);

inline uint64_t Mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}
// The pattern every workload writes and later verifies.
inline uint64_t Pattern(uint64_t seed, uint64_t index) {
  return Mix64(seed ^ (index * 0x9e3779b97f4a7c15ull));
}

// A full-period walk over [0, 2^bits): x -> a*x + c mod 2^bits with a = 1 mod 4
// and c odd (Hull-Dobell), so each index is visited exactly once per period.
struct PermutationWalk {
  uint64_t mask;
  uint64_t x;
  uint64_t Next() {
    x = (x * 6364136223846793005ull + 1442695040888963407ull) & mask;
    return x;
  }
};
inline uint64_t CeilPow2Mask(uint64_t n) {
  uint64_t m = 1;
  while (m < n) m <<= 1;
  return m - 1;
}

// Reports the standard set of results for one workload run.
void ReportRun(uint64_t ops, uint64_t bytes, uint64_t elapsed_ns, bool ok);
bool StrEq(const char* a, const char* b);

// Workloads. Each reads its parameters, checks its own data, reports, and
// returns whether every check passed.
bool RunCompute();
bool RunMemtouch();
bool RunPtchurn();
bool RunTlbstress();
bool RunDedupfill();
bool RunIdle();
bool RunMix();
bool RunFault();
bool RunBalloon();
// Runs a workload by name; false for an unknown name.
bool RunWorkload(const char* name);

}  // namespace user

// The self-checking workloads. Every one writes data derived from a seed,
// verifies it later, and reports ops, bytes, elapsed_ns and checksum_ok.
// `corrupt=1` flips one word between the write and the verify, so tests can
// prove the checks are real. Parameters are documented in docs/guest.md.
#include "guest/user/runtime.h"

namespace user {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kWordsPerPage = kPage / 8;

bool Corrupt(const char* w) { return ParamU64(w, "corrupt", 0) != 0; }
uint64_t Seed(const char* w) { return ParamU64(w, "seed", 1); }

void Fail(const char* w, const char* what, uint64_t index, uint64_t got, uint64_t want) {
  Printf("%s: %s mismatch at %lu: got %lx want %lx\n", w, what, index, got, want);
}

// ---- compute: CPU-bound mixing over a small stack buffer ----
uint64_t ComputePass(uint64_t seed, uint64_t iters, bool corrupt) {
  uint64_t buf[256];
  for (uint64_t i = 0; i < 256; ++i) buf[i] = Pattern(seed, i);
  for (uint64_t k = 0; k < iters; ++k) {
    uint64_t a = buf[k & 255];
    uint64_t b = buf[(k * 7 + 3) & 255];
    uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ull);
    x = (x << 17) | (x >> 47);
    buf[k & 255] = x + k;
    if (corrupt && k == iters / 2) buf[5] ^= 1;
  }
  uint64_t sum = 0;
  for (uint64_t i = 0; i < 256; ++i) sum = Mix64(sum ^ buf[i]);
  return sum;
}

}  // namespace

bool RunCompute() {
  const char* w = "compute";
  uint64_t iters = ParamU64(w, "iters", 20000000);
  uint64_t seed = Seed(w);
  uint64_t t0 = NowNs();
  // The same computation twice; the corrupted run perturbs only the first.
  uint64_t first = ComputePass(seed, iters, Corrupt(w));
  uint64_t second = ComputePass(seed, iters, false);
  uint64_t elapsed = NowNs() - t0;
  bool ok = first == second;
  if (!ok) Fail(w, "checksum", 0, first, second);
  Report("checksum", second);
  ReportRun(2 * iters, 2 * 256 * 8, elapsed, ok);
  return ok;
}

// ---- memtouch: sequential then random word touches over a footprint ----
// `stride` (bytes, a multiple of 8, default 8) spaces the touched words: 4096
// touches one word per page, so every touch of the first pass is a first
// touch (a demand fault) and every later one a TLB-missing access.
bool RunMemtouch() {
  const char* w = "memtouch";
  uint64_t bytes = ParamU64(w, "mib", 16) << 20;
  uint64_t passes = ParamU64(w, "passes", 2);
  uint64_t stride_words = ParamU64(w, "stride", 8) / 8;
  uint64_t seed = Seed(w);
  if (stride_words == 0) stride_words = 1;
  uint64_t n = bytes / 8 / stride_words;
  auto* buf = static_cast<uint64_t*>(Mmap(bytes));
  if (!buf || n == 0) return false;
  auto word = [&](uint64_t i) -> uint64_t& { return buf[i * stride_words]; };
  uint64_t t0 = NowNs();
  for (uint64_t i = 0; i < n; ++i) word(i) = Pattern(seed, i);
  if (Corrupt(w)) word(n / 2) ^= 1;
  bool ok = true;
  uint64_t ops = n;
  // Random read-modify-write passes: each visits every word once, in a
  // pseudo-random order, and XORs in that pass's key.
  uint64_t all_keys = 0;
  for (uint64_t p = 0; p < passes; ++p) {
    uint64_t key = Pattern(seed ^ 0x5a5a, p) | 1;
    all_keys ^= key;
    PermutationWalk walk{CeilPow2Mask(n), Pattern(seed, p)};
    for (uint64_t k = 0; k <= walk.mask; ++k) {
      uint64_t i = walk.Next();
      if (i < n) word(i) ^= key;
    }
    ops += n;
  }
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t want = Pattern(seed, i) ^ all_keys;
    if (word(i) != want) {
      if (ok) Fail(w, "word", i, word(i), want);
      ok = false;
    }
  }
  ops += n;
  uint64_t elapsed = NowNs() - t0;
  Munmap(buf, bytes);
  ReportRun(ops, ops * 8, elapsed, ok);
  return ok;
}

// ---- tlbstress: one word per 4 KiB page, pages in random order ----
bool RunTlbstress() {
  const char* w = "tlbstress";
  uint64_t bytes = ParamU64(w, "mib", 64) << 20;
  uint64_t passes = ParamU64(w, "passes", 8);
  uint64_t seed = Seed(w);
  uint64_t pages = bytes / kPage;
  auto* buf = static_cast<uint64_t*>(Mmap(bytes));
  if (!buf || pages == 0) return false;
  auto slot = [&](uint64_t page) -> uint64_t& {
    return buf[page * kWordsPerPage + ((page * 13) & (kWordsPerPage - 1))];
  };
  uint64_t t0 = NowNs();
  for (uint64_t p = 0; p < pages; ++p) slot(p) = Pattern(seed, p);
  if (Corrupt(w)) slot(pages / 2) ^= 1;
  uint64_t ops = pages;
  uint64_t all_keys = 0;
  for (uint64_t r = 0; r < passes; ++r) {
    uint64_t key = Pattern(seed ^ 0x7777, r) | 1;
    all_keys ^= key;
    PermutationWalk walk{CeilPow2Mask(pages), Pattern(seed, r)};
    for (uint64_t k = 0; k <= walk.mask; ++k) {
      uint64_t p = walk.Next();
      if (p < pages) slot(p) ^= key;
    }
    ops += pages;
  }
  bool ok = true;
  for (uint64_t p = 0; p < pages; ++p) {
    uint64_t want = Pattern(seed, p) ^ all_keys;
    if (slot(p) != want) {
      if (ok) Fail(w, "page", p, slot(p), want);
      ok = false;
    }
  }
  ops += pages;
  uint64_t elapsed = NowNs() - t0;
  Munmap(buf, bytes);
  ReportRun(ops, ops * 8, elapsed, ok);
  return ok;
}

// ---- ptchurn: mmap/touch/munmap loops and fork/exit, several processes ----
namespace {

// Writes one word at each end of every page (so both ends' tables are used).
void FillRegion(uint64_t* r, uint64_t pages, uint64_t seed) {
  for (uint64_t p = 0; p < pages; ++p) {
    r[p * kWordsPerPage] = Pattern(seed, 2 * p);
    r[p * kWordsPerPage + kWordsPerPage - 1] = Pattern(seed, 2 * p + 1);
  }
}
bool CheckRegion(const uint64_t* r, uint64_t pages, uint64_t seed) {
  for (uint64_t p = 0; p < pages; ++p) {
    if (r[p * kWordsPerPage] != Pattern(seed, 2 * p) ||
        r[p * kWordsPerPage + kWordsPerPage - 1] != Pattern(seed, 2 * p + 1)) {
      Fail("ptchurn", "page", p, r[p * kWordsPerPage], Pattern(seed, 2 * p));
      return false;
    }
  }
  return true;
}

// One churning process. Returns the number of page-table-heavy operations.
uint64_t ChurnWorker(uint64_t id, uint64_t iters, uint64_t pages, uint64_t fork_every,
                     uint64_t seed, bool corrupt, bool* ok) {
  uint64_t ops = 0;
  for (uint64_t it = 0; it < iters; ++it) {
    uint64_t s = seed ^ (id << 40) ^ it;
    uint64_t len = pages * kPage;
    auto* r = static_cast<uint64_t*>(Mmap(len));
    if (!r) {
      *ok = false;
      return ops;
    }
    FillRegion(r, pages, s);
    if (corrupt && it == iters / 2) r[kWordsPerPage] ^= 1;
    if (fork_every && it % fork_every == 0) {
      int64_t pid = Fork();
      if (pid == 0) {
        // Child: sees the parent's data through copy-on-write, then writes
        // its own (breaking the sharing) and checks it.
        bool child_ok = CheckRegion(r, pages, s);
        FillRegion(r, pages, s + 1);
        child_ok = child_ok && CheckRegion(r, pages, s + 1);
        Exit(child_ok ? 0 : 1);
      }
      if (pid < 0) {
        *ok = false;
      } else {
        WaitResult wr = Wait(pid);
        if (wr.pid != pid || wr.status != 0) *ok = false;
        ops += 2;  // fork + exit
      }
    }
    if (!CheckRegion(r, pages, s)) *ok = false;
    if (!Munmap(r, len)) *ok = false;
    ops += 2;  // mmap + munmap
  }
  return ops;
}

}  // namespace

bool RunPtchurn() {
  const char* w = "ptchurn";
  uint64_t iters = ParamU64(w, "iters", 400);
  uint64_t pages = ParamU64(w, "pages", 64);
  uint64_t procs = ParamU64(w, "procs", 3);
  uint64_t fork_every = ParamU64(w, "fork_every", 8);
  uint64_t seed = Seed(w);
  bool corrupt = Corrupt(w);
  if (procs == 0) procs = 1;
  uint64_t t0 = NowNs();
  bool ok = true;
  // procs-1 helpers plus this process; helpers report through exit status.
  for (uint64_t id = 1; id < procs; ++id) {
    int64_t pid = Fork();
    if (pid == 0) {
      bool child_ok = true;
      ChurnWorker(id, iters, pages, fork_every, seed, false, &child_ok);
      Exit(child_ok ? 0 : 1);
    }
    if (pid < 0) ok = false;
  }
  uint64_t ops = ChurnWorker(0, iters, pages, fork_every, seed, corrupt, &ok);
  for (uint64_t id = 1; id < procs; ++id) {
    WaitResult wr = Wait();
    if (wr.pid < 0 || wr.status != 0) ok = false;
  }
  ops *= procs;  // every worker does the same operations
  uint64_t elapsed = NowNs() - t0;
  ReportRun(ops, procs * iters * pages * 16, elapsed, ok);
  return ok;
}

// ---- dedupfill: zero, shared (same across guests with one share_seed) and
// unique pages; some pages keep changing (volatile) ----
namespace {

enum PageClass : uint64_t { kZero, kShared, kUnique };

struct DedupParams {
  uint64_t zero_pct, shared_pct, volatile_pct, share_seed, seed, salt;
};

PageClass ClassOf(const DedupParams& d, uint64_t page) {
  uint64_t r = Mix64(d.share_seed ^ (page * 0x9e3779b97f4a7c15ull)) % 100;
  if (r < d.zero_pct) return kZero;
  if (r < d.zero_pct + d.shared_pct) return kShared;
  return kUnique;
}
bool IsVolatile(const DedupParams& d, uint64_t page) {
  return Mix64(d.seed ^ 0xd1b54a32d192ed03ull ^ page) % 100 < d.volatile_pct;
}
// Content of word w of a page after `round` volatile rewrites.
uint64_t DedupWord(const DedupParams& d, uint64_t page, uint64_t w, uint64_t round) {
  if (round > 0 && IsVolatile(d, page)) return Pattern(d.seed ^ d.salt ^ (round << 48), page * 512 + w);
  switch (ClassOf(d, page)) {
    case kZero: return 0;
    case kShared: return Pattern(d.share_seed, page * 512 + w);
    default: return Pattern(d.seed ^ d.salt, page * 512 + w);
  }
}
void WritePage(const DedupParams& d, uint64_t* p, uint64_t page, uint64_t round) {
  if (round == 0 && ClassOf(d, page) == kZero) {
    p[0] = 0;  // one write makes the page resident; it stays all zero
    return;
  }
  for (uint64_t w = 0; w < kWordsPerPage; ++w) p[w] = DedupWord(d, page, w, round);
}
bool VerifyPage(const DedupParams& d, const uint64_t* p, uint64_t page, uint64_t round) {
  for (uint64_t w = 0; w < kWordsPerPage; ++w) {
    uint64_t want = DedupWord(d, page, w, round);
    if (p[w] != want) {
      Fail("dedupfill", "word", page * kWordsPerPage + w, p[w], want);
      return false;
    }
  }
  return true;
}

}  // namespace

bool RunDedupfill() {
  const char* w = "dedupfill";
  uint64_t bytes = ParamU64(w, "mib", 16) << 20;
  uint64_t rounds = ParamU64(w, "rounds", 2);
  uint64_t hold_ms = ParamU64(w, "hold_ms", 0);
  DedupParams d{ParamU64(w, "zero_pct", 25),     ParamU64(w, "shared_pct", 25),
                ParamU64(w, "volatile_pct", 10), ParamU64(w, "share_seed", 42),
                Seed(w),                         Rdtsc() | 1};
  uint64_t pages = bytes / kPage;
  auto* buf = static_cast<uint64_t*>(Mmap(bytes));
  if (!buf || pages == 0) return false;
  auto page_ptr = [&](uint64_t p) { return buf + p * kWordsPerPage; };
  uint64_t t0 = NowNs();
  uint64_t counts[3] = {0, 0, 0};
  for (uint64_t p = 0; p < pages; ++p) {
    WritePage(d, page_ptr(p), p, 0);
    ++counts[ClassOf(d, p)];
  }
  if (Corrupt(w)) buf[(pages / 2) * kWordsPerPage + 7] ^= 1;
  uint64_t ops = pages;
  bool ok = true;
  for (uint64_t p = 0; p < pages && ok; ++p) ok = VerifyPage(d, page_ptr(p), p, 0);
  ops += pages;
  uint64_t volatile_pages = 0;
  for (uint64_t r = 1; r <= rounds && ok; ++r) {
    if (hold_ms) SleepNs(hold_ms * 1000000);
    for (uint64_t p = 0; p < pages; ++p) {
      if (!IsVolatile(d, p)) continue;
      WritePage(d, page_ptr(p), p, r);
      ++ops;
      if (r == 1) ++volatile_pages;
    }
    for (uint64_t p = 0; p < pages && ok; ++p) ok = VerifyPage(d, page_ptr(p), p, r);
    ops += pages;
  }
  if (hold_ms) SleepNs(hold_ms * 1000000);
  uint64_t elapsed = NowNs() - t0;
  Report("zero_pages", counts[kZero]);
  Report("shared_pages", counts[kShared]);
  Report("unique_pages", counts[kUnique]);
  Report("volatile_pages", volatile_pages);
  Munmap(buf, bytes);
  ReportRun(ops, ops * kPage, elapsed, ok);
  return ok;
}

// ---- idle: touch a footprint once, then mostly sleep ----
bool RunIdle() {
  const char* w = "idle";
  uint64_t bytes = ParamU64(w, "mib", 8) << 20;
  uint64_t sleep_ms = ParamU64(w, "sleep_ms", 2000);
  uint64_t wake_ms = ParamU64(w, "wake_ms", 100);
  uint64_t seed = Seed(w);
  uint64_t pages = bytes / kPage;
  auto* buf = static_cast<uint64_t*>(Mmap(bytes));
  if (!buf || pages == 0 || wake_ms == 0) return false;
  uint64_t t0 = NowNs();
  for (uint64_t p = 0; p < pages; ++p) buf[p * kWordsPerPage] = Pattern(seed, p);
  if (Corrupt(w)) buf[(pages / 2) * kWordsPerPage] ^= 1;
  uint64_t wakes = 0;
  bool ok = true;
  for (uint64_t slept = 0; slept < sleep_ms; slept += wake_ms) {
    SleepNs(wake_ms * 1000000);
    ++wakes;
    uint64_t p = Mix64(seed + wakes) % pages;  // a light touch per wake-up
    if (buf[p * kWordsPerPage] != Pattern(seed, p)) ok = false;
  }
  for (uint64_t p = 0; p < pages; ++p) {
    if (buf[p * kWordsPerPage] != Pattern(seed, p)) {
      if (ok) Fail(w, "page", p, buf[p * kWordsPerPage], Pattern(seed, p));
      ok = false;
    }
  }
  uint64_t elapsed = NowNs() - t0;
  Munmap(buf, bytes);
  Report("wakeups", wakes);
  ReportRun(2 * pages + wakes, 2 * pages * 8, elapsed, ok);
  return ok;
}

// ---- balloon: keep a footprint verified while the host inflates and deflates ----
// Waits (running read-modify-write passes over `mib`) until the balloon holds
// at least `expect_pages` (or has inflated that many in all), optionally
// touches `pressure_mib` more (which makes a balloon with DEFLATE_ON_OOM give
// pages back), then waits until the balloon is
// down to `release_pages`, holds `hold_ms` and verifies everything. Fails if a
// phase does not happen within `timeout_ms`.
bool RunBalloon() {
  const char* w = "balloon";
  uint64_t bytes = ParamU64(w, "mib", 8) << 20;
  uint64_t expect = ParamU64(w, "expect_pages", 0);
  uint64_t release = ParamU64(w, "release_pages", 0);
  uint64_t pressure = ParamU64(w, "pressure_mib", 0) << 20;
  uint64_t timeout_ns = ParamU64(w, "timeout_ms", 60000) * 1000000;
  uint64_t hold_ms = ParamU64(w, "hold_ms", 500);
  uint64_t seed = Seed(w);
  uint64_t n = bytes / 8;
  auto* buf = static_cast<uint64_t*>(Mmap(bytes));
  if (!buf || n == 0) return false;
  uint64_t t0 = NowNs();
  for (uint64_t i = 0; i < n; ++i) buf[i] = Pattern(seed, i);
  if (Corrupt(w)) buf[n / 2] ^= 1;
  // Published at once: from here on the workload allocates nothing until the
  // pressure phase, so a host may take the guest's free memory as settled.
  Report("buffer_pages", bytes / kPage);
  uint64_t all_keys = 0, rounds = 0, max_pages = 0, ops = n;
  bool ok = true;
  auto pass = [&]() {
    uint64_t key = Pattern(seed ^ 0xba11, rounds++) | 1;
    all_keys ^= key;
    for (uint64_t i = 0; i < n; ++i) buf[i] ^= key;
    ops += n;
    uint64_t pages = MemInfo(guest::kMemBalloonPages);
    if (pages > max_pages) max_pages = pages;
    return pages;
  };
  // Phase 1: inflation to at least `expect` pages. The driver's cumulative
  // count also ends it: a host that deflates as soon as `actual` reaches its
  // target can do so between two passes (on kvm a long inflating tick can be
  // followed at once by the deflating one), and the workload must not wait
  // for a balloon it already missed.
  uint64_t start = NowNs();
  while (pass() < expect && MemInfo(guest::kMemBalloonInflated) < expect) {
    if (NowNs() - start > timeout_ns) {
      Printf("balloon: timed out waiting for %lu pages (have %lu)\n", expect,
             MemInfo(guest::kMemBalloonPages));
      ok = false;
      break;
    }
    SleepNs(20000000);
  }
  if (ok) Printf("balloon: inflated to %lu pages\n", MemInfo(guest::kMemBalloonPages));
  if (ok && pressure != 0) {
    uint64_t pages = pressure / kPage;
    auto* extra = static_cast<uint64_t*>(Mmap(pressure));
    if (!extra) return false;
    for (uint64_t p = 0; p < pages; ++p) extra[p * kWordsPerPage] = Pattern(seed + 1, p);
    for (uint64_t p = 0; p < pages; ++p) {
      if (extra[p * kWordsPerPage] != Pattern(seed + 1, p)) {
        if (ok) Fail(w, "pressure page", p, extra[p * kWordsPerPage], Pattern(seed + 1, p));
        ok = false;
      }
    }
    Munmap(extra, pressure);
    Printf("balloon: touched %lu pressure pages, balloon now %lu\n", pages,
           MemInfo(guest::kMemBalloonPages));
  }
  // Phase 2: deflation down to `release` pages.
  start = NowNs();
  while (ok && pass() > release) {
    if (NowNs() - start > timeout_ns) {
      Printf("balloon: timed out waiting for at most %lu pages\n", release);
      ok = false;
      break;
    }
    SleepNs(20000000);
  }
  if (hold_ms) SleepNs(hold_ms * 1000000);
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t want = Pattern(seed, i) ^ all_keys;
    if (buf[i] != want) {
      if (ok) Fail(w, "word", i, buf[i], want);
      ok = false;
      break;
    }
  }
  ops += n;
  uint64_t elapsed = NowNs() - t0;
  Munmap(buf, bytes);
  Report("rounds", rounds);
  Report("max_pages", max_pages);
  Report("final_pages", MemInfo(guest::kMemBalloonPages));
  Report("inflated", MemInfo(guest::kMemBalloonInflated));
  Report("deflated", MemInfo(guest::kMemBalloonDeflated));
  Report("oom_deflated", MemInfo(guest::kMemBalloonOomDeflated));
  Report("reported_pages", MemInfo(guest::kMemBalloonReportedPages));
  Report("minor_faults", MemInfo(guest::kMemMinorFaults));
  ReportRun(ops, ops * 8, elapsed, ok);
  return ok;
}

// ---- mix: several workloads as concurrent processes (or, with serial=1,
// one after another, each started once the previous one exited) ----
bool RunMix() {
  const bool serial = ParamU64("mix", "serial", 0) != 0;
  char list[128];
  if (!ParamStr("mix", "list", list, sizeof(list))) {
    const char* def = "compute,memtouch,ptchurn,tlbstress,dedupfill,idle";
    uint64_t i = 0;
    for (; def[i]; ++i) list[i] = def[i];
    list[i] = 0;
  }
  uint64_t t0 = NowNs();
  uint64_t started = 0;
  bool ok = true;
  char* item = list;
  for (char* p = list;; ++p) {
    if (*p != ',' && *p != 0) continue;
    bool last = *p == 0;
    *p = 0;
    if (*item) {
      int64_t pid = Fork();
      if (pid == 0) {
        SetName(item);
        Exit(RunWorkload(item) ? 0 : 1);
      }
      if (pid < 0) {
        ok = false;
      } else if (serial) {
        WaitResult wr = Wait();
        if (wr.pid < 0 || wr.status != 0) ok = false;
      } else {
        ++started;
      }
    }
    if (last) break;
    item = p + 1;
  }
  for (uint64_t i = 0; i < started; ++i) {
    WaitResult wr = Wait();
    if (wr.pid < 0 || wr.status != 0) ok = false;
  }
  ReportRun(started, 0, NowNs() - t0, ok);
  return ok;
}

// ---- fault: children that fault must die; the rest goes on ----
bool RunFault() {
  const char* w = "fault";
  constexpr int kCases = 4;
  // Expected kill vectors: #PF, #GP, #DE, #PF.
  constexpr uint32_t kVectors[kCases] = {14, 13, 0, 14};
  uint64_t t0 = NowNs();
  bool ok = true;
  uint64_t killed = 0;
  for (int c = 0; c < kCases; ++c) {
    int64_t pid = Fork();
    if (pid == 0) {
      // Hide the addresses from the optimizer: the faults are the point.
      uint64_t null_va = 0x10, image_va = guest::kUserImageVa;
      asm volatile("" : "+r"(null_va), "+r"(image_va));
      switch (c) {
        case 0:  // write through a null pointer
          *reinterpret_cast<volatile uint64_t*>(null_va) = 1;
          break;
        case 1:  // a privileged instruction at CPL3
          asm volatile("hlt");
          break;
        case 2: {  // integer divide by zero
          uint64_t zero = 0;
          asm volatile("xor %%edx, %%edx; divq %1" : "+a"(zero) : "r"(zero) : "rdx");
          break;
        }
        case 3:  // a write to the read-only program image
          *reinterpret_cast<volatile uint64_t*>(image_va) = 1;
          break;
      }
      Exit(42);  // not reached when the kernel kills us
    }
    WaitResult wr = Wait(pid);
    if (wr.pid != pid || wr.status != (guest::kWaitKilled | kVectors[c])) {
      Printf("fault: case %d ended with status %x\n", c, wr.status);
      ok = false;
    } else {
      ++killed;
    }
  }
  if (ParamU64(w, "init", 0) != 0 && Getpid() == 1) {
    // fault.init=1: init itself faults; the kernel must exit with kExitInitKilled.
    uint64_t null_va = 0x20;
    asm volatile("" : "+r"(null_va));
    *reinterpret_cast<volatile uint64_t*>(null_va) = 1;
  }
  // The kernel and this process carry on normally.
  uint64_t seed = Seed(w);
  bool compute_ok = ComputePass(seed, 10000, Corrupt(w)) == ComputePass(seed, 10000, false);
  Report("killed", killed);
  ReportRun(kCases, 0, NowNs() - t0, ok && compute_ok);
  return ok && compute_ok;
}

}  // namespace user

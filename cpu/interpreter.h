// Interpreter: the soft backend's x86-64 execution core (64-bit mode).
//
// An Interpreter is bound to one vCPU's CpuState, its VcpuMmu (whose SoftTlb
// serves every access) and the VM's PagingStrategy (the TLB miss path), plus
// a CpuPlatform for what leaves the CPU (port I/O, MMIO, the interrupt
// controller). Run() executes guest instructions until a budget is used, HLT,
// an I/O exit, or a triple fault.
//
// Execution model (docs/cpu.md, "How a vCPU will run"):
//   - Fetch: the code page's host address comes from SoftTlb::Lookup<kFetch>
//     (miss: PagingStrategy::Translate with Access::kFetch).
//   - Decode once: a 2-way set-associative block cache, indexed by the guest rip and
//     tagged with the host address of the block's first instruction (so
//     aliases and remaps are told apart, and which blocks collide does not
//     depend on host addresses), holds up to kMaxBlockInsns DecodedInsns
//     from DecodeBlock. It is preallocated: no allocation in steady state. Each
//     code page has a PageInfo (a node of a hash map that grows only when a
//     new code page is first decoded) whose generation a block records;
//     bumping it invalidates every block of the page in O(1).
//   - Threaded dispatch: each handler tail-jumps to the next instruction's
//     handler, and at a block's end into the linked next block (see
//     Threaded, ChainOrReturn); Run's loop is entered again only every few
//     blocks, on a miss, or when something needs its attention.
//   - Block chaining: a block that ran to its end remembers the block that
//     followed (two links: fall-through and other), so the next block start
//     skips the fetch lookup and the cache probe. Anything that may change a
//     translation, CPL or decoded code breaks every link at once (an epoch).
//   - An instruction that straddles a page end is fetched into a 15-byte
//     buffer (fetching the second page only when the instruction needs it) and
//     decoded singly, never cached.
//   - Self-modifying code: a page holding decoded code is never writable in
//     the soft TLB. When a page first gets decoded blocks the whole soft TLB is
//     flushed (O(1), epoch), and every later Translate that would install a
//     writable entry for a code page is re-filled without write permission. A
//     write to such a page therefore always takes the miss path, which bumps
//     the page's generation (dropping its blocks), unmarks it and lets the
//     write proceed; if it lands in the running block, the block is left after
//     the writing instruction. The cost: a page mixing code and hot data
//     ping-pongs between the two states (counted as smc_invalidations).
//   - FrameTable invalidations (the strategy's flush generation moves): every
//     decoded block is dropped, since a host frame may now hold other content.
//
// System state (cpu/system.cc): exceptions, INT n and external interrupts are
// delivered through the 64-bit IDT with #DF and triple-fault handling; MOV
// CR, MSRs, SYSCALL/SYSRET, SWAPGS, IRETQ, far RET, descriptor tables, INS/
// OUTS. Only 64-bit mode exists: a transfer to a non-64-bit code segment is
// #GP. Not here: x87/SSE. Unimplemented instructions raise #UD, are counted
// and logged with their bytes (rate-limited).
//
// Thread safety: one Interpreter per vCPU, used only on that vCPU's thread.
// Counters may be read from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include "absl/container/node_hash_map.h"
#include "base/counters.h"
#include "cpu/cpu_state.h"
#include "cpu/decoder.h"
#include "cpu/insn.h"
#include "mmu/paging_strategy.h"
#include "mmu/soft_tlb.h"

namespace cpu {

#define CPU_INTERPRETER_COUNTERS(X)                                                \
  X(Instructions, instructions)                                                   \
  X(BlocksDecoded, blocks_decoded)                                                \
  X(FollowedJccs, followed_jccs)      /* hot side exits made followed (re-decodes) */ \
  X(BlockCacheHits, block_cache_hits)                                             \
  X(BlockCacheMisses, block_cache_misses)                                         \
  X(CrossPageInsns, cross_page_insns) /* decoded singly across a page end */      \
  X(RepPageRuns, rep_page_runs)       /* REP STOS/MOVS runs done a page at once */ \
  X(TlbMisses, tlb_misses)            /* Translate calls */                       \
  X(TranslateRetries, translate_retries) /* kRetry/kSpurious answers retried */   \
  X(Ud, ud)                           /* #UD raised, UD2 included */              \
  X(Unimplemented, unimplemented)     /* #UD for a decoded op we do not run */    \
  X(Mmio, mmio)                                                                   \
  X(Pio, pio)                                                                     \
  X(SmcInvalidations, smc_invalidations)                                          \
  X(CacheFlushes, cache_flushes)      /* whole block cache dropped */             \
  X(Exceptions, exceptions)          /* raised, delivered or not */          \
  X(Interrupts, interrupts)          /* external interrupts delivered */     \
  X(DoubleFaults, double_faults)                                              \
  X(TripleFaults, triple_faults)                                              \
  X(IoExits, io_exits)               /* IoStatus::kExit answers */           \
  X(IoReplays, io_replays)           /* instructions re-run with a read value */ \
  X(UnknownMsrs, unknown_msrs)       /* RDMSR/WRMSR #GP: no such MSR, or a refused value */ \
  X(Cr3Writes, cr3_writes)                                                    \
  X(Invlpgs, invlpgs)                                                         \
  X(Syscalls, syscalls)
BASE_DEFINE_COUNTERS(InterpreterCounters, CPU_INTERPRETER_COUNTERS);

// What a port or MMIO access asks of the CPU.
enum class IoStatus : uint8_t {
  // Done: a read's value is in *data; a write has taken effect.
  kDone,
  // The platform needs its caller (the VMM's exit loop) before the access
  // completes. A read: the instruction is abandoned with no architectural
  // effect and Run() stops with kIoExit; once the value is known, the VMM
  // calls CompleteIoRead() and the next Run() re-executes the instruction,
  // which then sees that value (before any interrupt is taken). A write: the
  // platform has captured the data; the instruction (or, for REP INS/OUTS/
  // MOVS/STOS, the current iteration) completes and Run() stops with kIoExit
  // right after it.
  kExit,
};

// What leaves the CPU: port I/O, MMIO, MSRs the CPU does not implement, and
// the local interrupt controller. Implemented by the soft backend's vCPU
// (tests use fakes). Called on the vCPU thread.
class CpuPlatform {
 public:
  virtual ~CpuPlatform() = default;
  // IN: `size` is 1, 2 or 4; the result goes to the low `size` bytes of *data.
  virtual IoStatus PortIn(uint16_t port, uint8_t size, uint32_t* data) noexcept = 0;
  virtual IoStatus PortOut(uint16_t port, uint8_t size, uint32_t data) noexcept = 0;
  // MMIO at a guest-physical address that is not RAM; size 1..8, never
  // crossing a page. An address nothing decodes reads all ones and drops
  // writes (an unclaimed bus cycle); that is the platform's to do.
  virtual IoStatus MmioRead(uint64_t gpa, uint8_t size, uint64_t* data) noexcept = 0;
  virtual IoStatus MmioWrite(uint64_t gpa, uint8_t size, uint64_t data) noexcept = 0;
  // RDMSR/WRMSR of an MSR the CPU itself does not hold (e.g. IA32_APIC_BASE).
  // false: the MSR does not exist or refuses the value, and the CPU raises
  // #GP(0).
  virtual bool ReadMsr(uint32_t /*msr*/, uint64_t* /*value*/) noexcept { return false; }
  virtual bool WriteMsr(uint32_t /*msr*/, uint64_t /*value*/) noexcept { return false; }
  // The local interrupt controller. PendingInterrupt: the vector the CPU
  // should take now if interrupts are enabled, or -1. The CPU asks only after
  // RequestInterruptCheck() and with RFLAGS.IF = 1 outside an interrupt
  // shadow, then Acknowledge()s the vector it delivers.
  virtual int PendingInterrupt() noexcept { return -1; }
  virtual void AcknowledgeInterrupt(uint8_t /*vector*/) noexcept {}
  // CR8 (the task-priority class, SDM Vol. 3A §11.8.6).
  virtual uint8_t ReadCr8() noexcept { return 0; }
  virtual void WriteCr8(uint8_t /*value*/) noexcept {}
};

// Exception vectors (SDM Vol. 3A §6.15, Table 6-1).
inline constexpr uint8_t kVectorDe = 0;
inline constexpr uint8_t kVectorDb = 1;
inline constexpr uint8_t kVectorNmi = 2;
inline constexpr uint8_t kVectorBp = 3;
inline constexpr uint8_t kVectorUd = 6;
inline constexpr uint8_t kVectorDf = 8;
inline constexpr uint8_t kVectorTs = 10;
inline constexpr uint8_t kVectorNp = 11;
inline constexpr uint8_t kVectorSs = 12;
inline constexpr uint8_t kVectorGp = 13;
inline constexpr uint8_t kVectorPf = 14;

struct PendingException {
  uint8_t vector = 0;
  bool has_error_code = false;
  uint32_t error_code = 0;
  uint64_t cr2 = 0;  // #PF only
};

enum class StopReason : uint8_t {
  kBudget,      // max_instructions retired
  kHalt,        // HLT retired; rip is after it
  kException,   // `exception` raised and not delivered (set_deliver_events(false));
                // rip is the faulting instruction (for traps, INT3/INT n, the next one)
  kIoExit,      // the platform answered IoStatus::kExit (see IoStatus)
  kTripleFault, // a fault while delivering a double fault: the machine shuts down
  kHostError,   // the strategy could not back RAM (TranslateResult::kHostError)
};

struct RunResult {
  StopReason reason = StopReason::kBudget;
  uint64_t instructions = 0;  // retired by this Run
  PendingException exception;  // kException; for kTripleFault the last fault
  std::string_view detail;     // kTripleFault, kHostError: why, for the report
};

class Interpreter {
 public:
  // Block cache geometry: 1024 blocks of at most 32 instructions (about
  // 1.4 KiB each with their handlers), 2-way set-associative (512 sets:
  // two hot blocks whose rips share a set no longer evict each other on
  // every turn, as the guest kernel's fault entry and exit did in ptchurn),
  // allocated once.
  static constexpr uint32_t kMaxBlockInsns = 32;
  // Followed Jccs per block, and the taken side exits in a row that make a
  // Jcc followed.
  static constexpr uint32_t kMaxFollow = 4;
  static constexpr uint16_t kHotSideExits = 64;
  static constexpr uint32_t kNumBlocks = 1024;
  static constexpr uint32_t kBlockWays = 2;

  // None of the pointers are owned; all must outlive the interpreter. The
  // vCPU must already be attached to `strategy`. `platform` may be null
  // (ports read all ones, MMIO reads all ones, writes dropped).
  Interpreter(CpuState* state, mmu::VcpuMmu* vcpu, mmu::PagingStrategy* strategy,
              CpuPlatform* platform);
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  // Runs at most `max_instructions` instructions (a REP string instruction
  // counts once).
  RunResult Run(uint64_t max_instructions) noexcept;

  // Drops every decoded block (e.g. after the host changed guest memory
  // behind the CPU's back).
  void FlushDecodeCache() noexcept;

  // Exceptions and INT n go through the guest IDT (true; the soft backend) or
  // stop Run() with kException and the faulting state (false; the default,
  // for instruction-level tests).
  void set_deliver_events(bool deliver) noexcept { deliver_events_ = deliver; }
  // Tests: decode with only the general per-(size, op) handlers, so the
  // specialised ones can be checked against them. Before the first Run.
  void set_specialised_handlers_for_testing(bool on) noexcept { specialised_handlers_ = on; }
  // Something may have become deliverable (the platform's interrupt
  // controller changed): the CPU asks PendingInterrupt() at the next
  // instruction boundary where RFLAGS.IF = 1. Cheap; call freely.
  void RequestInterruptCheck() noexcept { interrupt_check_ = true; }
  // The value of the read that ended the last Run() with kIoExit (low bytes,
  // size of the access). The next Run() re-executes the instruction with it.
  void CompleteIoRead(uint64_t value) noexcept;
  // The CPU state changed from outside (registers loaded, CR0/CR4/EFER/CR3
  // set): re-derive the translation registers in the VcpuMmu and tell the
  // strategy.
  void SyncPagingRegisters() noexcept;
  // The VM switched paging strategies (docs/paging-strategies.md,
  // "Switching"): from now on misses and guest events go to `strategy`,
  // which the vCPU is already attached to (AttachVcpu flushed its soft TLB).
  // Breaks every block chain and drops every decoded block (a flush the old
  // strategy posted while the vCPU was quiescent would otherwise be lost),
  // and takes the new strategy's flush generation as seen. vCPU thread,
  // between Run() calls.
  void set_strategy(mmu::PagingStrategy* strategy) noexcept;
  mmu::PagingStrategy* strategy() const noexcept { return strategy_; }

  const InterpreterCounters& counters() const { return counters_; }

  // The CPUID leaf table (documented in interpreter.cc). Public for tests.
  static void Cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) noexcept;

 private:
  struct PageInfo {
    uint64_t generation = 0;
    bool has_code = false;
  };
  // What executing one instruction did. kStop: leave the block; stop_ says
  // whether Run() goes on (kDelivered: an event redirected rip, which is
  // already set; the instruction retired only if it was a trap).
  // kDirty (only from Threaded): the instruction at exit_at_ retired and the
  // block must be left after it (block_dirty_).
  enum class Flow : uint8_t { kNext, kStop, kDirty };
  using Handler = Flow (*)(Interpreter*, const DecodedInsn&) noexcept;

  struct Block;
  // A direct link from a block to the block that ran after it, so the next
  // block start skips the fetch TLB lookup and the block-cache probe (block
  // chaining). A link is a cached "rip -> decoded block" answer: it is used
  // only for the same rip at the same CPL, while the target slot holds the
  // same block (tag), and while chain_epoch_ has not moved (every
  // code-generation bump moves it too, so a link never leads to stale code).
  // The epoch moves on whatever may change the rip -> host translation:
  // MOV CR3, INVLPG, paging-mode changes (CR0, CR4, EFER), host
  // invalidations of guest frames (a moved flush generation; checked at
  // Run() entry too, so links live across Run() calls). CPL changes
  // (SYSCALL, IRET, event delivery) need not: a link only serves its own
  // CPL. TLB fills and evictions need not either: a dropped entry is still
  // the translation in force, and a guest that edits a code mapping must
  // INVLPG it.
  struct Link {
    Block* block = nullptr;
    uint64_t rip = 0;    // guest rip the link leads to
    uintptr_t tag = 0;   // block->tag when linked
    uint64_t epoch = 0;  // chain_epoch_ when linked (0: never)
    uint8_t cpl = 0;     // the CPL it was made at: fetch rights depend on it
  };
  struct Block {
    uintptr_t tag = 0;  // host address of the first instruction; 0 = empty
    PageInfo* page = nullptr;
    uint64_t generation = 0;
    uint32_t num_insns = 0;
    // links[1]: to the fall-through address of the last instruction;
    // links[0]: anywhere else (a taken branch, a return).
    Link links[2];
    uint64_t fallthrough_offset = 0;  // bytes from the first instruction to the end
    // How the block ends, for the return-address stack: a near CALL pushes
    // the block (its fall-through link leads to the return point), a near
    // RET pops it.
    enum class Exit : uint8_t { kOther, kCall, kRet } exit = Exit::kOther;
    // Hot side exits (see NoteSideExit): Jccs inside the block that are
    // mostly taken are followed when the block is decoded again. `follow`
    // holds their page offsets; it survives re-decodes of the same code
    // address and is cleared when the slot gets other code.
    uint8_t num_follow = 0;
    uint16_t follow[kMaxFollow] = {};
    uint32_t followed = 0;          // bit i: insns[i] is a followed Jcc
    uint8_t side_exit_insn = 0;     // the Jcc the last side exits left by
    uint16_t side_exits = 0;        // how many side exits in a row it took
    uint16_t insn_offsets[kMaxBlockInsns] = {};  // page offset of each instruction
    DecodedInsn insns[kMaxBlockInsns];
    Handler handlers[kMaxBlockInsns];  // resolved at decode; threaded (see Threaded)
  };

  Flow Execute(const DecodedInsn& in) noexcept;
  template <int kSize, Op kOp>
  [[gnu::always_inline]] inline Flow ExecuteOp(const DecodedInsn& in) noexcept;
  // `specialised`: the per-form/per-size handlers where one exists (the
  // default); false gives the general per-(size, op) handler everywhere.
  static Handler ResolveHandler(const DecodedInsn& in, bool specialised) noexcept;
  // Threaded dispatch: every handler a block holds is Threaded<inner>, which
  // runs the instruction, retires it and jumps straight to the next one's
  // handler (a tail call: one predicted indirect jump per instruction, no
  // return to a dispatch loop). It returns at the block's end (kNext), or
  // with exit_at_ set (kStop: that instruction did not complete; kDirty: it
  // retired and the block must be left).
  template <Handler kInner>
  static Flow Threaded(Interpreter* self, const DecodedInsn& in) noexcept;
  Flow ChainOrReturn(const DecodedInsn* last, Flow leave) noexcept;
  // The link that leads on from block `from` (started at `from_start`, left
  // by `exit`) to `rip`: through the return stack's caller after a RET,
  // else the block's fall-through or other slot. Run and ChainOrReturn share
  // it; the caller pops the return stack.
  [[gnu::always_inline]] inline Link* LinkSlot(Block* from, uint64_t from_start, Block::Exit exit,
                                               uint64_t rip) noexcept;
  // Whether `link` may be followed to `rip` now (see Link). No code-
  // generation check: every generation bump also moves chain_epoch_.
  bool LinkUsable(const Link& link, uint64_t rip) const noexcept {
    return link.epoch == chain_epoch_ && link.rip == rip && link.block->tag == link.tag &&
           link.cpl == state_.cpl;
  }
  void PushReturn(Block* caller, uint64_t caller_start) noexcept {
    return_stack_[return_top_++ % kReturnStack] = {caller_start + caller->fallthrough_offset, caller};
  }
  template <unsigned kCond>
  [[gnu::always_inline]] static inline Flow JccThunk(Interpreter* self, const DecodedInsn& in) noexcept;
  // A Jcc inside a superblock: when taken it leaves the block; a followed
  // one (the next instruction is its target) leaves it when not taken.
  template <bool kFollowed, unsigned kCond>
  [[gnu::always_inline]] static inline Flow JccSideThunk(Interpreter* self, const DecodedInsn& in) noexcept;
  template <bool kFollowed, size_t... kConds>
  static constexpr std::array<Handler, 16> JccSideRow(std::index_sequence<kConds...>) noexcept;
  static Handler ResolveJccSide(const DecodedInsn& in, bool followed) noexcept;
  // A side exit of block `b` after insns[index] (a taken, or not-taken
  // followed, Jcc inside it). A Jcc that takes kHotSideExits side exits of
  // the block in a row (runs to the block's end in between do not count) is
  // made followed: the block is marked for a new decode, which its next
  // lookup does. Returns true when it did so (the caller must not chain
  // on: the chains were broken).
  bool NoteSideExit(Block* b, uint32_t index) noexcept;
  // MOV and the two-operand ALU ops, specialised on where their operands
  // are (register, immediate, memory), so the hottest handlers carry no
  // operand-kind switches.
  enum class Form : uint8_t { kRegReg, kRegImm, kRegMem, kMemReg, kMemImm };
  template <int kSize, Op kOp, Form kForm>
  [[gnu::always_inline]] static inline Flow FormThunk(Interpreter* self, const DecodedInsn& in) noexcept;
  static Handler ResolveFormHandler(const DecodedInsn& in) noexcept;
  // MOVZX/MOVSX/MOVSXD into a register, specialised on sizes and source.
  template <int kDst, int kSrc, bool kSigned, bool kFromMem>
  [[gnu::always_inline]] static inline Flow ExtendThunk(Interpreter* self, const DecodedInsn& in) noexcept;
  static Handler ResolveExtendHandler(const DecodedInsn& in) noexcept;
  template <int kSize, Op kOp>
  [[gnu::always_inline]] static inline Flow Thunk(Interpreter* self, const DecodedInsn& in) noexcept;
  template <int kSize, size_t... kOps>
  static constexpr std::array<Handler, static_cast<size_t>(Op::kNumOps)> MakeRow(
      std::index_sequence<kOps...>) noexcept;
  template <int kSize>
  Flow StringOp(const DecodedInsn& in) noexcept;
  template <int kSize>
  uint64_t RepRunInPage(Op op, uint64_t seg_base) noexcept;

  // Fetch and decode.
  Block* LookupBlock(uint8_t* host, uint64_t rip) noexcept;
  Block* DecodeInto(Block& b, uintptr_t key) noexcept;
  // Everything linked so far is stale (see Link).
  void BreakChains() noexcept { ++chain_epoch_; }
  // The strategy's posted invalidations: the soft TLB, and the decode cache
  // when the flush generation moved. Run() calls it at entry and at every
  // block boundary it returns to.
  inline void SyncWithStrategy() noexcept;
  bool FetchAndDecodeCrossPage(DecodedInsn* out) noexcept;
  uint8_t* TranslateFetch(uint64_t gva) noexcept;

  // Fixed-size host accesses (a runtime-size memcpy would be a library
  // call on the hottest path). The host is little-endian like the guest.
  static uint64_t LoadHost(const uint8_t* p, unsigned size) noexcept {
    switch (size) {
      case 1: return *p;
      case 2: { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }
      case 4: { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
      case 8: { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }
      default: { uint64_t v = 0; __builtin_memcpy(&v, p, size); return v; }
    }
  }
  static void StoreHost(uint8_t* p, unsigned size, uint64_t v) noexcept {
    switch (size) {
      case 1: *p = static_cast<uint8_t>(v); break;
      case 2: { const uint16_t w = static_cast<uint16_t>(v); __builtin_memcpy(p, &w, 2); break; }
      case 4: { const uint32_t w = static_cast<uint32_t>(v); __builtin_memcpy(p, &w, 4); break; }
      case 8: __builtin_memcpy(p, &v, 8); break;
      default: __builtin_memcpy(p, &v, size); break;
    }
  }

  // Memory. All return false after raising an exception (or a host error).
  [[gnu::always_inline]] inline uint64_t EffectiveAddress(const DecodedInsn& in) const noexcept;
  [[gnu::always_inline]] inline uint64_t LeaAddress(const DecodedInsn& in) const noexcept;
  [[gnu::always_inline]] bool Read(uint64_t gva, unsigned size, uint64_t* value) noexcept {
    const uint8_t* p = tlb_->Lookup<mmu::Access::kRead>(MmuIndex(), gva, size);
    if (p != nullptr) [[likely]] {
      *value = LoadHost(p, size);
      return true;
    }
    return ReadSlow(gva, size, value);
  }
  [[gnu::always_inline]] bool Write(uint64_t gva, unsigned size, uint64_t value) noexcept {
    uint8_t* p = tlb_->Lookup<mmu::Access::kWrite>(MmuIndex(), gva, size);
    if (p != nullptr) [[likely]] {
      StoreHost(p, size, value);
      return true;
    }
    return WriteSlow(gva, size, value);
  }
  bool ReadSlow(uint64_t gva, unsigned size, uint64_t* value) noexcept;
  bool WriteSlow(uint64_t gva, unsigned size, uint64_t value) noexcept;
  // One page-contained access on the miss path.
  bool AccessPage(uint64_t gva, unsigned size, mmu::Access access, uint64_t* value) noexcept;
  // Translate with the code-page write fix-up. Returns the result; on kFixed
  // *host_page and *gpa are set.
  mmu::TranslateResult TranslateAccess(uint64_t gva, mmu::Access access, uint8_t** host_page,
                                       uint64_t* gpa) noexcept;
  void NoteCodeWrite(uint8_t* host_page) noexcept;

  [[gnu::always_inline]] inline bool ReadOperand(const DecodedInsn& in, const Operand& op,
                                                 unsigned size, uint64_t* v) noexcept;
  [[gnu::always_inline]] inline bool WriteOperand(const DecodedInsn& in, const Operand& op,
                                                  unsigned size, uint64_t v) noexcept;
  [[gnu::always_inline]] inline bool Push(unsigned size, uint64_t v) noexcept;
  [[gnu::always_inline]] inline bool Pop(unsigned size, uint64_t* v) noexcept;

  mmu::SoftTlb::MmuIdx MmuIndex() const noexcept {
    return state_.cpl == 3 ? mmu::SoftTlb::MmuIdx::kUser : mmu::SoftTlb::MmuIdx::kSupervisor;
  }

  // The one place faults go (cpu/system.cc): delivers the exception through
  // the IDT (or stops Run() when events are not delivered). Traps (INT3,
  // INT n) set state_.rip to the next instruction first.
  Flow RaiseException(uint8_t vector, bool has_error_code = false, uint32_t error_code = 0,
                      uint64_t cr2 = 0) noexcept;
  Flow Unimplemented(const DecodedInsn& in) noexcept;

  // --- System (cpu/system.cc) ---
  enum class EventKind : uint8_t { kException, kSoftwareInt, kExternal };
  // Delivers one event through the 64-bit IDT (SDM Vol. 3A §6.14), turning
  // faults during delivery into #DF and a fault delivering #DF into a triple
  // fault (§6.15, Table 6-5).
  void DeliverEvent(uint8_t vector, EventKind kind, bool has_error_code, uint32_t error_code) noexcept;
  // One delivery attempt; false if a fault interrupted it (recorded in nested_).
  bool TryDeliver(uint8_t vector, EventKind kind, bool has_error_code, uint32_t error_code) noexcept;
  Flow ExecuteSystem(const DecodedInsn& in) noexcept;
  Flow StringIo(const DecodedInsn& in) noexcept;
  bool CheckIoPrivilege() noexcept;
  // Reads the 8-byte descriptor `selector` names in the GDT (LDT: #GP).
  // Raises #GP(selector) when it is outside the table.
  bool ReadDescriptor(uint16_t selector, uint64_t* desc) noexcept;
  // Implicit supervisor accesses (descriptor tables, TSS, the delivery
  // stack): done at CPL 0 whatever the current CPL.
  bool ReadSystem(uint64_t gva, unsigned size, uint64_t* value) noexcept;
  bool WriteSystem(uint64_t gva, unsigned size, uint64_t value) noexcept;
  // Loads CS for a far transfer to `selector` (64-bit code only); sets cpl.
  bool LoadCs(uint16_t selector, uint8_t new_cpl) noexcept;
  // Checks and loads a data segment register (MOV Sreg, POP, IRET, RETF).
  bool LoadDataSegment(uint8_t sreg, uint16_t selector) noexcept;
  bool LoadReturnSs(uint16_t ss, uint16_t old_cs, uint8_t old_cpl) noexcept;
  bool FarReturn(const DecodedInsn& in) noexcept;
  bool Iret(const DecodedInsn& in) noexcept;
  bool WriteCr(uint8_t cr, uint64_t value) noexcept;
  bool ReadMsr(uint32_t msr, uint64_t* value) noexcept;
  bool WriteMsr(uint32_t msr, uint64_t value) noexcept;
  void SetCpl(uint8_t cpl) noexcept { state_.cpl = cpl; }
  // Platform I/O with the replay protocol (IoStatus). false: stop (kIoExit).
  bool PlatformPortIn(uint16_t port, uint8_t size, uint32_t* data) noexcept;
  bool PlatformPortOut(uint16_t port, uint8_t size, uint32_t data) noexcept;
  bool PlatformMmioRead(uint64_t gpa, uint8_t size, uint64_t* data) noexcept;
  bool PlatformMmioWrite(uint64_t gpa, uint8_t size, uint64_t data) noexcept;
  // Executes the instruction at rip once, alone (cross-page, I/O replay,
  // interrupt shadow). `crosses_page`: the caller already found that it
  // straddles the page end, so it is fetched across pages without another
  // block lookup. Returns false if Run() must stop.
  bool StepSingle(uint64_t* retired, bool crosses_page = false) noexcept;
  // After a handler returned kStop: true if Run() stops (else an event was
  // delivered and execution goes on at rip).
  bool AfterStop(uint64_t* retired) noexcept;
  // Takes a pending external interrupt if one is deliverable now.
  void MaybeTakeInterrupt() noexcept;

  CpuState& state_;
  mmu::VcpuMmu& vcpu_;
  mmu::SoftTlb* const tlb_;  // vcpu_.tlb, one load closer to the hit path
  mmu::PagingStrategy* strategy_;  // reseatable: set_strategy()
  CpuPlatform* platform_;

  // Set by the executing instruction.
  uint64_t next_rip_ = 0;
  // Leave the block after this instruction: its page was written (SMC), the
  // machine state the block was decoded under changed, or stop_after_.
  bool block_dirty_ = false;
  // Stop Run() after this instruction retires (a write that exits).
  bool stop_after_ = false;
  // A Jcc inside the block was taken (it also sets block_dirty_).
  bool branch_exit_ = false;
  // The block being run by threaded dispatch (see Threaded).
  const DecodedInsn* ctx_insns_ = nullptr;
  const Handler* ctx_handlers_ = nullptr;
  const DecodedInsn* ctx_end_ = nullptr;  // one past the last instruction to run
  const DecodedInsn* exit_at_ = nullptr;
  // Chaining inside threaded dispatch (ChainOrReturn).
  // Without optimisation the compiler does not turn the handlers' tail calls
  // into jumps, so each chained instruction is a stack frame: chain little.
#ifdef __OPTIMIZE__
  static constexpr uint32_t kChainBlocks = 32;
#else
  static constexpr uint32_t kChainBlocks = 2;
#endif
  Block* cur_block_ = nullptr;
  uint64_t cur_start_ = 0;          // guest rip of cur_block_'s first instruction
  uint32_t chain_credits_ = 0;      // blocks that may still be chained
  uint64_t chain_insns_left_ = 0;   // budget left after the current block
  uint64_t chained_retired_ = 0;    // instructions of blocks chained through
  StopReason stop_ = StopReason::kBudget;
  PendingException exception_;
  const char* stop_detail_ = "";

  // Events.
  bool deliver_events_ = false;
  bool specialised_handlers_ = true;
  bool interrupt_check_ = false;
  bool delivered_ = false;       // an event redirected rip during this instruction
  bool delivered_trap_ = false;  // ... and the instruction retired (INT n, INT3, SYSCALL-like)
  // Inside TryDeliver: a fault is recorded here instead of being delivered.
  bool delivering_ = false;
  PendingException nested_;

  // The I/O replay log (IoStatus::kExit on a read): values returned to the
  // instruction being re-executed, in order.
  static constexpr unsigned kMaxIoReplay = 4;
  uint64_t io_replay_[kMaxIoReplay] = {};
  unsigned io_replay_count_ = 0;  // values known
  unsigned io_replay_pos_ = 0;    // values consumed by the running instruction
  bool io_read_pending_ = false;  // the last Run() stopped on a read exit

  std::unique_ptr<Block[]> blocks_;
  // Per set: the way used last (the other one is replaced on a miss).
  std::unique_ptr<uint8_t[]> block_mru_;
  uint64_t chain_epoch_ = 1;
  // Return-address stack of blocks that ended in a CALL (a ring: overflow
  // forgets the oldest; a wrong guess only costs a normal lookup, since
  // every link is validated before use).
  struct ReturnEntry {
    uint64_t rip = 0;  // the return address
    Block* caller = nullptr;
  };
  static constexpr unsigned kReturnStack = 16;
  ReturnEntry return_stack_[kReturnStack];
  unsigned return_top_ = 0;
  // Code pages by host address; node-based: blocks keep PageInfo pointers.
  absl::node_hash_map<uintptr_t, PageInfo> pages_;
  uint64_t seen_flush_generation_ = 0;
  uint32_t unimplemented_logged_ = 0;
  uint64_t local_block_hits_ = 0;  // folded into counters_ at the end of Run
  InterpreterCounters counters_;
};

}  // namespace cpu

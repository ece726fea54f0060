#include "cpu/interpreter.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "cpu/alu.h"
#include "cpu/interpreter_inl.h"

namespace cpu {

using mmu::Access;
using mmu::TranslateResult;

namespace {

// A translation answers kRetry while a FrameTable verb changes a backing
// (BackingSeq odd). The verb waits for this vCPU to sync its soft TLB, so a
// retry syncs first; after a few quick ones it yields to the verb's thread.
// The bound only turns a host that never finishes its verb into a reported
// host error instead of a hang.
constexpr uint32_t kQuickTranslateRetries = 16;
constexpr uint32_t kMaxTranslateRetries = 100'000;
constexpr uint32_t kMaxUnimplementedLogs = 16;

uint64_t SignExtendDyn(uint64_t v, unsigned size) noexcept {
  switch (size) {
    case 1: return static_cast<uint64_t>(SignExtend<1>(v));
    case 2: return static_cast<uint64_t>(SignExtend<2>(v));
    case 4: return static_cast<uint64_t>(SignExtend<4>(v));
    default: return v;
  }
}


size_t BlockSet(uint64_t rip) noexcept {
  // Fibonacci hashing of the guest rip, not of the host address (the tag):
  // which blocks collide then depends only on the guest, so the cache's
  // counters are the same in every run (host frames differ between runs).
  constexpr uint32_t kSets = Interpreter::kNumBlocks / Interpreter::kBlockWays;
  static_assert((kSets & (kSets - 1)) == 0 && kSets >= 2);
  return static_cast<size_t>((rip * 0x9E3779B97F4A7C15ull) >> (64 - std::countr_zero(kSets)));
}

}  // namespace

Interpreter::Interpreter(CpuState* state, mmu::VcpuMmu* vcpu, mmu::PagingStrategy* strategy,
                         CpuPlatform* platform)
    : state_(*state),
      vcpu_(*vcpu),
      tlb_(vcpu->tlb),
      strategy_(strategy),
      platform_(platform),
      blocks_(new Block[kNumBlocks]),
      block_mru_(new uint8_t[kNumBlocks / kBlockWays]()),
      seen_flush_generation_(strategy->flush_generation()) {
  static_assert((kNumBlocks & (kNumBlocks - 1)) == 0);
}

void Interpreter::set_strategy(mmu::PagingStrategy* strategy) noexcept {
  strategy_ = strategy;
  seen_flush_generation_ = strategy->flush_generation();
  FlushDecodeCache();  // also breaks the chains
}

void Interpreter::FlushDecodeCache() noexcept {
  counters_.Inc(InterpreterCounters::kCacheFlushes);
  BreakChains();
  for (auto& [page, info] : pages_) {
    ++info.generation;
    info.has_code = false;
  }
}

// ---------------------------------------------------------------------------
// CPUID. A fixed table describing the CPU this interpreter implements, and
// nothing more (SDM Vol. 2 "CPUID"):
//   0          max basic leaf 1; vendor "VMMSoftCPU64" (our own: guests must
//              not take vendor-specific paths for a CPU that is neither).
//   1          family 6 model 1 stepping 0; EDX: TSC, MSR, PAE, CX8, APIC, PGE, CMOV;
//              ECX: hypervisor present (bit 31). No x87/SSE: the guest is built
//              without them.
//   80000000h  max extended leaf 80000008h.
//   80000001h  EDX: SYSCALL, NX, Page1GB, RDTSCP, LM. ECX: LAHF/SAHF in 64-bit
//              mode. No LZCNT/BMI1: F3 0F BC/BD run as BSF/BSR.
//   80000008h  46 physical, 48 linear address bits.
//   others     all zero.
void Interpreter::Cpuid(uint32_t leaf, uint32_t /*subleaf*/, uint32_t out[4]) noexcept {
  out[0] = out[1] = out[2] = out[3] = 0;
  auto str = [](const char* s) {
    uint32_t v;
    std::memcpy(&v, s, 4);
    return v;
  };
  switch (leaf) {
    case 0:
      out[0] = 1;
      out[1] = str("VMMS");  // EBX, EDX, ECX spell the vendor
      out[3] = str("oftC");
      out[2] = str("PU64");
      break;
    case 1:
      out[0] = 0x00000610;
      out[2] = 1u << 31;
      out[3] = (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) | (1u << 9) | (1u << 13) | (1u << 15);
      break;
    case 0x80000000: out[0] = 0x80000008; break;
    case 0x80000001:
      out[2] = 1u << 0;
      out[3] = (1u << 11) | (1u << 20) | (1u << 26) | (1u << 27) | (1u << 29);
      break;
    case 0x80000008: out[0] = 46 | (48 << 8); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------
// Faults.

Interpreter::Flow Interpreter::Unimplemented(const DecodedInsn& in) noexcept {
  counters_.Inc(InterpreterCounters::kUnimplemented);
  counters_.Inc(InterpreterCounters::kUd);
  if (unimplemented_logged_ < kMaxUnimplementedLogs) [[unlikely]] {
    ++unimplemented_logged_;
    // Re-read the bytes for the log: the decoded form does not keep them.
    uint8_t bytes[kMaxInsnBytes] = {};
    const unsigned n = in.length ? in.length : 1;
    for (unsigned i = 0; i < n && i < kMaxInsnBytes; ++i) {
      uint64_t b = 0;
      const uint64_t gva = state_.rip + i;
      const uint8_t* p = vcpu_.tlb->Lookup<Access::kFetch>(MmuIndex(), gva, 1);
      uint8_t* page = nullptr;
      uint64_t gpa = 0;
      // Cold path: a miss (the entry may have been flushed since the fetch)
      // translates again; a fault here only truncates the log.
      if (p == nullptr && TranslateAccess(gva, Access::kFetch, &page, &gpa) == TranslateResult::kFixed) {
        p = page + (gva & base::kPageMask);
      }
      if (p != nullptr) b = *p;
      bytes[i] = static_cast<uint8_t>(b);
    }
    std::string hex;
    for (unsigned i = 0; i < n && i < kMaxInsnBytes; ++i) absl::StrAppendFormat(&hex, "%02x ", bytes[i]);
    LOG(WARNING) << absl::StrFormat("soft cpu: #UD for unimplemented %s at rip %#x: %s",
                                    OpName(in.op), state_.rip, hex);
  }
  return RaiseException(kVectorUd);
}

// ---------------------------------------------------------------------------
// Memory.

mmu::TranslateResult Interpreter::TranslateAccess(uint64_t gva, Access access,
                                                  uint8_t** host_page, uint64_t* gpa) noexcept {
  // A global page that only a CR3 write flushed comes back without the
  // strategy: nothing about it changed (SoftTlb, "Global pages").
  if (uint8_t* p = vcpu_.tlb->RefillGlobal(MmuIndex(), gva, access)) {
    *host_page = p - (gva & base::kPageMask);
    *gpa = 0;  // only kMmio answers need it
    return TranslateResult::kFixed;
  }
  counters_.Inc(InterpreterCounters::kTlbMisses);
  mmu::AccessRequest req;
  req.va = gva;
  req.access = access;
  req.cpl = state_.cpl;
  req.rflags_ac = (state_.rflags_other & kFlagAc) != 0;
  for (uint32_t attempt = 0;; ++attempt) {
    mmu::TranslateOutcome out;
    const TranslateResult r = strategy_->Translate(vcpu_, req, &out);
    if ((r == TranslateResult::kRetry || r == TranslateResult::kSpurious) &&
        attempt < kMaxTranslateRetries) {
      counters_.Inc(InterpreterCounters::kTranslateRetries);
      strategy_->SyncInvalidations(vcpu_);
      if (attempt >= kQuickTranslateRetries) std::this_thread::yield();
      continue;
    }
    if (r == TranslateResult::kFixed) {
      *host_page = out.host_page;
      *gpa = out.gpa;
      // The SMC rule: a page with decoded code never gets a writable TLB entry.
      if (out.filled && out.perms.write) {
        auto it = pages_.find(reinterpret_cast<uintptr_t>(out.host_page));
        if (it != pages_.end() && it->second.has_code) vcpu_.tlb->DropWrite(out.mmu_idx, gva);
      }
    } else if (r == TranslateResult::kMmio) {
      *gpa = out.gpa;
    } else if (r == TranslateResult::kInjectGuestFault) {
      // #PF carries an error code and CR2; #GP(0) for a non-canonical address.
      RaiseException(out.vector, true, out.error_code, out.vector == kVectorPf ? out.cr2 : 0);
    } else if (r == TranslateResult::kHostError) {
      stop_ = StopReason::kHostError;
    }
    return r;
  }
}

void Interpreter::NoteCodeWrite(uint8_t* host_page) noexcept {
  auto it = pages_.find(reinterpret_cast<uintptr_t>(host_page));
  if (it == pages_.end() || !it->second.has_code) return;
  counters_.Inc(InterpreterCounters::kSmcInvalidations);
  BreakChains();
  ++it->second.generation;
  it->second.has_code = false;
  block_dirty_ = true;
}

bool Interpreter::AccessPage(uint64_t gva, unsigned size, Access access, uint64_t* value) noexcept {
  uint8_t* host_page = nullptr;
  uint64_t gpa = 0;
  const TranslateResult r = TranslateAccess(gva, access, &host_page, &gpa);
  if (r == TranslateResult::kFixed) {
    uint8_t* p = host_page + (gva & base::kPageMask);
    if (access == Access::kWrite) {
      NoteCodeWrite(host_page);
      std::memcpy(p, value, size);
    } else {
      std::memcpy(value, p, size);
    }
    return true;
  }
  if (r == TranslateResult::kMmio) {
    if (access == Access::kWrite) {
      return PlatformMmioWrite(gpa, static_cast<uint8_t>(size), *value);
    }
    uint64_t v = 0;
    if (!PlatformMmioRead(gpa, static_cast<uint8_t>(size), &v)) return false;
    *value = MaskDyn(v, size);
    return true;
  }
  if (r == TranslateResult::kRetry || r == TranslateResult::kSpurious) {
    // Still unresolved after the retries: treat like a host error rather than
    // spinning forever inside one instruction.
    stop_ = StopReason::kHostError;
  }
  return false;
}

bool Interpreter::ReadSlow(uint64_t gva, unsigned size, uint64_t* value) noexcept {
  const uint64_t in_page = base::kPageSize - (gva & base::kPageMask);
  *value = 0;
  if (size <= in_page) return AccessPage(gva, size, Access::kRead, value);
  // Page-crossing read: two accesses, each checked on its own page (SDM
  // Vol. 3A §4.7: a fault on either page faults the whole access).
  uint64_t lo = 0, hi = 0;
  const unsigned n1 = static_cast<unsigned>(in_page);
  if (!Read(gva, n1, &lo) || !Read(gva + n1, size - n1, &hi)) return false;
  *value = lo | (hi << (n1 * 8));
  return true;
}

bool Interpreter::WriteSlow(uint64_t gva, unsigned size, uint64_t value) noexcept {
  const uint64_t in_page = base::kPageSize - (gva & base::kPageMask);
  if (size <= in_page) return AccessPage(gva, size, Access::kWrite, &value);
  // Page-crossing write: probe both pages for write before storing anything,
  // so a fault on the second page leaves memory unchanged.
  const unsigned n1 = static_cast<unsigned>(in_page);
  uint8_t* hp = nullptr;
  uint64_t gpa = 0;
  if (vcpu_.tlb->Lookup<Access::kWrite>(MmuIndex(), gva + n1, 1) == nullptr) {
    const TranslateResult r = TranslateAccess(gva + n1, Access::kWrite, &hp, &gpa);
    if (r != TranslateResult::kFixed && r != TranslateResult::kMmio) return false;
  }
  return Write(gva, n1, value) && Write(gva + n1, size - n1, value >> (n1 * 8));
}

// ---------------------------------------------------------------------------
// Fetch and decode.

uint8_t* Interpreter::TranslateFetch(uint64_t gva) noexcept {
  uint8_t* host_page = nullptr;
  uint64_t gpa = 0;
  const TranslateResult r = TranslateAccess(gva, Access::kFetch, &host_page, &gpa);
  if (r == TranslateResult::kFixed) return host_page + (gva & base::kPageMask);
  if (r == TranslateResult::kMmio) {
    // Executing from MMIO is not supported: treat it as fetching bytes that
    // do not decode (#UD), counted.
    counters_.Inc(InterpreterCounters::kUd);
    RaiseException(kVectorUd);
  } else if (r == TranslateResult::kRetry || r == TranslateResult::kSpurious) {
    stop_ = StopReason::kHostError;
  }
  return nullptr;
}

Interpreter::Block* Interpreter::LookupBlock(uint8_t* host, uint64_t rip) noexcept {
  const uintptr_t key = reinterpret_cast<uintptr_t>(host);
  const size_t set = BlockSet(rip);
  Block* const ways = &blocks_[set * kBlockWays];
  for (uint8_t w = 0; w < kBlockWays; ++w) {
    Block& b = ways[w];
    if (b.tag == key && b.generation == b.page->generation) [[likely]] {
      block_mru_[set] = w;
      ++local_block_hits_;
      return &b;
    }
  }
  // The same code with a stale generation is decoded again where it is (it
  // keeps its follow hints); new code replaces the way not used last.
  static_assert(kBlockWays == 2, "the replacement below picks the other of two ways");
  uint8_t w = static_cast<uint8_t>(1 - block_mru_[set]);
  for (uint8_t i = 0; i < kBlockWays; ++i) {
    if (ways[i].tag == key) w = i;
  }
  block_mru_[set] = w;
  return DecodeInto(ways[w], key);
}

Interpreter::Block* Interpreter::DecodeInto(Block& b, uintptr_t key) noexcept {
  counters_.Inc(InterpreterCounters::kBlockCacheMisses);
  const uintptr_t page_key = key & ~static_cast<uintptr_t>(base::kPageMask);
  PageInfo& page = pages_[page_key];  // allocates only for a new code page
  if (!page.has_code) {
    page.has_code = true;
    // Every writable TLB entry for this page must go (see the header): flush
    // all, O(1). Later fills of the page are made read-only by TranslateAccess.
    vcpu_.tlb->FlushAll();
  }
  const uint32_t offset = static_cast<uint32_t>(key & base::kPageMask);
  // The follow hints are the code's at this address: new code in the slot
  // starts without them.
  if (b.tag != key) b.num_follow = 0;
  b.side_exits = 0;
  const DecodedBlock d = DecodeBlock(reinterpret_cast<const uint8_t*>(page_key), offset, b.insns,
                                     kMaxBlockInsns, /*through_jcc=*/true, b.follow, b.num_follow);
  counters_.Inc(InterpreterCounters::kBlocksDecoded);
  if (d.num_insns == 0) {
    // The first instruction straddles the page end: the caller decodes it
    // singly. Leave the slot empty.
    b.tag = 0;
    return nullptr;
  }
  b.tag = key;
  b.page = &page;
  b.generation = page.generation;
  b.num_insns = d.num_insns;
  b.links[0] = b.links[1] = Link{};
  b.fallthrough_offset = d.end_offset - offset;
  b.followed = static_cast<uint32_t>(d.followed);
  const Op last = b.insns[d.num_insns - 1].op;
  b.exit = (last == Op::kCall || last == Op::kCallIndirect) ? Block::Exit::kCall
           : last == Op::kRet                                ? Block::Exit::kRet
                                                             : Block::Exit::kOther;
  uint32_t at = offset;
  for (uint32_t i = 0; i < d.num_insns; ++i) {
    b.insn_offsets[i] = static_cast<uint16_t>(at);
    b.handlers[i] = ResolveHandler(b.insns[i], specialised_handlers_);
    const bool followed = (b.followed >> i) & 1;
    if (b.insns[i].op == Op::kJcc && i + 1 < d.num_insns) {
      b.handlers[i] = ResolveJccSide(b.insns[i], followed);
    }
    at = followed ? static_cast<uint32_t>(static_cast<int64_t>(at + b.insns[i].length) + b.insns[i].imm)
                  : at + b.insns[i].length;
  }
  return &b;
}

bool Interpreter::FetchAndDecodeCrossPage(DecodedInsn* out) noexcept {
  counters_.Inc(InterpreterCounters::kCrossPageInsns);
  uint8_t buf[kMaxInsnBytes] = {};
  const uint64_t rip = state_.rip;
  const unsigned n1 = static_cast<unsigned>(base::kPageSize - (rip & base::kPageMask));
  const uint8_t* p1 = vcpu_.tlb->Lookup<Access::kFetch>(MmuIndex(), rip, 1);
  if (p1 == nullptr && (p1 = TranslateFetch(rip)) == nullptr) return false;
  const unsigned first = n1 < kMaxInsnBytes ? n1 : static_cast<unsigned>(kMaxInsnBytes);
  std::memcpy(buf, p1, first);
  DecodeStatus s = Decode(buf, first, out);
  if (s == DecodeStatus::kNeedMoreBytes) {
    // Only now fetch from the next page: an instruction that ends on this
    // page must not fault on the next one.
    const uint64_t next = rip + n1;
    const uint8_t* p2 = vcpu_.tlb->Lookup<Access::kFetch>(MmuIndex(), next, 1);
    if (p2 == nullptr && (p2 = TranslateFetch(next)) == nullptr) return false;
    std::memcpy(buf + first, p2, kMaxInsnBytes - first);
    s = Decode(buf, kMaxInsnBytes, out);
  }
  if (s == DecodeStatus::kTooLong) {
    RaiseException(kVectorGp, true, 0);
    return false;
  }
  return true;  // kInvalid arrives as Op::kInvalid and raises #UD when executed
}

// ---------------------------------------------------------------------------
// The loop.

bool Interpreter::StepSingle(uint64_t* retired, bool crosses_page) noexcept {
  const Block* block = nullptr;
  if (!crosses_page) {
    uint8_t* host = tlb_->Lookup<Access::kFetch>(MmuIndex(), state_.rip, 1);
    if (host == nullptr && (host = TranslateFetch(state_.rip)) == nullptr) {
      if (!delivered_) return false;
      delivered_ = false;
      return true;
    }
    block = LookupBlock(host, state_.rip);
  }
  DecodedInsn single;
  if (block != nullptr) {
    single = block->insns[0];
  } else if (!FetchAndDecodeCrossPage(&single)) {
    if (!delivered_) return false;
    delivered_ = false;
    return true;
  }
  next_rip_ = single.NextRip(state_.rip);
  if (Execute(single) == Flow::kStop) return !AfterStop(retired);
  state_.rip = next_rip_;
  ++*retired;
  branch_exit_ = false;
  return !stop_after_;
}

bool Interpreter::AfterStop(uint64_t* retired) noexcept {
  if (delivered_) {
    // An event moved rip to its handler; Run goes on from there.
    delivered_ = false;
    if (delivered_trap_) ++*retired;
    delivered_trap_ = false;
    return false;
  }
  if (stop_ == StopReason::kHalt) ++*retired;
  return true;
}

void Interpreter::SyncWithStrategy() noexcept {
  // Apply posted soft-TLB flushes; a moved generation may mean host frames
  // were reused, so decoded blocks keyed by host address (and the links to
  // them) go too.
  strategy_->SyncInvalidations(vcpu_);
  const uint64_t gen = strategy_->flush_generation();
  if (gen != seen_flush_generation_) [[unlikely]] {
    seen_flush_generation_ = gen;
    FlushDecodeCache();
  }
}

RunResult Interpreter::Run(uint64_t max_instructions) noexcept {
  RunResult result;
  stop_ = StopReason::kBudget;
  stop_detail_ = "";
  stop_after_ = false;
  uint64_t retired = 0;
  const uint64_t start_count = state_.instructions;
  bool stopped = false;

  // Before anything runs, the re-executed I/O read included: frames may
  // have been invalidated while the vCPU was out of Run.
  SyncWithStrategy();
  if (io_read_pending_) {
    // The instruction that stopped on an I/O read runs again, alone and
    // before any interrupt, seeing the values CompleteIoRead() supplied.
    io_read_pending_ = false;
    io_replay_pos_ = 0;
    counters_.Inc(InterpreterCounters::kIoReplays);
    stopped = !StepSingle(&retired);
    if (stop_ != StopReason::kIoExit || !io_read_pending_) io_replay_count_ = 0;
    io_replay_pos_ = 0;
  }

  // The block that just ran to its end, whose links may name the next one.
  Block* prev = nullptr;
  uint64_t prev_start = 0;
  Block::Exit prev_exit = Block::Exit::kOther;  // how prev was left
  // Links stay valid across Run() calls: whatever changes a translation or
  // decoded code from outside (SyncPagingRegisters, set_strategy, a moved
  // flush generation below) moves the epoch itself.
  while (!stopped && retired < max_instructions) {
    // The TSC (RDTSC) reads state_.instructions: keep it current at block
    // granularity.
    state_.instructions = start_count + retired;
    SyncWithStrategy();
    // Interrupts are taken at block boundaries, which are instruction
    // boundaries: a pending interrupt waits at most one block.
    if (interrupt_check_) [[unlikely]] {
      if (state_.interrupt_shadow) {
        // STI / MOV SS hold interrupts off for exactly one instruction: run
        // it alone, and the next boundary takes what is pending.
        state_.interrupt_shadow = false;
        prev = nullptr;
        if (!StepSingle(&retired)) break;
        continue;
      } else if (state_.rflags_other & kFlagIf) {
        prev = nullptr;
        MaybeTakeInterrupt();
        if (stop_ != StopReason::kBudget) break;  // triple fault or host error
        delivered_ = false;
      }
    }

    Block* block = nullptr;
    Link* link = nullptr;
    if (prev != nullptr) {
      link = LinkSlot(prev, prev_start, prev_exit, state_.rip);
      if (prev_exit == Block::Exit::kRet) --return_top_;
      if (LinkUsable(*link, state_.rip)) [[likely]] {
        block = link->block;
        ++local_block_hits_;
      }
    }
    if (block == nullptr) {
      uint8_t* host = vcpu_.tlb->Lookup<Access::kFetch>(MmuIndex(), state_.rip, 1);
      if (host == nullptr && (host = TranslateFetch(state_.rip)) == nullptr) {
        prev = nullptr;
        if (!delivered_) break;
        delivered_ = false;  // #PF on fetch delivered: go on at the handler
        continue;
      }
      block = LookupBlock(host, state_.rip);
      if (block == nullptr) [[unlikely]] {
        // The first instruction straddles the page end: run it alone.
        prev = nullptr;
        if (!StepSingle(&retired, /*crosses_page=*/true)) break;
        continue;
      }
      if (link != nullptr) *link = {block, state_.rip, block->tag, chain_epoch_, state_.cpl};
    }
    const uint64_t budget = max_instructions - retired;
    const uint32_t n = block->num_insns < budget ? block->num_insns : static_cast<uint32_t>(budget);
    block_dirty_ = false;
    prev = nullptr;
    // Threaded dispatch runs the block (see Threaded), and may chain into
    // linked blocks after it (ChainOrReturn) within the budget and at most
    // kChainBlocks blocks before this loop looks at invalidations and
    // interrupts again. cur_block_ is then the block it ended in; `i` is the
    // number of that block's instructions that retired.
    cur_block_ = block;
    cur_start_ = state_.rip;
    chain_credits_ = kChainBlocks;
    chain_insns_left_ = budget - n;
    chained_retired_ = 0;
    ctx_insns_ = block->insns;
    ctx_handlers_ = block->handlers;
    ctx_end_ = block->insns + n;
    next_rip_ = block->insns[0].NextRip(state_.rip);
    const Flow flow = block->handlers[0](this, block->insns[0]);
    block = cur_block_;
    const uint64_t start_rip = cur_start_;
    retired += chained_retired_;
    uint32_t i = static_cast<uint32_t>(ctx_end_ - ctx_insns_);
    if (flow != Flow::kNext) [[unlikely]] {
      i = static_cast<uint32_t>(exit_at_ - block->insns);
      if (flow == Flow::kStop) {
        uint64_t extra = 0;
        stopped = AfterStop(&extra);
        retired += extra;
      } else {
        // A store into this block's page (the rest of the block may be
        // stale), a taken branch out of the superblock, or an exit after
        // this instruction.
        stopped = stop_after_;
        ++i;
      }
    }
    retired += i;
    // A taken Jcc inside the superblock leaves it like a block end: link on.
    const bool branch_exit = branch_exit_ && !stopped;
    branch_exit_ = false;
    if ((i == block->num_insns && !block_dirty_) || branch_exit) [[likely]] {
      prev = block;
      prev_start = start_rip;
      prev_exit = branch_exit ? Block::Exit::kOther : block->exit;
      if (prev_exit == Block::Exit::kCall) PushReturn(block, start_rip);
    }
  }
  state_.instructions = start_count + retired;
  counters_.Add(InterpreterCounters::kInstructions, retired);
  counters_.Add(InterpreterCounters::kBlockCacheHits, local_block_hits_);
  local_block_hits_ = 0;
  result.reason = stop_;
  result.instructions = retired;
  result.detail = stop_detail_;
  if (stop_ == StopReason::kException || stop_ == StopReason::kTripleFault) {
    result.exception = exception_;
  }
  return result;
}


// ---------------------------------------------------------------------------
// Handlers. kSize is the operand size; each case follows the SDM Vol. 2 page
// of its instruction. Faulting instructions leave registers, flags and rip
// unchanged (memory writes come before register writes where both happen).

template <int kSize, Op kOp>
Interpreter::Flow Interpreter::ExecuteOp(const DecodedInsn& in) noexcept {
  LazyFlags* const f = &state_.flags;
  uint64_t a = 0, b = 0;
  LazyFlags nf;

#define RD(opnd, var) \
  if (!ReadOperand(in, in.opnd, kSize, &var)) return Flow::kStop
#define WR(opnd, val) \
  if (!WriteOperand(in, in.opnd, kSize, val)) return Flow::kStop
// Two-operand ALU op: flags committed only once the write succeeded.
// A register destination cannot fault, so it skips the flags copy.
#define ALU2(name, fn)                                                \
  case Op::k##name:                                                   \
    RD(src, b);                                                       \
    if (in.dst.kind == OperandKind::kReg) [[likely]] {                \
      a = fn<kSize>(f, state_.ReadReg(in.dst.reg, kSize), b);         \
      state_.WriteReg(in.dst.reg, kSize, a);                          \
      return Flow::kNext;                                             \
    }                                                                 \
    RD(dst, a);                                                       \
    nf = *f;                                                          \
    a = fn<kSize>(&nf, a, b);                                         \
    WR(dst, a);                                                       \
    *f = nf;                                                          \
    return Flow::kNext;
// One-operand ALU op (INC, DEC, NEG): flags committed after the write.
#define ALU1(name, fn)                                                \
  case Op::k##name:                                                   \
    RD(dst, a);                                                       \
    nf = *f;                                                          \
    a = fn<kSize>(&nf, a);                                            \
    WR(dst, a);                                                       \
    *f = nf;                                                          \
    return Flow::kNext;
#define SHIFT(name, fn)                                               \
  case Op::k##name:                                                   \
    if (!ReadOperand(in, in.src, 1, &b)) return Flow::kStop;          \
    if (in.dst.kind == OperandKind::kReg) [[likely]] {                \
      a = fn<kSize>(f, state_.ReadReg(in.dst.reg, kSize), b);         \
      state_.WriteReg(in.dst.reg, kSize, a);                          \
      return Flow::kNext;                                             \
    }                                                                 \
    RD(dst, a);                                                       \
    nf = *f;                                                          \
    a = fn<kSize>(&nf, a, b);                                         \
    WR(dst, a);                                                       \
    *f = nf;                                                          \
    return Flow::kNext;

  switch (kOp) {
    ALU2(Add, Add)
    ALU2(Or, Or)
    ALU2(Adc, Adc)
    ALU2(Sbb, Sbb)
    ALU2(And, And)
    ALU2(Sub, Sub)
    ALU2(Xor, Xor)
    case Op::kCmp:
      RD(dst, a);
      RD(src, b);
      Cmp<kSize>(f, a, b);
      return Flow::kNext;
    case Op::kTest:
      RD(dst, a);
      RD(src, b);
      Test<kSize>(f, a, b);
      return Flow::kNext;
    ALU1(Inc, Inc)
    ALU1(Dec, Dec)
    ALU1(Neg, Neg)
    case Op::kNot:
      RD(dst, a);
      WR(dst, Not<kSize>(a));
      return Flow::kNext;

    case Op::kMul:
    case Op::kImul1: {
      RD(src, b);
      const MulResult r = kOp == Op::kMul ? Mul<kSize>(f, state_.gpr[kRegRax], b)
                                            : Imul<kSize>(f, state_.gpr[kRegRax], b);
      if constexpr (kSize == 1) {
        state_.WriteReg(kRegRax, 2, (r.high << 8) | r.low);
      } else {
        state_.WriteReg(kRegRax, kSize, r.low);
        state_.WriteReg(kRegRdx, kSize, r.high);
      }
      return Flow::kNext;
    }
    case Op::kDiv:
    case Op::kIdiv: {
      RD(src, b);
      uint64_t high, low;
      if constexpr (kSize == 1) {
        high = (state_.gpr[kRegRax] >> 8) & 0xff;
        low = state_.gpr[kRegRax] & 0xff;
      } else {
        high = state_.gpr[kRegRdx];
        low = state_.gpr[kRegRax];
      }
      const DivResult r = kOp == Op::kDiv ? Div<kSize>(high, low, b) : Idiv<kSize>(high, low, b);
      if (r.status != AluStatus::kOk) return RaiseException(kVectorDe);
      if constexpr (kSize == 1) {
        state_.WriteReg(kRegRax, 2, (r.remainder << 8) | r.quotient);
      } else {
        state_.WriteReg(kRegRax, kSize, r.quotient);
        state_.WriteReg(kRegRdx, kSize, r.remainder);
      }
      return Flow::kNext;
    }
    case Op::kImul2:
      RD(dst, a);
      RD(src, b);
      state_.WriteReg(in.dst.reg, kSize, ImulTruncated<kSize>(f, a, b));
      return Flow::kNext;
    case Op::kImul3:
      RD(src, a);
      RD(src2, b);
      state_.WriteReg(in.dst.reg, kSize, ImulTruncated<kSize>(f, a, b));
      return Flow::kNext;

    SHIFT(Rol, Rol)
    SHIFT(Ror, Ror)
    SHIFT(Rcl, Rcl)
    SHIFT(Rcr, Rcr)
    SHIFT(Shl, Shl)
    SHIFT(Shr, Shr)
    SHIFT(Sar, Sar)
    case Op::kShld:
    case Op::kShrd: {
      uint64_t count = 0;
      RD(dst, a);
      RD(src, b);
      if (!ReadOperand(in, in.src2, 1, &count)) return Flow::kStop;
      nf = *f;
      a = kOp == Op::kShld ? Shld<kSize>(&nf, a, b, count) : Shrd<kSize>(&nf, a, b, count);
      WR(dst, a);
      *f = nf;
      return Flow::kNext;
    }

    case Op::kBt:
    case Op::kBts:
    case Op::kBtr:
    case Op::kBtc:
      if constexpr (kSize >= 2) {
        RD(src, b);
        uint64_t addr = 0;
        if (in.dst.kind == OperandKind::kMem) {
          addr = EffectiveAddress(in);
          // A register bit offset may address outside the operand (SDM "BT").
          if (in.src.kind == OperandKind::kReg) addr += BitBaseDisplacement<kSize>(b);
          if (!Read(addr, kSize, &a)) return Flow::kStop;
        } else {
          a = state_.ReadReg(in.dst.reg, kSize);
        }
        nf = *f;
        switch (kOp) {
          case Op::kBt: Bt<kSize>(f, a, b); return Flow::kNext;
          case Op::kBts: a = Bts<kSize>(&nf, a, b); break;
          case Op::kBtr: a = Btr<kSize>(&nf, a, b); break;
          default: a = Btc<kSize>(&nf, a, b); break;
        }
        if (in.dst.kind == OperandKind::kMem) {
          if (!Write(addr, kSize, a)) return Flow::kStop;
        } else {
          state_.WriteReg(in.dst.reg, kSize, a);
        }
        *f = nf;
        return Flow::kNext;
      }
      return Unimplemented(in);
    case Op::kBsf:
    case Op::kBsr:
      RD(src, b);
      a = state_.ReadReg(in.dst.reg, kSize);
      a = kOp == Op::kBsf ? Bsf<kSize>(f, a, b) : Bsr<kSize>(f, a, b);
      // Zero source: the destination is not written at all (see alu.h).
      if (Truncate<kSize>(b) != 0) state_.WriteReg(in.dst.reg, kSize, a);
      return Flow::kNext;

    case Op::kMov:
      RD(src, b);
      WR(dst, b);
      return Flow::kNext;
    case Op::kMovzx:
    case Op::kMovsx:
    case Op::kMovsxd:
      if (!ReadOperand(in, in.src, in.src_size, &b)) return Flow::kStop;
      if (kOp != Op::kMovzx) b = SignExtendDyn(b, in.src_size);
      state_.WriteReg(in.dst.reg, kSize, b);
      return Flow::kNext;
    case Op::kLea:
      state_.WriteReg(in.dst.reg, kSize, LeaAddress(in));
      return Flow::kNext;
    case Op::kXchg:
    case Op::kXadd: {
      RD(dst, a);
      RD(src, b);
      uint64_t to_dst = b;
      nf = *f;
      if (kOp == Op::kXadd) to_dst = Xadd<kSize>(&nf, a, b);
      // The memory operand first, so a fault changes nothing. With both in
      // registers and equal, DEST is written last and wins (SDM "XADD").
      if (in.dst.kind == OperandKind::kMem) {
        WR(dst, to_dst);
        WR(src, a);
      } else {
        WR(src, a);
        WR(dst, to_dst);
      }
      *f = nf;
      return Flow::kNext;
    }
    case Op::kCmpxchg: {
      RD(dst, a);
      RD(src, b);
      nf = *f;
      const uint64_t acc = state_.ReadReg(kRegRax, kSize);
      if (Cmpxchg<kSize>(&nf, acc, a)) {
        WR(dst, b);
      } else {
        // A memory destination gets a write cycle of its old value.
        if (in.dst.kind == OperandKind::kMem) WR(dst, a);
        state_.WriteReg(kRegRax, kSize, a);
      }
      *f = nf;
      return Flow::kNext;
    }
    case Op::kCmpxchg8b:
      if constexpr (kSize == 8) {
        const uint64_t addr = EffectiveAddress(in);
        if (!Read(addr, 8, &a)) return Flow::kStop;
        const uint64_t expected = (state_.gpr[kRegRdx] << 32) | (state_.gpr[kRegRax] & 0xffff'ffff);
        if (a == expected) {
          const uint64_t desired = (state_.gpr[1] << 32) | (state_.gpr[3] & 0xffff'ffff);  // ECX:EBX
          if (!Write(addr, 8, desired)) return Flow::kStop;
          UpdateFlags(f, kFlagZf, kFlagZf);
        } else {
          if (!Write(addr, 8, a)) return Flow::kStop;
          state_.WriteReg(kRegRax, 4, a);
          state_.WriteReg(kRegRdx, 4, a >> 32);
          UpdateFlags(f, kFlagZf, 0);
        }
        return Flow::kNext;
      }
      return Unimplemented(in);
    case Op::kBswap:
      if constexpr (kSize == 4 || kSize == 8) {
        state_.WriteReg(in.dst.reg, kSize, Bswap<kSize>(state_.ReadReg(in.dst.reg, kSize)));
      } else {
        // BSWAP r16 is undefined; hardware clears the register's low word.
        state_.WriteReg(in.dst.reg, 2, 0);
      }
      return Flow::kNext;
    case Op::kCmovcc:
      RD(src, b);  // read (and may fault) whether or not the move happens
      if (EvalCondition(*f, in.cond)) {
        state_.WriteReg(in.dst.reg, kSize, b);
      } else if constexpr (kSize == 4) {
        // A 32-bit CMOV zero-extends even when the condition is false.
        state_.WriteReg(in.dst.reg, 4, state_.ReadReg(in.dst.reg, 4));
      }
      return Flow::kNext;
    case Op::kSetcc:
      if (!WriteOperand(in, in.dst, 1, Setcc(*f, in.cond))) return Flow::kStop;
      return Flow::kNext;

    case Op::kJcc:
      if (EvalCondition(*f, in.cond)) next_rip_ = in.BranchTarget(state_.rip);
      return Flow::kNext;
    case Op::kJmp:
      next_rip_ = in.BranchTarget(state_.rip);
      return Flow::kNext;
    case Op::kCall:
      if (!Push(8, next_rip_)) return Flow::kStop;
      next_rip_ = in.BranchTarget(state_.rip);
      return Flow::kNext;
    case Op::kLoop:
    case Op::kLoope:
    case Op::kLoopne: {
      const uint64_t c = MaskDyn(state_.ReadReg(kRegRcx, in.address_size) - 1, in.address_size);
      state_.WriteReg(kRegRcx, in.address_size, c);
      bool take = c != 0;
      if (kOp == Op::kLoope) take = take && EvalCondition(*f, kCondE);
      if (kOp == Op::kLoopne) take = take && EvalCondition(*f, kCondNe);
      if (take) next_rip_ = in.BranchTarget(state_.rip);
      return Flow::kNext;
    }
    case Op::kJrcxz:
      if (state_.ReadReg(kRegRcx, in.address_size) == 0) next_rip_ = in.BranchTarget(state_.rip);
      return Flow::kNext;
    case Op::kJmpIndirect:
      if (!ReadOperand(in, in.src.kind != OperandKind::kNone ? in.src : in.dst, 8, &b)) return Flow::kStop;
      next_rip_ = b;
      return Flow::kNext;
    case Op::kCallIndirect:
      if (!ReadOperand(in, in.src.kind != OperandKind::kNone ? in.src : in.dst, 8, &b)) return Flow::kStop;
      if (!Push(8, next_rip_)) return Flow::kStop;
      next_rip_ = b;
      return Flow::kNext;
    case Op::kRet:
      if (!Pop(8, &b)) return Flow::kStop;
      state_.gpr[kRegRsp] += static_cast<uint64_t>(in.imm);
      next_rip_ = b;
      return Flow::kNext;

    case Op::kPush:
      RD(src, b);  // immediates come sign-extended (insn.h), masked to kSize
      if (!Push(kSize, b)) return Flow::kStop;
      return Flow::kNext;
    case Op::kPop: {
      if (!Read(state_.gpr[kRegRsp], kSize, &b)) return Flow::kStop;
      const uint64_t old_rsp = state_.gpr[kRegRsp];
      // The destination's address is computed after RSP is incremented (SDM "POP").
      state_.gpr[kRegRsp] += kSize;
      if (!WriteOperand(in, in.dst, kSize, b)) {
        state_.gpr[kRegRsp] = old_rsp;
        return Flow::kStop;
      }
      return Flow::kNext;
    }
    case Op::kPushf:
      if (!Push(kSize, state_.Rflags() & ~(kFlagVm | kFlagRf))) return Flow::kStop;
      return Flow::kNext;
    case Op::kPopf: {
      if (!Pop(kSize, &b)) return Flow::kStop;
      // What POPF may change (SDM "POPF", 64-bit mode): IOPL only at CPL 0,
      // IF only when CPL <= IOPL; VM, RF, VIF, VIP never.
      uint64_t mask = kArithFlags | kFlagTf | kFlagDf | kFlagNt | kFlagAc | kFlagId;
      const unsigned iopl = static_cast<unsigned>((state_.rflags_other & kFlagIopl) >> 12);
      if (state_.cpl == 0) mask |= kFlagIopl;
      if (state_.cpl <= iopl) mask |= kFlagIf;
      if constexpr (kSize == 2) mask &= 0xffff;
      const uint64_t old = state_.Rflags();
      state_.SetRflags((old & ~mask) | (b & mask));
      interrupt_check_ = true;  // IF may have come on
      return Flow::kNext;
    }
    case Op::kLeave: {
      if (!Read(state_.gpr[5], kSize, &b)) return Flow::kStop;  // [rbp]
      state_.gpr[kRegRsp] = state_.gpr[5] + kSize;
      state_.WriteReg(5, kSize, b);
      return Flow::kNext;
    }
    case Op::kEnter: {
      if (in.enter_level != 0) return Unimplemented(in);
      if (!Push(kSize, state_.gpr[5])) return Flow::kStop;
      const uint64_t frame = state_.gpr[kRegRsp];
      state_.gpr[kRegRsp] = frame - (static_cast<uint64_t>(in.imm) & 0xffff);
      state_.WriteReg(5, kSize, frame);
      return Flow::kNext;
    }
    case Op::kCbw:
      if constexpr (kSize >= 2) {
        state_.WriteReg(kRegRax, kSize, SignExtendAccumulator<kSize>(state_.gpr[kRegRax]));
        return Flow::kNext;
      }
      return Unimplemented(in);
    case Op::kCwd:
      state_.WriteReg(kRegRdx, kSize, SignFill<kSize>(state_.gpr[kRegRax]));
      return Flow::kNext;

    case Op::kMovs:
    case Op::kStos:
    case Op::kLods:
    case Op::kCmps:
    case Op::kScas:
      return StringOp<kSize>(in);

    case Op::kIn:
    case Op::kOut: {
      if (!CheckIoPrivilege()) return Flow::kStop;
      const Operand& port_op = kOp == Op::kIn ? in.src : in.dst;
      const uint16_t port = port_op.kind == OperandKind::kImm
                                ? static_cast<uint16_t>(in.imm & 0xff)
                                : static_cast<uint16_t>(state_.gpr[kRegRdx] & 0xffff);
      if (kOp == Op::kIn) {
        uint32_t data = 0;
        if (!PlatformPortIn(port, kSize, &data)) return Flow::kStop;
        state_.WriteReg(kRegRax, kSize, data);
      } else {
        PlatformPortOut(port, kSize, static_cast<uint32_t>(state_.ReadReg(kRegRax, kSize)));
      }
      return Flow::kNext;
    }

    case Op::kCld: state_.rflags_other &= ~kFlagDf; return Flow::kNext;
    case Op::kStd: state_.rflags_other |= kFlagDf; return Flow::kNext;
    case Op::kClc: UpdateFlags(f, kFlagCf, 0); return Flow::kNext;
    case Op::kStc: UpdateFlags(f, kFlagCf, kFlagCf); return Flow::kNext;
    case Op::kCmc: UpdateFlags(f, kFlagCf, GetCarry(*f) ? 0 : kFlagCf); return Flow::kNext;
    case Op::kCli:
    case Op::kSti: {
      const unsigned iopl = static_cast<unsigned>((state_.rflags_other & kFlagIopl) >> 12);
      if (state_.cpl > iopl) return RaiseException(kVectorGp, true, 0);
      if (kOp == Op::kCli) {
        state_.rflags_other &= ~kFlagIf;
      } else if (!(state_.rflags_other & kFlagIf)) {
        // STI that sets IF holds interrupts off for one more instruction
        // (SDM Vol. 2B "STI"), which makes "sti; hlt" race-free.
        state_.rflags_other |= kFlagIf;
        state_.interrupt_shadow = true;
        interrupt_check_ = true;
      }
      return Flow::kNext;
    }
    case Op::kSahf: {
      constexpr uint64_t kMask = kFlagSf | kFlagZf | kFlagAf | kFlagPf | kFlagCf;
      UpdateFlags(f, kMask, (state_.gpr[kRegRax] >> 8) & kMask);
      return Flow::kNext;
    }
    case Op::kLahf:
      state_.WriteReg(kRegAh, 1, (MaterializeArith(*f) & 0xd5) | 0x02);
      return Flow::kNext;

    case Op::kNop:
    case Op::kPause:
    case Op::kLfence:
    case Op::kMfence:
    case Op::kSfence:
      return Flow::kNext;
    case Op::kHlt:
      if (state_.cpl != 0) return RaiseException(kVectorGp, true, 0);
      state_.rip = next_rip_;
      stop_ = StopReason::kHalt;
      return Flow::kStop;
    case Op::kCpuid: {
      uint32_t r[4];
      Cpuid(static_cast<uint32_t>(state_.gpr[kRegRax]), static_cast<uint32_t>(state_.gpr[kRegRcx]), r);
      state_.WriteReg(kRegRax, 4, r[0]);
      state_.WriteReg(3, 4, r[1]);
      state_.WriteReg(kRegRcx, 4, r[2]);
      state_.WriteReg(kRegRdx, 4, r[3]);
      return Flow::kNext;
    }
    case Op::kRdtsc:
    case Op::kRdtscp: {
      // Instruction-count time, updated at block starts: monotonic and
      // deterministic, exact to the block.
      const uint64_t tsc = state_.Tsc();
      state_.WriteReg(kRegRax, 4, tsc & 0xffff'ffff);
      state_.WriteReg(kRegRdx, 4, tsc >> 32);
      if (kOp == Op::kRdtscp) state_.WriteReg(kRegRcx, 4, state_.tsc_aux);
      return Flow::kNext;
    }
    case Op::kUd2:
      counters_.Inc(InterpreterCounters::kUd);
      return RaiseException(kVectorUd);
    case Op::kInvalid:
      counters_.Inc(InterpreterCounters::kUd);
      return RaiseException(kVectorUd);
    case Op::kInt3:
    case Op::kInt:
    case Op::kIns:
    case Op::kOuts:
    case Op::kIret:
    case Op::kRetFar:
    case Op::kSyscall:
    case Op::kSysret:
    case Op::kSwapgs:
    case Op::kRdmsr:
    case Op::kWrmsr:
    case Op::kMovToCr:
    case Op::kMovFromCr:
    case Op::kClts:
    case Op::kWbinvd:
    case Op::kInvd:
    case Op::kInvlpg:
    case Op::kLgdt:
    case Op::kLidt:
    case Op::kSgdt:
    case Op::kSidt:
    case Op::kLldt:
    case Op::kLtr:
    case Op::kSldt:
    case Op::kStr:
    case Op::kMovToSreg:
    case Op::kMovFromSreg:
      return ExecuteSystem(in);
    default:
      return Unimplemented(in);
  }
#undef RD
#undef WR
#undef ALU1
#undef ALU2
#undef SHIFT
}

// MOVS/STOS/LODS/CMPS/SCAS, with REP/REPE/REPNE (SDM Vol. 2 "REP/REPE/REPZ/
// REPNE/REPNZ"). address_size selects rSI/rDI/rCX. The segment override
// applies to the rSI operand only; rDI is always ES (base 0 in 64-bit mode).
// A REP instruction runs to completion within one retired instruction; a
// fault mid-way leaves rSI/rDI/rCX describing the remaining work, as the
// SDM specifies, so re-execution resumes.
template <int kSize>
Interpreter::Flow Interpreter::StringOp(const DecodedInsn& in) noexcept {
  const bool rep = (in.prefixes & (kPrefixRep | kPrefixRepne)) != 0;
  const bool compare = in.op == Op::kCmps || in.op == Op::kScas;
  const unsigned as = in.address_size;
  const int64_t step = (state_.rflags_other & kFlagDf) ? -kSize : kSize;
  uint64_t seg_base = 0;
  if (in.segment == Segment::kFs) seg_base = state_.seg[kFs].base;
  if (in.segment == Segment::kGs) seg_base = state_.seg[kGs].base;
  for (;;) {
    if (rep && state_.ReadReg(kRegRcx, as) == 0) return Flow::kNext;
    if (rep && step > 0 && as == 8 && (in.op == Op::kStos || in.op == Op::kMovs)) {
      // The run of iterations that stays inside the current page(s) at once.
      if (const uint64_t done = RepRunInPage<kSize>(in.op, seg_base); done != 0) continue;
    }
    const uint64_t rsi = state_.ReadReg(6, as);
    const uint64_t rdi = state_.ReadReg(7, as);
    uint64_t v = 0, w = 0;
    switch (in.op) {
      case Op::kMovs:
        if (!Read(seg_base + rsi, kSize, &v) || !Write(rdi, kSize, v)) return Flow::kStop;
        state_.WriteReg(6, as, rsi + step);
        state_.WriteReg(7, as, rdi + step);
        break;
      case Op::kStos:
        if (!Write(rdi, kSize, state_.gpr[kRegRax])) return Flow::kStop;
        state_.WriteReg(7, as, rdi + step);
        break;
      case Op::kLods:
        if (!Read(seg_base + rsi, kSize, &v)) return Flow::kStop;
        state_.WriteReg(kRegRax, kSize, v);
        state_.WriteReg(6, as, rsi + step);
        break;
      case Op::kCmps:
        // CMPS compares [rSI] - [rDI] (SDM "CMPS").
        if (!Read(seg_base + rsi, kSize, &v) || !Read(rdi, kSize, &w)) return Flow::kStop;
        Cmp<kSize>(&state_.flags, v, w);
        state_.WriteReg(6, as, rsi + step);
        state_.WriteReg(7, as, rdi + step);
        break;
      default:  // kScas: rAX - [rDI]
        if (!Read(rdi, kSize, &w)) return Flow::kStop;
        Cmp<kSize>(&state_.flags, state_.gpr[kRegRax], w);
        state_.WriteReg(7, as, rdi + step);
        break;
    }
    if (!rep) return Flow::kNext;
    state_.WriteReg(kRegRcx, as, state_.ReadReg(kRegRcx, as) - 1);
    if (stop_after_) [[unlikely]] {
      // An MMIO write exited: stop between iterations (see StringIo).
      if (state_.ReadReg(kRegRcx, as) == 0) return Flow::kNext;
      stop_after_ = false;
      return Flow::kStop;
    }
    if (compare) {
      // REPE stops on ZF = 0, REPNE on ZF = 1.
      const bool zf = EvalCondition(state_.flags, kCondE);
      if ((in.prefixes & kPrefixRepne) ? zf : !zf) return Flow::kNext;
    }
    // A store into the running block's page ends the instruction's block
    // after it, like any other store (handled by the loop).
  }
}


// A forward 64-bit REP STOS/MOVS, as many iterations as fit in the pages
// rDI (and rSI) are in, done on host memory in one go. Only soft TLB hits
// qualify, so this is what the element loop would do: a page with decoded
// code never has a writable entry (the SMC rule) and MMIO is never filled,
// so those, and every miss, take the element loop, one access at a time.
// Returns the iterations done (0: none; the caller runs one element).
template <int kSize>
uint64_t Interpreter::RepRunInPage(Op op, uint64_t seg_base) noexcept {
  const uint64_t count = state_.gpr[kRegRcx];
  const uint64_t rdi = state_.gpr[7];
  const uint64_t to_page_end = base::kPageSize - (rdi & base::kPageMask);
  const uint64_t src = seg_base + state_.gpr[6];  // MOVS only
  uint64_t n = std::min(count, to_page_end / kSize);
  if (op == Op::kMovs) n = std::min(n, (base::kPageSize - (src & base::kPageMask)) / kSize);
  if (n < 2) return 0;
  const uint64_t bytes = n * kSize;
  if (op == Op::kMovs) {
    const uint8_t* s = tlb_->Lookup<mmu::Access::kRead>(MmuIndex(), src, static_cast<uint32_t>(bytes));
    uint8_t* d = tlb_->Lookup<mmu::Access::kWrite>(MmuIndex(), rdi, static_cast<uint32_t>(bytes));
    if (s == nullptr || d == nullptr) return 0;
    if (d > s && d < s + bytes) {
      // Forward copying into an overlap repeats the source pattern.
      for (uint64_t i = 0; i < n; ++i) StoreHost(d + i * kSize, kSize, LoadHost(s + i * kSize, kSize));
    } else {
      std::memmove(d, s, bytes);
    }
    state_.gpr[6] += bytes;
  } else {
    uint8_t* d = tlb_->Lookup<mmu::Access::kWrite>(MmuIndex(), rdi, static_cast<uint32_t>(bytes));
    if (d == nullptr) return 0;
    const uint64_t v = state_.gpr[kRegRax];
    if (kSize == 1 || v == 0) {
      std::memset(d, static_cast<int>(v & 0xff), bytes);
    } else {
      for (uint64_t i = 0; i < n; ++i) StoreHost(d + i * kSize, kSize, v);
    }
  }
  state_.gpr[7] += bytes;
  state_.gpr[kRegRcx] = count - n;
  counters_.Inc(InterpreterCounters::kRepPageRuns);
  return n;
}

// Dispatch: one handler per (operand size, op), each a copy of ExecuteOp with
// both constant, so every branch inside a handler is specific to one
// instruction form (better prediction than one shared switch), and one
// indirect call per instruction.
namespace {
// operand_size (1, 2, 4, 8; 16 for CMPXCHG16B) -> handler row; row 4 is #UD.
constexpr uint8_t kSizeRow[17] = {4, 0, 1, 4, 2, 4, 4, 4, 3, 4, 4, 4, 4, 4, 4, 4, 4};
}  // namespace

template <Interpreter::Handler kInner>
Interpreter::Flow Interpreter::Threaded(Interpreter* self, const DecodedInsn& in) noexcept {
  if (kInner(self, in) == Flow::kStop) [[unlikely]] {
    self->exit_at_ = &in;
    return Flow::kStop;
  }
  self->state_.rip = self->next_rip_;
  if (self->block_dirty_) [[unlikely]] {
    // A taken branch out of a superblock chains on like a block end; a
    // store into code or an exit goes back to Run.
    if (self->branch_exit_ && !self->stop_after_) return self->ChainOrReturn(&in, Flow::kDirty);
    self->exit_at_ = &in;
    return Flow::kDirty;
  }
  const DecodedInsn* next = &in + 1;
  if (next == self->ctx_end_) return self->ChainOrReturn(&in, Flow::kNext);
  self->next_rip_ = next->NextRip(self->state_.rip);
  return self->ctx_handlers_[next - self->ctx_insns_](self, *next);
}

// Where a block run by threaded dispatch ends (`last` retired; `leave` is
// kNext at the block's end, kDirty for a taken branch out of a superblock):
// follow the block's link into the next block directly (the same validation
// and return-stack use as Run's), or return `leave` to Run: when an interrupt
// check is pending, the chain credits are spent, the link is not valid, or
// the next block would overrun the budget.
inline Interpreter::Link* Interpreter::LinkSlot(Block* from, uint64_t from_start, Block::Exit exit,
                                         uint64_t rip) noexcept {
  if (exit == Block::Exit::kRet) {
    // Back to the caller: its fall-through link leads to the return point.
    const ReturnEntry& r = return_stack_[(return_top_ - 1) % kReturnStack];
    if (r.rip == rip && r.caller != nullptr) return &r.caller->links[1];
    return &from->links[0];
  }
  return &from->links[rip == from_start + from->fallthrough_offset ? 1 : 0];
}

bool Interpreter::NoteSideExit(Block* b, uint32_t index) noexcept {
  if ((b->followed >> index) & 1) return false;  // a followed Jcc not taken: rare by choice
  if (b->side_exit_insn != index) {
    b->side_exit_insn = static_cast<uint8_t>(index);
    b->side_exits = 0;
  }
  if (++b->side_exits < kHotSideExits || b->num_follow == kMaxFollow) return false;
  // Decode the block again at its next lookup (a generation no page ever
  // has), now following this Jcc; links into it must look it up again.
  b->follow[b->num_follow++] = b->insn_offsets[index];
  b->generation = ~uint64_t{0};
  counters_.Inc(InterpreterCounters::kFollowedJccs);
  BreakChains();
  return true;
}

Interpreter::Flow Interpreter::ChainOrReturn(const DecodedInsn* last, Flow leave) noexcept {
  exit_at_ = last;
  Block* b = cur_block_;
  if (leave == Flow::kDirty && b != nullptr && NoteSideExit(b, static_cast<uint32_t>(last - b->insns))) {
    return leave;
  }
  if (b == nullptr || chain_credits_ == 0 || interrupt_check_) return leave;
  // How the block was left: a taken branch out of a superblock is a plain
  // jump; otherwise by its last instruction, unless the budget cut it short.
  Block::Exit exit = Block::Exit::kOther;
  if (leave == Flow::kNext) {
    if (ctx_end_ != b->insns + b->num_insns) return leave;
    exit = b->exit;
  }
  const uint64_t rip = state_.rip;
  const Link* link = LinkSlot(b, cur_start_, exit, rip);
  Block* t = link->block;
  if (!LinkUsable(*link, rip) || t->num_insns > chain_insns_left_) return leave;
  if (exit == Block::Exit::kCall) {
    PushReturn(b, cur_start_);
  } else if (exit == Block::Exit::kRet) {
    --return_top_;
  }
  const uint32_t ran = static_cast<uint32_t>(last - b->insns) + 1;
  --chain_credits_;
  chain_insns_left_ -= t->num_insns;
  chained_retired_ += ran;
  state_.instructions += ran;  // RDTSC stays exact to the block
  block_dirty_ = false;
  branch_exit_ = false;
  ++local_block_hits_;
  cur_block_ = t;
  cur_start_ = rip;
  ctx_insns_ = t->insns;
  ctx_handlers_ = t->handlers;
  ctx_end_ = t->insns + t->num_insns;
  next_rip_ = t->insns[0].NextRip(rip);
  return t->handlers[0](this, t->insns[0]);
}

template <int kSize, Op kOp>
Interpreter::Flow Interpreter::Thunk(Interpreter* self, const DecodedInsn& in) noexcept {
  if constexpr (kSize == 0) {
    return self->Unimplemented(in);
  } else {
    return self->ExecuteOp<kSize, kOp>(in);
  }
}

template <int kSize, size_t... kOps>
constexpr std::array<Interpreter::Handler, static_cast<size_t>(Op::kNumOps)> Interpreter::MakeRow(
    std::index_sequence<kOps...>) noexcept {
  return {&Interpreter::Threaded<&Interpreter::Thunk<kSize, static_cast<Op>(kOps)>>...};
}

// Jcc gets one handler per condition, with the condition folded in
// (EvalConditionT): the most frequent block-ending instruction then costs a
// compare of the recorded operands and nothing else.
template <unsigned kCond>
Interpreter::Flow Interpreter::JccThunk(Interpreter* self, const DecodedInsn& in) noexcept {
  if (EvalConditionT<kCond>(self->state_.flags)) self->next_rip_ = in.BranchTarget(self->state_.rip);
  return Flow::kNext;
}

template <int kSize, Op kOp, Interpreter::Form kForm>
Interpreter::Flow Interpreter::FormThunk(Interpreter* self, const DecodedInsn& in) noexcept {
  CpuState& st = self->state_;
  uint64_t b;
  if constexpr (kForm == Form::kRegReg || kForm == Form::kMemReg) {
    b = st.ReadReg(in.src.reg, kSize);
  } else if constexpr (kForm == Form::kRegImm || kForm == Form::kMemImm) {
    b = Truncate<kSize>(static_cast<uint64_t>(in.imm));
  } else {
    if (!self->Read(self->EffectiveAddress(in), kSize, &b)) return Flow::kStop;
  }
  constexpr bool kMemDst = kForm == Form::kMemReg || kForm == Form::kMemImm;
  if constexpr (kOp == Op::kMov) {
    if constexpr (kMemDst) {
      return self->Write(self->EffectiveAddress(in), kSize, b) ? Flow::kNext : Flow::kStop;
    } else {
      st.WriteReg(in.dst.reg, kSize, b);
      return Flow::kNext;
    }
  } else {
    uint64_t a;
    uint64_t addr = 0;
    if constexpr (kMemDst) {
      addr = self->EffectiveAddress(in);
      if (!self->Read(addr, kSize, &a)) return Flow::kStop;
    } else {
      a = st.ReadReg(in.dst.reg, kSize);
    }
    if constexpr (kOp == Op::kCmp) {
      Cmp<kSize>(&st.flags, a, b);
      return Flow::kNext;
    } else if constexpr (kOp == Op::kTest) {
      Test<kSize>(&st.flags, a, b);
      return Flow::kNext;
    } else {
      // A memory destination commits the flags only once the store
      // succeeded; a register destination cannot fault, so it updates them
      // in place.
      LazyFlags nf;
      LazyFlags* fl = &st.flags;
      if constexpr (kMemDst) {
        nf = st.flags;
        fl = &nf;
      }
      uint64_t r;
      if constexpr (kOp == Op::kAdd) r = Add<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kSub) r = Sub<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kAnd) r = And<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kOr) r = Or<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kXor) r = Xor<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kImul2) r = ImulTruncated<kSize>(fl, a, b);
      // Shifts and rotates: b is the count (CL read at the operand size or
      // imm8; only its low bits count, which the ALU masks).
      else if constexpr (kOp == Op::kShl) r = Shl<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kShr) r = Shr<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kSar) r = Sar<kSize>(fl, a, b);
      else if constexpr (kOp == Op::kRol) r = Rol<kSize>(fl, a, b);
      else r = Ror<kSize>(fl, a, b);
      if constexpr (kMemDst) {
        if (!self->Write(addr, kSize, r)) return Flow::kStop;
        st.flags = nf;
      } else {
        st.WriteReg(in.dst.reg, kSize, r);
      }
      return Flow::kNext;
    }
  }
}

template <bool kFollowed, unsigned kCond>
Interpreter::Flow Interpreter::JccSideThunk(Interpreter* self, const DecodedInsn& in) noexcept {
  const bool taken = EvalConditionT<kCond>(self->state_.flags);
  if (taken) self->next_rip_ = in.BranchTarget(self->state_.rip);
  // Leave the block where the branch goes off its decoded path: taken for a
  // plain side exit, not taken for a followed one (next_rip_ is then
  // already the fall-through, outside the block).
  if (taken != kFollowed) {
    self->block_dirty_ = true;
    self->branch_exit_ = true;
  }
  return Flow::kNext;
}

template <bool kFollowed, size_t... kConds>
constexpr std::array<Interpreter::Handler, 16> Interpreter::JccSideRow(std::index_sequence<kConds...>) noexcept {
  return {&Threaded<&JccSideThunk<kFollowed, kConds>>...};
}

Interpreter::Handler Interpreter::ResolveJccSide(const DecodedInsn& in, bool followed) noexcept {
  static constexpr std::array<Handler, 16> kExit = JccSideRow<false>(std::make_index_sequence<16>());
  static constexpr std::array<Handler, 16> kFollow = JccSideRow<true>(std::make_index_sequence<16>());
  return (followed ? kFollow : kExit)[in.cond & 15];
}

Interpreter::Handler Interpreter::ResolveFormHandler(const DecodedInsn& in) noexcept {
  // Only the plain forms: LOCK, and the byte registers AH..BH (which
  // ReadReg/WriteReg handle but MOVZX-like ops do not use) go the general way.
  if (in.prefixes & kPrefixLock) return nullptr;
  Form form;
  const OperandKind d = in.dst.kind, sk = in.src.kind;
  if (d == OperandKind::kReg && sk == OperandKind::kReg) form = Form::kRegReg;
  else if (d == OperandKind::kReg && sk == OperandKind::kImm) form = Form::kRegImm;
  else if (d == OperandKind::kReg && sk == OperandKind::kMem) form = Form::kRegMem;
  else if (d == OperandKind::kMem && sk == OperandKind::kReg) form = Form::kMemReg;
  else if (d == OperandKind::kMem && sk == OperandKind::kImm) form = Form::kMemImm;
  else return nullptr;
  if (in.src2.kind != OperandKind::kNone) return nullptr;
#define FORM_ROW(kSize, kOp)                                                                 \
  {&Threaded<&FormThunk<kSize, kOp, Form::kRegReg>>, &Threaded<&FormThunk<kSize, kOp, Form::kRegImm>>, \
   &Threaded<&FormThunk<kSize, kOp, Form::kRegMem>>, &Threaded<&FormThunk<kSize, kOp, Form::kMemReg>>, \
   &Threaded<&FormThunk<kSize, kOp, Form::kMemImm>>}
#define FORM_OP(kOp) {FORM_ROW(1, kOp), FORM_ROW(2, kOp), FORM_ROW(4, kOp), FORM_ROW(8, kOp)}
  static constexpr Handler kTable[14][4][5] = {
      FORM_OP(Op::kMov),   FORM_OP(Op::kAdd), FORM_OP(Op::kSub), FORM_OP(Op::kAnd),
      FORM_OP(Op::kOr),    FORM_OP(Op::kXor), FORM_OP(Op::kCmp), FORM_OP(Op::kTest),
      FORM_OP(Op::kImul2), FORM_OP(Op::kShl), FORM_OP(Op::kShr), FORM_OP(Op::kSar),
      FORM_OP(Op::kRol),   FORM_OP(Op::kRor)};
#undef FORM_OP
#undef FORM_ROW
  int op;
  switch (in.op) {
    case Op::kMov: op = 0; break;
    case Op::kAdd: op = 1; break;
    case Op::kSub: op = 2; break;
    case Op::kAnd: op = 3; break;
    case Op::kOr: op = 4; break;
    case Op::kXor: op = 5; break;
    case Op::kCmp: op = 6; break;
    case Op::kTest: op = 7; break;
    case Op::kImul2:
      // IMUL r, r/m only (the decoder gives no other form; IMUL r, r/m, imm
      // is kImul3).
      if (form != Form::kRegReg && form != Form::kRegMem) return nullptr;
      op = 8;
      break;
    case Op::kShl: op = 9; break;
    case Op::kShr: op = 10; break;
    case Op::kSar: op = 11; break;
    case Op::kRol: op = 12; break;
    case Op::kRor: op = 13; break;
    default: return nullptr;
  }
  int size;
  switch (in.operand_size) {
    case 1: size = 0; break;
    case 2: size = 1; break;
    case 4: size = 2; break;
    case 8: size = 3; break;
    default: return nullptr;
  }
  return kTable[op][size][static_cast<int>(form)];
}

template <int kDst, int kSrc, bool kSigned, bool kFromMem>
Interpreter::Flow Interpreter::ExtendThunk(Interpreter* self, const DecodedInsn& in) noexcept {
  uint64_t v;
  if constexpr (kFromMem) {
    if (!self->Read(self->EffectiveAddress(in), kSrc, &v)) return Flow::kStop;
  } else {
    v = self->state_.ReadReg(in.src.reg, kSrc);
  }
  if constexpr (kSigned) v = static_cast<uint64_t>(SignExtend<kSrc>(v));
  self->state_.WriteReg(in.dst.reg, kDst, v);
  return Flow::kNext;
}

Interpreter::Handler Interpreter::ResolveExtendHandler(const DecodedInsn& in) noexcept {
  if (in.op != Op::kMovzx && in.op != Op::kMovsx && in.op != Op::kMovsxd) return nullptr;
  if (in.dst.kind != OperandKind::kReg) return nullptr;
  const bool mem = in.src.kind == OperandKind::kMem;
  if (!mem && in.src.kind != OperandKind::kReg) return nullptr;
  const bool sign = in.op != Op::kMovzx;
#define EXT_ROW(kDst, kSrc)                                                      \
  {{&Threaded<&ExtendThunk<kDst, kSrc, false, false>>,                          \
    &Threaded<&ExtendThunk<kDst, kSrc, false, true>>},                          \
   {&Threaded<&ExtendThunk<kDst, kSrc, true, false>>,                           \
    &Threaded<&ExtendThunk<kDst, kSrc, true, true>>}}
  // [dst 2/4/8][src 1/2/4][signed][from memory]
  static constexpr Handler kTable[3][3][2][2] = {
      {EXT_ROW(2, 1), EXT_ROW(2, 2), EXT_ROW(2, 4)},
      {EXT_ROW(4, 1), EXT_ROW(4, 2), EXT_ROW(4, 4)},
      {EXT_ROW(8, 1), EXT_ROW(8, 2), EXT_ROW(8, 4)}};
#undef EXT_ROW
  int d, sz;
  switch (in.operand_size) {
    case 2: d = 0; break;
    case 4: d = 1; break;
    case 8: d = 2; break;
    default: return nullptr;
  }
  switch (in.src_size) {
    case 1: sz = 0; break;
    case 2: sz = 1; break;
    case 4: sz = 2; break;
    default: return nullptr;
  }
  return kTable[d][sz][sign ? 1 : 0][mem ? 1 : 0];
}

Interpreter::Handler Interpreter::ResolveHandler(const DecodedInsn& in, bool specialised) noexcept {
  if (specialised) {
    if (Handler h = ResolveFormHandler(in); h != nullptr) return h;
    if (Handler h = ResolveExtendHandler(in); h != nullptr) return h;
  }
  if (in.op == Op::kJcc) {
    static constexpr Handler kJcc[16] = {
        &Threaded<&JccThunk<0>>,  &Threaded<&JccThunk<1>>,  &Threaded<&JccThunk<2>>,
        &Threaded<&JccThunk<3>>,  &Threaded<&JccThunk<4>>,  &Threaded<&JccThunk<5>>,
        &Threaded<&JccThunk<6>>,  &Threaded<&JccThunk<7>>,  &Threaded<&JccThunk<8>>,
        &Threaded<&JccThunk<9>>,  &Threaded<&JccThunk<10>>, &Threaded<&JccThunk<11>>,
        &Threaded<&JccThunk<12>>, &Threaded<&JccThunk<13>>, &Threaded<&JccThunk<14>>,
        &Threaded<&JccThunk<15>>};
    return kJcc[in.cond & 15];
  }
  using Seq = std::make_index_sequence<static_cast<size_t>(Op::kNumOps)>;
  static constexpr std::array<std::array<Handler, static_cast<size_t>(Op::kNumOps)>, 5> kTable = {
      MakeRow<1>(Seq{}), MakeRow<2>(Seq{}), MakeRow<4>(Seq{}), MakeRow<8>(Seq{}), MakeRow<0>(Seq{})};
  size_t op = static_cast<size_t>(in.op);
  if (op >= static_cast<size_t>(Op::kNumOps)) op = static_cast<size_t>(Op::kInvalid);
  return kTable[in.operand_size <= 16 ? kSizeRow[in.operand_size] : 4][op];
}

Interpreter::Flow Interpreter::Execute(const DecodedInsn& in) noexcept {
  // One instruction alone: a one-entry context, so the threaded handler
  // returns after it. kDirty means it retired, like kNext.
  const Handler h = ResolveHandler(in, specialised_handlers_);
  cur_block_ = nullptr;  // no chaining out of a single instruction
  ctx_insns_ = &in;
  ctx_handlers_ = &h;
  ctx_end_ = &in + 1;
  const Flow flow = h(this, in);
  return flow == Flow::kDirty ? Flow::kNext : flow;
}

}  // namespace cpu

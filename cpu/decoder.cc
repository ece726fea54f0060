// The x86-64 decoder. Structure follows the SDM's instruction format (Vol. 2
// §2.1, Figure 2-1): legacy prefixes, REX, opcode (1-byte map or 0F map,
// Appendix A Tables ), ModRM, SIB, displacement, immediate.
//
// The opcode maps are big switches rather than tables: the compiler turns them
// into jump tables, each case reads like the SDM's row for it, and the operand
// forms are a handful of helpers (Rm, Reg, Imm*) named after the SDM's operand
// codes (Eb/Ev, Gb/Gv, Ib/Iz/Iv).
#include "cpu/decoder.h"

#include <algorithm>
#include <cstring>

namespace cpu {
namespace {

// REX bits (SDM Vol. 2 §2.2.1, Table 2-4).
constexpr uint8_t kRexW = 8;
constexpr uint8_t kRexR = 4;
constexpr uint8_t kRexX = 2;
constexpr uint8_t kRexB = 1;

constexpr Op kAluOps[8] = {Op::kAdd, Op::kOr,  Op::kAdc, Op::kSbb,
                           Op::kAnd, Op::kSub, Op::kXor, Op::kCmp};
// Group 2 (SDM Vol. 2 Table A-6): /6 is SAL, an alias of SHL.
constexpr Op kShiftOps[8] = {Op::kRol, Op::kRor, Op::kRcl, Op::kRcr,
                             Op::kShl, Op::kShr, Op::kShl, Op::kSar};

Operand MakeReg(uint8_t reg) { return Operand{OperandKind::kReg, reg}; }
Operand MakeMem() { return Operand{OperandKind::kMem, 0}; }
Operand MakeImm() { return Operand{OperandKind::kImm, 0}; }

// One decode. Holds the cursor and the prefix state; writes straight into the
// caller's DecodedInsn.
class Decoder {
 public:
  Decoder(const uint8_t* bytes, size_t available, DecodedInsn* out)
      : bytes_(bytes),
        limit_(available < kMaxInsnBytes ? available : kMaxInsnBytes),
        out_(out) {}

  DecodeStatus Run() {
    *out_ = DecodedInsn{};
    if (!ReadPrefixesAndOpcode()) return Fail();
    const bool ok = opcode_ == 0x0f ? TwoByte() : OneByte();
    if (!ok) return Fail();
    return Finish();
  }

 private:
  // ---- Byte fetch -------------------------------------------------------
  // Every byte comes through here, so the 15-byte limit and `available` are
  // enforced in one place, with one compare on the fast path. Reaching the
  // 15-byte limit is #GP however many bytes the caller has.
  bool Fetch(uint8_t* b) {
    if (pos_ >= limit_) [[unlikely]] {
      return Stop(pos_ >= kMaxInsnBytes ? DecodeStatus::kTooLong : DecodeStatus::kNeedMoreBytes);
    }
    *b = bytes_[pos_++];
    return true;
  }
  // Little-endian, `n` in {1, 2, 4, 8}.
  bool FetchLe(int n, uint64_t* v) {
    uint64_t value = 0;
    for (int i = 0; i < n; ++i) {
      uint8_t b;
      if (!Fetch(&b)) return false;
      value |= static_cast<uint64_t>(b) << (8 * i);
    }
    *v = value;
    return true;
  }
  bool Stop(DecodeStatus status) {
    status_ = status;
    return false;
  }
  bool Invalid() { return Stop(DecodeStatus::kInvalid); }

  DecodeStatus Fail() {
    out_->op = Op::kInvalid;
    out_->length = static_cast<uint8_t>(pos_ == 0 ? 1 : pos_);
    return status_;
  }

  // ---- Prefixes (SDM Vol. 2 §2.1.1, §2.2.1) ------------------------------
  bool ReadPrefixesAndOpcode() {
    for (;;) {
      uint8_t b;
      if (!Fetch(&b)) return false;
      switch (b) {
        case 0xf0: lock_ = true; break;
        // F2/F3: the last one wins, as on hardware for string instructions.
        case 0xf2: rep_ = kPrefixRepne; break;
        case 0xf3: rep_ = kPrefixRep; break;
        // CS/SS/DS/ES overrides are ignored in 64-bit mode (SDM Vol. 1
        // §3.4.2.1); they also do not cancel an FS/GS override.
        case 0x26: case 0x2e: case 0x36: case 0x3e: break;
        case 0x64: out_->segment = Segment::kFs; break;
        case 0x65: out_->segment = Segment::kGs; break;
        case 0x66: p66_ = true; break;
        case 0x67: p67_ = true; break;
        default:
          if ((b & 0xf0) == 0x40) {
            // REX; a later REX replaces it (only the one right before the
            // opcode counts).
            rex_ = b;
            continue;
          }
          opcode_ = b;
          // Operand size (SDM Vol. 2 §2.2.1.2, Table 2-4): REX.W beats 66.
          os_ = (rex_ & kRexW) ? 8 : p66_ ? 2 : 4;
          out_->operand_size = os_;
          out_->address_size = p67_ ? 4 : 8;
          return true;
      }
      // A REX prefix followed by a legacy prefix is ignored (SDM Vol. 2
      // §2.2.1: "REX prefixes ... must immediately precede the opcode").
      rex_ = 0;
    }
  }

  // ---- ModRM / SIB / displacement (SDM Vol. 2 §2.1.3, §2.1.5, §2.2.1) ----
  bool ReadModRM() {
    uint8_t m;
    if (!Fetch(&m)) return false;
    mod_ = m >> 6;
    ext_ = (m >> 3) & 7;
    reg_ = static_cast<uint8_t>(ext_ | ((rex_ & kRexR) ? 8 : 0));
    const uint8_t rm_low = m & 7;
    rm_ = static_cast<uint8_t>(rm_low | ((rex_ & kRexB) ? 8 : 0));
    if (mod_ == 3) return true;

    MemOperand& mem = out_->mem;
    bool disp32 = mod_ == 2;
    if (rm_low == 4) {
      uint8_t sib;
      if (!Fetch(&sib)) return false;
      const uint8_t index = static_cast<uint8_t>(((sib >> 3) & 7) | ((rex_ & kRexX) ? 8 : 0));
      // Index 100b means "no index" only without REX.X; with it, it is R12
      // (SDM Vol. 2 §2.2.1.2, Table 2-5 note).
      if (index != 4) {
        mem.index = index;
        mem.scale_log2 = sib >> 6;
      }
      const uint8_t base_low = sib & 7;
      if (base_low == 5 && mod_ == 0) {
        // No base, disp32 (also with REX.B: the mod=00 special case does not
        // look at REX.B, SDM Vol. 2 Table 2-5).
        mem.base = kRegNone;
        disp32 = true;
      } else {
        mem.base = static_cast<uint8_t>(base_low | ((rex_ & kRexB) ? 8 : 0));
      }
    } else if (rm_low == 5 && mod_ == 0) {
      // RIP-relative (SDM Vol. 2 §2.2.1.6); REX.B is ignored, so 41 ... 05
      // is RIP-relative too. With 67 it is EIP-relative: same form,
      // address_size 4.
      mem.base = kBaseRip;
      disp32 = true;
    } else {
      mem.base = rm_;
    }
    if (mod_ == 1) {
      uint64_t d;
      if (!FetchLe(1, &d)) return false;
      mem.disp = static_cast<int8_t>(d);
    } else if (disp32) {
      uint64_t d;
      if (!FetchLe(4, &d)) return false;
      mem.disp = static_cast<int32_t>(static_cast<uint32_t>(d));
    }
    return true;
  }

  bool IsMem() const { return mod_ != 3; }

  // A general register operand of `size` bytes: for bytes without REX,
  // encodings 4..7 are AH, CH, DH, BH (SDM Vol. 2 §2.2.1.2).
  Operand Gpr(uint8_t n, int size) const {
    if (size == 1 && rex_ == 0 && n >= 4 && n <= 7) return MakeReg(static_cast<uint8_t>(n + 12));
    return MakeReg(n);
  }
  // E operand (ModRM r/m).
  Operand Rm(int size) const { return IsMem() ? MakeMem() : Gpr(rm_, size); }
  // G operand (ModRM reg).
  Operand Reg(int size) const { return Gpr(reg_, size); }

  // ---- Immediates ------------------------------------------------------
  bool ImmSigned(int n) {
    uint64_t v;
    if (!FetchLe(n, &v)) return false;
    switch (n) {
      case 1: out_->imm = static_cast<int8_t>(v); break;
      case 2: out_->imm = static_cast<int16_t>(v); break;
      case 4: out_->imm = static_cast<int32_t>(static_cast<uint32_t>(v)); break;
      default: out_->imm = static_cast<int64_t>(v); break;
    }
    return true;
  }
  bool ImmUnsigned(int n) {
    uint64_t v;
    if (!FetchLe(n, &v)) return false;
    out_->imm = static_cast<int64_t>(v);
    return true;
  }
  // Iz: 16 bits with operand size 16, else 32 sign-extended (SDM Vol. 2 §2.2.1.5).
  bool ImmZ() { return ImmSigned(os_ == 2 ? 2 : 4); }

  // ---- Operand forms ---------------------------------------------------
  void Set(Op op, Operand dst, Operand src = {}) {
    out_->op = op;
    out_->dst = dst;
    out_->src = src;
  }
  void SetSize(int size) { out_->operand_size = static_cast<uint8_t>(size); }
  // Instructions that default to 64-bit operands in long mode (push, pop,
  // leave, ...: SDM Vol. 2 §2.2.1.7 and Table A-1 "d64"): 66 still selects 16.
  // REX.W still beats 66.
  void Default64() { SetSize(os_ == 2 ? 2 : 8); }
  // Near branches (Jcc, JMP, CALL, RET: "f64"): always 64-bit; Intel ignores
  // 66 here in 64-bit mode (SDM Vol. 2 §2.2.1.7). AMD honours it, but no
  // compiler emits it.
  void Force64() { SetSize(8); }

  // Eb,Gb / Ev,Gv / Gb,Eb / Gv,Ev with ModRM.
  bool EG(Op op, bool byte) {
    if (!ReadModRM()) return false;
    const int size = byte ? 1 : os_;
    SetSize(size);
    Set(op, Rm(size), Reg(size));
    return true;
  }
  bool GE(Op op, bool byte) {
    if (!ReadModRM()) return false;
    const int size = byte ? 1 : os_;
    SetSize(size);
    Set(op, Reg(size), Rm(size));
    return true;
  }
  // Relative branch with a rel8/rel32 displacement.
  bool Rel(Op op, int n) {
    Force64();
    out_->op = op;
    out_->src = MakeImm();
    return ImmSigned(n);
  }

  // ---- 1-byte opcode map (SDM Vol. 2 Table A-2) ---------------------------
  bool OneByte() {
    const uint8_t op = opcode_;
    if (op < 0x40) {
      // PUSH/POP ES/CS/SS/DS and DAA/DAS/AAA/AAS are invalid in 64-bit mode.
      if ((op & 7) >= 6) return Invalid();
      const Op alu = kAluOps[op >> 3];
      switch (op & 7) {
        case 0: return EG(alu, true);
        case 1: return EG(alu, false);
        case 2: return GE(alu, true);
        case 3: return GE(alu, false);
        case 4:
          SetSize(1);
          Set(alu, MakeReg(kRegRax), MakeImm());
          return ImmSigned(1);
        default:
          Set(alu, MakeReg(kRegRax), MakeImm());
          return ImmZ();
      }
    }
    if (op >= 0x50 && op <= 0x57) {
      Default64();
      Set(Op::kPush, {}, MakeReg(static_cast<uint8_t>((op & 7) | ((rex_ & kRexB) ? 8 : 0))));
      return true;
    }
    if (op >= 0x58 && op <= 0x5f) {
      Default64();
      Set(Op::kPop, MakeReg(static_cast<uint8_t>((op & 7) | ((rex_ & kRexB) ? 8 : 0))));
      return true;
    }
    if (op >= 0x70 && op <= 0x7f) {
      out_->cond = op & 0xf;
      return Rel(Op::kJcc, 1);
    }
    if (op >= 0x91 && op <= 0x97) {
      Set(Op::kXchg, MakeReg(static_cast<uint8_t>((op & 7) | ((rex_ & kRexB) ? 8 : 0))),
          MakeReg(kRegRax));
      return true;
    }
    if (op >= 0xb0 && op <= 0xb7) {  // MOV r8, Ib
      SetSize(1);
      Set(Op::kMov, Gpr(static_cast<uint8_t>((op & 7) | ((rex_ & kRexB) ? 8 : 0)), 1), MakeImm());
      return ImmSigned(1);
    }
    if (op >= 0xb8 && op <= 0xbf) {  // MOV r, Iv (imm64 with REX.W: movabs)
      Set(Op::kMov, MakeReg(static_cast<uint8_t>((op & 7) | ((rex_ & kRexB) ? 8 : 0))),
          MakeImm());
      if (os_ == 8) out_->prefixes |= kEncodedImm64;
      return ImmSigned(os_);
    }
    switch (op) {
      case 0x63:  // MOVSXD Gv, Ed
        if (!ReadModRM()) return false;
        Set(Op::kMovsxd, Reg(os_), Rm(4));
        out_->src_size = 4;
        return true;
      case 0x68:
        Default64();
        Set(Op::kPush, {}, MakeImm());
        return ImmSigned(os_ == 2 ? 2 : 4);
      case 0x6a:
        Default64();
        Set(Op::kPush, {}, MakeImm());
        return ImmSigned(1);
      case 0x69:
      case 0x6b:
        if (!ReadModRM()) return false;
        Set(Op::kImul3, Reg(os_), Rm(os_));
        out_->src2 = MakeImm();
        return op == 0x69 ? ImmZ() : ImmSigned(1);
      case 0x6c: case 0x6d: case 0x6e: case 0x6f:  // INS/OUTS: at most 32-bit.
        SetSize((op & 1) ? (p66_ ? 2 : 4) : 1);
        out_->op = op < 0x6e ? Op::kIns : Op::kOuts;
        return true;
      case 0x80: case 0x81: case 0x83: {
        if (!ReadModRM()) return false;
        const int size = op == 0x80 ? 1 : os_;
        SetSize(size);
        Set(kAluOps[ext_], Rm(size), MakeImm());
        return op == 0x81 ? ImmZ() : ImmSigned(1);
      }
      case 0x84: return EG(Op::kTest, true);
      case 0x85: return EG(Op::kTest, false);
      case 0x86: return EG(Op::kXchg, true);
      case 0x87: return EG(Op::kXchg, false);
      case 0x88: return EG(Op::kMov, true);
      case 0x89: return EG(Op::kMov, false);
      case 0x8a: return GE(Op::kMov, true);
      case 0x8b: return GE(Op::kMov, false);
      case 0x8c:  // MOV Ev, Sw: a register destination takes the operand size.
        if (!ReadModRM()) return false;
        if (ext_ > 5) return Invalid();
        SetSize(IsMem() ? 2 : os_);
        Set(Op::kMovFromSreg, Rm(os_), Operand{OperandKind::kSreg, ext_});
        out_->src_size = 2;
        return true;
      case 0x8d:
        if (!ReadModRM()) return false;
        if (!IsMem()) return Invalid();
        Set(Op::kLea, Reg(os_), MakeMem());
        return true;
      case 0x8e:  // MOV Sw, Ew; loading CS this way is #UD.
        if (!ReadModRM()) return false;
        if (ext_ > 5 || ext_ == 1) return Invalid();
        SetSize(2);
        Set(Op::kMovToSreg, Operand{OperandKind::kSreg, ext_}, Rm(2));
        out_->src_size = 2;
        return true;
      case 0x8f:  // Group 1A: POP Ev.
        if (!ReadModRM()) return false;
        if (ext_ != 0) return Invalid();
        Default64();
        Set(Op::kPop, Rm(out_->operand_size));
        return true;
      case 0x90:
        if (rex_ & kRexB) {  // XCHG r8, rAX
          Set(Op::kXchg, MakeReg(8), MakeReg(kRegRax));
        } else if (rep_ == kPrefixRep) {
          out_->op = Op::kPause;
        } else if (os_ == 2) {
          // 66 90 is "xchg ax, ax" (objdump's name); a no-op either way.
          Set(Op::kXchg, MakeReg(kRegRax), MakeReg(kRegRax));
        } else {
          out_->op = Op::kNop;
        }
        return true;
      case 0x98: out_->op = Op::kCbw; return true;
      case 0x99: out_->op = Op::kCwd; return true;
      case 0x9c: Default64(); out_->op = Op::kPushf; return true;
      case 0x9d: Default64(); out_->op = Op::kPopf; return true;
      case 0x9e: out_->op = Op::kSahf; return true;
      case 0x9f: out_->op = Op::kLahf; return true;
      case 0xa0: case 0xa1: case 0xa2: case 0xa3: {
        // MOV with a moffs: the address is address_size bytes (SDM Vol. 2
        // §2.2.1.4); stored in imm, base kBaseAbs64.
        const int size = (op & 1) ? os_ : 1;
        SetSize(size);
        out_->mem.base = kBaseAbs64;
        if (op < 0xa2) {
          Set(Op::kMov, MakeReg(kRegRax), MakeMem());
        } else {
          Set(Op::kMov, MakeMem(), MakeReg(kRegRax));
        }
        return ImmUnsigned(p67_ ? 4 : 8);
      }
      case 0xa4: case 0xa5: SetSize((op & 1) ? os_ : 1); out_->op = Op::kMovs; return true;
      case 0xa6: case 0xa7: SetSize((op & 1) ? os_ : 1); out_->op = Op::kCmps; return true;
      case 0xaa: case 0xab: SetSize((op & 1) ? os_ : 1); out_->op = Op::kStos; return true;
      case 0xac: case 0xad: SetSize((op & 1) ? os_ : 1); out_->op = Op::kLods; return true;
      case 0xae: case 0xaf: SetSize((op & 1) ? os_ : 1); out_->op = Op::kScas; return true;
      case 0xa8:
        SetSize(1);
        Set(Op::kTest, MakeReg(kRegRax), MakeImm());
        return ImmSigned(1);
      case 0xa9:
        Set(Op::kTest, MakeReg(kRegRax), MakeImm());
        return ImmZ();
      case 0xc0: case 0xc1: case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        if (!ReadModRM()) return false;
        const int size = (op & 1) ? os_ : 1;
        SetSize(size);
        const Op shift = kShiftOps[ext_];
        if (op <= 0xc1) {
          Set(shift, Rm(size), MakeImm());
          return ImmUnsigned(1);
        }
        if (op <= 0xd1) {
          Set(shift, Rm(size), MakeImm());
          out_->imm = 1;
          return true;
        }
        Set(shift, Rm(size), MakeReg(kRegRcx));
        return true;
      }
      case 0xc2:
        Force64();
        out_->op = Op::kRet;
        return ImmUnsigned(2);
      case 0xc3: Force64(); out_->op = Op::kRet; return true;
      case 0xc6: case 0xc7: {  // Group 11: MOV E, I (C6 F8/C7 F8 are RTM: invalid).
        if (!ReadModRM()) return false;
        if (ext_ != 0) return Invalid();
        const int size = op == 0xc6 ? 1 : os_;
        SetSize(size);
        Set(Op::kMov, Rm(size), MakeImm());
        return op == 0xc6 ? ImmSigned(1) : ImmZ();
      }
      case 0xc8: {
        Default64();
        out_->op = Op::kEnter;
        if (!ImmUnsigned(2)) return false;
        uint64_t level;
        if (!FetchLe(1, &level)) return false;
        out_->enter_level = static_cast<uint8_t>(level);
        return true;
      }
      case 0xc9: Default64(); out_->op = Op::kLeave; return true;
      case 0xca: out_->op = Op::kRetFar; return ImmUnsigned(2);
      case 0xcb: out_->op = Op::kRetFar; return true;
      case 0xcc: out_->op = Op::kInt3; return true;
      case 0xcd:
        Set(Op::kInt, {}, MakeImm());
        return ImmUnsigned(1);
      case 0xcf: out_->op = Op::kIret; return true;
      case 0xe0: return Rel(Op::kLoopne, 1);
      case 0xe1: return Rel(Op::kLoope, 1);
      case 0xe2: return Rel(Op::kLoop, 1);
      case 0xe3: return Rel(Op::kJrcxz, 1);
      case 0xe4: case 0xe5:  // IN AL/eAX, Ib (REX.W does not widen: at most 32-bit).
        SetSize((op & 1) ? (p66_ ? 2 : 4) : 1);
        Set(Op::kIn, MakeReg(kRegRax), MakeImm());
        return ImmUnsigned(1);
      case 0xe6: case 0xe7:
        SetSize((op & 1) ? (p66_ ? 2 : 4) : 1);
        Set(Op::kOut, MakeImm(), MakeReg(kRegRax));
        return ImmUnsigned(1);
      case 0xec: case 0xed:
        SetSize((op & 1) ? (p66_ ? 2 : 4) : 1);
        Set(Op::kIn, MakeReg(kRegRax), MakeReg(kRegRdx));
        return true;
      case 0xee: case 0xef:
        SetSize((op & 1) ? (p66_ ? 2 : 4) : 1);
        Set(Op::kOut, MakeReg(kRegRdx), MakeReg(kRegRax));
        return true;
      case 0xe8: return Rel(Op::kCall, 4);
      case 0xe9: return Rel(Op::kJmp, 4);
      case 0xeb: return Rel(Op::kJmp, 1);
      case 0xf4: out_->op = Op::kHlt; return true;
      case 0xf5: out_->op = Op::kCmc; return true;
      case 0xf6: case 0xf7: {  // Group 3.
        if (!ReadModRM()) return false;
        const int size = op == 0xf6 ? 1 : os_;
        SetSize(size);
        switch (ext_) {
          case 0: case 1:  // /1 is an undocumented alias of TEST; objdump agrees.
            Set(Op::kTest, Rm(size), MakeImm());
            return size == 1 ? ImmSigned(1) : ImmZ();
          case 2: Set(Op::kNot, Rm(size)); return true;
          case 3: Set(Op::kNeg, Rm(size)); return true;
          case 4: Set(Op::kMul, {}, Rm(size)); return true;
          case 5: Set(Op::kImul1, {}, Rm(size)); return true;
          case 6: Set(Op::kDiv, {}, Rm(size)); return true;
          default: Set(Op::kIdiv, {}, Rm(size)); return true;
        }
      }
      case 0xf8: out_->op = Op::kClc; return true;
      case 0xf9: out_->op = Op::kStc; return true;
      case 0xfa: out_->op = Op::kCli; return true;
      case 0xfb: out_->op = Op::kSti; return true;
      case 0xfc: out_->op = Op::kCld; return true;
      case 0xfd: out_->op = Op::kStd; return true;
      case 0xfe:  // Group 4.
        if (!ReadModRM()) return false;
        if (ext_ > 1) return Invalid();
        SetSize(1);
        Set(ext_ == 0 ? Op::kInc : Op::kDec, Rm(1));
        return true;
      case 0xff:  // Group 5.
        if (!ReadModRM()) return false;
        switch (ext_) {
          case 0: Set(Op::kInc, Rm(os_)); return true;
          case 1: Set(Op::kDec, Rm(os_)); return true;
          case 2: Force64(); Set(Op::kCallIndirect, {}, Rm(8)); return true;
          case 4: Force64(); Set(Op::kJmpIndirect, {}, Rm(8)); return true;
          case 6: Default64(); Set(Op::kPush, {}, Rm(out_->operand_size)); return true;
          default: return Invalid();  // /3, /5 far CALL/JMP (unsupported), /7 reserved.
        }
      default:
        // 60-62, 82, 9A, C4/C5 (VEX), CE, D4-D7, D8-DF (x87), EA, F1, 9B (FWAIT),
        // and the prefixes' stray values: not in the supported set.
        return Invalid();
    }
  }

  // ---- 2-byte opcode map: 0F xx (SDM Vol. 2 Table A-3) --------------------
  bool TwoByte() {
    uint8_t op;
    if (!Fetch(&op)) return false;
    if (op >= 0x40 && op <= 0x4f) {
      out_->cond = op & 0xf;
      return GE(Op::kCmovcc, false);
    }
    if (op >= 0x80 && op <= 0x8f) {
      out_->cond = op & 0xf;
      return Rel(Op::kJcc, 4);
    }
    if (op >= 0x90 && op <= 0x9f) {  // SETcc Eb; the reg field is ignored.
      if (!ReadModRM()) return false;
      out_->cond = op & 0xf;
      SetSize(1);
      Set(Op::kSetcc, Rm(1));
      return true;
    }
    if (op >= 0xc8 && op <= 0xcf) {  // BSWAP r (0F C8+r).
      Set(Op::kBswap, MakeReg(static_cast<uint8_t>((op & 7) | ((rex_ & kRexB) ? 8 : 0))));
      return true;
    }
    if (op >= 0x18 && op <= 0x1f) {
      // Hint NOPs: 0F 1F /0 is the recommended multi-byte NOP; 0F 18 is
      // PREFETCHh, 0F 1E FA with F3 is ENDBR64; the rest of 0F 19-1E are
      // reserved NOPs (SDM Vol. 2 Table A-3 and NOP). No memory access.
      if (!ReadModRM()) return false;
      Set(Op::kNop, Rm(os_));
      return true;
    }
    switch (op) {
      case 0x00: {  // Group 6.
        if (!ReadModRM()) return false;
        switch (ext_) {
          case 0: SetSize(IsMem() ? 2 : os_); Set(Op::kSldt, Rm(os_)); return true;
          case 1: SetSize(IsMem() ? 2 : os_); Set(Op::kStr, Rm(os_)); return true;
          case 2: SetSize(2); Set(Op::kLldt, {}, Rm(2)); return true;
          case 3: SetSize(2); Set(Op::kLtr, {}, Rm(2)); return true;
          default: return Invalid();  // VERR/VERW and reserved.
        }
      }
      case 0x01: {  // Group 7.
        if (!ReadModRM()) return false;
        if (IsMem()) {
          switch (ext_) {
            case 0: Set(Op::kSgdt, MakeMem()); return true;
            case 1: Set(Op::kSidt, MakeMem()); return true;
            case 2: Set(Op::kLgdt, {}, MakeMem()); return true;
            case 3: Set(Op::kLidt, {}, MakeMem()); return true;
            case 7: Set(Op::kInvlpg, {}, MakeMem()); return true;
            default: return Invalid();  // SMSW/LMSW/RSTORSSP: unsupported.
          }
        }
        const uint8_t low = rm_ & 7;
        if (ext_ == 7 && low == 0) { out_->op = Op::kSwapgs; return true; }
        if (ext_ == 7 && low == 1) { out_->op = Op::kRdtscp; return true; }
        return Invalid();  // MONITOR/MWAIT/XGETBV/CLAC/STAC/...: unsupported.
      }
      case 0x05: out_->op = Op::kSyscall; return true;
      case 0x06: out_->op = Op::kClts; return true;
      case 0x07: out_->op = Op::kSysret; return true;
      case 0x08: out_->op = Op::kInvd; return true;
      case 0x09:
        // F3 0F 09 is WBNOINVD, which runs as WBINVD where unsupported; the
        // 66/F2 forms are undefined.
        if (p66_ || rep_ == kPrefixRepne) return Invalid();
        out_->op = Op::kWbinvd;
        return true;
      case 0x0b: out_->op = Op::kUd2; return true;
      case 0x0d:  // PREFETCHW (Group P): a hint; memory forms only.
        if (!ReadModRM()) return false;
        if (!IsMem()) return Invalid();
        Set(Op::kNop, MakeMem());
        return true;
      case 0x20: case 0x22: {
        // MOV from/to CR: the mod field is ignored, the operand is always a
        // register (SDM Vol. 2, MOV—Move to/from Control Registers), so no
        // SIB or displacement follows. CR0, CR2, CR3, CR4 and (REX.R) CR8
        // exist; the others are #UD.
        uint8_t m;
        if (!Fetch(&m)) return false;
        const uint8_t cr = static_cast<uint8_t>(((m >> 3) & 7) | ((rex_ & kRexR) ? 8 : 0));
        if (cr != 0 && cr != 2 && cr != 3 && cr != 4 && cr != 8) return Invalid();
        const Operand gpr = MakeReg(static_cast<uint8_t>((m & 7) | ((rex_ & kRexB) ? 8 : 0)));
        const Operand crop{OperandKind::kCr, cr};
        Force64();
        if (op == 0x20) {
          Set(Op::kMovFromCr, gpr, crop);
        } else {
          Set(Op::kMovToCr, crop, gpr);
        }
        return true;
      }
      case 0x30: out_->op = Op::kWrmsr; return true;
      case 0x31: out_->op = Op::kRdtsc; return true;
      case 0x32: out_->op = Op::kRdmsr; return true;
      case 0xa2: out_->op = Op::kCpuid; return true;
      case 0xa3: return EG(Op::kBt, false);
      case 0xab: return EG(Op::kBts, false);
      case 0xb3: return EG(Op::kBtr, false);
      case 0xbb: return EG(Op::kBtc, false);
      case 0xa4: case 0xac:  // SHLD/SHRD Ev, Gv, Ib
        if (!EG(op == 0xa4 ? Op::kShld : Op::kShrd, false)) return false;
        out_->src2 = MakeImm();
        return ImmUnsigned(1);
      case 0xa5: case 0xad:  // SHLD/SHRD Ev, Gv, CL
        if (!EG(op == 0xa5 ? Op::kShld : Op::kShrd, false)) return false;
        out_->src2 = MakeReg(kRegRcx);
        return true;
      case 0xae: {  // Group 15: only the fences.
        if (!ReadModRM()) return false;
        if (IsMem()) return Invalid();  // FXSAVE/.../CLFLUSH: unsupported.
        // With 66/F2/F3 these are other instructions (INCSSP, TPAUSE, ...).
        if (p66_ || rep_ != 0) return Invalid();
        switch (ext_) {
          case 5: out_->op = Op::kLfence; return true;
          case 6: out_->op = Op::kMfence; return true;
          case 7: out_->op = Op::kSfence; return true;
          default: return Invalid();
        }
      }
      case 0xaf: return GE(Op::kImul2, false);
      case 0xb0: return EG(Op::kCmpxchg, true);
      case 0xb1: return EG(Op::kCmpxchg, false);
      case 0xb6: case 0xb7: case 0xbe: case 0xbf: {  // MOVZX/MOVSX Gv, Eb/Ew
        if (!ReadModRM()) return false;
        const int src_size = (op & 1) ? 2 : 1;
        Set(op < 0xb8 ? Op::kMovzx : Op::kMovsx, Reg(os_), Rm(src_size));
        out_->src_size = static_cast<uint8_t>(src_size);
        return true;
      }
      case 0xba: {  // Group 8: BT/BTS/BTR/BTC Ev, Ib.
        if (!ReadModRM()) return false;
        if (ext_ < 4) return Invalid();
        static constexpr Op kBitOps[4] = {Op::kBt, Op::kBts, Op::kBtr, Op::kBtc};
        Set(kBitOps[ext_ - 4], Rm(os_), MakeImm());
        return ImmUnsigned(1);
      }
      // Also F3 0F BC/BD (TZCNT/LZCNT), see insn.h; F2 0F BC/BD are undefined.
      case 0xbc: return rep_ == kPrefixRepne ? Invalid() : GE(Op::kBsf, false);
      case 0xbd: return rep_ == kPrefixRepne ? Invalid() : GE(Op::kBsr, false);
      case 0xc0: return EG(Op::kXadd, true);
      case 0xc1: return EG(Op::kXadd, false);
      case 0xc7:  // Group 9 /1: CMPXCHG8B, or CMPXCHG16B with REX.W. Memory only.
        if (!ReadModRM()) return false;
        if (ext_ != 1 || !IsMem()) return Invalid();
        SetSize((rex_ & kRexW) ? 16 : 8);
        Set(Op::kCmpxchg8b, MakeMem());
        return true;
      default:
        // 0F 38 / 0F 3A (three-byte maps), SSE, MOV DR, PUSH/POP FS/GS, ...
        return Invalid();
    }
  }

  // ---- Post-decode checks ----------------------------------------------
  DecodeStatus Finish() {
    DecodedInsn& insn = *out_;
    const uint8_t attrs = OpAttributes(insn.op);
    if (lock_) {
      // LOCK is #UD unless the instruction is lockable and its destination is
      // memory (SDM Vol. 2 §2.1.1; LOCK—Assert LOCK# Signal Prefix).
      if (!(attrs & kLockable) || insn.dst.kind != OperandKind::kMem) {
        status_ = DecodeStatus::kInvalid;
        return Fail();
      }
      insn.prefixes |= kPrefixLock;
    }
    // REP/REPNE only mean something to string instructions; elsewhere they
    // are mandatory-prefix opcode bits (handled above) or ignored.
    if (attrs & kString) insn.prefixes |= rep_;
    if (insn.src_size == 0) insn.src_size = insn.operand_size;
    insn.length = static_cast<uint8_t>(pos_);
    return DecodeStatus::kOk;
  }

  const uint8_t* bytes_;
  size_t limit_;  // min(available, 15): bytes that may be read.
  DecodedInsn* out_;
  size_t pos_ = 0;
  DecodeStatus status_ = DecodeStatus::kInvalid;

  uint8_t rex_ = 0;  // The effective REX byte (0x40..0x4f), or 0 if none.
  bool p66_ = false;
  bool p67_ = false;
  bool lock_ = false;
  uint8_t rep_ = 0;  // kPrefixRep or kPrefixRepne: the last F3/F2.
  uint8_t opcode_ = 0;
  uint8_t os_ = 4;  // Operand size from prefixes (before per-opcode defaults).

  // ModRM fields.
  uint8_t mod_ = 3;
  uint8_t ext_ = 0;  // ModRM.reg without REX.R: the group opcode extension.
  uint8_t reg_ = 0;  // ModRM.reg with REX.R.
  uint8_t rm_ = 0;   // ModRM.rm with REX.B.
};

}  // namespace

DecodeStatus Decode(const uint8_t* bytes, size_t available, DecodedInsn* out) noexcept {
  return Decoder(bytes, available, out).Run();
}

DecodedBlock DecodeBlock(const uint8_t* page_bytes, uint32_t offset, DecodedInsn* out,
                         size_t max_insns, bool through_jcc, const uint16_t* follow,
                         size_t num_follow) noexcept {
  DecodedBlock block;
  block.end_offset = offset;
  uint32_t pos = offset;
  while (block.num_insns < max_insns) {
    if (pos >= kCodePageBytes) {
      block.end = BlockEnd::kPageEnd;
      return block;
    }
    DecodedInsn* insn = &out[block.num_insns];
    const DecodeStatus status = Decode(page_bytes + pos, kCodePageBytes - pos, insn);
    if (status == DecodeStatus::kNeedMoreBytes) {
      block.end = BlockEnd::kCrossPage;
      return block;
    }
    const uint32_t at = pos;
    ++block.num_insns;
    pos += insn->length;
    block.num_bytes += insn->length;
    block.end_offset = pos;
    if (status != DecodeStatus::kOk) {
      block.end = BlockEnd::kInvalid;
      return block;
    }
    if (through_jcc && insn->op == Op::kJmp && insn->operand_size != 2 && block.num_insns < max_insns) {
      // A direct JMP to this page: go on at its target (it is always taken).
      const int64_t target = static_cast<int64_t>(pos) + insn->imm;
      if (target >= 0 && target < static_cast<int64_t>(kCodePageBytes)) {
        block.followed |= uint64_t{1} << (block.num_insns - 1);
        pos = static_cast<uint32_t>(target);
        continue;
      }
    }
    if (EndsBlock(insn->op) && !(through_jcc && insn->op == Op::kJcc)) {
      block.end = BlockEnd::kEndsBlock;
      return block;
    }
    if (insn->op == Op::kJcc && num_follow > 0 && block.num_insns < 64 &&
        block.num_insns < max_insns) {
      // Follow only to a target on this page (the block stays one page's,
      // so its page generation covers it) and only for a 32/64-bit operand
      // size (a 16-bit Jcc truncates its target).
      const int64_t target = static_cast<int64_t>(pos) + insn->imm;
      const bool in_page = target >= 0 && target < static_cast<int64_t>(kCodePageBytes);
      if (insn->operand_size != 2 && in_page && std::find(follow, follow + num_follow, at) != follow + num_follow) {
        block.followed |= uint64_t{1} << (block.num_insns - 1);
        pos = static_cast<uint32_t>(target);
      }
    }
  }
  block.end = BlockEnd::kMaxInsns;
  return block;
}

}  // namespace cpu

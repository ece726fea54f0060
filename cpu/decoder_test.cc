// Tests for the x86-64 decoder (cpu/decoder.h):
//  - table-driven byte sequences -> disassembly text for every supported
//    opcode group, and field-level checks for the tricky encodings
//    (ModRM/SIB corner cases, RIP-relative, REX vs high-byte registers,
//    66/REX.W precedence, immediates);
//  - invalid encodings -> kInvalid, every truncation -> kNeedMoreBytes,
//    the 15-byte limit -> kTooLong;
//  - DecodeBlock's stopping rules;
//  - differential tests against binutils objdump: the whole guest image
//    (every instruction objdump sees must decode with the same length and
//    mnemonic) and a generated sweep over the opcode maps.
#include "cpu/decoder.h"

#include <elf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace cpu {
namespace {

std::vector<uint8_t> Hex(const std::string& text) {
  std::vector<uint8_t> out;
  std::istringstream in(text);
  std::string byte;
  while (in >> byte) out.push_back(static_cast<uint8_t>(std::strtoul(byte.c_str(), nullptr, 16)));
  return out;
}

std::string HexString(const uint8_t* p, size_t n) {
  std::string s;
  char buf[4];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof(buf), i ? " %02x" : "%02x", p[i]);
    s += buf;
  }
  return s;
}

DecodeStatus DecodeHex(const std::string& hex, DecodedInsn* insn) {
  const std::vector<uint8_t> bytes = Hex(hex);
  return Decode(bytes.data(), bytes.size(), insn);
}

// ---- Bytes -> text, one row per form --------------------------------------

struct TextCase {
  const char* bytes;
  const char* text;  // Disassemble() output.
};

// Each row must decode to kOk using all its bytes.
constexpr TextCase kTextCases[] = {
    // ALU, all six forms, several widths.
    {"00 c8", "add al, cl"},
    {"01 c8", "add eax, ecx"},
    {"48 01 c8", "add rax, rcx"},
    {"66 01 c8", "add ax, cx"},
    {"02 08", "add cl, byte ptr [rax]"},
    {"4c 03 00", "add r8, qword ptr [rax]"},
    {"04 7f", "add al, 0x7f"},
    {"05 78 56 34 12", "add eax, 0x12345678"},
    {"48 05 ff ff ff ff", "add rax, 0xffffffffffffffff"},
    {"66 05 34 12", "add ax, 0x1234"},
    {"08 c8", "or al, cl"},
    {"11 c8", "adc eax, ecx"},
    {"19 c8", "sbb eax, ecx"},
    {"21 c8", "and eax, ecx"},
    {"29 c8", "sub eax, ecx"},
    {"31 c0", "xor eax, eax"},
    {"39 c8", "cmp eax, ecx"},
    {"3c 01", "cmp al, 0x1"},
    // Group 1.
    {"80 00 01", "add byte ptr [rax], 0x1"},
    {"81 38 00 00 00 80", "cmp dword ptr [rax], 0x80000000"},
    {"48 83 ec 08", "sub rsp, 0x8"},
    {"48 83 c4 f8", "add rsp, 0xfffffffffffffff8"},
    {"66 81 c1 34 12", "add cx, 0x1234"},
    {"66 83 c1 ff", "add cx, 0xffff"},
    {"83 e0 0f", "and eax, 0xf"},
    {"48 81 e4 00 f0 ff ff", "and rsp, 0xfffffffffffff000"},
    // TEST / XCHG / MOV / LEA.
    {"84 c0", "test al, al"},
    {"48 85 ff", "test rdi, rdi"},
    {"a8 01", "test al, 0x1"},
    {"a9 00 01 00 00", "test eax, 0x100"},
    {"f6 c1 01", "test cl, 0x1"},
    {"48 f7 c7 ff 0f 00 00", "test rdi, 0xfff"},
    {"86 08", "xchg byte ptr [rax], cl"},
    {"48 87 07", "xchg qword ptr [rdi], rax"},
    {"48 91", "xchg rcx, rax"},
    {"41 90", "xchg r8d, eax"},
    {"66 90", "xchg ax, ax"},
    {"88 e0", "mov al, ah"},
    {"40 88 e0", "mov al, spl"},
    {"88 fc", "mov ah, bh"},
    {"41 88 e0", "mov r8b, spl"},
    {"45 88 c8", "mov r8b, r9b"},
    {"89 c8", "mov eax, ecx"},
    {"8a 07", "mov al, byte ptr [rdi]"},
    {"48 8b 05 10 00 00 00", "mov rax, qword ptr [rip+0x10]"},
    {"67 8b 05 10 00 00 00", "mov eax, dword ptr [eip+0x10]"},
    {"8b 04 25 00 10 00 00", "mov eax, dword ptr [0x1000]"},
    {"8b 04 24", "mov eax, dword ptr [rsp]"},
    {"8b 44 24 08", "mov eax, dword ptr [rsp+0x8]"},
    {"8b 45 00", "mov eax, dword ptr [rbp]"},
    {"41 8b 45 00", "mov eax, dword ptr [r13]"},
    {"41 8b 04 24", "mov eax, dword ptr [r12]"},
    {"8b 44 8d f0", "mov eax, dword ptr [rbp+rcx*4-0x10]"},
    {"42 8b 04 e0", "mov eax, dword ptr [rax+r12*8]"},
    {"8b 04 e0", "mov eax, dword ptr [rax]"},  // index 100 without REX.X: none.
    {"8b 04 05 00 01 00 00", "mov eax, dword ptr [rax*1+0x100]"},
    {"41 8b 04 25 00 01 00 00", "mov eax, dword ptr [0x100]"},  // REX.B ignored for no-base.
    {"43 8b 04 2c", "mov eax, dword ptr [r12+r13*1]"},
    {"8b 84 24 00 01 00 00", "mov eax, dword ptr [rsp+0x100]"},
    {"67 8b 04 88", "mov eax, dword ptr [eax+ecx*4]"},
    {"64 48 8b 04 25 28 00 00 00", "mov rax, qword ptr fs:[0x28]"},
    {"65 48 8b 00", "mov rax, qword ptr gs:[rax]"},
    {"2e 8b 00", "mov eax, dword ptr [rax]"},
    {"c6 00 01", "mov byte ptr [rax], 0x1"},
    {"c7 05 00 00 00 00 01 00 00 00", "mov dword ptr [rip], 0x1"},
    {"48 c7 c0 ff ff ff ff", "mov rax, 0xffffffffffffffff"},
    {"66 c7 00 34 12", "mov word ptr [rax], 0x1234"},
    {"b0 12", "mov al, 0x12"},
    {"b4 12", "mov ah, 0x12"},
    {"40 b4 12", "mov spl, 0x12"},
    {"b8 78 56 34 12", "mov eax, 0x12345678"},
    {"66 b8 34 12", "mov ax, 0x1234"},
    {"48 b8 88 77 66 55 44 33 22 11", "movabs rax, 0x1122334455667788"},
    {"49 bf 88 77 66 55 44 33 22 11", "movabs r15, 0x1122334455667788"},
    {"48 a1 88 77 66 55 44 33 22 11", "movabs rax, qword ptr [0x1122334455667788]"},
    {"a2 88 77 66 55 44 33 22 11", "movabs byte ptr [0x1122334455667788], al"},
    {"67 a1 44 33 22 11", "mov eax, dword ptr [0x11223344]"},
    {"48 8d 04 40", "lea rax, [rax+rax*2]"},
    {"48 8d 3d f9 ff ff ff", "lea rdi, [rip-0x7]"},
    {"8d 04 08", "lea eax, [rax+rcx*1]"},
    {"48 63 c7", "movsxd rax, edi"},
    {"63 c7", "movsxd eax, edi"},
    {"0f b6 c0", "movzx eax, al"},
    {"0f b6 c4", "movzx eax, ah"},
    {"40 0f b6 c6", "movzx eax, sil"},
    {"48 0f b7 07", "movzx rax, word ptr [rdi]"},
    {"0f be 07", "movsx eax, byte ptr [rdi]"},
    {"48 0f bf c1", "movsx rax, cx"},
    {"8c d8", "mov eax, ds"},
    {"8c 18", "mov word ptr [rax], ds"},
    {"8e d8", "mov ds, ax"},
    {"8e d0", "mov ss, ax"},
    {"8e e8", "mov gs, ax"},
    // Unary, multiply, divide.
    {"fe c0", "inc al"},
    {"fe 08", "dec byte ptr [rax]"},
    {"ff c0", "inc eax"},
    {"48 ff c8", "dec rax"},
    {"f7 d8", "neg eax"},
    {"48 f7 d0", "not rax"},
    {"48 f7 e1", "mul rcx"},
    {"f6 e1", "mul cl"},
    {"48 f7 e9", "imul rcx"},
    {"48 f7 f1", "div rcx"},
    {"f7 3f", "idiv dword ptr [rdi]"},
    {"48 0f af c1", "imul rax, rcx"},
    {"6b c0 0a", "imul eax, eax, 0xa"},
    {"6b c0 f6", "imul eax, eax, 0xfffffff6"},
    {"48 69 c0 00 01 00 00", "imul rax, rax, 0x100"},
    {"66 69 c0 34 12", "imul ax, ax, 0x1234"},
    // Shifts and rotates.
    {"d1 e0", "shl eax, 0x1"},
    {"d0 f8", "sar al, 0x1"},
    {"d3 e8", "shr eax, cl"},
    {"48 d3 e0", "shl rax, cl"},
    {"48 c1 f8 3f", "sar rax, 0x3f"},
    {"c1 c0 05", "rol eax, 0x5"},
    {"c1 c8 05", "ror eax, 0x5"},
    {"d1 d0", "rcl eax, 0x1"},
    {"d1 d8", "rcr eax, 0x1"},
    {"d1 f0", "shl eax, 0x1"},  // /6 is SAL.
    {"0f a4 d8 03", "shld eax, ebx, 0x3"},
    {"48 0f ad d8", "shrd rax, rbx, cl"},
    // Bit operations.
    {"0f a3 c8", "bt eax, ecx"},
    {"48 0f a3 07", "bt qword ptr [rdi], rax"},
    {"0f ba e0 03", "bt eax, 0x3"},
    {"0f ba 28 03", "bts dword ptr [rax], 0x3"},
    {"0f ba f0 03", "btr eax, 0x3"},
    {"0f ba f8 03", "btc eax, 0x3"},
    {"0f ab c8", "bts eax, ecx"},
    {"0f b3 c8", "btr eax, ecx"},
    {"0f bb c8", "btc eax, ecx"},
    {"48 0f bc c7", "bsf rax, rdi"},
    {"48 0f bd c7", "bsr rax, rdi"},
    {"f3 48 0f bc c7", "bsf rax, rdi"},  // TZCNT on a CPU without BMI1.
    {"0f c8", "bswap eax"},
    {"49 0f c9", "bswap r9"},
    // Atomics.
    {"f0 0f b1 0f", "lock cmpxchg dword ptr [rdi], ecx"},
    {"0f b0 0f", "cmpxchg byte ptr [rdi], cl"},
    {"f0 48 0f c1 07", "lock xadd qword ptr [rdi], rax"},
    {"f0 48 0f c7 0f", "lock cmpxchg16b xmmword ptr [rdi]"},
    {"0f c7 0f", "cmpxchg8b qword ptr [rdi]"},
    {"f0 ff 00", "lock inc dword ptr [rax]"},
    {"f0 48 83 00 01", "lock add qword ptr [rax], 0x1"},
    {"f0 0f ba 28 03", "lock bts dword ptr [rax], 0x3"},
    {"f0 87 07", "lock xchg dword ptr [rdi], eax"},
    // CMOVcc / SETcc / Jcc.
    {"0f 47 c1", "cmova eax, ecx"},
    {"48 0f 44 c1", "cmove rax, rcx"},
    {"0f 4c 07", "cmovl eax, dword ptr [rdi]"},
    {"0f 94 c0", "sete al"},
    {"0f 9f 07", "setg byte ptr [rdi]"},
    {"0f 93 c4", "setae ah"},
    {"74 05", "je .+0x7"},
    {"75 fe", "jne .+0x0"},
    {"7f 80", "jg .-0x7e"},
    {"0f 84 00 01 00 00", "je .+0x106"},
    {"0f 8c fa ff ff ff", "jl .+0x0"},
    {"eb fe", "jmp .+0x0"},
    {"e9 00 00 00 00", "jmp .+0x5"},
    {"e8 fb ff ff ff", "call .+0x0"},
    {"e2 fe", "loop .+0x0"},
    {"e3 10", "jrcxz .+0x12"},
    {"67 e3 10", "jecxz .+0x13"},
    {"ff e0", "jmp rax"},
    {"41 ff e3", "jmp r11"},
    {"ff 24 c5 00 10 00 00", "jmp qword ptr [rax*8+0x1000]"},
    {"ff d0", "call rax"},
    {"ff 15 10 00 00 00", "call qword ptr [rip+0x10]"},
    {"66 ff d0", "call rax"},  // Near branches ignore 66 (Intel).
    {"c3", "ret"},
    {"c2 08 00", "ret 0x8"},
    {"cb", "retf"},
    {"48 cb", "retfq"},
    {"48 ca 10 00", "retfq 0x10"},
    // Stack.
    {"50", "push rax"},
    {"41 57", "push r15"},
    {"66 50", "push ax"},
    {"48 50", "push rax"},
    {"5d", "pop rbp"},
    {"41 5c", "pop r12"},
    {"6a 10", "push 0x10"},
    {"6a ff", "push 0xffffffffffffffff"},
    {"68 00 00 00 80", "push 0xffffffff80000000"},
    {"66 68 34 12", "pushw 0x1234"},
    {"66 48 68 78 56 34 12", "push 0x12345678"},  // REX.W beats 66.
    {"66 48 50", "push rax"},
    {"ff 35 10 00 00 00", "push qword ptr [rip+0x10]"},
    {"ff 30", "push qword ptr [rax]"},
    {"8f 00", "pop qword ptr [rax]"},
    {"9c", "pushf"},
    {"9d", "popf"},
    {"66 9c", "pushfw"},
    {"c9", "leave"},
    {"c8 10 00 01", "enter 0x10, 0x1"},
    // Conversions.
    {"66 98", "cbw"},
    {"98", "cwde"},
    {"48 98", "cdqe"},
    {"66 99", "cwd"},
    {"99", "cdq"},
    {"48 99", "cqo"},
    // Strings.
    {"a4", "movs"},
    {"f3 a4", "rep movs"},
    {"f3 48 a5", "rep movs"},
    {"f3 aa", "rep stos"},
    {"f3 48 ab", "rep stos"},
    {"ac", "lods"},
    {"f3 a6", "repz cmps"},
    {"f2 ae", "repnz scas"},
    {"f3 6e", "rep outs"},
    {"6c", "ins"},
    {"f2 a4", "repnz movs"},
    // Port I/O.
    {"ee", "out dx, al"},
    {"ef", "out dx, eax"},
    {"66 ef", "out dx, ax"},
    {"48 ef", "out dx, eax"},  // REX.W does not widen I/O.
    {"e6 80", "out 0x80, al"},
    {"e4 60", "in al, 0x60"},
    {"ed", "in eax, dx"},
    // Flags and misc.
    {"fc", "cld"},
    {"fd", "std"},
    {"fa", "cli"},
    {"fb", "sti"},
    {"f8", "clc"},
    {"f9", "stc"},
    {"f5", "cmc"},
    {"9e", "sahf"},
    {"9f", "lahf"},
    {"f4", "hlt"},
    {"90", "nop"},
    {"f3 90", "pause"},
    {"0f 1f 00", "nop dword ptr [rax]"},
    {"0f 1f 44 00 00", "nop dword ptr [rax+rax*1]"},
    {"66 0f 1f 44 00 00", "nop word ptr [rax+rax*1]"},
    {"66 2e 0f 1f 84 00 00 00 00 00", "nop word ptr [rax+rax*1]"},
    {"f3 0f 1e fa", "nop edx"},  // ENDBR64 on a CPU without CET.
    {"0f 18 08", "nop dword ptr [rax]"},
    {"cc", "int3"},
    {"cd 80", "int 0x80"},
    {"0f 0b", "ud2"},
    {"0f a2", "cpuid"},
    {"0f 31", "rdtsc"},
    {"0f 01 f9", "rdtscp"},
    // System.
    {"0f 32", "rdmsr"},
    {"0f 30", "wrmsr"},
    {"0f 22 d8", "mov cr3, rax"},
    {"0f 20 d8", "mov rax, cr3"},
    {"0f 20 00", "mov rax, cr0"},  // mod is ignored.
    {"44 0f 22 c0", "mov cr8, rax"},
    {"41 0f 22 e7", "mov cr4, r15"},
    {"0f 01 38", "invlpg [rax]"},
    {"0f 01 14 25 20 10 10 00", "lgdt [0x101020]"},
    {"0f 01 1f", "lidt [rdi]"},
    {"0f 01 07", "sgdt [rdi]"},
    {"0f 01 0f", "sidt [rdi]"},
    {"0f 00 d8", "ltr ax"},
    {"0f 00 d0", "lldt ax"},
    {"0f 00 c8", "str eax"},
    {"0f 00 c0", "sldt eax"},
    {"48 cf", "iretq"},
    {"cf", "iret"},
    {"0f 05", "syscall"},
    {"48 0f 07", "sysretq"},
    {"0f 07", "sysretd"},
    {"0f 01 f8", "swapgs"},
    {"0f 06", "clts"},
    {"0f 09", "wbinvd"},
    {"0f ae e8", "lfence"},
    {"0f ae f0", "mfence"},
    {"0f ae f8", "sfence"},
    // Prefix rules.
    {"48 66 89 c0", "mov ax, ax"},        // REX then a legacy prefix: REX ignored.
    {"66 48 89 c0", "mov rax, rax"},      // REX.W beats 66.
    {"41 40 89 c0", "mov eax, eax"},      // Only the last REX counts.
    {"40 41 89 c0", "mov r8d, eax"},
    {"64 2e 8b 00", "mov eax, dword ptr fs:[rax]"},  // CS does not cancel FS.
    {"f3 01 c8", "add eax, ecx"},         // REP on a non-string op is dropped.
};

TEST(DecoderTest, TextTable) {
  for (const TextCase& c : kTextCases) {
    const std::vector<uint8_t> bytes = Hex(c.bytes);
    DecodedInsn insn;
    ASSERT_EQ(Decode(bytes.data(), bytes.size(), &insn), DecodeStatus::kOk) << c.bytes;
    EXPECT_EQ(insn.length, bytes.size()) << c.bytes << ": " << Disassemble(insn);
    EXPECT_EQ(Disassemble(insn), c.text) << c.bytes;
  }
}

// Every strict prefix of a valid instruction asks for more bytes, and extra
// trailing bytes change nothing.
TEST(DecoderTest, TruncationNeedsMoreBytes) {
  for (const TextCase& c : kTextCases) {
    std::vector<uint8_t> bytes = Hex(c.bytes);
    DecodedInsn full;
    ASSERT_EQ(Decode(bytes.data(), bytes.size(), &full), DecodeStatus::kOk) << c.bytes;
    for (size_t n = 0; n < bytes.size(); ++n) {
      DecodedInsn insn;
      EXPECT_EQ(Decode(bytes.data(), n, &insn), DecodeStatus::kNeedMoreBytes)
          << c.bytes << " truncated to " << n;
    }
    bytes.resize(bytes.size() + 16, 0xcc);
    DecodedInsn padded;
    ASSERT_EQ(Decode(bytes.data(), bytes.size(), &padded), DecodeStatus::kOk) << c.bytes;
    EXPECT_EQ(std::memcmp(&padded, &full, sizeof(full)), 0) << c.bytes;
  }
}

// ---- Field-level checks -------------------------------------------------------

TEST(DecoderTest, RipRelativeWithImmediate) {
  // mov dword ptr [rip+0x100], 0x12345678: disp then imm; the disp is
  // relative to the END of the instruction, which `length` gives.
  DecodedInsn insn;
  ASSERT_EQ(DecodeHex("c7 05 00 01 00 00 78 56 34 12", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.op, Op::kMov);
  EXPECT_EQ(insn.length, 10);
  EXPECT_EQ(insn.dst.kind, OperandKind::kMem);
  EXPECT_EQ(insn.mem.base, kBaseRip);
  EXPECT_EQ(insn.mem.index, kRegNone);
  EXPECT_EQ(insn.mem.disp, 0x100);
  EXPECT_EQ(insn.src.kind, OperandKind::kImm);
  EXPECT_EQ(insn.imm, 0x12345678);
  EXPECT_EQ(insn.NextRip(0x1000), 0x100aU);

  // 41 ... rm=101 mod=00 is still RIP-relative (REX.B ignored).
  ASSERT_EQ(DecodeHex("41 80 3d f0 ff ff ff 07", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.op, Op::kCmp);
  EXPECT_EQ(insn.length, 8);
  EXPECT_EQ(insn.mem.base, kBaseRip);
  EXPECT_EQ(insn.mem.disp, -16);
  EXPECT_EQ(insn.imm, 7);
}

TEST(DecoderTest, SibForms) {
  DecodedInsn insn;
  // [r13+disp8] needs mod=01 (mod=00 with base 101 means no base).
  ASSERT_EQ(DecodeHex("43 8b 44 2d 08", &insn), DecodeStatus::kOk);  // [r13+r13*1+8]
  EXPECT_EQ(insn.mem.base, 13);
  EXPECT_EQ(insn.mem.index, 13);
  EXPECT_EQ(insn.mem.scale_log2, 0);
  EXPECT_EQ(insn.mem.disp, 8);
  // No base, scaled index, disp32.
  ASSERT_EQ(DecodeHex("8b 04 cd 00 00 00 80", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.mem.base, kRegNone);
  EXPECT_EQ(insn.mem.index, kRegRcx);
  EXPECT_EQ(insn.mem.scale_log2, 3);
  EXPECT_EQ(insn.mem.disp, INT32_MIN);
  // REX.X with index 100: r12 is a valid index.
  ASSERT_EQ(DecodeHex("42 8b 04 a0", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.mem.base, kRegRax);
  EXPECT_EQ(insn.mem.index, 12);
  EXPECT_EQ(insn.mem.scale_log2, 2);
  // Without REX.X, index 100 is "none".
  ASSERT_EQ(DecodeHex("8b 04 a0", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.mem.index, kRegNone);
  // mod=10 [rbp+disp32].
  ASSERT_EQ(DecodeHex("8b 85 00 ff ff ff", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.mem.base, 5);
  EXPECT_EQ(insn.mem.disp, -256);
  EXPECT_EQ(insn.length, 6);
}

TEST(DecoderTest, HighByteRegisters) {
  DecodedInsn insn;
  ASSERT_EQ(DecodeHex("88 e0", &insn), DecodeStatus::kOk);  // mov al, ah
  EXPECT_EQ(insn.dst.reg, kRegRax);
  EXPECT_EQ(insn.src.reg, kRegAh);
  ASSERT_EQ(DecodeHex("40 88 e0", &insn), DecodeStatus::kOk);  // mov al, spl
  EXPECT_EQ(insn.src.reg, kRegRsp);
  // A REX cancelled by a later legacy prefix does not count as REX.
  ASSERT_EQ(DecodeHex("40 66 88 e0", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.src.reg, kRegAh);
  // Only byte operands map to AH..BH.
  ASSERT_EQ(DecodeHex("89 e0", &insn), DecodeStatus::kOk);  // mov eax, esp
  EXPECT_EQ(insn.src.reg, kRegRsp);
}

TEST(DecoderTest, OperandSizes) {
  struct Row {
    const char* bytes;
    Op op;
    int operand_size;
    int64_t imm;
  };
  const Row rows[] = {
      {"66 48 05 01 00 00 00", Op::kAdd, 8, 1},  // REX.W beats 66: imm32.
      {"66 05 ff ff", Op::kAdd, 2, -1},          // 66: imm16, sign-extended.
      {"48 05 00 00 00 80", Op::kAdd, 8, -0x80000000LL},
      {"6a 80", Op::kPush, 8, -128},
      {"68 ff ff ff 7f", Op::kPush, 8, 0x7fffffff},
      {"66 6a ff", Op::kPush, 2, -1},
      {"50", Op::kPush, 8, 0},
      {"48 b8 00 00 00 00 00 00 00 80", Op::kMov, 8, INT64_MIN},
      {"b8 ff ff ff ff", Op::kMov, 4, -1},  // Truncated to 32 bits by the interpreter.
      {"c1 e0 ff", Op::kShl, 4, 0xff},      // Shift counts are unsigned.
      {"cd ff", Op::kInt, 4, 0xff},
      {"c2 ff ff", Op::kRet, 8, 0xffff},
      {"e4 ff", Op::kIn, 1, 0xff},
      {"48 cf", Op::kIret, 8, 0},
      {"48 0f 07", Op::kSysret, 8, 0},
      {"e8 00 00 00 00", Op::kCall, 8, 0},
      {"66 e9 00 00 00 00", Op::kJmp, 8, 0},
      {"ff e0", Op::kJmpIndirect, 8, 0},
      {"48 63 c0", Op::kMovsxd, 8, 0},
      {"0f 20 c0", Op::kMovFromCr, 8, 0},
      {"f0 48 0f c7 0f", Op::kCmpxchg8b, 16, 0},
  };
  for (const Row& r : rows) {
    DecodedInsn insn;
    ASSERT_EQ(DecodeHex(r.bytes, &insn), DecodeStatus::kOk) << r.bytes;
    EXPECT_EQ(insn.op, r.op) << r.bytes;
    EXPECT_EQ(insn.operand_size, r.operand_size) << r.bytes;
    EXPECT_EQ(insn.imm, r.imm) << r.bytes;
  }
}

TEST(DecoderTest, BranchTargets) {
  DecodedInsn insn;
  ASSERT_EQ(DecodeHex("75 f0", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.op, Op::kJcc);
  EXPECT_EQ(insn.cond, 5);
  EXPECT_EQ(insn.BranchTarget(0x1000), 0x1000U + 2 - 16);
  ASSERT_EQ(DecodeHex("0f 8f 00 10 00 00", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.cond, 0xf);
  EXPECT_EQ(insn.BranchTarget(0x1000), 0x1000U + 6 + 0x1000);
  ASSERT_EQ(DecodeHex("e8 00 00 00 80", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.BranchTarget(0xffffffff80000000), 0xffffffff80000000 + 5 - 0x80000000ULL);
}

TEST(DecoderTest, StringPrefixes) {
  DecodedInsn insn;
  ASSERT_EQ(DecodeHex("f3 48 ab", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.op, Op::kStos);
  EXPECT_EQ(insn.operand_size, 8);
  EXPECT_EQ(insn.prefixes & (kPrefixRep | kPrefixRepne), kPrefixRep);
  ASSERT_EQ(DecodeHex("f2 f3 a6", &insn), DecodeStatus::kOk);  // The last of F2/F3 wins.
  EXPECT_EQ(insn.prefixes & (kPrefixRep | kPrefixRepne), kPrefixRep);
  ASSERT_EQ(DecodeHex("f3 f2 a6", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.prefixes & (kPrefixRep | kPrefixRepne), kPrefixRepne);
  ASSERT_EQ(DecodeHex("67 f3 a4", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.address_size, 4);
  ASSERT_EQ(DecodeHex("64 a4", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.segment, Segment::kFs);
  ASSERT_EQ(DecodeHex("f3 6f", &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.op, Op::kOuts);
  EXPECT_EQ(insn.operand_size, 4);
}

// ---- Invalid, too long ----------------------------------------------------------

TEST(DecoderTest, InvalidEncodings) {
  const char* const kRows[] = {
      "06", "07", "0e", "16", "17", "1e", "1f", "27", "2f", "37", "3f",
      "60", "61", "62 00 00 00", "82 c0 01", "9a", "c4 00 00", "c5 00", "ce", "d4 0a",
      "d5 0a", "d6", "ea", "d8 c0", "df c0", "9b", "f1", "d7",
      "8d c0", "8e c8", "8c f0", "8f c8", "c6 08 00", "c7 f8 00 00 00 00", "fe 10",
      "ff 18", "ff 28", "ff f8",
      "0f 01 20",   // SMSW: unsupported.
      "0f 01 c8",   // MONITOR: unsupported.
      "0f 01 c0",   // 0F 01 /0 mod=3.
      "0f 0d c0",   // PREFETCHW with a register.
      "0f 00 e0",   // VERR.
      "0f 20 c8",   // CR1.
      "0f 22 e8",   // CR5.
      "44 0f 20 c8",  // CR9.
      "0f 21 c0",   // MOV DR: unsupported.
      "0f ba c0 01",  // 0F BA /0.
      "0f c7 c8",   // CMPXCHG8B with a register.
      "0f c7 10",   // 0F C7 /2.
      "0f ae 38",   // CLFLUSH: unsupported.
      "0f ae c0",   // 0F AE /0 mod=3.
      "0f 38 00 c0", "0f 3a 0f c0 00",  // Three-byte maps.
      "0f 10 c0",   // SSE.
      "0f ff",      // UD0.
      "f2 0f bc c0", "66 0f 09", "f3 0f ae e8",  // Mandatory-prefix space.
      "0f a0", "0f a1", "0f a8", "0f a9",  // PUSH/POP FS/GS: unsupported.
      // LOCK where it is not allowed.
      "f0 90", "f0 01 c8", "f0 8b 00", "f0 39 00", "f0 85 00", "f0 0f a3 00", "f0 c3",
      "f0 0f 22 c0", "f0 a4", "f0 f6 00 01",
  };
  for (const char* row : kRows) {
    const std::vector<uint8_t> bytes = Hex(row);
    DecodedInsn insn;
    EXPECT_EQ(Decode(bytes.data(), bytes.size(), &insn), DecodeStatus::kInvalid)
        << row << " -> " << Disassemble(insn);
    EXPECT_EQ(insn.op, Op::kInvalid) << row;
    EXPECT_GE(insn.length, 1) << row;
    EXPECT_LE(insn.length, bytes.size()) << row;
  }
}

TEST(DecoderTest, FifteenByteLimit) {
  // 14 prefixes + NOP = 15 bytes: fine.
  std::vector<uint8_t> bytes(14, 0x66);
  bytes.push_back(0x90);
  DecodedInsn insn;
  ASSERT_EQ(Decode(bytes.data(), bytes.size(), &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.length, 15);
  // 15 prefixes + NOP: too long, however many bytes are available.
  bytes.assign(15, 0x66);
  bytes.push_back(0x90);
  EXPECT_EQ(Decode(bytes.data(), bytes.size(), &insn), DecodeStatus::kTooLong);
  EXPECT_EQ(insn.op, Op::kInvalid);
  // With fewer than 15 bytes available it first asks for more.
  EXPECT_EQ(Decode(bytes.data(), 10, &insn), DecodeStatus::kNeedMoreBytes);
  // A long instruction pushed past 15 by prefixes: 4 prefixes + 48 c7 84 24 disp32 imm32 = 16.
  std::vector<uint8_t> lng = Hex("66 66 66 f2 48 c7 84 24 00 00 00 00 00 00 00 00");
  EXPECT_EQ(Decode(lng.data(), lng.size(), &insn), DecodeStatus::kTooLong);
  std::vector<uint8_t> ok = Hex("66 66 f2 48 c7 84 24 00 00 00 00 00 00 00 00");
  ASSERT_EQ(Decode(ok.data(), ok.size(), &insn), DecodeStatus::kOk);
  EXPECT_EQ(insn.length, 15);
  // Endless prefixes never loop past 15.
  std::vector<uint8_t> many(4096, 0x2e);
  EXPECT_EQ(Decode(many.data(), many.size(), &insn), DecodeStatus::kTooLong);
}

// ---- Robustness: every opcode, random bytes ---------------------------------------

void CheckInvariants(const uint8_t* bytes, size_t n) {
  DecodedInsn insn;
  const DecodeStatus status = Decode(bytes, n, &insn);
  switch (status) {
    case DecodeStatus::kOk:
      ASSERT_GE(insn.length, 1) << HexString(bytes, n);
      ASSERT_LE(insn.length, std::min<size_t>(n, kMaxInsnBytes)) << HexString(bytes, n);
      ASSERT_NE(insn.op, Op::kInvalid);
      ASSERT_TRUE(insn.operand_size == 1 || insn.operand_size == 2 || insn.operand_size == 4 ||
                  insn.operand_size == 8 || insn.operand_size == 16);
      ASSERT_TRUE(insn.address_size == 4 || insn.address_size == 8);
      (void)Disassemble(insn);
      break;
    case DecodeStatus::kNeedMoreBytes:
      ASSERT_LT(n, kMaxInsnBytes);
      break;
    case DecodeStatus::kInvalid:
    case DecodeStatus::kTooLong:
      ASSERT_EQ(insn.op, Op::kInvalid);
      ASSERT_GE(insn.length, 1);
      ASSERT_LE(insn.length, kMaxInsnBytes);
      (void)Disassemble(insn);
      break;
  }
}

TEST(DecoderTest, EveryOpcodeWithEveryModRM) {
  uint8_t buf[16];
  for (int map = 0; map < 2; ++map) {
    for (int op = 0; op < 256; ++op) {
      for (int modrm = 0; modrm < 256; ++modrm) {
        size_t i = 0;
        if (map == 1) buf[i++] = 0x0f;
        buf[i++] = static_cast<uint8_t>(op);
        buf[i++] = static_cast<uint8_t>(modrm);
        while (i < sizeof(buf)) buf[i++] = 0x25;  // SIB/disp/imm filler.
        for (size_t n = 0; n <= sizeof(buf); ++n) CheckInvariants(buf, n);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(DecoderTest, RandomBytes) {
  std::mt19937_64 rng(42);
  uint8_t buf[20];
  // Bias towards prefix bytes so prefix combinations get exercised.
  constexpr uint8_t kPrefixBytes[] = {0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x64,
                                      0x65, 0x40, 0x41, 0x48, 0x4f, 0x0f};
  for (int iter = 0; iter < 200000; ++iter) {
    for (uint8_t& b : buf) {
      const uint64_t r = rng();
      b = (r & 3) == 0 ? kPrefixBytes[(r >> 8) % sizeof(kPrefixBytes)]
                       : static_cast<uint8_t>(r >> 16);
    }
    CheckInvariants(buf, rng() % (sizeof(buf) + 1));
    if (HasFatalFailure()) return;
  }
}

// ---- DecodeBlock -----------------------------------------------------------------

TEST(DecodeBlockTest, StopsAfterControlTransfer) {
  std::vector<uint8_t> page(kCodePageBytes, 0xcc);
  const std::vector<uint8_t> code = Hex("55 48 89 e5 31 c0 5d c3 90");
  std::memcpy(page.data() + 100, code.data(), code.size());
  DecodedInsn out[64];
  const DecodedBlock block = DecodeBlock(page.data(), 100, out, 64);
  EXPECT_EQ(block.end, BlockEnd::kEndsBlock);
  ASSERT_EQ(block.num_insns, 5U);
  EXPECT_EQ(block.num_bytes, 8U);
  EXPECT_EQ(out[0].op, Op::kPush);
  EXPECT_EQ(out[4].op, Op::kRet);
}

TEST(DecodeBlockTest, FollowsTheTakenPathOfNamedJccsOnThePage) {
  std::vector<uint8_t> page(kCodePageBytes, 0xcc);
  // jnz +2; nop; nop; inc eax; jz -8 (to offset 0, also followed); ret
  const std::vector<uint8_t> code = Hex("75 02 90 90 ff c0 74 f8 c3");
  std::memcpy(page.data() + 200, code.data(), code.size());
  DecodedInsn out[64];
  const DecodedBlock plain = DecodeBlock(page.data(), 200, out, 64, /*through_jcc=*/true);
  EXPECT_EQ(plain.num_insns, 6U);
  EXPECT_EQ(plain.followed, 0U);
  EXPECT_EQ(plain.end_offset, 209U);
  const uint16_t follow[] = {200};
  const DecodedBlock b = DecodeBlock(page.data(), 200, out, 64, /*through_jcc=*/true, follow, 1);
  ASSERT_EQ(b.num_insns, 4U);  // jnz, inc, jz, ret: the nops are skipped
  EXPECT_EQ(b.followed, 1U);
  EXPECT_EQ(out[1].op, Op::kInc);
  EXPECT_EQ(b.end_offset, 209U);
  EXPECT_EQ(b.num_bytes, 7U);
  // A loop closed by a followed Jcc unrolls up to max_insns.
  const uint16_t both[] = {200, 206};
  const DecodedBlock loop = DecodeBlock(page.data(), 200, out, 9, true, both, 2);
  EXPECT_EQ(loop.end, BlockEnd::kMaxInsns);
  EXPECT_EQ(loop.num_insns, 9U);
  EXPECT_EQ(loop.followed, 0b110'1101U);  // the last Jcc ends the block
  EXPECT_EQ(out[8].op, Op::kJcc);
  // A target off the page is not followed.
  page[kCodePageBytes - 2] = 0x75;
  page[kCodePageBytes - 1] = 0x10;
  const uint16_t edge[] = {static_cast<uint16_t>(kCodePageBytes - 2)};
  const DecodedBlock off = DecodeBlock(page.data(), kCodePageBytes - 2, out, 64, true, edge, 1);
  EXPECT_EQ(off.followed, 0U);
  EXPECT_EQ(off.end, BlockEnd::kPageEnd);
}

TEST(DecodeBlockTest, FollowsDirectJmpsOnThePageInSuperblocks) {
  std::vector<uint8_t> page(kCodePageBytes, 0xcc);
  // inc eax; jmp +2; (nop; nop skipped) inc ecx; jmp -8 (back to offset 300); ...
  const std::vector<uint8_t> code = Hex("ff c0 eb 02 90 90 ff c1 eb f6");
  std::memcpy(page.data() + 300, code.data(), code.size());
  DecodedInsn out[64];
  // Without superblocks a JMP ends the block.
  const DecodedBlock plain = DecodeBlock(page.data(), 300, out, 64);
  EXPECT_EQ(plain.num_insns, 2U);
  EXPECT_EQ(plain.end, BlockEnd::kEndsBlock);
  // With them both JMPs are followed, and the loop unrolls to max_insns;
  // the last JMP, at max_insns, ends the block unfollowed.
  const DecodedBlock b = DecodeBlock(page.data(), 300, out, 8, /*through_jcc=*/true);
  EXPECT_EQ(b.num_insns, 8U);
  EXPECT_EQ(out[0].op, Op::kInc);
  EXPECT_EQ(out[1].op, Op::kJmp);
  EXPECT_EQ(out[2].op, Op::kInc);  // ecx: the nops were jumped over
  EXPECT_EQ(out[2].dst.reg, 1);
  EXPECT_EQ(out[4].op, Op::kInc);  // eax again, after the backward JMP
  EXPECT_EQ(out[4].dst.reg, 0);
  EXPECT_EQ(b.followed, 0b0010'1010U);
  EXPECT_EQ(b.end, BlockEnd::kEndsBlock);
  // A JMP off the page ends the block.
  const std::vector<uint8_t> far = Hex("ff c0 e9 00 10 00 00");  // jmp +4096
  std::memcpy(page.data() + 400, far.data(), far.size());
  const DecodedBlock off = DecodeBlock(page.data(), 400, out, 64, true);
  EXPECT_EQ(off.num_insns, 2U);
  EXPECT_EQ(off.followed, 0U);
  EXPECT_EQ(off.end, BlockEnd::kEndsBlock);
}

TEST(DecodeBlockTest, StopsAtMaxInsns) {
  std::vector<uint8_t> page(kCodePageBytes, 0x90);
  DecodedInsn out[8];
  const DecodedBlock block = DecodeBlock(page.data(), 0, out, 8);
  EXPECT_EQ(block.end, BlockEnd::kMaxInsns);
  EXPECT_EQ(block.num_insns, 8U);
  EXPECT_EQ(block.num_bytes, 8U);
}

TEST(DecodeBlockTest, PageEndAndCrossPage) {
  std::vector<uint8_t> page(kCodePageBytes, 0x90);
  DecodedInsn out[64];
  DecodedBlock block = DecodeBlock(page.data(), kCodePageBytes - 3, out, 64);
  EXPECT_EQ(block.end, BlockEnd::kPageEnd);
  EXPECT_EQ(block.num_insns, 3U);
  EXPECT_EQ(block.num_bytes, 3U);
  // A 5-byte mov starting 2 bytes before the end straddles the boundary.
  page[kCodePageBytes - 3] = 0xb8;
  block = DecodeBlock(page.data(), kCodePageBytes - 4, out, 64);
  EXPECT_EQ(block.end, BlockEnd::kCrossPage);
  EXPECT_EQ(block.num_insns, 1U);
  EXPECT_EQ(block.num_bytes, 1U);
}

TEST(DecodeBlockTest, InvalidEndsBlockAndIsStored) {
  std::vector<uint8_t> page(kCodePageBytes, 0x90);
  page[10] = 0x06;  // PUSH ES: invalid in 64-bit mode.
  DecodedInsn out[64];
  const DecodedBlock block = DecodeBlock(page.data(), 8, out, 64);
  EXPECT_EQ(block.end, BlockEnd::kInvalid);
  ASSERT_EQ(block.num_insns, 3U);
  EXPECT_EQ(out[2].op, Op::kInvalid);
  EXPECT_EQ(block.num_bytes, 3U);
}

TEST(DecodeBlockTest, SystemInstructionsEndBlocks) {
  for (const char* row : {"0f 22 d8", "0f 30", "0f 01 38", "fa", "fb", "9d", "ee", "f4",
                          "0f 05", "48 0f 07", "48 cf", "cd 80", "0f 0b", "8e d0", "0f 01 f8"}) {
    DecodedInsn insn;
    ASSERT_EQ(DecodeHex(row, &insn), DecodeStatus::kOk) << row;
    EXPECT_TRUE(EndsBlock(insn.op)) << row << " " << Disassemble(insn);
  }
  for (const char* row : {"0f 20 d8", "0f 32", "0f a2", "0f 31", "89 c8", "f3 48 ab"}) {
    DecodedInsn insn;
    ASSERT_EQ(DecodeHex(row, &insn), DecodeStatus::kOk) << row;
    EXPECT_FALSE(EndsBlock(insn.op)) << row << " " << Disassemble(insn);
  }
}

// ---- Differential tests against objdump -----------------------------------------

std::string GuestBuildDir() {
  std::string path = GUEST_MNEMONICS_PATH;
  return path.substr(0, path.rfind('/'));
}

bool HaveObjdump() { return std::system("objdump --version >/dev/null 2>&1") == 0; }

struct ObjdumpInsn {
  uint64_t address;
  std::string mnemonic;  // Normalized like guest/tools/mnemonics.sh.
};

// Normalizes objdump's instruction text like guest/tools/mnemonics.sh:
// segment, size and branch-hint prefixes dropped, rep/lock kept.
std::string NormalizeMnemonic(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  std::string w;
  while (in >> w) words.push_back(w);
  static const char* const kDropped[] = {"cs", "ds", "es", "ss", "fs", "gs", "data16",
                                         "addr32", "notrack", "bnd",
                                         // HLE hints (SDM Vol. 1 §16.3.1): ignored by a CPU
                                         // without HLE. Not in the guest; the sweep has them.
                                         "xacquire", "xrelease"};
  size_t i = 0;
  while (i + 1 < words.size()) {
    bool drop = words[i].rfind("rex", 0) == 0;
    for (const char* d : kDropped) drop = drop || words[i] == d;
    if (!drop) break;
    ++i;
  }
  if (i >= words.size()) return "";
  std::string m = words[i];
  if ((m == "rep" || m == "repz" || m == "repnz" || m == "repe" || m == "repne" || m == "lock") &&
      i + 1 < words.size()) {
    m += " " + words[i + 1];
  }
  return m;
}

// Runs objdump and returns every instruction line as (address, mnemonic).
std::vector<ObjdumpInsn> RunObjdump(const std::string& args) {
  std::vector<ObjdumpInsn> out;
  const std::string cmd = "objdump -d -M intel --no-show-raw-insn -w " + args + " 2>/dev/null";
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char line[4096];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    // "  401000:\tmov    eax,0x1"
    char* colon = std::strchr(line, ':');
    if (colon == nullptr || colon[1] != '\t') continue;
    char* end = nullptr;
    const uint64_t address = std::strtoull(line, &end, 16);
    if (end != colon) continue;
    std::string text(colon + 2);
    const size_t comment = text.find('#');
    if (comment != std::string::npos) text.resize(comment);
    out.push_back({address, NormalizeMnemonic(text)});
  }
  pclose(f);
  return out;
}

struct Section {
  uint64_t address;
  std::vector<uint8_t> bytes;
};

// Reads a section of a 64-bit little-endian ELF file by name.
bool ReadElfSection(const std::string& path, const std::string& name, Section* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::vector<char> file((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (file.size() < sizeof(Elf64_Ehdr)) return false;
  Elf64_Ehdr eh;
  std::memcpy(&eh, file.data(), sizeof(eh));
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64) {
    return false;
  }
  auto section = [&](size_t i, Elf64_Shdr* sh) {
    const size_t off = eh.e_shoff + i * sizeof(Elf64_Shdr);
    if (off + sizeof(Elf64_Shdr) > file.size()) return false;
    std::memcpy(sh, file.data() + off, sizeof(*sh));
    return true;
  };
  Elf64_Shdr strtab;
  if (!section(eh.e_shstrndx, &strtab)) return false;
  for (size_t i = 0; i < eh.e_shnum; ++i) {
    Elf64_Shdr sh;
    if (!section(i, &sh)) return false;
    if (strtab.sh_offset + sh.sh_name >= file.size()) continue;
    if (name != file.data() + strtab.sh_offset + sh.sh_name) continue;
    if (sh.sh_offset + sh.sh_size > file.size()) return false;
    out->address = sh.sh_addr;
    out->bytes.assign(file.begin() + sh.sh_offset, file.begin() + sh.sh_offset + sh.sh_size);
    return true;
  }
  return false;
}

// Decodes `section` linearly, as objdump does, and compares boundaries and
// mnemonics instruction by instruction.
void CompareWithObjdump(const std::string& elf, const std::string& name, int* num_insns) {
  Section section;
  ASSERT_TRUE(ReadElfSection(elf, name, &section)) << elf << " " << name;
  const std::vector<ObjdumpInsn> dump = RunObjdump("-j " + name + " " + elf);
  ASSERT_FALSE(dump.empty()) << "objdump printed nothing for " << elf << " " << name;
  size_t pos = 0;
  for (size_t i = 0; i < dump.size(); ++i) {
    const uint64_t address = section.address + pos;
    ASSERT_EQ(dump[i].address, address) << "boundary mismatch in " << name << " of " << elf;
    const size_t objdump_length =
        (i + 1 < dump.size() ? dump[i + 1].address : section.address + section.bytes.size()) -
        address;
    DecodedInsn insn;
    const uint8_t* p = section.bytes.data() + pos;
    const size_t available = section.bytes.size() - pos;
    ASSERT_EQ(Decode(p, available, &insn), DecodeStatus::kOk)
        << std::hex << address << ": " << HexString(p, std::min<size_t>(available, 15))
        << " objdump: " << dump[i].mnemonic;
    ASSERT_EQ(insn.length, objdump_length)
        << std::hex << address << ": " << HexString(p, objdump_length) << " objdump: "
        << dump[i].mnemonic << " ours: " << Disassemble(insn);
    EXPECT_EQ(Mnemonic(insn), dump[i].mnemonic)
        << std::hex << address << ": " << HexString(p, objdump_length) << " ours: "
        << Disassemble(insn);
    pos += insn.length;
    ++*num_insns;
  }
  EXPECT_EQ(pos, section.bytes.size());
}

TEST(DecoderObjdumpTest, GuestImageDecodesLikeObjdump) {
  if (!HaveObjdump()) GTEST_SKIP() << "objdump (binutils) not found on PATH";
  const std::string dir = GuestBuildDir();
  int num_insns = 0;
  // The 32-bit PVH stub (.boot32) is left out: only QEMU runs it.
  CompareWithObjdump(dir + "/guest.elf", ".boot64", &num_insns);
  CompareWithObjdump(dir + "/guest.elf", ".text", &num_insns);
  CompareWithObjdump(dir + "/guest_user.elf", ".text", &num_insns);
  EXPECT_GT(num_insns, 1000);
}

// Where our decoder and objdump legitimately disagree on the name.
bool KnownMnemonicDifference(const DecodedInsn& insn, const std::string& objdump) {
  // Hint NOPs: objdump names them (prefetcht0, endbr64, nopw, ...).
  if (insn.op == Op::kNop) return true;
  // TZCNT/LZCNT encodings run as BSF/BSR on a CPU without BMI1/LZCNT.
  if ((insn.op == Op::kBsf && objdump == "tzcnt") || (insn.op == Op::kBsr && objdump == "lzcnt")) {
    return true;
  }
  if (insn.op == Op::kWbinvd && objdump == "wbnoinvd") return true;
  return false;
}

// Sweeps the 1-byte and 0F maps with assorted prefixes and ModRM/SIB forms; each
// candidate sits at the start of a 32-byte slot padded with NOPs so objdump
// resynchronizes. Every candidate we accept must have objdump's length and name.
TEST(DecoderObjdumpTest, OpcodeSweepMatchesObjdump) {
  if (!HaveObjdump()) GTEST_SKIP() << "objdump (binutils) not found on PATH";
  static const char* const kPrefixes[] = {"", "66", "48", "67", "41", "f3", "f2", "66 48", "f0",
                                          "4c", "64"};
  static const char* const kModRM[] = {"c1", "00", "05", "04 24", "04 25", "44 8d 08", "45 08",
                                       "84 24", "85", "0c", "e8", "f8", "38", "18", "08", "d8"};
  constexpr size_t kSlot = 32;
  std::vector<uint8_t> image;
  std::vector<std::vector<uint8_t>> candidates;
  for (int map = 0; map < 2; ++map) {
    for (int op = 0; op < 256; ++op) {
      // Prefix bytes as "opcodes" only test objdump's prefix printing.
      const bool is_prefix = op == 0x26 || op == 0x2e || op == 0x36 || op == 0x3e ||
                             (op >= 0x40 && op <= 0x4f) || (op >= 0x64 && op <= 0x67) ||
                             op == 0xf0 || op == 0xf2 || op == 0xf3;
      if (map == 0 && is_prefix) continue;
      for (const char* prefix : kPrefixes) {
        for (const char* modrm : kModRM) {
          std::vector<uint8_t> c = Hex(prefix);
          if (map == 1) c.push_back(0x0f);
          c.push_back(static_cast<uint8_t>(op));
          for (uint8_t b : Hex(modrm)) c.push_back(b);
          static constexpr uint8_t kFill[] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                              0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee};
          for (uint8_t b : kFill) {
            if (c.size() >= kMaxInsnBytes) break;
            c.push_back(b);
          }
          DecodedInsn insn;
          if (Decode(c.data(), c.size(), &insn) != DecodeStatus::kOk) continue;
          // AMD semantics (what objdump uses) honour 66 on near branches; Intel,
          // and we, ignore it. Not something a compiler emits.
          if ((insn.op == Op::kJcc || insn.op == Op::kJmp || insn.op == Op::kCall ||
                               insn.op == Op::kRet || insn.op == Op::kCallIndirect ||
                               insn.op == Op::kJmpIndirect || insn.op == Op::kLoop ||
                               insn.op == Op::kLoope || insn.op == Op::kLoopne ||
                               insn.op == Op::kJrcxz) &&
              std::strstr(prefix, "66") != nullptr) {
            continue;
          }
          c.resize(insn.length);
          candidates.push_back(c);
          const size_t base = image.size();
          image.resize(base + kSlot, 0x90);
          std::memcpy(image.data() + base, c.data(), c.size());
        }
      }
    }
  }
  ASSERT_GT(candidates.size(), 5000U);
  std::string path_template = ::testing::TempDir() + "decoder_sweep_XXXXXX";
  char* path = path_template.data();
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, image.data(), image.size()), static_cast<ssize_t>(image.size()));
  close(fd);
  const std::vector<ObjdumpInsn> dump =
      RunObjdump(std::string("-D -b binary -m i386:x86-64 ") + path);
  unlink(path);
  ASSERT_FALSE(dump.empty());
  std::map<uint64_t, size_t> index;  // address -> position in dump
  for (size_t i = 0; i < dump.size(); ++i) index[dump[i].address] = i;
  int mismatches = 0;
  for (size_t k = 0; k < candidates.size() && mismatches < 2000; ++k) {
    const uint64_t address = k * kSlot;
    auto it = index.find(address);
    ASSERT_NE(it, index.end()) << "objdump lost sync before slot " << k;
    const size_t i = it->second;
    const uint64_t next = i + 1 < dump.size() ? dump[i + 1].address : image.size();
    DecodedInsn insn;
    ASSERT_EQ(Decode(candidates[k].data(), candidates[k].size(), &insn), DecodeStatus::kOk);
    const std::string bytes = HexString(candidates[k].data(), candidates[k].size());
    if (next - address != insn.length) {
      ADD_FAILURE() << bytes << ": objdump length " << (next - address) << " ("
                    << dump[i].mnemonic << "), ours " << int{insn.length} << " ("
                    << Disassemble(insn) << ")";
      ++mismatches;
      continue;
    }
    std::string theirs = dump[i].mnemonic;
    // objdump shows an F2/F3 it does not understand as "repz"/"repnz"; on a
    // non-string instruction it is ignored (or selects the opcode).
    if (!(OpAttributes(insn.op) & kString)) {
      for (const char* rep : {"repz ", "repnz ", "rep "}) {
        if (theirs.rfind(rep, 0) == 0) theirs = theirs.substr(std::strlen(rep));
      }
    }
    if (Mnemonic(insn) != theirs && !KnownMnemonicDifference(insn, theirs)) {
      ADD_FAILURE() << bytes << ": objdump " << dump[i].mnemonic << ", ours " << Disassemble(insn);
      ++mismatches;
    }
  }
}

}  // namespace
}  // namespace cpu

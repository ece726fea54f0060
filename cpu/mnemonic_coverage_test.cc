// Coverage of the guest image by the decoder: every mnemonic the guest build
// publishes (build/guest/guest_mnemonics.txt, objdump Intel syntax, see
// guest/tools/mnemonics.sh) must map to an Op the decoder produces. The table
// below is the explicit map; each entry also carries a sample encoding that
// the decoder must decode to that Op and name, so the table cannot claim
// support the decoder does not have. A new compiler or new guest code that
// uses an unknown instruction fails here, listing what is missing.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/decoder.h"
#include "gtest/gtest.h"

namespace cpu {
namespace {

struct Coverage {
  const char* mnemonic;  // As objdump prints it (with rep/lock).
  Op op;
  const char* sample;    // An encoding objdump prints with this mnemonic.
};

// The required integer set plus the system instructions the kernel uses.
constexpr Coverage kCoverage[] = {
    {"add", Op::kAdd, "01 c8"}, {"or", Op::kOr, "09 c8"}, {"adc", Op::kAdc, "11 c8"},
    {"sbb", Op::kSbb, "19 c8"}, {"and", Op::kAnd, "21 c8"}, {"sub", Op::kSub, "29 c8"},
    {"xor", Op::kXor, "31 c8"}, {"cmp", Op::kCmp, "39 c8"}, {"test", Op::kTest, "85 c8"},
    {"inc", Op::kInc, "ff c0"}, {"dec", Op::kDec, "ff c8"}, {"neg", Op::kNeg, "f7 d8"},
    {"not", Op::kNot, "f7 d0"}, {"mul", Op::kMul, "f7 e1"}, {"imul", Op::kImul2, "0f af c1"},
    {"div", Op::kDiv, "f7 f1"}, {"idiv", Op::kIdiv, "f7 f9"},
    {"shl", Op::kShl, "d1 e0"}, {"sal", Op::kShl, "d1 e0"}, {"shr", Op::kShr, "d1 e8"},
    {"sar", Op::kSar, "d1 f8"}, {"rol", Op::kRol, "d1 c0"}, {"ror", Op::kRor, "d1 c8"},
    {"rcl", Op::kRcl, "d1 d0"}, {"rcr", Op::kRcr, "d1 d8"},
    {"shld", Op::kShld, "0f a5 d8"}, {"shrd", Op::kShrd, "0f ad d8"},
    {"bt", Op::kBt, "0f a3 c8"}, {"bts", Op::kBts, "0f ab c8"}, {"btr", Op::kBtr, "0f b3 c8"},
    {"btc", Op::kBtc, "0f bb c8"}, {"bsf", Op::kBsf, "0f bc c1"}, {"bsr", Op::kBsr, "0f bd c1"},
    {"tzcnt", Op::kBsf, "f3 0f bc c1"}, {"lzcnt", Op::kBsr, "f3 0f bd c1"},
    {"mov", Op::kMov, "89 c8"}, {"movabs", Op::kMov, "48 b8 00 00 00 00 00 00 00 00"},
    {"movzx", Op::kMovzx, "0f b6 c0"}, {"movsx", Op::kMovsx, "0f be c0"},
    {"movsxd", Op::kMovsxd, "48 63 c0"}, {"lea", Op::kLea, "8d 04 08"},
    {"xchg", Op::kXchg, "87 c8"}, {"cmpxchg", Op::kCmpxchg, "0f b1 0f"},
    {"xadd", Op::kXadd, "0f c1 07"}, {"cmpxchg8b", Op::kCmpxchg8b, "0f c7 0f"},
    {"cmpxchg16b", Op::kCmpxchg8b, "48 0f c7 0f"}, {"bswap", Op::kBswap, "0f c8"},
    {"lock add", Op::kAdd, "f0 01 07"}, {"lock sub", Op::kSub, "f0 29 07"},
    {"lock and", Op::kAnd, "f0 21 07"}, {"lock or", Op::kOr, "f0 09 07"},
    {"lock xor", Op::kXor, "f0 31 07"}, {"lock inc", Op::kInc, "f0 ff 07"},
    {"lock dec", Op::kDec, "f0 ff 0f"}, {"lock xadd", Op::kXadd, "f0 0f c1 07"},
    {"lock cmpxchg", Op::kCmpxchg, "f0 0f b1 0f"}, {"lock xchg", Op::kXchg, "f0 87 07"},
    {"lock bts", Op::kBts, "f0 0f ab 07"}, {"lock btr", Op::kBtr, "f0 0f b3 07"},
    {"lock cmpxchg16b", Op::kCmpxchg8b, "f0 48 0f c7 0f"},
    // Condition-code families.
    {"cmovo", Op::kCmovcc, "0f 40 c1"}, {"cmovno", Op::kCmovcc, "0f 41 c1"},
    {"cmovb", Op::kCmovcc, "0f 42 c1"}, {"cmovae", Op::kCmovcc, "0f 43 c1"},
    {"cmove", Op::kCmovcc, "0f 44 c1"}, {"cmovne", Op::kCmovcc, "0f 45 c1"},
    {"cmovbe", Op::kCmovcc, "0f 46 c1"}, {"cmova", Op::kCmovcc, "0f 47 c1"},
    {"cmovs", Op::kCmovcc, "0f 48 c1"}, {"cmovns", Op::kCmovcc, "0f 49 c1"},
    {"cmovp", Op::kCmovcc, "0f 4a c1"}, {"cmovnp", Op::kCmovcc, "0f 4b c1"},
    {"cmovl", Op::kCmovcc, "0f 4c c1"}, {"cmovge", Op::kCmovcc, "0f 4d c1"},
    {"cmovle", Op::kCmovcc, "0f 4e c1"}, {"cmovg", Op::kCmovcc, "0f 4f c1"},
    {"seto", Op::kSetcc, "0f 90 c0"}, {"setno", Op::kSetcc, "0f 91 c0"},
    {"setb", Op::kSetcc, "0f 92 c0"}, {"setae", Op::kSetcc, "0f 93 c0"},
    {"sete", Op::kSetcc, "0f 94 c0"}, {"setne", Op::kSetcc, "0f 95 c0"},
    {"setbe", Op::kSetcc, "0f 96 c0"}, {"seta", Op::kSetcc, "0f 97 c0"},
    {"sets", Op::kSetcc, "0f 98 c0"}, {"setns", Op::kSetcc, "0f 99 c0"},
    {"setp", Op::kSetcc, "0f 9a c0"}, {"setnp", Op::kSetcc, "0f 9b c0"},
    {"setl", Op::kSetcc, "0f 9c c0"}, {"setge", Op::kSetcc, "0f 9d c0"},
    {"setle", Op::kSetcc, "0f 9e c0"}, {"setg", Op::kSetcc, "0f 9f c0"},
    {"jo", Op::kJcc, "70 00"}, {"jno", Op::kJcc, "71 00"}, {"jb", Op::kJcc, "72 00"},
    {"jae", Op::kJcc, "73 00"}, {"je", Op::kJcc, "74 00"}, {"jne", Op::kJcc, "75 00"},
    {"jbe", Op::kJcc, "76 00"}, {"ja", Op::kJcc, "77 00"}, {"js", Op::kJcc, "78 00"},
    {"jns", Op::kJcc, "79 00"}, {"jp", Op::kJcc, "7a 00"}, {"jnp", Op::kJcc, "7b 00"},
    {"jl", Op::kJcc, "7c 00"}, {"jge", Op::kJcc, "7d 00"}, {"jle", Op::kJcc, "7e 00"},
    {"jg", Op::kJcc, "7f 00"},
    // Control flow and stack.
    {"jmp", Op::kJmp, "eb 00"}, {"call", Op::kCall, "e8 00 00 00 00"}, {"ret", Op::kRet, "c3"},
    {"retf", Op::kRetFar, "cb"}, {"retfq", Op::kRetFar, "48 cb"},
    {"loop", Op::kLoop, "e2 00"}, {"loope", Op::kLoope, "e1 00"},
    {"loopne", Op::kLoopne, "e0 00"}, {"jrcxz", Op::kJrcxz, "e3 00"},
    {"push", Op::kPush, "50"}, {"pushw", Op::kPush, "66 6a 00"}, {"pop", Op::kPop, "58"},
    {"pushf", Op::kPushf, "9c"}, {"popf", Op::kPopf, "9d"}, {"leave", Op::kLeave, "c9"},
    {"enter", Op::kEnter, "c8 00 00 00"},
    {"cbw", Op::kCbw, "66 98"}, {"cwde", Op::kCbw, "98"}, {"cdqe", Op::kCbw, "48 98"},
    {"cwd", Op::kCwd, "66 99"}, {"cdq", Op::kCwd, "99"}, {"cqo", Op::kCwd, "48 99"},
    // Strings.
    {"movs", Op::kMovs, "a4"}, {"stos", Op::kStos, "aa"}, {"lods", Op::kLods, "ac"},
    {"cmps", Op::kCmps, "a6"}, {"scas", Op::kScas, "ae"}, {"ins", Op::kIns, "6c"},
    {"outs", Op::kOuts, "6e"},
    {"rep movs", Op::kMovs, "f3 a4"}, {"rep stos", Op::kStos, "f3 aa"},
    {"rep lods", Op::kLods, "f3 ac"}, {"rep ins", Op::kIns, "f3 6c"},
    {"rep outs", Op::kOuts, "f3 6e"}, {"repz cmps", Op::kCmps, "f3 a6"},
    {"repnz cmps", Op::kCmps, "f2 a6"}, {"repz scas", Op::kScas, "f3 ae"},
    {"repnz scas", Op::kScas, "f2 ae"},
    // Flags, I/O, misc.
    {"cld", Op::kCld, "fc"}, {"std", Op::kStd, "fd"}, {"cli", Op::kCli, "fa"},
    {"sti", Op::kSti, "fb"}, {"clc", Op::kClc, "f8"}, {"stc", Op::kStc, "f9"},
    {"cmc", Op::kCmc, "f5"}, {"sahf", Op::kSahf, "9e"}, {"lahf", Op::kLahf, "9f"},
    {"in", Op::kIn, "ec"}, {"out", Op::kOut, "ee"}, {"nop", Op::kNop, "90"},
    {"pause", Op::kPause, "f3 90"}, {"endbr64", Op::kNop, "f3 0f 1e fa"},
    {"hlt", Op::kHlt, "f4"}, {"int3", Op::kInt3, "cc"}, {"int", Op::kInt, "cd 80"},
    {"ud2", Op::kUd2, "0f 0b"}, {"lfence", Op::kLfence, "0f ae e8"},
    {"mfence", Op::kMfence, "0f ae f0"}, {"sfence", Op::kSfence, "0f ae f8"},
    // System.
    {"cpuid", Op::kCpuid, "0f a2"}, {"rdtsc", Op::kRdtsc, "0f 31"},
    {"rdtscp", Op::kRdtscp, "0f 01 f9"}, {"rdmsr", Op::kRdmsr, "0f 32"},
    {"wrmsr", Op::kWrmsr, "0f 30"}, {"invlpg", Op::kInvlpg, "0f 01 38"},
    {"lgdt", Op::kLgdt, "0f 01 10"}, {"lidt", Op::kLidt, "0f 01 18"},
    {"sgdt", Op::kSgdt, "0f 01 00"}, {"sidt", Op::kSidt, "0f 01 08"},
    {"lldt", Op::kLldt, "0f 00 d0"}, {"ltr", Op::kLtr, "0f 00 d8"},
    {"sldt", Op::kSldt, "0f 00 c0"}, {"str", Op::kStr, "0f 00 c8"},
    {"clts", Op::kClts, "0f 06"}, {"wbinvd", Op::kWbinvd, "0f 09"}, {"invd", Op::kInvd, "0f 08"},
    {"iret", Op::kIret, "cf"}, {"iretq", Op::kIret, "48 cf"}, {"syscall", Op::kSyscall, "0f 05"},
    {"sysretq", Op::kSysret, "48 0f 07"}, {"sysretd", Op::kSysret, "0f 07"},
    {"swapgs", Op::kSwapgs, "0f 01 f8"},
};

std::vector<uint8_t> Hex(const std::string& text) {
  std::vector<uint8_t> out;
  std::istringstream in(text);
  std::string byte;
  while (in >> byte) out.push_back(static_cast<uint8_t>(std::strtoul(byte.c_str(), nullptr, 16)));
  return out;
}

const Coverage* Find(const std::string& mnemonic) {
  for (const Coverage& c : kCoverage) {
    if (mnemonic == c.mnemonic) return &c;
  }
  return nullptr;
}

// The table itself is honest: each sample decodes to its Op, and (except for
// the aliases objdump names differently) to its mnemonic.
TEST(MnemonicCoverageTest, TableSamplesDecode) {
  for (const Coverage& c : kCoverage) {
    const std::vector<uint8_t> bytes = Hex(c.sample);
    DecodedInsn insn;
    ASSERT_EQ(Decode(bytes.data(), bytes.size(), &insn), DecodeStatus::kOk) << c.mnemonic;
    EXPECT_EQ(insn.length, bytes.size()) << c.mnemonic;
    EXPECT_EQ(insn.op, c.op) << c.mnemonic << ": " << Disassemble(insn);
    const std::string name = c.mnemonic;
    const bool alias = name == "sal" || name == "tzcnt" || name == "lzcnt" || name == "endbr64";
    if (!alias) {
      EXPECT_EQ(Mnemonic(insn), name) << c.sample;
    }
  }
}

TEST(MnemonicCoverageTest, GuestMnemonicsAreCovered) {
  std::ifstream in(GUEST_MNEMONICS_PATH);
  ASSERT_TRUE(in) << "cannot read " << GUEST_MNEMONICS_PATH << " (build the guest_image target)";
  std::vector<std::string> missing;
  int num = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ++num;
    if (Find(line) == nullptr) missing.push_back(line);
  }
  EXPECT_GT(num, 20) << "suspiciously short mnemonic list " << GUEST_MNEMONICS_PATH;
  std::string list;
  for (const std::string& m : missing) list += "\n  " + m;
  EXPECT_TRUE(missing.empty()) << missing.size()
                               << " guest mnemonic(s) not covered by the soft CPU decoder "
                                  "(add them to the decoder and to kCoverage):"
                               << list;
}

}  // namespace
}  // namespace cpu

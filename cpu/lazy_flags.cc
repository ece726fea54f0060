// Out-of-line, cold helpers for lazy_flags.h: debug text only. Everything the
// interpreter calls per instruction is inline in the header.
#include "cpu/lazy_flags.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace cpu {
namespace {

const char* KindName(CcKind kind) {
  switch (kind) {
    case CcKind::kEflags: return "eflags";
    case CcKind::kAdd: return "add";
    case CcKind::kAdc: return "adc";
    case CcKind::kSub: return "sub";
    case CcKind::kSbb: return "sbb";
    case CcKind::kLogic: return "logic";
    case CcKind::kInc: return "inc";
    case CcKind::kDec: return "dec";
    case CcKind::kShl: return "shl";
    case CcKind::kShr: return "shr";
    case CcKind::kSar: return "sar";
    case CcKind::kMul: return "mul";
  }
  return "?";
}

}  // namespace

const char* ConditionName(unsigned cc) {
  static constexpr const char* kNames[16] = {"o", "no", "b", "ae", "e", "ne", "be", "a",
                                             "s", "ns", "p", "np", "l", "ge", "le", "g"};
  return kNames[cc & 15];
}

std::string DescribeLazyFlags(const LazyFlags& f) {
  const uint64_t fl = MaterializeArith(f);
  std::string flags;
  for (const auto& [bit, name] : {std::pair{kFlagCf, "CF"}, std::pair{kFlagPf, "PF"},
                                  std::pair{kFlagAf, "AF"}, std::pair{kFlagZf, "ZF"},
                                  std::pair{kFlagSf, "SF"}, std::pair{kFlagOf, "OF"}}) {
    if (fl & bit) absl::StrAppend(&flags, " ", name);
  }
  return absl::StrFormat("kind=%s size=%d dst=%#x src1=%#x src2=%#x cin=%d ->%s", KindName(f.kind),
                         f.size, f.dst, f.src1, f.src2, f.carry_in, flags.empty() ? " none" : flags);
}

}  // namespace cpu

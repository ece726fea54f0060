#include "base/addr.h"

#include <sstream>
#include <type_traits>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace base {
namespace {

// The point of the strong types: no implicit conversion between spaces.
static_assert(!std::is_convertible_v<Gpa, Gva>);
static_assert(!std::is_convertible_v<Gva, Gpa>);
static_assert(!std::is_convertible_v<Gfn, Hfn>);
static_assert(!std::is_convertible_v<uint64_t, Gpa>);
static_assert(!std::is_convertible_v<Gpa, uint64_t>);
static_assert(std::is_constructible_v<Gpa, uint64_t>);
static_assert(sizeof(Gpa) == 8 && std::is_trivially_copyable_v<Gpa>);

TEST(AddrTest, FrameConversionsRoundTrip) {
  constexpr Gpa gpa(0x12345678);
  static_assert(GfnOf(gpa).value() == 0x12345);
  static_assert(GpaOf(GfnOf(gpa)).value() == 0x12345000);
  static_assert(PageOffset(gpa) == 0x678);
  static_assert(PageBase(gpa) == Gpa(0x12345000));
  EXPECT_EQ(HfnOf(HpaOf(Hfn(77))), Hfn(77));
}

TEST(AddrTest, ArithmeticStaysInSpace) {
  Gva a(0x1000);
  Gva b = a + 0x20;
  EXPECT_EQ(b.value(), 0x1020u);
  EXPECT_EQ(b - a, 0x20u);
  b += 0x10;
  EXPECT_EQ(b, Gva(0x1030));
  EXPECT_LT(a, b);
}

TEST(AddrTest, PrintsWithItsName) {
  std::ostringstream os;
  os << Gpa(0xabc) << " " << Hfn(0x10);
  EXPECT_EQ(os.str(), "gpa:0xabc hfn:0x10");
}

TEST(AddrTest, HashableInAbslAndStd) {
  absl::flat_hash_set<Gfn> set = {Gfn(1), Gfn(2), Gfn(1)};
  EXPECT_EQ(set.size(), 2u);
  EXPECT_NE(std::hash<Gfn>()(Gfn(1)), std::hash<Gfn>()(Gfn(2)));
}

TEST(AddrTest, HostPointerRoundTrip) {
  int x = 5;
  Hva hva = HvaOf(&x);
  EXPECT_EQ(PtrOf<int>(hva), &x);
}

}  // namespace
}  // namespace base

// mmu_demo: shows the x86-64 paging semantics of mmu/ on a small made-up
// guest. It builds guest page tables and EPT tables in memory, then walks a
// few addresses one-dimensionally (native) and two-dimensionally (nested),
// printing translations, #PF error codes, EPT exits, A/D bits and the memory
// references each walk made.
//
//   mmu_demo            the built-in scenario
#include <cinttypes>
#include <cstdio>
#include <string>

#include "mmu/table_builder.h"
#include "mmu/walker.h"

namespace {

using namespace mmu;

constexpr uint64_t kGuestBase = 8 << 20;  // guest-physical 0 lives here in host memory
constexpr uint64_t kGuestBytes = 4 << 20;

using GuestView = WindowMemory<FlatMemory>;

std::string ErrorCodeText(uint32_t code) {
  std::string s;
  s += (code & pfec::kPresent) ? "P" : "-";
  s += (code & pfec::kWrite) ? "W" : "R";
  s += (code & pfec::kUser) ? "U" : "S";
  if (code & pfec::kRsvd) s += "|RSVD";
  if (code & pfec::kFetch) s += "|I/D";
  if (code & pfec::kPk) s += "|PK";
  return s;
}

void Print(const char* what, const AccessRequest& req, const WalkResult& r) {
  std::printf("  %-34s va=0x%012" PRIx64 " %-5s cpl%d -> ", what, req.va,
              req.access == Access::kRead ? "read" : req.access == Access::kWrite ? "write" : "fetch",
              req.cpl);
  switch (r.status) {
    case WalkStatus::kOk:
      std::printf("gpa=0x%" PRIx64 " hpa=0x%" PRIx64 " (%s page)", r.gpa, r.hpa,
                  r.page_size == PageSize::k4K ? "4K" : r.page_size == PageSize::k2M ? "2M" : "1G");
      break;
    case WalkStatus::kPageFault:
      std::printf("#PF error=0x%x [%s] at level %d", r.error_code, ErrorCodeText(r.error_code).c_str(),
                  r.fault_level);
      break;
    case WalkStatus::kEptViolation:
      std::printf("EPT violation gpa=0x%" PRIx64 " qualification=0x%" PRIx64, r.fault_gpa,
                  r.ept_qualification);
      break;
    default:
      std::printf("%s", WalkStatusName(r.status));
  }
  std::printf("  refs: guest %d + ept %d = %d\n", r.refs.GuestTotal(), r.refs.EptTotal(), r.refs.Total());
}

}  // namespace

int main() {
  FlatMemory host(16 << 20);
  GuestView guest_mem(host, kGuestBase);
  TableBuilder<GuestView> guest(guest_mem, 4);
  TableBuilder<FlatMemory> ept(host, 4, /*ept=*/true);

  constexpr uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser;
  const uint64_t user_code = 0x40'0000, user_data = 0x60'0000, kernel = 0xffff'8000'0000'0000ull;
  guest.Map(user_code, 0x10'0000, PageSize::k4K, kP | kU);
  guest.Map(user_data, 0x11'0000, PageSize::k4K, kP | kW | kU | pte::kNoExecute);
  guest.Map(kernel, 0x20'0000, PageSize::k2M, kP | kW | pte::kGlobal);
  const uint64_t wb = uint64_t{6} << epte::kMemTypeShift;
  for (uint64_t g = 0; g < kGuestBytes; g += 0x1000) {
    uint64_t perms = epte::kRead | epte::kWrite | epte::kExecute;
    if (g == 0x11'0000) perms = epte::kRead;  // the VMM write-protects one data page
    ept.Map(g, kGuestBase + g, PageSize::k4K, perms | wb);
  }

  PagingMode mode;  // 4-level, WP, NXE
  mode.smep = mode.smap = true;
  EptContext ctx;
  ctx.eptp = MakeEptp(ept.root(), 4, /*enable_ad=*/true);

  struct Case {
    const char* what;
    uint64_t va;
    Access access;
    uint8_t cpl;
  };
  const Case cases[] = {
      {"user fetch of code", user_code + 0x10, Access::kFetch, 3},
      {"user write of code (read-only)", user_code, Access::kWrite, 3},
      {"user write of data", user_data + 8, Access::kWrite, 3},
      {"user fetch of data (NX)", user_data, Access::kFetch, 3},
      {"kernel read of user data (SMAP)", user_data, Access::kRead, 0},
      {"kernel write, 2 MiB page", kernel + 0x1234, Access::kWrite, 0},
      {"user read of kernel page", kernel, Access::kRead, 3},
      {"unmapped address", 0x7000'0000, Access::kRead, 3},
  };

  std::printf("memvmm mmu demo: x86-64 paging per Intel SDM Vol. 3A ch. 4 and Vol. 3C ch. 29\n");
  std::printf("\n1-D walks (native paging: guest tables, guest-physical = host memory):\n");
  for (const Case& c : cases) {
    AccessRequest req{c.va, c.access, c.cpl};
    WalkResult r;
    GuestView view(host, kGuestBase);
    Walk1D(mode, guest.root(), req, view, &r);
    Print(c.what, req, r);
  }
  std::printf("\n2-D walks (nested paging: guest tables through EPT, EPT A/D on):\n");
  for (const Case& c : cases) {
    AccessRequest req{c.va, c.access, c.cpl};
    WalkResult r;
    Walk2D(mode, guest.root(), ctx, req, host, &r);
    Print(c.what, req, r);
  }
  const uint64_t leaf = *guest.Entry(user_data, 1);
  std::printf("\nguest PTE of user data after the walks: 0x%" PRIx64 " (A=%d D=%d)\n", leaf,
              (leaf & pte::kAccessed) != 0, (leaf & pte::kDirty) != 0);
  std::printf("A cold 4-level guest walk through 4-level EPT makes 24 references: 4 guest + 20 EPT.\n");
  return 0;
}

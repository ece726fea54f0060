#include "vmm-host/elf_loader.h"

#include <elf.h>

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_memory.h"

namespace vmm {
namespace {

// Builds a small ELF64 image by hand: a header, `phdrs`, then payload bytes.
class ElfBuilder {
 public:
  ElfBuilder() {
    std::memset(&eh_, 0, sizeof(eh_));
    std::memcpy(eh_.e_ident, ELFMAG, SELFMAG);
    eh_.e_ident[EI_CLASS] = ELFCLASS64;
    eh_.e_ident[EI_DATA] = ELFDATA2LSB;
    eh_.e_ident[EI_VERSION] = EV_CURRENT;
    eh_.e_type = ET_EXEC;
    eh_.e_machine = EM_X86_64;
    eh_.e_version = EV_CURRENT;
    eh_.e_phoff = sizeof(Elf64_Ehdr);
    eh_.e_ehsize = sizeof(Elf64_Ehdr);
    eh_.e_phentsize = sizeof(Elf64_Phdr);
    eh_.e_entry = 0x100000;
  }
  // Adds a PT_LOAD of `payload` (then memsz - payload.size() zero bytes).
  ElfBuilder& Load(uint64_t paddr, std::string payload, uint64_t memsz, uint32_t flags = PF_R | PF_X) {
    Elf64_Phdr ph = {};
    ph.p_type = PT_LOAD;
    ph.p_flags = flags;
    ph.p_paddr = paddr;
    ph.p_vaddr = paddr + 0xffffffff80000000ull;
    ph.p_filesz = payload.size();
    ph.p_memsz = memsz;
    ph.p_align = 0x1000;
    phdrs_.push_back(ph);
    payloads_.push_back(std::move(payload));
    return *this;
  }
  Elf64_Ehdr& header() { return eh_; }
  Elf64_Phdr& phdr(size_t i) { return phdrs_[i]; }

  std::string Build() {
    eh_.e_phnum = static_cast<uint16_t>(phdrs_.size());
    uint64_t offset = sizeof(Elf64_Ehdr) + phdrs_.size() * sizeof(Elf64_Phdr);
    for (size_t i = 0; i < phdrs_.size(); ++i) {
      if (phdrs_[i].p_offset == 0) phdrs_[i].p_offset = offset;
      offset += payloads_[i].size();
    }
    std::string out(reinterpret_cast<const char*>(&eh_), sizeof(eh_));
    for (const Elf64_Phdr& ph : phdrs_) out.append(reinterpret_cast<const char*>(&ph), sizeof(ph));
    for (const std::string& p : payloads_) out += p;
    return out;
  }

 private:
  Elf64_Ehdr eh_;
  std::vector<Elf64_Phdr> phdrs_;
  std::vector<std::string> payloads_;
};

std::string ErrorOf(std::string image) {
  absl::StatusOr<ElfImage> r = ParseElf(std::move(image), "test.elf");
  EXPECT_FALSE(r.ok());
  return std::string(r.status().message());
}

TEST(ElfLoaderTest, ValidImageLoadsSegmentsAndZeroesBss) {
  ElfBuilder b;
  b.Load(0x100000, "code", 0x10).Load(0x200000, "data!", 0x2000, PF_R | PF_W);
  absl::StatusOr<ElfImage> image = ParseElf(b.Build(), "good.elf");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->entry, 0x100000u);
  ASSERT_EQ(image->segments.size(), 2u);
  EXPECT_EQ(image->end_paddr(), 0x202000u);
  testing::FakeGuestMemory mem({{0, 4 << 20}});
  uint8_t* ram = mem.HostPtr(base::Gpa(0), 4 << 20);
  std::memset(ram, 0xcc, 4 << 20);
  ASSERT_TRUE(CopyImageToGuest(*image, mem).ok());
  EXPECT_EQ(std::memcmp(ram + 0x100000, "code", 4), 0);
  EXPECT_EQ(ram[0x100004], 0) << "bss zeroed";
  EXPECT_EQ(ram[0x10000f], 0);
  EXPECT_EQ(ram[0x100010], 0xcc) << "nothing beyond memsz";
  EXPECT_EQ(std::memcmp(ram + 0x200000, "data!", 5), 0);
  EXPECT_EQ(ram[0x201fff], 0);
}

TEST(ElfLoaderTest, RejectsTruncatedAndForeignFiles) {
  EXPECT_NE(ErrorOf("\x7f" "ELF").find("truncated"), std::string::npos);
  EXPECT_NE(ErrorOf(std::string(100, 'x')).find("not an ELF"), std::string::npos);
  ElfBuilder b32;
  b32.Load(0x100000, "x", 1).header().e_ident[EI_CLASS] = ELFCLASS32;
  EXPECT_NE(ErrorOf(b32.Build()).find("64-bit"), std::string::npos);
  ElfBuilder arm;
  arm.Load(0x100000, "x", 1).header().e_machine = EM_AARCH64;
  EXPECT_NE(ErrorOf(arm.Build()).find("x86-64"), std::string::npos);
  ElfBuilder dyn;
  dyn.Load(0x100000, "x", 1).header().e_type = ET_DYN;
  EXPECT_NE(ErrorOf(dyn.Build()).find("ET_EXEC"), std::string::npos);
}

TEST(ElfLoaderTest, RejectsProgramHeadersOrSegmentsBeyondTheFile) {
  ElfBuilder ph;
  ph.Load(0x100000, "x", 1).header().e_phoff = 1 << 20;
  EXPECT_NE(ErrorOf(ph.Build()).find("program headers"), std::string::npos);
  ElfBuilder overflow;
  overflow.Load(0x100000, "x", 1).header().e_phoff = ~uint64_t{0} - 8;
  EXPECT_NE(ErrorOf(overflow.Build()).find("truncated"), std::string::npos);
  ElfBuilder seg;
  seg.Load(0x100000, "abcd", 4);
  std::string image = seg.Build();
  image.resize(image.size() - 2);  // cut the payload short
  EXPECT_NE(ErrorOf(image).find("beyond the end"), std::string::npos);
}

TEST(ElfLoaderTest, RejectsInconsistentSegments) {
  ElfBuilder sizes;
  sizes.Load(0x100000, "abcd", 2);
  EXPECT_NE(ErrorOf(sizes.Build()).find("p_filesz > p_memsz"), std::string::npos);
  ElfBuilder overlap;
  overlap.Load(0x100000, "a", 0x2000).Load(0x101000, "b", 0x10);
  EXPECT_NE(ErrorOf(overlap.Build()).find("overlap"), std::string::npos);
  ElfBuilder wrap;
  wrap.Load(~uint64_t{0} - 0x10, "a", 0x100);
  EXPECT_NE(ErrorOf(wrap.Build()).find("wraps"), std::string::npos);
  ElfBuilder none;
  none.Load(0x100000, "", 0);
  EXPECT_NE(ErrorOf(none.Build()).find("no loadable"), std::string::npos);
}

TEST(ElfLoaderTest, EntryMustBeInAnExecutableSegment) {
  ElfBuilder data_only;
  data_only.Load(0x100000, "x", 0x100, PF_R | PF_W);
  EXPECT_NE(ErrorOf(data_only.Build()).find("entry point"), std::string::npos);
  ElfBuilder virt;
  virt.Load(0x100000, "x", 0x100).header().e_entry = 0xffffffff80100000ull;
  EXPECT_NE(ErrorOf(virt.Build()).find("physical address"), std::string::npos);
}

TEST(ElfLoaderTest, ImageLargerThanRamIsRejected) {
  ElfBuilder big;
  big.Load(0x100000, "x", 64 << 20);
  absl::StatusOr<ElfImage> image = ParseElf(big.Build(), "big.elf");
  ASSERT_TRUE(image.ok());
  const uint64_t ram = 32 << 20;
  absl::Status s = CheckImageFitsRam(*image, ram, [&](uint64_t gpa, uint64_t len) {
    return RangeWithin(gpa, len, 0, ram);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("does not fit in guest RAM (32 MiB)"), std::string::npos) << s;
}

TEST(ElfLoaderTest, MissingFileIsAClearError) {
  absl::StatusOr<ElfImage> r = LoadElfFile("/nonexistent/guest.elf");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("cannot open"), std::string::npos);
}

#ifdef GUEST_KERNEL_PATH
TEST(ElfLoaderTest, TheGuestKernelParses) {
  absl::StatusOr<ElfImage> image = LoadElfFile(GUEST_KERNEL_PATH);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_GE(image->lowest_paddr(), 0x100000u);
}
#endif

}  // namespace
}  // namespace vmm

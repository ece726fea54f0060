#include "vmm-host/elf_loader.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vmm {
namespace {

absl::Status Bad(absl::string_view name, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("guest image ", name, ": ", why));
}

}  // namespace

uint64_t ElfImage::end_paddr() const {
  uint64_t end = 0;
  for (const ElfSegment& s : segments) end = std::max(end, s.paddr + s.mem_size);
  return end;
}

absl::StatusOr<ElfImage> ParseElf(std::string bytes, std::string_view name_in) {
  ElfImage image;
  image.name = std::string(name_in);
  const absl::string_view name(image.name);
  if (bytes.size() < sizeof(Elf64_Ehdr)) return Bad(name, "truncated: shorter than an ELF header");
  Elf64_Ehdr eh;
  std::memcpy(&eh, bytes.data(), sizeof(eh));
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return Bad(name, "not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) return Bad(name, "not a 64-bit ELF");
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return Bad(name, "not little-endian");
  if (eh.e_machine != EM_X86_64) return Bad(name, "not an x86-64 image");
  if (eh.e_type != ET_EXEC) return Bad(name, "not an executable (ET_EXEC) image");
  if (eh.e_phnum == 0) return Bad(name, "no program headers");
  if (eh.e_phentsize != sizeof(Elf64_Phdr)) return Bad(name, "unexpected program-header size");
  const uint64_t ph_bytes = uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr);
  if (eh.e_phoff > bytes.size() || ph_bytes > bytes.size() - eh.e_phoff) {
    return Bad(name, "truncated: program headers lie beyond the end of the file");
  }
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    std::memcpy(&ph, bytes.data() + eh.e_phoff + i * sizeof(Elf64_Phdr), sizeof(ph));
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) {
      return Bad(name, absl::StrFormat("segment %u has p_filesz > p_memsz", i));
    }
    if (ph.p_offset > bytes.size() || ph.p_filesz > bytes.size() - ph.p_offset) {
      return Bad(name, absl::StrFormat("truncated: segment %u lies beyond the end of the file", i));
    }
    if (ph.p_paddr + ph.p_memsz < ph.p_paddr) {
      return Bad(name, absl::StrFormat("segment %u wraps around the address space", i));
    }
    image.segments.push_back(
        {ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz, (ph.p_flags & PF_X) != 0});
  }
  if (image.segments.empty()) return Bad(name, "no loadable segments");
  std::sort(image.segments.begin(), image.segments.end(),
            [](const ElfSegment& a, const ElfSegment& b) { return a.paddr < b.paddr; });
  for (size_t i = 1; i < image.segments.size(); ++i) {
    const ElfSegment& prev = image.segments[i - 1];
    if (image.segments[i].paddr < prev.paddr + prev.mem_size) {
      return Bad(name, absl::StrFormat("segments at 0x%x and 0x%x overlap", prev.paddr,
                                       image.segments[i].paddr));
    }
  }
  image.entry = eh.e_entry;
  const bool entry_ok = std::any_of(image.segments.begin(), image.segments.end(),
                                    [&](const ElfSegment& s) {
                                      return s.executable && image.entry >= s.paddr &&
                                             image.entry - s.paddr < s.mem_size;
                                    });
  if (!entry_ok) {
    return Bad(name, absl::StrFormat("entry point 0x%x is not inside an executable segment "
                                     "(the 64-bit entry must be a physical address)",
                                     image.entry));
  }
  image.bytes = std::move(bytes);
  return image;
}

absl::StatusOr<ElfImage> LoadElfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("guest image ", path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return ParseElf(std::move(contents).str(), path);
}

absl::Status CopyImageToGuest(const ElfImage& image, GuestMemory& memory) {
  for (const ElfSegment& s : image.segments) {
    uint8_t* dst = memory.HostPtr(base::Gpa(s.paddr), s.mem_size);
    if (dst == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "guest image %s: segment at 0x%x (%u bytes) is not inside guest RAM", image.name,
          s.paddr, s.mem_size));
    }
    std::memcpy(dst, image.bytes.data() + s.file_offset, s.file_size);
    std::memset(dst + s.file_size, 0, s.mem_size - s.file_size);
  }
  return absl::OkStatus();
}

}  // namespace vmm

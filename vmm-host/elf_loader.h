// Loads the guest kernel ELF for the 64-bit boot protocol (docs/boot.md).
//
// The image is validated completely before any VM exists, so that a bad image
// fails with one clear line and leaves nothing behind: the ELF header (class,
// byte order, machine, type, program-header table inside the file), every
// PT_LOAD (file range inside the file, filesz <= memsz, no address overflow),
// no two PT_LOAD segments overlapping in guest-physical memory, and an entry
// point inside an executable segment. Segments are loaded at their physical
// address (p_paddr), as the guest's linker script places them.
//
// Thread safety: plain functions and values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "vmm-host/guest_memory.h"

namespace vmm {

struct ElfSegment {
  uint64_t paddr = 0;
  uint64_t file_offset = 0;
  uint64_t file_size = 0;
  uint64_t mem_size = 0;
  bool executable = false;
};

struct ElfImage {
  std::string name;  // for messages
  std::string bytes;
  uint64_t entry = 0;
  std::vector<ElfSegment> segments;  // PT_LOAD only, sorted by paddr

  uint64_t lowest_paddr() const { return segments.empty() ? 0 : segments.front().paddr; }
  uint64_t end_paddr() const;  // one past the highest loaded byte
};

// Parses and validates an image held in memory.
absl::StatusOr<ElfImage> ParseElf(std::string bytes, std::string_view name);
// Reads and parses an image file.
absl::StatusOr<ElfImage> LoadElfFile(const std::string& path);

// Checks that every segment lies inside guest RAM as described by `fits`
// (a predicate "is [paddr, paddr+len) RAM?"); the error names the segment.
template <typename Fits>
absl::Status CheckImageFitsRam(const ElfImage& image, uint64_t ram_bytes, Fits&& fits);

// Copies every segment into guest memory and zero-fills the rest of each
// (p_memsz beyond p_filesz).
absl::Status CopyImageToGuest(const ElfImage& image, GuestMemory& memory);

}  // namespace vmm

#include "absl/strings/str_format.h"

namespace vmm {

template <typename Fits>
absl::Status CheckImageFitsRam(const ElfImage& image, uint64_t ram_bytes, Fits&& fits) {
  for (const ElfSegment& s : image.segments) {
    if (!fits(s.paddr, s.mem_size)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "guest image %s: segment at 0x%x..0x%x does not fit in guest RAM (%u MiB)", image.name,
          s.paddr, s.paddr + s.mem_size, ram_bytes >> 20));
    }
  }
  return absl::OkStatus();
}

}  // namespace vmm

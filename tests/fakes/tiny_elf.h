// Builds the smallest guest image our loader accepts: one executable PT_LOAD
// of `code` at a physical address, with the entry point at its first byte.
// Tests and benchmarks use it for guests written as a few machine-code bytes
// (a triple fault, an exit loop).
#pragma once

#include <elf.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace vmm::testing {

inline std::string TinyElf(const std::string& code, uint64_t paddr = 0x100000) {
  Elf64_Ehdr eh = {};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = paddr;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = 1;
  Elf64_Phdr ph = {};
  ph.p_type = PT_LOAD;
  ph.p_flags = PF_R | PF_X;
  ph.p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
  ph.p_vaddr = ph.p_paddr = paddr;
  ph.p_filesz = ph.p_memsz = code.size();
  ph.p_align = 0x1000;
  std::string image(reinterpret_cast<const char*>(&eh), sizeof(eh));
  image.append(reinterpret_cast<const char*>(&ph), sizeof(ph));
  return image + code;
}

}  // namespace vmm::testing

// Decode throughput of the soft CPU's decoder (cpu/decoder.h) on real code:
// the guest kernel's .text, decoded over and over.
//  - BM_DecodeLinear: one Decode() per instruction, a linear sweep (the cost
//    an interpreter without a decode cache would pay per instruction).
//  - BM_DecodeBlock: DecodeBlock() from every block start, page by page (what
//    filling the per-page decode cache costs).
// Reported as items/s = instructions/s; ns/insn = 1e9 / that.
#include <elf.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "cpu/decoder.h"

namespace {

// The .text of the guest kernel ELF (64-bit code only), or empty.
const std::vector<uint8_t>& GuestText() {
  static const std::vector<uint8_t> text = [] {
    std::vector<uint8_t> out;
    std::ifstream f(GUEST_KERNEL_PATH, std::ios::binary);
    std::vector<char> file((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (file.size() < sizeof(Elf64_Ehdr)) return out;
    Elf64_Ehdr eh;
    std::memcpy(&eh, file.data(), sizeof(eh));
    Elf64_Shdr strtab;
    if (eh.e_shoff + (eh.e_shstrndx + 1) * sizeof(Elf64_Shdr) > file.size()) return out;
    std::memcpy(&strtab, file.data() + eh.e_shoff + eh.e_shstrndx * sizeof(Elf64_Shdr),
                sizeof(strtab));
    for (size_t i = 0; i < eh.e_shnum; ++i) {
      Elf64_Shdr sh;
      if (eh.e_shoff + (i + 1) * sizeof(sh) > file.size()) break;
      std::memcpy(&sh, file.data() + eh.e_shoff + i * sizeof(sh), sizeof(sh));
      if (strtab.sh_offset + sh.sh_name >= file.size()) continue;
      if (std::strcmp(file.data() + strtab.sh_offset + sh.sh_name, ".text") != 0) continue;
      if (sh.sh_offset + sh.sh_size > file.size()) break;
      out.assign(file.begin() + sh.sh_offset, file.begin() + sh.sh_offset + sh.sh_size);
    }
    return out;
  }();
  return text;
}

void BM_DecodeLinear(benchmark::State& state) {
  const std::vector<uint8_t>& text = GuestText();
  if (text.empty()) {
    state.SkipWithError("cannot read the guest kernel's .text (" GUEST_KERNEL_PATH ")");
    return;
  }
  int64_t insns = 0;
  for (auto _ : state) {
    size_t pos = 0;
    while (pos < text.size()) {
      cpu::DecodedInsn insn;
      const cpu::DecodeStatus status = cpu::Decode(text.data() + pos, text.size() - pos, &insn);
      benchmark::DoNotOptimize(insn);
      pos += status == cpu::DecodeStatus::kOk ? insn.length : 1;
      ++insns;
    }
  }
  state.SetItemsProcessed(insns);
  state.counters["ns_per_insn"] = benchmark::Counter(
      static_cast<double>(insns), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_DecodeLinear);

void BM_DecodeBlock(benchmark::State& state) {
  const std::vector<uint8_t>& text = GuestText();
  if (text.empty()) {
    state.SkipWithError("cannot read the guest kernel's .text (" GUEST_KERNEL_PATH ")");
    return;
  }
  // Whole pages, the way the cache sees code.
  std::vector<uint8_t> pages((text.size() + cpu::kCodePageBytes - 1) / cpu::kCodePageBytes *
                                 cpu::kCodePageBytes,
                             0xcc);
  std::memcpy(pages.data(), text.data(), text.size());
  cpu::DecodedInsn out[64];
  int64_t insns = 0;
  for (auto _ : state) {
    for (size_t page = 0; page < pages.size(); page += cpu::kCodePageBytes) {
      uint32_t offset = 0;
      while (offset < cpu::kCodePageBytes) {
        const cpu::DecodedBlock block = cpu::DecodeBlock(pages.data() + page, offset, out, 64);
        benchmark::DoNotOptimize(out);
        insns += block.num_insns;
        if (block.end == cpu::BlockEnd::kCrossPage || block.num_bytes == 0) break;
        offset += block.num_bytes;
      }
    }
  }
  state.SetItemsProcessed(insns);
  state.counters["ns_per_insn"] = benchmark::Counter(
      static_cast<double>(insns), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_DecodeBlock);

}  // namespace

BENCHMARK_MAIN();

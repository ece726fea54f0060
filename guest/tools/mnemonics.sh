#!/bin/sh
# Usage: mnemonics.sh OBJDUMP OUTPUT KERNEL_ELF USER_ELF
# Lists, one per line and sorted, the instruction mnemonics (Intel syntax, with
# any rep/lock prefix kept in front; segment and size prefixes dropped) of all code the guest image runs in 64-bit
# mode: the kernel's .boot64 and .text, and the user program's .text. The
# 32-bit PVH stub is left out: only QEMU ever runs it.
set -eu
objdump="$1"; out="$2"; kernel="$3"; user="$4"
{
  "$objdump" -d -M intel --no-show-raw-insn -j .boot64 -j .text "$kernel"
  "$objdump" -d -M intel --no-show-raw-insn -j .text "$user"
} | awk -F'\t' '
  /^ *[0-9a-f]+:\t/ {
    n = split($2, w, " ")
    i = 1
    # Segment, operand-size and branch-hint prefixes (as in the multi-byte
    # NOP "data16 cs nop") do not change which instruction it is.
    while (i < n && w[i] ~ /^(cs|ds|es|ss|fs|gs|data16|addr32|notrack|bnd|rex(\..*)?)$/) i++
    m = w[i]
    # rep/lock change the semantics: keep them with the instruction.
    if (m ~ /^(rep|repz|repnz|repe|repne|lock)$/ && i < n) m = m " " w[i + 1]
    if (m == "" || m == "(bad)") next
    print m
  }' | LC_ALL=C sort -u > "$out.tmp"
mv "$out.tmp" "$out"

// Guest test programs for cpu/interpreter_test.cc and
// bench/interpreter_bench.cc, assembled by the host assembler. Each program is
// position-independent 64-bit code between the global symbols NAME and
// NAME_end; the test copies it into guest memory and runs it until HLT (or
// the exception it is meant to raise). Inputs come in registers set by the
// test, documented per program.
        .intel_syntax noprefix
        .section .rodata
        .code64

#define PROGRAM(name) .globl name; name:
#define END(name) .globl name##_end; name##_end:

// rax = fib(50) by iteration.
PROGRAM(prog_fib)
        xor eax, eax
        mov ecx, 1
        mov edx, 50
1:      lea r8, [rax + rcx]
        mov rax, rcx
        mov rcx, r8
        dec edx
        jnz 1b
        hlt
END(prog_fib)

// xorshift64 for 1000 rounds; rdx = rotating checksum of the states.
PROGRAM(prog_xorshift)
        mov rax, 88172645463325252
        mov ecx, 1000
        xor edx, edx
1:      mov rbx, rax
        shl rbx, 13
        xor rax, rbx
        mov rbx, rax
        shr rbx, 7
        xor rax, rbx
        mov rbx, rax
        shl rbx, 17
        xor rax, rbx
        add rdx, rax
        rol rdx, 5
        dec ecx
        jnz 1b
        hlt
END(prog_xorshift)

// A loop whose forward branch is taken on all but every 256th round (the
// skipped path changes the sum), then ends on its loop branch: the hot
// forward branch becomes a followed Jcc; rax = the sum after 5000 rounds.
PROGRAM(prog_follow)
        xor eax, eax
        xor ecx, ecx
1:      add rax, rcx
        test cl, 0xff
        jnz 2f
        add rax, 1000
        imul rax, rax, 3
2:      rol rax, 3
        inc ecx
        cmp ecx, 5000
        jb 1b
        hlt
END(prog_follow)

// rax = a checksum over 3000 rounds of a loop closed by a backward JMP, with
// an if/else joined by a forward JMP: superblocks follow both JMPs.
PROGRAM(prog_jmps)
        xor eax, eax
        xor ecx, ecx
1:      cmp ecx, 3000
        jae 4f
        test cl, 1
        jz 2f
        add rax, rcx
        jmp 3f
2:      xor rax, rcx
        rol rax, 5
3:      inc ecx
        jmp 1b
4:      hlt
END(prog_jmps)

// Loads and stores; rdi = a writable data buffer.
PROGRAM(prog_mem)
        mov qword ptr [rdi], 0x1234
        mov rax, [rdi]
        mov dword ptr [rdi + 8], -1
        movzx ebx, byte ptr [rdi + 8]
        movsx rcx, word ptr [rdi + 8]
        mov rdx, [rip + mem_const]
        add [rdi], rdx
        mov rsi, [rdi]
        movsxd r9, dword ptr [rdi + 8]
        mov byte ptr [rdi + 16], 0x80
        movsx r10d, byte ptr [rdi + 16]
        lea r11, [rip + mem_const]
        hlt
mem_const:
        .quad 0x1000000000
END(prog_mem)

// rax = 10! by recursion (call/ret, push/pop, a stack).
PROGRAM(prog_fact)
        mov edi, 10
        call fact
        hlt
fact:   push rbx
        mov rbx, rdi
        mov eax, 1
        cmp rdi, 1
        jbe 2f
        lea rdi, [rdi - 1]
        call fact
        imul rax, rbx
2:      pop rbx
        ret
END(prog_fact)

// rsi = 100-byte source, rdi = destination, rdx = 512-byte buffer to fill.
PROGRAM(prog_rep)
        cld
        mov ecx, 100
        rep movsb
        mov rdi, rdx
        mov rax, 0x0101010101010101
        mov ecx, 64
        rep stosq
        hlt
END(prog_rep)

// rsi, rdi = two 64-byte strings; bl = (they differ), rcx = what is left.
PROGRAM(prog_cmps)
        mov ecx, 64
        repe cmpsb
        setne bl
        hlt
END(prog_cmps)

// rdi = NUL-terminated string; rax = its length (repne scasb).
PROGRAM(prog_strlen)
        mov rdx, rdi
        xor eax, eax
        mov rcx, -1
        repne scasb
        sub rdi, rdx
        dec rdi
        mov rax, rdi
        hlt
END(prog_strlen)

// 100 / 7, then a division by zero at prog_div0_fault.
PROGRAM(prog_div0)
        mov eax, 100
        xor edx, edx
        mov ecx, 7
        div ecx
        mov r8, rax
        mov r9, rdx
        xor ecx, ecx
        .globl prog_div0_fault
prog_div0_fault:
        div ecx
        hlt
END(prog_div0)

// rdi = an address on a read-only page: the read works, the write faults.
PROGRAM(prog_write_ro)
        mov rax, [rdi]
        .globl prog_write_ro_fault
prog_write_ro_fault:
        mov [rdi], rax
        hlt
END(prog_write_ro)

// Self-modifying code: the first pass runs `mov eax, 7` (decoded and cached),
// then patches its immediate to 99 and runs it again; a store to the very
// next instruction in the same block must be seen too (ebx = 42).
PROGRAM(prog_smc)
        xor ecx, ecx
smc_target:
        mov eax, 7
        inc ecx
        cmp ecx, 2
        je 2f
        lea rdx, [rip + smc_target]
        mov dword ptr [rdx + 1], 99
        jmp smc_target
2:      lea rdx, [rip + smc_next]
        mov dword ptr [rdx + 1], 42
smc_next:
        mov ebx, 1
        hlt
END(prog_smc)

// Loaded so that the first instruction straddles a page end. rdi = an
// address 4 bytes before a page end: an 8-byte store and load cross it.
PROGRAM(prog_cross)
        mov rax, 0x1122334455667788
        mov rbx, 0x0100000000000001
        add rax, rbx
        mov [rdi], rax
        mov rcx, [rdi]
        hlt
END(prog_cross)

// Port I/O: "Hi" to COM1, a dword to port 0x80, a byte in from port 0x60.
PROGRAM(prog_pio)
        mov dx, 0x3f8
        mov al, 'H'
        out dx, al
        mov al, 'i'
        out dx, al
        mov eax, 0x12345678
        out 0x80, eax
        in al, 0x60
        hlt
END(prog_pio)

// rdi = an MMIO address: a load and a store go to the platform.
PROGRAM(prog_mmio)
        mov rax, [rdi]
        mov qword ptr [rdi + 8], 0x77
        hlt
END(prog_mmio)

// A mix: bit scans, bswap, bts/setc, cqo/idiv, lock cmpxchg/xadd, cmov,
// pushf, leave, cpuid. rdi = a writable data buffer.
PROGRAM(prog_misc)
        xor r9d, r9d
        mov rax, 0xf0
        bsf rbx, rax
        bsr rcx, rax
        mov rdx, 0x0102030405060708
        bswap rdx
        mov [rdi + 8], rbx
        mov [rdi + 16], rcx
        mov [rdi + 24], rdx
        mov r8, 5
        bts r8, 1
        setc r9b
        mov rax, -7
        cqo
        mov r11, 2
        idiv r11
        mov r12, rax
        mov r13, rdx
        mov qword ptr [rdi], 10
        mov rax, 10
        mov r14, 20
        lock cmpxchg [rdi], r14
        mov r15, 5
        lock xadd [rdi], r15
        mov esi, 1
        cmp esi, 2
        mov esi, 111
        mov r10d, 222
        cmovl r10d, esi
        push rbp
        mov rbp, rsp
        sub rsp, 64
        stc
        pushfq
        pop rsi
        and esi, 1
        leave
        xor eax, eax
        cpuid
        hlt
END(prog_misc)

// rsi/rdi = the LAST byte of an 8-byte source/destination (DF = 1 copy),
// rdx = a writable qword. rbx = 1 + ... + 10 via LOOP, r8 = AH after a
// SAHF/LAHF round trip, r9 = shifts on memory, r10 = rsp inside ENTER 32, 0.
PROGRAM(prog_misc2)
        std
        mov ecx, 8
        rep movsb
        cld
        xor ebx, ebx
        mov ecx, 10
1:      add rbx, rcx
        loop 1b
        mov ah, 0xd7
        sahf
        mov ah, 0
        lahf
        movzx eax, ah
        mov r8, rax
        mov qword ptr [rdx], 1
        shl qword ptr [rdx], 4
        sar qword ptr [rdx], 1
        mov r9, [rdx]
        enter 32, 0
        mov r10, rsp
        leave
        hlt
END(prog_misc2)

// The benchmark loop, ~20 instructions per iteration, forever: xorshift64 in
// rax, a 256-entry qword table at rdi updated with it.
PROGRAM(prog_bench)
        mov rax, 88172645463325252
        xor ecx, ecx
1:      mov rbx, rax
        shl rbx, 13
        xor rax, rbx
        mov rbx, rax
        shr rbx, 7
        xor rax, rbx
        mov rbx, rax
        shl rbx, 17
        xor rax, rbx
        movzx edx, al
        mov rsi, [rdi + rdx * 8]
        add rsi, rax
        mov [rdi + rdx * 8], rsi
        add rcx, 1
        cmp rcx, 1000000
        jb 1b
        xor ecx, ecx
        jmp 1b
END(prog_bench)

        .section .note.GNU-stack, "", @progbits

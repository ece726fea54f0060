// Boot code: the two entry points and the static boot page tables.
//
// Everything here is linked at its physical address (VMA == LMA, inside the
// .boot output section at 1 MiB) because it runs before the kernel's high
// mapping exists. The protocol is documented in docs/boot.md.
//
//   pvh_entry32  QEMU -kernel: 32-bit protected mode, paging off,
//                EBX = physical address of struct hvm_start_info
//                (Xen PVH boot ABI, xen/include/public/arch-x86/hvm/start_info.h).
//   vmm_entry64  our VMM (ELF e_entry): 64-bit mode, RDI = physical address
//                of guest::BootInfo, CR3 identity-maps (at least) this
//                .boot section, the BootInfo and the ranges it points to.
//
// Both continue in boot_common64, which switches to the static tables below
// and calls KernelMain(info_pa, source) at its high address. No loops run
// here: the tables are assembled at build time (a loop of kernel instructions
// costs about 1 us each on the PVM host, see docs/guest.md).

#define KERNEL_VIRT_BASE 0xffffffff80000000
#define PTE_P 0x1
#define PTE_W 0x2
#define PTE_PWT 0x8
#define PTE_PCD 0x10
#define PTE_PS 0x80
#define PTE_G 0x100
#define BOOT_SOURCE_PVH 1
#define BOOT_SOURCE_VMM 2

// ---- Xen PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (type 18) ----
// QEMU reads the descriptor as a 64-bit value in an ELF64 image, and aligns the
// name to the PT_NOTE segment's p_align, so that segment must be 4-aligned
// (the linker script keeps .note.Xen 4-aligned).
  .section .note.Xen, "a", @note
  .balign 4
  .long 4              // n_namesz: "Xen\0"
  .long 8              // n_descsz
  .long 18             // n_type: XEN_ELFNOTE_PHYS32_ENTRY
  .asciz "Xen"
  .balign 4
  .quad pvh_entry32
  .balign 4

// ---- 32-bit PVH entry ----
  .section .boot.text32, "ax"
  .code32
  .globl pvh_entry32
pvh_entry32:
  cli
  cld
  mov %ebx, %esi                    // hvm_start_info, kept for KernelMain
  lgdt boot_gdt_desc
  mov $0x18, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  // Long mode needs PAE paging: CR4.PAE, then EFER.LME, then CR0.PG
  // (SDM Vol. 3A, 10.8.5 "Initializing IA-32e Mode").
  mov %cr4, %eax
  or $0x20, %eax                    // CR4.PAE
  mov %eax, %cr4
  mov $boot_pml4, %eax
  mov %eax, %cr3
  mov $0xc0000080, %ecx             // IA32_EFER
  rdmsr
  or $0x101, %eax                   // LME | SCE
  wrmsr
  mov %cr0, %eax
  or $0x80010001, %eax              // PG | WP | PE
  mov %eax, %cr0
  ljmp $0x10, $pvh_entry64_trampoline

  .section .boot.text64, "ax"
  .code64
pvh_entry64_trampoline:
  mov %esi, %edi                    // info_pa (zero-extended)
  mov $BOOT_SOURCE_PVH, %esi
  jmp boot_common64

// ---- 64-bit entry for our VMM (ELF e_entry) ----
  .globl vmm_entry64
vmm_entry64:
  cli
  cld
  mov $BOOT_SOURCE_VMM, %esi        // RDI already holds the BootInfo address
boot_common64:
  // The static tables identity-map the low 4 GiB, so this code stays mapped
  // across the CR3 load whichever tables the VMM used.
  mov $boot_pml4, %eax
  mov %rax, %cr3
  lgdt boot_gdt_desc
  mov $0x18, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  xor %eax, %eax
  mov %eax, %fs
  mov %eax, %gs
  // Reload CS with the 64-bit code selector.
  pushq $0x10
  lea 1f(%rip), %rax
  push %rax
  lretq
1:
  movabs $boot_stack_top, %rsp
  movabs $KernelMain, %rax
  call *%rax
2:
  cli
  hlt
  jmp 2b

// ---- Boot GDT (Linux layout; the kernel installs its own with a TSS) ----
  .section .boot.data, "aw"
  .balign 16
boot_gdt:
  .quad 0
  .quad 0x00cf9a000000ffff          // 0x08 kernel code, 32-bit
  .quad 0x00af9a000000ffff          // 0x10 kernel code, 64-bit
  .quad 0x00cf92000000ffff          // 0x18 kernel data
boot_gdt_end:
boot_gdt_desc:
  .word boot_gdt_end - boot_gdt - 1
  .quad boot_gdt

// ---- Static boot page tables ----
// PML4[0]   -> boot_pdpt_ident: identity map of 0..4 GiB (boot only)
// PML4[256] -> boot_pdpt: direct map at 0xffff800000000000 (kept for good)
// PML4[511] -> boot_pdpt_hi: kernel image at -2 GiB maps physical 0..2 GiB
// 2 MiB pages throughout; 3..4 GiB (MMIO: LAPIC, IOAPIC, virtio-mmio) is
// mapped uncached (PCD|PWT). Every process shares PML4 slots 256 and 511.
// Those kernel mappings are global (G; KernelMain sets CR4.PGE), so a CR3
// switch keeps them in the TLB. The identity map has tables of its own
// without G: its low addresses are user addresses in every process.
  .balign 4096
  .globl boot_pml4
boot_pml4:
  .quad boot_pdpt_ident + PTE_P + PTE_W
  .fill 255, 8, 0
  .quad boot_pdpt + PTE_P + PTE_W
  .fill 254, 8, 0
  .quad boot_pdpt_hi + PTE_P + PTE_W
boot_pdpt_ident:
  .quad boot_pd_ident + PTE_P + PTE_W
  .quad boot_pd_ident + 0x1000 + PTE_P + PTE_W
  .quad boot_pd_ident + 0x2000 + PTE_P + PTE_W
  .quad boot_pd_ident + 0x3000 + PTE_P + PTE_W
  .fill 508, 8, 0
  .globl boot_pdpt
boot_pdpt:
  .quad boot_pd + PTE_P + PTE_W
  .quad boot_pd + 0x1000 + PTE_P + PTE_W
  .quad boot_pd + 0x2000 + PTE_P + PTE_W
  .quad boot_pd + 0x3000 + PTE_P + PTE_W
  .fill 508, 8, 0
boot_pdpt_hi:
  .fill 510, 8, 0
  .quad boot_pd + PTE_P + PTE_W
  .quad boot_pd + 0x1000 + PTE_P + PTE_W
// 4 page directories each: 2048 entries of 2 MiB over 0..4 GiB, the top GiB
// uncached. `flags` are added to every entry.
.macro BOOT_PD flags
  .set i, 0
  .rept 2048
  .if i >= 1536
  .quad (i << 21) + PTE_P + PTE_W + PTE_PS + PTE_PCD + PTE_PWT + \flags
  .else
  .quad (i << 21) + PTE_P + PTE_W + PTE_PS + \flags
  .endif
  .set i, i + 1
  .endr
.endm
boot_pd_ident:
  BOOT_PD 0
boot_pd:
  BOOT_PD PTE_G

// ---- Boot stack (high half; used until the first process runs) ----
  .section .bss
  .balign 16
boot_stack:
  .skip 16384
  .globl boot_stack_top
boot_stack_top:

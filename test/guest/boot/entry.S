/*
 * PVH entry (32-bit protected mode, paging off, ebx = hvm_start_info) and the AP path (from the trampoline),
 * both ending in cpu_enter: per-CPU kernel stack, IDT, TSS, then iretq to CPL3 with IOPL=3.
 * Everything here runs at CPL0, which PVM emulates instruction by instruction: keep it short and loop-free.
 */
#include "layout.h"

/* XEN_ELFNOTE_PHYS32_ENTRY: name "Xen", type 18, desc = entry address (8 bytes, as Linux emits it). */
        .section .note.Xen, "a"
        .balign 4
        .long 4
        .long 8
        .long 18
        .asciz "Xen"
        .quad pvh_entry

        .macro ENABLE_LONG_MODE
        movl %cr4, %eax
        orl $0x20, %eax                 /* PAE */
        movl %eax, %cr4
        movl $pml4, %eax
        movl %eax, %cr3
        movl $MSR_EFER, %ecx
        rdmsr
        orl $0x100, %eax                /* LME */
        wrmsr
        movl %cr0, %eax
        andl $0x9FFFFFFF, %eax          /* clear CD, NW */
        orl $0x80000021, %eax           /* PG, NE, PE */
        movl %eax, %cr0
        .endm

        .section .text.entry, "ax"
        .code32
        .globl pvh_entry
pvh_entry:
        cli
        cld
        rdtsc
        movl %eax, entry_tsc
        movl %edx, entry_tsc + 4
        movl %ebx, start_info_pa
        lgdt gdt_ptr
        movl $SEL_KDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        ENABLE_LONG_MODE
        ljmp $SEL_KCODE, $bsp_entry64

        /* APs arrive here from the trampoline, in 32-bit mode with the real-mode data segments still loaded. */
        .globl ap_entry32
ap_entry32:
        movl $SEL_KDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        ENABLE_LONG_MODE
        ljmp $SEL_KCODE, $ap_entry64

        .code64
bsp_entry64:
        xorl %edi, %edi
        jmp cpu_enter
ap_entry64:
        /* Claim the index the BSP published; -1 means the BSP gave up on this AP (or it already ran): park. */
        movl $-1, %edi
        xchgl %edi, ap_boot_cpu
        cmpl $-1, %edi
        jne cpu_enter
1:      cli
        hlt
        jmp 1b
cpu_enter:                              /* edi = CPU index */
        movl $SEL_KDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        xorl %eax, %eax
        movl %eax, %fs
        movl %eax, %gs
        lidt idt_ptr
        leal 1(%rdi), %eax
        shll $KSTACK_SHIFT, %eax
        leaq kstacks(%rax), %rsp
        movl %edi, %eax
        shll $4, %eax
        addl $SEL_TSS0, %eax
        ltr %ax
        leal 1(%rdi), %eax
        shll $USTACK_SHIFT, %eax
        leaq ustacks(%rax), %rax
        pushq $(SEL_UDATA | 3)
        pushq %rax
        pushq $0x3002                   /* IOPL=3, IF=0 */
        pushq $(SEL_UCODE | 3)
        pushq $user_start
        iretq

        /* CPL3 from here on */
user_start:
        call cpu_main                   /* edi = CPU index */
        ud2

        .section .data
        .balign 8
        .globl start_info_pa, ap_boot_cpu, entry_tsc
start_info_pa:  .quad 0
entry_tsc:      .quad 0                 /* TSC at the PVH entry point */
ap_boot_cpu:    .long -1                /* index for the next AP; it swaps in -1 when it takes it */

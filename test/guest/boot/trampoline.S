/*
 * AP real-mode trampoline.  The BSP copies [tramp_start, tramp_end) to TRAMPOLINE_ADDR (0x10000) and sends
 * INIT/SIPI/SIPI with vector TRAMPOLINE_ADDR >> 12.  The AP loads the shared GDT, enters 32-bit protected mode
 * and jumps to ap_entry32 in the image, which continues exactly like the BSP.
 */
#include "layout.h"

        .section .rodata.trampoline, "a"
        .globl tramp_start, tramp_end
        .code16
tramp_start:
        cli
        cld
        movw %cs, %ax
        movw %ax, %ds
        lgdtl (tramp_gdt_ptr - tramp_start)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $SEL_CODE32, $ap_entry32
        .balign 8
tramp_gdt_ptr:
        .word GDT_SIZE - 1
        .long gdt
tramp_end:
        .code64

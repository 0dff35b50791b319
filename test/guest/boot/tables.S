/*
 * Static CPU tables, all prebuilt as data so the (emulated) CPL0 boot path never loops:
 * GDT with one TSS descriptor per CPU, IDT pointing at the fixed stubs, the TSS array with its shared I/O
 * bitmap, and identity page tables (2 MiB pages, 0..64 GiB, Present|RW|User at every level).
 */
#include "layout.h"

/* ---- GDT ---- */
        .section .data
        .balign 16
        .globl gdt, gdt_ptr, idt_ptr
gdt:
        .quad 0                         /* 0x00 null */
        .quad 0x00AF9A000000FFFF        /* 0x08 64-bit code, DPL0 */
        .quad 0x00CF92000000FFFF        /* 0x10 data, DPL0 */
        .quad 0x00CFF2000000FFFF        /* 0x18 data, DPL3 */
        .quad 0x00AFFA000000FFFF        /* 0x20 64-bit code, DPL3 */
        .quad 0x00CF9A000000FFFF        /* 0x28 32-bit code, DPL0 */
        .set i, 0
        .rept MAX_CPUS                  /* 0x30 + 16*i: 64-bit available TSS of CPU i */
        .set base, TSS_BASE + i * TSS_STRIDE
        .set lim, IOBITMAP_END - base
        .word lim & 0xFFFF
        .word base & 0xFFFF
        .byte (base >> 16) & 0xFF
        .byte 0x89
        .byte (lim >> 16) & 0x0F
        .byte (base >> 24) & 0xFF
        .long 0
        .long 0
        .set i, i + 1
        .endr
gdt_end:

        .balign 8
        .word 0, 0, 0
gdt_ptr:
        .word GDT_SIZE - 1
        .quad gdt
        .word 0, 0, 0
idt_ptr:
        .word 256 * 16 - 1
        .quad idt

/* ---- IDT: interrupt gates to ISR_BASE + 16*v; vector 3 (the syscall) has DPL3 ---- */
        .balign 16
        .globl idt
idt:
        .set v, 0
        .rept 256
        .set h, ISR_BASE + v * ISR_STRIDE
        .word h & 0xFFFF
        .word SEL_KCODE
        .byte 0
        .if v == VEC_SYSCALL
        .byte 0xEE
        .else
        .byte 0x8E
        .endif
        .word (h >> 16) & 0xFFFF
        .long 0
        .long 0
        .set v, v + 1
        .endr

/* ---- TSS array (fixed address TSS_BASE) and the shared I/O permission bitmap ---- */
        .section .data.tss, "aw"
        .globl tss_array
tss_array:
        .set i, 0
        .rept MAX_CPUS
        .long 0                                 /* reserved */
        .quad kstacks + (i + 1) * KSTACK_SIZE   /* RSP0 */
        .quad 0, 0                              /* RSP1, RSP2 */
        .quad 0                                 /* reserved */
        .quad 0, 0, 0, 0, 0, 0, 0               /* IST1..7 */
        .quad 0                                 /* reserved */
        .word 0                                 /* reserved */
        .word IOBITMAP - (TSS_BASE + i * TSS_STRIDE)  /* I/O map base */
        .fill TSS_STRIDE - 104, 1, 0
        .set i, i + 1
        .endr
iobitmap:
        .fill 8192, 1, 0                        /* every port allowed at CPL3 */
        .byte 0xFF                              /* terminator */

/* ---- identity page tables ---- */
        .section .data.pagetables, "aw"
        .balign 4096
        .globl pml4
pml4:
        .quad pdpt + 0x7                        /* Present | RW | User */
        .fill 511, 8, 0
pdpt:
        .set i, 0
        .rept 64
        .quad pd + i * 4096 + 0x7
        .set i, i + 1
        .endr
        .fill 512 - 64, 8, 0
pd:
        .set i, 0
        .rept 64 * 512
        .quad (i << 21) | 0x87                  /* 2 MiB page, Present | RW | User */
        .set i, i + 1
        .endr

/* ---- stacks (not zeroed, not in the file) ---- */
        .section .stacks, "aw", @nobits
        .balign 4096
        .globl kstacks, ustacks
kstacks:
        .skip MAX_CPUS * KSTACK_SIZE
ustacks:
        .skip MAX_CPUS * USTACK_SIZE

/*
 * Fixed layout of the kiln test guest, shared by the assembly and the C code.
 *
 * The image is linked at 1 MiB (paddr == vaddr, identity-mapped).  Two things sit at fixed addresses so that the
 * IDT and the GDT's TSS descriptors can be prebuilt as plain data (no CPL0 loops at boot):
 *   ISR_BASE  0x100000: 256 interrupt stubs, 16 bytes each (IDT entry v points at ISR_BASE + 16*v)
 *   TSS_BASE  0x101000: MAX_CPUS TSSes, 128 bytes apart, followed by ONE shared I/O permission bitmap
 *                       (8 KiB of zeros = every port allowed, then the 0xFF terminator byte)
 */
#ifndef KILN_GUEST_LAYOUT_H
#define KILN_GUEST_LAYOUT_H

#define MAX_CPUS        64
#define KSTACK_SHIFT    13              /* 8 KiB CPL0 stack per CPU */
#define KSTACK_SIZE     (1 << KSTACK_SHIFT)
#define USTACK_SHIFT    14              /* 16 KiB CPL3 stack per CPU */
#define USTACK_SIZE     (1 << USTACK_SHIFT)

#define IMAGE_BASE      0x100000
#define ISR_BASE        0x100000
#define ISR_STRIDE      16
#define TSS_BASE        0x101000
#define TSS_STRIDE      128
#define IOBITMAP        (TSS_BASE + MAX_CPUS * TSS_STRIDE)
#define IOBITMAP_END    (IOBITMAP + 8192)       /* address of the 0xFF terminator */

/* GDT selectors */
#define SEL_KCODE       0x08            /* 64-bit code, DPL0 */
#define SEL_KDATA       0x10            /* data, DPL0 (also the flat data segment in 32-bit mode) */
#define SEL_UDATA       0x18            /* data, DPL3 */
#define SEL_UCODE       0x20            /* 64-bit code, DPL3 */
#define SEL_CODE32      0x28            /* 32-bit flat code, DPL0 (AP trampoline) */
#define SEL_TSS0        0x30            /* TSS of CPU i: SEL_TSS0 + 16*i */
#define GDT_SIZE        (SEL_TSS0 + 16 * MAX_CPUS)

/* Interrupt vectors */
#define VEC_SYSCALL     3               /* int3, DPL3 gate: the guest's system call */
#define VEC_TIMER       0xF0            /* LAPIC timer (sleep wake-up) */
#define VEC_WAKE        0xF1            /* IPI used to wake sleeping CPUs */
#define VEC_SPURIOUS    0xFF

/* System call numbers (rax), arguments in rdi, rsi; result in rax */
#define SYS_SLEEP       0               /* sleep until TSC >= rdi (may return early) */
#define SYS_HALT        1               /* cli; hlt forever */
#define SYS_TRIPLEFAULT 2               /* load a zero-limit IDT and fault */
#define SYS_RDMSR       3               /* rax = rdmsr(rdi) */
#define SYS_WRMSR       4               /* wrmsr(rdi, rsi) */

#define TRAMPOLINE_ADDR 0x10000         /* AP real-mode trampoline page (SIPI vector 0x10) */
#define LAPIC_DEFAULT   0xFEE00000

#define MSR_EFER        0xC0000080
#define MSR_TSC_DEADLINE 0x6E0

#endif

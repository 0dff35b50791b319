/*
 * CPL0 C code: everything the stubs in boot/isr.S hand over (exceptions, the slow syscalls, stray interrupts).
 * It runs emulated on PVM, so it stays small.  Exceptions print
 *   EXC vec=N err=0x.. rip=0x.. cr2=0x.. cpu=N
 * and halt that CPU; an NMI prints `NMI cpu=N rip=0x..` and returns.
 */
#include "kiln.h"

struct trap_frame {
        u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
        u64 vector, error;
        u64 rip, cs, rflags, rsp, ss;
};

void lapic_oneshot_arm(u64 deadline);

/* Device interrupts seen per vector (virtio drivers with `virtio-irq` check that theirs arrived). */
volatile u32 irq_count[256];
/* For a level-triggered line (PCI INTx): a byte register whose read deasserts it (virtio's ISR), read
 * before the EOI so that the line does not fire again at once. */
u64 irq_ack_read8[256];

static int this_cpu(void)
{
        u16 sel;
        __asm__ volatile("str %0" : "=r"(sel));
        return (sel - SEL_TSS0) >> 4;
}

static __attribute__((noreturn)) void halt_here(void)
{
        for (;;) __asm__ volatile("cli; hlt");
}

static u64 do_syscall(struct trap_frame *f)
{
        switch (f->rax) {
        case SYS_SLEEP:         /* one-shot mode (the TSC-deadline case never gets here) */
                lapic_oneshot_arm(f->rdi);
                __asm__ volatile("sti; hlt; cli" ::: "memory");
                return 0;
        case SYS_HALT:
                halt_here();
        case SYS_TRIPLEFAULT: {
                struct __attribute__((packed)) { u16 limit; u64 base; } z = { 0, 0 };
                __asm__ volatile("lidt %0; ud2" : : "m"(z));
                halt_here();
        }
        case SYS_RDMSR: {
                u32 lo, hi;
                __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"((u32)f->rdi));
                return ((u64)hi << 32) | lo;
        }
        case SYS_WRMSR:
                __asm__ volatile("wrmsr" : : "c"((u32)f->rdi), "a"((u32)f->rsi), "d"((u32)(f->rsi >> 32)));
                return 0;
        default:
                return (u64)-1;
        }
}

void trap(struct trap_frame *f)
{
        char line[LINE_MAX + 1];
        if (f->vector == VEC_SYSCALL && (f->cs & 3) == 3) {
                f->rax = do_syscall(f);
                return;
        }
        if (f->vector == 2) {
                format(line, sizeof(line), "NMI cpu=%d rip=0x%lx", this_cpu(), f->rip);
                say_locked_from_cpl0(line);
                return;
        }
        if (f->vector < 32) {
                u64 cr2;
                __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
                format(line, sizeof(line), "EXC vec=%lu err=0x%lx rip=0x%lx cr2=0x%lx cpu=%d", f->vector, f->error,
                       f->rip, cr2, this_cpu());
                say_locked_from_cpl0(line);
                halt_here();
        }
        /* An external interrupt: count it, quiet a level-triggered source, acknowledge. */
        irq_count[f->vector & 0xFF]++;
        if (irq_ack_read8[f->vector & 0xFF]) (void)*(volatile u8 *)irq_ack_read8[f->vector & 0xFF];
        lapic_eoi();
}

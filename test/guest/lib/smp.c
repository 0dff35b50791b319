/*
 * Starting the APs listed in the MADT: copy the real-mode trampoline to TRAMPOLINE_ADDR (0x10000), publish the
 * AP's index in ap_boot_cpu, and send INIT, SIPI (vector 0x10) through the xAPIC ICR -- all from CPL3.  The AP
 * swaps ap_boot_cpu with -1 when it takes its index; a second SIPI goes out after 10 ms, and after 1 s the BSP
 * takes the index back (so a late AP parks itself) and reports `CPU i failed apic=N`.  The BSP sleep-polls
 * (100 us steps), so the generous timeout costs nothing when the AP is quick; it only absorbs host overload.
 */
#include "kiln.h"

extern volatile u32 ap_boot_cpu;

struct percpu percpu[MAX_CPUS];
int nr_cpus = 1;
int nr_cpus_up = 1;
volatile u32 halt_all;
u64 ready_tsc;

/* Sleep-poll (the CPU we wait for may share a host core with us) until cond(arg) or the deadline. */
static bool wait_until(bool (*cond)(int), int arg, u64 deadline)
{
        for (;;) {
                if (cond(arg)) return true;
                u64 now = rdtsc();
                if (now >= deadline) return cond(arg);
                u64 next = now + us_to_tsc(100);
                sys_sleep(next < deadline ? next : deadline);
        }
}

static bool claimed(int unused) { (void)unused; return READ_ONCE(ap_boot_cpu) == (u32)-1; }
static bool is_up(int cpu) { return READ_ONCE(percpu[cpu].up) != 0; }

void smp_start_aps(void)
{
        if (nr_cpus <= 1) return;
        memcpy((void *)TRAMPOLINE_ADDR, tramp_start, tramp_end - tramp_start);
        for (int i = 1; i < nr_cpus; i++) {
                u32 apic = percpu[i].apic_id;
                u64 t0 = rdtsc();
                __atomic_store_n(&ap_boot_cpu, (u32)i, __ATOMIC_SEQ_CST);
                lapic_send_ipi(apic, 0x4500);                                   /* INIT */
                lapic_send_ipi(apic, 0x4600 | (TRAMPOLINE_ADDR >> 12));         /* SIPI */
                bool ok = wait_until(claimed, 0, t0 + ms_to_tsc(10));
                if (!ok) {
                        lapic_send_ipi(apic, 0x4600 | (TRAMPOLINE_ADDR >> 12));
                        ok = wait_until(claimed, 0, t0 + ms_to_tsc(1000));
                }
                if (!ok) ok = __atomic_exchange_n(&ap_boot_cpu, (u32)-1, __ATOMIC_SEQ_CST) == (u32)-1;
                if (ok) ok = wait_until(is_up, i, rdtsc() + ms_to_tsc(1000));
                if (ok) {
                        nr_cpus_up++;
                } else {
                        percpu[i].failed = 1;
                        say("CPU %d failed apic=%u", i, apic);
                }
        }
}

__attribute__((noreturn)) void halt_everything(void)
{
        WRITE_ONCE(halt_all, 1);
        lapic_wake_all_others();
        sys_halt();
}

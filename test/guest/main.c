/*
 * The kiln test guest's CPL3 main program.
 *
 * BSP: read the boot information, ACPI and the TSC frequency, print the banner, run the workloads' early hooks,
 * start the APs, run the setup hooks, print READY, then run its main loop.  APs: print `CPU i up`, wait for
 * READY, run their main loop.  The main loop calls every workload's tick() and sleeps (LAPIC timer + hlt at
 * CPL0) until the earliest deadline any of them asked for, at most 1 s.
 */
#include "kiln.h"

static volatile u32 cpus_ready;

#define for_each_workload(w) for (const struct workload *w = __workloads_start; w < __workloads_end; w++)

static __attribute__((noreturn)) void cpu_loop(int cpu)
{
        WRITE_ONCE(percpu[cpu].running, 1);
        for (;;) {
                if (READ_ONCE(halt_all)) sys_halt();
                u64 now = rdtsc();
                u64 next = now + ms_to_tsc(1000);
                for_each_workload(w) {
                        if (!w->tick) continue;
                        u64 d = w->tick(cpu, now);
                        if (d < next) next = d;
                }
                percpu[cpu].progress++;
                if (next > rdtsc() && !READ_ONCE(halt_all)) sys_sleep(next);
        }
}

static void print_banner(void)
{
        const int shown = 320;
        int n = (int)strlen(boot.cmdline);
        if (n <= shown) {
                say_n(400, "KILN-GUEST v1 cpus=%d mem=%lu cmdline=\"%s\"", nr_cpus, ram_bytes() >> 20, boot.cmdline);
        } else {
                char c[shown + 1];
                memcpy(c, boot.cmdline, shown - 3);
                memcpy(c + shown - 3, "...", 4);
                say_n(400, "KILN-GUEST v1 cpus=%d mem=%lu cmdline=\"%s\"", nr_cpus, ram_bytes() >> 20, c);
        }
}

static __attribute__((noreturn)) void bsp_main(void)
{
        memset(__bss_start, 0, __bss_end - __bss_start);
        bootinfo_init();
        acpi_init();
        tsc_init();
        lapic_setup_timer_mode();
        lapic_init_cpu();
        nr_cpus = acpi.nr_cpus;
        for (int i = 0; i < nr_cpus; i++) percpu[i].apic_id = acpi.apic_ids[i];

        print_banner();
        say("TSC khz=%lu src=%s", tsc_khz, tsc_src);
        if (timer_deadline_mode) say("TIMER mode=tsc-deadline vector=0x%x", VEC_TIMER);
        else say("TIMER mode=oneshot khz=%lu src=%s vector=0x%x", lapic_timer_khz, lapic_timer_src, VEC_TIMER);
        if (!boot.valid) say("NOTE start_info magic=0x%x: no command line, modules or memory map", boot.magic);
        if (boot.memmap_src[0] != 'p') say("NOTE no memmap in start_info: RAM from %s", boot.memmap_src);
        if (!acpi.rsdp) say("NOTE no ACPI RSDP: one CPU, no poweroff");
        else if (!acpi.madt) say("NOTE no MADT: one CPU");

        for_each_workload(w) if (w->early) w->early();

        say("CPU 0 up apic=%u", percpu[0].apic_id);
        percpu[0].up = 1;
        smp_start_aps();

        for_each_workload(w) if (w->setup) w->setup();

        ready_tsc = rdtsc();
        say("BOOT entry_tsc=%lu ready_tsc=%lu us=%lu", entry_tsc, ready_tsc, (ready_tsc - entry_tsc) * 1000 / tsc_khz);
        say("READY cpus=%d", nr_cpus_up);
        WRITE_ONCE(cpus_ready, 1);
        lapic_wake_all_others();
        cpu_loop(0);
}

static __attribute__((noreturn)) void ap_main(int cpu)
{
        lapic_init_cpu();
        say("CPU %d up apic=%u", cpu, lapic_id());
        WRITE_ONCE(percpu[cpu].up, 1);
        while (!READ_ONCE(cpus_ready)) sys_sleep(rdtsc() + ms_to_tsc(100));
        if (percpu[cpu].failed) sys_halt();
        cpu_loop(cpu);
}

/* Entered at CPL3 from boot/entry.S with the CPU index. */
__attribute__((noreturn)) void cpu_main(int cpu)
{
        if (cpu == 0) bsp_main();
        ap_main(cpu);
}

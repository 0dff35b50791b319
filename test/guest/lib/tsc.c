/*
 * TSC frequency, first match wins:
 *   kvm      CPUID 0x40000000 = "KVMKVMKVM\0\0\0" with max leaf >= 0x40000010: leaf 0x40000010 EAX (kHz)
 *   kvmclock CPUID 0x40000001 EAX bit 3: enable MSR_KVM_SYSTEM_TIME_NEW (0x4b564d01) once and derive the
 *            frequency from the pvclock's tsc_to_system_mul / tsc_shift (as Linux's pvclock_tsc_khz), then disable
 *   cpuid15  CPUID 0x15: crystal Hz (ECX) * EBX / EAX
 *   cpuid16  CPUID 0x16: EAX = base MHz
 *   cmdline  tsckhz=N
 *   pmtimer  10 ms against the ACPI PM timer (FADT PM_TMR_BLK, 3.579545 MHz)
 *   pit      10 ms against PIT channel 0 (reprogrammed to mode 2, read by latch commands; no port 0x61 needed)
 *   guess    2 GHz
 */
#include "kiln.h"

u64 tsc_khz;
const char *tsc_src;

static u64 calibrate_pmtimer(void)
{
        u16 port = (u16)acpi.pm_tmr;
        u32 t0 = inl(port) & 0xFFFFFF, t;
        u64 c0 = rdtsc();
        /* 35795 ticks = 10 ms; the counter is 24 bits wide (at least) */
        do t = inl(port) & 0xFFFFFF;
        while (((t - t0) & 0xFFFFFF) < 35795 && rdtsc() - c0 < 10000000000UL);
        u64 c1 = rdtsc();
        u64 ticks = (t - t0) & 0xFFFFFF;
        if (ticks < 35795 || ticks > 40000) return 0;
        return (c1 - c0) * 3579545 / ticks / 1000;
}

static u64 calibrate_pit(void)
{
        /* Channel 0, mode 2, reload 65536; count 11932 ticks of 1.193182 MHz = 10 ms by latching the counter. */
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
        outb(0x43, 0x00);
        u32 prev = inb(0x40);
        prev |= (u32)inb(0x40) << 8;
        u64 c0 = rdtsc(), ticks = 0;
        for (int i = 0; i < 100000 && ticks < 11932; i++) {
                outb(0x43, 0x00);
                u32 cur = inb(0x40);
                cur |= (u32)inb(0x40) << 8;
                ticks += (prev - cur) & 0xFFFF;
                prev = cur;
        }
        u64 c1 = rdtsc();
        if (ticks < 11932 || ticks > 20000) return 0;   /* no PIT (reads 0xFFFF) or implausible */
        return (c1 - c0) * 1193182 / ticks / 1000;
}

static u8 pvclock[32] __attribute__((aligned(64)));

static u64 kvmclock_khz(void)
{
        volatile u32 *version = (volatile u32 *)pvclock;
        sys_wrmsr(0x4b564d01, (u64)pvclock | 1);
        u64 t0 = rdtsc();
        while ((*version == 0 || (*version & 1)) && rdtsc() - t0 < 100000000UL) cpu_relax();
        u32 mul = *(volatile u32 *)(pvclock + 24);
        s64 shift = *(volatile signed char *)(pvclock + 28);
        sys_wrmsr(0x4b564d01, 0);
        if (!mul) return 0;
        u64 khz = (1000000UL << 32) / mul;
        return shift < 0 ? khz << -shift : khz >> shift;
}

void tsc_init(void)
{
        u32 a, b, c, d;
        cpuid(0x40000000, 0, &a, &b, &c, &d);
        if (b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d && a >= 0x40000010) {
                u32 a2, b2, c2, d2;
                cpuid(0x40000010, 0, &a2, &b2, &c2, &d2);
                if (a2) {
                        tsc_khz = a2;
                        tsc_src = "kvm";
                        return;
                }
        }
        if (b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d && a >= 0x40000001) {
                cpuid(0x40000001, 0, &a, &b, &c, &d);
                u64 k;
                if ((a & (1u << 3)) && (k = kvmclock_khz())) {
                        tsc_khz = k;
                        tsc_src = "kvmclock";
                        return;
                }
        }
        u32 max;
        cpuid(0, 0, &max, &b, &c, &d);
        if (max >= 0x15) {
                cpuid(0x15, 0, &a, &b, &c, &d);
                if (a && b && c) {
                        tsc_khz = (u64)c * b / a / 1000;
                        tsc_src = "cpuid15";
                        return;
                }
        }
        if (max >= 0x16) {
                cpuid(0x16, 0, &a, &b, &c, &d);
                if (a & 0xFFFF) {
                        tsc_khz = (u64)(a & 0xFFFF) * 1000;
                        tsc_src = "cpuid16";
                        return;
                }
        }
        u64 k = cmdline_u64("tsckhz", 0);
        if (k) {
                tsc_khz = k;
                tsc_src = "cmdline";
                return;
        }
        if (acpi.pm_tmr && (k = calibrate_pmtimer())) {
                tsc_khz = k;
                tsc_src = "pmtimer";
                return;
        }
        if ((k = calibrate_pit())) {
                tsc_khz = k;
                tsc_src = "pit";
                return;
        }
        tsc_khz = 2000000;
        tsc_src = "guess";
}

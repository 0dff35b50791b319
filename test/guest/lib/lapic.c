/*
 * Local APIC (xAPIC MMIO at 0xFEE00000, user-mapped, so all of this runs at CPL3 except the timer arm in the
 * sleep syscall).  Sleeping = arm the LAPIC timer (TSC-deadline mode when CPUID.1:ECX[24], else one-shot
 * with divide-by-1) and `sti; hlt` at CPL0; the interrupt (VEC_TIMER) just EOIs and returns.
 */
#include "kiln.h"

#define LAPIC_ID        0x020
#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0B0
#define LAPIC_SVR       0x0F0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3E0

u8 timer_deadline_mode;
u64 lapic_timer_khz;
const char *lapic_timer_src;

static u64 lapic_base(void) { return acpi.lapic_base ? acpi.lapic_base : LAPIC_DEFAULT; }
static u32 rd(u32 reg) { return mmio_read32(lapic_base() + reg); }
static void wr(u32 reg, u32 v) { mmio_write32(lapic_base() + reg, v); }

u32 lapic_id(void) { return mmio_read32(LAPIC_DEFAULT + LAPIC_ID) >> 24; }
void lapic_eoi(void) { wr(LAPIC_EOI, 0); }

void lapic_setup_timer_mode(void)
{
        u32 a, b, c, d;
        cpuid(1, 0, &a, &b, &c, &d);
        if (c & (1u << 24)) {
                timer_deadline_mode = 1;
                lapic_timer_src = "tsc-deadline";
                return;
        }
        cpuid(0x40000000, 0, &a, &b, &c, &d);
        if (b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d && a >= 0x40000010) {
                cpuid(0x40000010, 0, &a, &b, &c, &d);
                if (b) {
                        lapic_timer_khz = b;
                        lapic_timer_src = "oneshot-kvm";
                        return;
                }
        }
        /* Calibrate 1 ms of the divide-by-1 count-down against the TSC (masked, one-shot). */
        wr(LAPIC_TIMER_DIV, 0xB);
        wr(LAPIC_LVT_TIMER, (1u << 16) | VEC_TIMER);
        wr(LAPIC_TIMER_INIT, 0xFFFFFFFF);
        u64 t0 = rdtsc();
        u32 c0 = rd(LAPIC_TIMER_CUR);
        while (rdtsc() - t0 < ms_to_tsc(1)) cpu_relax();
        u32 c1 = rd(LAPIC_TIMER_CUR);
        u64 t1 = rdtsc();
        wr(LAPIC_TIMER_INIT, 0);
        lapic_timer_khz = (u64)(c0 - c1) * tsc_khz / (t1 - t0);
        if (!lapic_timer_khz) lapic_timer_khz = 1000000;
        lapic_timer_src = "oneshot-calibrated";
}

void lapic_init_cpu(void)
{
        wr(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
        wr(LAPIC_TPR, 0);
        wr(LAPIC_LVT_LINT0, 1u << 16);  /* masked: no 8259 (ExtINT) interrupts, KVM unmasks it on the BSP */
        if (timer_deadline_mode) {
                wr(LAPIC_LVT_TIMER, (2u << 17) | VEC_TIMER);
        } else {
                wr(LAPIC_TIMER_DIV, 0xB);
                wr(LAPIC_LVT_TIMER, VEC_TIMER);
        }
}

void lapic_send_ipi(u32 apic, u32 icr_low)
{
        for (int i = 0; i < 1000 && (rd(LAPIC_ICR_LO) & (1u << 12)); i++) cpu_relax();
        wr(LAPIC_ICR_HI, apic << 24);
        wr(LAPIC_ICR_LO, icr_low);
}

void lapic_wake_all_others(void)
{
        wr(LAPIC_ICR_LO, (3u << 18) | (1u << 14) | VEC_WAKE);  /* fixed, all excluding self */
}

/* One-shot sleep, called by the syscall at CPL0 when TSC-deadline mode is not available. */
void lapic_oneshot_arm(u64 deadline)
{
        u64 now = rdtsc();
        u64 delta = deadline > now ? deadline - now : 1;
        u64 count = delta * lapic_timer_khz / tsc_khz;
        if (count < 1) count = 1;
        if (count > 0xFFFFFFFF) count = 0xFFFFFFFF;
        wr(LAPIC_TIMER_INIT, (u32)count);
}

void sleep_until(u64 deadline)
{
        while (rdtsc() < deadline) sys_sleep(deadline);
}

void sleep_ms(u64 ms) { sleep_until(rdtsc() + ms_to_tsc(ms)); }

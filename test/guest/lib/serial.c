/*
 * COM1 (0x3F8) output.  Every line is formatted first and then written under one spinlock, so lines from
 * different CPUs never interleave.  No LSR polling before THR writes: each port access is a VM exit, and both
 * kiln's and QEMU's UART accept writes at any time.  Lines end in a single '\n'.
 */
#include "kiln.h"

#define COM1 0x3F8

/*
 * A ticket lock: fair, so a CPU printing in a tight loop cannot starve the others.  A waiter spins for 20 us,
 * then sleeps in 100 us steps (CPL3 only): a line takes milliseconds of VM exits, and with more vCPUs than host
 * cores a spinning waiter would steal time from the holder.
 */
static volatile u32 next_ticket, now_serving;

static void lock_acquire(void)
{
        u32 t = __atomic_fetch_add(&next_ticket, 1, __ATOMIC_ACQUIRE);
        u64 start = rdtsc();
        while (__atomic_load_n(&now_serving, __ATOMIC_ACQUIRE) != t) {
                u64 now = rdtsc();
                if (tsc_khz && now - start > us_to_tsc(20)) sys_sleep(now + us_to_tsc(100));
                else cpu_relax();
        }
}

static bool lock_try(void)
{
        u32 t = __atomic_load_n(&now_serving, __ATOMIC_ACQUIRE);
        u32 expected = t;
        return __atomic_compare_exchange_n(&next_ticket, &expected, t + 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static void lock_release(void) { __atomic_store_n(&now_serving, now_serving + 1, __ATOMIC_RELEASE); }

static void emit(const char *buf, int n)
{
        for (int i = 0; i < n; i++) outb(COM1, (u8)buf[i]);
        outb(COM1, '\n');
}

void serial_write_line(const char *buf, int n)
{
        lock_acquire();
        emit(buf, n);
        lock_release();
}

/* From an exception handler: the lock may be held by the CPU that faulted, so give up waiting after a while. */
void say_locked_from_cpl0(const char *line)
{
        u64 timeout = tsc_khz ? ms_to_tsc(50) : 100000000UL, t0 = rdtsc();
        bool got;
        while (!(got = lock_try()) && rdtsc() - t0 < timeout) cpu_relax();
        emit(line, (int)strlen(line));
        if (got) lock_release();
}

void say_n(int max, const char *fmt, ...)
{
        char buf[512];
        if (max > (int)sizeof(buf) - 1) max = sizeof(buf) - 1;
        va_list ap;
        va_start(ap, fmt);
        int n = vformat(buf, max + 1, fmt, ap);
        va_end(ap);
        serial_write_line(buf, n);
}

void say(const char *fmt, ...)
{
        char buf[LINE_MAX + 1];
        va_list ap;
        va_start(ap, fmt);
        int n = vformat(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        serial_write_line(buf, n);
}

bool serial_rx_ready(void) { return inb(COM1 + 5) & 1; }
u8 serial_rx(void) { return inb(COM1); }

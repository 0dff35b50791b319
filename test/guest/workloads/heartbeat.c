/*
 * `hb=MS`: CPU 0 prints `HB n=K tsc=T c=c0,c1,...` every MS milliseconds (first one MS after READY); c_i is
 * CPU i's main-loop iteration count.  Counters that do not fit in the 100-character line continue on
 * `HB+ n=K from=I c=cI,...` lines.  Every other CPU wakes at least every MS ms, so idle CPUs count too.
 */
#include "kiln.h"

static u64 period;
static u64 next_hb;
static u64 count;

static void setup(void) { period = ms_to_tsc(cmdline_u64("hb", 0)); }

static void print_hb(u64 now)
{
        char line[LINE_MAX + 1];
        count++;
        int n = format(line, sizeof(line), "HB n=%lu tsc=%lu c=", count, now);
        int first = 1;
        for (int i = 0; i < nr_cpus; i++) {
                char num[24];
                int k = format(num, sizeof(num), "%s%lu", first ? "" : ",", READ_ONCE(percpu[i].progress));
                if (n + k > LINE_MAX) {
                        serial_write_line(line, n);
                        n = format(line, sizeof(line), "HB+ n=%lu from=%d c=", count, i);
                        k = format(num, sizeof(num), "%lu", READ_ONCE(percpu[i].progress));
                }
                memcpy(line + n, num, k);
                n += k;
                first = 0;
        }
        serial_write_line(line, n);
}

static u64 tick(int cpu, u64 now)
{
        if (!period) return U64_MAX;
        if (cpu != 0) return now + period;
        if (!next_hb) next_hb = now + period;
        if (now >= next_hb) {
                print_hb(now);
                next_hb += period;
                if (next_hb <= now) next_hb = now + period;
        }
        return next_hb;
}

WORKLOAD(40, heartbeat, .setup = setup, .tick = tick);

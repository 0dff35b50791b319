/*
 * `dirty=SIZE|all`: the dirtier.  The area is the first SIZE bytes (or all) of usable RAM: memmap type-1 pages
 * at or above the end of the guest image (so the low 1 MiB, the AP trampoline, the image, its page tables and
 * stacks are skipped) and below 64 GiB (the identity map's end), minus the PVH modules and the start_info,
 * command line, module list and memory map.  Its pages are split evenly, in address order, among the CPUs that
 * came up; each CPU runs passes over its slice, 512 pages per main-loop iteration:
 *   pass K, per page: VERIFY the two words written in pass K-1 (K > 1), then REWRITE them for pass K:
 *     word at offset 0           = stamp(seed, K, pfn)
 *     word at offset off(pfn)    = ~stamp(seed, K, pfn),  off(pfn) = 8 + 8 * (mix(pfn) % 511)   (8..4088)
 *   stamp(seed, K, pfn) = mix(seed + K * 0x9E3779B97F4A7C15 + pfn * 0xD1B54A32D192ED03), mix = splitmix64's
 * Lines: `DIRTIER pages=P seed=0x..` and `DIRTY cpu=i start=0x.. end=0x.. pages=P` per contiguous range per CPU
 * before READY; `PASS cpu=i n=K bad=B pages=P` after pass K when K % passlog == 0, B > 0, or K == passes;
 * `BAD cpu=i addr=0x.. want=0x.. got=0x..` for the first 4 bad pages of a pass (addr = the word that differs).
 * Keys: passlog=N (default 1), dirtydelay=MS between passes (default 0), passes=N (stop after N), seed=N.
 */
#include "kiln.h"

#define CHUNK_PAGES 512
#define SLICE_MAX 32
#define BADLOG_MAX 4
#define RANGES_MAX (MEMMAP_MAX + 2 * (MODULES_MAX + 4))
#define MAP_END (64UL << 30)

struct range { u64 start, end; };

struct dstate {
        int nr;
        struct range r[SLICE_MAX];
        u64 pages;
        volatile u64 passes_done;
        int ri;
        u64 cur;
        u64 bad;
        int badlog;
        u64 next_at;
        bool done;
} __attribute__((aligned(64)));

static struct dstate ds[MAX_CPUS];
static bool active;
static u64 seed, passlog, delay_tsc, pass_limit;

static inline u64 mix(u64 x)
{
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9UL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebUL;
        x ^= x >> 31;
        return x;
}
static inline u64 stamp(u64 pass, u64 pfn) { return mix(seed + pass * 0x9E3779B97F4A7C15UL + pfn * 0xD1B54A32D192ED03UL); }
static inline u64 page_off(u64 pfn) { return 8 + 8 * (((mix(pfn) >> 32) * 511) >> 32); }

static struct range ranges[RANGES_MAX];
static int nr_ranges;

static void add_range(u64 s, u64 e)
{
        if (e > s && nr_ranges < RANGES_MAX) ranges[nr_ranges].start = s, ranges[nr_ranges].end = e, nr_ranges++;
}

static void exclude(u64 s, u64 e)
{
        s = ALIGN_DOWN(s, 4096);
        e = ALIGN_UP(e, 4096);
        if (e <= s) return;
        int n = nr_ranges;
        for (int i = 0; i < n; i++) {
                struct range r = ranges[i];
                if (e <= r.start || s >= r.end) continue;
                ranges[i].end = ranges[i].start;        /* emptied; the pieces are appended */
                add_range(r.start, s < r.end ? s : r.end);
                add_range(e > r.start ? e : r.start, r.end);
        }
}

static void sort_ranges(void)
{
        int k = 0;
        for (int i = 0; i < nr_ranges; i++)
                if (ranges[i].end > ranges[i].start) ranges[k++] = ranges[i];
        nr_ranges = k;
        for (int i = 1; i < nr_ranges; i++)
                for (int j = i; j > 0 && ranges[j].start < ranges[j - 1].start; j--) {
                        struct range t = ranges[j];
                        ranges[j] = ranges[j - 1];
                        ranges[j - 1] = t;
                }
}

static void assign(int cpu, u64 s, u64 e)
{
        struct dstate *st = &ds[cpu];
        if (st->nr && st->r[st->nr - 1].end == s) {
                st->r[st->nr - 1].end = e;
        } else if (st->nr < SLICE_MAX) {
                st->r[st->nr].start = s;
                st->r[st->nr].end = e;
                st->nr++;
        } else {
                return;
        }
        st->pages += (e - s) >> 12;
}

static void setup(void)
{
        const char *v;
        int l;
        u64 limit;
        if (!cmdline_str("dirty", &v, &l)) return;
        if (l == 3 && memcmp(v, "all", 3) == 0) limit = U64_MAX;
        else if (!parse_size(v, l, &limit) || !limit) return;

        u64 lo = ALIGN_UP((u64)_end, 4096);
        for (int i = 0; i < boot.nr_memmap; i++) {
                if (boot.memmap[i].type != 1) continue;
                u64 s = ALIGN_UP(MAX(boot.memmap[i].addr, lo), 4096);
                u64 e = ALIGN_DOWN(MIN(boot.memmap[i].addr + boot.memmap[i].size, MAP_END), 4096);
                add_range(s, e);
        }
        for (int i = 0; i < boot.nr_modules; i++) exclude(boot.modules[i].paddr, boot.modules[i].paddr + boot.modules[i].size);
        exclude(boot.start_info_pa, boot.start_info_pa + 56);
        exclude(boot.cmdline_paddr, boot.cmdline_paddr + CMDLINE_MAX);
        exclude(boot.modlist_paddr, boot.modlist_paddr + 32 * MODULES_MAX);
        exclude(boot.memmap_paddr, boot.memmap_paddr + 24 * MEMMAP_MAX);
        sort_ranges();

        u64 total = 0;
        for (int i = 0; i < nr_ranges; i++) {
                u64 pages = (ranges[i].end - ranges[i].start) >> 12;
                if (limit != U64_MAX && total + pages > (limit >> 12)) {
                        pages = (limit >> 12) - total;
                        ranges[i].end = ranges[i].start + (pages << 12);
                }
                total += pages;
        }

        int ncpu = 0, ids[MAX_CPUS];
        for (int i = 0; i < nr_cpus; i++)
                if (percpu[i].up) ids[ncpu++] = i;
        /* CPU ids[k] gets pages [k*total/ncpu, (k+1)*total/ncpu) of the concatenated ranges. */
        int ri = 0;
        u64 s = nr_ranges ? ranges[0].start : 0;
        for (int k = 0; k < ncpu && total; k++) {
                u64 want = (u64)(k + 1) * total / ncpu - (u64)k * total / ncpu;
                while (want && ri < nr_ranges) {
                        u64 avail = (ranges[ri].end - s) >> 12;
                        if (!avail) {
                                if (++ri < nr_ranges) s = ranges[ri].start;
                                continue;
                        }
                        u64 n = MIN(want, avail);
                        assign(ids[k], s, s + (n << 12));
                        s += n << 12;
                        want -= n;
                }
        }

        seed = cmdline_u64("seed", rdtsc());
        passlog = cmdline_u64("passlog", 1);
        if (!passlog) passlog = 1;
        delay_tsc = ms_to_tsc(cmdline_u64("dirtydelay", 0));
        pass_limit = cmdline_u64("passes", 0);
        active = total > 0;
        say("DIRTIER pages=%lu seed=0x%lx", total, seed);
        for (int k = 0; k < ncpu; k++) {
                struct dstate *st = &ds[ids[k]];
                for (int j = 0; j < st->nr; j++)
                        say("DIRTY cpu=%d start=0x%lx end=0x%lx pages=%lu", ids[k], st->r[j].start, st->r[j].end,
                            (st->r[j].end - st->r[j].start) >> 12);
                st->cur = st->nr ? st->r[0].start : 0;
        }
}

static u64 tick(int cpu, u64 now)
{
        struct dstate *st = &ds[cpu];
        if (!active || !st->pages || st->done) return U64_MAX;
        if (now < st->next_at) return st->next_at;
        u64 pass = st->passes_done + 1;
        for (int n = 0; n < CHUNK_PAGES; n++) {
                u64 a = st->cur, pfn = a >> 12, off = page_off(pfn);
                volatile u64 *w0 = (volatile u64 *)a, *w1 = (volatile u64 *)(a + off);
                if (pass > 1) {
                        u64 want = stamp(pass - 1, pfn);
                        u64 g0 = *w0, g1 = *w1;
                        if (g0 != want || g1 != ~want) {
                                st->bad++;
                                if (st->badlog++ < BADLOG_MAX) {
                                        if (g0 != want) say("BAD cpu=%d addr=0x%lx want=0x%lx got=0x%lx", cpu, a, want, g0);
                                        else say("BAD cpu=%d addr=0x%lx want=0x%lx got=0x%lx", cpu, a + off, ~want, g1);
                                }
                        }
                }
                u64 s = stamp(pass, pfn);
                *w0 = s;
                *w1 = ~s;
                st->cur += 4096;
                if (st->cur >= st->r[st->ri].end) {
                        if (++st->ri < st->nr) {
                                st->cur = st->r[st->ri].start;
                                continue;
                        }
                        /* pass complete */
                        if (pass % passlog == 0 || st->bad || pass == pass_limit)
                                say("PASS cpu=%d n=%lu bad=%lu pages=%lu", cpu, pass, st->bad, st->pages);
                        st->bad = 0;
                        st->badlog = 0;
                        st->ri = 0;
                        st->cur = st->r[0].start;
                        WRITE_ONCE(st->passes_done, pass);
                        if (pass_limit && pass >= pass_limit) {
                                st->done = true;
                                return U64_MAX;
                        }
                        if (delay_tsc) {
                                st->next_at = rdtsc() + delay_tsc;
                                return st->next_at;
                        }
                        return 0;
                }
        }
        return 0;
}

bool dirtier_active(void) { return active; }

bool dirtier_all_done(u64 passes)
{
        for (int i = 0; i < nr_cpus; i++)
                if (percpu[i].up && ds[i].pages && READ_ONCE(ds[i].passes_done) < passes) return false;
        return true;
}

WORKLOAD(30, dirtier, .setup = setup, .tick = tick);

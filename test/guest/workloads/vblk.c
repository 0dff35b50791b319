/*
 * `vblk...`: a virtio-blk driver's worth of tests on every virtio-blk device (or only `vblk-dev=N`).
 *
 * Before READY, each disk is set up and described:
 *   VBLK dev=D disk=K cap=SECTORS ro=0|1 flush=0|1 serial=ID features=0x..
 * After READY, CPU 0 runs, per disk, in this order, whatever the command line asks for:
 *   vblk-write=START:COUNT  write the pattern to COUNT sectors (64 KiB requests), flush, read back, verify:
 *                           VBLK-WRITE dev=D status=ok|ioerr|unsupp|timeout sectors=N
 *                           VBLK-FLUSH dev=D status=..   VBLK-VERIFY dev=D sectors=N bad=B
 *   vblk-zero=START:COUNT   write-zeroes, then read back:   VBLK-ZERO dev=D status=.. bad=B
 *   vblk-read=START:COUNT   read and hash:  VBLK-READ dev=D start=S sectors=N status=.. fnv1a64=0x<16 hex>
 *   vblk-bench=seqread|seqwrite|randread|randwrite (vblk-bs=BYTES vblk-qd=N vblk-mb=MiB vblk-reqs=N):
 *                           VBLK-BENCH dev=D mode=M bs=B qd=Q reqs=N bytes=N us=N errors=E
 *   then VBLK-DONE dev=D (and VIRTIO-IRQ with `virtio-irq`).
 *   vblk-loop=START:COUNT   afterwards, forever: pass K writes the pattern with seed K, flushes, reads back and
 *                           verifies:  VBLK-PASS dev=D n=K bad=B  (for migration tests: I/O keeps going)
 * The pattern: 32-bit word w of sector s on disk K is fmix32((s*128 + w) ^ seed*0x9e3779b9 ^ K*0x85ebca6b)
 * (murmur3's finalizer), seed from `vblk-seed=N` (default 1).
 */
#include "virtio.h"

#define SECTOR          512
#define CHUNK           (64 * 1024)
#define T_IN            0
#define T_OUT           1
#define T_FLUSH         4
#define T_GET_ID        8
#define T_WRITE_ZEROES  13
#define F_RO            5
#define F_BLK_SIZE      6
#define F_FLUSH         9
#define F_DISCARD       13
#define F_WRITE_ZEROES  14
#define BENCH_QD_MAX    64

struct req_hdr { u32 type, reserved; u64 sector; };

struct disk {
        struct vdev *d;
        int k;
        u64 cap;
        bool ro;
        struct req_hdr *hdr;    /* one per queue slot, QD1 tests use [0] */
        u8 *status;
        u8 *buf, *buf2;
        /* vblk-loop */
        u64 loop_pass, loop_bad;
};

static struct disk disks[VIRTIO_MAX_DEVS];
static int ndisks;
static bool active, done;
static u32 seed;

static inline u32 fmix32(u32 h)
{
        h ^= h >> 16;
        h *= 0x85ebca6bu;
        h ^= h >> 13;
        h *= 0xc2b2ae35u;
        h ^= h >> 16;
        return h;
}

static u32 pattern(u32 s, int k, u64 sector, u32 w) { return fmix32((u32)(sector * 128 + w) ^ (s * 0x9e3779b9u) ^ ((u32)k * 0x85ebca6bu)); }

static const char *status_name(int s)
{
        switch (s) {
        case 0: return "ok";
        case 1: return "ioerr";
        case 2: return "unsupp";
        case -2: return "timeout";
        default: return "bad";
        }
}

/* One request, waited for: the status byte, or -2 on timeout. */
static int blk_io(struct disk *b, u32 type, u64 sector, void *data, u32 len)
{
        struct vq *q = &b->d->vq[0];
        b->hdr[0].type = type;
        b->hdr[0].reserved = 0;
        b->hdr[0].sector = sector;
        b->status[0] = 0xFF;
        u64 a[3] = {(u64)&b->hdr[0], (u64)data, (u64)&b->status[0]};
        u32 l[3] = {sizeof(struct req_hdr), len, 1};
        int n_out, n_in;
        if (type == T_OUT || type == T_WRITE_ZEROES) n_out = 2, n_in = 1;
        else if (len) n_out = 1, n_in = 2;
        else { n_out = 1, n_in = 1; a[1] = a[2]; l[1] = 1; }
        if (vq_add(q, a, l, n_out, n_in) < 0) return -3;
        vq_kick(q);
        if (vq_wait(b->d, q, NULL, 10000) < 0) return -2;
        return b->status[0];
}

static bool range(const char *key, u64 *start, u64 *count)
{
        const char *v;
        int l;
        if (!cmdline_str(key, &v, &l)) return false;
        int c = 0;
        while (c < l && v[c] != ':') c++;
        return c < l && parse_u64(v, c, start) && parse_u64(v + c + 1, l - c - 1, count);
}

static void fill(struct disk *b, u32 s, u64 sector, u32 nsec, u8 *buf)
{
        u32 *w = (u32 *)buf;
        for (u32 i = 0; i < nsec; i++)
                for (u32 j = 0; j < 128; j++) w[i * 128 + j] = pattern(s, b->k, sector + i, j);
}

static u32 check(struct disk *b, u32 s, u64 sector, u32 nsec, const u8 *buf)
{
        const u32 *w = (const u32 *)buf;
        u32 bad = 0;
        for (u32 i = 0; i < nsec; i++) {
                for (u32 j = 0; j < 128; j++) {
                        if (w[i * 128 + j] != pattern(s, b->k, sector + i, j)) {
                                bad++;
                                break;
                        }
                }
        }
        return bad;
}

/* Write the pattern over [start, start+count), flush, read back; returns bad sectors (or -1 on an I/O error). */
static s64 write_verify(struct disk *b, u32 s, u64 start, u64 count, bool print)
{
        int st = 0;
        u64 n;
        for (n = 0; n < count && st == 0;) {
                u32 k = (u32)MIN(count - n, CHUNK / SECTOR);
                fill(b, s, start + n, k, b->buf);
                st = blk_io(b, T_OUT, start + n, b->buf, k * SECTOR);
                if (st == 0) n += k;
        }
        if (print) say("VBLK-WRITE dev=%d status=%s sectors=%lu", b->d->idx, status_name(st), n);
        if (st != 0) return -1;
        int fs = blk_io(b, T_FLUSH, 0, NULL, 0);
        if (print) say("VBLK-FLUSH dev=%d status=%s", b->d->idx, status_name(fs));
        u64 bad = 0;
        for (n = 0; n < count;) {
                u32 k = (u32)MIN(count - n, CHUNK / SECTOR);
                memset(b->buf2, 0, k * SECTOR);
                st = blk_io(b, T_IN, start + n, b->buf2, k * SECTOR);
                if (st != 0) break;
                bad += check(b, s, start + n, k, b->buf2);
                n += k;
        }
        if (print) say("VBLK-VERIFY dev=%d sectors=%lu bad=%lu status=%s", b->d->idx, n, bad, status_name(st));
        return st == 0 ? (s64)bad : -1;
}

static void zero_test(struct disk *b, u64 start, u64 count)
{
        struct { u64 sector; u32 num, flags; } seg = {start, (u32)count, 0};
        memcpy(b->buf, &seg, sizeof(seg));
        int st = blk_io(b, T_WRITE_ZEROES, 0, b->buf, sizeof(seg));
        u64 bad = 0;
        for (u64 n = 0; st == 0 && n < count;) {
                u32 k = (u32)MIN(count - n, CHUNK / SECTOR);
                memset(b->buf2, 0xA5, k * SECTOR);
                if (blk_io(b, T_IN, start + n, b->buf2, k * SECTOR) != 0) { bad = count; break; }
                for (u32 i = 0; i < k; i++) {
                        const u64 *w = (const u64 *)(b->buf2 + i * SECTOR);
                        for (int j = 0; j < 64; j++) if (w[j]) { bad++; break; }
                }
                n += k;
        }
        say("VBLK-ZERO dev=%d status=%s bad=%lu", b->d->idx, status_name(st), bad);
}

static void read_test(struct disk *b, u64 start, u64 count)
{
        u64 h = FNV1A64_INIT, n;
        int st = 0;
        for (n = 0; n < count;) {
                u32 k = (u32)MIN(count - n, CHUNK / SECTOR);
                st = blk_io(b, T_IN, start + n, b->buf, k * SECTOR);
                if (st != 0) break;
                h = fnv1a64_update(h, b->buf, k * SECTOR);
                n += k;
        }
        say("VBLK-READ dev=%d start=%lu sectors=%lu status=%s fnv1a64=0x%016lx", b->d->idx, start, n, status_name(st), h);
}

/* Throughput: keep `qd` requests of `bs` bytes in flight, sequential or random over the disk. */
static void bench(struct disk *b, const char *mode, int mlen)
{
        bool write = mlen >= 5 && memcmp(mode + mlen - 5, "write", 5) == 0;
        bool rnd = mode[0] == 'r';
        u64 bs = cmdline_u64("vblk-bs", rnd ? 4096 : 256 * 1024);
        u64 qd = MIN(cmdline_u64("vblk-qd", rnd ? 32 : 4), BENCH_QD_MAX);
        u64 total = rnd ? cmdline_u64("vblk-reqs", 20000) : cmdline_u64("vblk-mb", 256) * 1024 * 1024 / bs;
        u64 span = b->cap * SECTOR / bs;
        struct vq *q = &b->d->vq[0];
        qd = MIN(qd, q->num / 3);
        if (bs % SECTOR || !span || !qd) { say("NOTE vblk-bench: bad parameters"); return; }
        u8 *bufs = virtio_alloc(bs * qd, 4096);
        struct req_hdr *hdrs = virtio_alloc(sizeof(struct req_hdr) * qd, 64);
        u8 *sts = virtio_alloc(qd, 64);
        if (!bufs || !hdrs || !sts) return;
        int slot_of[VQ_SIZE_MAX];
        u64 issued = 0, completed = 0, errors = 0, pos = 0, rng = 0x2545F4914F6CDD1DUL ^ seed;
        u64 t0 = rdtsc();
        u64 free_slots = qd;
        u64 slots[BENCH_QD_MAX];
        for (u64 s = 0; s < qd; s++) slots[s] = s;
        while (completed < total) {
                bool added = false;
                while (free_slots && issued < total) {
                        u64 s = slots[--free_slots];
                        u64 blk;
                        if (rnd) {
                                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                                blk = rng % span;
                        } else {
                                blk = pos++ % span;
                        }
                        hdrs[s].type = write ? T_OUT : T_IN;
                        hdrs[s].reserved = 0;
                        hdrs[s].sector = blk * (bs / SECTOR);
                        sts[s] = 0xFF;
                        u64 a[3] = {(u64)&hdrs[s], (u64)(bufs + s * bs), (u64)&sts[s]};
                        u32 l[3] = {sizeof(struct req_hdr), (u32)bs, 1};
                        int h = vq_add(q, a, l, write ? 2 : 1, write ? 1 : 2);
                        if (h < 0) { free_slots++; break; }
                        slot_of[h] = (int)s;
                        issued++;
                        added = true;
                }
                if (added) vq_kick(q);
                int h = q->irq ? vq_wait(b->d, q, NULL, 10000) : vq_get_used(q, NULL);
                if (h < 0) {
                        if (q->irq) { say("NOTE vblk-bench: timeout"); break; }
                        cpu_relax();
                        continue;
                }
                do {
                        u64 s = (u64)slot_of[h];
                        if (sts[s] != 0) errors++;
                        slots[free_slots++] = s;
                        completed++;
                } while ((h = vq_get_used(q, NULL)) >= 0);
        }
        u64 us = (rdtsc() - t0) * 1000 / tsc_khz;
        char m[16];
        int ml = MIN(mlen, 15);
        memcpy(m, mode, ml);
        m[ml] = 0;
        say("VBLK-BENCH dev=%d mode=%s bs=%lu qd=%lu reqs=%lu bytes=%lu us=%lu errors=%lu", b->d->idx, m, bs, qd, completed,
            completed * bs, us, errors);
}

static bool wanted(const char *keys[])
{
        for (int i = 0; keys[i]; i++) if (cmdline_has(keys[i])) return true;
        return false;
}

static void setup(void)
{
        static const char *keys[] = {"vblk", "vblk-write", "vblk-read", "vblk-zero", "vblk-bench", "vblk-loop", NULL};
        if (!wanted(keys)) return;
        virtio_probe();
        seed = (u32)cmdline_u64("vblk-seed", 1);
        u64 only = cmdline_u64("vblk-dev", ~0UL);
        for (int i = 0; i < nr_vdevs; i++) {
                struct vdev *d = &vdevs[i];
                if (d->type != VIRTIO_ID_BLOCK || (only != ~0UL && only != (u64)i)) continue;
                struct disk *b = &disks[ndisks];
                b->d = d;
                b->k = ndisks;
                u64 want = (1UL << F_RO) | (1UL << F_BLK_SIZE) | (1UL << F_FLUSH) | (1UL << F_DISCARD) | (1UL << F_WRITE_ZEROES);
                if (!virtio_negotiate(d, want) || !virtio_setup_vq(d, 0, 128)) continue;
                virtio_driver_ok(d);
                if (!d->ok) continue;
                ndisks++;
                b->cap = virtio_cfg_read(d, 0, 4) | (u64)virtio_cfg_read(d, 4, 4) << 32;
                b->ro = (d->features >> F_RO) & 1;
                b->hdr = virtio_alloc(sizeof(struct req_hdr), 64);
                b->status = virtio_alloc(64, 64);
                b->buf = virtio_alloc(CHUNK, 4096);
                b->buf2 = virtio_alloc(CHUNK, 4096);
                char id[21];
                memset(b->buf, 0, 20);
                int st = blk_io(b, T_GET_ID, 0, b->buf, 20);
                for (int j = 0; j < 20; j++) {
                        u8 c = st == 0 ? b->buf[j] : 0;
                        id[j] = c == 0 ? 0 : (c > ' ' && c < 127 ? (char)c : '?');
                }
                id[20] = 0;
                say("VBLK dev=%d disk=%d cap=%lu ro=%d flush=%d serial=%s features=0x%lx", d->idx, b->k, b->cap, b->ro,
                    (int)((d->features >> F_FLUSH) & 1), id[0] ? id : "-", d->features);
        }
        active = ndisks > 0;
}

static u64 tick(int cpu, u64 now)
{
        if (!active || cpu != 0) return U64_MAX;
        u64 start, count;
        if (!done) {
                done = true;
                for (int i = 0; i < ndisks; i++) {
                        struct disk *b = &disks[i];
                        if (range("vblk-write", &start, &count)) write_verify(b, seed, start, count, true);
                        if (range("vblk-zero", &start, &count)) zero_test(b, start, count);
                        if (range("vblk-read", &start, &count)) read_test(b, start, count);
                        const char *m;
                        int ml;
                        if (cmdline_str("vblk-bench", &m, &ml)) bench(b, m, ml);
                        say("VBLK-DONE dev=%d", b->d->idx);
                        virtio_print_irq(b->d);
                }
        }
        if (!range("vblk-loop", &start, &count)) return U64_MAX;
        /* One pass per tick over every disk: the heartbeat and other workloads keep running in between. */
        for (int i = 0; i < ndisks; i++) {
                struct disk *b = &disks[i];
                b->loop_pass++;
                s64 bad = write_verify(b, seed + (u32)b->loop_pass, start, count, false);
                say("VBLK-PASS dev=%d n=%lu bad=%ld", b->d->idx, b->loop_pass, bad);
        }
        return now + ms_to_tsc(cmdline_u64("vblk-loopdelay", 0));
}

WORKLOAD(70, vblk, .setup = setup, .tick = tick);

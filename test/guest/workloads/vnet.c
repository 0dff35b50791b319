/*
 * `vnet...`: a virtio-net driver's worth of tests on every virtio-net device (or only `vnet-dev=N`).
 *
 * Before READY each NIC is set up (receive ring filled with 2 KiB buffers) and described:
 *   VNET dev=D mac=52:54:00:12:34:56 status=0x1 features=0x..
 * After READY, CPU 0:
 *   vnet-tx=N      sends N frames: broadcast, ethertype 0x88b5, payload "KILN", dev u16, seq u32, len u32 (all
 *                  big-endian), then byte j = (seq + j) & 0xff; frame i is 60 + (i*97) % 1455 bytes long.
 *                  VNET-TX dev=D frames=N status=ok|timeout
 *   vnet-echo      answers every 0x88b5 frame it receives: destination = its source, source = own MAC,
 *                  ethertype 0x88b6, payload unchanged.  VNET-ECHO dev=D n=K (at K = 1, 2, 4, 8, ...)
 *   vnet-bench=tx:N   N full-size frames as fast as the ring takes them:
 *                  VNET-BENCH dev=D mode=tx frames=N bytes=B us=U
 *   vnet-bench=rx:N   counts 0x88b5 frames until N arrived (or 500 ms without one):
 *                  VNET-BENCH dev=D mode=rx frames=N bytes=B us=U (first to last frame)
 * Frames of other ethertypes are counted and dropped.
 */
#include "virtio.h"

#define F_MAC           5
#define F_STATUS        16
#define HDR             12
#define BUF             2048
#define ETH_KILN        0x88B5
#define ETH_ECHO        0x88B6
#define RXQ             0
#define TXQ             1

struct nic {
        struct vdev *d;
        u8 mac[6];
        u16 status;
        u8 *rxbuf[VQ_SIZE_MAX];         /* by descriptor head */
        u8 *txbuf;                      /* VQ_SIZE_MAX slots of BUF */
        u16 tx_slot_of[VQ_SIZE_MAX];
        u16 tx_free[VQ_SIZE_MAX];
        int ntx_free;
        u64 rx, rx_other, echoed, next_echo_print;
        /* rx bench */
        u64 bench_want, bench_got, bench_bytes, bench_t0, bench_last;
};

static struct nic nics[VIRTIO_MAX_DEVS];
static int nnics;
static bool active, tx_done, echo;

static inline u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline void put32(u8 *p, u32 v) { put16(p, (u16)(v >> 16)); put16(p + 2, (u16)v); }

static void tx_reclaim(struct nic *n)
{
        int h;
        while ((h = vq_get_used(&n->d->vq[TXQ], NULL)) >= 0) n->tx_free[n->ntx_free++] = n->tx_slot_of[h];
}

/* A TX buffer (header zeroed; the frame goes at +HDR), or NULL while the ring is full. */
static u8 *tx_buffer(struct nic *n, int *slot)
{
        tx_reclaim(n);
        if (!n->ntx_free) return NULL;
        *slot = n->tx_free[--n->ntx_free];
        u8 *b = n->txbuf + (u64)*slot * BUF;
        memset(b, 0, HDR);
        return b;
}

static bool tx_queue(struct nic *n, int slot, u32 frame_len)
{
        u64 a = (u64)(n->txbuf + (u64)slot * BUF);
        u32 l = HDR + frame_len;
        int h = vq_add(&n->d->vq[TXQ], &a, &l, 1, 0);
        if (h < 0) {
                n->tx_free[n->ntx_free++] = (u16)slot;
                return false;
        }
        n->tx_slot_of[h] = (u16)slot;
        return true;
}

static void rx_post(struct nic *n, u8 *buf)
{
        u64 a = (u64)buf;
        u32 l = BUF;
        int h = vq_add(&n->d->vq[RXQ], &a, &l, 0, 1);
        if (h >= 0) n->rxbuf[h] = buf;
}

static void handle_frame(struct nic *n, const u8 *f, u32 len)
{
        n->rx++;
        if (n->bench_want && len >= 14 && be16(f + 12) == ETH_KILN) {
                u64 now = rdtsc();
                if (!n->bench_got) n->bench_t0 = now;
                n->bench_got++;
                n->bench_bytes += len;
                n->bench_last = now;
                return;
        }
        if (len < 14 || be16(f + 12) != ETH_KILN) {
                n->rx_other++;
                return;
        }
        if (!echo) return;
        int slot;
        u8 *b = tx_buffer(n, &slot);
        if (!b) return;
        u8 *r = b + HDR;
        memcpy(r, f + 6, 6);
        memcpy(r + 6, n->mac, 6);
        put16(r + 12, ETH_ECHO);
        memcpy(r + 14, f + 14, len - 14);
        if (tx_queue(n, slot, len)) {
                vq_kick(&n->d->vq[TXQ]);
                n->echoed++;
                if (n->echoed >= n->next_echo_print) {
                        say("VNET-ECHO dev=%d n=%lu", n->d->idx, n->echoed);
                        n->next_echo_print *= 2;
                }
        }
}

static void rx_poll(struct nic *n)
{
        struct vq *q = &n->d->vq[RXQ];
        u32 len;
        int h;
        bool got = false;
        while ((h = vq_get_used(q, &len)) >= 0) {
                u8 *buf = n->rxbuf[h];
                if (len >= HDR) handle_frame(n, buf + HDR, len - HDR);
                rx_post(n, buf);
                got = true;
        }
        if (got) vq_kick(q);
}

static void send_test_frames(struct nic *n, u64 count)
{
        u64 sent = 0, t0 = rdtsc();
        bool timeout = false;
        while (sent < count) {
                int slot;
                u8 *b = tx_buffer(n, &slot);
                if (!b) {
                        vq_kick(&n->d->vq[TXQ]);
                        if (rdtsc() - t0 > ms_to_tsc(10000)) { timeout = true; break; }
                        cpu_relax();
                        continue;
                }
                u8 *f = b + HDR;
                u32 len = 60 + (u32)((sent * 97) % 1455);
                memset(f, 0xFF, 6);
                memcpy(f + 6, n->mac, 6);
                put16(f + 12, ETH_KILN);
                memcpy(f + 14, "KILN", 4);
                put16(f + 18, (u16)n->d->idx);
                put32(f + 20, (u32)sent);
                put32(f + 24, len);
                for (u32 j = 28; j < len; j++) f[j] = (u8)(sent + j);
                if (!tx_queue(n, slot, len)) continue;
                sent++;
                if (sent % 16 == 0) vq_kick(&n->d->vq[TXQ]);
        }
        vq_kick(&n->d->vq[TXQ]);
        /* Wait until the device has taken every frame. */
        while (!timeout && n->ntx_free < n->d->vq[TXQ].num) {
                tx_reclaim(n);
                if (rdtsc() - t0 > ms_to_tsc(10000)) timeout = true;
                cpu_relax();
        }
        say("VNET-TX dev=%d frames=%lu status=%s", n->d->idx, sent, timeout ? "timeout" : "ok");
}

static void bench_tx(struct nic *n, u64 count)
{
        u64 sent = 0, t0 = rdtsc();
        while (sent < count) {
                int slot;
                u8 *b = tx_buffer(n, &slot);
                if (!b) {
                        vq_kick(&n->d->vq[TXQ]);
                        cpu_relax();
                        continue;
                }
                u8 *f = b + HDR;
                memset(f, 0xFF, 6);
                memcpy(f + 6, n->mac, 6);
                put16(f + 12, ETH_KILN);
                if (tx_queue(n, slot, 1514)) sent++;
                if (sent % 32 == 0) vq_kick(&n->d->vq[TXQ]);
        }
        vq_kick(&n->d->vq[TXQ]);
        while (n->ntx_free < n->d->vq[TXQ].num) { tx_reclaim(n); cpu_relax(); }
        u64 us = (rdtsc() - t0) * 1000 / tsc_khz;
        say("VNET-BENCH dev=%d mode=tx frames=%lu bytes=%lu us=%lu", n->d->idx, sent, sent * 1514, us);
}

static void setup(void)
{
        if (!cmdline_has("vnet") && !cmdline_has("vnet-tx") && !cmdline_has("vnet-echo") && !cmdline_has("vnet-bench")) return;
        virtio_probe();
        u64 only = cmdline_u64("vnet-dev", ~0UL);
        echo = cmdline_has("vnet-echo");
        for (int i = 0; i < nr_vdevs; i++) {
                struct vdev *d = &vdevs[i];
                if (d->type != VIRTIO_ID_NET || (only != ~0UL && only != (u64)i)) continue;
                struct nic *n = &nics[nnics];
                memset(n, 0, sizeof(*n));
                n->d = d;
                if (!virtio_negotiate(d, (1UL << F_MAC) | (1UL << F_STATUS)) || !virtio_setup_vq(d, RXQ, 128) || !virtio_setup_vq(d, TXQ, 128)) continue;
                /* Receive buffers go in before DRIVER_OK, so frames can land at once. */
                struct vq *rx = &d->vq[RXQ];
                for (int k = 0; k < rx->num; k++) {
                        u8 *b = virtio_alloc(BUF, 64);
                        if (b) rx_post(n, b);
                }
                n->txbuf = virtio_alloc((u64)d->vq[TXQ].num * BUF, 4096);
                for (int k = 0; k < d->vq[TXQ].num; k++) n->tx_free[n->ntx_free++] = (u16)k;
                virtio_driver_ok(d);
                if (!d->ok || !n->txbuf) continue;
                vq_kick(rx);
                for (int k = 0; k < 6; k++) n->mac[k] = (u8)virtio_cfg_read(d, k, 1);
                n->status = (d->features >> F_STATUS) & 1 ? (u16)virtio_cfg_read(d, 6, 2) : 1;
                n->next_echo_print = 1;
                nnics++;
                say("VNET dev=%d mac=%02x:%02x:%02x:%02x:%02x:%02x status=0x%x features=0x%lx", d->idx, n->mac[0], n->mac[1],
                    n->mac[2], n->mac[3], n->mac[4], n->mac[5], n->status, d->features);
        }
        active = nnics > 0;
}

static u64 tick(int cpu, u64 now)
{
        if (!active || cpu != 0) return U64_MAX;
        const char *v;
        int l;
        if (!tx_done) {
                tx_done = true;
                u64 count = cmdline_u64("vnet-tx", 0);
                for (int i = 0; i < nnics; i++) if (count) send_test_frames(&nics[i], count);
                if (cmdline_str("vnet-bench", &v, &l) && l > 3) {
                        u64 k;
                        if (!parse_u64(v + 3, l - 3, &k)) k = 10000;
                        for (int i = 0; i < nnics; i++) {
                                if (memcmp(v, "tx:", 3) == 0) bench_tx(&nics[i], k);
                                else nics[i].bench_want = k;
                        }
                }
        }
        bool rx_bench = false;
        for (int i = 0; i < nnics; i++) {
                struct nic *n = &nics[i];
                rx_poll(n);
                tx_reclaim(n);
                if (n->bench_want) {
                        rx_bench = true;
                        u64 t = rdtsc();
                        if (n->bench_got >= n->bench_want || (n->bench_got && t - n->bench_last > ms_to_tsc(500))) {
                                say("VNET-BENCH dev=%d mode=rx frames=%lu bytes=%lu us=%lu", n->d->idx, n->bench_got, n->bench_bytes,
                                    (n->bench_last - n->bench_t0) * 1000 / tsc_khz);
                                n->bench_want = 0;
                        }
                }
        }
        if (!echo && !rx_bench) return U64_MAX;
        /* With interrupts, sleep until one (or 20 ms); else poll: continuously while measuring, else every 100 us. */
        struct vdev *d0 = nics[0].d;
        if (d0->irq_mode == VIRQ_POLL && rx_bench) return 0;
        if (d0->irq_mode != VIRQ_POLL) {
                struct vq *q = &d0->vq[RXQ];
                q->avail[2 + q->num] = q->last_used;
                mb();
                return vq_has_used(q) ? 0 : now + ms_to_tsc(20);
        }
        return now + us_to_tsc(100);
}

WORKLOAD(71, vnet, .setup = setup, .tick = tick);

/*
 * Minimal virtio 1.x drivers (see include/virtio.h): probing, feature negotiation, split virtqueues and the
 * two transports.  Device registers: virtio-mmio through its window; virtio-pci through the vendor
 * capabilities' BAR regions (common cfg, ISR, device cfg, notify), found by walking PCI config space.
 */
#include "virtio.h"

struct vdev vdevs[VIRTIO_MAX_DEVS];
int nr_vdevs;

/* ---- memory ---- */

/* Inside the image (the dirtier skips [1 MiB, _end)) but not in the file, and not zeroed at boot. */
#define POOL_SIZE (4UL << 20)
static u8 pool[POOL_SIZE] __attribute__((section(".stacks"), aligned(4096)));
static u64 pool_used;

void *virtio_alloc(u64 size, u64 align)
{
        u64 off = ALIGN_UP(pool_used, align);
        if (off + size > POOL_SIZE) {
                say("NOTE virtio: out of driver memory (%lu bytes wanted)", size);
                return NULL;
        }
        pool_used = off + size;
        memset(pool + off, 0, size);
        return pool + off;
}

u64 fnv1a64_update(u64 h, const u8 *p, u64 n)
{
        for (u64 i = 0; i < n; i++) {
                h ^= p[i];
                h *= 0x100000001b3UL;
        }
        return h;
}

/* ---- register access ---- */

static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void wr16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

/* virtio-mmio registers */
#define MMIO_MAGIC              0x000
#define MMIO_VERSION            0x004
#define MMIO_DEVICE_ID          0x008
#define MMIO_DEVICE_FEATURES    0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES    0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL          0x030
#define MMIO_QUEUE_NUM_MAX      0x034
#define MMIO_QUEUE_NUM          0x038
#define MMIO_QUEUE_READY        0x044
#define MMIO_QUEUE_NOTIFY       0x050
#define MMIO_INTERRUPT_STATUS   0x060
#define MMIO_INTERRUPT_ACK      0x064
#define MMIO_STATUS             0x070
#define MMIO_QUEUE_DESC         0x080
#define MMIO_QUEUE_DRIVER       0x090
#define MMIO_QUEUE_DEVICE       0x0a0
#define MMIO_CONFIG             0x100

/* virtio-pci common configuration */
#define CC_DFSELECT     0x00
#define CC_DF           0x04
#define CC_GFSELECT     0x08
#define CC_GF           0x0c
#define CC_MSIX_CONFIG  0x10
#define CC_STATUS       0x14
#define CC_Q_SELECT     0x16
#define CC_Q_SIZE       0x18
#define CC_Q_MSIX       0x1a
#define CC_Q_ENABLE     0x1c
#define CC_Q_NOFF       0x1e
#define CC_Q_DESC       0x20
#define CC_Q_DRIVER     0x28
#define CC_Q_DEVICE     0x30
#define NO_VECTOR       0xFFFF

#define S_ACKNOWLEDGE   1
#define S_DRIVER        2
#define S_DRIVER_OK     4
#define S_FEATURES_OK   8
#define S_FAILED        128

static u8 get_status(struct vdev *d)
{
        return d->transport == VT_MMIO ? (u8)rd32(d->base + MMIO_STATUS) : rd8(d->common + CC_STATUS);
}

static void set_status(struct vdev *d, u8 s)
{
        if (d->transport == VT_MMIO) wr32(d->base + MMIO_STATUS, s);
        else wr8(d->common + CC_STATUS, s);
}

u32 virtio_cfg_read(struct vdev *d, u32 off, int size)
{
        u64 a = d->transport == VT_MMIO ? d->base + MMIO_CONFIG + off : d->devcfg + off;
        return size == 1 ? rd8(a) : size == 2 ? rd16(a) : rd32(a);
}

/* ---- probing ---- */

static struct vdev *new_dev(int type, int transport)
{
        if (nr_vdevs == VIRTIO_MAX_DEVS) return NULL;
        struct vdev *d = &vdevs[nr_vdevs];
        memset(d, 0, sizeof(*d));
        d->idx = nr_vdevs++;
        d->type = type;
        d->transport = transport;
        d->name = type == VIRTIO_ID_BLOCK ? "blk" : type == VIRTIO_ID_NET ? "net" : "other";
        return d;
}

/* `virtio_mmio.device=SIZE@ADDR:IRQ[:ID]` (Linux's form; kiln and QEMU's microvm append it). */
static void probe_mmio_token(const char *v, int len)
{
        int at = -1, colon = -1;
        for (int i = 0; i < len; i++) {
                if (v[i] == '@' && at < 0) at = i;
                else if (v[i] == ':' && at >= 0 && colon < 0) colon = i;
        }
        int end = len;
        for (int i = colon + 1; colon >= 0 && i < len; i++) if (v[i] == ':') { end = i; break; }
        u64 size, addr, irq;
        if (at < 0 || colon < 0 || !parse_size(v, at, &size) || !parse_u64(v + at + 1, colon - at - 1, &addr) ||
            !parse_u64(v + colon + 1, end - colon - 1, &irq)) {
                char t[64];
                int n = MIN(len, 63);
                memcpy(t, v, n);
                t[n] = 0;
                say("NOTE virtio: cannot parse virtio_mmio.device=%s", t);
                return;
        }
        u32 magic = rd32(addr + MMIO_MAGIC);
        if (magic != 0x74726976) {
                say("NOTE virtio: no virtio-mmio device at 0x%lx (magic 0x%x)", addr, magic);
                return;
        }
        u32 version = rd32(addr + MMIO_VERSION), id = rd32(addr + MMIO_DEVICE_ID);
        if (id == 0) return; /* an empty slot */
        if (version != 2) {
                say("NOTE virtio: virtio-mmio at 0x%lx is version %u; only version 2 (virtio 1.x) is supported", addr, version);
                return;
        }
        struct vdev *d = new_dev((int)id, VT_MMIO);
        if (!d) return;
        d->base = addr;
        d->gsi = (int)irq;
        say("VIRTIO dev=%d type=%s transport=mmio loc=0x%lx irq=%d", d->idx, d->name, addr, d->gsi);
}

static void probe_mmio(void)
{
        static const char key[] = "virtio_mmio.device=";
        const int klen = sizeof(key) - 1;
        const char *p = boot.cmdline;
        while (*p) {
                while (*p == ' ') p++;
                const char *tok = p;
                while (*p && *p != ' ') p++;
                if (p - tok > klen && memcmp(tok, key, klen) == 0) probe_mmio_token(tok + klen, (int)(p - tok - klen));
        }
}

static u64 pci_bar(u8 bus, u8 devfn, int bar)
{
        u32 lo = pci_read32(bus, devfn, 0x10 + 4 * bar);
        if (lo & 1) return 0; /* an I/O BAR */
        u64 a = lo & ~0xFu;
        if (((lo >> 1) & 3) == 2 && bar < 5) a |= (u64)pci_read32(bus, devfn, 0x14 + 4 * bar) << 32;
        return a;
}

static void probe_pci_fn(u8 bus, u8 devfn, u16 vendor, u16 device)
{
        int type = 0;
        if (device >= 0x1040 && device <= 0x107F) type = device - 0x1040;
        else if (device >= 0x1000 && device <= 0x103F) type = pci_read16(bus, devfn, 0x2E); /* transitional: subsystem id */
        if (vendor != 0x1AF4 || (type != VIRTIO_ID_BLOCK && type != VIRTIO_ID_NET)) return;
        u64 cap_addr[5] = {0};
        u32 mult = 0;
        u8 msix = 0;
        if (pci_read16(bus, devfn, 0x06) & (1 << 4)) {
                for (u8 p = pci_read8(bus, devfn, 0x34) & ~3; p; p = pci_read8(bus, devfn, p + 1) & ~3) {
                        u8 id = pci_read8(bus, devfn, p);
                        if (id == 0x11) msix = p;
                        if (id != 0x09) continue;
                        u8 cfg_type = pci_read8(bus, devfn, p + 3);
                        if (cfg_type < 1 || cfg_type > 4 || cap_addr[cfg_type]) continue;
                        u64 base = pci_bar(bus, devfn, pci_read8(bus, devfn, p + 4));
                        if (!base) continue;
                        cap_addr[cfg_type] = base + pci_read32(bus, devfn, p + 8);
                        if (cfg_type == 2) mult = pci_read32(bus, devfn, p + 16);
                }
        }
        if (!cap_addr[1] || !cap_addr[2] || !cap_addr[3]) {
                say("NOTE virtio: %02x:%02x.%x has no usable modern capabilities (BARs unassigned?)", bus, devfn >> 3, devfn & 7);
                return;
        }
        struct vdev *d = new_dev(type, VT_PCI);
        if (!d) return;
        d->bus = bus;
        d->devfn = devfn;
        d->common = cap_addr[1];
        d->notify_base = cap_addr[2];
        d->isr = cap_addr[3];
        d->devcfg = cap_addr[4];
        d->notify_mult = mult;
        d->msix_cap = msix;
        if (msix) {
                u16 ctrl = pci_read16(bus, devfn, msix + 2);
                u32 t = pci_read32(bus, devfn, msix + 4);
                d->msix_size = (ctrl & 0x7FF) + 1;
                d->msix_table = pci_bar(bus, devfn, t & 7) + (t & ~7u);
        }
        d->intx_line = pci_read8(bus, devfn, 0x3C);
        /* Memory decoding and bus mastering on; INTx off until a driver wants it. */
        pci_write16(bus, devfn, 0x04, pci_read16(bus, devfn, 0x04) | 0x6 | (1 << 10));
        say("VIRTIO dev=%d type=%s transport=pci loc=%02x:%02x.%x irq=%d", d->idx, d->name, bus, devfn >> 3, devfn & 7, d->intx_line);
}

static void probe_pci(void)
{
        if (!pci_present()) return;
        bool scan = cmdline_has("pciscan");
        u64 ecam = cmdline_u64("ecam", 0);
        for (int slot = 0; slot < 32; slot++) {
                for (int fn = 0; fn < 8; fn++) {
                        u8 devfn = (u8)(slot << 3 | fn);
                        u32 id = pci_read32(0, devfn, 0);
                        if ((id & 0xFFFF) == 0xFFFF) {
                                if (fn == 0) break;
                                continue;
                        }
                        if (scan) {
                                u32 cls = pci_read32(0, devfn, 0x08) >> 8;
                                char e[24] = "";
                                if (ecam) format(e, sizeof(e), " ecam=%s", rd32(ecam + ((u64)devfn << 12)) == id ? "match" : "mismatch");
                                say("PCI bdf=00:%02x.%x id=%04x:%04x class=0x%06x%s", slot, fn, id & 0xFFFF, id >> 16, cls, e);
                        }
                        probe_pci_fn(0, devfn, id & 0xFFFF, id >> 16);
                        if (fn == 0 && !(pci_read8(0, devfn, 0x0E) & 0x80)) break;
                }
        }
}

void virtio_probe(void)
{
        static bool done;
        if (done) return;
        done = true;
        probe_mmio();
        probe_pci();
}

/* ---- negotiation and queues ---- */

static u64 read_features(struct vdev *d)
{
        u64 f = 0;
        for (u32 sel = 0; sel < 2; sel++) {
                u32 w;
                if (d->transport == VT_MMIO) {
                        wr32(d->base + MMIO_DEVICE_FEATURES_SEL, sel);
                        w = rd32(d->base + MMIO_DEVICE_FEATURES);
                } else {
                        wr32(d->common + CC_DFSELECT, sel);
                        w = rd32(d->common + CC_DF);
                }
                f |= (u64)w << (32 * sel);
        }
        return f;
}

static void write_features(struct vdev *d, u64 f)
{
        for (u32 sel = 0; sel < 2; sel++) {
                u32 w = (u32)(f >> (32 * sel));
                if (d->transport == VT_MMIO) {
                        wr32(d->base + MMIO_DRIVER_FEATURES_SEL, sel);
                        wr32(d->base + MMIO_DRIVER_FEATURES, w);
                } else {
                        wr32(d->common + CC_GFSELECT, sel);
                        wr32(d->common + CC_GF, w);
                }
        }
}

static void setup_irq(struct vdev *d);

bool virtio_negotiate(struct vdev *d, u64 want)
{
        set_status(d, 0);
        for (int i = 0; i < 1000 && get_status(d) != 0; i++) cpu_relax();
        set_status(d, S_ACKNOWLEDGE);
        set_status(d, S_ACKNOWLEDGE | S_DRIVER);
        d->offered = read_features(d);
        want |= 1UL << VIRTIO_F_VERSION_1;
        if (!cmdline_has("virtio-noevidx")) want |= 1UL << VIRTIO_F_EVENT_IDX;
        d->features = d->offered & want;
        if (!(d->features & (1UL << VIRTIO_F_VERSION_1))) {
                say("NOTE virtio: dev=%d does not offer VERSION_1", d->idx);
                set_status(d, S_FAILED);
                return false;
        }
        write_features(d, d->features);
        set_status(d, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if (!(get_status(d) & S_FEATURES_OK)) {
                say("NOTE virtio: dev=%d refused features 0x%lx", d->idx, d->features);
                set_status(d, S_FAILED);
                return false;
        }
        setup_irq(d);
        return true;
}

bool virtio_setup_vq(struct vdev *d, int i, int size)
{
        struct vq *q = &d->vq[i];
        u32 max;
        if (d->transport == VT_MMIO) {
                wr32(d->base + MMIO_QUEUE_SEL, i);
                max = rd32(d->base + MMIO_QUEUE_NUM_MAX);
        } else {
                wr16(d->common + CC_Q_SELECT, i);
                max = rd16(d->common + CC_Q_SIZE);
        }
        if (max == 0) return false;
        u32 n = 1;
        while (n * 2 <= (u32)size && n * 2 <= max && n * 2 <= VQ_SIZE_MAX) n *= 2;
        memset(q, 0, sizeof(*q));
        q->num = (u16)n;
        q->index = (u16)i;
        q->desc = virtio_alloc(16 * n, 4096);
        q->avail = virtio_alloc(6 + 2 * n, 4096);
        q->used = virtio_alloc(6 + 8 * n, 4096);
        if (!q->desc || !q->avail || !q->used) return false;
        for (u32 k = 0; k < n; k++) q->desc[k].next = (u16)(k + 1);
        q->num_free = (u16)n;
        q->event_idx = (d->features >> VIRTIO_F_EVENT_IDX) & 1;
        q->irq = d->irq_mode != VIRQ_POLL;
        /* Polling: ask for no interrupts (the flag, or a used_event the device will not reach soon). */
        if (!q->irq) {
                q->avail[0] = 1;
                q->avail[2 + n] = 0x8000;
        }
        u64 desc = (u64)q->desc, avail = (u64)q->avail, used = (u64)q->used;
        if (d->transport == VT_MMIO) {
                wr32(d->base + MMIO_QUEUE_NUM, n);
                wr32(d->base + MMIO_QUEUE_DESC, (u32)desc);
                wr32(d->base + MMIO_QUEUE_DESC + 4, (u32)(desc >> 32));
                wr32(d->base + MMIO_QUEUE_DRIVER, (u32)avail);
                wr32(d->base + MMIO_QUEUE_DRIVER + 4, (u32)(avail >> 32));
                wr32(d->base + MMIO_QUEUE_DEVICE, (u32)used);
                wr32(d->base + MMIO_QUEUE_DEVICE + 4, (u32)(used >> 32));
                wr32(d->base + MMIO_QUEUE_READY, 1);
                q->notify = d->base + MMIO_QUEUE_NOTIFY;
                q->notify_width = 4;
        } else {
                wr16(d->common + CC_Q_SIZE, (u16)n);
                wr32(d->common + CC_Q_DESC, (u32)desc);
                wr32(d->common + CC_Q_DESC + 4, (u32)(desc >> 32));
                wr32(d->common + CC_Q_DRIVER, (u32)avail);
                wr32(d->common + CC_Q_DRIVER + 4, (u32)(avail >> 32));
                wr32(d->common + CC_Q_DEVICE, (u32)used);
                wr32(d->common + CC_Q_DEVICE + 4, (u32)(used >> 32));
                if (d->irq_mode == VIRQ_MSIX) {
                        wr16(d->common + CC_Q_MSIX, (u16)i);
                        if (rd16(d->common + CC_Q_MSIX) != i) say("NOTE virtio: dev=%d queue %d: MSI-X vector %d refused", d->idx, i, i);
                }
                q->notify = d->notify_base + (u64)rd16(d->common + CC_Q_NOFF) * d->notify_mult;
                q->notify_width = 2;
                wr16(d->common + CC_Q_ENABLE, 1);
        }
        if (i >= d->nvq) d->nvq = i + 1;
        return true;
}

void virtio_driver_ok(struct vdev *d)
{
        set_status(d, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        d->ok = (get_status(d) & (S_DRIVER_OK | 0x40)) == S_DRIVER_OK;
        if (!d->ok) say("NOTE virtio: dev=%d status 0x%x after DRIVER_OK", d->idx, get_status(d));
}

/* ---- interrupts (`virtio-irq` or `virtio-irq=intx`) ---- */

static void setup_irq(struct vdev *d)
{
        const char *v;
        int l;
        if (!cmdline_has("virtio-irq")) return;
        bool intx = cmdline_str("virtio-irq", &v, &l) && l == 4 && memcmp(v, "intx", 4) == 0;
        u32 apic = percpu[0].apic_id;
        d->vector = (u8)(0x40 + 4 * d->idx);
        if (d->transport == VT_MMIO) {
                ioapic_route(d->gsi, d->vector, false, apic);
                d->irq_mode = VIRQ_IOAPIC;
        } else if (!intx && d->msix_cap && d->msix_table) {
                u16 ctrl = pci_read16(d->bus, d->devfn, d->msix_cap + 2);
                pci_write16(d->bus, d->devfn, d->msix_cap + 2, (u16)((ctrl | 0x8000) & ~0x4000));
                for (int e = 0; e < d->msix_size && e < VIRTIO_MAX_VQS; e++) {
                        u64 t = d->msix_table + 16 * e;
                        wr32(t + 0, 0xFEE00000u | (apic << 12));
                        wr32(t + 4, 0);
                        wr32(t + 8, d->vector);
                        wr32(t + 12, 0);
                }
                wr16(d->common + CC_MSIX_CONFIG, NO_VECTOR);
                d->irq_mode = VIRQ_MSIX;
        } else {
                ioapic_route(d->intx_line, d->vector, true, apic);
                irq_ack_read8[d->vector] = d->isr;
                pci_write16(d->bus, d->devfn, 0x04, pci_read16(d->bus, d->devfn, 0x04) & ~(1 << 10));
                d->irq_mode = VIRQ_INTX;
        }
}

void virtio_print_irq(struct vdev *d)
{
        static const char *mode[] = {"poll", "ioapic", "msix", "intx"};
        if (d->irq_mode == VIRQ_POLL) return;
        say("VIRTIO-IRQ dev=%d mode=%s vector=0x%x count=%u", d->idx, mode[d->irq_mode], d->vector, irq_count[d->vector]);
}

/* ---- split virtqueue ---- */

static inline volatile u16 *used_idx(struct vq *q) { return (volatile u16 *)(q->used + 2); }
static inline volatile u16 *avail_event(struct vq *q) { return (volatile u16 *)(q->used + 4 + 8 * q->num); }

int vq_add(struct vq *q, const u64 *addr, const u32 *len, int n_out, int n_in)
{
        int n = n_out + n_in;
        if (n == 0 || n > q->num_free) return -1;
        u16 head = q->free_head, i = head;
        for (int k = 0; k < n; k++) {
                struct vring_desc *e = &q->desc[i];
                e->addr = addr[k];
                e->len = len[k];
                e->flags = (u16)((k >= n_out ? VIRTQ_DESC_F_WRITE : 0) | (k < n - 1 ? VIRTQ_DESC_F_NEXT : 0));
                i = e->next;
        }
        q->free_head = i;
        q->num_free = (u16)(q->num_free - n);
        q->chain_len[head] = (u16)n;
        q->avail[2 + q->avail_idx % q->num] = head;
        q->avail_idx++;
        return head;
}

void vq_kick(struct vq *q)
{
        u16 old = q->avail[1], now = q->avail_idx;
        if (old == now) return;
        barrier();
        q->avail[1] = now; /* the ring entries are written before the index (x86 keeps stores in order) */
        mb();              /* ... and the index before we look at what the device asked for */
        bool need;
        if (q->event_idx) {
                u16 ev = *avail_event(q);
                need = (u16)(now - ev - 1) < (u16)(now - old);
        } else {
                need = !(*(volatile u16 *)q->used & 1);
        }
        if (!need) {
                q->kicks_suppressed++;
                return;
        }
        q->kicks++;
        if (q->notify_width == 2) wr16(q->notify, q->index);
        else wr32(q->notify, q->index);
}

bool vq_has_used(struct vq *q) { return *used_idx(q) != q->last_used; }

int vq_get_used(struct vq *q, u32 *len)
{
        if (*used_idx(q) == q->last_used) return -1;
        barrier();
        volatile u32 *e = (volatile u32 *)(q->used + 4 + 8 * (q->last_used % q->num));
        u16 id = (u16)e[0];
        if (len) *len = e[1];
        q->last_used++;
        u16 n = q->chain_len[id], tail = id;
        for (int k = 1; k < n; k++) tail = q->desc[tail].next;
        q->desc[tail].next = q->free_head;
        q->free_head = id;
        q->num_free = (u16)(q->num_free + n);
        /* used_event: interrupt at the next completion, or (polling) not for a long while. */
        q->avail[2 + q->num] = q->irq ? q->last_used : (u16)(q->last_used + 0x8000);
        return id;
}

int vq_wait(struct vdev *d, struct vq *q, u32 *len, u64 timeout_ms)
{
        u64 deadline = rdtsc() + ms_to_tsc(timeout_ms);
        for (;;) {
                int h = vq_get_used(q, len);
                if (h >= 0) return h;
                u64 now = rdtsc();
                if (now > deadline) return -1;
                if (!q->irq) {
                        cpu_relax();
                        continue;
                }
                q->avail[2 + q->num] = q->last_used;
                mb();
                if (vq_has_used(q)) continue;
                sys_sleep(MIN(deadline, now + ms_to_tsc(20)));
                if (d->transport == VT_MMIO) {
                        u32 s = rd32(d->base + MMIO_INTERRUPT_STATUS);
                        if (s) wr32(d->base + MMIO_INTERRUPT_ACK, s);
                }
        }
}

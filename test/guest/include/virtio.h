/*
 * The test guest's minimal virtio 1.x drivers: split virtqueues over virtio-mmio (version 2) and modern
 * virtio-pci, used by the vblk and vnet workloads.  Everything runs at CPL3 (the guest's memory is identity
 * mapped and user-accessible; PCI config goes through 0xCF8/0xCFC).  Completion is found by polling the used
 * ring, or with `virtio-irq` by sleeping until the device's interrupt (MSI-X, INTx or the IOAPIC pin) arrives.
 */
#ifndef KILN_VIRTIO_H
#define KILN_VIRTIO_H

#include "kiln.h"

#define VIRTIO_MAX_DEVS         8
#define VIRTIO_MAX_VQS          3
#define VQ_SIZE_MAX             256

#define VIRTIO_ID_NET           1
#define VIRTIO_ID_BLOCK         2

#define VIRTIO_F_INDIRECT_DESC  28
#define VIRTIO_F_EVENT_IDX      29
#define VIRTIO_F_VERSION_1      32

#define VIRTQ_DESC_F_NEXT       1
#define VIRTQ_DESC_F_WRITE      2

enum { VT_MMIO = 1, VT_PCI = 2 };
enum { VIRQ_POLL = 0, VIRQ_IOAPIC = 1, VIRQ_MSIX = 2, VIRQ_INTX = 3 };

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };

struct vq {
        u16 num, index;
        struct vring_desc *desc;
        volatile u16 *avail;    /* flags, idx, ring[num], used_event */
        volatile u8 *used;      /* flags u16, idx u16, ring[num] {id u32, len u32}, avail_event u16 */
        u16 free_head, num_free, last_used, avail_idx;
        u16 chain_len[VQ_SIZE_MAX];
        u64 notify;             /* where a kick is written: the queue index, 32 bits (mmio) or 16 (pci) */
        u8 notify_width;
        bool event_idx;
        bool irq;               /* the driver wants interrupts for this queue */
        u64 kicks, kicks_suppressed;
};

struct vdev {
        int idx;
        int type;               /* VIRTIO_ID_* */
        int transport;          /* VT_* */
        const char *name;       /* "blk", "net" */
        /* virtio-mmio */
        u64 base;
        int gsi;
        /* virtio-pci */
        u8 bus, devfn;
        u64 common, isr, devcfg, notify_base;
        u32 notify_mult;
        u8 msix_cap;
        u64 msix_table;
        int msix_size;
        u8 intx_line;
        /* both */
        u64 offered, features;
        int nvq;
        struct vq vq[VIRTIO_MAX_VQS];
        int irq_mode;           /* VIRQ_* */
        u8 vector;              /* CPU vector of its interrupts (irq_mode != POLL) */
        bool ok;
};

extern struct vdev vdevs[VIRTIO_MAX_DEVS];
extern int nr_vdevs;

/* Probe virtio-mmio devices from `virtio_mmio.device=` tokens and virtio-pci devices on bus 0. */
void virtio_probe(void);
/* Reset, negotiate (VERSION_1 plus `want` & offered; EVENT_IDX unless `virtio-noevidx`), FEATURES_OK. */
bool virtio_negotiate(struct vdev *d, u64 want);
/* Set up queue i with at most `size` entries; then virtio_driver_ok() once every queue is set. */
bool virtio_setup_vq(struct vdev *d, int i, int size);
void virtio_driver_ok(struct vdev *d);
u32 virtio_cfg_read(struct vdev *d, u32 off, int size);
void virtio_print_irq(struct vdev *d);

/* A chain of `n_out` device-readable then `n_in` device-writable buffers; the head index, or -1 when full. */
int vq_add(struct vq *q, const u64 *addr, const u32 *len, int n_out, int n_in);
/* Publish what vq_add queued and notify the device if it wants to be. */
void vq_kick(struct vq *q);
/* The next used chain (its head; *len = bytes the device wrote), or -1. */
int vq_get_used(struct vq *q, u32 *len);
bool vq_has_used(struct vq *q);
/* Wait for a used chain: poll, or sleep until the interrupt; -1 on timeout. */
int vq_wait(struct vdev *d, struct vq *q, u32 *len, u64 timeout_ms);

/* Memory for rings and buffers (never freed): from a region inside the image that the dirtier skips. */
void *virtio_alloc(u64 size, u64 align);

/* ---- PCI configuration access (lib/pci.c) ---- */
u32 pci_read32(u8 bus, u8 devfn, u8 off);
u16 pci_read16(u8 bus, u8 devfn, u8 off);
u8 pci_read8(u8 bus, u8 devfn, u8 off);
void pci_write32(u8 bus, u8 devfn, u8 off, u32 v);
void pci_write16(u8 bus, u8 devfn, u8 off, u16 v);
void pci_write8(u8 bus, u8 devfn, u8 off, u8 v);
bool pci_present(void);

/* ---- IOAPIC (lib/ioapic.c) ---- */
void ioapic_route(int pin, u8 vector, bool level, u32 apic_id);

/* ---- interrupt bookkeeping (kernel/trap.c) ---- */
extern volatile u32 irq_count[256];
extern u64 irq_ack_read8[256];

/* FNV-1a 64 */
u64 fnv1a64_update(u64 h, const u8 *p, u64 n);
#define FNV1A64_INIT 0xcbf29ce484222325UL

static inline void mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif

/**
 * Numbers from the virtio 1.x specification (OASIS virtio v1.2): device ids, status bits, feature
 * bits shared by every device type, and the split virtqueue's layout.
 */

/** Device ids (spec 5): also the low bits of a modern virtio-pci device id (0x1040 + id). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;

export const VIRTIO_VENDOR_ID = 0x1af4; // PCI vendor (Red Hat, Inc.) and virtio-mmio VendorID
export const VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;

/** Device status (spec 2.1). */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

/** Feature bits reserved for the transport and the ring (spec 6). */
export const F_RING_INDIRECT_DESC = 28;
export const F_RING_EVENT_IDX = 29;
export const F_VERSION_1 = 32;

export const bit = (n: number): bigint => 1n << BigInt(n);

/** Split virtqueue (spec 2.7). */
export const VIRTQ_DESC_SIZE = 16;
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags: the driver does not want interrupts (ignored with EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device does not want notifications (ignored with EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Largest queue the split ring allows. */
export const VIRTQ_MAX_SIZE = 32768;

/** Interrupt causes (virtio-mmio InterruptStatus, virtio-pci ISR). */
export const INT_USED_RING = 1;
export const INT_CONFIG_CHANGE = 2;

/** The vector value meaning "no MSI-X vector" (virtio-pci). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

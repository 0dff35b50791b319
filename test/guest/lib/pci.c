/*
 * PCI configuration space through the legacy ports: 0xCF8 takes the address (enable bit, bus, devfn,
 * register), 0xCFC..0xCFF return the data.  Two port accesses (two VM exits) per register, so probing is
 * done once.  Only CPU 0 uses this (no locking).
 */
#include "virtio.h"

#define PCI_ADDR 0xCF8
#define PCI_DATA 0xCFC

static void select(u8 bus, u8 devfn, u8 off)
{
        outl(PCI_ADDR, 0x80000000u | ((u32)bus << 16) | ((u32)devfn << 8) | (off & 0xFC));
}

u32 pci_read32(u8 bus, u8 devfn, u8 off) { select(bus, devfn, off); return inl(PCI_DATA); }
u16 pci_read16(u8 bus, u8 devfn, u8 off) { select(bus, devfn, off); return inw(PCI_DATA + (off & 2)); }
u8 pci_read8(u8 bus, u8 devfn, u8 off) { select(bus, devfn, off); return inb(PCI_DATA + (off & 3)); }
void pci_write32(u8 bus, u8 devfn, u8 off, u32 v) { select(bus, devfn, off); outl(PCI_DATA, v); }
void pci_write16(u8 bus, u8 devfn, u8 off, u16 v) { select(bus, devfn, off); outw(PCI_DATA + (off & 2), v); }
void pci_write8(u8 bus, u8 devfn, u8 off, u8 v) { select(bus, devfn, off); outb(PCI_DATA + (off & 3), v); }

/* A machine without PCI answers the data port with all ones whatever the address says. */
bool pci_present(void)
{
        outl(PCI_ADDR, 0x80000000u);
        return inl(PCI_ADDR) == 0x80000000u && inl(PCI_DATA) != 0xFFFFFFFFu;
}

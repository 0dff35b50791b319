/*
 * The IOAPIC's redirection table (IOREGSEL at +0, IOWIN at +0x10 of 0xFEC00000, user-mapped): route a pin
 * to a vector on one CPU.  KVM's in-kernel IOAPIC answers these without leaving the kernel.
 */
#include "virtio.h"

#define IOAPIC_BASE 0xFEC00000UL
#define IOREGSEL 0x00
#define IOWIN 0x10

static void ioapic_write(u32 reg, u32 v)
{
        mmio_write32(IOAPIC_BASE + IOREGSEL, reg);
        mmio_write32(IOAPIC_BASE + IOWIN, v);
}

void ioapic_route(int pin, u8 vector, bool level, u32 apic_id)
{
        ioapic_write(0x11 + 2 * pin, apic_id << 24);
        /* Fixed delivery, physical destination, active high; unmasked (bit 16 clear). */
        ioapic_write(0x10 + 2 * pin, vector | (level ? 1u << 15 : 0));
}

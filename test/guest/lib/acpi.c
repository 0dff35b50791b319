/*
 * ACPI, read once at boot (CPL3, plain memory reads):
 *   RSDP   from hvm_start_info.rsdp_paddr, else a scan of 0xE0000..0xFFFFF for "RSD PTR " (checksummed)
 *   XSDT   (RSDP revision >= 2 and non-zero), else RSDT
 *   "APIC" (MADT): Processor Local APIC entries (type 0) with flags bit 0 (Enabled) -> CPUs
 *   "FACP" (FADT): PM1a_CNT_BLK @64, PM1b_CNT_BLK @68, PM_TMR_BLK @76, Flags @112, X_DSDT @140,
 *                  X_PM1a_CNT_BLK @172 (used when PM1a_CNT_BLK is 0), SLEEP_CONTROL_REG @244 (hardware-reduced)
 *   DSDT   scanned for "_S5_" followed by a Package; its first element is SLP_TYP
 */
#include "kiln.h"

struct acpi_info acpi;

static u32 rd32(u64 a) { return *(const u32 *)a; }
static u64 rd64(u64 a) { return *(const u64 *)a; }
static u8 rd8(u64 a) { return *(const u8 *)a; }

static bool checksum_ok(u64 a, u32 len)
{
        u8 sum = 0;
        for (u32 i = 0; i < len; i++) sum += rd8(a + i);
        return sum == 0;
}

static bool is_rsdp(u64 a) { return memcmp((const void *)a, "RSD PTR ", 8) == 0 && checksum_ok(a, 20); }

static void read_gas(u64 a, struct gas *g)
{
        g->space = rd8(a);
        g->bit_width = rd8(a + 1);
        g->bit_offset = rd8(a + 2);
        g->access_size = rd8(a + 3);
        g->addr = rd64(a + 4);
}

static void parse_madt(u64 t)
{
        u32 len = rd32(t + 4);
        acpi.lapic_base = rd32(t + 36);
        u32 bsp = lapic_id();
        acpi.nr_cpus = 1;
        acpi.apic_ids[0] = (u8)bsp;
        for (u64 p = t + 44; p + 2 <= t + len;) {
                u8 type = rd8(p), elen = rd8(p + 1);
                if (elen < 2) break;
                if (type == 0 && elen >= 8) {
                        u8 apic = rd8(p + 3);
                        u32 flags = rd32(p + 4);
                        if ((flags & 1) && apic != bsp && acpi.nr_cpus < MAX_CPUS) acpi.apic_ids[acpi.nr_cpus++] = apic;
                }
                p += elen;
        }
}

/* Decode an AML integer at p (ZeroOp, OneOp, BytePrefix, WordPrefix); returns false if it is something else. */
static bool aml_int(u64 p, u8 *out)
{
        switch (rd8(p)) {
        case 0x00: *out = 0; return true;
        case 0x01: *out = 1; return true;
        case 0x0A: *out = rd8(p + 1); return true;
        case 0x0B: *out = rd8(p + 1); return true;
        default: return false;
        }
}

static void parse_dsdt(u64 t)
{
        if (!t || memcmp((const void *)t, "DSDT", 4) != 0) return;
        u32 len = rd32(t + 4);
        for (u64 p = t + 36; p + 8 < t + len; p++) {
                if (rd8(p) != '_' || memcmp((const void *)p, "_S5_", 4) != 0) continue;
                u64 q = p + 4;
                if (rd8(q) != 0x12) continue;                   /* PackageOp */
                q++;
                q += 1 + (rd8(q) >> 6);                         /* PkgLength */
                q++;                                            /* NumElements */
                u8 v;
                if (aml_int(q, &v)) {
                        acpi.s5_found = true;
                        acpi.s5_slp_typ = v & 7;
                        return;
                }
        }
}

static void parse_fadt(u64 t)
{
        u32 len = rd32(t + 4);
        u64 dsdt = rd32(t + 40);
        if (len >= 148 && rd64(t + 140)) dsdt = rd64(t + 140);
        acpi.dsdt = dsdt;
        acpi.pm1a_evt = rd32(t + 56);
        acpi.pm1a_cnt = rd32(t + 64);
        acpi.pm1b_cnt = rd32(t + 68);
        acpi.pm_tmr = rd32(t + 76);
        if (len >= 116) acpi.fadt_flags = rd32(t + 112);
        if (len >= 184 && !acpi.pm1a_cnt) {
                struct gas g;
                read_gas(t + 172, &g);
                if (g.space == 1 && g.addr < 0x10000) acpi.pm1a_cnt = (u32)g.addr;
        }
        if (len >= 256) read_gas(t + 244, &acpi.sleep_ctl);
        parse_dsdt(dsdt);
}

void acpi_init(void)
{
        acpi.nr_cpus = 1;
        acpi.apic_ids[0] = (u8)lapic_id();
        acpi.lapic_base = LAPIC_DEFAULT;
        if (boot.rsdp_paddr && is_rsdp(boot.rsdp_paddr)) {
                acpi.rsdp = boot.rsdp_paddr;
                acpi.rsdp_src = "pvh";
        } else {
                for (u64 a = 0xE0000; a < 0x100000; a += 16) {
                        if (is_rsdp(a)) {
                                acpi.rsdp = a;
                                acpi.rsdp_src = "scan";
                                break;
                        }
                }
        }
        if (!acpi.rsdp) return;
        acpi.rsdt = rd32(acpi.rsdp + 16);
        if (rd8(acpi.rsdp + 15) >= 2) acpi.xsdt = rd64(acpi.rsdp + 24);
        u64 root = acpi.xsdt ? acpi.xsdt : acpi.rsdt;
        int esz = acpi.xsdt ? 8 : 4;
        if (!root) return;
        u32 rlen = rd32(root + 4);
        for (u64 p = root + 36; p + esz <= root + rlen; p += esz) {
                u64 t = esz == 8 ? rd64(p) : rd32(p);
                if (!t) continue;
                if (memcmp((const void *)t, "APIC", 4) == 0 && !acpi.madt) {
                        acpi.madt = t;
                        parse_madt(t);
                } else if (memcmp((const void *)t, "FACP", 4) == 0 && !acpi.fadt) {
                        acpi.fadt = t;
                        parse_fadt(t);
                }
        }
}

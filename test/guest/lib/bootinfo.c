/*
 * PVH boot information: struct hvm_start_info (ebx at entry, saved in start_info_pa) is copied into `boot`
 * at the start of the BSP's CPL3 code, so later workloads may overwrite the original.
 *
 *   magic u32 @0 (0x336ec578), version u32 @4, flags u32 @8, nr_modules u32 @12, modlist_paddr u64 @16,
 *   cmdline_paddr u64 @24, rsdp_paddr u64 @32, memmap_paddr u64 @40, memmap_entries u32 @48
 *   module entry (32 bytes): paddr u64, size u64, cmdline_paddr u64, reserved u64
 *   memmap entry (24 bytes): addr u64, size u64, type u32, reserved u32
 *
 * Without a memory map (version 0 start_info, or memmap_paddr/memmap_entries = 0) the RAM size comes from the
 * CMOS (0x34/0x35: 64 KiB units above 16 MiB; 0x5B..0x5D: 64 KiB units above 4 GiB), else a 32 MiB default.
 */
#include "kiln.h"

#define HVM_START_MAGIC 0x336ec578

struct bootinfo boot;

static u8 cmos_read(u8 reg)
{
        outb(0x70, reg);
        return inb(0x71);
}

static void add_mem(u64 addr, u64 size, u32 type)
{
        if (boot.nr_memmap < MEMMAP_MAX && size) {
                boot.memmap[boot.nr_memmap].addr = addr;
                boot.memmap[boot.nr_memmap].size = size;
                boot.memmap[boot.nr_memmap].type = type;
                boot.nr_memmap++;
        }
}

static void memmap_fallback(void)
{
        u64 above16 = (u64)cmos_read(0x34) | (u64)cmos_read(0x35) << 8;
        u64 above4g = (u64)cmos_read(0x5B) | (u64)cmos_read(0x5C) << 8 | (u64)cmos_read(0x5D) << 16;
        add_mem(0, 0x9FC00, 1);
        add_mem(0x9FC00, 0x100000 - 0x9FC00, 2);
        if (above16 && above16 != 0xFFFF) {
                add_mem(0x100000, 0xF00000 + (above16 << 16), 1);
                if (above4g && above4g != 0xFFFFFF) add_mem(0x100000000UL, above4g << 16, 1);
                boot.memmap_src = "cmos";
        } else {
                add_mem(0x100000, 0x1F00000, 1);
                boot.memmap_src = "default";
        }
}

void bootinfo_init(void)
{
        const u8 *si = (const u8 *)start_info_pa;
        boot.start_info_pa = start_info_pa;
        boot.memmap_src = "pvh";
        if (si && *(const u32 *)si == HVM_START_MAGIC) {
                boot.valid = true;
                boot.magic = *(const u32 *)(si + 0);
                boot.version = *(const u32 *)(si + 4);
                boot.flags = *(const u32 *)(si + 8);
                u32 nr_modules = *(const u32 *)(si + 12);
                boot.modlist_paddr = *(const u64 *)(si + 16);
                boot.cmdline_paddr = *(const u64 *)(si + 24);
                boot.rsdp_paddr = *(const u64 *)(si + 32);
                if (boot.version >= 1) {
                        boot.memmap_paddr = *(const u64 *)(si + 40);
                        u32 n = *(const u32 *)(si + 48);
                        const u8 *mm = (const u8 *)boot.memmap_paddr;
                        for (u32 i = 0; mm && i < n && i < MEMMAP_MAX; i++)
                                add_mem(*(const u64 *)(mm + 24 * i), *(const u64 *)(mm + 24 * i + 8),
                                        *(const u32 *)(mm + 24 * i + 16));
                }
                const u8 *ml = (const u8 *)boot.modlist_paddr;
                for (u32 i = 0; ml && i < nr_modules && i < MODULES_MAX; i++) {
                        boot.modules[i].paddr = *(const u64 *)(ml + 32 * i);
                        boot.modules[i].size = *(const u64 *)(ml + 32 * i + 8);
                        boot.modules[i].cmdline_paddr = *(const u64 *)(ml + 32 * i + 16);
                        boot.nr_modules++;
                }
                const char *cl = (const char *)boot.cmdline_paddr;
                if (cl) {
                        size_t n = strnlen(cl, CMDLINE_MAX - 1);
                        memcpy(boot.cmdline, cl, n);
                        boot.cmdline[n] = 0;
                }
        } else if (si) {
                boot.magic = *(const u32 *)si;
        }
        if (boot.nr_memmap == 0) memmap_fallback();
}

u64 ram_bytes(void)
{
        u64 total = 0;
        for (int i = 0; i < boot.nr_memmap; i++)
                if (boot.memmap[i].type == 1) total += boot.memmap[i].size;
        return total;
}

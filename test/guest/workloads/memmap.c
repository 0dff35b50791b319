/* `memmap`: print the memory map the guest booted with, one `MEM addr=0x.. size=0x.. type=N` line per entry. */
#include "kiln.h"

static void early(void)
{
        if (!cmdline_has("memmap")) return;
        for (int i = 0; i < boot.nr_memmap; i++)
                say("MEM addr=0x%lx size=0x%lx type=%u", boot.memmap[i].addr, boot.memmap[i].size, boot.memmap[i].type);
}

WORKLOAD(10, memmap, .early = early);

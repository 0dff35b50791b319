/* `initrd`: for each PVH module print `MODULE i addr=0x.. size=N fnv1a64=0x<16 hex>` (FNV-1a 64 over its bytes). */
#include "kiln.h"

static u64 fnv1a64(const u8 *p, u64 n)
{
        u64 h = 0xcbf29ce484222325UL;
        for (u64 i = 0; i < n; i++) {
                h ^= p[i];
                h *= 0x100000001b3UL;
        }
        return h;
}

static void early(void)
{
        if (!cmdline_has("initrd")) return;
        for (int i = 0; i < boot.nr_modules; i++) {
                const struct module_info *m = &boot.modules[i];
                say("MODULE %d addr=0x%lx size=%lu fnv1a64=0x%016lx", i, m->paddr, m->size,
                    fnv1a64((const u8 *)m->paddr, m->size));
        }
}

WORKLOAD(20, initrd, .early = early);

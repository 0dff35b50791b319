/*
 * `acpi`: print what the guest found in the ACPI tables (a diagnostic for VMM developers):
 *   ACPI rsdp=0x.. src=pvh|scan xsdt=0x.. rsdt=0x.. madt=0x.. fadt=0x.. dsdt=0x..
 *   ACPI lapic=0x.. cpus=N pm1a_cnt=0x.. pm1b_cnt=0x.. pm_tmr=0x..
 *   ACPI sleep_ctl=0x.. s5=N hwreduced=0|1
 * (cpus = enabled MADT processors; s5=-1: no \_S5_ package found; 0x0 = not present)
 */
#include "kiln.h"

static void early(void)
{
        if (!cmdline_has("acpi")) return;
        say("ACPI rsdp=0x%lx src=%s xsdt=0x%lx rsdt=0x%lx madt=0x%lx fadt=0x%lx dsdt=0x%lx", acpi.rsdp,
            acpi.rsdp_src ? acpi.rsdp_src : "none", acpi.xsdt, acpi.rsdt, acpi.madt, acpi.fadt, acpi.dsdt);
        say("ACPI lapic=0x%lx cpus=%d pm1a_cnt=0x%x pm1b_cnt=0x%x pm_tmr=0x%x", acpi.lapic_base, acpi.nr_cpus,
            acpi.pm1a_cnt, acpi.pm1b_cnt, acpi.pm_tmr);
        say("ACPI sleep_ctl=0x%lx s5=%d hwreduced=%d", acpi.sleep_ctl.addr, acpi.s5_found ? acpi.s5_slp_typ : -1,
            (acpi.fadt_flags >> 20) & 1);
}

WORKLOAD(05, acpi, .early = early);

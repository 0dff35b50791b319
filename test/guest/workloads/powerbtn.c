/*
 * `powerbtn`: what acpid + shutdown do on a real guest. CPU 0 polls the ACPI PM1a status register
 * (FADT PM1a_EVT_BLK) every 5 ms; when the fixed power button's status bit (PWRBTN_STS, bit 8) is set
 * it prints `POWERBUTTON`, clears the bit (write 1 to clear) and powers off through ACPI S5.
 */
#include "kiln.h"

#define PM1_STS_PWRBTN 0x0100

static bool active;
static u64 next_poll;

static void setup(void)
{
        if (!cmdline_has("powerbtn")) return;
        if (!acpi.pm1a_evt) {
                say("NOTE powerbtn: no PM1a event block in the FADT");
                return;
        }
        active = true;
}

static u64 tick(int cpu, u64 now)
{
        if (!active || cpu != 0) return U64_MAX;
        if (now < next_poll) return next_poll;
        if (inw((u16)acpi.pm1a_evt) & PM1_STS_PWRBTN) {
                say("POWERBUTTON");
                outw((u16)acpi.pm1a_evt, PM1_STS_PWRBTN);
                do_action("poweroff");
        }
        next_poll = now + ms_to_tsc(5);
        return next_poll;
}

WORKLOAD(85, powerbtn, .setup = setup, .tick = tick);

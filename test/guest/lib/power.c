/*
 * End-of-run actions (then=...):
 *   poweroff     ACPI S5: SLP_TYP (from the DSDT's \_S5_ package) << 10 | SLP_EN (1 << 13), 16-bit out to the
 *                FADT's PM1a_CNT_BLK (and PM1b_CNT_BLK if set); on hardware-reduced ACPI without PM1a, an 8-bit
 *                write of SLP_TYP << 2 | SLP_EN (1 << 5) to the FADT's SLEEP_CONTROL_REG
 *   reset        out 0x64, 0xFE (keyboard-controller reset)
 *   cf9          out 0xCF9, 0x06
 *   triplefault  syscall: zero-limit IDT, then ud2
 *   halt         every CPU halts at CPL0 with interrupts off
 * poweroff/reset/cf9 that still run 500 ms later print `ACTION-FAILED name`, and every CPU halts.
 */
#include "kiln.h"

static const char *const actions[] = { "poweroff", "reset", "cf9", "triplefault", "halt" };

bool action_valid(const char *name, int len)
{
        for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
                if ((int)strlen(actions[i]) == len && memcmp(actions[i], name, len) == 0) return true;
        return false;
}

static bool eq(const char *a, const char *b) { return strlen(a) == strlen(b) && memcmp(a, b, strlen(a)) == 0; }

static void poweroff(void)
{
        u8 typ = acpi.s5_found ? acpi.s5_slp_typ : 0;
        if (acpi.pm1a_cnt) {
                say("NOTE poweroff pm1a_cnt=0x%x slp_typ=%u", acpi.pm1a_cnt, typ);
                say("ACTION poweroff");
                u16 v = (u16)((typ << 10) | (1 << 13));
                outw((u16)acpi.pm1a_cnt, v);
                if (acpi.pm1b_cnt) outw((u16)acpi.pm1b_cnt, v);
        } else if (acpi.sleep_ctl.addr && (acpi.sleep_ctl.space == 0 || acpi.sleep_ctl.space == 1)) {
                say("NOTE poweroff sleep_ctl=%s:0x%lx slp_typ=%u", acpi.sleep_ctl.space ? "io" : "mem",
                    acpi.sleep_ctl.addr, typ);
                say("ACTION poweroff");
                u8 v = (u8)(((typ & 7) << 2) | (1 << 5));
                if (acpi.sleep_ctl.space == 0) mmio_write8(acpi.sleep_ctl.addr, v);
                else outb((u16)acpi.sleep_ctl.addr, v);
        } else {
                say("NOTE poweroff: no PM1a_CNT_BLK or SLEEP_CONTROL_REG in the FADT");
                say("ACTION poweroff");
        }
}

__attribute__((noreturn)) void do_action(const char *name)
{
        if (eq(name, "poweroff")) {
                poweroff();
        } else {
                say("ACTION %s", name);
                if (eq(name, "reset")) outb(0x64, 0xFE);
                else if (eq(name, "cf9")) outb(0xCF9, 0x06);
                else if (eq(name, "triplefault")) syscall2(SYS_TRIPLEFAULT, 0, 0);
                else halt_everything();
        }
        sleep_ms(500);
        say("ACTION-FAILED %s", name);
        halt_everything();
}

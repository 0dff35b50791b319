/*
 * `echo`: CPU 0 polls COM1 (LSR bit 0, RBR) and prints `ECHO <line>` for each received line.  A line ends at
 * '\r' or '\n'; empty lines are dropped; a line longer than 94 characters is printed in 94-character pieces.
 * An empty poll sleeps 1 ms before the next one (every `in` is a VM exit).
 */
#include "kiln.h"

#define ECHO_MAX (LINE_MAX - 6)

static bool active;
static char buf[ECHO_MAX + 1];
static int len;
static u64 next_poll;

static void early(void)
{
        if (!cmdline_has("echo")) return;
        active = true;
        outb(0x3F8 + 2, 0x07);  /* FCR: enable and clear the FIFOs */
}

static void flush(void)
{
        if (!len) return;
        buf[len] = 0;
        say("ECHO %s", buf);
        len = 0;
}

static u64 tick(int cpu, u64 now)
{
        if (!active || cpu != 0) return U64_MAX;
        if (now < next_poll) return next_poll;
        int got = 0;
        while (got < 256 && serial_rx_ready()) {
                char c = (char)serial_rx();
                got++;
                if (c == '\r' || c == '\n') {
                        flush();
                } else {
                        buf[len++] = c;
                        if (len == ECHO_MAX) flush();
                }
        }
        next_poll = got ? now : now + ms_to_tsc(1);
        return next_poll;
}

WORKLOAD(50, echo, .early = early, .tick = tick);

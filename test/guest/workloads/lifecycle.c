/*
 * `then=ACTION` (poweroff | reset | cf9 | triplefault | halt), on CPU 0:
 *   after `runfor=MS` milliseconds past READY, or
 *   once every CPU has finished `passes=N` dirtier passes (only with an active dirtier),
 * whichever comes first; with neither, right after READY.
 */
#include "kiln.h"

static char action[16];
static u64 runfor;
static u64 passes;

static void early(void)
{
        const char *v;
        int l;
        if (!cmdline_str("then", &v, &l)) return;
        if (!action_valid(v, l)) {
                say("NOTE unknown then= action ignored");
                return;
        }
        memcpy(action, v, l);
        action[l] = 0;
}

static void setup(void)
{
        if (!action[0]) return;
        runfor = cmdline_u64("runfor", 0);
        passes = dirtier_active() ? cmdline_u64("passes", 0) : 0;
}

static u64 tick(int cpu, u64 now)
{
        if (!action[0] || cpu != 0) return U64_MAX;
        u64 next = U64_MAX;
        if (!runfor && !passes) do_action(action);
        if (runfor) {
                u64 deadline = ready_tsc + ms_to_tsc(runfor);
                if (now >= deadline) do_action(action);
                next = deadline;
        }
        if (passes) {
                if (dirtier_all_done(passes)) do_action(action);
                u64 poll = now + ms_to_tsc(1);
                if (poll < next) next = poll;
        }
        return next;
}

WORKLOAD(90, lifecycle, .early = early, .setup = setup, .tick = tick);

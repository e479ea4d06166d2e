/*
 * holds_pidfd.c — a counter that holds a pidfd, something pmig cannot restore
 * yet: a checkpoint must fail and leave it running, unless pmig-run was given
 * --drop-unsupported.
 *
 * Usage: holds_pidfd STEPS [OPEN_AT]
 *
 * The pidfd is opened at the start, or with OPEN_AT just before step OPEN_AT is printed (so a
 * checkpoint before that step succeeds and one after it fails; the real pid, as after a restore
 * getpid() answers the old one, which pidfd_open does not know).
 */
#include "common.h"

#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS [OPEN_AT]");
    long open_at = argc > 2 ? atol(argv[2]) : 0;
    if (open_at <= 0 && syscall(SYS_pidfd_open, getpid(), 0) < 0)
        return 4;
    for (long step = 1; step <= steps; step++) {
        if (step == open_at && syscall(SYS_pidfd_open, (pid_t)syscall(SYS_getpid), 0) < 0)
            return 4;
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

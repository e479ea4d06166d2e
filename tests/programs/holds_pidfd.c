/*
 * holds_pidfd.c — a counter that holds a pidfd, something pmig cannot restore
 * yet: a checkpoint must fail and leave it running, unless pmig-run was given
 * --drop-unsupported.
 *
 * Usage: holds_pidfd STEPS
 */
#include "common.h"

#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int pfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pfd < 0)
        return 4;
    for (long step = 1; step <= steps; step++) {
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

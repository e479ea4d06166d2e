/*
 * holds_inotify.c — a counter that holds an inotify fd, something pmig cannot
 * restore yet: a checkpoint must fail and leave it running, unless pmig-run
 * was given --drop-unsupported.
 *
 * Usage: holds_inotify STEPS
 */
#include "common.h"

#include <sys/inotify.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int in = inotify_init1(IN_NONBLOCK);
    if (in < 0 || inotify_add_watch(in, "/tmp", IN_CREATE) < 0)
        return 4;
    for (long step = 1; step <= steps; step++) {
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

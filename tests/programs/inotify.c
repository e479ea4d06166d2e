/*
 * inotify.c — an inotify watch on a directory keeps its descriptor and keeps
 * reporting: every step creates a file there and reads the IN_CREATE event,
 * checking the watch descriptor and the name.
 *
 * Usage: inotify STEPS DIR
 */
#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS DIR");
    if (argc < 3)
        return 2;
    int in = inotify_init1(IN_NONBLOCK);
    int other = inotify_add_watch(in, "/tmp", IN_DELETE_SELF);
    int wd = inotify_add_watch(in, argv[2], IN_CREATE);
    if (in < 0 || other < 0 || wd < 0)
        return 4;
    for (long step = 1; step <= steps; step++) {
        char name[64], path[4096];
        snprintf(name, sizeof name, "f%ld", step);
        snprintf(path, sizeof path, "%s/%s", argv[2], name);
        int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
        if (fd < 0)
            corrupt("step %ld: cannot create %s", step, path);
        close(fd);
        struct pollfd p = {in, POLLIN, 0};
        int n;
        do
            n = poll(&p, 1, 2000);
        while (n < 0 && errno == EINTR);
        char buf[4096] __attribute__((aligned(8)));
        ssize_t got = n == 1 ? read(in, buf, sizeof buf) : -1;
        struct inotify_event *ev = (struct inotify_event *)buf;
        if (got < (ssize_t)sizeof *ev || ev->wd != wd || !(ev->mask & IN_CREATE) || strcmp(ev->name, name) != 0)
            corrupt("step %ld: no IN_CREATE event for %s on watch %d (got %zd bytes, wd %d)", step, name, wd, got,
                    got > 0 ? ev->wd : -1);
        unlink(path);
        /* Drain the (unwatched) rest. */
        while (read(in, buf, sizeof buf) > 0)
            ;
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

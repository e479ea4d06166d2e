/*
 * epoll_stale.c — epoll registrations that outlive the fd number they were made through:
 * an eventfd registered as fd 20 (a dup of it) whose number 20 is then closed and given to
 * a pipe's read end, which is registered as fd 20 too: two registrations under one number,
 * for two files. Every step the program makes both ready and epoll_wait must report both
 * (data 0xA for the eventfd, 0xB for the pipe), then drains them.
 *
 * Usage: epoll_stale STEPS
 */
#include "common.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int ev = eventfd(0, EFD_NONBLOCK);
    int p[2];
    int ep = epoll_create1(0);
    if (ev < 0 || ep < 0 || pipe(p) != 0 || dup2(ev, 20) != 20)
        corrupt("setup: %s", strerror(errno));
    struct epoll_event a = {.events = EPOLLIN, .data.u64 = 0xA}, b = {.events = EPOLLIN, .data.u64 = 0xB};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 20, &a) != 0 || dup2(p[0], 20) != 20 || epoll_ctl(ep, EPOLL_CTL_ADD, 20, &b) != 0)
        corrupt("registering: %s", strerror(errno));
    close(p[0]);
    for (long step = 1; step <= steps; step++) {
        uint64_t one = 1;
        if (write(ev, &one, sizeof one) != sizeof one || write(p[1], "x", 1) != 1)
            corrupt("step %ld: making them ready: %s", step, strerror(errno));
        struct epoll_event got[4];
        int seen = 0;
        for (int tries = 0; tries < 4 && seen != 3; tries++) {
            int n;
            while ((n = epoll_wait(ep, got, 4, 2000)) < 0 && errno == EINTR)
                ;
            for (int i = 0; i < n; i++)
                seen |= got[i].data.u64 == 0xA ? 1 : got[i].data.u64 == 0xB ? 2 : 4;
        }
        if (seen != 3)
            corrupt("step %ld: epoll reported %#x (1: the eventfd, 2: the pipe, 4: something else)", step, seen);
        uint64_t c;
        char x;
        if (read(ev, &c, sizeof c) != sizeof c || read(20, &x, 1) != 1)
            corrupt("step %ld: draining: %s", step, strerror(errno));
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

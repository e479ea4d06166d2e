/*
 * tree_share.c — two processes that share sockets and kernel objects, made before the fork:
 *
 * - a stream socketpair split between them (the parent keeps one end, the child the other):
 *   the parent keeps two requests in flight, the child answers each (3 * step + 1) after a
 *   short rest, so bytes are queued on either side when a checkpoint comes;
 * - a SOCK_SEQPACKET socketpair both hold both ends of: the child sends "s<step>" through
 *   one end per request, the parent receives it from the other;
 * - an eventfd the child adds 1 to per answer, registered in an epoll set the parent waits
 *   on (epoll_wait must see it readable, the counts must add up at the end);
 * - a listening TCP socket both hold (never used: it is checked to stay one socket);
 * - a process group the child leads, which a second child (forked later, a sibling) joins:
 *   every step the parent checks both children's groups; the sibling checks its own when the
 *   parent closes its pipe at the end.
 *
 * Each request, the child checks with kcmp that the listener, the eventfd, the epoll set and
 * both ends of the seqpacket pair are still the very open files its parent holds (one object,
 * not two copies), and that its parent is still its parent; it answers -1 otherwise.
 *
 * Usage: tree_share STEPS
 */
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KCMP_FILE 0

static int pr[2], both[2], ev, ep, lst;

static int same_file(pid_t a, pid_t b, int fd)
{
    return syscall(SYS_kcmp, a, b, KCMP_FILE, fd, fd) == 0;
}

static void child(pid_t parent)
{
    long step;
    for (;;) {
        ssize_t r = read(pr[1], &step, sizeof step);
        if (r == 0)
            _exit(0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r != sizeof step)
            _exit(10);
        sleep_ms(10);
        long answer = 3 * step + 1;
        pid_t me = (pid_t)syscall(SYS_getpid);
        if (getppid() != parent)
            answer = -1;
        int fds[] = {lst, ev, ep, both[0], both[1]};
        for (int i = 0; i < 5; i++)
            if (!same_file(parent, me, fds[i]))
                answer = -10 - i;
        char pkt[32];
        int n = snprintf(pkt, sizeof pkt, "s%ld", step);
        if (send(both[1], pkt, (size_t)n, 0) != n)
            _exit(11);
        uint64_t one = 1;
        if (write(ev, &one, sizeof one) != sizeof one)
            _exit(12);
        if (write(pr[1], &answer, sizeof answer) != sizeof answer)
            _exit(13);
    }
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    pid_t parent = getpid();
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pr) != 0 || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, both) != 0)
        return 4;
    ev = eventfd(0, EFD_NONBLOCK);
    ep = epoll_create1(0);
    lst = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (ev < 0 || ep < 0 || lst < 0 || bind(lst, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lst, 4) != 0)
        return 4;
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 0x5eed};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) != 0)
        return 4;
    pid_t kid = fork();
    if (kid < 0)
        return 4;
    if (kid == 0) {
        close(pr[0]);
        child(parent);
    }
    close(pr[1]);
    setpgid(kid, kid);
    int sibp[2];
    if (pipe(sibp) != 0)
        return 4;
    pid_t sib = fork();
    if (sib < 0)
        return 4;
    if (sib == 0) {
        close(sibp[1]);
        close(pr[0]);
        if (setpgid(0, kid) != 0)
            _exit(30);
        char c;
        while (read(sibp[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(getpgrp() == kid ? 0 : 31);
    }
    close(sibp[0]);
    while (getpgid(sib) != kid)
        sleep_ms(1);

    uint64_t events = 0;
    long sent = 0;
    for (; sent < 2 && sent < steps; sent++) {
        long s = sent + 1;
        if (write(pr[0], &s, sizeof s) != sizeof s)
            corrupt("cannot write request %ld: %s", s, strerror(errno));
    }
    for (long step = 1; step <= steps; step++) {
        long answer = 0;
        ssize_t r;
        while ((r = read(pr[0], &answer, sizeof answer)) < 0 && errno == EINTR)
            ;
        if (r != sizeof answer)
            corrupt("step %ld: the child did not answer (%zd: %s)", step, r, strerror(errno));
        if (answer != 3 * step + 1)
            corrupt("step %ld: the child answered %ld, not %ld (-1: not its parent; -10..-14: fd not shared)", step, answer,
                    3 * step + 1);
        char pkt[32], want[32];
        snprintf(want, sizeof want, "s%ld", step);
        while ((r = recv(both[0], pkt, sizeof pkt - 1, 0)) < 0 && errno == EINTR)
            ;
        if (r < 0)
            corrupt("step %ld: recv on the seqpacket pair: %s", step, strerror(errno));
        pkt[r] = 0;
        if (strcmp(pkt, want) != 0)
            corrupt("step %ld: the seqpacket pair gave '%s', not '%s'", step, pkt, want);
        /* The child adds 1 to the eventfd before each answer: until the answers read are
           counted, the eventfd is readable, and the epoll set must say so. */
        while (events < (uint64_t)step) {
            struct epoll_event got;
            int n;
            while ((n = epoll_wait(ep, &got, 1, 5000)) < 0 && errno == EINTR)
                ;
            if (n != 1 || got.data.u64 != 0x5eed || !(got.events & EPOLLIN))
                corrupt("step %ld: the epoll set did not report the eventfd (%d)", step, n);
            uint64_t c = 0;
            if (read(ev, &c, sizeof c) != sizeof c)
                corrupt("step %ld: the eventfd was reported readable, but: %s", step, strerror(errno));
            events += c;
        }
        if (sent < steps) {
            long s = ++sent;
            if (write(pr[0], &s, sizeof s) != sizeof s)
                corrupt("cannot write request %ld: %s", s, strerror(errno));
        }
        if (getpgid(kid) != kid || getpgid(sib) != kid)
            corrupt("step %ld: the children's process groups are %d and %d, not %d", step, (int)getpgid(kid), (int)getpgid(sib),
                    (int)kid);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    close(pr[0]);
    close(sibp[1]);
    int st = 0;
    if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        corrupt("the child ended with status %#x", st);
    if (waitpid(sib, &st, 0) != sib || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        corrupt("the sibling ended with status %#x (31: not in its group)", st);
    uint64_t c = 0;
    if (read(ev, &c, sizeof c) == sizeof c)
        events += c;
    if (events != (uint64_t)steps)
        corrupt("the eventfd counted %llu answers, not %ld", (unsigned long long)events, steps);
    return 0;
}

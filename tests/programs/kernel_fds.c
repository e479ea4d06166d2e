/*
 * kernel_fds.c — fds beyond regular files, each checked to *work* every step:
 * a pipe with bytes written but not yet read (one is read per step), a dup of
 * its read end (shared open file description), a dup of its write end above
 * fd 1000, an eventfd in semaphore mode, a timerfd watched by an epoll set
 * (registration data checked), a signalfd, a file deleted while open, a memfd,
 * /dev/null, /dev/zero and /dev/urandom, an O_APPEND log opened once and dup'd
 * (shared offset), an O_NONBLOCK pipe end, and a FIFO with bytes in it.
 *
 * Usage: kernel_fds STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define QUEUED "abcdefghijklmnopqrstuvwxyz0123456789"

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    size_t nq = strlen(QUEUED);
    int p[2];
    if (pipe(p) != 0 || write(p[1], QUEUED, nq) != (ssize_t)nq)
        return 4;
    int rd2 = dup(p[0]);
    int hi = fcntl(p[1], F_DUPFD, 1500);
    int efd = eventfd(7, EFD_SEMAPHORE);
    /* A counter whose value has hex digits a-f (the kernel shows it in hex). */
    const uint64_t BIG = 0x1234abcdULL;
    int cfd = eventfd(0, 0);
    uint64_t big = BIG;
    if (cfd < 0 || write(cfd, &big, 8) != 8)
        return 4;
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 10 * 1000000}, {0, 10 * 1000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xfeedbeefULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    char tmpl[] = "/tmp/pmig-deleted-XXXXXX";
    int del = mkstemp(tmpl);
    if (del < 0 || write(del, "deleted-content", 15) != 15)
        return 4;
    unlink(tmpl);
    int nul = open("/dev/null", O_WRONLY);
    char logp[] = "/tmp/pmig-append-XXXXXX";
    int lfd = mkstemp(logp);
    close(lfd);
    int app = open(logp, O_WRONLY | O_APPEND);
    int app2 = dup(app);
    unlink(logp);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sfd = signalfd(-1, &m, 0);
    int zero = open("/dev/zero", O_RDONLY), urandom = open("/dev/urandom", O_RDONLY);
    int nb[2];
    if (pipe2(nb, O_NONBLOCK) != 0 || zero < 0 || urandom < 0)
        return 4;
    char fifo[] = "/tmp/pmig-fifo-XXXXXX";
    if (!mkdtemp(fifo))
        return 4;
    char fifo_path[64];
    snprintf(fifo_path, sizeof fifo_path, "%s/f", fifo);
    if (mkfifo(fifo_path, 0600) != 0)
        return 4;
    int ff = open(fifo_path, O_RDWR);
    if (ff < 0 || write(ff, "fifo-bytes", 10) != 10)
        return 4;
    int mfd = memfd_create("pmig-test-memfd", 0);
    if (mfd < 0 || write(mfd, "memfd!", 6) != 6)
        return 4;
    if (rd2 < 0 || hi < 0 || efd < 0 || tfd < 0 || ep < 0 || nul < 0 || app < 0 || app2 < 0 || sfd < 0)
        return 4;

    long nread = 0;
    for (long step = 1; step <= steps; step++) {
        char c;
        /* One queued byte per step, alternately through each read fd. */
        if ((size_t)nread < nq) {
            if (read(step % 2 ? p[0] : rd2, &c, 1) != 1 || c != QUEUED[nread])
                corrupt("step %ld: pipe gave '%c', expected '%c'", step, c, QUEUED[nread]);
            nread++;
        } else {
            if (write(hi, "x", 1) != 1 || read(p[0], &c, 1) != 1 || c != 'x')
                corrupt("step %ld: pipe through fd %d does not carry bytes", step, hi);
        }
        uint64_t v = 0;
        if (read(efd, &v, 8) != 8 || v != 1)
            corrupt("step %ld: eventfd semaphore read gave %llu", step, (unsigned long long)v);
        v = 1;
        if (write(efd, &v, 8) != 8)
            corrupt("step %ld: eventfd write failed", step);
        if (read(cfd, &v, 8) != 8 || v != BIG)
            corrupt("step %ld: the eventfd counter reads %#llx, not %#llx", step, (unsigned long long)v,
                    (unsigned long long)BIG);
        if (write(cfd, &v, 8) != 8)
            corrupt("step %ld: eventfd counter write failed", step);
        struct epoll_event out;
        int n;
        do
            n = epoll_wait(ep, &out, 1, 2000);
        while (n < 0 && errno == EINTR);
        if (n != 1 || out.data.u64 != 0xfeedbeefULL)
            corrupt("step %ld: epoll_wait gave %d (data %llx)", step, n, (unsigned long long)out.data.u64);
        uint64_t ticks = 0;
        if (read(tfd, &ticks, 8) != 8 || ticks < 1)
            corrupt("step %ld: timerfd gave no ticks", step);
        char buf[32] = {0};
        if (pread(del, buf, 15, 0) != 15 || memcmp(buf, "deleted-content", 15) != 0)
            corrupt("step %ld: deleted file content lost", step);
        if (write(nul, "x", 1) != 1)
            corrupt("step %ld: /dev/null write failed", step);
        if (write(app, "1", 1) != 1 || write(app2, "2", 1) != 1 || lseek(app, 0, SEEK_CUR) != 2 * step)
            corrupt("step %ld: shared O_APPEND offset is %lld", step, (long long)lseek(app, 0, SEEK_CUR));
        if (!(fcntl(app, F_GETFL) & O_APPEND) || fcntl(efd, F_GETFD) != 0 || fcntl(hi, F_GETFD) != 0)
            corrupt("step %ld: fd flags changed", step);
        kill(getpid(), SIGUSR1);
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR1)
            corrupt("step %ld: signalfd did not deliver SIGUSR1", step);
        if (pread(mfd, buf, 6, 0) != 6 || memcmp(buf, "memfd!", 6) != 0)
            corrupt("step %ld: memfd content lost", step);
        char z[8] = {1, 1, 1, 1, 1, 1, 1, 1};
        if (read(zero, z, 8) != 8 || memcmp(z, "\0\0\0\0\0\0\0\0", 8) != 0 || read(urandom, z, 8) != 8)
            corrupt("step %ld: /dev/zero or /dev/urandom no longer reads", step);
        if (!(fcntl(nb[0], F_GETFL) & O_NONBLOCK) || read(nb[0], z, 1) != -1 || errno != EAGAIN)
            corrupt("step %ld: the O_NONBLOCK pipe end blocks or lost its flag", step);
        /* The FIFO always holds "fifo-bytes" between steps: read it, check it, put it back. */
        if (read(ff, buf, 10) != 10 || memcmp(buf, "fifo-bytes", 10) != 0 || write(ff, "fifo-bytes", 10) != 10)
            corrupt("step %ld: the FIFO lost its queued bytes", step);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    unlink(fifo_path);
    rmdir(fifo);
    return 0;
}

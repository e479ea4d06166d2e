/*
 * locks.c — file locks held across checkpoints: an exclusive flock on file A, POSIX record
 * locks on file B (a write lock on bytes 10-19, a read lock from byte 100 to the end), and an
 * OFD write lock on bytes 0-4 of file C. Every step a forked checker, another process, must
 * find each lock held: a flock on a new description of A fails with EWOULDBLOCK; F_GETLK on
 * B's bytes 10-19 reports a write lock of its parent, a write lock probe at byte 200 reports
 * the read lock, and byte 5 is free; F_OFD_GETLK on C's bytes 0-4 reports a write lock. Its
 * exit status names the first check that failed. The program also holds a read lease on file
 * D (F_SETLEASE), checked with F_GETLEASE.
 *
 * Usage: locks STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static char a[64], b[64], c[64], d[64];

static int probe(int fd, int cmd, short type, off_t start, off_t len, struct flock *out)
{
    memset(out, 0, sizeof *out);
    out->l_type = type;
    out->l_whence = SEEK_SET;
    out->l_start = start;
    out->l_len = len;
    return fcntl(fd, cmd, out);
}

static int check(pid_t parent)
{
    int fa = open(a, O_RDWR), fb = open(b, O_RDWR), fc = open(c, O_RDWR);
    if (fa < 0 || fb < 0 || fc < 0)
        return 20;
    if (flock(fa, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
        return 21;
    struct flock fl;
    if (probe(fb, F_GETLK, F_WRLCK, 10, 10, &fl) != 0 || fl.l_type != F_WRLCK || fl.l_pid != parent || fl.l_start != 10 || fl.l_len != 10)
        return 22;
    if (probe(fb, F_GETLK, F_WRLCK, 200, 1, &fl) != 0 || fl.l_type != F_RDLCK || fl.l_start != 100 || fl.l_len != 0)
        return 23;
    if (probe(fb, F_GETLK, F_WRLCK, 5, 1, &fl) != 0 || fl.l_type != F_UNLCK)
        return 24;
    if (probe(fc, F_OFD_GETLK, F_WRLCK, 0, 5, &fl) != 0 || fl.l_type != F_WRLCK || fl.l_len != 5)
        return 25;
    return 0;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    pid_t me = getpid();
    snprintf(a, sizeof a, "locks-%d-a", (int)me);
    snprintf(b, sizeof b, "locks-%d-b", (int)me);
    snprintf(c, sizeof c, "locks-%d-c", (int)me);
    snprintf(d, sizeof d, "locks-%d-d", (int)me);
    int fd0 = open(d, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd0 < 0)
        corrupt("open %s: %s", d, strerror(errno));
    close(fd0);
    int fdl = open(d, O_RDONLY);
    if (fdl < 0 || fcntl(fdl, F_SETLEASE, F_RDLCK) != 0)
        corrupt("taking the lease: %s", strerror(errno));
    int fa = open(a, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int fb = open(b, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int fc = open(c, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fa < 0 || fb < 0 || fc < 0)
        corrupt("open: %s", strerror(errno));
    struct flock fl;
    if (flock(fa, LOCK_EX) != 0 || probe(fb, F_SETLK, F_WRLCK, 10, 10, &fl) != 0 || probe(fb, F_SETLK, F_RDLCK, 100, 0, &fl) != 0 ||
        probe(fc, F_OFD_SETLK, F_WRLCK, 0, 5, &fl) != 0)
        corrupt("taking the locks: %s", strerror(errno));
    for (long step = 1; step <= steps; step++) {
        pid_t kid = fork();
        if (kid < 0)
            corrupt("fork: %s", strerror(errno));
        if (kid == 0)
            _exit(check(getppid()));
        int st = 0;
        while (waitpid(kid, &st, 0) < 0)
            if (errno != EINTR)
                corrupt("waitpid: %s", strerror(errno));
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            corrupt("step %ld: a lock is not held any more (checker status %#x: 21 flock, 22-24 POSIX, 25 OFD)", step, st);
        if (fcntl(fdl, F_GETLEASE) != F_RDLCK)
            corrupt("step %ld: the read lease is not held any more", step);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    unlink(a);
    unlink(b);
    unlink(c);
    unlink(d);
    return 0;
}

/*
 * badptr.c — wrapped libc calls given bad pointers must fail with EFAULT, as they do without
 * pmig, and not crash the program (in particular after a restore, when pmig's wrappers read
 * paths to translate /proc/<pid>).
 *
 * Usage: badptr STEPS
 *
 * Every step calls stat, lstat, open, openat, fopen, access, readlink, readlinkat, fstatat,
 * inotify_add_watch with the path (void *)-1 and (void *)16, and sigprocmask and
 * pthread_sigmask with such an old-set pointer; each must fail with EFAULT. (Plain glibc
 * itself faults on a bad *new* signal set, a bad sigaction or a bad opendir path, so those
 * are not called.) Then /proc/<getpid()> must still be found.
 */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static int ino_fd = -1;

static void expect_efault(const char *what, const void *bad, long r, int err)
{
    if (r != -1 || err != EFAULT)
        corrupt("%s(%p) returned %ld, errno %d (%s); expected -1 and EFAULT", what, bad, r, err, strerror(err));
}

static void bad_calls(void *bad)
{
    struct stat st;
    char buf[64];
    sigset_t old;
    int r;

    errno = 0;
    r = stat(bad, &st);
    expect_efault("stat", bad, r, errno);
    errno = 0;
    r = lstat(bad, &st);
    expect_efault("lstat", bad, r, errno);
    errno = 0;
    r = open(bad, O_RDONLY);
    expect_efault("open", bad, r, errno);
    errno = 0;
    r = openat(AT_FDCWD, bad, O_RDONLY);
    expect_efault("openat", bad, r, errno);
    errno = 0;
    FILE *f = fopen(bad, "r");
    expect_efault("fopen", bad, f ? 0 : -1, errno);
    errno = 0;
    r = access(bad, R_OK);
    expect_efault("access", bad, r, errno);
    errno = 0;
    r = (int)readlink(bad, buf, sizeof buf);
    expect_efault("readlink", bad, r, errno);
    errno = 0;
    r = (int)readlinkat(AT_FDCWD, bad, buf, sizeof buf);
    expect_efault("readlinkat", bad, r, errno);
    errno = 0;
    r = fstatat(AT_FDCWD, bad, &st, 0);
    expect_efault("fstatat", bad, r, errno);
    errno = 0;
    r = inotify_add_watch(ino_fd, bad, IN_ALL_EVENTS);
    expect_efault("inotify_add_watch", bad, r, errno);
    errno = 0;
    r = sigprocmask(SIG_BLOCK, NULL, bad);
    expect_efault("sigprocmask (old set)", bad, r, errno);
    r = pthread_sigmask(SIG_BLOCK, NULL, bad);
    expect_efault("pthread_sigmask (old set)", bad, r == 0 ? 0 : -1, r);
    /* The good calls still work. */
    if (sigprocmask(SIG_BLOCK, NULL, &old) != 0 || pthread_sigmask(SIG_BLOCK, NULL, &old) != 0)
        corrupt("sigprocmask with good pointers failed");
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    void *volatile bads[2] = {(void *)-1L, (void *)16};
    char self[64];

    ino_fd = inotify_init1(IN_CLOEXEC);
    if (ino_fd < 0)
        return 4;
    for (long step = 1; step <= steps; step++) {
        struct stat st;
        bad_calls(bads[0]);
        bad_calls(bads[1]);
        snprintf(self, sizeof self, "/proc/%d/status", (int)getpid());
        if (stat(self, &st) != 0)
            corrupt("stat(%s): %s", self, strerror(errno));
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

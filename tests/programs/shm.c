/*
 * shm.c — shared memory that must stay shared after restore: a memfd mapped
 * shared and also written through its fd, a second mapping of the same memfd
 * (writes through one are seen through the other), a memfd mapped and then
 * closed, a deleted file mapped shared, MAP_SHARED|MAP_ANONYMOUS, and a POSIX
 * shm object (shm_open), mapped twice.
 *
 * Usage: shm STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define SZ (64 * 1024)

static char *map_fd(int fd)
{
    char *p = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        corrupt("mmap: %s", strerror(errno));
    return p;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int mfd = memfd_create("pmig-shm-test", 0);
    if (mfd < 0 || ftruncate(mfd, SZ) != 0)
        return 4;
    char *a = map_fd(mfd), *b = map_fd(mfd);
    int tmp = memfd_create("closed-after-map", 0);
    ftruncate(tmp, SZ);
    char *c = map_fd(tmp);
    close(tmp);
    char path[] = "/tmp/pmig-shm-del-XXXXXX";
    int dfd = mkstemp(path);
    ftruncate(dfd, SZ);
    char *d = map_fd(dfd);
    unlink(path);
    char *e = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char shmname[64];
    snprintf(shmname, sizeof shmname, "/pmig-test-%d", getpid());
    int sfd = shm_open(shmname, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (sfd < 0 || ftruncate(sfd, SZ) != 0)
        return 4;
    char *s1 = map_fd(sfd), *s2 = map_fd(sfd);
    close(sfd);
    if (e == MAP_FAILED)
        return 4;
    for (long step = 1; step <= steps; step++) {
        char v = (char)('A' + step % 26);
        size_t at = (size_t)(step * 4099) % SZ;
        a[at] = v;
        if (b[at] != v)
            corrupt("step %ld: memfd mappings no longer shared", step);
        char got = 0;
        if (pread(mfd, &got, 1, (off_t)at) != 1 || got != v)
            corrupt("step %ld: memfd fd does not see the mapping's write", step);
        char w = (char)(v + 1);
        if (pwrite(mfd, &w, 1, (off_t)(at + 1) % SZ) != 1 || a[(at + 1) % SZ] != w)
            corrupt("step %ld: memfd mapping does not see the fd's write", step);
        if (step > 1) {
            char pv = (char)('A' + (step - 1) % 26);
            size_t pat = (size_t)((step - 1) * 4099) % SZ;
            if (c[pat] != pv || d[pat] != pv || e[pat] != pv || s2[pat] != pv)
                corrupt("step %ld: previous step's bytes lost (%d %d %d %d)", step, c[pat], d[pat], e[pat], s2[pat]);
        }
        c[at] = v;
        d[at] = v;
        e[at] = v;
        s1[at] = v;
        if (s2[at] != v)
            corrupt("step %ld: POSIX shm mappings no longer shared", step);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    shm_unlink(shmname);
    return 0;
}

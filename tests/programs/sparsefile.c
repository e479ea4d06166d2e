/*
 * sparsefile.c — sparse files pmig carries: a deleted file of 256 MiB with data only at its
 * start and at 200 MiB, and a memfd of 128 MiB with data only at 64 MiB. Every step checks
 * the data, that a rotating sample of the holes reads as zeros, and that each file still
 * takes little space (st_blocks: its holes stayed holes). The test checks the image stays
 * small (holes are not stored as zeros).
 *
 * Usage: sparsefile STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1024L * 1024)

static void check(int fd, const char *what, off_t at, const char *want, long step)
{
    char got[64] = {0};
    size_t n = strlen(want);
    if (pread(fd, got, n, at) != (ssize_t)n || memcmp(got, want, n) != 0)
        corrupt("step %ld: %s at %ld reads '%.*s'", step, what, (long)at, (int)n, got);
}

static void check_hole(int fd, const char *what, off_t at, long step)
{
    char z[512];
    if (pread(fd, z, sizeof z, at) != (ssize_t)sizeof z)
        corrupt("step %ld: %s: cannot read at %ld", step, what, (long)at);
    for (size_t i = 0; i < sizeof z; i++)
        if (z[i])
            corrupt("step %ld: %s: byte %ld of a hole is %d", step, what, (long)(at + (off_t)i), z[i]);
}

static void check_small(int fd, const char *what, off_t size, long step)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != size)
        corrupt("step %ld: %s: size %ld, want %ld", step, what, (long)st.st_size, (long)size);
    if (st.st_blocks * 512L > 4 * MIB)
        corrupt("step %ld: %s takes %ld KiB: its holes were filled", step, what, (long)st.st_blocks / 2);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    char path[64];
    snprintf(path, sizeof path, "sparsefile-%d", (int)getpid());
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int m = memfd_create("sparse", 0);
    if (f < 0 || m < 0 || unlink(path) != 0)
        corrupt("setup: %s", strerror(errno));
    if (pwrite(f, "head of the file", 16, 0) != 16 || pwrite(f, "in the middle", 13, 200 * MIB) != 13 || ftruncate(f, 256 * MIB) != 0 ||
        ftruncate(m, 128 * MIB) != 0 || pwrite(m, "memfd data", 10, 64 * MIB) != 10)
        corrupt("writes: %s", strerror(errno));
    for (long step = 1; step <= steps; step++) {
        check(f, "deleted file", 0, "head of the file", step);
        check(f, "deleted file", 200 * MIB, "in the middle", step);
        check(m, "memfd", 64 * MIB, "memfd data", step);
        off_t probe = (step * 7919L * 4096L) % (190 * MIB) + 4096;
        check_hole(f, "deleted file", probe, step);
        check_hole(m, "memfd", probe % (60 * MIB) + 4096, step);
        check_small(f, "the deleted file", 256 * MIB, step);
        check_small(m, "the memfd", 128 * MIB, step);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

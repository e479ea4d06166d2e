/*
 * privmap.c — a private mapping of a deleted file the program still holds open: the pages it
 * wrote through the mapping are its own (the file keeps its bytes), the others are the
 * file's. Every step the program writes a new value into page 2 through the fd and must read
 * it through the mapping (still tied to the file), while page 0, written through the
 * mapping once, keeps the program's value and the file its own.
 *
 * Usage: privmap STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    char path[64], page[PG];
    snprintf(path, sizeof path, "privmap-%d", (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        corrupt("open: %s", strerror(errno));
    for (int i = 0; i < 4; i++) {
        memset(page, 'a' + i, PG);
        if (pwrite(fd, page, PG, (off_t)i * PG) != PG)
            corrupt("pwrite: %s", strerror(errno));
    }
    char *m = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED || unlink(path) != 0)
        corrupt("mmap/unlink: %s", strerror(errno));
    memcpy(m, "private!", 8);
    for (long step = 1; step <= steps; step++) {
        char v[32], got = 0;
        int n = snprintf(v, sizeof v, "value %ld", step);
        if (pwrite(fd, v, (size_t)n + 1, 2 * PG) != n + 1)
            corrupt("step %ld: pwrite: %s", step, strerror(errno));
        if (strcmp(m + 2 * PG, v) != 0)
            corrupt("step %ld: the mapping's page 2 reads '%.16s', the file has '%s' (no longer tied to the file)", step, m + 2 * PG, v);
        if (memcmp(m, "private!", 8) != 0 || m[PG - 1] != 'a' || m[PG + 5] != 'b' || m[3 * PG + 7] != 'd')
            corrupt("step %ld: the mapping's own or untouched pages changed", step);
        if (pread(fd, &got, 1, 0) != 1 || got != 'a')
            corrupt("step %ld: the file's page 0 changed ('%c'): a private write reached it", step, got);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

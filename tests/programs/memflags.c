/*
 * memflags.c — flags a program sets on its memory, checked every step in
 * /proc/self/smaps' VmFlags: a MAP_NORESERVE region ("nr") and one without it, regions
 * given MADV_DONTFORK ("dc"), MADV_DONTDUMP ("dd"), MADV_NOHUGEPAGE ("nh"),
 * MADV_WIPEONFORK ("wf"), MADV_RANDOM ("rr"), and one locked with mlock ("lo"). Each holds
 * a pattern, checked too. A read-only shared mapping of a file opened for writing (the fd
 * closed since) can still be made writable with mprotect, and what is written through it
 * reaches the file.
 *
 * Usage: memflags STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define N 8
#define LEN (64 * 1024)

static char *r[N];
static const char *want[N] = {"nr", NULL, "dc", "dd", "nh", "wf", "rr", "lo"};

/* Whether region `p`'s VmFlags has `flag` (2 letters). */
static int has_flag(char *p, const char *flag)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = -1;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = (unsigned long)p >= a && (unsigned long)p < b;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char pad[8];
            snprintf(pad, sizeof pad, " %s", flag);
            found = strstr(line + 8, pad) != NULL;
            break;
        }
    }
    if (f)
        fclose(f);
    return found;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int advice[N] = {0, 0, MADV_DONTFORK, MADV_DONTDUMP, MADV_NOHUGEPAGE, MADV_WIPEONFORK, MADV_RANDOM, 0};
    for (int i = 0; i < N; i++) {
        /* A guard page between regions keeps the kernel from merging them. */
        char *base = mmap(NULL, LEN + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | (i == 0 ? MAP_NORESERVE : 0), -1, 0);
        if (base == MAP_FAILED || munmap(base + LEN, 4096) != 0)
            corrupt("mmap: %s", strerror(errno));
        r[i] = base;
        if (advice[i] && madvise(r[i], LEN, advice[i]) != 0)
            corrupt("madvise %d: %s", i, strerror(errno));
        memset(r[i], 'a' + i, LEN);
    }
    if (mlock(r[7], LEN) != 0)
        corrupt("mlock: %s", strerror(errno));
    char path[64];
    snprintf(path, sizeof path, "memflags-%d.map", (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 4096) != 0)
        corrupt("map file: %s", strerror(errno));
    char *ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    if (ro == MAP_FAILED)
        corrupt("mmap of the file: %s", strerror(errno));
    close(fd);
    for (long step = 1; step <= steps; step++) {
        for (int i = 0; i < N; i++) {
            if (r[i][0] != 'a' + i || r[i][LEN - 1] != 'a' + i)
                corrupt("step %ld: region %d lost its content", step, i);
            if (want[i] && has_flag(r[i], want[i]) != 1)
                corrupt("step %ld: region %d lost its flag %s", step, i, want[i]);
            if (!want[i] && has_flag(r[i], "nr") != 0)
                corrupt("step %ld: region %d has MAP_NORESERVE it never asked for", step, i);
        }
        if (mprotect(ro, 4096, PROT_READ | PROT_WRITE) != 0)
            corrupt("step %ld: the read-only shared mapping of a file open for writing cannot be made writable: %s", step, strerror(errno));
        ro[0] = (char)('A' + step % 26);
        if (mprotect(ro, 4096, PROT_READ) != 0 || msync(ro, 4096, MS_SYNC) != 0)
            corrupt("step %ld: mprotect back / msync: %s", step, strerror(errno));
        char back = 0;
        int rfd = open(path, O_RDONLY);
        if (rfd < 0 || pread(rfd, &back, 1, 0) != 1 || back != 'A' + step % 26)
            corrupt("step %ld: the write through the mapping did not reach the file", step);
        close(rfd);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    unlink(path);
    return 0;
}

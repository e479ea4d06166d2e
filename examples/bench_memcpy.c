/* Baseline for examples/bench.sh: copying MIB MiB in memory.
 *   bench_memcpy MIB  → "copy S fresh S": seconds to copy into memory already touched, and
 *   into fresh memory (every page made by the kernel on first touch, as a restore must). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t n = (argc > 1 ? strtoul(argv[1], 0, 10) : 256) << 20;
    char *src = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *dst = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED) return 1;
    memset(src, 1, n);
    /* Fresh memory twice, timing the second: the first can also pay for the hypervisor
     * backing guest memory never used since boot, which a restore seldom meets. */
    memcpy(dst, src, n);
    munmap(dst, n);
    dst = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dst == MAP_FAILED) return 1;
    double t0 = now();
    memcpy(dst, src, n);
    double fresh = now() - t0;
    t0 = now();
    memcpy(dst, src, n);
    double copy = now() - t0;
    printf("copy %.6f fresh %.6f %d\n", copy, fresh, dst[n - 1]);
    return 0;
}

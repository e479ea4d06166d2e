/* Benchmark subject: touches N MiB of heap, then prints a tick every 2 ms.
 * Used by examples/bench.sh to time checkpoint and restore.
 *   bench_mem MIB [zeros|random]   zeros (default): one byte written per page, the rest
 *                                  zero (compresses well); random: every byte random. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    char *p = malloc(mib << 20);
    if (argc > 2 && strcmp(argv[2], "random") == 0) {
        unsigned long long x = 88172645463325252ULL;
        for (size_t i = 0; i < (mib << 20); i += 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            memcpy(p + i, &x, 8);
        }
    } else {
        for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = (char)i;
    }
    printf("ready\n");
    fflush(stdout);
    for (long t = 0;; t++) {
        printf("tick %ld\n", t);
        fflush(stdout);
        usleep(2000);
    }
}

/* Benchmark subject: touches N MiB of heap, then prints a tick every 2 ms.
 * Used by examples/bench.sh to time checkpoint and restore. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    char *p = malloc(mib << 20);
    for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = (char)i;
    printf("ready\n");
    fflush(stdout);
    for (long t = 0;; t++) {
        printf("tick %ld\n", t);
        fflush(stdout);
        usleep(2000);
    }
}

/* Benchmark subject for live moves: touches MIB MiB, prints "ready", then every 2 ms writes
 * its share of RATE MiB/s (the next pages in turn) and prints "tick US" (CLOCK_REALTIME in
 * microseconds: the source's last tick and the target's first give the downtime when both
 * run on one machine).
 *   bench_live MIB RATE */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (unsigned long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    double rate = argc > 2 ? atof(argv[2]) : 16;
    size_t len = mib << 20, pages = len / 4096, next = 0;
    char *p = malloc(len);
    for (size_t i = 0; i < len; i += 4096)
        p[i] = (char)i;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    double per_tick = rate * 1048576.0 / 4096.0 / 500.0, owed = 0;
    for (unsigned long long n = 1;; n++) {
        for (owed += per_tick; owed >= 1; owed--, next = (next + 1) % pages)
            p[next * 4096 + 8] = (char)n;
        printf("tick %llu\n", now_us());
        usleep(2000);
    }
}

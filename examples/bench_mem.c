/* Benchmark subject: touches N MiB of heap, then prints a tick every 2 ms.
 * Used by examples/bench.sh to time checkpoint and restore.
 *   bench_mem MIB [zeros|text|random] [IMAGE]
 *     zeros (default): one byte written per page, the rest zero (compresses well);
 *     text: words of English-like text (as a program's strings and logs are);
 *     random: every byte random.
 *     With IMAGE: instead of ticking, writes one page after the other without a break,
 *     and when a new IMAGE appears prints "pause US": the longest time between two of its
 *     own writes until then (how long the checkpoint stopped it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    char *p = malloc(mib << 20);
    if (argc > 2 && strcmp(argv[2], "random") == 0) {
        unsigned long long x = 88172645463325252ULL;
        for (size_t i = 0; i < (mib << 20); i += 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            memcpy(p + i, &x, 8);
        }
    } else if (argc > 2 && strcmp(argv[2], "text") == 0) {
        static const char *words[] = {"the", "process", "memory", "of", "a", "checkpoint", "and", "restore",
                                      "page", "to", "in", "file", "is", "thread", "signal", "with", "for",
                                      "kernel", "image", "on", "that", "it", "time", "program"};
        unsigned long long x = 88172645463325252ULL;
        size_t i = 0, n = mib << 20;
        while (i < n) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            const char *w = words[x % (sizeof words / sizeof *words)];
            for (; *w && i < n; w++) p[i++] = *w;
            if (i < n) p[i++] = (x >> 20) % 11 == 0 ? '\n' : ' ';
        }
    } else {
        for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = (char)i;
    }
    printf("ready\n");
    fflush(stdout);
    if (argc > 3) {
        struct stat st;
        ino_t seen = stat(argv[3], &st) == 0 ? st.st_ino : 0;
        unsigned long long last = now_us(), gap = 0;
        for (size_t i = 0;; i++) {
            p[(i * 4096) % (mib << 20)] = (char)i;
            unsigned long long t = now_us();
            if (t - last > gap) gap = t - last;
            last = t;
            if (i % 64 == 0 && stat(argv[3], &st) == 0 && st.st_ino != seen) {
                seen = st.st_ino;
                printf("pause %llu\n", gap);
                fflush(stdout);
                gap = 0;
            }
        }
    }
    for (long t = 0;; t++) {
        printf("tick %ld\n", t);
        fflush(stdout);
        usleep(2000);
    }
}

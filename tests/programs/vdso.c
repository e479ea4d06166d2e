/*
 * vdso.c — calls the vdso's time functions in a loop, as most programs do without knowing.
 *
 * Usage: vdso STEPS
 *
 * Every step: 20000 rounds of clock_gettime(CLOCK_MONOTONIC) (never going back, never
 * jumping by more than 2.5 s between two calls), clock_gettime(CLOCK_REALTIME),
 * gettimeofday and time (all three agreeing within a second), through the function
 * pointers libc took from the vdso at start. When the [vdso] of /proc/self/maps is no longer
 * at the address the auxiliary vector gave at start (a restore made the saved vdso a proxy
 * of another one), it says so once on stderr: "vdso moved from A to B".
 */
#include "common.h"
#include <sys/auxv.h>
#include <sys/time.h>

static long ns(const struct timespec *t)
{
    return t->tv_sec * 1000000000L + t->tv_nsec;
}

static unsigned long vdso_in_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long start = 0;
    if (!f)
        corrupt("open /proc/self/maps: %s", strerror(errno));
    while (fgets(line, sizeof line, f))
        if (strstr(line, "[vdso]"))
            start = strtoul(line, NULL, 16);
    fclose(f);
    return start;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    unsigned long at_start = getauxval(AT_SYSINFO_EHDR);
    unsigned long seen = at_start;
    struct timespec last;
    clock_gettime(CLOCK_MONOTONIC, &last);
    for (long step = 1; step <= steps; step++) {
        for (int i = 0; i < 20000; i++) {
            struct timespec m, r;
            struct timeval tv;
            if (clock_gettime(CLOCK_MONOTONIC, &m) != 0 || clock_gettime(CLOCK_REALTIME, &r) != 0)
                corrupt("clock_gettime: %s", strerror(errno));
            if (gettimeofday(&tv, NULL) != 0)
                corrupt("gettimeofday: %s", strerror(errno));
            time_t t = time(NULL);
            long d = ns(&m) - ns(&last);
            if (d < 0 || d > 2500000000L)
                corrupt("step %ld: CLOCK_MONOTONIC moved by %ld ns", step, d);
            long tv_ns = tv.tv_sec * 1000000000L + tv.tv_usec * 1000L;
            if (labs(tv_ns - ns(&r)) > 1000000000L || labs((long)t - r.tv_sec) > 1)
                corrupt("step %ld: gettimeofday %ld.%06ld, time %ld and CLOCK_REALTIME %ld.%09ld disagree", step,
                        (long)tv.tv_sec, (long)tv.tv_usec, (long)t, (long)r.tv_sec, r.tv_nsec);
            last = m;
        }
        unsigned long now = vdso_in_maps();
        if (now != seen) {
            fprintf(stderr, "vdso moved from %#lx to %#lx\n", seen, now);
            seen = now;
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

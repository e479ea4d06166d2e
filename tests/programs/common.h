/*
 * common.h — helpers shared by the pmig end-to-end test programs.
 *
 * Every program takes its step count as argv[1], prints exactly one line
 * "step N" (N = 1, 2, 3 ...) per step to stdout and flushes it, verifies its
 * own memory every step, and exits 0 after the last step.  A failed check
 * prints "CORRUPT <what>" (stdout and stderr) and exits 3; bad usage exits 2.
 */
#ifndef PMIG_TEST_COMMON_H
#define PMIG_TEST_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Helpers are static; not every program uses every one. */
#define HELPER static __attribute__((unused))

/* Default pause between steps, in milliseconds. */
#define STEP_MS 30

/* Print "CORRUPT <message>" to stdout and stderr and exit 3. */
HELPER void corrupt(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
HELPER void corrupt(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("CORRUPT %s\n", msg);
    fflush(stdout);
    fprintf(stderr, "CORRUPT %s\n", msg);
    exit(3);
}

/* Parse argv[1] as the step count (1 .. 1000000); exit 2 on bad usage. */
HELPER long parse_steps(int argc, char **argv, const char *usage)
{
    char *end = NULL;
    long n;
    if (argc < 2) {
        fprintf(stderr, "usage: %s %s\n", argv[0], usage);
        exit(2);
    }
    n = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || n < 1 || n > 1000000) {
        fprintf(stderr, "%s: bad step count '%s'\n", argv[0], argv[1]);
        exit(2);
    }
    return n;
}

/* Print the line for step n and flush it. */
HELPER void step_line(long n)
{
    printf("step %ld\n", n);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "fflush(stdout) failed: %s\n", strerror(errno));
        exit(4);
    }
}

/* Sleep ms milliseconds of monotonic time, resuming after signal handlers. */
HELPER void sleep_ms(long ms)
{
    struct timespec until;
    int rc;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += ms * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL)) == EINTR)
        ;
    if (rc != 0)
        corrupt("clock_nanosleep failed: %s", strerror(rc));
}

/* The pattern word i of a region tagged `salt` holds at step `step`. */
static inline uint64_t pattern(uint64_t step, uint64_t salt, uint64_t i)
{
    uint64_t x = (step + 1) * 0x9E3779B97F4A7C15ull ^ (salt << 40) ^ (i * 0xBF58476D1CE4E5B9ull);
    x ^= x >> 29;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 32;
    return x;
}

/* Fill n words at p with the pattern for (step, salt). */
HELPER __attribute__((noinline)) void fill_words(volatile uint64_t *p, size_t n, uint64_t step, uint64_t salt)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pattern(step, salt, i);
}

/* Check n words at p hold the pattern for (step, salt); CORRUPT naming `what` if not. */
HELPER __attribute__((noinline)) void check_words(const volatile uint64_t *p, size_t n, uint64_t step,
                                                  uint64_t salt, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t want = pattern(step, salt, i);
        if (p[i] != want)
            corrupt("%s: word %zu of %zu at %p is %#llx, expected %#llx (pattern of step %llu)", what, i, n,
                    (void *)&p[i], (unsigned long long)p[i], (unsigned long long)want,
                    (unsigned long long)step);
    }
}

#endif

/*
 * sleeper.c — a program that is almost always blocked in a system call when
 * the checkpoint signal arrives, written the way a correct program handles
 * interruptions.
 *
 * Usage: sleeper STEPS MODE
 *
 *   nanosleep  nanosleep(30 ms) per step, continuing with the remaining time
 *              after EINTR;
 *   poll       poll() on no fds with a 30 ms timeout per step, recomputing the
 *              timeout and retrying after EINTR;
 *   read       blocks in read(0) for one line per step (retrying after EINTR)
 *              and prints "step N <line>"; end of input before the last step
 *              prints "EOF at step N" and exits 5.
 *
 * Every step also checks a global and a stack array.
 */
#include "common.h"

#include <poll.h>
#include <unistd.h>

#define WORDS 512
#define LINE_MAX_BYTES 4096

static uint64_t g_words[WORDS];
static char inbuf[LINE_MAX_BYTES];
static size_t inlen;

static void wait_nanosleep(void)
{
    struct timespec req = {0, STEP_MS * 1000000L}, rem;
    while (nanosleep(&req, &rem) != 0) {
        if (errno != EINTR)
            corrupt("nanosleep failed: %s", strerror(errno));
        req = rem;
    }
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void wait_poll(void)
{
    long deadline = now_ms() + STEP_MS;
    for (;;) {
        long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        int rc = poll(NULL, 0, (int)left);
        if (rc == 0)
            return;
        if (rc < 0 && errno != EINTR)
            corrupt("poll failed: %s", strerror(errno));
    }
}

/* Read one line from fd 0 into line (without the newline). Returns 0 at EOF. */
static int read_line(char *line, size_t cap)
{
    for (;;) {
        char *nl = memchr(inbuf, '\n', inlen);
        if (nl) {
            size_t n = (size_t)(nl - inbuf);
            if (n >= cap)
                n = cap - 1;
            memcpy(line, inbuf, n);
            line[n] = '\0';
            inlen -= (size_t)(nl - inbuf) + 1;
            memmove(inbuf, nl + 1, inlen);
            return 1;
        }
        if (inlen == sizeof inbuf)
            corrupt("input line longer than %zu bytes", sizeof inbuf);
        ssize_t got = read(0, inbuf + inlen, sizeof inbuf - inlen);
        if (got == 0)
            return 0;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            corrupt("read(0) failed: %s", strerror(errno));
        }
        inlen += (size_t)got;
    }
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS nanosleep|poll|read");
    uint64_t stack[WORDS];
    char line[LINE_MAX_BYTES];
    int mode;

    if (argc != 3) {
        fprintf(stderr, "usage: %s STEPS nanosleep|poll|read\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[2], "nanosleep") == 0)
        mode = 0;
    else if (strcmp(argv[2], "poll") == 0)
        mode = 1;
    else if (strcmp(argv[2], "read") == 0)
        mode = 2;
    else {
        fprintf(stderr, "%s: unknown mode '%s'\n", argv[0], argv[2]);
        return 2;
    }

    fill_words(g_words, WORDS, 0, 31);
    fill_words(stack, WORDS, 0, 32);
    for (long step = 1; step <= steps; step++) {
        if (mode == 0)
            wait_nanosleep();
        else if (mode == 1)
            wait_poll();
        else if (!read_line(line, sizeof line)) {
            printf("EOF at step %ld\n", step);
            fflush(stdout);
            return 5;
        }

        check_words(g_words, WORDS, (uint64_t)step - 1, 31, "global array");
        check_words(stack, WORDS, (uint64_t)step - 1, 32, "stack array");
        fill_words(g_words, WORDS, (uint64_t)step, 31);
        fill_words(stack, WORDS, (uint64_t)step, 32);
        if (mode == 2) {
            printf("step %ld %s\n", step, line);
            if (fflush(stdout) != 0)
                return 4;
        } else {
            step_line(step);
        }
    }
    return 0;
}

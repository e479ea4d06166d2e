/*
 * stress.c — a program to checkpoint again and again while it is busy.
 *
 * Usage: stress STEPS threads N   N threads that never sleep: each fills its own buffer
 *                                 with a pattern, checks it, and starts again
 *        stress STEPS forks       a thread that forks without pause; the children in turn
 *                                 exec /bin/true, _exit at once, or run a little and exit;
 *                                 every child must exit 0 (a child the process no longer
 *                                 has, after a restore, is reported as "lost" on stderr)
 *
 * The main thread prints "step N" every STEP_MS and checks, every step, that the workers
 * are alive (their counters moved within the last 200 steps) and saw no corruption.
 */
#include "common.h"

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_THREADS 256
#define BUF_WORDS 2048

static volatile uint64_t progress[MAX_THREADS];

static void *busy(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    uint64_t *buf = malloc(BUF_WORDS * sizeof *buf);
    if (!buf)
        corrupt("malloc failed");
    for (uint64_t k = 0;; k++) {
        fill_words(buf, BUF_WORDS, k, id);
        check_words(buf, BUF_WORDS, k, id, "a busy thread's buffer");
        progress[id] = k + 1;
    }
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    for (uint64_t k = 0;; k++) {
        pid_t pid = fork();
        if (pid < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            corrupt("fork failed: %s", strerror(errno));
        }
        if (pid == 0) {
            switch (k % 3) {
            case 0:
                execl("/bin/true", "true", (char *)NULL);
                _exit(10);
            case 1:
                _exit(0);
            default: {
                uint64_t words[64];
                fill_words(words, 64, k, 7);
                check_words(words, 64, k, 7, "a child's stack");
                _exit(0);
            }
            }
        }
        int status = 0;
        pid_t got;
        while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
            ;
        if (got < 0 && errno == ECHILD) {
            /* A restore brings back the process, not its children (yet): the one it was
               waiting for is gone. The test counts these lines. */
            fprintf(stderr, "stress: lost child %d\n", pid);
            continue;
        }
        if (got < 0)
            corrupt("waitpid failed: %s", strerror(errno));
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            corrupt("child %d (kind %llu) ended with status %#x", pid, (unsigned long long)(k % 3), status);
        progress[0] = k + 1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *usage = "STEPS threads N | STEPS forks";
    long steps = parse_steps(argc, argv, usage);
    int n = 1;
    pthread_t t;
    if (argc >= 4 && strcmp(argv[2], "threads") == 0) {
        n = atoi(argv[3]);
        if (n < 1 || n > MAX_THREADS)
            corrupt("bad thread count %s", argv[3]);
        for (int i = 0; i < n; i++)
            if (pthread_create(&t, NULL, busy, (void *)(uintptr_t)i) != 0)
                corrupt("pthread_create failed");
    } else if (argc >= 3 && strcmp(argv[2], "forks") == 0) {
        if (pthread_create(&t, NULL, forker, NULL) != 0)
            corrupt("pthread_create failed");
    } else {
        fprintf(stderr, "usage: %s %s\n", argv[0], usage);
        return 2;
    }
    uint64_t seen[MAX_THREADS] = {0};
    long last_move[MAX_THREADS] = {0};
    for (long s = 1; s <= steps; s++) {
        step_line(s);
        for (int i = 0; i < n; i++) {
            if (progress[i] != seen[i]) {
                seen[i] = progress[i];
                last_move[i] = s;
            } else if (s - last_move[i] > 200) {
                corrupt("worker %d made no progress in 200 steps", i);
            }
        }
        sleep_ms(STEP_MS);
    }
    return 0;
}

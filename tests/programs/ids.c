/*
 * ids.c — the program's view of its own ids must not change across restores:
 * getpid(), getppid() and gettid() give what they gave at start, kill() and
 * tgkill() with those ids reach this process and its worker thread, and
 * /proc/<getpid()>/status opens.
 *
 * Usage: ids STEPS
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static volatile pid_t worker_tid;

static void on_usr1(int sig)
{
    (void)sig;
    got++;
}

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = gettid();
    for (;;)
        pause();
    return NULL;
}

static void wait_for_signal(long step, sig_atomic_t before, const char *how)
{
    for (int i = 0; i < 2000 && got == before; i++)
        sleep_ms(1);
    if (got == before)
        corrupt("step %ld: %s did not deliver SIGUSR1", step, how);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    pid_t pid = getpid(), tid = gettid(), ppid = getppid();
    signal(SIGUSR1, on_usr1);
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return 4;
    while (!worker_tid)
        sleep_ms(1);
    pid_t wtid = worker_tid;
    for (long step = 1; step <= steps; step++) {
        if (getpid() != pid || gettid() != tid || getppid() != ppid)
            corrupt("step %ld: ids changed: pid %d->%d tid %d->%d ppid %d->%d", step, pid, getpid(), tid,
                    gettid(), ppid, getppid());
        sig_atomic_t before = got;
        kill(getpid(), SIGUSR1);
        wait_for_signal(step, before, "kill(getpid())");
        before = got;
        tgkill(getpid(), wtid, SIGUSR1);
        wait_for_signal(step, before, "tgkill(getpid(), worker)");
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/status", getpid());
        FILE *f = fopen(path, "r");
        if (!f)
            corrupt("step %ld: cannot open %s", step, path);
        fclose(f);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

/*
 * ids.c — the program's view of its own ids must not change across restores:
 * getpid(), getppid() and gettid() give what they gave at start, kill() and
 * tgkill() with those ids reach this process and its worker thread, and
 * /proc/<getpid()>/status opens. Also the rest of what a process is: its umask,
 * a lowered resource limit, its working directory, its threads' names, and the
 * main thread's alternate signal stack.
 *
 * Usage: ids STEPS
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char altstack[64 * 1024];

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
    umask(027);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = 777 < rl.rlim_max ? 777 : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want_nofile = rl.rlim_cur;
    if (chdir("/tmp") != 0)
        return 4;
    pthread_setname_np(t, "ids-worker");
    prctl(PR_SET_NAME, "ids-main");
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        return 4;
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
        mode_t um = umask(027);
        if (um != 027)
            corrupt("step %ld: umask is %o, not 027", step, um);
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur != want_nofile)
            corrupt("step %ld: RLIMIT_NOFILE is %llu, not %llu", step, (unsigned long long)rl.rlim_cur,
                    (unsigned long long)want_nofile);
        char cwd[256];
        if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, "/tmp") != 0)
            corrupt("step %ld: the working directory changed", step);
        char name[32] = "";
        if (pthread_getname_np(t, name, sizeof name) != 0 || strcmp(name, "ids-worker") != 0)
            corrupt("step %ld: the worker's name is '%s'", step, name);
        prctl(PR_GET_NAME, name);
        if (strcmp(name, "ids-main") != 0)
            corrupt("step %ld: the main thread's name is '%s'", step, name);
        stack_t cur;
        if (sigaltstack(NULL, &cur) != 0 || cur.ss_sp != altstack || cur.ss_size != sizeof altstack)
            corrupt("step %ld: the alternate signal stack is gone", step);
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

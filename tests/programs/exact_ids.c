/*
 * exact_ids.c — after a restore the kernel's ids are the ones the program saw, for real:
 *
 * - raw SYS_getpid / SYS_gettid in every thread give the ids saved at start, and the main
 *   thread leads its thread group (its tid is the pid);
 * - an error-checking mutex held by the main thread across checkpoints unlocks (glibc
 *   compares the owner with the cached tid, and the futex word holds the kernel's tid);
 * - a recursive mutex owned by a worker can be locked again by it;
 * - CPU-time clocks of the process and of a thread read;
 * - /proc/self/task/TID exists for each thread, kcmp sees the threads share memory;
 * - a SIGEV_THREAD_ID timer aimed at a worker keeps reaching that worker;
 * - SO_PEERCRED of a socketpair names this process; F_SETOWN (the process) on one end and
 *   F_SETOWN_EX (the worker thread) with F_SETSIG on the other keep their owners;
 * - a child forked now sees its own pid (raw and libc alike) and this process as parent;
 * - the capability sets (effective, permitted, inheritable, ambient) are those it started
 *   with: a capability the restore raised is not left to it;
 * - /proc/self/exe still names its executable (not pmig's restore engine);
 * - CLOCK_MONOTONIC never jumps by more than MAX_GAP_MS between two steps (a restore in a
 *   time namespace continues it from the checkpoint's value, whatever the gap).
 *
 * Usage: exact_ids STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_GAP_MS 2500

static pid_t raw_pid(void) { return (pid_t)syscall(SYS_getpid); }
static pid_t raw_tid(void) { return (pid_t)syscall(SYS_gettid); }

static pthread_mutex_t held;       /* error-checking, held by main between steps */
static pthread_mutex_t recursive;  /* recursive, owned by the worker */
static volatile pid_t worker_tid;
static volatile long worker_round, worker_done;
static volatile sig_atomic_t timer_ticks, timer_wrong;
static volatile int worker_failed;
static char worker_why[256];

static void on_timer(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    if (raw_tid() != worker_tid)
        timer_wrong = 1;
    timer_ticks++;
}

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = raw_tid();
    if (pthread_mutex_lock(&recursive) != 0)
        return NULL;
    for (;;) {
        long want = worker_round;
        while (worker_done == want && worker_round == want)
            sleep_ms(2);
        if (raw_tid() != worker_tid || gettid() != worker_tid) {
            snprintf(worker_why, sizeof worker_why, "worker tid %d, raw %d, saved %d", gettid(), raw_tid(), worker_tid);
            worker_failed = 1;
        }
        int r = pthread_mutex_lock(&recursive);
        if (r != 0) {
            snprintf(worker_why, sizeof worker_why, "relocking the recursive mutex: %s", strerror(r));
            worker_failed = 1;
        } else {
            pthread_mutex_unlock(&recursive);
        }
        worker_done = worker_round;
    }
    return NULL;
}

/* "CapInh/CapPrm/CapEff/CapAmb" lines of /proc/self/status, joined. */
static void caps(char *out, size_t len)
{
    char buf[4096];
    FILE *f = fopen("/proc/self/status", "r");
    out[0] = 0;
    if (!f)
        return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
        if (!strncmp(l, "CapInh", 6) || !strncmp(l, "CapPrm", 6) || !strncmp(l, "CapEff", 6) || !strncmp(l, "CapAmb", 6)) {
            strncat(out, l, len - strlen(out) - 2);
            strncat(out, " ", len - strlen(out) - 1);
        }
}

static long now_ms(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    pid_t pid = raw_pid();
    if (raw_tid() != pid)
        corrupt("the main thread's tid %d is not the pid %d at start", raw_tid(), pid);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&held, &a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&recursive, &a);
    if (pthread_mutex_lock(&held) != 0)
        return 4;

    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return 4;
    while (!worker_tid)
        sleep_ms(1);
    pid_t wtid = worker_tid;

    struct sigaction sa = {.sa_sigaction = on_timer, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigaction(SIGRTMIN + 1, &sa, NULL);
    struct sigevent sev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN + 1};
    sev._sigev_un._tid = wtid;
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0)
        corrupt("timer_create(SIGEV_THREAD_ID): %s", strerror(errno));
    struct itimerspec its = {.it_interval = {0, 10 * 1000000L}, .it_value = {0, 10 * 1000000L}};
    timer_settime(timer, 0, &its, NULL);

    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0)
        return 4;
    struct f_owner_ex own = {.type = F_OWNER_TID, .pid = wtid};
    if (fcntl(sp[0], F_SETOWN, pid) != 0 || fcntl(sp[1], F_SETOWN_EX, &own) != 0 || fcntl(sp[1], F_SETSIG, SIGRTMIN + 2) != 0)
        return 4;

    char exe0[512], exen[512];
    ssize_t ne = readlink("/proc/self/exe", exe0, sizeof exe0 - 1);
    if (ne <= 0)
        return 4;
    exe0[ne] = 0;
    char caps0[512], capsn[512];
    caps(caps0, sizeof caps0);
    clockid_t proc_clock, thread_clock;
    long last = now_ms(CLOCK_MONOTONIC);
    for (long step = 1; step <= steps; step++) {
        long now = now_ms(CLOCK_MONOTONIC);
        if (now - last > MAX_GAP_MS)
            corrupt("step %ld: CLOCK_MONOTONIC jumped by %ld ms", step, now - last);
        if (now < last)
            corrupt("step %ld: CLOCK_MONOTONIC went back by %ld ms", step, last - now);
        last = now;

        if (raw_pid() != pid || raw_tid() != pid || getpid() != pid || gettid() != pid)
            corrupt("step %ld: main ids: raw pid %d tid %d, libc pid %d tid %d, saved %d", step, raw_pid(), raw_tid(),
                    getpid(), gettid(), pid);
        if (pthread_mutex_unlock(&held) != 0)
            corrupt("step %ld: unlocking the error-checking mutex held across the checkpoint failed", step);
        if (pthread_mutex_lock(&held) != 0)
            corrupt("step %ld: locking the error-checking mutex again failed", step);

        worker_round = step;
        for (int i = 0; i < 3000 && worker_done != step; i++)
            sleep_ms(1);
        if (worker_done != step)
            corrupt("step %ld: the worker did not answer (its recursive mutex?)", step);
        if (worker_failed)
            corrupt("step %ld: %s", step, worker_why);

        if (clock_getcpuclockid(pid, &proc_clock) != 0 || pthread_getcpuclockid(t, &thread_clock) != 0)
            corrupt("step %ld: no CPU-time clock ids", step);
        struct timespec ts;
        if (clock_gettime(proc_clock, &ts) != 0)
            corrupt("step %ld: the process CPU-time clock: %s", step, strerror(errno));
        if (clock_gettime(thread_clock, &ts) != 0)
            corrupt("step %ld: the worker's CPU-time clock: %s", step, strerror(errno));

        char path[64];
        struct stat st;
        snprintf(path, sizeof path, "/proc/self/task/%d", wtid);
        if (stat(path, &st) != 0)
            corrupt("step %ld: %s: %s", step, path, strerror(errno));
        snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, pid);
        if (stat(path, &st) != 0)
            corrupt("step %ld: %s: %s", step, path, strerror(errno));
        if (syscall(SYS_kcmp, pid, wtid, KCMP_VM, 0, 0) != 0)
            corrupt("step %ld: kcmp(pid, worker, KCMP_VM) does not see one address space: %s", step, strerror(errno));

        sig_atomic_t before = timer_ticks;
        for (int i = 0; i < 2000 && timer_ticks == before; i++)
            sleep_ms(1);
        if (timer_ticks == before)
            corrupt("step %ld: the SIGEV_THREAD_ID timer stopped reaching the worker", step);
        if (timer_wrong)
            corrupt("step %ld: the SIGEV_THREAD_ID timer's signal reached another thread", step);

        ne = readlink("/proc/self/exe", exen, sizeof exen - 1);
        exen[ne > 0 ? ne : 0] = 0;
        if (strcmp(exe0, exen) != 0)
            corrupt("step %ld: /proc/self/exe is '%s', not '%s'", step, exen, exe0);
        struct f_owner_ex got = {0, 0};
        if (fcntl(sp[0], F_GETOWN) != pid)
            corrupt("step %ld: F_GETOWN of its socket is %d, not %d", step, fcntl(sp[0], F_GETOWN), pid);
        if (fcntl(sp[1], F_GETOWN_EX, &got) != 0 || got.type != F_OWNER_TID || got.pid != wtid)
            corrupt("step %ld: F_GETOWN_EX is %d/%d, not the worker %d", step, got.type, got.pid, wtid);
        if (fcntl(sp[1], F_GETSIG) != SIGRTMIN + 2)
            corrupt("step %ld: F_GETSIG is %d", step, fcntl(sp[1], F_GETSIG));
        caps(capsn, sizeof capsn);
        if (strcmp(caps0, capsn) != 0)
            corrupt("step %ld: capabilities changed: '%s' -> '%s'", step, caps0, capsn);

        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(sp[0], SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid != pid)
            corrupt("step %ld: SO_PEERCRED of its own socketpair names pid %d, not %d", step, cred.pid, pid);

        if (step % 10 == 0) {
            pid_t c = fork();
            if (c == 0) {
                pid_t me = raw_pid();
                _exit(getpid() == me && getppid() == pid && (pid_t)syscall(SYS_getppid) == pid ? 0 : 1);
            }
            int status = 0;
            if (c < 0 || waitpid(c, &status, 0) != c)
                corrupt("step %ld: fork/waitpid failed", step);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                corrupt("step %ld: a forked child saw wrong ids (its pid, or %d as its parent)", step, pid);
        }

        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

/*
 * attrs.c — process and thread attributes a program sets for itself, checked every step:
 * process-wide oom_score_adj, PR_SET_THP_DISABLE, PR_SET_CHILD_SUBREAPER; per thread (the
 * main thread and a second one, each with its own values) nice value, scheduling policy,
 * CPU affinity, I/O priority, timer slack, parent-death signal, personality, and
 * no_new_privs (set before the second thread, so both have it).
 *
 * Usage: attrs STEPS            the check above
 *        attrs STEPS seccomp    also installs an allow-all seccomp filter at start (a
 *                               checkpoint must refuse it, and the program go on)
 */
#include "common.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IOPRIO(class, level) (((class) << 13) | (level))

struct want {
    int nice, policy, cpu, ioprio, pdeathsig;
    unsigned long slack, persona;
};

static const struct want MAIN = {3, SCHED_OTHER, 0, IOPRIO(2, 7), SIGWINCH, 123456, ADDR_NO_RANDOMIZE};
static const struct want OTHER = {5, SCHED_BATCH, 1, IOPRIO(3, 0), SIGURG, 654321, ADDR_NO_RANDOMIZE | UNAME26};
static int ncpu;
static volatile int other_status = -1;

static void set(const struct want *w)
{
    struct sched_param p = {0};
    cpu_set_t cs;
    CPU_ZERO(&cs);
    CPU_SET(w->cpu % ncpu, &cs);
    if (setpriority(PRIO_PROCESS, 0, w->nice) != 0 || sched_setscheduler(0, w->policy, &p) != 0 ||
        sched_setaffinity(0, sizeof cs, &cs) != 0 || syscall(SYS_ioprio_set, 1, 0, w->ioprio) != 0 ||
        prctl(PR_SET_TIMERSLACK, w->slack) != 0 || prctl(PR_SET_PDEATHSIG, w->pdeathsig) != 0 || personality(w->persona) < 0)
        corrupt("setting attributes: %s", strerror(errno));
}

/* 0 when the calling thread has `w`, else the number of the first attribute that differs. */
static int check(const struct want *w)
{
    errno = 0;
    if (getpriority(PRIO_PROCESS, 0) != w->nice)
        return 1;
    if (sched_getscheduler(0) != w->policy)
        return 2;
    cpu_set_t cs;
    if (sched_getaffinity(0, sizeof cs, &cs) != 0 || CPU_COUNT(&cs) != 1 || !CPU_ISSET(w->cpu % ncpu, &cs))
        return 3;
    if (syscall(SYS_ioprio_get, 1, 0) != w->ioprio)
        return 4;
    if ((unsigned long)prctl(PR_GET_TIMERSLACK) != w->slack)
        return 5;
    int sig = 0;
    if (prctl(PR_GET_PDEATHSIG, &sig) != 0 || sig != w->pdeathsig)
        return 6;
    if ((unsigned long)personality(0xffffffff) != w->persona)
        return 7;
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        return 8;
    return 0;
}

static void *other(void *arg)
{
    (void)arg;
    set(&OTHER);
    for (;;) {
        other_status = check(&OTHER);
        usleep(5000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS [seccomp]");
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1)
        ncpu = 1;
    FILE *oom = fopen("/proc/self/oom_score_adj", "w");
    if (!oom || fprintf(oom, "500\n") < 0 || fclose(oom) != 0)
        corrupt("oom_score_adj: %s", strerror(errno));
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 || prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        corrupt("prctl: %s", strerror(errno));
    if (argc > 2 && strcmp(argv[2], "seccomp") == 0) {
        struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
        struct sock_fprog prog = {1, allow};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            corrupt("seccomp: %s", strerror(errno));
    }
    set(&MAIN);
    pthread_t t;
    if (pthread_create(&t, NULL, other, NULL) != 0)
        corrupt("pthread_create");
    for (long step = 1; step <= steps; step++) {
        char buf[16] = {0};
        FILE *f = fopen("/proc/self/oom_score_adj", "r");
        if (!f || !fgets(buf, sizeof buf, f) || atoi(buf) != 500)
            corrupt("step %ld: oom_score_adj reads %s", step, buf);
        fclose(f);
        int sub = 0;
        if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1 || prctl(PR_GET_CHILD_SUBREAPER, &sub) != 0 || sub != 1)
            corrupt("step %ld: THP disable or child subreaper lost", step);
        int c = check(&MAIN);
        if (c)
            corrupt("step %ld: the main thread's attribute %d differs (1 nice, 2 policy, 3 affinity, 4 ioprio, 5 slack, 6 pdeathsig, 7 personality, 8 nnp)", step, c);
        /* The other thread checks itself every 5 ms: wait for a fresh answer. */
        other_status = -1;
        for (int i = 0; i < 400 && other_status == -1; i++)
            usleep(1000);
        if (other_status != 0)
            corrupt("step %ld: the other thread's attribute %d differs", step, other_status);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

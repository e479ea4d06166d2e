/*
 * signals.c — signal state that must survive a checkpoint: handlers, a
 * blocked mask, and an interval timer.
 *
 * Usage: signals STEPS
 *
 * SIGALRM arrives every 10 ms from setitimer(ITIMER_REAL) and a handler
 * counts the ticks; every step checks the count went up (so the timer is
 * still armed after a restore).  SIGUSR1 (SA_SIGINFO, with SIGALRM in its
 * sa_mask) is raised once per step and its handler's count must equal the
 * step.  SIGHUP stays blocked: every step checks the mask with sigprocmask
 * and both handlers, their flags and masks with sigaction.
 */
#include "common.h"

#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks;
static volatile sig_atomic_t usr1_count;
static volatile sig_atomic_t usr1_bad_info;
static uint64_t g_words[1024];

static void on_alrm(int sig)
{
    (void)sig;
    ticks++;
}

static void on_usr1(int sig, siginfo_t *info, void *uc)
{
    (void)uc;
    if (sig != SIGUSR1 || info == NULL || info->si_signo != SIGUSR1)
        usr1_bad_info = 1;
    usr1_count++;
}

static void check_signal_state(long step)
{
    sigset_t cur;
    struct sigaction q;
    struct itimerval it;

    if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
        corrupt("sigprocmask query failed: %s", strerror(errno));
    if (!sigismember(&cur, SIGHUP))
        corrupt("step %ld: SIGHUP is no longer blocked", step);
    if (sigismember(&cur, SIGALRM) || sigismember(&cur, SIGUSR1))
        corrupt("step %ld: SIGALRM or SIGUSR1 became blocked", step);

    if (sigaction(SIGALRM, NULL, &q) != 0)
        corrupt("sigaction(SIGALRM) query failed: %s", strerror(errno));
    if (q.sa_handler != on_alrm || !(q.sa_flags & SA_RESTART) || (q.sa_flags & SA_SIGINFO))
        corrupt("step %ld: SIGALRM disposition changed (handler %p, flags %#x)", step, (void *)q.sa_handler,
                (unsigned)q.sa_flags);

    if (sigaction(SIGUSR1, NULL, &q) != 0)
        corrupt("sigaction(SIGUSR1) query failed: %s", strerror(errno));
    if (q.sa_sigaction != on_usr1 || !(q.sa_flags & SA_SIGINFO) || !sigismember(&q.sa_mask, SIGALRM))
        corrupt("step %ld: SIGUSR1 disposition changed (handler %p, flags %#x)", step, (void *)q.sa_sigaction,
                (unsigned)q.sa_flags);

    if (sigaction(SIGHUP, NULL, &q) != 0)
        corrupt("sigaction(SIGHUP) query failed: %s", strerror(errno));
    if (q.sa_handler != SIG_DFL)
        corrupt("step %ld: SIGHUP disposition changed", step);

    if (getitimer(ITIMER_REAL, &it) != 0)
        corrupt("getitimer failed: %s", strerror(errno));
    if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 10000)
        corrupt("step %ld: ITIMER_REAL interval is %ld.%06ld s, expected 0.010000", step,
                (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    struct sigaction sa;
    sigset_t hup;
    struct itimerval it = {{0, 10000}, {0, 10000}};

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        return 4;

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGALRM);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        return 4;

    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &hup, NULL) != 0)
        return 4;
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        return 4;

    fill_words(g_words, 1024, 0, 11);
    long last_ticks = ticks;
    for (long step = 1; step <= steps; step++) {
        sleep_ms(STEP_MS);
        long now = ticks;
        if (now <= last_ticks)
            corrupt("step %ld: SIGALRM ticks stuck at %ld (timer no longer armed?)", step, now);
        last_ticks = now;

        if (raise(SIGUSR1) != 0)
            corrupt("raise(SIGUSR1) failed: %s", strerror(errno));
        if (usr1_count != step)
            corrupt("step %ld: SIGUSR1 handler ran %ld times", step, (long)usr1_count);
        if (usr1_bad_info)
            corrupt("step %ld: SIGUSR1 handler saw a bad siginfo", step);
        check_signal_state(step);
        check_words(g_words, 1024, (uint64_t)step - 1, 11, "global array");
        fill_words(g_words, 1024, (uint64_t)step, 11);
        step_line(step);
    }
    return 0;
}

/*
 * posix_timers.c — POSIX timers keep their ids and keep firing after restore:
 * a SIGEV_SIGNAL timer (SIGRTMIN, with a sival the handler checks), a
 * SIGEV_THREAD timer (glibc runs its callback on a helper thread), and a
 * disarmed SIGEV_NONE timer whose id must stay valid.
 *
 * Usage: posix_timers STEPS
 */
#include "common.h"

#include <signal.h>
#include <time.h>

static volatile sig_atomic_t sig_ticks, bad_value;
static volatile long thread_ticks;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_value.sival_int != 4242)
        bad_value = 1;
    sig_ticks++;
}

static void on_thread(union sigval v)
{
    if (v.sival_int == 777)
        __atomic_add_fetch(&thread_ticks, 1, __ATOMIC_SEQ_CST);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    struct sigaction sa = {0};
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN, &sa, NULL);
    timer_t t1, t2, t3;
    struct sigevent e1 = {0}, e2 = {0}, e3 = {0};
    e1.sigev_notify = SIGEV_SIGNAL;
    e1.sigev_signo = SIGRTMIN;
    e1.sigev_value.sival_int = 4242;
    e2.sigev_notify = SIGEV_THREAD;
    e2.sigev_notify_function = on_thread;
    e2.sigev_value.sival_int = 777;
    e3.sigev_notify = SIGEV_NONE;
    if (timer_create(CLOCK_MONOTONIC, &e1, &t1) || timer_create(CLOCK_MONOTONIC, &e2, &t2) ||
        timer_create(CLOCK_REALTIME, &e3, &t3))
        return 4;
    struct itimerspec every10 = {{0, 10000000}, {0, 10000000}};
    timer_settime(t1, 0, &every10, NULL);
    timer_settime(t2, 0, &every10, NULL);
    long last_sig = 0, last_thr = 0;
    for (long step = 1; step <= steps; step++) {
        sleep_ms(STEP_MS);
        /* The timers fire every 10 ms; give them a moment after a restore. */
        for (int i = 0; i < 200 && (sig_ticks <= last_sig || thread_ticks <= last_thr); i++)
            sleep_ms(1);
        if (sig_ticks <= last_sig)
            corrupt("step %ld: SIGEV_SIGNAL timer stopped at %ld ticks", step, (long)sig_ticks);
        if (thread_ticks <= last_thr)
            corrupt("step %ld: SIGEV_THREAD timer stopped at %ld ticks", step, thread_ticks);
        if (bad_value)
            corrupt("step %ld: the timer's signal carried the wrong value", step);
        last_sig = sig_ticks;
        last_thr = thread_ticks;
        struct itimerspec cur;
        if (timer_gettime(t1, &cur) || cur.it_interval.tv_nsec != 10000000)
            corrupt("step %ld: timer_gettime on the first timer failed or changed", step);
        if (timer_gettime(t3, &cur) || cur.it_value.tv_sec || cur.it_value.tv_nsec)
            corrupt("step %ld: the disarmed timer's id is no longer valid", step);
        step_line(step);
    }
    return 0;
}

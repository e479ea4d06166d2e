/*
 * pthreads.c — a multi-threaded C program for pmig: four workers fed through
 * a mutex and condition variables, thread-local variables, and
 * thread-directed signals.
 *
 * Usage: pthreads STEPS
 *
 * Every step the main thread sends SIGUSR1 to each worker with
 * pthread_kill (a handler counts them, per thread and in total), hands out
 * ITEMS work items under the mutex, waits on a condition variable until all
 * are done and checks each result.  Workers check their __thread variables
 * every item.  After the last step the main thread tells the workers to
 * stop, joins them all and checks their return values.
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#define WORKERS 4
#define ITEMS 8
#define WORK_WORDS 512

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;

/* Guarded by mu. */
static long cur_step;
static int avail;     /* items of cur_step not yet taken */
static int completed; /* items of cur_step finished */
static int stopping;
static uint64_t results[ITEMS];

/* Written by each worker for itself. */
static long worker_sigs[WORKERS];
static long worker_items[WORKERS];

static __thread int tls_id = -1;
static __thread uint64_t tls_val;
static __thread volatile sig_atomic_t tls_sigs;
static atomic_long sig_total;

static uint64_t g_shared[2048];

static void on_usr1(int sig)
{
    (void)sig;
    tls_sigs++;
    atomic_fetch_add(&sig_total, 1);
}

static uint64_t work_result(long step, int idx)
{
    uint64_t local[WORK_WORDS];
    uint64_t sum = 0;
    fill_words(local, WORK_WORDS, (uint64_t)step, 1000 + idx);
    for (int i = 0; i < WORK_WORDS; i++)
        sum += local[i] * (uint64_t)(i + 1);
    return sum;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t expect_val = pattern(0, 50, (uint64_t)id);
    long processed = 0;

    tls_id = id;
    tls_val = expect_val;

    pthread_mutex_lock(&mu);
    for (;;) {
        while (!stopping && avail == 0)
            pthread_cond_wait(&work_cv, &mu);
        if (avail == 0 && stopping)
            break;
        int idx = ITEMS - avail;
        long step = cur_step;
        avail--;
        pthread_mutex_unlock(&mu);

        if (tls_id != id)
            corrupt("worker %d: __thread tls_id is %d", id, tls_id);
        if (tls_val != expect_val)
            corrupt("worker %d: __thread tls_val is %#llx, expected %#llx", id,
                    (unsigned long long)tls_val, (unsigned long long)expect_val);
        uint64_t r = work_result(step, idx);
        processed++;
        expect_val = pattern((uint64_t)step, 50 + (uint64_t)processed, (uint64_t)id);
        tls_val = expect_val;
        worker_sigs[id] = tls_sigs;
        worker_items[id] = processed;

        pthread_mutex_lock(&mu);
        results[idx] = r;
        if (++completed == ITEMS)
            pthread_cond_signal(&done_cv);
    }
    pthread_mutex_unlock(&mu);
    return (void *)(intptr_t)(id * 1000000 + processed);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    pthread_t th[WORKERS];
    struct sigaction sa;
    long sent = 0;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 4;
    }
    tls_id = 99;
    tls_val = pattern(0, 99, 99);
    fill_words(g_shared, 2048, 0, 7);

    for (int i = 0; i < WORKERS; i++) {
        int rc = pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
        if (rc != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(rc));
            return 4;
        }
    }

    for (long step = 1; step <= steps; step++) {
        if (tls_id != 99 || tls_val != pattern((uint64_t)step - 1, 99, 99))
            corrupt("main: __thread variables changed (tls_id %d)", tls_id);
        check_words(g_shared, 2048, (uint64_t)step - 1, 7, "global array");

        for (int i = 0; i < WORKERS; i++) {
            int rc = pthread_kill(th[i], SIGUSR1);
            if (rc != 0)
                corrupt("pthread_kill(worker %d) failed: %s", i, strerror(rc));
            sent++;
        }

        pthread_mutex_lock(&mu);
        cur_step = step;
        completed = 0;
        avail = ITEMS;
        pthread_cond_broadcast(&work_cv);
        while (completed < ITEMS)
            pthread_cond_wait(&done_cv, &mu);
        for (int i = 0; i < ITEMS; i++)
            if (results[i] != work_result(step, i))
                corrupt("result %d of step %ld is %#llx, expected %#llx", i, step,
                        (unsigned long long)results[i], (unsigned long long)work_result(step, i));
        pthread_mutex_unlock(&mu);

        /* Thread-directed signals are asynchronous: give them up to 5 s. */
        for (int waited = 0; atomic_load(&sig_total) < sent; waited++) {
            if (waited >= 5000)
                corrupt("step %ld: %ld SIGUSR1 handled, %ld sent", step, atomic_load(&sig_total), sent);
            sleep_ms(1);
        }
        if (atomic_load(&sig_total) != sent)
            corrupt("step %ld: %ld SIGUSR1 handled, only %ld sent", step, atomic_load(&sig_total), sent);
        for (int i = 0; i < WORKERS; i++)
            if (worker_sigs[i] > step)
                corrupt("worker %d counted %ld signals by step %ld", i, worker_sigs[i], step);

        tls_val = pattern((uint64_t)step, 99, 99);
        fill_words(g_shared, 2048, (uint64_t)step, 7);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }

    pthread_mutex_lock(&mu);
    stopping = 1;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&mu);

    long total = 0;
    for (int i = 0; i < WORKERS; i++) {
        void *ret = NULL;
        int rc = pthread_join(th[i], &ret);
        if (rc != 0)
            corrupt("pthread_join(worker %d) failed: %s", i, strerror(rc));
        long v = (long)(intptr_t)ret;
        if (v / 1000000 != i || v % 1000000 != worker_items[i])
            corrupt("worker %d returned %ld, expected %d with %ld items", i, v, i * 1000000, worker_items[i]);
        total += v % 1000000;
    }
    if (total != steps * ITEMS)
        corrupt("workers processed %ld items, expected %ld", total, steps * ITEMS);
    return 0;
}

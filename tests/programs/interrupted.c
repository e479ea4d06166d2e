/*
 * interrupted.c — a program that waits in one blocking call per step and,
 * like many event loops, treats EINTR as fatal: a checkpoint must never make
 * the call fail with EINTR, nor return before its timeout.
 *
 * Usage: interrupted STEPS MODE
 *
 * Each step waits WAIT_MS (200 ms; 1 s for `sleep`) in the call MODE names,
 * expects its timeout (or, for the untimed modes, the event that ends it),
 * and checks with CLOCK_MONOTONIC that at least WAIT_MS went by (after a
 * restore the time as an image counts too: only the lower bound is checked).
 *
 *   poll ppoll select pselect epoll_wait epoll_pwait epoll_pwait2
 *   nanosleep clock_nanosleep clock_nanosleep_abs usleep sleep
 *   sem_timedwait sigtimedwait semtimedop recv accept
 *       a timeout of WAIT_MS (recv and accept: SO_RCVTIMEO);
 *   poll_untimed select_untimed epoll_untimed
 *       no timeout: a timerfd armed for WAIT_MS ends the wait;
 *   msgrcv semop
 *       no timeout: a helper thread sends a message / adds to the semaphore
 *       WAIT_MS after the step began;
 *   own_signal
 *       the program's own SIGALRM (handler without SA_RESTART, 50 ms after
 *       the step began) must still interrupt a 2 s poll (odd steps) or
 *       nanosleep (even steps, with `rem` about 1.95 s) with EINTR. When a
 *       checkpoint interrupts the same call pmig issues it again instead; that
 *       is allowed at most twice in a run (once per checkpoint of a chain).
 *
 * A failure prints "CORRUPT <mode>: <what>" and exits 3.
 */
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define SLACK_MS 3
#define WORDS 256

static const char *mode;
static long wait_ms = 200;
static uint64_t g_words[WORDS];

static int tfd = -1, epfd = -1, sock = -1, msqid = -1, semid = -1;
static sem_t psem;
static volatile sig_atomic_t alarms;
static int coincidences;

/* Step start for the helper thread: it acts WAIT_MS after it. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long helper_step;

/* The clock the waits are measured on: the one the call uses (CLOCK_REALTIME for
 * sem_timedwait's absolute deadline; a restore in a time namespace hides the image's rest
 * from CLOCK_MONOTONIC but not from CLOCK_REALTIME). */
static clockid_t wait_clock = CLOCK_MONOTONIC;

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(wait_clock, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static struct timespec ms_ts(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    return ts;
}

static void fail_errno(const char *what)
{
    if (errno == EINTR)
        corrupt("%s: %s: EINTR", mode, what);
    corrupt("%s: %s: %s", mode, what, strerror(errno));
}

static void arm_timerfd(void)
{
    struct itimerspec its = {{0, 0}, ms_ts(wait_ms)};
    if (timerfd_settime(tfd, 0, &its, NULL) != 0)
        fail_errno("timerfd_settime");
}

static void drain_timerfd(void)
{
    uint64_t n;
    if (read(tfd, &n, sizeof n) != (ssize_t)sizeof n)
        fail_errno("read(timerfd)");
}

static void *helper(void *arg)
{
    (void)arg;
    for (long done = 0;;) {
        pthread_mutex_lock(&mu);
        while (helper_step == done)
            pthread_cond_wait(&cv, &mu);
        done = helper_step;
        pthread_mutex_unlock(&mu);
        sleep_ms(wait_ms);
        if (strcmp(mode, "msgrcv") == 0) {
            struct { long type; char text[8]; } m = {1, "wake"};
            if (msgsnd(msqid, &m, sizeof m.text, 0) != 0)
                fail_errno("helper msgsnd");
        } else {
            struct sembuf up = {0, 1, 0};
            if (semop(semid, &up, 1) != 0)
                fail_errno("helper semop");
        }
    }
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static void setup(void)
{
    if (strstr(mode, "untimed")) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
        if (tfd < 0)
            fail_errno("timerfd_create");
    }
    if (strncmp(mode, "epoll", 5) == 0) {
        epfd = epoll_create1(EPOLL_CLOEXEC);
        if (epfd < 0)
            fail_errno("epoll_create1");
        if (tfd >= 0) {
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev) != 0)
                fail_errno("epoll_ctl");
        }
    }
    if (strcmp(mode, "sleep") == 0)
        wait_ms = 1000;
    if (strcmp(mode, "sem_timedwait") == 0)
        wait_clock = CLOCK_REALTIME;
    if (strcmp(mode, "sem_timedwait") == 0 && sem_init(&psem, 0, 0) != 0)
        fail_errno("sem_init");
    if (strcmp(mode, "sigtimedwait") == 0) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, NULL);
    }
    if (strcmp(mode, "msgrcv") == 0 && (msqid = msgget(IPC_PRIVATE, IPC_CREAT | 0600)) < 0)
        fail_errno("msgget");
    if ((strcmp(mode, "semop") == 0 || strcmp(mode, "semtimedop") == 0) &&
        (semid = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600)) < 0)
        fail_errno("semget");
    if (strcmp(mode, "msgrcv") == 0 || strcmp(mode, "semop") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, helper, NULL) != 0)
            corrupt("%s: pthread_create failed", mode);
    }
    if (strcmp(mode, "recv") == 0 || strcmp(mode, "accept") == 0) {
        struct timeval tv = {0, wait_ms * 1000};
        if (strcmp(mode, "recv") == 0) {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
                fail_errno("socketpair");
            sock = sv[0];
        } else {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            sock = socket(AF_INET, SOCK_STREAM, 0);
            if (sock < 0 || bind(sock, (struct sockaddr *)&a, sizeof a) != 0 || listen(sock, 4) != 0)
                fail_errno("listener");
        }
        if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
            fail_errno("SO_RCVTIMEO");
    }
    if (strcmp(mode, "own_signal") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGALRM, &sa, NULL) != 0)
            fail_errno("sigaction");
    }
}

/* The program's own signal: EINTR expected (or, once per checkpoint, a retried call). */
static void own_signal_step(long step)
{
    struct itimerval it = {{0, 0}, {0, 50000}};
    int before = alarms, rc;
    struct timespec req = ms_ts(2000), rem = {0, 0};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        fail_errno("setitimer");
    if (step % 2)
        rc = poll(NULL, 0, 2000);
    else
        rc = nanosleep(&req, &rem);
    if (rc < 0 && errno == EINTR) {
        if (alarms == before)
            corrupt("%s: EINTR without the program's signal", mode);
        if (!(step % 2) && (rem.tv_sec > 2 || rem.tv_sec < 1 || (rem.tv_sec == 1 && rem.tv_nsec < 500000000L)))
            corrupt("%s: nanosleep left %ld.%09ld s of 2 s after 50 ms", mode, (long)rem.tv_sec, rem.tv_nsec);
        return;
    }
    if (rc != 0)
        fail_errno(step % 2 ? "poll" : "nanosleep");
    if (alarms == before)
        corrupt("%s: the program's SIGALRM never came", mode);
    if (++coincidences > 2)
        corrupt("%s: the program's own SIGALRM did not interrupt the call (%d times)", mode, coincidences);
}

static void one_step(long step)
{
    long start = now_ms();
    int rc = 0;
    struct timespec ts = ms_ts(wait_ms);

    if (strcmp(mode, "own_signal") == 0) {
        own_signal_step(step);
        return;
    }
    if (tfd >= 0)
        arm_timerfd();
    if (semid >= 0 || msqid >= 0) {
        pthread_mutex_lock(&mu);
        helper_step = step;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
    }

    if (strcmp(mode, "poll") == 0) {
        rc = poll(NULL, 0, (int)wait_ms);
    } else if (strcmp(mode, "ppoll") == 0) {
        rc = ppoll(NULL, 0, &ts, NULL);
    } else if (strcmp(mode, "select") == 0) {
        struct timeval tv = {0, wait_ms * 1000};
        rc = select(0, NULL, NULL, NULL, &tv);
        if (rc == 0 && (tv.tv_sec != 0 || tv.tv_usec != 0))
            corrupt("%s: timed out with %ld.%06ld s left in the timeval", mode, (long)tv.tv_sec, (long)tv.tv_usec);
    } else if (strcmp(mode, "pselect") == 0) {
        rc = pselect(0, NULL, NULL, NULL, &ts, NULL);
    } else if (strcmp(mode, "epoll_wait") == 0) {
        struct epoll_event ev;
        rc = epoll_wait(epfd, &ev, 1, (int)wait_ms);
    } else if (strcmp(mode, "epoll_pwait") == 0) {
        struct epoll_event ev;
        rc = epoll_pwait(epfd, &ev, 1, (int)wait_ms, NULL);
    } else if (strcmp(mode, "epoll_pwait2") == 0) {
        struct epoll_event ev;
        rc = epoll_pwait2(epfd, &ev, 1, &ts, NULL);
    } else if (strcmp(mode, "nanosleep") == 0) {
        struct timespec rem;
        rc = nanosleep(&ts, &rem);
    } else if (strcmp(mode, "clock_nanosleep") == 0) {
        if ((errno = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL)) != 0)
            rc = -1;
    } else if (strcmp(mode, "clock_nanosleep_abs") == 0) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += wait_ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        if ((errno = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL)) != 0)
            rc = -1;
    } else if (strcmp(mode, "usleep") == 0) {
        rc = usleep((useconds_t)(wait_ms * 1000));
    } else if (strcmp(mode, "sleep") == 0) {
        unsigned left = sleep((unsigned)(wait_ms / 1000));
        if (left != 0)
            corrupt("%s: sleep returned %u (interrupted, errno %s)", mode, left, strerror(errno));
    } else if (strcmp(mode, "sem_timedwait") == 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += wait_ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        rc = sem_timedwait(&psem, &until);
        if (rc < 0 && errno == ETIMEDOUT)
            rc = 0;
    } else if (strcmp(mode, "sigtimedwait") == 0) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        rc = sigtimedwait(&set, NULL, &ts);
        if (rc < 0 && errno == EAGAIN)
            rc = 0;
    } else if (strcmp(mode, "semtimedop") == 0) {
        struct sembuf down = {0, -1, 0};
        rc = semtimedop(semid, &down, 1, &ts);
        if (rc < 0 && errno == EAGAIN)
            rc = 0;
    } else if (strcmp(mode, "recv") == 0 || strcmp(mode, "accept") == 0) {
        char c;
        rc = strcmp(mode, "recv") == 0 ? (int)recv(sock, &c, 1, 0) : accept(sock, NULL, NULL);
        if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            rc = 0;
        else if (rc >= 0)
            corrupt("%s: returned %d, expected a timeout", mode, rc);
    } else if (strcmp(mode, "poll_untimed") == 0) {
        struct pollfd p = {.fd = tfd, .events = POLLIN};
        rc = poll(&p, 1, -1);
        if (rc == 1)
            rc = 0;
        else if (rc >= 0)
            corrupt("%s: poll returned %d", mode, rc);
    } else if (strcmp(mode, "select_untimed") == 0) {
        fd_set r;
        FD_ZERO(&r);
        FD_SET(tfd, &r);
        rc = select(tfd + 1, &r, NULL, NULL, NULL);
        if (rc == 1 && FD_ISSET(tfd, &r))
            rc = 0;
        else if (rc >= 0)
            corrupt("%s: select returned %d", mode, rc);
    } else if (strcmp(mode, "epoll_untimed") == 0) {
        struct epoll_event ev;
        rc = epoll_wait(epfd, &ev, 1, -1);
        if (rc == 1 && ev.data.fd == tfd)
            rc = 0;
        else if (rc >= 0)
            corrupt("%s: epoll_wait returned %d", mode, rc);
    } else if (strcmp(mode, "msgrcv") == 0) {
        struct { long type; char text[8]; } m;
        ssize_t n = msgrcv(msqid, &m, sizeof m.text, 0, 0);
        rc = n == (ssize_t)sizeof m.text ? 0 : -1;
    } else if (strcmp(mode, "semop") == 0) {
        struct sembuf down = {0, -1, 0};
        rc = semop(semid, &down, 1);
    } else {
        fprintf(stderr, "interrupted: unknown mode '%s'\n", mode);
        exit(2);
    }
    if (rc != 0)
        fail_errno(mode);
    if (tfd >= 0)
        drain_timerfd();
    long took = now_ms() - start;
    if (took < wait_ms - SLACK_MS)
        corrupt("%s: returned after %ld ms of a %ld ms wait", mode, took, wait_ms);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS MODE");
    if (argc != 3) {
        fprintf(stderr, "usage: %s STEPS MODE\n", argv[0]);
        return 2;
    }
    mode = argv[2];
    setup();
    fill_words(g_words, WORDS, 0, 41);
    for (long step = 1; step <= steps; step++) {
        one_step(step);
        check_words(g_words, WORDS, (uint64_t)step - 1, 41, "global array");
        fill_words(g_words, WORDS, (uint64_t)step, 41);
        step_line(step);
    }
    if (msqid >= 0)
        msgctl(msqid, IPC_RMID, NULL);
    if (semid >= 0)
        semctl(semid, 0, IPC_RMID);
    return 0;
}

/*
 * tree.c — a small process tree: the parent forks two workers, talks to each through a pair
 * of pipes (a request, an answer), and keeps a third child as a zombie (it exited at once with
 * status 7; the parent reaps it only at the end). One worker forks a grandchild of its own that
 * sleeps and is reaped by it each step. Every step the parent sends each worker the step
 * number and checks the answer: the step squared plus the worker's number, computed by the
 * worker, which also checks that its parent is still the parent and its pid is its own. At the
 * end the parent closes the request pipes, the workers exit 0, and the parent reaps all three
 * children and checks their statuses. A MAP_SHARED anonymous page made before the forks holds a
 * counter per worker (each worker adds one per request, the parent checks it: the page must
 * stay one page shared by all) and a process-shared POSIX semaphore each worker posts once
 * per request and the parent waits on (a futex in shared memory, woken across processes).
 * A log file opened once before the forks (one open file description, one offset, no
 * O_APPEND) gets a fixed-size record from each worker per request and from the parent per
 * step; at the end the parent reads it back: every record must be there, none written over
 * (the description must stay shared).
 *
 * Usage: tree STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct shared {
    long count[2];
    sem_t done;
};
static struct shared *sh;
static int logfd;

/* A fixed-size record at the log's shared offset. */
static void record(char who, long step)
{
    char r[16];
    snprintf(r, sizeof r, "%c %010ld\n", who, step);
    if (write(logfd, r, 13) != 13)
        _exit(12);
}

static void worker(int n, int req, int ans, pid_t parent, pid_t me)
{
    long step;
    for (;;) {
        ssize_t r = read(req, &step, sizeof step);
        if (r == 0)
            _exit(0);
        if (r != sizeof step) {
            if (r < 0 && errno == EINTR)
                continue;
            _exit(10);
        }
        __atomic_add_fetch(&sh->count[n], 1, __ATOMIC_SEQ_CST);
        record((char)('a' + n), step);
        long answer = step * step + n;
        if (getppid() != parent || (pid_t)syscall(SYS_getpid) != me)
            answer = -1;
        if (n == 1) {
            /* A grandchild each step, reaped at once. */
            pid_t g = fork();
            if (g == 0)
                _exit(5);
            int st = 0;
            if (g < 0 || waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 5)
                answer = -2;
        }
        if (write(ans, &answer, sizeof answer) != sizeof answer)
            _exit(11);
        sem_post(&sh->done);
    }
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    pid_t parent = getpid();
    char logname[64];
    snprintf(logname, sizeof logname, "tree-%d.log", (int)parent);
    logfd = open(logname, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (logfd < 0)
        return 4;
    sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED || sem_init(&sh->done, 1, 0) != 0)
        return 4;
    int req[2][2], ans[2][2];
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        if (pipe(req[i]) != 0 || pipe(ans[i]) != 0)
            return 4;
        kids[i] = fork();
        if (kids[i] < 0)
            return 4;
        if (kids[i] == 0) {
            close(req[i][1]);
            close(ans[i][0]);
            if (i == 1) {
                close(req[0][1]);
                close(ans[0][0]);
            }
            worker(i, req[i][0], ans[i][1], parent, getpid());
        }
        close(req[i][0]);
        close(ans[i][1]);
    }
    pid_t zombie = fork();
    if (zombie == 0)
        _exit(7);
    if (zombie < 0)
        return 4;

    for (long step = 1; step <= steps; step++) {
        for (int i = 0; i < 2; i++) {
            if (write(req[i][1], &step, sizeof step) != sizeof step)
                corrupt("step %ld: cannot write to worker %d: %s", step, i, strerror(errno));
            long answer = 0;
            ssize_t r;
            while ((r = read(ans[i][0], &answer, sizeof answer)) < 0 && errno == EINTR)
                ;
            if (r != sizeof answer)
                corrupt("step %ld: worker %d did not answer (%zd: %s)", step, i, r, strerror(errno));
            if (answer != step * step + i)
                corrupt("step %ld: worker %d answered %ld, not %ld", step, i, answer, step * step + i);
            while (sem_wait(&sh->done) != 0)
                if (errno != EINTR)
                    corrupt("step %ld: sem_wait: %s", step, strerror(errno));
            long c = __atomic_load_n(&sh->count[i], __ATOMIC_SEQ_CST);
            if (c != step)
                corrupt("step %ld: worker %d's counter in shared memory reads %ld (the page is no longer shared?)", step, i, c);
        }
        record('p', step);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    for (int i = 0; i < 2; i++)
        close(req[i][1]);
    for (int i = 0; i < 2; i++) {
        int st = 0;
        if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            corrupt("worker %d (pid %d) ended badly (status %#x)", i, kids[i], st);
    }
    /* Every record of every step, none written over. */
    FILE *f = fopen(logname, "r");
    if (!f)
        corrupt("cannot read %s back", logname);
    long seen[3] = {0, 0, 0};
    char line[64];
    while (fgets(line, sizeof line, f)) {
        char who;
        long step;
        if (sscanf(line, "%c %ld", &who, &step) != 2 || (who != 'a' && who != 'b' && who != 'p'))
            corrupt("%s holds a broken record: '%s'", logname, line);
        seen[who == 'p' ? 2 : who - 'a']++;
    }
    fclose(f);
    unlink(logname);
    for (int i = 0; i < 3; i++)
        if (seen[i] != steps)
            corrupt("%s holds %ld records of %c, not %ld (written over: the shared offset was lost)", logname, seen[i],
                    i == 2 ? 'p' : 'a' + i, steps);
    int st = 0;
    if (waitpid(zombie, &st, 0) != zombie || !WIFEXITED(st) || WEXITSTATUS(st) != 7)
        corrupt("the zombie child %d did not keep its exit status 7 (status %#x)", zombie, st);
    return 0;
}

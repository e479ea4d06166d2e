/*
 * sysv_tree.c — a parent and a child talking through System V IPC made before the fork: a
 * message queue (the parent keeps two requests queued ahead, so messages are in flight when
 * a checkpoint comes) and a set of two semaphores: the child posts semaphore 0 once per
 * request (the parent waits on it) and adds one to semaphore 1, a counter the parent checks
 * every step. Requests have type 1, answers (the step number) type 2. At the end the parent
 * sends step 0 (stop), reaps the child and removes both objects.
 *
 * Usage: sysv_tree STEPS
 */
#include "common.h"

#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

struct msg {
    long type;
    long step;
};

static void child(int q, int sem)
{
    for (;;) {
        struct msg m;
        if (msgrcv(q, &m, sizeof m.step, 1, 0) < 0) {
            if (errno == EINTR)
                continue;
            _exit(10);
        }
        if (m.step == 0)
            _exit(0);
        struct sembuf ops[2] = {{0, 1, 0}, {1, 1, 0}};
        if (semop(sem, ops, 2) != 0)
            _exit(11);
        struct msg a = {2, m.step};
        if (msgsnd(q, &a, sizeof a.step, 0) != 0)
            _exit(12);
    }
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    int sem = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
    if (q < 0 || sem < 0)
        corrupt("msgget/semget: %s", strerror(errno));
    pid_t kid = fork();
    if (kid < 0)
        return 4;
    if (kid == 0)
        child(q, sem);
    long sent = 0;
    for (; sent < 2 && sent < steps; sent++) {
        struct msg m = {1, sent + 1};
        if (msgsnd(q, &m, sizeof m.step, 0) != 0)
            corrupt("msgsnd: %s", strerror(errno));
    }
    for (long step = 1; step <= steps; step++) {
        struct sembuf wait0 = {0, -1, 0};
        while (semop(sem, &wait0, 1) != 0)
            if (errno != EINTR)
                corrupt("step %ld: semop: %s", step, strerror(errno));
        struct msg a;
        while (msgrcv(q, &a, sizeof a.step, 2, 0) < 0)
            if (errno != EINTR)
                corrupt("step %ld: msgrcv: %s", step, strerror(errno));
        if (a.step != step)
            corrupt("step %ld: the child answered %ld", step, a.step);
        int count = semctl(sem, 1, GETVAL);
        if (count < step || count > step + 2)
            corrupt("step %ld: the counter semaphore reads %d", step, count);
        if (sent < steps) {
            struct msg m = {1, ++sent};
            if (msgsnd(q, &m, sizeof m.step, 0) != 0)
                corrupt("step %ld: msgsnd: %s", step, strerror(errno));
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    struct msg stop = {1, 0};
    if (msgsnd(q, &stop, sizeof stop.step, 0) != 0)
        corrupt("msgsnd(stop): %s", strerror(errno));
    int st = 0;
    if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        corrupt("the child ended with status %#x", st);
    if (semctl(sem, 1, GETVAL) != steps)
        corrupt("the counter semaphore reads %d, not %ld", semctl(sem, 1, GETVAL), steps);
    msgctl(q, IPC_RMID, NULL);
    semctl(sem, 0, IPC_RMID);
    return 0;
}

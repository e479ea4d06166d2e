/*
 * setid.c — set*id calls under pmig, with threads, before and after restores.
 *
 * glibc runs setuid/setgid/setgroups/... in every thread it knows (a signal to each, then it
 * waits for all): a thread that cannot take that signal makes the call hang. Every thread
 * must end with the new credentials, pmig's own threads included (checked in
 * /proc/self/task/TID/status), and the credentials must come back with a restore.
 *
 * As root, each step sets supplementary groups, the effective and saved gids and the saved
 * uid to values derived from the step (the effective uid stays 0, so the image can always be
 * written), and first checks that every thread still has those of the step before. As
 * another user, each step makes the calls that do not change anything (setgid(getgid()),
 * setuid(getuid()), ...), which must return, and setgroups, which must fail with EPERM.
 *
 * Usage: setid STEPS
 */
#include "common.h"

#include <dirent.h>
#include <grp.h>
#include <pthread.h>
#include <unistd.h>

static void *worker(void *arg)
{
    (void)arg;
    for (;;)
        sleep_ms(1000);
    return NULL;
}

/* The value of "key" in a status text (up to the end of its line). */
static void field(const char *status, const char *key, char *out, size_t len)
{
    const char *p = strstr(status, key);
    out[0] = 0;
    if (!p)
        return;
    p += strlen(key);
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strcspn(p, "\n");
    if (n >= len)
        n = len - 1;
    memcpy(out, p, n);
    out[n] = 0;
    /* Normalise tabs and trailing blanks. */
    for (char *c = out; *c; c++)
        if (*c == '\t')
            *c = ' ';
    while (n > 0 && out[n - 1] == ' ')
        out[--n] = 0;
}

/* Every thread's Uid, Gid and Groups lines must be the ones given; returns the thread count. */
static int check_all(long step, const char *uid, const char *gid, const char *groups)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        corrupt("step %ld: cannot list /proc/self/task", step);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[320], buf[4096], v[256];
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* a thread that just exited */
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        buf[len] = 0;
        fclose(f);
        char name[64];
        field(buf, "Name:", name, sizeof name);
        field(buf, "Uid:", v, sizeof v);
        if (strcmp(v, uid) != 0)
            corrupt("step %ld: thread %s (%s) has Uid '%s', not '%s'", step, e->d_name, name, v, uid);
        field(buf, "Gid:", v, sizeof v);
        if (strcmp(v, gid) != 0)
            corrupt("step %ld: thread %s (%s) has Gid '%s', not '%s'", step, e->d_name, name, v, gid);
        field(buf, "Groups:", v, sizeof v);
        if (groups && strcmp(v, groups) != 0)
            corrupt("step %ld: thread %s (%s) has Groups '%s', not '%s'", step, e->d_name, name, v, groups);
        n++;
    }
    closedir(d);
    return n;
}

static void expect_root_creds(long s, int set_by_step)
{
    char uid[128], gid[128], groups[128];
    snprintf(uid, sizeof uid, "0 0 %ld 0", 3000 + s);
    snprintf(gid, sizeof gid, "0 %ld %ld %ld", 2000 + s, 2100 + s, 2000 + s);
    snprintf(groups, sizeof groups, "%ld %ld", 1000 + s, 1001 + s);
    int n = check_all(set_by_step, uid, gid, groups);
    /* main + 3 workers + pmig's checkpoint thread (when under pmig) */
    if (n < 4)
        corrupt("step %d: only %d threads", set_by_step, n);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int root = geteuid() == 0;
    for (int i = 0; i < 3; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0)
            return 4;
    }
    for (long step = 1; step <= steps; step++) {
        if (root) {
            if (step > 1)
                expect_root_creds(step - 1, step);
            gid_t g[2] = {1000 + step, 1001 + step};
            if (setgroups(2, g) != 0)
                corrupt("step %ld: setgroups: %s", step, strerror(errno));
            if (setresgid(0, 2000 + step, 2100 + step) != 0)
                corrupt("step %ld: setresgid: %s", step, strerror(errno));
            if (setresuid(0, 0, 3000 + step) != 0)
                corrupt("step %ld: setresuid: %s", step, strerror(errno));
            expect_root_creds(step, step);
        } else {
            if (setgid(getgid()) != 0 || setuid(getuid()) != 0 || setegid(getegid()) != 0 || seteuid(geteuid()) != 0)
                corrupt("step %ld: set*id to the same ids failed: %s", step, strerror(errno));
            if (setgroups(0, NULL) == 0 || errno != EPERM)
                corrupt("step %ld: setgroups as a user did not fail with EPERM", step);
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

/*
 * deleted.c — things the program holds whose names are gone, checked every step:
 * - its working directory was removed (mode 0751 when it was): "." is a directory with no
 *   links and that mode, and nothing can be made in it (ENOENT);
 * - an fd on a removed directory (mode 0705): a directory with no links and that mode;
 * - a removed FIFO open twice (read/write, and write-only): a line written to one end is read
 *   from the other, one line always in flight between steps;
 * - no name pmig made to bring these back is left in the directory they were in.
 *
 * Usage: deleted STEPS
 */
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static void check_dir(struct stat *st, const char *what, unsigned mode, long step)
{
    if (!S_ISDIR(st->st_mode) || st->st_nlink != 0 || (st->st_mode & 07777) != mode)
        corrupt("step %ld: %s: mode %o, %ld links (want a removed directory, mode %o)", step, what, st->st_mode, (long)st->st_nlink, mode);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    char home[4096], cwd[64], dir[64], fifo[64];
    if (!getcwd(home, sizeof home))
        corrupt("getcwd: %s", strerror(errno));
    snprintf(cwd, sizeof cwd, "deleted-cwd-%d", (int)getpid());
    snprintf(dir, sizeof dir, "deleted-dir-%d", (int)getpid());
    snprintf(fifo, sizeof fifo, "deleted-fifo-%d", (int)getpid());
    if (mkdir(dir, 0700) != 0 || chmod(dir, 0705) != 0 || mkfifo(fifo, 0600) != 0 || mkdir(cwd, 0700) != 0 || chmod(cwd, 0751) != 0)
        corrupt("setup: %s", strerror(errno));
    int d = open(dir, O_RDONLY | O_DIRECTORY);
    int fr = open(fifo, O_RDWR);
    int fw = open(fifo, O_WRONLY | O_NONBLOCK);
    if (d < 0 || fr < 0 || fw < 0 || rmdir(dir) != 0 || unlink(fifo) != 0 || chdir(cwd) != 0)
        corrupt("setup: %s", strerror(errno));
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", home, cwd);
    if (rmdir(path) != 0)
        corrupt("rmdir cwd: %s", strerror(errno));
    if (write(fw, "line 0\n", 7) != 7)
        corrupt("fifo write: %s", strerror(errno));
    for (long step = 1; step <= steps; step++) {
        struct stat st;
        if (stat(".", &st) != 0)
            corrupt("step %ld: stat .: %s", step, strerror(errno));
        check_dir(&st, "the working directory", 0751, step);
        if (open("x", O_WRONLY | O_CREAT, 0600) >= 0 || errno != ENOENT)
            corrupt("step %ld: a file could be made in the removed working directory", step);
        if (fstat(d, &st) != 0)
            corrupt("step %ld: fstat of the removed directory's fd: %s", step, strerror(errno));
        check_dir(&st, "the removed directory", 0705, step);
        char want[32], got[32] = {0};
        int n = snprintf(want, sizeof want, "line %ld\n", step - 1);
        if (read(fr, got, (size_t)n) != n || strcmp(got, want) != 0)
            corrupt("step %ld: the FIFO gave '%s', want '%s'", step, got, want);
        if (fstat(fr, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_nlink != 0)
            corrupt("step %ld: the FIFO is not a removed FIFO", step);
        n = snprintf(want, sizeof want, "line %ld\n", step);
        if (write(fw, want, (size_t)n) != n)
            corrupt("step %ld: fifo write: %s", step, strerror(errno));
        DIR *h = opendir(home);
        struct dirent *e;
        while (h && (e = readdir(h)))
            if (strncmp(e->d_name, ".pmig-", 6) == 0)
                corrupt("step %ld: %s was left in %s", step, e->d_name, home);
        if (h)
            closedir(h);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

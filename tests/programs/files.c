/*
 * files.c — open regular files whose numbers, offsets and flags must survive
 * a checkpoint.
 *
 * Usage: files STEPS DATA_PATH LOG_PATH
 *
 * DATA_PATH is opened twice: read-write as fd 7 and read-only, close-on-exec,
 * as fd 12, with independent offsets.  LOG_PATH is opened write-only with
 * O_APPEND as fd 20.  Both files are truncated at start.  Every step writes a
 * RECLEN-byte record through fd 7, reads it back through fd 12, appends a
 * record to fd 20, and checks offsets (lseek), status flags (F_GETFL),
 * descriptor flags (F_GETFD), file sizes, and that each fd still refers to
 * the file it was opened on (fstat dev/ino).  At the end each file holds
 * exactly STEPS records, in order ("data 000001 ...", "log 000001 ...").
 */
#include "common.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define RECLEN 32
#define FD_RW 7
#define FD_RO 12
#define FD_LOG 20

struct ident {
    dev_t dev;
    ino_t ino;
};

static struct ident ids[3];
static const int fds[3] = {FD_RW, FD_RO, FD_LOG};
static uint64_t g_words[512];

static void place(int fd, int target, int cloexec)
{
    if (fd < 0) {
        perror("open");
        exit(4);
    }
    if (dup3(fd, target, cloexec ? O_CLOEXEC : 0) != target) {
        perror("dup3");
        exit(4);
    }
    close(fd);
}

static void record(char *buf, const char *kind, long step)
{
    int n = snprintf(buf, RECLEN + 1, "%s %06ld", kind, step);
    memset(buf + n, '.', (size_t)(RECLEN - 1 - n));
    buf[RECLEN - 1] = '\n';
}

static void check_fd(int i, long step, off_t want_off, int want_acc, int want_append, int want_cloexec)
{
    int fd = fds[i];
    struct stat st;
    int fl = fcntl(fd, F_GETFL);
    int fdfl = fcntl(fd, F_GETFD);
    off_t off = lseek(fd, 0, SEEK_CUR);

    if (fl == -1 || fdfl == -1 || fstat(fd, &st) != 0)
        corrupt("step %ld: fd %d is not open (%s)", step, fd, strerror(errno));
    if (st.st_dev != ids[i].dev || st.st_ino != ids[i].ino)
        corrupt("step %ld: fd %d now refers to dev %lu ino %lu, not its file (dev %lu ino %lu)", step, fd,
                (unsigned long)st.st_dev, (unsigned long)st.st_ino, (unsigned long)ids[i].dev,
                (unsigned long)ids[i].ino);
    if ((fl & O_ACCMODE) != want_acc || !!(fl & O_APPEND) != want_append)
        corrupt("step %ld: fd %d status flags are %#o", step, fd, (unsigned)fl);
    if (!!(fdfl & FD_CLOEXEC) != want_cloexec)
        corrupt("step %ld: fd %d FD_CLOEXEC is %d, expected %d", step, fd, !!(fdfl & FD_CLOEXEC), want_cloexec);
    if (off != want_off)
        corrupt("step %ld: fd %d offset is %lld, expected %lld", step, fd, (long long)off, (long long)want_off);
    if (st.st_size != (off_t)(step - 1) * RECLEN)
        corrupt("step %ld: fd %d file size is %lld, expected %lld", step, fd, (long long)st.st_size,
                (long long)(step - 1) * RECLEN);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS DATA_PATH LOG_PATH");
    char out[RECLEN + 1], in[RECLEN + 1];

    if (argc != 4) {
        fprintf(stderr, "usage: %s STEPS DATA_PATH LOG_PATH\n", argv[0]);
        return 2;
    }
    place(open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644), FD_RW, 0);
    place(open(argv[2], O_RDONLY), FD_RO, 1);
    place(open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644), FD_LOG, 0);
    for (int i = 0; i < 3; i++) {
        struct stat st;
        if (fstat(fds[i], &st) != 0)
            return 4;
        ids[i].dev = st.st_dev;
        ids[i].ino = st.st_ino;
    }
    fill_words(g_words, 512, 0, 21);

    for (long step = 1; step <= steps; step++) {
        off_t before = (off_t)(step - 1) * RECLEN;
        check_fd(0, step, before, O_RDWR, 0, 0);
        check_fd(1, step, before, O_RDONLY, 0, 1);
        check_fd(2, step, before, O_WRONLY, 1, 0);
        check_words(g_words, 512, (uint64_t)step - 1, 21, "global array");

        record(out, "data", step);
        if (write(FD_RW, out, RECLEN) != RECLEN)
            corrupt("step %ld: write to fd %d failed: %s", step, FD_RW, strerror(errno));
        ssize_t got = read(FD_RO, in, RECLEN);
        if (got != RECLEN || memcmp(in, out, RECLEN) != 0)
            corrupt("step %ld: read back %zd bytes through fd %d, not the record just written", step, got, FD_RO);
        record(out, "log", step);
        if (write(FD_LOG, out, RECLEN) != RECLEN)
            corrupt("step %ld: append to fd %d failed: %s", step, FD_LOG, strerror(errno));
        if (lseek(FD_LOG, 0, SEEK_CUR) != (off_t)step * RECLEN)
            corrupt("step %ld: fd %d offset after append is %lld", step, FD_LOG,
                    (long long)lseek(FD_LOG, 0, SEEK_CUR));

        fill_words(g_words, 512, (uint64_t)step, 21);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

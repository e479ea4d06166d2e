/*
 * fileattrs.c — attributes of files pmig makes again, checked every step:
 * - a deleted file with mode 0640 and set times (never written after), still deleted;
 * - a deleted file open twice (read/write, and read-only through /proc/self/fd): one file
 *   (same inode), each description with its access mode; what one writes the other reads;
 * - a memfd with mode 0600, a size, and seals (F_SEAL_SHRINK | F_SEAL_GROW), and a memfd
 *   made without MFD_ALLOW_SEALING (its seals: F_SEAL_SEAL);
 * - a pipe whose read end has a second description (through /proc/self/fd) with O_NONBLOCK,
 *   the first without: each keeps its own flags, and both read the one pipe;
 * - as root, a file opened through /proc/self/map_files/… (O_NONBLOCK): the same file, with
 *   its flags;
 * - /proc/self/status open (the fd names /proc/PID/status): after a restore it reads the
 *   restored process's own status (its Pid line is the program's pid).
 *
 * Usage: fileattrs STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    char a[64], b[64], path[64];
    snprintf(a, sizeof a, "fileattrs-%d-a", (int)getpid());
    snprintf(b, sizeof b, "fileattrs-%d-b", (int)getpid());
    int fa = open(a, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int fb = open(b, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fa < 0 || fb < 0 || write(fa, "hello", 5) != 5 || write(fb, "01234567", 8) != 8)
        corrupt("making the files: %s", strerror(errno));
    struct timespec times[2] = {{1000000000, 111}, {1234567890, 222}};
    if (fchmod(fa, 0640) != 0 || futimens(fa, times) != 0)
        corrupt("fchmod/futimens: %s", strerror(errno));
    snprintf(path, sizeof path, "/proc/self/fd/%d", fb);
    int fb2 = open(path, O_RDONLY);
    if (fb2 < 0 || unlink(a) != 0 || unlink(b) != 0)
        corrupt("reopen/unlink: %s", strerror(errno));
    int m = memfd_create("sealed", MFD_ALLOW_SEALING);
    int m2 = memfd_create("plain", 0);
    if (m < 0 || m2 < 0 || write(m, "data", 4) != 4 || fchmod(m, 0600) != 0 || fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
        corrupt("memfd: %s", strerror(errno));
    int p[2];
    if (pipe(p) != 0)
        corrupt("pipe: %s", strerror(errno));
    snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
    int p2 = open(path, O_RDONLY | O_NONBLOCK);
    if (p2 < 0)
        corrupt("second description of the pipe: %s", strerror(errno));
    int ps = open("/proc/self/status", O_RDONLY);
    if (ps < 0)
        corrupt("open /proc/self/status: %s", strerror(errno));
    /* Opening map_files needs CAP_SYS_ADMIN: root only. */
    int mf = -1;
    char mpath[64];
    snprintf(mpath, sizeof mpath, "fileattrs-%d-map", (int)getpid());
    if (geteuid() == 0) {
        int fm = open(mpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
        char *mm = fm < 0 || write(fm, "mapped", 6) != 6 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ, MAP_SHARED, fm, 0);
        if (mm == MAP_FAILED)
            corrupt("map file: %s", strerror(errno));
        close(fm);
        snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)mm, (unsigned long)mm + 4096);
        mf = open(path, O_RDONLY | O_NONBLOCK);
        if (mf < 0)
            corrupt("open %s: %s", path, strerror(errno));
    }
    for (long step = 1; step <= steps; step++) {
        struct stat st, st2;
        char status[4096];
        ssize_t n = pread(ps, status, sizeof status - 1, 0);
        char want[32];
        snprintf(want, sizeof want, "\nPid:\t%d\n", (int)getpid());
        if (n <= 0 || (status[n] = 0, !strstr(status, want)))
            corrupt("step %ld: the open /proc/self/status is not this process's (%zd bytes)", step, n);
        if ((fcntl(p[0], F_GETFL) & O_NONBLOCK) || !(fcntl(p2, F_GETFL) & O_NONBLOCK))
            corrupt("step %ld: the pipe's two descriptions no longer have their own O_NONBLOCK", step);
        if (write(p[1], &step, sizeof step) != sizeof step)
            corrupt("step %ld: write to the pipe: %s", step, strerror(errno));
        long got = 0;
        if (read(p2, &got, sizeof got) != sizeof got || got != step)
            corrupt("step %ld: the second description read %ld", step, got);
        if (fstat(fa, &st) != 0 || (st.st_mode & 07777) != 0640 || st.st_size != 5 || st.st_nlink != 0 ||
            st.st_mtim.tv_sec != 1234567890 || st.st_mtim.tv_nsec != 222)
            corrupt("step %ld: the deleted file reads mode %o size %ld links %ld mtime %ld.%ld", step, st.st_mode & 07777, (long)st.st_size,
                    (long)st.st_nlink, (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
        if (fstat(fb, &st) != 0 || fstat(fb2, &st2) != 0 || st.st_ino != st2.st_ino || st.st_nlink != 0)
            corrupt("step %ld: the two descriptions are no longer one deleted file", step);
        if ((fcntl(fb, F_GETFL) & O_ACCMODE) != O_RDWR || (fcntl(fb2, F_GETFL) & O_ACCMODE) != O_RDONLY)
            corrupt("step %ld: the descriptions' access modes changed", step);
        if (pwrite(fb, &step, sizeof step, 0) != sizeof step)
            corrupt("step %ld: pwrite: %s", step, strerror(errno));
        long back = 0;
        if (pread(fb2, &back, sizeof back, 0) != sizeof back || back != step)
            corrupt("step %ld: the other description reads %ld", step, back);
        if (fcntl(m, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW) || fstat(m, &st) != 0 || (st.st_mode & 07777) != 0600 || st.st_size != 4)
            corrupt("step %ld: the memfd has seals %#x, mode %o, size %ld", step, fcntl(m, F_GET_SEALS), st.st_mode & 07777, (long)st.st_size);
        if (fcntl(m2, F_GET_SEALS) != F_SEAL_SEAL)
            corrupt("step %ld: the plain memfd has seals %#x", step, fcntl(m2, F_GET_SEALS));
        char six[7] = {0};
        if (mf >= 0 && (!(fcntl(mf, F_GETFL) & O_NONBLOCK) || pread(mf, six, 6, 0) != 6 || strcmp(six, "mapped") != 0))
            corrupt("step %ld: the file opened through map_files lost its flags or reads '%s'", step, six);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    unlink(mpath);
    return 0;
}

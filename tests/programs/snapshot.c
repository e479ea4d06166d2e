/*
 * snapshot.c — a program that never stops changing its memory, for checkpoints written
 * while it runs (background checkpoints).
 *
 * Iteration c (c = 1, 2, ...) writes c into page c % NPAGES of a MIB MiB buffer and into
 * every page of three 64 KiB regions: one MADV_DONTFORK, one MADV_WIPEONFORK, one
 * MAP_SHARED anonymous. So at the start of an iteration, with c the last one done, page p
 * of the buffer holds the largest i <= c with i % NPAGES == p (NEVER if none) and every
 * region page holds c: a state taken at one instant passes that check; one read while the
 * program ran (torn, or later than the signal) does not.
 *
 * Every iteration starts by looking at its parent (the raw system call: pmig shows a
 * restored program the parent it had) and its pid namespace: a restored program has
 * another parent (pmig-resume's init) or, restored again, another namespace. It then checks the whole state at once, and the flags of its
 * regions (smaps "dc", "wf"), and prints "restored C ok" (or CORRUPT, exit 3).
 * Every 16 iterations it stats IMAGE: when a new image appears there (another inode), it
 * prints "image C GAP_US": the iteration it saw it at and the longest time between two
 * iterations since the previous such line (how long the checkpoint stopped it). Every
 * 20 ms it prints "tick C".
 *
 * On SIGUSR1 it forks a child that calls exit(0), waits for it and prints "forked".
 *
 * Usage: snapshot MIB IMAGE
 */
#include "common.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define RLEN (64 * 1024)
/* What a page of the buffer holds before the program first writes it (not zero: a page
 * of zeros may be left unpopulated). */
#define NEVER 0x5a5a5a5a5a5a5a5aULL
#define PAGE 4096

static uint64_t *buf;
static size_t npages;
static char *region[3];
static const char *flag[3] = {"dc", "wf", NULL};
static volatile sig_atomic_t fork_asked;

static void ask_fork(int sig)
{
    (void)sig;
    fork_asked = 1;
}

/* getppid(2) as the kernel answers it, past libc and pmig's wrappers. */
static long raw_getppid(void)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "0"(110L) : "rcx", "r11", "memory");
    return r;
}

/* The inode of this process's pid namespace (0 if unknown). */
static ino_t pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? st.st_ino : 0;
}

static uint64_t now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* Whether the region at `p` has VmFlags `f` in /proc/self/smaps. */
static int has_flag(char *p, const char *f)
{
    FILE *s = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    while (s && fgets(line, sizeof line, s)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = (unsigned long)p >= a && (unsigned long)p < b;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char pad[8];
            snprintf(pad, sizeof pad, " %s", f);
            found = strstr(line + 8, pad) != NULL;
            break;
        }
    }
    if (s)
        fclose(s);
    return found;
}

/* The whole state after iteration c. */
static void check(uint64_t c)
{
    for (size_t p = 0; p < npages; p++) {
        uint64_t back = (c + npages - p % npages) % npages; /* c - i for the last i == p */
        uint64_t want = c >= back && c - back >= 1 ? c - back : NEVER;
        uint64_t got = buf[p * (PAGE / 8)];
        if (got != want)
            corrupt("page %zu holds %llu after iteration %llu, not %llu", p, (unsigned long long)got,
                    (unsigned long long)c, (unsigned long long)want);
    }
    for (int r = 0; r < 3; r++)
        for (size_t o = 0; o < RLEN; o += PAGE) {
            uint64_t got = *(uint64_t *)(region[r] + o);
            if (got != c)
                corrupt("region %d (%s) holds %llu at +%zu after iteration %llu", r, flag[r] ? flag[r] : "shared",
                        (unsigned long long)got, o, (unsigned long long)c);
        }
    for (int r = 0; r < 2; r++)
        if (!has_flag(region[r], flag[r]))
            corrupt("region %d lost its flag %s", r, flag[r]);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MIB IMAGE\n", argv[0]);
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    const char *image = argv[2];
    npages = (mib << 20) / PAGE;
    buf = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED || npages == 0)
        corrupt("mmap %zu MiB: %s", mib, strerror(errno));
    for (size_t p = 0; p < npages; p++)
        buf[p * (PAGE / 8)] = NEVER;
    int advice[3] = {MADV_DONTFORK, MADV_WIPEONFORK, 0};
    for (int r = 0; r < 3; r++) {
        /* A guard page after each region keeps the kernel from merging it with a neighbour. */
        int flags = r == 2 ? MAP_SHARED | MAP_ANONYMOUS : MAP_PRIVATE | MAP_ANONYMOUS;
        char *base = mmap(NULL, RLEN + PAGE, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (base == MAP_FAILED || munmap(base + RLEN, PAGE) != 0)
            corrupt("mmap region %d: %s", r, strerror(errno));
        if (advice[r] && madvise(base, RLEN, advice[r]) != 0)
            corrupt("madvise region %d: %s", r, strerror(errno));
        memset(base, 0, RLEN);
        region[r] = base;
    }
    signal(SIGUSR1, ask_fork);
    long parent = raw_getppid();
    ino_t ns = pid_ns();
    struct stat st;
    ino_t seen = stat(image, &st) == 0 ? st.st_ino : 0;
    uint64_t last = now_us(), gap = 0, printed = last;
    printf("ready\n");
    fflush(stdout);
    for (uint64_t c = 0;;) {
        if (raw_getppid() != parent || pid_ns() != ns) {
            parent = raw_getppid();
            ns = pid_ns();
            check(c);
            printf("restored %llu ok\n", (unsigned long long)c);
            fflush(stdout);
            last = now_us();
            gap = 0;
            seen = stat(image, &st) == 0 ? st.st_ino : 0;
        }
        if (fork_asked) {
            fork_asked = 0;
            pid_t child = fork();
            if (child == 0)
                exit(0);
            int status;
            if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status))
                corrupt("fork and wait: %s", strerror(errno));
            printf("forked\n");
            fflush(stdout);
        }
        c++;
        buf[(c % npages) * (PAGE / 8)] = c;
        for (int r = 0; r < 3; r++)
            for (size_t o = 0; o < RLEN; o += PAGE)
                *(uint64_t *)(region[r] + o) = c;
        uint64_t t = now_us();
        if (t - last > gap)
            gap = t - last;
        last = t;
        if (c % 16 == 0 && stat(image, &st) == 0 && st.st_ino != seen) {
            seen = st.st_ino;
            printf("image %llu %llu\n", (unsigned long long)c, (unsigned long long)gap);
            fflush(stdout);
            gap = 0;
        }
        if (t - printed >= 20000) {
            printf("tick %llu\n", (unsigned long long)c);
            fflush(stdout);
            printed = t;
        }
    }
}

/*
 * mlockall.c — mlockall(MCL_FUTURE): every mapping the program makes later is locked. Every
 * step maps a few pages and checks smaps' VmFlags show them locked ("lo"), then unmaps them.
 * (Needs a memlock limit above what the process maps later: run as root.)
 *
 * Usage: mlockall STEPS
 */
#include "common.h"

#include <sys/mman.h>

/* Whether smaps shows the mapping that starts at `p` locked. */
static int locked(void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512], start[32];
    int in = 0, lo = 0;
    snprintf(start, sizeof start, "%lx-", (unsigned long)p);
    while (f && fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strchr(line, ' ') && strchr(line, '-') < strchr(line, ' '))
            in = strncmp(line, start, strlen(start)) == 0;
        else if (in && strncmp(line, "VmFlags:", 8) == 0)
            lo = strstr(line, " lo") != NULL;
    }
    if (f)
        fclose(f);
    return lo;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    if (mlockall(MCL_FUTURE) != 0)
        corrupt("mlockall: %s", strerror(errno));
    for (long step = 1; step <= steps; step++) {
        void *p = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            corrupt("step %ld: mmap: %s", step, strerror(errno));
        if (!locked(p))
            corrupt("step %ld: a new mapping is not locked (mlockall(MCL_FUTURE) lost)", step);
        munmap(p, 4 * 4096);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

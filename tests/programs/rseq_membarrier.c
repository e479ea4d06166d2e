/*
 * rseq_membarrier.c — registrations only raw system calls make: the program registers its own
 * rseq area (re-executing itself with glibc's rseq turned off, GLIBC_TUNABLES) and
 * membarrier's private expedited command. Every step: the area's cpu_id, set to a marker,
 * is written by the kernel again after a sleep (the area is still registered), and
 * MEMBARRIER_CMD_PRIVATE_EXPEDITED succeeds (it fails with EPERM unregistered).
 *
 * Usage: rseq_membarrier STEPS
 */
#include "common.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

extern const unsigned int __rseq_size;

struct rseq_area {
    uint32_t cpu_id_start;
    uint32_t cpu_id;
    uint64_t rseq_cs;
    uint32_t flags;
    uint32_t pad[3];
} __attribute__((aligned(32)));

static __thread struct rseq_area area;

#define SIG 0x53053053

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    if (__rseq_size != 0) {
        if (getenv("PMIG_TEST_REEXEC"))
            corrupt("glibc still registers rseq with GLIBC_TUNABLES=%s", getenv("GLIBC_TUNABLES"));
        setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0", 1);
        setenv("PMIG_TEST_REEXEC", "1", 1);
        execv("/proc/self/exe", argv);
        corrupt("re-exec: %s", strerror(errno));
    }
    if (syscall(SYS_rseq, &area, sizeof area, 0, SIG) != 0)
        corrupt("rseq: %s", strerror(errno));
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0)
        corrupt("membarrier register: %s", strerror(errno));
    for (long step = 1; step <= steps; step++) {
        area.cpu_id = 0xdead;
        sleep_ms(STEP_MS);
        if (area.cpu_id == 0xdead)
            corrupt("step %ld: the rseq area is not registered any more", step);
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
            corrupt("step %ld: membarrier private expedited: %s (no longer registered)", step, strerror(errno));
        step_line(step);
    }
    return 0;
}

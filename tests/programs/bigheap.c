/*
 * bigheap.c — a counter with a large heap, so that writing its image takes a while (the
 * crash-consistency test kills it in the middle of that).
 *
 * Usage: bigheap STEPS MIB
 *
 * Fills MIB MiB of malloc'd memory with a pattern at start; every step checks one word of
 * every page, and rewrites the first word of every page with the step's pattern.
 */
#include "common.h"

#define PAGE 4096UL
#define WORDS_PER_PAGE (PAGE / 8)

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS MIB");
    long mib = argc > 2 ? atol(argv[2]) : 0;
    if (mib < 1 || mib > 4096) {
        fprintf(stderr, "bigheap: bad size '%s'\n", argc > 2 ? argv[2] : "");
        return 2;
    }
    unsigned long pages = (unsigned long)mib * 1024 * 1024 / PAGE;
    uint64_t *heap = malloc(pages * PAGE);
    if (!heap) {
        perror("malloc");
        return 4;
    }
    for (unsigned long pg = 0; pg < pages; pg++) {
        uint64_t *p = heap + pg * WORDS_PER_PAGE;
        p[0] = pattern(0, 7, pg);
        for (unsigned long i = 1; i < WORDS_PER_PAGE; i++)
            p[i] = pg * WORDS_PER_PAGE + i;
    }
    for (long step = 1; step <= steps; step++) {
        for (unsigned long pg = 0; pg < pages; pg++) {
            uint64_t *p = heap + pg * WORDS_PER_PAGE;
            unsigned long i = 1 + (pg + (unsigned long)step) % (WORDS_PER_PAGE - 1);
            if (p[0] != pattern((uint64_t)step - 1, 7, pg))
                corrupt("step %ld: page %lu word 0 is %#llx", step, pg, (unsigned long long)p[0]);
            if (p[i] != pg * WORDS_PER_PAGE + i)
                corrupt("step %ld: page %lu word %lu is %#llx", step, pg, i, (unsigned long long)p[i]);
            p[0] = pattern((uint64_t)step, 7, pg);
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    free(heap);
    return 0;
}

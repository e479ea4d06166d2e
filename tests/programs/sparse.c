/*
 * sparse.c — a huge, mostly untouched mapping whose image must stay small.
 *
 * Usage: sparse STEPS
 *
 * Maps 1 GiB with MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE (and
 * MADV_NOHUGEPAGE, so the result does not depend on the THP setting) and
 * writes one page in every 64 (4096 pages, 16 MiB): words 1..511 of a
 * touched page hold a fixed pattern, word 0 a pattern of the current step.  Every step checks
 * every touched page, rewrites word 0, and checks that a rotating sample of
 * SAMPLE untouched pages still reads as zero.
 */
#include "common.h"

#include <sys/mman.h>

#define MAP_BYTES (1024UL * 1024 * 1024)
#define PAGE 4096UL
#define STRIDE 64UL
#define PAGES (MAP_BYTES / PAGE)
#define WORDS_PER_PAGE (PAGE / 8)
#define SAMPLE 64

static uint64_t *base;

static volatile uint64_t *page_at(unsigned long page)
{
    return (volatile uint64_t *)((char *)base + page * PAGE);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");

    base = mmap(NULL, MAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap 1 GiB");
        return 4;
    }
    /* Transparent huge pages would turn each touched 4 KiB page into a
     * populated 2 MiB one (and the image into ~1 GiB) on a machine whose THP
     * setting is "always"; keep the mapping at 4 KiB pages everywhere. */
    if (madvise(base, MAP_BYTES, MADV_NOHUGEPAGE) != 0) {
        perror("madvise(MADV_NOHUGEPAGE)");
        return 4;
    }
    for (unsigned long page = 0; page < PAGES; page += STRIDE) {
        volatile uint64_t *p = page_at(page);
        p[0] = pattern(0, 42, page);
        for (unsigned long i = 1; i < WORDS_PER_PAGE; i++)
            p[i] = pattern(page, 41, i);
    }

    for (long step = 1; step <= steps; step++) {
        for (unsigned long page = 0; page < PAGES; page += STRIDE) {
            volatile uint64_t *p = page_at(page);
            if (p[0] != pattern((uint64_t)step - 1, 42, page))
                corrupt("step %ld: page %lu word 0 is %#llx, expected the pattern of step %ld", step, page,
                        (unsigned long long)p[0], step - 1);
            for (unsigned long i = 1; i < WORDS_PER_PAGE; i++)
                if (p[i] != pattern(page, 41, i))
                    corrupt("step %ld: page %lu word %lu is %#llx", step, page, i, (unsigned long long)p[i]);
            p[0] = pattern((uint64_t)step, 42, page);
        }
        for (unsigned long k = 0; k < SAMPLE; k++) {
            unsigned long page = ((unsigned long)step * 7919UL + k * 4099UL) % PAGES;
            if (page % STRIDE == 0)
                page++;
            volatile uint64_t *p = page_at(page);
            for (unsigned long i = 0; i < WORDS_PER_PAGE; i++)
                if (p[i] != 0)
                    corrupt("step %ld: untouched page %lu word %lu is %#llx, not zero", step, page, i,
                            (unsigned long long)p[i]);
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

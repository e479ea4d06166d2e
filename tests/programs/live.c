/*
 * live.c — a program that keeps writing its memory, at a bounded rate, and changing its
 * memory map while a live move copies it.
 *
 * Usage: live STEPS MIB KIB_PER_STEP
 *
 * `big`: MIB MiB of private anonymous memory, every word set (word 0 of page pg to the
 * pattern of version ver[pg], the others to their index); `ver` (one word per page) says
 * which. Each step s (every STEP_MS):
 *  1. KIB_PER_STEP KiB of `big`, the next pages in turn (wrapping), get version s in word 0;
 *  2. `wipe`: page s-1 is dropped with MADV_DONTNEED and read back (a zero page then), the
 *     pages before it must read as zeros, the others as their pattern;
 *  3. `moving` (1 MiB) moves to its other slot (mremap MREMAP_FIXED), checked whole;
 *  4. `renewed` (256 KiB) is checked, unmapped, mapped again at its address and filled;
 *  5. word 0 of every page of `big` is checked against its version, and every word of 64
 *     pages in turn; every 20th step and the last, every word of every page.
 * A move in the middle thus catches pages written, dropped, moved and replaced while they
 * were being copied.
 */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define WPP (PAGE / 8)
#define WIPE_PAGES 1024UL
#define MOVING_BYTES (1UL << 20)
#define RENEWED_BYTES (256UL << 10)

static void *anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        corrupt("mmap %zu: %s", len, strerror(errno));
    return p;
}

static void check_page(const volatile uint64_t *big, const uint64_t *ver, unsigned long pg, int every_word)
{
    const volatile uint64_t *p = big + pg * WPP;
    if (p[0] != pattern(ver[pg], 7, pg))
        corrupt("big: page %lu word 0 is %#llx, expected version %llu's pattern", pg, (unsigned long long)p[0],
                (unsigned long long)ver[pg]);
    if (every_word)
        for (unsigned long i = 1; i < WPP; i++)
            if (p[i] != pg * WPP + i)
                corrupt("big: page %lu word %lu is %#llx", pg, i, (unsigned long long)p[i]);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS MIB KIB_PER_STEP");
    long mib = argc > 2 ? atol(argv[2]) : 0;
    long kib = argc > 3 ? atol(argv[3]) : -1;
    if (mib < 1 || mib > 8192 || kib < 0 || steps >= (long)WIPE_PAGES) {
        fprintf(stderr, "live: usage: live STEPS(<1024) MIB KIB_PER_STEP\n");
        return 2;
    }
    char *slots = mmap(NULL, 2 * MOVING_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (slots == MAP_FAILED)
        corrupt("mmap: %s", strerror(errno));
    uint64_t *moving = mmap(slots, MOVING_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (moving != (uint64_t *)slots)
        corrupt("mmap slot: %s", strerror(errno));
    fill_words(moving, MOVING_BYTES / 8, 0, 12);
    uint64_t *wipe = anon(WIPE_PAGES * PAGE);
    fill_words(wipe, WIPE_PAGES * WPP, 0, 11);
    uint64_t *renewed = anon(RENEWED_BYTES);
    fill_words(renewed, RENEWED_BYTES / 8, 0, 13);
    unsigned long pages = (unsigned long)mib * 1024 * 1024 / PAGE;
    uint64_t *ver = anon(pages * 8);
    uint64_t *big = anon(pages * PAGE);
    for (unsigned long pg = 0; pg < pages; pg++) {
        uint64_t *p = big + pg * WPP;
        p[0] = pattern(0, 7, pg);
        for (unsigned long i = 1; i < WPP; i++)
            p[i] = pg * WPP + i;
    }
    unsigned long per_step = (unsigned long)kib * 1024 / PAGE, next = 0, sample = 0;

    for (long step = 1; step <= steps; step++) {
        for (unsigned long n = 0; n < per_step; n++, next = (next + 1) % pages) {
            ver[next] = (uint64_t)step;
            big[next * WPP] = pattern((uint64_t)step, 7, next);
        }

        if (madvise(wipe + (step - 1) * WPP, PAGE, MADV_DONTNEED) != 0)
            corrupt("madvise: %s", strerror(errno));
        for (unsigned long pg = 0; pg < WIPE_PAGES; pg++) {
            const volatile uint64_t *p = wipe + pg * WPP;
            for (unsigned long i = 0; i < WPP; i++) {
                uint64_t want = pg < (unsigned long)step ? 0 : pattern(0, 11, pg * WPP + i);
                if (p[i] != want)
                    corrupt("wipe: page %lu word %lu is %#llx, expected %#llx", pg, i, (unsigned long long)p[i],
                            (unsigned long long)want);
            }
        }

        void *from = moving;
        void *to = (char *)moving == slots ? slots + MOVING_BYTES : slots;
        void *moved = mremap(moving, MOVING_BYTES, MOVING_BYTES, MREMAP_MAYMOVE | MREMAP_FIXED, to);
        if (moved != to)
            corrupt("mremap: %s", strerror(errno));
        moving = moved;
        if (mmap(from, MOVING_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) != from)
            corrupt("mmap over the old slot: %s", strerror(errno));
        check_words(moving, MOVING_BYTES / 8, 0, 12, "moving");

        check_words(renewed, RENEWED_BYTES / 8, (uint64_t)step - 1, 13, "renewed");
        void *at = renewed;
        if (munmap(at, RENEWED_BYTES) != 0)
            corrupt("munmap: %s", strerror(errno));
        renewed = mmap(at, RENEWED_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (renewed != at)
            corrupt("mmap again at %p: %s", at, strerror(errno));
        for (unsigned long i = 0; i < RENEWED_BYTES / 8; i += WPP)
            if (renewed[i] != 0)
                corrupt("renewed: a new mapping holds %#llx at word %lu", (unsigned long long)renewed[i], i);
        fill_words(renewed, RENEWED_BYTES / 8, (uint64_t)step, 13);

        int all = step % 20 == 0 || step == steps;
        for (unsigned long pg = 0; pg < pages; pg++)
            check_page(big, ver, pg, all);
        for (unsigned long n = 0; n < 64; n++, sample = (sample + 1) % pages)
            check_page(big, ver, sample, 1);

        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

/*
 * lazy.c — a program whose memory a lazy restore brings in while it runs, and which changes
 * its memory map under the pager's feet.
 *
 * Usage: lazy STEPS MIB
 *
 * At start: MIB MiB of private anonymous memory (`big`), every word set (word 0 of each page
 * to the pattern of step 0, the others to their index); `wipe` (1024 pages of a pattern);
 * `moving` (8 MiB of a pattern, in one of two slots of a reserved range); `renewed` (2 MiB
 * of the pattern of step 0), all above `big`.
 * Every step s, in this order:
 *  1. `wipe`: page s-1 is dropped with MADV_DONTNEED; pages before s must read as zeros,
 *     the others as their pattern;
 *  2. `moving` moves to its other slot (mremap MREMAP_FIXED) and is checked whole;
 *  3. `renewed` is checked against step s-1's pattern, unmapped, mapped again at the same
 *     address and filled with step s's;
 *  4. fork: the child checks word 0 and one other word of every page of `big` and the whole
 *     of `moving`, and exits 0 (3 if anything differs); checked by the parent at the end;
 *  5. `big`: every word of every page is checked (word 0 holds step s-1's pattern, the
 *     others their index), then word 0 of each page is set to step s's pattern.
 * A step after a restore thus forks before most of the memory is in, drops and moves pages
 * the pager has not put in yet, and reads back every byte of `big`.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define WPP (PAGE / 8)
#define WIPE_PAGES 1024UL
#define MOVING_BYTES (8UL << 20)
#define RENEWED_BYTES (2UL << 20)

static uint64_t *anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        corrupt("mmap %zu: %s", len, strerror(errno));
    return p;
}

static void check_big(const volatile uint64_t *big, unsigned long pages, long step, int every_word)
{
    for (unsigned long pg = 0; pg < pages; pg++) {
        const volatile uint64_t *p = big + pg * WPP;
        if (p[0] != pattern((uint64_t)step, 7, pg))
            corrupt("big: page %lu word 0 is %#llx, expected step %ld's pattern", pg, (unsigned long long)p[0], step);
        if (every_word) {
            for (unsigned long i = 1; i < WPP; i++)
                if (p[i] != pg * WPP + i)
                    corrupt("big: page %lu word %lu is %#llx", pg, i, (unsigned long long)p[i]);
        } else {
            unsigned long i = 1 + pg % (WPP - 1);
            if (p[i] != pg * WPP + i)
                corrupt("big (child): page %lu word %lu is %#llx", pg, i, (unsigned long long)p[i]);
        }
    }
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS MIB");
    long mib = argc > 2 ? atol(argv[2]) : 0;
    if (mib < 1 || mib > 8192) {
        fprintf(stderr, "lazy: bad size '%s'\n", argc > 2 ? argv[2] : "");
        return 2;
    }
    if (steps >= (long)WIPE_PAGES) {
        fprintf(stderr, "lazy: at most %lu steps\n", WIPE_PAGES - 1);
        return 2;
    }
    /* The small regions first: above `big` (mmap places downwards), so the pager's
     * background pass, which goes up from the lowest address, reaches them only after
     * `big`, and the first step after a restore changes them before it has. */
    /* `moving` goes back and forth between two slots of a reserved range. */
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
    uint64_t *big = anon(pages * PAGE);
    for (unsigned long pg = 0; pg < pages; pg++) {
        uint64_t *p = big + pg * WPP;
        p[0] = pattern(0, 7, pg);
        for (unsigned long i = 1; i < WPP; i++)
            p[i] = pg * WPP + i;
    }

    for (long step = 1; step <= steps; step++) {
        if (madvise(wipe + (step - 1) * WPP, PAGE, MADV_DONTNEED) != 0)
            corrupt("madvise: %s", strerror(errno));
        for (unsigned long pg = 0; pg < WIPE_PAGES; pg++) {
            const uint64_t *p = wipe + pg * WPP;
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

        pid_t child = fork();
        if (child < 0)
            corrupt("fork: %s", strerror(errno));
        if (child == 0) {
            check_big(big, pages, step - 1, 0);
            check_words(moving, MOVING_BYTES / 8, 0, 12, "moving (child)");
            _exit(0);
        }
        check_big(big, pages, step - 1, 1);
        for (unsigned long pg = 0; pg < pages; pg++)
            big[pg * WPP] = pattern((uint64_t)step, 7, pg);

        int st;
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            corrupt("the child forked at step %ld ended with status %#x", step, st);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

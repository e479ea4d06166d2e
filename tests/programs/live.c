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
 *  6. `churn` (64 KiB) is checked against its version, unmapped, mapped again at its address
 *     and filled with the next version; `flip` (64 KiB, in one of two slots) is checked, filled
 *     with the next version and moved to its other slot (both below `big`: a pre-copy round
 *     sends them first, and they change again while it sends `big`).
 * A move in the middle thus catches pages written, dropped, moved and replaced while they
 * were being copied, whenever the program stops.
 */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define WPP (PAGE / 8)
#define WIPE_PAGES 1024UL
#define MOVING_BYTES (1UL << 20)
#define RENEWED_BYTES (256UL << 10)

/* Every region is carved, in the order made, upwards from one reserved range: the regions
 * whose mappings change come first, so a pre-copy round (which goes up) sends them first and
 * they change again while it sends `big`. */
static char *carve_at;

static void *carve(size_t len, int prot)
{
    void *p = mmap(carve_at, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | (prot ? 0 : MAP_NORESERVE), -1, 0);
    if (p != carve_at)
        corrupt("mmap %zu at %p: %s", len, (void *)carve_at, strerror(errno));
    carve_at += (len + PAGE - 1) / PAGE * PAGE + PAGE; /* a gap: the regions stay separate mappings */
    return p;
}

static void *anon(size_t len)
{
    return carve(len, PROT_READ | PROT_WRITE);
}

#define CHURN_BYTES (64UL << 10)

/* Step 6: churn and flip change their mappings and contents every step. */
static uint64_t churn_ver, flip_ver;
static uint64_t *churn, *flip;
static char *flip_slots;

static void churn_and_flip(void)
{
    check_words(churn, CHURN_BYTES / 8, churn_ver, 14, "churn");
    void *at = churn;
    if (munmap(at, CHURN_BYTES) != 0)
        corrupt("munmap churn: %s", strerror(errno));
    churn = mmap(at, CHURN_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (churn != at)
        corrupt("mmap churn again at %p: %s", at, strerror(errno));
    fill_words(churn, CHURN_BYTES / 8, ++churn_ver, 14);

    check_words(flip, CHURN_BYTES / 8, flip_ver, 15, "flip");
    fill_words(flip, CHURN_BYTES / 8, ++flip_ver, 15);
    void *from = flip;
    void *to = (char *)flip == flip_slots ? flip_slots + CHURN_BYTES : flip_slots;
    if (mremap(flip, CHURN_BYTES, CHURN_BYTES, MREMAP_MAYMOVE | MREMAP_FIXED, to) != to)
        corrupt("mremap flip: %s", strerror(errno));
    flip = to;
    if (mmap(from, CHURN_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) != from)
        corrupt("mmap over flip's old slot: %s", strerror(errno));
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
    unsigned long pages = (unsigned long)mib * 1024 * 1024 / PAGE;
    size_t reserve = (16UL << 20) + pages * 8 + pages * PAGE;
    carve_at = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (carve_at == MAP_FAILED)
        corrupt("mmap: %s", strerror(errno));
    char *slots = carve(2 * MOVING_BYTES, PROT_NONE);
    uint64_t *moving = mmap(slots, MOVING_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (moving != (uint64_t *)slots)
        corrupt("mmap slot: %s", strerror(errno));
    fill_words(moving, MOVING_BYTES / 8, 0, 12);
    uint64_t *wipe = anon(WIPE_PAGES * PAGE);
    fill_words(wipe, WIPE_PAGES * WPP, 0, 11);
    uint64_t *renewed = anon(RENEWED_BYTES);
    fill_words(renewed, RENEWED_BYTES / 8, 0, 13);
    churn = anon(CHURN_BYTES);
    fill_words(churn, CHURN_BYTES / 8, 0, 14);
    flip_slots = carve(2 * CHURN_BYTES, PROT_NONE);
    flip = mmap(flip_slots, CHURN_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (flip != (uint64_t *)flip_slots)
        corrupt("mmap flip: %s", strerror(errno));
    fill_words(flip, CHURN_BYTES / 8, 0, 15);
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
        if (step < steps) {
            churn_and_flip();
            sleep_ms(STEP_MS);
        }
    }
    return 0;
}

/*
 * counter.c — the plainest pmig test program: memory of every kind a
 * single-threaded C program has, checked every step.
 *
 * Usage: counter STEPS
 *
 * Regions: .bss and .data globals, an array in main's stack frame, a block
 * from sbrk plus one new sbrk page per step (so the program break must be
 * right after a restore), small and large malloc blocks (large ones are
 * mmap'd by glibc) and explicit anonymous mmaps.  Every step checks the
 * previous step's pattern everywhere, writes the new one, allocates a new
 * malloc block and a new mmap block and frees/unmaps the oldest ones, so
 * the allocator keeps working on restored state.
 */
#include "common.h"

#include <sys/mman.h>
#include <unistd.h>

#define GLOBAL_WORDS 4096
#define STACK_WORDS 1024
#define SMALL_WORDS 64
#define MMAP_BYTES (256 * 1024)
#define SBRK_BYTES (64 * 1024)
#define RING 8
#define MAX_BRK_PAGES 512
#define PAGE 4096

struct block {
    uint64_t *p;
    size_t words;
    uint64_t seq; /* the "step" its pattern was written with */
};

static uint64_t g_bss[GLOBAL_WORDS];
static uint64_t g_data[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static struct block malloc_ring[RING];
static struct block mmap_ring[RING];
static uint64_t *brk_pages[MAX_BRK_PAGES];
static int n_brk_pages;

static void check_data_segment(void)
{
    for (int i = 0; i < 16; i++)
        if (g_data[i] != (uint64_t)(i + 1))
            corrupt(".data word %d is %llu, expected %d", i, (unsigned long long)g_data[i], i + 1);
}

static void check_rings(void)
{
    for (int i = 0; i < RING; i++) {
        if (malloc_ring[i].p)
            check_words(malloc_ring[i].p, malloc_ring[i].words, malloc_ring[i].seq, 100 + i, "malloc block");
        if (mmap_ring[i].p)
            check_words(mmap_ring[i].p, mmap_ring[i].words, mmap_ring[i].seq, 200 + i, "mmap block");
    }
    for (int i = 0; i < n_brk_pages; i++)
        check_words(brk_pages[i], PAGE / 8, (uint64_t)i, 300, "sbrk page");
}

static void allocate(long step)
{
    int slot = (int)(step % RING);
    /* Sizes from 24 bytes to ~300 KiB: small ones come from the brk heap,
     * the ones past glibc's 128 KiB threshold from mmap. */
    size_t words = 3 + (size_t)((step * 7919) % 40000);
    struct block *m = &malloc_ring[slot];
    struct block *a = &mmap_ring[slot];

    free(m->p);
    m->p = malloc(words * 8);
    if (!m->p)
        corrupt("malloc(%zu) failed at step %ld", words * 8, step);
    m->words = words;
    m->seq = (uint64_t)step;
    fill_words(m->p, words, m->seq, 100 + slot);

    if (a->p && munmap(a->p, a->words * 8) != 0)
        corrupt("munmap failed at step %ld: %s", step, strerror(errno));
    a->words = (size_t)(1 + step % 16) * PAGE / 8;
    a->p = mmap(NULL, a->words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a->p == MAP_FAILED)
        corrupt("mmap failed at step %ld: %s", step, strerror(errno));
    a->seq = (uint64_t)step;
    fill_words(a->p, a->words, a->seq, 200 + slot);

    if (n_brk_pages < MAX_BRK_PAGES) {
        void *p = sbrk(PAGE);
        if (p == (void *)-1)
            corrupt("sbrk(%d) failed at step %ld: %s", PAGE, step, strerror(errno));
        brk_pages[n_brk_pages] = p;
        fill_words(p, PAGE / 8, (uint64_t)n_brk_pages, 300);
        n_brk_pages++;
    }
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    uint64_t stack[STACK_WORDS];
    uint64_t *small = malloc(SMALL_WORDS * 8);
    uint64_t *mapped = mmap(NULL, MMAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *brk_block = sbrk(SBRK_BYTES);

    if (!small || mapped == MAP_FAILED || brk_block == (void *)-1) {
        fprintf(stderr, "counter: initial allocation failed: %s\n", strerror(errno));
        return 4;
    }

    fill_words(g_bss, GLOBAL_WORDS, 0, 1);
    fill_words(stack, STACK_WORDS, 0, 2);
    fill_words(small, SMALL_WORDS, 0, 3);
    fill_words(mapped, MMAP_BYTES / 8, 0, 4);
    fill_words(brk_block, SBRK_BYTES / 8, 0, 5);

    for (long step = 1; step <= steps; step++) {
        check_data_segment();
        check_words(g_bss, GLOBAL_WORDS, step - 1, 1, ".bss array");
        check_words(stack, STACK_WORDS, step - 1, 2, "stack array");
        check_words(small, SMALL_WORDS, step - 1, 3, "small malloc block");
        check_words(mapped, MMAP_BYTES / 8, step - 1, 4, "mmap region");
        check_words(brk_block, SBRK_BYTES / 8, step - 1, 5, "sbrk block");
        check_rings();

        fill_words(g_bss, GLOBAL_WORDS, step, 1);
        fill_words(stack, STACK_WORDS, step, 2);
        fill_words(small, SMALL_WORDS, step, 3);
        fill_words(mapped, MMAP_BYTES / 8, step, 4);
        fill_words(brk_block, SBRK_BYTES / 8, step, 5);
        allocate(step);

        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }

    for (int i = 0; i < RING; i++) {
        free(malloc_ring[i].p);
        if (mmap_ring[i].p)
            munmap(mmap_ring[i].p, mmap_ring[i].words * 8);
    }
    free(small);
    return 0;
}

/*
 * mixedheap.c — memory of the three kinds a packed image's blocks meet: text-like (packs
 * well), random (stored raw) and zeros, in stretches of 3, 5 and 2 MiB that do not line up
 * with the packer's 4 MiB blocks; every byte is checked every step, so a block written in
 * the wrong place or packed from the wrong bytes shows.
 *
 * Usage: mixedheap STEPS MIB
 *
 * Every byte is a function of its offset, but for the first word of every 64 KiB, which
 * holds the last step done.
 */
#include "common.h"

#define MIB_BYTES (1024UL * 1024)
#define MARK (64UL * 1024)

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The byte at offset i (but for the step marks). */
static unsigned char expected(unsigned long i)
{
    static const char *lines[] = {
        "checkpoint written to the image in the background\n",
        "the program goes on while its memory is packed\n",
        "GET /index.html HTTP/1.1 200 4312 bytes served\n",
        "restored: every thread released, the program runs\n",
    };
    unsigned long mib = i / MIB_BYTES, in_cycle = mib % 10;
    if (in_cycle < 3) {
        /* A line chosen per 64 bytes. */
        const char *l = lines[splitmix(i / 64) % 4];
        return (unsigned char)l[i % 64 % strlen(l)];
    }
    if (in_cycle < 8)
        return (unsigned char)(splitmix(i / 8) >> (8 * (i % 8)));
    return 0;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS MIB");
    long mib = argc > 2 ? atol(argv[2]) : 0;
    if (mib < 1 || mib > 4096) {
        fprintf(stderr, "mixedheap: bad size '%s'\n", argc > 2 ? argv[2] : "");
        return 2;
    }
    unsigned long len = (unsigned long)mib * MIB_BYTES;
    unsigned char *heap = malloc(len);
    if (!heap) {
        perror("malloc");
        return 4;
    }
    for (unsigned long i = 0; i < len; i++)
        heap[i] = expected(i);
    for (unsigned long m = 0; m < len; m += MARK)
        memset(heap + m, 0, 8);
    for (long step = 1; step <= steps; step++) {
        for (unsigned long i = 0; i < len; i++) {
            if (i % MARK < 8) {
                uint64_t mark;
                memcpy(&mark, heap + i, 8);
                if (mark != (uint64_t)step - 1)
                    corrupt("step %ld: the mark at %#lx is %llu", step, i, (unsigned long long)mark);
                mark = (uint64_t)step;
                memcpy(heap + i, &mark, 8);
                i += 7;
            } else if (heap[i] != expected(i)) {
                corrupt("step %ld: byte %#lx is %#x, not %#x", step, i, heap[i], expected(i));
            }
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    free(heap);
    return 0;
}

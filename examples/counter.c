/* A counter whose state lives in globals, the stack and the heap: the demo program.
 * Prints "step N" every 200 ms and checks that its memory still holds what it wrote. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long sum;                 /* a global */

int main(int argc, char **argv) {
    int max = argc > 1 ? atoi(argv[1]) : 30;
    char *heap = malloc(1 << 20);          /* the heap */
    long local[64];                        /* the stack */
    for (int i = 1; i <= max; i++) {
        memset(heap, i & 0xff, 1 << 20);
        local[i % 64] = i;
        sum += i;
        printf("step %d (sum %ld)\n", i, sum);
        fflush(stdout);
        usleep(200 * 1000);
        if (heap[(1 << 20) - 1] != (char)(i & 0xff) || local[i % 64] != i || sum != (long)i * (i + 1) / 2) {
            printf("CORRUPT at step %d\n", i);
            return 3;
        }
    }
    printf("done\n");
    return 0;
}

/* Benchmark subject: N open+close pairs, the hot path wrappers must not slow down. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 500000;
    for (long i = 0; i < n; i++) close(open("/dev/null", O_RDONLY));
    return 0;
}

/*
 * sysv_shm.c — SysV shared memory stays attached and keeps its content: a
 * keyed segment (it outlives the process, so a restore on the same host finds
 * it again) and a segment marked for removal right after attaching (gone when
 * the process is, so a restore must make it again from the image). Each step
 * writes a pattern into both and checks the previous step's.
 *
 * Usage: sysv_shm STEPS
 */
#include "common.h"

#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#define SZ (256 * 1024)

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    key_t key = (key_t)(0x5e000000 | (getpid() & 0xffffff));
    int keyed = shmget(key, SZ, IPC_CREAT | IPC_EXCL | 0600);
    int gone = shmget(IPC_PRIVATE, SZ, IPC_CREAT | 0600);
    if (keyed < 0 || gone < 0)
        return 4;
    unsigned char *a = shmat(keyed, NULL, 0), *b = shmat(gone, NULL, 0);
    if (a == (void *)-1 || b == (void *)-1)
        return 4;
    shmctl(gone, IPC_RMID, NULL);
    for (long step = 1; step <= steps; step++) {
        for (size_t i = 0; i < SZ; i += 4096) {
            if (step > 1 && (a[i] != (unsigned char)(step - 1 + i / 4096) || b[i] != (unsigned char)(step - 1 - i / 4096)))
                corrupt("step %ld: segment content lost at %zu (%d %d)", step, i, a[i], b[i]);
            a[i] = (unsigned char)(step + i / 4096);
            b[i] = (unsigned char)(step - i / 4096);
        }
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    shmdt(a);
    shmctl(keyed, IPC_RMID, NULL);
    return 0;
}

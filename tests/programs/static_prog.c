/*
 * static_prog.c — a statically linked program (no libc, no PT_INTERP): LD_PRELOAD cannot load
 * libpmig into it, so pmig-run must refuse it (unless --allow-static). It prints "ran" and
 * exits 0.
 *
 * pmig-build-flags: -static -nostdlib -fno-stack-protector
 */

void _start(void)
{
    static const char msg[] = "ran\n";
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(1L), "D"(1L), "S"(msg), "d"(sizeof msg - 1) : "rcx", "r11", "memory");
    __asm__ volatile("syscall" : : "a"(60L), "D"(0L) : "rcx", "r11", "memory");
    for (;;)
        ;
}

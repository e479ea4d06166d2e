/*
 * pty.c — a process talking to its child through a pseudo-terminal it made: the child leads
 * its own session with the pty's slave as its controlling terminal (the way `script`, `ssh`
 * and terminal emulators run a shell). Every step the parent types "ping N" (in two writes,
 * so a half line can be queued at a checkpoint) and reads "got ping N" back from the master;
 * the child answers only after a pause, so bytes are queued both ways now and then. The
 * child checks, before each answer, that its terminal is still /dev/pts/<the same N> and its
 * controlling terminal (/dev/tty opens, its group in the foreground), with the termios it
 * set (no echo, VKILL ^K) and the window size the parent set (33x99).
 *
 * Usage: pty STEPS
 */
#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void child(const char *name)
{
    signal(SIGHUP, SIG_IGN); /* the parent's close of the master at the end hangs it up */
    if (setsid() < 0)
        corrupt("child: setsid: %s", strerror(errno));
    int s = open(name, O_RDWR); /* a session leader without a terminal: it becomes its own */
    if (s < 0)
        corrupt("child: open %s: %s", name, strerror(errno));
    struct termios t;
    if (tcgetattr(s, &t) != 0)
        corrupt("child: tcgetattr: %s", strerror(errno));
    t.c_lflag &= ~(tcflag_t)ECHO;
    t.c_cc[VKILL] = 0x0b;
    if (tcsetattr(s, TCSANOW, &t) != 0 || dup2(s, 0) < 0 || dup2(s, 1) < 0)
        corrupt("child: setup: %s", strerror(errno));
    close(s);
    printf("ready\n");
    fflush(stdout);
    char line[128];
    while (sleep_ms(20), fgets(line, sizeof line, stdin)) {
        const char *bad = NULL;
        char *tn = ttyname(0);
        struct termios now;
        struct winsize ws;
        int tty = open("/dev/tty", O_RDWR);
        if (!tn || strcmp(tn, name) != 0)
            bad = "its terminal's name changed";
        else if (tty < 0)
            bad = "no controlling terminal";
        else if (tcgetpgrp(tty) != getpgrp())
            bad = "not in the foreground";
        else if (tcgetattr(0, &now) != 0 || (now.c_lflag & ECHO) || now.c_cc[VKILL] != 0x0b)
            bad = "termios changed";
        else if (ioctl(0, TIOCGWINSZ, &ws) != 0 || ws.ws_row != 33 || ws.ws_col != 99)
            bad = "window size changed";
        if (tty >= 0)
            close(tty);
        if (bad)
            printf("bad: %s\n", bad);
        else
            printf("got %s", line);
        fflush(stdout);
    }
    exit(0);
}

/* Reads one line (ending in "\r\n": the slave's ONLCR) from the master. */
static void read_line(int m, char *buf, size_t len)
{
    size_t n = 0;
    while (n + 1 < len) {
        struct pollfd p = {.fd = m, .events = POLLIN};
        if (poll(&p, 1, 5000) != 1)
            corrupt("no answer from the child within 5 s (got '%.*s')", (int)n, buf);
        ssize_t r = read(m, buf + n, 1);
        if (r != 1)
            corrupt("read from the master: %s", r < 0 ? strerror(errno) : "EOF");
        if (buf[n++] == '\n')
            break;
    }
    buf[n] = 0;
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    char name[64];
    struct winsize ws = {.ws_row = 33, .ws_col = 99};
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, name, sizeof name) != 0 || ioctl(m, TIOCSWINSZ, &ws) != 0)
        corrupt("setup: %s", strerror(errno));
    pid_t c = fork();
    if (c < 0)
        corrupt("fork: %s", strerror(errno));
    if (c == 0) {
        close(m);
        child(name);
    }
    char ready[64];
    read_line(m, ready, sizeof ready);
    if (strcmp(ready, "ready\r\n") != 0)
        corrupt("the child said '%s'", ready);
    for (long step = 1; step <= steps; step++) {
        char want[64], got[128], now[64];
        dprintf(m, "ping ");
        sleep_ms(5);
        dprintf(m, "%ld\n", step);
        sleep_ms(40);
        read_line(m, got, sizeof got);
        snprintf(want, sizeof want, "got ping %ld\r\n", step);
        if (strcmp(got, want) != 0)
            corrupt("step %ld: the child answered '%s'", step, got);
        if (ptsname_r(m, now, sizeof now) != 0 || strcmp(now, name) != 0)
            corrupt("step %ld: the master's slave is now %s, was %s", step, now, name);
        step_line(step);
    }
    close(m);
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        corrupt("the child did not exit 0 (status %#x)", st);
    return 0;
}

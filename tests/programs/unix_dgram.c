/*
 * unix_dgram.c — a UNIX datagram server bound to a path the program chmods to 0640 (made
 * before its client, so it has the higher fd number) and a client connect()ed to it: every
 * step the client sends "ping N" and the server must receive it, and the socket file must
 * still have mode 0640. A stream socketpair whose end A was shut down for writing: B reads
 * EOF at once and A cannot send (EPIPE); a second one with "bye" queued before its shutdown
 * gives "bye" then EOF at the end.
 *
 * Usage: unix_dgram STEPS
 */
#include "common.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "unix-dgram-%d.sock", (int)getpid());
    unlink(sa.sun_path);
    /* The client takes the lower fd number: a restore in fd order would aim it at a name
       not bound yet. */
    int client = socket(AF_UNIX, SOCK_DGRAM, 0);
    int server = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (client < 0 || server < 0 || bind(server, (struct sockaddr *)&sa, sizeof sa) != 0 || chmod(sa.sun_path, 0640) != 0 ||
        connect(client, (struct sockaddr *)&sa, sizeof sa) != 0)
        corrupt("setup: %s", strerror(errno));
    int sp[2], sp2[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sp2) != 0 || shutdown(sp[0], SHUT_WR) != 0 ||
        write(sp2[0], "bye", 3) != 3 || shutdown(sp2[0], SHUT_WR) != 0)
        corrupt("socketpairs: %s", strerror(errno));
    for (long step = 1; step <= steps; step++) {
        char msg[32], got[32] = {0};
        if (recv(sp[1], got, 1, MSG_DONTWAIT) != 0)
            corrupt("step %ld: the shut-down pair's reader does not see EOF (%s)", step, strerror(errno));
        if (send(sp[0], "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
            corrupt("step %ld: the shut-down end can still send", step);
        int n = snprintf(msg, sizeof msg, "ping %ld", step);
        if (send(client, msg, (size_t)n, 0) != n)
            corrupt("step %ld: the client cannot send: %s", step, strerror(errno));
        if (recv(server, got, sizeof got - 1, 0) != n || strcmp(got, msg) != 0)
            corrupt("step %ld: the server got '%s'", step, got);
        struct stat st;
        if (stat(sa.sun_path, &st) != 0 || (st.st_mode & 07777) != 0640)
            corrupt("step %ld: the socket file has mode %o", step, st.st_mode & 07777);
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    char bye[8] = {0};
    if (read(sp2[1], bye, sizeof bye) != 3 || strcmp(bye, "bye") != 0 || read(sp2[1], bye, sizeof bye) != 0)
        corrupt("the second pair does not give its bytes, then EOF");
    unlink(sa.sun_path);
    return 0;
}

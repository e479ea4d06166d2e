/*
 * unix_dgram.c — a UNIX datagram server bound to a path the program chmods to 0640 (made
 * before its client, so it has the higher fd number) and a client connect()ed to it: every
 * step the client sends "ping N" and the server must receive it, and the socket file must
 * still have mode 0640.
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
    for (long step = 1; step <= steps; step++) {
        char msg[32], got[32] = {0};
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
    unlink(sa.sun_path);
    return 0;
}

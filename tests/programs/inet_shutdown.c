/*
 * inet_shutdown.c — shutdown() state of IP sockets, checked every step:
 * - a UDP client connect()ed to an in-program server and shut down for writing: send gives
 *   EPIPE, while a second client's "ping N" still reaches the server;
 * - a bound UDP socket shut down for reading: poll says POLLRDHUP;
 * - an in-program TCP connection whose client end was shut down for reading: recv gives EOF
 *   (0) at once and poll says POLLRDHUP, while the other direction still carries "pong N"
 *   (as root only: without it pmig keeps no TCP connection, it comes back reset).
 *
 * Usage: inet_shutdown STEPS
 */
#include "common.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

static int rdhup(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP);
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in t = a, u = a;
    socklen_t sl = sizeof a;
    int srv = socket(AF_INET, SOCK_DGRAM, 0), shut_w = socket(AF_INET, SOCK_DGRAM, 0), ok = socket(AF_INET, SOCK_DGRAM, 0);
    int shut_r = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(srv, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(srv, (struct sockaddr *)&a, &sl) != 0 ||
        connect(shut_w, (struct sockaddr *)&a, sizeof a) != 0 || connect(ok, (struct sockaddr *)&a, sizeof a) != 0 ||
        bind(shut_r, (struct sockaddr *)&u, sizeof u) != 0 || shutdown(shut_w, SHUT_WR) != 0)
        corrupt("udp setup: %s", strerror(errno));
    shutdown(shut_r, SHUT_RD); /* ENOTCONN, but the socket is shut down for reading */
    int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), s;
    sl = sizeof t;
    if (bind(l, (struct sockaddr *)&t, sizeof t) != 0 || listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&t, &sl) != 0 ||
        connect(c, (struct sockaddr *)&t, sizeof t) != 0 || (s = accept(l, NULL, NULL)) < 0 || shutdown(c, SHUT_RD) != 0)
        corrupt("tcp setup: %s", strerror(errno));
    close(l);
    for (long step = 1; step <= steps; step++) {
        char msg[32], got[32] = {0};
        if (send(shut_w, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
            corrupt("step %ld: the UDP client shut down for writing can send", step);
        int n = snprintf(msg, sizeof msg, "ping %ld", step);
        if (send(ok, msg, (size_t)n, 0) != n || recv(srv, got, sizeof got - 1, 0) != n || strcmp(got, msg) != 0)
            corrupt("step %ld: the UDP server got '%s'", step, got);
        if (!rdhup(shut_r))
            corrupt("step %ld: the UDP socket shut down for reading is not (no POLLRDHUP)", step);
        if (geteuid() != 0)
            goto done;
        if (recv(c, got, sizeof got, MSG_DONTWAIT) != 0 || !rdhup(c))
            corrupt("step %ld: the TCP end shut down for reading does not read EOF", step);
        n = snprintf(msg, sizeof msg, "pong %ld", step);
        memset(got, 0, sizeof got);
        if (send(c, msg, (size_t)n, 0) != n || recv(s, got, sizeof got - 1, 0) != n || strcmp(got, msg) != 0)
            corrupt("step %ld: the TCP connection's other way gave '%s'", step, got);
    done:
        step_line(step);
        if (step < steps)
            sleep_ms(STEP_MS);
    }
    return 0;
}

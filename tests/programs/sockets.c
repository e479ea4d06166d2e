/*
 * sockets.c — sockets that must survive a checkpoint: listeners with their
 * options, bound datagram sockets, UNIX listeners and socketpairs with bytes
 * in flight, and (optionally) TCP connections.
 *
 * Usage: sockets STEPS DIR [MODE [PEER_PORT]]
 *
 * At start it makes:
 *   - a TCP/IPv4 listener on 127.0.0.1 (SO_REUSEADDR, TCP_NODELAY, SO_KEEPALIVE,
 *     SO_RCVBUF set, backlog 5) and a TCP/IPv6 one on ::1 (IPV6_V6ONLY, SO_SNDBUF
 *     set, no SO_REUSEADDR, backlog 3);
 *   - a UDP socket bound to 127.0.0.1 (SO_BROADCAST, SO_RCVBUF set);
 *   - UNIX stream listeners at DIR/sockets.sock (DIR made absolute; SO_PASSCRED and SO_PASSSEC
 *     set) and at an abstract name, and a
 *     UNIX datagram socket bound to another abstract name that always holds one
 *     datagram between steps, sent by a datagram socket connected to that name;
 *   - stream, datagram and seqpacket socketpairs, and a UNIX stream connection
 *     between two of its own sockets through the path listener, each with two
 *     messages in flight in each direction between steps (SO_RCVTIMEO 5 s on
 *     every end).
 * Every step checks every option and address is as set, that each listener
 * accepts a connection the program makes to it and carries bytes both ways,
 * that the UDP socket receives a datagram sent to it, and that the queued
 * messages arrive whole and in order.
 *
 * MODE (default "none") adds TCP connections that cross the checkpoint: one
 * between two sockets of the program itself (through the IPv4 listener), with
 * two messages in flight each way, and, with PEER_PORT, one to an echo server
 * on 127.0.0.1:PEER_PORT ("ping N\n" answered by "pong N\n").  With "keep" they
 * must carry on unchanged (a checkpoint as root, with TCP repair); with
 * "reset-ok" a connection may come back reset: the program notices within 5 s
 * (a hang is CORRUPT), says "reset ..." on stderr, and connects again.
 */
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define WAIT_MS 5000
#define MSG 16

static int tcp4, tcp6, udp, ux_path, ux_abs, ux_dg, ux_dg_tx;
/* Three socketpairs, and a UNIX connection through the path listener (both ends ours). */
#define NPAIRS 4
static int pairs[NPAIRS][2];
static const int pair_types[NPAIRS] = {SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM};
static const char *pair_names[NPAIRS] = {"stream pair", "dgram pair", "seqpacket pair", "unix connection"};
static struct sockaddr_in tcp4_addr, udp_addr;
static struct sockaddr_in6 tcp6_addr;
static struct sockaddr_un path_addr, abs_addr, dg_addr;
static socklen_t path_len, abs_len, dg_len;
static int tcp4_rcvbuf, tcp6_sndbuf, udp_rcvbuf;
static uint64_t g_words[256];

static int mode_keep, mode_reset_ok;
static int conn_cli = -1, conn_srv = -1; /* the program's own TCP connection */
static long conn_next[2];                 /* next message expected, per direction */
static int peer = -1;
static int peer_port;
static long peer_seq;

static void die(const char *what) __attribute__((noreturn));
static void die(const char *what)
{
    corrupt("%s: %s", what, strerror(errno));
}

static int getint(int fd, int level, int name, const char *what)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, name, &v, &len) != 0)
        corrupt("getsockopt %s: %s", what, strerror(errno));
    return v;
}

static void setint(int fd, int level, int name, int v)
{
    if (setsockopt(fd, level, name, &v, sizeof v) != 0)
        die("setsockopt");
}

static void expect_int(long step, int fd, int level, int name, int want, const char *what)
{
    int v = getint(fd, level, name, what);
    if (v != want)
        corrupt("step %ld: %s is %d, expected %d", step, what, v, want);
}

/* Waits until fd is readable (or in error); CORRUPT after WAIT_MS: nothing may hang. */
static int wait_readable(int fd, const char *what, int may_fail)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, WAIT_MS);
    if (r == 1)
        return 0;
    if (r == 0)
        corrupt("%s: nothing after %d ms (a hang)", what, WAIT_MS);
    if (may_fail)
        return -1;
    die(what);
}

static int accept_one(int lfd, const char *what)
{
    wait_readable(lfd, what, 0);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        die(what);
    return fd;
}

static void read_exact(int fd, char *buf, size_t n, const char *what)
{
    size_t got = 0;
    while (got < n) {
        wait_readable(fd, what, 0);
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            corrupt("%s: read returned %zd (%s)", what, r, r < 0 ? strerror(errno) : "EOF");
        got += (size_t)r;
    }
}

static void write_exact(int fd, const void *buf, size_t n, const char *what)
{
    if (write(fd, buf, n) != (ssize_t)n)
        die(what);
}

/*
 * A client connected to addr, an accepted server end, and bytes both ways.  With server_first
 * the server end closes first, leaving TIME_WAIT connections on the listener's port.
 */
static void check_listener(long step, int lfd, int family, const void *addr, socklen_t len, const char *what,
                           int server_first)
{
    char out[32], in[32];
    int c = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0)
        die("socket");
    if (connect(c, addr, len) != 0)
        corrupt("step %ld: connect to the %s listener: %s", step, what, strerror(errno));
    int s = accept_one(lfd, what);
    int n = snprintf(out, sizeof out, "%s hello %ld", what, step);
    write_exact(c, out, (size_t)n, what);
    read_exact(s, in, (size_t)n, what);
    if (memcmp(in, out, (size_t)n) != 0)
        corrupt("step %ld: %s listener: bytes changed on the way", step, what);
    write_exact(s, "ok", 2, what);
    read_exact(c, in, 2, what);
    close(server_first ? s : c);
    close(server_first ? c : s);
}

static void check_name(long step, int fd, const void *want, socklen_t want_len, const char *what)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        die("getsockname");
    if (len != want_len || memcmp(&ss, want, len) != 0)
        corrupt("step %ld: %s is bound elsewhere now", step, what);
}

static void message(char *buf, int kind, int dir, long n)
{
    snprintf(buf, MSG + 1, "%c%d %012ld", "sdqut"[kind], dir, n);
}

/* Pair p, direction d (0: end 0 -> end 1): sends message n. */
static void pair_send(int p, int d, long n)
{
    char m[MSG + 1];
    message(m, p, d, n);
    write_exact(pairs[p][d], m, MSG, pair_names[p]);
}

static void pair_recv(long step, int p, int d, long n)
{
    char want[MSG + 1], got[MSG + 8];
    int fd = pairs[p][1 - d];
    message(want, p, d, n);
    if (pair_types[p] == SOCK_STREAM) {
        read_exact(fd, got, MSG, pair_names[p]);
    } else {
        wait_readable(fd, pair_names[p], 0);
        ssize_t r = recv(fd, got, sizeof got, MSG_DONTWAIT);
        if (r != MSG)
            corrupt("step %ld: %s pair: a message of %zd bytes, expected %d (%s)", step, pair_names[p], r, MSG,
                    r < 0 ? strerror(errno) : "boundary lost");
    }
    if (memcmp(got, want, MSG) != 0)
        corrupt("step %ld: %s pair direction %d: got '%.*s', expected '%s'", step, pair_names[p], d, MSG, got, want);
}

static void connect_own(void)
{
    conn_cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn_cli < 0 || connect(conn_cli, (struct sockaddr *)&tcp4_addr, sizeof tcp4_addr) != 0)
        die("connecting to the own listener");
    conn_srv = accept_one(tcp4, "own connection");
    setint(conn_cli, IPPROTO_TCP, TCP_NODELAY, 1);
    for (int d = 0; d < 2; d++) {
        conn_next[d] = 0;
        for (long n = 0; n < 2; n++) {
            char m[MSG + 1];
            message(m, 4, d, n);
            write_exact(d ? conn_srv : conn_cli, m, MSG, "own connection");
        }
    }
}

/* Reads one message of direction d; 0 on success, -1 if the connection was reset. */
static int conn_recv(long step, int d)
{
    char want[MSG + 1], got[MSG];
    int fd = d ? conn_cli : conn_srv;
    size_t have = 0;
    message(want, 4, d, conn_next[d]);
    while (have < MSG) {
        if (wait_readable(fd, "own connection", 1) != 0)
            return -1;
        ssize_t r = read(fd, got + have, MSG - have);
        if (r <= 0) {
            if (mode_reset_ok && (r == 0 || errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN))
                return -1;
            corrupt("step %ld: own TCP connection: read returned %zd (%s)", step, r, r < 0 ? strerror(errno) : "EOF");
        }
        have += (size_t)r;
    }
    if (memcmp(got, want, MSG) != 0)
        corrupt("step %ld: own TCP connection direction %d: got '%.*s', expected '%s'", step, d, MSG, got, want);
    return 0;
}

static void check_own_connection(long step)
{
    for (int d = 0; d < 2; d++) {
        if (conn_recv(step, d) != 0) {
            fprintf(stderr, "reset own connection at step %ld (%s); connecting again\n", step, strerror(errno));
            close(conn_cli);
            close(conn_srv);
            connect_own();
            return;
        }
        char m[MSG + 1];
        message(m, 4, d, conn_next[d] + 2);
        if (send(d ? conn_srv : conn_cli, m, MSG, MSG_NOSIGNAL) != MSG) {
            if (!mode_reset_ok)
                corrupt("step %ld: own TCP connection: send: %s", step, strerror(errno));
            fprintf(stderr, "reset own connection at step %ld (send: %s); connecting again\n", step, strerror(errno));
            close(conn_cli);
            close(conn_srv);
            connect_own();
            return;
        }
        conn_next[d]++;
    }
}

static void connect_peer(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)peer_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    peer = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (peer < 0 || connect(peer, (struct sockaddr *)&a, sizeof a) != 0)
        die("connecting to the peer");
}

static void check_peer(long step)
{
    char out[64], want[64], got[64];
    int n = snprintf(out, sizeof out, "ping %ld\n", peer_seq);
    int wn = snprintf(want, sizeof want, "pong %ld\n", peer_seq);
    int have = 0;
    const char *why = NULL;
    if (send(peer, out, (size_t)n, MSG_NOSIGNAL) != n) {
        why = "send";
    } else {
        while (have < wn) {
            if (wait_readable(peer, "peer", 1) != 0) {
                why = "poll";
                break;
            }
            ssize_t r = read(peer, got + have, (size_t)(wn - have));
            if (r <= 0) {
                why = r == 0 ? "EOF" : "read";
                break;
            }
            have += (int)r;
        }
    }
    if (why) {
        if (!mode_reset_ok)
            corrupt("step %ld: connection to the peer: %s: %s", step, why, strerror(errno));
        fprintf(stderr, "reset peer connection at step %ld (%s: %s); connecting again\n", step, why, strerror(errno));
        close(peer);
        connect_peer();
        return;
    }
    if (memcmp(got, want, (size_t)wn) != 0)
        corrupt("step %ld: the peer answered '%.*s', expected '%.*s'", step, wn, got, wn - 1, want);
    peer_seq++;
}

static int unix_listener(struct sockaddr_un *a, socklen_t len, int backlog)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)a, len) != 0 || listen(fd, backlog) != 0)
        die("UNIX listener");
    return fd;
}

static socklen_t abstract_name(struct sockaddr_un *a, const char *what)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "pmig-test-%s-%d-%ld", what, getpid(), (long)ts.tv_nsec);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Through ux_dg_tx, a datagram socket connected to ux_dg's name. */
static void send_dg(long n)
{
    char m[32];
    int len = snprintf(m, sizeof m, "dg %ld", n);
    if (send(ux_dg_tx, m, (size_t)len, 0) != len)
        die("sending to the UNIX datagram socket");
}

static void setup(const char *dir)
{
    /* TCP/IPv4 listener with options. */
    tcp4 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setint(tcp4, SOL_SOCKET, SO_REUSEADDR, 1);
    setint(tcp4, IPPROTO_TCP, TCP_NODELAY, 1);
    setint(tcp4, SOL_SOCKET, SO_KEEPALIVE, 1);
    setint(tcp4, SOL_SOCKET, SO_RCVBUF, 65536);
    tcp4_rcvbuf = getint(tcp4, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF");
    tcp4_addr.sin_family = AF_INET;
    tcp4_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof tcp4_addr;
    if (bind(tcp4, (struct sockaddr *)&tcp4_addr, sizeof tcp4_addr) != 0 || listen(tcp4, 5) != 0 ||
        getsockname(tcp4, (struct sockaddr *)&tcp4_addr, &len) != 0)
        die("TCP/IPv4 listener");

    /* TCP/IPv6 listener, v6 only. */
    tcp6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setint(tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    setint(tcp6, SOL_SOCKET, SO_SNDBUF, 50000);
    tcp6_sndbuf = getint(tcp6, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF");
    tcp6_addr.sin6_family = AF_INET6;
    tcp6_addr.sin6_addr = in6addr_loopback;
    len = sizeof tcp6_addr;
    if (bind(tcp6, (struct sockaddr *)&tcp6_addr, sizeof tcp6_addr) != 0 || listen(tcp6, 3) != 0 ||
        getsockname(tcp6, (struct sockaddr *)&tcp6_addr, &len) != 0)
        die("TCP/IPv6 listener");

    /* UDP. */
    udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    setint(udp, SOL_SOCKET, SO_BROADCAST, 1);
    setint(udp, SOL_SOCKET, SO_RCVBUF, 40000);
    udp_rcvbuf = getint(udp, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF");
    udp_addr.sin_family = AF_INET;
    udp_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof udp_addr;
    if (bind(udp, (struct sockaddr *)&udp_addr, sizeof udp_addr) != 0 ||
        getsockname(udp, (struct sockaddr *)&udp_addr, &len) != 0)
        die("UDP socket");

    /* UNIX listeners: a path and an abstract name. */
    memset(&path_addr, 0, sizeof path_addr);
    path_addr.sun_family = AF_UNIX;
    if ((size_t)snprintf(path_addr.sun_path, sizeof path_addr.sun_path, "%s/sockets.sock", dir) >= sizeof path_addr.sun_path)
        corrupt("DIR is too long for a UNIX socket path");
    unlink(path_addr.sun_path);
    path_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path_addr.sun_path) + 1);
    ux_path = unix_listener(&path_addr, path_len, 4);
    setint(ux_path, SOL_SOCKET, SO_PASSCRED, 1);
    setint(ux_path, SOL_SOCKET, SO_PASSSEC, 1);
    abs_len = abstract_name(&abs_addr, "listen");
    ux_abs = unix_listener(&abs_addr, abs_len, 4);

    /* UNIX datagram socket with a datagram always waiting. */
    dg_len = abstract_name(&dg_addr, "dgram");
    ux_dg = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ux_dg < 0 || bind(ux_dg, (struct sockaddr *)&dg_addr, dg_len) != 0)
        die("UNIX datagram socket");
    ux_dg_tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ux_dg_tx < 0 || connect(ux_dg_tx, (struct sockaddr *)&dg_addr, dg_len) != 0)
        die("UNIX datagram sender");
    send_dg(0);

    /* Socketpairs with two messages in flight each way. */
    struct timeval tv = {.tv_sec = 5};
    for (int p = 0; p < NPAIRS; p++) {
        if (p == 3) {
            pairs[p][0] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (pairs[p][0] < 0 || connect(pairs[p][0], (struct sockaddr *)&path_addr, path_len) != 0)
                die("UNIX connection");
            pairs[p][1] = accept_one(ux_path, "UNIX connection");
        } else if (socketpair(AF_UNIX, pair_types[p] | SOCK_CLOEXEC, 0, pairs[p]) != 0) {
            die("socketpair");
        }
        for (int e = 0; e < 2; e++)
            if (setsockopt(pairs[p][e], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
                die("SO_RCVTIMEO");
        for (int d = 0; d < 2; d++) {
            pair_send(p, d, 0);
            pair_send(p, d, 1);
        }
    }
    if (mode_keep || mode_reset_ok)
        connect_own();
    if (peer_port)
        connect_peer();
}

static void check_step(long step)
{
    char buf[64];

    /* TCP/IPv4 listener. */
    check_name(step, tcp4, &tcp4_addr, sizeof tcp4_addr, "the TCP/IPv4 listener");
    expect_int(step, tcp4, SOL_SOCKET, SO_ACCEPTCONN, 1, "tcp4 SO_ACCEPTCONN");
    expect_int(step, tcp4, SOL_SOCKET, SO_REUSEADDR, 1, "tcp4 SO_REUSEADDR");
    expect_int(step, tcp4, SOL_SOCKET, SO_KEEPALIVE, 1, "tcp4 SO_KEEPALIVE");
    expect_int(step, tcp4, IPPROTO_TCP, TCP_NODELAY, 1, "tcp4 TCP_NODELAY");
    expect_int(step, tcp4, SOL_SOCKET, SO_RCVBUF, tcp4_rcvbuf, "tcp4 SO_RCVBUF");
    check_listener(step, tcp4, AF_INET, &tcp4_addr, sizeof tcp4_addr, "tcp4", 1);

    /* TCP/IPv6 listener. */
    check_name(step, tcp6, &tcp6_addr, sizeof tcp6_addr, "the TCP/IPv6 listener");
    expect_int(step, tcp6, SOL_SOCKET, SO_ACCEPTCONN, 1, "tcp6 SO_ACCEPTCONN");
    expect_int(step, tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "tcp6 IPV6_V6ONLY");
    expect_int(step, tcp6, SOL_SOCKET, SO_REUSEADDR, 0, "tcp6 SO_REUSEADDR");
    expect_int(step, tcp6, SOL_SOCKET, SO_SNDBUF, tcp6_sndbuf, "tcp6 SO_SNDBUF");
    /* Client first: TIME_WAIT leftovers of a listener without SO_REUSEADDR would keep its port
     * from being bound again on this host for a minute, unless restored as root. */
    check_listener(step, tcp6, AF_INET6, &tcp6_addr, sizeof tcp6_addr, "tcp6", 0);

    /* UDP. */
    check_name(step, udp, &udp_addr, sizeof udp_addr, "the UDP socket");
    expect_int(step, udp, SOL_SOCKET, SO_BROADCAST, 1, "udp SO_BROADCAST");
    expect_int(step, udp, SOL_SOCKET, SO_RCVBUF, udp_rcvbuf, "udp SO_RCVBUF");
    int t = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int n = snprintf(buf, sizeof buf, "udp %ld", step);
    if (t < 0 || sendto(t, buf, (size_t)n, 0, (struct sockaddr *)&udp_addr, sizeof udp_addr) != n)
        die("sending to the UDP socket");
    close(t);
    char got[64];
    wait_readable(udp, "udp", 0);
    if (recv(udp, got, sizeof got, MSG_DONTWAIT) != n || memcmp(got, buf, (size_t)n) != 0)
        corrupt("step %ld: the UDP socket did not receive its datagram", step);

    /* UNIX listeners. */
    check_name(step, ux_path, &path_addr, path_len, "the UNIX path listener");
    check_listener(step, ux_path, AF_UNIX, &path_addr, path_len, "unix-path", 1);
    expect_int(step, ux_path, SOL_SOCKET, SO_PASSCRED, 1, "unix-path SO_PASSCRED");
    expect_int(step, ux_path, SOL_SOCKET, SO_PASSSEC, 1, "unix-path SO_PASSSEC");
    check_name(step, ux_abs, &abs_addr, abs_len, "the UNIX abstract listener");
    check_listener(step, ux_abs, AF_UNIX, &abs_addr, abs_len, "unix-abstract", 1);

    /* The UNIX datagram socket's waiting datagram. */
    check_name(step, ux_dg, &dg_addr, dg_len, "the UNIX datagram socket");
    n = snprintf(buf, sizeof buf, "dg %ld", step - 1);
    ssize_t r = recv(ux_dg, got, sizeof got, MSG_DONTWAIT);
    if (r != n || memcmp(got, buf, (size_t)n) != 0)
        corrupt("step %ld: the UNIX datagram socket's queued '%s' is gone (recv: %zd)", step, buf, r);
    send_dg(step);

    /* Socketpairs and the UNIX connection. */
    expect_int(step, ux_dg_tx, SOL_SOCKET, SO_TYPE, SOCK_DGRAM, "the UNIX datagram sender's SO_TYPE");
    for (int p = 0; p < NPAIRS; p++) {
        for (int e = 0; e < 2; e++) {
            struct timeval tv;
            socklen_t tl = sizeof tv;
            if (getsockopt(pairs[p][e], SOL_SOCKET, SO_RCVTIMEO, &tv, &tl) != 0 || tv.tv_sec != 5)
                corrupt("step %ld: %s pair end %d lost its SO_RCVTIMEO", step, pair_names[p], e);
        }
        for (int d = 0; d < 2; d++) {
            pair_recv(step, p, d, step - 1);
            pair_send(p, d, step + 1);
        }
    }

    if (conn_cli >= 0)
        check_own_connection(step);
    if (peer >= 0)
        check_peer(step);
    check_words(g_words, 256, 0, 31, "global array");
}

int main(int argc, char **argv)
{
    long steps = parse_steps(argc, argv, "STEPS DIR [none|keep|reset-ok [PEER_PORT]]");
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s STEPS DIR [none|keep|reset-ok [PEER_PORT]]\n", argv[0]);
        return 2;
    }
    if (argc >= 4) {
        mode_keep = strcmp(argv[3], "keep") == 0;
        mode_reset_ok = strcmp(argv[3], "reset-ok") == 0;
        if (!mode_keep && !mode_reset_ok && strcmp(argv[3], "none") != 0) {
            fprintf(stderr, "%s: bad mode '%s'\n", argv[0], argv[3]);
            return 2;
        }
    }
    if (argc == 5)
        peer_port = atoi(argv[4]);
    /* A relative UNIX socket name comes back as its absolute equivalent: use that from the start. */
    char *dir = realpath(argv[2], NULL);
    if (!dir) {
        fprintf(stderr, "%s: %s: %s\n", argv[0], argv[2], strerror(errno));
        return 2;
    }
    fill_words(g_words, 256, 0, 31);
    setup(dir);
    free(dir);
    for (long step = 1; step <= steps; step++) {
        check_step(step);
        step_line(step);
        sleep_ms(STEP_MS);
    }
    unlink(path_addr.sun_path);
    return 0;
}

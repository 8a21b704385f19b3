/*
 * idle_clients: holds N parked keep-alive connections open against an HTTP
 * server on 127.0.0.1, for the benchmark in bench/run.sh.
 *
 * Each connection sends one complete request and reads the whole response,
 * so the server has really served it and now holds it as an idle keep-alive
 * connection. Then the tool waits until it is told to stop (SIGTERM, SIGINT,
 * end of input on a pipe or terminal stdin, or --hold-max seconds), checks
 * every connection without blocking (recv returning EAGAIN: still open; 0 or
 * an error: closed by the server) and prints the counts.
 *
 * Usage: idle_clients PORT N [--path /x] [--per-addr K] [--inflight K]
 *                            [--setup-timeout S] [--stall S] [--hold-max S]
 *
 * Set-up ends when every connection is parked or failed, after
 * --setup-timeout seconds (default 60), or when no connection has made
 * progress for --stall seconds (default 5) while some are still in flight:
 * a server that stopped accepting.
 *
 * Output (stdout, one line each, flushed):
 *   ready attempted=A parked=P failed=F pending=Q setup_ms=T
 *   final parked=P open=O closed=C pending_open=Q
 * A: connections started (fewer than N when set-up ended early);
 * P: connections that got a whole response; F: refused, reset or closed
 * before a response; Q: still without a response at the setup deadline
 * (for a thread-per-connection server: waiting in its accept queue).
 *
 * Source addresses: connection i binds 127.0.0.(2 + i / K) (K = --per-addr,
 * default 5000) with IP_BIND_ADDRESS_NO_PORT, so the local port is chosen at
 * connect time and no address runs out of ephemeral ports; 127.0.0.1 is left
 * to the load generator. The soft RLIMIT_NOFILE is raised to the hard one.
 * On exit every connection is closed with a reset (SO_LINGER 0), so repeated
 * runs leave no TIME_WAIT behind.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum state { UNUSED, CONNECTING, SENDING, READING, PARKED, FAILED };

struct client {
    int fd;
    enum state st;
    size_t sent;   /* request bytes sent */
    size_t got;    /* response bytes read into buf */
    char buf[640]; /* the response head and body; they are small */
};

static char request[512];
static size_t request_len;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(const char *me) {
    fprintf(stderr,
            "usage: %s PORT N [--path /x] [--per-addr K] [--inflight K]\n"
            "          [--setup-timeout S] [--stall S] [--hold-max S]\n",
            me);
    exit(2);
}

/* 1 once buf holds a whole response: the head and Content-Length bytes. */
static int response_complete(const char *buf, size_t len) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4), *p;
    size_t head, body = 0;
    if (end == NULL)
        return 0;
    head = (size_t)(end - buf) + 4;
    for (p = buf; p < end; p++) {
        if ((p == buf || p[-1] == '\n') && (size_t)(end - p) > 15 &&
            strncasecmp(p, "Content-Length:", 15) == 0) {
            body = strtoul(p + 15, NULL, 10);
            break;
        }
    }
    return len >= head + body;
}

/* Starts a non-blocking connect from 127.0.0.(2 + index / per_addr). */
static int start_connect(int index, int per_addr, int port) {
    struct sockaddr_in src, dst;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&src, 0, sizeof src);
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000002u + (unsigned)(index / per_addr));
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0) {
        close(fd);
        return -1;
    }
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    dst.sin_port = htons((unsigned short)port);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Moves c on as far as it goes without blocking. Returns 1 when it left the
   in-flight set (parked or failed). */
static int advance(int ep, struct client *c) {
    if (c->st == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
            goto failed;
        c->st = SENDING;
    }
    if (c->st == SENDING) {
        while (c->sent < request_len) {
            ssize_t n = send(c->fd, request + c->sent, request_len - c->sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN) {
                struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                return 0;
            }
            if (n <= 0)
                goto failed;
            c->sent += (size_t)n;
        }
        c->st = READING;
        {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    if (c->st == READING) {
        for (;;) {
            ssize_t n;
            if (c->got == sizeof c->buf)
                goto failed; /* not the small response we expect */
            n = recv(c->fd, c->buf + c->got, sizeof c->buf - c->got, 0);
            if (n < 0 && errno == EAGAIN)
                return 0;
            if (n <= 0)
                goto failed;
            c->got += (size_t)n;
            if (response_complete(c->buf, c->got)) {
                c->st = PARKED;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                return 1;
            }
        }
    }
    return 0;
failed:
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->st = FAILED;
    return 1;
}

/* 1 when stdin is something that can reach end of input (a pipe, socket or
   terminal); /dev/null and regular files are not watched. */
static int stdin_watchable(void) {
    struct stat st;
    if (fstat(0, &st) != 0)
        return 0;
    return S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || isatty(0);
}

int main(int argc, char **argv) {
    const char *path = "/";
    int port, n, per_addr = 5000, inflight_max = 256, setup_timeout_s = 60, hold_max_s = 900;
    int stall_s = 5;
    int i, ep, sfd, next = 0, inflight = 0, parked = 0, failed = 0, pending = 0;
    int open_n = 0, closed_n = 0, pending_open = 0, watch_stdin;
    long long start, deadline, progress;
    struct client *cs;
    struct rlimit rl;
    sigset_t sigs;
    struct epoll_event evs[256];

    if (argc < 3)
        usage(argv[0]);
    port = atoi(argv[1]);
    n = atoi(argv[2]);
    for (i = 3; i < argc; i++) {
        if (i + 1 >= argc)
            usage(argv[0]);
        if (strcmp(argv[i], "--path") == 0)
            path = argv[++i];
        else if (strcmp(argv[i], "--per-addr") == 0)
            per_addr = atoi(argv[++i]);
        else if (strcmp(argv[i], "--inflight") == 0)
            inflight_max = atoi(argv[++i]);
        else if (strcmp(argv[i], "--setup-timeout") == 0)
            setup_timeout_s = atoi(argv[++i]);
        else if (strcmp(argv[i], "--stall") == 0)
            stall_s = atoi(argv[++i]);
        else if (strcmp(argv[i], "--hold-max") == 0)
            hold_max_s = atoi(argv[++i]);
        else
            usage(argv[0]);
    }
    if (port < 1 || port > 65535 || n < 0 || per_addr < 1 || inflight_max < 1 ||
        setup_timeout_s < 1 || stall_s < 1 || hold_max_s < 1 || (n > 0 && (n - 1) / per_addr > 250))
        usage(argv[0]);
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)n + 16 > rl.rlim_cur)
        fprintf(stderr, "idle_clients: only %llu descriptors allowed; some connections will fail\n",
                (unsigned long long)rl.rlim_cur);

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    ep = epoll_create1(EPOLL_CLOEXEC);
    cs = calloc((size_t)(n > 0 ? n : 1), sizeof *cs);
    if (sfd < 0 || ep < 0 || cs == NULL) {
        perror("idle_clients: setup");
        return 1;
    }
    {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    }
    watch_stdin = stdin_watchable();
    if (watch_stdin) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &watch_stdin};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) != 0)
            watch_stdin = 0;
    }

    /* Set up: keep at most inflight_max connections between connect and
       response, so the server's accept queue is never flooded. */
    start = now_ms();
    deadline = start + (long long)setup_timeout_s * 1000;
    progress = start;
    while (next < n || inflight > 0) {
        int k, got, wait_ms;
        while (next < n && inflight < inflight_max) {
            struct client *c = &cs[next];
            c->fd = start_connect(next, per_addr, port);
            next++;
            if (c->fd < 0) {
                c->st = FAILED;
                failed++;
                continue;
            }
            c->st = CONNECTING;
            {
                struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            }
            inflight++;
        }
        if (now_ms() >= deadline || (inflight > 0 && now_ms() - progress >= stall_s * 1000LL))
            break;
        wait_ms = (int)(deadline - now_ms());
        got = epoll_wait(ep, evs, 256, wait_ms > 1000 ? 1000 : wait_ms);
        for (k = 0; k < got; k++) {
            struct client *c = evs[k].data.ptr;
            if (c == NULL || (void *)c == (void *)&watch_stdin)
                goto stop_early; /* told to stop while still setting up */
            if (c->st == PARKED || c->st == FAILED)
                continue;
            if (advance(ep, c)) {
                inflight--;
                progress = now_ms();
                if (c->st == PARKED)
                    parked++;
                else
                    failed++;
            }
        }
    }
stop_early:
    pending = inflight;
    printf("ready attempted=%d parked=%d failed=%d pending=%d setup_ms=%lld\n", next, parked,
           failed, pending, now_ms() - start);
    fflush(stdout);

    /* Hold until told to stop. Connections still in flight stay open: they
       are clients the server has not got to. */
    deadline = now_ms() + (long long)hold_max_s * 1000;
    for (;;) {
        int k, got, stop = 0;
        long long left = deadline - now_ms();
        if (left <= 0)
            break;
        got = epoll_wait(ep, evs, 256, left > 1000 ? 1000 : (int)left);
        for (k = 0; k < got; k++) {
            struct client *c = evs[k].data.ptr;
            if (c == NULL) {
                stop = 1;
            } else if ((void *)c == (void *)&watch_stdin) {
                char tmp[256];
                ssize_t r = read(0, tmp, sizeof tmp);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                    stop = 1;
            } else if (c->st != PARKED && c->st != FAILED) {
                if (advance(ep, c)) {
                    /* A late response: the server got to it after setup. */
                    pending--;
                    if (c->st == PARKED)
                        parked++;
                    else
                        failed++;
                }
            }
        }
        if (stop)
            break;
    }

    for (i = 0; i < next; i++) {
        struct client *c = &cs[i];
        char byte;
        ssize_t r;
        struct linger lg = {1, 0};
        if (c->st == FAILED || c->fd < 0)
            continue;
        r = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (c->st == PARKED) {
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                open_n++;
            else if (r > 0)
                open_n++; /* open, with unexpected bytes waiting */
            else
                closed_n++;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pending_open++;
        }
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c->fd);
    }
    printf("final parked=%d open=%d closed=%d pending_open=%d\n", parked, open_n, closed_n,
           pending_open);
    fflush(stdout);
    free(cs);
    return 0;
}

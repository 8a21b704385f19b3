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
 * Usage: idle_clients PORT N [--tls] [--path /x] [--per-addr K] [--inflight K]
 *                            [--setup-timeout S] [--stall S] [--hold-max S]
 *
 * --tls: HTTPS. Each connection first completes a full TLS handshake (no
 * session offered: every one is a new client), then sends its request and
 * reads its response through TLS, as above, and then stays silent: an idle
 * HTTPS keep-alive connection. The certificate is not checked; protocol
 * versions, cipher suites and groups are OpenSSL's defaults, or what
 * OPENSSL_CONF's system_default section says. Only in a build with OpenSSL
 * 3 (-DIDLE_CLIENTS_TLS, linked with -lssl -lcrypto); a plain build says so
 * and exits 2.
 *
 * Set-up ends when every connection is parked or failed, after
 * --setup-timeout seconds (default 60), or when no connection has made
 * progress for --stall seconds (default 5) while some are still in flight:
 * a server that stopped accepting.
 *
 * Output (stdout, one line each, flushed):
 *   tls protocol=V cipher=S group=G resumed=R     (--tls only, before ready)
 *   ready attempted=A parked=P failed=F pending=Q setup_ms=T
 *   final parked=P open=O closed=C pending_open=Q
 * A: connections started (fewer than N when set-up ended early);
 * P: connections that got a whole response; F: refused, reset or closed
 * before a response; Q: still without a response at the setup deadline
 * (for a thread-per-connection server: waiting in its accept queue).
 * V, S, G: what the first parked connection negotiated ("none" when none
 * parked); R: parked connections whose session was resumed (0 expected).
 * Over TLS a parked connection with bytes waiting at the end is open if
 * they are records OpenSSL consumes (a session ticket), closed if they are
 * the server's close_notify or an alert.
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

#ifdef IDLE_CLIENTS_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "idle_clients --tls needs OpenSSL 3"
#endif
#endif

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum state { UNUSED, CONNECTING, HANDSHAKING, SENDING, READING, PARKED, FAILED };

struct client {
    int fd;
    enum state st;
    size_t sent;   /* request bytes sent */
    size_t got;    /* response bytes read into buf */
#ifdef IDLE_CLIENTS_TLS
    SSL *ssl;      /* --tls: the connection's TLS state; NULL otherwise */
#endif
    char buf[640]; /* the response head and body; they are small */
};

static char request[512];
static size_t request_len;

#ifdef IDLE_CLIENTS_TLS
static SSL_CTX *tls_ctx; /* --tls: the client context; NULL for plain HTTP */

/* A client context: no certificate check (the benchmark's is self-signed),
   no session cache (every connection a full handshake), and no buffers held
   while a connection idles, so that 10,000 of them fit in little memory. */
static SSL_CTX *tls_client_context(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}

/* After an SSL call returned r <= 0: waits for what OpenSSL wants (0), or
   says the connection failed (-1). */
static int tls_wait(int ep, struct client *c, int r) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ: break;
    case SSL_ERROR_WANT_WRITE: ev.events = EPOLLOUT; break;
    default: ERR_clear_error(); return -1;
    }
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* A parked connection with bytes waiting: 1 if OpenSSL takes them and the
   connection stays up (a late session ticket, unexpected data), 0 if they
   close it (close_notify, an alert, garbage). Does not block. */
static int tls_still_open(struct client *c) {
    char tmp[256];
    int r = SSL_read(c->ssl, tmp, sizeof tmp);
    if (r > 0)
        return 1;
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: return 1;
    default: ERR_clear_error(); return 0;
    }
}
#endif

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(const char *me) {
    fprintf(stderr,
            "usage: %s PORT N [--tls] [--path /x] [--per-addr K] [--inflight K]\n"
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

/* Closes a connection that failed (connect, handshake, request, response). */
static void advance_failed(int ep, struct client *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
#ifdef IDLE_CLIENTS_TLS
    SSL_free(c->ssl);
    c->ssl = NULL;
#endif
    close(c->fd);
    c->fd = -1;
    c->st = FAILED;
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
#ifdef IDLE_CLIENTS_TLS
        if (tls_ctx != NULL) {
            c->ssl = SSL_new(tls_ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
                goto failed;
            SSL_set_connect_state(c->ssl);
            c->st = HANDSHAKING;
        }
#endif
    }
#ifdef IDLE_CLIENTS_TLS
    if (c->st == HANDSHAKING) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            if (tls_wait(ep, c, r) != 0)
                goto failed;
            return 0;
        }
        c->st = SENDING;
    }
#endif
    if (c->st == SENDING) {
        while (c->sent < request_len) {
            ssize_t n;
#ifdef IDLE_CLIENTS_TLS
            if (c->ssl != NULL) {
                /* Whole or nothing (no partial writes): retried with the
                   same arguments when OpenSSL must wait. */
                int r = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent));
                if (r <= 0) {
                    if (tls_wait(ep, c, r) != 0)
                        goto failed;
                    return 0;
                }
                c->sent += (size_t)r;
                continue;
            }
#endif
            n = send(c->fd, request + c->sent, request_len - c->sent, MSG_NOSIGNAL);
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
#ifdef IDLE_CLIENTS_TLS
            if (c->ssl != NULL) {
                /* Session tickets are taken in here too: they come before
                   the response. */
                int r = SSL_read(c->ssl, c->buf + c->got, (int)(sizeof c->buf - c->got));
                if (r <= 0) {
                    if (tls_wait(ep, c, r) != 0)
                        goto failed;
                    return 0;
                }
                n = r;
            } else
#endif
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
    advance_failed(ep, c);
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
    int stall_s = 5, tls = 0;
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
        if (strcmp(argv[i], "--tls") == 0) {
            tls = 1;
            continue;
        }
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
    if (tls) {
#ifdef IDLE_CLIENTS_TLS
        if ((tls_ctx = tls_client_context()) == NULL) {
            fprintf(stderr, "idle_clients: cannot make a TLS client context\n");
            ERR_print_errors_fp(stderr);
            return 1;
        }
#else
        fprintf(stderr, "idle_clients: --tls is not available: built without OpenSSL "
                        "(build with -DIDLE_CLIENTS_TLS -lssl -lcrypto)\n");
        return 2;
#endif
    }
    /* OpenSSL writes with plain send(): a server that reset must not end
       this process. */
    signal(SIGPIPE, SIG_IGN);

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
#ifdef IDLE_CLIENTS_TLS
    if (tls_ctx != NULL) {
        /* What the connections negotiated: the first parked one's, and how
           many were resumed (none should be: no session is ever offered). */
        SSL *first = NULL;
        int resumed = 0, group;
        const char *gname = NULL;
        for (i = 0; i < next; i++) {
            if (cs[i].st != PARKED)
                continue;
            if (first == NULL)
                first = cs[i].ssl;
            resumed += SSL_session_reused(cs[i].ssl) ? 1 : 0;
        }
        if (first != NULL && (group = SSL_get_negotiated_group(first)) != 0)
            gname = SSL_group_to_name(first, group);
        printf("tls protocol=%s cipher=%s group=%s resumed=%d\n",
               first ? SSL_get_version(first) : "none",
               first ? SSL_CIPHER_get_name(SSL_get_current_cipher(first)) : "none",
               gname ? gname : "none", resumed);
    }
#endif
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
#ifdef IDLE_CLIENTS_TLS
            else if (r > 0 && c->ssl != NULL && !tls_still_open(c))
                closed_n++; /* the server's close_notify, or an alert */
#endif
            else if (r > 0)
                open_n++; /* open, with unexpected bytes waiting */
            else
                closed_n++;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pending_open++;
        }
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
#ifdef IDLE_CLIENTS_TLS
        SSL_free(c->ssl); /* no close_notify: the reset ends it */
        c->ssl = NULL;
#endif
        close(c->fd);
    }
    printf("final parked=%d open=%d closed=%d pending_open=%d\n", parked, open_n, closed_n,
           pending_open);
    fflush(stdout);
    free(cs);
#ifdef IDLE_CLIENTS_TLS
    SSL_CTX_free(tls_ctx);
#endif
    return 0;
}

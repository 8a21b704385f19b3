/*
 * tls_handshakes: full TLS handshakes per second against an HTTPS server on
 * 127.0.0.1, for scenario j of bench/run.sh.
 *
 * Usage: tls_handshakes PORT SECONDS CONNS [--threads T] [--path /x]
 *
 * CONNS connections at a time, shared among T threads (default 1), each
 * with its own epoll loop, for SECONDS: a connection connects, does a full
 * TLS handshake (no session is ever offered, so nothing is resumed: key
 * exchange, the server's certificate and its signature every time), sends
 * "GET PATH" with "Connection: close", reads the whole response, then reads
 * on until the server closes (close_notify, the end of the stream, or a
 * reset), and closes; a new connection takes its place at once. wrk cannot do this: it
 * offers the previous connection's session when it reconnects, so its
 * handshakes with "Connection: close" are resumed ones.
 *
 * The certificate is not checked (the benchmark's is self-signed); protocol
 * versions, cipher suites and groups are OpenSSL's defaults, or what
 * OPENSSL_CONF's system_default section says.
 *
 * Output, one line on stdout:
 *   handshakes=N errors=E seconds=S rate=R p50_us=A p99_us=B client_cpu_us=C
 *   protocol=V cipher=X group=G resumed=K
 * N: connections that completed in the SECONDS (handshake, a 200 response,
 * the server's close); those still under way at the end are not counted.
 * E: connections that failed (refused, handshake failure, not a 200, closed
 * before the whole response). A, B: median and 99th percentile of the time
 * from connect() to the last byte of the response. C: this process's own
 * CPU time (user + system) per completed handshake. V, X, G: what the first
 * completed connection negotiated; K: completed connections that were
 * resumed (0 expected).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "tls_handshakes needs OpenSSL 3"
#endif

enum state { CONNECTING, HANDSHAKING, SENDING, READING, DRAINING };

struct conn {
    int fd;
    enum state st;
    SSL *ssl;
    long long t0_us; /* connect() */
    size_t sent, got;
    char buf[1024]; /* the response head and body; they are small */
};

struct worker {
    pthread_t tid;
    int conns;
    long long handshakes, errors, resumed;
    uint32_t *lat; /* microseconds, one per completed connection */
    size_t nlat, cap;
    char protocol[32], cipher[64], group[32];
};

static SSL_CTX *ctx;
static int port;
static char request[512];
static size_t request_len;
static long long end_us; /* when the run ends */

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void usage(const char *me) {
    fprintf(stderr, "usage: %s PORT SECONDS CONNS [--threads T] [--path /x]\n", me);
    exit(2);
}

/* The status code, once buf holds a whole response (head and Content-Length
   bytes); 0 before that. */
static int response_status(const char *buf, size_t len) {
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
    if (len < head + body)
        return 0;
    return len > 12 && strncmp(buf, "HTTP/1.", 7) == 0 ? atoi(buf + 9) : -1;
}

/* Starts a connection in slot c: a non-blocking connect. 0, or -1. */
static int conn_start(int ep, struct conn *c) {
    struct sockaddr_in dst;
    int one = 1;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    memset(c, 0, offsetof(struct conn, buf));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    dst.sin_port = htons((unsigned short)port);
    c->t0_us = now_us();
    if ((connect(c->fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) ||
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->st = CONNECTING;
    return 0;
}

static void conn_end(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
}

/* After an SSL call returned r <= 0: waits for what OpenSSL wants (0), or
   says the connection failed (-1). */
static int tls_wait(int ep, struct conn *c, int r) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ: break;
    case SSL_ERROR_WANT_WRITE: ev.events = EPOLLOUT; break;
    default: ERR_clear_error(); return -1;
    }
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static void record(struct worker *w, struct conn *c, long long lat_us) {
    if (w->nlat == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 65536;
        uint32_t *p = realloc(w->lat, cap * sizeof *p);
        if (p == NULL)
            return; /* counted, not in the percentiles */
        w->lat = p;
        w->cap = cap;
    }
    w->lat[w->nlat++] = (uint32_t)(lat_us > UINT32_MAX ? UINT32_MAX : lat_us);
    if (w->protocol[0] == '\0') {
        int g = SSL_get_negotiated_group(c->ssl);
        const char *gn = g ? SSL_group_to_name(c->ssl, g) : NULL;
        snprintf(w->protocol, sizeof w->protocol, "%s", SSL_get_version(c->ssl));
        snprintf(w->cipher, sizeof w->cipher, "%s",
                 SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
        snprintf(w->group, sizeof w->group, "%s", gn ? gn : "none");
    }
    if (SSL_session_reused(c->ssl))
        w->resumed++;
}

/* Moves c on as far as it goes without blocking. 1 when it is over (done
   or failed: the slot is free), 0 while it waits. */
static int advance(struct worker *w, int ep, struct conn *c) {
    int r = 0;
    if (c->st == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
            goto failed;
        if ((c->ssl = SSL_new(ctx)) == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
            goto failed;
        SSL_set_connect_state(c->ssl);
        c->st = HANDSHAKING;
    }
    if (c->st == HANDSHAKING) {
        if ((r = SSL_do_handshake(c->ssl)) != 1)
            goto wait;
        c->st = SENDING;
    }
    if (c->st == SENDING) {
        /* Whole or nothing (no partial writes): retried with the same
           arguments when OpenSSL must wait. */
        if ((r = SSL_write(c->ssl, request, (int)request_len)) <= 0)
            goto wait;
        c->st = READING;
        {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    while (c->st == READING) {
        int status;
        if (c->got == sizeof c->buf)
            goto failed; /* not the small response we expect */
        if ((r = SSL_read(c->ssl, c->buf + c->got, (int)(sizeof c->buf - c->got))) <= 0)
            goto wait;
        c->got += (size_t)r;
        status = response_status(c->buf, c->got);
        if (status == 0)
            continue;
        if (status != 200)
            goto failed;
        c->st = DRAINING;
        c->t0_us = now_us() - c->t0_us; /* from here on: the latency */
    }
    for (;;) { /* DRAINING: until the server closes */
        char tmp[256];
        int e;
        if ((r = SSL_read(c->ssl, tmp, sizeof tmp)) > 0)
            continue;
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            goto wait;
        /* Closed: close_notify, the end of the stream (taken as a close
           here), or a reset; the response came whole, so it counts. */
        ERR_clear_error();
        w->handshakes++;
        record(w, c, c->t0_us);
        conn_end(ep, c);
        return 1;
    }
wait:
    if (tls_wait(ep, c, r) == 0)
        return 0;
failed:
    w->errors++;
    conn_end(ep, c);
    return 1;
}

static void *run(void *arg) {
    struct worker *w = arg;
    struct conn *cs = calloc((size_t)w->conns, sizeof *cs);
    struct epoll_event evs[256];
    int ep = epoll_create1(EPOLL_CLOEXEC), i;
    long long last_refused = 0;

    if (cs == NULL || ep < 0) {
        perror("tls_handshakes: setup");
        exit(1);
    }
    for (i = 0; i < w->conns; i++)
        cs[i].fd = -1;
    for (;;) {
        long long now = now_us();
        int got, k;
        if (now >= end_us)
            break;
        /* Every free slot gets a new connection (a refused connect is an
           error; retried after a millisecond so a dead server is not
           hammered). */
        for (i = 0; i < w->conns; i++) {
            if (cs[i].fd >= 0 || now - last_refused < 1000)
                continue;
            if (conn_start(ep, &cs[i]) != 0) {
                w->errors++;
                last_refused = now;
            }
        }
        got = epoll_wait(ep, evs, 256, 10);
        for (k = 0; k < got; k++)
            advance(w, ep, evs[k].data.ptr);
    }
    for (i = 0; i < w->conns; i++)
        if (cs[i].fd >= 0)
            conn_end(ep, &cs[i]);
    close(ep);
    free(cs);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *path = "/";
    int seconds, conns, threads = 1, i;
    struct worker *ws;
    long long handshakes = 0, errors = 0, resumed = 0, t0;
    uint32_t *all;
    size_t nall = 0;
    double elapsed;
    struct rusage ru;

    if (argc < 4)
        usage(argv[0]);
    port = atoi(argv[1]);
    seconds = atoi(argv[2]);
    conns = atoi(argv[3]);
    for (i = 4; i < argc; i++) {
        if (i + 1 >= argc)
            usage(argv[0]);
        if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--path") == 0)
            path = argv[++i];
        else
            usage(argv[0]);
    }
    if (port < 1 || port > 65535 || seconds < 1 || conns < 1 || threads < 1 || threads > conns)
        usage(argv[0]);
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                                   path);
    /* OpenSSL writes with plain send(): a server that reset must not end
       this process. */
    signal(SIGPIPE, SIG_IGN);
    /* No certificate check, no session cache: every handshake is full. */
    if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);

    ws = calloc((size_t)threads, sizeof *ws);
    if (ws == NULL)
        return 1;
    t0 = now_us();
    end_us = t0 + (long long)seconds * 1000000;
    for (i = 0; i < threads; i++) {
        ws[i].conns = conns / threads + (i < conns % threads);
        if (pthread_create(&ws[i].tid, NULL, run, &ws[i]) != 0) {
            perror("tls_handshakes: pthread_create");
            return 1;
        }
    }
    for (i = 0; i < threads; i++) {
        pthread_join(ws[i].tid, NULL);
        handshakes += ws[i].handshakes;
        errors += ws[i].errors;
        resumed += ws[i].resumed;
        nall += ws[i].nlat;
    }
    elapsed = (double)(now_us() - t0) / 1e6;
    getrusage(RUSAGE_SELF, &ru);

    all = malloc((nall ? nall : 1) * sizeof *all);
    if (all == NULL)
        return 1;
    nall = 0;
    for (i = 0; i < threads; i++) {
        memcpy(all + nall, ws[i].lat, ws[i].nlat * sizeof *all);
        nall += ws[i].nlat;
    }
    qsort(all, nall, sizeof *all, cmp_u32);
    {
        const struct worker *first = NULL;
        double cpu_us = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                        (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
        for (i = 0; i < threads && first == NULL; i++)
            if (ws[i].protocol[0] != '\0')
                first = &ws[i];
        printf("handshakes=%lld errors=%lld seconds=%.3f rate=%.1f ", handshakes, errors, elapsed,
               handshakes / elapsed);
        if (nall > 0)
            printf("p50_us=%u p99_us=%u ", all[nall / 2], all[(size_t)((double)nall * 0.99)]);
        else
            printf("p50_us=nan p99_us=nan ");
        if (handshakes > 0)
            printf("client_cpu_us=%.1f ", cpu_us / (double)handshakes);
        else
            printf("client_cpu_us=nan ");
        printf("protocol=%s cipher=%s group=%s resumed=%lld\n", first ? first->protocol : "none",
               first ? first->cipher : "none", first ? first->group : "none", resumed);
    }
    for (i = 0; i < threads; i++)
        free(ws[i].lat);
    free(ws);
    free(all);
    SSL_CTX_free(ctx);
    return 0;
}

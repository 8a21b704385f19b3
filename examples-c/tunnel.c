/*
 * tunnel.c: a TCP tunnel (a proxy's CONNECT, a WebSocket pass-through):
 * every client connection gets its own connection to a backend, and bytes
 * go both ways until either side closes.
 *
 * Written as a blocking C programmer writes it: the handler connects with
 * connect(), reads what is there, writes it to the other side with send().
 * What evmpm adds is that nobody waits while both sides are quiet: the
 * client connection is parked (evmpm_park_keepalive, no timeout) and the
 * backend descriptor is watched (evmpm_watch_add); whichever side speaks
 * first runs the handler on a worker (EVMPM_WAKE_READABLE for the client,
 * EVMPM_WAKE_NOTIFIED for the backend, whose watch callback notifies the
 * connection), which relays what is there and goes back to sleep. 10,000
 * idle tunnels hold no thread.
 *
 * Either side closing (or resetting) closes both: what was read is
 * relayed first; a reset is passed on as a reset.
 *
 * Arguments: PORT BACKEND_PORT [WORKERS]   (both on 127.0.0.1).
 * SIGINT or SIGTERM: stop, print how many tunnels opened and closed, exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "evmpm.h"

#define CHUNK 16384
#define MAX_READS 64 /* per side per run: then the other tunnels get a turn */
#define STOP_DEADLINE_MS 5000

static int backend_port;
static atomic_long opened, closed, double_closed;

struct tunnel {
    int backend;       /* our connection to the backend */
    evmpm_watch watch; /* the backend's watch, 0 until first armed */
    atomic_int done;   /* set by the close callback (a second one is a bug) */
};

static int connect_backend(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)backend_port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        buf += n;
        len -= (size_t)n;
    }
    return 1;
}

/* What relaying one way found. */
enum flow { QUIET, ENDED, BROKEN };

/* Moves what `from` has now to `to`. ENDED: `from` closed its side;
 * BROKEN: a reset or a failed send. */
static enum flow relay(int from, int to) {
    char buf[CHUNK];
    int i;
    for (i = 0; i < MAX_READS; i++) {
        ssize_t n = recv(from, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            if (!send_all(to, buf, (size_t)n))
                return BROKEN;
            continue;
        }
        if (n == 0)
            return ENDED;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? QUIET : BROKEN;
    }
    return QUIET;
}

/* The backend's watch: it spoke (or closed). Wake the client connection's
 * handler. The handle is the argument, not the tunnel: a handle stays
 * safe after the connection closed (ESTALE), a freed pointer does not. */
static void backend_ready(void *arg, evmpm_runtime *rt, evmpm_watch w, int fd, uint32_t ev) {
    (void)w;
    (void)fd;
    (void)ev;
    evmpm_notify(rt, (evmpm_conn)(uintptr_t)arg);
}

static void reset_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    struct tunnel *t = NULL;
    enum flow up, down;
    (void)user_data;
    evmpm_conn_get_user(rt, c, (void **)&t);
    if (t == NULL) {
        /* A new client (EVMPM_LISTEN_SERVER_FIRST: before it sent
         * anything, so a backend that speaks first is heard). */
        if ((t = calloc(1, sizeof *t)) == NULL) {
            evmpm_close(rt, c);
            return;
        }
        t->backend = connect_backend();
        evmpm_conn_set_user(rt, c, t); /* the close callback frees it */
        atomic_fetch_add(&opened, 1);
        if (t->backend < 0) {
            evmpm_close(rt, c);
            return;
        }
    }
    (void)reason;
    up = relay(fd, t->backend);
    down = relay(t->backend, fd);
    if (up == BROKEN || down == BROKEN) {
        /* Pass a reset on: the other side gets one too. */
        reset_close(t->backend);
        evmpm_close_ex(rt, c, EVMPM_CLOSE_RESET);
        return;
    }
    if (up == ENDED || down == ENDED) {
        evmpm_close(rt, c); /* sends what is queued, then FIN */
        return;
    }
    /* Both quiet: sleep on both sides, holding no worker. */
    if (t->watch == 0) {
        if (evmpm_watch_add(rt, t->backend, EVMPM_WATCH_READABLE, EVMPM_TIMEOUT_NONE, backend_ready,
                            (void *)(uintptr_t)c, &t->watch) != EVMPM_OK) {
            evmpm_close(rt, c);
            return;
        }
    } else {
        /* EVMPM_ESTATE: still armed from before (the client spoke). */
        evmpm_watch_rearm(rt, t->watch, EVMPM_WATCH_READABLE, EVMPM_TIMEOUT_NONE);
    }
    evmpm_park_keepalive(rt, c, 0);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, void *conn_user) {
    struct tunnel *t = conn_user;
    (void)user_data;
    (void)c;
    (void)fd;
    if (t == NULL)
        return;
    if (atomic_exchange(&t->done, 1))
        atomic_fetch_add(&double_closed, 1);
    /* OK: it will not run; EBUSY: it runs now, but only notifies a handle
     * that is stale by now, and touches neither `t` nor the descriptor. */
    if (t->watch != 0)
        evmpm_watch_cancel(rt, t->watch);
    if (t->backend >= 0)
        close(t->backend);
    free(t);
    atomic_fetch_add(&closed, 1);
}

static int listen_on(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    int port = argc > 2 ? atoi(argv[1]) : 0;
    int workers = argc > 3 ? atoi(argv[3]) : 16;
    evmpm_config cfg;
    evmpm_listener_config lc;
    evmpm_runtime *rt;
    sigset_t sigs;
    int lfd, sig, rc;

    backend_port = argc > 2 ? atoi(argv[2]) : 0;
    if (argc < 3 || argc > 4 || port < 1 || port > 65535 || backend_port < 1 ||
        backend_port > 65535 || workers < 1 || workers > 4096) {
        fprintf(stderr, "usage: %s PORT BACKEND_PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if ((lfd = listen_on(port)) < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    evmpm_config_init(&cfg, sizeof cfg);
    cfg.worker_threads = (uint32_t)workers;
    cfg.handler = handler;
    cfg.on_close = on_close;
    evmpm_listener_config_init(&lc, sizeof lc);
    /* Connect to the backend at once, and let quiet tunnels stay. */
    lc.flags = EVMPM_LISTEN_SERVER_FIRST;
    lc.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    if ((rc = evmpm_create(&cfg, &rt)) != EVMPM_OK ||
        (rc = evmpm_register_listener_ex(rt, lfd, &lc)) != EVMPM_OK ||
        (rc = evmpm_start(rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm: %s\n", evmpm_strerror(rc));
        return 1;
    }
    fprintf(stderr, "tunnel: listening on 127.0.0.1:%d, backend 127.0.0.1:%d, %d workers\n", port,
            backend_port, workers);
    while (sigwait(&sigs, &sig) != 0) {
    }
    evmpm_stop(rt, STOP_DEADLINE_MS);
    evmpm_destroy(rt);
    close(lfd);
    fprintf(stderr, "tunnel: %ld opened, %ld closed, %ld closed twice; stopped by signal %d\n",
            atomic_load(&opened), atomic_load(&closed), atomic_load(&double_closed), sig);
    return 0;
}

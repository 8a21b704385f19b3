/*
 * handoff: the cost of evmpm's hand-off path (event thread -> worker ->
 * park), measured with one connection doing sequential ping-pongs.
 *
 *   handoff evmpm PORT WORKERS [--ready]   echo server on evmpm (WORKERS 0:
 *                                          the runtime's default threads)
 *   handoff threads PORT                   echo server, a thread per connection
 *   handoff client PORT N SIZE [CONNS]     N round trips of SIZE bytes
 *
 * The evmpm handler reads what is there (blocking), writes it back and parks
 * the connection; every round trip therefore goes event thread -> run queue
 * -> worker -> park -> event thread. With --ready a request_ready callback
 * that accepts any bytes is installed, adding the event thread's peek.
 * The thread-per-connection server is the same read/write loop on one
 * thread: the floor a blocking server pays per request.
 *
 * The client prints "ns_per_request=X requests=N conns=C" after a warm-up
 * of 1000 round trips that are not timed. With CONNS = 1 (the default) X is
 * the latency of one round trip: the hand-off path with nothing to batch,
 * every step a wake-up. With CONNS > 1 the connections ping-pong at once
 * (each sends its next message as soon as its echo is back) and X is wall
 * time divided by round trips: the cost per request when the event thread
 * and the workers have several connections in flight, as under real load.
 * Servers stop on SIGTERM or SIGINT. The bench script adds the server's CPU
 * time per round trip (from /proc) and, separately, its system calls.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "evmpm.h"

#define MAX_MSG 4096

static int listen_on(int port) {
    struct sockaddr_in a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((unsigned short)port);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 511) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

static void block_stop_signals(sigset_t *sigs) {
    sigemptyset(sigs);
    sigaddset(sigs, SIGINT);
    sigaddset(sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
}

/* ---- evmpm echo server ---------------------------------------------------- */

static void echo_handler(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, int why) {
    char buf[MAX_MSG];
    ssize_t n;
    (void)ud, (void)why;
    do
        n = read(fd, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    if (n <= 0 || !write_all(fd, buf, (size_t)n))
        evmpm_close(rt, conn);
    else
        evmpm_park_keepalive(rt, conn, 0);
}

static int accept_any(void *ud, evmpm_conn conn, void *c, const uint8_t *data, size_t len) {
    (void)ud, (void)conn, (void)c, (void)data;
    return len > 0 ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static int serve_evmpm(int port, int workers, int ready) {
    evmpm_runtime *rt = NULL;
    evmpm_config cfg;
    sigset_t sigs;
    int lfd, sig;
    block_stop_signals(&sigs);
    if ((lfd = listen_on(port)) < 0) {
        fprintf(stderr, "handoff: cannot listen on %d: %s\n", port, strerror(errno));
        return 1;
    }
    evmpm_config_init(&cfg, sizeof cfg);
    if (workers > 0)
        cfg.worker_threads = (uint32_t)workers;
    cfg.keepalive_timeout_ms = 600000;
    cfg.handler = echo_handler;
    if (ready)
        cfg.request_ready = accept_any;
    if (evmpm_create(&cfg, &rt) || evmpm_register_listener(rt, lfd) || evmpm_start(rt)) {
        fprintf(stderr, "handoff: cannot start evmpm\n");
        return 1;
    }
    sigwait(&sigs, &sig);
    evmpm_stop(rt, 1000);
    evmpm_destroy(rt);
    close(lfd);
    return 0;
}

/* ---- thread-per-connection echo server ---------------------------------- */

static void *echo_thread(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[MAX_MSG];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || !write_all(fd, buf, (size_t)n))
            break;
    }
    close(fd);
    return NULL;
}

static void *accept_loop(void *arg) {
    int lfd = *(int *)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        pthread_t t;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINVAL)
                break;
            continue;
        }
        if (pthread_create(&t, &attr, echo_thread, (void *)(intptr_t)fd) != 0)
            close(fd);
    }
    pthread_attr_destroy(&attr);
    return NULL;
}

static int serve_threads(int port) {
    sigset_t sigs;
    pthread_t acceptor;
    int lfd, sig;
    block_stop_signals(&sigs);
    if ((lfd = listen_on(port)) < 0) {
        fprintf(stderr, "handoff: cannot listen on %d: %s\n", port, strerror(errno));
        return 1;
    }
    if (pthread_create(&acceptor, NULL, accept_loop, &lfd) != 0)
        return 1;
    sigwait(&sigs, &sig);
    shutdown(lfd, SHUT_RDWR);
    pthread_join(acceptor, NULL);
    close(lfd);
    return 0;
}

/* ---- client ---------------------------------------------------------------- */

static int round_trip(int fd, const char *msg, char *back, size_t size) {
    size_t got = 0;
    if (!write_all(fd, msg, size))
        return 0;
    while (got < size) {
        ssize_t n = read(fd, back + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        got += (size_t)n;
    }
    return 1;
}

static int connect_to(int port) {
    struct sockaddr_in a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((unsigned short)port);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "handoff: cannot connect to %d: %s\n", port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static double elapsed_ns(const struct timespec *t0, const struct timespec *t1) {
    return (double)(t1->tv_sec - t0->tv_sec) * 1e9 + (double)(t1->tv_nsec - t0->tv_nsec);
}

/* One connection, sequential round trips. */
static int client_one(int port, long n, size_t size) {
    struct timespec t0, t1;
    char msg[MAX_MSG], back[MAX_MSG];
    int fd = connect_to(port);
    long i;
    if (fd < 0)
        return 1;
    memset(msg, 'p', size);
    for (i = 0; i < 1000; i++) {
        if (!round_trip(fd, msg, back, size)) {
            fprintf(stderr, "handoff: warm-up round trip %ld failed\n", i);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; i++) {
        if (!round_trip(fd, msg, back, size)) {
            fprintf(stderr, "handoff: round trip %ld failed\n", i);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(fd);
    printf("ns_per_request=%.0f requests=%ld conns=1\n", elapsed_ns(&t0, &t1) / (double)n, n);
    return 0;
}

/* CONNS connections at once, each in ping-pong, driven by one epoll loop. */
struct pp {
    int fd;
    size_t got; /* echo bytes received for the message in flight */
};

static int client_many(int port, long n, size_t size, int conns) {
    struct timespec t0, t1;
    struct epoll_event evs[256];
    char msg[MAX_MSG], back[MAX_MSG];
    long done = 0, started, warm = 1000, total = 1000 + n;
    struct pp *ps = calloc((size_t)conns, sizeof *ps);
    int ep = epoll_create1(EPOLL_CLOEXEC), i;
    if (ps == NULL || ep < 0) {
        perror("handoff: client setup");
        return 1;
    }
    memset(msg, 'p', size);
    for (i = 0; i < conns; i++) {
        struct epoll_event ev = {.events = EPOLLIN};
        if ((ps[i].fd = connect_to(port)) < 0)
            return 1;
        ev.data.ptr = &ps[i];
        epoll_ctl(ep, EPOLL_CTL_ADD, ps[i].fd, &ev);
    }
    /* Every connection has one message in flight until `total` are sent. */
    for (i = 0, started = 0; i < conns && started < total; i++, started++) {
        if (!write_all(ps[i].fd, msg, size)) {
            fprintf(stderr, "handoff: send failed\n");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (done < total) {
        int k, got = epoll_wait(ep, evs, 256, 10000);
        if (got <= 0) {
            fprintf(stderr, "handoff: no answer for 10 s\n");
            return 1;
        }
        for (k = 0; k < got; k++) {
            struct pp *p = evs[k].data.ptr;
            ssize_t r = read(p->fd, back, sizeof back);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                fprintf(stderr, "handoff: connection lost\n");
                return 1;
            }
            p->got += (size_t)r;
            while (p->got >= size) {
                p->got -= size;
                if (++done == warm)
                    clock_gettime(CLOCK_MONOTONIC, &t0);
                if (started < total) {
                    started++;
                    if (!write_all(p->fd, msg, size)) {
                        fprintf(stderr, "handoff: send failed\n");
                        return 1;
                    }
                }
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (i = 0; i < conns; i++)
        close(ps[i].fd);
    free(ps);
    close(ep);
    printf("ns_per_request=%.0f requests=%ld conns=%d\n", elapsed_ns(&t0, &t1) / (double)n, n,
           conns);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "evmpm") == 0) {
        int ready = argc >= 5 && strcmp(argv[4], "--ready") == 0;
        return serve_evmpm(atoi(argv[2]), atoi(argv[3]), ready);
    }
    if (argc == 3 && strcmp(argv[1], "threads") == 0)
        return serve_threads(atoi(argv[2]));
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "client") == 0) {
        long n = atol(argv[3]);
        long size = atol(argv[4]);
        int conns = argc == 6 ? atoi(argv[5]) : 1;
        if (n > 0 && size > 0 && size <= MAX_MSG && conns >= 1 && conns <= 10000)
            return conns == 1 ? client_one(atoi(argv[2]), n, (size_t)size)
                              : client_many(atoi(argv[2]), n, (size_t)size, conns);
    }
    fprintf(stderr,
            "usage: %s evmpm PORT WORKERS [--ready] | threads PORT | client PORT N SIZE [CONNS]\n",
            argv[0]);
    return 2;
}

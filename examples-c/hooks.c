/*
 * hooks.c: every hook a converted thread-per-connection server needs, in
 * one small HTTP/1.1 server.
 *
 * - Two listeners with different settings: the public port (a readiness
 *   check keeps half-sent requests off the workers; 5 s keep-alive) and an
 *   admin port (no readiness check, 60 s keep-alive, serves /status).
 * - An access list applied at accept: clients from a --deny address are
 *   refused on the event thread before they send a byte, and never cost a
 *   worker.
 * - Per-thread state: the thread start hook gives each worker a scratch
 *   buffer, the stop hook frees it (what a thread-per-connection server did
 *   at thread creation and in its thread-exit hook).
 * - A close path that blocks for 50 ms (as a real one may: flushing an
 *   access log, a TLS shutdown, a user callback): close_on_worker keeps it
 *   off the event thread.
 * - Per-connection timeouts: GET /keepalive?ms=N gives this connection its
 *   own keep-alive timeout.
 * - A status page listing the workers, each with the request line its
 *   handler set as label (Apache's server-status scoreboard).
 *
 * Arguments: PORT ADMIN_PORT [--deny IPV4]...   (listens on 127.0.0.1)
 * GET /sleep?ms=N sleeps in the handler (a backend call), to see a busy
 * worker on the status page. SIGINT or SIGTERM stop gracefully.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "evmpm.h"

#define HEAD_MAX 8192
#define MAX_DENY 16
#define MAX_WORKERS_SHOWN 64

/* What each listener is: the listener user pointer evmpm hands back. */
struct site {
    const char *name;
    int serves_status;
};
static struct site public_site = {"public", 0};
static struct site admin_site = {"admin", 1};

static struct in_addr deny[MAX_DENY];
static int deny_count;

/* Per connection: which site, and how many requests it has made. */
struct conn_state {
    const struct site *site;
    unsigned requests;
};

/* Per worker thread: a scratch buffer for request heads. */
static _Thread_local char *scratch;
static atomic_int threads_started, threads_stopped, closes_done;

/* ---- hooks ------------------------------------------------------------------- */

static void thread_start(void *user, evmpm_runtime *rt, int kind, uint32_t id) {
    (void)user, (void)rt, (void)id;
    if (kind == EVMPM_THREAD_WORKER)
        scratch = malloc(HEAD_MAX);
    atomic_fetch_add(&threads_started, 1);
}

static void thread_stop(void *user, evmpm_runtime *rt, int kind, uint32_t id) {
    (void)user, (void)rt, (void)kind, (void)id;
    free(scratch);
    scratch = NULL;
    atomic_fetch_add(&threads_stopped, 1);
}

/* The access list, on the event thread: no blocking, no reading. */
static int on_accept(void *listener_user, evmpm_runtime *rt, evmpm_conn c, int fd,
                     const evmpm_conn_info *info) {
    const struct sockaddr_in *peer = (const struct sockaddr_in *)&info->peer;
    struct conn_state *cs;
    int one = 1;
    if (info->peer.ss_family == AF_INET)
        for (int i = 0; i < deny_count; i++)
            if (peer->sin_addr.s_addr == deny[i].s_addr)
                return EVMPM_ACCEPT_REFUSE;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    cs = calloc(1, sizeof *cs);
    if (!cs)
        return EVMPM_ACCEPT_REFUSE;
    cs->site = listener_user;
    evmpm_conn_set_user(rt, c, cs);
    return EVMPM_ACCEPT_CONTINUE;
}

/* A close path that blocks: with close_on_worker it runs on a worker. */
static void on_close(void *user, evmpm_runtime *rt, evmpm_conn c, int fd, void *conn_user) {
    struct timespec pause = {0, 50 * 1000 * 1000};
    (void)user, (void)rt, (void)c, (void)fd;
    nanosleep(&pause, NULL); /* "flushing the access log" */
    free(conn_user);
    atomic_fetch_add(&closes_done, 1);
}

/* Whole request head waiting? Keeps slow senders off the workers. */
static int request_ready(void *user, evmpm_conn c, void *conn_user, const uint8_t *data,
                         size_t len) {
    (void)user, (void)c, (void)conn_user;
    return memmem(data, len, "\r\n\r\n", 4) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

/* ---- the handler ------------------------------------------------------------- */

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

static int respond(int fd, const char *body) {
    char head[128];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                     strlen(body));
    return send_all(fd, head, (size_t)n) && send_all(fd, body, strlen(body));
}

/* The worker table, as the status page shows it. */
static void status_page(evmpm_runtime *rt, char *out, size_t cap) {
    static const char *names[] = {"?", "idle", "handler", "blocked", "spare"};
    evmpm_worker_info w[MAX_WORKERS_SHOWN];
    size_t count = 0, used = 0;
    evmpm_get_workers(rt, w, sizeof w[0], MAX_WORKERS_SHOWN, &count);
    used += (size_t)snprintf(out + used, cap - used,
                             "threads started %d stopped %d, closes %d, workers %zu\n",
                             atomic_load(&threads_started), atomic_load(&threads_stopped),
                             atomic_load(&closes_done), count);
    for (size_t i = 0; i < count && i < MAX_WORKERS_SHOWN && used < cap; i++) {
        int s = w[i].state;
        used += (size_t)snprintf(out + used, cap - used, "worker %u %s %lluus %s\n", w[i].id,
                                 s > 0 && s <= EVMPM_WORKER_SPARE ? names[s] : "?",
                                 (unsigned long long)w[i].state_us, w[i].label);
    }
}

static void handler(void *user, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    struct conn_state *cs = NULL;
    char line[128], body[4096];
    size_t len = 0, head = 0;
    unsigned ms = 0;
    (void)user, (void)reason;
    evmpm_conn_get_user(rt, c, (void **)&cs);
    /* Read one request head into this thread's scratch buffer. */
    while (head == 0) {
        ssize_t n = recv(fd, scratch + len, HEAD_MAX - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (len += (size_t)n) == HEAD_MAX) {
            evmpm_close(rt, c);
            return;
        }
        char *end = memmem(scratch, len, "\r\n\r\n", 4);
        head = end ? (size_t)(end - scratch) + 4 : 0;
    }
    /* (Pipelined bytes past the head are not kept: a demo.) */
    snprintf(line, sizeof line, "%.*s", (int)strcspn(scratch, "\r\n"), scratch);
    evmpm_set_label(rt, line);
    cs->requests++;
    if (sscanf(line, "GET /sleep?ms=%u", &ms) == 1) {
        struct timespec pause = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
        snprintf(body, sizeof body, "slept %u ms\n", ms);
    } else if (sscanf(line, "GET /keepalive?ms=%u", &ms) == 1) {
        evmpm_conn_set_timeouts(rt, c, ms, 0);
        snprintf(body, sizeof body, "keep-alive %u ms\n", ms);
    } else if (strncmp(line, "GET /status ", 12) == 0 && cs->site->serves_status) {
        status_page(rt, body, sizeof body);
    } else {
        snprintf(body, sizeof body, "hello from %s, request %u\n", cs->site->name, cs->requests);
    }
    if (!respond(fd, body)) {
        evmpm_close(rt, c);
        return;
    }
    evmpm_park_keepalive(rt, c, 0);
}

/* ---- setup ------------------------------------------------------------------- */

static int listen_on(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1024) != 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        exit(1);
    }
    return fd;
}

static void add_listener(evmpm_runtime *rt, int fd, struct site *site, uint32_t flags,
                         uint32_t keepalive_ms) {
    evmpm_listener_config lc;
    evmpm_listener_config_init(&lc, sizeof lc);
    lc.user_data = site;
    lc.on_accept = on_accept;
    lc.flags = flags;
    lc.keepalive_timeout_ms = keepalive_ms;
    int rc = evmpm_register_listener_ex(rt, fd, &lc);
    if (rc != EVMPM_OK) {
        fprintf(stderr, "register %s: %s\n", site->name, evmpm_strerror(rc));
        exit(1);
    }
}

static void log_line(void *user, int level, const char *message) {
    (void)user;
    fprintf(stderr, "evmpm [%d]: %s\n", level, message);
}

int main(int argc, char **argv) {
    evmpm_config cfg;
    evmpm_runtime *rt;
    sigset_t stop_signals;
    int sig, rc;
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT ADMIN_PORT [--deny IPV4]...\n", argv[0]);
        return 2;
    }
    for (int i = 3; i + 1 < argc && deny_count < MAX_DENY; i += 2)
        if (strcmp(argv[i], "--deny") != 0 || inet_pton(AF_INET, argv[i + 1], &deny[deny_count++]) != 1) {
            fprintf(stderr, "bad argument %s\n", argv[i]);
            return 2;
        }
    /* Signals are waited for below: block them before any thread starts. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    evmpm_config_init(&cfg, sizeof cfg);
    cfg.handler = handler;
    cfg.on_close = on_close;
    cfg.close_on_worker = 1;
    cfg.request_ready = request_ready;
    cfg.on_thread_start = thread_start;
    cfg.on_thread_stop = thread_stop;
    cfg.log = log_line;
    if ((rc = evmpm_create(&cfg, &rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm_create: %s\n", evmpm_strerror(rc));
        return 1;
    }
    add_listener(rt, listen_on(atoi(argv[1])), &public_site, 0, 5000);
    add_listener(rt, listen_on(atoi(argv[2])), &admin_site, EVMPM_LISTEN_NO_REQUEST_READY, 60000);
    if ((rc = evmpm_start(rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm_start: %s\n", evmpm_strerror(rc));
        return 1;
    }
    printf("hooks: public on 127.0.0.1:%s, admin (/status) on 127.0.0.1:%s\n", argv[1], argv[2]);
    fflush(stdout);
    sigwait(&stop_signals, &sig);
    rc = evmpm_stop(rt, 5000);
    evmpm_destroy(rt);
    /* After destroy no hook runs any more: the counts are final. */
    printf("stopped (%s): threads started %d, stopped %d\n", evmpm_strerror(rc),
           atomic_load(&threads_started), atomic_load(&threads_stopped));
    return rc == EVMPM_OK ? 0 : 1;
}

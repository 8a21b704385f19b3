/* Listeners with their own settings (evmpm_register_listener_ex): what the
 * accept told (evmpm_conn_get_info), the accept hook, per-listener
 * readiness checks, descriptor mode, a server that speaks first, per-
 * listener and per-connection timeouts, closing with flags
 * (evmpm_close_ex), close callbacks kept off the event thread
 * (close_on_worker), and the errors of the new calls.
 *
 * The line server of the harness knows only the first four wake reasons
 * and keeps its own connection pointer, so this file has a small server of
 * its own: several listeners, a line protocol, and a record of what each
 * callback saw and on which thread. */
#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LIS 4
#define MAX_RECS 64
#define CONN_MAGIC 0x6c697374u

/* ---- the test server ------------------------------------------------------ */

struct srv;

/* One listener; its address is the listener's user_data. */
struct lis {
    struct srv *s;
    int index;
    int fd;
    int port;
};

/* A connection's state, its user pointer: made by the accept hook (then
 * `rec` is its place in srv.recs) or by its first handler run; freed by the
 * close callback. */
struct conn {
    struct srv *s;
    uint32_t magic;
    int rec;
    int from_hook;
    int refused;
    struct line_reader in;
};

/* What the test learns of one connection the hook saw, by accept order. */
struct rec {
    _Atomic evmpm_conn conn;
    atomic_int refused;
    atomic_int closes;
    atomic_int runs;
};

enum thread_kind { ON_EVENT, ON_WORKER, ON_OTHER };

struct srv {
    evmpm_runtime *rt;
    struct lis lis[MAX_LIS];
    int nlis;
    atomic_long runs;
    atomic_long reasons[8];
    atomic_long closes;
    atomic_long close_on[3]; /* by enum thread_kind */
    atomic_long double_closes;
    atomic_long releases;
    atomic_long hook_calls;
    atomic_long hook_off_event; /* hook runs on another thread than the event thread */
    atomic_long hook_info_bad;  /* the hook's info disagreed with evmpm_conn_get_info */
    atomic_ullong last_conn;
    struct rec recs[MAX_RECS];
    /* Optional, per test: the accept hook's verdict (default: keep). */
    int (*accept)(struct srv *s, struct lis *l, evmpm_runtime *rt, evmpm_conn c, int fd,
                  const evmpm_conn_info *info, struct conn *st);
    /* Optional, per test: a command of its own; 1 if it handled (and
     * decided) the line. */
    int (*command)(struct srv *s, evmpm_runtime *rt, evmpm_conn c, int fd, struct conn *st,
                   const char *line);
    int file_fd; /* for FILE n: a file of pattern bytes, -1 if none */
    pthread_mutex_t lock;
    evmpm_conn closed[256];
    size_t nclosed;
};

static enum thread_kind thread_kind(void) {
    char name[16] = "";
    CHECK(pthread_getname_np(pthread_self(), name, sizeof name) == 0);
    if (strncmp(name, "evmpm-event", 11) == 0)
        return ON_EVENT;
    if (strncmp(name, "evmpm-worker", 12) == 0)
        return ON_WORKER;
    return ON_OTHER;
}

static struct conn *conn_new(struct srv *s) {
    struct conn *st = calloc(1, sizeof *st);
    CHECK(st != NULL);
    st->s = s;
    st->magic = CONN_MAGIC;
    st->rec = -1;
    return st;
}

static void park(evmpm_runtime *rt, evmpm_conn c, struct conn *st) {
    uint32_t flags = line_reader_has_line(&st->in) ? EVMPM_PARK_BUFFERED : 0;
    CHECK_OK(evmpm_park_keepalive(rt, c, flags));
}

struct body {
    struct srv *s;
    char data[];
};

static void release_body(void *arg) {
    struct body *b = arg;
    atomic_fetch_add(&b->s->releases, 1);
    free(b);
}

static void release_count(void *arg) {
    struct srv *s = arg;
    atomic_fetch_add(&s->releases, 1);
}

static int nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    CHECK(flags >= 0);
    return (flags & O_NONBLOCK) != 0;
}

static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    struct srv *s = user_data;
    struct conn *st = NULL;
    char line[256], out[256];
    atomic_fetch_add(&s->runs, 1);
    CHECK(reason >= EVMPM_WAKE_NEW && reason <= EVMPM_WAKE_ACCEPTED);
    atomic_fetch_add(&s->reasons[reason], 1);
    atomic_store(&s->last_conn, c);
    CHECK_EQ(thread_kind(), ON_WORKER);
    CHECK_OK(evmpm_conn_get_user(rt, c, (void **)&st));
    if (st == NULL) {
        st = conn_new(s);
        CHECK_OK(evmpm_conn_set_user(rt, c, st));
    }
    CHECK_EQ(st->magic, CONN_MAGIC);
    if (st->refused)
        harness_fail(__FILE__, __LINE__, "a handler ran for a connection the hook refused");
    if (st->rec >= 0)
        atomic_fetch_add(&s->recs[st->rec].runs, 1);
    if (reason == EVMPM_WAKE_ACCEPTED) {
        /* The server speaks first; the client has sent nothing. */
        line_reply(fd, "HELLO\n");
        park(rt, c, st);
        return;
    }
    if (!line_reader_next(fd, &st->in, line, sizeof line, reason)) {
        CHECK_OK(evmpm_close(rt, c));
        return;
    }
    if (strcmp(line, "PING") == 0) {
        line_reply(fd, "PONG\n");
        park(rt, c, st);
    } else if (strcmp(line, "QUIT") == 0) {
        line_reply(fd, "BYE\n");
        CHECK_OK(evmpm_close(rt, c));
    } else if (strcmp(line, "MODE") == 0) {
        snprintf(out, sizeof out, "MODE %d\n", nonblocking(fd));
        line_reply(fd, out);
        park(rt, c, st);
    } else if (strncmp(line, "BIG ", 4) == 0) {
        long n = atol(line + 4), i;
        struct body *b = malloc(sizeof *b + (size_t)n);
        CHECK(b != NULL);
        b->s = s;
        for (i = 0; i < n; i++)
            b->data[i] = pattern_byte((size_t)i);
        CHECK_OK(evmpm_complete_write(rt, c, b->data, (size_t)n, release_body, b,
                                      EVMPM_WRITE_KEEPALIVE));
    } else if (strncmp(line, "FILE ", 5) == 0) {
        CHECK(s->file_fd >= 0);
        CHECK_OK(evmpm_complete_sendfile(rt, c, NULL, 0, s->file_fd, 0,
                                         (uint64_t)atol(line + 5), release_count, s,
                                         EVMPM_WRITE_KEEPALIVE));
    } else if (s->command == NULL || !s->command(s, rt, c, fd, st, line)) {
        line_reply(fd, "ERR\n");
        park(rt, c, st);
    }
}

/* Records `c` as closed; 1 if it already was. */
static int record_closed(struct srv *s, evmpm_conn c) {
    size_t i;
    int seen = 0;
    pthread_mutex_lock(&s->lock);
    for (i = 0; i < s->nclosed; i++)
        seen |= s->closed[i] == c;
    if (!seen) {
        CHECK(s->nclosed < sizeof s->closed / sizeof s->closed[0]);
        s->closed[s->nclosed++] = c;
    }
    pthread_mutex_unlock(&s->lock);
    return seen;
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, void *conn_user) {
    struct srv *s = user_data;
    evmpm_conn_info info;
    int rc;
    CHECK(fd >= 0);
    atomic_fetch_add(&s->close_on[thread_kind()], 1);
    /* The close has begun: the handle is refused, here too. */
    rc = evmpm_conn_get_info(rt, c, &info, sizeof info);
    CHECK(rc == EVMPM_ESTALE || rc == EVMPM_ESTOPPED);
    if (record_closed(s, c))
        atomic_fetch_add(&s->double_closes, 1);
    if (conn_user != NULL) {
        struct conn *st = conn_user;
        CHECK_EQ(st->magic, CONN_MAGIC);
        if (st->rec >= 0)
            atomic_fetch_add(&s->recs[st->rec].closes, 1);
        st->magic = 0;
        free(st);
    }
    atomic_fetch_add(&s->closes, 1);
}

static int same_addr(const struct sockaddr_storage *a, uint32_t alen,
                     const struct sockaddr_storage *b, uint32_t blen) {
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* The hook of every listener given one: records, checks the thread and the
 * info, then asks the test's rule. */
static int hook(void *listener_user, evmpm_runtime *rt, evmpm_conn c, int fd,
                const evmpm_conn_info *info) {
    struct lis *l = listener_user;
    struct srv *s = l->s;
    struct conn *st = conn_new(s);
    evmpm_conn_info got;
    long n = atomic_fetch_add(&s->hook_calls, 1);
    int verdict;
    int cfd = -1;
    if (thread_kind() != ON_EVENT)
        atomic_fetch_add(&s->hook_off_event, 1);
    CHECK_OK(evmpm_conn_get_info(rt, c, &got, sizeof got));
    CHECK_OK(evmpm_conn_fd(rt, c, &cfd));
    if (info->listener_fd != l->fd || info->listener_user != l || got.listener_fd != l->fd ||
        got.listener_user != l || cfd != fd ||
        !same_addr(&info->peer, info->peer_len, &got.peer, got.peer_len) ||
        !same_addr(&info->local, info->local_len, &got.local, got.local_len))
        atomic_fetch_add(&s->hook_info_bad, 1);
    CHECK(n < MAX_RECS);
    st->rec = (int)n;
    st->from_hook = 1;
    atomic_store(&s->recs[n].conn, c);
    CHECK_OK(evmpm_conn_set_user(rt, c, st));
    verdict = s->accept ? s->accept(s, l, rt, c, fd, info, st) : EVMPM_ACCEPT_CONTINUE;
    if (verdict != EVMPM_ACCEPT_CONTINUE) {
        st->refused = 1;
        atomic_store(&s->recs[n].refused, 1);
    }
    return verdict;
}

static void srv_config(struct srv *s, evmpm_config *cfg) {
    memset(s, 0, sizeof *s);
    s->file_fd = -1;
    CHECK(pthread_mutex_init(&s->lock, NULL) == 0);
    CHECK_OK(evmpm_config_init(cfg, sizeof *cfg));
    cfg->worker_threads = 4;
    cfg->handler = handler;
    cfg->on_close = on_close;
    cfg->user_data = s;
}

static void srv_create(struct srv *s, const evmpm_config *cfg) {
    CHECK_OK(evmpm_create(cfg, &s->rt));
}

/* A listening socket on `addr` (host order: INADDR_LOOPBACK or INADDR_ANY)
 * with a kernel-chosen port. Clients always connect to 127.0.0.1. */
static int listen_on(uint32_t addr, int *port) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(addr);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(fd, 128) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static struct lis *new_lis(struct srv *s, uint32_t addr) {
    struct lis *l;
    CHECK(s->nlis < MAX_LIS);
    l = &s->lis[s->nlis];
    l->s = s;
    l->index = s->nlis++;
    l->fd = listen_on(addr, &l->port);
    return l;
}

/* A listener registered with evmpm_register_listener_ex and `lc` (its
 * user_data set to the listener), on 127.0.0.1. */
static struct lis *srv_listen_ex(struct srv *s, evmpm_listener_config *lc) {
    struct lis *l = new_lis(s, INADDR_LOOPBACK);
    lc->user_data = l;
    CHECK_OK(evmpm_register_listener_ex(s->rt, l->fd, lc));
    return l;
}

/* A listener with the defaults but for `flags` (and the hook if `hooked`). */
static struct lis *srv_listen_flags(struct srv *s, uint32_t flags, int hooked) {
    evmpm_listener_config lc;
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.flags = flags;
    if (hooked)
        lc.on_accept = hook;
    return srv_listen_ex(s, &lc);
}

static void srv_start(struct srv *s) { CHECK_OK(evmpm_start(s->rt)); }

static evmpm_stats srv_stats(struct srv *s) {
    evmpm_stats st;
    CHECK_OK(evmpm_get_stats(s->rt, &st, sizeof st));
    return st;
}

static int srv_stop(struct srv *s, uint32_t timeout_ms) {
    int rc, i;
    watchdog_arm((int)timeout_ms + 5000, "evmpm_stop did not return within 5 s of its deadline");
    rc = evmpm_stop(s->rt, timeout_ms);
    watchdog_disarm();
    watchdog_arm(5000, "evmpm_destroy did not return within 5 s");
    CHECK_OK(evmpm_destroy(s->rt));
    watchdog_disarm();
    s->rt = NULL;
    for (i = 0; i < s->nlis; i++)
        close(s->lis[i].fd);
    CHECK_EQ(atomic_load(&s->double_closes), 0);
    pthread_mutex_destroy(&s->lock);
    return rc;
}

static void ping_fd(int fd) {
    send_str(fd, "PING\n");
    EXPECT_LINE(fd, "PONG");
}

/* ---- what the accept told: evmpm_conn_get_info ------------------------------ */

static evmpm_conn_info info_seen[MAX_LIS];
static _Atomic evmpm_conn info_conn[MAX_LIS];

/* INFO: the handler's evmpm_conn_get_info, kept by listener. */
static int info_command(struct srv *s, evmpm_runtime *rt, evmpm_conn c, int fd, struct conn *st,
                        const char *line) {
    evmpm_conn_info info;
    struct lis *l;
    (void)s;
    if (strcmp(line, "INFO") != 0)
        return 0;
    CHECK_OK(evmpm_conn_get_info(rt, c, &info, sizeof info));
    l = info.listener_user;
    CHECK(l != NULL);
    info_seen[l->index] = info;
    atomic_store(&info_conn[l->index], c);
    line_reply(fd, "INFO\n");
    park(rt, c, st);
    return 1;
}

/* The client's own view of the connection: its address and its peer's. */
static void client_addrs(int fd, struct sockaddr_storage *self, uint32_t *self_len,
                         struct sockaddr_storage *peer, uint32_t *peer_len) {
    socklen_t a = sizeof *self, b = sizeof *peer;
    memset(self, 0, sizeof *self);
    memset(peer, 0, sizeof *peer);
    CHECK(getsockname(fd, (struct sockaddr *)self, &a) == 0);
    CHECK(getpeername(fd, (struct sockaddr *)peer, &b) == 0);
    *self_len = a;
    *peer_len = b;
}

static void check_info(const evmpm_conn_info *info, const struct lis *l, int client) {
    struct sockaddr_storage self, peer;
    uint32_t self_len, peer_len;
    const struct sockaddr_in *p = (const struct sockaddr_in *)&info->peer;
    const struct sockaddr_in *q = (const struct sockaddr_in *)&info->local;
    client_addrs(client, &self, &self_len, &peer, &peer_len);
    CHECK_EQ(info->listener_fd, l->fd);
    CHECK(info->listener_user == l);
    /* The server's peer is the client's own address ... */
    CHECK_EQ(info->peer_len, sizeof(struct sockaddr_in));
    CHECK_EQ(p->sin_family, AF_INET);
    CHECK_EQ(ntohs(p->sin_port), ntohs(((struct sockaddr_in *)&self)->sin_port));
    CHECK_EQ(p->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    CHECK(same_addr(&info->peer, info->peer_len, &self, self_len));
    /* ... and its local address is where the client connected to: on the
     * wildcard listener too, 127.0.0.1, not 0.0.0.0. */
    CHECK_EQ(info->local_len, sizeof(struct sockaddr_in));
    CHECK_EQ(q->sin_family, AF_INET);
    CHECK_EQ(ntohs(q->sin_port), l->port);
    CHECK_EQ(q->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    CHECK(same_addr(&info->local, info->local_len, &peer, peer_len));
}

static void info_names_listener_and_addresses(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    struct lis *bound, *wild;
    int fb, fw, i;
    srv_config(&s, &cfg);
    s.command = info_command;
    srv_create(&s, &cfg);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    bound = srv_listen_ex(&s, &lc);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    wild = new_lis(&s, INADDR_ANY);
    lc.user_data = wild;
    CHECK_OK(evmpm_register_listener_ex(s.rt, wild->fd, &lc));
    CHECK(bound->index == 0 && wild->index == 1);
    srv_start(&s);
    fb = connect_loopback(bound->port);
    fw = connect_loopback(wild->port);
    for (i = 0; i < 2; i++) {
        struct lis *l = i == 0 ? bound : wild;
        int fd = i == 0 ? fb : fw;
        evmpm_conn_info again;
        send_str(fd, "INFO\n");
        EXPECT_LINE(fd, "INFO");
        check_info(&info_seen[i], l, fd);
        /* The same from a thread that does not hold the connection. */
        CHECK_OK(evmpm_conn_get_info(s.rt, atomic_load(&info_conn[i]), &again, sizeof again));
        check_info(&again, l, fd);
    }
    close(fb);
    close(fw);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(srv_stop(&s, 1000));
}

/* A listener registered the old way has no user pointer; sizes smaller and
 * larger than the caller's struct; the errors. */
static void info_sizes_and_errors(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    union {
        evmpm_conn_info info;
        unsigned char bytes[sizeof(evmpm_conn_info) + 32];
    } u;
    evmpm_conn c;
    size_t i, small = offsetof(evmpm_conn_info, peer);
    int fd;
    srv_config(&s, &cfg);
    s.command = info_command;
    srv_create(&s, &cfg);
    l = new_lis(&s, INADDR_LOOPBACK);
    CHECK_OK(evmpm_register_listener(s.rt, l->fd));
    srv_start(&s);
    fd = connect_loopback(l->port);
    ping_fd(fd);
    c = (evmpm_conn)atomic_load(&s.last_conn);
    /* Only the first `small` bytes are written: the rest keep the caller's. */
    memset(&u, 0xab, sizeof u);
    CHECK_OK(evmpm_conn_get_info(s.rt, c, &u.info, small));
    CHECK_EQ(u.info.listener_fd, l->fd);
    CHECK_EQ(u.info.peer_len, sizeof(struct sockaddr_in));
    CHECK(u.info.listener_user == NULL); /* evmpm_register_listener: none */
    for (i = small; i < sizeof u; i++)
        if (u.bytes[i] != 0xab)
            harness_fail(__FILE__, __LINE__, "byte %zu of %zu written with out_size %zu", i,
                         sizeof u, small);
    /* Four bytes: the descriptor alone. */
    memset(&u, 0xab, sizeof u);
    CHECK_OK(evmpm_conn_get_info(s.rt, c, &u.info, sizeof(int)));
    CHECK_EQ(u.info.listener_fd, l->fd);
    for (i = sizeof(int); i < sizeof u; i++)
        CHECK_EQ(u.bytes[i], 0xab);
    /* Larger (a newer header's struct): what this library lacks reads 0. */
    memset(&u, 0xab, sizeof u);
    CHECK_OK(evmpm_conn_get_info(s.rt, c, &u.info, sizeof u));
    CHECK_EQ(u.info.listener_fd, l->fd);
    CHECK_EQ(u.info.local_len, sizeof(struct sockaddr_in));
    for (i = sizeof u.info; i < sizeof u; i++)
        CHECK_EQ(u.bytes[i], 0);
    /* Errors write nothing. */
    memset(&u, 0xab, sizeof u);
    CHECK_EQ(evmpm_conn_get_info(s.rt, c, NULL, sizeof u.info), EVMPM_EINVAL);
    CHECK_EQ(evmpm_conn_get_info(NULL, c, &u.info, sizeof u.info), EVMPM_EINVAL);
    CHECK_EQ(evmpm_conn_get_info(s.rt, 0, &u.info, sizeof u.info), EVMPM_ESTALE);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(evmpm_conn_get_info(s.rt, c, &u.info, sizeof u.info), EVMPM_ESTALE);
    for (i = 0; i < sizeof u; i++)
        CHECK_EQ(u.bytes[i], 0xab);
    CHECK_OK(srv_stop(&s, 1000));
    CHECK_EQ(evmpm_conn_get_info(NULL, c, &u.info, sizeof u.info), EVMPM_EINVAL);
}

/* ---- the accept hook ---------------------------------------------------------- */

/* Refuses every second connection (the 2nd, 4th, ...). */
static int refuse_every_second(struct srv *s, struct lis *l, evmpm_runtime *rt, evmpm_conn c,
                               int fd, const evmpm_conn_info *info, struct conn *st) {
    (void)s, (void)l, (void)rt, (void)c, (void)fd, (void)info;
    return st->rec % 2 == 1 ? EVMPM_ACCEPT_REFUSE : EVMPM_ACCEPT_CONTINUE;
}

static void hook_refuses_by_rule(void) {
    enum { CLIENTS = 6 };
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    int fds[CLIENTS], i;
    srv_config(&s, &cfg);
    s.accept = refuse_every_second;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 1);
    srv_start(&s);
    for (i = 0; i < CLIENTS; i++) {
        fds[i] = connect_loopback(l->port);
        /* One at a time, so that the rule sees them in this order. */
        WAIT_UNTIL(atomic_load(&s.hook_calls) == i + 1, 5000);
        if (i % 2 == 1) {
            /* Refused: the end of the stream, before it sent a byte. */
            CHECK(wait_closed(fds[i], 5000));
            WAIT_UNTIL(atomic_load(&s.recs[i].closes) == 1, 5000);
        } else {
            ping_fd(fds[i]);
        }
    }
    CHECK_EQ(srv_stats(&s).denied, CLIENTS / 2);
    CHECK_EQ(srv_stats(&s).accepted, CLIENTS);
    for (i = 0; i < CLIENTS; i += 2)
        ping_fd(fds[i]);
    for (i = 0; i < CLIENTS; i++) {
        CHECK_EQ(atomic_load(&s.recs[i].refused), i % 2);
        /* The refused ones never reached a handler; the kept ones did,
         * once per request, with the hook's pointer. */
        CHECK_EQ(atomic_load(&s.recs[i].runs), i % 2 ? 0 : 2);
        close(fds[i]);
    }
    WAIT_UNTIL(atomic_load(&s.closes) == CLIENTS, 5000);
    for (i = 0; i < CLIENTS; i++)
        CHECK_EQ(atomic_load(&s.recs[i].closes), 1);
    CHECK_EQ(atomic_load(&s.hook_off_event), 0);
    CHECK_EQ(atomic_load(&s.hook_info_bad), 0);
    CHECK_EQ(atomic_load(&s.runs), 2 * (CLIENTS / 2));
    CHECK_EQ(srv_stats(&s).denied, CLIENTS / 2);
    CHECK_OK(srv_stop(&s, 1000));
}

/* Any verdict but EVMPM_ACCEPT_CONTINUE refuses. */
static int refuse_oddly(struct srv *s, struct lis *l, evmpm_runtime *rt, evmpm_conn c, int fd,
                        const evmpm_conn_info *info, struct conn *st) {
    (void)s, (void)l, (void)rt, (void)c, (void)fd, (void)info, (void)st;
    return 7;
}

static void hook_unknown_verdict_refuses(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    int fd;
    srv_config(&s, &cfg);
    s.accept = refuse_oddly;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 1);
    srv_start(&s);
    fd = connect_loopback(l->port);
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(srv_stats(&s).denied, 1);
    CHECK_EQ(atomic_load(&s.runs), 0);
    close(fd);
    CHECK_OK(srv_stop(&s, 1000));
}

static int set_nodelay(struct srv *s, struct lis *l, evmpm_runtime *rt, evmpm_conn c, int fd,
                       const evmpm_conn_info *info, struct conn *st) {
    int one = 1;
    (void)s, (void)l, (void)rt, (void)c, (void)info, (void)st;
    CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
    return EVMPM_ACCEPT_CONTINUE;
}

/* OPTS: "OPTS <TCP_NODELAY> <pointer set by the hook>". */
static int opts_command(struct srv *s, evmpm_runtime *rt, evmpm_conn c, int fd, struct conn *st,
                        const char *line) {
    char out[64];
    int nodelay = 0;
    socklen_t len = sizeof nodelay;
    (void)s;
    if (strcmp(line, "OPTS") != 0)
        return 0;
    CHECK(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &len) == 0);
    snprintf(out, sizeof out, "OPTS %d %d\n", nodelay != 0, st->from_hook);
    line_reply(fd, out);
    park(rt, c, st);
    return 1;
}

static void hook_sets_user_and_socket_options(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *hooked, *plain;
    int fh, fp;
    srv_config(&s, &cfg);
    s.accept = set_nodelay;
    s.command = opts_command;
    srv_create(&s, &cfg);
    hooked = srv_listen_flags(&s, 0, 1);
    plain = srv_listen_flags(&s, 0, 0);
    srv_start(&s);
    fh = connect_loopback(hooked->port);
    fp = connect_loopback(plain->port);
    send_str(fh, "OPTS\n");
    EXPECT_LINE(fh, "OPTS 1 1");
    send_str(fp, "OPTS\n");
    EXPECT_LINE(fp, "OPTS 0 0");
    /* Still there on the next request. */
    send_str(fh, "OPTS\n");
    EXPECT_LINE(fh, "OPTS 1 1");
    CHECK_EQ(atomic_load(&s.hook_calls), 1);
    CHECK_EQ(atomic_load(&s.hook_info_bad), 0);
    close(fh);
    close(fp);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(atomic_load(&s.recs[0].closes), 1);
    CHECK_OK(srv_stop(&s, 1000));
}

/* ---- per-listener readiness checks ------------------------------------------ */

enum { CHECK_RUNTIME = 1, CHECK_OWN = 2 };

struct check_call {
    int which;
    evmpm_conn conn;
    void *user;
    size_t len;
};

static pthread_mutex_t checks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct check_call checks[256];
static atomic_int nchecks;

static int log_check(int which, void *user, evmpm_conn c, const uint8_t *data, size_t len) {
    pthread_mutex_lock(&checks_lock);
    CHECK(nchecks < 256);
    checks[nchecks].which = which;
    checks[nchecks].conn = c;
    checks[nchecks].user = user;
    checks[nchecks].len = len;
    atomic_fetch_add(&nchecks, 1);
    pthread_mutex_unlock(&checks_lock);
    return memchr(data, '\n', len) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static int runtime_check(void *user_data, evmpm_conn c, void *conn_user, const uint8_t *data,
                         size_t len) {
    (void)conn_user;
    return log_check(CHECK_RUNTIME, user_data, c, data, len);
}

static int own_check(void *user_data, evmpm_conn c, void *conn_user, const uint8_t *data,
                     size_t len) {
    (void)conn_user;
    return log_check(CHECK_OWN, user_data, c, data, len);
}

/* WHO: answers with its listener's index (and keeps the handle). */
static _Atomic evmpm_conn conn_of_listener[MAX_LIS];

static int who_command(struct srv *s, evmpm_runtime *rt, evmpm_conn c, int fd, struct conn *st,
                       const char *line) {
    evmpm_conn_info info;
    char out[32];
    int i, index = -1;
    if (strcmp(line, "WHO") != 0)
        return 0;
    CHECK_OK(evmpm_conn_get_info(rt, c, &info, sizeof info));
    for (i = 0; i < s->nlis; i++)
        if (s->lis[i].fd == info.listener_fd)
            index = i;
    CHECK(index >= 0);
    atomic_store(&conn_of_listener[index], c);
    snprintf(out, sizeof out, "WHO %d\n", index);
    line_reply(fd, out);
    park(rt, c, st);
    return 1;
}

/* The checks that saw connection `c`: bits CHECK_RUNTIME, CHECK_OWN; the
 * user pointers must be each check's own. */
static int checks_of(evmpm_conn c, void *runtime_user, void *own_user, int *partial) {
    int i, seen = 0;
    pthread_mutex_lock(&checks_lock);
    for (i = 0; i < nchecks; i++) {
        if (checks[i].conn != c)
            continue;
        seen |= checks[i].which;
        CHECK(checks[i].user == (checks[i].which == CHECK_RUNTIME ? runtime_user : own_user));
        if (checks[i].len == 2)
            *partial = 1;
    }
    pthread_mutex_unlock(&checks_lock);
    return seen;
}

static void per_listener_request_ready(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    struct lis *plain, *none, *own;
    int fds[3], i;
    srv_config(&s, &cfg);
    cfg.request_ready = runtime_check;
    s.command = who_command;
    srv_create(&s, &cfg);
    /* The runtime's check (registered the old way), none, its own. */
    plain = new_lis(&s, INADDR_LOOPBACK);
    CHECK_OK(evmpm_register_listener(s.rt, plain->fd));
    none = srv_listen_flags(&s, EVMPM_LISTEN_NO_REQUEST_READY, 0);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.request_ready = own_check;
    own = srv_listen_ex(&s, &lc);
    srv_start(&s);
    fds[0] = connect_loopback(plain->port);
    fds[1] = connect_loopback(none->port);
    fds[2] = connect_loopback(own->port);
    for (i = 0; i < 3; i++) {
        char want[16];
        int before = atomic_load(&nchecks);
        /* Half a request first: a check waits for the rest (holding no
         * worker); without a check the handler reads on. */
        send_str(fds[i], "WH");
        if (i != 1)
            WAIT_UNTIL(atomic_load(&nchecks) == before + 1, 5000);
        send_str(fds[i], "O\n");
        snprintf(want, sizeof want, "WHO %d", i);
        EXPECT_LINE(fds[i], want);
        ping_fd(fds[i]);
    }
    for (i = 0; i < 3; i++) {
        int partial = 0;
        int seen = checks_of(atomic_load(&conn_of_listener[i]), &s, own, &partial);
        CHECK_EQ(seen, i == 0 ? CHECK_RUNTIME : i == 1 ? 0 : CHECK_OWN);
        CHECK_EQ(partial, i != 1);
        close(fds[i]);
    }
    CHECK(atomic_load(&nchecks) >= 6); /* two requests each on two listeners, one partial */
    WAIT_UNTIL(atomic_load(&s.closes) == 3, 5000);
    CHECK_OK(srv_stop(&s, 1000));
}

/* ---- descriptor mode --------------------------------------------------------- */

static void expect_mode(int fd, int want) {
    send_str(fd, "MODE\n");
    EXPECT_LINE(fd, want ? "MODE 1" : "MODE 0");
}

static void nonblock_flag(void) {
    enum { BIG = 2 << 20, FILE_BYTES = 512 << 10 };
    struct srv s;
    evmpm_config cfg;
    struct lis *nb, *bl;
    FILE *file;
    static char chunk[64 << 10];
    size_t done = 0;
    int i;
    srv_config(&s, &cfg);
    srv_create(&s, &cfg);
    nb = srv_listen_flags(&s, EVMPM_LISTEN_NONBLOCK, 0);
    bl = srv_listen_flags(&s, 0, 0);
    file = tmpfile();
    CHECK(file != NULL);
    while (done < FILE_BYTES) {
        size_t k;
        for (k = 0; k < sizeof chunk; k++)
            chunk[k] = pattern_byte(done + k);
        CHECK(fwrite(chunk, 1, sizeof chunk, file) == sizeof chunk);
        done += sizeof chunk;
    }
    CHECK(fflush(file) == 0);
    s.file_fd = fileno(file);
    srv_start(&s);
    for (i = 0; i < 2; i++) {
        int want = i == 0;
        /* A small window, so both responses back up and the event thread
         * finishes them. */
        int fd = connect_loopback_rcvbuf((i == 0 ? nb : bl)->port, 8192);
        expect_mode(fd, want);
        send_str(fd, "BIG 2097152\n");
        recv_pattern(fd, 0, BIG, 64 << 10, 0);
        expect_mode(fd, want);
        send_str(fd, "FILE 524288\n");
        recv_pattern(fd, 0, FILE_BYTES, 64 << 10, 0);
        /* The mode the handler sees is unchanged by either write. */
        expect_mode(fd, want);
        close(fd);
    }
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(atomic_load(&s.releases), 4);
    CHECK_OK(srv_stop(&s, 1000));
    fclose(file);
}

/* ---- the server speaks first ---------------------------------------------- */

static atomic_long ready_calls;

static int count_check(void *user_data, evmpm_conn c, void *conn_user, const uint8_t *data,
                       size_t len) {
    (void)user_data, (void)c, (void)conn_user;
    atomic_fetch_add(&ready_calls, 1);
    return memchr(data, '\n', len) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static void server_first(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    int fd, quiet, i;
    srv_config(&s, &cfg);
    cfg.request_ready = count_check;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, EVMPM_LISTEN_SERVER_FIRST, 0);
    srv_start(&s);
    fd = connect_loopback(l->port);
    /* The banner comes before the client sends anything, from a run the
     * readiness check was not asked about. */
    EXPECT_LINE(fd, "HELLO");
    CHECK_EQ(atomic_load(&s.reasons[EVMPM_WAKE_ACCEPTED]), 1);
    CHECK_EQ(atomic_load(&s.reasons[EVMPM_WAKE_NEW]), 0);
    CHECK_EQ(atomic_load(&ready_calls), 0);
    /* Then requests as on any listener, in keep-alive, checked. */
    for (i = 0; i < 3; i++)
        ping_fd(fd);
    CHECK_EQ(atomic_load(&s.reasons[EVMPM_WAKE_READABLE]), 3);
    CHECK(atomic_load(&ready_calls) >= 3);
    CHECK_EQ(atomic_load(&s.reasons[EVMPM_WAKE_ACCEPTED]), 1);
    /* A client that leaves without reading its banner. */
    quiet = connect_loopback(l->port);
    WAIT_UNTIL(atomic_load(&s.reasons[EVMPM_WAKE_ACCEPTED]) == 2, 5000);
    close(quiet);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(srv_stop(&s, 1000));
}

/* ---- timeouts ---------------------------------------------------------------- */

static void listener_timeouts(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    struct lis *shortl, *never;
    int fs, fn, silent_s, silent_n;
    srv_config(&s, &cfg);
    cfg.keepalive_timeout_ms = (uint32_t)(100 * harness_slowdown());
    srv_create(&s, &cfg);
    /* The runtime's keep-alive (100 ms), and its own read timeout. */
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.read_timeout_ms = (uint32_t)(100 * harness_slowdown());
    shortl = srv_listen_ex(&s, &lc);
    /* Never, for both. */
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    lc.read_timeout_ms = EVMPM_TIMEOUT_NONE;
    never = srv_listen_ex(&s, &lc);
    srv_start(&s);
    fs = connect_loopback(shortl->port);
    ping_fd(fs);
    fn = connect_loopback(never->port);
    ping_fd(fn);
    silent_s = connect_loopback(shortl->port);
    silent_n = connect_loopback(never->port);
    CHECK(wait_closed(fs, 5000));
    CHECK(wait_closed(silent_s, 5000));
    WAIT_UNTIL(srv_stats(&s).keepalive_expired == 1 && srv_stats(&s).timed_out == 2, 5000);
    /* Well past both timeouts of the first listener: the second's clients
     * are still there, and served. */
    CHECK(!wait_closed(fn, 300));
    CHECK(!wait_closed(silent_n, 1));
    ping_fd(fn);
    ping_fd(silent_n);
    CHECK_EQ(srv_stats(&s).timed_out, 2);
    close(fs);
    close(fn);
    close(silent_s);
    close(silent_n);
    WAIT_UNTIL(atomic_load(&s.closes) == 4, 5000);
    CHECK_OK(srv_stop(&s, 1000));
}

/* SHORT, KEEP, RESTORE: evmpm_conn_set_timeouts(100 ms / never / the
 * listener's) for this connection's keep-alive. */
static int timeout_command(struct srv *s, evmpm_runtime *rt, evmpm_conn c, int fd,
                           struct conn *st, const char *line) {
    uint32_t ka;
    (void)s;
    if (strcmp(line, "SHORT") == 0)
        ka = 100;
    else if (strcmp(line, "KEEP") == 0)
        ka = EVMPM_TIMEOUT_NONE;
    else if (strcmp(line, "RESTORE") == 0)
        ka = 0;
    else
        return 0;
    CHECK_OK(evmpm_conn_set_timeouts(rt, c, ka, 0));
    line_reply(fd, "OK\n");
    park(rt, c, st);
    return 1;
}

static void conn_set_timeouts(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    struct lis *slow, *fast;
    int a, b, c, d;
    evmpm_conn cc;
    srv_config(&s, &cfg);
    cfg.keepalive_timeout_ms = 30000;
    s.command = timeout_command;
    srv_create(&s, &cfg);
    slow = srv_listen_flags(&s, 0, 0);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.keepalive_timeout_ms = 100;
    fast = srv_listen_ex(&s, &lc);
    srv_start(&s);
    /* One connection's keep-alive shortened from its handler. */
    a = connect_loopback(slow->port);
    b = connect_loopback(slow->port);
    ping_fd(b);
    send_str(a, "SHORT\n");
    EXPECT_LINE(a, "OK");
    CHECK(wait_closed(a, 5000));
    WAIT_UNTIL(srv_stats(&s).keepalive_expired == 1, 5000);
    ping_fd(b);
    /* From another thread, on a parked connection: the next wait has
     * 100 ms. */
    c = connect_loopback(slow->port);
    ping_fd(c);
    cc = (evmpm_conn)atomic_load(&s.last_conn);
    WAIT_UNTIL(srv_stats(&s).conns_keepalive == 2, 5000);
    CHECK_OK(evmpm_conn_set_timeouts(s.rt, cc, 100, 0));
    ping_fd(c);
    CHECK(wait_closed(c, 5000));
    WAIT_UNTIL(srv_stats(&s).keepalive_expired == 2, 5000);
    CHECK_EQ(evmpm_conn_set_timeouts(s.rt, cc, 100, 0), EVMPM_ESTALE);
    /* Never, on a listener of 100 ms; then the listener's again. */
    d = connect_loopback(fast->port);
    send_str(d, "KEEP\n");
    EXPECT_LINE(d, "OK");
    CHECK(!wait_closed(d, 400));
    send_str(d, "RESTORE\n");
    EXPECT_LINE(d, "OK");
    CHECK(wait_closed(d, 5000));
    WAIT_UNTIL(srv_stats(&s).keepalive_expired == 3, 5000);
    ping_fd(b);
    CHECK_EQ(evmpm_conn_set_timeouts(NULL, cc, 1, 1), EVMPM_EINVAL);
    CHECK_EQ(evmpm_conn_set_timeouts(s.rt, 0, 1, 1), EVMPM_ESTALE);
    close(a);
    close(b);
    close(c);
    close(d);
    WAIT_UNTIL(atomic_load(&s.closes) == 4, 5000);
    CHECK_OK(srv_stop(&s, 1000));
}

/* A change made while the connection waits in keep-alive applies from its
 * next wait: the wait under way keeps the timeout it began with, longer or
 * shorter. */
static void set_timeouts_during_a_wait(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    struct lis *slow, *fast;
    int a, b;
    evmpm_conn ca, cb;
    srv_config(&s, &cfg);
    cfg.keepalive_timeout_ms = 30000;
    srv_create(&s, &cfg);
    slow = srv_listen_flags(&s, 0, 0);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    /* Long enough for this thread to change it before it expires. */
    lc.keepalive_timeout_ms = (uint32_t)(300 * harness_slowdown());
    fast = srv_listen_ex(&s, &lc);
    srv_start(&s);
    /* Parked for 300 ms, then given "never": this wait still ends. */
    a = connect_loopback(fast->port);
    ping_fd(a);
    ca = (evmpm_conn)atomic_load(&s.last_conn);
    /* The answer comes before the park: wait for the wait to begin. */
    WAIT_UNTIL(srv_stats(&s).conns_keepalive == 1, 5000);
    CHECK_OK(evmpm_conn_set_timeouts(s.rt, ca, EVMPM_TIMEOUT_NONE, 0));
    CHECK(wait_closed(a, 5000));
    WAIT_UNTIL(srv_stats(&s).keepalive_expired == 1, 5000);
    /* Parked for 30 s, then given 100 ms: this wait keeps its 30 s ... */
    b = connect_loopback(slow->port);
    ping_fd(b);
    cb = (evmpm_conn)atomic_load(&s.last_conn);
    WAIT_UNTIL(srv_stats(&s).conns_keepalive == 1, 5000);
    CHECK_OK(evmpm_conn_set_timeouts(s.rt, cb, 100, 0));
    CHECK(!wait_closed(b, 400));
    /* ... the next has 100 ms. */
    ping_fd(b);
    CHECK(wait_closed(b, 5000));
    WAIT_UNTIL(srv_stats(&s).keepalive_expired == 2, 5000);
    close(a);
    close(b);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(srv_stop(&s, 1000));
}

static void config_timeout_none(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_runtime *rt = NULL;
    struct lis *l;
    int silent, fd;
    srv_config(&s, &cfg);
    cfg.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    cfg.read_timeout_ms = EVMPM_TIMEOUT_NONE;
    cfg.write_timeout_ms = EVMPM_TIMEOUT_NONE;
    cfg.header_timeout_ms = EVMPM_TIMEOUT_NONE;
    cfg.request_ready = count_check;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 0);
    srv_start(&s);
    silent = connect_loopback(l->port);
    fd = connect_loopback(l->port);
    ping_fd(fd);
    send_str(silent, "PI"); /* half a request, held by the header timeout */
    CHECK(!wait_closed(silent, 300));
    CHECK(!wait_closed(fd, 1));
    send_str(silent, "NG\n");
    EXPECT_LINE(silent, "PONG");
    ping_fd(fd);
    CHECK_EQ(srv_stats(&s).timed_out, 0);
    close(silent);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(srv_stop(&s, 1000));
    /* The lingering close is the one timeout that cannot be "never". */
    CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
    cfg.handler = handler;
    cfg.linger_timeout_ms = EVMPM_TIMEOUT_NONE;
    CHECK_EQ(evmpm_create(&cfg, &rt), EVMPM_EINVAL);
    CHECK(rt == NULL);
}

/* ---- closing with flags ------------------------------------------------------- */

static atomic_int bad_flag_rc[4];

/* NOLINGER: "BYE", then evmpm_close_ex(NO_LINGER). RESET: evmpm_close_ex
 * (RESET), nothing sent. DONE: "BYE", then evmpm_close_ex(CLIENT_DONE).
 * DONEMORE: the same once the client has sent more after "BYE". BADFLAGS:
 * four refused flag sets, then "BYE" and evmpm_close_ex(0). */
static int close_command(struct srv *s, evmpm_runtime *rt, evmpm_conn c, int fd,
                         struct conn *st, const char *line) {
    (void)s, (void)st;
    if (strcmp(line, "NOLINGER") == 0) {
        line_reply(fd, "BYE\n");
        CHECK_OK(evmpm_close_ex(rt, c, EVMPM_CLOSE_NO_LINGER));
    } else if (strcmp(line, "RESET") == 0) {
        CHECK_OK(evmpm_close_ex(rt, c, EVMPM_CLOSE_RESET));
    } else if (strcmp(line, "DONE") == 0 || strcmp(line, "DONEMORE") == 0) {
        line_reply(fd, "BYE\n");
        if (strcmp(line, "DONEMORE") == 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
            CHECK_EQ(poll(&p, 1, 5000 * harness_slowdown()), 1);
        }
        CHECK_OK(evmpm_close_ex(rt, c, EVMPM_CLOSE_CLIENT_DONE));
    } else if (strcmp(line, "BADFLAGS") == 0) {
        atomic_store(&bad_flag_rc[0], evmpm_close_ex(rt, c, 8));
        atomic_store(&bad_flag_rc[1],
                     evmpm_close_ex(rt, c, EVMPM_CLOSE_NO_LINGER | EVMPM_CLOSE_RESET));
        atomic_store(&bad_flag_rc[2], evmpm_close_ex(rt, c, 0x80000000u));
        atomic_store(&bad_flag_rc[3],
                     evmpm_close_ex(rt, c, EVMPM_CLOSE_CLIENT_DONE | EVMPM_CLOSE_NO_LINGER));
        line_reply(fd, "BYE\n");
        /* Still the handler's to decide. */
        CHECK_OK(evmpm_close_ex(rt, c, 0));
        CHECK_EQ(evmpm_close_ex(rt, c, 0), EVMPM_ESTATE);
    } else {
        return 0;
    }
    return 1;
}

/* Connects to `port`, sends `command`, reads the server's "BYE". */
static int bye_after(int port, const char *command) {
    int fd = connect_loopback(port);
    send_str(fd, command);
    EXPECT_LINE(fd, "BYE");
    return fd;
}

/* Waits (bounded) for the client's next event and reads one byte: what
 * recv returns, 0 at the end of the stream, -1 with errno on a reset. */
static ssize_t next_byte(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    char byte;
    CHECK_EQ(poll(&p, 1, 5000 * harness_slowdown()), 1);
    return recv(fd, &byte, 1, 0);
}

static void close_without_lingering(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *plain, *nolinger;
    int a, b, c;
    srv_config(&s, &cfg);
    /* A lingering close would hold the descriptor until the client closes
     * its side (or for 30 s). */
    cfg.linger_timeout_ms = 30000;
    s.command = close_command;
    srv_create(&s, &cfg);
    plain = srv_listen_flags(&s, 0, 0);
    nolinger = srv_listen_flags(&s, EVMPM_LISTEN_NO_LINGER, 0);
    srv_start(&s);
    a = bye_after(plain->port, "NOLINGER\n");
    CHECK(wait_closed(a, 5000));
    /* Closed for good while the client still holds its end. */
    WAIT_UNTIL(srv_stats(&s).closed == 1, 5000);
    CHECK_EQ(srv_stats(&s).conns_lingering, 0);
    /* A plain close on the same listener lingers ... */
    b = bye_after(plain->port, "QUIT\n");
    CHECK(wait_closed(b, 5000));
    WAIT_UNTIL(srv_stats(&s).conns_lingering == 1, 5000);
    /* ... and on a listener with EVMPM_LISTEN_NO_LINGER it does not. */
    c = bye_after(nolinger->port, "QUIT\n");
    CHECK(wait_closed(c, 5000));
    WAIT_UNTIL(srv_stats(&s).closed == 2, 5000);
    CHECK_EQ(srv_stats(&s).conns_lingering, 1);
    close(b);
    WAIT_UNTIL(srv_stats(&s).closed == 3, 5000);
    CHECK_EQ(atomic_load(&s.closes), 3);
    close(a);
    close(c);
    CHECK_OK(srv_stop(&s, 1000));
}

/* A client done sending is closed at once; one that sent more after its
 * last request still gets the lingering close, which drains what it sent
 * so that it sees the end of the stream, not a reset. */
static void close_when_the_client_is_done(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    ssize_t n;
    int a, b;
    srv_config(&s, &cfg);
    cfg.linger_timeout_ms = 30000;
    s.command = close_command;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 0);
    srv_start(&s);
    a = bye_after(l->port, "DONE\n");
    CHECK(wait_closed(a, 5000));
    /* Closed for good while the client still holds its end. */
    WAIT_UNTIL(srv_stats(&s).closed == 1, 5000);
    CHECK_EQ(srv_stats(&s).conns_lingering, 0);

    b = bye_after(l->port, "DONEMORE\n");
    send_str(b, "MORE\n");
    if ((n = next_byte(b)) != 0)
        harness_fail(__FILE__, __LINE__, "recv after a close with input waiting returned %zd (%s)",
                     n, n < 0 ? strerror(errno) : "a byte");
    WAIT_UNTIL(srv_stats(&s).conns_lingering == 1, 5000);
    CHECK_EQ(srv_stats(&s).closed, 1);
    close(b);
    WAIT_UNTIL(srv_stats(&s).closed == 2, 5000);
    CHECK_EQ(srv_stats(&s).conns_lingering, 0);
    CHECK_EQ(atomic_load(&s.closes), 2);
    close(a);
    CHECK_OK(srv_stop(&s, 1000));
}

static void close_with_reset_flag(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    ssize_t n;
    int fd;
    srv_config(&s, &cfg);
    s.command = close_command;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 0);
    srv_start(&s);
    fd = connect_loopback(l->port);
    send_str(fd, "RESET\n");
    if ((n = next_byte(fd)) != -1 || errno != ECONNRESET)
        harness_fail(__FILE__, __LINE__, "recv after a reset returned %zd (%s)", n,
                     n < 0 ? strerror(errno) : "no error");
    WAIT_UNTIL(srv_stats(&s).closed == 1, 5000);
    CHECK_EQ(atomic_load(&s.closes), 1);
    close(fd);
    CHECK_OK(srv_stop(&s, 1000));
}

static void close_ex_bad_flags(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    evmpm_conn c;
    int fd, i;
    srv_config(&s, &cfg);
    s.command = close_command;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 0);
    srv_start(&s);
    fd = connect_loopback(l->port);
    ping_fd(fd);
    c = (evmpm_conn)atomic_load(&s.last_conn);
    /* Not held by the host: parked. */
    WAIT_UNTIL(srv_stats(&s).conns_keepalive == 1, 5000);
    CHECK_EQ(evmpm_close_ex(s.rt, c, 0), EVMPM_ESTATE);
    CHECK_EQ(evmpm_close_ex(s.rt, c, 3), EVMPM_EINVAL);
    CHECK_EQ(evmpm_close_ex(NULL, c, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_close_ex(s.rt, 0, 0), EVMPM_ESTALE);
    send_str(fd, "BADFLAGS\n");
    EXPECT_LINE(fd, "BYE");
    CHECK(wait_closed(fd, 5000));
    for (i = 0; i < 4; i++)
        CHECK_EQ(atomic_load(&bad_flag_rc[i]), EVMPM_EINVAL);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(evmpm_close_ex(s.rt, c, 0), EVMPM_ESTALE);
    close(fd);
    CHECK_OK(srv_stop(&s, 1000));
}

/* ---- which thread runs the close callback ------------------------------------ */

static int refuse_first(struct srv *s, struct lis *l, evmpm_runtime *rt, evmpm_conn c, int fd,
                        const evmpm_conn_info *info, struct conn *st) {
    (void)s, (void)l, (void)rt, (void)c, (void)fd, (void)info;
    return st->rec == 0 ? EVMPM_ACCEPT_REFUSE : EVMPM_ACCEPT_CONTINUE;
}

static void close_on_worker_everywhere(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    struct lis *l, *forever;
    int refused, idle, parked, silent;
    srv_config(&s, &cfg);
    cfg.close_on_worker = 1;
    cfg.keepalive_timeout_ms = 100;
    s.accept = refuse_first;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 1);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    forever = srv_listen_ex(&s, &lc);
    srv_start(&s);
    /* Refused by the hook. */
    refused = connect_loopback(l->port);
    CHECK(wait_closed(refused, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(srv_stats(&s).denied, 1);
    /* Keep-alive timeout. */
    idle = connect_loopback(l->port);
    ping_fd(idle);
    CHECK(wait_closed(idle, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(srv_stats(&s).keepalive_expired, 1);
    /* Closed by the stop: one parked, one that never sent a byte. */
    parked = connect_loopback(forever->port);
    ping_fd(parked);
    silent = connect_loopback(forever->port);
    WAIT_UNTIL(srv_stats(&s).connections == 2, 5000);
    CHECK_OK(srv_stop(&s, 5000));
    CHECK_EQ(atomic_load(&s.closes), 4);
    CHECK_EQ(atomic_load(&s.close_on[ON_WORKER]), 4);
    CHECK_EQ(atomic_load(&s.close_on[ON_EVENT]), 0);
    CHECK_EQ(atomic_load(&s.close_on[ON_OTHER]), 0);
    CHECK(wait_closed(parked, 5000));
    CHECK(wait_closed(silent, 5000));
    close(refused);
    close(idle);
    close(parked);
    close(silent);
}

/* Without close_on_worker (today's behaviour, the default): what the event
 * thread closes, it closes itself, callback included. */
static void close_on_event_thread_by_default(void) {
    struct srv s;
    evmpm_config cfg;
    struct lis *l;
    int refused, idle;
    srv_config(&s, &cfg);
    cfg.keepalive_timeout_ms = 100;
    s.accept = refuse_first;
    srv_create(&s, &cfg);
    l = srv_listen_flags(&s, 0, 1);
    srv_start(&s);
    refused = connect_loopback(l->port);
    CHECK(wait_closed(refused, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    idle = connect_loopback(l->port);
    ping_fd(idle);
    CHECK(wait_closed(idle, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(srv_stats(&s).keepalive_expired, 1);
    CHECK_EQ(atomic_load(&s.close_on[ON_EVENT]), 2);
    CHECK_EQ(atomic_load(&s.close_on[ON_WORKER]), 0);
    close(refused);
    close(idle);
    CHECK_OK(srv_stop(&s, 1000));
}

/* ---- errors of the new calls ------------------------------------------------- */

static void listener_config_init_errors(void) {
    union {
        evmpm_listener_config lc;
        unsigned char bytes[sizeof(evmpm_listener_config) + 16];
    } u;
    size_t sizes[] = {0, 4, sizeof(evmpm_listener_config) - 1};
    size_t i, k;
    CHECK_EQ(evmpm_listener_config_init(NULL, sizeof u.lc), EVMPM_EINVAL);
    for (k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        memset(&u, 0xab, sizeof u);
        CHECK_EQ(evmpm_listener_config_init(&u.lc, sizes[k]), EVMPM_EVERSION);
        for (i = 0; i < sizeof u; i++)
            CHECK_EQ(u.bytes[i], 0xab);
    }
    memset(&u, 0xab, sizeof u);
    CHECK_EQ(evmpm_listener_config_init(&u.lc, (size_t)UINT32_MAX + 1), EVMPM_EVERSION);
    CHECK_EQ(u.bytes[0], 0xab);
    /* The defaults. */
    CHECK_OK(evmpm_listener_config_init(&u.lc, sizeof u.lc));
    CHECK_EQ(u.lc.size, sizeof u.lc);
    CHECK_EQ(u.lc.flags, 0);
    CHECK(u.lc.user_data == NULL);
    CHECK(u.lc.on_accept == NULL);
    CHECK(u.lc.request_ready == NULL);
    CHECK_EQ(u.lc.read_timeout_ms, 0);
    CHECK_EQ(u.lc.keepalive_timeout_ms, 0);
    CHECK_EQ(u.lc.write_timeout_ms, 0);
    CHECK_EQ(u.lc.header_timeout_ms, 0);
    CHECK_EQ(u.bytes[sizeof u.lc], 0xab);
    /* A newer header's larger struct: its tail zeroed. */
    memset(&u, 0xab, sizeof u);
    CHECK_OK(evmpm_listener_config_init(&u.lc, sizeof u));
    CHECK_EQ(u.lc.size, sizeof u);
    for (i = sizeof u.lc; i < sizeof u; i++)
        CHECK_EQ(u.bytes[i], 0);
}

static void register_listener_ex_errors(void) {
    struct srv s;
    evmpm_config cfg;
    union {
        evmpm_listener_config lc;
        unsigned char bytes[sizeof(evmpm_listener_config) + 16];
    } u;
    evmpm_listener_config lc;
    int fd, port, other, pipefd[2], unbound;
    srv_config(&s, &cfg);
    srv_create(&s, &cfg);
    fd = listen_loopback(16, &port);
    other = listen_loopback(16, &port);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, NULL), EVMPM_EINVAL);
    CHECK_EQ(evmpm_register_listener_ex(NULL, fd, &lc), EVMPM_EINVAL);
    /* Sizes this library does not know. */
    lc.size = 0;
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &lc), EVMPM_EVERSION);
    lc.size = 4;
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &lc), EVMPM_EVERSION);
    lc.size = sizeof lc - 1;
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &lc), EVMPM_EVERSION);
    /* A newer header's struct that sets what this library lacks. */
    CHECK_OK(evmpm_listener_config_init(&u.lc, sizeof u));
    u.bytes[sizeof u - 1] = 1;
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &u.lc), EVMPM_EVERSION);
    /* Unknown flags. */
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.flags = 16;
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &lc), EVMPM_EINVAL);
    lc.flags = EVMPM_LISTEN_NONBLOCK | 0x80000000u;
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &lc), EVMPM_EINVAL);
    /* Not a listener. */
    lc.flags = 0;
    CHECK(pipe(pipefd) == 0);
    CHECK_EQ(evmpm_register_listener_ex(s.rt, pipefd[0], &lc), EVMPM_ENOTSOCK);
    CHECK_EQ(evmpm_register_listener_ex(s.rt, -1, &lc), EVMPM_ENOTSOCK);
    unbound = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(unbound >= 0);
    CHECK_EQ(evmpm_register_listener_ex(s.rt, unbound, &lc), EVMPM_ENOTLISTENER);
    /* The same descriptor twice, either way. */
    CHECK_OK(evmpm_register_listener_ex(s.rt, fd, &lc));
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fd, &lc), EVMPM_EEXIST);
    CHECK_EQ(evmpm_register_listener(s.rt, fd), EVMPM_EEXIST);
    CHECK_OK(evmpm_register_listener(s.rt, other));
    CHECK_EQ(evmpm_register_listener_ex(s.rt, other, &lc), EVMPM_EEXIST);
    /* A newer header's struct with a zero tail is fine. */
    {
        int third = listen_loopback(16, &port);
        CHECK_OK(evmpm_listener_config_init(&u.lc, sizeof u));
        CHECK_OK(evmpm_register_listener_ex(s.rt, third, &u.lc));
        srv_start(&s);
        CHECK_OK(srv_stop(&s, 1000));
        close(third);
    }
    close(fd);
    close(other);
    close(pipefd[0]);
    close(pipefd[1]);
    close(unbound);
}

static void register_after_stop_and_limit(void) {
    struct srv s;
    evmpm_config cfg;
    evmpm_listener_config lc;
    static int fds[EVMPM_MAX_LISTENERS + 1];
    int i, port;
    srv_config(&s, &cfg);
    srv_create(&s, &cfg);
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    for (i = 0; i <= EVMPM_MAX_LISTENERS; i++)
        fds[i] = listen_loopback(4, &port);
    for (i = 0; i < EVMPM_MAX_LISTENERS; i++)
        CHECK_OK(i % 2 ? evmpm_register_listener(s.rt, fds[i])
                       : evmpm_register_listener_ex(s.rt, fds[i], &lc));
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fds[EVMPM_MAX_LISTENERS], &lc), EVMPM_ELIMIT);
    CHECK_EQ(evmpm_register_listener(s.rt, fds[EVMPM_MAX_LISTENERS]), EVMPM_ELIMIT);
    /* A registered one is still "already there". */
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fds[0], &lc), EVMPM_EEXIST);
    srv_start(&s);
    /* The last registered one accepts. */
    {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        int fd;
        CHECK(getsockname(fds[EVMPM_MAX_LISTENERS - 1], (struct sockaddr *)&a, &len) == 0);
        fd = connect_loopback(ntohs(a.sin_port));
        ping_fd(fd);
        close(fd);
    }
    CHECK_OK(evmpm_stop(s.rt, 1000));
    CHECK_EQ(evmpm_register_listener_ex(s.rt, fds[EVMPM_MAX_LISTENERS], &lc), EVMPM_ESTOPPED);
    CHECK_OK(evmpm_destroy(s.rt));
    for (i = 0; i <= EVMPM_MAX_LISTENERS; i++)
        close(fds[i]);
    pthread_mutex_destroy(&s.lock);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"info_names_listener_and_addresses", info_names_listener_and_addresses},
        {"info_sizes_and_errors", info_sizes_and_errors},
        {"hook_refuses_by_rule", hook_refuses_by_rule},
        {"hook_unknown_verdict_refuses", hook_unknown_verdict_refuses},
        {"hook_sets_user_and_socket_options", hook_sets_user_and_socket_options},
        {"per_listener_request_ready", per_listener_request_ready},
        {"nonblock_flag", nonblock_flag},
        {"server_first", server_first},
        {"listener_timeouts", listener_timeouts},
        {"conn_set_timeouts", conn_set_timeouts},
        {"set_timeouts_during_a_wait", set_timeouts_during_a_wait},
        {"config_timeout_none", config_timeout_none},
        {"close_without_lingering", close_without_lingering},
        {"close_with_reset_flag", close_with_reset_flag},
        {"close_when_the_client_is_done", close_when_the_client_is_done},
        {"close_ex_bad_flags", close_ex_bad_flags},
        {"close_on_worker_everywhere", close_on_worker_everywhere},
        {"close_on_event_thread_by_default", close_on_event_thread_by_default},
        {"listener_config_init_errors", listener_config_init_errors},
        {"register_listener_ex_errors", register_listener_ex_errors},
        {"register_after_stop_and_limit", register_after_stop_and_limit},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

/* evmpm_notify: a host thread that does not hold a connection has its
 * handler run (EVMPM_WAKE_NOTIFIED) to write to it, park it again or close
 * it. Parked and new connections, notifies that come while the connection
 * is held elsewhere (its handler runs, blocks, suspends, writes, a request
 * check waits), broadcasts from several threads, a race against requests,
 * kicks, the accept hook, and the errors.
 *
 * The server here keeps, per connection, a sequence number a notifier
 * bumps before it calls evmpm_notify and the highest value a NOTIFIED run
 * saw: every notify must be followed by a run that starts after it, so at
 * the end the two are equal. Each NOTIFIED run writes one line "NOTE <seen>"
 * the client counts against the runs. */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 256

struct nsrv;

/* A connection's state, the test's (static: notifier threads read it after
 * the connection is gone), and its user pointer, set by the accept hook:
 * connection i is the i-th accepted. */
struct nconn {
    struct nsrv *s;
    int index;
    _Atomic evmpm_conn conn;
    atomic_ulong bumped;       /* bumped by a notifier before each notify */
    atomic_ulong seen;         /* the highest `bumped` a NOTIFIED run read */
    atomic_long notified_runs;
    atomic_long runs;
    atomic_int running;        /* runs in progress: never more than one */
    atomic_int first_reason;
    atomic_int kick;           /* the next NOTIFIED run closes */
    atomic_int closed;
    /* Touched only by the connection's runs, never two at once. */
    struct line_reader in;
};

struct nsrv {
    evmpm_runtime *rt;
    int listen_fd;
    int port;
    struct nconn conns[MAX_CONNS];
    atomic_int accepted;
    atomic_long in_handler;
    atomic_long reasons[8];
    atomic_long closes;
    atomic_long close_not_stale; /* evmpm_notify in the close callback did not refuse */
    atomic_int holding;          /* HOLD runs that began */
    atomic_int release;          /* ends HOLD */
    _Atomic evmpm_conn suspended;
    /* Optional, per test: runs in the accept hook after the connection is
     * bound to its state. */
    void (*on_accept)(struct nsrv *s, evmpm_runtime *rt, struct nconn *st);
};

static struct nsrv srv; /* one per process: each case runs alone */

static void park(evmpm_runtime *rt, evmpm_conn c, struct nconn *st) {
    uint32_t flags = line_reader_has_line(&st->in) ? EVMPM_PARK_BUFFERED : 0;
    CHECK_OK(evmpm_park_keepalive(rt, c, flags));
}

static void release_static(void *arg) { (void)arg; }

/* A response larger than any socket buffer, shared by every BIG. */
enum { BIG_BYTES = 4 << 20 };
static char big_body[BIG_BYTES];

static void notified(struct nsrv *s, evmpm_runtime *rt, evmpm_conn c, int fd, struct nconn *st) {
    unsigned long seq = atomic_load(&st->bumped);
    unsigned long seen = atomic_load(&st->seen);
    char out[64];
    (void)s;
    while (seq > seen && !atomic_compare_exchange_weak(&st->seen, &seen, seq)) {
    }
    atomic_fetch_add(&st->notified_runs, 1);
    if (atomic_load(&st->kick)) {
        /* Kicked: closed without a word. */
        CHECK_OK(evmpm_close(rt, c));
        return;
    }
    snprintf(out, sizeof out, "NOTE %lu\n", seq);
    line_reply(fd, out);
    park(rt, c, st);
}

static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    struct nsrv *s = user_data;
    struct nconn *st = NULL;
    char line[128];
    int zero = 0;
    CHECK_OK(evmpm_conn_get_user(rt, c, (void **)&st));
    CHECK(st != NULL && st->s == s);
    CHECK(atomic_load(&st->conn) == c);
    if (atomic_fetch_add(&st->running, 1) != 0)
        harness_fail(__FILE__, __LINE__, "two runs at once for conn %d", st->index);
    atomic_fetch_add(&s->in_handler, 1);
    atomic_fetch_add(&st->runs, 1);
    atomic_compare_exchange_strong(&st->first_reason, &zero, reason);
    CHECK(reason >= EVMPM_WAKE_NEW && reason <= EVMPM_WAKE_ACCEPTED);
    atomic_fetch_add(&s->reasons[reason], 1);
    if (reason == EVMPM_WAKE_NOTIFIED) {
        notified(s, rt, c, fd, st);
        goto out;
    }
    if (reason == EVMPM_WAKE_ACCEPTED) {
        line_reply(fd, "HELLO\n");
        park(rt, c, st);
        goto out;
    }
    if (!line_reader_next(fd, &st->in, line, sizeof line, reason)) {
        CHECK_OK(evmpm_close(rt, c));
        goto out;
    }
    if (strcmp(line, "PING") == 0) {
        line_reply(fd, "PONG\n");
        park(rt, c, st);
    } else if (strcmp(line, "SELF") == 0) {
        /* A notify from the connection's own handler: it runs after this
         * run has parked. */
        atomic_fetch_add(&st->bumped, 1);
        CHECK_OK(evmpm_notify(rt, c));
        line_reply(fd, "SELF\n");
        park(rt, c, st);
    } else if (strcmp(line, "HOLD") == 0) {
        int64_t deadline = now_ms() + 5000 * harness_slowdown();
        atomic_fetch_add(&s->holding, 1);
        while (!atomic_load(&s->release)) {
            if (now_ms() > deadline)
                harness_fail(__FILE__, __LINE__, "HOLD never released");
            sleep_ms(1);
        }
        line_reply(fd, "HELD\n");
        park(rt, c, st);
    } else if (strcmp(line, "KICKSELF") == 0) {
        /* Notified, then closed: the close wins, nothing runs after. */
        CHECK_OK(evmpm_notify(rt, c));
        CHECK_OK(evmpm_close(rt, c));
    } else if (strcmp(line, "BIG") == 0) {
        CHECK_OK(evmpm_complete_write(rt, c, big_body, sizeof big_body, release_static, NULL,
                                      EVMPM_WRITE_KEEPALIVE));
    } else if (strcmp(line, "SUSPEND") == 0) {
        CHECK_OK(evmpm_suspend(rt, c));
        atomic_store(&s->suspended, c);
    } else {
        line_reply(fd, "ERR\n");
        park(rt, c, st);
    }
out:
    atomic_fetch_sub(&s->in_handler, 1);
    atomic_fetch_sub(&st->running, 1);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, void *conn_user) {
    struct nsrv *s = user_data;
    struct nconn *st = conn_user;
    int rc = evmpm_notify(rt, c);
    (void)fd;
    /* From the moment the close begins nothing will run: refused. */
    if (rc != EVMPM_ESTALE && rc != EVMPM_ESTOPPED)
        atomic_fetch_add(&s->close_not_stale, 1);
    CHECK(st != NULL);
    CHECK_EQ(atomic_fetch_add(&st->closed, 1), 0);
    atomic_fetch_add(&s->closes, 1);
}

/* Binds each accepted connection to its state, by accept order. */
static int bind_conn(void *listener_user, evmpm_runtime *rt, evmpm_conn c, int fd,
                     const evmpm_conn_info *info) {
    struct nsrv *s = listener_user;
    int i = atomic_fetch_add(&s->accepted, 1);
    struct nconn *st;
    (void)fd, (void)info;
    CHECK(i < MAX_CONNS);
    st = &s->conns[i];
    atomic_store(&st->conn, c);
    CHECK_OK(evmpm_conn_set_user(rt, c, st));
    if (s->on_accept != NULL)
        s->on_accept(s, rt, st);
    return EVMPM_ACCEPT_CONTINUE;
}

static void nsrv_config(evmpm_config *cfg) {
    int i;
    memset(&srv, 0, sizeof srv);
    for (i = 0; i < MAX_CONNS; i++) {
        srv.conns[i].s = &srv;
        srv.conns[i].index = i;
    }
    CHECK_OK(evmpm_config_init(cfg, sizeof *cfg));
    cfg->worker_threads = 8;
    /* Clients here may idle long (valgrind runs one thread at a time):
     * no case wants the keep-alive timeout. */
    cfg->keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    cfg->handler = handler;
    cfg->on_close = on_close;
    cfg->user_data = &srv;
}

static void nsrv_start_flags(const evmpm_config *cfg, uint32_t flags) {
    evmpm_listener_config lc;
    srv.listen_fd = listen_loopback(1024, &srv.port);
    CHECK_OK(evmpm_create(cfg, &srv.rt));
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.flags = flags;
    lc.user_data = &srv;
    lc.on_accept = bind_conn;
    CHECK_OK(evmpm_register_listener_ex(srv.rt, srv.listen_fd, &lc));
    CHECK_OK(evmpm_start(srv.rt));
    harness_describe_runtime(srv.rt);
}

static void nsrv_start(const evmpm_config *cfg) { nsrv_start_flags(cfg, 0); }

static void nsrv_start_default(void) {
    evmpm_config cfg;
    nsrv_config(&cfg);
    nsrv_start(&cfg);
}

static evmpm_stats stats(void) {
    evmpm_stats st;
    CHECK_OK(evmpm_get_stats(srv.rt, &st, sizeof st));
    return st;
}

static int nsrv_stop(uint32_t timeout_ms) {
    int rc;
    watchdog_arm((int)timeout_ms + 5000, "evmpm_stop did not return within 5 s of its deadline");
    rc = evmpm_stop(srv.rt, timeout_ms);
    watchdog_disarm();
    harness_describe_runtime(NULL);
    watchdog_arm(5000, "evmpm_destroy did not return within 5 s");
    CHECK_OK(evmpm_destroy(srv.rt));
    watchdog_disarm();
    srv.rt = NULL;
    close(srv.listen_fd);
    CHECK_EQ(atomic_load(&srv.close_not_stale), 0);
    return rc;
}

/* Client i: connects and waits until the hook has bound it to conns[i]. */
static int client(int i) {
    int fd = connect_loopback(srv.port);
    WAIT_UNTIL(atomic_load(&srv.accepted) == i + 1, 5000);
    return fd;
}

/* Bumps connection i's sequence and notifies it; evmpm_notify's code. */
static int bump_and_notify(int i) {
    struct nconn *st = &srv.conns[i];
    atomic_fetch_add(&st->bumped, 1);
    return evmpm_notify(srv.rt, atomic_load(&st->conn));
}

/* Sends PING and reads up to its PONG; the NOTE lines before it are
 * counted into *notes, their numbers never going down from *last. */
static void ping_counting(int fd, long *notes, unsigned long *last) {
    char line[64];
    send_str(fd, "PING\n");
    for (;;) {
        recv_line(fd, line, sizeof line, 10000);
        if (strcmp(line, "PONG") == 0)
            return;
        if (strncmp(line, "NOTE ", 5) == 0) {
            unsigned long n = strtoul(line + 5, NULL, 10);
            if (n < *last)
                harness_fail(__FILE__, __LINE__, "NOTE %lu after NOTE %lu", n, *last);
            *last = n;
            ++*notes;
            continue;
        }
        harness_fail(__FILE__, __LINE__, "unexpected line \"%s\"", line);
    }
}

static void ping_quiet(int fd) {
    long notes = 0;
    unsigned long last = 0;
    ping_counting(fd, &notes, &last);
    CHECK_EQ(notes, 0);
}

/* Waits until no handler runs and none is queued. */
static void quiesce(void) {
    WAIT_UNTIL(atomic_load(&srv.in_handler) == 0 && stats().workers_busy == 0 &&
                   stats().conns_queued == 0 && stats().conns_in_handler == 0,
               5000);
}

/* ---- running a call on a host thread of the test's own ---------------------- */

struct on_thread_call {
    int (*fn)(int arg);
    int arg;
    int rc;
};

static void *on_thread_main(void *p) {
    struct on_thread_call *k = p;
    k->rc = k->fn(k->arg);
    return NULL;
}

/* fn(arg) on a new thread: neither a worker nor the event thread. */
static int on_thread(int (*fn)(int), int arg) {
    struct on_thread_call k;
    pthread_t t;
    k.fn = fn;
    k.arg = arg;
    k.rc = 1;
    CHECK(pthread_create(&t, NULL, on_thread_main, &k) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    return k.rc;
}

/* ---- cases ------------------------------------------------------------------ */

static void notify_parked_connection(void) {
    int fd, i;
    nsrv_start_default();
    fd = client(0);
    ping_quiet(fd);
    for (i = 1; i <= 3; i++) {
        char want[32];
        /* Parked, idle, nothing to read: the handler runs for the notify
         * and writes to the client, which sent nothing. */
        WAIT_UNTIL(stats().conns_keepalive == 1, 5000);
        CHECK_OK(on_thread(bump_and_notify, 0));
        snprintf(want, sizeof want, "NOTE %d", i);
        EXPECT_LINE(fd, want);
        /* Parked again: the next request is served as usual. */
        ping_quiet(fd);
    }
    quiesce();
    CHECK_EQ(atomic_load(&srv.reasons[EVMPM_WAKE_NOTIFIED]), 3);
    CHECK_EQ(atomic_load(&srv.reasons[EVMPM_WAKE_READABLE]), 3);
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 3);
    CHECK_EQ(atomic_load(&srv.conns[0].seen), 3);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

static void notify_new_connection(void) {
    int fd;
    nsrv_start_default();
    /* Waiting for its first request. */
    fd = client(0);
    WAIT_UNTIL(stats().conns_reading == 1, 5000);
    CHECK_OK(bump_and_notify(0));
    EXPECT_LINE(fd, "NOTE 1");
    CHECK_EQ(atomic_load(&srv.conns[0].first_reason), EVMPM_WAKE_NOTIFIED);
    ping_quiet(fd);
    CHECK_EQ(atomic_load(&srv.reasons[EVMPM_WAKE_NEW]), 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

static void notify_from_own_handler(void) {
    int fd;
    nsrv_start_default();
    fd = client(0);
    ping_quiet(fd);
    send_str(fd, "SELF\n");
    EXPECT_LINE(fd, "SELF");
    EXPECT_LINE(fd, "NOTE 1");
    ping_quiet(fd);
    quiesce();
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 1);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

static void notify_while_handler_blocks(void) {
    int fd, i;
    nsrv_start_default();
    fd = client(0);
    ping_quiet(fd);
    send_str(fd, "HOLD\n");
    WAIT_UNTIL(atomic_load(&srv.holding) == 1, 5000);
    /* Several, from another thread, while the handler blocks: none runs
     * now (never two runs at once), at least one after. */
    for (i = 0; i < 5; i++)
        CHECK_OK(on_thread(bump_and_notify, 0));
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 0);
    atomic_store(&srv.release, 1);
    EXPECT_LINE(fd, "HELD");
    EXPECT_LINE(fd, "NOTE 5");
    quiesce();
    ping_quiet(fd);
    CHECK(atomic_load(&srv.conns[0].notified_runs) >= 1);
    CHECK_EQ(atomic_load(&srv.conns[0].seen), 5);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

static void notify_while_suspended(void) {
    int fd;
    evmpm_conn c;
    nsrv_start_default();
    fd = client(0);
    ping_quiet(fd);
    send_str(fd, "SUSPEND\n");
    WAIT_UNTIL(atomic_load(&srv.suspended) != 0 && stats().conns_suspended == 1 &&
                   atomic_load(&srv.in_handler) == 0,
               5000);
    c = atomic_load(&srv.suspended);
    CHECK_OK(bump_and_notify(0));
    /* The host holds it: the run waits until it is parked again, here by
     * a thread that is not its handler. */
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 0);
    CHECK_OK(evmpm_park_keepalive(srv.rt, c, 0));
    EXPECT_LINE(fd, "NOTE 1");
    ping_quiet(fd);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* The response is still being sent by the event thread when the notify
 * comes: the run follows once it is sent and the connection parked. */
static void notify_during_write_completion(void) {
    int fd;
    size_t i;
    for (i = 0; i < sizeof big_body; i++)
        big_body[i] = pattern_byte(i);
    nsrv_start_default();
    fd = connect_loopback_rcvbuf(srv.port, 8192);
    WAIT_UNTIL(atomic_load(&srv.accepted) == 1, 5000);
    ping_quiet(fd);
    send_str(fd, "BIG\n");
    WAIT_UNTIL(stats().conns_writing == 1 && atomic_load(&srv.in_handler) == 0, 5000);
    CHECK_OK(bump_and_notify(0));
    recv_pattern(fd, 0, sizeof big_body, 64 << 10, 0);
    EXPECT_LINE(fd, "NOTE 1");
    ping_quiet(fd);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* A request check waits for the rest of a request when the notify comes:
 * the run does not consume the partial request, which is served whole. */
static atomic_long check_calls;

static int line_check(void *user_data, evmpm_conn c, void *conn_user, const uint8_t *data,
                      size_t len) {
    (void)user_data, (void)c, (void)conn_user;
    atomic_fetch_add(&check_calls, 1);
    return memchr(data, '\n', len) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static void notify_during_incomplete_request(void) {
    evmpm_config cfg;
    int fd;
    nsrv_config(&cfg);
    cfg.request_ready = line_check;
    nsrv_start(&cfg);
    fd = client(0);
    ping_quiet(fd);
    send_str(fd, "PI");
    WAIT_UNTIL(atomic_load(&check_calls) == 2, 5000);
    WAIT_UNTIL(stats().conns_keepalive == 1, 5000);
    CHECK_OK(bump_and_notify(0));
    EXPECT_LINE(fd, "NOTE 1");
    send_str(fd, "NG\n");
    EXPECT_LINE(fd, "PONG");
    ping_quiet(fd);
    CHECK_EQ(stats().timed_out, 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* ---- broadcast ------------------------------------------------------------------ */

enum { BROADCAST_CLIENTS = 200, BROADCASTERS = 4 };

static atomic_int broadcast_go;

static void *broadcaster(void *arg) {
    int t = (int)(intptr_t)arg, i;
    while (!atomic_load(&broadcast_go))
        sched_yield();
    for (i = t; i < BROADCAST_CLIENTS; i += BROADCASTERS)
        CHECK_OK(bump_and_notify(i));
    return NULL;
}

static void broadcast(void) {
    static int fds[BROADCAST_CLIENTS];
    pthread_t threads[BROADCASTERS];
    int i;
    nsrv_start_default();
    for (i = 0; i < BROADCAST_CLIENTS; i++) {
        fds[i] = client(i);
        ping_quiet(fds[i]);
    }
    WAIT_UNTIL(stats().conns_keepalive == BROADCAST_CLIENTS, 5000);
    quiesce();
    for (i = 0; i < BROADCASTERS; i++)
        CHECK(pthread_create(&threads[i], NULL, broadcaster, (void *)(intptr_t)i) == 0);
    atomic_store(&broadcast_go, 1);
    for (i = 0; i < BROADCASTERS; i++)
        CHECK(pthread_join(threads[i], NULL) == 0);
    /* Every client gets its message ... */
    for (i = 0; i < BROADCAST_CLIENTS; i++)
        EXPECT_LINE(fds[i], "NOTE 1");
    /* ... from exactly one run, and nothing more: the next line each
     * receives answers its request. No worker is left busy. */
    quiesce();
    for (i = 0; i < BROADCAST_CLIENTS; i++) {
        CHECK_EQ(atomic_load(&srv.conns[i].notified_runs), 1);
        ping_quiet(fds[i]);
    }
    WAIT_UNTIL(stats().workers_busy == 0, 5000);
    CHECK_EQ(atomic_load(&srv.reasons[EVMPM_WAKE_NOTIFIED]), BROADCAST_CLIENTS);
    WAIT_UNTIL(stats().conns_keepalive == BROADCAST_CLIENTS, 5000);
    for (i = 0; i < BROADCAST_CLIENTS; i++)
        close(fds[i]);
    WAIT_UNTIL(atomic_load(&srv.closes) == BROADCAST_CLIENTS, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* ---- notifies racing requests ---------------------------------------------------- */

/* Connections below RACE_CHECKED have one notifier each, which notifies
 * again only once a run saw its number: no earlier notify is pending
 * then, so the run that sees it is that very notify's, and every notify
 * is checked, each within 5 s. The others are notified by every notifier
 * at random, several at once, and coalesce: there the last one is
 * checked, at the end. */
enum { RACE_CLIENTS = 16, RACE_CHECKED = 8, RACE_NOTIFIERS = 4, RACE_MS = 2000 };

static atomic_int race_stop_notifiers, race_stop_clients;
static atomic_long race_notifies;

struct race_client {
    int fd;
    long requests;
    long notes;
    unsigned long last;
    pthread_t thread;
};

static struct race_client race[RACE_CLIENTS];

static void *race_client_main(void *arg) {
    struct race_client *rc = arg;
    while (!atomic_load(&race_stop_clients) && rc->requests < 1000000) {
        ping_counting(rc->fd, &rc->notes, &rc->last);
        rc->requests++;
    }
    return NULL;
}

static void *race_notifier_main(void *arg) {
    int t = (int)(intptr_t)arg;
    unsigned seed = (unsigned)t * 2654435761u + 1;
    int64_t since[RACE_CHECKED] = {0};
    int64_t limit = 5000 * (int64_t)harness_slowdown();
    long k = 0;
    while (!atomic_load(&race_stop_notifiers) && k < 10000000) {
        int i;
        for (i = t; i < RACE_CHECKED; i += RACE_NOTIFIERS) {
            struct nconn *st = &srv.conns[i];
            if (atomic_load(&st->seen) != atomic_load(&st->bumped)) {
                if (now_ms() - since[i] > limit)
                    harness_fail(__FILE__, __LINE__, "conn %d: notify %lu never ran", i,
                                 atomic_load(&st->bumped));
                continue;
            }
            since[i] = now_ms();
            CHECK_OK(bump_and_notify(i));
            atomic_fetch_add(&race_notifies, 1);
        }
        i = RACE_CHECKED + (int)(rand_r(&seed) % (RACE_CLIENTS - RACE_CHECKED));
        CHECK_OK(bump_and_notify(i));
        atomic_fetch_add(&race_notifies, 1);
        /* Now and then a pause, so that runs also find it waiting. */
        if (++k % 64 == 0)
            sleep_ms(1);
        else if (k % 8 == 0)
            sched_yield();
    }
    return NULL;
}

static void notify_races_requests(void) {
    pthread_t notifiers[RACE_NOTIFIERS];
    long requests = 0, runs = 0;
    int i;
    nsrv_start_default();
    for (i = 0; i < RACE_CLIENTS; i++) {
        race[i].fd = client(i);
        ping_quiet(race[i].fd);
    }
    for (i = 0; i < RACE_CLIENTS; i++)
        CHECK(pthread_create(&race[i].thread, NULL, race_client_main, &race[i]) == 0);
    for (i = 0; i < RACE_NOTIFIERS; i++)
        CHECK(pthread_create(&notifiers[i], NULL, race_notifier_main, (void *)(intptr_t)i) ==
              0);
    watchdog_arm(RACE_MS + 20000, "notify race: stuck");
    sleep_ms(RACE_MS);
    atomic_store(&race_stop_notifiers, 1);
    for (i = 0; i < RACE_NOTIFIERS; i++)
        CHECK(pthread_join(notifiers[i], NULL) == 0);
    /* No notify lost: the last of each was followed by a run that started
     * after it and so saw its number. */
    for (i = 0; i < RACE_CLIENTS; i++)
        WAIT_UNTIL(atomic_load(&srv.conns[i].seen) == atomic_load(&srv.conns[i].bumped), 5000);
    atomic_store(&race_stop_clients, 1);
    for (i = 0; i < RACE_CLIENTS; i++)
        CHECK(pthread_join(race[i].thread, NULL) == 0);
    watchdog_disarm();
    /* Every run wrote one line, and each client got each line once: read
     * what came after its last answer, then one more request's answer
     * must come with nothing before it. */
    quiesce();
    for (i = 0; i < RACE_CLIENTS; i++) {
        struct race_client *rc = &race[i];
        long want;
        ping_counting(rc->fd, &rc->notes, &rc->last);
        quiesce();
        want = atomic_load(&srv.conns[i].notified_runs);
        while (rc->notes < want) {
            char line[64];
            recv_line(rc->fd, line, sizeof line, 5000);
            CHECK(strncmp(line, "NOTE ", 5) == 0);
            rc->notes++;
        }
        CHECK_EQ(rc->notes, want);
        ping_quiet(rc->fd);
        CHECK_EQ(atomic_load(&srv.conns[i].notified_runs), want);
        CHECK_EQ(rc->last, atomic_load(&srv.conns[i].bumped));
        requests += rc->requests;
        runs += want;
    }
    /* The last answer is sent before its worker is free. */
    WAIT_UNTIL(stats().workers_busy == 0, 5000);
    CHECK_EQ(atomic_load(&srv.closes), 0);
    printf("figure: %ld notifies, %ld notified runs, %ld requests in %d ms\n",
           atomic_load(&race_notifies), runs, requests, RACE_MS);
    for (i = 0; i < RACE_CLIENTS; i++)
        close(race[i].fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == RACE_CLIENTS, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* ---- kicks ------------------------------------------------------------------- */

static int kick(int i) {
    atomic_store(&srv.conns[i].kick, 1);
    return bump_and_notify(i);
}

static void kick_from_another_thread(void) {
    int fd, other;
    nsrv_start_default();
    fd = client(0);
    other = client(1);
    ping_quiet(fd);
    ping_quiet(other);
    CHECK_OK(on_thread(kick, 0));
    /* The run closes it: the client sees the end, and no message. */
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 1);
    CHECK_EQ(bump_and_notify(0), EVMPM_ESTALE);
    ping_quiet(other);
    close(fd);
    close(other);
    WAIT_UNTIL(atomic_load(&srv.closes) == 2, 5000);
    CHECK_OK(nsrv_stop(1000));
}

static void kick_from_own_handler(void) {
    int fd;
    nsrv_start_default();
    fd = client(0);
    ping_quiet(fd);
    send_str(fd, "KICKSELF\n");
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    /* The notify before the close had nothing left to run. */
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 0);
    CHECK_EQ(bump_and_notify(0), EVMPM_ESTALE);
    close(fd);
    CHECK_OK(nsrv_stop(1000));
}

/* ---- the accept hook ---------------------------------------------------------- */

static void notify_in_hook(struct nsrv *s, evmpm_runtime *rt, struct nconn *st) {
    (void)s;
    atomic_fetch_add(&st->bumped, 1);
    CHECK_OK(evmpm_notify(rt, atomic_load(&st->conn)));
}

static void notify_from_accept_hook(void) {
    evmpm_config cfg;
    int fd;
    nsrv_config(&cfg);
    srv.on_accept = notify_in_hook;
    nsrv_start(&cfg);
    fd = client(0);
    /* Before the client sends anything. */
    EXPECT_LINE(fd, "NOTE 1");
    CHECK_EQ(atomic_load(&srv.conns[0].first_reason), EVMPM_WAKE_NOTIFIED);
    ping_quiet(fd);
    ping_quiet(fd);
    CHECK_EQ(atomic_load(&srv.reasons[EVMPM_WAKE_NEW]), 0);
    CHECK_EQ(atomic_load(&srv.reasons[EVMPM_WAKE_READABLE]), 2);
    CHECK_EQ(stats().refused, 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* The same, with the hook waiting a little for the notified run to end,
 * as when the event thread is preempted right after the hook: a run that
 * could start at once would park a connection the event thread had not
 * finished admitting. (The hook waits here, which a real hook must not;
 * it stands in for the preemption.) The run must come after the hook. */
static void notify_in_hook_then_wait(struct nsrv *s, evmpm_runtime *rt, struct nconn *st) {
    int64_t deadline = now_ms() + 300 * harness_slowdown();
    evmpm_stats now;
    notify_in_hook(s, rt, st);
    for (;;) {
        CHECK_OK(evmpm_get_stats(rt, &now, sizeof now));
        if (atomic_load(&st->notified_runs) == 1 && atomic_load(&st->running) == 0 &&
            (now.conns_keepalive == 1 || atomic_load(&s->closes) > 0))
            break;
        if (now_ms() > deadline)
            break; /* the run waits for the hook */
        sleep_ms(1);
    }
}

static void notified_run_ends_before_hook_returns(void) {
    evmpm_config cfg;
    int fd;
    nsrv_config(&cfg);
    srv.on_accept = notify_in_hook_then_wait;
    nsrv_start(&cfg);
    fd = client(0);
    EXPECT_LINE(fd, "NOTE 1");
    ping_quiet(fd);
    CHECK_EQ(atomic_load(&srv.closes), 0);
    CHECK_EQ(stats().refused, 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* On a listener whose server speaks first, the first run is the
 * EVMPM_WAKE_ACCEPTED one, even when the hook notified: then the notified
 * run. */
static void notify_from_hook_when_server_speaks_first(void) {
    evmpm_config cfg;
    int fd;
    nsrv_config(&cfg);
    srv.on_accept = notify_in_hook;
    nsrv_start_flags(&cfg, EVMPM_LISTEN_SERVER_FIRST);
    fd = client(0);
    EXPECT_LINE(fd, "HELLO");
    EXPECT_LINE(fd, "NOTE 1");
    CHECK_EQ(atomic_load(&srv.conns[0].first_reason), EVMPM_WAKE_ACCEPTED);
    ping_quiet(fd);
    CHECK_EQ(stats().refused, 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_OK(nsrv_stop(1000));
}

/* ---- errors ------------------------------------------------------------------ */

static void notify_errors(void) {
    evmpm_config cfg;
    int fd;
    evmpm_conn c;
    nsrv_config(&cfg);
    cfg.connection_limit = 1; /* the second client takes the first's slot */
    nsrv_start(&cfg);
    fd = client(0);
    ping_quiet(fd);
    c = atomic_load(&srv.conns[0].conn);
    CHECK_EQ(evmpm_notify(NULL, c), EVMPM_EINVAL);
    CHECK_EQ(evmpm_notify(srv.rt, 0), EVMPM_ESTALE);
    close(fd);
    /* Closed: refused, in the close callback too (counted there). */
    WAIT_UNTIL(atomic_load(&srv.closes) == 1, 5000);
    CHECK_EQ(evmpm_notify(srv.rt, c), EVMPM_ESTALE);
    fd = client(1);
    ping_quiet(fd);
    /* A handle of this runtime's for another connection in the same slot
     * is not the old one. */
    CHECK_EQ(evmpm_notify(srv.rt, c), EVMPM_ESTALE);
    watchdog_arm(6000, "evmpm_stop did not return");
    CHECK_OK(evmpm_stop(srv.rt, 1000));
    watchdog_disarm();
    CHECK_EQ(evmpm_notify(srv.rt, atomic_load(&srv.conns[1].conn)), EVMPM_ESTOPPED);
    harness_describe_runtime(NULL);
    CHECK_OK(evmpm_destroy(srv.rt));
    CHECK_EQ(atomic_load(&srv.close_not_stale), 0);
    CHECK_EQ(atomic_load(&srv.conns[0].notified_runs), 0);
    close(fd);
    close(srv.listen_fd);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"notify_parked_connection", notify_parked_connection},
        {"notify_new_connection", notify_new_connection},
        {"notify_from_own_handler", notify_from_own_handler},
        {"notify_while_handler_blocks", notify_while_handler_blocks},
        {"notify_while_suspended", notify_while_suspended},
        {"notify_during_write_completion", notify_during_write_completion},
        {"notify_during_incomplete_request", notify_during_incomplete_request},
        {"broadcast", broadcast},
        {"notify_races_requests", notify_races_requests},
        {"kick_from_another_thread", kick_from_another_thread},
        {"kick_from_own_handler", kick_from_own_handler},
        {"notify_from_accept_hook", notify_from_accept_hook},
        {"notified_run_ends_before_hook_returns", notified_run_ends_before_hook_returns},
        {"notify_from_hook_when_server_speaks_first", notify_from_hook_when_server_speaks_first},
        {"notify_errors", notify_errors},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

/* The promises include/evmpm.h makes since 0.2.0, one case each, as the
 * header words them:
 *
 * - evmpm_stop and evmpm_destroy return EVMPM_ETHREAD inside any callback
 *   of the runtime, also one a host thread runs (a close callback run by its
 *   evmpm_close, a release run by its evmpm_complete_write), and the
 *   runtime carries on;
 * - from the moment a connection's close callback starts, every call that
 *   takes its handle returns EVMPM_ESTALE, in the callback and after it,
 *   while the runtime still lingers on the socket;
 * - a handle belongs to its runtime: another runtime refuses it and its own
 *   connection in the same slot is untouched, also once the first runtime
 *   is gone;
 * - a forced stop racing host threads that hand suspended connections back
 *   still closes every connection, once;
 * - request_ready's unknown verdicts, a listener registered from a handler,
 *   the close-then-release order of an abandoned write, stats.closed
 *   lagging a lingering close, and evmpm_get_stats writing exactly the size
 *   it is given. */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- a thread of the host's own ------------------------------------------ */

/* Runs fn(arg) on a new thread, neither a worker nor the event thread, and
 * joins it; a call that hangs (a stop waiting for itself) fails the case. */
static void on_host_thread(void *(*fn)(void *), void *arg, const char *what) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fn, arg) == 0);
    watchdog_arm(10000, what);
    CHECK(pthread_join(t, NULL) == 0);
    watchdog_disarm();
}

/* ---- 1. stop and destroy inside a callback a host thread runs ------------ */

/* What a callback did when it tried to stop and free its own runtime. */
struct lifecycle_attempt {
    struct line_server *s;
    atomic_ullong conn;    /* the connection the host thread ends */
    atomic_int ran;        /* the callback ran ... */
    pthread_t ran_on;      /* ... on this thread */
    atomic_int stop_rc, destroy_rc;
    pthread_t host;        /* the host thread */
    int host_rc;           /* what its evmpm_close/complete_write returned */
    atomic_int ran_before_host_call_returned;
};

static struct lifecycle_attempt attempt;

static void try_stop_and_destroy(void) {
    attempt.ran_on = pthread_self();
    atomic_store(&attempt.stop_rc, evmpm_stop(attempt.s->rt, 0));
    atomic_store(&attempt.destroy_rc, evmpm_destroy(attempt.s->rt));
    atomic_store(&attempt.ran, 1);
}

static void stop_destroy_close_hook(struct line_server *s, evmpm_conn c, int fd) {
    (void)s;
    (void)fd;
    if (c == (evmpm_conn)atomic_load(&attempt.conn))
        try_stop_and_destroy();
}

static void *host_closes(void *arg) {
    (void)arg;
    attempt.host = pthread_self();
    attempt.host_rc = evmpm_close(attempt.s->rt, (evmpm_conn)atomic_load(&attempt.conn));
    atomic_store(&attempt.ran_before_host_call_returned, atomic_load(&attempt.ran));
    return NULL;
}

/* The callback ran on the host thread, inside its call, and its stop and
 * destroy were refused. */
static void expect_refused_on_host_thread(void) {
    printf("in the callback: evmpm_stop %d, evmpm_destroy %d; the host's call %d\n",
           atomic_load(&attempt.stop_rc), atomic_load(&attempt.destroy_rc), attempt.host_rc);
    fflush(stdout); /* a failed check exits at once */
    CHECK(atomic_load(&attempt.ran));
    CHECK(atomic_load(&attempt.ran_before_host_call_returned));
    CHECK(pthread_equal(attempt.ran_on, attempt.host));
    CHECK_EQ(atomic_load(&attempt.stop_rc), EVMPM_ETHREAD);
    CHECK_EQ(atomic_load(&attempt.destroy_rc), EVMPM_ETHREAD);
    CHECK_EQ(attempt.host_rc, EVMPM_OK);
}

/* The refused stop and destroy left a runtime that serves, then stops from
 * the main thread as usual. */
static void expect_still_serving(struct line_server *s) {
    int other;
    other = line_client(s);
    ping(other);
    CHECK_EQ(line_server_stats(s).accepted, 2);
    CHECK_EQ(line_server_stats(s).accepting_paused, 0);
    close(other);
    WAIT_UNTIL(line_server_stats(s).connections == 0, 5000);
    CHECK_EQ(line_server_stop(s, 1000), EVMPM_OK);
    CHECK_EQ(atomic_load(&s->double_closes), 0);
}

static void stop_and_destroy_refused_in_close_callback_on_host_thread(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    line_server_config(&s, &cfg);
    s.close_hook = stop_destroy_close_hook;
    line_server_start(&s, &cfg);
    attempt.s = &s;
    fd = line_client(&s);
    atomic_store(&attempt.conn, line_server_suspend_client(&s, fd));
    /* evmpm_close of a suspended connection runs the close callback on the
     * calling thread, which is the host's. */
    on_host_thread(host_closes, NULL, "evmpm_close on a host thread did not return");
    expect_refused_on_host_thread();
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK(wait_closed(fd, 5000));
    close(fd);
    expect_still_serving(&s);
}

static const char written[] = "WRITTEN\n";

static void stop_destroy_release(void *arg) {
    CHECK(arg == &attempt);
    try_stop_and_destroy();
}

static void *host_completes_write(void *arg) {
    (void)arg;
    attempt.host = pthread_self();
    attempt.host_rc = evmpm_complete_write(attempt.s->rt, (evmpm_conn)atomic_load(&attempt.conn),
                                           written, sizeof written - 1, stop_destroy_release,
                                           &attempt, EVMPM_WRITE_KEEPALIVE);
    atomic_store(&attempt.ran_before_host_call_returned, atomic_load(&attempt.ran));
    return NULL;
}

static void stop_and_destroy_refused_in_release_on_host_thread(void) {
    struct line_server s;
    int fd;
    line_server_start_default(&s);
    attempt.s = &s;
    fd = line_client(&s);
    atomic_store(&attempt.conn, line_server_suspend_client(&s, fd));
    /* Eight bytes into an idle loopback socket are sent at once, inside
     * evmpm_complete_write: its release runs there, on the host thread
     * (checked: otherwise this case would no longer test a release on a
     * host thread). */
    on_host_thread(host_completes_write, NULL,
                   "evmpm_complete_write on a host thread did not return");
    expect_refused_on_host_thread();
    EXPECT_LINE(fd, "WRITTEN");
    /* Parked as asked: the connection serves the next request. */
    ping(fd);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    expect_still_serving(&s);
}

/* ---- 2. the accessors once the close callback has started ----------------- */

/* A sentinel no accessor may write over, and a pointer no accessor may
 * attach. */
static char untouched, refused;
#define SENTINEL ((void *)&untouched)
#define REFUSED ((void *)&refused)

/* The return codes of every call that takes `c`, and what they wrote. */
struct accessor_codes {
    int get_user, set_user, fd, hand_back, close, park;
    void *user_out;
    int fd_out;
};

static void call_accessors(evmpm_runtime *rt, evmpm_conn c, struct accessor_codes *k) {
    k->user_out = SENTINEL;
    k->fd_out = -2;
    k->get_user = evmpm_conn_get_user(rt, c, &k->user_out);
    k->set_user = evmpm_conn_set_user(rt, c, REFUSED);
    k->fd = evmpm_conn_fd(rt, c, &k->fd_out);
    k->hand_back = evmpm_hand_back_to_worker(rt, c);
    k->close = evmpm_close(rt, c);
    k->park = evmpm_park_keepalive(rt, c, 0);
}

static void expect_all_stale(const struct accessor_codes *k, const char *where) {
    printf("%s: get_user %d set_user %d fd %d hand_back %d close %d park %d\n", where, k->get_user,
           k->set_user, k->fd, k->hand_back, k->close, k->park);
    fflush(stdout);
    CHECK_EQ(k->get_user, EVMPM_ESTALE);
    CHECK_EQ(k->set_user, EVMPM_ESTALE);
    CHECK_EQ(k->fd, EVMPM_ESTALE);
    CHECK_EQ(k->hand_back, EVMPM_ESTALE);
    CHECK_EQ(k->close, EVMPM_ESTALE);
    CHECK_EQ(k->park, EVMPM_ESTALE);
    /* Nothing written back: above all not the pointer the close callback
     * just freed. */
    CHECK(k->user_out == SENTINEL);
    CHECK_EQ(k->fd_out, -2);
}

struct after_close {
    evmpm_runtime *rt;
    atomic_ullong conn;
    void *user;          /* what the handler attached (freed in on_close) */
    atomic_int closes;
    atomic_int user_matched;
    struct accessor_codes in_callback, after;
};

static struct after_close after;

/* Reads one request line; the client sends it whole. */
static void read_request(int fd) {
    char c;
    for (;;) {
        ssize_t n = read(fd, &c, 1);
        if (n <= 0 || c == '\n')
            return;
    }
}

static void attach_and_close_handler(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd,
                                     int reason) {
    (void)user_data;
    CHECK_EQ(reason, EVMPM_WAKE_NEW);
    read_request(fd);
    after.user = malloc(64);
    CHECK(after.user != NULL);
    CHECK_OK(evmpm_conn_set_user(rt, c, after.user));
    atomic_store(&after.conn, c);
    line_reply(fd, "BYE\n");
    CHECK_OK(evmpm_close(rt, c));
}

static void accessors_in_close(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd,
                               void *conn_user) {
    (void)user_data;
    CHECK(fd >= 0);
    CHECK(c == (evmpm_conn)atomic_load(&after.conn));
    /* The callback's arguments carry what the connection had. */
    atomic_store(&after.user_matched, conn_user == after.user);
    call_accessors(rt, c, &after.in_callback);
    free(conn_user);
    atomic_fetch_add(&after.closes, 1);
}

static void *accessors_after_close(void *arg) {
    (void)arg;
    call_accessors(after.rt, (evmpm_conn)atomic_load(&after.conn), &after.after);
    return NULL;
}

static void accessors_refused_after_close_callback(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int fd;
    line_server_config(&s, &cfg);
    cfg.handler = attach_and_close_handler;
    cfg.on_close = accessors_in_close;
    /* Long enough that the runtime is still lingering when the host thread
     * calls; the client's close ends it early. */
    cfg.linger_timeout_ms = (uint32_t)(20000 * harness_slowdown());
    line_server_start(&s, &cfg);
    after.rt = s.rt;
    fd = connect_loopback(s.port);
    send_str(fd, "CLOSE\n");
    EXPECT_LINE(fd, "BYE");
    WAIT_UNTIL(atomic_load(&after.closes) == 1, 5000);
    CHECK(atomic_load(&after.user_matched));
    expect_all_stale(&after.in_callback, "inside the close callback");
    /* The runtime still holds the socket: its write side is shut, it
     * drains the client's input, the descriptor is open. The client
     * neither closes nor sends. */
    CHECK(wait_closed(fd, 5000));
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_lingering, 1);
    CHECK_EQ(st.closed, 0);
    on_host_thread(accessors_after_close, NULL, "accessors on a host thread did not return");
    expect_all_stale(&after.after, "on a host thread after the close callback");
    /* None of those calls disturbed the lingering close. */
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_lingering, 1);
    CHECK_EQ(st.closed, 0);
    CHECK_EQ(atomic_load(&after.closes), 1);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).closed == 1, 5000);
    CHECK_EQ(line_server_stats(&s).connections, 0);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&after.closes), 1);
}

/* ---- 3. handles belong to their runtime ------------------------------------ */

/* `foreign` (another runtime's handle) given to every call of `victim`,
 * whose only connection, `own`, is suspended: each is refused as stale and
 * `own` keeps its user pointer, descriptor and state. */
static void expect_foreign_refused(struct line_server *victim, evmpm_conn own,
                                   evmpm_conn foreign) {
    void *own_user = NULL, *user = SENTINEL;
    int own_fd = -1, cfd = -2;
    evmpm_stats st;
    printf("own 0x%016llx, foreign 0x%016llx\n", (unsigned long long)own,
           (unsigned long long)foreign);
    fflush(stdout);
    CHECK_OK(evmpm_conn_get_user(victim->rt, own, &own_user));
    CHECK(own_user != NULL); /* the line server's per-connection state */
    CHECK_OK(evmpm_conn_fd(victim->rt, own, &own_fd));
    CHECK(own_fd >= 0);

    CHECK_EQ(evmpm_conn_get_user(victim->rt, foreign, &user), EVMPM_ESTALE);
    CHECK(user == SENTINEL);
    CHECK_EQ(evmpm_conn_fd(victim->rt, foreign, &cfd), EVMPM_ESTALE);
    CHECK_EQ(cfd, -2);
    CHECK_EQ(evmpm_conn_set_user(victim->rt, foreign, REFUSED), EVMPM_ESTALE);
    CHECK_EQ(evmpm_park_keepalive(victim->rt, foreign, 0), EVMPM_ESTALE);
    CHECK_EQ(evmpm_hand_back_to_worker(victim->rt, foreign), EVMPM_ESTALE);
    CHECK_EQ(evmpm_close(victim->rt, foreign), EVMPM_ESTALE);

    user = NULL;
    CHECK_OK(evmpm_conn_get_user(victim->rt, own, &user));
    CHECK(user == own_user);
    CHECK_OK(evmpm_conn_fd(victim->rt, own, &cfd));
    CHECK_EQ(cfd, own_fd);
    st = line_server_stats(victim);
    CHECK_EQ(st.conns_suspended, 1);
    CHECK_EQ(st.conns_queued + st.conns_in_handler + st.conns_keepalive + st.conns_lingering, 0);
    CHECK_EQ(atomic_load(&victim->closes), 0);
    CHECK_EQ(atomic_load(&victim->wake_resumed), 0);
}

/* Its own handle resumes the suspended connection, which then serves. */
static void resume_and_ping(struct line_server *s, evmpm_conn own, int fd) {
    CHECK_OK(evmpm_hand_back_to_worker(s->rt, own));
    EXPECT_LINE(fd, "RESUMED");
    ping(fd);
}

static void handles_are_tied_to_their_runtime(void) {
    struct line_server a, b, c;
    evmpm_conn ha, hb, hc;
    int fa, fb, fc;
    line_server_start_default(&a);
    line_server_start_default(&b);
    /* Each runtime's first connection, in its first slot. */
    fa = line_client(&a);
    fb = line_client(&b);
    ha = line_server_suspend_client(&a, fa);
    hb = line_server_suspend_client(&b, fb);
    expect_foreign_refused(&b, hb, ha);
    expect_foreign_refused(&a, ha, hb);
    resume_and_ping(&a, ha, fa);
    resume_and_ping(&b, hb, fb);
    CHECK_EQ(atomic_load(&b.wake_resumed), 1);
    atomic_store(&b.wake_resumed, 0);

    /* A gone: its handles stay foreign to B, and to a runtime created
     * after it. */
    hb = line_server_suspend_client(&b, fb);
    CHECK_OK(line_server_stop(&a, 1000));
    CHECK(wait_closed(fa, 5000));
    close(fa);
    expect_foreign_refused(&b, hb, ha);
    line_server_start_default(&c);
    fc = line_client(&c);
    hc = line_server_suspend_client(&c, fc);
    expect_foreign_refused(&c, hc, ha);
    expect_foreign_refused(&c, hc, hb);
    resume_and_ping(&b, hb, fb);
    resume_and_ping(&c, hc, fc);
    close(fb);
    close(fc);
    CHECK_OK(line_server_stop(&b, 1000));
    CHECK_OK(line_server_stop(&c, 1000));
    CHECK_EQ(atomic_load(&a.closes) + atomic_load(&b.closes) + atomic_load(&c.closes), 3);
    CHECK_EQ(atomic_load(&a.double_closes) + atomic_load(&b.double_closes) +
                 atomic_load(&c.double_closes), 0);
}

/* ---- 4. suspended connections racing a forced stop ------------------------ */

enum {
    RACE_CLIENTS = 64,
    RACE_HOSTS = 3,   /* threads handing connections back */
    RACE_WORKERS = 4,
    RACE_ROUNDS = 20, /* divided by the slowdown under valgrind */
};

struct race {
    evmpm_runtime *rt;
    atomic_ullong conns[RACE_CLIENTS]; /* in the order handlers first saw them */
    atomic_int seen;
    atomic_int closes_of[RACE_CLIENTS];
    atomic_long closes, unknown_closes;
    atomic_long hand_backs_ok, hand_backs_refused;
    atomic_int done;
};

static struct race race;

static void race_reset(void) {
    int i;
    race.rt = NULL;
    for (i = 0; i < RACE_CLIENTS; i++) {
        atomic_store(&race.conns[i], 0);
        atomic_store(&race.closes_of[i], 0);
    }
    atomic_store(&race.seen, 0);
    atomic_store(&race.closes, 0);
    atomic_store(&race.unknown_closes, 0);
    atomic_store(&race.done, 0);
}

/* Suspends the connection on every wake: only a host thread's hand-back
 * ever runs it again. */
static void suspend_always(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    int rc;
    (void)user_data;
    if (reason == EVMPM_WAKE_NEW) {
        int i = atomic_fetch_add(&race.seen, 1);
        CHECK(i < RACE_CLIENTS);
        read_request(fd);
        atomic_store(&race.conns[i], c);
    } else {
        CHECK_EQ(reason, EVMPM_WAKE_RESUMED);
    }
    rc = evmpm_suspend(rt, c);
    /* A handler the stop outlived finds the runtime stopped. */
    if (rc != EVMPM_OK && rc != EVMPM_ESTOPPED)
        harness_fail(__FILE__, __LINE__, "evmpm_suspend returned %d", rc);
}

static void count_race_close(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd,
                             void *conn_user) {
    int i, n = atomic_load(&race.seen);
    (void)user_data, (void)rt, (void)fd, (void)conn_user;
    for (i = 0; i < n; i++)
        if ((evmpm_conn)atomic_load(&race.conns[i]) == c)
            break;
    if (i < n)
        atomic_fetch_add(&race.closes_of[i], 1);
    else
        atomic_fetch_add(&race.unknown_closes, 1);
    atomic_fetch_add(&race.closes, 1);
}

static void *hand_back_loop(void *arg) {
    unsigned i = (unsigned)(intptr_t)arg;
    while (!atomic_load(&race.done)) {
        evmpm_conn c = (evmpm_conn)atomic_load(&race.conns[i++ % RACE_CLIENTS]);
        int rc = evmpm_hand_back_to_worker(race.rt, c);
        switch (rc) {
        case EVMPM_OK:
            atomic_fetch_add(&race.hand_backs_ok, 1);
            break;
        case EVMPM_ESTATE:   /* queued or running already */
        case EVMPM_ESTALE:   /* closed by the stop */
        case EVMPM_ESTOPPED: /* stopped */
            atomic_fetch_add(&race.hand_backs_refused, 1);
            break;
        default:
            harness_fail(__FILE__, __LINE__, "evmpm_hand_back_to_worker returned %d (%s)", rc,
                         evmpm_strerror(rc));
        }
        /* Under valgrind, which runs one thread at a time, a thread that
         * never yields starves the others; natively they run flat out,
         * which makes the race likely, until the runtime says it stopped. */
        if (harness_slowdown() > 1 || rc == EVMPM_ESTOPPED)
            sched_yield();
    }
    return NULL;
}

static void race_round(int round, int *timed_out) {
    pthread_t hosts[RACE_HOSTS];
    int clients[RACE_CLIENTS];
    evmpm_config cfg;
    evmpm_stats st;
    long hand_backs_before;
    int64_t deadline;
    int lfd, port, i, rc;
    race_reset();
    lfd = listen_loopback(RACE_CLIENTS, &port);
    CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
    cfg.worker_threads = RACE_WORKERS;
    cfg.handler = suspend_always;
    cfg.on_close = count_race_close;
    CHECK_OK(evmpm_create(&cfg, &race.rt));
    CHECK_OK(evmpm_register_listener(race.rt, lfd));
    CHECK_OK(evmpm_start(race.rt));
    for (i = 0; i < RACE_CLIENTS; i++) {
        clients[i] = connect_loopback(port);
        send_str(clients[i], "x\n");
    }
    /* Every connection seen and suspended once. */
    WAIT_UNTIL(atomic_load(&race.seen) == RACE_CLIENTS, 10000);
    hand_backs_before = atomic_load(&race.hand_backs_ok);
    for (i = 0; i < RACE_HOSTS; i++)
        CHECK(pthread_create(&hosts[i], NULL, hand_back_loop,
                             (void *)(intptr_t)(i * RACE_CLIENTS / RACE_HOSTS)) == 0);
    /* The hand-backs are under way before the stop begins. */
    WAIT_UNTIL(atomic_load(&race.hand_backs_ok) >= hand_backs_before + RACE_CLIENTS, 10000);
    watchdog_arm(5000, "evmpm_stop(rt, 0) did not return within 5 s");
    rc = evmpm_stop(race.rt, 0);
    watchdog_disarm();
    /* Suspended connections are forced closed at the deadline of 0. */
    if (rc != EVMPM_OK && rc != EVMPM_ETIMEDOUT)
        harness_fail(__FILE__, __LINE__, "round %d: evmpm_stop returned %d", round, rc);
    if (rc == EVMPM_ETIMEDOUT)
        (*timed_out)++;
    atomic_store(&race.done, 1);
    watchdog_arm(5000, "a hand-back thread did not end");
    for (i = 0; i < RACE_HOSTS; i++)
        CHECK(pthread_join(hosts[i], NULL) == 0);
    watchdog_disarm();

    CHECK_OK(evmpm_get_stats(race.rt, &st, sizeof st));
    CHECK_EQ(st.accepted, RACE_CLIENTS);
    /* A handler the forced stop outlived closes its connection when it
     * returns: wait for those, then every connection closed exactly once. */
    deadline = now_ms() + 5000 * harness_slowdown();
    while (atomic_load(&race.closes) < (long)st.accepted) {
        if (now_ms() > deadline) {
            CHECK_OK(evmpm_get_stats(race.rt, &st, sizeof st));
            harness_fail(__FILE__, __LINE__,
                         "round %d: %ld of %d connections closed after the stop; still open: "
                         "%llu (%llu queued, %llu suspended, %llu in a handler)",
                         round, atomic_load(&race.closes), RACE_CLIENTS,
                         (unsigned long long)st.connections, (unsigned long long)st.conns_queued,
                         (unsigned long long)st.conns_suspended,
                         (unsigned long long)st.conns_in_handler);
        }
        sleep_ms(1);
    }
    CHECK_EQ(atomic_load(&race.unknown_closes), 0);
    for (i = 0; i < RACE_CLIENTS; i++)
        if (atomic_load(&race.closes_of[i]) != 1)
            harness_fail(__FILE__, __LINE__,
                         "round %d: connection 0x%016llx closed %d times", round,
                         (unsigned long long)atomic_load(&race.conns[i]),
                         atomic_load(&race.closes_of[i]));
    CHECK_EQ(atomic_load(&race.closes), (long)st.accepted);
    for (i = 0; i < RACE_CLIENTS; i++) {
        if (!wait_closed(clients[i], 5000))
            harness_fail(__FILE__, __LINE__, "round %d: client %d never saw its connection end",
                         round, i);
        close(clients[i]);
    }
    CHECK_OK(evmpm_get_stats(race.rt, &st, sizeof st));
    CHECK_EQ(st.connections, 0);
    CHECK_EQ(st.closed, RACE_CLIENTS);
    watchdog_arm(5000, "evmpm_destroy did not return within 5 s");
    CHECK_OK(evmpm_destroy(race.rt));
    watchdog_disarm();
    close(lfd);
    CHECK_EQ(atomic_load(&race.closes), RACE_CLIENTS);
}

static void suspended_connections_race_a_forced_stop(void) {
    int rounds = RACE_ROUNDS / harness_slowdown(), round, timed_out = 0;
    if (rounds < 2)
        rounds = 2;
    atomic_store(&race.hand_backs_ok, 0);
    atomic_store(&race.hand_backs_refused, 0);
    for (round = 0; round < rounds; round++)
        race_round(round, &timed_out);
    printf("figure: %d rounds of %d suspended connections stopped under %d hand-back threads; "
           "%ld hand-backs taken, %ld refused; stop timed out in %d rounds\n",
           rounds, RACE_CLIENTS, RACE_HOSTS, atomic_load(&race.hand_backs_ok),
           atomic_load(&race.hand_backs_refused), timed_out);
}

/* ---- 5. behaviours this release settled ------------------------------------- */

/* request_ready answering neither of the three verdicts. */

static atomic_int verdict = 7;
static atomic_long log_errors, log_warnings, log_other;

static int ready_verdict(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                         size_t len) {
    (void)user_data, (void)conn, (void)conn_user, (void)data, (void)len;
    return atomic_load(&verdict);
}

static void count_log(void *user_data, int level, const char *message) {
    struct line_server *s = user_data;
    CHECK(s != NULL && s->rt != NULL); /* evmpm_config.user_data */
    CHECK(message != NULL);
    CHECK(strchr(message, '\n') == NULL);
    printf("log %d: %s\n", level, message);
    fflush(stdout);
    if (level == EVMPM_LOG_ERROR)
        atomic_fetch_add(&log_errors, 1);
    else if (level == EVMPM_LOG_WARNING)
        atomic_fetch_add(&log_warnings, 1);
    else
        atomic_fetch_add(&log_other, 1);
}

static void request_ready_unknown_verdict_rejects_and_logs_once(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int fd;
    line_server_config(&s, &cfg);
    cfg.request_ready = ready_verdict;
    cfg.log = count_log;
    line_server_start(&s, &cfg);
    /* Closed as rejected, the handler never run, the log told. */
    fd = connect_loopback(s.port);
    send_str(fd, "PING\n");
    expect_closed_unserved(&s, fd);
    close(fd);
    st = line_server_stats(&s);
    CHECK_EQ(st.rejected, 1);
    CHECK_EQ(st.internal_errors, 0);
    WAIT_UNTIL(atomic_load(&log_errors) == 1, 5000);
    /* Again: the same verdict, the same end; the log was told once. */
    atomic_store(&verdict, -2);
    fd = connect_loopback(s.port);
    send_str(fd, "PING\n");
    CHECK(wait_closed(fd, 5000));
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(atomic_load(&s.handler_calls), 0);
    st = line_server_stats(&s);
    CHECK_EQ(st.rejected, 2);
    CHECK_EQ(atomic_load(&log_errors), 1);
    CHECK_EQ(atomic_load(&log_other), 0);
    /* A host bug, not an evmpm one: the runtime serves on. */
    atomic_store(&verdict, EVMPM_REQUEST_COMPLETE);
    fd = line_client(&s);
    close(fd);
    CHECK_EQ(line_server_stats(&s).internal_errors, 0);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&log_errors), 1);
}

/* A listener registered from inside a handler. */

struct second_listener {
    atomic_int fd;
    atomic_int port;
    atomic_int rc;
};

static enum line_command_result listen_command(struct line_server *s, evmpm_conn c, int fd,
                                               const char *line) {
    struct second_listener *l = s->test_data;
    int lfd, port;
    (void)c;
    if (strcmp(line, "LISTEN") != 0)
        return LINE_UNKNOWN;
    lfd = listen_loopback(16, &port);
    atomic_store(&l->fd, lfd);
    atomic_store(&l->port, port);
    atomic_store(&l->rc, evmpm_register_listener(s->rt, lfd));
    line_reply(fd, "LISTENING\n");
    return LINE_PARK;
}

static void register_listener_from_a_handler(void) {
    struct line_server s;
    struct second_listener l;
    evmpm_config cfg;
    int first, second;
    line_server_config(&s, &cfg);
    atomic_store(&l.fd, -1);
    atomic_store(&l.rc, 1);
    s.command = listen_command;
    s.test_data = &l;
    line_server_start(&s, &cfg);
    first = line_client(&s);
    send_str(first, "LISTEN\n");
    EXPECT_LINE(first, "LISTENING");
    CHECK_OK(atomic_load(&l.rc));
    /* Nobody but the runtime accepts on the second listener. */
    second = connect_loopback(atomic_load(&l.port));
    ping(second);
    send_str(second, "ECHO second\n");
    EXPECT_LINE(second, "second");
    ping(first);
    CHECK_EQ(line_server_stats(&s).accepted, 2);
    close(first);
    close(second);
    CHECK_OK(line_server_stop(&s, 1000));
    /* The host's, closed only once the stop returned. */
    close(atomic_load(&l.fd));
    CHECK_EQ(atomic_load(&s.closes), 2);
}

/* The close callback, then the release, for a write the timeout abandons. */

static atomic_int order_next, close_order = -1, release_order = -1;
static atomic_int stalled_releases;

static void release_stalled(void *arg) {
    atomic_store(&release_order, atomic_fetch_add(&order_next, 1));
    atomic_fetch_add(&stalled_releases, 1);
    free(arg);
}

static void record_close_order(struct line_server *s, evmpm_conn c, int fd) {
    (void)s, (void)c, (void)fd;
    atomic_store(&close_order, atomic_fetch_add(&order_next, 1));
}

enum { STALLED_BYTES = 1 << 20 };

static enum line_command_result stall_command(struct line_server *s, evmpm_conn c, int fd,
                                              const char *line) {
    int small = 4096, rc;
    char *buf;
    if (strcmp(line, "STALL") != 0)
        return LINE_UNKNOWN;
    /* A small send buffer (no autotuning) and a client that never reads:
     * the megabyte cannot all leave, the write stays pending. */
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    buf = malloc(STALLED_BYTES);
    CHECK(buf != NULL);
    memset(buf, 's', STALLED_BYTES);
    rc = evmpm_complete_write(s->rt, c, buf, STALLED_BYTES, release_stalled, buf,
                              EVMPM_WRITE_KEEPALIVE);
    CHECK_OK(rc);
    return LINE_DECIDED;
}

static void write_timeout_runs_close_callback_before_release(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int fd;
    line_server_config(&s, &cfg);
    cfg.write_timeout_ms = 200;
    s.command = stall_command;
    s.close_hook = record_close_order;
    line_server_start(&s, &cfg);
    fd = connect_loopback_rcvbuf(s.port, 4096);
    ping(fd);
    send_str(fd, "STALL\n");
    WAIT_UNTIL(atomic_load(&stalled_releases) == 1, 10000);
    CHECK_EQ(atomic_load(&s.closes), 1);
    printf("close callback #%d, release #%d\n", atomic_load(&close_order),
           atomic_load(&release_order));
    CHECK_EQ(atomic_load(&close_order), 0);
    CHECK_EQ(atomic_load(&release_order), 1);
    st = line_server_stats(&s);
    CHECK_EQ(st.timed_out, 1);
    CHECK_EQ(st.keepalive_expired, 0);
    close_with_reset(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&stalled_releases), 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
}

/* stats.closed counts descriptors: it lags the close callback by the
 * lingering close. */
static void stats_closed_lags_close_callback_while_lingering(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int fd;
    line_server_config(&s, &cfg);
    /* The client's close ends the linger; this only has to outlast the
     * checks below. */
    cfg.linger_timeout_ms = (uint32_t)(20000 * harness_slowdown());
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    send_str(fd, "QUIT\n");
    EXPECT_LINE(fd, "BYE");
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    /* The client sees the end of the response stream but keeps its side
     * open: the runtime keeps draining it. */
    CHECK(wait_closed(fd, 5000));
    st = line_server_stats(&s);
    CHECK_EQ(st.closed, 0);
    CHECK_EQ(st.conns_lingering, 1);
    CHECK_EQ(st.accepted, 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).closed == 1, 5000);
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_lingering, 0);
    CHECK_EQ(st.connections, 0);
    CHECK_EQ(st.timed_out, 0);
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* evmpm_get_stats writes its out_size bytes, no more, no fewer. */

enum { CANARY = 0xa5, SLACK = 64 };

union stats_buffer {
    evmpm_stats st;
    unsigned char bytes[sizeof(evmpm_stats) + 2 * SLACK];
};

static void expect_bytes(const unsigned char *p, size_t from, size_t to, int value,
                         size_t out_size) {
    size_t i;
    for (i = from; i < to; i++)
        if (p[i] != value)
            harness_fail(__FILE__, __LINE__,
                         "out_size %zu: byte %zu is 0x%02x, expected 0x%02x", out_size, i, p[i],
                         value);
}

static void get_stats_writes_exactly_out_size(void) {
    static const size_t smaller[] = {
        0,
        1,
        13,
        offsetof(evmpm_stats, accepted) + sizeof(uint64_t),
        offsetof(evmpm_stats, internal_errors), /* all but the last counter */
        sizeof(evmpm_stats) - 1,
    };
    struct line_server s;
    union stats_buffer full, buf;
    size_t i, larger = sizeof(evmpm_stats) + SLACK;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    /* Quiet: every counter and gauge stays as it is while this runs. */
    WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 1 &&
                   line_server_stats(&s).workers_idle == 4,
               5000);
    memset(&full, 0, sizeof full);
    CHECK_OK(evmpm_get_stats(s.rt, &full.st, sizeof full.st));
    CHECK_EQ(full.st.accepted, 1);
    for (i = 0; i < sizeof smaller / sizeof smaller[0]; i++) {
        size_t n = smaller[i];
        memset(&buf, CANARY, sizeof buf);
        CHECK_OK(evmpm_get_stats(s.rt, &buf.st, n));
        if (memcmp(buf.bytes, full.bytes, n) != 0)
            harness_fail(__FILE__, __LINE__, "out_size %zu: the bytes written differ", n);
        expect_bytes(buf.bytes, n, sizeof buf, CANARY, n);
    }
    /* A newer header's larger struct: the counters this library lacks read
     * 0, and nothing past out_size is touched. */
    memset(&buf, CANARY, sizeof buf);
    CHECK_OK(evmpm_get_stats(s.rt, &buf.st, larger));
    if (memcmp(buf.bytes, full.bytes, sizeof full.st) != 0)
        harness_fail(__FILE__, __LINE__, "out_size %zu: the known counters differ", larger);
    expect_bytes(buf.bytes, sizeof(evmpm_stats), larger, 0, larger);
    expect_bytes(buf.bytes, larger, sizeof buf, CANARY, larger);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"stop_and_destroy_refused_in_close_callback_on_host_thread",
         stop_and_destroy_refused_in_close_callback_on_host_thread},
        {"stop_and_destroy_refused_in_release_on_host_thread",
         stop_and_destroy_refused_in_release_on_host_thread},
        {"accessors_refused_after_close_callback", accessors_refused_after_close_callback},
        {"handles_are_tied_to_their_runtime", handles_are_tied_to_their_runtime},
        {"suspended_connections_race_a_forced_stop", suspended_connections_race_a_forced_stop},
        {"request_ready_unknown_verdict_rejects_and_logs_once",
         request_ready_unknown_verdict_rejects_and_logs_once},
        {"register_listener_from_a_handler", register_listener_from_a_handler},
        {"write_timeout_runs_close_callback_before_release",
         write_timeout_runs_close_callback_before_release},
        {"stats_closed_lags_close_callback_while_lingering",
         stats_closed_lags_close_callback_while_lingering},
        {"get_stats_writes_exactly_out_size", get_stats_writes_exactly_out_size},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

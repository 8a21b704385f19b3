/* Suspension: a handler gives the connection to the host (evmpm_suspend),
 * its worker is free, no timeout applies, and another thread later ends it
 * with evmpm_hand_back_to_worker, evmpm_complete_write, evmpm_close or
 * evmpm_park_keepalive (what a server does once a backend answered). */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>

/* ---- running an evmpm call on a thread of the test's own ----------------- */

struct call {
    struct line_server *s;
    evmpm_conn conn;
    int (*fn)(struct call *k);
};

struct call_thread {
    struct call *k;
    int rc;
};

static void *call_main(void *arg) {
    struct call_thread *t = arg;
    t->rc = t->k->fn(t->k);
    return NULL;
}

/* Runs fn(k) on a new thread (neither a worker nor the event thread) and
 * returns its result. */
static int on_thread(struct call *k, int (*fn)(struct call *k)) {
    struct call_thread t;
    pthread_t th;
    k->fn = fn;
    t.k = k;
    t.rc = 1;
    CHECK(pthread_create(&th, NULL, call_main, &t) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    return t.rc;
}

/* Suspends the connection of client `fd` (k->conn from then on), then ends
 * the suspension with fn(k) on a thread of the test's own; its result. */
static int suspend_then(struct call *k, int fd, int (*fn)(struct call *k)) {
    k->conn = line_server_suspend_client(k->s, fd);
    return on_thread(k, fn);
}

static int hand_back(struct call *k) { return evmpm_hand_back_to_worker(k->s->rt, k->conn); }

static void hand_back_from_another_thread(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    struct call k;
    int fd, other;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 1;
    /* Short timeouts of every kind: none may touch a suspended connection.
     * Scaled so that a slow run still pings before keep-alive expires. */
    cfg.keepalive_timeout_ms = (uint32_t)(150 * harness_slowdown());
    cfg.read_timeout_ms = (uint32_t)(150 * harness_slowdown());
    cfg.write_timeout_ms = (uint32_t)(150 * harness_slowdown());
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    k.s = &s;
    k.conn = line_server_suspend_client(&s, fd);
    st = line_server_stats(&s);
    CHECK_EQ(st.workers_busy, 0);
    CHECK_EQ(st.conns_keepalive, 0);
    /* The only worker serves another client meanwhile. */
    other = line_client(&s);
    close(other);
    /* Four timeouts long, and still open. */
    CHECK(!wait_closed(fd, 600));
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_suspended, 1);
    CHECK_EQ(st.timed_out, 0);
    CHECK_EQ(st.workers_busy, 0);
    CHECK_EQ(atomic_load(&s.wake_resumed), 0);
    CHECK_OK(on_thread(&k, hand_back));
    EXPECT_LINE(fd, "RESUMED");
    CHECK_EQ(atomic_load(&s.wake_resumed), 1);
    /* Parked again after the resumed run: a request is served, a second
     * hand-back is refused (not suspended) ... */
    ping(fd);
    CHECK_EQ(on_thread(&k, hand_back), EVMPM_ESTATE);
    /* ... and the keep-alive timeout applies again. */
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(line_server_stats(&s).keepalive_expired == 1, 5000);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static atomic_long written_releases;

static void count_release(void *arg) {
    CHECK(arg == &written_releases);
    atomic_fetch_add(&written_releases, 1);
}

static const char written[] = "WRITTEN\n";

static int write_keepalive(struct call *k) {
    return evmpm_complete_write(k->s->rt, k->conn, written, sizeof written - 1, count_release,
                                &written_releases, EVMPM_WRITE_KEEPALIVE);
}

static int write_and_close(struct call *k) {
    return evmpm_complete_write(k->s->rt, k->conn, written, sizeof written - 1, count_release,
                                &written_releases, 0);
}

static void complete_write_from_another_thread(void) {
    struct line_server s;
    struct call k;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    k.s = &s;
    /* With keep-alive: the response arrives, then the connection serves
     * the next request. */
    CHECK_OK(suspend_then(&k, fd, write_keepalive));
    EXPECT_LINE(fd, "WRITTEN");
    WAIT_UNTIL(atomic_load(&written_releases) == 1, 5000);
    ping(fd);
    CHECK_EQ(line_server_stats(&s).conns_suspended, 0);
    /* Without: the response arrives, then the connection closes. */
    CHECK_OK(suspend_then(&k, fd, write_and_close));
    EXPECT_LINE(fd, "WRITTEN");
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(atomic_load(&written_releases), 2);
    CHECK_EQ(atomic_load(&s.wake_resumed), 0);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&written_releases), 2);
}

static pthread_t close_thread;
static atomic_int close_thread_set;

static void record_close_thread(struct line_server *s, evmpm_conn c, int fd) {
    (void)s;
    (void)c;
    (void)fd;
    close_thread = pthread_self();
    atomic_store(&close_thread_set, 1);
}

static int close_and_check(struct call *k) {
    int rc = evmpm_close(k->s->rt, k->conn);
    /* The close callback ran on this thread, before evmpm_close returned. */
    CHECK_EQ(atomic_load(&k->s->closes), 1);
    CHECK(atomic_load(&close_thread_set));
    CHECK(pthread_equal(close_thread, pthread_self()));
    return rc;
}

static void close_from_another_thread(void) {
    struct line_server s;
    evmpm_config cfg;
    struct call k;
    int fd;
    line_server_config(&s, &cfg);
    s.close_hook = record_close_thread;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    k.s = &s;
    CHECK_OK(suspend_then(&k, fd, close_and_check));
    CHECK(wait_closed(fd, 5000));
    /* Taken from the host: while the runtime lingers on it the handle is
     * refused as ESTATE, once it is gone as ESTALE. */
    {
        int rc = on_thread(&k, hand_back);
        if (rc != EVMPM_ESTATE && rc != EVMPM_ESTALE)
            harness_fail(__FILE__, __LINE__, "hand-back after close returned %d", rc);
    }
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_EQ(on_thread(&k, hand_back), EVMPM_ESTALE);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static int park_plain(struct call *k) { return evmpm_park_keepalive(k->s->rt, k->conn, 0); }

static int park_buffered(struct call *k) {
    return evmpm_park_keepalive(k->s->rt, k->conn, EVMPM_PARK_BUFFERED);
}

static void park_from_another_thread(void) {
    struct line_server s;
    struct call k;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    k.s = &s;
    /* Parked: back on the event thread, the next request wakes it. */
    CHECK_OK(suspend_then(&k, fd, park_plain));
    WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 1, 5000);
    CHECK_EQ(line_server_stats(&s).conns_suspended, 0);
    ping(fd);
    CHECK_EQ(atomic_load(&s.wake_readable), 2);
    /* Parked as buffered: the handler runs at once, without polling (it
     * then blocks reading the next request, as a thread-per-connection
     * server would). */
    CHECK_OK(suspend_then(&k, fd, park_buffered));
    WAIT_UNTIL(atomic_load(&s.wake_buffered) == 1, 5000);
    ping(fd);
    CHECK_EQ(atomic_load(&s.wake_resumed), 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* SUSPENDWAIT: suspends, then keeps the handler running until the test has
 * handed the connection back, so the hand-back surely comes first. */
static atomic_int may_return;

static enum line_command_result suspend_and_wait(struct line_server *s, evmpm_conn c, int fd,
                                                 const char *line) {
    int64_t deadline = now_ms() + 5000 * harness_slowdown();
    (void)fd;
    if (strcmp(line, "SUSPENDWAIT") != 0)
        return LINE_UNKNOWN;
    CHECK_OK(evmpm_suspend(s->rt, c));
    atomic_store(&s->suspended_conn, c);
    while (!atomic_load(&may_return)) {
        if (now_ms() > deadline)
            harness_fail(__FILE__, __LINE__, "the test never handed the connection back");
        sleep_ms(1);
    }
    return LINE_DECIDED;
}

static void hand_back_before_handler_returns(void) {
    struct line_server s;
    evmpm_config cfg;
    struct call k;
    int fd;
    line_server_config(&s, &cfg);
    s.command = suspend_and_wait;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    send_str(fd, "SUSPENDWAIT\n");
    WAIT_UNTIL(atomic_load(&s.suspended_conn) != 0, 5000);
    k.s = &s;
    k.conn = (evmpm_conn)atomic_load(&s.suspended_conn);
    /* The suspending handler is still running. */
    CHECK_EQ(atomic_load(&s.in_handler), 1);
    CHECK_OK(on_thread(&k, hand_back));
    /* Handed back already: a second hand-back finds it not suspended. */
    CHECK_EQ(on_thread(&k, hand_back), EVMPM_ESTATE);
    atomic_store(&may_return, 1);
    /* The handler runs exactly once more, never alongside itself. */
    EXPECT_LINE(fd, "RESUMED");
    CHECK_EQ(atomic_load(&s.wake_resumed), 1);
    ping(fd);
    CHECK_EQ(atomic_load(&s.handler_calls), 4); /* PING, SUSPENDWAIT, resumed, PING */
    CHECK_EQ(atomic_load(&s.wake_resumed), 1);
    CHECK_EQ(atomic_load(&s.max_in_handler), 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* SUSPENDJITTER: suspends, then lingers in the handler for a varying few
 * microseconds, so that a hand-back issued the moment the suspension shows
 * lands sometimes before, sometimes after the handler returns. */
static atomic_long jitter_suspended, jitter_returned;

static enum line_command_result suspend_with_jitter(struct line_server *s, evmpm_conn c, int fd,
                                                    const char *line) {
    static atomic_uint seed = 12345;
    unsigned spins = (atomic_fetch_add(&seed, 2654435761u) >> 20) % 20000;
    volatile unsigned sink = 0;
    unsigned i;
    (void)fd;
    if (strcmp(line, "SUSPENDJITTER") != 0)
        return LINE_UNKNOWN;
    CHECK_OK(evmpm_suspend(s->rt, c));
    atomic_store(&s->suspended_conn, c);
    atomic_fetch_add(&jitter_suspended, 1);
    for (i = 0; i < spins; i++)
        sink += i;
    atomic_fetch_add(&jitter_returned, 1);
    return LINE_DECIDED;
}

static void hand_back_races_the_returning_handler(void) {
    enum { ROUNDS = 300 };
    struct line_server s;
    evmpm_config cfg;
    int fd, i, early = 0;
    line_server_config(&s, &cfg);
    s.command = suspend_with_jitter;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    for (i = 0; i < ROUNDS; i++) {
        int64_t deadline = now_ms() + 5000 * harness_slowdown();
        send_str(fd, "SUSPENDJITTER\n");
        /* No sleep: hand back the moment the handler has suspended. */
        while (atomic_load(&jitter_suspended) != i + 1) {
            if (now_ms() > deadline)
                harness_fail(__FILE__, __LINE__, "round %d: no suspension", i);
            /* Valgrind runs one thread at a time: without a yield this
             * loop would starve the worker it waits for. */
            if (harness_slowdown() > 1)
                sched_yield();
        }
        CHECK_OK(line_server_resume_suspended(&s));
        early += atomic_load(&jitter_returned) != i + 1;
        EXPECT_LINE(fd, "RESUMED");
    }
    ping(fd);
    /* Either way, exactly one resumed run per hand-back, never two at once. */
    CHECK_EQ(atomic_load(&s.wake_resumed), ROUNDS);
    CHECK_EQ(atomic_load(&s.handler_calls), 2 + 2 * ROUNDS);
    CHECK_EQ(atomic_load(&s.max_in_handler), 1);
    CHECK_EQ(atomic_load(&s.closes), 0);
    /* For the log: the interleaving is the scheduler's. */
    printf("handed back before the handler returned in %d of %d rounds\n", early, ROUNDS);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"hand_back_from_another_thread", hand_back_from_another_thread},
        {"complete_write_from_another_thread", complete_write_from_another_thread},
        {"close_from_another_thread", close_from_another_thread},
        {"park_from_another_thread", park_from_another_thread},
        {"hand_back_before_handler_returns", hand_back_before_handler_returns},
        {"hand_back_races_the_returning_handler", hand_back_races_the_returning_handler},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

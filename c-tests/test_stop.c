/* Stopping: evmpm_stop closes idle connections at once, lets work in
 * flight finish, forces the rest at its deadline, and leaves a runtime that
 * refuses further calls. Runtimes share no state. */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <unistd.h>

struct stopper {
    struct line_server *s;
    uint32_t timeout_ms;
    atomic_int started;
    int rc;
    int64_t took;
    pthread_t thread;
};

static void *stopper_main(void *arg) {
    struct stopper *st = arg;
    int64_t t0 = now_ms();
    atomic_store(&st->started, 1);
    st->rc = evmpm_stop(st->s->rt, st->timeout_ms);
    st->took = now_ms() - t0;
    return NULL;
}

/* Calls evmpm_stop on a thread of its own, so the test can act meanwhile. */
static void stop_in_background(struct stopper *st, struct line_server *s, uint32_t timeout_ms) {
    st->s = s;
    st->timeout_ms = timeout_ms;
    atomic_store(&st->started, 0);
    atomic_store(&s->stop_called, 1);
    CHECK(pthread_create(&st->thread, NULL, stopper_main, st) == 0);
    WAIT_UNTIL(atomic_load(&st->started), 5000);
}

static int join_stop(struct stopper *st) {
    watchdog_arm((int)st->timeout_ms + 5000, "evmpm_stop did not return within 5 s of its deadline");
    CHECK(pthread_join(st->thread, NULL) == 0);
    watchdog_disarm();
    return st->rc;
}

static void graceful_stop_finishes_in_flight_requests(void) {
    struct line_server s;
    evmpm_config cfg;
    int idle, queued, silent, sleeper;
    line_server_config(&s, &cfg);
    /* One worker: a second request waits in the run queue at stop. */
    cfg.worker_threads = 1;
    cfg.keepalive_timeout_ms = 60000;
    line_server_start(&s, &cfg);
    idle = line_client(&s);
    queued = line_client(&s);
    silent = connect_loopback(s.port);
    WAIT_UNTIL(line_server_stats(&s).conns_reading == 1, 5000);
    sleeper = connect_loopback(s.port);
    send_str(sleeper, "SLEEP 300\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    send_str(queued, "PING\n");
    WAIT_UNTIL(line_server_stats(&s).conns_queued == 1, 5000);

    CHECK_OK(line_server_stop_only(&s, 5000));
    /* The running handler's reply went out, then its connection closed; so
     * did the request that was waiting for the worker. */
    EXPECT_LINE(sleeper, "SLEPT");
    CHECK(wait_closed(sleeper, 5000));
    EXPECT_LINE(queued, "PONG");
    CHECK(wait_closed(queued, 5000));
    /* The idle ones were closed without a word. */
    CHECK(wait_closed(idle, 5000));
    CHECK(wait_closed(silent, 5000));
    CHECK_EQ(atomic_load(&s.closes), 4);
    CHECK_EQ(line_server_stats(&s).connections, 0);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    line_server_destroy(&s);
    close(idle);
    close(queued);
    close(silent);
    close(sleeper);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static void stop_closes_idle_keepalive_at_once(void) {
    struct line_server s;
    evmpm_config cfg;
    int fds[10], i;
    line_server_config(&s, &cfg);
    cfg.keepalive_timeout_ms = 60000;
    line_server_start(&s, &cfg);
    for (i = 0; i < 10; i++)
        fds[i] = line_client(&s);
    WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 10, 5000);
    /* Waiting out a 60 s keep-alive would miss the 5 s deadline (and
     * return EVMPM_ETIMEDOUT): success means they were closed at stop. */
    CHECK_OK(line_server_stop(&s, 5000));
    for (i = 0; i < 10; i++) {
        CHECK(wait_closed(fds[i], 5000));
        close(fds[i]);
    }
    CHECK_EQ(atomic_load(&s.closes), 10);
}

static void stop_deadline_with_a_handler_blocked_forever(void) {
    struct line_server s;
    int64_t started, took;
    int baseline, fd, rc;
    baseline = open_fd_count();
    line_server_start_default(&s);
    fd = connect_loopback(s.port);
    send_str(fd, "HOLD\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    started = now_ms();
    rc = line_server_stop_only(&s, 300);
    took = now_ms() - started;
    CHECK_EQ(rc, EVMPM_ETIMEDOUT);
    /* Around the deadline: not before it, and (documented) about 100 ms
     * after it at most; generously bounded here. */
    if (took < 299 || took > 2000 * harness_slowdown())
        harness_fail(__FILE__, __LINE__, "stop(300) returned after %lld ms", (long long)took);
    /* The stuck handler's socket was shut down under it. */
    CHECK(wait_closed(fd, 5000));
    CHECK_EQ(atomic_load(&s.in_handler), 1);
    CHECK_EQ(atomic_load(&s.closes), 0);
    /* When the handler finally returns, its connection is closed. */
    line_server_release_holds(&s);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    WAIT_UNTIL(atomic_load(&s.in_handler) == 0, 5000);
    line_server_destroy(&s);
    close(fd);
    /* Everything the runtime held is gone once its last thread exits. */
    WAIT_UNTIL(open_fd_count() == baseline, 5000);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static void stop_waits_for_a_suspended_connection(void) {
    struct line_server s;
    struct stopper st;
    int fd, idle;
    line_server_start_default(&s);
    fd = line_client(&s);
    line_server_suspend_client(&s, fd);
    idle = line_client(&s);
    stop_in_background(&st, &s, 5000);
    /* Stop is under way once it closed the idle connection ... */
    CHECK(wait_closed(idle, 5000));
    /* ... and the suspended one is the host's to finish: resumed during
     * the stop, it answers, then closes instead of parking. */
    CHECK_OK(line_server_resume_suspended(&s));
    EXPECT_LINE(fd, "RESUMED");
    CHECK(wait_closed(fd, 5000));
    CHECK_OK(join_stop(&st));
    CHECK_EQ(atomic_load(&s.closes), 2);
    line_server_destroy(&s);
    close(fd);
    close(idle);
}

static void stop_deadline_closes_a_forgotten_suspended_connection(void) {
    struct line_server s;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    line_server_suspend_client(&s, fd);
    CHECK_EQ(line_server_stop(&s, 200), EVMPM_ETIMEDOUT);
    CHECK(wait_closed(fd, 5000));
    CHECK_EQ(atomic_load(&s.closes), 1);
    close(fd);
}

static void calls_after_stop_return_estopped(void) {
    struct line_server s;
    evmpm_stats st;
    evmpm_conn conn;
    int fd, other_port, other;
    static const char data[] = "x";
    line_server_start_default(&s);
    /* A handle that was valid until the stop closed its connection. */
    fd = line_client(&s);
    conn = (evmpm_conn)atomic_load(&s.last_conn);
    CHECK_OK(line_server_stop_only(&s, 1000));
    other = listen_loopback(16, &other_port);
    CHECK_EQ(evmpm_register_listener(s.rt, other), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_start(s.rt), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_stop(s.rt, 0), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_park_keepalive(s.rt, conn, 0), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_complete_write(s.rt, conn, data, 1, NULL, NULL, 0), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_close(s.rt, conn), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_suspend(s.rt, conn), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_hand_back_to_worker(s.rt, conn), EVMPM_ESTOPPED);
    /* Stats stay readable until destroy. */
    CHECK_OK(evmpm_get_stats(s.rt, &st, sizeof st));
    CHECK_EQ(st.connections, 0);
    CHECK_EQ(st.accepted, 1);
    line_server_destroy(&s);
    close(other);
    close(fd);
}

static void conn_accessors_after_stop_return_estopped(void) {
    struct line_server s;
    evmpm_conn conn;
    void *user = &user;
    int fd, cfd = -2;
    line_server_start_default(&s);
    fd = line_client(&s);
    conn = (evmpm_conn)atomic_load(&s.last_conn);
    CHECK_OK(line_server_stop_only(&s, 1000));
    /* The header lists EVMPM_ESTOPPED for these three as for every other
     * call that takes a connection; after a stop they must say so rather
     * than ESTALE, as evmpm_park_keepalive and the others do. */
    CHECK_EQ(evmpm_conn_set_user(s.rt, conn, NULL), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_conn_get_user(s.rt, conn, &user), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_conn_fd(s.rt, conn, &cfd), EVMPM_ESTOPPED);
    /* Nothing was written through the out-parameters. */
    CHECK(user == &user);
    CHECK_EQ(cfd, -2);
    line_server_destroy(&s);
    close(fd);
}

static void two_runtimes_are_independent(void) {
    struct line_server a, b;
    evmpm_config cfg_a, cfg_b;
    int ca, cb, cb2, i;
    line_server_config(&a, &cfg_a);
    line_server_config(&b, &cfg_b);
    cfg_a.worker_threads = 2;
    cfg_b.worker_threads = 3;
    line_server_start(&a, &cfg_a);
    line_server_start(&b, &cfg_b);
    ca = line_client(&a);
    cb = line_client(&b);
    CHECK_EQ(line_server_stats(&a).accepted, 1);
    CHECK_EQ(line_server_stats(&b).accepted, 1);
    /* The worker that answered is idle again only once its handler's
     * return is accounted for, a moment after the client saw the reply. */
    WAIT_UNTIL(line_server_stats(&a).workers_idle == 2, 5000);
    WAIT_UNTIL(line_server_stats(&b).workers_idle == 3, 5000);

    CHECK_OK(line_server_stop(&a, 1000));
    CHECK(wait_closed(ca, 5000));
    CHECK_EQ(atomic_load(&a.closes), 1);
    /* b is untouched: its connection still works, it still accepts. */
    for (i = 0; i < 20; i++)
        ping(cb);
    cb2 = line_client(&b);
    CHECK_EQ(line_server_stats(&b).accepted, 2);
    CHECK_EQ(atomic_load(&b.closes), 0);
    CHECK_EQ(line_server_stats(&b).connections, 2);
    CHECK_EQ(line_server_stats(&b).accepting_paused, 0);
    CHECK_OK(line_server_stop(&b, 1000));
    CHECK(wait_closed(cb, 5000));
    CHECK(wait_closed(cb2, 5000));
    CHECK_EQ(atomic_load(&b.closes), 2);
    CHECK_EQ(atomic_load(&a.double_closes) + atomic_load(&b.double_closes), 0);
    close(ca);
    close(cb);
    close(cb2);
}

static void destroy_stops_a_running_runtime(void) {
    struct line_server s;
    int baseline, fd;
    baseline = open_fd_count();
    line_server_start_default(&s);
    fd = line_client(&s);
    /* No evmpm_stop: destroy stops with a deadline of 0 itself. */
    atomic_store(&s.stop_called, 1);
    line_server_destroy(&s);
    CHECK(wait_closed(fd, 5000));
    CHECK_EQ(atomic_load(&s.closes), 1);
    close(fd);
    CHECK_EQ(open_fd_count(), baseline);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"graceful_stop_finishes_in_flight_requests", graceful_stop_finishes_in_flight_requests},
        {"stop_closes_idle_keepalive_at_once", stop_closes_idle_keepalive_at_once},
        {"stop_deadline_with_a_handler_blocked_forever", stop_deadline_with_a_handler_blocked_forever},
        {"stop_waits_for_a_suspended_connection", stop_waits_for_a_suspended_connection},
        {"stop_deadline_closes_a_forgotten_suspended_connection",
         stop_deadline_closes_a_forgotten_suspended_connection},
        {"calls_after_stop_return_estopped", calls_after_stop_return_estopped},
        {"conn_accessors_after_stop_return_estopped", conn_accessors_after_stop_return_estopped},
        {"two_runtimes_are_independent", two_runtimes_are_independent},
        {"destroy_stops_a_running_runtime", destroy_stops_a_running_runtime},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

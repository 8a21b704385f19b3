/* Admission control and shedding, Apache event-MPM style.
 *
 * Accepting pauses while open connections >= workers + factor * idle
 * workers (in floating point: 1.5 means 1.5), and resumes when a worker
 * goes idle or a connection closes. When every worker is stuck and work
 * waits, the oldest idle keep-alive connections are shed. HOLD keeps a
 * worker busy, so the number of idle workers is known exactly. */
#define _GNU_SOURCE
#include "harness.h"

#include <unistd.h>

/* Occupies one more worker with a HOLD, and waits until it runs. */
static int hold_worker(struct line_server *s) {
    long before = atomic_load(&s->in_handler);
    int fd = connect_loopback(s->port);
    send_str(fd, "HOLD\n");
    WAIT_UNTIL(atomic_load(&s->in_handler) == before + 1, 5000);
    return fd;
}

/* A client that connects and sends a request. */
static int request(struct line_server *s) {
    int fd = connect_loopback(s->port);
    send_str(fd, "PING\n");
    return fd;
}

/* Waits until the runtime is idle again after serving a request: the
 * worker has let go, so `busy` workers (the HOLDs) remain. */
static void settle(struct line_server *s, long busy) {
    WAIT_UNTIL(atomic_load(&s->in_handler) == busy && line_server_stats(s).workers_busy == (uint64_t)busy,
               5000);
}

static void fractional_factor_bounds_accepting(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int held[3], idle[3], late, later, i;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    cfg.async_request_worker_factor = 1.5;
    cfg.keepalive_timeout_ms = 60000;
    cfg.keepalive_shed_ms = 0; /* admission alone */
    line_server_start(&s, &cfg);
    /* Three of four workers busy: one idle, so the bound is
     * 4 + 1.5 * 1 = 5.5 connections. 6 may be open (5 < 5.5 admits the
     * sixth); a truncated factor (4 + 1) would stop at 5. */
    for (i = 0; i < 3; i++)
        held[i] = hold_worker(&s);
    for (i = 0; i < 3; i++) {
        idle[i] = request(&s);
        WAIT_UNTIL(line_server_stats(&s).accepted == (uint64_t)(4 + i), 5000);
        EXPECT_LINE(idle[i], "PONG");
        settle(&s, 3);
    }
    WAIT_UNTIL(line_server_stats(&s).accepting_paused == 1, 5000);
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, 6);
    CHECK_EQ(st.connections, 6);
    CHECK_EQ(st.workers_idle, 1);

    /* The seventh connects (the kernel completes it in the backlog) but is
     * not accepted, so its request is not served. */
    late = request(&s);
    CHECK(silent_for(late, 300));
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, 6);
    CHECK_EQ(st.accepting_paused, 1);

    /* A connection closes: 5 < 5.5, the seventh is accepted and served,
     * and with 6 open again accepting pauses again. */
    close(idle[0]);
    EXPECT_LINE(late, "PONG");
    CHECK_EQ(line_server_stats(&s).accepted, 7);
    settle(&s, 3);
    WAIT_UNTIL(line_server_stats(&s).accepting_paused == 1, 5000);
    later = request(&s);
    CHECK(silent_for(later, 200));
    CHECK_EQ(line_server_stats(&s).accepted, 7);

    /* A worker goes idle: 4 + 1.5 * 2 = 7 > 6, the eighth is accepted. */
    line_server_release_one_hold(&s);
    EXPECT_LINE(later, "PONG");
    CHECK_EQ(line_server_stats(&s).accepted, 8);
    settle(&s, 2);
    /* 7 open, bound 7: paused once more. */
    WAIT_UNTIL(line_server_stats(&s).accepting_paused == 1, 5000);
    CHECK_EQ(line_server_stats(&s).connections, 7);

    /* All idle: the bound is 10, accepting resumes. */
    line_server_release_holds(&s);
    for (i = 0; i < 3; i++)
        EXPECT_LINE(held[i], "HELD");
    WAIT_UNTIL(line_server_stats(&s).accepting_paused == 0, 5000);
    CHECK(line_server_stats(&s).accept_pauses >= 3);
    for (i = 0; i < 3; i++)
        close(held[i]);
    for (i = 1; i < 3; i++)
        close(idle[i]);
    close(late);
    close(later);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void zero_factor_admits_one_connection_per_worker(void) {
    struct line_server s;
    evmpm_config cfg;
    int a, b, c;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 2;
    cfg.async_request_worker_factor = 0.0;
    line_server_start(&s, &cfg);
    /* Bound 2 + 0 * idle = 2, however idle the workers are. */
    a = line_client(&s);
    b = line_client(&s);
    settle(&s, 0);
    WAIT_UNTIL(line_server_stats(&s).accepting_paused == 1, 5000);
    c = request(&s);
    CHECK(silent_for(c, 300));
    CHECK_EQ(line_server_stats(&s).accepted, 2);
    close(a);
    EXPECT_LINE(c, "PONG");
    CHECK_EQ(line_server_stats(&s).accepted, 3);
    close(b);
    close(c);
    CHECK_OK(line_server_stop(&s, 1000));
}

enum { SHED_IDLE = 6, SHED_MS = 100 };

/* Parks SHED_IDLE idle keep-alive clients, oldest first (each is parked
 * before the next connects) and two more that will bring work, then blocks
 * both workers with HOLDs. With no idle worker the admission bound is the
 * worker count, so the work that waits can only come from connections
 * already open: the last two send a request each. Returns when both wait
 * for a worker. */
static void stall_workers(struct line_server *s, int idle[SHED_IDLE], int held[2], int waiting[2],
                          int64_t *stalled_at) {
    int i;
    for (i = 0; i < SHED_IDLE + 2; i++) {
        int fd = line_client(s);
        if (i < SHED_IDLE)
            idle[i] = fd;
        else
            waiting[i - SHED_IDLE] = fd;
        /* Parked and linked into the keep-alive queue before the next. */
        WAIT_UNTIL(line_server_stats(s).workers_busy == 0 &&
                       line_server_stats(s).conns_keepalive == (uint64_t)(i + 1),
                   5000);
    }
    for (i = 0; i < 2; i++)
        held[i] = hold_worker(s);
    *stalled_at = now_ms();
    for (i = 0; i < 2; i++)
        send_str(waiting[i], "PING\n");
    WAIT_UNTIL(line_server_stats(s).conns_queued == 2, 5000);
}

static void close_all(int idle[SHED_IDLE], int held[2], int waiting[2]) {
    int i;
    for (i = 0; i < SHED_IDLE; i++)
        close(idle[i]);
    for (i = 0; i < 2; i++) {
        close(held[i]);
        close(waiting[i]);
    }
}

static void shedding_closes_the_oldest_keepalive_first(void) {
    struct line_server s;
    evmpm_config cfg;
    int idle[SHED_IDLE], held[2], waiting[2], i;
    int64_t stalled_at, shed_after, first_at, second_after;
    long shed;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 2;
    cfg.keepalive_timeout_ms = 60000;
    cfg.keepalive_shed_ms = (uint32_t)(SHED_MS * harness_slowdown());
    line_server_start(&s, &cfg);
    stall_workers(&s, idle, held, waiting, &stalled_at);
    WAIT_UNTIL(line_server_stats(&s).shed != 0, 5000);
    first_at = now_ms();
    shed_after = first_at - stalled_at;
    /* Not before the workers stalled for keepalive_shed_ms. */
    if (shed_after < SHED_MS * harness_slowdown() - 1)
        harness_fail(__FILE__, __LINE__, "shed %lld ms after the stall began, before %d ms",
                     (long long)shed_after, SHED_MS * harness_slowdown());
    /* One per waiting request, in one round: the second follows the first
     * at once, not a shed delay later (the next round), and no third
     * comes with them. */
    WAIT_UNTIL(line_server_stats(&s).shed >= 2, 5000);
    second_after = now_ms() - first_at;
    CHECK_EQ(line_server_stats(&s).shed, 2);
    if (second_after >= SHED_MS * harness_slowdown() / 2)
        harness_fail(__FILE__, __LINE__, "the second connection was shed %lld ms after the "
                     "first: one per round, not one per waiting request",
                     (long long)second_after);
    /* Unblock; the stall ends and shedding with it. */
    line_server_release_holds(&s);
    for (i = 0; i < 2; i++) {
        EXPECT_LINE(waiting[i], "PONG");
        EXPECT_LINE(held[i], "HELD");
    }
    settle(&s, 0);
    /* Another round may have come between the check and the release; the
     * shed ones must still be exactly the oldest. */
    shed = (long)line_server_stats(&s).shed;
    CHECK(shed >= 2);
    if (shed >= SHED_IDLE)
        harness_fail(__FILE__, __LINE__, "all %d idle connections were shed", SHED_IDLE);
    for (i = 0; i < SHED_IDLE; i++) {
        if (i < shed) {
            if (!wait_closed(idle[i], 5000))
                harness_fail(__FILE__, __LINE__, "idle connection %d (0 = oldest) is still open, "
                             "but %ld were shed", i, shed);
        } else {
            ping(idle[i]); /* younger: still served */
        }
    }
    for (i = 0; i < 2; i++)
        ping(waiting[i]);
    WAIT_UNTIL(atomic_load(&s.closes) == shed, 5000);
    CHECK_EQ(line_server_stats(&s).keepalive_expired, 0);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    close_all(idle, held, waiting);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static void shedding_off_when_shed_ms_is_zero(void) {
    struct line_server s;
    evmpm_config cfg;
    int idle[SHED_IDLE], held[2], waiting[2], i;
    int64_t stalled_at;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 2;
    cfg.keepalive_timeout_ms = 60000;
    cfg.keepalive_shed_ms = 0;
    line_server_start(&s, &cfg);
    stall_workers(&s, idle, held, waiting, &stalled_at);
    /* Five times the default shed delay with the workers stuck. */
    CHECK(silent_for(waiting[0], 500));
    CHECK_EQ(line_server_stats(&s).shed, 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    line_server_release_holds(&s);
    for (i = 0; i < 2; i++) {
        EXPECT_LINE(waiting[i], "PONG");
        EXPECT_LINE(held[i], "HELD");
    }
    /* Every idle connection is still there. */
    for (i = 0; i < SHED_IDLE; i++)
        ping(idle[i]);
    CHECK_EQ(line_server_stats(&s).shed, 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close_all(idle, held, waiting);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"fractional_factor_bounds_accepting", fractional_factor_bounds_accepting},
        {"zero_factor_admits_one_connection_per_worker", zero_factor_admits_one_connection_per_worker},
        {"shedding_closes_the_oldest_keepalive_first", shedding_closes_the_oldest_keepalive_first},
        {"shedding_off_when_shed_ms_is_zero", shedding_off_when_shed_ms_is_zero},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

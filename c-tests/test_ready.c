/* The request-readiness check: clients that send a request slowly wait on
 * the event thread, never on a worker, under the header timeout. The ready
 * callback here says "complete" once a '\n' is in the peeked bytes. */
#define _GNU_SOURCE
#include "harness.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_long ready_calls;

static int line_ready(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                      size_t len) {
    (void)user_data, (void)conn_user;
    CHECK(conn != 0);
    CHECK(len > 0);
    atomic_fetch_add(&ready_calls, 1);
    if (len >= 3 && memcmp(data, "BAD", 3) == 0)
        return EVMPM_REQUEST_REJECT;
    return memchr(data, '\n', len) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static void config(struct line_server *s, evmpm_config *cfg) {
    line_server_config(s, cfg);
    cfg->request_ready = line_ready;
}

/* config() then line_server_start, nothing else changed. */
static void start(struct line_server *s) {
    evmpm_config cfg;
    config(s, &cfg);
    line_server_start(s, &cfg);
}

static void slow_request_holds_no_worker(void) {
    struct line_server s;
    evmpm_config cfg;
    int slow, fast;
    config(&s, &cfg);
    cfg.worker_threads = 1;
    line_server_start(&s, &cfg);
    slow = connect_loopback(s.port);
    send_str(slow, "PI");
    WAIT_UNTIL(atomic_load(&ready_calls) == 1, 5000);
    /* The only worker is free: another client is served while the first
     * request is incomplete. */
    fast = line_client(&s);
    CHECK_EQ(atomic_load(&s.handler_calls), 1);
    /* The reply can arrive before the worker has finished parking. */
    WAIT_UNTIL(line_server_stats(&s).workers_busy == 0, 5000);
    send_str(slow, "NG\n");
    EXPECT_LINE(slow, "PONG");
    CHECK_EQ(atomic_load(&s.handler_calls), 2);
    /* The handler's own read found the whole request: the low-water mark
     * the event thread raised while waiting is back to normal, so a second
     * request on the same connection is answered too. */
    ping(slow);
    close(slow);
    close(fast);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void dribbled_request_wakes_once_per_segment(void) {
    struct line_server s;
    const char *req = "ECHO dribble\n";
    size_t i;
    int fd;
    start(&s);
    fd = connect_loopback(s.port);
    for (i = 0; i < strlen(req); i++) {
        send_all(fd, req + i, 1);
        /* Each byte is its own segment: the event thread must have looked
         * at it before the next is sent, so the count below is exact. */
        WAIT_UNTIL(atomic_load(&ready_calls) == (long)i + 1, 5000);
    }
    EXPECT_LINE(fd, "dribble");
    /* One look per byte, no spinning on bytes already seen, one handler
     * call for the whole request. */
    CHECK_EQ(atomic_load(&ready_calls), (long)strlen(req));
    CHECK_EQ(atomic_load(&s.handler_calls), 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void header_timeout_closes_slow_client(void) {
    struct line_server s;
    evmpm_config cfg;
    int64_t started;
    int fd;
    config(&s, &cfg);
    cfg.header_timeout_ms = 300;
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    started = now_ms();
    send_str(fd, "PI");
    CHECK(wait_closed(fd, 5000));
    CHECK(now_ms() - started >= 299);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(atomic_load(&s.handler_calls), 0);
    CHECK_EQ(line_server_stats(&s).timed_out, 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void header_clock_is_not_restarted_by_more_bytes(void) {
    struct line_server s;
    evmpm_config cfg;
    int64_t started;
    int fd, closed = 0;
    config(&s, &cfg);
    cfg.header_timeout_ms = 400;
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    started = now_ms();
    /* A byte every 50 ms never completes the line: the client is closed
     * 400 ms after its first byte, however often it sends. */
    while (!closed && now_ms() - started < 5000) {
        if (send(fd, "x", 1, MSG_NOSIGNAL) != 1)
            break;
        closed = wait_closed(fd, 50);
    }
    CHECK(closed || wait_closed(fd, 5000));
    CHECK(now_ms() - started < 5000);
    CHECK_EQ(atomic_load(&s.handler_calls), 0);
    WAIT_UNTIL(line_server_stats(&s).timed_out == 1, 5000);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void rejected_request_closes_without_handler(void) {
    struct line_server s;
    int fd;
    start(&s);
    fd = connect_loopback(s.port);
    send_str(fd, "BAD request\n");
    expect_closed_unserved(&s, fd);
    CHECK_EQ(line_server_stats(&s).rejected, 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void full_peek_window_goes_to_the_handler(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    config(&s, &cfg);
    cfg.request_peek_bytes = 16;
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    send_str(fd, "ECHO 0123456789abcdef"); /* 21 bytes, no newline */
    /* The window is full: the handler runs (and blocks reading the rest,
     * as a thread-per-connection server would). */
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    send_str(fd, "\n");
    EXPECT_LINE(fd, "0123456789abcdef");
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void partial_request_outlives_keepalive_timeout(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    config(&s, &cfg);
    /* Scaled as wait_closed scales its wait, so that a slow run still
     * starts its request before the keep-alive timeout. */
    cfg.keepalive_timeout_ms = (uint32_t)(100 * harness_slowdown());
    cfg.header_timeout_ms = 10000;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    send_str(fd, "PI");
    /* Once a request has started, the header timeout governs, not the
     * keep-alive timeout: still open four keep-alive timeouts later. */
    CHECK(!wait_closed(fd, 400));
    send_str(fd, "NG\n");
    EXPECT_LINE(fd, "PONG");
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void half_closed_incomplete_request_is_closed(void) {
    struct line_server s;
    int fd;
    start(&s);
    fd = connect_loopback(s.port);
    send_str(fd, "PI");
    CHECK(shutdown(fd, SHUT_WR) == 0);
    expect_closed_unserved(&s, fd);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void many_slow_clients_and_one_fast(void) {
    enum { SLOW = 200 };
    struct line_server s;
    evmpm_config cfg;
    int slow[SLOW];
    int i, fast;
    config(&s, &cfg);
    cfg.worker_threads = 2;
    line_server_start(&s, &cfg);
    for (i = 0; i < SLOW; i++) {
        slow[i] = connect_loopback(s.port);
        send_str(slow[i], "ECH");
    }
    WAIT_UNTIL(atomic_load(&ready_calls) == SLOW, 10000);
    fast = connect_loopback(s.port);
    for (i = 0; i < 100; i++)
        ping(fast);
    WAIT_UNTIL(line_server_stats(&s).workers_busy == 0, 5000);
    CHECK_EQ(atomic_load(&s.handler_calls), 100);
    for (i = 0; i < SLOW; i++)
        close(slow[i]);
    close(fast);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 10000);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"slow_request_holds_no_worker", slow_request_holds_no_worker},
        {"dribbled_request_wakes_once_per_segment", dribbled_request_wakes_once_per_segment},
        {"header_timeout_closes_slow_client", header_timeout_closes_slow_client},
        {"header_clock_is_not_restarted_by_more_bytes", header_clock_is_not_restarted_by_more_bytes},
        {"rejected_request_closes_without_handler", rejected_request_closes_without_handler},
        {"full_peek_window_goes_to_the_handler", full_peek_window_goes_to_the_handler},
        {"partial_request_outlives_keepalive_timeout", partial_request_outlives_keepalive_timeout},
        {"half_closed_incomplete_request_is_closed", half_closed_incomplete_request_is_closed},
        {"many_slow_clients_and_one_fast", many_slow_clients_and_one_fast},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

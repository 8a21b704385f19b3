/* The core path: accept, first request, keep-alive park and wake, the
 * keep-alive timeout, and the buffered-input flag. */
#define _GNU_SOURCE
#include "harness.h"

#include <string.h>
#include <unistd.h>

static void new_connection_reaches_handler(void) {
    struct line_server s;
    evmpm_stats st;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    CHECK_EQ(atomic_load(&s.wake_new), 1);
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, 1);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void silent_client_holds_no_worker(void) {
    struct line_server s;
    evmpm_config cfg;
    int silent, fd;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 1;
    line_server_start(&s, &cfg);
    silent = connect_loopback(s.port);
    WAIT_UNTIL(line_server_stats(&s).conns_reading == 1, 5000);
    /* With the only worker free, another client is served at once. */
    fd = line_client(&s);
    CHECK_EQ(atomic_load(&s.handler_calls), 1);
    /* The worker counts as busy until it has parked the connection. */
    WAIT_UNTIL(line_server_stats(&s).workers_busy == 0, 5000);
    close(fd);
    close(silent);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void keepalive_park_and_wake(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd, i;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 2;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    for (i = 0; i < 50; i++) {
        /* Between requests the connection is parked and no worker is busy. */
        WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 1 &&
                       line_server_stats(&s).workers_busy == 0,
                   5000);
        ping(fd);
    }
    CHECK_EQ(atomic_load(&s.wake_new), 1);
    CHECK_EQ(atomic_load(&s.wake_readable), 50);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void keepalive_timeout_closes(void) {
    struct line_server s;
    evmpm_config cfg;
    int64_t parked_at, closed_after;
    int fd;
    line_server_config(&s, &cfg);
    cfg.keepalive_timeout_ms = 200;
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    /* Taken before the request: the server parks the connection after it
     * answered, so its keep-alive clock starts later than this, however
     * long this thread takes to see the answer. */
    parked_at = now_ms();
    ping(fd);
    CHECK(wait_closed(fd, 5000));
    closed_after = now_ms() - parked_at;
    /* Not before the timeout (the clock may tick a millisecond early). */
    CHECK(closed_after >= 199);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(line_server_stats(&s).keepalive_expired, 1);
    CHECK_EQ(line_server_stats(&s).timed_out, 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void read_timeout_closes_silent_client(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    line_server_config(&s, &cfg);
    cfg.read_timeout_ms = 150;
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    expect_closed_unserved(&s, fd);
    CHECK_EQ(line_server_stats(&s).timed_out, 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void buffered_flag_skips_polling(void) {
    struct line_server s;
    int fd, i;
    line_server_start_default(&s);
    fd = connect_loopback(s.port);
    /* Three pipelined requests in one segment: the handler reads them all
     * in its first read, so the socket is empty for the second and third;
     * they must still be answered (EVMPM_PARK_BUFFERED). */
    send_str(fd, "PING\nECHO two\nECHO three\n");
    EXPECT_LINE(fd, "PONG");
    EXPECT_LINE(fd, "two");
    EXPECT_LINE(fd, "three");
    CHECK_EQ(atomic_load(&s.wake_buffered), 2);
    CHECK_EQ(atomic_load(&s.wake_readable), 0);
    for (i = 0; i < 3; i++)
        ping(fd);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void handler_returning_undecided_closes(void) {
    struct line_server s;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    send_str(fd, "RETURN\n");
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void peer_close_while_parked_runs_close_callback(void) {
    struct line_server s;
    int fd;
    line_server_start_default(&s);
    fd = line_client(&s);
    WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 1, 5000);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* The host keeps a dup() of the descriptor, so the socket outlives the
 * connection and so does its epoll registration, armed for the next
 * request when the keep-alive timeout closes it. The client's late bytes
 * then report one event under the dead connection's handle: the runtime
 * drops it, and keeps serving, in the slot too. */
static int dup_of_conn = -1;

static enum line_command_result dup_command(struct line_server *s, evmpm_conn c, int fd,
                                            const char *line) {
    (void)s, (void)c;
    if (strcmp(line, "DUP") != 0)
        return LINE_UNKNOWN;
    dup_of_conn = dup(fd);
    CHECK(dup_of_conn >= 0);
    line_reply(fd, "DUPPED\n");
    return LINE_PARK;
}

static void host_dup_outlives_the_connection(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd, other, i;
    line_server_config(&s, &cfg);
    cfg.worker_threads = 1;
    cfg.connection_limit = 1; /* the next client takes the same slot */
    cfg.keepalive_timeout_ms = (uint32_t)(100 * harness_slowdown());
    s.command = dup_command;
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    send_str(fd, "DUP\n");
    EXPECT_LINE(fd, "DUPPED");
    /* Closed by the keep-alive timeout: the write side is shut down, but
     * the host's dup keeps the socket, and its read side, open. */
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    send_str(fd, "PING\n");
    other = line_client(&s);
    for (i = 0; i < 10; i++)
        ping(other);
    CHECK_EQ(line_server_stats(&s).accepted, 2);
    CHECK_EQ(atomic_load(&s.closes), 1);
    /* The late PING was never served: nobody reads the dup. */
    CHECK_EQ(atomic_load(&s.handler_calls), 1 + 1 + 10);
    close(other);
    close(dup_of_conn);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"new_connection_reaches_handler", new_connection_reaches_handler},
        {"silent_client_holds_no_worker", silent_client_holds_no_worker},
        {"keepalive_park_and_wake", keepalive_park_and_wake},
        {"keepalive_timeout_closes", keepalive_timeout_closes},
        {"read_timeout_closes_silent_client", read_timeout_closes_silent_client},
        {"buffered_flag_skips_polling", buffered_flag_skips_polling},
        {"handler_returning_undecided_closes", handler_returning_undecided_closes},
        {"peer_close_while_parked_runs_close_callback", peer_close_while_parked_runs_close_callback},
        {"host_dup_outlives_the_connection", host_dup_outlives_the_connection},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

/* The handshake step (evmpm_listener_config.handshake): a preamble driven
 * without blocking before the first request, so clients slow to
 * handshake, or silent, hold no worker; done, failed, reset, timed out
 * and stopped connections each close once.
 *
 * The preamble here is a line "HELLO <name>\n" (name up to 64 bytes),
 * which the step peeks at and consumes once whole, answering "WELCOME\n";
 * then the line server's protocol (PING, ECHO, ...) runs as usual. */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NAME_MAX_LEN 64

static atomic_long step_calls;
static atomic_long step_on_blocking_fd; /* calls that found O_NONBLOCK off */
static atomic_int want_write_first;     /* the next call says WANT_WRITE once */
static atomic_int bad_value_first;      /* the next call returns 7 once */

static int preamble_step(void *listener_user, evmpm_runtime *rt, evmpm_conn conn, int fd,
                         void *conn_user) {
    static const char hello[] = "HELLO ";
    char buf[sizeof hello + NAME_MAX_LEN + 1];
    char *nl;
    ssize_t n;
    int one = 1;
    CHECK(listener_user == &step_calls);
    CHECK(rt != NULL);
    CHECK(conn != 0);
    CHECK(conn_user == NULL);
    atomic_fetch_add(&step_calls, 1);
    if (!(fcntl(fd, F_GETFL) & O_NONBLOCK))
        atomic_fetch_add(&step_on_blocking_fd, 1);
    if (atomic_exchange(&bad_value_first, 0))
        return 7;
    if (atomic_exchange(&want_write_first, 0))
        return EVMPM_HANDSHAKE_WANT_WRITE;
    n = recv(fd, buf, sizeof buf, MSG_PEEK);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? EVMPM_HANDSHAKE_WANT_READ
                                                       : EVMPM_HANDSHAKE_FAIL;
    if (n == 0)
        return EVMPM_HANDSHAKE_FAIL;
    if (memcmp(buf, hello, (size_t)n < sizeof hello - 1 ? (size_t)n : sizeof hello - 1) != 0)
        return EVMPM_HANDSHAKE_FAIL;
    nl = memchr(buf, '\n', (size_t)n);
    if (nl == NULL)
        return (size_t)n < sizeof buf ? EVMPM_HANDSHAKE_WANT_READ : EVMPM_HANDSHAKE_FAIL;
    /* Consume the preamble only: what follows is the first request. */
    CHECK_EQ(recv(fd, buf, (size_t)(nl - buf) + 1, 0), (nl - buf) + 1);
    CHECK_EQ(send(fd, "WELCOME\n", 8, MSG_NOSIGNAL), 8);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    return EVMPM_HANDSHAKE_DONE;
}

/* The handler's own command: is the descriptor blocking, as it must be
 * once the handshake is done? */
static enum line_command_result mode_command(struct line_server *s, evmpm_conn c, int fd,
                                             const char *line) {
    (void)s, (void)c;
    if (strcmp(line, "MODE") != 0)
        return LINE_UNKNOWN;
    line_reply(fd, fcntl(fd, F_GETFL) & O_NONBLOCK ? "NONBLOCKING\n" : "BLOCKING\n");
    return LINE_PARK;
}

/* A line server whose listener has the preamble step (and `flags`). */
static void start_flags(struct line_server *s, evmpm_config *cfg, uint32_t flags,
                        uint32_t header_timeout_ms) {
    evmpm_listener_config lc;
    s->command = mode_command;
    s->listen_fd = listen_loopback(1024, &s->port);
    CHECK_OK(evmpm_create(cfg, &s->rt));
    CHECK_OK(evmpm_listener_config_init(&lc, sizeof lc));
    lc.flags = flags;
    lc.user_data = &step_calls;
    lc.handshake = preamble_step;
    lc.header_timeout_ms = header_timeout_ms;
    CHECK_OK(evmpm_register_listener_ex(s->rt, s->listen_fd, &lc));
    CHECK_OK(evmpm_start(s->rt));
}

static void start(struct line_server *s, int workers, uint32_t header_timeout_ms) {
    evmpm_config cfg;
    line_server_config(s, &cfg);
    cfg.worker_threads = (uint32_t)workers;
    start_flags(s, &cfg, 0, header_timeout_ms);
}

/* Connects and completes the preamble. */
static int greeted_client(struct line_server *s) {
    int fd = connect_loopback(s->port);
    send_str(fd, "HELLO test\n");
    EXPECT_LINE(fd, "WELCOME");
    return fd;
}

static void preamble_then_requests(void) {
    struct line_server s;
    evmpm_stats st;
    int fd;
    start(&s, 4, 5000);
    fd = greeted_client(&s);
    ping(fd);
    send_str(fd, "MODE\n");
    EXPECT_LINE(fd, "BLOCKING");
    ping(fd);
    st = line_server_stats(&s);
    CHECK_EQ(st.handshakes, 1);
    CHECK_EQ(st.handshakes_failed, 0);
    CHECK_EQ(st.conns_handshake, 0);
    /* Once per connection: the keep-alive wake-ups did not step again. */
    CHECK_EQ(atomic_load(&step_calls), 1);
    CHECK_EQ(atomic_load(&step_on_blocking_fd), 0);
    CHECK_EQ(atomic_load(&s.wake_new), 1);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* The first request sent with the preamble, in one segment, is served at
 * once: the socket will not announce it again. */
static void request_with_the_preamble(void) {
    struct line_server s;
    int fd;
    start(&s, 4, 5000);
    fd = connect_loopback(s.port);
    send_str(fd, "HELLO x\nPING\n");
    EXPECT_LINE(fd, "WELCOME");
    EXPECT_LINE(fd, "PONG");
    CHECK_EQ(atomic_load(&step_calls), 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void nonblocking_listener_keeps_its_mode(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    line_server_config(&s, &cfg);
    start_flags(&s, &cfg, EVMPM_LISTEN_NONBLOCK, 5000);
    fd = greeted_client(&s);
    /* The line handler reads blocking; give it the line at once. */
    send_str(fd, "MODE\n");
    EXPECT_LINE(fd, "NONBLOCKING");
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* Dribbled preambles and silent clients wait without a worker: with one
 * worker, another client is served throughout. */
static void slow_and_silent_clients_hold_no_worker(void) {
    enum { SLOW = 100, SILENT = 100 };
    struct line_server s;
    int slow[SLOW], silent[SILENT];
    int i, fd;
    start(&s, 1, 20000);
    for (i = 0; i < SLOW; i++) {
        slow[i] = connect_loopback(s.port);
        send_str(slow[i], "HEL");
    }
    for (i = 0; i < SILENT; i++)
        silent[i] = connect_loopback(s.port);
    WAIT_UNTIL(atomic_load(&step_calls) >= SLOW, 10000);
    WAIT_UNTIL(line_server_stats(&s).conns_handshake == SLOW + SILENT, 10000);
    fd = greeted_client(&s);
    for (i = 0; i < 50; i++)
        ping(fd);
    /* One more byte each: one more step each, no spinning. */
    for (i = 0; i < SLOW; i++)
        send_str(slow[i], "L");
    WAIT_UNTIL(atomic_load(&step_calls) >= 2 * SLOW + 1, 10000);
    sleep_ms(100);
    CHECK(atomic_load(&step_calls) <= 2 * SLOW + 1 + 5);
    ping(fd);
    CHECK_EQ(atomic_load(&s.max_in_handler), 1);
    CHECK_EQ(atomic_load(&s.handler_calls), 51);
    WAIT_UNTIL(line_server_stats(&s).workers_busy == 0, 5000);
    CHECK_EQ(line_server_stats(&s).conns_handshake, SLOW + SILENT);
    for (i = 0; i < SLOW; i++)
        close(slow[i]);
    for (i = 0; i < SILENT; i++)
        close(silent[i]);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 10000);
    CHECK_EQ(atomic_load(&s.closes), SLOW + SILENT + 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* The header timeout runs from the accept, for silent clients and for
 * ones that keep sending part of a preamble alike. */
static void header_timeout_from_accept(void) {
    enum { SILENT = 20 };
    struct line_server s;
    int silent[SILENT];
    int64_t started;
    int i, dribbler, closed = 0;
    start(&s, 2, 400);
    started = now_ms();
    for (i = 0; i < SILENT; i++)
        silent[i] = connect_loopback(s.port);
    dribbler = connect_loopback(s.port);
    send_str(dribbler, "HELLO ");
    while (!closed && now_ms() - started < 5000) {
        if (send(dribbler, "x", 1, MSG_NOSIGNAL) != 1)
            break;
        closed = wait_closed(dribbler, 50);
    }
    CHECK(closed || wait_closed(dribbler, 5000));
    for (i = 0; i < SILENT; i++)
        CHECK(wait_closed(silent[i], 5000));
    CHECK(now_ms() - started >= 399);
    CHECK(now_ms() - started < 5000);
    WAIT_UNTIL(atomic_load(&s.closes) == SILENT + 1, 5000);
    CHECK_EQ(line_server_stats(&s).timed_out, SILENT + 1);
    CHECK_EQ(atomic_load(&s.handler_calls), 0);
    for (i = 0; i < SILENT; i++)
        close(silent[i]);
    close(dribbler);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void failed_preamble_closes_counted(void) {
    struct line_server s;
    int fd;
    start(&s, 2, 5000);
    fd = connect_loopback(s.port);
    send_str(fd, "GET / HTTP/1.1\r\n\r\n");
    expect_closed_unserved(&s, fd);
    close(fd);
    CHECK_EQ(line_server_stats(&s).handshakes_failed, 1);
    CHECK_EQ(line_server_stats(&s).handshakes, 0);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void reset_or_close_mid_handshake(void) {
    struct line_server s;
    int fd;
    start(&s, 2, 5000);
    fd = connect_loopback(s.port);
    send_str(fd, "HEL");
    WAIT_UNTIL(atomic_load(&step_calls) == 1, 5000);
    close_with_reset(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    /* A half close with part of a preamble: it can never be completed. */
    fd = connect_loopback(s.port);
    send_str(fd, "HELLO ab");
    WAIT_UNTIL(atomic_load(&step_calls) == 2, 5000);
    CHECK(shutdown(fd, SHUT_WR) == 0);
    CHECK(wait_closed(fd, 5000));
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(line_server_stats(&s).handshakes_failed, 2);
    CHECK_EQ(atomic_load(&s.handler_calls), 0);
    /* No spinning on the half-closed one. */
    CHECK(atomic_load(&step_calls) <= 3);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void want_write_is_honoured(void) {
    struct line_server s;
    int fd;
    start(&s, 2, 5000);
    atomic_store(&want_write_first, 1);
    fd = greeted_client(&s);
    ping(fd);
    /* WANT_WRITE, then writable at once: the preamble on the next call. */
    CHECK_EQ(atomic_load(&step_calls), 2);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void bad_step_value_fails_the_handshake(void) {
    struct line_server s;
    int fd;
    start(&s, 2, 5000);
    atomic_store(&bad_value_first, 1);
    fd = connect_loopback(s.port);
    send_str(fd, "HELLO x\n");
    expect_closed_unserved(&s, fd);
    close(fd);
    CHECK_EQ(line_server_stats(&s).handshakes_failed, 1);
    fd = greeted_client(&s);
    ping(fd);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* A graceful stop closes connections still in their handshake at once
 * (no request can have come), and serves the greeted ones' requests. */
static void stop_closes_handshakes_at_once(void) {
    enum { PENDING = 20 };
    struct line_server s;
    int fds[PENDING];
    int64_t started;
    int i, fd;
    start(&s, 2, 20000);
    for (i = 0; i < PENDING; i++) {
        fds[i] = connect_loopback(s.port);
        send_str(fds[i], "HEL");
    }
    fd = greeted_client(&s);
    ping(fd);
    WAIT_UNTIL(line_server_stats(&s).conns_handshake == PENDING, 5000);
    started = now_ms();
    CHECK_OK(line_server_stop_only(&s, 5000));
    CHECK(now_ms() - started < 2000 * harness_slowdown());
    CHECK_EQ(atomic_load(&s.closes), PENDING + 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    for (i = 0; i < PENDING; i++) {
        CHECK(wait_closed(fds[i], 5000));
        close(fds[i]);
    }
    close(fd);
    line_server_destroy(&s);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"preamble_then_requests", preamble_then_requests},
        {"request_with_the_preamble", request_with_the_preamble},
        {"nonblocking_listener_keeps_its_mode", nonblocking_listener_keeps_its_mode},
        {"slow_and_silent_clients_hold_no_worker", slow_and_silent_clients_hold_no_worker},
        {"header_timeout_from_accept", header_timeout_from_accept},
        {"failed_preamble_closes_counted", failed_preamble_closes_counted},
        {"reset_or_close_mid_handshake", reset_or_close_mid_handshake},
        {"want_write_is_honoured", want_write_is_honoured},
        {"bad_step_value_fails_the_handshake", bad_step_value_fails_the_handshake},
        {"stop_closes_handshakes_at_once", stop_closes_handshakes_at_once},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

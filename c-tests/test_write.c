/* Write completion: evmpm_complete_write hands a response to the runtime,
 * the worker is free at once, and the event thread sends the rest as the
 * client reads, under the write timeout. The line server's BIG n and
 * BIGCLOSE n send n bytes of 'a' + i % 26. */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BODY (8L << 20)
/* The client's receive buffer: with 8 MiB to send, the response backs up
 * into the runtime's write completion as long as the client does not read. */
#define SLOW_RCVBUF 8192


/* Sends "`cmd` n" (BIG or BIGCLOSE): a request for n bytes of the pattern. */
static void send_big(int fd, const char *cmd, long n) {
    char req[64];
    snprintf(req, sizeof req, "%s %ld\n", cmd, n);
    send_str(fd, req);
}

/* A client with the small receive buffer asks for BODY bytes with `cmd`
 * (BIG or BIGCLOSE) and reads nothing yet; returns once the response has
 * backed up into write completion. */
static int stalled_reader(struct line_server *s, const char *cmd) {
    int fd = connect_loopback_rcvbuf(s->port, SLOW_RCVBUF);
    send_big(fd, cmd, BODY);
    WAIT_UNTIL(line_server_stats(s).conns_writing == 1, 5000);
    return fd;
}

static void big_write_to_slow_reader_frees_the_worker(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int fd, other;
    line_server_config(&s, &cfg);
    /* One worker: serving another client during the write proves it free. */
    cfg.worker_threads = 1;
    line_server_start(&s, &cfg);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    send_big(fd, "BIG", BODY);
    /* Once the handler has returned and its worker is idle, the client has
     * read nothing of 8 MiB: the write must be on the event thread. */
    WAIT_UNTIL(atomic_load(&s.handler_calls) == 1 && atomic_load(&s.in_handler) == 0 &&
                   line_server_stats(&s).workers_busy == 0,
               5000);
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_writing, 1);
    CHECK_EQ(st.workers_busy, 0);
    CHECK_EQ(st.workers_idle, 1);
    CHECK_EQ(st.conns_in_handler, 0);
    CHECK_EQ(atomic_load(&s.releases), 0);
    /* The only worker serves someone else meanwhile. */
    other = line_client(&s);
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_writing, 1);
    CHECK_EQ(atomic_load(&s.releases), 0);
    /* Slowly: at most 16 KiB per read, 1 ms apart. */
    recv_pattern(fd, 0, (size_t)BODY, 16 * 1024, 1);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    /* Keep-alive after the write: the same connection takes a request. */
    ping(fd);
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_writing, 0);
    CHECK_EQ(st.timed_out, 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    close(other);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static void small_write_completes_on_the_worker(void) {
    struct line_server s;
    int fd;
    line_server_start_default(&s);
    fd = connect_loopback(s.port);
    /* Fits in the socket buffer: sent before the worker lets go. */
    send_str(fd, "BIG 1000\n");
    recv_pattern(fd, 0, 1000, 1000, 0);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    ping(fd);
    send_str(fd, "BIGCLOSE 1000\n");
    recv_pattern(fd, 0, 1000, 1000, 0);
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(atomic_load(&s.releases), 2);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void bigclose_closes_after_the_write(void) {
    struct line_server s;
    int fd;
    line_server_start_default(&s);
    fd = stalled_reader(&s, "BIGCLOSE");
    /* The connection stays open until the last byte is sent ... */
    CHECK_EQ(atomic_load(&s.closes), 0);
    recv_pattern(fd, 0, (size_t)BODY, 64 * 1024, 0);
    /* ... then closes: EOF right after the body. */
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(atomic_load(&s.releases), 1);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
}

static void write_timeout_closes_a_client_that_never_reads(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int64_t sent_at, closed_after;
    size_t got;
    int fd;
    line_server_config(&s, &cfg);
    cfg.write_timeout_ms = 200;
    line_server_start(&s, &cfg);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    sent_at = now_ms();
    send_big(fd, "BIG", BODY);
    WAIT_UNTIL(line_server_stats(&s).conns_writing == 1, 5000);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    closed_after = now_ms() - sent_at;
    /* The last byte went out after the request arrived, so the timeout
     * cannot have run out earlier than 200 ms after it was sent. */
    if (closed_after < 199)
        harness_fail(__FILE__, __LINE__, "closed %lld ms after the request, before the 200 ms "
                     "write timeout", (long long)closed_after);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    st = line_server_stats(&s);
    CHECK_EQ(st.timed_out, 1);
    CHECK_EQ(st.keepalive_expired, 0);
    /* The client sees the connection end before the body did, and what
     * came before the end is the body's start. */
    got = recv_pattern_or_end(fd, 0, (size_t)BODY, 64 * 1024, 0, 1);
    CHECK(got < (size_t)BODY);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static void slow_progress_is_not_a_write_timeout(void) {
    enum { BODY_SMALL = 2 << 20, TIMEOUT = 250 };
    struct line_server s;
    evmpm_config cfg;
    int64_t started, took;
    size_t got;
    int fd;
    line_server_config(&s, &cfg);
    cfg.write_timeout_ms = TIMEOUT;
    line_server_start(&s, &cfg);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    started = now_ms();
    send_big(fd, "BIG", BODY_SMALL);
    /* A read every 5 ms, each taking what the small receive buffer holds:
     * steady progress with no pause anywhere near the timeout, yet slow
     * enough that the write as a whole outlasts it several times. */
    got = recv_pattern_or_end(fd, 0, BODY_SMALL, 32 * 1024, 5, 1);
    took = now_ms() - started;
    if (got < BODY_SMALL)
        harness_fail(__FILE__, __LINE__,
                     "closed mid-write although the client read every 5 ms: %zu of %d "
                     "bytes in %lld ms, timed_out=%llu (write timeout %d ms)",
                     got, BODY_SMALL, (long long)took,
                     (unsigned long long)line_server_stats(&s).timed_out, TIMEOUT);
    /* Otherwise this case would prove nothing. */
    if (took < 2 * TIMEOUT)
        harness_fail(__FILE__, __LINE__, "the write took only %lld ms", (long long)took);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    ping(fd);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* Releases counted when the close callback ran (-1: it has not run). */
static atomic_long releases_at_close = -1;

static void record_releases_at_close(struct line_server *s, evmpm_conn c, int fd) {
    (void)c, (void)fd;
    atomic_store(&releases_at_close, atomic_load(&s->releases));
}

/* A send that fails (the client reset) abandons the write: the close
 * callback runs first, then the release, as for a write timeout. */
static void reset_mid_write_closes_once(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    line_server_config(&s, &cfg);
    s.close_hook = record_releases_at_close;
    line_server_start(&s, &cfg);
    fd = stalled_reader(&s, "BIG");
    recv_pattern(fd, 0, 100 * 1024, 16 * 1024, 0);
    CHECK_EQ(line_server_stats(&s).conns_writing, 1);
    close_with_reset(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    CHECK_EQ(atomic_load(&releases_at_close), 0);
    /* The slot is freed before the descriptor is closed and the close is
     * counted (its number must not be reused under a handle), so wait for
     * both rather than reading them in one snapshot. */
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    WAIT_UNTIL(line_server_stats(&s).closed == 1, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    /* Still exactly once each, after the stop had its chance to close. */
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"big_write_to_slow_reader_frees_the_worker", big_write_to_slow_reader_frees_the_worker},
        {"small_write_completes_on_the_worker", small_write_completes_on_the_worker},
        {"bigclose_closes_after_the_write", bigclose_closes_after_the_write},
        {"write_timeout_closes_a_client_that_never_reads",
         write_timeout_closes_a_client_that_never_reads},
        {"slow_progress_is_not_a_write_timeout", slow_progress_is_not_a_write_timeout},
        {"reset_mid_write_closes_once", reset_mid_write_closes_once},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

/*
 * Test harness for evmpm's C tests: checks that stop the process with the
 * failing expression, loopback socket helpers with deadlines, and a small
 * line-protocol server every test can configure.
 *
 * Each test program lists its cases with --list and runs one case per
 * process (the Rust side starts them), so a failing case cannot leave
 * descriptors or threads behind for the next one.
 */
#ifndef EVMPM_TEST_HARNESS_H
#define EVMPM_TEST_HARNESS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "evmpm.h"

/* ---- checks ------------------------------------------------------------ */

void harness_fail(const char *file, int line, const char *fmt, ...);
/* A failure report then also describes `rt` (its connections by state and
 * its workers); NULL before the runtime is destroyed. */
void harness_describe_runtime(evmpm_runtime *rt);

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond))                                                         \
            harness_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);            \
    } while (0)

#define CHECK_EQ(a, b)                                                       \
    do {                                                                     \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);      \
        if (check_a_ != check_b_)                                            \
            harness_fail(__FILE__, __LINE__, "CHECK_EQ(%s, %s): %lld != %lld", \
                         #a, #b, check_a_, check_b_);                        \
    } while (0)

/* An evmpm call that must succeed. */
#define CHECK_OK(call)                                                       \
    do {                                                                     \
        int check_rc_ = (call);                                              \
        if (check_rc_ != EVMPM_OK)                                           \
            harness_fail(__FILE__, __LINE__, "%s returned %d (%s)", #call,   \
                         check_rc_, evmpm_strerror(check_rc_));              \
    } while (0)

/* Reads one line from `fd` and fails unless it is `want`. */
#define EXPECT_LINE(fd, want)                                                \
    do {                                                                     \
        char expect_line_[256];                                              \
        recv_line((fd), expect_line_, sizeof expect_line_, 5000);            \
        if (strcmp(expect_line_, (want)) != 0)                               \
            harness_fail(__FILE__, __LINE__, "expected \"%s\", got \"%s\"", \
                         (want), expect_line_);                              \
    } while (0)

/* Polls `cond` every millisecond until it holds; fails after `ms`. */
#define WAIT_UNTIL(cond, ms)                                                 \
    do {                                                                     \
        int64_t wait_deadline_ = now_ms() + (ms) * harness_slowdown();        \
        while (!(cond)) {                                                    \
            if (now_ms() > wait_deadline_)                                   \
                harness_fail(__FILE__, __LINE__,                             \
                             "WAIT_UNTIL(%s) still false after %d ms", #cond, \
                             (int)(ms));                                     \
            sleep_ms(1);                                                     \
        }                                                                    \
    } while (0)

/* ---- cases -------------------------------------------------------------- */

struct test_case {
    const char *name;
    void (*run)(void);
};

/* main() of every test program: `--list`, or run the case named argv[1]. */
int run_cases(int argc, char **argv, const struct test_case *cases, size_t n);

/* ---- time ---------------------------------------------------------------- */

int64_t now_ms(void);
void sleep_ms(int ms);
/* 1 normally, larger under valgrind (EVMPM_TEST_SLOWDOWN), for deadlines. */
int harness_slowdown(void);

/* A call with no deadline of its own that might hang (evmpm_stop waits for
 * the event thread): fails the process naming `what` unless disarmed
 * within `ms` (scaled), instead of leaving the test to be killed silently. */
void watchdog_arm(int ms, const char *what);
void watchdog_disarm(void);

/* ---- sockets (127.0.0.1 only) ------------------------------------------- */

/* A listening socket on 127.0.0.1 with a kernel-chosen port. */
int listen_loopback(int backlog, int *port);
/* A blocking connection to 127.0.0.1:port. */
int connect_loopback(int port);
/* The same with SO_RCVBUF set to `bytes` before connecting, so the window
 * the client advertises stays small from the first segment: a slow reader. */
int connect_loopback_rcvbuf(int port, int bytes);
/* Connects the socket `fd`, made by the caller, to 127.0.0.1:port
 * (blocking) and sets TCP_NODELAY, as the two above do. */
void connect_socket_loopback(int fd, int port);
/* Closes with SO_LINGER {1, 0}: the kernel sends a reset, not a FIN. */
void close_with_reset(int fd);
void send_all(int fd, const void *buf, size_t len);
void send_str(int fd, const char *s);
/* Reads until `len` bytes arrived; fails after `ms`. */
void recv_exact(int fd, void *buf, size_t len, int ms);
/* Reads one '\n'-terminated line (without it) into buf; fails after `ms`. */
void recv_line(int fd, char *buf, size_t cap, int ms);
/* 1 if the peer closed (EOF or reset) within `ms`, 0 if still open. Any
 * data that arrives meanwhile is a failure. */
int wait_closed(int fd, int ms);
/* 1 if nothing arrives on `fd` for `ms` (0: nothing waits now). */
int silent_for(int fd, int ms);
/* Sets a small receive buffer so a large response backs up. */
void shrink_rcvbuf(int fd, int bytes);
/* Counts this process's open descriptors, leaving out /proc files (the
 * pool's monitor holds one for an instant while it reads a thread's state). */
int open_fd_count(void);

/* ---- the line server ------------------------------------------------------ */

/* What a test's own command hook (line_server.command) did with a line. */
enum line_command_result {
    LINE_UNKNOWN = 0, /* not the hook's command: the handler answers "ERR" */
    LINE_PARK,        /* handled; the handler parks the connection */
    LINE_DECIDED      /* handled, and the hook already decided (or chose not
                       * to, so that the runtime closes the connection) */
};

struct line_server;

/*
 * A runtime with a handler that speaks a line protocol, one command per line:
 *   PING           -> "PONG\n", park (EVMPM_PARK_BUFFERED if more lines wait)
 *   ECHO text      -> "text\n", park
 *   BIG n          -> n bytes of a repeating pattern via evmpm_complete_write,
 *                     then keep-alive
 *   BIGCLOSE n     -> the same, then close
 *   QUIT           -> "BYE\n", evmpm_close
 *   DONE           -> "BYE\n", evmpm_close_ex(EVMPM_CLOSE_CLIENT_DONE)
 *   SLEEP ms       -> sleeps in the handler, then "SLEPT\n", park
 *   SUSPEND        -> evmpm_suspend; the test resumes it with
 *                     line_server_resume_suspended()
 *   HOLD           -> blocks in the handler until line_server_release_holds()
 *                     (all) or line_server_release_one_hold() (one), then
 *                     "HELD\n", park
 *   RETURN         -> returns without deciding (the runtime closes)
 * Any other line goes to the test's `command` hook if it set one, else is
 * answered "ERR\n".
 * The handler reads with blocking read(2) as a thread-per-connection server
 * would, keeps unread bytes in per-connection state (evmpm_conn_set_user)
 * and frees that state in the close callback.
 */
struct line_server {
    evmpm_runtime *rt;
    int listen_fd;
    int port;
    atomic_long handler_calls;
    atomic_long wake_new, wake_readable, wake_buffered, wake_resumed;
    atomic_long closes;          /* close callbacks */
    atomic_long double_closes;   /* close callbacks for an already-closed conn */
    atomic_long in_handler;      /* handlers running now */
    atomic_long max_in_handler;  /* the most ever running at once */
    atomic_long releases;        /* complete-write buffers released */
    atomic_int holds_released;
    atomic_int hold_tokens;      /* HOLDs that may end, one each */
    atomic_ullong suspended_conn; /* last SUSPENDed connection, 0 if none */
    atomic_long suspended_count;
    atomic_ullong last_conn;     /* connection of the last handler call */
    /* Set before evmpm_stop: from then on a handler's decision may return
     * EVMPM_ESTOPPED (a handler that outlived a forced stop). */
    atomic_int stop_called;
    /* Optional, set after line_server_config: a test's own commands, run in
     * the handler with the line (without '\n'). */
    enum line_command_result (*command)(struct line_server *s, evmpm_conn c, int fd,
                                        const char *line);
    /* Optional: runs first in every close callback. */
    void (*close_hook)(struct line_server *s, evmpm_conn c, int fd);
    void *test_data; /* for the hooks */
};

/* Fills `cfg` with defaults plus the line handler (call, then adjust). */
void line_server_config(struct line_server *s, evmpm_config *cfg);
/* Creates, registers a fresh loopback listener and starts. */
void line_server_start(struct line_server *s, const evmpm_config *cfg);
/* line_server_config then line_server_start, every default kept. */
void line_server_start_default(struct line_server *s);
/* Stops with `timeout_ms`, destroys, closes the listener; returns stop's
 * code. */
int line_server_stop(struct line_server *s, uint32_t timeout_ms);
/* evmpm_stop under the watchdog (it must return about at its deadline);
 * sets stop_called first. */
int line_server_stop_only(struct line_server *s, uint32_t timeout_ms);
/* evmpm_destroy under the watchdog, then closes the listener: frees a
 * runtime the test stopped itself (or one still running, which destroy
 * stops with a deadline of 0). */
void line_server_destroy(struct line_server *s);
void line_server_release_holds(struct line_server *s);
/* Lets exactly one HOLD (whichever looks first) end. */
void line_server_release_one_hold(struct line_server *s);
/* Sends SUSPEND on client `fd` and waits until the handler has suspended
 * and returned: the host holds the connection (the only suspended one)
 * and no worker runs for it. Returns its handle. */
evmpm_conn line_server_suspend_client(struct line_server *s, int fd);
/* evmpm_hand_back_to_worker for the last SUSPENDed connection; its code. */
int line_server_resume_suspended(struct line_server *s);
evmpm_stats line_server_stats(struct line_server *s);
/* Writes all of `s` to `fd` from a handler (a gone peer is ignored: the
 * handler's next read sees it). */
/* Sends all of s (waiting in poll on a non-blocking descriptor); a client
 * that went away is left to its next read. */
void line_reply(int fd, const char *s);

/* A handler's line reader: bytes read and not yet taken, kept in the
 * connection's own state between handler runs. */
struct line_reader {
    size_t len;
    char buf[1024];
};
/* Takes one line (without its newline) out of r; 1 if there was one. */
int line_reader_take(struct line_reader *r, char *line, size_t cap);
/* 1 if a whole line is buffered (park with EVMPM_PARK_BUFFERED). */
int line_reader_has_line(const struct line_reader *r);
/* The next line, read as a blocking server does (in poll on a non-blocking
 * descriptor). A handler woken for input that finds none for 10 s fails
 * the test instead of hanging it: evmpm must never run a handler for input
 * that is not there (`reason` is in the message). 0: the client has gone. */
int line_reader_next(int fd, struct line_reader *r, char *line, size_t cap, int reason);
/* The runtime closed client `fd`, its only connection, without ever
 * running the handler: the client sees the end, the close callback ran,
 * no handler call was made. */
void expect_closed_unserved(struct line_server *s, int fd);
/* Connects and does one PING round trip. */
int line_client(struct line_server *s);
void ping(int fd);

/* ---- pattern bodies: byte i of a test body is 'a' + i % 26 ------------------ */

char pattern_byte(size_t i);
/* Reads up to `n` bytes of the pattern starting at pattern byte `offset`,
 * `chunk` (at most 64 KiB) per recv and `pause_ms` after each (a slow
 * reader), checking each byte. Returns the bytes read: fewer than `n` only
 * if the connection ended and `may_end`; otherwise an early end fails. */
size_t recv_pattern_or_end(int fd, size_t offset, size_t n, size_t chunk, int pause_ms,
                           int may_end);
void recv_pattern(int fd, size_t offset, size_t n, size_t chunk, int pause_ms);

#endif

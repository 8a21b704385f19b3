/* Misuse of the API: every wrong call returns its documented error code,
 * has no effect, and never crashes. Each row names the call it makes; the
 * log lists every row with its code. */
#define _GNU_SOURCE
#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_int rows;

static void expect_code(const char *file, int line, const char *call, int got, int want) {
    atomic_fetch_add(&rows, 1);
    printf("%-78s %3d %s\n", call, got, got == want ? "" : "<- WRONG");
    fflush(stdout);
    if (got != want)
        harness_fail(file, line, "%s returned %d (%s), documented: %d (%s)", call, got,
                     evmpm_strerror(got), want, evmpm_strerror(want));
}

/* One row of the table: `call` must return `code`. */
#define EXPECT_CODE(call, code) expect_code(__FILE__, __LINE__, #call, (call), (code))

static void noop_handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, int reason) {
    (void)user_data;
    (void)fd;
    (void)reason;
    evmpm_close(rt, conn);
}

static evmpm_runtime *make_runtime(void) {
    evmpm_config cfg;
    evmpm_runtime *rt = NULL;
    CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
    cfg.worker_threads = 1;
    cfg.handler = noop_handler;
    CHECK_OK(evmpm_create(&cfg, &rt));
    CHECK(rt != NULL);
    return rt;
}

static atomic_long releases;
static void count_release(void *arg) {
    (void)arg;
    atomic_fetch_add(&releases, 1);
}
static const char data[] = "data\n";

/* ---- NULL pointers ---------------------------------------------------------- */

static void null_pointers(void) {
    evmpm_config cfg;
    evmpm_stats st;
    evmpm_runtime *rt, *out;
    evmpm_conn c = ((evmpm_conn)1 << 32) | 1; /* shaped like a handle */
    void *user;
    int fd;
    CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
    cfg.handler = noop_handler;
    rt = make_runtime();

    EXPECT_CODE(evmpm_config_init(NULL, sizeof(evmpm_config)), EVMPM_EINVAL);
    out = rt; /* not NULL: must be cleared on error */
    EXPECT_CODE(evmpm_create(NULL, &out), EVMPM_EINVAL);
    CHECK(out == NULL);
    EXPECT_CODE(evmpm_create(&cfg, NULL), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_register_listener(NULL, 0), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_start(NULL), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_stop(NULL, 0), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_destroy(NULL), EVMPM_OK); /* documented: ignored */
    EXPECT_CODE(evmpm_park_keepalive(NULL, c, 0), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_hand_back_to_worker(NULL, c), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_complete_write(NULL, c, data, 5, NULL, NULL, 0), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_suspend(NULL, c), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_close(NULL, c), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_conn_set_user(NULL, c, NULL), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_conn_get_user(NULL, c, &user), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_conn_get_user(rt, c, NULL), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_conn_fd(NULL, c, &fd), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_conn_fd(rt, c, NULL), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_get_stats(NULL, &st, sizeof st), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_get_stats(rt, NULL, sizeof(evmpm_stats)), EVMPM_EINVAL);
    /* NULL data is only wrong with a length. */
    EXPECT_CODE(evmpm_complete_write(rt, 0, NULL, 1, NULL, NULL, 0), EVMPM_EINVAL);
    CHECK_OK(evmpm_destroy(rt));
}

/* ---- configurations ------------------------------------------------------------ */

static void cfg_no_handler(evmpm_config *c) { c->handler = NULL; }
static void cfg_zero_workers(evmpm_config *c) { c->worker_threads = 0; }
static void cfg_too_many_workers(evmpm_config *c) { c->worker_threads = 4097; }
static void cfg_nan_factor(evmpm_config *c) { c->async_request_worker_factor = NAN; }
static void cfg_infinite_factor(evmpm_config *c) { c->async_request_worker_factor = INFINITY; }
static void cfg_negative_factor(evmpm_config *c) { c->async_request_worker_factor = -0.5; }
static void cfg_zero_keepalive(evmpm_config *c) { c->keepalive_timeout_ms = 0; }
static void cfg_zero_read_timeout(evmpm_config *c) { c->read_timeout_ms = 0; }
static void cfg_zero_write_timeout(evmpm_config *c) { c->write_timeout_ms = 0; }
static void cfg_zero_limit(evmpm_config *c) { c->connection_limit = 0; }
static void cfg_huge_limit(evmpm_config *c) { c->connection_limit = (1u << 20) + 1; }
static void cfg_tiny_stack(evmpm_config *c) { c->worker_stack_size = 4096; }
static void cfg_zero_header_timeout(evmpm_config *c) { c->header_timeout_ms = 0; }
static void cfg_zero_peek(evmpm_config *c) { c->request_peek_bytes = 0; }
static void cfg_huge_peek(evmpm_config *c) { c->request_peek_bytes = 32769; }
static void cfg_size_zero(evmpm_config *c) { c->size = 0; }
static void cfg_size_short(evmpm_config *c) { c->size = (uint32_t)sizeof *c - 8; }
static void cfg_never_initialised(evmpm_config *c) {
    evmpm_handler_fn h = c->handler;
    memset(c, 0, sizeof *c);
    c->handler = h;
    c->worker_threads = 4;
}
/* The edges that are still valid. */
static void cfg_one_worker(evmpm_config *c) { c->worker_threads = 1; }
static void cfg_max_workers_zero_factor(evmpm_config *c) {
    c->worker_threads = 4096;
    c->async_request_worker_factor = 0.0;
    c->worker_stack_size = 64 << 10;
}
static void cfg_zero_linger_and_shed(evmpm_config *c) {
    c->linger_timeout_ms = 0;
    c->keepalive_shed_ms = 0;
}

static void bad_configs(void) {
    static const struct {
        const char *name;
        void (*mutate)(evmpm_config *c);
        int code;
    } table[] = {
        {"no handler", cfg_no_handler, EVMPM_EINVAL},
        {"0 worker threads", cfg_zero_workers, EVMPM_EINVAL},
        {"4097 worker threads", cfg_too_many_workers, EVMPM_EINVAL},
        {"NaN factor", cfg_nan_factor, EVMPM_EINVAL},
        {"negative factor", cfg_negative_factor, EVMPM_EINVAL},
        {"keep-alive timeout 0", cfg_zero_keepalive, EVMPM_EINVAL},
        {"read timeout 0", cfg_zero_read_timeout, EVMPM_EINVAL},
        {"write timeout 0", cfg_zero_write_timeout, EVMPM_EINVAL},
        {"connection limit 0", cfg_zero_limit, EVMPM_EINVAL},
        {"connection limit 2^20 + 1", cfg_huge_limit, EVMPM_EINVAL},
        {"4 KiB worker stack", cfg_tiny_stack, EVMPM_EINVAL},
        {"header timeout 0", cfg_zero_header_timeout, EVMPM_EINVAL},
        {"peek bytes 0", cfg_zero_peek, EVMPM_EINVAL},
        {"peek bytes 32769", cfg_huge_peek, EVMPM_EINVAL},
        {"size 0", cfg_size_zero, EVMPM_EVERSION},
        {"size below the oldest layout", cfg_size_short, EVMPM_EVERSION},
        {"not filled by evmpm_config_init", cfg_never_initialised, EVMPM_EVERSION},
        {"1 worker", cfg_one_worker, EVMPM_OK},
        {"infinite factor (no admission rule)", cfg_infinite_factor, EVMPM_OK},
        {"4096 workers of 64 KiB, factor 0", cfg_max_workers_zero_factor, EVMPM_OK},
        {"linger 0, shedding off", cfg_zero_linger_and_shed, EVMPM_OK},
    };
    size_t i;
    for (i = 0; i < sizeof table / sizeof table[0]; i++) {
        evmpm_config cfg;
        evmpm_runtime *rt = (evmpm_runtime *)&cfg; /* garbage: must be overwritten */
        char what[128];
        int rc;
        CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
        cfg.handler = noop_handler;
        table[i].mutate(&cfg);
        rc = evmpm_create(&cfg, &rt);
        snprintf(what, sizeof what, "evmpm_create: %s", table[i].name);
        expect_code(__FILE__, __LINE__, what, rc, table[i].code);
        if (rc == EVMPM_OK) {
            CHECK(rt != NULL);
            CHECK_OK(evmpm_destroy(rt));
        } else {
            CHECK(rt == NULL);
        }
    }
}

/* ---- listeners ----------------------------------------------------------------- */

static int udp_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    return fd;
}

static int unlistening_tcp_socket(void) {
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0); /* bound, never listen()ed */
    return fd;
}

static void bad_listeners(void) {
    evmpm_runtime *rt = make_runtime(), *rt2 = make_runtime();
    int pipefd[2], devnull, closed, udp, unlistening, listener, port, client, accepted;
    CHECK(pipe(pipefd) == 0);
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(devnull >= 0);
    closed = dup(devnull);
    CHECK(closed >= 0);
    close(closed);
    udp = udp_socket();
    unlistening = unlistening_tcp_socket();
    listener = listen_loopback(16, &port);
    client = connect_loopback(port);
    accepted = accept(listener, NULL, NULL);
    CHECK(accepted >= 0);

    EXPECT_CODE(evmpm_register_listener(rt, pipefd[0]), EVMPM_ENOTSOCK);
    EXPECT_CODE(evmpm_register_listener(rt, devnull), EVMPM_ENOTSOCK);
    EXPECT_CODE(evmpm_register_listener(rt, closed), EVMPM_ENOTSOCK);
    EXPECT_CODE(evmpm_register_listener(rt, -1), EVMPM_ENOTSOCK);
    EXPECT_CODE(evmpm_register_listener(rt, udp), EVMPM_ENOTSOCK);
    EXPECT_CODE(evmpm_register_listener(rt, unlistening), EVMPM_ENOTLISTENER);
    EXPECT_CODE(evmpm_register_listener(rt, client), EVMPM_ENOTLISTENER);
    EXPECT_CODE(evmpm_register_listener(rt, accepted), EVMPM_ENOTLISTENER);
    EXPECT_CODE(evmpm_register_listener(rt, listener), EVMPM_OK);
    EXPECT_CODE(evmpm_register_listener(rt, listener), EVMPM_EEXIST);
    /* Another runtime may share it (documented). */
    EXPECT_CODE(evmpm_register_listener(rt2, listener), EVMPM_OK);
    CHECK_OK(evmpm_start(rt));
    /* Still a duplicate once running. */
    EXPECT_CODE(evmpm_register_listener(rt, listener), EVMPM_EEXIST);
    CHECK_OK(evmpm_destroy(rt));
    CHECK_OK(evmpm_destroy(rt2));
    close(pipefd[0]);
    close(pipefd[1]);
    close(devnull);
    close(udp);
    close(unlistening);
    close(client);
    close(accepted);
    close(listener);
}

/* ---- stale handles --------------------------------------------------------------- */

/* Every call that takes a connection refuses `c` as stale, and writes
 * nothing through its out-parameters. */
static void expect_stale_everywhere(evmpm_runtime *rt, evmpm_conn c) {
    void *user = &user;
    int fd = -2;
    printf("handle 0x%016llx:\n", (unsigned long long)c);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_hand_back_to_worker(rt, c), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_complete_write(rt, c, data, 5, count_release, NULL, 0), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_suspend(rt, c), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_close(rt, c), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_conn_set_user(rt, c, &fd), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_conn_get_user(rt, c, &user), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_conn_fd(rt, c, &fd), EVMPM_ESTALE);
    CHECK(user == &user);
    CHECK_EQ(fd, -2);
    CHECK_EQ(atomic_load(&releases), 0);
}

static void stale_handles(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_conn closed;
    int fd;
    line_server_config(&s, &cfg);
    /* One slot: the next connection must reuse the closed one's. */
    cfg.connection_limit = 1;
    line_server_start(&s, &cfg);
    /* A connection that was real, and has closed. */
    fd = line_client(&s);
    closed = (evmpm_conn)atomic_load(&s.last_conn);
    send_str(fd, "QUIT\n");
    EXPECT_LINE(fd, "BYE");
    CHECK(wait_closed(fd, 5000));
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    expect_stale_everywhere(s.rt, closed);
    /* 0, never a handle. */
    expect_stale_everywhere(s.rt, 0);
    /* Made up: a slot that exists with a generation it never had; a slot
     * past the table; a value below 2^32 (no generation at all). */
    expect_stale_everywhere(s.rt, ((evmpm_conn)0xdeadbeefu << 32) | 7);
    expect_stale_everywhere(s.rt, ((evmpm_conn)1 << 32) | 0xffffff);
    expect_stale_everywhere(s.rt, 5);
    expect_stale_everywhere(s.rt, UINT64_MAX);
    /* The slot of the closed connection, reused: the old handle still
     * names nothing, and the new connection is untouched. */
    fd = line_client(&s);
    WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 1, 5000);
    CHECK((evmpm_conn)atomic_load(&s.last_conn) != closed);
    expect_stale_everywhere(s.rt, closed);
    CHECK_EQ(line_server_stats(&s).conns_keepalive, 1);
    ping(fd);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* ---- in a handler -------------------------------------------------------------- */

/* Each row runs in the handler of a fresh connection ("MISUSE n"), makes
 * its wrong calls, and leaves a valid decision behind (`ends` says which:
 * the client then sees its connection parked or closed). */
enum ends { PARKED, CLOSED };

static void in_park_twice(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_ESTATE);
}

static void in_park_then_complete_write(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
    EXPECT_CODE(evmpm_complete_write(rt, c, data, 5, count_release, NULL, EVMPM_WRITE_KEEPALIVE),
                EVMPM_ESTATE);
}

static void in_close_then_complete_write(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_close(rt, c), EVMPM_OK);
    EXPECT_CODE(evmpm_complete_write(rt, c, data, 5, count_release, NULL, 0), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_close(rt, c), EVMPM_ESTATE);
}

static void in_complete_write_then_close(evmpm_runtime *rt, evmpm_conn c) {
    static const char none[1];
    /* An empty write (NULL data, length 0) is valid, then parks. */
    EXPECT_CODE(evmpm_complete_write(rt, c, NULL, 0, NULL, NULL, EVMPM_WRITE_KEEPALIVE), EVMPM_OK);
    EXPECT_CODE(evmpm_close(rt, c), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_complete_write(rt, c, none, 0, NULL, NULL, 0), EVMPM_ESTATE);
}

static void in_suspend_twice(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_suspend(rt, c), EVMPM_OK);
    EXPECT_CODE(evmpm_suspend(rt, c), EVMPM_ESTATE);
    /* Still the handler's: it may decide after all. */
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
}

static void in_park_then_suspend(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
    EXPECT_CODE(evmpm_suspend(rt, c), EVMPM_ESTATE);
}

static void in_hand_back_unsuspended(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_hand_back_to_worker(rt, c), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
    /* Parked, not suspended. */
    EXPECT_CODE(evmpm_hand_back_to_worker(rt, c), EVMPM_ESTATE);
}

static void in_unknown_flags(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 2), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0x80000000u), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0xffffffffu), EVMPM_EINVAL);
    /* 1 and 2 are EVMPM_WRITE_KEEPALIVE and EVMPM_WRITE_BUFFERED. */
    EXPECT_CODE(evmpm_complete_write(rt, c, data, 5, count_release, NULL, 4), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_complete_write(rt, c, data, 5, count_release, NULL,
                                     EVMPM_WRITE_KEEPALIVE | 8),
                EVMPM_EINVAL);
    EXPECT_CODE(evmpm_complete_write(rt, c, data, 5, count_release, NULL, 0xffffffffu),
                EVMPM_EINVAL);
    /* None of that counted as the decision. */
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
}

static void in_null_data(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_complete_write(rt, c, NULL, 5, count_release, NULL, 0), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_complete_write(rt, c, NULL, SIZE_MAX, NULL, NULL, 0), EVMPM_EINVAL);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
}

static void in_lifecycle_calls(evmpm_runtime *rt, evmpm_conn c) {
    EXPECT_CODE(evmpm_stop(rt, 0), EVMPM_ETHREAD);
    EXPECT_CODE(evmpm_stop(rt, 1000), EVMPM_ETHREAD);
    EXPECT_CODE(evmpm_destroy(rt), EVMPM_ETHREAD);
    EXPECT_CODE(evmpm_start(rt), EVMPM_ESTATE);
    /* The runtime is unharmed: the decision works. */
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
}

static void in_wrong_handles(evmpm_runtime *rt, evmpm_conn c) {
    /* Same slot, other generation; no handle; another slot. */
    EXPECT_CODE(evmpm_park_keepalive(rt, c + ((evmpm_conn)1 << 32), 0), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_park_keepalive(rt, 0, 0), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_close(rt, c ^ 1), EVMPM_ESTALE);
    EXPECT_CODE(evmpm_park_keepalive(rt, c, 0), EVMPM_OK);
}

static const struct {
    const char *name;
    void (*run)(evmpm_runtime *rt, evmpm_conn c);
    enum ends ends;
} in_handler[] = {
    {"park twice", in_park_twice, PARKED},
    {"park, then complete-write", in_park_then_complete_write, PARKED},
    {"close, then complete-write, park, close", in_close_then_complete_write, CLOSED},
    {"complete-write, then close", in_complete_write_then_close, PARKED},
    {"suspend twice", in_suspend_twice, PARKED},
    {"park, then suspend", in_park_then_suspend, PARKED},
    {"hand back a connection that is not suspended", in_hand_back_unsuspended, PARKED},
    {"unknown flags", in_unknown_flags, PARKED},
    {"NULL data with a length", in_null_data, PARKED},
    {"stop, destroy, start from the handler", in_lifecycle_calls, PARKED},
    {"handles that are not this connection", in_wrong_handles, PARKED},
};

static evmpm_runtime *handler_rt;

static enum line_command_result misuse_command(struct line_server *s, evmpm_conn c, int fd,
                                               const char *line) {
    int n;
    (void)s;
    if (sscanf(line, "MISUSE %d", &n) != 1)
        return LINE_UNKNOWN;
    CHECK(n >= 0 && (size_t)n < sizeof in_handler / sizeof in_handler[0]);
    printf("in the handler: %s\n", in_handler[n].name);
    in_handler[n].run(handler_rt, c);
    /* Still this handler's socket until it returns. */
    line_reply(fd, "DONE\n");
    return LINE_DECIDED;
}

static void misuse_in_handler(void) {
    struct line_server s;
    evmpm_config cfg;
    size_t i;
    long closes = 0;
    line_server_config(&s, &cfg);
    s.command = misuse_command;
    line_server_start(&s, &cfg);
    handler_rt = s.rt;
    for (i = 0; i < sizeof in_handler / sizeof in_handler[0]; i++) {
        char req[32];
        int fd = line_client(&s);
        snprintf(req, sizeof req, "MISUSE %zu\n", i);
        send_str(fd, req);
        EXPECT_LINE(fd, "DONE");
        if (in_handler[i].ends == PARKED)
            ping(fd); /* parked and served again */
        else
            CHECK(wait_closed(fd, 5000));
        close(fd);
        /* Either way it ends now, with one close callback. */
        closes++;
        WAIT_UNTIL(atomic_load(&s.closes) == closes, 5000);
    }
    /* No refused write kept a buffer: nothing was ever released. */
    CHECK_EQ(atomic_load(&releases), 0);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* ---- in the close callback --------------------------------------------------- */

static atomic_int close_stop_rc = 1, close_destroy_rc = 1, close_park_rc = 1;
static atomic_int close_get_user_rc = 1, close_set_user_rc = 1, close_fd_rc = 1;

static void misuse_in_close(struct line_server *s, evmpm_conn c, int fd) {
    void *user = NULL;
    int conn_fd = -1;
    (void)fd;
    atomic_store(&close_stop_rc, evmpm_stop(s->rt, 0));
    atomic_store(&close_destroy_rc, evmpm_destroy(s->rt));
    /* Taken away from the host: the handle is stale from here on. */
    atomic_store(&close_park_rc, evmpm_park_keepalive(s->rt, c, 0));
    atomic_store(&close_get_user_rc, evmpm_conn_get_user(s->rt, c, &user));
    atomic_store(&close_set_user_rc, evmpm_conn_set_user(s->rt, c, &user));
    atomic_store(&close_fd_rc, evmpm_conn_fd(s->rt, c, &conn_fd));
}

static void misuse_in_close_callback(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    line_server_config(&s, &cfg);
    s.close_hook = misuse_in_close;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    send_str(fd, "QUIT\n");
    EXPECT_LINE(fd, "BYE");
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    EXPECT_CODE(atomic_load(&close_stop_rc), EVMPM_ETHREAD);
    EXPECT_CODE(atomic_load(&close_destroy_rc), EVMPM_ETHREAD);
    EXPECT_CODE(atomic_load(&close_park_rc), EVMPM_ESTALE);
    EXPECT_CODE(atomic_load(&close_get_user_rc), EVMPM_ESTALE);
    EXPECT_CODE(atomic_load(&close_set_user_rc), EVMPM_ESTALE);
    EXPECT_CODE(atomic_load(&close_fd_rc), EVMPM_ESTALE);
    /* And the runtime still serves. */
    close(fd);
    s.close_hook = NULL;
    fd = line_client(&s);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* ---- outside a handler -------------------------------------------------------- */

static void misuse_outside_handler(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_conn c;
    void *user = NULL;
    int fd, cfd = -1;
    line_server_config(&s, &cfg);
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    c = (evmpm_conn)atomic_load(&s.last_conn);
    WAIT_UNTIL(line_server_stats(&s).conns_keepalive == 1, 5000);
    /* Parked in keep-alive: the event thread's, not the host's. */
    EXPECT_CODE(evmpm_suspend(s.rt, c), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_park_keepalive(s.rt, c, 0), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_park_keepalive(s.rt, c, EVMPM_PARK_BUFFERED), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_complete_write(s.rt, c, data, 5, count_release, NULL, 0), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_close(s.rt, c), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_hand_back_to_worker(s.rt, c), EVMPM_ESTATE);
    /* The accessors work from any thread. */
    EXPECT_CODE(evmpm_conn_fd(s.rt, c, &cfd), EVMPM_OK);
    CHECK(cfd >= 0);
    EXPECT_CODE(evmpm_conn_get_user(s.rt, c, &user), EVMPM_OK);
    CHECK(user != NULL); /* the line server's per-connection state */
    /* None of the refused calls disturbed it. */
    ping(fd);
    CHECK_EQ(atomic_load(&releases), 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void lifecycle(void) {
    evmpm_runtime *rt = make_runtime(), *never_started = make_runtime();
    evmpm_stats st;
    int listener, port;
    listener = listen_loopback(16, &port);
    CHECK_OK(evmpm_register_listener(rt, listener));
    EXPECT_CODE(evmpm_start(rt), EVMPM_OK);
    EXPECT_CODE(evmpm_start(rt), EVMPM_ESTATE);
    EXPECT_CODE(evmpm_stop(rt, 1000), EVMPM_OK);
    EXPECT_CODE(evmpm_stop(rt, 1000), EVMPM_ESTOPPED);
    EXPECT_CODE(evmpm_start(rt), EVMPM_ESTOPPED);
    EXPECT_CODE(evmpm_register_listener(rt, listener), EVMPM_ESTOPPED);
    EXPECT_CODE(evmpm_get_stats(rt, &st, sizeof st), EVMPM_OK);
    EXPECT_CODE(evmpm_destroy(rt), EVMPM_OK);
    /* Stopped before it ever started: nothing to wait for, and no start. */
    EXPECT_CODE(evmpm_stop(never_started, 0), EVMPM_OK);
    EXPECT_CODE(evmpm_start(never_started), EVMPM_ESTOPPED);
    EXPECT_CODE(evmpm_stop(never_started, 0), EVMPM_ESTOPPED);
    EXPECT_CODE(evmpm_register_listener(never_started, listener), EVMPM_ESTOPPED);
    EXPECT_CODE(evmpm_destroy(never_started), EVMPM_OK);
    /* Created and destroyed without start or stop. */
    EXPECT_CODE(evmpm_destroy(make_runtime()), EVMPM_OK);
    close(listener);
}

/* ---- strerror and version ------------------------------------------------------ */

static void strerror_and_version(void) {
    static const int codes[] = {
        EVMPM_OK,      EVMPM_EINVAL,   EVMPM_ENOTSOCK, EVMPM_ENOTLISTENER, EVMPM_ESTALE,
        EVMPM_ESTATE,  EVMPM_ESTOPPED, EVMPM_ETIMEDOUT, EVMPM_ETHREAD,     EVMPM_EOS,
        EVMPM_EEXIST,  EVMPM_EVERSION, EVMPM_EINTERNAL, EVMPM_ELIMIT,      EVMPM_EBUSY,
    };
    static const int unknown[] = {1, 2, -15, -100, 1000, INT_MIN, INT_MAX};
    const char *unknown_text = evmpm_strerror(INT_MIN);
    char version[32];
    size_t i, j;
    CHECK(unknown_text != NULL);
    CHECK(strcmp(unknown_text, "unknown evmpm error code") == 0);
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *t = evmpm_strerror(codes[i]);
        printf("%4d %s\n", codes[i], t ? t : "(NULL)");
        CHECK(t != NULL);
        CHECK(strlen(t) > 0);
        CHECK(strcmp(t, unknown_text) != 0);
        /* Static: the same pointer each time. */
        CHECK(evmpm_strerror(codes[i]) == t);
        for (j = 0; j < i; j++)
            CHECK(strcmp(t, evmpm_strerror(codes[j])) != 0);
    }
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *t = evmpm_strerror(unknown[i]);
        CHECK(t != NULL);
        if (strcmp(t, unknown_text) != 0)
            harness_fail(__FILE__, __LINE__, "evmpm_strerror(%d) = \"%s\"", unknown[i], t);
    }
    CHECK(evmpm_version() != NULL);
    snprintf(version, sizeof version, "%d.%d.%d", EVMPM_VERSION_MAJOR, EVMPM_VERSION_MINOR,
             EVMPM_VERSION_PATCH);
    if (strcmp(evmpm_version(), version) != 0)
        harness_fail(__FILE__, __LINE__, "library %s, header %s", evmpm_version(), version);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"null_pointers", null_pointers},
        {"bad_configs", bad_configs},
        {"bad_listeners", bad_listeners},
        {"stale_handles", stale_handles},
        {"misuse_in_handler", misuse_in_handler},
        {"misuse_in_close_callback", misuse_in_close_callback},
        {"misuse_outside_handler", misuse_outside_handler},
        {"lifecycle", lifecycle},
        {"strerror_and_version", strerror_and_version},
    };
    int rc = run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
    if (rc == 0 && argc == 2 && strcmp(argv[1], "--list") != 0)
        printf("figure: %d rows, each returned its documented code\n", atomic_load(&rows));
    return rc;
}

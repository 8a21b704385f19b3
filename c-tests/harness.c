#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- checks and cases ----------------------------------------------------- */

/* The runtime a failure report describes (see harness_describe_runtime). */
static _Atomic(evmpm_runtime *) described_rt;

void harness_describe_runtime(evmpm_runtime *rt) { atomic_store(&described_rt, rt); }

/* What the runtime was doing when a check failed: a stalled wait is
 * explained by where its connections and workers were. */
static void describe_runtime(void) {
    evmpm_runtime *rt = atomic_load(&described_rt);
    evmpm_stats st;
    evmpm_worker_info w[64];
    size_t n = 0, i;
    if (rt == NULL || evmpm_get_stats(rt, &st, sizeof st) != EVMPM_OK)
        return;
    fprintf(stderr,
            "runtime: connections %llu (reading %llu, queued %llu, in handler %llu, writing "
            "%llu, keep-alive %llu, lingering %llu, suspended %llu); workers busy %llu, idle "
            "%llu, threads %llu, blocked %llu, replaced %llu\n",
            (unsigned long long)st.connections, (unsigned long long)st.conns_reading,
            (unsigned long long)st.conns_queued, (unsigned long long)st.conns_in_handler,
            (unsigned long long)st.conns_writing, (unsigned long long)st.conns_keepalive,
            (unsigned long long)st.conns_lingering, (unsigned long long)st.conns_suspended,
            (unsigned long long)st.workers_busy, (unsigned long long)st.workers_idle,
            (unsigned long long)st.worker_threads, (unsigned long long)st.handlers_blocked,
            (unsigned long long)st.blocked_replaced);
    if (evmpm_get_workers(rt, w, sizeof w[0], sizeof w / sizeof w[0], &n) != EVMPM_OK)
        return;
    for (i = 0; i < n && i < sizeof w / sizeof w[0]; i++)
        fprintf(stderr, "worker %u: state %d, conn %llu, for %llu us\n", w[i].id, w[i].state,
                (unsigned long long)w[i].conn, (unsigned long long)w[i].state_us);
}

void harness_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    describe_runtime();
    fflush(stderr);
    _exit(1);
}

int run_cases(int argc, char **argv, const struct test_case *cases, size_t n) {
    size_t i;
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (i = 0; i < n; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (argc < 2 || strcmp(argv[1], cases[i].name) == 0) {
            printf("case %s\n", cases[i].name);
            fflush(stdout);
            cases[i].run();
            printf("ok %s\n", cases[i].name);
            fflush(stdout);
            if (argc >= 2)
                return 0;
        }
    }
    if (argc >= 2) {
        fprintf(stderr, "no case named %s\n", argv[1]);
        return 2;
    }
    return 0;
}

/* ---- time ----------------------------------------------------------------- */

int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int harness_slowdown(void) {
    const char *s = getenv("EVMPM_TEST_SLOWDOWN");
    int v = s ? atoi(s) : 1;
    return v > 0 ? v : 1;
}

/* ---- watchdog ------------------------------------------------------------- */

static pthread_mutex_t watchdog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_cond;
static int watchdog_started;
static int64_t watchdog_deadline; /* 0: disarmed */
static const char *watchdog_what;

static void *watchdog_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&watchdog_lock);
    for (;;) {
        int64_t deadline = watchdog_deadline;
        if (deadline == 0) {
            pthread_cond_wait(&watchdog_cond, &watchdog_lock);
        } else if (now_ms() >= deadline) {
            fprintf(stderr, "watchdog: %s\n", watchdog_what);
            fflush(stderr);
            _exit(1);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 1; /* re-check at least every second */
            pthread_cond_timedwait(&watchdog_cond, &watchdog_lock, &ts);
        }
    }
    return NULL;
}

void watchdog_arm(int ms, const char *what) {
    pthread_mutex_lock(&watchdog_lock);
    if (!watchdog_started) {
        pthread_condattr_t attr;
        pthread_t t;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&watchdog_cond, &attr);
        pthread_condattr_destroy(&attr);
        CHECK(pthread_create(&t, NULL, watchdog_main, NULL) == 0);
        pthread_detach(t);
        watchdog_started = 1;
    }
    watchdog_deadline = now_ms() + (int64_t)ms * harness_slowdown();
    watchdog_what = what;
    pthread_cond_signal(&watchdog_cond);
    pthread_mutex_unlock(&watchdog_lock);
}

void watchdog_disarm(void) {
    pthread_mutex_lock(&watchdog_lock);
    watchdog_deadline = 0;
    pthread_mutex_unlock(&watchdog_lock);
}

/* ---- sockets -------------------------------------------------------------- */

int listen_loopback(int backlog, int *port) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(fd, backlog) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

void connect_socket_loopback(int fd, int port) {
    struct sockaddr_in a;
    int one = 1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        harness_fail(__FILE__, __LINE__, "connect: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A blocking connection to 127.0.0.1:port, with SO_RCVBUF set to *rcvbuf
 * before connecting unless rcvbuf is NULL. */
static int connect_with(int port, const int *rcvbuf) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    if (rcvbuf != NULL)
        shrink_rcvbuf(fd, *rcvbuf);
    connect_socket_loopback(fd, port);
    return fd;
}

int connect_loopback(int port) { return connect_with(port, NULL); }

int connect_loopback_rcvbuf(int port, int bytes) { return connect_with(port, &bytes); }

void close_with_reset(int fd) {
    struct linger l;
    l.l_onoff = 1;
    l.l_linger = 0;
    CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
    CHECK(close(fd) == 0);
}

void send_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            harness_fail(__FILE__, __LINE__, "send: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

void send_str(int fd, const char *s) { send_all(fd, s, strlen(s)); }

/* Waits until fd is readable; fails at the deadline. */
static void wait_readable(int fd, int64_t deadline, const char *what) {
    for (;;) {
        struct pollfd p;
        int64_t left = deadline - now_ms();
        int r;
        if (left <= 0)
            harness_fail(__FILE__, __LINE__, "%s: timed out", what);
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        r = poll(&p, 1, (int)left);
        if (r > 0)
            return;
        if (r < 0 && errno != EINTR)
            harness_fail(__FILE__, __LINE__, "poll: %s", strerror(errno));
    }
}

void recv_exact(int fd, void *buf, size_t len, int ms) {
    char *p = buf;
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    while (len > 0) {
        ssize_t n;
        wait_readable(fd, deadline, "recv_exact");
        n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            harness_fail(__FILE__, __LINE__, "recv_exact: peer closed, %zu bytes missing", len);
        if (n < 0)
            harness_fail(__FILE__, __LINE__, "recv_exact: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

void recv_line(int fd, char *buf, size_t cap, int ms) {
    size_t used = 0;
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    for (;;) {
        char c;
        ssize_t n;
        wait_readable(fd, deadline, "recv_line");
        n = recv(fd, &c, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            harness_fail(__FILE__, __LINE__, "recv_line: connection ended (%s) after \"%.*s\"",
                         n == 0 ? "EOF" : strerror(errno), (int)used, buf);
        if (c == '\n')
            break;
        if (used + 1 < cap)
            buf[used++] = c;
    }
    buf[used] = '\0';
}

int silent_for(int fd, int ms) {
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, ms) == 0;
}

int wait_closed(int fd, int ms) {
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    for (;;) {
        struct pollfd p;
        int64_t left = deadline - now_ms();
        char c;
        ssize_t n;
        if (left <= 0)
            return 0;
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return 1;
        if (n > 0)
            harness_fail(__FILE__, __LINE__, "wait_closed: unexpected byte 0x%02x", (unsigned char)c);
    }
}

void shrink_rcvbuf(int fd, int bytes) {
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) == 0);
}

int open_fd_count(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    char target[64];
    ssize_t len;
    CHECK(d != NULL);
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        /* The pool's monitor opens a thread's /proc stat file for a moment
         * when it asks whether a handler is blocked; that is not a leak. */
        len = readlinkat(dirfd(d), e->d_name, target, sizeof target - 1);
        if (len > 0) {
            target[len] = '\0';
            if (strncmp(target, "/proc/", 6) == 0)
                continue;
        }
        n++;
    }
    closedir(d);
    return n;
}

/* ---- closed-handle set, to catch a second close callback ------------------ */

/* Keyed by (server, handle): two runtimes in one process hand out the same
 * handle values, and those are different connections. */
#define CLOSED_SET_BITS 17
struct closed_entry {
    const struct line_server *server;
    evmpm_conn conn;
};
static pthread_mutex_t closed_lock = PTHREAD_MUTEX_INITIALIZER;
static struct closed_entry closed_set[1u << CLOSED_SET_BITS];
static size_t closed_count;

/* Returns 1 if `c` of `s` was already recorded. */
static int record_closed(const struct line_server *s, evmpm_conn c) {
    size_t mask = (1u << CLOSED_SET_BITS) - 1;
    uint64_t key = c ^ ((uint64_t)(uintptr_t)s * 0xff51afd7ed558ccdull);
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & mask;
    int seen = 0;
    pthread_mutex_lock(&closed_lock);
    for (;;) {
        struct closed_entry *e = &closed_set[i];
        if (e->server == s && e->conn == c) {
            seen = 1;
            break;
        }
        if (e->server == NULL) {
            /* Keep the table at most half full so probes stay short. */
            if (++closed_count > mask / 2)
                harness_fail(__FILE__, __LINE__, "closed-handle set is full");
            e->server = s;
            e->conn = c;
            break;
        }
        i = (i + 1) & mask;
    }
    pthread_mutex_unlock(&closed_lock);
    return seen;
}

/* ---- the line server ------------------------------------------------------ */

struct conn_state {
    size_t len;
    char buf[4096];
};

struct big_write {
    struct line_server *server;
    char data[];
};

static void release_big(void *arg) {
    struct big_write *b = arg;
    atomic_fetch_add(&b->server->releases, 1);
    free(b);
}

/* Takes one complete line out of st->buf into line; 1 if there was one. */
static int take_line(struct conn_state *st, char *line, size_t cap) {
    char *nl = memchr(st->buf, '\n', st->len);
    size_t n;
    if (nl == NULL)
        return 0;
    n = (size_t)(nl - st->buf);
    if (n >= cap)
        n = cap - 1;
    memcpy(line, st->buf, n);
    line[n] = '\0';
    st->len -= (size_t)(nl - st->buf) + 1;
    memmove(st->buf, nl + 1, st->len);
    return 1;
}

void line_reply(int fd, const char *s) {
    size_t len = strlen(s);
    while (len > 0) {
        /* MSG_NOSIGNAL: a client that reset must not kill the process with
         * SIGPIPE, as any server that survives its clients ignores it. */
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* A non-blocking descriptor (EVMPM_LISTEN_NONBLOCK). */
            struct pollfd p = {fd, POLLOUT, 0};
            poll(&p, 1, 1000);
            continue;
        }
        if (n <= 0)
            return; /* the peer went away; the next read sees it */
        s += n;
        len -= (size_t)n;
    }
}

int line_reader_take(struct line_reader *r, char *line, size_t cap) {
    char *nl = memchr(r->buf, '\n', r->len);
    size_t n;
    if (nl == NULL)
        return 0;
    n = (size_t)(nl - r->buf);
    CHECK(n < cap);
    memcpy(line, r->buf, n);
    line[n] = '\0';
    r->len -= n + 1;
    memmove(r->buf, nl + 1, r->len);
    return 1;
}

int line_reader_has_line(const struct line_reader *r) {
    return memchr(r->buf, '\n', r->len) != NULL;
}

int line_reader_next(int fd, struct line_reader *r, char *line, size_t cap, int reason) {
    while (!line_reader_take(r, line, cap)) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t n;
        CHECK(r->len < sizeof r->buf);
        if (poll(&p, 1, 10000 * harness_slowdown()) == 0)
            harness_fail(__FILE__, __LINE__, "woken with reason %d, no input for 10 s", reason);
        n = read(fd, r->buf + r->len, sizeof r->buf - r->len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n <= 0)
            return 0;
        r->len += (size_t)n;
    }
    return 1;
}

/* A handler's decision must succeed, except that once the test called
 * evmpm_stop a handler still running may find the runtime stopped. */
#define CHECK_DECIDED(s, call)                                               \
    do {                                                                     \
        int decided_rc_ = (call);                                            \
        if (decided_rc_ != EVMPM_OK &&                                       \
            !(decided_rc_ == EVMPM_ESTOPPED && atomic_load(&(s)->stop_called))) \
            harness_fail(__FILE__, __LINE__, "%s returned %d (%s)", #call,   \
                         decided_rc_, evmpm_strerror(decided_rc_));          \
    } while (0)

/* Decisions use the handler's `rt`, not s->rt: a handler that outlives a
 * forced stop may return after the test cleared s->rt. */
static void park(struct line_server *s, evmpm_runtime *rt, evmpm_conn c, struct conn_state *st) {
    uint32_t flags = memchr(st->buf, '\n', st->len) ? EVMPM_PARK_BUFFERED : 0;
    CHECK_DECIDED(s, evmpm_park_keepalive(rt, c, flags));
}

/* Waits for a HOLD's release: all at once, or one token. */
static void hold(struct line_server *s) {
    for (;;) {
        int tokens = atomic_load(&s->hold_tokens);
        if (atomic_load(&s->holds_released))
            return;
        if (tokens > 0 && atomic_compare_exchange_weak(&s->hold_tokens, &tokens, tokens - 1))
            return;
        sleep_ms(1);
    }
}

static void big(struct line_server *s, evmpm_runtime *rt, evmpm_conn c, long n, int keep) {
    struct big_write *b = malloc(sizeof *b + (size_t)n);
    long i;
    int rc;
    CHECK(b != NULL);
    b->server = s;
    for (i = 0; i < n; i++)
        b->data[i] = (char)('a' + i % 26);
    rc = evmpm_complete_write(rt, c, b->data, (size_t)n, release_big, b,
                              keep ? EVMPM_WRITE_KEEPALIVE : 0);
    CHECK_DECIDED(s, rc);
    if (rc != EVMPM_OK)
        free(b); /* on error the runtime keeps nothing and never releases */
}

static void line_handler(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    struct line_server *s = user_data;
    struct conn_state *st = NULL;
    char line[256];
    long running, most;
    running = atomic_fetch_add(&s->in_handler, 1) + 1;
    most = atomic_load(&s->max_in_handler);
    while (running > most && !atomic_compare_exchange_weak(&s->max_in_handler, &most, running)) {
    }
    atomic_fetch_add(&s->handler_calls, 1);
    atomic_store(&s->last_conn, c);
    switch (reason) {
    case EVMPM_WAKE_NEW: atomic_fetch_add(&s->wake_new, 1); break;
    case EVMPM_WAKE_READABLE: atomic_fetch_add(&s->wake_readable, 1); break;
    case EVMPM_WAKE_BUFFERED: atomic_fetch_add(&s->wake_buffered, 1); break;
    case EVMPM_WAKE_RESUMED: atomic_fetch_add(&s->wake_resumed, 1); break;
    default: harness_fail(__FILE__, __LINE__, "unknown wake reason %d", reason);
    }
    CHECK_OK(evmpm_conn_get_user(rt, c, (void **)&st));
    if (st == NULL) {
        st = calloc(1, sizeof *st);
        CHECK(st != NULL);
        CHECK_OK(evmpm_conn_set_user(rt, c, st));
    }
    if (reason == EVMPM_WAKE_RESUMED) {
        line_reply(fd, "RESUMED\n");
        park(s, rt, c, st);
        goto out;
    }
    while (!take_line(st, line, sizeof line)) {
        ssize_t n;
        if (st->len == sizeof st->buf) {
            CHECK_DECIDED(s, evmpm_close(rt, c));
            goto out;
        }
        n = read(fd, st->buf + st->len, sizeof st->buf - st->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            CHECK_DECIDED(s, evmpm_close(rt, c));
            goto out;
        }
        st->len += (size_t)n;
    }
    if (strcmp(line, "PING") == 0) {
        line_reply(fd, "PONG\n");
        park(s, rt, c, st);
    } else if (strncmp(line, "ECHO ", 5) == 0) {
        line_reply(fd, line + 5);
        line_reply(fd, "\n");
        park(s, rt, c, st);
    } else if (strncmp(line, "BIG ", 4) == 0) {
        big(s, rt, c, atol(line + 4), 1);
    } else if (strncmp(line, "BIGCLOSE ", 9) == 0) {
        big(s, rt, c, atol(line + 9), 0);
    } else if (strcmp(line, "QUIT") == 0) {
        line_reply(fd, "BYE\n");
        CHECK_DECIDED(s, evmpm_close(rt, c));
    } else if (strcmp(line, "DONE") == 0) {
        line_reply(fd, "BYE\n");
        CHECK_DECIDED(s, evmpm_close_ex(rt, c, EVMPM_CLOSE_CLIENT_DONE));
    } else if (strncmp(line, "SLEEP ", 6) == 0) {
        sleep_ms(atoi(line + 6));
        line_reply(fd, "SLEPT\n");
        park(s, rt, c, st);
    } else if (strcmp(line, "SUSPEND") == 0) {
        CHECK_DECIDED(s, evmpm_suspend(rt, c));
        atomic_store(&s->suspended_conn, c);
        atomic_fetch_add(&s->suspended_count, 1);
    } else if (strcmp(line, "HOLD") == 0) {
        hold(s);
        line_reply(fd, "HELD\n");
        park(s, rt, c, st);
    } else if (strcmp(line, "RETURN") == 0) {
        /* no decision: the runtime closes the connection */
    } else if (s->command != NULL) {
        switch (s->command(s, c, fd, line)) {
        case LINE_PARK: park(s, rt, c, st); break;
        case LINE_DECIDED: break;
        case LINE_UNKNOWN:
            line_reply(fd, "ERR\n");
            park(s, rt, c, st);
            break;
        }
    } else {
        line_reply(fd, "ERR\n");
        park(s, rt, c, st);
    }
out:
    atomic_fetch_sub(&s->in_handler, 1);
}

static void line_close(void *user_data, evmpm_runtime *rt, evmpm_conn c, int fd, void *conn_user) {
    struct line_server *s = user_data;
    (void)rt;
    CHECK(fd >= 0);
    if (s->close_hook != NULL)
        s->close_hook(s, c, fd);
    if (record_closed(s, c))
        atomic_fetch_add(&s->double_closes, 1);
    free(conn_user);
    atomic_fetch_add(&s->closes, 1);
}

void line_server_config(struct line_server *s, evmpm_config *cfg) {
    memset(s, 0, sizeof *s);
    s->listen_fd = -1;
    CHECK_OK(evmpm_config_init(cfg, sizeof *cfg));
    cfg->worker_threads = 4;
    cfg->handler = line_handler;
    cfg->on_close = line_close;
    cfg->user_data = s;
}

void line_server_start(struct line_server *s, const evmpm_config *cfg) {
    s->listen_fd = listen_loopback(1024, &s->port);
    CHECK_OK(evmpm_create(cfg, &s->rt));
    CHECK_OK(evmpm_register_listener(s->rt, s->listen_fd));
    CHECK_OK(evmpm_start(s->rt));
    harness_describe_runtime(s->rt);
}

void line_server_start_default(struct line_server *s) {
    evmpm_config cfg;
    line_server_config(s, &cfg);
    line_server_start(s, &cfg);
}

int line_server_stop_only(struct line_server *s, uint32_t timeout_ms) {
    int rc;
    atomic_store(&s->stop_called, 1);
    /* Documented: returns by the deadline plus about 100 ms. */
    watchdog_arm((int)timeout_ms + 5000, "evmpm_stop did not return within 5 s of its deadline "
                                         "(is the event thread asleep, deaf to its wake-up?)");
    rc = evmpm_stop(s->rt, timeout_ms);
    watchdog_disarm();
    return rc;
}

void line_server_destroy(struct line_server *s) {
    harness_describe_runtime(NULL);
    watchdog_arm(5000, "evmpm_destroy did not return within 5 s");
    CHECK_OK(evmpm_destroy(s->rt));
    watchdog_disarm();
    s->rt = NULL;
    close(s->listen_fd);
    s->listen_fd = -1;
}

int line_server_stop(struct line_server *s, uint32_t timeout_ms) {
    int rc = line_server_stop_only(s, timeout_ms);
    line_server_destroy(s);
    return rc;
}

void line_server_release_holds(struct line_server *s) { atomic_store(&s->holds_released, 1); }

void line_server_release_one_hold(struct line_server *s) { atomic_fetch_add(&s->hold_tokens, 1); }

evmpm_conn line_server_suspend_client(struct line_server *s, int fd) {
    long before = atomic_load(&s->suspended_count);
    send_str(fd, "SUSPEND\n");
    WAIT_UNTIL(atomic_load(&s->suspended_count) == before + 1 && atomic_load(&s->in_handler) == 0 &&
                   line_server_stats(s).workers_busy == 0,
               5000);
    CHECK_EQ(line_server_stats(s).conns_suspended, 1);
    return (evmpm_conn)atomic_load(&s->suspended_conn);
}

int line_server_resume_suspended(struct line_server *s) {
    return evmpm_hand_back_to_worker(s->rt, (evmpm_conn)atomic_load(&s->suspended_conn));
}

evmpm_stats line_server_stats(struct line_server *s) {
    evmpm_stats st;
    CHECK_OK(evmpm_get_stats(s->rt, &st, sizeof st));
    return st;
}

void expect_closed_unserved(struct line_server *s, int fd) {
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s->closes) == 1, 5000);
    CHECK_EQ(atomic_load(&s->handler_calls), 0);
}

void ping(int fd) {
    char line[64];
    send_str(fd, "PING\n");
    recv_line(fd, line, sizeof line, 5000);
    if (strcmp(line, "PONG") != 0)
        harness_fail(__FILE__, __LINE__, "expected PONG, got \"%s\"", line);
}

int line_client(struct line_server *s) {
    int fd = connect_loopback(s->port);
    ping(fd);
    return fd;
}

/* ---- pattern bodies ------------------------------------------------------ */

char pattern_byte(size_t i) { return (char)('a' + i % 26); }

/* Reads up to `n` bytes of the pattern starting at pattern byte `offset`,
 * `chunk` at most per recv and `pause_ms` after each, checking each byte.
 * Returns the bytes read: fewer than `n` only if the connection ended and
 * `may_end`; otherwise an early end fails. */
size_t recv_pattern_or_end(int fd, size_t offset, size_t n, size_t chunk, int pause_ms,
                                  int may_end) {
    static char buf[64 * 1024];
    int64_t deadline = now_ms() + 30000 * (int64_t)harness_slowdown();
    size_t done = 0;
    CHECK(chunk <= sizeof buf);
    while (done < n) {
        size_t want = n - done < chunk ? n - done : chunk;
        struct pollfd p;
        ssize_t got;
        size_t i;
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        if (now_ms() > deadline)
            harness_fail(__FILE__, __LINE__, "body: %zu of %zu bytes after 30 s", done, n);
        if (poll(&p, 1, 100) <= 0)
            continue;
        got = recv(fd, buf, want, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0 && may_end)
            return done;
        if (got <= 0)
            harness_fail(__FILE__, __LINE__, "body: connection ended (%s) after %zu of %zu bytes",
                         got == 0 ? "EOF" : strerror(errno), done, n);
        for (i = 0; i < (size_t)got; i++) {
            size_t at = offset + done + i;
            if (buf[i] != pattern_byte(at))
                harness_fail(__FILE__, __LINE__, "body byte %zu (pattern byte %zu) is 0x%02x, "
                             "expected '%c'", done + i, at, (unsigned char)buf[i], pattern_byte(at));
        }
        done += (size_t)got;
        if (pause_ms > 0)
            sleep_ms(pause_ms);
    }
    return done;
}

void recv_pattern(int fd, size_t offset, size_t n, size_t chunk, int pause_ms) {
    recv_pattern_or_end(fd, offset, n, chunk, pause_ms, 0);
}

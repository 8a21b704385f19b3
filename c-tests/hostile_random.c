/* Randomized API sequences against a live runtime, from several threads.
 *
 * Client threads pick random operations on a few connections each: ordinary
 * commands, pipelined ones, large responses, QUIT and RETURN, suspensions
 * (a resumer thread then ends each one with a random action: hand-back,
 * complete-write in its three modes, close, park, park-buffered), handler
 * misuse (a second decision, random flags, stop/destroy from a handler),
 * closes, resets and half-sent requests. A misuse thread meanwhile calls
 * every entry point with stale handles, made-up handles, NULL pointers,
 * bad descriptors, bad configurations and random flags.
 *
 * Every return code must be one the header documents for that call (and,
 * where the outcome is certain, exactly the right one), every response
 * must be what the operation asks for, and at the end nothing is left:
 * no connection, no descriptor, every close callback and buffer release
 * exactly once.
 *
 * The seed is printed; EVMPM_HOSTILE_SEED=<seed> repeats a run's choices
 * (each thread's sequence is reproducible; the interleaving is the
 * scheduler's). EVMPM_HOSTILE_OPS sets the operations per client thread. */
#define _GNU_SOURCE
#include "harness.h"
#include "hostile_util.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { CLIENT_THREADS = 4, CONNS_PER_CLIENT = 3, DEFAULT_OPS = 1500 };
/* More workers than client connections: a connection parked or written
 * with the BUFFERED flag holds a worker blocked in read until its client's
 * next request, and a client thread may be waiting on another of its
 * connections meanwhile. With fewer workers than connections, those
 * blocked reads could take every worker and nobody would send. */
enum { WORKERS = CLIENT_THREADS * CONNS_PER_CLIENT + 4 };

static uint64_t seed;
static struct line_server server;
static atomic_int second_port; /* a listener registered mid-run, 0 until then */

/* ---- return codes ---------------------------------------------------------- */

#define RC(code) (1u << -(code))
#define CONN_DECISION_RCS \
    (RC(EVMPM_OK) | RC(EVMPM_EINVAL) | RC(EVMPM_ESTALE) | RC(EVMPM_ESTATE) | RC(EVMPM_ESTOPPED))
#define CONN_ACCESS_RCS (RC(EVMPM_OK) | RC(EVMPM_EINVAL) | RC(EVMPM_ESTALE) | RC(EVMPM_ESTOPPED))

static atomic_long checked_calls;

/* Fails unless `rc` is in `allowed` (a set of RC() bits), which the caller
 * takes from the header's list for `what` (or narrows where it knows). */
static void expect_rc_in(const char *what, int rc, unsigned allowed, int line) {
    atomic_fetch_add(&checked_calls, 1);
    if (rc > 0 || rc < -31 || !(allowed & RC(rc)))
        harness_fail(__FILE__, line, "seed %llu: %s returned %d (%s), not one of 0x%x",
                     (unsigned long long)seed, what, rc, evmpm_strerror(rc), allowed);
}
#define EXPECT_RC_IN(call, allowed) expect_rc_in(#call, (call), (allowed), __LINE__)
#define EXPECT_RC(call, code) expect_rc_in(#call, (call), RC(code), __LINE__)

/* ---- handles the misuse thread may use ---------------------------------- */

/* Handles of closed connections, recorded by the close callback. */
#define STALE_RING 1024
static atomic_ullong stale_ring[STALE_RING];
static atomic_long stale_count;

/* A value that never names a live connection: 0, the event thread's own
 * epoll tokens (waker, listeners), or a generation no slot reaches here. */
static evmpm_conn made_up_handle(struct rng *r) {
    switch (rng_below(r, 4)) {
    case 0: return 0;
    case 1: return rng_below(r, 8);
    case 2: return ((uint64_t)(0x80000000u | rng_below(r, 0x7fffffff)) << 32) | rng_below(r, 1 << 20);
    default: return rng_next(r) | (1ull << 63);
    }
}

/* ---- suspensions and their random endings ----------------------------- */

enum resume_action {
    A_NONE = 0,
    A_HAND_BACK,      /* handler runs again: "RESUMED", parks */
    A_WRITE_KEEP,     /* "WRITTEN", then keep-alive */
    A_WRITE_CLOSE,    /* "WRITTEN", then closed */
    A_WRITE_BUFFERED, /* "WRITTEN", then the handler runs and reads on */
    A_CLOSE,          /* closed */
    A_PARK,           /* nothing sent, keep-alive */
    A_PARK_BUFFERED,  /* nothing sent, the handler runs and reads on */
    ACTIONS
};

/* One client connection, as both its client thread and the resumer see it. */
struct conn_rec {
    int fd;
    atomic_int action; /* announced by the resumer before it acts */
    atomic_int done;   /* the resumer finished with the suspension */
};

struct suspended {
    evmpm_conn conn;
    struct conn_rec *rec;
};

static pthread_mutex_t susp_lock = PTHREAD_MUTEX_INITIALIZER;
static struct suspended susp_queue[CLIENT_THREADS * CONNS_PER_CLIENT];
static int susp_len;

static const char written[] = "WRITTEN\n";
static atomic_long write_releases, writes_issued;

static void count_release(void *arg) {
    CHECK(arg == &write_releases);
    atomic_fetch_add(&write_releases, 1);
}

/* ---- the handler's extra commands -------------------------------------- */

static atomic_long handler_misuse_calls;

static enum line_command_result random_command(struct line_server *s, evmpm_conn c, int fd,
                                               const char *line) {
    evmpm_runtime *rt = s->rt;
    void *rec;
    unsigned k, f;
    enum line_command_result shared = sndbuf_command(s, c, fd, line);
    if (shared != LINE_UNKNOWN)
        return shared;
    if (sscanf(line, "SUSP %p", &rec) == 1) {
        struct suspended e;
        CHECK_OK(evmpm_suspend(rt, c));
        /* Decided already: a second suspend from the handler is refused. */
        EXPECT_RC(evmpm_suspend(rt, c), EVMPM_ESTATE);
        e.conn = c;
        e.rec = rec;
        pthread_mutex_lock(&susp_lock);
        CHECK(susp_len < (int)(sizeof susp_queue / sizeof susp_queue[0]));
        susp_queue[susp_len++] = e;
        pthread_mutex_unlock(&susp_lock);
        return LINE_DECIDED;
    }
    if (sscanf(line, "DOUBLE %u", &k) == 1) {
        /* One decision, then a second one of a random kind: refused, and
         * the first stands. */
        line_reply(fd, "DOUBLE\n");
        CHECK_OK(evmpm_park_keepalive(rt, c, 0));
        switch (k % 5) {
        case 0: EXPECT_RC(evmpm_park_keepalive(rt, c, 0), EVMPM_ESTATE); break;
        case 1:
            EXPECT_RC(evmpm_complete_write(rt, c, written, sizeof written - 1, count_release,
                                           &write_releases, EVMPM_WRITE_KEEPALIVE),
                      EVMPM_ESTATE);
            break;
        case 2: EXPECT_RC(evmpm_close(rt, c), EVMPM_ESTATE); break;
        case 3: EXPECT_RC(evmpm_suspend(rt, c), EVMPM_ESTATE); break;
        default:
            /* Unknown flags are refused before anything else. */
            EXPECT_RC(evmpm_park_keepalive(rt, c, (k >> 3) | 2), EVMPM_EINVAL);
            break;
        }
        atomic_fetch_add(&handler_misuse_calls, 1);
        return LINE_DECIDED;
    }
    if (sscanf(line, "FLAGS %u", &f) == 1) {
        line_reply(fd, "FLAGS\n");
        if (f & ~(unsigned)EVMPM_PARK_BUFFERED) {
            EXPECT_RC(evmpm_park_keepalive(rt, c, f), EVMPM_EINVAL);
            CHECK_OK(evmpm_park_keepalive(rt, c, 0));
        } else {
            /* PARK_BUFFERED without input held: the handler runs again and
             * blocks reading the next request, as the flag asks. */
            CHECK_OK(evmpm_park_keepalive(rt, c, f));
        }
        atomic_fetch_add(&handler_misuse_calls, 1);
        return LINE_DECIDED;
    }
    if (sscanf(line, "WFLAGS %u", &f) == 1) {
        int rc = evmpm_complete_write(rt, c, "WFLAGS\n", 7, count_release, &write_releases, f);
        if (f & ~(unsigned)(EVMPM_WRITE_KEEPALIVE | EVMPM_WRITE_BUFFERED)) {
            /* Refused: nothing kept, nothing released; answer and park. */
            expect_rc_in("evmpm_complete_write(bad flags)", rc, RC(EVMPM_EINVAL), __LINE__);
            line_reply(fd, "WFLAGS\n");
            CHECK_OK(evmpm_park_keepalive(rt, c, 0));
        } else {
            CHECK_OK(rc);
            atomic_fetch_add(&writes_issued, 1);
        }
        atomic_fetch_add(&handler_misuse_calls, 1);
        return LINE_DECIDED;
    }
    if (strcmp(line, "NODELAY") == 0) {
        /* The line server answers ECHO in two sends; without this, Nagle
         * holds the second one until the client's delayed ACK. */
        int one = 1;
        CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
        line_reply(fd, "NODELAY\n");
        return LINE_PARK;
    }
    if (strcmp(line, "STOPME") == 0) {
        /* From a handler both would wait for this very thread. */
        EXPECT_RC(evmpm_stop(rt, 0), EVMPM_ETHREAD);
        EXPECT_RC(evmpm_destroy(rt), EVMPM_ETHREAD);
        line_reply(fd, "ETHREAD\n");
        atomic_fetch_add(&handler_misuse_calls, 2);
        return LINE_PARK;
    }
    return LINE_UNKNOWN;
}

/* In the close callback the connection is no longer the host's: every
 * decision about it is refused. */
static void record_and_poke_closed(struct line_server *s, evmpm_conn c, int fd) {
    long n = atomic_fetch_add(&stale_count, 1);
    (void)fd;
    atomic_store(&stale_ring[n % STALE_RING], c);
    if (n % 4 == 0) {
        unsigned gone = RC(EVMPM_ESTATE) | RC(EVMPM_ESTALE);
        EXPECT_RC_IN(evmpm_park_keepalive(s->rt, c, 0), gone);
        EXPECT_RC_IN(evmpm_close(s->rt, c), gone);
        EXPECT_RC_IN(evmpm_hand_back_to_worker(s->rt, c), gone);
        EXPECT_RC_IN(evmpm_suspend(s->rt, c), gone);
        EXPECT_RC_IN(evmpm_complete_write(s->rt, c, written, sizeof written - 1, count_release,
                                          &write_releases, 0),
                     gone);
    }
}

/* ---- the resumer thread ------------------------------------------------- */

static atomic_int clients_done;
static atomic_long resume_counts[ACTIONS];

static int is_closing(int a) { return a == A_WRITE_CLOSE || a == A_CLOSE; }

static void end_suspension(struct rng *r, struct suspended e) {
    evmpm_runtime *rt = server.rt;
    int a = 1 + (int)rng_below(r, ACTIONS - 1);
    void *user = NULL;
    int fd = -1;
    /* Reading the connection is allowed from any thread. */
    CHECK_OK(evmpm_conn_get_user(rt, e.conn, &user));
    CHECK(user != NULL);
    CHECK_OK(evmpm_conn_fd(rt, e.conn, &fd));
    CHECK(fd >= 0);
    atomic_store(&e.rec->action, a);
    switch (a) {
    case A_HAND_BACK: CHECK_OK(evmpm_hand_back_to_worker(rt, e.conn)); break;
    case A_WRITE_KEEP:
    case A_WRITE_CLOSE:
    case A_WRITE_BUFFERED:
        CHECK_OK(evmpm_complete_write(rt, e.conn, written, sizeof written - 1, count_release,
                                      &write_releases,
                                      a == A_WRITE_KEEP    ? EVMPM_WRITE_KEEPALIVE
                                      : a == A_WRITE_CLOSE ? 0
                                                           : EVMPM_WRITE_BUFFERED));
        atomic_fetch_add(&writes_issued, 1);
        break;
    case A_CLOSE: CHECK_OK(evmpm_close(rt, e.conn)); break;
    case A_PARK: CHECK_OK(evmpm_park_keepalive(rt, e.conn, 0)); break;
    case A_PARK_BUFFERED: CHECK_OK(evmpm_park_keepalive(rt, e.conn, EVMPM_PARK_BUFFERED)); break;
    }
    atomic_fetch_add(&resume_counts[a], 1);
    /* Ended: a second ending is refused. Only hand-back may come from any
     * thread at any time; the others only while the host holds the
     * connection, which is the case once it is closing for good. */
    EXPECT_RC_IN(evmpm_hand_back_to_worker(rt, e.conn),
                 is_closing(a) ? RC(EVMPM_ESTATE) | RC(EVMPM_ESTALE) : RC(EVMPM_ESTATE));
    if (is_closing(a)) {
        unsigned gone = RC(EVMPM_ESTATE) | RC(EVMPM_ESTALE);
        EXPECT_RC_IN(evmpm_park_keepalive(rt, e.conn, 0), gone);
        EXPECT_RC_IN(evmpm_close(rt, e.conn), gone);
        EXPECT_RC_IN(evmpm_complete_write(rt, e.conn, written, sizeof written - 1, count_release,
                                          &write_releases, EVMPM_WRITE_KEEPALIVE),
                     gone);
    }
    atomic_store(&e.rec->done, 1);
}

static void *resumer_main(void *arg) {
    struct rng r;
    (void)arg;
    rng_seed(&r, seed ^ 0x5e5e5e5e);
    for (;;) {
        struct suspended e;
        int have = 0;
        pthread_mutex_lock(&susp_lock);
        if (susp_len > 0) {
            /* A random one of those waiting, not always the oldest. */
            int i = (int)rng_below(&r, (uint32_t)susp_len);
            e = susp_queue[i];
            susp_queue[i] = susp_queue[--susp_len];
            have = 1;
        }
        pthread_mutex_unlock(&susp_lock);
        if (have)
            end_suspension(&r, e);
        else if (atomic_load(&clients_done) == CLIENT_THREADS)
            return NULL;
        else
            sleep_ms(1);
    }
}

/* ---- client threads --------------------------------------------------------- */

enum op {
    OP_PING, OP_ECHO, OP_PIPELINE, OP_BIG, OP_BIGCLOSE, OP_QUIT, OP_RETURN, OP_SUSPEND,
    OP_DOUBLE, OP_FLAGS, OP_WFLAGS, OP_STOPME, OP_UNKNOWN, OP_CLOSE, OP_RESET, OP_PARTIAL,
    OP_DONE, OPS
};
static const char *const op_names[OPS] = {
    "PING", "ECHO", "pipeline", "BIG", "BIGCLOSE", "QUIT", "RETURN", "SUSPEND",
    "double decision", "park flags", "write flags", "stop from handler", "unknown command",
    "client close", "client reset", "half a request", "DONE",
};
/* Relative weights: the common paths most, the endings less. */
static const unsigned op_weight[OPS] = {10, 8, 4, 6, 2, 2, 2, 10, 4, 4, 4, 1, 2, 2, 2, 2, 2};

struct client {
    int index;
    struct rng rng;
    long ops, op;
    long opened;
    long counts[OPS];
    int64_t op_ms[OPS], op_max_ms[OPS]; /* time spent per kind, and the slowest */
    long bigs; /* BIG and BIGCLOSE responses received whole */
    struct conn_rec conns[CONNS_PER_CLIENT];
    char *buf;
};

static void client_fail(struct client *c, int line, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    harness_fail(__FILE__, line, "seed %llu, client %d, operation %ld: %s",
                 (unsigned long long)seed, c->index, c->op, msg);
}

static void expect_line_or_fail(struct client *c, int fd, const char *want, int line) {
    char got[128];
    int rc = try_recv_line(fd, got, sizeof got, 10000, NULL);
    if (rc != 1 || strcmp(got, want) != 0)
        client_fail(c, line, "expected \"%s\", got \"%s\" (rc %d)", want, got, rc);
}

static void expect_eof_or_fail(struct client *c, int fd, int line) {
    int rc = try_recv_eof(fd, 10000);
    if (rc != 1)
        client_fail(c, line, "expected the connection closed, rc %d", rc);
}

static void send_or_fail(struct client *c, int fd, const char *s, int line) {
    int rc = try_send_all(fd, s, strlen(s));
    if (rc != 1)
        client_fail(c, line, "send \"%s\": %s", s, strerror(-rc));
}

#define EXPECT_LINE_C(fd, want) expect_line_or_fail(c, (fd), (want), __LINE__)
#define EXPECT_EOF_C(fd) expect_eof_or_fail(c, (fd), __LINE__)
#define SEND_C(fd, s) send_or_fail(c, (fd), (s), __LINE__)

static enum op pick_op(struct rng *r) {
    unsigned total = 0, x, i;
    for (i = 0; i < OPS; i++)
        total += op_weight[i];
    x = rng_below(r, total);
    for (i = 0; i < OPS; i++) {
        if (x < op_weight[i])
            return (enum op)i;
        x -= op_weight[i];
    }
    return OP_PING;
}

static void finish(struct conn_rec *rec) {
    close(rec->fd);
    rec->fd = -1;
}

static void run_op(struct client *c, struct conn_rec *rec, enum op op) {
    struct rng *r = &c->rng;
    char req[160], want[128];
    int fd = rec->fd, n, i;
    switch (op) {
    case OP_PING:
        SEND_C(fd, "PING\n");
        EXPECT_LINE_C(fd, "PONG");
        break;
    case OP_ECHO:
        n = 1 + (int)rng_below(r, 60);
        for (i = 0; i < n; i++)
            want[i] = (char)('a' + rng_below(r, 26));
        want[n] = '\0';
        snprintf(req, sizeof req, "ECHO %s\n", want);
        SEND_C(fd, req);
        EXPECT_LINE_C(fd, want);
        break;
    case OP_PIPELINE:
        /* Two requests in one segment: the second is served from the
         * handler's own buffer (EVMPM_PARK_BUFFERED). */
        SEND_C(fd, "PING\nECHO piped\n");
        EXPECT_LINE_C(fd, "PONG");
        EXPECT_LINE_C(fd, "piped");
        break;
    case OP_BIG:
    case OP_BIGCLOSE:
        n = 1 + (int)rng_below(r, 60000);
        snprintf(req, sizeof req, "%s %d\n", op == OP_BIG ? "BIG" : "BIGCLOSE", n);
        SEND_C(fd, req);
        i = try_recv_exact(fd, c->buf, (size_t)n, 10000);
        if (i != 1 || !big_pattern_ok(c->buf, (size_t)n, 0))
            client_fail(c, __LINE__, "%s: broken response (rc %d)", req, i);
        c->bigs++;
        if (op == OP_BIGCLOSE) {
            EXPECT_EOF_C(fd);
            finish(rec);
        }
        break;
    case OP_QUIT:
        SEND_C(fd, "QUIT\n");
        EXPECT_LINE_C(fd, "BYE");
        EXPECT_EOF_C(fd);
        finish(rec);
        break;
    case OP_DONE:
        /* A client done sending, or one that sends a line more anyway
         * (in the same segment): either way it reads BYE and then the end
         * of the stream, never a reset. */
        SEND_C(fd, rng_below(r, 2) ? "DONE\n" : "DONE\nPING\n");
        EXPECT_LINE_C(fd, "BYE");
        EXPECT_EOF_C(fd);
        finish(rec);
        break;
    case OP_RETURN:
        SEND_C(fd, "RETURN\n");
        EXPECT_EOF_C(fd);
        finish(rec);
        break;
    case OP_SUSPEND: {
        int a;
        snprintf(req, sizeof req, "SUSP %p\n", (void *)rec);
        SEND_C(fd, req);
        {
            int64_t deadline = now_ms() + 10000;
            while ((a = atomic_load(&rec->action)) == A_NONE) {
                if (now_ms() > deadline)
                    client_fail(c, __LINE__, "the suspension was never ended");
                sleep_ms(1);
            }
        }
        switch (a) {
        case A_HAND_BACK: EXPECT_LINE_C(fd, "RESUMED"); break;
        case A_WRITE_KEEP:
        case A_WRITE_BUFFERED: EXPECT_LINE_C(fd, "WRITTEN"); break;
        case A_WRITE_CLOSE:
            EXPECT_LINE_C(fd, "WRITTEN");
            EXPECT_EOF_C(fd);
            break;
        case A_CLOSE: EXPECT_EOF_C(fd); break;
        default: break; /* parked: nothing is sent */
        }
        /* The resumer's follow-up calls are done before the next request,
         * so that none of them meets a later suspension. */
        {
            int64_t deadline = now_ms() + 10000;
            while (!atomic_load(&rec->done)) {
                if (now_ms() > deadline)
                    client_fail(c, __LINE__, "the resumer never finished");
                sleep_ms(1);
            }
        }
        atomic_store(&rec->action, A_NONE);
        atomic_store(&rec->done, 0);
        if (is_closing(a))
            finish(rec);
        break;
    }
    case OP_DOUBLE:
        snprintf(req, sizeof req, "DOUBLE %u\n", (unsigned)rng_below(r, 1000));
        SEND_C(fd, req);
        EXPECT_LINE_C(fd, "DOUBLE");
        break;
    case OP_FLAGS: {
        /* Mostly valid flags, sometimes unknown bits. */
        unsigned f = rng_below(r, 2) ? rng_below(r, 2) : (unsigned)rng_next(r);
        snprintf(req, sizeof req, "FLAGS %u\n", f);
        SEND_C(fd, req);
        EXPECT_LINE_C(fd, "FLAGS");
        break;
    }
    case OP_WFLAGS: {
        unsigned f = rng_below(r, 2) ? rng_below(r, 4) : (unsigned)rng_next(r);
        snprintf(req, sizeof req, "WFLAGS %u\n", f);
        SEND_C(fd, req);
        EXPECT_LINE_C(fd, "WFLAGS");
        if (f == 0) {
            /* Neither keep-alive nor buffered: closed after the write. */
            EXPECT_EOF_C(fd);
            finish(rec);
        }
        break;
    }
    case OP_STOPME:
        SEND_C(fd, "STOPME\n");
        EXPECT_LINE_C(fd, "ETHREAD");
        break;
    case OP_UNKNOWN:
        SEND_C(fd, "NO-SUCH-COMMAND\n");
        EXPECT_LINE_C(fd, "ERR");
        break;
    case OP_CLOSE: finish(rec); break;
    case OP_RESET:
        close_with_reset(fd);
        rec->fd = -1;
        break;
    case OP_PARTIAL:
        SEND_C(fd, rng_below(r, 2) ? "ECHO never fini" : "PI");
        if (rng_below(r, 2))
            close_with_reset(fd);
        else
            close(fd);
        rec->fd = -1;
        break;
    case OPS: break;
    }
}

static void *client_main(void *arg) {
    struct client *c = arg;
    int i;
    c->buf = malloc(60000);
    CHECK(c->buf != NULL);
    for (c->op = 0; c->op < c->ops; c->op++) {
        struct conn_rec *rec = &c->conns[rng_below(&c->rng, CONNS_PER_CLIENT)];
        enum op op = pick_op(&c->rng);
        if (rec->fd < 0) {
            int port = atomic_load(&second_port);
            rec->fd = connect_loopback(port != 0 && rng_below(&c->rng, 2) ? port : server.port);
            c->opened++;
            /* Most connections, not all: a few keep the slow path. */
            if (rng_below(&c->rng, 4) != 0) {
                SEND_C(rec->fd, "NODELAY\n");
                EXPECT_LINE_C(rec->fd, "NODELAY");
            }
            /* A third with a small server send buffer: their BIG answers
             * go through write completion on the event thread. */
            if (rng_below(&c->rng, 3) == 0) {
                SEND_C(rec->fd, "SNDBUF 8192\n");
                EXPECT_LINE_C(rec->fd, "SNDBUF");
            }
        }
        {
            int64_t t = now_ms();
            run_op(c, rec, op);
            t = now_ms() - t;
            c->op_ms[op] += t;
            if (t > c->op_max_ms[op])
                c->op_max_ms[op] = t;
        }
        c->counts[op]++;
    }
    for (i = 0; i < CONNS_PER_CLIENT; i++)
        if (c->conns[i].fd >= 0)
            finish(&c->conns[i]);
    free(c->buf);
    atomic_fetch_add(&clients_done, 1);
    return NULL;
}

/* ---- the misuse thread ----------------------------------------------------- */

static atomic_long idle_stop_timeouts;

struct misuse {
    struct rng rng;
    long calls;
    long mini_runtimes;
    int extra_listener; /* registered, kept open until after stop */
};

static void misuse_conn_calls(struct misuse *m, evmpm_conn h, int stale) {
    evmpm_runtime *rt = server.rt;
    struct rng *r = &m->rng;
    /* A closed connection may still be lingering: reads of it succeed,
     * decisions are refused as ESTATE. A made-up handle is always ESTALE. */
    unsigned decision = stale ? RC(EVMPM_ESTALE) | RC(EVMPM_ESTATE) : RC(EVMPM_ESTALE);
    unsigned access = stale ? RC(EVMPM_ESTALE) | RC(EVMPM_OK) : RC(EVMPM_ESTALE);
    uint32_t flags = rng_below(r, 2) ? rng_below(r, 4) : (uint32_t)rng_next(r);
    void *user;
    int fd;
    switch (rng_below(r, 9)) {
    case 0:
        EXPECT_RC_IN(evmpm_park_keepalive(rt, h, flags),
                     (flags & ~(uint32_t)EVMPM_PARK_BUFFERED) ? RC(EVMPM_EINVAL) : decision);
        break;
    case 1: EXPECT_RC_IN(evmpm_hand_back_to_worker(rt, h), decision); break;
    case 2:
        EXPECT_RC_IN(evmpm_complete_write(rt, h, written, sizeof written - 1, count_release,
                                          &write_releases, flags),
                     (flags & ~(uint32_t)(EVMPM_WRITE_KEEPALIVE | EVMPM_WRITE_BUFFERED))
                         ? RC(EVMPM_EINVAL)
                         : decision);
        break;
    case 3:
        /* NULL data with a length is refused whatever the handle. */
        EXPECT_RC(evmpm_complete_write(rt, h, NULL, 1 + rng_below(r, 100), NULL, NULL, 0),
                  EVMPM_EINVAL);
        EXPECT_RC_IN(evmpm_complete_write(rt, h, NULL, 0, NULL, NULL, 0), decision);
        break;
    case 4: EXPECT_RC_IN(evmpm_suspend(rt, h), decision); break;
    case 5: EXPECT_RC_IN(evmpm_close(rt, h), decision); break;
    case 6:
        EXPECT_RC_IN(evmpm_conn_get_user(rt, h, &user), access);
        EXPECT_RC(evmpm_conn_get_user(rt, h, NULL), EVMPM_EINVAL);
        break;
    case 7:
        EXPECT_RC_IN(evmpm_conn_fd(rt, h, &fd), access);
        EXPECT_RC(evmpm_conn_fd(rt, h, NULL), EVMPM_EINVAL);
        break;
    default:
        /* On a made-up handle only: setting a pointer on a closed but
         * lingering connection would be allowed, but pointless. */
        if (!stale)
            EXPECT_RC(evmpm_conn_set_user(rt, h, &m->calls), EVMPM_ESTALE);
        break;
    }
    m->calls++;
}

static void noop_handler(void *u, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    (void)u, (void)rt, (void)c, (void)fd, (void)reason;
}

static void misuse_runtime_calls(struct misuse *m, int pipe_fd, int udp_fd, int unlistened_fd) {
    evmpm_runtime *rt = server.rt, *other = NULL;
    struct rng *r = &m->rng;
    evmpm_config cfg;
    evmpm_stats st;
    void *user;
    int fd;
    switch (rng_below(r, 12)) {
    case 0: /* NULL runtime: every call says EINVAL (destroy accepts NULL) */
        EXPECT_RC(evmpm_park_keepalive(NULL, made_up_handle(r), 0), EVMPM_EINVAL);
        EXPECT_RC(evmpm_hand_back_to_worker(NULL, made_up_handle(r)), EVMPM_EINVAL);
        EXPECT_RC(evmpm_complete_write(NULL, 1, written, 1, NULL, NULL, 0), EVMPM_EINVAL);
        EXPECT_RC(evmpm_suspend(NULL, made_up_handle(r)), EVMPM_EINVAL);
        EXPECT_RC(evmpm_close(NULL, made_up_handle(r)), EVMPM_EINVAL);
        EXPECT_RC(evmpm_conn_set_user(NULL, 1, NULL), EVMPM_EINVAL);
        EXPECT_RC(evmpm_conn_get_user(NULL, 1, &user), EVMPM_EINVAL);
        EXPECT_RC(evmpm_conn_fd(NULL, 1, &fd), EVMPM_EINVAL);
        EXPECT_RC(evmpm_get_stats(NULL, &st, sizeof st), EVMPM_EINVAL);
        EXPECT_RC(evmpm_register_listener(NULL, server.listen_fd), EVMPM_EINVAL);
        EXPECT_RC(evmpm_start(NULL), EVMPM_EINVAL);
        EXPECT_RC(evmpm_stop(NULL, 0), EVMPM_EINVAL);
        EXPECT_RC(evmpm_destroy(NULL), EVMPM_OK);
        break;
    case 1: /* descriptors that are no listener */
        EXPECT_RC(evmpm_register_listener(rt, -1), EVMPM_ENOTSOCK);
        EXPECT_RC(evmpm_register_listener(rt, 19999), EVMPM_ENOTSOCK);
        EXPECT_RC(evmpm_register_listener(rt, pipe_fd), EVMPM_ENOTSOCK);
        EXPECT_RC(evmpm_register_listener(rt, udp_fd), EVMPM_ENOTSOCK);
        EXPECT_RC(evmpm_register_listener(rt, unlistened_fd), EVMPM_ENOTLISTENER);
        break;
    case 2: /* the same listener twice */
        EXPECT_RC(evmpm_register_listener(rt, server.listen_fd), EVMPM_EEXIST);
        if (m->extra_listener >= 0)
            EXPECT_RC(evmpm_register_listener(rt, m->extra_listener), EVMPM_EEXIST);
        break;
    case 3: /* a second listener, mid-run: clients use it from then on */
        if (m->extra_listener < 0) {
            int port;
            m->extra_listener = listen_loopback(128, &port);
            CHECK_OK(evmpm_register_listener(rt, m->extra_listener));
            atomic_store(&second_port, port);
        }
        break;
    case 4:
        EXPECT_RC(evmpm_start(rt), EVMPM_ESTATE);
        break;
    case 5: /* stats: a consistent snapshot */
        CHECK_OK(evmpm_get_stats(rt, &st, sizeof st));
        CHECK(st.closed <= st.accepted);
        CHECK_EQ(st.conns_reading + st.conns_queued + st.conns_in_handler + st.conns_writing +
                     st.conns_keepalive + st.conns_lingering + st.conns_suspended,
                 st.connections);
        CHECK_EQ(st.workers_busy + st.workers_idle, WORKERS);
        EXPECT_RC(evmpm_get_stats(rt, NULL, sizeof(evmpm_stats)), EVMPM_EINVAL);
        break;
    case 6: /* every code has a description, unknown ones too */
        fd = (int)rng_next(r);
        CHECK(evmpm_strerror(fd) != NULL && evmpm_strerror(fd)[0] != '\0');
        CHECK(evmpm_strerror(-(int)rng_below(r, 14)) != NULL);
        break;
    case 7: /* configurations that must be refused, and *out cleared */
        EXPECT_RC(evmpm_config_init(NULL, sizeof(evmpm_config)), EVMPM_EINVAL);
        CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
        other = rt;
        EXPECT_RC(evmpm_create(&cfg, &other), EVMPM_EINVAL); /* no handler */
        CHECK(other == NULL);
        cfg.handler = noop_handler;
        switch (rng_below(r, 5)) {
        case 0: cfg.size = (uint32_t)rng_below(r, (uint32_t)sizeof cfg); break;
        case 1: cfg.worker_threads = rng_below(r, 2) ? 0 : 4097 + rng_below(r, 1000); break;
        case 2: cfg.connection_limit = rng_below(r, 2) ? 0 : (1u << 20) + 1 + rng_below(r, 1000); break;
        case 3: cfg.request_peek_bytes = rng_below(r, 2) ? 0 : 32769 + rng_below(r, 1000); break;
        default: cfg.async_request_worker_factor = -1.0 - rng_below(r, 10); break;
        }
        other = rt;
        EXPECT_RC_IN(evmpm_create(&cfg, &other), RC(EVMPM_EINVAL) | RC(EVMPM_EVERSION));
        CHECK(other == NULL);
        EXPECT_RC(evmpm_create(NULL, &other), EVMPM_EINVAL);
        EXPECT_RC(evmpm_create(&cfg, NULL), EVMPM_EINVAL);
        break;
    case 8: /* a second runtime comes and goes beside the first */
        CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
        cfg.handler = noop_handler;
        cfg.worker_threads = 1;
        cfg.connection_limit = 16;
        CHECK_OK(evmpm_create(&cfg, &other));
        /* Starting one costs two threads: now and then only. */
        if (rng_below(r, 8) == 0) {
            int rc;
            CHECK_OK(evmpm_start(other));
            EXPECT_RC(evmpm_start(other), EVMPM_ESTATE);
            /* Nothing to close and no handler: EVMPM_OK. On a loaded machine
             * the runtime may say EVMPM_ETIMEDOUT instead (counted, and shown
             * on its own by hostile_stop's starved-machine case). */
            rc = evmpm_stop(other, 0);
            expect_rc_in("evmpm_stop(idle runtime, 0)", rc, RC(EVMPM_OK) | RC(EVMPM_ETIMEDOUT),
                         __LINE__);
            if (rc == EVMPM_ETIMEDOUT)
                atomic_fetch_add(&idle_stop_timeouts, 1);
            EXPECT_RC(evmpm_stop(other, 0), EVMPM_ESTOPPED);
            m->mini_runtimes++;
            EXPECT_RC(evmpm_start(other), EVMPM_ESTOPPED);
        }
        CHECK_OK(evmpm_destroy(other));
        break;
    case 9: /* reading live connections is allowed from any thread */
    {
        evmpm_conn live = (evmpm_conn)atomic_load(&server.last_conn);
        if (live != 0) {
            EXPECT_RC_IN(evmpm_conn_get_user(rt, live, &user), RC(EVMPM_OK) | RC(EVMPM_ESTALE));
            fd = -1;
            EXPECT_RC_IN(evmpm_conn_fd(rt, live, &fd), RC(EVMPM_OK) | RC(EVMPM_ESTALE));
        }
        break;
    }
    default: { /* the library matches this header */
        char want[32];
        snprintf(want, sizeof want, "%d.%d.%d", EVMPM_VERSION_MAJOR, EVMPM_VERSION_MINOR,
                 EVMPM_VERSION_PATCH);
        CHECK(strcmp(evmpm_version(), want) == 0);
        break;
    }
    }
    m->calls++;
}

static atomic_int misuse_stop;

static void *misuse_main(void *arg) {
    struct misuse *m = arg;
    int pipe_fds[2], udp_fd, unlistened_fd;
    CHECK(pipe(pipe_fds) == 0);
    udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(udp_fd >= 0);
    unlistened_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(unlistened_fd >= 0);
    while (!atomic_load(&misuse_stop)) {
        long n = atomic_load(&stale_count);
        /* Hostile, not a CPU hog: leave the clients and the runtime most
         * of the machine. */
        if (m->calls % 16 == 15)
            sleep_ms(1);
        switch (rng_below(&m->rng, 3)) {
        case 0:
            if (n > 0) {
                long i = (long)rng_below(&m->rng, (uint32_t)(n < STALE_RING ? n : STALE_RING));
                misuse_conn_calls(m, (evmpm_conn)atomic_load(&stale_ring[i]), 1);
            }
            break;
        case 1: misuse_conn_calls(m, made_up_handle(&m->rng), 0); break;
        default: misuse_runtime_calls(m, pipe_fds[0], udp_fd, unlistened_fd); break;
        }
    }
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    close(udp_fd);
    close(unlistened_fd);
    return NULL;
}

/* ---- the case ---------------------------------------------------------------- */

static void random_operations_from_many_threads(void) {
    static struct client clients[CLIENT_THREADS];
    static struct misuse m;
    pthread_t cth[CLIENT_THREADS], resumer, misuser;
    const char *ops_env = getenv("EVMPM_HOSTILE_OPS");
    long ops = ops_env != NULL ? atol(ops_env) : DEFAULT_OPS, total = 0;
    long counts[OPS] = {0}, bigs = 0, opened = 0;
    int64_t op_ms[OPS] = {0}, op_max_ms[OPS] = {0};
    evmpm_config cfg;
    evmpm_stats st;
    int fds_before, i, j;
    int64_t started;
    void *user;

    seed = seed_from_env("EVMPM_HOSTILE_SEED");
    figure("seed %llu (EVMPM_HOSTILE_SEED=%llu repeats it), %ld operations per client thread",
           (unsigned long long)seed, (unsigned long long)seed, ops);
    line_server_config(&server, &cfg);
    cfg.worker_threads = WORKERS;
    /* Idle connections must stay open for as long as a client keeps them:
     * a timeout or shedding would close one between two of its requests,
     * and the client's exact expectations rely on it being there. (The
     * other hostile cases cover those closes.) */
    cfg.keepalive_timeout_ms = 60000;
    cfg.keepalive_shed_ms = 0;
    server.command = random_command;
    server.close_hook = record_and_poke_closed;
    line_server_start(&server, &cfg);
    fds_before = open_fd_count();

    rng_seed(&m.rng, seed ^ 0x3c3c3c3c);
    m.extra_listener = -1;
    for (i = 0; i < CLIENT_THREADS; i++) {
        clients[i].index = i;
        clients[i].ops = ops;
        rng_seed(&clients[i].rng, seed + (uint64_t)i * 0x9E3779B97F4A7C15ull);
        for (j = 0; j < CONNS_PER_CLIENT; j++)
            clients[i].conns[j].fd = -1;
    }
    started = now_ms();
    CHECK(pthread_create(&resumer, NULL, resumer_main, NULL) == 0);
    CHECK(pthread_create(&misuser, NULL, misuse_main, &m) == 0);
    for (i = 0; i < CLIENT_THREADS; i++)
        CHECK(pthread_create(&cth[i], NULL, client_main, &clients[i]) == 0);
    for (i = 0; i < CLIENT_THREADS; i++)
        CHECK(pthread_join(cth[i], NULL) == 0);
    CHECK(pthread_join(resumer, NULL) == 0);
    atomic_store(&misuse_stop, 1);
    CHECK(pthread_join(misuser, NULL) == 0);

    for (i = 0; i < CLIENT_THREADS; i++) {
        for (j = 0; j < OPS; j++) {
            counts[j] += clients[i].counts[j];
            op_ms[j] += clients[i].op_ms[j];
            if (clients[i].op_max_ms[j] > op_max_ms[j])
                op_max_ms[j] = clients[i].op_max_ms[j];
        }
        bigs += clients[i].bigs;
        opened += clients[i].opened;
        total += clients[i].op;
    }
    figure("%ld client operations on %ld connections in %lld ms:", total, opened,
           (long long)(now_ms() - started));
    for (j = 0; j < OPS; j++)
        figure("  %-20s %5ld  (%lld ms in all, slowest %lld ms)", op_names[j], counts[j],
               (long long)op_ms[j], (long long)op_max_ms[j]);
    figure("suspensions ended by hand-back %ld, write+keep-alive %ld, write+close %ld, "
           "write+buffered %ld, close %ld, park %ld, park-buffered %ld",
           atomic_load(&resume_counts[A_HAND_BACK]), atomic_load(&resume_counts[A_WRITE_KEEP]),
           atomic_load(&resume_counts[A_WRITE_CLOSE]), atomic_load(&resume_counts[A_WRITE_BUFFERED]),
           atomic_load(&resume_counts[A_CLOSE]), atomic_load(&resume_counts[A_PARK]),
           atomic_load(&resume_counts[A_PARK_BUFFERED]));
    figure("misuse thread: %ld rounds of calls; handler misuse %ld; return codes checked %ld",
           m.calls, atomic_load(&handler_misuse_calls), atomic_load(&checked_calls));
    figure("second runtimes started and stopped idle: %ld, of which evmpm_stop said "
           "EVMPM_ETIMEDOUT: %ld",
           m.mini_runtimes, atomic_load(&idle_stop_timeouts));

    /* Nothing left behind. */
    expect_all_closed(&server, 10000);
    st = line_server_stats(&server);
    figure("accepted %llu, closed %llu, close callbacks %ld, second callbacks %ld",
           (unsigned long long)st.accepted, (unsigned long long)st.closed,
           atomic_load(&server.closes), atomic_load(&server.double_closes));
    CHECK_EQ(st.accepted, opened);
    CHECK_EQ(atomic_load(&server.releases), bigs);
    CHECK_EQ(atomic_load(&write_releases), atomic_load(&writes_issued));
    CHECK_EQ(open_fd_count(), fds_before + (m.extra_listener >= 0 ? 1 : 0));

    /* Stopped: what takes a connection or changes the runtime says so. */
    CHECK_OK(evmpm_stop(server.rt, 1000));
    EXPECT_RC(evmpm_stop(server.rt, 0), EVMPM_ESTOPPED);
    EXPECT_RC(evmpm_start(server.rt), EVMPM_ESTOPPED);
    EXPECT_RC(evmpm_register_listener(server.rt, server.listen_fd), EVMPM_ESTOPPED);
    if (atomic_load(&stale_count) > 0) {
        evmpm_conn h = (evmpm_conn)atomic_load(&stale_ring[0]);
        EXPECT_RC(evmpm_park_keepalive(server.rt, h, 0), EVMPM_ESTOPPED);
        EXPECT_RC(evmpm_hand_back_to_worker(server.rt, h), EVMPM_ESTOPPED);
        EXPECT_RC(evmpm_close(server.rt, h), EVMPM_ESTOPPED);
        EXPECT_RC(evmpm_suspend(server.rt, h), EVMPM_ESTOPPED);
        EXPECT_RC_IN(evmpm_conn_get_user(server.rt, h, &user),
                     RC(EVMPM_ESTALE) | RC(EVMPM_ESTOPPED));
    }
    CHECK_OK(evmpm_get_stats(server.rt, &st, sizeof st));
    CHECK_EQ(st.connections, 0);
    CHECK_OK(evmpm_destroy(server.rt));
    server.rt = NULL;
    close(server.listen_fd);
    if (m.extra_listener >= 0)
        close(m.extra_listener);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"random_operations_from_many_threads", random_operations_from_many_threads},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

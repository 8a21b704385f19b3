/* Stopping under load, and with a handler that never returns.
 *
 * Graceful stop: a hundred keep-alive clients send request after request
 * while the runtime is stopped. The server may close a connection that is
 * idle between two requests, and a request the client sends just then is
 * never read (every HTTP server has that race); such requests are counted
 * as "not accepted". A request whose handling began must be answered: one
 * that is not is LOST, and there must be none. The server knows which
 * requests it began (the REQ and SLOW commands record their ids), so the
 * client's count needs no guessing.
 *
 * Stuck handler: one handler blocks forever; the others are served, stop
 * gives up at its deadline with EVMPM_ETIMEDOUT, and destroy waits for the
 * handler: once the host lets it go, its connection is closed and every
 * runtime thread exits before destroy returns. */
#define _GNU_SOURCE
#include "harness.h"
#include "hostile_util.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- graceful stop under load ------------------------------------------- */

enum { CLIENTS = 100, MAX_IDS = 1 << 20, SLOW_MS = 20, BIG_MIN = 100000, BIG_SPREAD = 200000 };

/* started[id]: the handler read request `id` and began serving it. */
static atomic_uchar started[MAX_IDS];
static atomic_long next_id;
static atomic_int stopping; /* set just before evmpm_stop is called */
static atomic_long big_writes, big_releases;

struct big_answer {
    size_t len;
    char data[];
};

static void release_big_answer(void *arg) {
    free(arg);
    atomic_fetch_add(&big_releases, 1);
}

/* REQ id: answered at once. SLOW id ms: answered after ms in the handler.
 * BIGREQ id n: "DONE id n" and n pattern bytes through write completion,
 * which a stop must let finish. Each records that its handling began. */
static enum line_command_result tracked_command(struct line_server *s, evmpm_conn c, int fd,
                                                const char *line) {
    char reply[64];
    long id;
    int ms = 0, n = 0;
    if (sscanf(line, "BIGREQ %ld %d", &id, &n) == 2) {
        struct big_answer *b;
        int head, i, rc;
        int sndbuf = 16384;
        CHECK(id >= 0 && id < MAX_IDS && n > 0);
        atomic_store(&started[id], 1);
        /* A small send buffer keeps most of the answer in write completion
         * (on loopback the kernel would take it whole). */
        CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
        b = malloc(sizeof *b + 64 + (size_t)n);
        CHECK(b != NULL);
        head = snprintf(b->data, 64, "DONE %ld %d\n", id, n);
        for (i = 0; i < n; i++)
            b->data[head + i] = (char)('a' + i % 26);
        b->len = (size_t)head + (size_t)n;
        rc = evmpm_complete_write(s->rt, c, b->data, b->len, release_big_answer, b,
                                  EVMPM_WRITE_KEEPALIVE);
        /* The stop has begun but the runtime is not stopped while this
         * handler runs: the write is accepted. */
        CHECK_OK(rc);
        atomic_fetch_add(&big_writes, 1);
        return LINE_DECIDED;
    }
    if (sscanf(line, "REQ %ld", &id) == 1 || sscanf(line, "SLOW %ld %d", &id, &ms) == 2) {
        CHECK(id >= 0 && id < MAX_IDS);
        atomic_store(&started[id], 1);
        if (ms > 0)
            sleep_ms(ms);
        snprintf(reply, sizeof reply, "DONE %ld\n", id);
        line_reply(fd, reply);
        return LINE_PARK;
    }
    return LINE_UNKNOWN;
}

struct tally {
    atomic_long answered, answered_after_stop, big_answered, pairs;
    atomic_long not_accepted;            /* closed before the server read it */
    atomic_long not_accepted_sent_early; /* of those, fully sent before stop began */
    atomic_long send_failed;             /* the connection was gone before sending */
    atomic_long lost;                    /* read by the server, never answered */
    atomic_long resets;                  /* ECONNRESET seen by a client */
};

struct client {
    int fd;
    unsigned seed;
    struct tally *t;
    char *buf;
};

struct request {
    long id;
    int big; /* BIGREQ's length, 0 for the others */
    char text[64];
};

static unsigned next_rand(struct client *c) {
    c->seed = c->seed * 1103515245u + 12345u;
    return c->seed >> 16;
}

/* One request: mostly REQ or SLOW, sometimes BIGREQ (never first of a
 * pair: the line server's park would not see input held behind it). */
static void make_request(struct client *c, struct request *r, int may_be_big) {
    unsigned x = next_rand(c) % 10;
    r->id = atomic_fetch_add(&next_id, 1);
    r->big = 0;
    CHECK(r->id < MAX_IDS);
    if (may_be_big && x < 2) {
        r->big = BIG_MIN + (int)(next_rand(c) % BIG_SPREAD);
        snprintf(r->text, sizeof r->text, "BIGREQ %ld %d\n", r->id, r->big);
    } else if (x < 6) {
        snprintf(r->text, sizeof r->text, "SLOW %ld %d\n", r->id, SLOW_MS);
    } else {
        snprintf(r->text, sizeof r->text, "REQ %ld\n", r->id);
    }
}

/* Reads request r's answer: 1, or the try_* code that ended it. */
static int read_answer(struct client *c, const struct request *r, size_t *got) {
    char line[64], want[64];
    int rc = try_recv_line(c->fd, line, sizeof line, 10000, got);
    if (rc != 1)
        return rc;
    if (r->big)
        snprintf(want, sizeof want, "DONE %ld %d", r->id, r->big);
    else
        snprintf(want, sizeof want, "DONE %ld", r->id);
    if (strcmp(line, want) != 0)
        harness_fail(__FILE__, __LINE__, "request %ld answered \"%s\"", r->id, line);
    if (r->big) {
        rc = try_recv_exact(c->fd, c->buf, (size_t)r->big, 10000);
        if (rc != 1)
            return rc;
        if (!big_pattern_ok(c->buf, (size_t)r->big, 0))
            harness_fail(__FILE__, __LINE__, "request %ld: response bytes corrupted", r->id);
    }
    return 1;
}

static void *client_main(void *arg) {
    struct client *c = arg;
    struct tally *t = c->t;
    struct request batch[2];
    char out[128];
    for (;;) {
        /* One request, or two pipelined in one segment (the handler reads
         * both at once and serves the second from its buffer). */
        int n = next_rand(c) % 5 == 0 ? 2 : 1, i, before_stop, rc = 1;
        size_t got = 0;
        make_request(c, &batch[0], n == 1);
        if (n == 2)
            make_request(c, &batch[1], 1);
        snprintf(out, sizeof out, "%s%s", batch[0].text, n == 2 ? batch[1].text : "");
        before_stop = !atomic_load(&stopping);
        rc = try_send_all(c->fd, out, strlen(out));
        if (rc != 1) {
            /* Gone before the request was out: the server cannot have it. */
            if (rc == -ECONNRESET)
                atomic_fetch_add(&t->resets, 1);
            CHECK(!atomic_load(&started[batch[0].id]));
            atomic_fetch_add(&t->send_failed, 1);
            atomic_fetch_add(&t->not_accepted, n);
            break;
        }
        for (i = 0; i < n; i++) {
            rc = read_answer(c, &batch[i], &got);
            if (rc != 1)
                break;
            atomic_fetch_add(&t->answered, 1);
            if (batch[i].big)
                atomic_fetch_add(&t->big_answered, 1);
            if (atomic_load(&stopping))
                atomic_fetch_add(&t->answered_after_stop, 1);
        }
        if (n == 2 && i == 2)
            atomic_fetch_add(&t->pairs, 1);
        if (i == n)
            continue;
        if (rc == TRY_TIMEOUT)
            harness_fail(__FILE__, __LINE__, "request %ld: no answer and no close in 10 s",
                         batch[i].id);
        if (rc == -ECONNRESET)
            atomic_fetch_add(&t->resets, 1);
        /* Closed without a whole answer for batch[i] (and what follows).
         * The connection is closed, so no handler runs for it any more:
         * started[] is final. A request the server began is lost; so is the
         * second of a pair whose first was begun, since the handler read
         * both together. */
        for (; i < n; i++) {
            if (atomic_load(&started[batch[i].id]) || (i == 1 && atomic_load(&started[batch[0].id]))) {
                atomic_fetch_add(&t->lost, 1);
                fprintf(stderr, "LOST: request %ld (\"%.*s\", %s of %d) was read by the server, "
                                "then the connection closed (rc %d, %zu bytes of the answer line)\n",
                        batch[i].id, (int)strlen(batch[i].text) - 1, batch[i].text,
                        i == 0 ? "first" : "second", n, rc, got);
            } else {
                atomic_fetch_add(&t->not_accepted, 1);
                if (before_stop)
                    atomic_fetch_add(&t->not_accepted_sent_early, 1);
            }
        }
        break;
    }
    close(c->fd);
    return NULL;
}

static void graceful_stop_under_load(void) {
    static struct client clients[CLIENTS];
    static struct tally t;
    pthread_t th[CLIENTS];
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    long in_flight, answered_at_stop;
    uint64_t writing_at_stop;
    int64_t stop_ms;
    int i, rc;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 16;
    s.command = tracked_command;
    line_server_start(&s, &cfg);
    for (i = 0; i < CLIENTS; i++) {
        /* Half of them read through a small window, so that large answers
         * are still in write completion when the stop comes. */
        clients[i].fd = i % 2 ? connect_loopback_rcvbuf(s.port, 16384) : connect_loopback(s.port);
        clients[i].seed = (unsigned)i * 7919u + 1;
        clients[i].t = &t;
        clients[i].buf = malloc(BIG_MIN + BIG_SPREAD);
        CHECK(clients[i].buf != NULL);
    }
    /* Every client is accepted before the stop: one still in the backlog
     * when the listener closes would be reset by the kernel, which says
     * nothing about the runtime. */
    WAIT_UNTIL(line_server_stats(&s).accepted == CLIENTS, 10000);
    for (i = 0; i < CLIENTS; i++)
        CHECK(pthread_create(&th[i], NULL, client_main, &clients[i]) == 0);

    /* Mid-run, with requests inside handlers. */
    WAIT_UNTIL(atomic_load(&t.answered) >= 1000 && atomic_load(&s.in_handler) >= 8, 20000);
    in_flight = atomic_load(&s.in_handler);
    writing_at_stop = line_server_stats(&s).conns_writing;
    answered_at_stop = atomic_load(&t.answered);
    atomic_store(&stopping, 1);
    stop_ms = now_ms();
    rc = line_server_stop_only(&s, 5000);
    stop_ms = now_ms() - stop_ms;
    st = line_server_stats(&s);
    for (i = 0; i < CLIENTS; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        free(clients[i].buf);
    }

    figure("stop after %ld answers, %ld requests in handlers, %llu answers in write completion: "
           "evmpm_stop returned %d in %lld ms",
           answered_at_stop, in_flight, (unsigned long long)writing_at_stop, rc,
           (long long)stop_ms);
    figure("answered %ld (%ld after stop began; %ld large, %ld pipelined pairs), lost %ld; "
           "not accepted %ld (%ld sent before stop began, %ld could not even be sent); "
           "ECONNRESET seen %ld",
           atomic_load(&t.answered), atomic_load(&t.answered_after_stop),
           atomic_load(&t.big_answered), atomic_load(&t.pairs), atomic_load(&t.lost),
           atomic_load(&t.not_accepted), atomic_load(&t.not_accepted_sent_early),
           atomic_load(&t.send_failed), atomic_load(&t.resets));
    CHECK_EQ(rc, EVMPM_OK);
    CHECK_EQ(atomic_load(&t.lost), 0);
    CHECK_EQ(atomic_load(&t.resets), 0);
    /* The stop closed every connection: each client ended on a request
     * that was not answered, and it was counted. */
    CHECK(atomic_load(&t.not_accepted) + atomic_load(&t.lost) >= CLIENTS);
    /* Every large answer's buffer came back, sent in full or not. */
    CHECK_EQ(atomic_load(&big_releases), atomic_load(&big_writes));
    CHECK_EQ(st.connections, 0);
    CHECK_EQ(st.accepted, CLIENTS);
    CHECK_EQ(atomic_load(&s.closes), CLIENTS);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK_OK(evmpm_destroy(s.rt));
    close(s.listen_fd);
}

/* ---- a handler that never returns --------------------------------------- */

/* Lets the HOLDs of `s` go `ms` after it starts, from its own thread, while
 * the test's thread waits in evmpm_destroy. */
struct late_release {
    struct line_server *s;
    int ms;
    atomic_int released;
};

static void *release_later(void *arg) {
    struct late_release *r = arg;
    sleep_ms(r->ms);
    atomic_store(&r->released, 1);
    line_server_release_holds(r->s);
    return NULL;
}

static void stuck_handler_stop_times_out(void) {
    enum { OTHERS = 3, ROUNDS = 100 };
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    evmpm_runtime *rt;
    int others[OTHERS], stuck, i, j, rc;
    int64_t stop_ms;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    line_server_start(&s, &cfg);
    rt = s.rt;
    stuck = connect_loopback(s.port);
    send_str(stuck, "HOLD\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    /* The other three workers serve everyone else meanwhile. */
    for (i = 0; i < OTHERS; i++)
        others[i] = line_client(&s);
    for (j = 0; j < ROUNDS; j++)
        for (i = 0; i < OTHERS; i++)
            ping(others[i]);
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1 && line_server_stats(&s).workers_busy == 1, 5000);

    stop_ms = now_ms();
    rc = line_server_stop_only(&s, 500);
    stop_ms = now_ms() - stop_ms;
    figure("%d pings served beside the stuck handler; evmpm_stop(500) returned %d (%s) in %lld ms",
           OTHERS * ROUNDS, rc, evmpm_strerror(rc), (long long)stop_ms);
    CHECK_EQ(rc, EVMPM_ETIMEDOUT);
    CHECK(stop_ms >= 499);
    CHECK(stop_ms < 2000 * harness_slowdown());
    /* Everyone else was closed; so was the stuck client's socket (shut
     * down so that a blocked read would return). */
    for (i = 0; i < OTHERS; i++)
        CHECK(wait_closed(others[i], 5000));
    CHECK(wait_closed(stuck, 5000));
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, OTHERS + 1);
    CHECK_EQ(atomic_load(&s.closes), OTHERS);
    CHECK_EQ(evmpm_stop(rt, 500), EVMPM_ESTOPPED);
    CHECK_EQ(atomic_load(&s.in_handler), 1);

    /* Destroy waits for the stuck handler. Let go from another thread, the
     * handler's decision finds the runtime stopped, its connection is
     * closed (the close callback runs once), and its worker, the last
     * runtime thread, exits: all before destroy returns. */
    {
        struct late_release r;
        pthread_t t;
        int64_t destroy_ms;
        r.s = &s;
        r.ms = 300;
        atomic_init(&r.released, 0);
        CHECK(pthread_create(&t, NULL, release_later, &r) == 0);
        watchdog_arm(5000, "evmpm_destroy did not return once the stuck handler was let go");
        destroy_ms = now_ms();
        CHECK_OK(evmpm_destroy(rt));
        destroy_ms = now_ms() - destroy_ms;
        watchdog_disarm();
        s.rt = NULL;
        CHECK(atomic_load(&r.released));
        CHECK_EQ(atomic_load(&s.in_handler), 0);
        CHECK_EQ(atomic_load(&s.closes), OTHERS + 1);
        /* Joined; the kernel drops a joined thread from /proc a moment
         * after the join can return. */
        WAIT_UNTIL(runtime_thread_count() == 0, 1000);
        CHECK(pthread_join(t, NULL) == 0);
        figure("evmpm_destroy waited %lld ms for the stuck handler", (long long)destroy_ms);
    }
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    for (i = 0; i < OTHERS; i++)
        close(others[i]);
    close(stuck);
    close(s.listen_fd);
}

/* A handler blocked in read (a request that never completes, no readiness
 * check) is not stuck for good: the forced stop shuts its socket down, the
 * read returns, the connection is closed and every runtime thread exits. */
static void handler_blocked_in_read_is_freed_by_stop(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd, rc;
    int64_t stop_ms;

    line_server_config(&s, &cfg);
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    send_str(fd, "ECHO never finished");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    stop_ms = now_ms();
    rc = line_server_stop(&s, 300);
    stop_ms = now_ms() - stop_ms;
    figure("evmpm_stop(300) with a handler blocked in read returned %d (%s) in %lld ms", rc,
           evmpm_strerror(rc), (long long)stop_ms);
    /* The deadline forced the connection closed. */
    CHECK_EQ(rc, EVMPM_ETIMEDOUT);
    CHECK(stop_ms < 2000 * harness_slowdown());
    /* The handler's read returned at the deadline; it closes its
     * connection and its worker exits (stop waits ~100 ms for that, and
     * on a busy machine may return first). */
    WAIT_UNTIL(atomic_load(&s.in_handler) == 0 && atomic_load(&s.closes) == 1, 5000);
    WAIT_UNTIL(runtime_thread_count() == 0, 5000);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK(wait_closed(fd, 5000));
    close(fd);
}

/* ---- stopping an idle runtime on a starved machine ------------------------ */

/* On a busy machine a runtime thread may wait a long time for a CPU. That
 * must not change what stop reports: a runtime with no connection and no
 * handler running has nothing to force, so evmpm_stop says EVMPM_OK,
 * however late its idle workers get to notice they should exit.
 *
 * The starvation is made deterministic rather than waited for: the whole
 * process is pinned to one CPU, three threads spin on it at normal
 * priority, and the runtime's threads are started at nice 19 (threads
 * inherit the nice value of the thread that creates them), so each of
 * them gets well under 1% of that CPU. */

static atomic_int spinning;

static void *spin_main(void *arg) {
    (void)arg;
    while (atomic_load_explicit(&spinning, memory_order_relaxed)) {
    }
    return NULL;
}

static void *start_at_lowest_priority(void *rt) {
    CHECK(setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) == 0);
    CHECK_OK(evmpm_start(rt));
    return NULL;
}

static void noop_handler(void *u, evmpm_runtime *rt, evmpm_conn c, int fd, int reason) {
    (void)u, (void)rt, (void)c, (void)fd, (void)reason;
}

static void idle_stop_on_a_starved_machine_returns_ok(void) {
    enum { SPINNERS = 3, TRIES = 8 };
    pthread_t spinners[SPINNERS], starter;
    cpu_set_t one;
    int i, cpu, timed_out = 0, left_running = 0;
    int64_t slowest = 0;

    CHECK(sched_getaffinity(0, sizeof one, &one) == 0);
    for (cpu = 0; cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &one); cpu++) {
    }
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    atomic_store(&spinning, 1);
    for (i = 0; i < SPINNERS; i++)
        CHECK(pthread_create(&spinners[i], NULL, spin_main, NULL) == 0);

    for (i = 0; i < TRIES; i++) {
        evmpm_config cfg;
        evmpm_runtime *rt;
        int64_t t;
        int rc;
        CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
        cfg.handler = noop_handler;
        cfg.worker_threads = 4;
        cfg.connection_limit = 16;
        CHECK_OK(evmpm_create(&cfg, &rt));
        CHECK(pthread_create(&starter, NULL, start_at_lowest_priority, rt) == 0);
        CHECK(pthread_join(starter, NULL) == 0);
        t = now_ms();
        rc = evmpm_stop(rt, 0);
        t = now_ms() - t;
        if (t > slowest)
            slowest = t;
        if (rc == EVMPM_ETIMEDOUT)
            timed_out++;
        else
            CHECK_OK(rc);
        CHECK_OK(evmpm_destroy(rt));
        /* Workers given up on are left running, detached. */
        left_running += runtime_thread_count();
        WAIT_UNTIL(runtime_thread_count() == 0, 10000);
    }
    atomic_store(&spinning, 0);
    for (i = 0; i < SPINNERS; i++)
        CHECK(pthread_join(spinners[i], NULL) == 0);
    figure("idle runtime, starved threads: evmpm_stop(0) said EVMPM_ETIMEDOUT in %d of %d tries "
           "(slowest stop %lld ms); %d runtime threads still running after evmpm_destroy returned",
           timed_out, TRIES, (long long)slowest, left_running);
    if (timed_out != 0)
        harness_fail(__FILE__, __LINE__,
                     "evmpm_stop on a runtime with no connection and no handler running returned "
                     "EVMPM_ETIMEDOUT in %d of %d tries: idle workers that are not scheduled "
                     "within stop's 100 ms grace are taken for stuck handlers",
                     timed_out, TRIES);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"graceful_stop_under_load", graceful_stop_under_load},
        {"stuck_handler_stop_times_out", stuck_handler_stop_times_out},
        {"handler_blocked_in_read_is_freed_by_stop", handler_blocked_in_read_is_freed_by_stop},
        {"idle_stop_on_a_starved_machine_returns_ok", idle_stop_on_a_starved_machine_returns_ok},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

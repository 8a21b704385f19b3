/*
 * The host's view of the runtime's threads and of its end: thread start
 * and stop hooks, a stop with no deadline, and destroy, after which no
 * callback runs.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

/* ---- thread hooks, counted ------------------------------------------------ */

enum { MAX_ID = 64 };

/* By kind (EVMPM_THREAD_WORKER, EVMPM_THREAD_EVENT) and id. */
static atomic_int starts[3][MAX_ID], stops[3][MAX_ID];
/* 1 between a thread's start hook and its stop hook. */
static atomic_int live[3][MAX_ID];
static atomic_long start_total, stop_total;
/* Hook calls that broke a rule, with the first one's description. */
static atomic_int hook_faults;
static char first_fault[160];

/* What the start hook set on its thread, for handlers and the stop hook. */
static _Thread_local int tl_kind;
static _Thread_local int tl_id = -1;
static _Thread_local long tl_magic;

static void hook_fault(const char *what, int kind, uint32_t id) {
    if (atomic_fetch_add(&hook_faults, 1) == 0)
        snprintf(first_fault, sizeof first_fault, "%s (kind %d, id %u)", what, kind, (unsigned)id);
}

static int hook_args_ok(evmpm_runtime *rt, void *user, int kind, uint32_t id) {
    struct line_server *s = user;
    if (kind != EVMPM_THREAD_WORKER && kind != EVMPM_THREAD_EVENT) {
        hook_fault("unknown kind", kind, id);
        return 0;
    }
    if (id >= MAX_ID || (kind == EVMPM_THREAD_EVENT && id != 0)) {
        hook_fault("id out of range", kind, id);
        return 0;
    }
    if (rt == NULL || rt != s->rt) {
        hook_fault("not the runtime's pointer", kind, id);
        return 0;
    }
    /* Hooks run on the runtime's own threads: stop and destroy refuse. */
    if (evmpm_stop(rt, 0) != EVMPM_ETHREAD || evmpm_destroy(rt) != EVMPM_ETHREAD)
        hook_fault("stop or destroy accepted in a hook", kind, id);
    return 1;
}

static void on_start(void *user, evmpm_runtime *rt, int kind, uint32_t id) {
    if (!hook_args_ok(rt, user, kind, id))
        return;
    if (tl_id != -1)
        hook_fault("a second start hook on one thread", kind, id);
    if (atomic_exchange(&live[kind][id], 1) != 0)
        hook_fault("start for an id whose thread is live", kind, id);
    tl_kind = kind;
    tl_id = (int)id;
    tl_magic = 1000 + (long)id;
    atomic_fetch_add(&starts[kind][id], 1);
    atomic_fetch_add(&start_total, 1);
}

static void on_stop(void *user, evmpm_runtime *rt, int kind, uint32_t id) {
    if (!hook_args_ok(rt, user, kind, id))
        return;
    if (tl_kind != kind || tl_id != (int)id || tl_magic != 1000 + (long)id)
        hook_fault("stop hook on another thread than its start", kind, id);
    if (atomic_exchange(&live[kind][id], 0) != 1)
        hook_fault("stop without a start", kind, id);
    tl_id = -2; /* a second stop on this thread is caught above */
    atomic_fetch_add(&stops[kind][id], 1);
    atomic_fetch_add(&stop_total, 1);
}

/* Every thread that started has stopped, once, with the same kind and id. */
static void check_hooks_balanced(void) {
    int k, i;
    if (atomic_load(&hook_faults) != 0)
        harness_fail(__FILE__, __LINE__, "%d hook faults, first: %s", atomic_load(&hook_faults),
                     first_fault);
    for (k = 1; k <= 2; k++)
        for (i = 0; i < MAX_ID; i++) {
            CHECK_EQ(atomic_load(&starts[k][i]), atomic_load(&stops[k][i]));
            CHECK_EQ(atomic_load(&live[k][i]), 0);
        }
    CHECK_EQ(atomic_load(&start_total), atomic_load(&stop_total));
}

static void hooked_config(struct line_server *s, evmpm_config *cfg) {
    line_server_config(s, cfg);
    cfg->on_thread_start = on_start;
    cfg->on_thread_stop = on_stop;
}

static long worker_starts(void) {
    long n = 0;
    int i;
    for (i = 0; i < MAX_ID; i++)
        n += atomic_load(&starts[EVMPM_THREAD_WORKER][i]);
    return n;
}

/* ---- commands ---------------------------------------------------------- */

/* WHO: answers "W <id> <magic>" from the start hook's thread-local state.
 * WHOSLEEP ms: the same after sleeping ms (so blocked handlers bring more
 * threads). */
static enum line_command_result who_command(struct line_server *s, evmpm_conn c, int fd,
                                            const char *line) {
    char reply[64];
    int ms = 0;
    (void)s, (void)c;
    if (strcmp(line, "WHO") != 0 && sscanf(line, "WHOSLEEP %d", &ms) != 1)
        return LINE_UNKNOWN;
    if (ms > 0)
        sleep_ms(ms);
    snprintf(reply, sizeof reply, "%c %d %ld\n", tl_kind == EVMPM_THREAD_WORKER ? 'W' : '?', tl_id,
             tl_magic);
    line_reply(fd, reply);
    return LINE_PARK;
}

/* Checks a WHO answer: a worker whose start hook ran on this thread. */
static void expect_worker_reply(int fd) {
    char line[64], kind;
    int id;
    long magic;
    recv_line(fd, line, sizeof line, 5000);
    if (sscanf(line, "%c %d %ld", &kind, &id, &magic) != 3 || kind != 'W' || id < 0 ||
        id >= MAX_ID || magic != 1000 + id)
        harness_fail(__FILE__, __LINE__, "handler saw no start-hook state: \"%s\"", line);
}

/* ---- cases ---------------------------------------------------------------- */

/* Every runtime thread runs its start hook once and its stop hook once, on
 * itself: the event thread, the running worker, spares started for blocked
 * handlers (whose stop hook runs when they leave after 2 s idle), and the
 * rest at the stop, before evmpm_stop returns. */
static void hooks_run_once_per_thread(void) {
    enum { CLIENTS = 4 };
    struct line_server s;
    evmpm_config cfg;
    int fd[CLIENTS], i;
    hooked_config(&s, &cfg);
    s.command = who_command;
    cfg.running_threads = 1;
    cfg.worker_threads = 8;
    line_server_start(&s, &cfg);
    WAIT_UNTIL(atomic_load(&starts[EVMPM_THREAD_EVENT][0]) == 1 && worker_starts() == 1, 5000);
    CHECK_EQ(atomic_load(&stop_total), 0);
    CHECK_EQ(atomic_load(&live[EVMPM_THREAD_WORKER][0]), 1);

    /* Blocked handlers bring spares, each with its start hook. */
    for (i = 0; i < CLIENTS; i++)
        fd[i] = line_client(&s);
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "WHOSLEEP 300\n");
    for (i = 0; i < CLIENTS; i++)
        expect_worker_reply(fd[i]);
    CHECK(worker_starts() >= CLIENTS);
    CHECK(line_server_stats(&s).worker_threads >= CLIENTS);
    /* The spares leave after 2 s without work, each running its stop hook
     * before the count of threads drops. */
    WAIT_UNTIL(line_server_stats(&s).worker_threads == 1, 10000);
    WAIT_UNTIL(atomic_load(&stop_total) == atomic_load(&start_total) - 2, 5000);
    CHECK_EQ(atomic_load(&live[EVMPM_THREAD_EVENT][0]), 1);
    if (atomic_load(&hook_faults) != 0)
        harness_fail(__FILE__, __LINE__, "hook fault: %s", first_fault);

    /* The rest stop with the runtime, before evmpm_stop returns. */
    for (i = 0; i < CLIENTS; i++)
        close(fd[i]);
    CHECK_OK(line_server_stop_only(&s, 5000));
    check_hooks_balanced();
    CHECK_EQ(atomic_load(&starts[EVMPM_THREAD_EVENT][0]), 1);
    line_server_destroy(&s);
    check_hooks_balanced();
}

/* evmpm_destroy on a running runtime stops it (deadline 0) and every
 * thread's stop hook has run when it returns. */
static void destroy_runs_every_stop_hook(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    hooked_config(&s, &cfg);
    cfg.running_threads = 2;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    WAIT_UNTIL(atomic_load(&start_total) == 3, 5000);
    line_server_destroy(&s);
    check_hooks_balanced();
    CHECK_EQ(atomic_load(&stop_total), 3);
    CHECK(wait_closed(fd, 5000));
    close(fd);
}

/* What the start hook puts in thread-local storage is there in every
 * handler on that thread, and in the stop hook (checked there). */
static void start_hook_state_is_seen_by_handlers(void) {
    enum { CLIENTS = 3, ROUNDS = 20 };
    struct line_server s;
    evmpm_config cfg;
    int fd[CLIENTS], i, j;
    hooked_config(&s, &cfg);
    s.command = who_command;
    cfg.running_threads = 2;
    cfg.worker_threads = 6;
    line_server_start(&s, &cfg);
    for (i = 0; i < CLIENTS; i++)
        fd[i] = line_client(&s);
    for (j = 0; j < ROUNDS; j++)
        for (i = 0; i < CLIENTS; i++) {
            send_str(fd[i], "WHO\n");
            expect_worker_reply(fd[i]);
        }
    /* And on threads started for blocked handlers. */
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "WHOSLEEP 100\n");
    for (i = 0; i < CLIENTS; i++)
        expect_worker_reply(fd[i]);
    for (i = 0; i < CLIENTS; i++)
        close(fd[i]);
    CHECK_OK(line_server_stop(&s, 5000));
    check_hooks_balanced();
}

/* ---- stop with no deadline ------------------------------------------------ */

struct releaser {
    struct line_server *s;
    atomic_int *begun;    /* set by the test just before the call it waits in */
    atomic_int *returned; /* set by the test as soon as that call returns */
    int ms;               /* how long to let the call wait */
    atomic_int released;
    atomic_int returned_early; /* the call had returned before the release */
};

/* Once the test is inside its call, waits `ms`, checks the call is still
 * waiting, and lets the HOLD go. */
static void *release_hold_later(void *arg) {
    struct releaser *r = arg;
    int64_t deadline = now_ms() + 10000 * (int64_t)harness_slowdown();
    while (!atomic_load(r->begun) && now_ms() < deadline)
        sleep_ms(1);
    sleep_ms(r->ms);
    if (atomic_load(r->returned))
        atomic_store(&r->returned_early, 1);
    atomic_store(&r->released, 1);
    line_server_release_holds(r->s);
    return NULL;
}

/* evmpm_stop(rt, EVMPM_TIMEOUT_NONE) waits for a handler however long it
 * takes, forces nothing (the handler's answer reaches its client), and
 * returns EVMPM_OK. */
static void stop_without_deadline_waits_for_the_handler(void) {
    struct line_server s;
    struct releaser r;
    evmpm_config cfg;
    atomic_int begun, returned;
    pthread_t t;
    int fd, idle, rc;
    int64_t took;
    hooked_config(&s, &cfg);
    line_server_start(&s, &cfg);
    fd = connect_loopback(s.port);
    send_str(fd, "HOLD\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    idle = line_client(&s);

    atomic_init(&begun, 0);
    atomic_init(&returned, 0);
    memset(&r, 0, sizeof r);
    r.s = &s;
    r.begun = &begun;
    r.returned = &returned;
    r.ms = 600;
    CHECK(pthread_create(&t, NULL, release_hold_later, &r) == 0);
    atomic_store(&s.stop_called, 1);
    /* Past any deadline a finite timeout would have had here. */
    watchdog_arm(10000, "evmpm_stop(EVMPM_TIMEOUT_NONE) did not return once the handler did");
    took = now_ms();
    atomic_store(&begun, 1);
    rc = evmpm_stop(s.rt, EVMPM_TIMEOUT_NONE);
    atomic_store(&returned, 1);
    took = now_ms() - took;
    watchdog_disarm();
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_EQ(rc, EVMPM_OK);
    CHECK_EQ(atomic_load(&r.returned_early), 0);
    CHECK(took >= 600);
    /* Nothing was forced: the handler answered, then its connection was
     * closed rather than parked; the idle one was closed at once. */
    EXPECT_LINE(fd, "HELD");
    CHECK(wait_closed(fd, 5000));
    CHECK(wait_closed(idle, 5000));
    CHECK_EQ(atomic_load(&s.in_handler), 0);
    CHECK_EQ(atomic_load(&s.closes), 2);
    check_hooks_balanced();
    CHECK_EQ(evmpm_stop(s.rt, EVMPM_TIMEOUT_NONE), EVMPM_ESTOPPED);
    line_server_destroy(&s);
    close(fd);
    close(idle);
}

/* ---- destroy: nothing runs after it ----------------------------------------- */

static atomic_long logs, ready_calls;

static void count_log(void *user, int level, const char *message) {
    (void)user, (void)level, (void)message;
    atomic_fetch_add(&logs, 1);
}

/* A whole line is a whole request. */
static int count_ready(void *user, evmpm_conn c, void *conn_user, const uint8_t *data, size_t len) {
    (void)user, (void)c, (void)conn_user;
    atomic_fetch_add(&ready_calls, 1);
    return memchr(data, '\n', len) != NULL ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

/* Every callback of `s` so far. */
static long callbacks(struct line_server *s) {
    return atomic_load(&s->handler_calls) + atomic_load(&s->closes) + atomic_load(&s->releases) +
           atomic_load(&start_total) + atomic_load(&stop_total) + atomic_load(&logs) +
           atomic_load(&ready_calls);
}

/* A handler stuck past evmpm_stop's deadline (blocked on something the
 * forced stop cannot interrupt): evmpm_destroy waits for it. Once the host
 * lets it go, its connection is closed and its thread's stop hook runs,
 * both before destroy returns; after that no callback of the runtime runs
 * again. */
static void destroy_waits_for_a_stuck_handler(void) {
    struct line_server s;
    struct releaser r;
    evmpm_config cfg;
    evmpm_runtime *rt;
    atomic_int begun, returned;
    pthread_t t;
    int stuck, other, rc;
    long seen;
    int64_t took;
    hooked_config(&s, &cfg);
    cfg.log = count_log;
    cfg.request_ready = count_ready;
    line_server_start(&s, &cfg);
    rt = s.rt;
    other = line_client(&s);
    send_str(other, "BIG 100000\n");
    recv_pattern(other, 0, 100000, 65536, 0);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    stuck = connect_loopback(s.port);
    send_str(stuck, "HOLD\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);

    CHECK_EQ(line_server_stop_only(&s, 200), EVMPM_ETIMEDOUT);
    /* Stopped, but the stuck handler's thread still runs: its stop hook
     * and its connection's close callback have not run yet. */
    CHECK_EQ(atomic_load(&s.in_handler), 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK(atomic_load(&stop_total) < atomic_load(&start_total));
    CHECK(wait_closed(stuck, 5000));

    atomic_init(&begun, 0);
    atomic_init(&returned, 0);
    memset(&r, 0, sizeof r);
    r.s = &s;
    r.begun = &begun;
    r.returned = &returned;
    r.ms = 300;
    CHECK(pthread_create(&t, NULL, release_hold_later, &r) == 0);
    watchdog_arm(10000, "evmpm_destroy did not return once the stuck handler did");
    took = now_ms();
    atomic_store(&begun, 1);
    rc = evmpm_destroy(rt);
    atomic_store(&returned, 1);
    took = now_ms() - took;
    watchdog_disarm();
    s.rt = NULL;
    CHECK_EQ(rc, EVMPM_OK);
    /* Destroy waited for the handler ... */
    CHECK_EQ(atomic_load(&r.returned_early), 0);
    CHECK(atomic_load(&r.released));
    CHECK(took >= 300);
    /* ... which returned, had its connection closed (once) and its
     * thread's stop hook run, all before destroy returned. */
    CHECK_EQ(atomic_load(&s.in_handler), 0);
    CHECK_EQ(atomic_load(&s.closes), 2);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    check_hooks_balanced();
    CHECK(pthread_join(t, NULL) == 0);

    /* Nothing runs afterwards. */
    seen = callbacks(&s);
    sleep_ms(500);
    CHECK_EQ(callbacks(&s), seen);
    printf("figure: destroy waited %lld ms for the stuck handler; %ld callbacks in all\n",
           (long long)took, seen);
    close(stuck);
    close(other);
    close(s.listen_fd);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"hooks_run_once_per_thread", hooks_run_once_per_thread},
        {"destroy_runs_every_stop_hook", destroy_runs_every_stop_hook},
        {"start_hook_state_is_seen_by_handlers", start_hook_state_is_seen_by_handlers},
        {"stop_without_deadline_waits_for_the_handler",
         stop_without_deadline_waits_for_the_handler},
        {"destroy_waits_for_a_stuck_handler", destroy_waits_for_a_stuck_handler},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

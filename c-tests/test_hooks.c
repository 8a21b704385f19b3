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
    /* Not in a handler: no label. */
    if (evmpm_set_label(rt, "hook") != EVMPM_ETHREAD)
        hook_fault("evmpm_set_label accepted in a hook", kind, id);
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
    /* (Under valgrind on a loaded machine a handler may end before it is
     * seen blocked, and fewer threads start.) */
    if (harness_slowdown() == 1)
        CHECK(worker_starts() >= CLIENTS);
    else
        CHECK(worker_starts() >= 1);
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

/* ---- the per-worker snapshot ------------------------------------------------ */

enum { MAX_WORKERS = 16 };

static atomic_int label_release, label_faults;

/* LABEL m text: labels the handler "first", then `text`, answers
 * "ID <worker id>" and waits until the test releases it, spinning (m 'S':
 * running, not blocked) or sleeping (m 'W': blocked), then "LABELLED". */
static enum line_command_result label_command(struct line_server *s, evmpm_conn c, int fd,
                                              const char *line) {
    char reply[64];
    (void)c;
    if (strncmp(line, "LABEL ", 6) != 0 || strlen(line) < 8)
        return who_command(s, c, fd, line);
    if (evmpm_set_label(s->rt, NULL) != EVMPM_EINVAL)
        atomic_fetch_add(&label_faults, 1);
    if (evmpm_set_label(s->rt, "first") != EVMPM_OK || evmpm_set_label(s->rt, line + 8) != EVMPM_OK)
        atomic_fetch_add(&label_faults, 1);
    snprintf(reply, sizeof reply, "ID %d\n", tl_id);
    line_reply(fd, reply);
    while (!atomic_load(&label_release))
        if (line[6] == 'W')
            sleep_ms(1);
    line_reply(fd, "LABELLED\n");
    return LINE_PARK;
}

/* Sends `cmd` (a LABEL command) on `fd`; returns the worker id it runs on. */
static int start_labelled(int fd, const char *cmd) {
    char line[64];
    int id = -1;
    atomic_store(&label_release, 0);
    send_str(fd, cmd);
    recv_line(fd, line, sizeof line, 5000);
    if (sscanf(line, "ID %d", &id) != 1 || id < 0 || id >= MAX_WORKERS)
        harness_fail(__FILE__, __LINE__, "expected an ID line, got \"%s\"", line);
    return id;
}

/* The snapshot: entries in `out` (up to MAX_WORKERS), threads alive in
 * `*alive`. Returns how many entries were written. */
static size_t snapshot(struct line_server *s, evmpm_worker_info *out, size_t *alive) {
    size_t n;
    CHECK_OK(evmpm_get_workers(s->rt, out, sizeof *out, MAX_WORKERS, &n));
    *alive = n;
    return n < MAX_WORKERS ? n : MAX_WORKERS;
}

/* Worker `id` as the snapshot shows it; fails if it is not alive. */
static evmpm_worker_info worker(struct line_server *s, int id) {
    evmpm_worker_info all[MAX_WORKERS];
    size_t alive, n = snapshot(s, all, &alive), i;
    for (i = 0; i < n; i++) {
        CHECK(all[i].label[sizeof all[i].label - 1] == '\0');
        if (all[i].id == (uint32_t)id)
            return all[i];
    }
    harness_fail(__FILE__, __LINE__, "worker %d is not in the snapshot", id);
    return all[0];
}

static int worker_in(struct line_server *s, int id, int state) {
    return worker(s, id).state == state;
}

static size_t alive_now(struct line_server *s) {
    size_t n;
    CHECK_OK(evmpm_get_workers(s->rt, NULL, sizeof(evmpm_worker_info), 0, &n));
    return n;
}

/* While a handler runs, the snapshot shows its worker in a handler, with
 * its connection and label, for a growing time; counted blocked when it
 * sleeps; idle, with neither, once it returned. The count is the stats'
 * worker threads. */
static void snapshot_shows_a_handler_and_its_label(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_worker_info w, later;
    evmpm_conn conn;
    char long_cmd[160], want[64];
    int fd, id, i;
    hooked_config(&s, &cfg);
    s.command = label_command;
    cfg.running_threads = 2;
    cfg.worker_threads = 4;
    line_server_start(&s, &cfg);
    /* Outside any handler. */
    CHECK_EQ(evmpm_set_label(s.rt, "test thread"), EVMPM_ETHREAD);
    CHECK_EQ(evmpm_set_label(s.rt, NULL), EVMPM_EINVAL);
    CHECK_EQ(evmpm_set_label(NULL, "x"), EVMPM_EINVAL);
    fd = line_client(&s);

    /* Running (spinning): in a handler, not blocked. */
    id = start_labelled(fd, "LABEL S GET /server-status HTTP/1.1\n");
    conn = (evmpm_conn)atomic_load(&s.last_conn);
    w = worker(&s, id);
    /* Under valgrind a spinning thread that waits for its turn sleeps in
     * the kernel, and may be counted blocked. */
    if (harness_slowdown() == 1)
        CHECK_EQ(w.state, EVMPM_WORKER_HANDLER);
    else
        CHECK(w.state == EVMPM_WORKER_HANDLER || w.state == EVMPM_WORKER_BLOCKED);
    CHECK(w.conn == conn);
    CHECK(strcmp(w.label, "GET /server-status HTTP/1.1") == 0);
    sleep_ms(30); /* time passes in the state */
    later = worker(&s, id);
    CHECK(later.state_us >= w.state_us + 20000);
    CHECK(later.conn == conn);
    atomic_store(&label_release, 1);
    EXPECT_LINE(fd, "LABELLED");
    /* Returned: idle (a spare, if it was counted blocked), no connection,
     * no label. */
    WAIT_UNTIL(worker_in(&s, id, EVMPM_WORKER_IDLE) || worker_in(&s, id, EVMPM_WORKER_SPARE),
               5000);
    w = worker(&s, id);
    CHECK(w.conn == 0);
    CHECK_EQ(w.label[0], '\0');

    /* Sleeping: counted blocked, with its connection and label. */
    id = start_labelled(fd, "LABEL W waiting for the backend\n");
    WAIT_UNTIL(worker_in(&s, id, EVMPM_WORKER_BLOCKED), 5000);
    w = worker(&s, id);
    CHECK(w.conn == conn);
    CHECK(strcmp(w.label, "waiting for the backend") == 0);
    CHECK(line_server_stats(&s).handlers_blocked >= 1);
    atomic_store(&label_release, 1);
    EXPECT_LINE(fd, "LABELLED");
    WAIT_UNTIL(worker_in(&s, id, EVMPM_WORKER_IDLE) || worker_in(&s, id, EVMPM_WORKER_SPARE),
               5000);
    CHECK_EQ(worker(&s, id).label[0], '\0');

    /* A long label is cut to 63 bytes. */
    strcpy(long_cmd, "LABEL S ");
    for (i = 0; i < 100; i++)
        long_cmd[8 + i] = (char)('a' + i % 26);
    strcpy(long_cmd + 108, "\n");
    memcpy(want, long_cmd + 8, 63);
    want[63] = '\0';
    id = start_labelled(fd, long_cmd);
    CHECK(strcmp(worker(&s, id).label, want) == 0);
    atomic_store(&label_release, 1);
    EXPECT_LINE(fd, "LABELLED");

    /* A quiet runtime: the snapshot counts what the stats count. */
    WAIT_UNTIL(alive_now(&s) == line_server_stats(&s).worker_threads, 5000);
    CHECK_EQ(atomic_load(&label_faults), 0);
    close(fd);
    CHECK_OK(line_server_stop_only(&s, 5000));
    /* After the stop, until destroy: answered, no thread alive. */
    CHECK_EQ(alive_now(&s), 0);
    line_server_destroy(&s);
    check_hooks_balanced();
}

static int spares_in_snapshot(struct line_server *s) {
    evmpm_worker_info all[MAX_WORKERS];
    size_t alive, n = snapshot(s, all, &alive), i;
    int spares = 0;
    for (i = 0; i < n; i++)
        spares += all[i].state == EVMPM_WORKER_SPARE;
    return spares;
}

/* A spare shows as one until it leaves after 2 s idle; the snapshot's
 * count follows the threads as the stats do. */
static void spares_show_in_the_snapshot_until_they_leave(void) {
    enum { CLIENTS = 4 };
    struct line_server s;
    evmpm_config cfg;
    int fd[CLIENTS], i;
    hooked_config(&s, &cfg);
    s.command = who_command;
    cfg.running_threads = 1;
    cfg.worker_threads = 8;
    line_server_start(&s, &cfg);
    CHECK_EQ(alive_now(&s), 1);
    for (i = 0; i < CLIENTS; i++)
        fd[i] = line_client(&s);
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "WHOSLEEP 300\n");
    for (i = 0; i < CLIENTS; i++)
        expect_worker_reply(fd[i]);
    /* The blocked handlers' threads, back, are more than the one running
     * thread: all but one sleep as spares, for 2 s. Under valgrind, on a
     * loaded machine, a handler may end before it is seen blocked (one
     * thread fewer) and those 2 s can pass between two looks: there a
     * spare seen is checked, one missed is not a failure. */
    if (harness_slowdown() == 1) {
        CHECK(alive_now(&s) >= CLIENTS);
        WAIT_UNTIL(spares_in_snapshot(&s) >= 1, 1500);
    } else {
        int64_t until = now_ms() + 2000;
        while (spares_in_snapshot(&s) == 0 && now_ms() < until)
            sleep_ms(1);
    }
    WAIT_UNTIL(alive_now(&s) == 1 && line_server_stats(&s).worker_threads == 1, 10000);
    for (i = 0; i < CLIENTS; i++)
        close(fd[i]);
    CHECK_OK(line_server_stop(&s, 5000));
    check_hooks_balanced();
}

/* The caller's capacity and struct size: a small capacity gets that many
 * entries and the full count; an older (smaller) struct gets its fields
 * only, packed at its size; a newer (larger) one gets zeros past ours. */
static void get_workers_fits_the_callers_room(void) {
    enum { RUNNING = 3, OLD_SIZE = offsetof(evmpm_worker_info, label) };
    struct newer {
        evmpm_worker_info base;
        uint64_t future;
    } newer[RUNNING];
    struct line_server s;
    evmpm_config cfg;
    evmpm_worker_info full[RUNNING];
    unsigned char old[RUNNING * OLD_SIZE + 16];
    size_t n, i;
    line_server_config(&s, &cfg);
    cfg.running_threads = RUNNING;
    cfg.worker_threads = 8;
    line_server_start(&s, &cfg);

    CHECK_OK(evmpm_get_workers(s.rt, NULL, sizeof full[0], 0, &n));
    CHECK_EQ(n, RUNNING);
    CHECK_EQ(n, line_server_stats(&s).worker_threads);

    /* Room for one: one written, the count says three. */
    memset(full, 0xAB, sizeof full);
    CHECK_OK(evmpm_get_workers(s.rt, full, sizeof full[0], 1, &n));
    CHECK_EQ(n, RUNNING);
    CHECK_EQ(full[0].id, 0);
    CHECK_EQ(full[0].state, EVMPM_WORKER_IDLE);
    CHECK(full[0].conn == 0);
    CHECK_EQ(full[0].label[0], '\0');
    for (i = sizeof full[0]; i < sizeof full; i++)
        CHECK_EQ(((unsigned char *)full)[i], 0xAB);

    /* Room for all: ids 0, 1, 2 (the running threads), idle. */
    CHECK_OK(evmpm_get_workers(s.rt, full, sizeof full[0], RUNNING, &n));
    CHECK_EQ(n, RUNNING);
    for (i = 0; i < RUNNING; i++) {
        CHECK_EQ(full[i].id, i);
        CHECK_EQ(full[i].state, EVMPM_WORKER_IDLE);
    }

    /* An older header's struct, without the label. */
    memset(old, 0xAB, sizeof old);
    CHECK_OK(evmpm_get_workers(s.rt, (evmpm_worker_info *)(void *)old, OLD_SIZE, RUNNING, &n));
    CHECK_EQ(n, RUNNING);
    for (i = 0; i < RUNNING; i++) {
        evmpm_worker_info e;
        memcpy(&e, old + i * OLD_SIZE, OLD_SIZE);
        CHECK_EQ(e.id, i);
        CHECK_EQ(e.state, EVMPM_WORKER_IDLE);
        CHECK(e.conn == 0);
    }
    for (i = RUNNING * OLD_SIZE; i < sizeof old; i++)
        CHECK_EQ(old[i], 0xAB);

    /* A newer header's struct, one field longer. */
    memset(newer, 0xAB, sizeof newer);
    CHECK_OK(evmpm_get_workers(s.rt, &newer[0].base, sizeof newer[0], RUNNING, &n));
    for (i = 0; i < RUNNING; i++) {
        CHECK_EQ(newer[i].base.id, i);
        CHECK_EQ(newer[i].base.state, EVMPM_WORKER_IDLE);
        CHECK(newer[i].future == 0);
    }

    /* What it refuses, writing nothing. */
    n = 99;
    CHECK_EQ(evmpm_get_workers(s.rt, full, sizeof full[0], 1, NULL), EVMPM_EINVAL);
    CHECK_EQ(evmpm_get_workers(s.rt, NULL, sizeof full[0], 1, &n), EVMPM_EINVAL);
    CHECK_EQ(evmpm_get_workers(s.rt, full, 0, 1, &n), EVMPM_EINVAL);
    CHECK_EQ(evmpm_get_workers(NULL, full, sizeof full[0], 1, &n), EVMPM_EINVAL);
    CHECK_EQ(n, 99);
    CHECK_OK(line_server_stop(&s, 5000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"hooks_run_once_per_thread", hooks_run_once_per_thread},
        {"destroy_runs_every_stop_hook", destroy_runs_every_stop_hook},
        {"start_hook_state_is_seen_by_handlers", start_hook_state_is_seen_by_handlers},
        {"stop_without_deadline_waits_for_the_handler",
         stop_without_deadline_waits_for_the_handler},
        {"destroy_waits_for_a_stuck_handler", destroy_waits_for_a_stuck_handler},
        {"snapshot_shows_a_handler_and_its_label", snapshot_shows_a_handler_and_its_label},
        {"spares_show_in_the_snapshot_until_they_leave",
         spares_show_in_the_snapshot_until_they_leave},
        {"get_workers_fits_the_callers_room", get_workers_fits_the_callers_room},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

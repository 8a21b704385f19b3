/* Timers: deadline order within the documented resolution, cancelled
 * timers never run and free their memory at once, cancel racing the run
 * from several threads has exactly one outcome per timer, and a timer
 * bound to a connection dies with it.
 *
 * Counts are scaled down under valgrind (EVMPM_TEST_SLOWDOWN > 1): 100,000
 * timers become 5,000, so that a case stays within its time limit. */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

static int scaled(int n) { return harness_slowdown() > 1 ? n / 20 : n; }

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* A runtime with one worker thread, so runs are serialized in the order
 * the event thread queued them. */
static void start_one_worker(struct line_server *s) {
    evmpm_config cfg;
    line_server_config(s, &cfg);
    cfg.worker_threads = 1;
    cfg.running_threads = 1;
    line_server_start(s, &cfg);
}

/* ---- deadline order and lateness ------------------------------------------- */

struct fired {
    /* When the test asked it to run, by its clock: the library's deadline
     * is between these two (the delay from just before the add call, and
     * from just after it). */
    int64_t deadline_ns;
    int64_t deadline_late_ns;
    int64_t ran_ns;
    atomic_int runs;
};

static struct fired *fired;
static int *run_order;
static atomic_int runs_total;

static void record_run(void *arg, evmpm_runtime *rt, evmpm_timer id) {
    struct fired *f = arg;
    (void)rt;
    CHECK(id != 0);
    f->ran_ns = now_ns();
    atomic_fetch_add(&f->runs, 1);
    run_order[atomic_fetch_add(&runs_total, 1)] = (int)(f - fired);
}

static void timers_run_in_deadline_order(void) {
    struct line_server s;
    int n = scaled(100000), i, late_over_2ms = 0;
    int64_t *late = calloc((size_t)n, sizeof *late);
    evmpm_stats st;
    fired = calloc((size_t)n, sizeof *fired);
    run_order = calloc((size_t)n, sizeof *run_order);
    CHECK(fired != NULL && run_order != NULL && late != NULL);
    start_one_worker(&s);
    for (i = 0; i < n; i++) {
        uint32_t delay = 200 + rng() % 2000;
        evmpm_timer id;
        fired[i].deadline_ns = now_ns() + (int64_t)delay * 1000000;
        CHECK_OK(evmpm_timer_add(s.rt, delay, record_run, &fired[i], 0, &id));
        fired[i].deadline_late_ns = now_ns() + (int64_t)delay * 1000000;
        CHECK(id != 0);
    }
    WAIT_UNTIL(atomic_load(&runs_total) == n, 10000);
    for (i = 0; i < n; i++) {
        CHECK_EQ(atomic_load(&fired[i].runs), 1);
        /* Never early. */
        CHECK(fired[i].ran_ns >= fired[i].deadline_ns);
        late[i] = fired[i].ran_ns - fired[i].deadline_ns;
        if (late[i] > 2000000)
            late_over_2ms++;
    }
    /* In deadline order, up to the 1 ms tick: a run never follows one
     * whose deadline is more than a tick later. */
    for (i = 1; i < n; i++) {
        const struct fired *a = &fired[run_order[i - 1]], *b = &fired[run_order[i]];
        if (b->deadline_late_ns + 1000000 < a->deadline_ns)
            harness_fail(__FILE__, __LINE__, "run %d (deadline %lld) after one due %lld ns later", i,
                         (long long)b->deadline_ns, (long long)(a->deadline_ns - b->deadline_ns));
    }
    qsort(late, (size_t)n, sizeof *late, cmp_i64);
    /* Late by the tick and the event thread's turn, not by the count. */
    CHECK(late[n / 2] < 5000000LL * harness_slowdown());
    printf("figure: %d timers over 0.2-2.2 s, 1 worker: late p50 %.2f ms, p99 %.2f ms, "
           "max %.2f ms, %d over 2 ms\n",
           n, late[n / 2] / 1e6, late[n * 99 / 100] / 1e6, late[n - 1] / 1e6, late_over_2ms);
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 2000);
    CHECK_EQ(st.timer_runs, n);
    CHECK_OK(line_server_stop(&s, 1000));
    free(fired);
    free(run_order);
    free(late);
}

/* ---- cancelled timers ---------------------------------------------------------- */

static void cancelled_timers_never_run(void) {
    struct line_server s;
    int n = scaled(100000), i, kept = 0;
    evmpm_timer *ids = calloc((size_t)n, sizeof *ids);
    evmpm_stats st;
    int64_t last_deadline = 0, t0;
    fired = calloc((size_t)n, sizeof *fired);
    run_order = calloc((size_t)n, sizeof *run_order);
    CHECK(fired != NULL && run_order != NULL && ids != NULL);
    start_one_worker(&s);
    t0 = now_ms();
    for (i = 0; i < n; i++) {
        uint32_t delay = (uint32_t)(1500 * harness_slowdown()) + rng() % 500;
        fired[i].deadline_ns = now_ns() + (int64_t)delay * 1000000;
        if (fired[i].deadline_ns > last_deadline)
            last_deadline = fired[i].deadline_ns;
        CHECK_OK(evmpm_timer_add(s.rt, delay, record_run, &fired[i], 0, &ids[i]));
    }
    st = line_server_stats(&s);
    CHECK_EQ(st.timers, n);
    /* Every other one: none is due yet, so each cancel answers OK. */
    for (i = 0; i < n; i += 2)
        CHECK_OK(evmpm_timer_cancel(s.rt, ids[i]));
    /* Again: ESTALE, already cancelled. */
    for (i = 0; i < n; i += 2)
        CHECK_EQ(evmpm_timer_cancel(s.rt, ids[i]), EVMPM_ESTALE);
    /* Memory goes at the cancel, not at the deadline. */
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == (uint64_t)(n - n / 2 - n % 2)), 1000);
    CHECK(now_ms() - t0 < 1500 * harness_slowdown());
    kept = n / 2;
    WAIT_UNTIL(atomic_load(&runs_total) == kept, 10000);
    /* And nothing more, well past the last deadline. */
    while (now_ns() < last_deadline + 100000000)
        sleep_ms(10);
    CHECK_EQ(atomic_load(&runs_total), kept);
    for (i = 0; i < n; i++)
        CHECK_EQ(atomic_load(&fired[i].runs), i % 2);
    /* After the run: ESTALE. */
    CHECK_EQ(evmpm_timer_cancel(s.rt, ids[1]), EVMPM_ESTALE);
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 1000);
    printf("figure: %d timers, %d cancelled: none ran, memory freed at cancel\n", n, n / 2);
    CHECK_OK(line_server_stop(&s, 1000));
    free(ids);
    free(fired);
    free(run_order);
}

/* ---- cancel racing the run ----------------------------------------------------- */

#define RACERS 3

struct race {
    evmpm_runtime *rt;
    evmpm_timer *ids;
    int n;
    int who;
    int *answers; /* [n * RACERS] */
    atomic_int *go;
};

static atomic_int race_runs[200000];

static void race_run(void *arg, evmpm_runtime *rt, evmpm_timer id) {
    int i = (int)(intptr_t)arg;
    int64_t until = now_ns() + 20000;
    (void)rt;
    (void)id;
    atomic_fetch_add(&race_runs[i], 1);
    /* Stay running a moment, so some cancels find it running. */
    while (now_ns() < until) {
    }
}

static void *racer(void *arg) {
    struct race *r = arg;
    int k;
    while (!atomic_load(r->go))
        ;
    for (k = 0; k < r->n; k++) {
        /* Racers walk the timers in different orders. */
        int i = r->who == 1 ? r->n - 1 - k : k;
        r->answers[i * RACERS + r->who] = evmpm_timer_cancel(r->rt, r->ids[i]);
    }
    return NULL;
}

static void cancel_races_the_run(void) {
    struct line_server s;
    evmpm_config cfg;
    int n = scaled(60000), i, w, ok = 0, busy = 0, stale = 0, ran = 0;
    evmpm_timer *ids = calloc((size_t)n, sizeof *ids);
    int *answers = calloc((size_t)n * RACERS, sizeof *answers);
    struct race r[RACERS];
    pthread_t th[RACERS];
    atomic_int go = 0;
    evmpm_stats st;
    CHECK(ids != NULL && answers != NULL);
    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    cfg.running_threads = 2;
    line_server_start(&s, &cfg);
    for (i = 0; i < n; i++)
        CHECK_OK(evmpm_timer_add(s.rt, (uint32_t)(i * 300 / n), race_run, (void *)(intptr_t)i, 0,
                                 &ids[i]));
    for (w = 0; w < RACERS; w++) {
        r[w] = (struct race){s.rt, ids, n, w, answers, &go};
        CHECK(pthread_create(&th[w], NULL, racer, &r[w]) == 0);
    }
    /* Start the cancels as the first deadlines pass. */
    sleep_ms(100);
    atomic_store(&go, 1);
    for (w = 0; w < RACERS; w++)
        CHECK(pthread_join(th[w], NULL) == 0);
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 5000);
    for (i = 0; i < n; i++) {
        int oks = 0, busies = 0, runs = atomic_load(&race_runs[i]);
        for (w = 0; w < RACERS; w++) {
            int a = answers[i * RACERS + w];
            CHECK(a == EVMPM_OK || a == EVMPM_EBUSY || a == EVMPM_ESTALE);
            oks += a == EVMPM_OK;
            busies += a == EVMPM_EBUSY;
            ok += a == EVMPM_OK;
            busy += a == EVMPM_EBUSY;
            stale += a == EVMPM_ESTALE;
        }
        /* No lost and no double call: it ran once, or one cancel won. */
        if (runs + oks != 1)
            harness_fail(__FILE__, __LINE__, "timer %d: %d runs, %d cancels answered OK", i, runs,
                         oks);
        /* EBUSY only for a timer that ran. */
        if (busies > 0)
            CHECK_EQ(runs, 1);
        ran += runs;
    }
    printf("figure: %d timers, %d racing cancellers: %d ran, %d cancels OK, %d EBUSY, "
           "%d ESTALE\n",
           n, RACERS, ran, ok, busy, stale);
    CHECK_EQ(st.timer_runs, ran);
    CHECK_OK(line_server_stop(&s, 1000));
    free(ids);
    free(answers);
}

/* ---- a timer bound to a connection --------------------------------------------- */

static atomic_int bound_runs;
static atomic_ullong bound_timer;
static atomic_int bind_second_rc;

static void bound_run(void *arg, evmpm_runtime *rt, evmpm_timer id) {
    (void)arg;
    (void)rt;
    (void)id;
    atomic_fetch_add(&bound_runs, 1);
}

/* "BIND ms": binds a timer to this connection (and tries a second). */
static enum line_command_result bind_command(struct line_server *s, evmpm_conn c, int fd,
                                             const char *line) {
    evmpm_timer id, second;
    uint32_t ms;
    if (strncmp(line, "BIND ", 5) != 0)
        return LINE_UNKNOWN;
    ms = (uint32_t)atoi(line + 5);
    CHECK_OK(evmpm_timer_add(s->rt, ms, bound_run, (void *)(uintptr_t)c, c, &id));
    atomic_store(&bound_timer, id);
    /* A second binding is refused while the first stands. A timer of a
     * few ms may already have run (and ended its binding) by now, above
     * all under valgrind, so only the long ones are asked. */
    if (ms >= 100) {
        atomic_store(&bind_second_rc,
                     evmpm_timer_add(s->rt, 10, bound_run, (void *)(uintptr_t)c, c, &second));
        CHECK_EQ(second, 0);
    }
    line_reply(fd, "BOUND\n");
    return LINE_PARK;
}

static void bound_timer_dies_with_its_connection(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_conn c;
    evmpm_timer id;
    evmpm_stats st;
    int fd, i;
    line_server_config(&s, &cfg);
    line_server_start(&s, &cfg);
    s.command = bind_command;

    /* Alive: it runs at its deadline. */
    fd = line_client(&s);
    /* Long enough that it cannot fire between the handler's two adds, even
     * under valgrind. */
    send_str(fd, "BIND 300\n");
    EXPECT_LINE(fd, "BOUND");
    CHECK_EQ(atomic_load(&bind_second_rc), EVMPM_EEXIST);
    WAIT_UNTIL(atomic_load(&bound_runs) == 1, 5000);
    /* Its run ended the binding: another may be bound. */
    send_str(fd, "BIND 60000\n");
    EXPECT_LINE(fd, "BOUND");
    id = atomic_load(&bound_timer);
    c = atomic_load(&s.last_conn);
    /* Closed: the bound timer is cancelled with it, its memory freed. */
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 2000);
    CHECK_EQ(evmpm_timer_cancel(s.rt, id), EVMPM_ESTALE);
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 1000);
    /* A closed connection takes no binding. */
    CHECK_EQ(evmpm_timer_add(s.rt, 10, bound_run, NULL, c, &id), EVMPM_ESTALE);
    CHECK_EQ(id, 0);

    /* Many connections closing as their timers come due: each timer ran
     * or was cancelled by the close; none is left. */
    for (i = 0; i < 200; i++) {
        char cmd[32];
        fd = line_client(&s);
        snprintf(cmd, sizeof cmd, "BIND %d\n", i % 3);
        send_str(fd, cmd);
        EXPECT_LINE(fd, "BOUND");
        close_with_reset(fd);
    }
    WAIT_UNTIL(atomic_load(&s.closes) == 201, 5000);
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 2000);
    printf("figure: 200 connections closed as their bound 0-2 ms timers came due: %d ran\n",
           atomic_load(&bound_runs) - 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* ---- misuse ------------------------------------------------------------------------- */

static void noop_timer(void *arg, evmpm_runtime *rt, evmpm_timer id) {
    (void)arg;
    (void)rt;
    (void)id;
}

static void misuse_answers(void) {
    struct line_server s;
    evmpm_timer id = 7;
    line_server_start_default(&s);
    CHECK_EQ(evmpm_timer_add(NULL, 1, noop_timer, NULL, 0, &id), EVMPM_EINVAL);
    CHECK_EQ(id, 0);
    CHECK_EQ(evmpm_timer_add(s.rt, 1, NULL, NULL, 0, &id), EVMPM_EINVAL);
    CHECK_EQ(evmpm_timer_add(s.rt, 1, noop_timer, NULL, 0, NULL), EVMPM_EINVAL);
    CHECK_EQ(evmpm_timer_add(s.rt, EVMPM_TIMEOUT_NONE, noop_timer, NULL, 0, &id), EVMPM_EINVAL);
    CHECK_EQ(evmpm_timer_add(s.rt, 1, noop_timer, NULL, 12345, &id), EVMPM_ESTALE);
    CHECK_EQ(evmpm_timer_cancel(s.rt, 0), EVMPM_ESTALE);
    CHECK_EQ(evmpm_timer_cancel(s.rt, 0x123456789abcdefull), EVMPM_ESTALE);
    CHECK_EQ(evmpm_timer_cancel(NULL, 1), EVMPM_EINVAL);
    CHECK_OK(evmpm_timer_add(s.rt, 100000, noop_timer, NULL, 0, &id));
    CHECK_EQ(evmpm_watch_cancel(s.rt, id), EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 1), EVMPM_EINVAL);
    CHECK(strstr(evmpm_strerror(EVMPM_EBUSY), "running") != NULL);
    /* A timer still waiting at stop never runs; its id is then refused. */
    CHECK_OK(line_server_stop_only(&s, 1000));
    CHECK_EQ(evmpm_timer_cancel(s.rt, id), EVMPM_ESTOPPED);
    CHECK_EQ(evmpm_timer_add(s.rt, 1, noop_timer, NULL, 0, &id), EVMPM_ESTOPPED);
    line_server_destroy(&s);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"timers_run_in_deadline_order", timers_run_in_deadline_order},
        {"cancelled_timers_never_run", cancelled_timers_never_run},
        {"cancel_races_the_run", cancel_races_the_run},
        {"bound_timer_dies_with_its_connection", bound_timer_dies_with_its_connection},
        {"misuse_answers", misuse_answers},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

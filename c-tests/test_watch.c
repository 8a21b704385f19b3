/* Watched host descriptors: a one-shot callback on a worker when a
 * descriptor the host owns is readable or writable, or its timeout passed;
 * re-arm, cancel and its answers, a descriptor the host closes while
 * armed, and thousands armed at once with no thread each. */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct seen {
    atomic_int calls;
    atomic_uint revents; /* of the last call */
    atomic_int fd;
    atomic_llong at_ms;
    atomic_int rearm_times; /* the callback re-arms itself this many times */
    atomic_int sleep_ms;    /* and stays this long */
    atomic_int rearm_rc;
};

static void on_watch(void *arg, evmpm_runtime *rt, evmpm_watch id, int fd, uint32_t revents) {
    struct seen *s = arg;
    int ms = atomic_load(&s->sleep_ms);
    atomic_store(&s->revents, revents);
    atomic_store(&s->fd, fd);
    atomic_store(&s->at_ms, now_ms());
    if (revents & EVMPM_WATCH_READABLE) {
        char buf[64];
        while (read(fd, buf, sizeof buf) > 0) {
        }
    }
    if (ms > 0)
        sleep_ms(ms);
    if (atomic_fetch_sub(&s->rearm_times, 1) > 0)
        atomic_store(&s->rearm_rc, evmpm_watch_rearm(rt, id, EVMPM_WATCH_READABLE, 5000));
    atomic_fetch_add(&s->calls, 1);
}

static void make_pipe(int p[2]) {
    CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
}

static void readable_then_rearmed(void) {
    struct line_server s;
    struct seen seen = {0};
    evmpm_watch id;
    int p[2];
    line_server_start_default(&s);
    make_pipe(p);
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 5000, on_watch, &seen, &id));
    CHECK(id != 0);
    sleep_ms(20);
    CHECK_EQ(atomic_load(&seen.calls), 0);
    CHECK(write(p[1], "x", 1) == 1);
    WAIT_UNTIL(atomic_load(&seen.calls) == 1, 2000);
    CHECK_EQ(atomic_load(&seen.revents), EVMPM_WATCH_READABLE);
    CHECK_EQ(atomic_load(&seen.fd), p[0]);
    /* One-shot: idle now, more input does not call it. */
    CHECK(write(p[1], "y", 1) == 1);
    sleep_ms(30);
    CHECK_EQ(atomic_load(&seen.calls), 1);
    /* Re-armed, the waiting byte calls it at once. */
    CHECK_OK(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 5000));
    WAIT_UNTIL(atomic_load(&seen.calls) == 2, 2000);
    /* Armed again: a second re-arm is refused. */
    CHECK_OK(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 5000));
    CHECK_EQ(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 5000), EVMPM_ESTATE);
    /* Armed: cancel answers OK, never runs; then ESTALE. */
    CHECK_OK(evmpm_watch_cancel(s.rt, id));
    CHECK(write(p[1], "z", 1) == 1);
    sleep_ms(30);
    CHECK_EQ(atomic_load(&seen.calls), 2);
    CHECK_EQ(evmpm_watch_cancel(s.rt, id), EVMPM_ESTALE);
    CHECK_EQ(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 10), EVMPM_ESTALE);
    /* The same descriptor watched anew (its old registration reused). */
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 5000, on_watch, &seen, &id));
    WAIT_UNTIL(atomic_load(&seen.calls) == 3, 2000);
    /* Idle: cancel answers OK. */
    CHECK_OK(evmpm_watch_cancel(s.rt, id));
    close(p[0]);
    close(p[1]);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void writable(void) {
    struct line_server s;
    struct seen seen = {0};
    evmpm_watch id;
    char buf[65536];
    int sv[2];
    line_server_start_default(&s);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    memset(buf, 'w', sizeof buf);
    while (send(sv[0], buf, sizeof buf, MSG_DONTWAIT) > 0) {
    }
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    CHECK_OK(evmpm_watch_add(s.rt, sv[0], EVMPM_WATCH_WRITABLE, 5000, on_watch, &seen, &id));
    sleep_ms(30);
    CHECK_EQ(atomic_load(&seen.calls), 0);
    while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0) {
    }
    WAIT_UNTIL(atomic_load(&seen.calls) == 1, 2000);
    CHECK(atomic_load(&seen.revents) & EVMPM_WATCH_WRITABLE);
    /* The peer hangs up: a readable watch hears of it. */
    CHECK_OK(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 5000));
    close(sv[1]);
    WAIT_UNTIL(atomic_load(&seen.calls) == 2, 2000);
    CHECK(atomic_load(&seen.revents) & EVMPM_WATCH_HANGUP);
    CHECK_OK(evmpm_watch_cancel(s.rt, id));
    close(sv[0]);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void timeout_fires_alone(void) {
    struct line_server s;
    struct seen seen = {0};
    evmpm_watch id;
    int64_t t0;
    int p[2];
    line_server_start_default(&s);
    make_pipe(p);
    t0 = now_ms();
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 80, on_watch, &seen, &id));
    WAIT_UNTIL(atomic_load(&seen.calls) == 1, 2000);
    CHECK_EQ(atomic_load(&seen.revents), EVMPM_WATCH_TIMEOUT);
    CHECK(atomic_load(&seen.at_ms) - t0 >= 80);
    /* Idle after the timeout: input does not call it... */
    CHECK(write(p[1], "x", 1) == 1);
    sleep_ms(30);
    CHECK_EQ(atomic_load(&seen.calls), 1);
    /* ...until re-armed (without a timeout this time). */
    CHECK_OK(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, EVMPM_TIMEOUT_NONE));
    WAIT_UNTIL(atomic_load(&seen.calls) == 2, 2000);
    CHECK_EQ(atomic_load(&seen.revents), EVMPM_WATCH_READABLE);
    /* Readiness before the timeout: the timeout never fires after. */
    CHECK_OK(evmpm_watch_rearm(s.rt, id, EVMPM_WATCH_READABLE, 100));
    CHECK(write(p[1], "x", 1) == 1);
    WAIT_UNTIL(atomic_load(&seen.calls) == 3, 2000);
    sleep_ms(150);
    CHECK_EQ(atomic_load(&seen.calls), 3);
    CHECK_EQ(atomic_load(&seen.revents), EVMPM_WATCH_READABLE);
    CHECK_OK(evmpm_watch_cancel(s.rt, id));
    close(p[0]);
    close(p[1]);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void host_closes_while_armed(void) {
    struct line_server s;
    struct seen seen = {0}, other = {0};
    evmpm_watch id, id2, id3;
    evmpm_stats st;
    int p[2], q[2];
    line_server_start_default(&s);
    make_pipe(p);
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 100, on_watch, &seen, &id));
    /* Closed while armed: the kernel forgets it; only the timeout ends
     * the watch. */
    close(p[0]);
    close(p[1]);
    /* The numbers come back at once, watched by another watch. */
    make_pipe(q);
    CHECK_OK(evmpm_watch_add(s.rt, q[0], EVMPM_WATCH_READABLE, 5000, on_watch, &other, &id2));
    WAIT_UNTIL(atomic_load(&seen.calls) == 1, 2000);
    CHECK_EQ(atomic_load(&seen.revents), EVMPM_WATCH_TIMEOUT);
    /* The old watch's end did not touch the new one on the same number. */
    CHECK(write(q[1], "x", 1) == 1);
    WAIT_UNTIL(atomic_load(&other.calls) == 1, 2000);
    CHECK_EQ(atomic_load(&other.revents), EVMPM_WATCH_READABLE);
    printf("figure: the closed watch's descriptor number %s reused by the new one\n",
           q[0] == p[0] ? "was" : "was not");
    CHECK_OK(evmpm_watch_cancel(s.rt, id));
    CHECK_OK(evmpm_watch_cancel(s.rt, id2));
    /* Without a timeout: closed while armed, it waits for its cancel. */
    make_pipe(p);
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, EVMPM_TIMEOUT_NONE, on_watch,
                             &seen, &id3));
    /* The read end first: closing the write end first would make it
     * readable (end of file) for a moment, and the watch could run. */
    close(p[0]);
    close(p[1]);
    sleep_ms(30);
    CHECK_EQ(atomic_load(&seen.calls), 1);
    CHECK_OK(evmpm_watch_cancel(s.rt, id3));
    close(q[0]);
    close(q[1]);
    /* A descriptor that is not open is refused. */
    CHECK_EQ(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 10, on_watch, &seen, &id3),
             EVMPM_EOS);
    CHECK_EQ(id3, 0);
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 1000);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void cancel_while_running_ends_it(void) {
    struct line_server s;
    struct seen seen = {0};
    evmpm_watch id;
    int p[2];
    line_server_start_default(&s);
    make_pipe(p);
    /* The callback sleeps 200 ms, then re-arms itself. */
    atomic_store(&seen.sleep_ms, 200);
    atomic_store(&seen.rearm_times, 5);
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 5000, on_watch, &seen, &id));
    CHECK(write(p[1], "x", 1) == 1);
    WAIT_UNTIL(atomic_load(&seen.at_ms) != 0, 2000);
    /* Running: EBUSY, twice; the run completes, its re-arm does nothing. */
    CHECK_EQ(evmpm_watch_cancel(s.rt, id), EVMPM_EBUSY);
    CHECK_EQ(evmpm_watch_cancel(s.rt, id), EVMPM_EBUSY);
    WAIT_UNTIL(atomic_load(&seen.calls) == 1, 2000);
    /* EBUSY until the callback has returned (it counts just before),
     * then ESTALE: ended. */
    WAIT_UNTIL(evmpm_watch_cancel(s.rt, id) == EVMPM_ESTALE, 2000);
    CHECK(write(p[1], "x", 1) == 1);
    sleep_ms(50);
    CHECK_EQ(atomic_load(&seen.calls), 1);
    /* A callback that re-arms itself runs once per arming. */
    atomic_store(&seen.sleep_ms, 0);
    atomic_store(&seen.rearm_times, 3);
    atomic_store(&seen.calls, 0);
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 5000, on_watch, &seen, &id));
    for (int i = 1; i <= 4; i++) {
        CHECK(write(p[1], "x", 1) == 1);
        WAIT_UNTIL(atomic_load(&seen.calls) == i, 2000);
        CHECK_OK(atomic_load(&seen.rearm_rc));
    }
    CHECK(write(p[1], "x", 1) == 1);
    sleep_ms(30);
    CHECK_EQ(atomic_load(&seen.calls), 4);
    CHECK_OK(evmpm_watch_cancel(s.rt, id));
    close(p[0]);
    close(p[1]);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* ---- thousands armed at once ------------------------------------------------- */

static atomic_int many_calls;
static atomic_int many_bad;

static void on_many(void *arg, evmpm_runtime *rt, evmpm_watch id, int fd, uint32_t revents) {
    atomic_int *calls = arg;
    char c;
    (void)rt;
    (void)id;
    if (revents != EVMPM_WATCH_READABLE || read(fd, &c, 1) != 1)
        atomic_fetch_add(&many_bad, 1);
    atomic_fetch_add(calls, 1);
    atomic_fetch_add(&many_calls, 1);
}

static void many_pipes_armed_at_once(void) {
    struct line_server s;
    struct rlimit rl;
    evmpm_stats st;
    int n, i, limit;
    int (*pipes)[2];
    evmpm_watch *ids;
    atomic_int *calls;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    /* 10,000 pipes are 20,000 descriptors, the whole per-process limit
     * here; keep 80 for the rest of the process (valgrind takes some). */
    limit = rl.rlim_cur > 20080 ? 20080 : (int)rl.rlim_cur;
    n = (limit - 80) / 2;
    if (n > 10000)
        n = 10000;
    if (harness_slowdown() > 1 && n > 1000)
        n = 1000;
    pipes = calloc((size_t)n, sizeof *pipes);
    ids = calloc((size_t)n, sizeof *ids);
    calls = calloc((size_t)n, sizeof *calls);
    CHECK(pipes != NULL && ids != NULL && calls != NULL);
    line_server_start_default(&s);
    for (i = 0; i < n; i++) {
        make_pipe(pipes[i]);
        CHECK_OK(evmpm_watch_add(s.rt, pipes[i][0], EVMPM_WATCH_READABLE, 60000, on_many,
                                 &calls[i], &ids[i]));
    }
    st = line_server_stats(&s);
    CHECK_EQ(st.timers, n);
    /* Every other pipe speaks: exactly those callbacks run, once each. */
    for (i = 0; i < n; i += 2)
        CHECK(write(pipes[i][1], "x", 1) == 1);
    WAIT_UNTIL(atomic_load(&many_calls) == (n + 1) / 2, 10000);
    sleep_ms(50);
    CHECK_EQ(atomic_load(&many_calls), (n + 1) / 2);
    CHECK_EQ(atomic_load(&many_bad), 0);
    for (i = 0; i < n; i++)
        CHECK_EQ(atomic_load(&calls[i]), i % 2 == 0);
    st = line_server_stats(&s);
    /* No thread per descriptor: all of them ran on the harness's pool of at
     * most 4 threads. (Not "as many as before": on a loaded machine a
     * callback preempted in the kernel may look blocked and start a spare,
     * which is the pool doing its job.) */
    CHECK(st.worker_threads <= 4);
    for (i = 0; i < n; i++)
        CHECK_OK(evmpm_watch_cancel(s.rt, ids[i]));
    WAIT_UNTIL((st = line_server_stats(&s), st.timers == 0), 2000);
    printf("figure: %d pipes armed at once (descriptor limit %d), %d spoke, %llu worker "
           "threads\n",
           n, limit, (n + 1) / 2, (unsigned long long)st.worker_threads);
    for (i = 0; i < n; i++) {
        close(pipes[i][0]);
        close(pipes[i][1]);
    }
    CHECK_OK(line_server_stop(&s, 1000));
    free(pipes);
    free(ids);
    free(calls);
}

static void misuse_answers(void) {
    struct line_server s;
    struct seen seen = {0};
    evmpm_watch id = 5;
    int p[2];
    line_server_start_default(&s);
    make_pipe(p);
    CHECK_EQ(evmpm_watch_add(s.rt, p[0], 0, 10, on_watch, &seen, &id), EVMPM_EINVAL);
    CHECK_EQ(id, 0);
    CHECK_EQ(evmpm_watch_add(s.rt, p[0], 64, 10, on_watch, &seen, &id), EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_add(s.rt, -1, EVMPM_WATCH_READABLE, 10, on_watch, &seen, &id),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 10, NULL, &seen, &id),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 10, on_watch, &seen, NULL),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_add(NULL, p[0], EVMPM_WATCH_READABLE, 10, on_watch, &seen, &id),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_cancel(s.rt, 0), EVMPM_ESTALE);
    CHECK_EQ(evmpm_watch_rearm(s.rt, 0, EVMPM_WATCH_READABLE, 10), EVMPM_ESTALE);
    CHECK_OK(evmpm_watch_add(s.rt, p[0], EVMPM_WATCH_READABLE, 60000, on_watch, &seen, &id));
    CHECK_EQ(evmpm_timer_cancel(s.rt, id), EVMPM_EINVAL);
    CHECK_EQ(evmpm_watch_rearm(s.rt, id, 0, 10), EVMPM_EINVAL);
    /* Still armed at stop: it never runs. */
    CHECK_OK(line_server_stop_only(&s, 1000));
    CHECK_EQ(evmpm_watch_cancel(s.rt, id), EVMPM_ESTOPPED);
    CHECK_EQ(atomic_load(&seen.calls), 0);
    line_server_destroy(&s);
    close(p[0]);
    close(p[1]);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"readable_then_rearmed", readable_then_rearmed},
        {"writable", writable},
        {"timeout_fires_alone", timeout_fires_alone},
        {"host_closes_while_armed", host_closes_while_armed},
        {"cancel_while_running_ends_it", cancel_while_running_ends_it},
        {"many_pipes_armed_at_once", many_pipes_armed_at_once},
        {"misuse_answers", misuse_answers},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

/*
 * The worker pool: `running_threads` threads take turns on short handlers;
 * a handler that blocks is replaced by another thread, up to
 * `worker_threads` in all; a handler that only computes is not.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* Threads of this process, as the kernel lists them. */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    CHECK(d != NULL);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* SPIN ms [sleep_ms]: computes for `ms` without sleeping, then sleeps for
 * `sleep_ms` (if given), then answers SPUN. */
static enum line_command_result spin_command(struct line_server *s, evmpm_conn c, int fd,
                                             const char *line) {
    int ms, sleep_for = 0;
    (void)s, (void)c;
    if (sscanf(line, "SPIN %d %d", &ms, &sleep_for) < 1)
        return LINE_UNKNOWN;
    int64_t until = now_ms() + ms;
    volatile unsigned long sink = 0;
    while (now_ms() < until)
        sink++;
    if (sleep_for > 0)
        sleep_ms(sleep_for);
    line_reply(fd, "SPUN\n");
    return LINE_PARK;
}

/* With one running thread, handlers that block (sleep) do not hold the
 * others up: each blocked one is replaced, so four sleep at once. */
static void blocked_handlers_are_replaced(void) {
    enum { CLIENTS = 4 };
    struct line_server s;
    evmpm_config cfg;
    int fd[CLIENTS], i;
    evmpm_stats st;
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = 8;
    line_server_start(&s, &cfg);
    for (i = 0; i < CLIENTS; i++)
        fd[i] = line_client(&s);
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "SLEEP 2000\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == CLIENTS, 5000);
    st = line_server_stats(&s);
    CHECK(st.blocked_replaced >= CLIENTS - 1);
    CHECK(st.handlers_blocked >= CLIENTS - 1);
    CHECK(st.worker_threads <= 8);
    for (i = 0; i < CLIENTS; i++)
        EXPECT_LINE(fd[i], "SLEPT");
    /* Back from their sleep, the replaced threads give way again. */
    WAIT_UNTIL(line_server_stats(&s).handlers_blocked == 0, 5000);
    for (i = 0; i < CLIENTS; i++) {
        ping(fd[i]);
        close(fd[i]);
    }
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
}

/* A keep-alive connection whose next request came while every thread was
 * blocked waits for a worker however long that takes: its keep-alive
 * timeout is for an idle client, and it is not idle. (Closing it would
 * drop a request the client had sent.) The wait past the timeout is the
 * point of the case: three timeouts go by with the request unanswered. */
static void a_waiting_request_outlives_its_keepalive_timeout(void) {
    struct line_server s;
    evmpm_config cfg;
    int holder, waiter;
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = 1;
    cfg.keepalive_timeout_ms = 200;
    line_server_start(&s, &cfg);
    waiter = line_client(&s);
    holder = line_client(&s);
    ping(waiter); /* parked in keep-alive */
    send_str(holder, "HOLD\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    send_str(waiter, "PING\n");
    sleep_ms(3 * 200);
    CHECK_EQ(line_server_stats(&s).keepalive_expired, 0);
    line_server_release_holds(&s);
    EXPECT_LINE(holder, "HELD");
    EXPECT_LINE(waiter, "PONG");
    close(holder);
    close(waiter);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
}

/* A close callback that blocks (close_on_worker) is watched like a
 * handler: another thread serves the other clients meanwhile, whether the
 * handler closed the connection or a timeout did. */
static atomic_int closes_started, closes_done;
static void slow_close(struct line_server *s, evmpm_conn c, int fd) {
    (void)s, (void)c, (void)fd;
    atomic_fetch_add(&closes_started, 1);
    sleep_ms(2000);
    atomic_fetch_add(&closes_done, 1);
}

static void a_blocking_close_callback_is_replaced(void) {
    struct line_server s;
    evmpm_config cfg;
    int quitter, idler, other;
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = 4;
    cfg.close_on_worker = 1;
    cfg.keepalive_timeout_ms = 100;
    line_server_start(&s, &cfg);
    s.close_hook = slow_close;
    idler = line_client(&s);
    quitter = line_client(&s);
    ping(idler); /* parked: its keep-alive timeout closes it, on a worker */
    send_str(quitter, "QUIT\n");
    EXPECT_LINE(quitter, "BYE");
    /* Both closes block for 2 s; a new client is served meanwhile. */
    WAIT_UNTIL(atomic_load(&closes_started) == 2, 5000);
    other = line_client(&s);
    ping(other);
    ping(other);
    CHECK_EQ(atomic_load(&closes_done), 0);
    WAIT_UNTIL(atomic_load(&closes_done) == 2, 10000);
    close(quitter);
    close(idler);
    close(other);
    CHECK_EQ(line_server_stop(&s, 5000), EVMPM_OK);
}

/* After a burst of blocking handlers the spare threads started for them
 * leave once idle (2 s): the runtime goes back to its running threads. */
static void spares_leave_when_idle(void) {
    enum { CLIENTS = 4 };
    struct line_server s;
    evmpm_config cfg;
    int fd[CLIENTS], i, before;
    watchdog_arm(1000, "warm-up");
    watchdog_disarm();
    before = thread_count();
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = 8;
    line_server_start(&s, &cfg);
    for (i = 0; i < CLIENTS; i++)
        fd[i] = line_client(&s);
    /* Long enough for the monitor, at idle priority on a busy machine, to
     * replace each sleeper while all four sleep at once. */
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "SLEEP 2000\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == CLIENTS, 5000);
    CHECK(line_server_stats(&s).worker_threads >= CLIENTS);
    for (i = 0; i < CLIENTS; i++)
        EXPECT_LINE(fd[i], "SLEPT");
    WAIT_UNTIL(line_server_stats(&s).worker_threads == 1, 10000);
    WAIT_UNTIL(thread_count() == before + 1 + 2, 5000);
    /* And they come back when handlers block again. */
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "SLEEP 300\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == CLIENTS, 5000);
    for (i = 0; i < CLIENTS; i++) {
        EXPECT_LINE(fd[i], "SLEPT");
        close(fd[i]);
    }
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
    CHECK_EQ(thread_count(), before);
}

/* No more than `worker_threads` handlers ever run, however many block. */
static void threads_stay_within_the_limit(void) {
    enum { CLIENTS = 6, LIMIT = 3 };
    struct line_server s;
    evmpm_config cfg;
    int fd[CLIENTS], i;
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = LIMIT;
    line_server_start(&s, &cfg);
    for (i = 0; i < CLIENTS; i++)
        fd[i] = line_client(&s);
    for (i = 0; i < CLIENTS; i++)
        send_str(fd[i], "SLEEP 300\n");
    for (i = 0; i < CLIENTS; i++)
        EXPECT_LINE(fd[i], "SLEPT");
    CHECK(atomic_load(&s.max_in_handler) <= LIMIT);
    CHECK(atomic_load(&s.max_in_handler) >= 2);
    CHECK_EQ(line_server_stats(&s).worker_threads, LIMIT);
    for (i = 0; i < CLIENTS; i++)
        close(fd[i]);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
}

/* A handler that computes for a long time is busy, not blocked: no thread
 * is started in its place (its thread is running, not asleep). */
static void a_computing_handler_is_not_replaced(void) {
    struct line_server s;
    evmpm_config cfg;
    int fd;
    line_server_config(&s, &cfg);
    s.command = spin_command;
    cfg.running_threads = 1;
    cfg.worker_threads = 8;
    line_server_start(&s, &cfg);
    fd = line_client(&s);
    send_str(fd, "SPIN 300\n");
    EXPECT_LINE(fd, "SPUN");
    /* Not under valgrind: there the spinning thread sleeps in the kernel
     * whenever another thread has valgrind's turn. */
    if (harness_slowdown() == 1) {
        CHECK_EQ(line_server_stats(&s).blocked_replaced, 0);
        CHECK_EQ(line_server_stats(&s).worker_threads, 1);
    }
    close(fd);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
}

/* A handler found computing is looked at less often, but still: one that
 * blocks after computing for a while is replaced as one that blocks at
 * once is, so another client is answered while it sleeps. */
static void a_handler_that_blocks_after_computing_is_replaced(void) {
    struct line_server s;
    evmpm_config cfg;
    int slow, quick;
    line_server_config(&s, &cfg);
    s.command = spin_command;
    cfg.running_threads = 1;
    cfg.worker_threads = 4;
    line_server_start(&s, &cfg);
    slow = line_client(&s);
    quick = line_client(&s);
    send_str(slow, "SPIN 50 2000\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    send_str(quick, "PING\n");
    EXPECT_LINE(quick, "PONG");
    /* Answered while the slow handler still sleeps: it was replaced. */
    CHECK(silent_for(slow, 0));
    /* Counted just after the thread that answered was released. */
    WAIT_UNTIL(line_server_stats(&s).blocked_replaced >= 1, 5000);
    EXPECT_LINE(slow, "SPUN");
    close(slow);
    close(quick);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
}

/* An idle runtime holds its running threads, the event thread and the
 * monitor: nothing more, whatever `worker_threads` allows. */
static void an_idle_runtime_holds_running_threads_plus_two(void) {
    struct line_server s;
    evmpm_config cfg;
    int before, fd, i;
    /* The harness's watchdog thread, started once, is not the runtime's. */
    watchdog_arm(1000, "warm-up");
    watchdog_disarm();
    before = thread_count();
    line_server_config(&s, &cfg);
    cfg.running_threads = 2;
    cfg.worker_threads = 256;
    line_server_start(&s, &cfg);
    CHECK_EQ(thread_count(), before + 2 + 2);
    for (i = 0; i < 50; i++) {
        fd = line_client(&s);
        close(fd);
    }
    /* Under valgrind, which runs one thread at a time, a thread waiting
     * for its turn sleeps in the kernel: a short handler can look blocked
     * there and be replaced. Natively it is not. */
    if (harness_slowdown() == 1)
        CHECK_EQ(thread_count(), before + 2 + 2);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
    CHECK_EQ(thread_count(), before);
}

/* The default config takes connections up to connection_limit whatever
 * the workers do: with every worker thread blocked, a new client is still
 * accepted (and served once one is free). Apache's admission rule, which
 * would stop accepting here, is there when asked for. */
static void default_admission_accepts_while_workers_block(void) {
    struct line_server s;
    evmpm_config cfg;
    int held, late;
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = 1;
    line_server_start(&s, &cfg);
    held = line_client(&s);
    send_str(held, "SLEEP 1000\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    late = connect_loopback(s.port);
    WAIT_UNTIL(line_server_stats(&s).accepted == 2, 5000);
    CHECK_EQ(line_server_stats(&s).accepting_paused, 0);
    EXPECT_LINE(held, "SLEPT");
    ping(late);
    close(held);
    close(late);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);

    /* The same with factor 0 (Apache's rule: connections < workers + 0 ×
     * idle workers): one connection at a time. */
    line_server_config(&s, &cfg);
    cfg.running_threads = 1;
    cfg.worker_threads = 1;
    cfg.async_request_worker_factor = 0.0;
    line_server_start(&s, &cfg);
    held = line_client(&s);
    send_str(held, "SLEEP 1000\n");
    WAIT_UNTIL(atomic_load(&s.in_handler) == 1, 5000);
    late = connect_loopback(s.port);
    WAIT_UNTIL(line_server_stats(&s).accepting_paused == 1, 5000);
    CHECK_EQ(line_server_stats(&s).accepted, 1);
    EXPECT_LINE(held, "SLEPT");
    close(held);
    ping(late);
    close(late);
    CHECK_EQ(line_server_stop(&s, 1000), EVMPM_OK);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"blocked_handlers_are_replaced", blocked_handlers_are_replaced},
        {"a_blocking_close_callback_is_replaced", a_blocking_close_callback_is_replaced},
        {"a_waiting_request_outlives_its_keepalive_timeout",
         a_waiting_request_outlives_its_keepalive_timeout},
        {"threads_stay_within_the_limit", threads_stay_within_the_limit},
        {"spares_leave_when_idle", spares_leave_when_idle},
        {"a_computing_handler_is_not_replaced", a_computing_handler_is_not_replaced},
        {"a_handler_that_blocks_after_computing_is_replaced",
         a_handler_that_blocks_after_computing_is_replaced},
        {"an_idle_runtime_holds_running_threads_plus_two",
         an_idle_runtime_holds_running_threads_plus_two},
        {"default_admission_accepts_while_workers_block",
         default_admission_accepts_while_workers_block},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

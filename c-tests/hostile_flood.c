/* Floods: connection attempts far beyond connection_limit, from several
 * threads at once with non-blocking connects. Accepting pauses at the
 * limit (the rest wait in the kernel's backlog or retry their SYN), nothing
 * breaks, accepting resumes once the flood's connections close, a fresh
 * client is served, and memory returns near where it started. */
#define _GNU_SOURCE
#include "harness.h"
#include "hostile_util.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { LIMIT = 200, THREADS = 4, PER_THREAD = 500, ROUNDS = 2 };

struct flooder {
    int port;
    int index;
    int fds[PER_THREAD];
    int opened, failed, sent;
};

/* Opens PER_THREAD connections without waiting for any, and sends a
 * request on every other one that is already established (the kernel
 * completes a loopback handshake inside connect() while the backlog has
 * room). The rest send nothing at all. */
static void *flood_main(void *arg) {
    struct flooder *f = arg;
    int i;
    for (i = 0; i < PER_THREAD; i++) {
        int fd = connect_start(f->port);
        f->fds[i] = fd;
        if (fd < 0) {
            f->failed++;
            continue;
        }
        f->opened++;
        if (i % 2 == 0 && send(fd, "PING\n", 5, MSG_NOSIGNAL | MSG_DONTWAIT) == 5)
            f->sent++;
    }
    return NULL;
}

/* Closes the flood: half with a reset, half with a FIN. */
static void *unflood_main(void *arg) {
    struct flooder *f = arg;
    int i;
    for (i = 0; i < PER_THREAD; i++) {
        if (f->fds[i] < 0)
            continue;
        if ((i + f->index) % 2 == 0)
            close_with_reset(f->fds[i]);
        else
            close(f->fds[i]);
        f->fds[i] = -1;
    }
    return NULL;
}

/* How many of the flood's sockets have completed their handshake. */
static int established(struct flooder *f) {
    int i, n = 0;
    for (i = 0; i < PER_THREAD; i++) {
        struct pollfd p;
        if (f->fds[i] < 0)
            continue;
        p.fd = f->fds[i];
        p.events = POLLOUT;
        p.revents = 0;
        if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) && !(p.revents & (POLLERR | POLLHUP)))
            n++;
    }
    return n;
}

static void flood_beyond_the_connection_limit(void) {
    static struct flooder f[THREADS];
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    pthread_t th[THREADS];
    long rss_before, rss_after[ROUNDS];
    int round, i, fd, fds_before;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    cfg.connection_limit = LIMIT;
    line_server_start(&s, &cfg);
    /* Baseline with the runtime warmed up: one client served. */
    close(line_client(&s));
    expect_all_closed(&s, 5000);
    fds_before = open_fd_count();
    rss_before = vm_rss_kb();

    for (round = 0; round < ROUNDS; round++) {
        int opened = 0, failed = 0, sent = 0, connected = 0;
        uint64_t pauses_before = line_server_stats(&s).accept_pauses;
        int64_t cpu, t;
        for (i = 0; i < THREADS; i++) {
            memset(&f[i], 0, sizeof f[i]);
            f[i].port = s.port;
            f[i].index = i;
            CHECK(pthread_create(&th[i], NULL, flood_main, &f[i]) == 0);
        }
        for (i = 0; i < THREADS; i++) {
            CHECK(pthread_join(th[i], NULL) == 0);
            opened += f[i].opened;
            failed += f[i].failed;
            sent += f[i].sent;
        }
        /* The limit is reached and accepting pauses: the runtime holds
         * exactly LIMIT connections, whatever the flood's size. */
        WAIT_UNTIL((st = line_server_stats(&s)).connections == LIMIT && st.accepting_paused == 1,
                   10000);
        CHECK(st.accept_pauses > pauses_before);
        for (i = 0; i < THREADS; i++)
            connected += established(&f[i]);
        /* Paused means the listener is out of epoll: nothing spins on the
         * full backlog. The window is a measurement, not a wait. */
        cpu = process_cpu_us();
        t = now_ms();
        sleep_ms(500);
        t = now_ms() - t;
        cpu = process_cpu_us() - cpu;
        st = line_server_stats(&s);
        CHECK_EQ(st.connections, LIMIT);
        CHECK_EQ(st.accepting_paused, 1);
        figure("round %d: %d connects started (%d failed at once), %d established by the kernel, "
               "%d sent a request; runtime holds %llu, accepting paused (%llu pauses so far); "
               "CPU while paused %.1f%% of one core",
               round, opened, failed, connected, sent, (unsigned long long)st.connections,
               (unsigned long long)st.accept_pauses, 100.0 * (double)cpu / (double)(t * 1000));
        CHECK(cpu < t * 1000 / 2);

        /* The flood goes away. What waited in the backlog is accepted and
         * found dead; then the runtime is empty and accepting again. */
        t = now_ms();
        for (i = 0; i < THREADS; i++)
            CHECK(pthread_create(&th[i], NULL, unflood_main, &f[i]) == 0);
        for (i = 0; i < THREADS; i++)
            CHECK(pthread_join(th[i], NULL) == 0);
        WAIT_UNTIL((st = line_server_stats(&s)).connections == 0 && st.accepting_paused == 0,
                   20000);
        t = now_ms() - t;
        /* A fresh client is served (behind whatever dead connections the
         * backlog still held). */
        fd = line_client(&s);
        ping(fd);
        close(fd);
        expect_all_closed(&s, 10000);
        CHECK_EQ(line_server_stats(&s).accepting_paused, 0);
        CHECK_EQ(open_fd_count(), fds_before);
        rss_after[round] = vm_rss_kb();
        st = line_server_stats(&s);
        figure("round %d: runtime empty and accepting again %lld ms after the flood began "
               "closing; accepted %llu in all, handler calls %ld, VmRSS %ld KiB (baseline %ld)",
               round, (long long)t, (unsigned long long)st.accepted,
               atomic_load(&s.handler_calls), rss_after[round], rss_before);
    }
    /* Generous: glibc keeps freed heap and thread stacks cached, but
     * nothing may grow with the number of connections (2,000 a round). */
    CHECK(rss_after[ROUNDS - 1] - rss_before < 32 * 1024);
    /* The first round pays for the flood threads' stacks and arenas once;
     * a second flood of the same size must not cost that again. */
    CHECK(rss_after[ROUNDS - 1] - rss_after[0] < 8 * 1024);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* A stop while the flood holds every slot and the backlog is full: the
 * idle connections are closed at once, the served ones once parked, and
 * nothing is left but the kernel's backlog, which goes with the listener. */
static void stop_during_a_flood(void) {
    static struct flooder f[THREADS];
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    pthread_t th[THREADS];
    int i, rc, fds_before;
    int64_t stop_ms;

    fds_before = open_fd_count();
    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    cfg.connection_limit = LIMIT;
    line_server_start(&s, &cfg);
    for (i = 0; i < THREADS; i++) {
        memset(&f[i], 0, sizeof f[i]);
        f[i].port = s.port;
        f[i].index = i;
        CHECK(pthread_create(&th[i], NULL, flood_main, &f[i]) == 0);
    }
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    WAIT_UNTIL((st = line_server_stats(&s)).connections == LIMIT && st.accepting_paused == 1,
               10000);
    stop_ms = now_ms();
    rc = line_server_stop_only(&s, 2000);
    stop_ms = now_ms() - stop_ms;
    st = line_server_stats(&s);
    figure("stop with %d connections held and the backlog full: evmpm_stop returned %d in %lld ms; "
           "accepted %llu, closed %llu",
           LIMIT, rc, (long long)stop_ms, (unsigned long long)st.accepted,
           (unsigned long long)st.closed);
    CHECK_OK(rc);
    CHECK_EQ(st.connections, 0);
    CHECK_EQ(st.accepted, LIMIT);
    CHECK_EQ(st.closed, LIMIT);
    CHECK_EQ(atomic_load(&s.closes), LIMIT);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    CHECK_OK(evmpm_destroy(s.rt));
    close(s.listen_fd);
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, unflood_main, &f[i]) == 0);
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    /* The runtime's own descriptors went with it. */
    CHECK_EQ(open_fd_count(), fds_before);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"flood_beyond_the_connection_limit", flood_beyond_the_connection_limit},
        {"stop_during_a_flood", stop_during_a_flood},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

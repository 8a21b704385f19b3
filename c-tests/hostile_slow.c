/* Slow and silent clients: a thousand connections that send nothing and two
 * hundred that send a request one byte per second wait on the event thread
 * (the readiness check says "incomplete" until the '\n'), so none of them
 * ever holds one of the four workers, and an ordinary client keeps being
 * answered all along. */
#define _GNU_SOURCE
#include "harness.h"
#include "hostile_util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Verdicts of the readiness check, counted apart: the slow clients cause
 * exactly one "incomplete" per byte, the ordinary client only "complete". */
static atomic_long incomplete_verdicts, complete_verdicts;

static int line_ready(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                      size_t len) {
    (void)user_data, (void)conn, (void)conn_user;
    if (memchr(data, '\n', len) != NULL) {
        atomic_fetch_add(&complete_verdicts, 1);
        return EVMPM_REQUEST_COMPLETE;
    }
    atomic_fetch_add(&incomplete_verdicts, 1);
    return EVMPM_REQUEST_INCOMPLETE;
}

/* Samples the stats as fast as it can for the whole run: at no instant may
 * more than the ordinary client's one request hold a worker. (A connection
 * whose new byte a worker has yet to look at counts in `conns_queued` for
 * that instant: the look is the readiness check, which never blocks.) */
struct sampler {
    struct line_server *s;
    atomic_int stop;
    long samples;
    uint64_t most_busy, most_in_handler;
};

static void *sample_main(void *arg) {
    struct sampler *sm = arg;
    while (!atomic_load(&sm->stop)) {
        evmpm_stats st = line_server_stats(sm->s);
        if (st.workers_busy > sm->most_busy)
            sm->most_busy = st.workers_busy;
        if (st.conns_in_handler > sm->most_in_handler)
            sm->most_in_handler = st.conns_in_handler;
        sm->samples++;
        sleep_ms(1);
    }
    return NULL;
}

static void silent_and_dribbling_clients_hold_no_worker(void) {
    enum { SILENT = 1000, SLOW = 200, SECONDS = 4 };
    /* Longer than the bytes dribbled: the request stays incomplete. */
    static const char slow_request[] = "ECHO dribbled request\n";
    static int silent[SILENT], slow[SLOW];
    struct line_server s;
    evmpm_config cfg;
    struct sampler sm;
    pthread_t sampler_thread;
    evmpm_stats st;
    char line[64];
    int64_t next_byte_at, max_rtt = 0, total_rtt = 0;
    long pings = 0, quiet_samples = 0;
    size_t dribbled = 0;
    int fast, i;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    cfg.request_ready = line_ready;
    line_server_start(&s, &cfg);
    for (i = 0; i < SILENT; i++)
        silent[i] = connect_loopback(s.port);
    for (i = 0; i < SLOW; i++)
        slow[i] = connect_loopback(s.port);
    /* All accepted, all waiting for a first byte on the event thread. */
    WAIT_UNTIL(line_server_stats(&s).conns_reading == SILENT + SLOW, 20000);

    memset(&sm, 0, sizeof sm);
    sm.s = &s;
    CHECK(pthread_create(&sampler_thread, NULL, sample_main, &sm) == 0);
    fast = connect_loopback(s.port);
    next_byte_at = now_ms();
    while (dribbled < SECONDS) {
        int64_t t0;
        if (now_ms() >= next_byte_at) {
            for (i = 0; i < SLOW; i++)
                send_all(slow[i], slow_request + dribbled, 1);
            dribbled++;
            next_byte_at += 1000;
            /* Every new byte has been looked at, and judged incomplete... */
            WAIT_UNTIL(atomic_load(&incomplete_verdicts) >= (long)(SLOW * dribbled), 10000);
            /* ... and with the ordinary client idle, no worker runs. */
            st = line_server_stats(&s);
            CHECK_EQ(st.workers_busy, 0);
            CHECK_EQ(st.conns_in_handler + st.conns_queued, 0);
            quiet_samples++;
        }
        t0 = now_ms();
        ping(fast);
        t0 = now_ms() - t0;
        total_rtt += t0;
        if (t0 > max_rtt)
            max_rtt = t0;
        pings++;
        /* Between its requests the ordinary client holds no worker either:
         * every worker goes idle (a slow client on a worker would block
         * there in read and keep it busy). */
        WAIT_UNTIL(atomic_load(&s.in_handler) == 0 && line_server_stats(&s).workers_busy == 0, 2000);
        quiet_samples++;
        /* Only the ordinary client ever reached the handler. */
        CHECK_EQ(atomic_load(&s.handler_calls), pings);
    }
    atomic_store(&sm.stop, 1);
    CHECK(pthread_join(sampler_thread, NULL) == 0);

    st = line_server_stats(&s);
    CHECK_EQ(st.connections, SILENT + SLOW + 1);
    CHECK_EQ(st.conns_reading, SILENT + SLOW);
    CHECK_EQ(st.timed_out, 0);
    CHECK(sm.most_busy <= 1);
    CHECK(sm.most_in_handler <= 1);
    figure("%ld pings while %d silent and %d one-byte-a-second clients waited: max round trip "
           "%lld ms, mean %.2f ms",
           pings, SILENT, SLOW, (long long)max_rtt, (double)total_rtt / (double)pings);
    figure("workers_busy: 0 in all %ld quiet samples; at most %llu in %ld continuous samples",
           quiet_samples, (unsigned long long)sm.most_busy, sm.samples);
    CHECK(max_rtt < 1000 * harness_slowdown());

    /* The dribbled bytes were kept: the rest of the line completes each
     * request, and all two hundred are answered. */
    for (i = 0; i < SLOW; i++)
        send_str(slow[i], slow_request + dribbled);
    for (i = 0; i < SLOW; i++) {
        recv_line(slow[i], line, sizeof line, 10000);
        if (strcmp(line, "dribbled request") != 0)
            harness_fail(__FILE__, __LINE__, "slow client %d got \"%s\"", i, line);
    }
    CHECK_EQ(atomic_load(&s.handler_calls), pings + SLOW);

    for (i = 0; i < SILENT; i++)
        close(silent[i]);
    for (i = 0; i < SLOW; i++)
        close(slow[i]);
    close(fast);
    expect_all_closed(&s, 10000);
    CHECK_EQ(line_server_stats(&s).accepted, SILENT + SLOW + 1);
    CHECK_OK(line_server_stop(&s, 1000));
}

/* Slow readers: clients that ask for a large response and never read it.
 * The rest of each response waits in write completion on the event thread,
 * not on a worker, until the write timeout closes the connection; every
 * buffer is released and the memory given back. */
static void slow_readers_hold_no_worker(void) {
    enum { READERS = 200, SIZE = 131072, PINGS = 500 };
    static int readers[READERS];
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    char req[64];
    long rss_before, rss_during, rss_after;
    int64_t max_rtt = 0;
    int fast, i;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    cfg.write_timeout_ms = 3000;
    /* Only the write timeout may close anything here: the fast client
     * idles while the readers time out, longer than 5 s on a loaded run. */
    cfg.keepalive_timeout_ms = 120000;
    s.command = sndbuf_command;
    line_server_start(&s, &cfg);
    close(line_client(&s));
    expect_all_closed(&s, 5000);
    rss_before = vm_rss_kb();

    snprintf(req, sizeof req, "BIG %d\n", SIZE);
    for (i = 0; i < READERS; i++) {
        /* A 4 KiB window and a 16 KiB send buffer: the kernel holds a few
         * dozen KiB, the rest waits in write completion. */
        readers[i] = connect_loopback_rcvbuf(s.port, 4096);
        send_str(readers[i], "SNDBUF 16384\n");
        EXPECT_LINE(readers[i], "SNDBUF");
        send_str(readers[i], req);
    }
    {
        int64_t deadline = now_ms() + 10000;
        while ((st = line_server_stats(&s)).conns_writing != READERS) {
            if (now_ms() > deadline)
                harness_fail(__FILE__, __LINE__,
                             "%llu of %d large responses in write completion after 10 s "
                             "(connections %llu, keep-alive %llu, in handler %llu, queued %llu, "
                             "buffers released %ld)",
                             (unsigned long long)st.conns_writing, READERS,
                             (unsigned long long)st.connections,
                             (unsigned long long)st.conns_keepalive,
                             (unsigned long long)st.conns_in_handler,
                             (unsigned long long)st.conns_queued, atomic_load(&s.releases));
            sleep_ms(1);
        }
    }
    rss_during = vm_rss_kb();
    fast = connect_loopback(s.port);
    for (i = 0; i < PINGS; i++) {
        int64_t t = now_ms();
        ping(fast);
        t = now_ms() - t;
        if (t > max_rtt)
            max_rtt = t;
        WAIT_UNTIL(atomic_load(&s.in_handler) == 0 && line_server_stats(&s).workers_busy == 0, 2000);
    }
    st = line_server_stats(&s);
    CHECK_EQ(st.conns_writing, READERS);
    CHECK_EQ(st.workers_busy, 0);
    CHECK_EQ(atomic_load(&s.handler_calls), 2 * READERS + 1 + PINGS);
    figure("%d pings while %d clients left %d-byte responses unread: max round trip %lld ms, "
           "workers busy between requests 0",
           PINGS, READERS, SIZE, (long long)max_rtt);
    CHECK(max_rtt < 1000 * harness_slowdown());

    /* No progress for write_timeout_ms: each of them is closed, and its
     * buffer released. */
    WAIT_UNTIL(line_server_stats(&s).timed_out == READERS, 20000);
    WAIT_UNTIL(atomic_load(&s.releases) == READERS, 5000);
    for (i = 0; i < READERS; i++)
        close(readers[i]);
    close(fast);
    expect_all_closed(&s, 10000);
    rss_after = vm_rss_kb();
    figure("VmRSS %ld KiB before, %ld KiB with %d responses pending, %ld KiB after they timed out",
           rss_before, rss_during, READERS, rss_after);
    CHECK(rss_after - rss_before < 16 * 1024);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"silent_and_dribbling_clients_hold_no_worker", silent_and_dribbling_clients_hold_no_worker},
        {"slow_readers_hold_no_worker", slow_readers_hold_no_worker},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

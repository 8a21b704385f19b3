/* Resets and half-closes, tens of thousands of them: clients that reset in
 * the middle of a request, in the middle of a large response (write
 * completion), while parked in keep-alive or right after connecting; clients
 * that send a request and half-close. Afterwards the runtime holds nothing:
 * no connection, no descriptor, no buffer, no memory, and every close
 * callback ran exactly once. */
#define _GNU_SOURCE
#include "harness.h"
#include "hostile_util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    THREADS = 16,
    BIG_RESET = 262144,  /* far more than a 4 KiB receive window takes */
    BIG_CLOSE = 65536,
    BIG_HALF_READ = 100000,
};

enum kind {
    RESET_MID_REQUEST,      /* "ECHO partial" without its '\n', then reset */
    RESET_MID_RESPONSE,     /* BIG to a slow reader, reset after the first bytes */
    RESET_WHILE_PARKED,     /* one request answered, then reset */
    HALF_CLOSE_AFTER_PING,  /* PING, shutdown(SHUT_WR): PONG, then EOF */
    HALF_CLOSE_AFTER_BIG,   /* BIGCLOSE, shutdown(SHUT_WR): all bytes, then EOF */
    RESET_SECOND_REQUEST,   /* one request answered, half of the next, reset */
    FIN_MID_REQUEST,        /* half a request, then an orderly close */
    RESET_AT_ONCE,          /* connect and reset, nothing sent */
    HALF_CLOSE_PIPELINED,   /* two requests in one segment, then SHUT_WR */
    RESET_HALF_READ,        /* BIG, read part of it, reset */
    KINDS
};

static const char *const kind_names[KINDS] = {
    "reset mid-request",   "reset mid-response", "reset while parked",
    "half-close after PING", "half-close after BIGCLOSE", "reset in a second request",
    "FIN mid-request",     "reset at once",      "half-close pipelined",
    "reset after reading part of BIG",
};

struct run {
    struct line_server *s;
    int per_thread;
    atomic_long done[KINDS];
    atomic_long bigs_issued; /* BIG writes the handler surely issued */
};

struct client {
    struct run *run;
    int index;
};

static void expect_line(int fd, const char *want, enum kind k) {
    char line[64];
    int rc = try_recv_line(fd, line, sizeof line, 10000, NULL);
    if (rc != 1 || strcmp(line, want) != 0)
        harness_fail(__FILE__, __LINE__, "%s: expected \"%s\", got \"%s\" (rc %d)",
                     kind_names[k], want, line, rc);
}

static void expect_eof(int fd, enum kind k) {
    int rc = try_recv_eof(fd, 10000);
    if (rc != 1)
        harness_fail(__FILE__, __LINE__, "%s: expected the end of the stream, rc %d",
                     kind_names[k], rc);
}

/* Reads `len` bytes of a BIG response starting at `offset`, checking them. */
static void expect_big(int fd, char *buf, size_t len, size_t offset, enum kind k) {
    int rc = try_recv_exact(fd, buf, len, 10000);
    if (rc != 1 || !big_pattern_ok(buf, len, offset))
        harness_fail(__FILE__, __LINE__, "%s: BIG response broken (rc %d)", kind_names[k], rc);
}

/* A slow reader whose server side keeps a small send buffer, so that a
 * BIG response really waits in write completion when the reset comes. */
static int small_buffers(int port, enum kind k) {
    int fd = connect_loopback_rcvbuf(port, 4096);
    send_str(fd, "SNDBUF 16384\n");
    expect_line(fd, "SNDBUF", k);
    return fd;
}

static void one_connection(struct run *r, enum kind k, char *buf) {
    int port = r->s->port, fd;
    switch (k) {
    case RESET_MID_REQUEST:
        fd = connect_loopback(port);
        send_str(fd, "ECHO partial");
        close_with_reset(fd);
        break;
    case RESET_MID_RESPONSE:
        fd = small_buffers(port, k);
        send_str(fd, "BIG 262144\n");
        /* The first bytes prove the handler issued the write. */
        expect_big(fd, buf, 1, 0, k);
        atomic_fetch_add(&r->bigs_issued, 1);
        close_with_reset(fd);
        break;
    case RESET_WHILE_PARKED:
        fd = connect_loopback(port);
        ping(fd);
        close_with_reset(fd);
        break;
    case HALF_CLOSE_AFTER_PING:
        fd = connect_loopback(port);
        send_str(fd, "PING\n");
        CHECK(shutdown(fd, SHUT_WR) == 0);
        expect_line(fd, "PONG", k);
        expect_eof(fd, k);
        close(fd);
        break;
    case HALF_CLOSE_AFTER_BIG:
        fd = connect_loopback(port);
        send_str(fd, "BIGCLOSE 65536\n");
        CHECK(shutdown(fd, SHUT_WR) == 0);
        expect_big(fd, buf, BIG_CLOSE, 0, k);
        atomic_fetch_add(&r->bigs_issued, 1);
        expect_eof(fd, k);
        close(fd);
        break;
    case RESET_SECOND_REQUEST:
        fd = connect_loopback(port);
        ping(fd);
        send_str(fd, "PIN");
        close_with_reset(fd);
        break;
    case FIN_MID_REQUEST:
        fd = connect_loopback(port);
        send_str(fd, "ECH");
        close(fd);
        break;
    case RESET_AT_ONCE:
        fd = connect_loopback(port);
        close_with_reset(fd);
        break;
    case HALF_CLOSE_PIPELINED:
        fd = connect_loopback(port);
        send_str(fd, "PING\nECHO second\n");
        CHECK(shutdown(fd, SHUT_WR) == 0);
        expect_line(fd, "PONG", k);
        expect_line(fd, "second", k);
        expect_eof(fd, k);
        close(fd);
        break;
    case RESET_HALF_READ:
        fd = small_buffers(port, k);
        send_str(fd, "BIG 262144\n");
        expect_big(fd, buf, BIG_HALF_READ, 0, k);
        atomic_fetch_add(&r->bigs_issued, 1);
        close_with_reset(fd);
        break;
    case KINDS:
        break;
    }
    atomic_fetch_add(&r->done[k], 1);
}

static void *client_main(void *arg) {
    struct client *c = arg;
    char *buf = malloc(BIG_HALF_READ);
    int i;
    CHECK(buf != NULL);
    /* Each thread walks the kinds from its own starting point, so all
     * kinds run side by side all the time. */
    for (i = 0; i < c->run->per_thread; i++)
        one_connection(c->run, (enum kind)((i + c->index) % KINDS), buf);
    free(buf);
    return NULL;
}

/* Watches the runtime while the clients run: the most connections seen in
 * write completion at once shows the mid-response resets met real
 * write completions, not responses the kernel had already taken whole. */
struct watcher {
    struct line_server *s;
    atomic_int stop;
    uint64_t most_writing;
};

static void *watch_main(void *arg) {
    struct watcher *w = arg;
    while (!atomic_load(&w->stop)) {
        uint64_t writing = line_server_stats(w->s).conns_writing;
        if (writing > w->most_writing)
            w->most_writing = writing;
        sleep_ms(1);
    }
    return NULL;
}

static int line_ready(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                      size_t len) {
    (void)user_data, (void)conn, (void)conn_user;
    return memchr(data, '\n', len) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static void resets_and_half_closes(int total, int with_ready_check) {
    static struct run r;
    struct client clients[THREADS];
    pthread_t th[THREADS], watcher;
    struct watcher w;
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    long rss_before, rss_after, done = 0, releases_before, closes_before;
    int fds_before, i;
    int64_t started;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    if (with_ready_check)
        cfg.request_ready = line_ready;
    s.command = sndbuf_command;
    line_server_start(&s, &cfg);
    /* Baseline once the runtime and the client threads' arenas exist: a
     * first small round with every kind, then measure. */
    memset(&r, 0, sizeof r);
    r.s = &s;
    r.per_thread = KINDS;
    for (i = 0; i < THREADS; i++) {
        clients[i].run = &r;
        clients[i].index = i;
        CHECK(pthread_create(&th[i], NULL, client_main, &clients[i]) == 0);
    }
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    expect_all_closed(&s, 10000);
    CHECK_EQ(atomic_load(&s.releases), atomic_load(&r.bigs_issued));
    fds_before = open_fd_count();
    rss_before = vm_rss_kb();

    memset(&r, 0, sizeof r);
    r.s = &s;
    r.per_thread = total / THREADS;
    releases_before = atomic_load(&s.releases);
    closes_before = atomic_load(&s.closes);
    st = line_server_stats(&s);
    memset(&w, 0, sizeof w);
    w.s = &s;
    CHECK(pthread_create(&watcher, NULL, watch_main, &w) == 0);
    started = now_ms();
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, client_main, &clients[i]) == 0);
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    atomic_store(&w.stop, 1);
    CHECK(pthread_join(watcher, NULL) == 0);
    expect_all_closed(&s, 10000);
    for (i = 0; i < KINDS; i++)
        done += atomic_load(&r.done[i]);
    CHECK_EQ(done, (long)r.per_thread * THREADS);
    figure("%ld connections (%d threads side by side, readiness check %s) in %lld ms: "
           "accepted %llu, closed %llu, close callbacks %ld, second callbacks %ld",
           done, THREADS, with_ready_check ? "on" : "off", (long long)(now_ms() - started),
           (unsigned long long)(line_server_stats(&s).accepted - st.accepted),
           (unsigned long long)(line_server_stats(&s).closed - st.closed),
           atomic_load(&s.closes) - closes_before, atomic_load(&s.double_closes));
    for (i = 0; i < KINDS; i++)
        figure("  %-32s %ld", kind_names[i], atomic_load(&r.done[i]));

    /* Every BIG write the handler issued was released exactly once, whether
     * it was sent, cut short by a reset, or never started. */
    figure("BIG writes issued %ld, buffers released %ld; up to %llu connections in write "
           "completion at once",
           atomic_load(&r.bigs_issued), atomic_load(&s.releases) - releases_before,
           (unsigned long long)w.most_writing);
    CHECK(w.most_writing > 0);
    CHECK_EQ(atomic_load(&s.releases) - releases_before, atomic_load(&r.bigs_issued));
    st = line_server_stats(&s);
    CHECK_EQ(st.connections, 0);
    CHECK_EQ(open_fd_count(), fds_before);
    rss_after = vm_rss_kb();
    figure("open descriptors back to %d; VmRSS %ld KiB before, %ld KiB after", fds_before,
           rss_before, rss_after);
    /* Generous: nothing may grow with the number of connections. */
    CHECK(rss_after - rss_before < 16 * 1024);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void resets_and_half_closes_on_workers(void) { resets_and_half_closes(20000, 0); }

static void resets_and_half_closes_with_readiness_check(void) {
    resets_and_half_closes(10000, 1);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"resets_and_half_closes_on_workers", resets_and_half_closes_on_workers},
        {"resets_and_half_closes_with_readiness_check",
         resets_and_half_closes_with_readiness_check},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

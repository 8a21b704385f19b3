/* Clients that race the server's own timeouts: requests sent just as the
 * keep-alive timeout, the read timeout or the header timeout closes their
 * connection. Whichever side wins, nothing may be lost: a request the
 * handler began must be answered, one the server closed on without reading
 * is "not accepted" (the client may retry it), and no client sees a reset.
 *
 * The clients sleep on purpose here: each waits about one timeout (with
 * jitter) before it sends, so that its request and the timer meet. The
 * timing is the attack, not something the checks rely on. */
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

enum { CLIENTS = 50, TIMEOUT_MS = 50, JITTER_MS = 10, RUN_MS = 3000, MAX_IDS = 1 << 20 };

enum mode {
    KEEPALIVE, /* requests spaced about one keep-alive timeout apart */
    READING,   /* a new connection's first request after about the read timeout */
    HEADER,    /* a request's last byte after about the header timeout */
};

static atomic_uchar started[MAX_IDS];
static atomic_long next_id;

/* REQ id: records that its handling began, then answers. */
static enum line_command_result tracked_command(struct line_server *s, evmpm_conn c, int fd,
                                                const char *line) {
    char reply[64];
    long id;
    (void)s, (void)c;
    if (sscanf(line, "REQ %ld", &id) != 1)
        return LINE_UNKNOWN;
    CHECK(id >= 0 && id < MAX_IDS);
    atomic_store(&started[id], 1);
    snprintf(reply, sizeof reply, "DONE %ld\n", id);
    line_reply(fd, reply);
    return LINE_PARK;
}

static int line_ready(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                      size_t len) {
    (void)user_data, (void)conn, (void)conn_user;
    return memchr(data, '\n', len) ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

struct tally {
    atomic_long answered, not_accepted, lost, resets, connections;
};

struct client {
    int port;
    enum mode mode;
    unsigned seed;
    int64_t until;
    struct tally *t;
};

static int jittered(struct client *c) {
    c->seed = c->seed * 1103515245u + 12345u;
    return TIMEOUT_MS - JITTER_MS + (int)((c->seed >> 16) % (2 * JITTER_MS + 1));
}

/* Sends request `id` (in two parts, the '\n' after a pause, in HEADER
 * mode) and reads its answer: 1 answered, else the code that ended it. */
static int exchange(struct client *c, int fd, long id) {
    char req[64], line[64], want[64];
    int rc;
    snprintf(req, sizeof req, "REQ %ld\n", id);
    if (c->mode == HEADER) {
        rc = try_send_all(fd, req, strlen(req) - 1);
        if (rc == 1) {
            sleep_ms(jittered(c));
            rc = try_send_all(fd, "\n", 1);
        }
    } else {
        rc = try_send_all(fd, req, strlen(req));
    }
    if (rc != 1)
        return rc;
    rc = try_recv_line(fd, line, sizeof line, 10000, NULL);
    if (rc != 1)
        return rc;
    snprintf(want, sizeof want, "DONE %ld", id);
    if (strcmp(line, want) != 0)
        harness_fail(__FILE__, __LINE__, "request %ld answered \"%s\"", id, line);
    return 1;
}

static void *client_main(void *arg) {
    struct client *c = arg;
    struct tally *t = c->t;
    int fd = -1, requests_on_fd = 0;
    while (now_ms() < c->until) {
        long id;
        int rc;
        if (fd < 0) {
            fd = connect_loopback(c->port);
            atomic_fetch_add(&t->connections, 1);
            requests_on_fd = 0;
        }
        /* KEEPALIVE: the first request at once, then one a timeout later;
         * READING: the first request a timeout after connecting. */
        if (c->mode == READING || (c->mode == KEEPALIVE && requests_on_fd > 0))
            sleep_ms(jittered(c));
        id = atomic_fetch_add(&next_id, 1);
        CHECK(id < MAX_IDS);
        rc = exchange(c, fd, id);
        requests_on_fd++;
        if (rc == 1) {
            atomic_fetch_add(&t->answered, 1);
            if (c->mode == READING) {
                close(fd);
                fd = -1;
            }
            continue;
        }
        if (rc == TRY_TIMEOUT)
            harness_fail(__FILE__, __LINE__, "request %ld: no answer and no close in 10 s", id);
        if (rc == -ECONNRESET)
            atomic_fetch_add(&t->resets, 1);
        /* The server closed the connection: no handler runs for it any
         * more, so started[] is final. */
        if (atomic_load(&started[id])) {
            atomic_fetch_add(&t->lost, 1);
            fprintf(stderr, "LOST: request %ld was begun, then its connection closed (rc %d)\n",
                    id, rc);
        } else {
            atomic_fetch_add(&t->not_accepted, 1);
        }
        close(fd);
        fd = -1;
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

static void race_the_timeout(enum mode mode) {
    static const char *const names[] = {"keep-alive", "read", "header"};
    static struct client clients[CLIENTS];
    static struct tally t;
    pthread_t th[CLIENTS];
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    int64_t until;
    int i;

    line_server_config(&s, &cfg);
    cfg.worker_threads = 8;
    switch (mode) {
    case KEEPALIVE: cfg.keepalive_timeout_ms = TIMEOUT_MS; break;
    case READING: cfg.read_timeout_ms = TIMEOUT_MS; break;
    case HEADER:
        cfg.request_ready = line_ready;
        cfg.header_timeout_ms = TIMEOUT_MS;
        break;
    }
    s.command = tracked_command;
    line_server_start(&s, &cfg);
    until = now_ms() + RUN_MS;
    for (i = 0; i < CLIENTS; i++) {
        clients[i].port = s.port;
        clients[i].mode = mode;
        clients[i].seed = (unsigned)i * 2654435761u + (unsigned)mode;
        clients[i].until = until;
        clients[i].t = &t;
        CHECK(pthread_create(&th[i], NULL, client_main, &clients[i]) == 0);
    }
    for (i = 0; i < CLIENTS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    expect_all_closed(&s, 10000);
    st = line_server_stats(&s);
    figure("%s timeout %d ms, requests %d±%d ms after: answered %ld, not accepted %ld, lost %ld, "
           "ECONNRESET %ld; %ld connections, %llu timed out",
           names[mode], TIMEOUT_MS, TIMEOUT_MS, JITTER_MS, atomic_load(&t.answered),
           atomic_load(&t.not_accepted), atomic_load(&t.lost), atomic_load(&t.resets),
           atomic_load(&t.connections), (unsigned long long)st.timed_out);
    CHECK_EQ(atomic_load(&t.lost), 0);
    CHECK_EQ(atomic_load(&t.resets), 0);
    CHECK(atomic_load(&t.answered) > 0);
    CHECK_OK(line_server_stop(&s, 1000));
}

static void requests_racing_the_keepalive_timeout(void) { race_the_timeout(KEEPALIVE); }
static void requests_racing_the_read_timeout(void) { race_the_timeout(READING); }
static void requests_racing_the_header_timeout(void) { race_the_timeout(HEADER); }

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"requests_racing_the_keepalive_timeout", requests_racing_the_keepalive_timeout},
        {"requests_racing_the_read_timeout", requests_racing_the_read_timeout},
        {"requests_racing_the_header_timeout", requests_racing_the_header_timeout},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

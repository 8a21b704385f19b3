/* Stale handles under churn: while connections open and close as fast as
 * clients can make them, in a table small enough that every slot is reused
 * hundreds of times, other threads keep calling evmpm_conn_set_user,
 * evmpm_conn_get_user and evmpm_conn_fd with handles of connections that
 * are closing or long gone. None of those calls may reach the connection
 * that took the slot over.
 *
 * Every user pointer in this test is the handle it was set through, so a
 * pointer that differs from its connection's own handle is proof that a
 * stale handle reached a newer connection. */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

enum {
    SLOTS = 8,            /* connection_limit: slots are reused constantly */
    CONNECTIONS = 4000,   /* in all, over CLIENTS threads */
    CLIENTS = 4,
    HAMMERS = 2,          /* threads calling the accessors with old handles */
    RECENT = 64,          /* handles the hammers pick from */
};

struct stale_run {
    evmpm_runtime *rt;
    int port;
    int per_client; /* connections each client thread makes */
    atomic_ullong recent[RECENT]; /* handles of recent connections */
    atomic_uint recent_next;
    atomic_int clients_done;
    atomic_long foreign_seen; /* a pointer that named another connection */
    atomic_long closes;
    atomic_long accessor_ok, accessor_stale;
};

static void *tag(evmpm_conn conn) { return (void *)(uintptr_t)conn; }

/* One request ("x\n"), one reply, then a lingering close: connections come
 * and go as fast as the clients make them. */
static void churn_handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, int reason) {
    struct stale_run *run = user_data;
    void *user = NULL;
    char byte;
    (void)reason;
    atomic_store(&run->recent[atomic_fetch_add(&run->recent_next, 1) % RECENT], conn);
    CHECK_OK(evmpm_conn_get_user(rt, conn, &user));
    if (user != NULL && user != tag(conn))
        atomic_fetch_add(&run->foreign_seen, 1);
    CHECK_OK(evmpm_conn_set_user(rt, conn, tag(conn)));
    if (read(fd, &byte, 1) == 1)
        send_str(fd, "y");
    CHECK_OK(evmpm_close(rt, conn));
}

static void churn_on_close(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, void *user) {
    struct stale_run *run = user_data;
    (void)rt, (void)fd;
    if (user != NULL && user != tag(conn))
        atomic_fetch_add(&run->foreign_seen, 1);
    atomic_fetch_add(&run->closes, 1);
}

static void *hammer_main(void *arg) {
    struct stale_run *run = arg;
    unsigned i = 0;
    while (atomic_load(&run->clients_done) < CLIENTS) {
        evmpm_conn h = (evmpm_conn)atomic_load(&run->recent[i++ % RECENT]);
        void *user = NULL;
        int fd = -1, rc;
        /* Under valgrind, which runs one thread at a time, a thread that
         * never yields starves the clients and the runtime. Natively the
         * hammers run flat out: that is what makes the race likely. */
        if (harness_slowdown() > 1)
            sched_yield();
        if (h == 0)
            continue;
        /* A live connection may be tagged through its own handle; a
         * closed one's handle must be refused. */
        rc = evmpm_conn_set_user(run->rt, h, tag(h));
        CHECK(rc == EVMPM_OK || rc == EVMPM_ESTALE);
        rc = evmpm_conn_get_user(run->rt, h, &user);
        CHECK(rc == EVMPM_OK || rc == EVMPM_ESTALE);
        if (rc == EVMPM_OK && user != NULL && user != tag(h))
            atomic_fetch_add(&run->foreign_seen, 1);
        rc = evmpm_conn_fd(run->rt, h, &fd);
        CHECK(rc == EVMPM_OK || rc == EVMPM_ESTALE);
        CHECK(rc != EVMPM_OK || fd >= 0);
        atomic_fetch_add(rc == EVMPM_OK ? &run->accessor_ok : &run->accessor_stale, 1);
    }
    return NULL;
}

static void *client_main(void *arg) {
    struct stale_run *run = arg;
    char byte;
    int i;
    for (i = 0; i < run->per_client; i++) {
        int fd = connect_loopback(run->port);
        send_str(fd, "x");
        recv_exact(fd, &byte, 1, 10000);
        CHECK_EQ(byte, 'y');
        CHECK(wait_closed(fd, 10000));
        close(fd);
    }
    atomic_fetch_add(&run->clients_done, 1);
    return NULL;
}

static void stale_handles_never_reach_a_newer_connection(void) {
    static struct stale_run run;
    pthread_t clients[CLIENTS], hammers[HAMMERS];
    evmpm_config cfg;
    evmpm_stats st;
    int lfd, i;

    /* Fewer under valgrind, which is ten times slower: the race is the
     * same, only run fewer times. */
    run.per_client = CONNECTIONS / CLIENTS / harness_slowdown();
    lfd = listen_loopback(128, &run.port);
    CHECK_OK(evmpm_config_init(&cfg, sizeof cfg));
    cfg.handler = churn_handler;
    cfg.on_close = churn_on_close;
    cfg.user_data = &run;
    cfg.worker_threads = 4;
    cfg.connection_limit = SLOTS;
    CHECK_OK(evmpm_create(&cfg, &run.rt));
    CHECK_OK(evmpm_register_listener(run.rt, lfd));
    CHECK_OK(evmpm_start(run.rt));

    for (i = 0; i < HAMMERS; i++)
        CHECK(pthread_create(&hammers[i], NULL, hammer_main, &run) == 0);
    for (i = 0; i < CLIENTS; i++)
        CHECK(pthread_create(&clients[i], NULL, client_main, &run) == 0);
    for (i = 0; i < CLIENTS; i++)
        CHECK(pthread_join(clients[i], NULL) == 0);
    for (i = 0; i < HAMMERS; i++)
        CHECK(pthread_join(hammers[i], NULL) == 0);

    WAIT_UNTIL(atomic_load(&run.closes) == run.per_client * CLIENTS, 10000);
    CHECK_OK(evmpm_get_stats(run.rt, &st, sizeof st));
    CHECK_EQ(st.accepted, (uint64_t)(run.per_client * CLIENTS));
    printf("figure: %d connections through %d slots; %ld accessor calls with recent handles "
           "(%ld on live connections, %ld refused as stale); %ld foreign pointers seen\n",
           run.per_client * CLIENTS, SLOTS, atomic_load(&run.accessor_ok) + atomic_load(&run.accessor_stale),
           atomic_load(&run.accessor_ok), atomic_load(&run.accessor_stale),
           atomic_load(&run.foreign_seen));
    /* Both outcomes occurred, so the race was really run. */
    CHECK(atomic_load(&run.accessor_stale) > 0);
    CHECK_EQ(atomic_load(&run.foreign_seen), 0);
    CHECK_OK(evmpm_stop(run.rt, 5000));
    CHECK_OK(evmpm_destroy(run.rt));
    close(lfd);
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"stale_handles_never_reach_a_newer_connection",
         stale_handles_never_reach_a_newer_connection},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

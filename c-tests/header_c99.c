/* The public header as a C99 host sees it: compiled (not linked) with
 * -std=c99 -Wall -Wextra -Werror -pedantic. It must be self-contained
 * (included first, before any system header), idempotent (included twice)
 * and declare everything a host uses in ordinary C. */
#include "evmpm.h"
#include "evmpm.h"

#include <stddef.h>

/* C99 has no static assertions: a negative array size fails instead. */
#define HEADER_ASSERT(name, cond) typedef char header_assert_##name[(cond) ? 1 : -1]

HEADER_ASSERT(conn_is_64_bits, sizeof(evmpm_conn) == 8);
HEADER_ASSERT(codes_are_negative, EVMPM_EINVAL < 0 && EVMPM_EINTERNAL < 0 && EVMPM_OK == 0);
HEADER_ASSERT(wake_reasons_differ, EVMPM_WAKE_NEW != EVMPM_WAKE_READABLE &&
                                       EVMPM_WAKE_BUFFERED != EVMPM_WAKE_RESUMED);
HEADER_ASSERT(verdicts_are_ordered,
              EVMPM_REQUEST_REJECT < EVMPM_REQUEST_INCOMPLETE &&
                  EVMPM_REQUEST_INCOMPLETE < EVMPM_REQUEST_COMPLETE);
HEADER_ASSERT(write_flags_are_bits, (EVMPM_WRITE_KEEPALIVE & EVMPM_WRITE_BUFFERED) == 0);
HEADER_ASSERT(version_is_set, EVMPM_VERSION_MAJOR >= 0 &&
                                  EVMPM_VERSION_MINOR >= 0 && EVMPM_VERSION_PATCH >= 0);
HEADER_ASSERT(stats_are_counters, sizeof(((evmpm_stats *)0)->accepted) == 8);

static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, int reason) {
    static const char reply[] = "hello\n";
    (void)user_data;
    (void)fd;
    if (reason == EVMPM_WAKE_RESUMED)
        evmpm_close(rt, conn);
    else if (evmpm_complete_write(rt, conn, reply, sizeof reply - 1, NULL, NULL,
                                  EVMPM_WRITE_KEEPALIVE) != EVMPM_OK)
        evmpm_park_keepalive(rt, conn, EVMPM_PARK_BUFFERED);
    else
        evmpm_suspend(rt, conn);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, void *conn_user) {
    (void)user_data;
    (void)rt;
    (void)conn;
    (void)fd;
    (void)conn_user;
}

static int ready(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                 size_t len) {
    (void)user_data;
    (void)conn;
    (void)conn_user;
    return len > 0 && data[len - 1] == '\n' ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

static void release(void *arg) { (void)arg; }

/* Uses every declaration the way a host would; never called. */
int header_c99_host(int listen_fd);
int header_c99_host(int listen_fd) {
    evmpm_config cfg;
    evmpm_runtime *rt = NULL;
    evmpm_stats st;
    evmpm_conn conn = 0;
    evmpm_release_fn rel = release;
    void *user = NULL;
    int fd = -1, rc;
    const char *text;
    if (evmpm_config_init(&cfg, sizeof cfg) != EVMPM_OK || cfg.size != sizeof cfg)
        return EVMPM_EVERSION;
    cfg.worker_threads = 4;
    cfg.keepalive_timeout_ms = 5000;
    cfg.read_timeout_ms = 60000;
    cfg.write_timeout_ms = 60000;
    cfg.linger_timeout_ms = 2000;
    cfg.async_request_worker_factor = 1.5;
    cfg.connection_limit = 1024;
    cfg.keepalive_shed_ms = 100;
    cfg.worker_stack_size = (size_t)1 << 20;
    cfg.handler = handler;
    cfg.on_close = on_close;
    cfg.user_data = &cfg;
    cfg.request_ready = ready;
    cfg.header_timeout_ms = 20000;
    cfg.request_peek_bytes = 8192;
    rc = evmpm_create(&cfg, &rt);
    if (rc != EVMPM_OK)
        return rc;
    rc = evmpm_register_listener(rt, listen_fd);
    if (rc == EVMPM_OK)
        rc = evmpm_start(rt);
    evmpm_conn_set_user(rt, conn, &cfg);
    evmpm_conn_get_user(rt, conn, &user);
    evmpm_conn_fd(rt, conn, &fd);
    evmpm_hand_back_to_worker(rt, conn);
    evmpm_complete_write(rt, conn, "x", 1, rel, NULL, EVMPM_WRITE_BUFFERED);
    {
        /* A head and a body gathered, and a head then a file. */
        evmpm_iovec parts[2];
        parts[0].base = "head";
        parts[0].len = 4;
        parts[1].base = NULL;
        parts[1].len = 0;
        evmpm_complete_writev(rt, conn, parts, 2, rel, NULL, EVMPM_WRITE_KEEPALIVE);
        evmpm_complete_sendfile(rt, conn, parts, 1, fd, (uint64_t)0, (uint64_t)4096, rel, NULL,
                                EVMPM_WRITE_KEEPALIVE);
        if (EVMPM_IOV_MAX < 2)
            return EVMPM_EINVAL;
    }
    evmpm_get_stats(rt, &st, sizeof st);
    rc = (int)(st.connections + st.conns_reading + st.conns_queued + st.conns_in_handler +
               st.conns_writing + st.conns_keepalive + st.conns_lingering + st.conns_suspended +
               st.workers_busy + st.workers_idle + st.accepted + st.closed + st.timed_out +
               st.keepalive_expired + st.shed + st.refused + st.rejected + st.accept_pauses +
               st.accept_backoffs + st.accepting_paused);
    if (evmpm_stop(rt, 1000) == EVMPM_ETIMEDOUT)
        rc = EVMPM_ETIMEDOUT;
    evmpm_destroy(rt);
    text = evmpm_strerror(rc);
    return text[0] == '\0' ? EVMPM_EINTERNAL : (int)evmpm_version()[0];
}

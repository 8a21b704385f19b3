// The public header as a C++ host sees it: compiled (not linked) with the
// C++ compiler and -Wall -Wextra -Werror -pedantic. Its declarations must
// have C linkage (extern "C" in the header), and C++'s stricter rules
// (no implicit void* conversions, distinct enum and integer types) must
// hold for the macros, types and callbacks.
#include "evmpm.h"
#include "evmpm.h"

#include <cstddef>

static_assert(sizeof(evmpm_conn) == 8, "a handle is 64 bits");
static_assert(EVMPM_OK == 0 && EVMPM_EINVAL < 0 && EVMPM_EINTERNAL < 0, "error codes");
static_assert(EVMPM_REQUEST_REJECT < EVMPM_REQUEST_INCOMPLETE &&
                  EVMPM_REQUEST_INCOMPLETE < EVMPM_REQUEST_COMPLETE,
              "request-readiness verdicts");
static_assert((EVMPM_WRITE_KEEPALIVE & EVMPM_WRITE_BUFFERED) == 0, "write flags are bits");

// Callbacks a C++ host writes: C language linkage, so their types match
// the header's function pointer types exactly; static, so internal.
extern "C" {

static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, int reason) {
    static const char reply[] = "hello\n";
    static_cast<void>(user_data);
    static_cast<void>(fd);
    if (reason == EVMPM_WAKE_NEW || reason == EVMPM_WAKE_READABLE)
        evmpm_complete_write(rt, conn, reply, sizeof reply - 1, nullptr, nullptr,
                             EVMPM_WRITE_KEEPALIVE);
    else
        evmpm_park_keepalive(rt, conn, EVMPM_PARK_BUFFERED);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd,
                     void *conn_user) {
    static_cast<void>(user_data);
    static_cast<void>(rt);
    static_cast<void>(conn);
    static_cast<void>(fd);
    delete static_cast<int *>(conn_user);
}

static int ready(void *user_data, evmpm_conn conn, void *conn_user, const uint8_t *data,
                 size_t len) {
    static_cast<void>(user_data);
    static_cast<void>(conn);
    static_cast<void>(conn_user);
    return len > 0 && data[len - 1] == '\n' ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

} // extern "C"

// Uses the declarations the way a host would; never called.
int header_cxx_host(int listen_fd);
int header_cxx_host(int listen_fd) {
    evmpm_config cfg;
    if (evmpm_config_init(&cfg, sizeof cfg) != EVMPM_OK)
        return EVMPM_EINVAL;
    cfg.handler = handler;
    cfg.on_close = on_close;
    cfg.request_ready = ready;
    cfg.async_request_worker_factor = 2.0;
    evmpm_runtime *rt = nullptr;
    int rc = evmpm_create(&cfg, &rt);
    if (rc != EVMPM_OK)
        return rc;
    rc = evmpm_register_listener(rt, listen_fd);
    if (rc == EVMPM_OK)
        rc = evmpm_start(rt);
    evmpm_conn conn = 0;
    void *user = nullptr;
    int fd = -1;
    evmpm_conn_set_user(rt, conn, new int(1));
    evmpm_conn_get_user(rt, conn, &user);
    evmpm_conn_fd(rt, conn, &fd);
    evmpm_suspend(rt, conn);
    // A head and a body gathered, and a head then a file; the buffers
    // brace-initialized in field order (base, len).
    static const char head[] = "HTTP/1.1 200 OK\r\n\r\n";
    const evmpm_iovec parts[2] = {{head, sizeof head - 1}, {nullptr, 0}};
    static_assert(EVMPM_IOV_MAX >= 2, "two buffers fit");
    evmpm_complete_writev(rt, conn, parts, 2, nullptr, nullptr, EVMPM_WRITE_KEEPALIVE);
    evmpm_complete_sendfile(rt, conn, parts, 1, fd, 0, 4096, nullptr, nullptr, 0);
    evmpm_hand_back_to_worker(rt, conn);
    evmpm_close(rt, conn);
    evmpm_stats st = evmpm_stats();
    evmpm_get_stats(rt, &st, sizeof st);
    evmpm_stop(rt, 1000);
    evmpm_destroy(rt);
    const char *text = evmpm_strerror(rc);
    return text[0] != '\0' && evmpm_version()[0] != '\0' ? static_cast<int>(st.accepted) : -1;
}

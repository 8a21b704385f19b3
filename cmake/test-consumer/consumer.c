/* A small C server using an installed evmpm: it serves one request on a
 * loopback port, fetches it as its own client, and stops. It exits 0 only
 * if all of that worked and the library's version matches the header's.
 * tests/packaging.rs builds it through pkg-config and through CMake. */
#define _POSIX_C_SOURCE 200809L

#include <evmpm.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char request[] = "hello\n";
static const char response[] = "hello from evmpm\n";

static atomic_int handled;
static atomic_int closed;

/* Reads the request line, then hands the response to the runtime, which
 * sends it and closes the connection. */
static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn,
                    int fd, int reason) {
    char buf[64];
    size_t got = 0;
    (void)user_data;
    while (got < sizeof buf && (got == 0 || buf[got - 1] != '\n')) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (reason != EVMPM_WAKE_NEW || got != strlen(request) ||
        memcmp(buf, request, got) != 0) {
        evmpm_close(rt, conn);
        return;
    }
    atomic_fetch_add(&handled, 1);
    if (evmpm_complete_write(rt, conn, response, strlen(response), NULL,
                             NULL, 0) != EVMPM_OK)
        evmpm_close(rt, conn);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn conn,
                     int fd, void *conn_user) {
    (void)user_data;
    (void)rt;
    (void)conn;
    (void)fd;
    (void)conn_user;
    atomic_fetch_add(&closed, 1);
}

static int failed(const char *what) {
    fprintf(stderr, "consumer: %s\n", what);
    return 1;
}

static int evmpm_failed(const char *call, int rc) {
    fprintf(stderr, "consumer: %s: %s\n", call, evmpm_strerror(rc));
    return 1;
}

static int os_failed(const char *call) {
    fprintf(stderr, "consumer: %s: %s\n", call, strerror(errno));
    return 1;
}

int main(void) {
    char header_version[32];
    char reply[64];
    size_t got = 0;
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    struct timeval limit = {10, 0};
    evmpm_config cfg;
    evmpm_runtime *rt = NULL;
    int listener, client, rc;

    snprintf(header_version, sizeof header_version, "%d.%d.%d",
             EVMPM_VERSION_MAJOR, EVMPM_VERSION_MINOR, EVMPM_VERSION_PATCH);
    if (strcmp(evmpm_version(), header_version) != 0) {
        fprintf(stderr, "consumer: library %s, header %s\n", evmpm_version(),
                header_version);
        return 1;
    }

    if ((rc = evmpm_config_init(&cfg, sizeof cfg)) != EVMPM_OK)
        return evmpm_failed("evmpm_config_init", rc);
    cfg.worker_threads = 2;
    cfg.handler = handler;
    cfg.on_close = on_close;
    if ((rc = evmpm_create(&cfg, &rt)) != EVMPM_OK)
        return evmpm_failed("evmpm_create", rc);

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0)
        return os_failed("socket");
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0)
        return os_failed("bind");
    if (listen(listener, 16) != 0)
        return os_failed("listen");
    if (getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
        return os_failed("getsockname");
    if ((rc = evmpm_register_listener(rt, listener)) != EVMPM_OK)
        return evmpm_failed("evmpm_register_listener", rc);
    if ((rc = evmpm_start(rt)) != EVMPM_OK)
        return evmpm_failed("evmpm_start", rc);

    client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0)
        return os_failed("socket");
    if (setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) != 0 ||
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit) != 0)
        return os_failed("setsockopt");
    if (connect(client, (struct sockaddr *)&addr, sizeof addr) != 0)
        return os_failed("connect");
    if (write(client, request, strlen(request)) != (ssize_t)strlen(request))
        return os_failed("write");
    /* The server closes after the response: read to the end. */
    for (;;) {
        ssize_t n = read(client, reply + got, sizeof reply - 1 - got);
        if (n < 0)
            return os_failed("read");
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == sizeof reply - 1)
            break;
    }
    reply[got] = '\0';
    close(client);
    if (strcmp(reply, response) != 0) {
        fprintf(stderr, "consumer: got \"%s\"\n", reply);
        return 1;
    }

    if ((rc = evmpm_stop(rt, 5000)) != EVMPM_OK)
        return evmpm_failed("evmpm_stop", rc);
    if (atomic_load(&handled) != 1)
        return failed("the handler did not serve exactly one request");
    if (atomic_load(&closed) != 1)
        return failed("the close callback did not run exactly once");
    if ((rc = evmpm_destroy(rt)) != EVMPM_OK)
        return evmpm_failed("evmpm_destroy", rc);
    close(listener);

    printf("evmpm %s: ok\n", evmpm_version());
    return 0;
}

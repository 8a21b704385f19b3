/* A program built against evmpm 0.2.0's header, kept as it was.
 *
 * evmpm-0.2.0.h next to this file is a verbatim copy of include/evmpm.h as
 * 0.2.0 released it: the frozen 0.2 ABI. It is never regenerated, edited or
 * replaced by a newer header; later versions of the library must keep
 * serving a program built against it, and this program is that program.
 * It is compiled with this directory as its only include path (never
 * include/), linked with the library of the day, and shares no code with
 * the test harness (which follows the current header).
 *
 * What it proves, each part over real loopback sockets where it serves:
 *   (a) evmpm_config_init and evmpm_create touch exactly the bytes of the
 *       0.2.0 evmpm_config: the struct ends where a PROT_NONE page begins,
 *       so a read or write past it crashes the program. The runtime keeps
 *       no pointer into it either: once created, the whole page is made
 *       inaccessible and the runtime serves a request and stops.
 *   (b) evmpm_get_stats writes exactly the 0.2.0 evmpm_stats, into a struct
 *       ending at a PROT_NONE page, and its counters are right.
 *   (c) A program built against a newer header (a struct with one more
 *       field) gets that field zeroed by evmpm_config_init, is accepted by
 *       evmpm_create while the field stays zero, and is refused with
 *       EVMPM_EVERSION once it sets it (a library that does not know a
 *       field must not pretend to obey it).
 *   (d) A size smaller than the 0.2.0 layout is refused with EVMPM_EVERSION
 *       by evmpm_config_init (which writes nothing past that size) and by
 *       evmpm_create (which reads nothing past it).
 * Any failure exits non-zero naming the check; "ok" lines mark each part.
 */
#define _GNU_SOURCE
#include "evmpm-0.2.0.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- checks ------------------------------------------------------------- */

static void fail(int line, const char *what) {
    fprintf(stderr, "old_program.c:%d: %s (errno %d)\n", line, what, errno);
    fflush(stderr);
    _exit(1);
}

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond))                                                         \
            fail(__LINE__, "CHECK(" #cond ")");                              \
    } while (0)

#define CHECK_CODE(call, want)                                               \
    do {                                                                     \
        int check_rc_ = (call);                                              \
        if (check_rc_ != (want)) {                                           \
            fprintf(stderr, "%s returned %d (%s), expected %d\n", #call,     \
                    check_rc_, evmpm_strerror(check_rc_), (int)(want));      \
            fail(__LINE__, #call);                                           \
        }                                                                    \
    } while (0)

/* Deadlines stretch under valgrind, as the test runner asks. */
static int slowdown(void) {
    const char *s = getenv("EVMPM_TEST_SLOWDOWN");
    int v = s ? atoi(s) : 1;
    return v > 0 ? v : 1;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- guarded memory ------------------------------------------------------- */

/* `size` bytes that end exactly where a PROT_NONE page begins, filled with
 * garbage (0xa5) so that nothing reads as zero by luck. `page` receives the
 * start of the accessible page, for munmap(page, 2 pages). */
static void *before_guard_page(size_t size, char **page) {
    long ps = sysconf(_SC_PAGESIZE);
    char *m;
    CHECK(ps > 0 && size <= (size_t)ps);
    m = mmap(NULL, 2 * (size_t)ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    CHECK(mprotect(m + ps, (size_t)ps, PROT_NONE) == 0);
    memset(m, 0xa5, (size_t)ps);
    *page = m;
    /* Every size used here is a multiple of 8, so the struct is aligned. */
    CHECK(size % 8 == 0);
    return m + ps - size;
}

static void release_pages(char *page) {
    CHECK(munmap(page, 2 * (size_t)sysconf(_SC_PAGESIZE)) == 0);
}

/* ---- a one-request server -------------------------------------------------- */

static atomic_int handled, closed;

/* Reads "PING\n", answers "PONG\n", closes. */
static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, int reason) {
    char c = 0;
    CHECK(user_data == &handled);
    CHECK(reason == EVMPM_WAKE_NEW);
    while (c != '\n') {
        ssize_t n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
    }
    if (c == '\n')
        CHECK(send(fd, "PONG\n", 5, MSG_NOSIGNAL) == 5);
    atomic_fetch_add(&handled, 1);
    CHECK_CODE(evmpm_close(rt, conn), EVMPM_OK);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, void *conn_user) {
    (void)rt, (void)conn, (void)conn_user;
    CHECK(user_data == &handled);
    CHECK(fd >= 0);
    atomic_fetch_add(&closed, 1);
}

static int listen_loopback(int *port) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(fd, 16) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* One client: PING, then the whole answer and the end of the stream within
 * a deadline. */
static void one_request(int port) {
    struct sockaddr_in a;
    char got[16];
    size_t used = 0;
    long long deadline = now_ms() + 5000LL * slowdown();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(send(fd, "PING\n", 5, MSG_NOSIGNAL) == 5);
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        long long left = deadline - now_ms();
        ssize_t n;
        if (left <= 0)
            fail(__LINE__, "no answer, or no end of stream, before the deadline");
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        n = recv(fd, got + used, sizeof got - 1 - used, 0);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n >= 0);
        if (n == 0)
            break;
        used += (size_t)n;
        CHECK(used < sizeof got - 1);
    }
    got[used] = '\0';
    CHECK(strcmp(got, "PONG\n") == 0);
    close(fd);
}

/* ---- (a) and (b) ------------------------------------------------------------ */

static void serve_with_guarded_structs(void) {
    char *cfg_page, *stats_page;
    evmpm_config *cfg = before_guard_page(sizeof *cfg, &cfg_page);
    evmpm_stats *st = before_guard_page(sizeof *st, &stats_page);
    evmpm_runtime *rt = NULL;
    long long deadline;
    int lfd, port;

    CHECK_CODE(evmpm_config_init(cfg, sizeof *cfg), EVMPM_OK);
    CHECK(cfg->size == sizeof *cfg);
    /* The defaults this header documents. */
    CHECK(cfg->worker_threads == 256);
    CHECK(cfg->linger_timeout_ms == 2000);
    CHECK(cfg->request_peek_bytes == 8192);
    CHECK(cfg->handler == NULL && cfg->on_close == NULL && cfg->log == NULL);
    CHECK(cfg->user_data == NULL && cfg->request_ready == NULL);
    cfg->worker_threads = 2;
    cfg->handler = handler;
    cfg->on_close = on_close;
    cfg->user_data = &handled;
    CHECK_CODE(evmpm_create(cfg, &rt), EVMPM_OK);
    CHECK(rt != NULL);
    /* "cfg stays the caller's (it is copied)": from here on any access to
     * it crashes. */
    CHECK(mprotect(cfg_page, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE) == 0);
    printf("ok (a) config init and create read and wrote only the 0.2.0 struct\n");

    lfd = listen_loopback(&port);
    CHECK_CODE(evmpm_register_listener(rt, lfd), EVMPM_OK);
    CHECK_CODE(evmpm_start(rt), EVMPM_OK);
    one_request(port);
    deadline = now_ms() + 5000LL * slowdown();
    while (atomic_load(&closed) != 1) {
        if (now_ms() > deadline)
            fail(__LINE__, "the close callback did not run");
        sleep_ms(1);
    }
    CHECK(atomic_load(&handled) == 1);
    CHECK_CODE(evmpm_get_stats(rt, st, sizeof *st), EVMPM_OK);
    CHECK(st->accepted == 1);
    CHECK(st->internal_errors == 0);
    CHECK_CODE(evmpm_stop(rt, 5000), EVMPM_OK);
    memset(st, 0xa5, sizeof *st);
    CHECK_CODE(evmpm_get_stats(rt, st, sizeof *st), EVMPM_OK);
    CHECK(st->accepted == 1);
    CHECK(st->closed == 1);
    CHECK(st->connections == 0);
    CHECK(st->internal_errors == 0);
    CHECK_CODE(evmpm_destroy(rt), EVMPM_OK);
    close(lfd);
    printf("ok (a) a runtime from the guarded config served a request and stopped\n");
    printf("ok (b) get_stats wrote only the 0.2.0 struct: accepted %llu closed %llu\n",
           (unsigned long long)st->accepted, (unsigned long long)st->closed);
    release_pages(cfg_page);
    release_pages(stats_page);
}

/* ---- (c) a program built against a newer header ------------------------------ */

struct newer_config {
    evmpm_config base;
    uint64_t future_field;
};

static void newer_header(void) {
    char *page;
    struct newer_config *n = before_guard_page(sizeof *n, &page);
    evmpm_runtime *rt = NULL;
    CHECK(sizeof *n == sizeof(evmpm_config) + 8); /* no padding in between */
    CHECK_CODE(evmpm_config_init(&n->base, sizeof *n), EVMPM_OK);
    CHECK(n->base.size == sizeof *n);
    CHECK(n->future_field == 0);
    CHECK(n->base.worker_threads == 256);
    n->base.worker_threads = 1;
    n->base.handler = handler;
    CHECK_CODE(evmpm_create(&n->base, &rt), EVMPM_OK);
    CHECK(rt != NULL);
    CHECK_CODE(evmpm_destroy(rt), EVMPM_OK);
    /* Set: a field this library does not know. Any byte of it counts. */
    n->future_field = 1;
    rt = (evmpm_runtime *)n; /* garbage, must come back NULL */
    CHECK_CODE(evmpm_create(&n->base, &rt), EVMPM_EVERSION);
    CHECK(rt == NULL);
    n->future_field = (uint64_t)0x80 << 56;
    CHECK_CODE(evmpm_create(&n->base, &rt), EVMPM_EVERSION);
    CHECK(rt == NULL);
    release_pages(page);
    printf("ok (c) a newer header's extra field: zeroed by init, accepted while zero, "
           "EVMPM_EVERSION once set\n");
}

/* ---- (d) a size below the oldest layout ---------------------------------------- */

static void too_small(void) {
    size_t small = sizeof(evmpm_config) - 8;
    evmpm_config full;
    evmpm_runtime *rt = NULL;
    char *page;
    /* Only `small` bytes exist before the guard page. */
    evmpm_config *cfg = before_guard_page(small, &page);
    CHECK_CODE(evmpm_config_init(cfg, small), EVMPM_EVERSION);
    CHECK_CODE(evmpm_config_init(&full, sizeof full), EVMPM_OK);
    full.handler = handler;
    full.size = (uint32_t)small;
    memcpy(cfg, &full, small);
    rt = (evmpm_runtime *)&full;
    CHECK_CODE(evmpm_create(cfg, &rt), EVMPM_EVERSION);
    CHECK(rt == NULL);
    release_pages(page);
    printf("ok (d) size %zu (below %zu) refused by init and create\n", small,
           sizeof(evmpm_config));
}

int main(void) {
    printf("built against evmpm %d.%d.%d, running with library %s\n", EVMPM_VERSION_MAJOR,
           EVMPM_VERSION_MINOR, EVMPM_VERSION_PATCH, evmpm_version());
    fflush(stdout);
    serve_with_guarded_structs();
    fflush(stdout);
    newer_header();
    fflush(stdout);
    too_small();
    printf("ok\n");
    return 0;
}

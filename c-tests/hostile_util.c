#define _GNU_SOURCE
#include "hostile_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- figures ---------------------------------------------------------- */

void figure(const char *fmt, ...) {
    va_list ap;
    printf("figure: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

long vm_rss_kb(void) {
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    CHECK(f != NULL);
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    fclose(f);
    CHECK(kb > 0);
    return kb;
}

int runtime_thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    CHECK(d != NULL);
    while ((e = readdir(d)) != NULL) {
        char path[300], name[32] = "";
        FILE *f;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue; /* the thread exited meanwhile */
        if (fgets(name, sizeof name, f) != NULL && strncmp(name, "evmpm-", 6) == 0)
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

int64_t process_cpu_us(void) {
    struct rusage ru;
    CHECK(getrusage(RUSAGE_SELF, &ru) == 0);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

int highest_fd(void) {
    int most = -1, self;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    CHECK(d != NULL);
    self = dirfd(d);
    while ((e = readdir(d)) != NULL) {
        int fd;
        if (e->d_name[0] == '.')
            continue;
        fd = atoi(e->d_name);
        if (fd != self && fd > most)
            most = fd;
    }
    closedir(d);
    return most;
}

/* ---- clients ---------------------------------------------------------- */

int connect_start(int port) {
    struct sockaddr_in a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        return -err;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void set_blocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    CHECK(flags >= 0);
    CHECK(fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0);
}

int try_send_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

/* 1 when readable, TRY_TIMEOUT at the deadline. */
static int readable_by(int fd, int64_t deadline) {
    for (;;) {
        struct pollfd p;
        int64_t left = deadline - now_ms();
        int r;
        if (left <= 0)
            return TRY_TIMEOUT;
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        r = poll(&p, 1, (int)left);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            harness_fail(__FILE__, __LINE__, "poll: %s", strerror(errno));
    }
}

int try_recv_line(int fd, char *buf, size_t cap, int ms, size_t *got) {
    size_t used = 0, seen = 0;
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    int rc = 1;
    for (;;) {
        char c;
        ssize_t n;
        rc = readable_by(fd, deadline);
        if (rc != 1)
            break;
        n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n == 0) {
            rc = TRY_EOF;
            break;
        }
        if (n < 0) {
            rc = -errno;
            break;
        }
        seen++;
        if (c == '\n') {
            rc = 1;
            break;
        }
        if (used + 1 < cap)
            buf[used++] = c;
    }
    buf[used] = '\0';
    if (got != NULL)
        *got = seen;
    return rc;
}

int try_recv_exact(int fd, void *buf, size_t len, int ms) {
    char *p = buf;
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    while (len > 0) {
        ssize_t n;
        int rc = readable_by(fd, deadline);
        if (rc != 1)
            return rc;
        n = recv(fd, p, len, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n == 0)
            return TRY_EOF;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

int try_recv_eof(int fd, int ms) {
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    for (;;) {
        char c;
        ssize_t n;
        int rc = readable_by(fd, deadline);
        if (rc != 1)
            return rc;
        n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n == 0)
            return 1;
        if (n < 0)
            return -errno;
        harness_fail(__FILE__, __LINE__, "expected the end of the stream, got byte 0x%02x",
                     (unsigned char)c);
    }
}

int big_pattern_ok(const char *buf, size_t len, size_t offset) {
    size_t i;
    for (i = 0; i < len; i++)
        if (buf[i] != (char)('a' + (offset + i) % 26))
            return 0;
    return 1;
}

enum line_command_result sndbuf_command(struct line_server *s, evmpm_conn c, int fd,
                                        const char *line) {
    int bytes;
    (void)s, (void)c;
    if (sscanf(line, "SNDBUF %d", &bytes) != 1)
        return LINE_UNKNOWN;
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) == 0);
    line_reply(fd, "SNDBUF\n");
    return LINE_PARK;
}

/* ---- PRNG ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rng_seed(struct rng *r, uint64_t seed) {
    int i;
    for (i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** */
uint64_t rng_next(struct rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint32_t rng_below(struct rng *r, uint32_t n) {
    CHECK(n > 0);
    return (uint32_t)((rng_next(r) >> 32) % n);
}

uint64_t seed_from_env(const char *var) {
    const char *v = getenv(var);
    struct timespec ts;
    if (v != NULL && *v != '\0')
        return strtoull(v, NULL, 0);
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
}

/* ---- bookkeeping -------------------------------------------------------- */

void expect_all_closed(struct line_server *s, int ms) {
    int64_t deadline = now_ms() + (int64_t)ms * harness_slowdown();
    evmpm_stats st;
    /* The counters are bumped after the slot is freed, so wait for all of
     * them to agree rather than reading them once. */
    for (;;) {
        st = line_server_stats(s);
        if (st.connections == 0 && st.closed == st.accepted &&
            atomic_load(&s->closes) == (long)st.accepted)
            break;
        if (now_ms() > deadline)
            harness_fail(__FILE__, __LINE__,
                         "after %d ms: %llu connections open, accepted %llu, closed %llu, "
                         "close callbacks %ld",
                         ms, (unsigned long long)st.connections, (unsigned long long)st.accepted,
                         (unsigned long long)st.closed, atomic_load(&s->closes));
        sleep_ms(1);
    }
    if (atomic_load(&s->double_closes) != 0)
        harness_fail(__FILE__, __LINE__, "%ld connections had a second close callback",
                     atomic_load(&s->double_closes));
}

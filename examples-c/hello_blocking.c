/*
 * hello_blocking.c and hello_evmpm.c: one HTTP/1.1 server, before and after
 * adopting evmpm. `diff hello_blocking.c hello_evmpm.c` shows what it costs.
 *
 * Every request gets the same 100-byte body. Connections stay open
 * (keep-alive) until the client sends "Connection: close", speaks HTTP/1.0
 * without "Connection: keep-alive", or stays silent for IO_TIMEOUT_S.
 * Pipelined requests are answered in order from a per-connection buffer.
 * A request for /slow is answered after a sleep of HELLO_SLOW_MS
 * milliseconds (default 5): a handler that waits on a backend, for the
 * benchmark's blocking loads.
 *
 * hello_blocking.c gives each connection a thread for its whole life, idle
 * or not, and serves at most WORKERS connections at once (Apache's
 * MaxRequestWorkers): a few idle keep-alive clients lock everybody else out.
 * hello_evmpm.c runs serve_one_request on one of at most WORKERS threads
 * only while a connection has a request: idle connections wait on evmpm's
 * event thread, and so do clients still sending their request head
 * (request_ready).
 *
 * Arguments: PORT [WORKERS]   (listens on 127.0.0.1). Without WORKERS,
 * hello_blocking.c takes 16 and hello_evmpm.c evmpm's default.
 * SIGINT or SIGTERM: stop accepting, let requests in flight finish, exit 0.
 */
#define _GNU_SOURCE /* memmem, accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 8192     /* the largest request head we accept */
#define IO_TIMEOUT_S 5    /* a stalled or silent client is dropped after this */
#define STOP_DEADLINE_MS 5000

static const char BODY[] =
    "Hello from a C server. This body is 100 bytes long and the same for every request, on every socket.\n";
_Static_assert(sizeof BODY - 1 == 100, "the body is 100 bytes");

/* One client connection. buf holds bytes read but not yet served: the rest
   of a request, or whole pipelined requests that came in the same read. It
   exists only while there are such bytes, so an idle connection costs just
   this small record. */
struct conn {
    int fd;
    size_t len;
    char *buf; /* HEAD_MAX bytes, or NULL */
};

/* ---- request reading and response writing -------------------------------- */

/* The length of the request head at the start of buf, through its blank
   line, or 0 while the head is incomplete. */
static size_t head_length(const void *buf, size_t len) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    return end ? (size_t)(end - (const char *)buf) + 4 : 0;
}

/* Sends all of buf. MSG_NOSIGNAL: a client that went away is an error code,
   not a SIGPIPE that kills the whole server. Returns 0 on failure. */
static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        buf += n;
        len -= (size_t)n;
    }
    return 1;
}

/* 1 if the comma-separated header value [v, v+n) lists `token` (any case). */
static int has_token(const char *v, size_t n, const char *token) {
    size_t tlen = strlen(token);
    while (n > 0) {
        size_t i = 0, end;
        while (i < n && (v[i] == ' ' || v[i] == '\t'))
            i++;
        end = i;
        while (end < n && v[end] != ',')
            end++;
        {
            size_t e = end;
            while (e > i && (v[e - 1] == ' ' || v[e - 1] == '\t'))
                e--;
            if (e - i == tlen && strncasecmp(v + i, token, tlen) == 0)
                return 1;
        }
        if (end == n)
            break;
        v += end + 1;
        n -= end + 1;
    }
    return 0;
}

/* What serve_one_request leaves the connection in. */
enum next {
    CLOSE,    /* it must be closed */
    LAST,     /* answered, and the client said it was its last request: close */
    KEEP,     /* open, waiting for the client's next request */
    BUFFERED, /* open, and (part of) the next request is in buf already */
};

/* What serve_one_request needs to know about a request. */
struct request {
    int head_only;   /* HEAD: no body in the response */
    int http10;      /* HTTP/1.0: keep-alive must be said explicitly */
    int keep_alive;  /* the client may send another request */
    int has_body;    /* we do not read request bodies: answer, then close */
    int slow;        /* the target is /slow: answer after a sleep */
};

/* Parses the head [buf, buf+len) (which ends with CRLF CRLF). Returns 0, or
   -1 for a malformed request. Only what this server needs is looked at, but
   every line is checked for shape so garbage is never mistaken for HTTP. */
static int parse_request(const char *buf, size_t len, struct request *r) {
    const char *line = buf, *end = buf + len - 2, *eol, *sp1, *sp2;
    int conn_close = 0, conn_keep = 0;

    /* Request line: METHOD SP TARGET SP HTTP/1.x */
    eol = memmem(line, (size_t)(end - line), "\r\n", 2);
    sp1 = memchr(line, ' ', (size_t)(eol - line));
    sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1 ||
        eol - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        (sp2[8] != '0' && sp2[8] != '1'))
        return -1;
    r->http10 = sp2[8] == '0';
    r->head_only = sp1 - line == 4 && memcmp(line, "HEAD", 4) == 0;
    r->slow = sp2 - sp1 == 6 && memcmp(sp1 + 1, "/slow", 5) == 0;
    r->has_body = 0;

    /* Header lines: NAME: VALUE */
    for (line = eol + 2; line < end; line = eol + 2) {
        const char *colon, *v;
        size_t name_len, vlen;
        eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
        colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL || colon == line || line[0] == ' ' || line[0] == '\t' ||
            colon[-1] == ' ' || colon[-1] == '\t')
            return -1;
        name_len = (size_t)(colon - line);
        v = colon + 1;
        vlen = (size_t)(eol - v);
        if (name_len == 10 && strncasecmp(line, "Connection", 10) == 0) {
            conn_close |= has_token(v, vlen, "close");
            conn_keep |= has_token(v, vlen, "keep-alive");
        } else if (name_len == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
            r->has_body = 1;
        } else if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            while (vlen > 0 && (*v == ' ' || *v == '\t' || *v == '0'))
                v++, vlen--;
            r->has_body |= vlen > 0; /* anything but zeros */
        }
    }
    r->keep_alive = !conn_close && (!r->http10 || conn_keep) && !r->has_body;
    return 0;
}

/* Stands for a call to a backend (a database, another service): sleeps
   HELLO_SLOW_MS milliseconds, 5 when the variable is not set. */
static void wait_for_backend(void) {
    const char *env = getenv("HELLO_SLOW_MS");
    long ms = env != NULL ? atol(env) : 5;
    struct timespec left = {ms / 1000, ms % 1000 * 1000000L};
    while (ms > 0 && nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

/* Reads one request on c (blocking) and answers it. */
static enum next serve_one_request(struct conn *c) {
    static const char bad_request[] =
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    static const char too_large[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                    "Content-Length: 0\r\nConnection: close\r\n\r\n";
    char resp[512];
    struct request req;
    size_t head;
    int n;

    if (c->buf == NULL && (c->buf = malloc(HEAD_MAX)) == NULL)
        return CLOSE;
    while ((head = head_length(c->buf, c->len)) == 0) {
        ssize_t got;
        if (c->len == HEAD_MAX) {
            send_all(c->fd, too_large, sizeof too_large - 1);
            return CLOSE;
        }
        got = read(c->fd, c->buf + c->len, HEAD_MAX - c->len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return CLOSE; /* closed, reset, or silent for IO_TIMEOUT_S */
        c->len += (size_t)got;
    }
    if (parse_request(c->buf, head, &req) != 0) {
        send_all(c->fd, bad_request, sizeof bad_request - 1);
        return CLOSE;
    }
    /* The request is taken: keep only what came after it. */
    c->len -= head;
    memmove(c->buf, c->buf + head, c->len);
    if (req.slow)
        wait_for_backend();

    n = snprintf(resp, sizeof resp,
                 "HTTP/1.1 200 OK\r\n"
                 "Content-Type: text/plain\r\n"
                 "Content-Length: %zu\r\n"
                 "%s\r\n",
                 sizeof BODY - 1,
                 !req.keep_alive ? "Connection: close\r\n"
                 : req.http10    ? "Connection: keep-alive\r\n"
                                 : "");
    if (!req.head_only) {
        memcpy(resp + n, BODY, sizeof BODY - 1);
        n += (int)sizeof BODY - 1;
    }
    if (!send_all(c->fd, resp, (size_t)n))
        return CLOSE;
    if (!req.keep_alive)
        return req.has_body || c->len > 0 ? CLOSE : LAST;
    if (c->len > 0)
        return BUFFERED;
    free(c->buf);
    c->buf = NULL;
    return KEEP;
}

/* A new connection's record. The socket timeouts bound how long a silent or
   stalled client can hold the thread serving it. */
static struct conn *conn_new(int fd) {
    struct timeval tv = {IO_TIMEOUT_S, 0};
    struct conn *c = malloc(sizeof *c);
    if (c == NULL)
        return NULL;
    c->fd = fd;
    c->len = 0;
    c->buf = NULL;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return c;
}

static void conn_free(struct conn *c) {
    if (c != NULL)
        free(c->buf);
    free(c);
}

/* A listening socket on 127.0.0.1:port, or -1. */
static int listen_on(int port) {
    struct sockaddr_in a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((unsigned short)port);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 511) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- serving connections ------------------------------------------------- */

/* The connections being served, so that a stop can wake their threads. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int *open_fds; /* max_open slots, -1 when free */
static int max_open, n_open, stopping;

/* Sets up room for `max` connections; 0 if out of memory. */
static int tracking_init(int max) {
    int i;
    open_fds = malloc((size_t)max * sizeof *open_fds);
    for (i = 0; open_fds != NULL && i < max; i++)
        open_fds[i] = -1;
    max_open = max;
    return open_fds != NULL;
}

/* Records fd in a free slot; 0 when the server is stopping. */
static int track(int fd) {
    int i, ok;
    pthread_mutex_lock(&lock);
    ok = !stopping;
    for (i = 0; ok && i < max_open; i++) {
        if (open_fds[i] == -1) {
            open_fds[i] = fd;
            n_open++;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

static void untrack(int fd) {
    int i;
    pthread_mutex_lock(&lock);
    for (i = 0; i < max_open; i++) {
        if (open_fds[i] == fd) {
            open_fds[i] = -1;
            n_open--;
            break;
        }
    }
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static void *connection_thread(void *arg) {
    struct conn *c = arg;
    enum next next;
    while ((next = serve_one_request(c)) != CLOSE && next != LAST) {
    }
    untrack(c->fd);
    close(c->fd);
    conn_free(c);
    return NULL;
}

static void *accept_thread(void *arg) {
    int lfd = *(int *)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        struct conn *c;
        pthread_t t;
        int fd;
        /* Every thread taken: wait for a connection to end. */
        pthread_mutex_lock(&lock);
        while (n_open == max_open && !stopping)
            pthread_cond_wait(&changed, &lock);
        pthread_mutex_unlock(&lock);

        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINVAL) /* the listener was shut down: stopping */
                break;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                struct timespec pause = {0, 10 * 1000 * 1000};
                nanosleep(&pause, NULL); /* out of descriptors: do not spin */
            }
            continue;
        }
        if (!track(fd)) {
            close(fd);
            break;
        }
        c = conn_new(fd);
        if (c == NULL || pthread_create(&t, &attr, connection_thread, c) != 0) {
            untrack(fd);
            close(fd);
            conn_free(c);
        }
    }
    pthread_attr_destroy(&attr);
    return NULL;
}

/* Stops accepting, wakes idle connections (their next read sees end of
   input once the request in flight is answered) and waits for them. */
static void stop_gracefully(int lfd, pthread_t acceptor) {
    struct timespec deadline;
    int i;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += STOP_DEADLINE_MS / 1000;
    pthread_mutex_lock(&lock);
    stopping = 1;
    shutdown(lfd, SHUT_RDWR); /* accept() returns EINVAL */
    for (i = 0; i < max_open; i++)
        if (open_fds[i] != -1)
            shutdown(open_fds[i], SHUT_RD);
    pthread_cond_broadcast(&changed);
    while (n_open > 0 && pthread_cond_timedwait(&changed, &lock, &deadline) == 0) {
    }
    pthread_mutex_unlock(&lock);
    pthread_join(acceptor, NULL);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int workers = argc > 2 ? atoi(argv[2]) : 16;
    pthread_t acceptor;
    sigset_t sigs;
    int lfd, sig;

    if (argc < 2 || argc > 3 || port < 1 || port > 65535 || workers < 1 || workers > 4096) {
        fprintf(stderr, "usage: %s PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    /* SIGINT and SIGTERM are taken by sigwait() in main. Blocked before any
       thread starts, so every thread inherits the mask and none is hit. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if ((lfd = listen_on(port)) < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }

    if (!tracking_init(workers) || pthread_create(&acceptor, NULL, accept_thread, &lfd) != 0) {
        fprintf(stderr, "cannot start\n");
        return 1;
    }
    fprintf(stderr, "listening on 127.0.0.1:%d, %d workers\n", port, workers);

    sigwait(&sigs, &sig);
    stop_gracefully(lfd, acceptor); /* threads past the deadline die with the process */
    close(lfd);
    fprintf(stderr, "stopped by signal %d\n", sig);
    return 0;
}

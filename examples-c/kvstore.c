/*
 * kvstore.c: a line-based key-value server on evmpm. Nothing in evmpm is
 * about HTTP: a blocking handler that reads one command and writes one
 * reply is all it needs.
 *
 * Usage: kvstore PORT [WORKERS]   (listens on 127.0.0.1; WORKERS 16)
 *
 * One command per line (LF or CRLF), one reply line for each, in order, so
 * clients may pipeline: send many commands, then read the replies.
 *   SET key value  -> OK                 value: the rest of the line
 *   GET key        -> VALUE value | NOT_FOUND
 *   DEL key        -> DELETED | NOT_FOUND
 *   QUIT           -> BYE, and the server closes the connection
 *   anything else  -> ERR reason
 * A line longer than LINE_MAX bytes is answered "ERR line too long" and the
 * connection closed. Keys are 1 to KEY_MAX bytes without spaces.
 *
 * The handler serves exactly one line per call. If the client sent more,
 * the next lines are already in the connection's buffer, and the handler
 * parks it with EVMPM_PARK_BUFFERED so it runs again at once; otherwise the
 * idle connection waits on the event thread. request_ready wakes a worker
 * only once a whole line has arrived.
 *
 * SIGINT or SIGTERM: stop gracefully, exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "evmpm.h"

#define LINE_MAX_LEN 8192 /* the longest command line, newline included */
#define KEY_MAX 250
#define ENTRIES_MAX 100000 /* a client cannot grow the store without bound */
#define BUCKETS 4096
#define IO_TIMEOUT_S 10
#define STOP_DEADLINE_MS 5000

/* ---- the store: a chained hash table under one lock ----------------------- */

struct entry {
    struct entry *next;
    char *value;
    size_t value_len, key_len;
    char key[];
};

struct store {
    evmpm_runtime *rt;
    pthread_mutex_t lock;
    size_t count;
    struct entry *buckets[BUCKETS];
};

static size_t hash(const char *key, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    size_t i;
    for (i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    return (size_t)(h % BUCKETS);
}

/* The link that points at key's entry (or at NULL where it would go).
   Call with the lock held. */
static struct entry **find(struct store *st, const char *key, size_t len) {
    struct entry **e = &st->buckets[hash(key, len)];
    while (*e != NULL && ((*e)->key_len != len || memcmp((*e)->key, key, len) != 0))
        e = &(*e)->next;
    return e;
}

/* Each operation writes its reply line into reply (cap bytes), returns its
   length. */
static size_t store_set(struct store *st, const char *key, size_t klen, const char *val,
                        size_t vlen, char *reply, size_t cap) {
    struct entry **e, *n;
    char *copy = malloc(vlen + 1);
    if (copy == NULL)
        return (size_t)snprintf(reply, cap, "ERR out of memory\n");
    memcpy(copy, val, vlen);
    pthread_mutex_lock(&st->lock);
    e = find(st, key, klen);
    if (*e != NULL) {
        free((*e)->value);
        (*e)->value = copy;
        (*e)->value_len = vlen;
        copy = NULL;
    } else if (st->count < ENTRIES_MAX && (n = malloc(sizeof *n + klen)) != NULL) {
        n->next = NULL;
        n->value = copy;
        n->value_len = vlen;
        n->key_len = klen;
        memcpy(n->key, key, klen);
        *e = n;
        st->count++;
        copy = NULL;
    }
    pthread_mutex_unlock(&st->lock);
    if (copy != NULL) {
        free(copy);
        return (size_t)snprintf(reply, cap, "ERR store full\n");
    }
    return (size_t)snprintf(reply, cap, "OK\n");
}

static size_t store_get(struct store *st, const char *key, size_t klen, char *reply, size_t cap) {
    struct entry *e;
    size_t n;
    pthread_mutex_lock(&st->lock);
    e = *find(st, key, klen);
    if (e == NULL) {
        n = (size_t)snprintf(reply, cap, "NOT_FOUND\n");
    } else if (e->value_len + 7 > cap) { /* cannot happen: values come from lines */
        n = (size_t)snprintf(reply, cap, "ERR value too long\n");
    } else {
        memcpy(reply, "VALUE ", 6);
        memcpy(reply + 6, e->value, e->value_len);
        reply[6 + e->value_len] = '\n';
        n = 7 + e->value_len;
    }
    pthread_mutex_unlock(&st->lock);
    return n;
}

static size_t store_del(struct store *st, const char *key, size_t klen, char *reply, size_t cap) {
    struct entry **e, *gone;
    pthread_mutex_lock(&st->lock);
    e = find(st, key, klen);
    gone = *e;
    if (gone != NULL) {
        *e = gone->next;
        st->count--;
    }
    pthread_mutex_unlock(&st->lock);
    if (gone == NULL)
        return (size_t)snprintf(reply, cap, "NOT_FOUND\n");
    free(gone->value);
    free(gone);
    return (size_t)snprintf(reply, cap, "DELETED\n");
}

static void store_clear(struct store *st) {
    size_t i;
    for (i = 0; i < BUCKETS; i++) {
        while (st->buckets[i] != NULL) {
            struct entry *e = st->buckets[i];
            st->buckets[i] = e->next;
            free(e->value);
            free(e);
        }
    }
    st->count = 0;
}

/* ---- the protocol --------------------------------------------------------- */

struct conn {
    int fd;
    size_t len;
    char buf[LINE_MAX_LEN];
};

/* Runs one command line (without its line end). Returns the reply length;
   *quit is set for QUIT. */
static size_t run_command(struct store *st, const char *line, size_t len, char *reply, size_t cap,
                          int *quit) {
    const char *sp = memchr(line, ' ', len);
    size_t cmd_len = sp ? (size_t)(sp - line) : len;
    const char *key = sp ? sp + 1 : line + len;
    size_t rest = (size_t)(line + len - key), klen;
    const char *key_end = memchr(key, ' ', rest);

    klen = key_end ? (size_t)(key_end - key) : rest;
    if (cmd_len == 4 && strncasecmp(line, "QUIT", 4) == 0 && sp == NULL) {
        *quit = 1;
        return (size_t)snprintf(reply, cap, "BYE\n");
    }
    if (cmd_len != 3 || (strncasecmp(line, "SET", 3) != 0 && strncasecmp(line, "GET", 3) != 0 &&
                         strncasecmp(line, "DEL", 3) != 0))
        return (size_t)snprintf(reply, cap, "ERR unknown command\n");
    if (klen == 0)
        return (size_t)snprintf(reply, cap, "ERR missing key\n");
    if (klen > KEY_MAX)
        return (size_t)snprintf(reply, cap, "ERR key too long\n");
    if (toupper((unsigned char)line[0]) == 'S') {
        if (key_end == NULL)
            return (size_t)snprintf(reply, cap, "ERR usage: SET key value\n");
        return store_set(st, key, klen, key_end + 1, (size_t)(line + len - key_end - 1), reply, cap);
    }
    if (key_end != NULL)
        return (size_t)snprintf(reply, cap, "ERR one key only\n");
    if (toupper((unsigned char)line[0]) == 'G')
        return store_get(st, key, klen, reply, cap);
    return store_del(st, key, klen, reply, cap);
}

/* Sends all of buf; 0 if the client went away (MSG_NOSIGNAL: no SIGPIPE). */
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

/* ---- evmpm callbacks ------------------------------------------------------ */

static void handler(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, int why) {
    struct store *st = ud;
    char reply[LINE_MAX_LEN + 16];
    struct conn *c;
    void *user = NULL;
    char *nl;
    size_t len, n;
    int quit = 0;
    (void)why;

    if (evmpm_conn_get_user(rt, conn, &user) != EVMPM_OK) {
        evmpm_close(rt, conn);
        return;
    }
    if (user == NULL) {
        struct timeval tv = {IO_TIMEOUT_S, 0};
        if ((c = malloc(sizeof *c)) != NULL) {
            c->fd = fd;
            c->len = 0;
        }
        if (c == NULL || evmpm_conn_set_user(rt, conn, c) != EVMPM_OK) {
            free(c);
            evmpm_close(rt, conn);
            return;
        }
        user = c;
        /* a client stalled mid-line holds this worker at most this long */
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    c = user;

    while ((nl = memchr(c->buf, '\n', c->len)) == NULL) {
        ssize_t got;
        if (c->len == sizeof c->buf) {
            static const char too_long[] = "ERR line too long\n";
            send_all(fd, too_long, sizeof too_long - 1);
            evmpm_close(rt, conn);
            return;
        }
        got = read(fd, c->buf + c->len, sizeof c->buf - c->len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) { /* closed, reset, or stalled */
            evmpm_close(rt, conn);
            return;
        }
        c->len += (size_t)got;
    }
    len = (size_t)(nl - c->buf);
    n = run_command(st, c->buf, len > 0 && c->buf[len - 1] == '\r' ? len - 1 : len, reply,
                    sizeof reply, &quit);
    /* The line is done: keep only what came after it. */
    c->len -= len + 1;
    memmove(c->buf, nl + 1, c->len);

    if (!send_all(fd, reply, n) || quit)
        evmpm_close(rt, conn);
    else
        evmpm_park_keepalive(rt, conn, memchr(c->buf, '\n', c->len) ? EVMPM_PARK_BUFFERED : 0);
}

/* The runtime closes the socket; the record is ours to free. */
static void on_close(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, void *user) {
    (void)ud, (void)rt, (void)conn, (void)fd;
    free(user);
}

/* On the event thread: wake a worker only for a whole line, or for one that
   can no longer fit (the handler answers "too long"). A line end cannot
   straddle buffer and socket, but part of the line may be buffered. */
static int request_ready(void *ud, evmpm_conn conn, void *user, const uint8_t *data, size_t len) {
    size_t held;
    (void)ud, (void)conn;
    if (memchr(data, '\n', len) != NULL)
        return EVMPM_REQUEST_COMPLETE;
    held = user ? ((const struct conn *)user)->len : 0;
    return held + len >= LINE_MAX_LEN ? EVMPM_REQUEST_COMPLETE : EVMPM_REQUEST_INCOMPLETE;
}

/* ---- main ----------------------------------------------------------------- */

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
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    static struct store st = {.lock = PTHREAD_MUTEX_INITIALIZER};
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int workers = argc > 2 ? atoi(argv[2]) : 16;
    evmpm_config cfg;
    sigset_t sigs;
    int lfd, sig, rc;

    if (argc < 2 || argc > 3 || port < 1 || port > 65535 || workers < 1 || workers > 4096) {
        fprintf(stderr, "usage: %s PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    /* Taken with sigwait() below; blocked before evmpm starts its threads. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if ((lfd = listen_on(port)) < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    evmpm_config_init(&cfg, sizeof cfg);
    cfg.worker_threads = (uint32_t)workers;
    cfg.handler = handler;
    cfg.on_close = on_close;
    cfg.user_data = &st;
    cfg.request_ready = request_ready;
    cfg.header_timeout_ms = IO_TIMEOUT_S * 1000;
    /* Idle clients of a key-value store tend to stay: no need to drop them
       after httpd's 5 s, they cost no thread while they wait. */
    cfg.keepalive_timeout_ms = 60000;
    if ((rc = evmpm_create(&cfg, &st.rt)) != EVMPM_OK ||
        (rc = evmpm_register_listener(st.rt, lfd)) != EVMPM_OK ||
        (rc = evmpm_start(st.rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm: %s\n", evmpm_strerror(rc));
        return 1;
    }
    fprintf(stderr, "kvstore: listening on 127.0.0.1:%d with %d workers\n", port, workers);

    while (sigwait(&sigs, &sig) != 0) {
    }
    evmpm_stop(st.rt, STOP_DEADLINE_MS);
    evmpm_destroy(st.rt);
    close(lfd);
    store_clear(&st);
    fprintf(stderr, "kvstore: stopped by signal %d\n", sig);
    return 0;
}

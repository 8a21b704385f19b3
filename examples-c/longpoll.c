/*
 * longpoll.c: long polling. A client waits up to WAIT_S seconds for the
 * next message on a topic, which another client posts:
 *
 *   WAIT topic        -> "WAITING\n" at once, then "MSG text\n" when a
 *                        message is posted to topic, or "TIMEOUT ms\n" after
 *                        WAIT_S seconds without one (ms: how long it waited)
 *   POST topic text   -> "SENT n\n": n waiting clients got it
 *
 * Written as a blocking C programmer writes it: the handler reads a line
 * with read() and answers with write(). What evmpm adds is that a waiting
 * client holds no thread: its connection is parked, a timer bound to it
 * (evmpm_timer_add) wakes it at its deadline, and a POST wakes it with
 * evmpm_notify; either way its handler runs again on a worker
 * (EVMPM_WAKE_NOTIFIED) and answers. A client that goes away while
 * waiting takes its timer with it (bound timers die with their
 * connection).
 *
 * Arguments: PORT [WAIT_S [WORKERS]]   (listens on 127.0.0.1; WAIT_S 30).
 * SIGINT or SIGTERM: stop, exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "evmpm.h"

#define LINE_MAX_LEN 512
#define STOP_DEADLINE_MS 2000

static unsigned wait_ms = 30000;

/* One client. Waiting clients are in one list (a real server would keep a
 * table of topics); `lock` guards the list and every client's `waiting`,
 * `topic` and `message`. */
struct client {
    evmpm_conn conn;
    int waiting;            /* in the list */
    char topic[64];
    char *message;          /* posted to it, not yet sent */
    int64_t since_ms;       /* when it began to wait */
    evmpm_timer timer;      /* its deadline */
    struct client *prev, *next;
    size_t len;             /* bytes of the next line read so far */
    char buf[LINE_MAX_LEN];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct client *waiting_list;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void unlink_waiting(struct client *c) { /* under lock */
    if (!c->waiting)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        waiting_list = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->waiting = 0;
}

static int write_all(int fd, const char *s, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        s += n;
        len -= (size_t)n;
    }
    return 1;
}

/* The deadline of a waiting client: wake its handler. The argument is
 * the handle, which stays safe after the client is gone. */
static void deadline(void *arg, evmpm_runtime *rt, evmpm_timer t) {
    (void)t;
    evmpm_notify(rt, (evmpm_conn)(uintptr_t)arg);
}

/* Reads one line (blocking, as for a thread per client). 1: got one. */
static int read_line(int fd, struct client *c, char *line) {
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        ssize_t n;
        if (nl != NULL) {
            size_t k = (size_t)(nl - c->buf);
            memcpy(line, c->buf, k);
            line[k] = '\0';
            c->len -= k + 1;
            memmove(c->buf, nl + 1, c->len);
            return 1;
        }
        if (c->len == sizeof c->buf)
            return 0;
        n = read(fd, c->buf + c->len, sizeof c->buf - c->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        c->len += (size_t)n;
    }
}

static void handler(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, int reason) {
    struct client *c = NULL;
    char line[LINE_MAX_LEN], out[LINE_MAX_LEN + 32];
    (void)user_data;
    evmpm_conn_get_user(rt, conn, (void **)&c);
    if (c == NULL) {
        if ((c = calloc(1, sizeof *c)) == NULL) {
            evmpm_close(rt, conn);
            return;
        }
        c->conn = conn;
        evmpm_conn_set_user(rt, conn, c); /* freed in on_close */
    }
    if (reason == EVMPM_WAKE_NOTIFIED) {
        /* A message, or the deadline (or a notify that raced an answer
         * already sent: nothing to do). */
        char *msg;
        int64_t waited;
        pthread_mutex_lock(&lock);
        msg = c->message;
        c->message = NULL;
        waited = now_ms() - c->since_ms;
        if (msg == NULL && c->waiting && waited >= (int64_t)wait_ms)
            unlink_waiting(c);
        else if (msg == NULL) {
            pthread_mutex_unlock(&lock);
            evmpm_park_keepalive(rt, conn, 0);
            return;
        }
        pthread_mutex_unlock(&lock);
        if (msg != NULL) {
            evmpm_timer_cancel(rt, c->timer); /* any answer will do */
            snprintf(out, sizeof out, "MSG %s\n", msg);
            free(msg);
        } else {
            snprintf(out, sizeof out, "TIMEOUT %lld\n", (long long)waited);
        }
        if (!write_all(fd, out, strlen(out)))
            evmpm_close(rt, conn);
        else
            evmpm_park_keepalive(rt, conn, c->len > 0 ? EVMPM_PARK_BUFFERED : 0);
        return;
    }
    if (!read_line(fd, c, line)) {
        evmpm_close(rt, conn);
        return;
    }
    if (strncmp(line, "WAIT ", 5) == 0 && strlen(line + 5) < sizeof c->topic) {
        /* Before the timer's clock starts: at its deadline, `waited` is
         * WAIT_S at least. */
        c->since_ms = now_ms();
        if (evmpm_timer_add(rt, wait_ms, deadline, (void *)(uintptr_t)conn, conn, &c->timer) !=
            EVMPM_OK) {
            evmpm_close(rt, conn);
            return;
        }
        pthread_mutex_lock(&lock);
        strcpy(c->topic, line + 5);
        c->waiting = 1;
        c->next = waiting_list;
        if (waiting_list)
            waiting_list->prev = c;
        waiting_list = c;
        pthread_mutex_unlock(&lock);
        write_all(fd, "WAITING\n", 8);
    } else if (strncmp(line, "POST ", 5) == 0 && strchr(line + 5, ' ') != NULL) {
        char *text = strchr(line + 5, ' ') + 1;
        struct client *w, *next;
        int sent = 0;
        *(text - 1) = '\0';
        pthread_mutex_lock(&lock);
        for (w = waiting_list; w != NULL; w = next) {
            next = w->next;
            if (strcmp(w->topic, line + 5) == 0 && w->message == NULL) {
                w->message = strdup(text);
                unlink_waiting(w);
                evmpm_notify(rt, w->conn);
                sent++;
            }
        }
        pthread_mutex_unlock(&lock);
        snprintf(out, sizeof out, "SENT %d\n", sent);
        write_all(fd, out, strlen(out));
    } else {
        write_all(fd, "ERR\n", 4);
    }
    evmpm_park_keepalive(rt, conn, c->len > 0 ? EVMPM_PARK_BUFFERED : 0);
}

static void on_close(void *user_data, evmpm_runtime *rt, evmpm_conn conn, int fd, void *user) {
    struct client *c = user;
    (void)user_data;
    (void)rt;
    (void)conn;
    (void)fd;
    if (c == NULL)
        return;
    /* Its bound timer is cancelled already. */
    pthread_mutex_lock(&lock);
    unlink_waiting(c);
    pthread_mutex_unlock(&lock);
    free(c->message);
    free(c);
}

static int listen_on(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int wait_s = argc > 2 ? atoi(argv[2]) : 30;
    int workers = argc > 3 ? atoi(argv[3]) : 16;
    evmpm_config cfg;
    evmpm_runtime *rt;
    sigset_t sigs;
    int lfd, sig, rc;

    if (argc < 2 || argc > 4 || port < 1 || port > 65535 || wait_s < 1 || wait_s > 3600 ||
        workers < 1 || workers > 4096) {
        fprintf(stderr, "usage: %s PORT [WAIT_S [WORKERS]]\n", argv[0]);
        return 2;
    }
    wait_ms = (unsigned)wait_s * 1000;
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
    /* A waiting client is idle for up to WAIT_S, and may wait again. */
    cfg.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    if ((rc = evmpm_create(&cfg, &rt)) != EVMPM_OK ||
        (rc = evmpm_register_listener(rt, lfd)) != EVMPM_OK ||
        (rc = evmpm_start(rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm: %s\n", evmpm_strerror(rc));
        return 1;
    }
    fprintf(stderr, "longpoll: listening on 127.0.0.1:%d, waits up to %d s, %d workers\n", port,
            wait_s, workers);
    while (sigwait(&sigs, &sig) != 0) {
    }
    evmpm_stop(rt, STOP_DEADLINE_MS);
    evmpm_destroy(rt);
    close(lfd);
    fprintf(stderr, "longpoll: stopped by signal %d\n", sig);
    return 0;
}

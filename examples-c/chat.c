/*
 * chat.c: a line-based chat server on evmpm. The handler is plain blocking
 * code; evmpm lets a member stay silent for hours without holding a thread,
 * and still hear everyone else.
 *
 * Usage: chat [PORT] [WORKERS]   (listens on 127.0.0.1; PORT 8080, WORKERS 16)
 *
 * The server speaks first: "welcome, you are userN". Then lines (LF or CRLF):
 *   /nick NAME  -> "you are NAME" | "name taken" | "bad name" (a name is 1 to 32
 *                  letters, digits, '_' or '-')
 *   /who        -> "members: NAME NAME ...", in order of arrival
 *   /kick NAME  -> "you kicked NAME" | "no such member: NAME"; NAME is told
 *                  "kicked" and closed (anyone may kick: it is a demo)
 *   /quit       -> "bye", and the server closes
 *   text        -> every other member gets "NAME: text"
 *
 * Only the thread running a connection's handler may touch its socket, so a
 * sender never writes to the others: it appends the line to each one's
 * outbox and calls evmpm_notify. evmpm then runs that member's handler
 * (EVMPM_WAKE_NOTIFIED), which writes the outbox with blocking writes and
 * parks again. A kick is a farewell left in the member, plus a notify.
 *
 * Try it with `nc 127.0.0.1 8080` in a few terminals. SIGINT or SIGTERM:
 * stop gracefully, exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "evmpm.h"

#define LINE_MAX_LEN 512       /* the longest line a member may send, line end included */
#define NAME_MAX_LEN 32
#define NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
#define OUTBOX_MAX (64 * 1024) /* a member this far behind is dropped */
#define IO_TIMEOUT_S 10        /* a stalled reader holds a worker at most this long per write */
#define STOP_DEADLINE_MS 5000

struct member {
    struct member *next; /* the registry, under chat.lock */
    evmpm_conn conn;
    char name[NAME_MAX_LEN + 1]; /* changed under chat.lock, by its own handler */

    pthread_mutex_t lock; /* guards out, out_len and farewell */
    char *out;            /* the outbox: lines for this member, not yet written */
    size_t out_len;
    const char *farewell; /* set: write it, then close ("kicked\n") */

    size_t in_len; /* a partial line; only this member's handler touches it */
    char in[LINE_MAX_LEN];
};

struct chat {
    evmpm_runtime *rt;
    pthread_mutex_t lock;   /* guards the list, count, next_id and every name */
    struct member *members; /* in order of arrival */
    size_t count;
    unsigned next_id;
};

/* Sends all of buf; 0 if the client went away or stopped reading
   (MSG_NOSIGNAL: a client gone is an error code, not a SIGPIPE). No
   EINTR: every thread has SIGINT and SIGTERM blocked (see main). */
static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0)
            return 0;
        buf += n;
        len -= (size_t)n;
    }
    return 1;
}

/* The member called name, or NULL. Call with chat->lock held. */
static struct member *find_member(struct chat *chat, const char *name) {
    struct member *m = chat->members;
    while (m != NULL && strcmp(m->name, name) != 0)
        m = m->next;
    return m;
}

/* Appends a line to m's outbox. Returns 1 if m must be woken. A member
   too far behind is told so and dropped: its outbox must not grow without
   bound while its client does not read. */
static int outbox_put(struct member *m, const char *line, size_t len) {
    char *grown = NULL;
    int wake = 1;
    pthread_mutex_lock(&m->lock);
    if (m->farewell != NULL)
        wake = 0; /* leaving anyway */
    else if (m->out_len + len > OUTBOX_MAX || (grown = realloc(m->out, m->out_len + len)) == NULL)
        m->farewell = "too far behind, disconnected\n";
    else {
        memcpy(grown + m->out_len, line, len);
        m->out = grown;
        m->out_len += len;
    }
    pthread_mutex_unlock(&m->lock);
    return wake;
}

/* Queues "NAME: text" for every member but from, then wakes them, after
   the registry lock is released: the header allows a call that finds the
   runtime stopping to run close callbacks on the calling thread, and
   on_close takes that lock. */
static void broadcast(struct chat *chat, struct member *from, const char *text, size_t len) {
    char line[NAME_MAX_LEN + 2 + LINE_MAX_LEN];
    size_t n = 0, i;
    pthread_mutex_lock(&chat->lock);
    i = (size_t)snprintf(line, sizeof line, "%s: ", from->name);
    memcpy(line + i, text, len); /* any byte but a line end */
    line[i + len] = '\n';
    evmpm_conn *wake = malloc(chat->count * sizeof *wake);
    for (struct member *m = chat->members; m != NULL && wake != NULL; m = m->next)
        if (m != from && outbox_put(m, line, i + len + 1))
            wake[n++] = m->conn;
    pthread_mutex_unlock(&chat->lock);
    for (i = 0; i < n; i++)
        evmpm_notify(chat->rt, wake[i]); /* ESTALE: it left meanwhile; fine */
    free(wake);
}

/* Runs one line from m (NUL-terminated, without its line end). Returns 0
   when m must be closed: it quit, or its client went away. */
static int run_line(struct chat *chat, struct member *m, int fd, char *line, size_t len) {
    char reply[NAME_MAX_LEN + 64], *who, *p;
    const char *arg = line + 6;
    struct member *o;
    evmpm_conn victim = 0;
    int n = 0, ok;

    if (len == 0)
        return 1;
    if (line[0] != '/') {
        broadcast(chat, m, line, len);
    } else if (strncmp(line, "/nick ", 6) == 0) {
        size_t alen = strlen(arg);
        pthread_mutex_lock(&chat->lock);
        if (alen == 0 || alen > NAME_MAX_LEN || strspn(arg, NAME_CHARS) != alen)
            n = snprintf(reply, sizeof reply, "bad name\n");
        else if ((o = find_member(chat, arg)) != NULL && o != m)
            n = snprintf(reply, sizeof reply, "name taken\n");
        else
            n = snprintf(reply, sizeof reply, "you are %s\n", strcpy(m->name, arg));
        pthread_mutex_unlock(&chat->lock);
    } else if (strcmp(line, "/who") == 0) {
        pthread_mutex_lock(&chat->lock);
        p = who = malloc(sizeof "members:\n" + chat->count * (NAME_MAX_LEN + 1));
        if (who != NULL) {
            p += sprintf(p, "members:");
            for (o = chat->members; o != NULL; o = o->next)
                p += sprintf(p, " %s", o->name);
            p += sprintf(p, "\n");
        }
        pthread_mutex_unlock(&chat->lock);
        ok = who == NULL || send_all(fd, who, (size_t)(p - who));
        free(who);
        return ok;
    } else if (strncmp(line, "/kick ", 6) == 0) {
        pthread_mutex_lock(&chat->lock);
        if ((o = find_member(chat, arg)) != NULL) {
            pthread_mutex_lock(&o->lock);
            if (o->farewell == NULL)
                o->farewell = "kicked\n";
            pthread_mutex_unlock(&o->lock);
            victim = o->conn;
        }
        pthread_mutex_unlock(&chat->lock);
        if (victim != 0) {
            evmpm_notify(chat->rt, victim); /* its handler says goodbye */
            n = snprintf(reply, sizeof reply, "you kicked %s\n", arg);
        } else {
            n = snprintf(reply, sizeof reply, "no such member: %.*s\n", NAME_MAX_LEN, arg);
        }
    } else if (strcmp(line, "/quit") == 0) {
        send_all(fd, "bye\n", 4);
        return 0;
    } else {
        n = snprintf(reply, sizeof reply, "unknown command\n");
    }
    return send_all(fd, reply, (size_t)n);
}

/* Reads what the socket holds (it is readable, so this does not wait) and
   runs each whole line; a partial line stays in m->in for the next read.
   Returns 0 when m must be closed. */
static int read_lines(struct chat *chat, struct member *m, int fd) {
    ssize_t got = read(fd, m->in + m->in_len, sizeof m->in - m->in_len);
    char *nl;
    if (got <= 0)
        return 0; /* the client left, or reset */
    m->in_len += (size_t)got;
    while ((nl = memchr(m->in, '\n', m->in_len)) != NULL) {
        size_t len = (size_t)(nl - m->in), used = len + 1;
        if (len > 0 && m->in[len - 1] == '\r')
            len--;
        m->in[len] = '\0';
        if (!run_line(chat, m, fd, m->in, len))
            return 0;
        m->in_len -= used;
        memmove(m->in, m->in + used, m->in_len);
    }
    if (m->in_len == sizeof m->in) {
        send_all(fd, "line too long\n", 14);
        return 0;
    }
    return 1;
}

/* Writes m's outbox, then its farewell if it has one. The lock is held only
   to take the lines: senders never wait for this client. Returns 0 when m
   must be closed. */
static int flush_outbox(struct member *m, int fd) {
    pthread_mutex_lock(&m->lock);
    char *out = m->out;
    size_t len = m->out_len;
    const char *farewell = m->farewell;
    m->out = NULL;
    m->out_len = 0;
    pthread_mutex_unlock(&m->lock);
    int ok = send_all(fd, out, len);
    free(out);
    if (ok && farewell != NULL)
        send_all(fd, farewell, strlen(farewell));
    return ok && farewell == NULL;
}

/* A new connection becomes member userN. It joins the registry before it
   is greeted: a client that has read its greeting hears everyone. */
static struct member *join(struct chat *chat, evmpm_runtime *rt, evmpm_conn conn, int fd) {
    struct timeval tv = {IO_TIMEOUT_S, 0};
    struct member *m = calloc(1, sizeof *m), **p;
    char hello[NAME_MAX_LEN + 32];
    int n;

    if (m == NULL || evmpm_conn_set_user(rt, conn, m) != EVMPM_OK) {
        free(m);
        return NULL;
    }
    pthread_mutex_init(&m->lock, NULL);
    m->conn = conn;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    pthread_mutex_lock(&chat->lock);
    do /* skip a userN someone took with /nick */
        snprintf(m->name, sizeof m->name, "user%u", ++chat->next_id);
    while (find_member(chat, m->name) != NULL);
    for (p = &chat->members; *p != NULL; p = &(*p)->next) {
    }
    *p = m;
    chat->count++;
    pthread_mutex_unlock(&chat->lock);
    n = snprintf(hello, sizeof hello, "welcome, you are %s\n", m->name);
    return send_all(fd, hello, (size_t)n) ? m : NULL; /* on_close frees it */
}

/* Runs on a worker: for a new connection, when its client sent something,
   or when evmpm_notify was called for it. */
static void handler(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, int why) {
    struct chat *chat = ud;
    void *m = NULL;
    if (why == EVMPM_WAKE_ACCEPTED)
        m = join(chat, rt, conn, fd);
    else
        evmpm_conn_get_user(rt, conn, &m);
    int ok = m != NULL;
    /* Read only when input came: a notified member's socket may have none,
       and a blocking read would then wait for the client to speak. */
    if (ok && (why == EVMPM_WAKE_READABLE || why == EVMPM_WAKE_NEW))
        ok = read_lines(chat, m, fd);
    /* Whatever woke us, deliver what others queued meanwhile. */
    if (ok)
        ok = flush_outbox(m, fd);
    if (ok)
        evmpm_park_keepalive(rt, conn, 0); /* idle: no thread until input or a notify */
    else
        evmpm_close(rt, conn);
}

/* The member leaves the registry before it is freed: others reach members
   only under chat->lock, so none can be using it once we hold it. Every
   member set with evmpm_conn_set_user is in the registry (see join). */
static void on_close(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, void *user) {
    struct chat *chat = ud;
    struct member *m = user, **p;
    (void)rt, (void)conn, (void)fd;

    if (m == NULL)
        return;
    pthread_mutex_lock(&chat->lock);
    for (p = &chat->members; *p != m; p = &(*p)->next) {
    }
    *p = m->next;
    chat->count--;
    pthread_mutex_unlock(&chat->lock);
    pthread_mutex_destroy(&m->lock);
    free(m->out);
    free(m);
}

/* evmpm writes nothing itself; what it has to say goes to our stderr. */
static void log_line(void *ud, int level, const char *message) {
    (void)ud;
    fprintf(stderr, "chat: evmpm %s: %s\n", level == EVMPM_LOG_ERROR ? "error" : "warning",
            message);
}

int main(int argc, char **argv) {
    static struct chat chat = {.lock = PTHREAD_MUTEX_INITIALIZER};
    int port = argc > 1 ? atoi(argv[1]) : 8080;
    int workers = argc > 2 ? atoi(argv[2]) : 16;
    evmpm_config cfg;
    evmpm_listener_config lc;
    sigset_t sigs;
    int sig, rc;

    if (argc > 3 || port < 1 || port > 65535 || workers < 1 || workers > 4096) {
        fprintf(stderr, "usage: %s [PORT] [WORKERS]\n", argv[0]);
        return 2;
    }
    /* Taken with sigwait() below; blocked before evmpm starts its threads. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 511) != 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    evmpm_config_init(&cfg, sizeof cfg);
    cfg.worker_threads = (uint32_t)workers;
    cfg.handler = handler;
    cfg.on_close = on_close;
    cfg.user_data = &chat;
    cfg.log = log_line;
    /* An idle member costs a table slot, not a thread: keep it for good. */
    cfg.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
    cfg.read_timeout_ms = EVMPM_TIMEOUT_NONE;
    /* on_close waits for the registry lock, which a broadcast holds while it
       fills every outbox: keep that wait off the event thread. */
    cfg.close_on_worker = 1;
    evmpm_listener_config_init(&lc, sizeof lc);
    lc.flags = EVMPM_LISTEN_SERVER_FIRST; /* greet before the client says anything */
    if ((rc = evmpm_create(&cfg, &chat.rt)) != EVMPM_OK ||
        (rc = evmpm_register_listener_ex(chat.rt, lfd, &lc)) != EVMPM_OK ||
        (rc = evmpm_start(chat.rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm: %s\n", evmpm_strerror(rc));
        return 1;
    }
    fprintf(stderr, "chat: listening on 127.0.0.1:%d with %d workers\n", port, workers);

    while (sigwait(&sigs, &sig) != 0) {
    }
    /* Idle members are closed at once (on_close frees each); handlers
       running now finish first. */
    if ((rc = evmpm_stop(chat.rt, STOP_DEADLINE_MS)) != EVMPM_OK)
        fprintf(stderr, "chat: stop: %s\n", evmpm_strerror(rc));
    evmpm_destroy(chat.rt);
    close(lfd);
    fprintf(stderr, "chat: stopped by signal %d\n", sig);
    return 0;
}

/*
 * fileserver.c: a small static-file HTTP/1.1 server on evmpm.
 *
 * Usage: fileserver PORT DOCROOT [WORKERS]   (listens on 127.0.0.1)
 *        fileserver --tls CERT KEY PORT DOCROOT [WORKERS]   (HTTPS)
 *
 * GET and HEAD of regular files under DOCROOT (a directory serves its
 * index.html), with Content-Type by extension, keep-alive, pipelining and
 * "Connection: close". /server-status shows evmpm's counters in plain text,
 * as Apache's mod_status does; SIGUSR1 prints the same to stderr. SIGINT or
 * SIGTERM stop gracefully: requests in flight finish, then exit 0.
 *
 * Who does what:
 * - request_ready (event thread) tells evmpm whether a whole request head
 *   has arrived, so a client that sends its request slowly holds no worker;
 * - handler (a worker) reads and parses the head, finds the file and builds
 *   the response;
 * - the runtime sends the response as the client reads it, from the event
 *   thread, so a slow reader holds no worker either: a file with
 *   evmpm_complete_sendfile (the head from memory, the body by sendfile(2)
 *   from the page cache, never read into this process; the file is closed
 *   when the runtime releases it), anything else with evmpm_complete_write.
 *
 * HTTPS (--tls, OpenSSL 3; built with -DFILESERVER_TLS -lssl -lcrypto,
 * which the build does where OpenSSL's headers are present):
 * - the TLS handshake is the listener's handshake step (tls_handshake):
 *   SSL_do_handshake on the non-blocking socket, on a worker, between
 *   handlers, so a client slow to handshake (or silent) holds no worker
 *   and is closed by the header timeout. The SSL* lives in the
 *   connection's record (the user pointer), made by the step's first call
 *   and freed in the close callback;
 * - request_ready is off on the TLS listener: it only peeks at the
 *   socket, where the bytes are ciphertext;
 * - once the handshake is done OpenSSL reads ahead, so that SSL_read takes
 *   a request in one read(2), not two (the record's header, then the rest);
 * - small responses, files up to TLS_SMALL_BODY among them (read into the
 *   response after its head), are written with one SSL_write on the
 *   worker; after each one the connection parks with EVMPM_PARK_BUFFERED
 *   when a pipelined request is already decrypted (SSL_has_pending) or
 *   buffered;
 * - a larger file body is encrypted 1 MiB at a time into a memory BIO and
 *   the ciphertext handed to evmpm_complete_write with
 *   EVMPM_WRITE_BUFFERED, which runs the handler again for the next
 *   megabyte once this one is sent: a slow reader holds no worker, and
 *   memory stays at one chunk;
 * - an idle connection holds no buffer, neither OpenSSL's
 *   (SSL_MODE_RELEASE_BUFFERS) nor its request buffer: only its SSL
 *   object (about 13 KB with OpenSSL 3.0: the SSL structure, the record
 *   ciphers, the session, the key shares) and its small record here.
 *
 * Requests cannot reach outside DOCROOT: the target is percent-decoded once
 * (%00 and control characters refused), ".." segments are refused, and the
 * realpath() of the result must lie under the realpath() of DOCROOT, so a
 * symbolic link that leads out is refused too. Names starting with "." are
 * never served. The common case, a path with no symbolic link on the way
 * and no name starting with ".", which those checks could only let
 * through, is opened in one openat2(2) call that the kernel refuses for
 * any link or way out (Linux 5.6 and later); anything else takes the
 * checks above.
 */
#define _GNU_SOURCE /* memmem, gmtime_r, realpath, O_PATH */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "evmpm.h"

#ifdef SYS_openat2 /* kernel headers 5.6 and later; glibc has no wrapper */
#include <linux/openat2.h>
#endif

#ifdef FILESERVER_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "the TLS file server needs OpenSSL 3"
#endif
#endif

#define HEAD_MAX 16384        /* a request head must fit in this (431 beyond) */
#define TARGET_MAX 2048       /* the longest request target (414 beyond) */
#define HEADERS_MAX 100       /* header lines per request (431 beyond) */
#define IO_TIMEOUT_S 10       /* a client stalled mid-request is dropped */
#define STOP_DEADLINE_MS 5000
#define STATUS_PATH "/server-status"
#define TLS_CHUNK (1 << 20)   /* a file body is encrypted this much at a time */
#define TLS_SMALL_BODY 16384  /* over TLS, a file up to this goes in the response */

struct server {
    evmpm_runtime *rt;
    char root[PATH_MAX]; /* realpath() of DOCROOT */
    size_t root_len;
    int root_fd; /* DOCROOT for openat2(2), or -1 where the kernel has none */
    time_t started;
    atomic_ullong requests;  /* responses sent or handed to the runtime */
    atomic_ullong offloaded; /* of those, handed to the runtime to send */
};

/* One client connection: bytes read but not yet parsed (the rest of the
   request head, or pipelined requests that came with it) in buf, which
   exists only while there are some or a request is being read: an idle
   keep-alive connection holds no buffer. Over TLS also its SSL object, and
   the file whose body is being encrypted and sent a chunk at a time
   (file_fd -1: none). */
struct conn {
    int fd;
#ifdef FILESERVER_TLS
    SSL *ssl;
    int file_fd;
    int file_keep; /* the connection stays open after this body */
    int client_done; /* the client sent its last request and nothing after it */
    uint64_t file_off, file_left;
#endif
    size_t len;
    char *buf; /* HEAD_MAX bytes, or NULL (then len is 0) */
};

/* A fresh record for the connection on `fd`; NULL if out of memory. */
static struct conn *conn_new(int fd) {
    struct conn *c = malloc(sizeof *c);
    if (c == NULL)
        return NULL;
    c->fd = fd;
    c->len = 0;
    c->buf = NULL;
#ifdef FILESERVER_TLS
    c->ssl = NULL;
    c->file_fd = -1;
    c->file_keep = 0;
    c->client_done = 0;
    c->file_off = c->file_left = 0;
#endif
    return c;
}

static void conn_free(struct conn *c) {
    if (c == NULL)
        return;
#ifdef FILESERVER_TLS
    SSL_free(c->ssl);
    if (c->file_fd >= 0)
        close(c->file_fd);
#endif
    free(c->buf);
    free(c);
}

/* Socket timeouts that bound how long a stalled client can hold a worker,
   and no Nagle delay. Set on the listening socket: Linux copies them to
   every connection it accepts, which saves three system calls per
   connection. */
static void socket_tune(int fd) {
    struct timeval tv = {IO_TIMEOUT_S, 0};
    int one_flag = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    /* A response's last segment goes out at once instead of waiting
       for the client's (delayed) ACK of the one before: without it a
       keep-alive client waits up to 40 ms at the end of each file. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one_flag, sizeof one_flag);
}

/* Reads what the client sent (decrypted over TLS), blocking; as read(2):
   0 at the end, -1 on error (a TLS error, a timeout, a reset).

   Over TLS: OpenSSL's per-thread error queue is empty before each SSL_read
   and SSL_write in this file, as SSL_get_error needs it, because every
   failure empties it again (ERR_clear_error), so it is not cleared before
   each call as well: in OpenSSL 3 that walks the whole queue, a few
   percent of the CPU time of a small request. */
static ssize_t conn_read(struct conn *c, void *buf, size_t len) {
#ifdef FILESERVER_TLS
    if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
        if (n > 0)
            return n;
        n = SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
        ERR_clear_error();
        errno = EIO; /* never EINTR: no retry */
        return n;
    }
#endif
    return read(c->fd, buf, len);
}

/* A parsed request head; the pointers point into conn.buf. */
struct request {
    const char *method, *target;
    size_t method_len, target_len;
    int http10;     /* HTTP/1.0: keep-alive only when asked for */
    int head_only;  /* HEAD: the response has no body */
    int keep_alive; /* the connection may carry another request */
    int last;       /* the client said this is its last request, and sent no body */
};

/* A response ready to send: `len` bytes of head (and, unless the body is
   a file, body) in data[]; a file body is `file_len` bytes of `file_fd`
   (-1: none). Handed to the runtime as a whole and freed by release_out,
   which closes the file too. */
struct out {
    int file_fd;
    uint64_t file_len;
    size_t len;
    char data[];
};

static void release_out(void *arg) {
    struct out *o = arg;
    if (o->file_fd >= 0)
        close(o->file_fd);
    free(o);
}

/* ---- small helpers -------------------------------------------------------- */

/* The length of the request head at the start of buf, through its blank
   line, or 0 while it is incomplete. */
static size_t head_length(const void *buf, size_t len) {
    const char *end = len < 4 ? NULL : memmem(buf, len, "\r\n\r\n", 4);
    return end ? (size_t)(end - (const char *)buf) + 4 : 0;
}

/* 1 if buf starts with a whole first line that cannot begin an HTTP/1.x
   request, so it can be refused without waiting for the rest of a head
   that may never come. */
static int first_line_bad(const char *buf, size_t len) {
    const char *nl = memchr(buf, '\n', len);
    size_t n;
    if (nl == NULL)
        return 0;
    n = (size_t)(nl - buf);
    /* shortest: "M / HTTP/1.1\r" */
    return n < 13 || buf[n - 1] != '\r' || memcmp(buf + n - 10, " HTTP/", 6) != 0;
}

/* RFC 9110 token characters (method and header names). */
static int is_tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int hex_value(unsigned char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* 1 if the comma-separated header value [v, v+n) lists `token` (any case). */
static int has_token(const char *v, size_t n, const char *token) {
    size_t tlen = strlen(token), i = 0;
    while (i < n) {
        size_t start, end;
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        start = i;
        while (i < n && v[i] != ',')
            i++;
        end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tlen && strncasecmp(v + start, token, tlen) == 0)
            return 1;
    }
    return 0;
}

/* Header names compare in any case; methods do not ("get" is not GET). */
static int name_is(const char *name, size_t len, const char *want) {
    return len == strlen(want) && strncasecmp(name, want, len) == 0;
}

static int method_is(const struct request *r, const char *want) {
    return r->method_len == strlen(want) && memcmp(r->method, want, r->method_len) == 0;
}

static const char *reason_phrase(int status) {
    switch (status) {
    case 200: return "OK";
    case 301: return "Moved Permanently";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 505: return "HTTP Version Not Supported";
    default: return "Internal Server Error";
    }
}

static const char *content_type(const char *path) {
    static const struct {
        const char *ext, *type;
    } types[] = {
        {"html", "text/html; charset=utf-8"},
        {"htm", "text/html; charset=utf-8"},
        {"txt", "text/plain; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"xml", "application/xml"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"ico", "image/vnd.microsoft.icon"},
        {"pdf", "application/pdf"},
        {"wasm", "application/wasm"},
    };
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash : path, '.');
    size_t i;
    if (dot != NULL)
        for (i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcasecmp(dot + 1, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

/* Reads exactly `n` bytes of `fd` at `off` into buf: 0, or -1 if the file
   ended sooner (it shrank) or cannot be read. */
static int read_at(int fd, char *buf, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* ---- parsing -------------------------------------------------------------- */

/* Parses the head [buf, buf+len), which ends with CRLF CRLF. Returns 0 or
   the error status to answer. Every byte is checked: anything that is not
   well-formed HTTP/1.x is refused rather than guessed at. */
static int parse_request(const char *buf, size_t len, struct request *r) {
    const char *end = buf + len - 2; /* the blank line's CRLF */
    const char *eol = memmem(buf, len, "\r\n", 2);
    const char *p = buf, *v;
    int headers = 0, hosts = 0, conn_close = 0, conn_keep = 0, chunked = 0;
    long long clen = -1;
    size_t i;

    /* METHOD SP TARGET SP HTTP/1.x */
    for (i = 0; p + i < eol && is_tchar((unsigned char)p[i]); i++) {
    }
    if (i == 0 || p + i == eol || p[i] != ' ')
        return 400;
    r->method = p;
    r->method_len = i;
    p += i + 1;
    for (i = 0; p + i < eol && (unsigned char)p[i] > ' ' && (unsigned char)p[i] < 0x7f; i++) {
    }
    if (i == 0 || p + i == eol || p[i] != ' ')
        return 400;
    if (i > TARGET_MAX)
        return 414;
    r->target = p;
    r->target_len = i;
    p += i + 1;
    if (eol - p != 8 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9')
        return 400;
    if (p[5] != '1' || p[7] > '1')
        return 505;
    r->http10 = p[7] == '0';
    r->head_only = method_is(r, "HEAD");

    /* NAME ":" OWS VALUE OWS, one per line; no obsolete line folding. */
    for (p = eol + 2; p < end; p = eol + 2) {
        const char *vend;
        size_t name_len;
        eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (++headers > HEADERS_MAX)
            return 431;
        for (i = 0; p + i < eol && is_tchar((unsigned char)p[i]); i++) {
        }
        if (i == 0 || p + i == eol || p[i] != ':')
            return 400; /* no name, a space before the colon, or a folded line */
        name_len = i;
        v = p + i + 1;
        vend = eol;
        while (v < vend && (*v == ' ' || *v == '\t'))
            v++;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        for (i = 0; v + i < vend; i++) {
            unsigned char ch = (unsigned char)v[i];
            if ((ch < ' ' && ch != '\t') || ch == 0x7f)
                return 400; /* a bare CR or LF, NUL, or other control */
        }
        if (name_is(p, name_len, "Host")) {
            hosts++;
        } else if (name_is(p, name_len, "Connection")) {
            conn_close |= has_token(v, (size_t)(vend - v), "close");
            conn_keep |= has_token(v, (size_t)(vend - v), "keep-alive");
        } else if (name_is(p, name_len, "Transfer-Encoding")) {
            chunked = 1;
        } else if (name_is(p, name_len, "Content-Length")) {
            long long n = 0;
            if (v == vend || vend - v > 15)
                return 400;
            for (i = 0; v + i < vend; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return 400;
                n = n * 10 + (v[i] - '0');
            }
            if (clen >= 0 && clen != n)
                return 400;
            clen = n;
        }
    }
    /* Both framings at once is how requests are smuggled past proxies. */
    if (chunked && clen >= 0)
        return 400;
    if (hosts > 1 || (!r->http10 && hosts == 0))
        return 400;
    /* This server never reads request bodies: it answers a request that has
       one and then closes, so the body is never taken for a request. */
    r->keep_alive = !conn_close && (!r->http10 || conn_keep) && !chunked && clen <= 0;
    r->last = (conn_close || (r->http10 && !conn_keep)) && !chunked && clen <= 0;
    return 0;
}

/* Turns the request target into a percent-decoded path that starts with
   "/" (in `path`, `cap` bytes) and the raw path it came from (for a
   redirect). Returns 0 or the error status. */
static int decode_target(const struct request *r, char *path, size_t cap, const char **raw,
                         size_t *raw_len) {
    const char *t = r->target;
    size_t n = r->target_len, i, j = 0, seg;

    /* absolute-form (http://host/path): one site here, the host is ignored */
    if (n >= 7 && strncasecmp(t, "http://", 7) == 0)
        i = 7;
    else if (n >= 8 && strncasecmp(t, "https://", 8) == 0)
        i = 8;
    else
        i = 0;
    if (i > 0) {
        while (i < n && t[i] != '/' && t[i] != '?' && t[i] != '#')
            i++;
        if (i == n || t[i] != '/') {
            t = "/";
            n = 1;
            i = 0;
        }
    }
    t += i;
    n -= i;
    if (n == 0 || t[0] != '/' || memchr(t, '#', n) != NULL)
        return 400;
    for (i = 0; i < n && t[i] != '?'; i++) {
    }
    n = i; /* the query is ignored */
    *raw = t;
    *raw_len = n;

    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch == '%') {
            int hi = i + 2 < n ? hex_value((unsigned char)t[i + 1]) : -1;
            int lo = i + 2 < n ? hex_value((unsigned char)t[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return 400;
            ch = (unsigned char)(hi * 16 + lo);
            i += 2;
            if (ch < ' ' || ch == 0x7f)
                return 400; /* %00 and other controls: never in a file name here */
        }
        if (j + 1 >= cap)
            return 414;
        path[j++] = (char)ch;
    }
    path[j] = '\0';

    /* Segments, as decoded: "%2e%2e" and "..%2f" are ".." too. */
    for (seg = 0; seg < j; seg = i) {
        for (i = seg + 1; i < j && path[i] != '/'; i++) {
        }
        if (i - seg == 3 && path[seg + 1] == '.' && path[seg + 2] == '.')
            return 400;
    }
    return 0;
}

/* ---- finding the file ----------------------------------------------------- */

/* 1 if `real` (a realpath() result) is the root or below it, and no
   component below the root is hidden (starts with "."). */
static int allowed(const struct server *s, const char *real) {
    const char *rest = real + s->root_len;
    if (s->root_len > 1 && (strncmp(real, s->root, s->root_len) != 0 || (*rest != '\0' && *rest != '/')))
        return 0;
    if (s->root_len == 1)
        rest = real; /* the root is "/" */
    return strstr(rest, "/.") == NULL;
}

/* Resolves `path` into `real` (PATH_MAX bytes); 0 or the error status. */
static int resolve(const struct server *s, const char *path, char *real) {
    if (realpath(path, real) == NULL)
        return errno == EACCES ? 403 : 404;
    return allowed(s, real) ? 0 : 404;
}

/* Opens `rel` (a path relative to the root) for reading, on condition that
   no symbolic link is on the way and that it does not lead out of the
   root: the kernel checks both as it resolves the path. A descriptor, or
   -1: not found, not allowed, a link on the way, or no openat2(2) here. */
static int open_beneath(int root_fd, const char *rel) {
#ifdef SYS_openat2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
    return (int)syscall(SYS_openat2, root_fd, rel, &how, sizeof how);
#else
    (void)root_fd, (void)rel;
    errno = ENOSYS;
    return -1;
#endif
}

/* Opens the file for the decoded request path. Returns 0 with *fd_out and
   *st set (and the file's real path in `real`), 301 when a directory was
   asked for without its trailing slash, or an error status. */
static int open_file(const struct server *s, const char *decoded, char *real, int *fd_out,
                     struct stat *st) {
    char path[PATH_MAX];
    size_t dlen = strlen(decoded);
    int status, fd;

    if (s->root_len + dlen + 1 > sizeof path)
        return 414;
    memcpy(path, s->root, s->root_len);
    memcpy(path + s->root_len, decoded, dlen + 1);
    /* The common case in two system calls: a regular file, reached with no
       symbolic link and no name starting with "." on the way, is what the
       checks below would allow, at `path`, its real path. Anything else
       (a directory, a link, a missing file) is left to them. */
    if (s->root_fd >= 0 && strstr(decoded, "/.") == NULL &&
        (fd = open_beneath(s->root_fd, decoded + 1)) >= 0) {
        if (fstat(fd, st) == 0 && S_ISREG(st->st_mode)) {
            memcpy(real, path, s->root_len + dlen + 1);
            *fd_out = fd;
            return 0;
        }
        close(fd);
    }
    if ((status = resolve(s, path, real)) != 0)
        return status;
    if (stat(real, st) != 0)
        return 404;
    if (S_ISDIR(st->st_mode)) {
        static const char index[] = "/index.html";
        size_t rlen = strlen(real);
        if (decoded[dlen - 1] != '/')
            return 301;
        if (rlen + sizeof index > sizeof path)
            return 404;
        memcpy(path, real, rlen);
        memcpy(path + rlen, index, sizeof index);
        /* index.html may itself be a link leading out: resolve it again */
        if ((status = resolve(s, path, real)) != 0)
            return status;
    }
    /* O_NOFOLLOW: real has no links left, unless one was swapped in since.
       O_NONBLOCK: a FIFO swapped in cannot block the worker on open. */
    fd = open(real, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == EACCES ? 403 : 404;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return 404;
    }
    *fd_out = fd;
    return 0;
}

/* ---- building responses --------------------------------------------------- */

/* The Date header's value for now: formatted once a second by each
   thread, not for every response. */
static const char *http_date(void) {
    static _Thread_local time_t formatted = (time_t)-1;
    static _Thread_local char date[64];
    time_t now = time(NULL);
    if (now != formatted) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        formatted = now;
    }
    return date;
}

/* A response: its head, formatted from the arguments, then room for
   `room` bytes of body in data[] (none for HEAD), filled from `body` unless
   that is NULL. `length` is the Content-Length. NULL if out of memory. */
static struct out *make_out(const struct request *r, int status, int keep, const char *type,
                            const char *extra, size_t length, const char *body, size_t room) {
    char head[4096 + TARGET_MAX];
    struct out *o;
    size_t copy = r != NULL && r->head_only ? 0 : room;
    int n;

    n = snprintf(head, sizeof head,
                 "HTTP/1.1 %d %s\r\n"
                 "Date: %s\r\n"
                 "Server: evmpm-fileserver\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "%s%s\r\n",
                 status, reason_phrase(status), http_date(), type, length,
                 !keep ? "Connection: close\r\n"
                 : r != NULL && r->http10 ? "Connection: keep-alive\r\n"
                                          : "",
                 extra);
    if (n < 0 || (size_t)n >= sizeof head)
        return NULL;
    o = malloc(sizeof *o + (size_t)n + copy);
    if (o == NULL)
        return NULL;
    o->file_fd = -1;
    o->file_len = 0;
    o->len = (size_t)n + copy;
    memcpy(o->data, head, (size_t)n);
    if (body != NULL)
        memcpy(o->data + n, body, copy);
    return o;
}

/* A short plain-text error page. */
static struct out *error_out(const struct request *r, int status, int keep, const char *extra) {
    char body[64];
    int n = snprintf(body, sizeof body, "%d %s\n", status, reason_phrase(status));
    return make_out(r, status, keep, "text/plain; charset=utf-8", extra, (size_t)n, body,
                    (size_t)n);
}

/* The counters, as "Name: value" lines (mod_status's ?auto format). */
static size_t format_status(struct server *s, char *buf, size_t cap) {
    struct evmpm_stats st;
    int n;
    memset(&st, 0, sizeof st);
    evmpm_get_stats(s->rt, &st, sizeof st);
    n = snprintf(buf, cap,
                 "evmpm fileserver status (evmpm %s)\n"
                 "Uptime: %lld\n"
                 "Connections: %llu\n"
                 "ConnsReading: %llu\n"
                 "ConnsQueued: %llu\n"
                 "ConnsInHandler: %llu\n"
                 "ConnsWriting: %llu\n"
                 "ConnsKeepAlive: %llu\n"
                 "ConnsLingering: %llu\n"
                 "ConnsSuspended: %llu\n"
                 "BusyWorkers: %llu\n"
                 "IdleWorkers: %llu\n"
                 "Accepted: %llu\n"
                 "Closed: %llu\n"
                 "TimedOut: %llu\n"
                 "KeepAliveExpired: %llu\n"
                 "Shed: %llu\n"
                 "Refused: %llu\n"
                 "Rejected: %llu\n"
                 "AcceptPauses: %llu\n"
                 "AcceptBackoffs: %llu\n"
                 "AcceptingPaused: %llu\n"
                 "ConnsHandshake: %llu\n"
                 "Handshakes: %llu\n"
                 "HandshakesFailed: %llu\n"
                 "Requests: %llu\n"
                 "OffloadedWrites: %llu\n",
                 evmpm_version(), (long long)(time(NULL) - s->started),
                 (unsigned long long)st.connections, (unsigned long long)st.conns_reading,
                 (unsigned long long)st.conns_queued, (unsigned long long)st.conns_in_handler,
                 (unsigned long long)st.conns_writing, (unsigned long long)st.conns_keepalive,
                 (unsigned long long)st.conns_lingering, (unsigned long long)st.conns_suspended,
                 (unsigned long long)st.workers_busy, (unsigned long long)st.workers_idle,
                 (unsigned long long)st.accepted, (unsigned long long)st.closed,
                 (unsigned long long)st.timed_out, (unsigned long long)st.keepalive_expired,
                 (unsigned long long)st.shed, (unsigned long long)st.refused,
                 (unsigned long long)st.rejected, (unsigned long long)st.accept_pauses,
                 (unsigned long long)st.accept_backoffs, (unsigned long long)st.accepting_paused,
                 (unsigned long long)st.conns_handshake, (unsigned long long)st.handshakes,
                 (unsigned long long)st.handshakes_failed,
                 (unsigned long long)atomic_load(&s->requests),
                 (unsigned long long)atomic_load(&s->offloaded));
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

/* The response for a GET or HEAD of a file; NULL if out of memory (or a
   small file cannot be read). Clears *keep when the connection must close
   after it. A body of at most `small` bytes is read into the response
   after its head; a larger one is sent from the file. */
static struct out *file_out(struct server *s, const struct request *r, const char *decoded,
                            const char *raw, size_t raw_len, size_t small, int *keep) {
    char real[PATH_MAX];
    struct stat st;
    struct out *o;
    size_t size;
    int fd = -1, status = open_file(s, decoded, real, &fd, &st);

    if (status == 301) {
        /* "dir" -> "dir/", so the index page's relative links work. Leading
           slashes are collapsed: "//host" would send the browser away. */
        char location[TARGET_MAX + 32];
        while (raw_len > 1 && raw[1] == '/')
            raw++, raw_len--;
        snprintf(location, sizeof location, "Location: %.*s/\r\n", (int)raw_len, raw);
        return error_out(r, 301, *keep, location);
    }
    if (status != 0)
        return error_out(r, status, *keep, "");
    size = (size_t)st.st_size;

    if (size <= small || r->head_only) {
        o = make_out(r, 200, *keep, content_type(real), "", size, NULL, size);
        /* (For HEAD make_out left no room for the body.) */
        if (o != NULL && !r->head_only && read_at(fd, o->data + o->len - size, size, 0) != 0) {
            free(o);
            o = NULL;
        }
        close(fd);
        return o;
    }
    o = make_out(r, 200, *keep, content_type(real), "", size, NULL, 0);
    if (o == NULL) {
        close(fd);
        return NULL;
    }
    /* The body is the runtime's to send from the file, which stays open
       until release_out. A file cut short meanwhile cannot fill the
       Content-Length: the runtime then closes the connection, and the
       client sees a short body. */
    o->file_fd = fd;
    o->file_len = (uint64_t)size;
    return o;
}

/* ---- serving a connection ------------------------------------------------- */

#ifdef FILESERVER_TLS
/* 1 when the next request is already here: a whole head in our buffer,
   or bytes OpenSSL has read and not handed over yet (a pipelined request
   decrypted with the last one). The socket will not announce either. */
static int tls_input_pending(const struct conn *c) {
    return head_length(c->buf, c->len) > 0 || SSL_has_pending(c->ssl);
}

static void release_bio(void *arg) {
    BIO_free(arg);
}

/* Encrypts `head` (if any) and the next chunk of the file being sent into
   a memory BIO, and gives the ciphertext to the runtime to send: after the
   last chunk the connection parks (or closes), before it the handler runs
   again (EVMPM_WRITE_BUFFERED) once the chunk is out, and comes back
   here. No worker waits for the client meanwhile. */
static void tls_send_chunk(struct server *s, evmpm_runtime *rt, evmpm_conn conn, struct conn *c,
                           const void *head, size_t head_len) {
    size_t n = c->file_left < TLS_CHUNK ? (size_t)c->file_left : TLS_CHUNK;
    char *plain = malloc(head_len + n), *cipher;
    BIO *mem = BIO_new(BIO_s_mem()), *sock = SSL_get_wbio(c->ssl);
    uint32_t after;
    long cipher_len;
    int ok;

    if (plain == NULL || mem == NULL)
        goto fail;
    if (head_len > 0)
        memcpy(plain, head, head_len);
    if (read_at(c->file_fd, plain + head_len, n, c->file_off) != 0)
        goto fail; /* the file shrank: the body cannot be completed */
    c->file_off += n;
    c->file_left -= n;

    /* SSL_write into memory: the SSL object writes its records to `mem`
       for this call, then to the socket again. set0 takes one reference
       and drops the one it held, so each BIO is referenced once more
       first: `mem` stays ours, `sock` stays the SSL's. */
    BIO_up_ref(mem);
    BIO_up_ref(sock);
    SSL_set0_wbio(c->ssl, mem);
    ok = SSL_write(c->ssl, plain, (int)(head_len + n)) == (int)(head_len + n);
    if (ok && c->file_left == 0 && !c->file_keep) {
        SSL_shutdown(c->ssl); /* close_notify, after the body */
        ERR_clear_error();
    }
    SSL_set0_wbio(c->ssl, sock);
    free(plain);
    plain = NULL;
    if (!ok)
        goto fail;

    if (c->file_left > 0) {
        after = EVMPM_WRITE_BUFFERED; /* back here for the next chunk */
    } else {
        close(c->file_fd);
        c->file_fd = -1;
        after = !c->file_keep ? 0 : tls_input_pending(c) ? EVMPM_WRITE_BUFFERED
                                                         : EVMPM_WRITE_KEEPALIVE;
    }
    cipher_len = BIO_get_mem_data(mem, &cipher);
    if (cipher_len <= 0 ||
        evmpm_complete_write(rt, conn, cipher, (size_t)cipher_len, release_bio, mem, after) !=
            EVMPM_OK)
        goto fail;
    atomic_fetch_add(&s->offloaded, 1);
    return;
fail:
    ERR_clear_error();
    free(plain);
    BIO_free(mem);
    evmpm_close(rt, conn); /* the record (and the file) go in on_close */
}

/* Sends a response over TLS: a large file body through tls_send_chunk,
   anything else (a page, an error, a HEAD, a small file) with SSL_write
   here: for a few kilobytes the memory BIO and the hand-off to the runtime
   would cost more than the write, which the socket buffer takes at once. */
static void tls_send_out(struct server *s, evmpm_runtime *rt, evmpm_conn conn, struct conn *c,
                         struct out *o, int keep) {
    int ok;
    atomic_fetch_add(&s->requests, 1);
    if (o->file_fd >= 0) {
        c->file_fd = o->file_fd;
        c->file_off = 0;
        c->file_left = o->file_len;
        c->file_keep = keep;
        o->file_fd = -1; /* the record owns it now */
        tls_send_chunk(s, rt, conn, c, o->data, o->len);
        release_out(o);
        return;
    }
    ok = SSL_write(c->ssl, o->data, (int)o->len) == (int)o->len;
    release_out(o);
    if (!ok) {
        ERR_clear_error();
        evmpm_close(rt, conn);
    } else if (!keep) {
        SSL_shutdown(c->ssl); /* close_notify */
        ERR_clear_error();
        /* A client that said this was its last request needs no lingering
           close (unless it sent more anyway, which evmpm checks): one that
           answers the close_notify with its own does so after reading the
           response, so the reset that may meet it loses nothing. */
        evmpm_close_ex(rt, conn,
                       c->client_done && !tls_input_pending(c) ? EVMPM_CLOSE_CLIENT_DONE : 0);
    } else {
        evmpm_park_keepalive(rt, conn, tls_input_pending(c) ? EVMPM_PARK_BUFFERED : 0);
    }
}
#endif

/* Hands the response to the runtime and decides the connection's next step:
   keep-alive, close, or (when the next pipelined request is already in our
   buffer, where the socket will never announce it) run the handler again
   once the response is out. */
static void send_out(struct server *s, evmpm_runtime *rt, evmpm_conn conn, struct conn *c,
                     struct out *o, int keep) {
    uint32_t after = !keep                                   ? 0
                     : head_length(c->buf, c->len) > 0 ? EVMPM_WRITE_BUFFERED
                                                             : EVMPM_WRITE_KEEPALIVE;
    int rc;
#ifdef FILESERVER_TLS
    if (c->ssl != NULL) {
        tls_send_out(s, rt, conn, c, o, keep);
        return;
    }
#endif
    atomic_fetch_add(&s->requests, 1);
    if (o->file_fd >= 0) {
        /* The head and the file in one call: one release for both. */
        evmpm_iovec head;
        head.base = o->data;
        head.len = o->len;
        rc = evmpm_complete_sendfile(rt, conn, &head, 1, o->file_fd, 0, o->file_len, release_out,
                                     o, after);
    } else {
        rc = evmpm_complete_write(rt, conn, o->data, o->len, release_out, o, after);
    }
    if (rc == EVMPM_OK) {
        atomic_fetch_add(&s->offloaded, 1);
        return;
    }
    release_out(o); /* not taken: the buffer is still ours */
    evmpm_close(rt, conn);
}

/* Reads one request head (blocking: request_ready has seen it complete, so
   this normally returns at once) and answers it. */
static void serve_one_request(struct server *s, evmpm_runtime *rt, evmpm_conn conn,
                              struct conn *c) {
    struct request req;
    struct out *o;
    size_t head, small = 0; /* plain HTTP: every file body by sendfile */
    int status, keep;

    memset(&req, 0, sizeof req);
    if (c->buf == NULL && (c->buf = malloc(HEAD_MAX)) == NULL) {
        evmpm_close(rt, conn);
        return;
    }
    while ((head = head_length(c->buf, c->len)) == 0 && !first_line_bad(c->buf, c->len)) {
        ssize_t n;
        if (c->len == HEAD_MAX) {
            /* No line end at all: the request line alone is too long. */
            status = memchr(c->buf, '\n', c->len) ? 431 : 414;
            if ((o = error_out(NULL, status, 0, "")) != NULL)
                send_out(s, rt, conn, c, o, 0);
            else
                evmpm_close(rt, conn);
            return;
        }
        n = conn_read(c, c->buf + c->len, HEAD_MAX - c->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* closed, reset, or stalled for IO_TIMEOUT_S */
            evmpm_close(rt, conn);
            return;
        }
        c->len += (size_t)n;
    }

    status = head > 0 ? parse_request(c->buf, head, &req) : 400;
    keep = status == 0 && req.keep_alive;
    if (status != 0) {
        o = error_out(NULL, status, 0, "");
    } else if (!method_is(&req, "GET") && !req.head_only) {
        o = error_out(&req, 405, keep, "Allow: GET, HEAD\r\n");
    } else {
        char decoded[TARGET_MAX + 1];
        const char *raw;
        size_t raw_len;
        status = decode_target(&req, decoded, sizeof decoded, &raw, &raw_len);
        if (status != 0) {
            keep = 0; /* a malformed or hostile target: do not trust this client */
            o = error_out(&req, status, 0, "");
        } else if (strcmp(decoded, STATUS_PATH) == 0) {
            char text[2048];
            size_t n = format_status(s, text, sizeof text);
            o = make_out(&req, 200, keep, "text/plain; charset=utf-8", "", n, text, n);
        } else {
#ifdef FILESERVER_TLS
            if (c->ssl != NULL)
                small = TLS_SMALL_BODY;
#endif
            o = file_out(s, &req, decoded, raw, raw_len, small, &keep);
        }
    }
    if (o == NULL) { /* out of memory (or a file cut short): nothing sensible to say */
        evmpm_close(rt, conn);
        return;
    }
#ifdef FILESERVER_TLS
    c->client_done = status == 0 && req.last && c->len == head;
#endif
    /* The request is answered: keep only what came after it, and no buffer
       at all when nothing did (the usual case), so that the connection
       holds none while it idles. */
    c->len = keep ? c->len - head : 0;
    if (c->len > 0) {
        memmove(c->buf, c->buf + head, c->len);
    } else {
        free(c->buf);
        c->buf = NULL;
    }
    send_out(s, rt, conn, c, o, keep);
}

/* ---- evmpm callbacks ------------------------------------------------------ */

static void handler(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, int why) {
    struct server *s = ud;
    void *user = NULL;
    (void)why;
    if (evmpm_conn_get_user(rt, conn, &user) != EVMPM_OK) {
        evmpm_close(rt, conn);
        return;
    }
    if (user == NULL) {
        /* The connection's first request (over TLS the handshake step made
           the record already): its record. */
        struct conn *c = conn_new(fd);
        if (c == NULL || evmpm_conn_set_user(rt, conn, c) != EVMPM_OK) {
            free(c);
            evmpm_close(rt, conn);
            return;
        }
        user = c;
    }
#ifdef FILESERVER_TLS
    if (((struct conn *)user)->ssl != NULL && ((struct conn *)user)->file_fd >= 0) {
        /* The last chunk of a file body is sent: encrypt the next. */
        tls_send_chunk(s, rt, conn, user, NULL, 0);
        return;
    }
#endif
    serve_one_request(s, rt, conn, user);
}

/* The runtime closes the socket; the record (and its SSL) is ours to free.
   It runs for every connection, a failed or timed-out handshake too. */
static void on_close(void *ud, evmpm_runtime *rt, evmpm_conn conn, int fd, void *user) {
    (void)ud, (void)rt, (void)conn, (void)fd;
    conn_free(user);
}

#ifdef FILESERVER_TLS
/* The TLS listener's handshake step, on a worker, with `fd` non-blocking:
   one SSL_do_handshake, which does what the socket allows and says what
   it waits for. The first call makes the connection's record and SSL
   object and keeps them in the user pointer (on_close frees them whatever
   happens next). */
static int tls_handshake(void *listener_user, evmpm_runtime *rt, evmpm_conn conn, int fd,
                         void *user) {
    struct conn *c = user;
    int r;
    if (c == NULL) {
        c = conn_new(fd);
        if (c == NULL)
            return EVMPM_HANDSHAKE_FAIL;
        c->ssl = SSL_new(listener_user);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1 ||
            evmpm_conn_set_user(rt, conn, c) != EVMPM_OK) {
            conn_free(c);
            ERR_clear_error();
            return EVMPM_HANDSHAKE_FAIL;
        }
        SSL_set_accept_state(c->ssl);
    }
    ERR_clear_error();
    r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        /* From now on OpenSSL may read more than the record it needs, as
           the handler's SSL_read then takes a request (its record header
           and body) in one read(2) instead of two; what it reads ahead
           (a pipelined request) SSL_has_pending reports. Not during the
           handshake: the client's first request, read along with its
           Finished, would sit in OpenSSL where epoll cannot see it. */
        SSL_set_read_ahead(c->ssl, 1);
        return EVMPM_HANDSHAKE_DONE;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ: return EVMPM_HANDSHAKE_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return EVMPM_HANDSHAKE_WANT_WRITE;
    default:
        /* Not TLS (plain HTTP, garbage), a bad hello, a reset. */
        ERR_clear_error();
        return EVMPM_HANDSHAKE_FAIL;
    }
}

/* The server's TLS context: its certificate chain and key, TLS 1.2 and
   later, no buffers held while a connection idles. NULL (with the reason
   on stderr) if they do not load. */
static SSL_CTX *tls_context(const char *cert, const char *key) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "fileserver: cannot load %s and %s:\n", cert, key);
        ERR_print_errors_fp(stderr);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* read_ahead stays off (the default) for the handshake, where OpenSSL
       then reads record by record, so what follows it stays on the socket
       where epoll sees it; tls_handshake turns it on once it is done. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}
#endif

/* On the event thread, before a worker is woken: is a whole request head
   here? `data` is what waits on the socket. A connection parked with part
   of a pipelined request in its buffer has the start of the head there, so
   the blank line may straddle the two. Must not block: it only looks. */
static int request_ready(void *ud, evmpm_conn conn, void *user, const uint8_t *data, size_t len) {
    const struct conn *c = user;
    char joint[6];
    size_t from_buf, from_data;

    (void)ud, (void)conn;
    if (c == NULL || c->len == 0) {
        /* A garbage first line is answered (400) without waiting for more. */
        if (head_length(data, len) > 0 || first_line_bad((const char *)data, len))
            return EVMPM_REQUEST_COMPLETE;
        return EVMPM_REQUEST_INCOMPLETE;
    }
    if (head_length(data, len) > 0 || c->len + len >= HEAD_MAX)
        return EVMPM_REQUEST_COMPLETE; /* whole, or too large: let the handler say */
    from_buf = c->len < 3 ? c->len : 3;
    from_data = len < 3 ? len : 3;
    memcpy(joint, c->buf + c->len - from_buf, from_buf);
    memcpy(joint + from_buf, data, from_data);
    return head_length(joint, from_buf + from_data) > 0 ? EVMPM_REQUEST_COMPLETE
                                                       : EVMPM_REQUEST_INCOMPLETE;
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
    socket_tune(fd);
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
    static struct server srv;
    const char *prog = argv[0], *cert = NULL, *key = NULL, *env;
    int port, workers, tls = argc > 1 && strcmp(argv[1], "--tls") == 0;
    uint32_t header_timeout_ms = IO_TIMEOUT_S * 1000;
    char text[2048];
    struct stat st;
    evmpm_config cfg;
    evmpm_listener_config lc;
    sigset_t sigs;
    int lfd, sig, rc, probe;
#ifdef FILESERVER_TLS
    SSL_CTX *tls_ctx = NULL;
#endif

    if (tls) {
#ifndef FILESERVER_TLS
        fprintf(stderr, "%s: --tls is not available: built without OpenSSL (its headers "
                        "were not found; install libssl-dev and rebuild)\n", prog);
        return 2;
#endif
        if (argc < 4) {
            fprintf(stderr, "usage: %s --tls CERT KEY PORT DOCROOT [WORKERS]\n", prog);
            return 2;
        }
        cert = argv[2];
        key = argv[3];
        argv += 3;
        argc -= 3;
    }
    port = argc > 1 ? atoi(argv[1]) : 0;
    workers = argc > 3 ? atoi(argv[3]) : 16;
    if (argc < 3 || argc > 4 || port < 1 || port > 65535 || workers < 1 || workers > 4096) {
        fprintf(stderr, "usage: %s PORT DOCROOT [WORKERS]\n"
                        "       %s --tls CERT KEY PORT DOCROOT [WORKERS]\n", prog, prog);
        return 2;
    }
    /* For tests: how long a client may take over its request head, or over
       its TLS handshake from the accept. */
    if ((env = getenv("FILESERVER_HEADER_TIMEOUT_MS")) != NULL && atoi(env) > 0)
        header_timeout_ms = (uint32_t)atoi(env);
    if (realpath(argv[2], srv.root) == NULL || stat(srv.root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "%s: not a directory\n", argv[2]);
        return 2;
    }
    srv.root_len = strlen(srv.root);
    /* open_file's fast path, where the kernel has openat2(2) (not in a
       container that refuses it, say): "." opens the root itself. */
    srv.root_fd = open(srv.root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (srv.root_fd >= 0 && (probe = open_beneath(srv.root_fd, ".")) >= 0) {
        close(probe);
    } else if (srv.root_fd >= 0) {
        close(srv.root_fd);
        srv.root_fd = -1;
    }
    srv.started = time(NULL);

    /* Taken with sigwait() below; blocked before evmpm starts its threads,
       which inherit the mask, so none of them is interrupted. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    /* OpenSSL writes to the socket with plain send(): a client that reset
       must not kill the server. */
    signal(SIGPIPE, SIG_IGN);

#ifdef FILESERVER_TLS
    if (tls && (tls_ctx = tls_context(cert, key)) == NULL)
        return 1;
#else
    (void)cert, (void)key;
#endif

    if ((lfd = listen_on(port)) < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    evmpm_config_init(&cfg, sizeof cfg);
    cfg.worker_threads = (uint32_t)workers;
    cfg.handler = handler;
    cfg.on_close = on_close;
    cfg.user_data = &srv;
    cfg.request_ready = request_ready;
    cfg.request_peek_bytes = HEAD_MAX; /* a full window means "431" */
    cfg.header_timeout_ms = header_timeout_ms;
    evmpm_listener_config_init(&lc, sizeof lc);
#ifdef FILESERVER_TLS
    if (tls) {
        /* The handshake without a worker; no request_ready: it would see
           ciphertext. */
        lc.flags = EVMPM_LISTEN_NO_REQUEST_READY;
        lc.user_data = tls_ctx;
        lc.handshake = tls_handshake;
    }
#endif
    if ((rc = evmpm_create(&cfg, &srv.rt)) != EVMPM_OK ||
        (rc = evmpm_register_listener_ex(srv.rt, lfd, &lc)) != EVMPM_OK ||
        (rc = evmpm_start(srv.rt)) != EVMPM_OK) {
        fprintf(stderr, "evmpm: %s\n", evmpm_strerror(rc));
        return 1;
    }
    fprintf(stderr,
            "fileserver: serving %s on %s://127.0.0.1:%d/ with %d workers\n"
            "fileserver: counters at %s://127.0.0.1:%d" STATUS_PATH
            ", or on stderr: kill -USR1 %ld\n",
            srv.root, tls ? "https" : "http", port, workers, tls ? "https" : "http", port,
            (long)getpid());

    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig != SIGUSR1)
            break;
        fwrite(text, 1, format_status(&srv, text, sizeof text), stderr);
    }
    rc = evmpm_stop(srv.rt, STOP_DEADLINE_MS);
    fwrite(text, 1, format_status(&srv, text, sizeof text), stderr);
    evmpm_destroy(srv.rt);
    close(lfd);
    if (srv.root_fd >= 0)
        close(srv.root_fd);
#ifdef FILESERVER_TLS
    SSL_CTX_free(tls_ctx);
#endif
    fprintf(stderr, "fileserver: stopped by signal %d%s\n", sig,
            rc == EVMPM_ETIMEDOUT ? " (connections closed at the deadline)" : "");
    return 0;
}

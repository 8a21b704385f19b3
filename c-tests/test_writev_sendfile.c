/* The gathered and file-range forms of write completion:
 * evmpm_complete_writev sends several buffers in order with one release,
 * evmpm_complete_sendfile sends a head and then a range of a file the host
 * keeps open. Both hand the rest to the event thread as the client reads,
 * like evmpm_complete_write.
 *
 * The bodies are the pattern 'a' + i % 26, i counted from the start of
 * the file (sendfile) or of the body (writev), so a byte out of place or
 * out of order shows. The slow cases shrink the server's send buffer in
 * the handler and the client's receive buffer, so a body of a megabyte or
 * two backs up into write completion until the client reads. */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOW_RCVBUF 8192
#define SLOW_SNDBUF 4096
#define MIB (1L << 20)

/* ---- the test's state, shared with the handler's commands ---------------- */

static char file_path[64];         /* the pattern file, "" if none */
static atomic_long warnings;       /* EVMPM_LOG_WARNING lines */
static atomic_long releases_at_close = -1; /* releases when the close callback ran */

/* A file of `size` pattern bytes; its path goes to file_path. */
static void make_pattern_file(size_t size) {
    static char chunk[64 * 1024];
    size_t done = 0;
    int fd;
    snprintf(file_path, sizeof file_path, "/tmp/evmpm-sendfile-XXXXXX");
    fd = mkstemp(file_path);
    CHECK(fd >= 0);
    while (done < size) {
        size_t n = size - done < sizeof chunk ? size - done : sizeof chunk, i;
        for (i = 0; i < n; i++)
            chunk[i] = pattern_byte(done + i);
        CHECK(write(fd, chunk, n) == (ssize_t)n);
        done += n;
    }
    CHECK(close(fd) == 0);
}

static void remove_pattern_file(void) {
    if (file_path[0] != '\0')
        unlink(file_path);
    file_path[0] = '\0';
}

static void record_log(void *user_data, int level, const char *message) {
    (void)user_data;
    printf("log %d: %s\n", level, message);
    fflush(stdout);
    if (level == EVMPM_LOG_WARNING)
        atomic_fetch_add(&warnings, 1);
}

static void record_releases_at_close(struct line_server *s, evmpm_conn c, int fd) {
    (void)c, (void)fd;
    atomic_store(&releases_at_close, atomic_load(&s->releases));
}

/* ---- gathered writes -------------------------------------------------------- */

/* The buffers of one gathered write, freed together by its one release. */
struct gathered {
    struct line_server *server;
    int count;
    char *pieces[];
};

static void release_gathered(void *arg) {
    struct gathered *g = arg;
    int i;
    atomic_fetch_add(&g->server->releases, 1);
    for (i = 0; i < g->count; i++)
        free(g->pieces[i]);
    free(g);
}

/* Piece sizes, repeated until the body is complete: empty ones, single
 * bytes, and pieces larger than the socket takes at once. */
static const size_t piece_sizes[] = {1, 0, 13, 4096, 0, 65536, 1, 262144, 3};
#define NSIZES (sizeof piece_sizes / sizeof piece_sizes[0])

/* Hands "GATHERED n\n" and n pattern bytes, in many separately allocated
 * pieces, to evmpm_complete_writev. The iovec array is on the heap and
 * scribbled over and freed as soon as the call returns: the runtime must
 * have copied it. */
static void gathered_write(struct line_server *s, evmpm_conn c, int fd, size_t n,
                           uint32_t flags) {
    static const char head_fmt[] = "GATHERED %zu\n";
    int small = SLOW_SNDBUF, count = 1, i;
    size_t done = 0;
    struct gathered *g;
    evmpm_iovec *iov;
    char *head;
    /* head + pieces: an upper bound on how many */
    int most = 2 + (int)(n / 331000 + 1) * (int)NSIZES;
    CHECK(most <= EVMPM_IOV_MAX);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    g = malloc(sizeof *g + (size_t)most * sizeof g->pieces[0]);
    iov = malloc((size_t)most * sizeof *iov);
    head = malloc(32);
    CHECK(g != NULL && iov != NULL && head != NULL);
    g->server = s;
    snprintf(head, 32, head_fmt, n);
    g->pieces[0] = head;
    iov[0].base = head;
    iov[0].len = strlen(head);
    for (i = 0; done < n; i++) {
        size_t want = piece_sizes[(size_t)i % NSIZES], k;
        char *piece;
        if (want > n - done)
            want = n - done;
        CHECK(count < most);
        piece = want > 0 ? malloc(want) : NULL;
        CHECK(want == 0 || piece != NULL);
        for (k = 0; k < want; k++)
            piece[k] = pattern_byte(done + k);
        g->pieces[count] = piece;
        iov[count].base = piece; /* NULL for an empty piece: allowed */
        iov[count].len = want;
        count++;
        done += want;
    }
    g->count = count;
    CHECK_OK(evmpm_complete_writev(s->rt, c, iov, count, release_gathered, g, flags));
    memset(iov, 0xa5, (size_t)most * sizeof *iov);
    free(iov);
}

/* ---- file writes ------------------------------------------------------------- */

struct file_write {
    struct line_server *server;
    int fd;
    char head[48];
};

/* The runtime never closed the file nor moved its position: the host
 * closes it here. */
static void release_file(void *arg) {
    struct file_write *f = arg;
    CHECK(fcntl(f->fd, F_GETFD) != -1);
    CHECK_EQ(lseek(f->fd, 0, SEEK_CUR), 0);
    CHECK(close(f->fd) == 0);
    atomic_fetch_add(&f->server->releases, 1);
    free(f);
}

/* A head "FILE len\n" and the pattern file opened anew, ready for
 * evmpm_complete_sendfile (the head as head[0]). */
static struct file_write *file_write_new(struct line_server *s, long len, evmpm_iovec *head) {
    struct file_write *f = malloc(sizeof *f);
    CHECK(f != NULL);
    f->server = s;
    f->fd = open(file_path, O_RDONLY | O_CLOEXEC);
    CHECK(f->fd >= 0);
    snprintf(f->head, sizeof f->head, "FILE %ld\n", len);
    head->base = f->head;
    head->len = strlen(f->head);
    return f;
}

static void file_response(struct line_server *s, evmpm_conn c, int fd, long offset, long len,
                          uint32_t flags) {
    int small = SLOW_SNDBUF;
    evmpm_iovec head;
    struct file_write *f = file_write_new(s, len, &head);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    CHECK_OK(evmpm_complete_sendfile(s->rt, c, &head, 1, f->fd, (uint64_t)offset, (uint64_t)len,
                                     release_file, f, flags));
}

/* ---- the calls that must be refused -------------------------------------- */

static void count_release(void *arg) { atomic_fetch_add((atomic_long *)arg, 1); }

/* Every argument error of both calls, on a connection the handler holds:
 * each is refused with EVMPM_EINVAL (or ESTALE for handle 0), nothing is
 * kept, no release runs, and the connection is still the handler's to
 * decide. It then decides with EVMPM_IOV_MAX one-byte buffers (accepted). */
static void refused_calls_then_iov_max(struct line_server *s, evmpm_conn c, int sock) {
    static evmpm_iovec many[EVMPM_IOV_MAX + 1];
    static char bytes[EVMPM_IOV_MAX + 1];
    static atomic_long refused_releases;
    evmpm_runtime *rt = s->rt;
    evmpm_iovec one = {"x", 1}, bad[2] = {{"ok", 2}, {NULL, 5}}, huge[2];
    int pipe_fds[2], wronly, path_fd, file, i;
    void *arg = &refused_releases;

    for (i = 0; i <= EVMPM_IOV_MAX; i++) {
        bytes[i] = pattern_byte((size_t)i);
        many[i].base = &bytes[i];
        many[i].len = 1;
    }
    huge[0].base = "a";
    huge[0].len = SIZE_MAX / 2 + 1; /* never read: the sum is refused first */
    huge[1].base = "b";
    huge[1].len = SIZE_MAX / 2 + 1;

    /* evmpm_complete_writev */
    CHECK_EQ(evmpm_complete_writev(rt, c, many, -1, count_release, arg, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, c, many, EVMPM_IOV_MAX + 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, c, many, INT_MIN, count_release, arg, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, c, NULL, 1, count_release, arg, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, c, bad, 2, count_release, arg, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, c, huge, 2, count_release, arg, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, c, &one, 1, count_release, arg, 4), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(NULL, c, &one, 1, count_release, arg, 0), EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_writev(rt, 0, &one, 1, count_release, arg, 0), EVMPM_ESTALE);

    /* evmpm_complete_sendfile */
    file = open(file_path, O_RDONLY | O_CLOEXEC);
    wronly = open("/dev/null", O_WRONLY | O_CLOEXEC);
    path_fd = open(file_path, O_PATH | O_CLOEXEC);
    CHECK(file >= 0 && wronly >= 0 && path_fd >= 0);
    CHECK(pipe(pipe_fds) == 0);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, -1, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, 999999, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, wronly, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, path_fd, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, pipe_fds[0], 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, sock, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, file, (uint64_t)INT64_MAX + 1, 0,
                                     count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, file, (uint64_t)INT64_MAX, 1, count_release,
                                     arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, file, 0, UINT64_MAX, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, NULL, 1, file, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, many, EVMPM_IOV_MAX + 1, file, 0, 1, count_release,
                                     arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, many, -1, file, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, bad, 2, file, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, c, &one, 1, file, 0, 1, count_release, arg, 8),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(NULL, c, &one, 1, file, 0, 1, count_release, arg, 0),
             EVMPM_EINVAL);
    CHECK_EQ(evmpm_complete_sendfile(rt, 0, &one, 1, file, 0, 1, count_release, arg, 0),
             EVMPM_ESTALE);
    close(file);
    close(wronly);
    close(path_fd);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    CHECK_EQ(atomic_load(&refused_releases), 0);
    CHECK_EQ(atomic_load(&s->releases), 0);

    /* Still the handler's: exactly EVMPM_IOV_MAX buffers are taken. */
    CHECK_OK(evmpm_complete_writev(rt, c, many, EVMPM_IOV_MAX, count_release, &s->releases,
                                   EVMPM_WRITE_KEEPALIVE));
}

/* ---- the commands ------------------------------------------------------------ */

/*
 *   WRITEV n          "GATHERED n\n" + n pattern bytes, gathered; keep-alive
 *   WRITEVCLOSE n     the same, then close
 *   WRITEVEMPTY       no buffers at all (NULL, 0); keep-alive
 *   REFUSED           refused_calls_then_iov_max
 *   FILE off len      "FILE len\n" + len bytes of the file from off; keep-alive
 *   FILECLOSE off len the same, then close
 *   MODE              "BLOCKING\n" or "NONBLOCKING\n": the socket's mode now
 */
static enum line_command_result command(struct line_server *s, evmpm_conn c, int fd,
                                        const char *line) {
    long a, b;
    if (sscanf(line, "WRITEV %ld", &a) == 1) {
        gathered_write(s, c, fd, (size_t)a, EVMPM_WRITE_KEEPALIVE);
    } else if (sscanf(line, "WRITEVCLOSE %ld", &a) == 1) {
        gathered_write(s, c, fd, (size_t)a, 0);
    } else if (strcmp(line, "WRITEVEMPTY") == 0) {
        CHECK_OK(evmpm_complete_writev(s->rt, c, NULL, 0, count_release, &s->releases,
                                       EVMPM_WRITE_KEEPALIVE));
    } else if (strcmp(line, "REFUSED") == 0) {
        refused_calls_then_iov_max(s, c, fd);
    } else if (sscanf(line, "FILE %ld %ld", &a, &b) == 2) {
        file_response(s, c, fd, a, b, EVMPM_WRITE_KEEPALIVE);
    } else if (sscanf(line, "FILECLOSE %ld %ld", &a, &b) == 2) {
        file_response(s, c, fd, a, b, 0);
    } else if (strcmp(line, "MODE") == 0) {
        int flags = fcntl(fd, F_GETFL);
        CHECK(flags != -1);
        line_reply(fd, flags & O_NONBLOCK ? "NONBLOCKING\n" : "BLOCKING\n");
        return LINE_PARK;
    } else {
        return LINE_UNKNOWN;
    }
    return LINE_DECIDED;
}

static void start(struct line_server *s, uint32_t workers) {
    evmpm_config cfg;
    line_server_config(s, &cfg);
    cfg.worker_threads = workers;
    cfg.log = record_log;
    s->command = command;
    s->close_hook = record_releases_at_close;
    line_server_start(s, &cfg);
}

/* Waits until the client's response backed up into write completion and
 * no handler or worker is busy with it. */
static void wait_writing(struct line_server *s) {
    WAIT_UNTIL(line_server_stats(s).conns_writing == 1 && atomic_load(&s->in_handler) == 0 &&
                   line_server_stats(s).workers_busy == 0,
               5000);
}

static void expect_mode_blocking(int fd) {
    send_str(fd, "MODE\n");
    EXPECT_LINE(fd, "BLOCKING");
}

/* ---- cases ------------------------------------------------------------------- */

static void writev_to_slow_reader_arrives_in_order_and_whole(void) {
    const size_t n = (size_t)(2 * MIB + 12345);
    struct line_server s;
    char want[64];
    int fd, other;
    /* One worker: serving another client during the write proves it free. */
    start(&s, 1);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    snprintf(want, sizeof want, "WRITEV %zu\n", n);
    send_str(fd, want);
    wait_writing(&s);
    CHECK_EQ(atomic_load(&s.releases), 0);
    other = line_client(&s);
    CHECK_EQ(line_server_stats(&s).conns_writing, 1);
    snprintf(want, sizeof want, "GATHERED %zu", n);
    EXPECT_LINE(fd, want);
    /* Slowly at first (16 KiB a read, 1 ms apart), then the rest. */
    recv_pattern(fd, 0, 256 * 1024, 16 * 1024, 1);
    CHECK_EQ(atomic_load(&s.releases), 0);
    recv_pattern(fd, 256 * 1024, n - 256 * 1024, 64 * 1024, 0);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    /* Keep-alive: the same connection is served again, its socket as the
     * handler left it. */
    ping(fd);
    expect_mode_blocking(fd);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    close(other);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
}

static void refused_arguments_keep_nothing_and_iov_max_is_taken(void) {
    struct line_server s;
    int fd;
    make_pattern_file(4096);
    start(&s, 2);
    fd = line_client(&s);
    send_str(fd, "REFUSED\n");
    /* The decision after the refusals: 1024 one-byte buffers. */
    recv_pattern(fd, 0, EVMPM_IOV_MAX, EVMPM_IOV_MAX, 0);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    ping(fd);
    /* No buffers at all: nothing sent, released once, moves on. */
    send_str(fd, "WRITEVEMPTY\n");
    WAIT_UNTIL(atomic_load(&s.releases) == 2, 5000);
    ping(fd);
    CHECK_EQ(atomic_load(&s.closes), 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 2);
    remove_pattern_file();
}

/* A client that hangs up while a file goes to it: sendfile(2) raises
 * SIGPIPE, which no send flag prevents. The runtime must not let it reach
 * the process, whose SIGPIPE here is left at its default action (death):
 * the connection closes once, its buffer is released once, the server
 * serves on. */
static void sendfile_to_a_client_that_hangs_up_raises_no_sigpipe(void) {
    enum { ROUNDS = 20, CLIENTS = 8 };
    const long len = 4 * MIB;
    struct line_server s;
    char req[64], buf[4096];
    int fd[CLIENTS], i, r;
    long answered = 0;
    CHECK(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
    make_pattern_file((size_t)len);
    start(&s, 2);
    snprintf(req, sizeof req, "FILE 0 %ld\n", len);
    /* Hang-ups at every moment of the write: some as it starts on the
     * worker, some in write completion. */
    for (r = 0; r < ROUNDS; r++) {
        for (i = 0; i < CLIENTS; i++) {
            fd[i] = connect_loopback(s.port);
            send_str(fd[i], req);
        }
        for (i = 0; i < CLIENTS; i++) {
            if (i % 2 == 0)
                CHECK(read(fd[i], buf, sizeof buf) > 0);
            close(fd[i]);
        }
        answered += CLIENTS;
        WAIT_UNTIL(atomic_load(&s.releases) == answered, 5000);
    }
    i = line_client(&s);
    close(i);
    WAIT_UNTIL(atomic_load(&s.closes) == ROUNDS * CLIENTS + 1, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    remove_pattern_file();
}

static void sendfile_1mib_to_slow_reader_arrives_byte_exact(void) {
    /* An odd offset into the file: the range, not the file, is sent. */
    const long offset = 4096 + 7, len = MIB;
    struct line_server s;
    char req[64];
    int fd, other;
    make_pattern_file((size_t)(offset + len + 4096));
    start(&s, 1);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    snprintf(req, sizeof req, "FILE %ld %ld\n", offset, len);
    send_str(fd, req);
    wait_writing(&s);
    CHECK_EQ(atomic_load(&s.releases), 0);
    other = line_client(&s);
    snprintf(req, sizeof req, "FILE %ld", len);
    EXPECT_LINE(fd, req);
    recv_pattern(fd, (size_t)offset, 128 * 1024, 16 * 1024, 1);
    CHECK_EQ(atomic_load(&s.releases), 0);
    recv_pattern(fd, (size_t)offset + 128 * 1024, (size_t)len - 128 * 1024, 64 * 1024, 0);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    /* Keep-alive, and the socket is back in blocking mode for the handler. */
    expect_mode_blocking(fd);
    ping(fd);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    CHECK_EQ(atomic_load(&s.closes), 0);
    CHECK_EQ(atomic_load(&warnings), 0);
    close(fd);
    close(other);
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    remove_pattern_file();
}

static void sendfile_of_a_short_file_closes_and_releases_once(void) {
    const long have = 64 * 1024;
    struct line_server s;
    size_t got;
    int fd;
    make_pattern_file((size_t)have);
    start(&s, 2);
    fd = line_client(&s);
    /* A megabyte asked for, 64 KiB there: keep-alive is impossible. */
    send_str(fd, "FILE 0 1048576\n");
    EXPECT_LINE(fd, "FILE 1048576");
    got = recv_pattern_or_end(fd, 0, (size_t)MIB, 64 * 1024, 0, 1);
    CHECK_EQ(got, have);
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    CHECK_EQ(atomic_load(&s.closes), 1);
    /* Abandoned with the write pending: the close callback came first. */
    CHECK_EQ(atomic_load(&releases_at_close), 0);
    CHECK_EQ(atomic_load(&warnings), 1);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    remove_pattern_file();
}

static void sendfile_of_a_file_cut_mid_write_closes(void) {
    const long cut = 256 * 1024;
    struct line_server s;
    size_t got;
    int fd;
    make_pattern_file((size_t)MIB);
    start(&s, 2);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    send_str(fd, "FILE 0 1048576\n");
    wait_writing(&s);
    /* Little has left yet (a few KiB of buffers): the cut is ahead. */
    CHECK(truncate(file_path, cut) == 0);
    EXPECT_LINE(fd, "FILE 1048576");
    got = recv_pattern_or_end(fd, 0, (size_t)MIB, 64 * 1024, 0, 1);
    CHECK_EQ(got, cut);
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_EQ(atomic_load(&releases_at_close), 0);
    CHECK_EQ(atomic_load(&warnings), 1);
    close(fd);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&s.closes), 1);
    remove_pattern_file();
}

static void without_keepalive_both_close_after_the_body(void) {
    struct line_server s;
    int fd;
    make_pattern_file(300 * 1024);
    start(&s, 2);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    send_str(fd, "WRITEVCLOSE 200000\n");
    EXPECT_LINE(fd, "GATHERED 200000");
    recv_pattern(fd, 0, 200000, 16 * 1024, 0);
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_EQ(atomic_load(&s.releases), 1);
    /* Sent in full: released before the close callback. */
    CHECK_EQ(atomic_load(&releases_at_close), 1);
    close(fd);

    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    send_str(fd, "FILECLOSE 1000 200000\n");
    EXPECT_LINE(fd, "FILE 200000");
    recv_pattern(fd, 1000, 200000, 16 * 1024, 0);
    CHECK(wait_closed(fd, 5000));
    WAIT_UNTIL(atomic_load(&s.closes) == 2, 5000);
    CHECK_EQ(atomic_load(&s.releases), 2);
    CHECK_EQ(atomic_load(&releases_at_close), 2);
    CHECK_EQ(atomic_load(&warnings), 0);
    close(fd);
    WAIT_UNTIL(line_server_stats(&s).connections == 0, 5000);
    CHECK_EQ(line_server_stats(&s).timed_out, 0);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 2);
    remove_pattern_file();
}

/* A suspended connection is written by the host thread that calls: the
 * first sends run there, the rest on the event thread. */
static void sendfile_on_a_suspended_connection_from_a_host_thread(void) {
    const long len = 512 * 1024;
    struct line_server s;
    struct file_write *f;
    evmpm_iovec head;
    evmpm_conn c;
    int fd;
    make_pattern_file((size_t)len);
    start(&s, 2);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    ping(fd);
    c = line_server_suspend_client(&s, fd);
    f = file_write_new(&s, len, &head);
    CHECK_OK(evmpm_complete_sendfile(s.rt, c, &head, 1, f->fd, 0, (uint64_t)len, release_file, f,
                                     EVMPM_WRITE_KEEPALIVE));
    CHECK_EQ(atomic_load(&s.suspended_count), 1);
    EXPECT_LINE(fd, "FILE 524288");
    recv_pattern(fd, 0, (size_t)len, 16 * 1024, 0);
    WAIT_UNTIL(atomic_load(&s.releases) == 1, 5000);
    expect_mode_blocking(fd);
    ping(fd);
    CHECK_EQ(line_server_stats(&s).conns_suspended, 0);
    close(fd);
    WAIT_UNTIL(atomic_load(&s.closes) == 1, 5000);
    CHECK_OK(line_server_stop(&s, 1000));
    CHECK_EQ(atomic_load(&s.releases), 1);
    remove_pattern_file();
}

/* The stop's deadline abandons a file write to a client that never reads:
 * close callback, then release (which closes the file), once each. */
static void stop_abandons_a_pending_sendfile_once(void) {
    struct line_server s;
    int fd;
    make_pattern_file((size_t)MIB);
    start(&s, 2);
    fd = connect_loopback_rcvbuf(s.port, SLOW_RCVBUF);
    send_str(fd, "FILE 0 1048576\n");
    wait_writing(&s);
    CHECK_EQ(line_server_stop(&s, 200), EVMPM_ETIMEDOUT);
    CHECK_EQ(atomic_load(&s.closes), 1);
    CHECK_EQ(atomic_load(&s.releases), 1);
    CHECK_EQ(atomic_load(&releases_at_close), 0);
    CHECK_EQ(atomic_load(&s.double_closes), 0);
    close(fd);
    remove_pattern_file();
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"writev_to_slow_reader_arrives_in_order_and_whole",
         writev_to_slow_reader_arrives_in_order_and_whole},
        {"refused_arguments_keep_nothing_and_iov_max_is_taken",
         refused_arguments_keep_nothing_and_iov_max_is_taken},
        {"sendfile_1mib_to_slow_reader_arrives_byte_exact",
         sendfile_1mib_to_slow_reader_arrives_byte_exact},
        {"sendfile_of_a_short_file_closes_and_releases_once",
         sendfile_of_a_short_file_closes_and_releases_once},
        {"sendfile_of_a_file_cut_mid_write_closes", sendfile_of_a_file_cut_mid_write_closes},
        {"without_keepalive_both_close_after_the_body",
         without_keepalive_both_close_after_the_body},
        {"sendfile_on_a_suspended_connection_from_a_host_thread",
         sendfile_on_a_suspended_connection_from_a_host_thread},
        {"stop_abandons_a_pending_sendfile_once", stop_abandons_a_pending_sendfile_once},
        {"sendfile_to_a_client_that_hangs_up_raises_no_sigpipe",
         sendfile_to_a_client_that_hangs_up_raises_no_sigpipe},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

/*
 * Shared pieces of the hostile-world suite (c-tests/hostile_*.c): process
 * figures (resident memory, CPU time, descriptors), client I/O that reports
 * a closed or reset connection instead of failing on it, a seeded PRNG, and
 * the end-of-case bookkeeping every scenario repeats.
 *
 * Figures a case measured are printed as "figure: ..." lines; tests/hostile.rs
 * shows them after each program ran.
 */
#ifndef EVMPM_HOSTILE_UTIL_H
#define EVMPM_HOSTILE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "harness.h"

/* ---- figures ---------------------------------------------------------- */

/* Prints "figure: <text>" on its own line, flushed at once. */
void figure(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Resident set size of this process in KiB (VmRSS in /proc/self/status). */
long vm_rss_kb(void);
/* User + system CPU time of the whole process (every thread), in µs.
 * Needs no descriptor, so it works while descriptors are exhausted. */
int64_t process_cpu_us(void);
/* The highest open descriptor number of this process. */
int highest_fd(void);
/* Threads of this process that belong to an evmpm runtime (named
 * "evmpm-..."): the event thread and the workers. */
int runtime_thread_count(void);

/* ---- clients that expect to be closed ----------------------------------- */

/* Results of the try_* calls: > 0 success, else one of these or -errno. */
#define TRY_EOF 0
#define TRY_TIMEOUT (-100000)

/* A connection to 127.0.0.1:port in non-blocking mode, connect() started
 * (it may complete later). Returns the descriptor or -errno when socket()
 * or connect() failed outright. */
int connect_start(int port);
/* Back to blocking mode. */
void set_blocking(int fd);
/* Sends all of buf: 1, or -errno (EPIPE, ECONNRESET, ...). Never SIGPIPE. */
int try_send_all(int fd, const void *buf, size_t len);
/* Reads one '\n'-terminated line (without it): 1, TRY_EOF, TRY_TIMEOUT or
 * -errno. `*got` (if not NULL) is how many bytes of the line arrived. */
int try_recv_line(int fd, char *buf, size_t cap, int ms, size_t *got);
/* Reads exactly len bytes: 1, TRY_EOF, TRY_TIMEOUT or -errno. */
int try_recv_exact(int fd, void *buf, size_t len, int ms);
/* Waits for the end of the stream: 1 on EOF, TRY_TIMEOUT, -errno; a byte
 * arriving instead is a failure of the case. */
int try_recv_eof(int fd, int ms);
/* Checks the line server's BIG pattern: byte i of a response is 'a' + i % 26.
 * `offset` is the position of buf[0] in the response. */
int big_pattern_ok(const char *buf, size_t len, size_t offset);

/* A line_server command hook: "SNDBUF n" sets the connection's SO_SNDBUF
 * to n and answers "SNDBUF". On loopback the kernel otherwise grows a send
 * buffer to megabytes at once, and a response of a few hundred KiB never
 * reaches write completion; with a fixed small buffer it does. Returns
 * LINE_UNKNOWN for other lines, so a test's own hook can call it first. */
enum line_command_result sndbuf_command(struct line_server *s, evmpm_conn c, int fd,
                                        const char *line);

/* ---- PRNG ------------------------------------------------------------------ */

/* xoshiro-style generator state; splitmix64 seeds it. */
struct rng {
    uint64_t s[4];
};
void rng_seed(struct rng *r, uint64_t seed);
uint64_t rng_next(struct rng *r);
/* Uniform in [0, n), n > 0. */
uint32_t rng_below(struct rng *r, uint32_t n);
/* The value of environment variable `var` if set (decimal or 0x hex), else
 * a seed from the clock. */
uint64_t seed_from_env(const char *var);

/* ---- bookkeeping -------------------------------------------------------- */

/* Waits (up to `ms`) until the runtime holds no connection, then checks
 * that every accepted connection had its close callback exactly once. */
void expect_all_closed(struct line_server *s, int ms);

#endif

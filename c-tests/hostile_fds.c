/* Descriptor exhaustion: with the process out of descriptors, the runtime's
 * accept fails with EMFILE while connections wait in the backlog. It must
 * back off (not spin on the readable listener), keep serving the
 * connections it has, and accept again once descriptors are freed.
 *
 * The clients live in this process and count against the same limit, so
 * the arithmetic is done up front: the clients that will wait are created
 * (socket() only) while descriptors are plentiful, the soft limit is then
 * lowered to just above the highest open descriptor, and every remaining
 * number is taken by dup()s of /dev/null. connect() needs no descriptor,
 * accept() does: only the runtime runs short. */
#define _GNU_SOURCE
#include "harness.h"
#include "hostile_util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum { ESTABLISHED = 16, PENDING = 8, HEADROOM = 24 };

static void accept_backs_off_when_descriptors_run_out(void) {
    struct line_server s;
    evmpm_config cfg;
    evmpm_stats st;
    struct rlimit original, lowered;
    int established[ESTABLISHED], pending[PENDING], fillers[256];
    int nfill = 0, devnull, fds_before, fd, i;
    uint64_t accepted, backoffs_before_window, backoffs_after_window;
    int64_t cpu, window;
    char line[64];

    line_server_config(&s, &cfg);
    cfg.worker_threads = 4;
    line_server_start(&s, &cfg);
    fds_before = open_fd_count();
    for (i = 0; i < ESTABLISHED; i++)
        established[i] = line_client(&s);
    for (i = 0; i < PENDING; i++) {
        pending[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(pending[i] >= 0);
    }
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(devnull >= 0);

    CHECK(getrlimit(RLIMIT_NOFILE, &original) == 0);
    lowered = original;
    lowered.rlim_cur = (rlim_t)(highest_fd() + 1 + HEADROOM);
    CHECK(setrlimit(RLIMIT_NOFILE, &lowered) == 0);
    for (;;) {
        fd = dup(devnull);
        if (fd < 0)
            break;
        CHECK(nfill < (int)(sizeof fillers / sizeof fillers[0]));
        fillers[nfill++] = fd;
    }
    CHECK(errno == EMFILE);
    CHECK(nfill > 2 * PENDING);

    /* From here on no descriptor is free: no opendir, no new sockets. */
    st = line_server_stats(&s);
    accepted = st.accepted;
    for (i = 0; i < PENDING; i++) {
        /* Blocking: the kernel completes the handshake into the backlog. */
        connect_socket_loopback(pending[i], s.port);
        send_str(pending[i], "PING\n");
    }
    WAIT_UNTIL(line_server_stats(&s).accept_backoffs >= 1, 5000);
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, accepted);
    CHECK_EQ(st.connections, ESTABLISHED);

    /* The established connections are served throughout. */
    for (i = 0; i < ESTABLISHED; i++)
        ping(established[i]);

    /* One second with the listener readable and accept failing: a runtime
     * that spins burns a core here; one that backs off sleeps. The window
     * is the measurement, not a wait for something to happen. */
    backoffs_before_window = line_server_stats(&s).accept_backoffs;
    cpu = process_cpu_us();
    window = now_ms();
    sleep_ms(1000);
    window = now_ms() - window;
    cpu = process_cpu_us() - cpu;
    backoffs_after_window = line_server_stats(&s).accept_backoffs;
    figure("out of descriptors with %d connections pending: CPU %.1f%% of one core over %lld ms, "
           "accept back-offs %llu before the window, %llu after",
           PENDING, 100.0 * (double)cpu / (double)(window * 1000), (long long)window,
           (unsigned long long)backoffs_before_window, (unsigned long long)backoffs_after_window);
    CHECK(cpu < window * 1000 / 2);
    /* It keeps retrying (and failing) while the shortage lasts, paused
     * between tries. (A try resumes accepting for the instant it takes, and
     * the back-off is counted just before the pause: wait for both.) */
    WAIT_UNTIL(line_server_stats(&s).accept_backoffs > backoffs_after_window &&
                   line_server_stats(&s).accepting_paused == 1,
               5000);
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, accepted);
    for (i = 0; i < ESTABLISHED; i++)
        ping(established[i]);

    /* Free descriptors: the waiting clients are accepted and answered. */
    for (i = 0; i < nfill; i++)
        close(fillers[i]);
    for (i = 0; i < PENDING; i++) {
        recv_line(pending[i], line, sizeof line, 5000);
        if (strcmp(line, "PONG") != 0)
            harness_fail(__FILE__, __LINE__, "pending client %d got \"%s\"", i, line);
    }
    /* And so is a client that comes afterwards. */
    fd = line_client(&s);
    st = line_server_stats(&s);
    CHECK_EQ(st.accepted, accepted + PENDING + 1);
    figure("recovered: %d pending clients and a new one served, %llu back-offs in all",
           PENDING, (unsigned long long)st.accept_backoffs);

    CHECK(setrlimit(RLIMIT_NOFILE, &original) == 0);
    close(fd);
    close(devnull);
    for (i = 0; i < ESTABLISHED; i++)
        close(established[i]);
    for (i = 0; i < PENDING; i++)
        close(pending[i]);
    expect_all_closed(&s, 5000);
    CHECK_EQ(open_fd_count(), fds_before);
    CHECK_OK(line_server_stop(&s, 1000));
}

int main(int argc, char **argv) {
    static const struct test_case cases[] = {
        {"accept_backs_off_when_descriptors_run_out", accept_backs_off_when_descriptors_run_out},
    };
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}

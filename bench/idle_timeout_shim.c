/*
 * Link-time shim for the benchmark only: lets the hello examples keep idle
 * keep-alive connections longer than their built-in 5 seconds, without
 * changing examples-c/.
 *
 * hello_evmpm keeps evmpm_config_init's default keep-alive timeout (5 s);
 * hello_blocking sets SO_RCVTIMEO to IO_TIMEOUT_S (5 s) on every connection.
 * The idle-connection scenarios hold connections for longer than that, so
 * bench/run.sh links the examples with
 *   -Wl,--wrap=evmpm_config_init   (hello_evmpm; fileserver too, for scenario
 *                                   i, so that every server there has the
 *                                   same idle timeout)
 *   -Wl,--wrap=setsockopt          (hello_blocking)
 * (compiling this file with -DWRAP_EVMPM_CONFIG_INIT or -DWRAP_SETSOCKOPT to
 * match) and sets HELLO_KEEPALIVE_S. Without that variable both wrappers pass
 * everything through unchanged. Once the examples take the idle timeout as
 * an argument or read HELLO_KEEPALIVE_S themselves, this file can go.
 */
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "evmpm.h"

static int keepalive_s(void) {
    const char *s = getenv("HELLO_KEEPALIVE_S");
    int v = s ? atoi(s) : 0;
    return v > 0 && v <= 86400 ? v : 0;
}

#ifdef WRAP_EVMPM_CONFIG_INIT
int __real_evmpm_config_init(struct evmpm_config *cfg, size_t cfg_size);
int __wrap_evmpm_config_init(struct evmpm_config *cfg, size_t cfg_size);

int __wrap_evmpm_config_init(struct evmpm_config *cfg, size_t cfg_size) {
    int rc = __real_evmpm_config_init(cfg, cfg_size);
    if (rc == 0 && keepalive_s() > 0)
        cfg->keepalive_timeout_ms = (uint32_t)keepalive_s() * 1000u;
    return rc;
}
#endif

#ifdef WRAP_SETSOCKOPT
int __real_setsockopt(int fd, int level, int name, const void *val, socklen_t len);
int __wrap_setsockopt(int fd, int level, int name, const void *val, socklen_t len);

/* Only the receive timeout is an idle timeout; the send timeout stays. */
int __wrap_setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
    if (level == SOL_SOCKET && name == SO_RCVTIMEO && keepalive_s() > 0) {
        struct timeval tv = {keepalive_s(), 0};
        return __real_setsockopt(fd, level, name, &tv, sizeof tv);
    }
    return __real_setsockopt(fd, level, name, val, len);
}
#endif

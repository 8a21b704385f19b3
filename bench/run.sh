#!/usr/bin/env bash
# Side-by-side benchmark: hello_evmpm against hello_blocking (the same server,
# a thread per connection), nginx and Apache httpd (event MPM), all on
# 127.0.0.1. Not part of the test suite: nothing here passes or fails on
# timing. Every figure is a median over rounds, and every comparison is the
# median of per-round ratios between servers measured in the same round;
# the servers take turns within each round (interleaved, rotating order), so
# a noisy neighbour on the machine hits them alike.
#
# Scenarios:
#   a  keep-alive, 100-byte responses, at 1, 10, 100 and 1,000 connections:
#      hello_evmpm, hello_blocking and nginx; Apache at 100
#   b  the same while idle keep-alive connections are held open (10,000)
#   c  connection per request (Connection: close)
#   d  flatness: hello_evmpm with 0, 5,000 and 15,000 parked connections
#   e  the hand-off path (event thread -> worker -> park): ns per request
#   f  system calls per request (perf, else strace): connection per request
#      and the hand-off (keep-alive is in h; here too without perf)
#   g  handlers that block: every tenth request sleeps 5 ms (10, 100 and
#      1,000 connections), then every request 50 ms (200 connections):
#      hello_evmpm against hello_blocking
#   h  counters per keep-alive request, 100 connections (perf attached to
#      each server): system calls, context switches, threads in state R
#   i  static files over keep-alive: examples-c/fileserver (sendfile(2)
#      through evmpm_complete_sendfile) against nginx with sendfile on,
#      a 100 KiB and a 1 MiB file, at 10 and 100 connections
#   j  HTTPS: examples-c/fileserver --tls against nginx with ssl, one
#      certificate made for the run (EC P-256), TLSv1.3 and one cipher
#      suite for both: keep-alive at 100 connections, full handshakes per
#      second (bench/tls_handshakes.c) and wrk's connection per request
#      (resumed handshakes), then 10,000 idle HTTPS keep-alive connections
#      held (threads, RSS per idle connection, req/s with them ÷ without).
#      Skipped, saying why, where OpenSSL 3's headers (libssl-dev), the
#      openssl command, nginx's ssl module or wrk is missing
# The report starts with the targets, each with its measured figure and
# whether it is met. Timing never changes the exit status: 0 when it ran, 1
# when i or j failed (a server answered wrong, or exited under load).
#
# usage: bench/run.sh [--quick] [--rounds N] [--only LIST] [--no-install] [--keep]
#   --quick       1 s load runs, fewer idle connections (2,000 in b and j,
#                 1,000 and 3,000 in d), f's system calls in total only;
#                 about 5 minutes
#   --rounds N    rounds per scenario (default 3, at least 3)
#   --only LIST   run only these scenarios, comma-separated (default a,b,c,d,e,f,g,h,i,j)
#   --no-install  do not apt-get missing tools; fail instead
#   --keep        keep the temporary directory (configs, logs, raw numbers)
#
# Smoke tests only (the report then says it is not a measurement):
#   BENCH_DURATION=S  seconds per load run (wrk, and the syscall counts);
#                     wrk's shortest is 1
#   BENCH_ROUNDS=N    rounds per scenario, 1 or more (overrides --rounds)
#   e.g. BENCH_DURATION=1 BENCH_ROUNDS=1 bench/run.sh --quick --only a
#
# Prints a markdown report and writes it to bench/results/<date>.md
# (<date>-quick.md for --quick, -only-<LIST> added for --only, -smoke for
# the smoke-test knobs). The report's header says whether the machine was
# quiet, and a table gives each scenario's load (see scenario_begin). Installs
# wrk, nginx, apache2-bin, strace and (for i) curl with apt-get when missing
# (as root), never starting their services; for j alone only wrk and nginx,
# and j is skipped rather than the run failing when they cannot be had.
# OpenSSL's headers and command are never installed: j says what is missing.
# Raises its descriptor limit to the hard limit (full mode needs about
# 15,500: 15,000 parked).
set -euo pipefail

usage() {
    sed -n '/^# usage:/,/^# limit/p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

MODE=full
ROUNDS=3
INSTALL=1
KEEP=0
ONLY=a,b,c,d,e,f,g,h,i,j
COMMAND_LINE="bench/run.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case $1 in
    --quick) MODE=quick ;;
    --rounds)
        [ $# -ge 2 ] || usage
        ROUNDS=$2
        shift
        ;;
    --only)
        [ $# -ge 2 ] || usage
        ONLY=$2
        shift
        ;;
    --no-install) INSTALL=0 ;;
    --keep) KEEP=1 ;;
    -h | --help) usage 0 ;;
    *) usage ;;
    esac
    shift
done
case $ROUNDS in '' | *[!0-9]*) usage ;; esac
[ "$ROUNDS" -ge 3 ] || { echo "run.sh: --rounds must be at least 3" >&2; exit 2; }
# The smoke-test knobs: shorter than any measurement should be.
SMOKE=0
for v in BENCH_DURATION BENCH_ROUNDS; do
    [ -n "${!v:-}" ] || continue
    case ${!v} in *[!0-9]* | 0*) echo "run.sh: $v must be a whole number, 1 or more" >&2; exit 2 ;; esac
    SMOKE=1
    COMMAND_LINE="$v=${!v} $COMMAND_LINE"
done
ROUNDS=${BENCH_ROUNDS:-$ROUNDS}
case ,$ONLY, in *[!a-j,]*) usage ;; esac
want() { case ,$ONLY, in *,$1,*) return 0 ;; esac; return 1; }
ALL_SCENARIOS=0
[ "$(echo "$ONLY" | tr ',' '\n' | sort -u | tr -d '\n')" = abcdefghij ] && ALL_SCENARIOS=1
# CORE: any of a to i, which need wrk, nginx and Apache (the run fails
# without them); j alone only skips itself when what it needs is missing.
CORE=0
for x in a b c d e f g h i; do want $x && CORE=1; done

# The machine's load before this script adds any (install, build, load).
LOAD_LAUNCH=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- settings -----------------------------------------------------------------

if [ "$MODE" = quick ]; then
    DUR=1                  # seconds per wrk run
    IDLE_B=2000            # idle connections in scenario b
    IDLE_J=2000            # idle HTTPS connections in scenario j
    IDLE_D="0 1000 3000"   # idle connections in scenario d
    HANDOFF_N=20000        # round trips per hand-off measurement
    SYSC_DUR=1             # seconds of load while counting syscalls
else
    DUR=5
    IDLE_B=10000
    IDLE_J=10000
    IDLE_D="0 5000 15000"
    HANDOFF_N=100000
    SYSC_DUR=3
fi
if [ -n "${BENCH_DURATION:-}" ]; then
    DUR=$BENCH_DURATION
    SYSC_DUR=$BENCH_DURATION
fi
CONNS=100                  # wrk connections, and the concurrent hand-off client
KA_LEVELS="1 10 100 1000"  # connections in scenario a
# What hello_evmpm's keep-alive req/s must reach in a, against hello_blocking
# and against nginx, at each level: where a few threads running short
# handlers should beat a thread per connection and nginx's two processes.
ka_want() { case $1 in 10 | 100) echo 1.3 ;; *) echo 1.0 ;; esac; }
# hello_evmpm and the hand-off echo server run with the runtime's defaults
# (no WORKERS argument): what is measured is what a user gets.
BLOCKING_WORKERS=1100      # hello_blocking needs a thread per connection: 1,000 (a) + margin
BLOCKING_MAX_WORKERS=4096  # the most hello_blocking accepts (scenario b)
APACHE_THREADS=64          # per process, 2 processes: more threads than wrk connections
KEEPALIVE_S=900            # idle timeout given to every server (see idle_timeout_shim.c)
MIX_LEVELS="10 100 1000"   # connections in g's mixed load
MIX_EVERY=10               # g: every tenth request is GET /slow (bench/slow_every.lua) ...
MIX_SLOW_MS=5              # ... which sleeps this long before its answer
ALLSLOW_CONNS=200          # g: every request is GET /slow, on this many connections,
ALLSLOW_MS=50              # sleeping this long: at most 200 / 50 ms = 4,000 req/s
ALLSLOW_IDEAL=$((ALLSLOW_CONNS * 1000 / ALLSLOW_MS))
URL_PATH=/hello.txt        # the 100-byte file; the hello servers answer any path
FILE_SIZES="102400 1048576" # i: the files served (bytes): 100 KiB and 1 MiB
FILE_LEVELS="10 100"        # i: wrk connections
IDLE_TARGET=10000          # the idle connections the targets speak of (b, j)
TLS_SUITE=TLS_AES_256_GCM_SHA384 # j: the one TLS 1.3 cipher suite of every server and client
TLS_GROUP=X25519           # j: the one key exchange group
TLS_HS_THREADS=$(nproc)    # j: client threads for the handshake loads (see scenario_j)
PARKED_TARGET=15000        # the parked connections of the flatness target (d)
BUSY_LOAD=1.0              # a 1-minute load average above this at a scenario's start: busy
QUIET_OTHER=0.10           # CPUs of other work (average over a scenario) a quiet run stays under
export LC_ALL=C            # one decimal point for awk, sort and printf
NCPU=$(nproc)              # evmpm's default running threads: one per CPU

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- processes we start, and cleanup ----------------------------------------

TMP=""
PIDS=()          # every process this script started and has not reaped yet
POLICY_RC_CREATED=0

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# The direct children of a process, from /proc (no procps needed).
children_of() {
    cat /proc/[0-9]*/stat 2>/dev/null |
        awk -v pp="$1" '{ pid = $1; sub(/^.*\) /, ""); if ($2 == pp) print pid }' || true
}
# A process's start time (clock ticks since boot): with the pid, it tells a
# process from a later one that reuses the pid.
start_of() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }' || true; }

# "PID:START" for each process and each of its children (the workers nginx
# and Apache fork): what to kill should the parent not take them down.
tree_of() {
    local p c
    for p in "$@"; do
        for c in "$p" $(children_of "$p"); do echo "$c:$(start_of "$c")"; done
    done
}
# Kills (SIGKILL) what is left of a tree_of list: only processes whose start
# time still matches, so never a stranger that got a recycled pid.
kill_leftovers() {
    local e pid st
    for e in "$@"; do
        pid=${e%%:*} st=${e#*:}
        [ -n "$st" ] && [ "$(start_of "$pid")" = "$st" ] && kill -KILL "$pid" 2>/dev/null
    done
    return 0
}

cleanup() {
    local p i alive tree
    set +e
    tree=$(tree_of "${PIDS[@]+"${PIDS[@]}"}")
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 50); do
        alive=0
        for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -KILL "$p" 2>/dev/null; done
    sleep 0.2
    kill_leftovers $tree
    if [ $POLICY_RC_CREATED = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ $KEEP = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops a process we started (TERM, then KILL after $2 seconds) and reaps it.
stop_pid() {
    local pid=$1 grace=${2:-10} i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq $((grace * 20))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# ---- tools ------------------------------------------------------------------

# perf counts syscalls through tracepoints, which need a perf that runs on
# this kernel and permission to use them; strace -c works anywhere.
perf_works() {
    command -v perf >/dev/null &&
        perf stat -e raw_syscalls:sys_enter -x, -o /dev/null true >/dev/null 2>&1
}

install_missing() {
    local pkgs=()
    if [ $CORE = 1 ]; then
        command -v wrk >/dev/null || pkgs+=(wrk)
        want i && { command -v curl >/dev/null || pkgs+=(curl); }
        command -v nginx >/dev/null || pkgs+=(nginx)
        command -v apache2 >/dev/null || [ -x /usr/lib/apache2/modules/mod_mpm_event.so ] || pkgs+=(apache2-bin)
        perf_works || command -v strace >/dev/null || pkgs+=(strace)
    else # j alone
        command -v wrk >/dev/null || pkgs+=(wrk)
        command -v nginx >/dev/null || pkgs+=(nginx)
    fi
    [ ${#pkgs[@]} = 0 ] && return 0
    if [ $CORE = 0 ] && { [ $INSTALL = 0 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; }; then
        log "not installing ${pkgs[*]} (needs root, apt-get and no --no-install): scenario j will say it is skipped"
        return 0
    fi
    [ $INSTALL = 1 ] || die "missing: ${pkgs[*]} (run without --no-install, as root)"
    [ "$(id -u)" = 0 ] || die "missing: ${pkgs[*]}; run as root to have them installed"
    command -v apt-get >/dev/null || die "missing: ${pkgs[*]}, and no apt-get to install them"
    log "installing ${pkgs[*]}"
    # Package scripts must not start system services: Debian's policy-rc.d
    # mechanism tells invoke-rc.d no, for the length of the install only.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
        >/dev/null || die "apt-get install ${pkgs[*]} failed"
    if [ $POLICY_RC_CREATED = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

PATH=$PATH:/usr/sbin:/sbin
command -v cargo >/dev/null || die "cargo is needed to build the library (https://rustup.rs)"
command -v "${CC:-cc}" >/dev/null || die "a C compiler is needed (\$CC or cc)"
install_missing
NGINX=$(command -v nginx || true)
APACHE=$(command -v apache2 || true)
APACHE_MODULES=/usr/lib/apache2/modules
[ $CORE = 0 ] || [ -f $APACHE_MODULES/mod_mpm_event.so ] || die "Apache's event MPM is not in $APACHE_MODULES"
# The user Apache's children run as: the distribution's web user if any.
if id www-data >/dev/null 2>&1; then APACHE_USER=www-data APACHE_GROUP=www-data
else APACHE_USER=nobody APACHE_GROUP=$(id -gn nobody 2>/dev/null || echo nogroup); fi

# Syscall counting: perf's syscall tracepoints when they work here, else
# strace. perf counts every syscall and, by name, the ones a server's request
# path uses (each tracepoint costs tens of milliseconds to tear down, so not
# all of them).
if perf_works; then
    SYSCOUNT=perf
    PERF_EVENTS=raw_syscalls:sys_enter
    for d in /sys/kernel/tracing/events/syscalls /sys/kernel/debug/tracing/events/syscalls; do
        [ -d "$d/sys_enter_read" ] || continue
        for sc in read write readv writev recvfrom sendto recvmsg sendmsg sendfile64 \
            epoll_wait epoll_pwait epoll_ctl futex accept4 close shutdown setsockopt \
            getsockopt fcntl ioctl openat newfstatat statx pread64 mmap munmap madvise \
            mprotect clone3 rt_sigprocmask exit set_robust_list poll sched_yield; do
            [ -d "$d/sys_enter_$sc" ] && PERF_EVENTS=$PERF_EVENTS,syscalls:sys_enter_$sc
        done
        break
    done
    # f makes 20 counted runs, and each of these tracepoints takes perf tens
    # of milliseconds to tear down: in quick mode f counts the total alone.
    F_EVENTS=$PERF_EVENTS
    [ "$MODE" = quick ] && F_EVENTS=raw_syscalls:sys_enter
elif command -v strace >/dev/null; then
    SYSCOUNT=strace
else
    SYSCOUNT=none
fi

# ---- build ----------------------------------------------------------------------

TMP=$(mktemp -d /tmp/evmpm-bench.XXXXXX)
chmod 755 "$TMP" # nginx and Apache workers run as unprivileged users
mkdir -p "$TMP/bin" "$TMP/logs" "$TMP/www" "$TMP/out"
RAW=$TMP/raw.tsv
: >"$RAW"

# What is being measured: the commit, and any uncommitted changes to what
# goes into the programs (bench/results excepted), as they are at build time.
GIT_COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(cd "$ROOT" && git status --porcelain -- src include examples-c bench Cargo.toml \
    Cargo.lock build.rs cbindgen.toml native-static-libs.txt ':(exclude)bench/results' \
    2>/dev/null | cut -c4- | tr '\n' ' ' |
    sed 's/ $//' || true)

log "building the library (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
LIB=$TARGET_DIR/release/libevmpm.a
[ -f "$LIB" ] || die "$LIB is missing"
# What a program linking libevmpm.a needs after it (native-static-libs.txt).
read -ra NATIVE <<<"$(sed '/^[[:space:]]*#/d' "$ROOT/native-static-libs.txt" | tr '\n' ' ')"
CFLAGS=(-O2 -g -std=c11 -Wall -Wextra -pedantic -pthread -I"$ROOT/include")
CC=${CC:-cc}
log "building the C programs"
$CC "${CFLAGS[@]}" "$ROOT/examples-c/hello_evmpm.c" \
    -DWRAP_EVMPM_CONFIG_INIT "$ROOT/bench/idle_timeout_shim.c" -Wl,--wrap=evmpm_config_init \
    "$LIB" "${NATIVE[@]}" -o "$TMP/bin/hello_evmpm"
$CC "${CFLAGS[@]}" "$ROOT/examples-c/hello_blocking.c" \
    -DWRAP_SETSOCKOPT "$ROOT/bench/idle_timeout_shim.c" -Wl,--wrap=setsockopt \
    "${NATIVE[@]}" -o "$TMP/bin/hello_blocking"
$CC "${CFLAGS[@]}" "$ROOT/examples-c/fileserver.c" \
    -DWRAP_EVMPM_CONFIG_INIT "$ROOT/bench/idle_timeout_shim.c" -Wl,--wrap=evmpm_config_init \
    "$LIB" "${NATIVE[@]}" -o "$TMP/bin/fileserver"
$CC "${CFLAGS[@]}" "$ROOT/bench/handoff.c" "$LIB" "${NATIVE[@]}" -o "$TMP/bin/handoff"
$CC "${CFLAGS[@]}" "$ROOT/bench/idle_clients.c" -o "$TMP/bin/idle_clients"

# j needs OpenSSL 3 (headers and libraries: Debian's libssl-dev) for its
# programs, the openssl command for its certificate, nginx with its ssl
# module, and wrk; J_SKIP says what is missing, and j is skipped.
J_SKIP=""
if want j; then
    j_missing=()
    command -v wrk >/dev/null || j_missing+=("wrk is missing")
    if [ -z "$NGINX" ]; then
        j_missing+=("nginx is missing")
    elif ! "$NGINX" -V 2>&1 | grep -q -- '--with-http_ssl_module'; then
        j_missing+=("nginx was built without its ssl module (http_ssl_module)")
    fi
    command -v openssl >/dev/null || j_missing+=("the openssl command is missing (Debian: openssl)")
    printf '%s\n' '#include <openssl/ssl.h>' \
        '#if OPENSSL_VERSION_NUMBER < 0x30000000L' '#error OpenSSL 3 is needed' '#endif' \
        'int main(void) { return OPENSSL_init_ssl(0, NULL) == 1 ? 0 : 1; }' >"$TMP/openssl_probe.c"
    $CC "$TMP/openssl_probe.c" -lssl -lcrypto -o "$TMP/openssl_probe" >/dev/null 2>&1 ||
        j_missing+=("OpenSSL 3's headers or libraries are missing (Debian: libssl-dev)")
    J_SKIP=$(printf '%s; ' "${j_missing[@]+"${j_missing[@]}"}" | sed 's/; $//')
    if [ -z "$J_SKIP" ]; then
        log "building the HTTPS programs (OpenSSL $(openssl version | cut -d' ' -f2))"
        $CC "${CFLAGS[@]}" -DFILESERVER_TLS "$ROOT/examples-c/fileserver.c" \
            -DWRAP_EVMPM_CONFIG_INIT "$ROOT/bench/idle_timeout_shim.c" -Wl,--wrap=evmpm_config_init \
            "$LIB" -lssl -lcrypto "${NATIVE[@]}" -o "$TMP/bin/fileserver-tls"
        $CC "${CFLAGS[@]}" -DIDLE_CLIENTS_TLS "$ROOT/bench/idle_clients.c" -lssl -lcrypto \
            -o "$TMP/bin/idle_clients-tls"
        $CC "${CFLAGS[@]}" "$ROOT/bench/tls_handshakes.c" -lssl -lcrypto -o "$TMP/bin/tls_handshakes"
    else
        log "scenario j will be skipped: $J_SKIP"
    fi
fi

# ---- limits -------------------------------------------------------------------

# Every process here (servers, wrk, idle_clients) inherits the soft limit
# set here; idle_clients also raises its own to the hard limit. The most any
# one process needs: the parked connections plus the load and some spare.
max_idle=0
for n in $IDLE_B $IDLE_D $IDLE_J; do [ "$n" -gt $max_idle ] && max_idle=$n; done
max_load=$ALLSLOW_CONNS
for n in $CONNS $KA_LEVELS $MIX_LEVELS; do [ "$n" -gt $max_load ] && max_load=$n; done
NEED_NOFILE=$((max_idle + max_load + 256))
HARD_NOFILE=$(ulimit -Hn)
if [ "$HARD_NOFILE" != unlimited ] && [ "$HARD_NOFILE" -lt $NEED_NOFILE ]; then
    ulimit -Hn $NEED_NOFILE 2>/dev/null || true # root may raise it (up to fs.nr_open)
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || ulimit -Sn $NEED_NOFILE 2>/dev/null || true
NOFILE=$(ulimit -Sn)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
if [ "$NOFILE" -lt $NEED_NOFILE ]; then
    die "the descriptor limit ($NOFILE) is below the $NEED_NOFILE needed; use --quick"
fi
NGINX_NOFILE=$((NOFILE < 65536 ? NOFILE : 65536))

# ---- server configurations ------------------------------------------------------

# The 100-byte body the hello servers send, as a file for nginx and Apache.
printf '%s\n' "Hello from a C server. This body is 100 bytes long and the same for every request, on every socket." \
    >"$TMP/www/hello.txt"
[ "$(wc -c <"$TMP/www/hello.txt")" = 100 ] || die "hello.txt is not 100 bytes"
chmod 644 "$TMP/www/hello.txt"
chmod 755 "$TMP/www"

# Ports: the first free ones from 18300 up.
# Free: no TCP socket of any state uses it locally (from /proc, no iproute2).
port_free() {
    ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p="$(printf ':%04X' "$1")" '$2 ~ p "$" { found = 1 } END { exit !found }'
}
NEXT_PORT=18300
next_port() {
    while ! port_free $NEXT_PORT; do NEXT_PORT=$((NEXT_PORT + 1)); done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

# NGINX_ROOT: the document root ($TMP/www when unset). NGINX_SENDFILE: on
# or off; unset, off, nginx's default, which the hello scenarios measure.
# NGINX_TLS: when set, HTTPS (scenario j): the listener with ssl, the run's
# certificate, TLSv1.3, TLS_SUITE and TLS_GROUP only; session tickets and
# the (absent) session cache at nginx's defaults.
write_nginx_conf() { # port
    local listen="listen 127.0.0.1:$1 backlog=511;"
    [ -z "${NGINX_TLS:-}" ] || listen="listen 127.0.0.1:$1 ssl backlog=511;
        ssl_certificate $TLS_DIR/cert.pem;
        ssl_certificate_key $TLS_DIR/key.pem;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites $TLS_SUITE;
        ssl_ecdh_curve $TLS_GROUP;"
    mkdir -p "$TMP/nginx/tmp"
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
master_process on;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile $NGINX_NOFILE;
events { worker_connections $NGINX_NOFILE; }
http {
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout ${KEEPALIVE_S}s;
    default_type text/plain;
    sendfile ${NGINX_SENDFILE:-off};
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    server {
        $listen
        root ${NGINX_ROOT:-$TMP/www};
        location / { }
    }
}
EOF
}

write_apache_conf() { # port
    mkdir -p "$TMP/apache/run"
    : >"$TMP/apache/mime.types"
    cat >"$TMP/apache/httpd.conf" <<EOF
ServerRoot "$TMP/apache"
ServerName 127.0.0.1
Listen 127.0.0.1:$1
PidFile "$TMP/apache/httpd.pid"
DefaultRuntimeDir "$TMP/apache/run"
ErrorLog "$TMP/apache/error.log"
LogLevel warn
LoadModule mpm_event_module $APACHE_MODULES/mod_mpm_event.so
LoadModule authz_core_module $APACHE_MODULES/mod_authz_core.so
LoadModule mime_module $APACHE_MODULES/mod_mime.so
User $APACHE_USER
Group $APACHE_GROUP
# Two processes of $APACHE_THREADS threads, fixed (the spare-thread limits
# never fork or reap a process); AsyncRequestWorkerFactor stays at its
# default of 2. Fewer threads than client connections would make Apache
# close keep-alive connections whenever all its workers are busy.
StartServers 2
ServerLimit 2
ThreadsPerChild $APACHE_THREADS
ThreadLimit $APACHE_THREADS
MaxRequestWorkers $((2 * APACHE_THREADS))
MinSpareThreads $APACHE_THREADS
MaxSpareThreads $((4 * APACHE_THREADS))
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout $KEEPALIVE_S
Timeout 60
ListenBacklog 511
DocumentRoot "$TMP/www"
<Directory "/">
    AllowOverride None
    Require all denied
</Directory>
<Directory "$TMP/www">
    Options None
    Require all granted
</Directory>
TypesConfig "$TMP/apache/mime.types"
AddType text/plain .txt
EOF
}

# ---- starting and stopping servers ------------------------------------------------

wait_port() { # port: until it accepts (at most 10 s)
    local i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# start_server KIND PORT [WORKERS]: starts it in the foreground of a
# background job, under $WRAP (a syscall counter) when set. Sets SPID to the
# server's process (the master, for nginx and Apache) and JOB to the job.
# The hello servers sleep SLOW_MS (MIX_SLOW_MS when unset) before they
# answer /slow.
WRAP=()
start_server() {
    local kind=$1 port=$2 workers=${3:-} i
    # Empty WORKERS: the server's own default (for hello_evmpm, evmpm's).
    local logf="$TMP/logs/$kind.$port.log"
    case $kind in
    evmpm | blocking)
        HELLO_KEEPALIVE_S=$KEEPALIVE_S HELLO_SLOW_MS=${SLOW_MS:-$MIX_SLOW_MS} "${WRAP[@]+"${WRAP[@]}"}" \
            "$TMP/bin/hello_$kind" "$port" ${workers:+"$workers"} >>"$logf" 2>&1 &
        ;;
    nginx | nginx-tls) # nginx-tls: scenario j, HTTPS
        NGINX_TLS=$([ "$kind" = nginx ] || echo 1) write_nginx_conf "$port"
        "${WRAP[@]+"${WRAP[@]}"}" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
            -e "$TMP/nginx/error.log" >>"$logf" 2>&1 &
        ;;
    apache)
        write_apache_conf "$port"
        "${WRAP[@]+"${WRAP[@]}"}" "$APACHE" -f "$TMP/apache/httpd.conf" -DFOREGROUND \
            >>"$logf" 2>&1 &
        ;;
    fileserver) # scenario i: serves FILES_ROOT
        HELLO_KEEPALIVE_S=$KEEPALIVE_S "${WRAP[@]+"${WRAP[@]}"}" \
            "$TMP/bin/fileserver" "$port" "$FILES_ROOT" ${workers:+"$workers"} >>"$logf" 2>&1 &
        ;;
    fileserver-tls) # scenario j: HTTPS, serves $TMP/www
        HELLO_KEEPALIVE_S=$KEEPALIVE_S "${WRAP[@]+"${WRAP[@]}"}" "$TMP/bin/fileserver-tls" --tls \
            "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" "$port" "$TMP/www" ${workers:+"$workers"} \
            >>"$logf" 2>&1 &
        ;;
    handoff-evmpm)
        "${WRAP[@]+"${WRAP[@]}"}" "$TMP/bin/handoff" evmpm "$port" 0 >>"$logf" 2>&1 &
        ;;
    handoff-ready)
        "${WRAP[@]+"${WRAP[@]}"}" "$TMP/bin/handoff" evmpm "$port" 0 --ready \
            >>"$logf" 2>&1 &
        ;;
    handoff-threads)
        "${WRAP[@]+"${WRAP[@]}"}" "$TMP/bin/handoff" threads "$port" >>"$logf" 2>&1 &
        ;;
    *) die "unknown server $kind" ;;
    esac
    JOB=$!
    PIDS+=("$JOB")
    SPID=$JOB
    if [ ${#WRAP[@]} -gt 0 ]; then
        SPID=""
        for i in $(seq 200); do
            SPID=$(children_of "$JOB" | head -n1)
            [ -n "$SPID" ] && break
            sleep 0.05
        done
        [ -n "$SPID" ] || die "$kind did not start under ${WRAP[0]}"
        PIDS+=("$SPID")
    fi
    wait_port "$port" || { cat "$logf" >&2; die "$kind did not listen on $port"; }
}

stop_server() { # stops the server SPID of job JOB
    local spid=$1 job=$2 i tree
    tree=$(tree_of "$spid")
    if [ "$spid" != "$job" ]; then
        # Under a syscall counter: stop the server and let the counter write
        # its totals and exit by itself.
        kill -TERM "$spid" 2>/dev/null || true
        for i in $(seq 400); do
            kill -0 "$job" 2>/dev/null || break
            sleep 0.05
        done
        forget_pid "$spid"
    fi
    stop_pid "$job" 15
    # A master that died before its workers would leave them behind.
    kill_leftovers $tree
}

# Threads and resident memory (KiB) of a process and its children.
threads_of() {
    local p t=0
    for p in $1 $(children_of "$1"); do
        t=$((t + $(awk '/^Threads:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo $t
}
# cpu_ticks PID: user + system CPU of a process (clock ticks), its exited
# threads included; cpu_tree PID: the same with its children (workers).
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 } END { if (NR == 0) print 0 }'
}
cpu_tree() {
    local p t=0
    for p in $1 $(children_of "$1"); do t=$((t + $(cpu_ticks "$p"))); done
    echo $t
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
rss_of() {
    local p t=0
    for p in $1 $(children_of "$1"); do
        t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo $t
}

# ---- load and idle connections ------------------------------------------------------

# run_wrk OUTFILE PORT [wrk options]: one bounded wrk run, with WRK_CONNS
# connections (CONNS when unset) on WRK_THREADS threads (1 when unset), for
# WRK_PATH (URL_PATH when unset) over WRK_SCHEME (http when unset), under
# the command in the array WRK_WRAP when set (a counter attached to the
# server for exactly the length of the run).
WRK_WRAP=()
run_wrk() {
    local out=$1 port=$2
    shift 2
    timeout -k 5 $((DUR + 30)) "${WRK_WRAP[@]+"${WRK_WRAP[@]}"}" wrk -t"${WRK_THREADS:-1}" -c"${WRK_CONNS:-$CONNS}" -d"${DUR}"s --latency "$@" \
        "${WRK_SCHEME:-http}://127.0.0.1:$port${WRK_PATH:-$URL_PATH}" >"$out" 2>&1 || true
}

# parse_wrk FILE: "rps p99_us requests errors" (errors: socket errors and
# non-2xx answers; p99 "nan" when nothing was served).
parse_wrk() {
    awk '
    function us(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n; if (u == "ms") return n * 1000
        if (u == "s") return n * 1e6; if (u == "m") return n * 6e7
        return n
    }
    /^ *99%/ { p99 = us($2) }
    /requests in/ { req = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $5 }
    END {
        if (rps == "") rps = 0; if (req == "") req = 0
        if (p99 == "" || req == 0) p99 = "nan"
        print rps, p99, req, err + 0
    }' "$1"
}

rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# While a wrk run goes, SAMPLE_PID (when set) is sampled half way through:
# threads and RSS of the server (its children included), recorded as
# KEY.threads and KEY.rss (KiB). What the server holds under load. Its CPU
# time over the run, divided by the requests served, is KEY.cpu (ns).
SAMPLE_PID=""
SAMPLER=""
sampler_start() { # OUTFILE
    [ -n "$SAMPLE_PID" ] || return 0
    local pid=$SAMPLE_PID out=$1
    (
        sleep "$(awk -v d="$DUR" 'BEGIN { print d / 2 }')"
        echo "$(threads_of "$pid") $(rss_of "$pid")" >"$out"
    ) &
    SAMPLER=$!
    PIDS+=("$SAMPLER")
}
sampler_end() { # SCEN ROUND KEY OUTFILE
    local t=nan r=nan
    [ -n "$SAMPLER" ] || return 0
    wait "$SAMPLER" 2>/dev/null || true
    forget_pid "$SAMPLER"
    SAMPLER=""
    [ -s "$4" ] && read -r t r <"$4"
    rec "$1" "$2" "$3.threads" "$t"
    rec "$1" "$2" "$3.rss" "$r"
}

# With WATCH_EVERY set (seconds), SAMPLE_PID is also watched all through the
# run, every WATCH_EVERY seconds: the most threads seen (KEY.threads_max) and
# the mean number in state R, running or waiting for a CPU (KEY.running).
# Each look costs the watcher a few milliseconds of CPU.
WATCH_EVERY=""
WATCHER=""
running_of() { # PID...: threads in state R
    local p
    for p in "$@"; do cat /proc/"$p"/task/*/stat 2>/dev/null || true; done |
        awk '{ sub(/^.*\) /, ""); if ($1 == "R") n++ } END { print n + 0 }'
}
watch_start() { # OUTFILE
    [ -n "$SAMPLE_PID" ] && [ -n "$WATCH_EVERY" ] || return 0
    local out=$1 procs
    # The processes are fixed for the run: the server and its children.
    procs="$SAMPLE_PID $(children_of "$SAMPLE_PID" | tr '\n' ' ')"
    : >"$out"
    (
        local p t
        while kill -0 "$SAMPLE_PID" 2>/dev/null; do
            t=0
            # shellcheck disable=SC2086 # a list of pids
            for p in $procs; do t=$((t + $({ ls /proc/"$p"/task 2>/dev/null || true; } | wc -l))); done
            # shellcheck disable=SC2086
            echo "$t $(running_of $procs)" >>"$out"
            sleep "$WATCH_EVERY"
        done
    ) &
    WATCHER=$!
    PIDS+=("$WATCHER")
}
watch_end() { # SCEN ROUND KEY OUTFILE
    [ -n "$WATCHER" ] || return 0
    kill "$WATCHER" 2>/dev/null || true
    wait "$WATCHER" 2>/dev/null || true
    forget_pid "$WATCHER"
    WATCHER=""
    rec "$1" "$2" "$3.threads_max" "$(awk '$1 > m { m = $1 } END { print NR ? m : "nan" }' "$4")"
    rec "$1" "$2" "$3.running" "$(awk '{ s += $2 } END { print NR ? s / NR : "nan" }' "$4")"
}

# wrk_rec SCEN ROUND KEY PORT [wrk options]: one run, recorded.
wrk_rec() {
    local scen=$1 round=$2 key=$3 port=$4 out rps p99 req err c0 c1
    shift 4
    out="$TMP/out/$scen.$key.$round.wrk"
    [ -z "$SAMPLE_PID" ] || c0=$(cpu_tree "$SAMPLE_PID")
    sampler_start "$out.sample"
    watch_start "$out.watch"
    run_wrk "$out" "$port" "$@"
    watch_end "$scen" "$round" "$key" "$out.watch"
    [ -z "$SAMPLE_PID" ] || c1=$(cpu_tree "$SAMPLE_PID")
    sampler_end "$scen" "$round" "$key" "$out.sample"
    read -r rps p99 req err < <(parse_wrk "$out")
    if [ -n "$SAMPLE_PID" ]; then
        rec "$scen" "$round" "$key.cpu" "$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v n="$req" 'BEGIN { print (n > 0 ? (b - a) * 1e9 / hz / n : "nan") }')"
    fi
    rec "$scen" "$round" "$key.rps" "$rps"
    rec "$scen" "$round" "$key.p99" "$p99"
    rec "$scen" "$round" "$key.errors" "$err"
    log "  $scen r$round $key: $rps req/s, p99 ${p99} us, $err errors"
}

warm_up() { # PORT: a short run, not recorded
    timeout 20 wrk -t1 -c$CONNS -d1s "http://127.0.0.1:$1$URL_PATH" >/dev/null 2>&1 || true
}

# idle_open PORT N: opens N idle keep-alive connections and waits until they
# are parked (or the set-up ends: 60 s at most, or 3 s without progress).
# With IDLE_TLS set, HTTPS ones (idle_clients --tls). Sets IDLE_PID and
# IDLE_OUT.
IDLE_SEQ=0
idle_open() {
    local port=$1 n=$2 i
    IDLE_SEQ=$((IDLE_SEQ + 1))
    IDLE_OUT="$TMP/out/idle.$IDLE_SEQ"
    "$TMP/bin/idle_clients${IDLE_TLS:+-tls}" "$port" "$n" ${IDLE_TLS:+--tls} --path "$URL_PATH" --setup-timeout 60 \
        --stall 3 --hold-max 600 </dev/null >"$IDLE_OUT" 2>>"$TMP/logs/idle_clients.log" &
    IDLE_PID=$!
    PIDS+=("$IDLE_PID")
    for i in $(seq 1400); do
        grep -qs '^ready' "$IDLE_OUT" && return 0
        kill -0 "$IDLE_PID" 2>/dev/null || die "idle_clients exited early"
        sleep 0.05
    done
    die "idle_clients did not finish setting up"
}
# idle_field KEY: a key=value from idle_clients' output (the latest line).
idle_field() { sed -n "s/.*[ ]$1=\([0-9]*\).*/\1/p" "$IDLE_OUT" | tail -n1; }
# idle_close: idle_clients checks which connections the server closed,
# reports, and closes the rest.
idle_close() {
    stop_pid "$IDLE_PID" 30
}


# ---- statistics -------------------------------------------------------------------

# vals SCEN KEY: the recorded values, one per round ("nan" skipped).
vals() { awk -F'\t' -v s="$1" -v k="$2" '$1 == s && $3 == k && $4 != "nan" { print $4 + 0 }' "$RAW"; }
# ratios SCEN KEY_A KEY_B: A / B for each round that has both.
ratios() {
    awk -F'\t' -v s="$1" -v a="$2" -v b="$3" '
    BEGIN { OFMT = "%.6f" }
    $1 == s && $3 == a && $4 != "nan" { A[$2] = $4 + 0 }
    $1 == s && $3 == b && $4 != "nan" { B[$2] = $4 + 0 }
    END { for (r in A) if ((r in B) && B[r] > 0) print A[r] / B[r] }' "$RAW"
}
# summary: "median min max count" of the numbers on stdin ("nan nan nan 0").
summary() {
    sort -g | awk 'BEGIN { OFMT = "%.6f" } { v[n++] = $1 + 0 }
    END {
        if (n == 0) { print "nan nan nan 0"; exit }
        m = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
        print m, v[0], v[n - 1], n
    }'
}
med() { vals "$1" "$2" | summary | cut -d' ' -f1; }
# vals_round SCEN ROUND KEY: the value recorded in that round.
vals_round() { awk -F'\t' -v s="$1" -v r="$2" -v k="$3" '$1 == s && $2 == r && $3 == k { v = $4 } END { print v == "" ? "nan" : v }' "$RAW"; }
ratio() { ratios "$1" "$2" "$3" | summary | cut -d' ' -f1; }

fmt_int() { # 1234567 -> 1,234,567
    [ "$1" = nan ] && { echo "n/a"; return; }
    awk -v v="$1" 'BEGIN {
        s = sprintf("%.0f", v); neg = substr(s, 1, 1) == "-"; if (neg) s = substr(s, 2)
        o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
        print (neg ? "-" : "") s o
    }'
}
fmt_ms() { [ "$1" = nan ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.2f ms", v / 1000 }'; }
fmt_x() { [ "$1" = nan ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.2f×", v }'; }
fmt_mib() { [ "$1" = nan ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1024 }'; }
fmt_b() { [ "$1" = nan ] && echo "n/a" || echo "$(fmt_int "$1") B"; }
fmt_pct() { [ "$1" = nan ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.0f%%", v * 100 }'; }
fmt_us() { [ "$1" = nan ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.1f µs", v / 1000 }'; }

# rotate "a b c" ROUND: the list started at element ROUND mod length.
rotate() {
    local -a xs turn=()
    local n i
    read -ra xs <<<"$1"
    n=${#xs[@]}
    for ((i = 0; i < n; i++)); do turn+=("${xs[$(((i + $2) % n))]}"); done
    echo "${turn[@]}"
}

# ---- the machine's load, scenario by scenario -------------------------------------

# The load average counts runnable threads, this script's own among them: a
# scenario's start sees what the one before left behind, for minutes after
# (it decays over a minute). So each scenario also gets the CPU time that
# other work took while it ran: the machine's user + nice + system time
# (/proc/stat) minus the CPU time of this script and every process it started
# (bash's `times` for those reaped, /proc for every live descendant, such as
# the servers scenarios a and c share), minus the kernel's own threads
# (ksoftirqd, kworkers: much of their work is this run's loopback traffic),
# shown apart. Interrupt time is left out on both sides: the kernel may
# charge the loopback traffic's softirqs to no process. Steal (time the
# hypervisor gave to other guests) is shown apart too.
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4, $9 }' /proc/stat; }
# kthread_ticks: user + system ticks of the kernel's threads (kthreadd, pid
# 2, and its children), those alive now.
# (cat fails for a process that ended meanwhile: what it read is enough.)
kthread_ticks() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
        awk '{ pid = $1; sub(/^.*\) /, ""); if (pid == 2 || $2 == 2) t += $12 + $13 } END { print t + 0 }'
}
# own_seconds: user + system seconds of this shell, the children it reaped
# (bash's `times`) and every live process descending from it (/proc: the
# servers, the wrappers and what runs under them). The caller runs `times
# >"$TMP/times"` first, in this shell: own_seconds runs in a command
# substitution, a subshell, whose `times` would time the subshell.
own_seconds() {
    local live
    live=$({ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root=$$ '
        { pid = $1; sub(/^.*\) /, ""); pp[pid] = $2; t[pid] = $12 + $13 }
        END {
            for (p in pp) {
                q = pp[p]
                while (q > 1 && q != root) q = pp[q]
                if (q == root) s += t[p]
            }
            print s + 0
        }')
    awk -v live="$live" -v hz="$CLK_TCK" '
        { for (i = 1; i <= NF; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } }
        END { printf "%.3f\n", s + live / hz }' "$TMP/times"
}
SCEN_DONE=""   # the scenarios measured, in order
declare -A SC_T0 SC_BUSY0 SC_STEAL0 SC_OWN0 SC_KT0
scenario_begin() { # SCEN
    local l1 l5 l15
    read -r l1 l5 l15 _ </proc/loadavg
    rec load "$1" start "$l1 $l5 $l15"
    read -r "SC_BUSY0[$1]" "SC_STEAL0[$1]" < <(machine_ticks)
    SC_KT0[$1]=$(kthread_ticks)
    times >"$TMP/times"
    SC_OWN0[$1]=$(own_seconds)
    SC_T0[$1]=$EPOCHREALTIME
    log "scenario $1: load average $l1 $l5 $l15 at its start$(awk -v l="$l1" -v b=$BUSY_LOAD 'BEGIN { if (l > b) print " (busy)" }')"
}
scenario_end() { # SCEN
    local t1 busy1 steal1 own1 kt1 other steal kernel l1 l5 l15
    t1=$EPOCHREALTIME
    read -r busy1 steal1 < <(machine_ticks)
    kt1=$(kthread_ticks)
    times >"$TMP/times"
    own1=$(own_seconds)
    read -r l1 l5 l15 _ </proc/loadavg
    read -r other steal kernel < <(awk -v t0="${SC_T0[$1]}" -v t1="$t1" -v b0="${SC_BUSY0[$1]}" -v b1="$busy1" \
        -v s0="${SC_STEAL0[$1]}" -v s1="$steal1" -v o0="${SC_OWN0[$1]}" -v o1="$own1" \
        -v k0="${SC_KT0[$1]}" -v k1="$kt1" -v hz="$CLK_TCK" 'BEGIN {
        w = t1 - t0; if (w <= 0) w = 1
        k = (k1 - k0) / hz; if (k < 0) k = 0 # a kernel thread that ended takes its time along
        o = ((b1 - b0) / hz - (o1 - o0) - k) / w; if (o < 0) o = 0
        printf "%.3f %.3f %.3f\n", o, (s1 - s0) / hz / w, k / w
    }')
    rec load "$1" end "$l1 $l5 $l15"
    rec load "$1" other "$other"
    rec load "$1" steal "$steal"
    rec load "$1" kernel "$kernel"
    rec load "$1" seconds "$(awk -v a="${SC_T0[$1]}" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')"
    SCEN_DONE="$SCEN_DONE $1"
    log "scenario $1 done: load average $l1 $l5 $l15; other work $other CPUs, kernel threads $kernel, steal $steal"
}
# load_field SCEN KEY: a recorded value of the machine-load table.
load_field() { awk -F'\t' -v s="$1" -v k="$2" '$1 == "load" && $2 == s && $3 == k { print $4 }' "$RAW"; }

T_START=$(date +%s)

SERVERS4="evmpm blocking nginx apache"
SERVERS3="evmpm blocking nginx" # a's servers at every level; Apache only at CONNS
HANDOFFS="handoff-threads handoff-evmpm handoff-ready"

start_kind() { # KIND PORT: a server of the benchmark with its worker setting
    case $1 in
    evmpm) start_server evmpm "$2" ;;
    blocking) start_server blocking "$2" "${3:-$BLOCKING_WORKERS}" ;;
    *) start_server "$1" "$2" ;;
    esac
}

# ---- a and c: keep-alive and connection-per-request against four servers ---------

scenarios_a_c() {
    local s r c
    declare -A PORT_OF SPID_OF JOB_OF
    log "scenarios a and c: hello_evmpm (evmpm's defaults), hello_blocking ($BLOCKING_WORKERS), nginx, Apache"
    for s in $SERVERS4; do
        next_port
        PORT_OF[$s]=$PORT
        start_kind $s "$PORT"
        SPID_OF[$s]=$SPID
        JOB_OF[$s]=$JOB
    done
    for s in $SERVERS4; do warm_up "${PORT_OF[$s]}"; done
    if want a; then
        # Each level in turn, the servers in rotating order within it: each
        # ratio compares runs a few seconds apart. Apache only at CONNS: its
        # 2 × 64 threads would close keep-alive connections at 1,000.
        scenario_begin a
        for r in $(seq "$ROUNDS"); do
            for c in $KA_LEVELS; do
                for s in $(rotate "$([ "$c" = $CONNS ] && echo "$SERVERS4" || echo "$SERVERS3")" "$r"); do
                    SAMPLE_PID=${SPID_OF[$s]}
                    WRK_CONNS=$c wrk_rec a "$r" "$s.c$c" "${PORT_OF[$s]}"
                done
            done
        done
        scenario_end a
    fi
    if want c; then
        scenario_begin c
        for r in $(seq "$ROUNDS"); do
            for s in $(rotate "$SERVERS4" "$r"); do
                SAMPLE_PID=${SPID_OF[$s]}
                wrk_rec c "$r" "$s" "${PORT_OF[$s]}" -H 'Connection: close'
            done
        done
        scenario_end c
    fi
    SAMPLE_PID=""
    for s in $SERVERS4; do stop_server "${SPID_OF[$s]}" "${JOB_OF[$s]}"; done
}

# ---- b: the same with idle keep-alive connections held open ----------------------

# Each server, fresh in each round: a run without idle connections, then
# IDLE_B idle connections opened on the same process, then a run with them
# held. Last in each round, the hand-off echo server (bench/handoff.c) holds
# the same idle connections: evmpm's own memory per idle connection, without
# the per-connection record hello_evmpm allocates.
scenario_b() {
    local r s rss0 rss1 parked
    log "scenario b: $IDLE_B idle keep-alive connections"
    for r in $(seq "$ROUNDS"); do
        for s in $(rotate "$SERVERS4" "$r"); do
            next_port
            start_kind $s "$PORT" $BLOCKING_MAX_WORKERS
            warm_up "$PORT"
            SAMPLE_PID=$SPID
            wrk_rec b "$r" "$s.noidle" "$PORT"
            rss0=$(rss_of "$SPID")
            idle_open "$PORT" "$IDLE_B"
            sleep 0.5
            rss1=$(rss_of "$SPID")
            parked=$(idle_field parked)
            rec b "$r" "$s.rss_before" "$rss0"
            rec b "$r" "$s.rss_idle" "$rss1"
            rec b "$r" "$s.attempted" "$(idle_field attempted)"
            rec b "$r" "$s.parked" "$parked"
            if [ "${parked:-0}" -gt 0 ]; then
                rec b "$r" "$s.rss_per_conn" "$(awk -v a="$rss0" -v b="$rss1" -v n="$parked" 'BEGIN { print (b - a) * 1024 / n }')"
            fi
            wrk_rec b "$r" "$s.idle" "$PORT"
            SAMPLE_PID=""
            idle_close
            rec b "$r" "$s.open_end" "$(idle_field open)"
            log "  b r$r $s: $(idle_field parked) of $IDLE_B idle connections served (attempted $(idle_field attempted)), open at end $(idle_field open), RSS ${rss0} -> ${rss1} KiB"
            stop_server "$SPID" "$JOB"
        done
        next_port
        start_server handoff-evmpm "$PORT"
        timeout 60 "$TMP/bin/handoff" client "$PORT" 2000 64 $CONNS >/dev/null || true
        rss0=$(rss_of "$SPID")
        idle_open "$PORT" "$IDLE_B"
        sleep 0.5
        rss1=$(rss_of "$SPID")
        parked=$(idle_field parked)
        rec b "$r" echo.parked "$parked"
        if [ "${parked:-0}" -gt 0 ]; then
            rec b "$r" echo.rss_per_conn "$(awk -v a="$rss0" -v b="$rss1" -v n="$parked" 'BEGIN { print (b - a) * 1024 / n }')"
        fi
        idle_close
        rec b "$r" echo.open_end "$(idle_field open)"
        log "  b r$r echo server: RSS ${rss0} -> ${rss1} KiB with $parked idle connections"
        stop_server "$SPID" "$JOB"
    done
}

# ---- d: flatness with 0, some and many idle connections ------------------------------

scenario_d() {
    local r n port spid job
    log "scenario d: hello_evmpm with $IDLE_D idle connections"
    next_port
    start_server evmpm "$PORT"
    port=$PORT spid=$SPID job=$JOB
    warm_up "$port"
    for r in $(seq "$ROUNDS"); do
        for n in $(rotate "$IDLE_D" "$r"); do
            if [ "$n" -gt 0 ]; then
                idle_open "$port" "$n"
                rec d "$r" "idle$n.parked" "$(idle_field parked)"
            fi
            rec d "$r" "idle$n.rss_before" "$(rss_of "$spid")"
            wrk_rec d "$r" "idle$n" "$port"
            if [ "$n" -gt 0 ]; then
                idle_close
                rec d "$r" "idle$n.open_end" "$(idle_field open)"
                sleep 1 # let the server close what was reset
            fi
        done
    done
    stop_server "$spid" "$job"
}

# ---- e: the hand-off path, ping-pong on one connection and on many --------------------

# One connection: every request is a full trip event thread -> run queue ->
# worker -> park, with a wake-up at each step. CONNS connections at once: the
# same path with work in flight, where wake-ups are shared. The server's CPU
# time (user + system, from /proc) per round trip comes with each figure.
# Round trips per run: twice as many with many connections, which go
# faster, so that the server's CPU time (in clock ticks) stays precise.
handoff_n() { [ "$1" = 1 ] && echo "$HANDOFF_N" || echo $((2 * HANDOFF_N)); }

scenario_e() {
    local r v c n ns t0 t1 key
    declare -A H_PORT H_SPID H_JOB
    log "scenario e: hand-off micro-benchmark, $HANDOFF_N round trips of 64 bytes"
    for v in $HANDOFFS; do
        next_port
        start_server "$v" "$PORT"
        H_PORT[$v]=$PORT
        H_SPID[$v]=$SPID
        H_JOB[$v]=$JOB
    done
    for r in $(seq "$ROUNDS"); do
        for c in 1 $CONNS; do
            for v in $(rotate "$HANDOFFS" "$r"); do
                key=$v.c$c
                n=$(handoff_n "$c")
                t0=$(cpu_ticks "${H_SPID[$v]}")
                ns=$(timeout 300 "$TMP/bin/handoff" client "${H_PORT[$v]}" "$n" 64 "$c" |
                    sed -n 's/^ns_per_request=\([0-9]*\).*/\1/p' || true)
                t1=$(cpu_ticks "${H_SPID[$v]}")
                rec e "$r" "$key.ns" "${ns:-nan}"
                # The CPU time covers the 1,000 warm-up round trips as well.
                rec e "$r" "$key.cpu" "$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n=$((n + 1000)) 'BEGIN { print (b - a) * 1e9 / hz / n }')"
                log "  e r$r $v, $c connection(s): ${ns:-?} ns per round trip"
            done
        done
    done
    for v in $HANDOFFS; do stop_server "${H_SPID[$v]}" "${H_JOB[$v]}"; done
}

# ---- f: system calls per request ----------------------------------------------------

# counted_run KIND WORKERS LOAD OUT: runs the server under the syscall counter
# and LOAD ("idle", "wrk", "wrkclose" or "pingpong:N:CONNS") against it, then
# stops it. The counts go to OUT.counts as "name count" lines; wrk's output
# to OUT.wrk.
counted_run() {
    local kind=$1 workers=$2 load=$3 out=$4 spec
    next_port
    case $SYSCOUNT in
    perf)
        # shellcheck disable=SC2054 # -x, is perf's option: comma-separated output
        WRAP=(perf stat -x, -o "$out.raw" -e "$F_EVENTS" --)
        ;;
    strace) WRAP=(strace -f -c -o "$out.raw" --) ;;
    esac
    start_server "$kind" "$PORT" "$workers"
    WRAP=()
    case $load in
    idle) sleep "$SYSC_DUR" ;;
    wrk) DUR=$SYSC_DUR run_wrk "$out.wrk" "$PORT" ;;
    wrkclose) DUR=$SYSC_DUR run_wrk "$out.wrk" "$PORT" -H 'Connection: close' ;;
    pingpong:*)
        spec=${load#pingpong:}
        timeout 300 "$TMP/bin/handoff" client "$PORT" "${spec%%:*}" 64 "${spec#*:}" >/dev/null || true
        ;;
    esac
    stop_server "$SPID" "$JOB"
    if [ $SYSCOUNT = perf ]; then
        awk -F, '$1 ~ /^[0-9]+$/ && $1 > 0 {
            n = $3; sub(/^syscalls:sys_enter_/, "", n); sub(/^raw_syscalls:sys_enter$/, "total", n); print n, $1
        }' \
            "$out.raw" >"$out.counts"
    else
        awk 'NF >= 5 && $(NF) != "syscall" && $(NF) != "total" && $1 ~ /^[0-9.]+$/ { print $(NF), $4 }' \
            "$out.raw" >"$out.counts"
    fi
}

# per_request LOADED BASE REQUESTS: "total: top" where total is syscalls per
# request and top lists the largest per-request counts by name. "total" in
# the counts is every syscall; without it, the named ones are summed.
per_request() {
    awk -v req="$3" '
    FILENAME == ARGV[1] { base[$1] = $2; next }
    { n[$1] = $2 - base[$1] }
    END {
        for (k in n) if (k != "total") { if (n[k] < 0) n[k] = 0; named += n[k]; names++ }
        total = named
        # "other": what the named ones leave of the total, when any is named.
        if ("total" in n) { total = n["total"]; if (names && total > named) n["other"] = total - named; delete n["total"] }
        line = sprintf("**%.2f**", total / req)
        for (i = 0; i < 7; i++) {
            best = ""; for (k in n) if (best == "" || n[k] > n[best]) best = k
            if (best == "" || n[best] / req < 0.05) break
            line = line sprintf("%s%s %.2f", i ? ", " : ": ", best, n[best] / req); delete n[best]
        }
        print line
    }' "$2" "$1"
}

declare -A SYSC
scenario_f() {
    local s w load req small big v c
    [ $SYSCOUNT != none ] || { log "scenario f skipped: neither perf nor strace works here"; return 0; }
    log "scenario f: syscalls per request (counted with $SYSCOUNT)"
    for s in $SERVERS4; do
        w=""
        [ $s = blocking ] && w=$BLOCKING_WORKERS
        counted_run $s "$w" idle "$TMP/out/sysc.$s.idle"
        # Keep-alive is counted by h, attached to the server for the run
        # alone, when perf works; strace cannot do that here.
        for load in $([ $SYSCOUNT = perf ] || echo wrk) wrkclose; do
            counted_run $s "$w" $load "$TMP/out/sysc.$s.$load"
            read -r _ _ req _ < <(parse_wrk "$TMP/out/sysc.$s.$load.wrk")
            if [ "${req:-0}" -gt 0 ]; then
                SYSC[$s.$load]=$(per_request "$TMP/out/sysc.$s.$load.counts" "$TMP/out/sysc.$s.idle.counts" "$req")
            else
                SYSC[$s.$load]="n/a (no requests served)"
            fi
            log "  f $s $load: ${SYSC[$s.$load]}"
        done
    done
    # The hand-off servers: a long and a short ping-pong run; the difference
    # is the cost of the extra round trips alone (start, warm-up and stop
    # cancel out).
    small=2
    big=$((HANDOFF_N / 4 > 5000 ? HANDOFF_N / 4 : 5000))
    for v in $HANDOFFS; do
        for c in 1 $CONNS; do
            counted_run "$v" "" "pingpong:$small:$c" "$TMP/out/sysc.$v.c$c.small"
            counted_run "$v" "" "pingpong:$big:$c" "$TMP/out/sysc.$v.c$c.big"
            SYSC[$v.c$c]=$(per_request "$TMP/out/sysc.$v.c$c.big.counts" "$TMP/out/sysc.$v.c$c.small.counts" $((big - small)))
            log "  f $v, $c connection(s): ${SYSC[$v.c$c]}"
        done
    done
}

# ---- g: handlers that block ------------------------------------------------------------

# The hello servers answer GET /slow after sleeping HELLO_SLOW_MS: a handler
# waiting on a backend. hello_blocking has a thread per connection anyway;
# evmpm runs a thread per CPU while handlers are short and must start more
# while they sleep, or the CPUs idle with requests waiting.
#
# Mixed: bench/slow_every.lua makes every MIX_EVERY-th request GET /slow
# (MIX_SLOW_MS), the rest the 100-byte file, at each of MIX_LEVELS
# connections; the two servers take turns at each level, as in a.
# All slow: every request GET /slow sleeping ALLSLOW_MS, on ALLSLOW_CONNS
# connections: at most ALLSLOW_IDEAL req/s, each connection waiting out one
# sleep per request. Servers with their own HELLO_SLOW_MS, so four processes,
# all fresh: the threads evmpm starts are part of what is measured. Their
# count is watched through the all-slow runs.
scenario_g() {
    local r c s m
    declare -A PORT_OF SPID_OF JOB_OF
    log "scenario g: handlers that block: 1 request in $MIX_EVERY sleeps $MIX_SLOW_MS ms, then all sleep $ALLSLOW_MS ms"
    for s in evmpm blocking; do
        for m in mix slow; do
            next_port
            PORT_OF[$s.$m]=$PORT
            SLOW_MS=$([ $m = mix ] && echo $MIX_SLOW_MS || echo $ALLSLOW_MS) start_kind $s "$PORT"
            SPID_OF[$s.$m]=$SPID
            JOB_OF[$s.$m]=$JOB
            warm_up "$PORT"
        done
    done
    for r in $(seq "$ROUNDS"); do
        for c in $MIX_LEVELS; do
            for s in $(rotate "evmpm blocking" "$r"); do
                SAMPLE_PID=${SPID_OF[$s.mix]}
                WRK_CONNS=$c wrk_rec g "$r" "$s.mix.c$c" "${PORT_OF[$s.mix]}" \
                    -s "$ROOT/bench/slow_every.lua"
            done
        done
    done
    for r in $(seq "$ROUNDS"); do
        for s in $(rotate "evmpm blocking" "$r"); do
            SAMPLE_PID=${SPID_OF[$s.slow]}
            WATCH_EVERY=0.2 WRK_CONNS=$ALLSLOW_CONNS WRK_PATH=/slow wrk_rec g "$r" "$s.slow" "${PORT_OF[$s.slow]}"
            rec g "$r" "$s.slow.share" "$(awk -v r="$(vals_round g "$r" "$s.slow.rps")" -v i=$ALLSLOW_IDEAL 'BEGIN { print r / i }')"
        done
    done
    SAMPLE_PID=""
    for s in evmpm blocking; do
        rec g 0 "$s.slow.threads_end" "$(threads_of "${SPID_OF[$s.slow]}")"
        for m in mix slow; do stop_server "${SPID_OF[$s.$m]}" "${JOB_OF[$s.$m]}"; done
    done
}

# ---- h: counters per keep-alive request ---------------------------------------------

# perf stat attached to a running server (its processes and all their
# threads, those started during the run included) for exactly the length of
# one wrk run, keep-alive, CONNS connections: every system call
# (raw_syscalls:sys_enter) and, by name, the ones PERF_EVENTS lists, and the
# context switches, each divided by the requests wrk counted. Meanwhile the
# server's threads are looked at every 0.1 s: the mean number in state R
# (running, or runnable and waiting for a CPU). One counted run per server,
# a fresh one warmed up first: the counts are averages over every request
# of the run. Perf's tracepoints cost each request some time, so req/s here
# is not a throughput figure.
scenario_h() {
    local s procs out req
    [ $SYSCOUNT = perf ] || { log "scenario h skipped: it needs perf (syscall tracepoints)"; return 0; }
    log "scenario h: counters per keep-alive request, $CONNS connections"
    for s in $SERVERS4; do
        next_port
        start_kind $s "$PORT"
        warm_up "$PORT"
        procs=$({ echo "$SPID"; children_of "$SPID"; } | paste -sd, -)
        out=$TMP/out/h.$s
        SAMPLE_PID=$SPID
        # shellcheck disable=SC2054 # -x, is perf's option: comma-separated output
        WRK_WRAP=(perf stat -x, -o "$out.perf" -e "$PERF_EVENTS,context-switches" -p "$procs" --)
        WATCH_EVERY=0.1 DUR=$SYSC_DUR wrk_rec h 1 "$s" "$PORT"
        WRK_WRAP=()
        SAMPLE_PID=""
        stop_server "$SPID" "$JOB"
        read -r _ _ req _ < <(parse_wrk "$TMP/out/h.$s.1.wrk")
        awk -F, '$1 ~ /^[0-9]+$/ && $3 != "context-switches" {
            n = $3; sub(/^syscalls:sys_enter_/, "", n); sub(/^raw_syscalls:sys_enter$/, "total", n); print n, $1
        }' "$out.perf" >"$out.counts"
        if [ "${req:-0}" -gt 0 ] && [ -s "$out.counts" ]; then
            rec h 1 "$s.syscalls" "$(awk -v n="$req" '$1 == "total" { print $2 / n }' "$out.counts")"
            rec h 1 "$s.cs" "$(awk -F, -v n="$req" '$3 == "context-switches" { print $1 / n }' "$out.perf")"
            SYSC[$s.h]=$(per_request "$out.counts" /dev/null "$req")
        else
            SYSC[$s.h]="n/a (nothing counted)"
        fi
        log "  h $s: ${SYSC[$s.h]}; $(awk -v c="$(med h "$s.cs")" -v r="$(med h "$s.running")" 'BEGIN { printf "%.2f context switches per request, %.1f threads in state R", c, r }')"
    done
}

# ---- i: static files over keep-alive -------------------------------------------------

# examples-c/fileserver against nginx, both serving one temporary document
# root: a file of random bytes for each of FILE_SIZES, written here. Both
# hand the body to the kernel: fileserver through evmpm_complete_sendfile
# (its head from memory, the file by sendfile(2) from the event thread),
# nginx with sendfile on (its 2 workers, the configuration of a otherwise).
# fileserver runs without a WORKERS argument: worker_threads is then the
# example's own 16 (evmpm's default is 256), running_threads evmpm's
# default, one per CPU; handlers that do not block never start more.
#
# Before any load, curl fetches each file twice over one connection from
# each server: each answer must be a 200 with the file's size as
# Content-Length and the file's bytes, and the second must reuse the
# connection. If not, nothing is measured: the report says why, and the
# script exits 1 once the report is written. Then in each round, at each
# level and size, the two servers take turns in rotating order, as in a.
# One server process each throughout: a server that exits during the load
# (a crash, or a signal such as SIGPIPE when a client goes away mid-response)
# ends the scenario the same way, its exit status in the report, and the run
# it died in is left out.
FILES_ROOT=""
I_FAILED=""
FILE_SERVERS="fileserver nginx"
file_name() { echo "file-$(($1 / 1024))k.bin"; }
fmt_size() { # bytes, a whole number of KiB: "100 KiB", "1 MiB"
    if [ $(($1 % 1048576)) = 0 ]; then echo "$(($1 / 1048576)) MiB"; else echo "$(($1 / 1024)) KiB"; fi
}
# wrk_bytes FILE: bytes per second read, from wrk's Transfer/sec (whose
# KB, MB and GB are powers of 1,024); nan when absent.
wrk_bytes() {
    awk '/^Transfer\/sec:/ {
        v = $2 + 0; u = $2; sub(/^[0-9.]+/, "", u)
        m = 1; if (u == "KB") m = 1024; else if (u == "MB") m = 1048576
        else if (u == "GB") m = 1073741824; else if (u == "TB") m = 1099511627776
        b = v * m
    }
    END { if (b == "") print "nan"; else printf "%.0f\n", b }' "$1"
}
# server_gone VAR KIND JOB SPID: true if the server has exited; sets the
# variable VAR to say how (the job is reaped here: its exit status is only
# to be had once). i_gone: the same for I_FAILED.
server_gone() {
    local st=0
    kill -0 "$4" 2>/dev/null && return 1
    wait "$3" 2>/dev/null || st=$?
    forget_pid "$3"
    printf -v "$1" '%s' "$2 exited during the load, exit status $st$([ "$st" -gt 128 ] && echo " (killed by SIG$(kill -l $((st - 128)) 2>/dev/null || echo "nal $((st - 128))"))")"
    return 0
}
i_gone() { server_gone I_FAILED "$@"; }
# unrec SCEN ROUND KEY: forgets what was recorded for KEY (and KEY.*) in
# that round.
unrec() {
    awk -F'\t' -v s="$1" -v r="$2" -v k="$3" '!($1 == s && $2 == r && ($3 == k || index($3, k ".") == 1))' \
        "$RAW" >"$RAW.tmp" && mv "$RAW.tmp" "$RAW"
}
# file_check PORT NAME: nothing when GET /NAME, twice over one connection,
# is answered right both times (see above); else what was wrong.
file_check() {
    local port=$1 name=$2 size out code clen got conns n=0 why=""
    size=$(wc -c <"$FILES_ROOT/$name")
    out=$TMP/out/i.check.$port.$name
    if ! curl -sS --noproxy '*' --max-time 10 -o "$out.1" -o "$out.2" \
        -w '%{http_code}|%header{content-length}|%{size_download}|%{num_connects}\n' \
        "http://127.0.0.1:$port/$name" "http://127.0.0.1:$port/$name" >"$out" 2>"$out.err"; then
        echo "curl failed: $(tr '\n' ' ' <"$out.err" | head -c 300)"
        return 0
    fi
    while IFS='|' read -r code clen got conns; do
        n=$((n + 1))
        [ "$code" = 200 ] || why="$why answer $n: status $code, not 200;"
        [ "$clen" = "$size" ] || why="$why answer $n: Content-Length '${clen}', not $size;"
        cmp -s "$out.$n" "$FILES_ROOT/$name" || why="$why answer $n: $got bytes of body, not the file's $size;"
        [ $n = 1 ] || [ "$conns" = 0 ] || why="$why answer $n: a new connection, the first was not kept alive;"
    done <"$out"
    [ $n = 2 ] || why="$why $n answers, not 2;"
    why=${why# }
    echo "${why%;}"
}

scenario_i() {
    local s r c sz name why failed=""
    declare -A PORT_OF SPID_OF JOB_OF
    FILES_ROOT=$TMP/files
    mkdir -p "$FILES_ROOT"
    chmod 755 "$FILES_ROOT" # nginx's workers run as an unprivileged user
    for sz in $FILE_SIZES; do
        name=$(file_name "$sz")
        head -c "$sz" /dev/urandom >"$FILES_ROOT/$name"
        chmod 644 "$FILES_ROOT/$name"
        [ "$(wc -c <"$FILES_ROOT/$name")" = "$sz" ] || die "$name is not $sz bytes"
    done
    log "scenario i: static files of $(for sz in $FILE_SIZES; do fmt_size "$sz"; done | paste -sd/ -), fileserver against nginx with sendfile on"
    for s in $FILE_SERVERS; do
        next_port
        PORT_OF[$s]=$PORT
        NGINX_ROOT=$FILES_ROOT NGINX_SENDFILE=on start_kind "$s" "$PORT"
        SPID_OF[$s]=$SPID
        JOB_OF[$s]=$JOB
    done
    for s in $FILE_SERVERS; do
        for sz in $FILE_SIZES; do
            name=$(file_name "$sz")
            why=$(file_check "${PORT_OF[$s]}" "$name")
            [ -z "$why" ] || failed="$failed${failed:+; }$s, GET /$name: $why"
        done
    done
    if [ -n "$failed" ]; then
        I_FAILED="a server answered wrong before any load: $failed"
        log "error: scenario i NOT MEASURED: $I_FAILED"
    else
        log "  i: both servers answer each file with 200, its size as Content-Length and its bytes, over one kept connection"
        for s in $FILE_SERVERS; do
            timeout 20 wrk -t1 -c$CONNS -d1s "http://127.0.0.1:${PORT_OF[$s]}/$(file_name "${FILE_SIZES%% *}")" \
                >/dev/null 2>&1 || true
            if i_gone "$s" "${JOB_OF[$s]}" "${SPID_OF[$s]}"; then
                I_FAILED="$I_FAILED, in the warm-up"
                break
            fi
        done
        for r in $(seq "$ROUNDS"); do
            [ -z "$I_FAILED" ] || break
            for c in $FILE_LEVELS; do
                [ -z "$I_FAILED" ] || break
                for sz in $FILE_SIZES; do
                    [ -z "$I_FAILED" ] || break
                    for s in $(rotate "$FILE_SERVERS" "$r"); do
                        SAMPLE_PID=${SPID_OF[$s]}
                        WRK_CONNS=$c WRK_PATH=/$(file_name "$sz") wrk_rec i "$r" "$s.s$sz.c$c" "${PORT_OF[$s]}"
                        rec i "$r" "$s.s$sz.c$c.bytes" "$(wrk_bytes "$TMP/out/i.$s.s$sz.c$c.$r.wrk")"
                        if i_gone "$s" "${JOB_OF[$s]}" "${SPID_OF[$s]}"; then
                            I_FAILED="$I_FAILED, in round $r, $(fmt_size "$sz") at $c connections (or just after it)"
                            unrec i "$r" "$s.s$sz.c$c"
                            break
                        fi
                    done
                done
            done
        done
        [ -z "$I_FAILED" ] || log "error: scenario i ENDED EARLY: $I_FAILED"
    fi
    SAMPLE_PID=""
    for s in $FILE_SERVERS; do stop_server "${SPID_OF[$s]}" "${JOB_OF[$s]}"; done
}

# ---- j: HTTPS against nginx with ssl ---------------------------------------------------

# examples-c/fileserver --tls (evmpm; the TLS handshake is the listener's
# handshake step, run on a worker without ever blocking one) against nginx
# with ssl (its 2 workers, the configuration of a otherwise), both serving
# the 100-byte file of a from $TMP/www over HTTPS, with one certificate made
# for this run (openssl req: EC P-256, self-signed). Every process of the
# scenario, servers and clients, runs with OPENSSL_CONF naming a file whose
# system_default section allows TLSv1.3, TLS_SUITE and TLS_GROUP only, so
# that the clients offer nothing else; nginx's configuration says the same
# (ssl_protocols, ssl_conf_command Ciphersuites, ssl_ecdh_curve). Both
# servers are otherwise at their defaults: two session tickets per
# handshake, no session cache. fileserver runs without a WORKERS argument
# (the example's 16 worker_threads), as in i.
#
# Each round starts both servers fresh. Before any load each must answer
# GET URL_PATH over HTTPS (openssl s_client) with a 200 and the file, on
# TLSv1.3 with TLS_SUITE and TLS_GROUP, and accept that connection's
# session on a second one (wrk's connection-per-request run resumes). If
# not, nothing more is measured; a server that exits under load ends the
# scenario the same way; either makes the script exit 1 once the report is
# written (as i does). Then, the two servers taking turns in rotating order
# at each step:
#   keep-alive  wrk -t1 -cCONNS https://, the 100-byte file;
#   full        bench/tls_handshakes: CONNS connections on TLS_HS_THREADS
#               threads, each a full handshake (no session offered), one
#               request with Connection: close, the whole answer and the
#               server's close; the server's CPU time per handshake too;
#   resumed     wrk -tTLS_HS_THREADS -cCONNS -H 'Connection: close': wrk
#               offers each new connection the previous one's session, so
#               these are TLS 1.3 resumptions (a new key exchange, no
#               certificate, no signature);
#   idle        as in b: a keep-alive run, then IDLE_J idle HTTPS
#               keep-alive connections opened on the same process
#               (idle_clients --tls: a full handshake, one request and its
#               answer, then silence), RSS and threads looked at, and a
#               keep-alive run with them held.
# The handshake loads run their client on TLS_HS_THREADS threads: a full
# handshake costs the client more than the server (it checks the
# signature), and one client thread would cap both servers at its own pace.
TLS_DIR=""
J_FAILED=""
J_SERVERS="fileserver-tls nginx-tls"
declare -A J_NEG J_IDLE_NEG # what each server's connections negotiated

# kv FILE KEY: KEY's value in FILE's "KEY=value" words (the last one); nan
# when there is none.
kv() {
    awk -v k="$2" '{ for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) v = substr($i, length(k) + 2) }
        END { print v == "" ? "nan" : v }' "$1"
}

# tls_setup: the run's certificate and the OpenSSL configuration; false,
# with J_SKIP saying why, if the openssl command cannot make them.
tls_setup() {
    TLS_DIR=$TMP/tls
    mkdir -p "$TLS_DIR"
    if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" \
        >"$TLS_DIR/req.log" 2>&1; then
        J_SKIP="the openssl command could not make an EC P-256 certificate: $(tr '\n' ' ' <"$TLS_DIR/req.log" | head -c 300)"
        return 1
    fi
    cat >"$TLS_DIR/openssl.cnf" <<EOF
# OPENSSL_CONF of every process in scenario j: what each SSL_CTX starts
# with, before the program's own settings.
openssl_conf = bench_conf
[bench_conf]
ssl_conf = bench_ssl
[bench_ssl]
system_default = bench_tls
[bench_tls]
MinProtocol = TLSv1.3
MaxProtocol = TLSv1.3
Ciphersuites = $TLS_SUITE
Groups = $TLS_GROUP
EOF
}

# tls_get PORT [s_client options]: GET URL_PATH over HTTPS with
# Connection: close; s_client's report and the answer on stdout.
tls_get() {
    local port=$1
    shift
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$URL_PATH" |
        timeout 10 openssl s_client -connect "127.0.0.1:$port" -ign_eof "$@" 2>&1 || true
}
# tls_check PORT: nothing when the server answers right (see above); else
# what was wrong.
tls_check() {
    local port=$1 out=$TMP/out/j.check.$1 why=""
    tls_get "$port" -sess_out "$out.sess" >"$out.1"
    grep -q '^HTTP/1\.1 200 ' "$out.1" || why="$why no 200 answer;"
    grep -qxF "$(cat "$TMP/www/hello.txt")" "$out.1" || why="$why not the file's bytes;"
    grep -qx "New, TLSv1.3, Cipher is $TLS_SUITE" "$out.1" ||
        why="$why negotiated '$(grep -m1 -E '^(New|Reused), ' "$out.1" || echo nothing)', not TLSv1.3 with $TLS_SUITE;"
    grep -qi "^Server Temp Key: $TLS_GROUP," "$out.1" ||
        why="$why key exchange '$(sed -n 's/^Server Temp Key: //p' "$out.1" | head -n1)', not $TLS_GROUP;"
    tls_get "$port" -sess_in "$out.sess" >"$out.2"
    grep -q '^Reused, TLSv1.3' "$out.2" || why="$why a second connection did not resume the first's session;"
    why=${why# }
    echo "${why%;}"
}

# j_alive ROUND SERVER STEP: false, with J_FAILED set and the step's figures
# of that round forgotten, if the server has exited.
j_alive() {
    local s=$2
    server_gone J_FAILED "$s" "${JOB_OF[$s]}" "${SPID_OF[$s]}" || return 0
    J_FAILED="$J_FAILED, in round $1 (its $3 run, or just after it)"
    unrec j "$1" "$s.$3"
    return 1
}

# j_full ROUND SERVER: one run of full handshakes, recorded as SERVER.full.
j_full() {
    local r=$1 s=$2 out=$TMP/out/j.$2.full.$1 c0 c1 n
    SAMPLE_PID=${SPID_OF[$s]}
    c0=$(cpu_tree "$SAMPLE_PID")
    sampler_start "$out.sample"
    timeout -k 5 $((DUR + 30)) "$TMP/bin/tls_handshakes" "${PORT_OF[$s]}" "$DUR" "$CONNS" \
        --threads "$TLS_HS_THREADS" --path "$URL_PATH" >"$out" 2>&1 || true
    sampler_end j "$r" "$s.full" "$out.sample"
    c1=$(cpu_tree "$SAMPLE_PID")
    SAMPLE_PID=""
    n=$(kv "$out" handshakes)
    rec j "$r" "$s.full.rps" "$(kv "$out" rate)"
    rec j "$r" "$s.full.p99" "$(kv "$out" p99_us)"
    rec j "$r" "$s.full.errors" "$(kv "$out" errors)"
    rec j "$r" "$s.full.resumed" "$(kv "$out" resumed)"
    rec j "$r" "$s.full.client_cpu" "$(awk -v v="$(kv "$out" client_cpu_us)" 'BEGIN { print v == "nan" ? "nan" : v * 1000 }')"
    rec j "$r" "$s.full.cpu" "$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v n="$n" 'BEGIN { print (n != "nan" && n > 0 ? (b - a) * 1e9 / hz / n : "nan") }')"
    J_NEG[$s]="$(kv "$out" protocol) $(kv "$out" cipher) $(kv "$out" group)"
    log "  j r$r $s.full: $(kv "$out" rate) handshakes/s, p99 $(kv "$out" p99_us) us, $(kv "$out" errors) errors; the client's CPU $(kv "$out" client_cpu_us) us per handshake"
}

# j_idle ROUND SERVER: the keep-alive run without, then with IDLE_J idle
# HTTPS connections held.
j_idle() {
    local r=$1 s=$2 port=${PORT_OF[$2]} spid=${SPID_OF[$2]} rss0 rss1 thr0 thr1 parked
    SAMPLE_PID=$spid
    WRK_SCHEME=https wrk_rec j "$r" "$s.noidle" "$port"
    j_alive "$r" "$s" noidle || return 0
    rss0=$(rss_of "$spid")
    thr0=$(threads_of "$spid")
    IDLE_TLS=1 idle_open "$port" "$IDLE_J"
    sleep 0.5
    rss1=$(rss_of "$spid")
    thr1=$(threads_of "$spid")
    parked=$(idle_field parked)
    rec j "$r" "$s.rss_before" "$rss0"
    rec j "$r" "$s.rss_idle" "$rss1"
    rec j "$r" "$s.threads_before" "$thr0"
    rec j "$r" "$s.threads_opened" "$thr1"
    rec j "$r" "$s.attempted" "$(idle_field attempted)"
    rec j "$r" "$s.parked" "$parked"
    rec j "$r" "$s.idle_resumed" "$(idle_field resumed)"
    J_IDLE_NEG[$s]=$(sed -n 's/^tls protocol=\([^ ]*\) cipher=\([^ ]*\) group=\([^ ]*\).*/\1 \2 \3/p' "$IDLE_OUT" | tail -n1)
    if [ "${parked:-0}" -gt 0 ]; then
        rec j "$r" "$s.rss_per_conn" "$(awk -v a="$rss0" -v b="$rss1" -v n="$parked" 'BEGIN { print (b - a) * 1024 / n }')"
    fi
    WRK_SCHEME=https wrk_rec j "$r" "$s.idle" "$port"
    SAMPLE_PID=""
    idle_close
    rec j "$r" "$s.open_end" "$(idle_field open)"
    # The most threads seen with the idle connections held: once they were
    # opened, and half way through the run with them.
    rec j "$r" "$s.threads_held" "$(awk -v a="$thr1" -v b="$(vals_round j "$r" "$s.idle.threads")" 'BEGIN { print (b == "nan" || a + 0 > b + 0) ? a : b }')"
    log "  j r$r $s: $(idle_field parked) of $IDLE_J idle HTTPS connections served (attempted $(idle_field attempted)), open at end $(idle_field open), RSS ${rss0} -> ${rss1} KiB, threads $thr0 -> $thr1 -> $(vals_round j "$r" "$s.idle.threads") under load"
    j_alive "$r" "$s" idle || return 0
}

# j_round ROUND: the loads on the round's two servers.
j_round() {
    local r=$1 s out
    for s in $J_SERVERS; do
        out=$TMP/out/j.$s.warm.$r
        WRK_SCHEME=https DUR=1 run_wrk "$out" "${PORT_OF[$s]}"
        j_alive "$r" "$s" warm-up || return 0
        if [ "$(parse_wrk "$out" | cut -d' ' -f3)" = 0 ]; then
            J_FAILED="wrk got no answer over HTTPS from $s in the warm-up of round $r: $(tr '\n' ' ' <"$out" | head -c 300)"
            return 0
        fi
    done
    for s in $(rotate "$J_SERVERS" "$r"); do
        SAMPLE_PID=${SPID_OF[$s]}
        WRK_SCHEME=https wrk_rec j "$r" "$s.ka" "${PORT_OF[$s]}"
        SAMPLE_PID=""
        j_alive "$r" "$s" ka || return 0
    done
    for s in $(rotate "$J_SERVERS" "$r"); do
        j_full "$r" "$s"
        j_alive "$r" "$s" full || return 0
    done
    for s in $(rotate "$J_SERVERS" "$r"); do
        SAMPLE_PID=${SPID_OF[$s]}
        WRK_SCHEME=https WRK_THREADS=$TLS_HS_THREADS wrk_rec j "$r" "$s.resumed" "${PORT_OF[$s]}" \
            -H 'Connection: close'
        SAMPLE_PID=""
        j_alive "$r" "$s" resumed || return 0
    done
    for s in $(rotate "$J_SERVERS" "$r"); do
        j_idle "$r" "$s"
        [ -z "$J_FAILED" ] || return 0
    done
}

scenario_j() {
    local r s why failed
    declare -A PORT_OF SPID_OF JOB_OF
    [ -n "$J_SKIP" ] || tls_setup || true
    if [ -n "$J_SKIP" ]; then
        log "scenario j skipped: $J_SKIP"
        return 0
    fi
    local -x OPENSSL_CONF=$TLS_DIR/openssl.cnf
    log "scenario j: HTTPS, fileserver --tls against nginx with ssl; TLSv1.3, $TLS_SUITE, $TLS_GROUP, an EC P-256 certificate; $(fmt_int "$IDLE_J") idle connections"
    for r in $(seq "$ROUNDS"); do
        [ -z "$J_FAILED" ] || break
        for s in $J_SERVERS; do
            next_port
            PORT_OF[$s]=$PORT
            start_kind "$s" "$PORT"
            SPID_OF[$s]=$SPID
            JOB_OF[$s]=$JOB
        done
        failed=""
        for s in $J_SERVERS; do
            why=$(tls_check "${PORT_OF[$s]}")
            [ -z "$why" ] || failed="$failed${failed:+; }$s: $why"
        done
        if [ -n "$failed" ]; then
            J_FAILED="a server answered wrong before any load (round $r): $failed"
        else
            log "  j r$r: both servers answer GET $URL_PATH over HTTPS with a 200 and the file, on TLSv1.3, $TLS_SUITE and $TLS_GROUP, and resume a session"
            j_round "$r"
        fi
        SAMPLE_PID=""
        for s in $J_SERVERS; do stop_server "${SPID_OF[$s]}" "${JOB_OF[$s]}"; done
    done
    [ -z "$J_FAILED" ] || log "error: scenario j ENDED EARLY: $J_FAILED"
}

# a and c share their servers and time their load apart.
if want a || want c; then scenarios_a_c; fi
for x in b d e f g h i j; do
    if [ $x = j ] && want j && [ -n "$J_SKIP" ]; then
        log "scenario j skipped: $J_SKIP"
        continue
    fi
    if want $x; then
        scenario_begin $x
        scenario_$x
        scenario_end $x
    fi
done

T_END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ---------------------------------------------------------------------------

name_of() {
    case $1 in
    evmpm) echo hello_evmpm ;;
    blocking) echo hello_blocking ;;
    nginx) echo nginx ;;
    apache) echo "Apache httpd (event)" ;;
    fileserver) echo fileserver ;;
    fileserver-tls) echo "fileserver --tls" ;;
    nginx-tls) echo "nginx (ssl)" ;;
    handoff-threads) echo "thread per connection" ;;
    handoff-evmpm) echo "evmpm" ;;
    handoff-ready) echo "evmpm + request_ready" ;;
    esac
}
# evmpm's defaults; the most workers as hello_evmpm reported it on start.
evmpm_defaults() {
    local max
    max=$(cat "$TMP"/logs/evmpm.*.log 2>/dev/null | sed -n 's/^listening on .*, \([0-9]*\) workers$/\1/p' | head -n1)
    echo "running_threads one per CPU ($NCPU here), worker_threads ${max:-?} at most: more threads start only while handlers block"
}
# fileserver's most workers, as it reported them on start.
fileserver_workers() {
    local n
    n=$(cat "$TMP"/logs/fileserver.*.log 2>/dev/null | sed -n 's/^fileserver: serving .* with \([0-9]*\) workers$/\1/p' | head -n1)
    echo "${n:-?}"
}
# The TLS file server's most workers, as it reported them on start.
fileserver_tls_workers() {
    local n
    n=$(cat "$TMP"/logs/fileserver-tls.*.log 2>/dev/null | sed -n 's/^fileserver: serving .* with \([0-9]*\) workers$/\1/p' | head -n1)
    echo "${n:-?}"
}
# The tools' versions, those present.
tools_line() {
    local t=()
    [ -z "$NGINX" ] || t+=("$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')")
    [ -z "$APACHE" ] || t+=("$("$APACHE" -v 2>/dev/null | sed -n 's/^Server version: //p')")
    ! command -v wrk >/dev/null || t+=("$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)")
    if want j && [ -z "$J_SKIP" ]; then
        t+=("$(openssl version | cut -d' ' -f1-2) (the openssl command; nginx built with $("$NGINX" -V 2>&1 | sed -n 's/^built with //p' | head -n1))")
    fi
    printf '%s, ' "${t[@]+"${t[@]}"}" | sed 's/, $//'
}
fmt_mibs() { awk -v v="$1" 'BEGIN { if (v == "nan") print "n/a"; else printf "%.1f\n", v / 1048576 }'; }
# and_list "1 10 1000": "1, 10 and 1,000".
and_list() {
    local w out=() n
    for w in $1; do out+=("$(fmt_int "$w")"); done
    n=${#out[@]}
    if [ "$n" -le 1 ]; then echo "${out[*]}"; return; fi
    printf '%s' "${out[0]}"
    for ((w = 1; w < n - 1; w++)); do printf ', %s' "${out[$w]}"; done
    printf ' and %s\n' "${out[$((n - 1))]}"
}
idle_word() { [ "$1" = 0 ] && echo "none" || fmt_int "$1"; }
cell() { [ -z "$1" ] && echo "n/a" || echo "$1"; }

fmt_unit() { case $1 in x) fmt_x "$2" ;; B) fmt_b "$2" ;; n) fmt_int "$2" ;; %) fmt_pct "$2" ;; esac; }

# target_row TEXT STATS PICK OP THRESHOLD UNIT: one row of the targets table.
# STATS is "median min max count"; PICK says which of them decides (med for
# ratios; min or max where every round must meet the target); UNIT is x, B,
# n (a count) or % (a share).
target_row() {
    local text=$1 pick=$3 op=$4 thr=$5 unit=$6 m lo hi n v shown range verdict
    read -r m lo hi n <<<"$2"
    case $pick in med) v=$m ;; min) v=$lo ;; max) v=$hi ;; esac
    shown=$(fmt_unit "$unit" "$v")
    [ "$pick" != med ] && shown="$shown ($pick of $n round$([ "$n" = 1 ] || echo s))"
    range=$([ "$n" -gt 0 ] && echo "$(fmt_unit "$unit" "$lo") – $(fmt_unit "$unit" "$hi")" || echo "n/a")
    verdict=$(awk -v v="$v" -v t="$thr" -v op="$op" 'BEGIN {
        if (v == "nan") { print "not measured"; exit }
        if (op == ">=") ok = v + 0 >= t + 0; else ok = v + 0 <= t + 0
        if (ok) { print "**met**"; exit }
        if (op == ">=") printf "**missed**: %.0f%% short\n", (t - v) * 100 / t
        else printf "**missed**: %.0f%% over\n", (v - t) * 100 / t
    }')
    echo "| $text | $([ "$op" = ">=" ] && echo "≥" || echo "≤") $(fmt_unit "$unit" "$thr") | $shown | $range | $verdict |"
}

# jstats COMMAND...: the summary of what COMMAND prints (vals or ratios of
# j), or nothing measured if j failed.
jstats() { if [ -z "$J_FAILED" ]; then "$@" | summary; else echo nan nan nan 0; fi; }

targets() {
    local dmax=0 n c s sz jf
    for n in $IDLE_D; do [ "$n" -gt $dmax ] && dmax=$n; done
    echo "## Targets"
    echo
    if [ "$MODE" = quick ]; then
        echo "Quick mode: $(fmt_int "$IDLE_B") idle connections stand in for $(fmt_int $IDLE_TARGET) and $(fmt_int "$dmax") parked for $(fmt_int $PARKED_TARGET), with ${DUR} s runs; a full run is what the targets are about."
        echo
    fi
    echo "Measured: the median of the per-round ratios (servers interleaved within each round), or, where every round must meet the target, the worst round. Range: the lowest and highest round."
    echo
    echo "| target | wanted | measured | rounds | verdict |"
    echo "|---|---:|---:|---:|---|"
    if want a; then
        for c in $KA_LEVELS; do
            for s in blocking nginx; do
                target_row "a. keep-alive req/s at $(fmt_int "$c") conn., hello_evmpm ÷ $(name_of $s)" "$(ratios a "evmpm.c$c.rps" "$s.c$c.rps" | summary)" med ">=" "$(ka_want "$c")" x
            done
            for s in blocking nginx; do
                target_row "a. keep-alive p99 at $(fmt_int "$c") conn., hello_evmpm ÷ $(name_of $s)" "$(ratios a "evmpm.c$c.p99" "$s.c$c.p99" | summary)" med "<=" 1.0 x
            done
        done
        target_row "a. keep-alive req/s at $CONNS conn., hello_evmpm ÷ Apache httpd (event MPM)" "$(ratios a "evmpm.c$CONNS.rps" "apache.c$CONNS.rps" | summary)" med ">=" 3.0 x
    fi
    if want b; then
        target_row "b. req/s with $(fmt_int "$IDLE_B") idle held ÷ without, hello_evmpm" "$(ratios b evmpm.idle.rps evmpm.noidle.rps | summary)" med ">=" 0.95 x
        target_row "b. idle connections still open at the end, hello_evmpm" "$(vals b evmpm.open_end | summary)" min ">=" "$IDLE_B" n
        target_row "b. threads under load with idle held, hello_evmpm (one running thread per CPU + 3)" "$(vals b evmpm.idle.threads | summary)" max "<=" $((NCPU + 3)) n
        target_row "b. RSS growth per idle connection, hello_evmpm" "$(vals b evmpm.rss_per_conn | summary)" med "<=" 300 B
    fi
    if want c; then
        target_row "c. connection-per-request rate, hello_evmpm ÷ nginx" "$(ratios c evmpm.rps nginx.rps | summary)" med ">=" 1.0 x
    fi
    if want d; then
        target_row "d. req/s with $(fmt_int "$dmax") parked ÷ with none, hello_evmpm" "$(ratios d "idle$dmax.rps" idle0.rps | summary)" med ">=" 0.95 x
    fi
    if want g; then
        for c in $MIX_LEVELS; do
            target_row "g. 1 in $MIX_EVERY requests blocks $MIX_SLOW_MS ms, $(fmt_int "$c") conn.: req/s, hello_evmpm ÷ hello_blocking" "$(ratios g "evmpm.mix.c$c.rps" "blocking.mix.c$c.rps" | summary)" med ">=" 1.0 x
        done
        target_row "g. every request blocks $ALLSLOW_MS ms, $ALLSLOW_CONNS conn.: hello_evmpm req/s ÷ $(fmt_int $ALLSLOW_IDEAL)" "$(vals g evmpm.slow.share | summary)" med ">=" 0.90 %
    fi
    if want i; then
        for c in $FILE_LEVELS; do
            for sz in $FILE_SIZES; do
                # A failed i judges nothing: its figures stop where a server did.
                target_row "i. static $(fmt_size "$sz") file, keep-alive, $(fmt_int "$c") conn.: req/s, fileserver ÷ nginx (sendfile on)$([ -z "$I_FAILED" ] || echo " (scenario failed)")" "$(if [ -z "$I_FAILED" ]; then ratios i "fileserver.s$sz.c$c.rps" "nginx.s$sz.c$c.rps" | summary; else echo nan nan nan 0; fi)" med ">=" 1.0 x
            done
        done
    fi
    if want j && [ -z "$J_SKIP" ]; then
        # A failed j judges nothing, as i: its figures stop where a server did.
        jf=$([ -z "$J_FAILED" ] || echo " (scenario failed)")
        target_row "j. HTTPS keep-alive req/s with $(fmt_int "$IDLE_J") idle HTTPS connections held ÷ without, fileserver --tls$jf" "$(jstats ratios j fileserver-tls.idle.rps fileserver-tls.noidle.rps)" med ">=" 0.95 x
        target_row "j. threads with $(fmt_int "$IDLE_J") idle HTTPS held (opened, and under load), fileserver --tls: workers + 2 (one running worker per CPU, the event thread, the monitor) + the example's main thread$jf" "$(jstats vals j fileserver-tls.threads_held)" max "<=" $((NCPU + 3)) n
        target_row "j. idle HTTPS connections still open at the end, fileserver --tls$jf" "$(jstats vals j fileserver-tls.open_end)" min ">=" "$IDLE_J" n
    fi
}

# The machine's load: whether the run was quiet (the README's figures come
# only from a quiet run), and the scenarios that started on a busy machine.
quiet_header() {
    local launch1 why busy
    launch1=${LOAD_LAUNCH%% *}
    # Why the run was not quiet, if it was not: the load before it began,
    # the scenario with the most other work, the one with the most steal.
    why=$(for x in $SCEN_DONE; do echo "$x $(load_field "$x" other) $(load_field "$x" steal)"; done |
        awk -v l="$launch1" -v b=$BUSY_LOAD -v q=$QUIET_OTHER '
        { if ($2 > mo) { mo = $2; so = $1 } if ($3 > ms) { ms = $3; ss = $1 } }
        END {
            out = ""
            if (l > b) out = sprintf("the 1-minute load average was %s before the run began (above %s)", l, b)
            if (mo > q) out = out (out == "" ? "" : "; ") sprintf("other work took %.2f CPUs on average during scenario %s (above %.2f)", mo, so, q)
            if (ms > q) out = out (out == "" ? "" : "; ") sprintf("steal took %.2f CPUs on average during scenario %s (above %.2f)", ms, ss, q)
            print out
        }')
    busy=$(for x in $SCEN_DONE; do
        awk -v x="$x" -v l="$(load_field "$x" start)" -v b=$BUSY_LOAD 'BEGIN { split(l, f, " "); if (f[1] > b) printf "%s (%s) ", x, f[1] }'
    done | sed 's/ $//; s/) /), /g')
    if [ $SMOKE = 1 ]; then
        echo "- **Quiet run: not judged**, this is a smoke test. Load average $LOAD_LAUNCH before the run, $LOAD_END at its end."
    elif [ -z "$why" ]; then
        echo "- **Quiet run: yes.** The 1-minute load average was $launch1 before the run added any load, and other work (the machine's CPU time less this run's own and the kernel threads') stayed at or below $(printf '%.2f' $QUIET_OTHER) CPUs in every scenario, steal too. Its figures may go into the README."
    else
        echo "- **Quiet run: no**: $why. Not for the README. Absolute numbers are noisy; compare the ratios, which come from runs interleaved round by round. The scheduler shares a busy CPU per thread, so a server with many runnable threads (hello_blocking, Apache) loses less of it to other work than nginx's two single-threaded workers do; server CPU per request (a, c) does not depend on that share."
    fi
    if [ -n "$busy" ]; then
        echo "- Load average above $BUSY_LOAD at the start of scenario $busy: flagged busy in the machine-load table. It counts every runnable thread, this run's own previous scenario's among them, and takes minutes to decay; the other-work column there is this run's own load taken out."
    fi
}

# The machine-load table: each scenario's load average at its start and end,
# and the CPU time other work took while it ran.
load_table() {
    local x
    echo "## Machine load, scenario by scenario"
    echo
    echo "Load average (1, 5 and 15 minutes, /proc/loadavg) at each scenario's start and end; **busy**: the 1-minute figure above $BUSY_LOAD at its start. Other work: the machine's user + nice + system CPU time (/proc/stat) less that of this script and every process it started and that of the kernel's threads, divided by the scenario's wall time. Kernel threads (ksoftirqd, kworkers; much of it this run's loopback traffic) and steal (time the hypervisor gave elsewhere) apart. All in CPUs, out of $NCPU. A quiet run keeps other work and steal at or below $(printf '%.2f' $QUIET_OTHER)."
    echo
    echo "| scenario | load average at start | at end | busy at start | other work | kernel threads | steal | seconds |"
    echo "|---|---|---|---|---:|---:|---:|---:|"
    for x in $SCEN_DONE; do
        echo "| $x | $(load_field "$x" start) | $(load_field "$x" end) | $(awk -v l="$(load_field "$x" start)" -v b=$BUSY_LOAD 'BEGIN { split(l, f, " "); print (f[1] > b ? "**busy**" : "no") }') | $(printf '%.2f' "$(load_field "$x" other)") | $(printf '%.2f' "$(load_field "$x" kernel)") | $(printf '%.2f' "$(load_field "$x" steal)") | $(load_field "$x" seconds) |"
    done
}

report() {
    local s n v c sc k sz
    echo "# evmpm benchmark, $(date -u +'%Y-%m-%d %H:%M UTC') ($MODE mode$([ $SMOKE = 0 ] || echo ", smoke test: not a measurement"))"
    echo
    echo "Command: \`$COMMAND_LINE\`"
    echo
    echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r). Load generator on the same machine."
    quiet_header
    if [ -z "$GIT_DIRTY" ]; then
        echo "- evmpm: commit $GIT_COMMIT, no uncommitted changes in the sources measured (src, include, examples-c, bench, Cargo files); release build, C programs built with -O2."
    else
        echo "- evmpm: commit $GIT_COMMIT **with uncommitted changes** in: $GIT_DIRTY. Release build, C programs built with -O2."
    fi
    echo "- Tools: $(tools_line); system calls counted with $([ $SYSCOUNT = perf ] && perf version 2>/dev/null || { [ $SYSCOUNT = strace ] && strace -V | head -n1; } || echo nothing)."
    echo "- Load: \`wrk -t1 -c$CONNS -d${DUR}s --latency\` on 127.0.0.1, a 100-byte body (in a, -c$(echo "$KA_LEVELS" | sed 's/ /, -c/g'); g's, i's and j's loads are in their sections); $ROUNDS round$([ "$ROUNDS" = 1 ] || echo s) per scenario, the servers in rotating order within each round. Each cell is the median over the rounds; each ratio is the median of the per-round ratios."
    echo "- Servers: hello_evmpm with evmpm's defaults ($(evmpm_defaults)); hello_blocking with $(fmt_int $BLOCKING_WORKERS) threads at most ($(fmt_int $BLOCKING_MAX_WORKERS) in b; a thread per connection, so as many as the largest load's connections); nginx with 2 worker processes, default file serving (no open_file_cache, no sendfile); Apache httpd event MPM with 2 processes × $APACHE_THREADS threads, AsyncRequestWorkerFactor at its default of 2 (with fewer threads than connections Apache closes keep-alive connections whenever every worker is busy). $(want i && echo "In i: examples-c/fileserver without a WORKERS argument (worker_threads $(fileserver_workers), the example's own default; evmpm's defaults otherwise: running_threads one per CPU), and nginx as above with \`sendfile on\`. ")Keep-alive timeout $KEEPALIVE_S s everywhere, the examples' through bench/idle_timeout_shim.c. Descriptor limit $NOFILE per process."
    echo "- Run time: $((T_END - T_START)) s."
    echo
    targets
    echo
    load_table
    if want a; then
        echo
        echo "## a. Keep-alive at $(and_list "$KA_LEVELS") connections"
        echo
        echo "The same server processes throughout; at each level the servers take turns in rotating order, and each ratio is the median of the per-round ratios at that level. Apache at $CONNS connections only. Threads and RSS: sampled half way through a run."
        echo
        echo "| connections | server | req/s | p99 | hello_evmpm req/s ÷ this | hello_evmpm p99 ÷ this | server CPU per request | threads under load | RSS under load | wrk errors |"
        echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for c in $KA_LEVELS; do
            for s in $([ "$c" = $CONNS ] && echo "$SERVERS4" || echo "$SERVERS3"); do
                k=$s.c$c
                echo "| $(fmt_int "$c") | $(name_of $s) | $(fmt_int "$(med a "$k.rps")") | $(fmt_ms "$(med a "$k.p99")") | $(fmt_x "$(ratio a "evmpm.c$c.rps" "$k.rps")") | $(fmt_x "$(ratio a "evmpm.c$c.p99" "$k.p99")") | $(fmt_us "$(med a "$k.cpu")") | $(fmt_int "$(med a "$k.threads")") | $(fmt_mib "$(med a "$k.rss")") | $(fmt_int "$(med a "$k.errors")") |"
            done
        done
    fi
    if want b; then
        echo
        echo "## b. Keep-alive, $CONNS connections, with $(idle_word "$IDLE_B") idle keep-alive connections held open"
        echo
        echo "Each server is started fresh in each round, measured without idle connections, then again on the same process with them held. Idle connections: each sent one request and read its answer, then stays silent; \"open at end\" counts those the server had not closed when the run with them ended. RSS per idle connection: the growth of the server's RSS (all its processes) when they were opened, divided by their number."
        echo
        echo "| server | idle attempted / served / open at end | req/s without → with | with ÷ without | p99 without → with | with ÷ without | threads under load, without → with | RSS before → with idle | RSS per idle conn | wrk errors with idle |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for s in $SERVERS4; do
            echo "| $(name_of $s) | $(fmt_int "$(med b $s.attempted)") / $(fmt_int "$(med b $s.parked)") / $(fmt_int "$(med b $s.open_end)") | $(fmt_int "$(med b $s.noidle.rps)") → $(fmt_int "$(med b $s.idle.rps)") | $(fmt_x "$(ratio b $s.idle.rps $s.noidle.rps)") | $(fmt_ms "$(med b $s.noidle.p99)") → $(fmt_ms "$(med b $s.idle.p99)") | $(fmt_x "$(ratio b $s.idle.p99 $s.noidle.p99)") | $(fmt_int "$(med b $s.noidle.threads)") → $(fmt_int "$(med b $s.idle.threads)") | $(fmt_mib "$(med b $s.rss_before)") → $(fmt_mib "$(med b $s.rss_idle)") | $(fmt_b "$(med b $s.rss_per_conn)") | $(fmt_int "$(med b $s.idle.errors)") |"
        done
        echo
        echo "With the idle connections held, hello_evmpm ÷ each: req/s $(for s in blocking nginx apache; do printf '%s %s; ' "$(name_of $s)" "$(fmt_x "$(ratio b evmpm.idle.rps $s.idle.rps)")"; done | sed 's/; $//'); p99 $(for s in blocking nginx apache; do printf '%s %s; ' "$(name_of $s)" "$(fmt_x "$(ratio b evmpm.idle.p99 $s.idle.p99)")"; done | sed 's/; $//')."
        for s in $SERVERS4; do
            if [ "$(med b $s.idle.rps)" = 0 ]; then
                echo
                echo "$(name_of $s) served no request while the idle connections were held: they took every connection it will hold at once, and the load's connections waited in its listen queue until the end of the run. Ratios against it are n/a."
            fi
        done
        echo
        echo "evmpm alone (the hand-off echo server of bench/handoff.c, which keeps no per-connection record): $(fmt_b "$(med b echo.rss_per_conn)") of RSS per idle connection, $(fmt_int "$(med b echo.open_end)") of $(fmt_int "$(med b echo.parked)") open at the end. The difference to hello_evmpm is the example's own per-connection record (\`struct conn\`: a descriptor, a length and a buffer pointer; its 8 KiB read buffer exists only while a request is read or pipelined bytes wait)."
    fi
    if want c; then
        echo
        echo "## c. Connection per request (\`-H 'Connection: close'\`), $CONNS connections"
        echo
        echo "| server | connections/s | p99 | hello_evmpm ÷ this (rate) | hello_evmpm ÷ this (p99) | server CPU per connection | threads under load | wrk errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for s in $SERVERS4; do
            echo "| $(name_of $s) | $(fmt_int "$(med c $s.rps)") | $(fmt_ms "$(med c $s.p99)") | $(fmt_x "$(ratio c evmpm.rps $s.rps)") | $(fmt_x "$(ratio c evmpm.p99 $s.p99)") | $(fmt_us "$(med c $s.cpu)") | $(fmt_int "$(med c $s.threads)") | $(fmt_int "$(med c $s.errors)") |"
        done
    fi
    if want d; then
        echo
        echo "## d. Flatness: hello_evmpm, keep-alive, $CONNS connections, with idle connections parked"
        echo
        echo "One server process throughout; the levels take turns in rotating order within each round."
        echo
        echo "| parked conns | req/s | p99 | req/s ÷ none parked | p99 ÷ none parked | RSS before the run | parked conns open at end |"
        echo "|---:|---:|---:|---:|---:|---:|---:|"
        for n in $IDLE_D; do
            echo "| $(idle_word "$n") | $(fmt_int "$(med d idle$n.rps)") | $(fmt_ms "$(med d idle$n.p99)") | $(fmt_x "$(ratio d idle$n.rps idle0.rps)") | $(fmt_x "$(ratio d idle$n.p99 idle0.p99)") | $(fmt_mib "$(med d idle$n.rss_before)") | $([ "$n" = 0 ] && echo — || fmt_int "$(med d idle$n.open_end)") |"
        done
    fi
    if want e; then
        echo
        echo "## e. Hand-off path: echo servers, 64-byte ping-pongs ($(fmt_int "$(handoff_n 1)") per run on 1 connection, $(fmt_int "$(handoff_n $CONNS)") on $CONNS)"
        echo
        echo "An echo server whose handler reads what is there, writes it back and parks the connection: each request goes event thread → run queue → worker → park → event thread. \"1 connection\": sequential round trips, the latency of one trip through the path with nothing to batch. \"$CONNS connections\": all in ping-pong at once; ns per request is wall time ÷ round trips (the client's share included; client and server share the $(nproc) cores). Server CPU: user + system time of the server process per round trip. The thread-per-connection server is the same read/write loop on a thread per connection: the floor a blocking server pays. Syscalls: counted in separate runs under the counter (a long run minus a short one, so start, warm-up and stop cancel out)."
        echo
        echo "| echo server | connections | ns per request | ÷ thread per connection | server CPU per request | server syscalls per request$([ $SYSCOUNT != none ] && echo " ($SYSCOUNT)") |"
        echo "|---|---:|---:|---:|---:|---|"
        for c in 1 $CONNS; do
            for v in $HANDOFFS; do
                echo "| $(name_of $v) | $c | $(fmt_int "$(med e $v.c$c.ns)") | $(fmt_x "$(ratio e $v.c$c.ns handoff-threads.c$c.ns)") | $(fmt_int "$(med e $v.c$c.cpu)") ns | $(cell "${SYSC[$v.c$c]:-}") |"
            done
        done
    fi
    if want f && [ $SYSCOUNT != none ]; then
        echo
        echo "## f. System calls per request, $CONNS connections"
        echo
        echo "Server processes only, counted with $SYSCOUNT over ${SYSC_DUR} s of wrk load on a fresh server; the count of an idle run of the same length is subtracted. Bold: all system calls; then the most frequent by name$([ "$SYSCOUNT:$MODE" != perf:quick ] || echo " (not in quick mode, where f counts the total alone: every named tracepoint makes each counted run a second longer)").$([ $SYSCOUNT != perf ] || echo " Keep-alive: see h, which counts with perf attached for the run alone.")"
        echo
        if [ $SYSCOUNT = perf ]; then
            echo "| server | connection per request |"
            echo "|---|---|"
            for s in $SERVERS4; do
                echo "| $(name_of $s) | $(cell "${SYSC[$s.wrkclose]:-}") |"
            done
        else
            echo "| server | keep-alive | connection per request |"
            echo "|---|---|---|"
            for s in $SERVERS4; do
                echo "| $(name_of $s) | $(cell "${SYSC[$s.wrk]:-}") | $(cell "${SYSC[$s.wrkclose]:-}") |"
            done
        fi
    fi
    if want g; then
        echo
        echo "## g. Handlers that block"
        echo
        echo "The hello servers answer \`GET /slow\` after sleeping HELLO_SLOW_MS: a handler waiting on a backend. hello_blocking holds a thread per connection anyway; hello_evmpm, with evmpm's defaults, runs one thread per CPU while handlers are short and must start more while they sleep. Fresh servers for this scenario, so the threads evmpm starts are part of the measurement."
        echo
        echo "**Mixed**: \`wrk -s bench/slow_every.lua\`: every ${MIX_EVERY}th request is \`GET /slow\`, sleeping $MIX_SLOW_MS ms, the others get the 100-byte file. At each level the two servers take turns in rotating order; each ratio is the median of the per-round ratios. Threads: sampled half way through a run."
        echo
        echo "| connections | server | req/s | p99 | hello_evmpm req/s ÷ this | hello_evmpm p99 ÷ this | server CPU per request | threads under load | wrk errors |"
        echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        for c in $MIX_LEVELS; do
            for s in evmpm blocking; do
                k=$s.mix.c$c
                echo "| $(fmt_int "$c") | $(name_of $s) | $(fmt_int "$(med g "$k.rps")") | $(fmt_ms "$(med g "$k.p99")") | $(fmt_x "$(ratio g "evmpm.mix.c$c.rps" "$k.rps")") | $(fmt_x "$(ratio g "evmpm.mix.c$c.p99" "$k.p99")") | $(fmt_us "$(med g "$k.cpu")") | $(fmt_int "$(med g "$k.threads")") | $(fmt_int "$(med g "$k.errors")") |"
            done
        done
        echo
        echo "**Every request blocks**: \`GET /slow\` sleeping $ALLSLOW_MS ms, $ALLSLOW_CONNS connections: each connection waits out one sleep per request, so at most $ALLSLOW_CONNS ÷ $ALLSLOW_MS ms = $(fmt_int $ALLSLOW_IDEAL) req/s (a ${DUR} s run also loses the requests still in their sleep when it ends: up to $(awk -v d="$DUR" -v m=$ALLSLOW_MS 'BEGIN { printf "%.0f", m / (d * 10) }')%). Threads: the most the server had, sampled every 0.2 s through each run, and the count when the scenario ended."
        echo
        echo "| server | req/s | share of $(fmt_int $ALLSLOW_IDEAL) | p99 | threads, most during the run | threads at the end | wrk errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for s in evmpm blocking; do
            echo "| $(name_of $s) | $(fmt_int "$(med g "$s.slow.rps")") | $(fmt_pct "$(med g "$s.slow.share")") | $(fmt_ms "$(med g "$s.slow.p99")") | $(fmt_int "$(med g "$s.slow.threads_max")") | $(fmt_int "$(med g "$s.slow.threads_end")") | $(fmt_int "$(med g "$s.slow.errors")") |"
        done
    fi
    if want h && [ $SYSCOUNT = perf ]; then
        echo
        echo "## h. Counters per keep-alive request, $CONNS connections"
        echo
        echo "\`perf stat -p\` attached to each server (all its processes and threads, those started during the run included) for exactly one \`wrk -t1 -c$CONNS -d${SYSC_DUR}s\` run on a fresh, warmed-up server; each count divided by the requests wrk counted. System calls: bold, all of them (raw_syscalls:sys_enter); then the most frequent by name. Context switches: the kernel's count for the server's threads, voluntary or not. Threads in state R: running or waiting for a CPU, the mean of looks every 0.1 s through the run; the $NCPU CPUs are shared with wrk. One run per server. The tracepoints slow every system call, so req/s here is not a throughput figure. Reports before this scenario existed counted keep-alive system calls in f, from the server's start with an idle run subtracted: comparable totals."
        echo
        echo "| server | system calls per request | context switches per request | threads in state R, mean | threads | req/s under perf |"
        echo "|---|---|---:|---:|---:|---:|"
        for s in $SERVERS4; do
            echo "| $(name_of $s) | $(cell "${SYSC[$s.h]:-}") | $(awk -v v="$(med h "$s.cs")" 'BEGIN { if (v == "nan") print "n/a"; else printf "%.2f", v }') | $(awk -v v="$(med h "$s.running")" 'BEGIN { if (v == "nan") print "n/a"; else printf "%.1f", v }') | $(fmt_int "$(med h "$s.threads_max")") | $(fmt_int "$(med h "$s.rps")") |"
        done
    fi
    if want i; then
        echo
        echo "## i. Static files over keep-alive: fileserver (evmpm, sendfile) against nginx (sendfile on)"
        echo
        echo "examples-c/fileserver (evmpm; the body sent with \`evmpm_complete_sendfile\`: the head from memory, the file by sendfile(2) from the page cache) and nginx (2 workers, \`sendfile on\`) serve the same temporary document root: files of random bytes of $(for sz in $FILE_SIZES; do fmt_size "$sz"; done | paste -sd, - | sed 's/,\([^,]*\)$/ and \1/; s/,/, /g'). \`wrk -t1 -c${FILE_LEVELS// /, -c} -d${DUR}s --latency\`, keep-alive; one server process each throughout; at each level and size the two take turns in rotating order, and each ratio is the median of the per-round ratios. MiB/s: what wrk read per second (its Transfer/sec), response heads included. Threads: sampled half way through a run. Before any load, curl fetched each file twice over one connection from each server: a 200, the file's size as Content-Length, the file's bytes, the connection kept."
        echo
        if [ -n "$I_FAILED" ]; then
            echo "**Failed**: $I_FAILED. No target is judged."
        fi
        if [ -n "$(vals i "fileserver.s${FILE_SIZES%% *}.c${FILE_LEVELS%% *}.rps")" ]; then
            [ -z "$I_FAILED" ] || { echo; echo "The runs finished before that:"; echo; }
            echo "| connections | file | server | req/s | MiB/s | p99 | fileserver req/s ÷ this | server CPU per request | threads under load | wrk errors |"
            echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"
            for c in $FILE_LEVELS; do
                for sz in $FILE_SIZES; do
                    for s in $FILE_SERVERS; do
                        k=$s.s$sz.c$c
                        [ -n "$(vals i "$k.rps")" ] || continue
                        echo "| $(fmt_int "$c") | $(fmt_size "$sz") | $(name_of "$s") | $(fmt_int "$(med i "$k.rps")") | $(fmt_mibs "$(med i "$k.bytes")") | $(fmt_ms "$(med i "$k.p99")") | $(fmt_x "$(ratio i "fileserver.s$sz.c$c.rps" "$k.rps")") | $(fmt_us "$(med i "$k.cpu")") | $(fmt_int "$(med i "$k.threads")") | $(fmt_int "$(med i "$k.errors")") |"
                    done
                done
            done
        fi
    fi
    if want j; then
        echo
        echo "## j. HTTPS: fileserver --tls (evmpm) against nginx with ssl"
        echo
        if [ -n "$J_SKIP" ]; then
            echo "**Skipped**: $J_SKIP."
        else
            echo "examples-c/fileserver --tls (evmpm: the TLS handshake is the listener's handshake step, on a worker, never blocking one; no OpenSSL buffers held while a connection idles) and nginx (2 workers, \`listen ... ssl\`) serve the 100-byte file of a over HTTPS with one certificate made for this run (\`openssl req\`, EC P-256, self-signed). Every process of the scenario, servers and clients, runs with an OPENSSL_CONF whose system_default allows TLSv1.3, $TLS_SUITE and $TLS_GROUP only (nginx's configuration says so too: \`ssl_protocols TLSv1.3\`, \`ssl_conf_command Ciphersuites\`, \`ssl_ecdh_curve\`); both servers are otherwise at their defaults (two session tickets per handshake, no session cache). fileserver without a WORKERS argument: worker_threads $(fileserver_tls_workers), the example's own, and evmpm's default running_threads, one per CPU."
            echo
            echo "Each round starts both servers fresh and checks that each answers \`GET $URL_PATH\` (openssl s_client) with a 200 and the file on TLSv1.3, $TLS_SUITE and $TLS_GROUP, and resumes that session on a second connection. Then, the two taking turns in rotating order at each step: **keep-alive**: \`wrk -t1 -c$CONNS -d${DUR}s https://\`; **full handshakes**: bench/tls_handshakes, $CONNS connections on $TLS_HS_THREADS client threads for ${DUR} s, each a full handshake (no session offered), one request with \`Connection: close\`, the whole answer and the server's close; **resumed handshakes**: \`wrk -t$TLS_HS_THREADS -c$CONNS -H 'Connection: close'\`, where wrk offers each new connection the previous one's session (TLS 1.3 resumption: a new key exchange, no certificate, no signature); **idle**: as in b, a keep-alive run, then $(fmt_int "$IDLE_J") idle HTTPS keep-alive connections opened on the same process (bench/idle_clients --tls: each a full handshake, one request and its answer, then silence), and a keep-alive run with them held. Each ratio is the median of the per-round ratios; each cell the median over the rounds. Threads and RSS under load: sampled half way through a run."
            echo
            echo "Client and servers share the $NCPU cores, and a handshake costs the client about as much as the server (for a full one more: it checks the server's signature), so handshake rates are each server's share of one machine; the server's CPU time per handshake does not depend on that share."
            echo
            [ -z "$J_FAILED" ] || { echo "**Failed**: $J_FAILED. No target is judged."; echo; }
            [ -z "${J_NEG[*]:-}${J_IDLE_NEG[*]:-}" ] || echo "Negotiated, as the clients reported it: $(for s in $J_SERVERS; do printf '%s: %s (full handshakes), %s (idle connections); ' "$(name_of "$s")" "$(cell "${J_NEG[$s]:-}")" "$(cell "${J_IDLE_NEG[$s]:-}")"; done | sed 's/; $//'). Sessions resumed where none was offered (0 expected; the most in a round): full handshakes $(fmt_int "$(vals j fileserver-tls.full.resumed | summary | cut -d' ' -f3)") with fileserver, $(fmt_int "$(vals j nginx-tls.full.resumed | summary | cut -d' ' -f3)") with nginx; idle connections $(fmt_int "$(vals j fileserver-tls.idle_resumed | summary | cut -d' ' -f3)") and $(fmt_int "$(vals j nginx-tls.idle_resumed | summary | cut -d' ' -f3)")."
            if [ -n "$(vals j fileserver-tls.ka.rps)" ]; then
                echo
                echo "| load | server | rate | p99 | fileserver rate ÷ this | fileserver p99 ÷ this | server CPU per request | threads under load | RSS under load | errors |"
                echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
                for k in ka full resumed; do
                    for s in $J_SERVERS; do
                        [ -n "$(vals j "$s.$k.rps")" ] || continue
                        echo "| $(case $k in ka) echo "keep-alive, $CONNS conn. (req/s)" ;; full) echo "full handshakes, $CONNS conn. (handshakes/s)" ;; resumed) echo "resumed handshakes, wrk, $CONNS conn. (req/s)" ;; esac) | $(name_of "$s") | $(fmt_int "$(med j "$s.$k.rps")") | $(fmt_ms "$(med j "$s.$k.p99")") | $(fmt_x "$(ratio j "fileserver-tls.$k.rps" "$s.$k.rps")") | $(fmt_x "$(ratio j "fileserver-tls.$k.p99" "$s.$k.p99")") | $(fmt_us "$(med j "$s.$k.cpu")") | $(fmt_int "$(med j "$s.$k.threads")") | $(fmt_mib "$(med j "$s.$k.rss")") | $(fmt_int "$(med j "$s.$k.errors")") |"
                    done
                done
                echo
                echo "Full handshakes: p99 from connect() to the answer's last byte. The client's own CPU time per full handshake: $(fmt_us "$(med j fileserver-tls.full.client_cpu)") against fileserver, $(fmt_us "$(med j nginx-tls.full.client_cpu)") against nginx."
            fi
            if [ -n "$(vals j fileserver-tls.noidle.rps)" ]; then
                echo
                echo "**$(fmt_int "$IDLE_J") idle HTTPS keep-alive connections held**, keep-alive load of $CONNS connections. \"Open at end\": those the server had not closed when the run with them ended. RSS per idle connection: the growth of the server's RSS (all its processes) when they were opened, divided by their number. Threads: before they were opened, once they were, and under load with them."
                echo
                echo "| server | idle attempted / served / open at end | req/s without → with | with ÷ without | p99 without → with | with ÷ without | threads: before → opened → under load | RSS before → with idle | RSS per idle conn | wrk errors with idle |"
                echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
                for s in $J_SERVERS; do
                    [ -n "$(vals j "$s.noidle.rps")" ] || continue
                    echo "| $(name_of "$s") | $(fmt_int "$(med j "$s.attempted")") / $(fmt_int "$(med j "$s.parked")") / $(fmt_int "$(med j "$s.open_end")") | $(fmt_int "$(med j "$s.noidle.rps")") → $(fmt_int "$(med j "$s.idle.rps")") | $(fmt_x "$(ratio j "$s.idle.rps" "$s.noidle.rps")") | $(fmt_ms "$(med j "$s.noidle.p99")") → $(fmt_ms "$(med j "$s.idle.p99")") | $(fmt_x "$(ratio j "$s.idle.p99" "$s.noidle.p99")") | $(fmt_int "$(med j "$s.threads_before")") → $(fmt_int "$(med j "$s.threads_opened")") → $(fmt_int "$(med j "$s.idle.threads")") | $(fmt_mib "$(med j "$s.rss_before")") → $(fmt_mib "$(med j "$s.rss_idle")") | $(fmt_b "$(med j "$s.rss_per_conn")") | $(fmt_int "$(med j "$s.idle.errors")") |"
                done
                echo
                echo "With the idle connections held, fileserver ÷ nginx: req/s $(fmt_x "$(ratio j fileserver-tls.idle.rps nginx-tls.idle.rps)"), p99 $(fmt_x "$(ratio j fileserver-tls.idle.p99 nginx-tls.idle.p99)"). RSS per idle HTTPS connection: fileserver $(fmt_b "$(med j fileserver-tls.rss_per_conn)"), nginx $(fmt_b "$(med j nginx-tls.rss_per_conn)"). fileserver's figure includes the example's own per-connection record (\`struct conn\`), beside the connection's SSL object; its request-head buffer (HEAD_MAX, $(sed -n 's/^#define HEAD_MAX \([0-9]*\).*/\1 bytes/p' "$ROOT/examples-c/fileserver.c" | head -n1)) exists only while a request is read or pipelined bytes wait."
            fi
        fi
    fi
}

mkdir -p "$ROOT/bench/results"
SUFFIX=$([ "$MODE" = quick ] && echo -quick || true)$([ $ALL_SCENARIOS = 1 ] || echo "-only-$(echo "$ONLY" | tr ',' '\n' | sort -u | tr -d '\n')")$([ $SMOKE = 0 ] || echo -smoke)
RESULT=$ROOT/bench/results/$(date +%F)$SUFFIX.md
report >"$TMP/report.md"
cat "$TMP/report.md"
cp "$TMP/report.md" "$RESULT"
log "written to ${RESULT#"$ROOT"/}"
if [ -n "$I_FAILED" ]; then log "error: scenario i failed: $I_FAILED"; fi
if [ -n "$J_FAILED" ]; then log "error: scenario j failed: $J_FAILED"; fi
[ -z "$I_FAILED$J_FAILED" ] || exit 1

//! Types and constants that appear in `evmpm.h`.
//!
//! cbindgen reads this file: doc comments here become the header's comments.
#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_void};

/// A connection handle: the connection's slot in its runtime's table, the
/// runtime's tag and the slot's generation. Handles are plain values, cheap
/// to copy and safe to keep: from the moment the connection's close begins
/// (its close callback starts), every call that takes the handle returns
/// `EVMPM_ESTALE` (`EVMPM_ESTOPPED` once the runtime has stopped) and never
/// touches another connection. Another runtime given the handle refuses it
/// the same way: always while both runtimes live, and for a destroyed
/// runtime's handle until 4,094 more runtimes have been created (runtime
/// tags are 12 bits, reused round-robin). 0 is never a valid handle.
pub type evmpm_conn = u64;

/// An evmpm runtime: one event thread, a pool of worker threads and the
/// connections they share. Opaque: create it with `evmpm_create`, free it
/// with `evmpm_destroy`.
// Not `repr(C)`, so cbindgen declares it as an incomplete struct. The
// pointer the host holds is `Arc::into_raw` of the Rust runtime, cast; only
// src/ffi/api.rs turns one into the other.
pub struct evmpm_runtime {
    _opaque: [u8; 0],
}

/// The result of every evmpm function that can fail: `EVMPM_OK` (0) or a
/// negative code. `evmpm_strerror` describes each. New codes may be added in
/// later versions; treat an unknown negative value as a failure.
#[repr(i32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum evmpm_error {
    /// Success.
    EVMPM_OK = 0,
    /// A required pointer was NULL, or an argument or config value is out of
    /// range.
    EVMPM_EINVAL = -1,
    /// The descriptor is not an open stream socket.
    EVMPM_ENOTSOCK = -2,
    /// The socket is not listening (`listen()` was not called).
    EVMPM_ENOTLISTENER = -3,
    /// The connection handle is 0, belongs to another runtime, or its
    /// connection is closing or closed.
    EVMPM_ESTALE = -4,
    /// The call does not fit the connection's or runtime's current state
    /// (park twice, hand back a connection that is not suspended, start
    /// twice, ...).
    EVMPM_ESTATE = -5,
    /// The runtime is stopping or stopped.
    EVMPM_ESTOPPED = -6,
    /// `evmpm_stop`'s deadline passed before every connection had closed;
    /// the rest were closed by force.
    EVMPM_ETIMEDOUT = -7,
    /// The call would deadlock or free the runtime under its own feet:
    /// `evmpm_stop` or `evmpm_destroy` from a thread of the runtime or from
    /// inside any of its callbacks, on whatever thread it runs.
    EVMPM_ETHREAD = -8,
    /// An OS call failed; `errno` holds its cause.
    EVMPM_EOS = -9,
    /// The listener is already registered with this runtime, or (for
    /// `evmpm_timer_add`) the connection already has a bound timer.
    EVMPM_EEXIST = -10,
    /// The `size` a struct was passed with (`evmpm_config.size`, a size
    /// argument) is smaller than this library's oldest layout, or larger than
    /// its newest with non-zero bytes in the fields it does not know.
    EVMPM_EVERSION = -11,
    /// A bug inside evmpm was caught. The call had no effect or only part of
    /// it; the runtime stops itself (see `evmpm_stop`) and counts it in
    /// `evmpm_stats.internal_errors`.
    EVMPM_EINTERNAL = -12,
    /// A fixed limit was reached: more listeners than a runtime takes
    /// (`EVMPM_MAX_LISTENERS`).
    EVMPM_ELIMIT = -13,
    /// `evmpm_timer_cancel` or `evmpm_watch_cancel` found the callback
    /// running (on a worker, or it is the caller): that run completes, and
    /// none follows (a re-arm from it, before or after, does nothing).
    EVMPM_EBUSY = -14,
}

/// The host's request handler. Runs on a worker thread, with the connection's
/// descriptor `fd` in blocking mode (non-blocking on a listener with
/// `EVMPM_LISTEN_NONBLOCK`) unless the host changed it.
///
/// It may block (a backend call, a lock, a slow disk): a handler whose
/// thread sleeps in the kernel for more than 100 µs is counted blocked and
/// another thread runs in its place, up to `worker_threads` (see
/// `evmpm_config.running_threads`). Short handlers are served by a few hot
/// threads, one per CPU by default.
///
/// Before returning, the handler says what happens next by calling exactly one
/// of `evmpm_park_keepalive`, `evmpm_complete_write` (or its forms
/// `evmpm_complete_writev` and `evmpm_complete_sendfile`), `evmpm_close` or
/// `evmpm_suspend` for `conn`. A handler that returns without doing so has
/// its connection closed.
///
/// `reason` is one of the `EVMPM_WAKE_*` values. `user_data` is
/// `evmpm_config.user_data`.
pub type evmpm_handler_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        rt: *mut evmpm_runtime,
        conn: evmpm_conn,
        fd: c_int,
        reason: c_int,
    ),
>;

/// Runs exactly once for every accepted connection, when the runtime takes
/// it away from the host for good (the host closed it, a timeout, an error,
/// shedding, stop). `fd` is still open and is closed by the runtime after
/// the callback: do not close it. `conn_user` is the pointer last set with
/// `evmpm_conn_set_user` (NULL if none): free it here.
///
/// From the moment this callback starts, every call that takes `conn`
/// returns `EVMPM_ESTALE`, inside the callback too (or `EVMPM_ESTOPPED`,
/// when `evmpm_stop` runs it after the runtime stopped): its arguments
/// carry everything the connection had. `evmpm_stop` and `evmpm_destroy` return
/// `EVMPM_ETHREAD` here.
///
/// Threads: a worker, the event thread, or the host thread whose call closed
/// the connection (`evmpm_close` on a suspended connection; any call that
/// finds the runtime stopping; `evmpm_stop`/`evmpm_destroy` for what was
/// still open). It must not block for long: on the event thread it holds up
/// every idle connection. A short mutex is fine. With
/// `evmpm_config.close_on_worker` it never runs on the event thread (a
/// worker runs it instead), and may block as a handler may.
///
/// Order: a connection closed with a write still pending (write timeout,
/// failed send, stop) runs this callback first, then the write's `release`;
/// a write that completed released its buffer before the connection was
/// parked or closed. `evmpm_stats.closed` counts the connection once its
/// descriptor is closed, which a lingering close delays by up to
/// `linger_timeout_ms` after this callback.
pub type evmpm_close_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        rt: *mut evmpm_runtime,
        conn: evmpm_conn,
        fd: c_int,
        conn_user: *mut c_void,
    ),
>;

/// Gives back what a complete-write borrowed: the buffers passed to
/// `evmpm_complete_write`, `evmpm_complete_writev` or
/// `evmpm_complete_sendfile`, and the latter's file, which the host may
/// close here. Called exactly once, after the last byte was sent or when
/// the write was abandoned (then after the connection's close callback).
/// Runs on a worker, the event thread, or the host thread inside a
/// complete-write call, `evmpm_close`, `evmpm_stop` or `evmpm_destroy`; it
/// must not block. `evmpm_stop` and `evmpm_destroy` return `EVMPM_ETHREAD`
/// here.
pub type evmpm_release_fn = Option<unsafe extern "C" fn(release_arg: *mut c_void)>;

/// One buffer of a gathered write (`evmpm_complete_writev`, and the head
/// of `evmpm_complete_sendfile`): `len` bytes at `base`. The fields of
/// POSIX `struct iovec`, under evmpm's own name: `base` is const (the
/// runtime only reads), and the header needs no system header for it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct evmpm_iovec {
    /// The first byte; may be NULL only when `len` is 0.
    pub base: *const c_void,
    /// The buffer's length in bytes.
    pub len: usize,
}

/// Request-readiness check (optional, `evmpm_config.request_ready`).
///
/// When a waiting connection (new, or parked in keep-alive) becomes
/// readable, the worker that takes it peeks at its pending bytes
/// (MSG_PEEK: nothing is consumed, the handler still reads them all) and
/// asks this callback whether a whole request is there, before it runs the
/// handler. `data`/`len` are the first bytes
/// waiting, at most `request_peek_bytes`; `conn_user` is the pointer set
/// with `evmpm_conn_set_user` (NULL if none), so a host that reads ahead
/// can combine its own buffered bytes with these. Return:
/// - `EVMPM_REQUEST_COMPLETE`: run the handler;
/// - `EVMPM_REQUEST_INCOMPLETE`: keep waiting, holding no worker (the
///   connection goes back to waiting at once), for more bytes, at most
///   `header_timeout_ms` from the first byte; a client that takes longer is
///   closed (counted in `timed_out`);
/// - `EVMPM_REQUEST_REJECT`: close without running the handler (counted in
///   `rejected`).
///
/// Any other value is a host bug: the connection is closed as with
/// `EVMPM_REQUEST_REJECT` (counted in `rejected`) and the log callback is
/// told once per runtime, at `EVMPM_LOG_ERROR`.
///
/// When the peek window is full the handler runs whatever the callback says
/// (so it can answer "header too large"). A client that closes its side
/// with an incomplete request is closed.
///
/// This check is what keeps clients that send a request slowly (or only
/// part of one) off the workers: without it a connection goes to a worker at
/// its first byte, and a handler blocked reading the rest holds that worker.
///
/// Runs on a worker thread, between handlers, never at the same time as a
/// handler for the same connection: it must be fast and must not block or
/// call evmpm functions. `user_data` is `evmpm_config.user_data`. Not
/// useful for protocols evmpm cannot read: on a TLS listener leave it off
/// (`EVMPM_LISTEN_NO_REQUEST_READY` says why); its handshake step
/// (`evmpm_listener_config.handshake`) is what keeps slow TLS clients off
/// the workers there.
pub type evmpm_request_ready_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        conn: evmpm_conn,
        conn_user: *mut c_void,
        data: *const u8,
        len: usize,
    ) -> c_int,
>;

/// The log callback (optional, `evmpm_config.log`). evmpm never writes to
/// the process's stderr or stdout; what it has to say goes here: internal
/// errors (`EVMPM_LOG_ERROR`, with the runtime stopping itself), host
/// mistakes it recovered from (`EVMPM_LOG_ERROR`), and conditions an
/// operator should know of (`EVMPM_LOG_WARNING`).
///
/// `level` is an `EVMPM_LOG_*` value; `message` is a NUL-terminated line
/// without a trailing newline, valid only during the call (copy it to keep
/// it). `user_data` is `evmpm_config.user_data`.
///
/// Threads: any thread of the runtime, or a host thread inside an evmpm
/// call. It must not block for long and must not call `evmpm_stop` or
/// `evmpm_destroy` (they return `EVMPM_ETHREAD`).
pub type evmpm_log_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: c_int, message: *const c_char)>;

/// Runtime settings. Fill with `evmpm_config_init(&cfg, sizeof cfg)` first,
/// then change what you need.
///
/// The struct may gain fields at its end in later versions (the ABI policy
/// in the README): `size` tells the library which layout the caller was
/// built with, so a program built against an older header keeps working with
/// a newer library (fields it does not know get their defaults), and one
/// built against a newer header fails cleanly with `EVMPM_EVERSION` on an
/// older library if it set a field that library does not know.
///
/// | field | default | Apache httpd |
/// |---|---|---|
/// | running_threads | 0: one per CPU | (none: httpd runs every thread it has) |
/// | worker_threads | 256 | ThreadsPerChild |
/// | keepalive_timeout_ms | 5000 | KeepAliveTimeout |
/// | read_timeout_ms | 60000 | Timeout (waiting for the first request) |
/// | write_timeout_ms | 60000 | Timeout (write completion) |
/// | linger_timeout_ms | 2000 | lingering close (2 s in httpd) |
/// | async_request_worker_factor | INFINITY: no rule | AsyncRequestWorkerFactor |
/// | connection_limit | 16384 | MaxRequestWorkers × (factor + 1) per process |
/// | keepalive_shed_ms | 100 | (closes keep-alive when all workers busy) |
/// | worker_stack_size | 8 MiB | ThreadStackSize |
/// | request_ready | NULL (off) | mod_reqtimeout's purpose, without a worker |
/// | header_timeout_ms | 20000 | RequestReadTimeout header=20 |
/// | request_peek_bytes | 8192 | LimitRequestFieldSize (8190) |
/// | log | NULL (silent) | ErrorLog |
/// | close_on_worker | 0 (any thread) | (httpd closes on a worker) |
/// | on_thread_start, on_thread_stop | NULL | (none per thread: child_init is per process) |
///
/// Timeouts: `EVMPM_TIMEOUT_NONE` means never (a chat or other non-HTTP
/// server whose clients stay idle for long sets it for keep-alive and
/// read); a listener (`evmpm_listener_config`) or a connection
/// (`evmpm_conn_set_timeouts`) may have its own.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct evmpm_config {
    /// `sizeof(evmpm_config)` as the caller's header declares it, set by
    /// `evmpm_config_init`. Read first, before any other field.
    pub size: u32,
    /// The most worker threads, so the most handlers that may run at once,
    /// blocked or not (Apache's ThreadsPerChild). Threads start as they are
    /// needed: `running_threads` at start, one more each time a handler
    /// blocks while every thread is taken; one not needed for 2 s leaves.
    /// 1 to 4096.
    pub worker_threads: u32,
    /// How long a parked keep-alive connection may stay idle. 1 ms or more,
    /// or `EVMPM_TIMEOUT_NONE` (never: a chat member idle for hours).
    pub keepalive_timeout_ms: u32,
    /// How long a new connection may stay silent before its first byte.
    /// 1 ms or more, or `EVMPM_TIMEOUT_NONE`.
    pub read_timeout_ms: u32,
    /// How long write completion may go without the client acknowledging a
    /// byte. 1 ms or more, or `EVMPM_TIMEOUT_NONE`.
    pub write_timeout_ms: u32,
    /// How long a lingering close drains the client's input. 0 closes at
    /// once; `EVMPM_TIMEOUT_NONE` is refused.
    pub linger_timeout_ms: u32,
    /// Apache's admission rule, off by default (INFINITY): with a finite
    /// factor, new connections are accepted only while open connections
    /// (not counting those in lingering close) < worker_threads + factor ×
    /// idle worker threads. Fractions work as written (1.5 is 1.5). Off, a
    /// runtime accepts up to `connection_limit`, whatever its threads do.
    /// 0 or more (INFINITY included); not NaN.
    pub async_request_worker_factor: f64,
    /// Hard cap on open connections. 1 to 1048576 (2^20, the kernel's
    /// default ceiling on descriptors per process). Memory for this many
    /// connections is allocated up front, about 155 bytes each, by
    /// `evmpm_create` and the event thread's start (measured: 16384 take
    /// 3.2 MiB; 1048576 take 153 MiB and 0.1 s to create). Set it near the
    /// descriptors the process may really use (`ulimit -n`).
    pub connection_limit: u32,
    /// Shedding: when every worker is busy, work is waiting, and no worker has
    /// taken new work for this long, the oldest idle keep-alive connections
    /// are closed, one for each waiting connection (at most 64 at a time).
    /// This repeats every `keepalive_shed_ms` for as long as the stall lasts.
    /// 0 turns shedding off.
    pub keepalive_shed_ms: u32,
    /// Stack size of each worker thread in bytes. 64 KiB or more.
    pub worker_stack_size: usize,
    /// The request handler. Required.
    pub handler: evmpm_handler_fn,
    /// The close callback. Optional (NULL).
    pub on_close: evmpm_close_fn,
    /// Passed unchanged to every callback. Owned by the host.
    pub user_data: *mut c_void,
    /// The request-readiness check. Optional (NULL: a connection goes to a
    /// worker as soon as it is readable).
    pub request_ready: evmpm_request_ready_fn,
    /// With `request_ready`: how long a client may take from the first byte
    /// of a request to its last before it is closed. 1 ms or more, or
    /// `EVMPM_TIMEOUT_NONE`.
    pub header_timeout_ms: u32,
    /// With `request_ready`: the most bytes peeked and shown to it. 1 to
    /// 32768 (the kernel's receive low-water mark, which keeps a waiting
    /// connection quiet until more bytes come, is capped near there).
    pub request_peek_bytes: u32,
    /// The log callback. Optional (NULL: evmpm says nothing).
    pub log: evmpm_log_fn,
    /// How many threads run handlers at once while none blocks: they take
    /// turns on readable connections and stay hot. A handler that blocks
    /// (sleeps in the kernel for more than 100 µs) is not counted, and
    /// another thread runs in its place, up to `worker_threads` in all. 0:
    /// one per CPU the process may run on. 0 to 4096; at most
    /// `worker_threads` is used.
    pub running_threads: u32,
    /// Non-zero: every close callback runs on a worker thread (or, for what
    /// is still open when the workers have gone, on the thread in
    /// `evmpm_stop`/`evmpm_destroy`), never on the event thread. For hosts
    /// whose close path blocks: TLS shutdown, user callbacks, mutexes. A
    /// connection the event thread closes (a timeout, shedding, stop, the
    /// accept hook's refusal) then waits for a worker like a request does.
    /// 0 (the default): the callback runs on whichever thread closes the
    /// connection, the event thread included, and must be short.
    pub close_on_worker: u32,
    /// Runs on each new worker and event thread before it serves anything
    /// (see `evmpm_thread_fn`). Optional (NULL).
    pub on_thread_start: evmpm_thread_fn,
    /// Runs on each worker and event thread as it exits, whatever the
    /// reason (see `evmpm_thread_fn`). Optional (NULL).
    pub on_thread_stop: evmpm_thread_fn,
}

/// A snapshot of a runtime's counters, as mod_status shows them and more.
/// Gauges (`conns_*`, `workers_*`) are read one by one without a lock, so
/// under load they may not add up exactly; counters only grow. May gain
/// fields at its end in later versions: pass `sizeof` your copy to
/// `evmpm_get_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct evmpm_stats {
    /// Open connections, in every state.
    pub connections: u64,
    /// New connections waiting for their first byte (event thread).
    pub conns_reading: u64,
    /// Connections waiting for a free worker: readable ones not taken yet
    /// (the kernel is asked, in one `poll`, when the snapshot is made), and
    /// ones handed back or holding buffered input.
    pub conns_queued: u64,
    /// Connections a handler is running for.
    pub conns_in_handler: u64,
    /// Connections in write completion (event thread).
    pub conns_writing: u64,
    /// Idle keep-alive connections (event thread).
    pub conns_keepalive: u64,
    /// Connections in lingering close (event thread).
    pub conns_lingering: u64,
    /// Connections suspended by the host.
    pub conns_suspended: u64,
    /// Worker threads running a handler.
    pub workers_busy: u64,
    /// Handlers that could start now: `worker_threads` (the limit) minus
    /// those running.
    pub workers_idle: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections whose descriptor is closed, since start. Lags the close
    /// callback by the lingering close (up to `linger_timeout_ms`).
    pub closed: u64,
    /// Connections closed by the read, write, header or keep-alive timeout.
    pub timed_out: u64,
    /// Of `timed_out`: keep-alive connections that stayed idle too long.
    pub keepalive_expired: u64,
    /// Idle keep-alive connections closed early because workers were stalled.
    pub shed: u64,
    /// Accepted connections closed before any handler saw them (the runtime
    /// was stopping, or the OS refused to watch them).
    pub refused: u64,
    /// Requests `request_ready` rejected, or answered with a value it may
    /// not return (their connections were closed).
    pub rejected: u64,
    /// Times accepting was paused by the admission rule or connection limit.
    pub accept_pauses: u64,
    /// Times accept failed for lack of descriptors or memory and backed off.
    pub accept_backoffs: u64,
    /// 1 while the runtime is not accepting new connections.
    pub accepting_paused: u64,
    /// Internal errors (bugs in evmpm) caught. After the first the runtime
    /// stops itself; the log callback has the details.
    pub internal_errors: u64,
    /// Worker threads alive: `running_threads`, and more while handlers
    /// block; a spare not needed for 2 s leaves, and every one leaves at
    /// the stop (one whose handler is stuck past the deadline once it
    /// returns).
    pub worker_threads: u64,
    /// Handlers counted as blocked right now: sleeping in the kernel for
    /// more than 100 µs while another thread runs in their place.
    pub handlers_blocked: u64,
    /// Times a thread was released or started to run in place of a
    /// blocked handler.
    pub blocked_replaced: u64,
    /// Connections a listener's accept hook refused (closed at once).
    pub denied: u64,
    /// Connections whose listener's handshake step has not said
    /// `EVMPM_HANDSHAKE_DONE` yet (waiting for the client, or being
    /// stepped). Not counted in `conns_reading`.
    pub conns_handshake: u64,
    /// Handshakes done (`EVMPM_HANDSHAKE_DONE`), since start.
    pub handshakes: u64,
    /// Handshakes that failed, since start: the step said
    /// `EVMPM_HANDSHAKE_FAIL` (or a value it may not return), or the client
    /// reset or closed the connection mid-handshake (a client that
    /// connects and closes without a byte, a port probe, counts here too).
    /// Handshakes that ran out of time are in `timed_out` instead.
    pub handshakes_failed: u64,
    /// Timers and watches not ended yet (waiting, queued, running, idle
    /// watches), and ended ones whose memory the event thread has not
    /// freed yet (it does on its next turn).
    pub timers: u64,
    /// Timer and watch callbacks run since start.
    pub timer_runs: u64,
}

pub const EVMPM_VERSION_MAJOR: u32 = 0;
pub const EVMPM_VERSION_MINOR: u32 = 2;
pub const EVMPM_VERSION_PATCH: u32 = 0;

/// Handler wake reason: a new connection sent its first bytes.
pub const EVMPM_WAKE_NEW: c_int = 1;
/// Handler wake reason: a parked keep-alive connection became readable.
pub const EVMPM_WAKE_READABLE: c_int = 2;
/// Handler wake reason: parked with `EVMPM_PARK_BUFFERED`; the host holds the
/// input, the socket may have none.
pub const EVMPM_WAKE_BUFFERED: c_int = 3;
/// Handler wake reason: `evmpm_hand_back_to_worker` resumed a suspended
/// connection.
pub const EVMPM_WAKE_RESUMED: c_int = 4;
/// Handler wake reason: `evmpm_notify` was called for the connection (a
/// message for it, a broadcast, a kick); the socket may have no input.
pub const EVMPM_WAKE_NOTIFIED: c_int = 5;
/// Handler wake reason: a connection just accepted on a listener with
/// `EVMPM_LISTEN_SERVER_FIRST`; the client may not have sent anything.
pub const EVMPM_WAKE_ACCEPTED: c_int = 6;

/// A timeout value meaning "never" (`evmpm_config`'s and a listener's
/// read, keep-alive, write and header timeouts, `evmpm_conn_set_timeouts`),
/// and, for `evmpm_stop`, "no deadline": `UINT32_MAX`.
pub const EVMPM_TIMEOUT_NONE: u32 = u32::MAX;

/// `request_ready` verdict: a whole request is waiting; run the handler.
pub const EVMPM_REQUEST_COMPLETE: c_int = 1;
/// `request_ready` verdict: not yet; wait for more bytes without a worker.
pub const EVMPM_REQUEST_INCOMPLETE: c_int = 0;
/// `request_ready` verdict: close the connection without running the
/// handler.
pub const EVMPM_REQUEST_REJECT: c_int = -1;

/// `evmpm_park_keepalive` flag: the host already holds buffered input for
/// this connection (a pipelined request, bytes a TLS layer decrypted), so run
/// the handler again without waiting for the socket.
pub const EVMPM_PARK_BUFFERED: u32 = 1;

/// Complete-write flag (`evmpm_complete_write`, `evmpm_complete_writev`,
/// `evmpm_complete_sendfile`): park the connection in keep-alive once the
/// response is sent. Without it (and without `EVMPM_WRITE_BUFFERED`) the
/// connection is closed (lingering close).
pub const EVMPM_WRITE_KEEPALIVE: u32 = 1;
/// Complete-write flag: once the response is sent, run the handler again
/// with `EVMPM_WAKE_BUFFERED`: the host already holds the next (pipelined)
/// request. Implies keep-alive.
pub const EVMPM_WRITE_BUFFERED: u32 = 2;

/// The most buffers `evmpm_complete_writev` takes, and the most head
/// buffers `evmpm_complete_sendfile` takes: Linux's `IOV_MAX`.
pub const EVMPM_IOV_MAX: c_int = 1024;

/// Log level: evmpm hit an internal error or a host mistake.
pub const EVMPM_LOG_ERROR: c_int = 1;
/// Log level: something an operator should know of.
pub const EVMPM_LOG_WARNING: c_int = 2;

/// The most listeners one runtime takes.
pub const EVMPM_MAX_LISTENERS: u32 = 256;

/// Listener flag: accepted descriptors are in non-blocking mode
/// (`O_NONBLOCK`, as `accept4(SOCK_NONBLOCK)` gives them), for hosts whose
/// own I/O expects it. evmpm works the same in either mode: its own sends,
/// peeks and drains never depend on it (they pass `MSG_DONTWAIT`), and it
/// never changes the mode the host sees.
pub const EVMPM_LISTEN_NONBLOCK: u32 = 1;
/// Listener flag: the server speaks first (an SMTP, FTP or POP3 banner, a
/// greeting). The handler runs at once on accept, with
/// `EVMPM_WAKE_ACCEPTED`, instead of waiting for the client's first byte;
/// `request_ready` is not asked for that first run, and the read timeout
/// does not apply (the keep-alive timeout does, from the first park).
pub const EVMPM_LISTEN_SERVER_FIRST: u32 = 2;
/// Listener flag: no readiness check on this listener even though
/// `evmpm_config.request_ready` is set. For a TLS listener beside a plain
/// one: the check sees the bytes waiting on the socket, which are
/// ciphertext there, and only the TLS library can turn them into the
/// request, by reading (consuming) whole records from the socket, which a
/// check that only peeks cannot do. On a TLS listener a client that
/// completes its handshake and then sends its request slowly holds the
/// worker its handler runs on, for as long as the host's own read timeout
/// allows (`SO_RCVTIMEO`), as with Apache's mod_ssl; the handshake itself
/// holds none (`evmpm_listener_config.handshake`).
pub const EVMPM_LISTEN_NO_REQUEST_READY: u32 = 4;
/// Listener flag: connections of this listener never linger on close (as
/// `EVMPM_CLOSE_NO_LINGER` on every close): for protocols whose client
/// never sends after the server's last answer.
pub const EVMPM_LISTEN_NO_LINGER: u32 = 8;

/// `evmpm_close_ex` flag: close without the lingering close: the
/// descriptor is closed right after the close callback, without waiting for
/// the client's last input (the kernel sends a reset if unread input is
/// left, as a plain `close()` does).
pub const EVMPM_CLOSE_NO_LINGER: u32 = 1;
/// `evmpm_close_ex` flag: abortive close: the client gets a reset (TCP
/// RST, as `SO_LINGER` with a zero timeout gives) and any unsent output is
/// dropped.
pub const EVMPM_CLOSE_RESET: u32 = 2;
/// `evmpm_close_ex` flag: the client sent its last request (it asked to
/// close, and sent no body the handler left unread): the descriptor is
/// closed right away, unless the client has sent more already, which the
/// lingering close then drains. No late byte of a client that is done can
/// turn the close into a reset that cuts the response short, so it needs
/// no lingering, and the event thread is not woken for its end (as nginx
/// closes such a connection; Apache lingers on every close).
pub const EVMPM_CLOSE_CLIENT_DONE: u32 = 4;

/// Handshake step verdict (`evmpm_listener_config.handshake`): the
/// handshake (or preamble) is complete; the connection goes on to its
/// first request.
pub const EVMPM_HANDSHAKE_DONE: c_int = 0;
/// Handshake step verdict: the step needs to read more: call it again when
/// the descriptor is readable (`SSL_ERROR_WANT_READ`).
pub const EVMPM_HANDSHAKE_WANT_READ: c_int = 1;
/// Handshake step verdict: the step needs to write and the socket is full:
/// call it again when the descriptor is writable (`SSL_ERROR_WANT_WRITE`).
pub const EVMPM_HANDSHAKE_WANT_WRITE: c_int = 2;
/// Handshake step verdict: the handshake failed: close the connection
/// (counted in `handshakes_failed`) without running the handler.
pub const EVMPM_HANDSHAKE_FAIL: c_int = -1;

/// Accept hook verdict: keep the connection.
pub const EVMPM_ACCEPT_CONTINUE: c_int = 0;
/// Accept hook verdict: refuse it: it is closed at once (its close callback
/// runs, as for every accepted connection), counted in `denied`.
pub const EVMPM_ACCEPT_REFUSE: c_int = -1;

/// What the runtime learned when it accepted a connection: its listener
/// and both addresses. Read it with `evmpm_conn_get_info` (no system call,
/// except the local address on a wildcard listener: see `local`) or in the
/// accept hook. May gain fields at its end: pass `sizeof` your copy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct evmpm_conn_info {
    /// The listening descriptor that accepted the connection.
    pub listener_fd: c_int,
    /// Length of `peer` in bytes (0 if the kernel gave none).
    pub peer_len: u32,
    /// The listener's `user_data` (`evmpm_listener_config.user_data`; NULL
    /// for a listener registered with `evmpm_register_listener`).
    pub listener_user: *mut c_void,
    /// The client's address, as `accept` reported it: a `sockaddr_in`,
    /// `sockaddr_in6` or `sockaddr_un` in `sockaddr_storage`'s room. A Unix
    /// socket client's path is kept up to 26 bytes.
    pub peer: libc::sockaddr_storage,
    /// The address the client connected to. Taken from the listener when it
    /// is bound to one address; on a wildcard listener (`INADDR_ANY`,
    /// `in6addr_any`) it is asked of the kernel (`getsockname`) on the
    /// calling thread, once per call.
    pub local: libc::sockaddr_storage,
    /// Length of `local` in bytes (0 if it could not be had).
    pub local_len: u32,
}

/// The accept hook (optional, `evmpm_listener_config.on_accept`). Runs on
/// the event thread for each connection the listener accepts, before the
/// runtime watches it: access control by address, socket options,
/// per-connection state. `info` describes the connection (valid during the
/// call only); `fd` is its descriptor.
///
/// Return `EVMPM_ACCEPT_CONTINUE` to keep it, or `EVMPM_ACCEPT_REFUSE` to
/// close it at once (counted in `denied`; its close callback still runs,
/// so a pointer set here is freed there). Any other value refuses too.
///
/// It may call `evmpm_conn_set_user`, `evmpm_conn_get_user`,
/// `evmpm_conn_get_info`, `evmpm_conn_fd`, `evmpm_conn_set_timeouts`,
/// `evmpm_notify` and `evmpm_get_stats`, and `setsockopt` on `fd`; it may
/// not read or write `fd` or close it. It runs on the event thread, which
/// every idle connection waits on: it must not block. `listener_user` is
/// the listener's `user_data`.
pub type evmpm_accept_fn = Option<
    unsafe extern "C" fn(
        listener_user: *mut c_void,
        rt: *mut evmpm_runtime,
        conn: evmpm_conn,
        fd: c_int,
        info: *const evmpm_conn_info,
    ) -> c_int,
>;

/// Per-listener settings for `evmpm_register_listener_ex`. Fill with
/// `evmpm_listener_config_init(&lc, sizeof lc)` first: its defaults make
/// the listener behave as one given to `evmpm_register_listener`. May gain
/// fields at its end (the `size` rule of `evmpm_config`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct evmpm_listener_config {
    /// `sizeof(evmpm_listener_config)` as the caller's header declares it,
    /// set by `evmpm_listener_config_init`. Read first.
    pub size: u32,
    /// `EVMPM_LISTEN_*` flags. Default 0.
    pub flags: u32,
    /// The host's pointer for this listener: in `evmpm_conn_get_info` of each
    /// of its connections, and given to its `on_accept` and its own
    /// `request_ready`. Owned by the host; it must outlive the runtime's
    /// last callback (`evmpm_destroy`). Default NULL.
    pub user_data: *mut c_void,
    /// The accept hook. Default NULL (none).
    pub on_accept: evmpm_accept_fn,
    /// A readiness check for this listener's connections in place of
    /// `evmpm_config.request_ready`, called with this listener's
    /// `user_data`. Default NULL: the runtime's check, if any (unless
    /// `EVMPM_LISTEN_NO_REQUEST_READY`).
    pub request_ready: evmpm_request_ready_fn,
    /// This listener's read timeout (first byte); 0: the runtime's;
    /// `EVMPM_TIMEOUT_NONE`: never.
    pub read_timeout_ms: u32,
    /// This listener's keep-alive timeout; 0: the runtime's;
    /// `EVMPM_TIMEOUT_NONE`: never. `evmpm_conn_set_timeouts` changes it
    /// per connection.
    pub keepalive_timeout_ms: u32,
    /// This listener's write-completion timeout; 0: the runtime's;
    /// `EVMPM_TIMEOUT_NONE`: never.
    pub write_timeout_ms: u32,
    /// This listener's header timeout (with a readiness check, and for the
    /// handshake); 0: the runtime's; `EVMPM_TIMEOUT_NONE`: never.
    pub header_timeout_ms: u32,
    /// The handshake step of this listener's connections (a TLS handshake,
    /// a PROXY-protocol header, any preamble), driven without blocking
    /// before the handler first runs. Default NULL (none). See
    /// `evmpm_handshake_fn`.
    pub handshake: evmpm_handshake_fn,
}

/// The handshake step (optional, `evmpm_listener_config.handshake`): a TLS
/// handshake, or any preamble (a PROXY-protocol header), taken off the
/// workers' blocking path. With it, a client that is slow to handshake, or
/// never does, holds no worker.
///
/// Each connection the listener accepts is put in non-blocking mode
/// (`O_NONBLOCK`) and waits without a worker. Whenever it is ready for
/// what the step last asked for (readable at first), a worker calls the
/// step, which does what it can without blocking (for OpenSSL:
/// `SSL_do_handshake` on the non-blocking socket) and returns:
/// - `EVMPM_HANDSHAKE_WANT_READ` or `EVMPM_HANDSHAKE_WANT_WRITE`: call it
///   again when `fd` is readable, or writable; the connection waits
///   meanwhile, holding no worker;
/// - `EVMPM_HANDSHAKE_DONE`: `fd` goes back to blocking mode (unless the
///   listener has `EVMPM_LISTEN_NONBLOCK`) and the connection goes on as
///   any new connection does: the handler runs (`EVMPM_WAKE_NEW`) once
///   input waits on the socket, at once if some does already, after the
///   listener's readiness check if any; with `EVMPM_LISTEN_SERVER_FIRST`
///   it runs at once with `EVMPM_WAKE_ACCEPTED`. While it waits for that
///   first request the read timeout applies. The step is never called
///   again for the connection;
/// - `EVMPM_HANDSHAKE_FAIL`: the connection is closed (its close callback
///   runs) without a handler run, counted in `handshakes_failed`. Any
///   other value is taken as `EVMPM_HANDSHAKE_FAIL`.
///
/// The whole handshake, from the accept, must end within the listener's
/// header timeout (`header_timeout_ms`): a client that takes longer is
/// closed and counted in `timed_out`. A client that resets or closes the
/// connection mid-handshake is closed at once, counted in
/// `handshakes_failed`. When the runtime stops, connections still in their
/// handshake are closed as idle ones are.
///
/// Runs on a worker thread, never at the same time as another step or a
/// handler for the same connection, and is not counted as a busy worker:
/// it must not block (the descriptor is non-blocking; do no other blocking
/// call). `conn_user` is the pointer set with `evmpm_conn_set_user` (NULL
/// on the first call, unless the accept hook set one): the step may set
/// its per-connection state there on its first call (an `SSL *`), and
/// free it in the close callback, which runs for every connection,
/// whether its handshake finished or not. It may call
/// `evmpm_conn_set_user`, `evmpm_conn_get_user`, `evmpm_conn_get_info`,
/// `evmpm_conn_fd`, `evmpm_conn_set_timeouts`, `evmpm_notify` and
/// `evmpm_get_stats`; not `evmpm_park_keepalive`, the complete-writes,
/// `evmpm_close` or `evmpm_suspend` (`EVMPM_ESTATE`: no handler holds the
/// connection). An `evmpm_notify` while the handshake is not done is
/// delivered once it is (the handler then runs with
/// `EVMPM_WAKE_NOTIFIED`): a step that read past its preamble (input the
/// socket will not announce again) can ask for the handler's run that
/// way.
///
/// The step should leave on the socket what follows the handshake (TLS
/// libraries read record by record, so they do: keep OpenSSL's
/// `read_ahead` off). `listener_user` is the listener's `user_data`.
pub type evmpm_handshake_fn = Option<
    unsafe extern "C" fn(
        listener_user: *mut c_void,
        rt: *mut evmpm_runtime,
        conn: evmpm_conn,
        fd: c_int,
        conn_user: *mut c_void,
    ) -> c_int,
>;

/// A thread hook (optional: `evmpm_config.on_thread_start` and
/// `evmpm_config.on_thread_stop`). Where a server that ran a thread per
/// connection did its per-thread setup and teardown (thread-local state, a
/// database handle, a thread name, its thread-exit hook), it does them here.
///
/// `on_thread_start` runs on each new thread of the runtime before the
/// thread serves anything: before a worker takes its first connection,
/// before the event thread accepts. `on_thread_stop` runs on that thread as
/// it exits, whatever the reason: a spare worker leaving after 2 s without
/// work, `evmpm_stop`, `evmpm_destroy`, or an `evmpm_start` that failed
/// part-way. Each runs exactly once per thread, stop after start; a thread
/// that ran its start hook runs its stop hook, by the time `evmpm_destroy`
/// returns at the latest.
///
/// Threads: the runtime's worker threads (`kind` `EVMPM_THREAD_WORKER`,
/// `id` the worker's id, from 0, as `evmpm_get_workers` shows it; a thread
/// started later may take the id of one that left, only once that one's
/// stop hook has returned) and its
/// event thread (`EVMPM_THREAD_EVENT`, `id` 0). The pool's monitor thread,
/// which runs no host code but the log callback after an internal error,
/// has none.
///
/// A hook may block briefly, but its thread waits meanwhile: a worker's
/// start hook delays the thread that was started for a blocked handler, the
/// event thread's delays accepting. It must not call `evmpm_stop` or
/// `evmpm_destroy` (they return `EVMPM_ETHREAD`). `user_data` is
/// `evmpm_config.user_data`; `rt` is the runtime.
pub type evmpm_thread_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, rt: *mut evmpm_runtime, kind: c_int, id: u32),
>;

/// Thread hook kind: a worker thread, which runs handlers.
pub const EVMPM_THREAD_WORKER: c_int = 1;
/// Thread hook kind: the event thread, which accepts and watches idle
/// connections.
pub const EVMPM_THREAD_EVENT: c_int = 2;

/// One worker thread in `evmpm_get_workers`'s snapshot: a row of a status
/// page, as Apache's scoreboard has one per worker. May gain fields at its
/// end in later versions: pass `sizeof` your copy to `evmpm_get_workers`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct evmpm_worker_info {
    /// The worker's id, from 0 to `worker_threads` - 1: the `id` its
    /// thread hooks get. A thread started after another left may have
    /// that one's id.
    pub id: u32,
    /// What it does: an `EVMPM_WORKER_*` value.
    pub state: i32,
    /// The connection whose handler it runs (`EVMPM_WORKER_HANDLER`,
    /// `EVMPM_WORKER_BLOCKED`); 0 otherwise.
    pub conn: evmpm_conn,
    /// How long it has been in `state`, in microseconds: in a handler,
    /// since that handler call began; blocked, since it was counted
    /// blocked.
    pub state_us: u64,
    /// The label the running handler set with `evmpm_set_label`,
    /// NUL-terminated; empty when it set none, and outside a handler.
    pub label: [c_char; 64],
}

/// Worker state (`evmpm_worker_info.state`): waiting for work, for a
/// connection to become readable or a job to be queued.
pub const EVMPM_WORKER_IDLE: i32 = 1;
/// Worker state: running a handler.
pub const EVMPM_WORKER_HANDLER: i32 = 2;
/// Worker state: running a handler counted blocked (its thread slept in
/// the kernel for more than 100 µs); another thread runs in its place.
pub const EVMPM_WORKER_BLOCKED: i32 = 3;
/// Worker state: asleep as a spare, until a handler blocks (it then runs
/// in that one's place) or 2 s pass (it then leaves).
pub const EVMPM_WORKER_SPARE: i32 = 4;

//! Types and constants that appear in `evmpm.h`.
//!
//! cbindgen reads this file: doc comments here become the header's comments.
#![allow(non_camel_case_types)]

use libc::{c_int, c_void};

/// A connection handle: the connection's slot in the runtime's table and the
/// slot's generation. Handles are plain values, cheap to copy and safe to
/// keep: once the connection closes, every call that takes the handle returns
/// `EVMPM_ESTALE` and never touches another connection. 0 is never a valid
/// handle.
pub type evmpm_conn = u64;

/// An evmpm runtime (opaque, `evmpm_runtime` in C): one event thread, a
/// pool of worker threads and the connections they share. Create with
/// `evmpm_create`, free with `evmpm_destroy`.
pub use crate::runtime::Runtime;

/// The host's request handler. Runs on a worker thread, with the connection's
/// descriptor `fd` in blocking mode unless the host changed it.
///
/// Before returning, the handler says what happens next by calling exactly one
/// of `evmpm_park_keepalive`, `evmpm_complete_write`, `evmpm_close` or
/// `evmpm_suspend` for `conn`. A handler that returns without doing so has
/// its connection closed.
///
/// `reason` is one of the `EVMPM_WAKE_*` values. `user_data` is
/// `evmpm_config.user_data`.
pub type evmpm_handler_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        rt: *mut Runtime,
        conn: evmpm_conn,
        fd: c_int,
        reason: c_int,
    ),
>;

/// Runs exactly once for every accepted connection, when the runtime takes
/// it away from the host for good (the host closed it, a timeout, an error,
/// shedding or stop). `fd` is still open and is closed by the runtime after
/// the callback: do not close it. `conn_user` is the pointer last set with
/// `evmpm_conn_set_user` (NULL if none). Runs on a worker, on the event
/// thread or on the thread that called `evmpm_close`/`evmpm_stop`; it must
/// not block. Calls that take `conn` return `EVMPM_ESTATE` or `EVMPM_ESTALE`
/// from here on.
pub type evmpm_close_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        rt: *mut Runtime,
        conn: evmpm_conn,
        fd: c_int,
        conn_user: *mut c_void,
    ),
>;

/// Gives back a buffer passed to `evmpm_complete_write`. Called exactly once,
/// after the last byte was sent or when the write was abandoned, on a worker
/// or the event thread; it must not block.
pub type evmpm_release_fn = Option<unsafe extern "C" fn(release_arg: *mut c_void)>;

/// Request-readiness check (optional, `evmpm_config.request_ready`).
///
/// Before a waiting connection (new, or parked in keep-alive) goes to a
/// worker, the event thread peeks at its pending bytes (MSG_PEEK: nothing is
/// consumed, the handler still reads them all) and asks this callback
/// whether a whole request is there. `data`/`len` are the first bytes
/// waiting, at most `request_peek_bytes`; `conn_user` is the pointer set
/// with `evmpm_conn_set_user` (NULL if none), so a host that reads ahead
/// can combine its own buffered bytes with these. Return:
/// - `EVMPM_REQUEST_COMPLETE`: run the handler;
/// - `EVMPM_REQUEST_INCOMPLETE`: keep waiting on the event thread, holding no
///   worker, for more bytes, at most `header_timeout_ms` from the first
///   byte; a client that takes longer is closed (counted in `timed_out`);
/// - `EVMPM_REQUEST_REJECT`: close without running the handler (counted in
///   `rejected`).
///
/// When the peek window is full the handler runs whatever the callback says
/// (so it can answer "header too large"). A client that closes its side
/// with an incomplete request is closed.
///
/// Runs on the event thread: it must be fast and must not block or call
/// evmpm functions. `user_data` is
/// `evmpm_config.user_data`. Not useful for protocols the event thread
/// cannot read (TLS): leave it NULL there.
pub type evmpm_request_ready_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        conn: evmpm_conn,
        conn_user: *mut c_void,
        data: *const u8,
        len: usize,
    ) -> c_int,
>;

/// Runtime settings. Always fill with `evmpm_config_init` first, then change
/// what you need: new fields get defaults there.
///
/// | field | default | Apache httpd |
/// |---|---|---|
/// | worker_threads | 16 | ThreadsPerChild |
/// | keepalive_timeout_ms | 5000 | KeepAliveTimeout |
/// | read_timeout_ms | 60000 | Timeout (waiting for the first request) |
/// | write_timeout_ms | 60000 | Timeout (write completion) |
/// | linger_timeout_ms | 2000 | lingering close (2 s in httpd) |
/// | async_request_worker_factor | 1024.0 | AsyncRequestWorkerFactor |
/// | connection_limit | 16384 | MaxRequestWorkers × (factor + 1) per process |
/// | keepalive_shed_ms | 100 | (closes keep-alive when all workers busy) |
/// | worker_stack_size | 8 MiB | ThreadStackSize |
/// | request_ready | NULL (off) | mod_reqtimeout's purpose, without a worker |
/// | header_timeout_ms | 20000 | RequestReadTimeout header=20 |
/// | request_peek_bytes | 8192 | LimitRequestFieldSize (8190) |
#[repr(C)]
#[derive(Clone, Copy)]
pub struct evmpm_config {
    /// `EVMPM_CONFIG_VERSION`, set by `evmpm_config_init`.
    pub version: u32,
    /// Worker threads that run the handler. 1 to 4096.
    pub worker_threads: u32,
    /// How long a parked keep-alive connection may stay idle. 1 ms or more.
    pub keepalive_timeout_ms: u32,
    /// How long a new connection may stay silent before its first byte.
    /// 1 ms or more.
    pub read_timeout_ms: u32,
    /// How long write completion may go without sending a byte. 1 ms or more.
    pub write_timeout_ms: u32,
    /// How long a lingering close drains the client's input. 0 closes at once.
    pub linger_timeout_ms: u32,
    /// New connections are accepted only while open connections (not counting
    /// those in lingering close) < worker_threads + factor × idle workers.
    /// Fractions work as written (1.5 is 1.5). 0 or more, finite.
    pub async_request_worker_factor: f64,
    /// Hard cap on open connections; the connection table has this many
    /// slots. 1 to 16777215.
    pub connection_limit: u32,
    /// Shedding: when every worker is busy, work is waiting, and no worker has
    /// taken new work for this long, the oldest idle keep-alive connections
    /// are closed, one for each waiting connection. 0 turns shedding off.
    pub keepalive_shed_ms: u32,
    /// Stack size of each worker thread in bytes. 64 KiB or more.
    pub worker_stack_size: usize,
    /// The request handler. Required.
    pub handler: evmpm_handler_fn,
    /// The close callback. Optional (NULL).
    pub on_close: evmpm_close_fn,
    /// Passed unchanged to `handler`, `on_close` and `request_ready`. Owned
    /// by the host.
    pub user_data: *mut c_void,
    /// The request-readiness check. Optional (NULL: a connection goes to a
    /// worker as soon as it is readable).
    pub request_ready: evmpm_request_ready_fn,
    /// With `request_ready`: how long a client may take from the first byte
    /// of a request to its last before it is closed. 1 ms or more.
    pub header_timeout_ms: u32,
    /// With `request_ready`: the most bytes peeked and shown to it. 1 to
    /// 32768 (the kernel's receive low-water mark, which keeps a waiting
    /// connection quiet until more bytes come, is capped near there).
    pub request_peek_bytes: u32,
}

/// A snapshot of a runtime's counters, as mod_status shows them and more.
/// Gauges (`conns_*`, `workers_*`) are read one by one without a lock, so
/// under load they may not add up exactly; counters only grow.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct evmpm_stats {
    /// Open connections, in every state.
    pub connections: u64,
    /// New connections waiting for their first byte (event thread).
    pub conns_reading: u64,
    /// Readable connections waiting for a free worker.
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
    /// Workers running a handler.
    pub workers_busy: u64,
    /// Workers waiting for work.
    pub workers_idle: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed since start (the close callback ran for each).
    pub closed: u64,
    /// Connections closed by the read, write or keep-alive timeout.
    pub timed_out: u64,
    /// Of `timed_out`: keep-alive connections that stayed idle too long.
    pub keepalive_expired: u64,
    /// Idle keep-alive connections closed early because workers were stalled.
    pub shed: u64,
    /// Accepted connections closed before any handler saw them (the runtime
    /// was stopping, or the OS refused to watch them).
    pub refused: u64,
    /// Requests `request_ready` rejected (their connections were closed).
    pub rejected: u64,
    /// Times accepting was paused by the admission rule or connection limit.
    pub accept_pauses: u64,
    /// Times accept failed for lack of descriptors or memory and backed off.
    pub accept_backoffs: u64,
    /// 1 while the runtime is not accepting new connections.
    pub accepting_paused: u64,
}

/// `evmpm_config.version` for this header.
pub const EVMPM_CONFIG_VERSION: u32 = 1;

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

/// `evmpm_complete_write` flag: park the connection in keep-alive once the
/// buffer is sent. Without it (and without `EVMPM_WRITE_BUFFERED`) the
/// connection is closed (lingering close).
pub const EVMPM_WRITE_KEEPALIVE: u32 = 1;
/// `evmpm_complete_write` flag: once the buffer is sent, run the handler
/// again with `EVMPM_WAKE_BUFFERED`: the host already holds the next
/// (pipelined) request. Implies keep-alive.
pub const EVMPM_WRITE_BUFFERED: u32 = 2;

/// Success.
pub const EVMPM_OK: c_int = 0;
/// A required pointer was NULL, or an argument or config value is out of
/// range.
pub const EVMPM_EINVAL: c_int = -1;
/// The descriptor is not an open stream socket.
pub const EVMPM_ENOTSOCK: c_int = -2;
/// The socket is not listening (`listen()` was not called).
pub const EVMPM_ENOTLISTENER: c_int = -3;
/// The connection handle is 0, or its connection has closed.
pub const EVMPM_ESTALE: c_int = -4;
/// The call does not fit the connection's or runtime's current state (park
/// twice, hand back a connection that is not suspended, start twice, ...).
pub const EVMPM_ESTATE: c_int = -5;
/// The runtime is stopping or stopped.
pub const EVMPM_ESTOPPED: c_int = -6;
/// `evmpm_stop`'s deadline passed before every connection had closed; the
/// rest were closed by force.
pub const EVMPM_ETIMEDOUT: c_int = -7;
/// The call would deadlock on this thread (`evmpm_stop` or `evmpm_destroy`
/// from a handler or callback of the same runtime).
pub const EVMPM_ETHREAD: c_int = -8;
/// An OS call failed; `errno` holds its cause.
pub const EVMPM_EOS: c_int = -9;
/// The listener is already registered with this runtime.
pub const EVMPM_EEXIST: c_int = -10;
/// `evmpm_config.version` is not one this library knows.
pub const EVMPM_EVERSION: c_int = -11;
/// A bug inside evmpm was caught at the C boundary; the call had no effect
/// or only part of it.
pub const EVMPM_EINTERNAL: c_int = -12;

//! The exported C functions. Each one: checks its pointers, runs inside
//! `ffi_guard!` so no panic reaches C, and returns 0 or a negative
//! `EVMPM_E*` code. Their doc comments are the header's documentation.

// Each function states its contract in C terms (Threads, Ownership, Errors)
// in the header; a Rust `# Safety` heading would only repeat it there.
#![allow(clippy::missing_safety_doc)]

use super::ffi_guard;
use super::types::evmpm_error::{self, *};
use super::types::*;
use crate::config::{self, Config};
use crate::conn::{AfterWrite, FileRange, Handle, PendingWrite};
use crate::error::{self, Error};
use crate::runtime::{HostCall, Runtime};
use libc::{c_char, c_int, c_void};
use std::sync::Arc;

pub(super) fn result_code(r: Result<(), Error>) -> evmpm_error {
    match r {
        Ok(()) => EVMPM_OK,
        Err(e) => {
            if let Error::Os(errno) = e {
                crate::sys::set_errno(errno);
            }
            e.code()
        }
    }
}

/// The runtime behind the host's pointer. The host's pointer is
/// `Arc::into_raw` of it (see `evmpm_create`).
///
/// # Safety
/// `rt` is NULL or a pointer from `evmpm_create` not yet destroyed.
pub(super) unsafe fn runtime<'a>(rt: *mut evmpm_runtime) -> Result<&'a Runtime, Error> {
    // SAFETY: per this function's contract.
    unsafe { rt.cast::<Runtime>().as_ref() }.ok_or(Error::Invalid)
}

/// Runs a host call on `rt` (from `runtime`): refused once `evmpm_stop` has
/// sealed the runtime, marked as inside it (so its callbacks cannot stop or
/// destroy it under this call), and fail-stop on an internal panic.
pub(super) fn host_call(
    rt: Result<&Runtime, Error>,
    place: &str,
    f: impl FnOnce(&Runtime) -> Result<(), Error>,
) -> evmpm_error {
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return e.code(),
    };
    let call = match HostCall::enter(rt) {
        Ok(call) => call,
        Err(e) => return e.code(),
    };
    let result = match crate::failure::catch(|| f(rt)) {
        Ok(r) => result_code(r),
        Err(panic) => {
            rt.internal_error(place, &panic);
            EVMPM_EINTERNAL
        }
    };
    drop(call);
    result
}

/// Fills `*cfg` with the defaults (see `evmpm_config`) and sets
/// `cfg->size`. Call it before setting any field, as
/// `evmpm_config_init(&cfg, sizeof cfg)`: `cfg_size` is the size of the
/// struct your header declares, which lets a newer library fill exactly the
/// fields your program knows.
///
/// Threads: any. Ownership: `cfg` is the caller's; `cfg_size` bytes at it
/// are written.
/// Errors: `EVMPM_EINVAL` (NULL `cfg`), `EVMPM_EVERSION` (`cfg_size` is
/// smaller than any layout this library knows, or above `UINT32_MAX`). On
/// error nothing is written.
#[no_mangle]
pub unsafe extern "C" fn evmpm_config_init(cfg: *mut evmpm_config, cfg_size: usize) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if cfg.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: non-NULL, and the caller provides `cfg_size` writable bytes.
        result_code(unsafe { config::init(cfg, cfg_size) })
    })
}

/// Creates a runtime from `*cfg` and stores it in `*out`. No thread runs
/// until `evmpm_start`.
///
/// `cfg->size` is read first, then only that many bytes of `*cfg`.
///
/// Threads: any. Ownership: `cfg` stays the caller's (it is copied); the
/// runtime in `*out` is the caller's, to free with `evmpm_destroy`.
/// Errors: `EVMPM_EINVAL` (NULL `cfg`/`out`, no handler, a value out of
/// range: the field ranges are in `evmpm_config`; the log callback set in
/// `cfg`, if any, is told which field), `EVMPM_EVERSION`
/// (`cfg->size` unknown to this library: `cfg` was not filled by
/// `evmpm_config_init`, or sets fields this older library lacks),
/// `EVMPM_EOS` (epoll or eventfd creation failed, or 4,095 runtimes exist
/// already (`EMFILE`); see errno). On error `*out` is set to NULL when
/// `out` is not NULL.
#[no_mangle]
pub unsafe extern "C" fn evmpm_create(
    cfg: *const evmpm_config,
    out: *mut *mut evmpm_runtime,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: non-NULL; the caller provides a writable pointer slot.
        unsafe { out.write(std::ptr::null_mut()) };
        if cfg.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: a readable evmpm_config of `cfg->size` bytes (contract).
        let created = unsafe { config::read(cfg) }
            .and_then(|c| Config::from_c(&c))
            .and_then(Runtime::new);
        match created {
            Ok(rt) => {
                // SAFETY: as above.
                unsafe { out.write(Arc::into_raw(rt) as *mut evmpm_runtime) };
                EVMPM_OK
            }
            Err(e) => result_code(Err(e)),
        }
    })
}

/// Hands the runtime a listening socket the host created, bound and
/// `listen()`ed. The event thread accepts on it (accept4, close-on-exec) and
/// polls each new connection until it is readable before running the
/// handler, so a client that connects and sends nothing never holds a
/// worker. The runtime sets O_NONBLOCK on `fd`. Several runtimes, or
/// several processes, may share one listener (EPOLLEXCLUSIVE).
///
/// Threads: any, before or after `evmpm_start`, a handler included (the
/// new listener is accepted on from the event thread's next turn).
/// Ownership: `fd` stays the host's; the runtime never closes it, and the
/// host must not close it before `evmpm_stop` returns.
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ENOTSOCK` (`fd` is not an
/// open stream socket), `EVMPM_ENOTLISTENER` (not listening), `EVMPM_EEXIST`
/// (already registered), `EVMPM_ESTOPPED` (stop was called), `EVMPM_EOS`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_register_listener(rt: *mut evmpm_runtime, fd: c_int) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_register_listener", |rt| {
            rt.register_listener(fd, &crate::listener::defaults())
        })
    })
}

/// Starts the event thread and the worker threads. The threads inherit the
/// calling thread's signal mask: block the signals the host handles itself
/// before calling this.
///
/// Threads: any but the runtime's own. Once per runtime.
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTATE` (already started),
/// `EVMPM_ESTOPPED` (stopped), `EVMPM_EOS` (a thread could not be created;
/// the runtime is then stopped).
#[no_mangle]
pub unsafe extern "C" fn evmpm_start(rt: *mut evmpm_runtime) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if rt.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: a live pointer from evmpm_create (contract): the host
        // holds one strong count, so borrowing it as an Arc is sound while
        // we do not drop that count.
        let rt = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(rt.cast::<Runtime>()) });
        result_code(rt.start())
    })
}

/// Graceful stop. Stops accepting at once and closes idle connections
/// (waiting for a first request, or parked in keep-alive). Handlers running
/// now finish, requests already readable are still served, write
/// completions finish; connections the handler then parks are closed.
/// Returns when every connection is closed, or at the deadline
/// `timeout_ms` from now: then every remaining connection is closed by
/// force (sockets of handlers still running are shut down so blocked reads
/// return), and the call returns after at most ~100 ms more. With
/// `EVMPM_TIMEOUT_NONE` there is no deadline: the call returns only once
/// every connection is closed, however long its handler or the host (a
/// suspended connection) takes, and never forces one. Before it returns,
/// every connection not held by a stuck handler is closed and its close
/// callback has run, on this thread if no other closed it; host calls from
/// then on return `EVMPM_ESTOPPED`. Unless a handler was stuck, every
/// runtime thread has exited too, its `on_thread_stop` hook run; otherwise
/// `evmpm_destroy` waits for the rest.
///
/// Threads: any but the runtime's own, and not from inside any callback of
/// this runtime on whatever thread it runs (a close callback run by a host
/// thread's `evmpm_close`, say): those get `EVMPM_ETHREAD` and nothing
/// happens.
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ETHREAD` (see Threads),
/// `EVMPM_ESTOPPED` (already stopped), `EVMPM_ETIMEDOUT` (the deadline
/// forced connections closed, or a handler had not returned; the runtime is
/// stopped all the same, and such a handler's connection is closed when it
/// returns, which `evmpm_destroy` waits for), `EVMPM_EINTERNAL` (the runtime had stopped itself after an
/// internal error, as `evmpm_stats.internal_errors` and the log callback
/// tell; it is stopped, every connection closed).
#[no_mangle]
pub unsafe extern "C" fn evmpm_stop(rt: *mut evmpm_runtime, timeout_ms: u32) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        result_code(unsafe { runtime(rt) }.and_then(|rt| rt.stop(timeout_ms)))
    })
}

/// Frees the runtime. If it is still running it is first stopped with a
/// deadline of 0 (every connection closed at once, close callbacks run).
/// Then it waits for every thread of the runtime to exit, each running its
/// `on_thread_stop` hook. NULL is accepted and ignored.
///
/// Once `evmpm_destroy` returns, no callback of this runtime runs or will
/// ever run, on any thread: no handler, `on_close`, `request_ready`,
/// `release`, `log`, `on_thread_start` or `on_thread_stop`. The host may
/// free `user_data` and whatever its callbacks use.
///
/// It blocks until every handler has returned. A handler stuck past
/// `evmpm_stop`'s deadline holds it up: the forced stop shut that
/// handler's socket down, so one blocked on its own connection returns;
/// one blocked elsewhere (a lock, a backend, a sleep) must be released by
/// the host from another thread. Its connection is then closed, its close
/// callback run, and its thread's stop hook run, all before this returns.
///
/// Threads: any but the runtime's own, and not from inside any callback of
/// this runtime on whatever thread it runs: such a call does nothing and
/// returns `EVMPM_ETHREAD`. No other call with `rt` may be in progress or
/// follow on any thread.
/// Ownership: `rt` is invalid afterwards.
/// Errors: `EVMPM_ETHREAD`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_destroy(rt: *mut evmpm_runtime) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        let Ok(borrowed) = (unsafe { runtime(rt) }) else {
            return EVMPM_OK;
        };
        if borrowed.is_inside() {
            return EVMPM_ETHREAD;
        }
        let _ = borrowed.stop(0);
        borrowed.join_all();
        // SAFETY: takes back the strong count Arc::into_raw gave the host;
        // every runtime thread, holding the others, has been joined, so
        // this drop frees the runtime here.
        drop(unsafe { Arc::from_raw(rt.cast::<Runtime>()) });
        EVMPM_OK
    })
}

/// A host call on one connection (see `host_call`): 0 and values that are
/// not handles are stale.
pub(super) fn with_conn(
    rt: Result<&Runtime, Error>,
    place: &str,
    conn: evmpm_conn,
    f: impl FnOnce(&Runtime, Handle) -> Result<(), Error>,
) -> evmpm_error {
    host_call(rt, place, |rt| {
        let h = Handle(conn);
        if !h.is_connection() {
            return Err(Error::Stale);
        }
        rt.faults.hit(crate::failure::Site::HostCall);
        f(rt, h)
    })
}

/// The handler's request is done and the connection stays open. The worker
/// is free as soon as the handler returns; the event thread then waits for
/// the next request (handler runs again with `EVMPM_WAKE_READABLE`) or the
/// keep-alive timeout (connection closed). With `EVMPM_PARK_BUFFERED` in
/// `flags` the host already holds input for this connection: the handler
/// runs again at once, without polling (`EVMPM_WAKE_BUFFERED`).
///
/// Threads: the connection's handler, or any thread while the host holds
/// the connection suspended (`evmpm_suspend`).
/// Errors: `EVMPM_EINVAL` (NULL `rt`, unknown flag), `EVMPM_ESTALE`
/// (connection closed), `EVMPM_ESTATE` (not held by the host: already
/// parked, written, closed, or its handler already returned),
/// `EVMPM_ESTOPPED` (runtime stopped).
#[no_mangle]
pub unsafe extern "C" fn evmpm_park_keepalive(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    flags: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if flags & !EVMPM_PARK_BUFFERED != 0 {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_park_keepalive",
            conn,
            |rt, h| rt.host_park(h, flags & EVMPM_PARK_BUFFERED != 0),
        )
    })
}

/// Runs the handler for a suspended connection on a worker again
/// (`EVMPM_WAKE_RESUMED`), for example once a backend answered. If the
/// handler that suspended it has not returned yet, it runs again on the
/// same worker right after it does; it never runs twice at once.
///
/// Threads: any.
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTALE`, `EVMPM_ESTATE` (the
/// connection is not suspended), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_hand_back_to_worker(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_hand_back_to_worker",
            conn,
            |rt, h| rt.host_hand_back(h),
        )
    })
}

/// Gives the runtime the rest of the response: `len` bytes at `data`. The
/// worker is free as soon as the handler returns; the bytes are sent without
/// blocking, first on the worker, then by the event thread as the client
/// reads. Then, with `EVMPM_WRITE_KEEPALIVE` in `flags`, the connection is
/// parked in keep-alive; with `EVMPM_WRITE_BUFFERED`, the handler runs again
/// (`EVMPM_WAKE_BUFFERED`) because the host already holds the next request;
/// with neither, it is closed (lingering close). A write whose client
/// acknowledges nothing for `write_timeout_ms` closes the connection.
///
/// Ownership: on success the runtime borrows `data` until it calls
/// `release(release_arg)`, exactly once, when the write ends (sent, failed,
/// timed out, or the runtime stopped). `release` may be NULL for static
/// data. On error nothing is kept and `release` is not called.
///
/// Threads: the connection's handler, or any thread while the host holds the
/// connection suspended.
/// Errors: `EVMPM_EINVAL` (NULL `rt`, NULL `data` with `len` > 0, unknown
/// flag), `EVMPM_ESTALE`, `EVMPM_ESTATE` (not held by the host, or already
/// parked/written/closed), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_complete_write(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    data: *const c_void,
    len: usize,
    release: evmpm_release_fn,
    release_arg: *mut c_void,
    flags: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        let Some(after) = after_write(flags) else {
            return EVMPM_EINVAL;
        };
        if data.is_null() && len > 0 {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_complete_write",
            conn,
            |rt, h| {
                rt.host_complete_write(h, || {
                    // SAFETY: the host lends `data` (readable for `len`) until
                    // release, per this function's contract.
                    unsafe { PendingWrite::new(data.cast(), len, release, release_arg, after) }
                })
            },
        )
    })
}

/// What a complete-write's `flags` ask for once it is sent; None for an
/// unknown flag.
fn after_write(flags: u32) -> Option<AfterWrite> {
    if flags & !(EVMPM_WRITE_KEEPALIVE | EVMPM_WRITE_BUFFERED) != 0 {
        None
    } else if flags & EVMPM_WRITE_BUFFERED != 0 {
        Some(AfterWrite::RunBuffered)
    } else if flags & EVMPM_WRITE_KEEPALIVE != 0 {
        Some(AfterWrite::Park)
    } else {
        Some(AfterWrite::Close)
    }
}

/// The runtime's copy of the host's buffer array `iov[..count]`, without
/// its empty buffers; None if the array breaks the rules: `count` outside
/// 0..=`EVMPM_IOV_MAX`, a NULL array with `count` > 0, a NULL base with a
/// length, or lengths adding up past `isize::MAX` (what one send can
/// report).
///
/// # Safety
/// `iov` is NULL or readable for `count` entries.
unsafe fn copy_slices(iov: *const evmpm_iovec, count: c_int) -> Option<Box<[libc::iovec]>> {
    let count = usize::try_from(count).ok()?;
    if count > EVMPM_IOV_MAX as usize || (iov.is_null() && count > 0) {
        return None;
    }
    if count == 0 {
        return Some(Box::new([]));
    }
    // SAFETY: non-NULL and readable for `count` entries (contract).
    let entries = unsafe { std::slice::from_raw_parts(iov, count) };
    let mut total = 0usize;
    let mut slices = Vec::with_capacity(count);
    for e in entries {
        if e.base.is_null() && e.len > 0 {
            return None;
        }
        total = total
            .checked_add(e.len)
            .filter(|&t| t <= isize::MAX as usize)?;
        if e.len > 0 {
            slices.push(libc::iovec {
                iov_base: e.base.cast_mut(),
                iov_len: e.len,
            });
        }
    }
    Some(slices.into_boxed_slice())
}

/// `evmpm_complete_write` for several buffers: the rest of the response is
/// the `iovcnt` buffers `iov[0]`, `iov[1]`, ..., sent in that order as one
/// stream (gathered with `sendmsg`, without copying them), for instance a
/// response head and a body kept apart. Everything else is as for
/// `evmpm_complete_write`: the flags, the threads, the write timeout, and
/// `release(release_arg)`, called exactly once, after the last buffer was
/// sent or when the write ends otherwise.
///
/// Ownership: the array `iov` is copied: it is the caller's again when this
/// returns (it may live on the stack). The buffers it points to are
/// borrowed until `release` runs. Empty buffers are skipped (their `base`
/// may be NULL); with `iovcnt` 0 (`iov` may then be NULL) nothing is sent
/// and the connection moves on at once. On error nothing is kept and
/// `release` is not called.
///
/// Threads: the connection's handler, or any thread while the host holds the
/// connection suspended.
/// Errors: `EVMPM_EINVAL` (NULL `rt`; `iovcnt` below 0 or above
/// `EVMPM_IOV_MAX`; NULL `iov` with `iovcnt` > 0; a NULL `base` with `len` >
/// 0; lengths adding up past `SSIZE_MAX`; unknown flag), `EVMPM_ESTALE`,
/// `EVMPM_ESTATE` (not held by the host, or already
/// parked/written/closed), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_complete_writev(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    iov: *const evmpm_iovec,
    iovcnt: c_int,
    release: evmpm_release_fn,
    release_arg: *mut c_void,
    flags: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        let Some(after) = after_write(flags) else {
            return EVMPM_EINVAL;
        };
        // SAFETY: `iov` is NULL or readable for `iovcnt` entries (contract).
        let Some(slices) = (unsafe { copy_slices(iov, iovcnt) }) else {
            return EVMPM_EINVAL;
        };
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_complete_writev",
            conn,
            |rt, h| {
                rt.host_complete_write(h, || {
                    // SAFETY: the host lends each buffer (readable for its
                    // length) until release, per this function's contract.
                    unsafe { PendingWrite::gathered(slices, None, release, release_arg, after) }
                })
            },
        )
    })
}

/// Gives the runtime the rest of the response as the `head_count` buffers
/// at `head` (under `evmpm_complete_writev`'s rules; none: NULL, 0)
/// followed by `len` bytes of the file `file_fd` from byte `offset`: an
/// HTTP response head and a file body in one call. The buffers go out
/// gathered, the file with `sendfile(2)`, from the page cache without a
/// copy through user space. The file's own position is neither used nor
/// moved, so one descriptor may serve several responses at once. Flags,
/// threads and the write timeout are as for `evmpm_complete_write`.
///
/// A file that ends before `offset + len` (it was truncated, or `len` was
/// wrong) cannot complete the response: what the file has is sent, then the
/// connection is closed whatever the flags say (lingering close: the client
/// sees the response end early), and the log callback is told at
/// `EVMPM_LOG_WARNING`. A file that cannot be read closes the connection
/// at once, as a failed send does. Either way `release` runs after the
/// close callback.
///
/// Ownership: `file_fd` stays the host's: the runtime reads it until it
/// calls `release(release_arg)`, exactly once as for
/// `evmpm_complete_write`, and never closes it. Close it in `release` (or
/// later), not before. The `head` array is copied; its buffers are
/// borrowed until `release`. On error nothing is kept and `release` is not
/// called.
///
/// While it sends the file the runtime sets O_NONBLOCK on the connection's
/// descriptor (`sendfile` has no per-call flag for it) and clears it again
/// before the handler or the close callback can see it. A file not in the
/// page cache makes the sending thread, often the event thread, wait for
/// the disk: files on slow or network file systems hold up every
/// connection it serves meanwhile.
///
/// Threads: the connection's handler, or any thread while the host holds the
/// connection suspended.
/// Errors: `EVMPM_EINVAL` (NULL `rt`; `head` and `head_count` break
/// `evmpm_complete_writev`'s rules for `iov` and `iovcnt`; `file_fd` is not
/// open for reading, or not a regular file or block device; `offset + len`
/// past `INT64_MAX`; unknown flag), `EVMPM_ESTALE`, `EVMPM_ESTATE` (not held
/// by the host, or already parked/written/closed), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_complete_sendfile(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    head: *const evmpm_iovec,
    head_count: c_int,
    file_fd: c_int,
    offset: u64,
    len: u64,
    release: evmpm_release_fn,
    release_arg: *mut c_void,
    flags: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        let Some(after) = after_write(flags) else {
            return EVMPM_EINVAL;
        };
        if offset > i64::MAX as u64 || len > i64::MAX as u64 - offset {
            return EVMPM_EINVAL;
        }
        // SAFETY: `head` is NULL or readable for `head_count` entries
        // (contract).
        let Some(slices) = (unsafe { copy_slices(head, head_count) }) else {
            return EVMPM_EINVAL;
        };
        if file_fd < 0 || !crate::sys::socket::is_readable_file(file_fd) {
            return EVMPM_EINVAL;
        }
        let file = FileRange {
            fd: file_fd,
            offset,
            len,
        };
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_complete_sendfile",
            conn,
            |rt, h| {
                rt.host_complete_write(h, || {
                    // SAFETY: the host lends the head's buffers and keeps
                    // `file_fd` open until release, per this function's
                    // contract.
                    unsafe {
                        PendingWrite::gathered(slices, Some(file), release, release_arg, after)
                    }
                })
            },
        )
    })
}

/// The host keeps the connection for now: when the handler returns the
/// worker is free and the runtime does not poll the connection until
/// `evmpm_hand_back_to_worker`, `evmpm_park_keepalive`, a complete-write
/// (`evmpm_complete_write`, `evmpm_complete_writev`,
/// `evmpm_complete_sendfile`) or `evmpm_close` is called for it. No timeout
/// applies while suspended.
///
/// Threads: the connection's handler.
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTALE`, `EVMPM_ESTATE` (no
/// handler is running for it, or it already decided), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_suspend(rt: *mut evmpm_runtime, conn: evmpm_conn) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        with_conn(unsafe { runtime(rt) }, "evmpm_suspend", conn, |rt, h| {
            rt.host_suspend(h)
        })
    })
}

/// Closes the connection, off the worker: the close callback runs, then the
/// write side is shut down and the client's remaining input is drained
/// (lingering close, up to `linger_timeout_ms`; none on a listener with
/// `EVMPM_LISTEN_NO_LINGER`) before the descriptor is closed. Do not close
/// the descriptor yourself. `evmpm_close_ex` closes without lingering,
/// with a reset, or without lingering unless input is waiting (a client
/// that said its request was the last).
///
/// Threads: the connection's handler, or any thread while the host holds the
/// connection suspended (the close callback then runs on the calling
/// thread).
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTALE`, `EVMPM_ESTATE` (not
/// held by the host, or already decided), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_close(rt: *mut evmpm_runtime, conn: evmpm_conn) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        with_conn(unsafe { runtime(rt) }, "evmpm_close", conn, |rt, h| {
            rt.host_close(h, None)
        })
    })
}

/// Attaches the host's pointer to the connection. The runtime never
/// dereferences it; the close callback receives it last.
///
/// Ownership: `user` stays the host's; free it in the close callback.
/// A stale handle never reaches a later connection in the same slot.
///
/// Threads: any. Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTALE`,
/// `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_conn_set_user(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    user: *mut c_void,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_conn_set_user",
            conn,
            |rt, h| {
                let slot = rt.slot_for(h)?;
                slot.set_user_of(h, user).map_err(|_| Error::Stale)
            },
        )
    })
}

/// Reads the pointer set with `evmpm_conn_set_user` (NULL if none) into
/// `*out`.
///
/// Threads: any. Errors: `EVMPM_EINVAL` (NULL `rt` or `out`),
/// `EVMPM_ESTALE`, `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_conn_get_user(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    out: *mut *mut c_void,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_conn_get_user",
            conn,
            |rt, h| {
                let user = rt.slot_for(h)?.user_of(h).map_err(|_| Error::Stale)?;
                // SAFETY: non-NULL, writable per the contract.
                unsafe { out.write(user) };
                Ok(())
            },
        )
    })
}

/// Reads the connection's descriptor into `*out`.
///
/// Ownership: the descriptor stays the runtime's; never close it. It is the
/// connection's for as long as the host holds the connection (its handler
/// runs, or it is suspended). A thread that does not hold it may see the
/// connection close as soon as this returns, and the number reused: such a
/// thread must never read, write, shut down or close the descriptor (to
/// reach a connection it does not hold, use `evmpm_notify`).
///
/// Threads: any. Errors: `EVMPM_EINVAL` (NULL `rt` or `out`),
/// `EVMPM_ESTALE`, `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_conn_fd(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    out: *mut c_int,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        with_conn(unsafe { runtime(rt) }, "evmpm_conn_fd", conn, |rt, h| {
            let fd = rt.slot_for(h)?.fd_of(h).map_err(|_| Error::Stale)?;
            // SAFETY: non-NULL, writable per the contract.
            unsafe { out.write(fd) };
            Ok(())
        })
    })
}

/// Writes a snapshot of the runtime's counters to `*out`, as
/// `evmpm_get_stats(rt, &st, sizeof st)`: `out_size` is the size of the
/// struct your header declares. The first `out_size` bytes are written:
/// counters this library does not have (a newer header's) read 0, counters
/// your header does not have are left out.
///
/// Threads: any, at any time until `evmpm_destroy` (also after stop, and
/// from callbacks).
/// Errors: `EVMPM_EINVAL` (NULL `rt` or `out`).
#[no_mangle]
pub unsafe extern "C" fn evmpm_get_stats(
    rt: *mut evmpm_runtime,
    out: *mut evmpm_stats,
    out_size: usize,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        match unsafe { runtime(rt) } {
            Ok(rt) => {
                let snapshot = rt.stats();
                // SAFETY: the caller's struct is writable for `out_size`
                // bytes (contract).
                unsafe { crate::config::write_sized(&snapshot, out, out_size) };
                EVMPM_OK
            }
            Err(e) => e.code(),
        }
    })
}

/// A static, NUL-terminated English description of an `EVMPM_E*` code (or
/// "unknown evmpm error code"). Never NULL; never free it.
///
/// Threads: any.
#[no_mangle]
pub extern "C" fn evmpm_strerror(code: c_int) -> *const c_char {
    ffi_guard!(c"internal error in evmpm".as_ptr(), {
        error::describe(code).as_ptr().cast()
    })
}

/// The library's version as a static string, "MAJOR.MINOR.PATCH". Compare
/// with `EVMPM_VERSION_*` to check the header matches the library.
///
/// Threads: any.
#[no_mangle]
pub extern "C" fn evmpm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

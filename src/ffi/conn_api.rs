//! The exported functions for listeners and connections beyond the four at
//! the heart of the API: per-listener settings, what the accept told,
//! waking a parked connection from any thread, closing with flags, and
//! per-connection timeouts. Same conventions as `api.rs`.

#![allow(clippy::missing_safety_doc)]

use super::api::{host_call, runtime, with_conn};
use super::ffi_guard;
use super::types::evmpm_error::{self, *};
use super::types::*;
use crate::message::CloseHow;
use libc::c_int;

/// Fills `*lc` with the defaults (see `evmpm_listener_config`) and sets
/// `lc->size`, as `evmpm_listener_config_init(&lc, sizeof lc)`.
///
/// Threads: any. Ownership: `lc` is the caller's; `lc_size` bytes at it are
/// written.
/// Errors: `EVMPM_EINVAL` (NULL `lc`), `EVMPM_EVERSION` (`lc_size` smaller
/// than any layout this library knows, or above `UINT32_MAX`). On error
/// nothing is written.
#[no_mangle]
pub unsafe extern "C" fn evmpm_listener_config_init(
    lc: *mut evmpm_listener_config,
    lc_size: usize,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if lc.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: non-NULL, and the caller provides `lc_size` writable bytes.
        super::api::result_code(unsafe { crate::listener::init(lc, lc_size) })
    })
}

/// `evmpm_register_listener` with per-listener settings: the host's pointer
/// for the listener, an accept hook, a handshake step (TLS) that holds no
/// worker, its own readiness check (or none), non-blocking accepted
/// descriptors, a server that speaks first, no lingering close, and its
/// own timeouts (see `evmpm_listener_config`).
/// Two listeners of one runtime may differ in all of them (an HTTPS port
/// beside a plain one). Everything `evmpm_register_listener` says holds
/// here too.
///
/// Threads: any, before or after `evmpm_start`, a handler included.
/// Ownership: `fd` stays the host's, as for `evmpm_register_listener`;
/// `lc` is copied (`lc->size` read first, then that many bytes);
/// `lc->user_data` stays the host's and must stay valid until
/// `evmpm_destroy` returns.
/// Errors: `EVMPM_EINVAL` (NULL `rt` or `lc`, an unknown flag),
/// `EVMPM_EVERSION` (`lc->size` unknown: not filled by
/// `evmpm_listener_config_init`, or sets fields this older library lacks),
/// `EVMPM_ENOTSOCK`, `EVMPM_ENOTLISTENER`, `EVMPM_EEXIST`, `EVMPM_ELIMIT`
/// (`EVMPM_MAX_LISTENERS` registered already), `EVMPM_ESTOPPED`,
/// `EVMPM_EOS`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_register_listener_ex(
    rt: *mut evmpm_runtime,
    fd: c_int,
    lc: *const evmpm_listener_config,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if lc.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: a readable struct of `lc->size` bytes (contract).
        let lc = match unsafe { crate::listener::read(lc) } {
            Ok(lc) => lc,
            Err(e) => return e.code(),
        };
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_register_listener_ex", |rt| {
            rt.register_listener(fd, &lc)
        })
    })
}

/// Writes what the runtime learned when it accepted `conn` into `*out`:
/// its listener (descriptor and `user_data`), the client's address and the
/// local address (see `evmpm_conn_info`). No system call, except the local
/// address on a wildcard listener. As `evmpm_conn_get_info(rt, c, &info,
/// sizeof info)`: the first `out_size` bytes are written, fields a newer
/// header has and this library lacks read 0.
///
/// Threads: any, from the accept hook on, until the connection's close
/// begins.
/// Errors: `EVMPM_EINVAL` (NULL `rt` or `out`), `EVMPM_ESTALE`,
/// `EVMPM_ESTOPPED`. On error nothing is written.
#[no_mangle]
pub unsafe extern "C" fn evmpm_conn_get_info(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    out: *mut evmpm_conn_info,
    out_size: usize,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_conn_get_info",
            conn,
            |rt, h| {
                let info = rt.conn_info(h)?;
                // SAFETY: the caller's struct is writable for `out_size` bytes.
                unsafe { crate::config::write_sized(&info, out, out_size) };
                Ok(())
            },
        )
    })
}

/// Runs the connection's handler on a worker with `EVMPM_WAKE_NOTIFIED`,
/// from any thread: the way to reach a connection the calling thread does
/// not hold (a broadcast, a pub/sub or server-sent-events message, "kick
/// this user"). The host keeps what it wants sent in its own per-connection
/// state (`evmpm_conn_set_user`), calls this, and the handler, run by the
/// runtime, writes it, parks the connection again, or closes it.
///
/// - Waiting (for a first request or parked in keep-alive): the handler
///   runs now, as if a request had come. Its socket may hold no input:
///   read only what the wake reason says is there.
/// - Held elsewhere now (a handler runs for it, its write is being sent,
///   the host holds it suspended, a request check runs): the run happens
///   when the connection next waits, right after it is parked (after the
///   pending write, for a complete-write that parks).
///
/// The handler runs at least once after this call, starting after it, so
/// it sees everything the calling thread wrote before calling; several
/// notifies before that run may be served by one run. Never twice at once,
/// as for every handler run.
///
/// A notified run carries one reason: input that arrived meanwhile is
/// not announced by it, but stays readable, so once the handler parks the
/// connection it runs again with `EVMPM_WAKE_READABLE`.
///
/// This call never runs a callback on the calling thread (it queues the
/// run), so it may be made while holding a lock the close callback takes.
///
/// Another thread must never read, write, shut down or close the
/// descriptor of a connection it does not hold: notify it and act in its
/// handler.
///
/// Threads: any (handlers and callbacks included).
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTALE` (its close has begun
/// or it is closed: nothing will run), `EVMPM_ESTOPPED`. A connection whose
/// close was asked for but has not begun (its handler called `evmpm_close`
/// and has not returned yet, or a close waits for a worker under
/// `close_on_worker`) answers `EVMPM_OK` and runs nothing: it is closing.
#[no_mangle]
pub unsafe extern "C" fn evmpm_notify(rt: *mut evmpm_runtime, conn: evmpm_conn) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        with_conn(unsafe { runtime(rt) }, "evmpm_notify", conn, |rt, h| {
            rt.host_notify(h)
        })
    })
}

/// `evmpm_close` with `flags`: 0 is `evmpm_close`; `EVMPM_CLOSE_NO_LINGER`
/// closes the descriptor right after the close callback, without the
/// lingering close; `EVMPM_CLOSE_RESET` closes with a reset (the client
/// sees ECONNRESET; unsent output is dropped), as a host that set
/// `SO_LINGER` to 0 expects; `EVMPM_CLOSE_CLIENT_DONE` says the client
/// sent its last request (HTTP's `Connection: close` without a body): the
/// descriptor is closed right after the close callback unless input is
/// already waiting, and lingers only then.
///
/// Threads and state: as `evmpm_close`.
/// Errors: `EVMPM_EINVAL` (NULL `rt`, an unknown flag, more than one flag),
/// `EVMPM_ESTALE`, `EVMPM_ESTATE`, `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_close_ex(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    flags: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        let how = match flags {
            0 => None,
            EVMPM_CLOSE_NO_LINGER => Some(CloseHow::Abort),
            EVMPM_CLOSE_RESET => Some(CloseHow::Reset),
            EVMPM_CLOSE_CLIENT_DONE => Some(CloseHow::Quick),
            _ => return EVMPM_EINVAL,
        };
        // SAFETY: `rt` per this function's contract.
        with_conn(unsafe { runtime(rt) }, "evmpm_close_ex", conn, |rt, h| {
            rt.host_close(h, how)
        })
    })
}

/// Sets the connection's own keep-alive and write-completion timeouts, in
/// milliseconds: 0 puts back its listener's value, `EVMPM_TIMEOUT_NONE`
/// means never. They apply from the connection's next wait: the next park
/// in keep-alive, the next write completion (a wait under way keeps the
/// timeout it began with). Per-domain keep-alive timeouts, a long-lived
/// client kept for good, a slow download given longer.
///
/// Cost: each distinct value is one more timeout list on the event thread;
/// past 16 distinct values per kind, new values are rounded up to 6
/// significant bits (at most 1/32 later than asked, never earlier).
///
/// Threads: any, from the accept hook on.
/// Errors: `EVMPM_EINVAL` (NULL `rt`), `EVMPM_ESTALE`, `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_conn_set_timeouts(
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    keepalive_timeout_ms: u32,
    write_timeout_ms: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        with_conn(
            unsafe { runtime(rt) },
            "evmpm_conn_set_timeouts",
            conn,
            |rt, h| rt.host_set_timeouts(h, keepalive_timeout_ms, write_timeout_ms),
        )
    })
}

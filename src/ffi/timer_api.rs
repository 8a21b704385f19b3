//! Timers and watched host descriptors: their types, constants and
//! exported functions. Same conventions as `api.rs`.

#![allow(clippy::missing_safety_doc)]
#![allow(non_camel_case_types)]

use super::api::{host_call, runtime};
use super::ffi_guard;
use super::types::evmpm_error::{self, *};
use super::types::*;
use libc::{c_int, c_void};

/// A timer's id (`evmpm_timer_add`): the timer's entry in its runtime's
/// table, the runtime's tag and the entry's generation. 0 is never a valid
/// id. An id stays safe to use after its timer ran or was cancelled: calls
/// with it return `EVMPM_ESTALE` (until its entry has been reused about a
/// million times, far more than any host keeps an old id for).
pub type evmpm_timer = u64;

/// A watch's id (`evmpm_watch_add`), of the same form as `evmpm_timer`.
/// It names the watch from its add to its cancel, across re-arms.
pub type evmpm_watch = u64;

/// A timer's callback. Runs once on a worker thread when the delay has
/// passed, unless the timer was cancelled first. It may block, as a handler
/// may (a blocked callback is replaced by another thread, as a blocked
/// handler is), and call any evmpm function but `evmpm_stop` and
/// `evmpm_destroy` (they return `EVMPM_ETHREAD`): `evmpm_notify` to wake a
/// connection, `evmpm_timer_add` for the next round of a periodic timer.
/// `arg` is the pointer given to `evmpm_timer_add`; `timer` its id, stale
/// from the moment this callback returns.
pub type evmpm_timer_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, rt: *mut evmpm_runtime, timer: evmpm_timer)>;

/// A watch's callback. Runs once per arming on a worker thread: when `fd`
/// is ready for what the watch asked, or when its timeout passed. `revents`
/// says which: `EVMPM_WATCH_*` bits (`EVMPM_WATCH_TIMEOUT` alone for a
/// timeout; `EVMPM_WATCH_HANGUP` and `EVMPM_WATCH_ERROR` may come without
/// being asked for). Readiness may be spurious (another thread read the
/// data first, or an old event of the descriptor): use non-blocking reads
/// and writes (`MSG_DONTWAIT`) on a watched descriptor.
///
/// The watch is not armed while this runs (never two runs at once): call
/// `evmpm_watch_rearm` (here or later, from any thread) for the next
/// event, `evmpm_watch_cancel` to end it. It may block and call evmpm
/// functions as an `evmpm_timer_fn` may. `arg` is the pointer given to
/// `evmpm_watch_add`.
pub type evmpm_watch_fn = Option<
    unsafe extern "C" fn(
        arg: *mut c_void,
        rt: *mut evmpm_runtime,
        watch: evmpm_watch,
        fd: c_int,
        revents: u32,
    ),
>;

/// Watch event: readable (input, or the peer closed its side).
pub const EVMPM_WATCH_READABLE: u32 = 1;
/// Watch event: writable.
pub const EVMPM_WATCH_WRITABLE: u32 = 2;
/// Watch event (reported, never asked for): the peer hung up or closed its
/// side (`EPOLLHUP`, `EPOLLRDHUP`); a read returns what is left, then 0.
pub const EVMPM_WATCH_HANGUP: u32 = 4;
/// Watch event (reported, never asked for): an error is pending on the
/// descriptor (`EPOLLERR`); a read or write returns it.
pub const EVMPM_WATCH_ERROR: u32 = 8;
/// Watch event (reported alone, never asked for): the watch's timeout
/// passed before the descriptor was ready.
pub const EVMPM_WATCH_TIMEOUT: u32 = 16;

/// Adds a timer: `cb(arg, rt, id)` runs once on a worker thread, `delay_ms`
/// milliseconds from now (0: as soon as the event thread turns), unless
/// cancelled first. Its id is written to `*out`.
///
/// Resolution and order: deadlines are kept in 1 ms ticks, rounded up; a
/// timer never runs before its deadline, and is queued for a worker within
/// about a millisecond after it unless the event thread is busy (figures in
/// the README). A timer whose deadline tick is earlier than another's is
/// queued first; the run queue is FIFO, so with one free worker they run in
/// deadline order; with several they start in that order and overlap.
/// Timers of the same tick are queued in no set order. Cost: O(1) per add,
/// cancel and expiry, any number of timers (a hierarchical timer wheel on
/// the event thread; the entries grow in segments, never moved).
///
/// `conn`, if not 0, binds the timer to that connection (at most one bound
/// timer per connection at a time): when the connection's close begins,
/// before its close callback, the timer is cancelled as by
/// `evmpm_timer_cancel`. A run a worker had already taken still happens,
/// and may find the connection gone (its calls return `EVMPM_ESTALE`). The
/// binding ends when the timer runs (so its callback may bind the next) or
/// is cancelled. Long-poll deadlines are bound timers.
///
/// Threads: any (handlers and callbacks included).
/// Ownership: `arg` stays the host's; it must stay valid until the
/// callback ran or a cancel answered `EVMPM_OK`.
/// Errors: `EVMPM_EINVAL` (NULL `rt`, `cb` or `out`; `delay_ms` is
/// `EVMPM_TIMEOUT_NONE`), `EVMPM_ESTALE` (`conn` is closing or closed),
/// `EVMPM_EEXIST` (`conn` has a bound timer already), `EVMPM_ESTOPPED`
/// (stopping or stopped: timers not run by then never run),
/// `EVMPM_ELIMIT` (2^32 timers and watches at once). On error nothing was
/// added and `*out` is 0.
#[no_mangle]
pub unsafe extern "C" fn evmpm_timer_add(
    rt: *mut evmpm_runtime,
    delay_ms: u32,
    cb: evmpm_timer_fn,
    arg: *mut c_void,
    conn: evmpm_conn,
    out: *mut evmpm_timer,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: non-NULL, the caller's writable id.
        unsafe { out.write(0) };
        if cb.is_none() || delay_ms == EVMPM_TIMEOUT_NONE {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_timer_add", |rt| {
            let id = rt.timer_add(delay_ms, cb, arg, conn)?;
            // SAFETY: checked non-NULL above.
            unsafe { out.write(id) };
            Ok(())
        })
    })
}

/// Cancels a timer. The answer says what happens to its callback:
/// - `EVMPM_OK`: it will never run (it was waiting for its deadline, or
///   queued for a worker and not started);
/// - `EVMPM_EBUSY`: it is running now (on a worker, or this is the
///   callback itself); that run completes;
/// - `EVMPM_ESTALE`: it has already run, or was cancelled already (or the
///   id is 0, or another runtime's).
///
/// Of several cancels racing each other and the deadline, at most one
/// answers `EVMPM_OK`, and then the callback never runs; the callback runs
/// at most once in all. The timer's memory is freed at cancel (on the event
/// thread's next turn), not at its deadline.
///
/// Threads: any (callbacks included).
/// Errors: `EVMPM_EINVAL` (NULL `rt`, or `id` is a watch's),
/// `EVMPM_EBUSY`, `EVMPM_ESTALE`, `EVMPM_ESTOPPED` (stopped: no timer runs
/// any more).
#[no_mangle]
pub unsafe extern "C" fn evmpm_timer_cancel(
    rt: *mut evmpm_runtime,
    id: evmpm_timer,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_timer_cancel", |rt| {
            rt.timer_cancel(id, false)
        })
    })
}

/// Watches a descriptor the host owns (a backend socket, a pipe, an
/// eventfd, a timerfd): `cb(arg, rt, id, fd, revents)` runs once on a
/// worker when `fd` is ready for `events` (`EVMPM_WATCH_READABLE`,
/// `EVMPM_WATCH_WRITABLE`, or both), or when `timeout_ms` passed first
/// (`EVMPM_WATCH_TIMEOUT`; `EVMPM_TIMEOUT_NONE`: no timeout). No thread
/// waits meanwhile. The id is written to `*out`.
///
/// One-shot: after the callback the watch is idle, neither armed nor
/// freed, until `evmpm_watch_rearm` arms it again or `evmpm_watch_cancel`
/// ends it. Every watch must be cancelled in the end (its memory is kept
/// until then).
///
/// The descriptor: the worker that sees it ready runs the callback itself
/// (no queue hop). evmpm never reads, writes or closes it. Closing it
/// while the watch is armed: the kernel forgets it (epoll drops a
/// descriptor at its last close), so only the timeout (or a cancel) ends
/// the watch; the number may then be reused and watched anew. A descriptor
/// stays known to evmpm's watch set, disabled, after its watch ended,
/// until the host closes it: watching the same descriptor again is fine,
/// and so is using it in the host's own epoll set. At most one watch per
/// open descriptor at a time (a second add replaces the first one's
/// arming: the first then ends only by its timeout or a cancel). Not a
/// connection's descriptor: to wait for a connection's input, park it
/// (`evmpm_park_keepalive`).
///
/// Threads: any (handlers and callbacks included).
/// Ownership: `fd` and `arg` stay the host's; `arg` must stay valid until
/// the watch is cancelled and its callback is not running.
/// Errors: `EVMPM_EINVAL` (NULL `rt`, `cb` or `out`; `fd` < 0; `events`
/// 0 or with other bits), `EVMPM_EOS` (epoll refused `fd`: not open, or a
/// regular file; see errno), `EVMPM_ESTOPPED`, `EVMPM_ELIMIT`. On error
/// nothing was added and `*out` is 0.
#[no_mangle]
pub unsafe extern "C" fn evmpm_watch_add(
    rt: *mut evmpm_runtime,
    fd: c_int,
    events: u32,
    timeout_ms: u32,
    cb: evmpm_watch_fn,
    arg: *mut c_void,
    out: *mut evmpm_watch,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if out.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: non-NULL, the caller's writable id.
        unsafe { out.write(0) };
        if !valid_events(events) {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_watch_add", |rt| {
            let id = rt.watch_add(fd, events, timeout_ms, cb, arg)?;
            // SAFETY: checked non-NULL above.
            unsafe { out.write(id) };
            Ok(())
        })
    })
}

fn valid_events(events: u32) -> bool {
    events != 0 && events & !(EVMPM_WATCH_READABLE | EVMPM_WATCH_WRITABLE) == 0
}

/// Arms an idle watch again, for `events` and a timeout of `timeout_ms`
/// from now (`EVMPM_TIMEOUT_NONE`: none). From the watch's callback (or
/// from any thread while the callback runs), the arming takes effect when
/// the callback returns; otherwise at once.
///
/// Threads: any.
/// Errors: `EVMPM_EINVAL` (NULL `rt`; bad `events`; `id` is a timer's),
/// `EVMPM_ESTATE` (armed already, or its timeout's run is queued),
/// `EVMPM_ESTALE` (cancelled, or not a watch of this runtime), `EVMPM_EOS`
/// (epoll refused the descriptor: the host closed it; the watch stays
/// idle), `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_watch_rearm(
    rt: *mut evmpm_runtime,
    id: evmpm_watch,
    events: u32,
    timeout_ms: u32,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if !valid_events(events) {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_watch_rearm", |rt| {
            if rt.is_stopping() {
                return Err(crate::error::Error::Stopped);
            }
            rt.watch_rearm(id, events, timeout_ms)
        })
    })
}

/// Ends a watch. The answer says what happens to its callback, as for
/// `evmpm_timer_cancel`:
/// - `EVMPM_OK`: it will never run again (it was armed, its timeout's run
///   was queued and not started, or it was idle); the id is stale from now;
/// - `EVMPM_EBUSY`: it is running now; that run completes, and the watch
///   ends after it (a re-arm from it, before or after, does nothing);
/// - `EVMPM_ESTALE`: ended already.
///
/// The descriptor is the host's to close once this returned `EVMPM_OK`,
/// or, after `EVMPM_EBUSY`, once the running callback has returned (the
/// host's own signal from it; closing earlier is safe for evmpm, but the
/// callback may be using it).
///
/// Threads: any (callbacks included).
/// Errors: `EVMPM_EINVAL` (NULL `rt`, or `id` is a timer's), `EVMPM_EBUSY`,
/// `EVMPM_ESTALE`, `EVMPM_ESTOPPED`.
#[no_mangle]
pub unsafe extern "C" fn evmpm_watch_cancel(
    rt: *mut evmpm_runtime,
    id: evmpm_watch,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        // SAFETY: `rt` per this function's contract.
        host_call(unsafe { runtime(rt) }, "evmpm_watch_cancel", |rt| {
            rt.timer_cancel(id, true)
        })
    })
}

//! The handshake step (`evmpm_listener_config.handshake`): a TLS handshake,
//! or any preamble, driven without blocking before a connection's first
//! request, so a client slow to handshake holds no worker.
//!
//! A listener with a step accepts its connections non-blocking, under the
//! header timeout from the accept (see `EventLoop::admit`). Whenever such a
//! connection is ready for what the step last asked for, the worker that
//! takes it (state ReadingCheck, as for the readiness check) calls the step
//! once: it asks to wait for readable or writable (the poller re-arms the
//! one-shot interest and gives the connection back to the event thread's
//! header timeout), or says done (the descriptor goes back to blocking mode
//! and the connection goes on as a new one), or says it failed (closed).
//! The slot records that the handshake is done, so the step never runs
//! again for the connection.

use crate::conn::{Handle, Slot};
use crate::ffi::types::{
    EVMPM_HANDSHAKE_DONE, EVMPM_HANDSHAKE_WANT_READ, EVMPM_HANDSHAKE_WANT_WRITE, EVMPM_LOG_ERROR,
};
use crate::listener::Listener;
use crate::runtime::Runtime;
use crate::stats::Counters;
use crate::sync::atomic::Ordering;
use crate::sys::socket;

/// What is noted before a step runs, to tell afterwards whether bytes came
/// while it ran: the kernel's count of bytes received where it keeps one
/// (TCP), else the receive queue's length. One system call per step.
#[derive(Clone, Copy)]
enum Before {
    Received(u64),
    Queued(usize),
}

fn note_before(fd: i32) -> Before {
    match socket::bytes_received(fd) {
        Some(n) => Before::Received(n),
        None => Before::Queued(socket::queued_input(fd)),
    }
}

/// The step wants to read more. A step that looked at the waiting bytes
/// without taking them (a peek, as a PROXY-protocol reader may do) leaves
/// them queued, and the one-shot interest would report them again at once:
/// raise the receive low-water mark past them, as the readiness check does,
/// so the connection stays quiet until more come. A TLS library takes what
/// it reads: nothing stays queued, the mark stays at 1, and this costs one
/// `FIONREAD`.
///
/// Only when no byte came while the step ran: bytes that arrived meanwhile
/// (after a TLS library read what it could) are new to it, and a mark
/// raised past them would keep the connection quiet while the client waits
/// for an answer; the interest, re-armed, reports them and the step runs
/// again.
fn quiet_until_more(slot: &Slot, fd: i32, before: Before) {
    let queued = socket::queued_input(fd);
    let nothing_new = queued != 0
        && match before {
            Before::Received(n) => socket::bytes_received(fd) == Some(n),
            Before::Queued(q) => queued == q,
        };
    if !nothing_new || queued >= i32::MAX as usize {
        crate::readiness::lower_mark(slot, fd);
        return;
    }
    crate::readiness::raise_mark(slot, fd, queued);
}

/// What the step said.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Step {
    /// Done: the connection is blocking again (unless its listener says
    /// otherwise), no longer under the header timeout, its wait for a
    /// first request counted from now.
    Done,
    /// Call again once the descriptor is readable.
    WantRead,
    /// Call again once the descriptor is writable.
    WantWrite,
    /// Close it (counted).
    Fail,
}

/// Runs `listener`'s step for `h`, owned by the caller (in ReadingCheck),
/// on descriptor `fd`, and records what it said.
pub(crate) fn step(rt: &Runtime, listener: &Listener, slot: &Slot, h: Handle, fd: i32) -> Step {
    let Some(step) = listener.handshake else {
        slot.handshake_done();
        return Step::Done;
    };
    let before = note_before(fd);
    // SAFETY: the host's callback with the documented arguments; `rt`
    // outlives the call (the caller holds it); this thread owns the
    // connection, so its user pointer is the one last set (published by
    // the state CAS that gave it to this thread).
    let said = unsafe { step(listener.user.0, rt.as_c_ptr(), h.0, fd, slot.user()) };
    match said {
        EVMPM_HANDSHAKE_WANT_READ => {
            quiet_until_more(slot, fd, before);
            Step::WantRead
        }
        EVMPM_HANDSHAKE_WANT_WRITE => Step::WantWrite,
        EVMPM_HANDSHAKE_DONE => {
            crate::readiness::lower_mark(slot, fd);
            if !listener.nonblocking() && socket::set_blocking(fd).is_err() {
                // The handler would see a non-blocking descriptor it does
                // not expect.
                Counters::bump(&rt.counters.handshakes_failed);
                return Step::Fail;
            }
            Counters::bump(&rt.counters.handshakes);
            slot.set_header_since(0);
            slot.note_watch_since(rt.now_ns());
            slot.handshake_done();
            Step::Done
        }
        other => {
            Counters::bump(&rt.counters.handshakes_failed);
            if other != crate::ffi::types::EVMPM_HANDSHAKE_FAIL
                && !rt.logged_bad_handshake.swap(true, Ordering::Relaxed)
            {
                rt.log(
                    EVMPM_LOG_ERROR,
                    &format!(
                        "evmpm: a handshake step returned {other}, none of \
                         EVMPM_HANDSHAKE_DONE/WANT_READ/WANT_WRITE/FAIL; its connection \
                         was closed as failed (logged once)"
                    ),
                );
            }
            Step::Fail
        }
    }
}

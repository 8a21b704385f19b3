//! The request-readiness check (`evmpm_config.request_ready`): keeps
//! clients that send a request slowly off the workers.
//!
//! When a waiting connection polls readable, the worker that takes it peeks
//! at the pending bytes (nothing is consumed) and asks the host's callback
//! (its listener's) whether a whole request is there. While it is not, the
//! connection goes back to waiting, under the header timeout, and the socket's receive
//! low-water mark (SO_RCVLOWAT) is raised past what is queued, so epoll
//! stays quiet until more bytes come: a client dribbling one byte a second
//! costs one wake-up per byte, never a spin, never a worker.
//!
//! The low-water mark is put back to 1 before the connection goes to a
//! worker, so the host's blocking read behaves exactly as without evmpm.

use crate::config::{Config, HostPtr};
use crate::conn::{Handle, Slot};
use crate::ffi::types::{evmpm_request_ready_fn, EVMPM_REQUEST_COMPLETE, EVMPM_REQUEST_INCOMPLETE};
use crate::message::CloseHow;
use crate::sys::{self, socket};
use libc::c_int;

/// What to do with a connection that polled readable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// Give it to a worker.
    Run,
    /// A request has started but is incomplete: wait under the header
    /// timeout (started now if not running already), re-armed.
    Wait,
    /// Nothing changed (a spurious wake-up): re-arm, keep the timeout.
    Rearm,
    /// Close it without running the handler.
    Close(CloseHow),
    /// The host's check refused the request, with this value (which is
    /// `EVMPM_REQUEST_REJECT` unless the host broke the contract): count it
    /// as rejected and close quickly, without running the handler.
    Reject(c_int),
}

/// One polling thread's readiness check: a peek window of its own. The
/// check itself is the connection's listener's; what it knows of each
/// connection is in the slot (`Slot::peeked`), so any thread may check any
/// connection it owns.
pub(crate) struct Readiness {
    /// The peek window, `request_peek_bytes` long once a check has run.
    window: Vec<u8>,
    peek_bytes: usize,
}

impl Readiness {
    pub(crate) fn new(config: &Config) -> Readiness {
        Readiness {
            window: Vec::new(),
            peek_bytes: config.peek_bytes,
        }
    }

    /// Decides for `h`, owned by the caller, whose descriptor `fd` polled
    /// readable; `peer_closed` when the client has shut down its side.
    /// `ready` is the check of the connection's listener (None: off), with
    /// the pointer it takes.
    pub(crate) fn check(
        &mut self,
        ready: evmpm_request_ready_fn,
        user_data: HostPtr,
        slot: &Slot,
        h: Handle,
        fd: i32,
        peer_closed: bool,
    ) -> Verdict {
        let Some(ready) = ready else {
            return Verdict::Run;
        };
        if self.window.is_empty() {
            self.window = vec![0; self.peek_bytes];
        }
        let queued = match socket::peek(fd, &mut self.window) {
            Ok(0) => return Verdict::Close(CloseHow::Abort),
            Ok(n) => n,
            Err(e) if sys::would_block(&e) => return Verdict::Rearm,
            Err(_) => return Verdict::Close(CloseHow::Abort),
        };
        // A full window goes to the handler, which can answer "too large".
        let verdict = if queued == self.window.len() {
            EVMPM_REQUEST_COMPLETE
        } else {
            // SAFETY: the host's callback with the documented arguments; the
            // window is initialised for `queued` bytes and outlives the call;
            // this thread owns the connection, so its user pointer is
            // the one its handler last set (published by the state CAS).
            unsafe { ready(user_data.0, h.0, slot.user(), self.window.as_ptr(), queued) }
        };
        match verdict {
            EVMPM_REQUEST_COMPLETE => {
                lower_mark(slot, fd);
                return Verdict::Run;
            }
            EVMPM_REQUEST_INCOMPLETE => {}
            // REJECT, or a value the header does not allow: a host bug,
            // which the caller reports.
            other => return Verdict::Reject(other),
        }
        if peer_closed {
            // The rest can never arrive.
            return Verdict::Close(CloseHow::Quick);
        }
        let before = slot.peeked();
        if before != 0 && queued as u32 <= before {
            // Readable without new bytes: this kernel does not honour the
            // low-water mark. Hand over rather than spin.
            lower_mark(slot, fd);
            return Verdict::Run;
        }
        if !raise_mark(slot, fd, queued) {
            lower_mark(slot, fd);
            return Verdict::Run;
        }
        Verdict::Wait
    }
}

/// Raises the socket's receive low-water mark past the `queued` bytes
/// already seen, so it polls readable only once more come, and records
/// them in the slot; false (nothing changed) if the kernel refused.
pub(crate) fn raise_mark(slot: &Slot, fd: i32, queued: usize) -> bool {
    let Ok(mark) = i32::try_from(queued + 1) else {
        return false;
    };
    if socket::set_rcvlowat(fd, mark).is_err() {
        return false;
    }
    slot.set_peeked(queued as u32);
    true
}

/// Restores the default low-water mark if it was raised, so the host's
/// blocking read behaves exactly as without evmpm.
pub(crate) fn lower_mark(slot: &Slot, fd: i32) {
    if slot.peeked() != 0 {
        let _ = socket::set_rcvlowat(fd, 1);
        slot.set_peeked(0);
    }
}

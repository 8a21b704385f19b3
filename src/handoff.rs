//! Passing a connection between the host, the workers and the event thread.
//!
//! Host calls (`evmpm_park_keepalive`, `evmpm_complete_write`, `evmpm_close`,
//! `evmpm_suspend`, `evmpm_hand_back_to_worker`) only record what the host
//! wants while its handler runs; the worker carries it out when the handler
//! returns, so the connection is never acted on while host code still runs
//! for it. For a suspended connection the calling thread carries it out.
//!
//! Carrying out a park or a write does as much as possible on the calling
//! thread (send what the socket takes, re-arm the one-shot epoll interest)
//! and hands the event thread only what must wait, with a `Watch` message
//! that links the connection into a timeout queue.

use crate::conn::table::Refused;
use crate::conn::{AfterWrite, Handle, PendingWrite, Slot, State};
use crate::error::Error;
use crate::event_loop::Msg;
use crate::ffi::types::{EVMPM_WAKE_BUFFERED, EVMPM_WAKE_RESUMED};
use crate::runtime::{Phase, Runtime};
use crate::stats::Counters;
use crate::sys::{self, epoll, socket};
use crate::timeouts::Kind;
use crate::workers::Job;
use libc::c_int;
use std::sync::atomic::Ordering;

/// How to close a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseHow {
    /// Shut down the write side, then drain the client's input until it
    /// closes or the linger timeout passes (Apache's lingering close), so
    /// late client bytes cannot turn into a reset that destroys the response.
    Linger,
    /// Shut down the write side and drain what is there; linger only if the
    /// client had sent something. For idle connections (timeouts, shedding,
    /// stop).
    Quick,
    /// Close at once: the connection is already broken.
    Abort,
}

/// What the event thread must take over after an owner acted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Handoff {
    /// Nothing: the connection is closed, queued, or held elsewhere.
    None,
    /// The connection waits on the event thread: link it into this timeout
    /// queue. Its epoll interest is already armed.
    Watch(Kind),
}

/// Bytes read and thrown away per readiness event during lingering close.
const LINGER_DRAIN_LIMIT: usize = 64 * 1024;

impl Runtime {
    pub(crate) fn slot_for(&self, h: Handle) -> Result<&Slot, Error> {
        if self.phase() == Phase::Stopped {
            return Err(Error::Stopped);
        }
        self.table.slot(h).ok_or(Error::Stale)
    }

    /// Moves a connection the host may dispose of to `to`; returns the state
    /// it came from.
    fn claim(&self, h: Handle, allowed: &[State], to: State) -> Result<(&Slot, State), Error> {
        let slot = self.slot_for(h)?;
        loop {
            let from = slot.state_of(h).map_err(|_| Error::Stale)?;
            if !allowed.contains(&from) {
                return Err(Error::State);
            }
            match slot.transition(h, from, to) {
                Ok(()) => return Ok((slot, from)),
                Err(Refused::Stale) => return Err(Error::Stale),
                Err(Refused::State(_)) => continue, // raced with the worker
            }
        }
    }

    const HELD: [State; 3] = [State::Handler, State::SuspendReq, State::Suspended];

    pub fn host_park(&self, h: Handle, buffered: bool) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &Self::HELD, State::Claimed)?;
        if from != State::Suspended {
            let req = if buffered {
                State::ParkBufferedReq
            } else {
                State::ParkReq
            };
            self.settle(h, slot, req);
            return Ok(());
        }
        if buffered {
            self.settle(h, slot, State::Queued);
            self.workers.push(Job {
                conn: h,
                reason: EVMPM_WAKE_BUFFERED,
            });
        } else {
            let next = self.park_or_close(h, slot, State::Claimed);
            self.hand_over(h, next);
        }
        Ok(())
    }

    /// # Safety of the buffer
    /// `make` builds the PendingWrite only once the connection is claimed,
    /// so on error the host keeps its buffer and release never runs.
    pub fn host_complete_write(
        &self,
        h: Handle,
        make: impl FnOnce() -> PendingWrite,
    ) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &Self::HELD, State::Claimed)?;
        // SAFETY: Claimed makes this thread the connection's owner.
        unsafe { slot.put_write(make()) };
        if from == State::Suspended {
            let next = self.write_owned(h, slot, State::Claimed);
            self.hand_over(h, next);
        } else {
            self.settle(h, slot, State::WriteReq);
        }
        Ok(())
    }

    pub fn host_close(&self, h: Handle) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &Self::HELD, State::Claimed)?;
        if from == State::Suspended {
            self.settle(h, slot, State::Closing);
            let next = self.close_owned(h, slot, CloseHow::Linger);
            self.hand_over(h, next);
        } else {
            self.settle(h, slot, State::CloseReq);
        }
        Ok(())
    }

    pub fn host_suspend(&self, h: Handle) -> Result<(), Error> {
        self.claim(h, &[State::Handler], State::SuspendReq)
            .map(|_| ())
    }

    pub fn host_hand_back(&self, h: Handle) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &[State::SuspendReq, State::Suspended], State::Claimed)?;
        if from == State::SuspendReq {
            // The handler has not returned yet; its worker runs it again.
            self.settle(h, slot, State::ResumeReq);
        } else {
            self.settle(h, slot, State::Queued);
            self.workers.push(Job {
                conn: h,
                reason: EVMPM_WAKE_RESUMED,
            });
        }
        Ok(())
    }

    /// Ends a Claimed (or other owned) state: a CAS, so it waits out a stop
    /// that is shutting the socket down at this instant.
    fn settle(&self, h: Handle, slot: &Slot, to: State) {
        let from = slot.state_of(h).unwrap_or(State::Claimed);
        let _ = slot.transition(h, from, to);
    }

    /// The worker's step after the handler returned: carries out what the
    /// host asked for. Returns the wake reason when the handler must run
    /// again on this worker.
    pub fn finish_handler(&self, h: Handle, slot: &Slot) -> Option<c_int> {
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            let state = slot.state_of(h).ok()?;
            let next = match state {
                // Returning without a decision closes the connection.
                State::Handler | State::CloseReq => State::Closing,
                State::ParkReq | State::WriteReq => State::Claimed,
                State::ParkBufferedReq | State::ResumeReq => State::Handler,
                State::SuspendReq => State::Suspended,
                State::Claimed => {
                    // Another thread is inside evmpm_complete_write for this
                    // suspended connection; it finishes in a moment.
                    backoff.snooze();
                    continue;
                }
                _ => return None,
            };
            if slot.transition(h, state, next).is_err() {
                continue;
            }
            let handoff = match state {
                State::Handler | State::CloseReq => self.close_owned(h, slot, CloseHow::Linger),
                State::ParkReq => self.park_or_close(h, slot, State::Claimed),
                State::WriteReq => self.write_owned(h, slot, State::Claimed),
                State::ParkBufferedReq => return Some(EVMPM_WAKE_BUFFERED),
                State::ResumeReq => return Some(EVMPM_WAKE_RESUMED),
                _ => Handoff::None,
            };
            self.hand_over(h, handoff);
            return None;
        }
    }

    /// Gives the event thread what it must take over (from any thread but
    /// the event thread, which links directly).
    pub fn hand_over(&self, h: Handle, handoff: Handoff) {
        if let Handoff::Watch(kind) = handoff {
            self.inbox.push(Msg::Watch(h, kind));
            self.nudge(kind);
        }
    }

    /// Parks an owned connection in keep-alive, or closes it when the
    /// runtime is stopping.
    pub fn park_or_close(&self, h: Handle, slot: &Slot, from: State) -> Handoff {
        if self.is_stopping() {
            if slot.transition(h, from, State::Closing).is_err() {
                return Handoff::None;
            }
            return self.close_owned(h, slot, CloseHow::Quick);
        }
        if slot.transition(h, from, State::Keepalive).is_err() {
            return Handoff::None;
        }
        // The state is Keepalive before the interest is armed, so the event
        // thread never sees an event for a connection it does not own.
        let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
        match self.epoll.modify(slot.fd(), interest, h.0) {
            Ok(()) => Handoff::Watch(Kind::Keepalive),
            Err(_) => self.reclaim_and_abort(h, slot, State::Keepalive),
        }
    }

    fn reclaim_and_abort(&self, h: Handle, slot: &Slot, from: State) -> Handoff {
        match slot.transition(h, from, State::Closing) {
            Ok(()) => self.close_owned(h, slot, CloseHow::Abort),
            Err(_) => Handoff::None,
        }
    }

    /// Sends as much of the pending write as the socket takes without
    /// blocking. Finished: parks or closes. Not finished: arms EPOLLOUT and
    /// asks the event thread to watch the write timeout.
    pub fn write_owned(&self, h: Handle, slot: &Slot, from: State) -> Handoff {
        if from != State::Writing && slot.transition(h, from, State::Writing).is_err() {
            return Handoff::None;
        }
        // SAFETY: state Writing, owned by this thread.
        let Some(mut w) = (unsafe { slot.take_write() }) else {
            return self.reclaim_and_abort(h, slot, State::Writing);
        };
        let fd = slot.fd();
        while !w.is_done() {
            match socket::send_nonblocking(fd, w.remaining()) {
                Ok(n) => w.advance(n),
                Err(e) if sys::would_block(&e) => {
                    // SAFETY: still the owner; the event thread takes over
                    // only after the interest below is armed.
                    unsafe { slot.put_write(w) };
                    let interest = epoll::WRITABLE | epoll::ONESHOT;
                    return match self.epoll.modify(fd, interest, h.0) {
                        Ok(()) => Handoff::Watch(Kind::Write),
                        Err(_) => self.reclaim_and_abort(h, slot, State::Writing),
                    };
                }
                Err(_) => {
                    drop(w);
                    return self.reclaim_and_abort(h, slot, State::Writing);
                }
            }
        }
        let after = w.after;
        drop(w); // releases the host's buffer
        match after {
            AfterWrite::Park => self.park_or_close(h, slot, State::Writing),
            AfterWrite::RunBuffered => {
                // Even while stopping: the request has arrived, so it is
                // served, as readable requests are.
                if slot.transition(h, State::Writing, State::Queued).is_ok() {
                    self.workers.push(Job {
                        conn: h,
                        reason: EVMPM_WAKE_BUFFERED,
                    });
                }
                Handoff::None
            }
            AfterWrite::Close => {
                if slot.transition(h, State::Writing, State::Closing).is_ok() {
                    self.close_owned(h, slot, CloseHow::Linger)
                } else {
                    Handoff::None
                }
            }
        }
    }

    /// Takes an owned connection (state Closing) away from the host: runs
    /// the close callback, abandons any pending write, then closes as `how`
    /// says, handing a lingering close to the event thread.
    pub fn close_owned(&self, h: Handle, slot: &Slot, how: CloseHow) -> Handoff {
        let fd = slot.fd();
        if let Some(on_close) = self.config.on_close {
            // SAFETY: the host's callback, with the documented arguments;
            // runs once because only the owner of a Closing slot gets here
            // and the slot is freed right after.
            unsafe {
                on_close(
                    self.config.user_data.0,
                    self.as_c_ptr(),
                    h.0,
                    fd,
                    slot.user(),
                )
            };
        }
        // SAFETY: state Closing, owned by this thread.
        drop(unsafe { slot.take_write() });
        if how == CloseHow::Abort {
            self.final_close(h, slot, false);
            return Handoff::None;
        }
        let _ = socket::shutdown_write(fd);
        match self.drain(fd) {
            Drained::PeerDone => {
                self.final_close(h, slot, false);
                return Handoff::None;
            }
            Drained::Nothing if how == CloseHow::Quick => {
                self.final_close(h, slot, false);
                return Handoff::None;
            }
            _ => {}
        }
        if self.config.linger_ns == 0 || !self.event_thread_alive.load(Ordering::Acquire) {
            self.final_close(h, slot, false);
            return Handoff::None;
        }
        self.lingering.fetch_add(1, Ordering::AcqRel);
        slot.set_state(h, State::Lingering);
        let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
        match self.epoll.modify(fd, interest, h.0) {
            Ok(()) => Handoff::Watch(Kind::Linger),
            Err(_) => {
                if slot.transition(h, State::Lingering, State::Closing).is_ok() {
                    self.final_close(h, slot, true);
                }
                Handoff::None
            }
        }
    }

    /// Reads and discards what the client sent after we stopped listening.
    pub fn drain(&self, fd: i32) -> Drained {
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_DRAIN_LIMIT {
            match socket::recv_discard(fd, &mut scratch) {
                Ok(0) => return Drained::PeerDone,
                Ok(n) => total += n,
                Err(e) if sys::would_block(&e) => break,
                Err(_) => return Drained::PeerDone,
            }
        }
        if total == 0 {
            Drained::Nothing
        } else {
            Drained::Some
        }
    }

    /// Closes the descriptor and frees the slot. The caller owns the
    /// connection in state Closing; the close callback has run.
    pub fn final_close(&self, h: Handle, slot: &Slot, was_lingering: bool) {
        let fd = slot.fd();
        // Explicit delete: a descriptor the host dup()ed would otherwise keep
        // the registration alive after close.
        let _ = self.epoll.delete(fd);
        sys::close(fd);
        if was_lingering {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
        }
        self.table.free(h);
        self.open.fetch_sub(1, Ordering::AcqRel);
        Counters::bump(&self.counters.closed);
        self.capacity_freed();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Drained {
    /// The client closed its side (or the socket failed).
    PeerDone,
    /// Nothing was waiting.
    Nothing,
    /// Some bytes were discarded; the client may send more.
    Some,
}

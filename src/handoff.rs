//! The close path (the host's `on_close`, lingering close, the final close
//! that frees the slot) and the hand-over of waiting connections to the
//! event thread (`hand_over`): carrying out what a host call or a
//! handler's return decided.
//!
//! Host calls (`evmpm_park_keepalive`, `evmpm_complete_write`, `evmpm_close`,
//! `evmpm_suspend`, `evmpm_hand_back_to_worker`) only record what the host
//! wants while its handler runs (their state changes are in
//! `conn::transitions`); the worker carries it out when the handler
//! returns, so the connection is never acted on while host code still runs
//! for it. For a suspended connection the calling thread carries it out.
//!
//! Carrying out a park or a write does as much as possible on the calling
//! thread (send what the socket takes, re-arm the one-shot epoll interest)
//! and hands the event thread only what must wait, with a `Watch` message
//! that links the connection into a timeout queue.

use crate::conn::transitions::{
    claim_in, finish_step, hand_back, raise_notify, settle, store_write, take_for_notify, Finish,
    HandBack, HELD,
};
use crate::conn::{AfterWrite, Handle, Part, PendingWrite, Slot, State};
use crate::error::Error;
use crate::ffi::types::{
    EVMPM_LOG_WARNING, EVMPM_WAKE_BUFFERED, EVMPM_WAKE_NOTIFIED, EVMPM_WAKE_RESUMED,
};
use crate::message::{CloseHow, Drained, Handoff, Msg};
use crate::runtime::{Phase, Runtime};
use crate::stats::Counters;
use crate::sys::{self, epoll, socket};
use crate::timeouts::Kind;
use crate::workers::Job;
use libc::c_int;
use std::sync::atomic::{fence, Ordering};

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
        claim_in(h, slot, allowed, to).map(|from| (slot, from))
    }

    pub fn host_park(&self, h: Handle, buffered: bool) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &HELD, State::Claimed)?;
        if from != State::Suspended {
            let req = if buffered {
                State::ParkBufferedReq
            } else {
                State::ParkReq
            };
            settle(h, slot, req);
            return Ok(());
        }
        if buffered {
            settle(h, slot, State::Queued);
            self.workers.push(Job::run(h, EVMPM_WAKE_BUFFERED));
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
        let slot = self.slot_for(h)?;
        if store_write(h, slot, make)? {
            let next = self.write_owned(h, slot, State::Claimed);
            self.hand_over(h, next);
        }
        Ok(())
    }

    /// `evmpm_close` (how: None, the listener's way) and `evmpm_close_ex`.
    pub fn host_close(&self, h: Handle, how: Option<CloseHow>) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &HELD, State::Claimed)?;
        if let Some(how) = how {
            // Claimed: this thread owns the connection.
            slot.set_close_how(how as u32);
        }
        if from == State::Suspended {
            settle(h, slot, State::Closing);
            let next = self.close_owned(h, slot, CloseHow::from_u32(slot.close_how()));
            self.hand_over(h, next);
        } else {
            settle(h, slot, State::CloseReq);
        }
        Ok(())
    }

    /// `evmpm_notify`: the handler runs with `EVMPM_WAKE_NOTIFIED` at
    /// least once after this call, starting after it.
    ///
    /// Protocol (Dekker on the notify flag and the state word): this thread
    /// raises the flag, then looks at the state; a thread that puts the
    /// connection back to waiting (Reading, Keepalive) stores that state,
    /// then looks at the flag (`deliver_notify` after every hand-over to
    /// wait). With SeqCst on both sides at least one of them sees the
    /// other's write, and whichever wins the CAS from the waiting state to
    /// Queued clears the flag and queues the run. A connection not waiting
    /// now (in a handler, being written, suspended, in a check) keeps the
    /// flag until it next waits. Several notifies before the run coalesce
    /// into it.
    pub fn host_notify(&self, h: Handle) -> Result<(), Error> {
        let slot = self.slot_for(h)?;
        slot.with_pinned(h, raise_notify)
            .map_err(|_| Error::Stale)?;
        if let Ok(state @ (State::Reading | State::Keepalive)) = slot.state_of(h) {
            self.deliver_notify(h, slot, state);
        }
        Ok(())
    }

    /// If a notify is pending for `h`, waiting in `state`, takes it from the
    /// wait and queues the notified handler run; true if it did. Any thread,
    /// after `h` was put (or seen) waiting: the CAS makes one party the
    /// owner (see `take_for_notify`).
    pub fn deliver_notify(&self, h: Handle, slot: &Slot, state: State) -> bool {
        // Dekker with the worker whose handshake step says done: it clears
        // the mark, then puts the connection back to waiting, which calls
        // this; either this load sees the mark cleared, or that call sees
        // the notifier's flag.
        fence(Ordering::SeqCst);
        if slot.handshake_pending() {
            // The handler never runs before the handshake is done; the
            // worker whose step says done hands the connection back to
            // wait, and that hand-over delivers the notify.
            return false;
        }
        if !take_for_notify(h, slot, state) {
            return false;
        }
        // Its one-shot interest may still report an event from before;
        // the worker checks that one for input (see the poller).
        slot.set_recheck();
        // Part of a request may be waiting under a raised low-water mark;
        // the handler's read must not wait for more than is there.
        crate::readiness::lower_mark(slot, slot.fd());
        self.workers.push(Job::run(h, EVMPM_WAKE_NOTIFIED));
        true
    }

    /// `evmpm_conn_set_timeouts`: 0 is the listener's value.
    pub fn host_set_timeouts(
        &self,
        h: Handle,
        keepalive_ms: u32,
        write_ms: u32,
    ) -> Result<(), Error> {
        let slot = self.slot_for(h)?;
        slot.with_pinned(h, |slot| {
            let listener = self.listeners.get(slot.listener());
            let own = |kind: Kind, ms: u32| match (ms, listener) {
                (0, Some(l)) => l.timeouts_ms[kind as usize],
                (0, None) => crate::config::timeout_ms(self.timeout_ns(kind)),
                (ms, _) => ms,
            };
            slot.set_timeout_ms(Kind::Keepalive as usize, own(Kind::Keepalive, keepalive_ms));
            slot.set_timeout_ms(Kind::Write as usize, own(Kind::Write, write_ms));
        })
        .map_err(|_| Error::Stale)
    }

    pub fn host_suspend(&self, h: Handle) -> Result<(), Error> {
        self.claim(h, &[State::Handler], State::SuspendReq)
            .map(|_| ())
    }

    pub fn host_hand_back(&self, h: Handle) -> Result<(), Error> {
        let slot = self.slot_for(h)?;
        if hand_back(h, slot)? == HandBack::Queue {
            self.workers.push(Job::run(h, EVMPM_WAKE_RESUMED));
        }
        Ok(())
    }

    /// The worker's step after the handler returned: carries out what the
    /// host asked for. Returns the wake reason when the handler must run
    /// again on this worker.
    pub fn finish_handler(&self, h: Handle, slot: &Slot) -> Option<c_int> {
        let handoff = match finish_step(h, slot) {
            Finish::Close => self.close_owned(h, slot, CloseHow::from_u32(slot.close_how())),
            Finish::Park => self.park_or_close(h, slot, State::Claimed),
            Finish::Write => self.write_owned(h, slot, State::Claimed),
            Finish::RunAgain(reason) => return Some(reason),
            Finish::Suspended | Finish::Gone => return None,
        };
        self.hand_over(h, handoff);
        None
    }

    /// Gives the event thread what it must take over (from any thread but
    /// the event thread, which links directly).
    pub fn hand_over(&self, h: Handle, handoff: Handoff) {
        if let Handoff::Watch(kind) = handoff {
            let crowded = self.inbox.push(Msg::Watch(h, kind));
            // Dekker with the event thread's exit: either it drains this
            // message before it goes (it clears `event_thread_alive`, then
            // drains), or this thread sees it gone and closes what it handed
            // over (a worker whose handler outlived a forced stop).
            fence(Ordering::SeqCst);
            if !self.event_thread_alive.load(Ordering::SeqCst) {
                crate::event_loop::abort_leftovers(self);
                return;
            }
            if crowded {
                // Drained now, in a small batch, not at a wake-up seconds
                // away (see `inbox`).
                self.waker.wake();
            } else {
                let timeout = self
                    .table
                    .slot(h)
                    .map_or(0, |slot| self.conn_timeout_ns(slot, kind));
                self.nudge(timeout);
            }
            if !matches!(kind, Kind::Reading | Kind::Keepalive | Kind::Header) {
                return;
            }
            // Back to waiting: a notify that came meanwhile runs now. The
            // fence above orders the store of the waiting state before this
            // look at the flag (see `take_for_notify`), so the common case
            // (no notify) costs one load.
            let Some(slot) = self.table.slot(h) else {
                return;
            };
            if slot.notify_flag().load(Ordering::SeqCst) {
                if let Ok(state @ (State::Reading | State::Keepalive)) = slot.state_of(h) {
                    self.deliver_notify(h, slot, state);
                }
            }
        }
    }

    /// The hand-over of an armed connection to the event thread's `kind`
    /// queue, its time stamped in the slot: the timeout counts from now,
    /// however late the event thread links it.
    fn watch(&self, slot: &Slot, kind: Kind) -> Handoff {
        slot.note_watch_since(self.now_ns());
        Handoff::Watch(kind)
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
        // The wait keeps the keep-alive timeout set now, before anyone can
        // see it waiting, whatever `evmpm_conn_set_timeouts` sets later;
        // and its clock starts now, before anyone can see it waiting, so a
        // link left from its previous wait cannot time it out.
        slot.begin_wait(Kind::Keepalive as usize);
        slot.note_watch_since(self.now_ns());
        let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
        match self.wait_armed(h, slot, from, State::Keepalive, interest) {
            // Stamped above: the clock must not be read a second time.
            Armed::Yes => Handoff::Watch(Kind::Keepalive),
            Armed::Failed => self.close_from(h, slot, State::Keepalive, CloseHow::Abort),
            Armed::Lost => Handoff::None,
        }
    }

    /// Puts `h`, owned here in `from`, to wait in `to` (Reading or
    /// Keepalive), armed one-shot for `interest` in the workers' set.
    ///
    /// The state changes first, so a worker that gets the event finds the
    /// connection waiting and can take it. From then on another party may
    /// take it from the wait (its timeout, a notify, the stop) and close
    /// it, before the interest is armed: so the slot stays pinned until it
    /// is. Closing frees the slot before the descriptor, and freeing waits
    /// for the pin (see `Table::free`), so the descriptor is still this
    /// connection's when `epoll_ctl` names it; closed first, its number
    /// could already be another connection's, which the arming would then
    /// silence.
    pub(crate) fn wait_armed(
        &self,
        h: Handle,
        slot: &Slot,
        from: State,
        to: State,
        interest: u32,
    ) -> Armed {
        let armed = slot.with_pinned(h, |slot| {
            if slot.transition(h, from, to).is_err() {
                return Armed::Lost;
            }
            match self.workers.poll.modify(slot.fd(), interest, h.0) {
                Ok(()) => Armed::Yes,
                Err(_) => Armed::Failed,
            }
        });
        armed.unwrap_or(Armed::Lost)
    }

    /// Arms `fd` in the event thread's set, which watches write completion
    /// and lingering close: added the first time, modified after. (A
    /// connection waiting for a request is armed in the workers' set.)
    fn arm_event(&self, slot: &Slot, fd: i32, interest: u32, h: Handle) -> std::io::Result<()> {
        if slot.note_in_event_epoll() {
            self.epoll.modify(fd, interest, h.0)
        } else {
            self.epoll.add(fd, interest, h.0)
        }
    }

    /// Takes `h` from `from`, a state this thread owns it in, to Closing and
    /// closes it `how`; nothing if another party took it meanwhile (a
    /// timeout, a forced stop).
    pub(crate) fn close_from(&self, h: Handle, slot: &Slot, from: State, how: CloseHow) -> Handoff {
        match slot.transition(h, from, State::Closing) {
            Ok(()) => self.close_owned(h, slot, how),
            Err(_) => Handoff::None,
        }
    }

    /// Sends as much of the pending write as the socket takes without
    /// blocking. Finished: parks or closes. Not finished: arms EPOLLOUT and
    /// asks the event thread to watch the write timeout. Failed: closes at
    /// once. A file that ends before its range: lingering close, so the
    /// client gets what was sent and then the end of the stream.
    pub fn write_owned(&self, h: Handle, slot: &Slot, from: State) -> Handoff {
        if from != State::Writing {
            // A new write completion: it keeps the write timeout set now
            // (see `park_or_close`); one under way (from Writing) keeps its.
            slot.begin_wait(Kind::Write as usize);
            if slot.transition(h, from, State::Writing).is_err() {
                return Handoff::None;
            }
        }
        // SAFETY: state Writing, owned by this thread.
        let Some(mut w) = (unsafe { slot.take_write() }) else {
            return self.close_from(h, slot, State::Writing, CloseHow::Abort);
        };
        let fd = slot.fd();
        match send_pending(fd, &mut w) {
            Sent::All => {}
            Sent::WouldBlock => {
                // SAFETY: still the owner; the event thread takes over
                // only after the interest below is armed.
                unsafe { slot.put_write(w) };
                let interest = epoll::WRITABLE | epoll::ONESHOT;
                return match self.arm_event(slot, fd, interest, h) {
                    Ok(()) => self.watch(slot, Kind::Write),
                    Err(_) => self.close_from(h, slot, State::Writing, CloseHow::Abort),
                };
            }
            Sent::Failed => {
                // Back in the slot, so the close drops it after the
                // close callback, as for a write timeout.
                // SAFETY: still the owner (state Writing).
                unsafe { slot.put_write(w) };
                return self.close_from(h, slot, State::Writing, CloseHow::Abort);
            }
            Sent::FileEnded(missing) => {
                self.log(
                    EVMPM_LOG_WARNING,
                    &format!(
                        "evmpm: a complete-write's file ended {missing} bytes short of its \
                         range; the connection is closed"
                    ),
                );
                // SAFETY: still the owner (state Writing).
                unsafe { slot.put_write(w) };
                return self.close_from(h, slot, State::Writing, CloseHow::Linger);
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
                    self.workers.push(Job::run(h, EVMPM_WAKE_BUFFERED));
                }
                Handoff::None
            }
            AfterWrite::Close => {
                let how = CloseHow::from_u32(slot.close_how());
                self.close_from(h, slot, State::Writing, how)
            }
        }
    }

    /// Takes an owned connection (state Closing) away from the host: runs
    /// the close callback, abandons any pending write, then closes as `how`
    /// says, handing a lingering close to the event thread.
    pub fn close_owned(&self, h: Handle, slot: &Slot, how: CloseHow) -> Handoff {
        if self.config.close_on_worker
            && self.config.on_close.is_some()
            && crate::runtime::on_event_thread()
            && !self.workers.exiting()
        {
            // The host's close path may block: a worker runs it.
            if slot.transition(h, State::Closing, State::Queued).is_ok() {
                self.workers.push(Job::close(h, how));
            }
            return Handoff::None;
        }
        let fd = slot.fd();
        self.faults.hit(crate::failure::Site::Closing);
        slot.mark_notified();
        self.conn_closing(h);
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
        if how == CloseHow::Reset {
            let _ = socket::set_linger_reset(fd);
        }
        if matches!(how, CloseHow::Abort | CloseHow::Reset) {
            self.final_close(h, slot, false);
            return Handoff::None;
        }
        let _ = socket::shutdown_write(fd);
        let can_linger =
            self.config.linger_ns != 0 && self.event_thread_alive.load(Ordering::Acquire);
        // A lingering close drains on the event thread as the client's input
        // arrives. Draining here first would cost a read that, in the usual
        // case, finds nothing: the client has not read the response yet.
        if how != CloseHow::Linger || !can_linger {
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
            if !can_linger {
                self.final_close(h, slot, false);
                return Handoff::None;
            }
        }
        self.lingering.fetch_add(1, Ordering::AcqRel);
        slot.set_state(h, State::Lingering);
        let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
        match self.arm_event(slot, fd, interest, h) {
            Ok(()) => self.watch(slot, Kind::Linger),
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
        // Free first: once the descriptor is closed its number may come back
        // from any accept or open in the process, and a handle must never
        // lead to it. Events still queued for the old registration carry the
        // old handle and are dropped as stale.
        self.table.free(h);
        // No EPOLL_CTL_DEL: close() removes the registration. Only if the
        // host holds a dup() of the descriptor does it outlive the close,
        // and then, being one-shot like every connection registration, it
        // reports at most one more event, under this connection's handle,
        // which the event thread drops as stale.
        sys::close(fd);
        if was_lingering {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        Counters::bump(&self.counters.closed);
        self.capacity_freed();
    }
}

/// What `Runtime::wait_armed` did.
pub(crate) enum Armed {
    /// Waiting, armed: the connection is the pool's and the event thread's.
    Yes,
    /// Waiting, but arming failed: the caller takes it back to close it.
    Failed,
    /// Someone else took it first (a forced stop): nothing to do.
    Lost,
}

/// How far `send_pending` got.
enum Sent {
    /// Everything.
    All,
    /// The socket is full: wait until it is writable.
    WouldBlock,
    /// A send failed (the client is gone, or the file cannot be read).
    Failed,
    /// The file ended this many bytes before its range did.
    FileEnded(u64),
}

/// Sends the pending write's slices, then its file range, until it is
/// done or the socket takes no more. The socket is made non-blocking only
/// while a file is sent (`sendfile` has no flag for it) and is back in its
/// mode when this returns.
fn send_pending(fd: i32, w: &mut PendingWrite) -> Sent {
    let mut nonblocking = None;
    loop {
        let result = match w.next_part() {
            Part::Done => return Sent::All,
            Part::Bytes(slices) => socket::send_slices(fd, slices),
            Part::File(file) => {
                if nonblocking.is_none() {
                    match socket::NonBlocking::set(fd) {
                        Ok(guard) => nonblocking = Some(guard),
                        Err(_) => return Sent::Failed,
                    }
                }
                match socket::send_file(fd, file.fd, file.offset, file.len) {
                    Ok(0) => return Sent::FileEnded(file.len),
                    Ok(n) => {
                        w.advance_file(n as u64);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(n) => w.advance(n),
            Err(e) if sys::would_block(&e) => return Sent::WouldBlock,
            Err(_) => return Sent::Failed,
        }
    }
}

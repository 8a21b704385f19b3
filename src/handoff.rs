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
use crate::ffi::types::{EVMPM_WAKE_BUFFERED, EVMPM_WAKE_RESUMED};
use crate::message::{CloseHow, Drained, Handoff, Msg};
use crate::runtime::{Phase, Runtime};
use crate::stats::Counters;
use crate::sync::Backoff;
use crate::sys::{self, epoll, socket};
use crate::timeouts::Kind;
use crate::workers::Job;
use libc::c_int;
use std::sync::atomic::Ordering;

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

    const HELD: [State; 3] = [State::Handler, State::SuspendReq, State::Suspended];

    pub fn host_park(&self, h: Handle, buffered: bool) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &Self::HELD, State::Claimed)?;
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
        let slot = self.slot_for(h)?;
        if store_write(h, slot, make)? {
            let next = self.write_owned(h, slot, State::Claimed);
            self.hand_over(h, next);
        }
        Ok(())
    }

    pub fn host_close(&self, h: Handle) -> Result<(), Error> {
        let (slot, from) = self.claim(h, &Self::HELD, State::Claimed)?;
        if from == State::Suspended {
            settle(h, slot, State::Closing);
            let next = self.close_owned(h, slot, CloseHow::Linger);
            self.hand_over(h, next);
        } else {
            settle(h, slot, State::CloseReq);
        }
        Ok(())
    }

    pub fn host_suspend(&self, h: Handle) -> Result<(), Error> {
        self.claim(h, &[State::Handler], State::SuspendReq)
            .map(|_| ())
    }

    pub fn host_hand_back(&self, h: Handle) -> Result<(), Error> {
        let slot = self.slot_for(h)?;
        if hand_back(h, slot)? == HandBack::Queue {
            self.workers.push(Job {
                conn: h,
                reason: EVMPM_WAKE_RESUMED,
            });
        }
        Ok(())
    }

    /// The worker's step after the handler returned: carries out what the
    /// host asked for. Returns the wake reason when the handler must run
    /// again on this worker.
    pub fn finish_handler(&self, h: Handle, slot: &Slot) -> Option<c_int> {
        let handoff = match finish_step(h, slot) {
            Finish::Close => self.close_owned(h, slot, CloseHow::Linger),
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
            self.inbox.push(Msg::Watch(h, kind));
            self.nudge(kind);
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
        if slot.transition(h, from, State::Keepalive).is_err() {
            return Handoff::None;
        }
        // The state is Keepalive before the interest is armed, so the event
        // thread never sees an event for a connection it does not own.
        let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
        match self.epoll.modify(slot.fd(), interest, h.0) {
            Ok(()) => self.watch(slot, Kind::Keepalive),
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
                        Ok(()) => self.watch(slot, Kind::Write),
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
        match self.epoll.modify(fd, interest, h.0) {
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

/// Moves `h`'s connection, which the host may dispose of, from one of
/// `allowed` to `to`, retrying while the worker moves it between them;
/// returns the state it came from.
fn claim_in(h: Handle, slot: &Slot, allowed: &[State], to: State) -> Result<State, Error> {
    loop {
        let from = slot.state_of(h).map_err(|_| Error::Stale)?;
        if !allowed.contains(&from) {
            return Err(Error::State);
        }
        match slot.transition(h, from, to) {
            Ok(()) => return Ok(from),
            Err(Refused::Stale) => return Err(Error::Stale),
            Err(Refused::State(_)) => continue, // raced with the worker
        }
    }
}

/// Ends a Claimed (or other owned) state: a CAS, so it waits out a stop
/// that is shutting the socket down at this instant.
fn settle(h: Handle, slot: &Slot, to: State) {
    let from = slot.state_of(h).unwrap_or(State::Claimed);
    let _ = slot.transition(h, from, to);
}

/// The state change of `evmpm_complete_write`: claims the connection and
/// stores its pending write. True: the host held it suspended, so it stays
/// Claimed and the calling thread sends the write. False: its handler is
/// still running, and WriteReq tells the worker to send it.
fn store_write(h: Handle, slot: &Slot, make: impl FnOnce() -> PendingWrite) -> Result<bool, Error> {
    let from = claim_in(h, slot, &Runtime::HELD, State::Claimed)?;
    // SAFETY: Claimed makes this thread the connection's owner.
    unsafe { slot.put_write(make()) };
    if from == State::Suspended {
        return Ok(true);
    }
    settle(h, slot, State::WriteReq);
    Ok(false)
}

/// Where a handed-back connection runs again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HandBack {
    /// Its handler has not returned yet (ResumeReq): the worker running it
    /// runs it again.
    SameWorker,
    /// It was suspended; it is Queued now, and the caller must push it on
    /// the run queue.
    Queue,
}

/// The state change of `evmpm_hand_back_to_worker`.
fn hand_back(h: Handle, slot: &Slot) -> Result<HandBack, Error> {
    let from = claim_in(
        h,
        slot,
        &[State::SuspendReq, State::Suspended],
        State::Claimed,
    )?;
    if from == State::SuspendReq {
        // The handler has not returned yet; its worker runs it again.
        settle(h, slot, State::ResumeReq);
        Ok(HandBack::SameWorker)
    } else {
        settle(h, slot, State::Queued);
        Ok(HandBack::Queue)
    }
}

/// What the worker carries out once the handler returned. The state word
/// already makes the worker the owner for it (or says the host holds it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Finish {
    /// Closing: close it (the handler closed, or returned without deciding).
    Close,
    /// Claimed: park it in keep-alive.
    Park,
    /// Claimed: send its pending write.
    Write,
    /// Handler: run the handler again, with this wake reason.
    RunAgain(c_int),
    /// Suspended: the host holds it.
    Suspended,
    /// Not the worker's any more (a forced stop closed it).
    Gone,
}

/// The state change of the worker's step after the handler returned: moves
/// the connection from the request the host recorded to the state that
/// carries it out.
fn finish_step(h: Handle, slot: &Slot) -> Finish {
    let backoff = Backoff::new();
    loop {
        let Ok(state) = slot.state_of(h) else {
            return Finish::Gone;
        };
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
            _ => return Finish::Gone,
        };
        if slot.transition(h, state, next).is_err() {
            continue;
        }
        return match state {
            State::Handler | State::CloseReq => Finish::Close,
            State::ParkReq => Finish::Park,
            State::WriteReq => Finish::Write,
            State::ParkBufferedReq => Finish::RunAgain(EVMPM_WAKE_BUFFERED),
            State::ResumeReq => Finish::RunAgain(EVMPM_WAKE_RESUMED),
            _ => Finish::Suspended,
        };
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of host calls racing with the worker's step after the
    //! handler returned, on the production state-change functions.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

    use super::*;
    use crate::conn::table::Table;
    use crate::sync::model;
    use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use loom::sync::Arc;
    use loom::thread;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// An empty pending write.
    fn empty_write() -> PendingWrite {
        // SAFETY: zero bytes are never read, and there is no release callback.
        unsafe {
            PendingWrite::new(
                std::ptr::null(),
                0,
                None,
                std::ptr::null_mut(),
                AfterWrite::Close,
            )
        }
    }

    /// A connection whose handler is running and has called
    /// `evmpm_suspend` (`host_suspend`'s claim): SuspendReq.
    fn suspended_in_handler() -> (Arc<Table>, Handle) {
        let table = Arc::new(Table::new(1));
        let h = table.allocate(10, State::Handler).unwrap();
        claim_in(
            h,
            table.slot(h).unwrap(),
            &[State::Handler],
            State::SuspendReq,
        )
        .unwrap();
        (table, h)
    }

    /// Property: of the parties racing for one connection, exactly one
    /// becomes its owner, and the connection's owner-only data passes to it
    /// intact.
    ///
    /// The host holds the connection suspended, and three threads go for it
    /// at once: the event thread's forced stop closes it (Suspended →
    /// Closing, as its `close` does, then drops any pending write and frees
    /// the slot, as `close_owned` and `final_close` do); a host thread
    /// completes a write for it (`store_write`: Suspended → Claimed, stores
    /// the write, which the caller then sends); another host thread hands
    /// it back (`hand_back`: Suspended → Claimed → Queued). Exactly one
    /// wins; the others are refused (EVMPM_ESTATE, or EVMPM_ESTALE once the
    /// slot is freed) and change nothing. The pending write lives in the
    /// slot's owner-only cell: a second owner, or an owner whose CAS does
    /// not see the previous owner's accesses, is a race loom reports.
    #[test]
    fn loom_exactly_one_party_takes_a_suspended_connection() {
        model("stop vs complete-write vs hand-back", || {
            let table = Arc::new(Table::new(1));
            let h = table.allocate(10, State::Suspended).unwrap();

            let t = Arc::clone(&table);
            let stop = thread::spawn(move || {
                let slot = t.slot(h).unwrap();
                if slot
                    .transition(h, State::Suspended, State::Closing)
                    .is_err()
                {
                    return false;
                }
                // SAFETY: the CAS to Closing made this thread the owner.
                assert!(unsafe { slot.take_write() }.is_none());
                t.free(h);
                true
            });
            let t = Arc::clone(&table);
            let writer = thread::spawn(move || {
                let slot = t.slot(h).unwrap();
                match store_write(h, slot, empty_write) {
                    Ok(send_now) => {
                        assert!(send_now, "a suspended connection's write");
                        // SAFETY: `store_write` returned true: this thread
                        // owns the connection (Claimed) and sends the write.
                        assert!(unsafe { slot.take_write() }.is_some());
                        true
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::State | Error::Stale), "{e:?}");
                        false
                    }
                }
            });
            let handed_back = match hand_back(h, table.slot(h).unwrap()) {
                Ok(how) => {
                    assert_eq!(how, HandBack::Queue);
                    true
                }
                Err(e) => {
                    assert!(matches!(e, Error::State | Error::Stale), "{e:?}");
                    false
                }
            };
            let stopped = stop.join().unwrap();
            let written = writer.join().unwrap();

            let state = table.slot(h).unwrap().state_of(h);
            match (stopped, written, handed_back) {
                (true, false, false) => assert_eq!(state, Err(Refused::Stale)),
                (false, true, false) => assert_eq!(state, Ok(State::Claimed)),
                (false, false, true) => assert_eq!(state, Ok(State::Queued)),
                other => panic!("owners (stop, write, hand-back) = {other:?}"),
            }
        });
    }

    /// Property: a forced stop's `shutdown` of a handler's socket never
    /// overlaps the worker's close of that socket, so it can never hit a
    /// descriptor number the kernel has already given to another file.
    ///
    /// At the stop deadline the event thread shuts down the socket of a
    /// connection whose handler still runs (`Slot::while_in_handler`, as
    /// `shutdown_if_in_handler` does), while the handler returns without
    /// deciding and its worker closes the connection (`finish_step`:
    /// Handler → Closing, then the slot is freed and the descriptor closed).
    /// Either the event thread finds the connection no longer in a handler
    /// and leaves it alone, or the shutdown bit holds the worker's
    /// transition to Closing off until the shutdown is done: the shutdown
    /// always sees descriptor 10 still open.
    #[test]
    fn loom_forced_stop_shutdown_never_overlaps_the_close() {
        static SHUT_DOWN: AtomicUsize = AtomicUsize::new(0);
        static LEFT_ALONE: AtomicUsize = AtomicUsize::new(0);
        model("stop shutdown vs handler return", || {
            let table = Arc::new(Table::new(1));
            let h = table.allocate(10, State::Handler).unwrap();
            let closed = Arc::new(AtomicBool::new(false));

            let (t, c) = (Arc::clone(&table), Arc::clone(&closed));
            let worker = thread::spawn(move || {
                let slot = t.slot(h).unwrap();
                // The handler returned without deciding: close.
                assert_eq!(finish_step(h, slot), Finish::Close);
                // final_close: the slot is freed, then the descriptor closed.
                t.free(h);
                c.store(true, SeqCst);
            });
            let slot = table.slot(h).unwrap();
            let shut = slot.while_in_handler(h, |fd| {
                assert_eq!(fd, 10);
                assert!(!closed.load(SeqCst), "shutdown after close");
            });
            worker.join().unwrap();
            let tally = if shut { &SHUT_DOWN } else { &LEFT_ALONE };
            tally.fetch_add(1, Relaxed);
        });
        assert!(SHUT_DOWN.load(Relaxed) > 0 && LEFT_ALONE.load(Relaxed) > 0);
    }

    /// Property: a forced stop shuts down the socket of every connection
    /// whose handler still runs, even while another thread changes its
    /// state.
    ///
    /// The handler has suspended its connection and is still running
    /// (blocked reading, say) when the stop deadline comes: the event thread
    /// shuts its socket down (`Slot::while_in_handler`) so the handler
    /// returns, while a host thread hands the connection back (`hand_back`:
    /// SuspendReq → Claimed → ResumeReq). The handler runs in every state
    /// the connection passes through, so the shutdown must happen in every
    /// interleaving, not only when the event thread's compare-and-swap
    /// meets no change.
    #[test]
    fn loom_forced_stop_shuts_down_a_handler_whatever_the_host_does() {
        model("stop shutdown vs hand-back", || {
            let (table, h) = suspended_in_handler();
            let t = Arc::clone(&table);
            let host = thread::spawn(move || hand_back(h, t.slot(h).unwrap()));
            let slot = table.slot(h).unwrap();
            let shut = slot.while_in_handler(h, |fd| assert_eq!(fd, 10));
            assert_eq!(host.join().unwrap(), Ok(HandBack::SameWorker));
            assert!(shut, "the handler's socket was left open");
            assert_eq!(slot.state_of(h), Ok(State::ResumeReq));
        });
    }

    /// Property: a hand-back racing with the return of the handler that
    /// suspended runs the connection again exactly once.
    ///
    /// The worker takes its step after the handler returned (`finish_step`)
    /// while a host thread calls `evmpm_hand_back_to_worker` (`hand_back`).
    /// In every interleaving exactly one of two things happens: the host
    /// finds the handler still running (ResumeReq) and the worker runs it
    /// again; or the worker suspends it first and the host queues it (the
    /// run-queue push is counted here). Never both, never neither, and the
    /// state ends Handler or Queued to match.
    #[test]
    fn loom_hand_back_runs_the_connection_exactly_once() {
        static SAME_WORKER: AtomicUsize = AtomicUsize::new(0);
        static QUEUED: AtomicUsize = AtomicUsize::new(0);
        model("suspend vs hand-back", || {
            let (table, h) = suspended_in_handler();
            let t = Arc::clone(&table);
            let host = thread::spawn(move || hand_back(h, t.slot(h).unwrap()));
            let slot = table.slot(h).unwrap();
            let worker = finish_step(h, slot);
            let host = host
                .join()
                .unwrap()
                .expect("hand-back of a suspended connection");

            let pushes = usize::from(host == HandBack::Queue);
            let reruns = usize::from(worker == Finish::RunAgain(EVMPM_WAKE_RESUMED));
            assert_eq!(pushes + reruns, 1, "worker {worker:?}, host {host:?}");
            match (worker, host) {
                (Finish::RunAgain(_), HandBack::SameWorker) => {
                    SAME_WORKER.fetch_add(1, Relaxed);
                    assert_eq!(slot.state_of(h), Ok(State::Handler));
                }
                (Finish::Suspended, HandBack::Queue) => {
                    QUEUED.fetch_add(1, Relaxed);
                    assert_eq!(slot.state_of(h), Ok(State::Queued));
                }
                other => panic!("worker and host disagree: {other:?}"),
            }
        });
        assert!(SAME_WORKER.load(Relaxed) > 0 && QUEUED.load(Relaxed) > 0);
    }

    /// Property: a write completed from a host thread while the handler
    /// that suspended returns is sent exactly once, by the connection's
    /// owner, which finds the write stored.
    ///
    /// Either the host claims first (SuspendReq → Claimed → WriteReq) and
    /// the worker, waiting while it sees Claimed, sends it (`Finish::Write`);
    /// or the worker suspends it first and the host's call, owning it in
    /// Claimed, sends it itself. In the first case the write is stored by
    /// one thread and taken by another: loom's cell reports a race unless
    /// the state CASes order the two.
    #[test]
    fn loom_complete_write_while_suspending_is_sent_once() {
        model("suspend vs complete-write", || {
            let (table, h) = suspended_in_handler();
            let t = Arc::clone(&table);
            let host = thread::spawn(move || {
                let slot = t.slot(h).unwrap();
                let send_now = store_write(h, slot, empty_write).expect("a held connection");
                // SAFETY: `store_write` returned true: this thread owns the
                // connection (Claimed) and sends the write.
                send_now.then(|| unsafe { slot.take_write() }.is_some())
            });
            let slot = table.slot(h).unwrap();
            let worker = finish_step(h, slot);
            // SAFETY: Finish::Write: the worker owns the connection (Claimed).
            let worker_sent =
                (worker == Finish::Write).then(|| unsafe { slot.take_write() }.is_some());
            let host_sent = host.join().unwrap();

            match (worker_sent, host_sent) {
                (Some(true), None) => {}
                (None, Some(true)) => assert_eq!(worker, Finish::Suspended),
                other => panic!("write sent by (worker, host) = {other:?}"),
            }
            assert_eq!(slot.state_of(h), Ok(State::Claimed));
        });
    }
}

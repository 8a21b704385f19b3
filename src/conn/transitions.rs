//! The transitions of the host calls and of the worker's step after the
//! handler returned: who owns a connection next when the host disposes of
//! it (`evmpm_park_keepalive`, `evmpm_complete_write`, `evmpm_close`,
//! `evmpm_suspend`, `evmpm_hand_back_to_worker`) and when its handler
//! returns.
//!
//! Each is a compare-and-swap on the slot's state word
//! (`Slot::transition`): of the parties racing for one connection (the
//! worker whose handler returns, host threads, a forced stop) exactly one
//! moves it out of a given state, and the others see the new state and
//! look again or are refused. The CAS is AcqRel, so the new owner sees
//! everything the previous one wrote, the pending write included.
//!
//! Only the state changes are here; carrying them out (sending, arming
//! epoll, closing, queueing) is `handoff.rs`'s, on the thread the
//! transition made the owner.

use super::table::{PendingWrite, Refused, Slot};
use super::{Handle, State};
use crate::error::Error;
use crate::ffi::types::{EVMPM_WAKE_BUFFERED, EVMPM_WAKE_RESUMED};
use crate::sync::atomic::{fence, Ordering};
use crate::sync::Backoff;
use libc::c_int;

/// The states in which the host may dispose of a connection (park, write,
/// close): its handler runs and has not decided yet (Handler), it has
/// suspended it from inside the handler (SuspendReq), or it holds it
/// suspended (Suspended).
pub(crate) const HELD: [State; 3] = [State::Handler, State::SuspendReq, State::Suspended];

/// Moves `h`'s connection, which the host may dispose of, from one of
/// `allowed` to `to`, retrying while the worker moves it between them;
/// returns the state it came from.
///
/// Invariant: Ok(from) means this thread's own CAS moved the connection
/// from `from`, one of `allowed`, to `to`; when `to` is Claimed, this
/// thread owns it until it settles it. Err changes nothing: State when the
/// connection is in none of `allowed` (the host already disposed of it,
/// say), Stale when the handle's connection is gone or its close has begun
/// (Closing, Lingering: the close callback owns what it had).
pub(crate) fn claim_in(
    h: Handle,
    slot: &Slot,
    allowed: &[State],
    to: State,
) -> Result<State, Error> {
    loop {
        let from = slot.host_state_of(h).map_err(|_| Error::Stale)?;
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
///
/// Invariant: the caller owns the connection, so the only change anyone
/// else can make to its state word meanwhile is a forced stop's shutdown
/// bit, which `Slot::transition` waits out; a plain store would clear that
/// bit, and the owner could then close the descriptor under the stop's
/// `shutdown`. After it, the caller owns the connection no more unless `to`
/// is a state its thread owns (Queued hands it to the run queue, a *Req to
/// the worker, Closing keeps it).
pub(crate) fn settle(h: Handle, slot: &Slot, to: State) {
    let from = slot.state_of(h).unwrap_or(State::Claimed);
    let _ = slot.transition(h, from, to);
}

/// The state change of `evmpm_complete_write`: claims the connection and
/// stores its pending write. True: the host held it suspended, so it stays
/// Claimed and the calling thread sends the write. False: its handler is
/// still running, and WriteReq tells the worker to send it.
///
/// Invariant: the write is stored only while this thread owns the
/// connection (Claimed), and is touched next only by the owner it passes to
/// along with the state: this thread (true), or the worker, whose CAS out
/// of WriteReq (`finish_step`) reads this thread's CAS into it. On error
/// `make` has not run, so the host keeps its buffer.
pub(crate) fn store_write(
    h: Handle,
    slot: &Slot,
    make: impl FnOnce() -> PendingWrite,
) -> Result<bool, Error> {
    let from = claim_in(h, slot, &HELD, State::Claimed)?;
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
pub(crate) enum HandBack {
    /// Its handler has not returned yet (ResumeReq): the worker running it
    /// runs it again.
    SameWorker,
    /// It was suspended; it is Queued now, and the caller must push it on
    /// the run queue.
    Queue,
}

/// The state change of `evmpm_hand_back_to_worker`: SuspendReq or
/// Suspended → Claimed → ResumeReq or Queued.
///
/// Invariant: the connection runs again exactly once. Either its handler
/// has not returned yet (SuspendReq), and the worker, finding ResumeReq
/// when it does, runs it again; or it was suspended, and the caller pushes
/// it (Queued) on the run queue. The worker's SuspendReq → Suspended and
/// this claim are CASes on the same word, so exactly one of the two sees
/// the other's result. Err changes nothing.
pub(crate) fn hand_back(h: Handle, slot: &Slot) -> Result<HandBack, Error> {
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
pub(crate) enum Finish {
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
/// carries it out: Handler or CloseReq → Closing, ParkReq or WriteReq →
/// Claimed, ParkBufferedReq or ResumeReq → Handler, SuspendReq → Suspended.
///
/// Invariant: it moves the connection only between host calls, never
/// inside one: while another thread holds it Claimed it waits, and a CAS
/// that loses to a host call looks again. Its result names the state its
/// CAS made (the worker owns the connection in it, except Suspended, where
/// the host does), or Gone when the connection is no longer the worker's.
pub(crate) fn finish_step(h: Handle, slot: &Slot) -> Finish {
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
                // A host thread has claimed it (`claim_in`) and settles it
                // in a moment.
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

/// `evmpm_notify`'s first half: raises the connection's notify flag. The
/// caller then looks at the state and, if the connection waits, calls
/// `take_for_notify` (see `Runtime::host_notify`).
pub(crate) fn raise_notify(slot: &Slot) {
    slot.notify_flag().store(true, Ordering::SeqCst);
    // The state is read after this: a store then a load of another word
    // may swap without a full fence (a store buffer).
    fence(Ordering::SeqCst);
}

/// Takes `h`, waiting in `state` (Reading or Keepalive), for the notified
/// handler run if a notify is pending: true if this thread did, and now
/// owns it in Queued with the flag cleared.
///
/// Invariant (Dekker on the flag and the state word, SeqCst on both
/// sides): the notifier raises the flag, then reads the state; whoever puts
/// the connection back to waiting stores that state, then calls this, which
/// reads the flag. At least one of them sees the other's write, so a
/// notify is never left pending on a waiting connection; the CAS out of
/// the waiting state lets exactly one of them take it.
pub(crate) fn take_for_notify(h: Handle, slot: &Slot, state: State) -> bool {
    fence(Ordering::SeqCst);
    if !slot.notify_flag().load(Ordering::SeqCst) {
        return false;
    }
    if slot.transition(h, state, State::Queued).is_err() {
        return false; // someone else took it; the flag stays for them
    }
    slot.notify_flag().store(false, Ordering::SeqCst);
    true
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of host calls racing with the worker's step after the
    //! handler returned, on the production state-change functions.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

    use super::*;
    use crate::conn::table::Table;
    use crate::conn::AfterWrite;
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

    /// Property: a notify racing the connection's return to waiting is
    /// never lost and runs once. The handler has parked the connection
    /// (Claimed, as `finish_step` leaves it, on its way to Keepalive); a host
    /// thread notifies it. The parker stores Keepalive, then looks at the
    /// flag (`take_for_notify`); the notifier raises the flag, then takes
    /// the connection if it sees it waiting. Exactly one of them queues the
    /// notified run, and the flag ends cleared.
    #[test]
    fn loom_a_notify_racing_a_park_runs_exactly_once() {
        model("notify vs park", || {
            let table = Arc::new(Table::new(1));
            let h = table.allocate(10, State::Claimed).unwrap();
            let t = Arc::clone(&table);
            let parker = thread::spawn(move || {
                let slot = t.slot(h).unwrap();
                slot.transition(h, State::Claimed, State::Keepalive)
                    .unwrap();
                take_for_notify(h, slot, State::Keepalive)
            });
            let slot = table.slot(h).unwrap();
            raise_notify(slot);
            let notifier = match slot.state_of(h) {
                Ok(state @ State::Keepalive) => take_for_notify(h, slot, state),
                _ => false,
            };
            let parked_and_took = parker.join().unwrap();
            assert!(
                notifier ^ parked_and_took,
                "taken by notifier {notifier}, by parker {parked_and_took}"
            );
            assert_eq!(slot.state_of(h), Ok(State::Queued));
            assert!(!slot.notify_flag().load(SeqCst));
        });
    }
}

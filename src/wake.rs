//! Waking the event thread: when another thread must, and how the
//! wake-up reaches it.
//!
//! The event thread sleeps in `epoll_wait` until its next deadline. A
//! thread that hands it a connection to watch (`Runtime::hand_over`) wakes
//! it only when the connection's timeout would expire before that planned
//! wake-up; otherwise the event thread links the connection when it next
//! wakes anyway, and the hand-over costs no system call (`WakePlan`).
//! Wake-ups themselves coalesce: only the first after the event thread
//! last reset the signal pays for raising it (`Waker`).
//!
//! Both protocols are built on `crate::sync::atomic`, so they run under
//! loom (see `loom_tests` below); the signal's system calls are in
//! `sys::waker`.

use crate::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use crate::sys::waker::EventFd;
use std::io;

/// The event thread's planned wake-up, in ns since the runtime's epoch:
/// `AWAKE` (0) while it is awake, u64::MAX while it sleeps without a
/// deadline.
///
/// Protocol (a Dekker-style pairing, a SeqCst fence on each side):
/// - the event thread, before it sleeps, publishes when it plans to wake,
///   then looks at its inbox once more (`may_sleep`);
/// - a thread that pushed a message to the inbox then reads the plan, and
///   wakes the event thread if the message's deadline comes before it
///   (`must_wake`).
///
/// One of the two always sees the other: either the event thread finds the
/// message before it sleeps, or the producer finds the plan and wakes it if
/// need be. A producer that finds the event thread awake need not wake it:
/// it looks at its inbox before it sleeps again.
pub struct WakePlan {
    wake_at: AtomicU64,
}

impl WakePlan {
    const AWAKE: u64 = 0;

    pub fn new() -> WakePlan {
        WakePlan {
            wake_at: AtomicU64::new(Self::AWAKE),
        }
    }

    /// The event thread, before it waits: publishes that it plans to wake at
    /// `wake_at`, then takes its last look at its inbox (`inbox_empty`).
    /// True: it may sleep until then; the producer of any message its look
    /// missed sees the plan. False: a message waits; it must not sleep.
    pub fn may_sleep(&self, wake_at: u64, inbox_empty: impl FnOnce() -> bool) -> bool {
        self.wake_at.store(wake_at.max(1), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        inbox_empty()
    }

    /// The event thread, once its wait returned: awake, it looks at its
    /// inbox before it sleeps again, so no producer needs to wake it.
    pub fn awake(&self) {
        self.wake_at.store(Self::AWAKE, Ordering::SeqCst);
    }

    /// A producer, after it pushed a message to the event thread's inbox:
    /// true when the event thread sleeps and plans to wake after `deadline`,
    /// so it must be woken. `deadline` is only computed, after the look at
    /// the plan, when the event thread is not awake.
    pub fn must_wake(&self, deadline: impl FnOnce() -> u64) -> bool {
        fence(Ordering::SeqCst);
        let wake_at = self.wake_at.load(Ordering::SeqCst);
        if wake_at == Self::AWAKE {
            return false; // awake: it drains the inbox before sleeping again
        }
        deadline() < wake_at
    }
}

/// What a `Waker` raises to wake the event thread: something its wait
/// returns for, at once, from when it is raised until it is cleared.
pub trait Signal {
    fn raise(&self);
    fn clear(&self);
}

/// The eventfd the event thread polls.
impl Signal for EventFd {
    fn raise(&self) {
        self.signal();
    }

    fn clear(&self) {
        self.drain();
    }
}

/// Wakes the event thread out of its wait.
///
/// Wake-ups are coalesced: only the first `wake` after the event thread
/// last cleared the signal pays for raising it (a `write` to the eventfd);
/// later ones are a single atomic swap.
pub struct Waker<S = EventFd> {
    signal: S,
    /// True from the first `wake` until the event thread calls `reset`.
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        Ok(Waker::with_signal(EventFd::new()?))
    }

    /// The eventfd, for the event thread's epoll set.
    pub fn fd(&self) -> i32 {
        self.signal.fd()
    }
}

impl<S: Signal> Waker<S> {
    pub fn with_signal(signal: S) -> Waker<S> {
        Waker {
            signal,
            pending: AtomicBool::new(false),
        }
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            self.signal.raise();
        }
    }

    /// Called by the event thread when the eventfd polled readable, before it
    /// looks at its inbox and state, so no wake is lost:
    /// - drain first, then clear `pending`: a `wake` racing with the drain
    ///   still sees `pending` set and skips its write, but the event thread
    ///   has not looked at the state yet, so it sees that wake's effect;
    /// - a `wake` after the clear writes the eventfd, so the next
    ///   `epoll_wait` returns at once.
    ///
    /// The clear is a swap, not a store: a read-modify-write reads the
    /// flag the skipping `wake` wrote with its own swap, and so
    /// synchronizes with it, which is what makes that wake's effect
    /// visible to the look that follows. A store reads nothing: the memory
    /// model would let the look miss the effect, and the wake be lost
    /// (loom finds that interleaving; see `loom_tests`).
    ///
    /// (Clearing first would let a wake's write land between the clear and
    /// the drain: the drain eats it and `pending` stays set forever, so
    /// every later wake is skipped and the event thread goes deaf.)
    pub fn reset(&self) {
        self.signal.clear();
        self.pending.swap(false, Ordering::SeqCst);
    }
}

// Not under loom: loom's atomics only work inside a model (see loom_tests).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn only_a_deadline_before_the_planned_wake_up_wakes() {
        let plan = WakePlan::new();
        assert!(!plan.must_wake(|| 5), "awake: no wake-up needed");
        assert!(plan.may_sleep(100, || true));
        assert!(plan.must_wake(|| 99));
        assert!(!plan.must_wake(|| 100));
        assert!(!plan.may_sleep(100, || false), "a message waits");
        plan.awake();
        assert!(!plan.must_wake(|| 5));
    }

    /// A signal that counts its raises, and is set from a raise to a clear.
    #[derive(Default)]
    struct Counted {
        raises: std::cell::Cell<u32>,
        set: std::cell::Cell<bool>,
    }

    impl Signal for Counted {
        fn raise(&self) {
            self.raises.set(self.raises.get() + 1);
            self.set.set(true);
        }

        fn clear(&self) {
            self.set.set(false);
        }
    }

    #[test]
    fn wake_ups_coalesce_until_the_reset() {
        let waker = Waker::with_signal(Counted::default());
        waker.wake();
        waker.wake();
        assert_eq!(waker.signal.raises.get(), 1, "the second wake is free");
        waker.reset();
        assert!(!waker.signal.set.get());
        waker.wake();
        assert_eq!(waker.signal.raises.get(), 2);
        assert!(waker.signal.set.get());
    }

    #[test]
    fn a_plan_of_zero_still_counts_as_asleep() {
        let plan = WakePlan::new();
        assert!(plan.may_sleep(0, || true));
        assert!(plan.must_wake(|| 0));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of the wake-up protocol, on the production `WakePlan`.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

    use super::*;
    use crate::sync::model;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::sync::Arc;
    use loom::thread;
    use std::sync::atomic::{AtomicUsize as Tally, Ordering::Relaxed};

    /// The event thread's planned wake-up in the model, and the deadline of
    /// the message handed to it, which comes first.
    const WAKE_AT: u64 = 100;
    const DEADLINE: u64 = 40;

    /// Property: a message pushed while the event thread goes to sleep,
    /// whose deadline is earlier than the planned wake-up, is never left
    /// unseen past its deadline: either the event thread sees it before it
    /// sleeps, or the producer wakes it.
    ///
    /// The event thread takes two turns as `EventLoop::turn` does: it
    /// publishes its plan and looks at its inbox (`may_sleep`), sleeps if
    /// that found nothing, is awake again (`awake`) and drains the inbox;
    /// then it publishes its next plan, looks again, and if that finds
    /// nothing too it sleeps for good: the model ends there. Meanwhile a
    /// producer pushes one message and calls `must_wake`, as
    /// `Runtime::nudge` does, raising a flag for the wake-up. In every
    /// interleaving the message is seen by one of the event thread's
    /// looks, or the producer wakes it. Without either fence, loom finds an
    /// interleaving in which the event thread sleeps for good over the
    /// message.
    ///
    /// The inbox is a count of messages pushed, which only the producer
    /// writes (a Release store, as the inbox's push publishes a message);
    /// the event thread remembers how many it has drained. (A flag the
    /// producer sets and the event thread clears would be more direct, but
    /// loom leaves the producer's store and a concurrent clear unordered,
    /// so a later load that has seen both may still return the clear's
    /// value: an outcome the memory model forbids, reported as a failure.)
    #[test]
    fn loom_an_earlier_deadline_is_never_slept_through() {
        static SEEN: Tally = Tally::new(0);
        static WOKEN: Tally = Tally::new(0);
        model("wake plan vs hand-over", || {
            let plan = Arc::new(WakePlan::new());
            let pushed = Arc::new(AtomicUsize::new(0));
            let woken = Arc::new(AtomicBool::new(false));

            let (p, i, w) = (Arc::clone(&plan), Arc::clone(&pushed), Arc::clone(&woken));
            let producer = thread::spawn(move || {
                i.store(1, Ordering::Release);
                if p.must_wake(|| DEADLINE) {
                    w.store(true, Ordering::Release);
                }
            });

            let mut drained = 0;
            for turn in 0..2 {
                let sleeps = plan.may_sleep(WAKE_AT, || pushed.load(Ordering::Acquire) == drained);
                if sleeps && turn == 1 {
                    break; // asleep for good
                }
                // A wait until WAKE_AT, or shorter if woken; then awake.
                plan.awake();
                drained = pushed.load(Ordering::Acquire);
            }
            producer.join().unwrap();
            let seen = drained == 1;

            let woken = woken.load(Ordering::Acquire);
            assert!(seen || woken, "the event thread slept over the message");
            if seen {
                SEEN.fetch_add(1, Relaxed);
            }
            if woken {
                WOKEN.fetch_add(1, Relaxed);
            }
        });
        assert!(SEEN.load(Relaxed) > 0 && WOKEN.load(Relaxed) > 0);
    }

    /// Loom's stand-in for the eventfd: its counter. A raise adds one, a
    /// clear reads it to zero, as `write` and `read` do under the kernel's
    /// lock; the event thread's wait returns at once while it is not zero.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Counter {
        fn raised(&self) -> bool {
            self.0.load(Ordering::Acquire) != 0
        }
    }

    impl Signal for Counter {
        fn raise(&self) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }

        fn clear(&self) {
            self.0.swap(0, Ordering::AcqRel);
        }
    }

    /// Property: a `wake` racing the event thread's `reset` is never lost:
    /// after the reset and its look at the shared state, either the event
    /// thread saw what the waking thread did, or the signal is raised, so
    /// its next wait returns at once. And the race never leaves the flag
    /// set with the signal cleared, which would make every later `wake`
    /// skip its raise: a later `wake` always raises the signal.
    ///
    /// An earlier wake has raised the signal and set the flag; the event
    /// thread found the eventfd readable and resets (`reset`), then looks
    /// at the shared state, while two other threads each change their part
    /// of that state (a Release store, as pushing to the inbox publishes a
    /// message) and wake it (`wake`). Two, because a wake that skips its
    /// raise can follow another that skipped too.
    ///
    /// With the flag cleared by a store instead of a swap, loom finds an
    /// interleaving in which the event thread's look misses a change whose
    /// wake skipped its raise; with the flag cleared before the eventfd is
    /// drained, one in which a wake is lost too.
    #[test]
    fn loom_a_wake_racing_the_reset_is_never_lost() {
        static SAW: Tally = Tally::new(0);
        static RAISED: Tally = Tally::new(0);
        model("wake vs reset", || {
            let waker = Arc::new(Waker::with_signal(Counter::default()));
            waker.wake();
            let state = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);

            let producers = [0, 1].map(|i| {
                let (w, st) = (Arc::clone(&waker), Arc::clone(&state));
                thread::spawn(move || {
                    st[i].store(true, Ordering::Release);
                    w.wake();
                })
            });
            waker.reset();
            let saw = state.each_ref().map(|s| s.load(Ordering::Acquire));
            for p in producers {
                p.join().unwrap();
            }

            let raised = waker.signal.raised();
            assert!(saw.iter().all(|&s| s) || raised, "a wake was lost: {saw:?}");
            SAW.fetch_add(usize::from(saw == [true, true]), Relaxed);
            RAISED.fetch_add(usize::from(raised), Relaxed);

            // The event thread's next round, if the signal is raised; then
            // a later wake must raise it.
            if raised {
                waker.reset();
            }
            waker.wake();
            assert!(waker.signal.raised(), "a later wake was skipped");
        });
        assert!(SAW.load(Relaxed) > 0 && RAISED.load(Relaxed) > 0);
    }
}

//! The life of a timer or watch: one state word per entry, moved by
//! compare-and-swap, so that of the parties racing for an entry (the event
//! thread's expiry, a worker taking a ready watch or a queued run, a host
//! thread cancelling or re-arming, a connection's close) exactly one moves
//! it out of a given phase, and every other sees the new phase and answers
//! by it.
//!
//! The word is `generation << 32 | phase`. The generation names the use
//! of the entry an id was given for: it changes when the entry is freed,
//! so an old id is refused (stale) however often the entry is reused.
//!
//! ```text
//!            add                 expiry (event thread)      worker
//!   Free ──────────► Armed ───────────────────► Queued ─────────────► Running
//!                     │  └─ ready (worker, watch) ──────────────────► │
//!       cancel: Armed, Queued, Idle ─► Dead        cancel: Running ─► Doomed
//!   Running ─► Dead (timer: ran) / Idle (watch: fired)   Doomed ─► Dead
//!   Running ─► RearmBusy ─► Rearm (watch re-armed while its callback runs)
//!   Rearm ─► Busy ─► Armed (worker, after the callback)
//!   Idle ─► Busy ─► Armed (re-arm)               Dead ─► Free (event thread)
//! ```
//!
//! Busy and RearmBusy are short locks on the word, held by one thread
//! while it writes the entry's fields (and, for Busy, arms its epoll
//! interest); the others wait them out (a few instructions and at most one
//! `epoll_ctl`).
//!
//! Invariants:
//! - the callback starts only on a CAS into Running (from Armed or
//!   Queued), so at most one run at a time, and none after a cancel
//!   answered `Cancelled` (the cancel's CAS left Armed, Queued or Idle);
//! - a cancel answers `Running` only when a run has started and not
//!   ended; it moves the entry to Doomed, so that run ends the entry (no
//!   re-arm takes effect);
//! - exactly one party moves the entry into Dead (a CAS), and only that
//!   party sends the message that frees it: no double free.
//!
//! The model in `loom_tests` checks the cancel/fire race on these very
//! functions.

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::Backoff;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub(crate) enum Phase {
    Free = 0,
    /// A thread is arming it (fields, epoll interest); others wait.
    Busy = 1,
    /// Waiting for its deadline (or, a watch, its descriptor).
    Armed = 2,
    /// Its deadline passed; a run is in the workers' queue.
    Queued = 3,
    /// Its callback runs.
    Running = 4,
    /// Its callback runs; a re-arm is being recorded.
    RearmBusy = 5,
    /// Its callback runs; it is re-armed when the callback returns.
    Rearm = 6,
    /// Its callback runs; it was cancelled meanwhile: it ends after.
    Doomed = 7,
    /// A watch that fired and whose callback returned: not armed, not
    /// freed (re-arm or cancel it).
    Idle = 8,
    /// Cancelled, or a timer that ran: the event thread frees it.
    Dead = 9,
}

impl Phase {
    fn from_u32(v: u32) -> Phase {
        match v {
            1 => Phase::Busy,
            2 => Phase::Armed,
            3 => Phase::Queued,
            4 => Phase::Running,
            5 => Phase::RearmBusy,
            6 => Phase::Rearm,
            7 => Phase::Doomed,
            8 => Phase::Idle,
            9 => Phase::Dead,
            _ => Phase::Free,
        }
    }
}

/// Generations fit 20 bits (see `super::table` for the id layout).
pub(crate) const GENERATION_BITS: u32 = 20;

/// The generation an entry gets when it is freed: never 0, so an id is
/// never 0.
pub(crate) fn next_generation(generation: u32) -> u32 {
    match (generation + 1) & ((1 << GENERATION_BITS) - 1) {
        0 => 1,
        g => g,
    }
}

fn pack(generation: u32, phase: Phase) -> u64 {
    (u64::from(generation) << 32) | phase as u64
}

fn unpack(word: u64) -> (u32, Phase) {
    ((word >> 32) as u32, Phase::from_u32(word as u32))
}

/// The id does not name the entry's current use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Stale;

/// What a cancel found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Cancel {
    /// It will never run (again): this caller moved it to Dead and must
    /// have it freed.
    Cancelled,
    /// Its callback runs now; that run completes, none follows.
    Running,
    /// Already ran (a timer), already cancelled, or not this id's entry.
    Stale,
}

/// What a re-arm found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Rearm {
    /// Idle: this caller holds it Busy; it must write the fields, arm it
    /// and `publish_armed`.
    Arm,
    /// Running: this caller holds it RearmBusy; it must write the fields
    /// and `publish_rearm`. The worker arms it when the callback returns.
    Later,
    /// Armed or queued already.
    AlreadyArmed,
    /// Cancelled, ended, or not this id's entry.
    Stale,
}

/// What the worker does once a callback returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum After {
    /// Ended: the worker moved it to Dead and must have it freed.
    Free,
    /// A watch now Idle.
    Idle,
    /// Re-armed meanwhile: the worker holds it Busy and must arm it and
    /// `publish_armed`.
    Arm,
}

/// The state word of one entry.
pub(crate) struct Word(AtomicU64);

impl Word {
    pub(crate) fn new() -> Word {
        Word(AtomicU64::new(pack(1, Phase::Free)))
    }

    pub(crate) fn load(&self) -> (u32, Phase) {
        unpack(self.0.load(Ordering::Acquire))
    }

    /// The phase of the entry's use `generation` names.
    pub(crate) fn phase(&self, generation: u32) -> Result<Phase, Stale> {
        let (g, phase) = self.load();
        if g != generation || phase == Phase::Free {
            return Err(Stale);
        }
        Ok(phase)
    }

    /// Moves use `generation` from `from` to `to`; AcqRel, so the new
    /// owner sees what the previous one wrote.
    pub(crate) fn cas(&self, generation: u32, from: Phase, to: Phase) -> bool {
        self.0
            .compare_exchange(
                pack(generation, from),
                pack(generation, to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The entry was taken from the free list: publishes its fields,
    /// written before this, with the new use's phase (Armed, or Busy while
    /// the adder arms it).
    pub(crate) fn publish_new(&self, generation: u32, phase: Phase) {
        self.0.store(pack(generation, phase), Ordering::Release);
    }

    /// Ends a Busy hold: the entry is armed, its fields written.
    pub(crate) fn publish_armed(&self, generation: u32) {
        let ok = self.cas(generation, Phase::Busy, Phase::Armed);
        debug_assert!(ok, "Busy is held by one thread");
    }

    /// Ends a RearmBusy hold: the worker re-arms it after the callback.
    pub(crate) fn publish_rearm(&self, generation: u32) {
        let ok = self.cas(generation, Phase::RearmBusy, Phase::Rearm);
        debug_assert!(ok, "RearmBusy is held by one thread");
    }

    /// Abandons a Busy hold that could not arm: Dead (the caller frees).
    pub(crate) fn abandon(&self, generation: u32) {
        let ok = self.cas(generation, Phase::Busy, Phase::Dead);
        debug_assert!(ok, "Busy is held by one thread");
    }

    /// The event thread frees a Dead entry: the next use gets a new
    /// generation. Returns it.
    pub(crate) fn free(&self, generation: u32) -> bool {
        let next = next_generation(generation);
        self.0
            .compare_exchange(
                pack(generation, Phase::Dead),
                pack(next, Phase::Free),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// A host's cancel (or a connection's close, for its bound timer).
    pub(crate) fn cancel(&self, generation: u32) -> Cancel {
        let backoff = Backoff::new();
        loop {
            let Ok(phase) = self.phase(generation) else {
                return Cancel::Stale;
            };
            let to = match phase {
                Phase::Armed | Phase::Queued | Phase::Idle => Phase::Dead,
                Phase::Running | Phase::Rearm => Phase::Doomed,
                Phase::Doomed => return Cancel::Running,
                Phase::Busy | Phase::RearmBusy => {
                    backoff.snooze();
                    continue;
                }
                Phase::Dead | Phase::Free => return Cancel::Stale,
            };
            if self.cas(generation, phase, to) {
                return if to == Phase::Dead {
                    Cancel::Cancelled
                } else {
                    Cancel::Running
                };
            }
        }
    }

    /// A host's re-arm of a watch.
    pub(crate) fn rearm(&self, generation: u32) -> Rearm {
        let backoff = Backoff::new();
        loop {
            let Ok(phase) = self.phase(generation) else {
                return Rearm::Stale;
            };
            let (to, answer) = match phase {
                Phase::Idle => (Phase::Busy, Rearm::Arm),
                Phase::Running | Phase::Rearm => (Phase::RearmBusy, Rearm::Later),
                Phase::Armed | Phase::Queued => return Rearm::AlreadyArmed,
                Phase::Busy | Phase::RearmBusy => {
                    backoff.snooze();
                    continue;
                }
                Phase::Doomed | Phase::Dead | Phase::Free => return Rearm::Stale,
            };
            if self.cas(generation, phase, to) {
                return answer;
            }
        }
    }

    /// A worker takes an armed entry whose descriptor is ready (waiting
    /// out an arming in progress). True: it runs the callback.
    pub(crate) fn take_armed(&self, generation: u32) -> bool {
        let backoff = Backoff::new();
        loop {
            match self.phase(generation) {
                Ok(Phase::Armed) => {
                    if self.cas(generation, Phase::Armed, Phase::Running) {
                        return true;
                    }
                }
                Ok(Phase::Busy) => backoff.snooze(),
                _ => return false,
            }
        }
    }

    /// A worker takes a queued run. True: it runs the callback.
    pub(crate) fn take_queued(&self, generation: u32) -> bool {
        self.cas(generation, Phase::Queued, Phase::Running)
    }

    /// The worker, once the callback returned. `watch`: an entry that
    /// stays until cancelled (Idle); a timer ends (Dead).
    pub(crate) fn after_run(&self, generation: u32, watch: bool) -> After {
        let backoff = Backoff::new();
        loop {
            let Ok(phase) = self.phase(generation) else {
                debug_assert!(false, "a running entry is owned by its runner");
                return After::Idle;
            };
            let (to, answer) = match phase {
                Phase::Running if watch => (Phase::Idle, After::Idle),
                Phase::Running | Phase::Doomed => (Phase::Dead, After::Free),
                Phase::Rearm => (Phase::Busy, After::Arm),
                Phase::RearmBusy => {
                    backoff.snooze();
                    continue;
                }
                other => {
                    debug_assert!(false, "a running entry in {other:?}");
                    return After::Idle;
                }
            };
            if self.cas(generation, phase, to) {
                return answer;
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The cancel/fire race, on the production state word.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

    use super::*;
    use crate::sync::model_bounded;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    const G: u32 = 1;

    /// Property: a timer that two threads cancel while the event thread
    /// expires it and a worker runs it runs at most once, and:
    /// - it ran, or exactly one cancel answered Cancelled (never both,
    ///   never neither): no lost and no double call;
    /// - a cancel that answered Running saw a run that had started;
    /// - no run starts after any cancel returned (with either answer).
    /// And the entry ends Dead exactly once (one party frees it).
    #[test]
    fn loom_timer_cancel_races_fire() {
        model_bounded("timer cancel vs fire", 3, || {
            let word = Arc::new(Word::new());
            word.publish_new(G, Phase::Armed);
            let runs = Arc::new(AtomicUsize::new(0));
            let frees = Arc::new(AtomicUsize::new(0));

            let cancellers: Vec<_> = (0..2)
                .map(|_| {
                    let (w, r, f) = (Arc::clone(&word), Arc::clone(&runs), Arc::clone(&frees));
                    thread::spawn(move || {
                        let answer = w.cancel(G);
                        if answer == Cancel::Cancelled {
                            f.fetch_add(1, Ordering::SeqCst);
                        }
                        (answer, r.load(Ordering::SeqCst))
                    })
                })
                .collect();

            // The event thread's expiry, then the worker's run.
            if word.cas(G, Phase::Armed, Phase::Queued) && word.take_queued(G) {
                runs.fetch_add(1, Ordering::SeqCst);
                if word.after_run(G, false) == After::Free {
                    frees.fetch_add(1, Ordering::SeqCst);
                }
            }

            let answers: Vec<_> = cancellers.into_iter().map(|t| t.join().unwrap()).collect();
            let ran = runs.load(Ordering::SeqCst);
            let cancelled = answers
                .iter()
                .filter(|(a, _)| *a == Cancel::Cancelled)
                .count();
            assert!(ran <= 1, "ran twice");
            assert_eq!(ran + cancelled, 1, "lost or double: {answers:?}, ran {ran}");
            for &(answer, runs_seen) in &answers {
                match answer {
                    // The run it saw in progress is the one that happened.
                    Cancel::Running => assert_eq!(ran, 1, "Running answered, no run"),
                    Cancel::Cancelled => assert_eq!(runs_seen, 0),
                    Cancel::Stale => {}
                }
            }
            assert_eq!(frees.load(Ordering::SeqCst), 1, "freed other than once");
            assert_eq!(word.load(), (G, Phase::Dead));
        });
    }

    /// Property: a watch whose callback re-arms it while a host thread
    /// cancels it: the cancel's answer holds (Cancelled: no run starts
    /// after; Running: the run in progress is the last), the re-arm never
    /// revives a cancelled watch, and the entry is freed exactly once.
    #[test]
    fn loom_watch_rearm_races_cancel() {
        model_bounded("watch rearm vs cancel", 3, || {
            let word = Arc::new(Word::new());
            word.publish_new(G, Phase::Armed);
            let runs = Arc::new(AtomicUsize::new(0));
            let frees = Arc::new(AtomicUsize::new(0));

            let (w, r, f) = (Arc::clone(&word), Arc::clone(&runs), Arc::clone(&frees));
            let canceller = thread::spawn(move || {
                let answer = w.cancel(G);
                if answer == Cancel::Cancelled {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                (answer, r.load(Ordering::SeqCst))
            });

            // A worker: the descriptor is ready twice; the callback re-arms
            // the first time.
            for round in 0..2 {
                if !word.take_armed(G) {
                    break;
                }
                runs.fetch_add(1, Ordering::SeqCst);
                if round == 0 && word.rearm(G) == Rearm::Later {
                    word.publish_rearm(G);
                }
                match word.after_run(G, true) {
                    After::Free => {
                        frees.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    After::Arm => word.publish_armed(G),
                    After::Idle => break,
                }
            }

            let (answer, runs_seen) = canceller.join().unwrap();
            let ran = runs.load(Ordering::SeqCst);
            match answer {
                // Nothing ran in between: no run starts after.
                Cancel::Cancelled => assert_eq!(ran, runs_seen, "a run after Cancelled"),
                // The run in progress (counted by now or not yet) is the
                // last.
                Cancel::Running => assert!(ran >= 1 && ran <= runs_seen + 1, "a run after Running"),
                Cancel::Stale => {}
            }
            assert_ne!(answer, Cancel::Stale, "a live watch answered Stale");
            assert_eq!(frees.load(Ordering::SeqCst), 1, "freed other than once");
            assert_eq!(word.load(), (G, Phase::Dead));
        });
    }
}

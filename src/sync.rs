//! The synchronization primitives of the lock-free hand-off, in one place so
//! they can be switched to the loom model checker's.
//!
//! A normal build gets std's and crossbeam's, unchanged. A build with
//! `RUSTFLAGS="--cfg loom"` gets loom's, whose scheduler then runs the
//! `loom_tests` modules through every interleaving (and every outcome the
//! memory orderings allow; the largest model up to a preemption bound) of
//! the connection state word, the table, the workers' sleep/wake protocol
//! and the waking of the event thread:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --lib loom --target-dir target/loom
//! ```
//!
//! loom is a dev-dependency for `cfg(loom)` only, so under `--cfg loom` the
//! crate builds as its unit tests and nothing else.
//!
//! Under loom the bounded queue (crossbeam's `ArrayQueue`, for the run queue
//! and the table's free list) is replaced by a stand-in loom can see: a
//! model checker only explores the interleavings whose accesses it sees
//! conflict, and it cannot see inside crossbeam's atomics.

#[cfg(not(loom))]
pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
}

#[cfg(loom)]
pub(crate) mod atomic {
    pub(crate) use loom::sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
}

/// Owner-only data. Loom's `UnsafeCell` checks that every access
/// happens-after the previous one, so a hand-over of ownership that does not
/// publish the data is a reported race; the normal build's is std's, behind
/// the same closure interface.
pub(crate) mod cell {
    #[cfg(not(loom))]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(data: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(data))
        }

        /// Calls `f` with the raw pointer; the caller guarantees exclusive
        /// access while `f` uses it.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    #[cfg(loom)]
    pub(crate) use loom::cell::UnsafeCell;
}

#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;

/// Busy-wait hints. Loom must be told about a spin, or it would explore the
/// spinning thread forever instead of running the one it waits for.
pub(crate) mod hint {
    #[cfg(not(loom))]
    pub(crate) use std::hint::spin_loop;

    #[cfg(loom)]
    pub(crate) use loom::hint::spin_loop;
}

#[cfg(not(loom))]
pub(crate) use crossbeam_queue::ArrayQueue;

#[cfg(loom)]
pub(crate) use self::loom_queue::ArrayQueue;

/// Loom's stand-in for crossbeam's `ArrayQueue`: bounded, FIFO,
/// linearizable. Items move under a loom mutex, as an item in crossbeam's
/// passes from push to pop through a release/acquire pair on its slot.
/// `is_empty` and `len` read an atomic count without the lock, as
/// crossbeam's read its head and tail indices: so a thread that checks for
/// emptiness synchronizes with a pushing thread only through its own
/// orderings and fences, which is what the sleep/wake protocol must get
/// right.
#[cfg(loom)]
mod loom_queue {
    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use loom::sync::Mutex;
    use std::collections::VecDeque;

    pub(crate) struct ArrayQueue<T> {
        items: Mutex<VecDeque<T>>,
        count: AtomicUsize,
        cap: usize,
    }

    impl<T> ArrayQueue<T> {
        pub(crate) fn new(cap: usize) -> ArrayQueue<T> {
            assert!(cap > 0, "capacity must be non-zero");
            ArrayQueue {
                items: Mutex::new(VecDeque::with_capacity(cap)),
                count: AtomicUsize::new(0),
                cap,
            }
        }

        pub(crate) fn push(&self, value: T) -> Result<(), T> {
            let mut items = self.items.lock().unwrap();
            if items.len() == self.cap {
                return Err(value);
            }
            items.push_back(value);
            self.count.store(items.len(), SeqCst);
            Ok(())
        }

        pub(crate) fn pop(&self) -> Option<T> {
            let mut items = self.items.lock().unwrap();
            let value = items.pop_front()?;
            self.count.store(items.len(), SeqCst);
            Some(value)
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.count.load(SeqCst) == 0
        }

        pub(crate) fn len(&self) -> usize {
            self.count.load(SeqCst)
        }
    }
}

#[cfg(not(loom))]
pub(crate) use crossbeam_utils::Backoff;

/// Loom's stand-in for crossbeam's `Backoff`: every snooze yields to the
/// model's scheduler.
#[cfg(loom)]
pub(crate) struct Backoff(());

#[cfg(loom)]
impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(())
    }

    pub(crate) fn snooze(&self) {
        loom::thread::yield_now();
    }
}

/// Runs `f` under loom's model checker, through every interleaving (loom's
/// `LOOM_*` environment variables may bound it), and prints how many
/// executions it explored, for `--nocapture` runs.
#[cfg(all(test, loom))]
pub(crate) fn model<F>(name: &str, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    check(name, loom::model::Builder::new(), f);
}

/// `model`, with at most `bound` preemptions per execution (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise), for a model whose every
/// interleaving would take too long to explore. Bugs of the kind loom finds
/// almost always show within two or three preemptions.
#[cfg(all(test, loom))]
pub(crate) fn model_bounded<F>(name: &str, bound: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(bound);
    check(name, builder, f);
}

#[cfg(all(test, loom))]
fn check<F>(name: &str, builder: loom::model::Builder, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let start = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, Relaxed);
        f();
    });
    eprintln!(
        "{name}: {} executions explored in {:.2?}",
        runs.load(Relaxed),
        start.elapsed()
    );
}

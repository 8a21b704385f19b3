//! The worker pool: as many threads running handlers as there are CPUs
//! while handlers are short, more only while handlers block.
//!
//! A connection waiting for a request (new, or parked in keep-alive) is
//! armed, one-shot, in the pool's epoll set (`Workers::poll`). Idle workers
//! wait in that set themselves, so a readable connection wakes a worker
//! directly: no event-thread hop, no hand-off through a queue. The worker
//! takes the connection with a compare-and-swap, runs the readiness check
//! and the handler, and parks or writes it as the handler says (see
//! `poller`). Connections that need a worker for another reason (handed
//! back, buffered input, fairness) go through a run queue and a doorbell
//! eventfd in the same set.
//!
//! How many threads poll is the heart of it. On a machine with N CPUs, N
//! threads taking turns on short handlers stay hot: a worker that finishes
//! finds the next ready connection in its own `epoll_wait` without
//! sleeping. More threads only add context switches. So the pool keeps
//! `target` threads *active* (polling, or in a handler that has not
//! blocked), and more only while handlers block:
//!
//! - the monitor (`monitor`), at idle scheduling priority, looks at the
//!   handlers that have run longer than a stall threshold, asks the kernel
//!   whether their thread sleeps, and for each that does, counts it as
//!   blocked and releases a spare thread in its place (started on demand,
//!   up to `max` threads in all);
//! - a worker whose handler was counted blocked, once it returns, is
//!   active again; whenever the active threads are above the target, the
//!   next one that finds no work ready steps down and sleeps as a spare
//!   (LIFO, so the same few threads stay warm): where it would otherwise
//!   have slept in `epoll_wait`, so stepping down costs nothing.
//!
//! The monitor runs at idle priority, so it costs nothing while the CPUs
//! are busy with short handlers (it does not get to run), and runs as soon
//! as a CPU would otherwise idle because handlers sleep: exactly when more
//! threads help.

mod monitor;
mod poller;
mod status;

pub use monitor::{look_if_due, monitor_main};
pub(crate) use poller::run_callback;
pub use poller::worker_main;
pub(crate) use status::LABEL_SIZE;

use crate::conn::Handle;
use crate::message::CloseHow;
use crate::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{ArrayQueue, Mutex};
use crate::sys::epoll::{self, Epoll};
use crate::sys::waker::EventFd;
use crate::wake::Waker;
use crossbeam_utils::CachePadded;
use libc::c_int;
use std::io;
use std::thread::{JoinHandle, Thread};

/// One unit of work from the run queue, for one connection (in state
/// Queued while it waits).
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub conn: Handle,
    pub work: Work,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Run the handler with this wake reason.
    Run(c_int),
    /// Close it, this way: the close callback must run on a worker
    /// (`evmpm_config.close_on_worker`).
    Close(CloseHow),
    /// Not a connection: run timer or watch `Job::conn.0` (an id, see
    /// `timers`).
    Timer,
}

impl Job {
    pub fn run(conn: Handle, reason: c_int) -> Job {
        Job {
            conn,
            work: Work::Run(reason),
        }
    }

    pub fn close(conn: Handle, how: CloseHow) -> Job {
        Job {
            conn,
            work: Work::Close(how),
        }
    }
}

/// epoll tokens of the pool's own descriptors in its set; connection
/// handles are all >= 2^32.
pub(crate) const DOORBELL_TOKEN: u64 = 1;
pub(crate) const EXIT_TOKEN: u64 = 2;
/// The watch set (`timers::Timers`), nested in the pool's set.
pub(crate) const WATCH_TOKEN: u64 = 3;

/// A handler that has run this long while its thread sleeps in the kernel
/// is counted as blocked.
pub(crate) const STALL_NS: u64 = 100_000;

/// A spare thread that has not been released for this long leaves, so an
/// idle runtime goes back to its running threads after a burst of blocking
/// handlers (httpd trims its spare threads the same way).
pub(crate) const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The low bit of `Record::handler`: the monitor counted this handler as
/// blocked.
const BLOCKED: u64 = 1;

/// What the pool knows of one worker thread.
struct Record {
    /// What the worker writes at every handler's start and end, on one
    /// cache line.
    handler: CachePadded<Running>,
    /// The thread's kernel id, once it runs (0 before).
    tid: AtomicI32,
    /// Set by whoever releases this thread from the spare stack.
    released: AtomicBool,
    thread: Mutex<Option<Thread>>,
    /// For `evmpm_get_workers` (see `status`): whether a thread has this
    /// id, and whether it is a spare, as `status::LIFE_*`. Written as the
    /// id is reserved and freed and as the thread becomes or stops being a
    /// spare; never on the handler path.
    life: AtomicU32,
    /// When the thread last became idle or a spare (ns since the
    /// runtime's epoch).
    since_ns: AtomicU64,
    /// When the current handler was counted blocked.
    blocked_ns: AtomicU64,
    /// The last handler (its `Running::word`) a look found running, and
    /// when to ask the kernel about it again (see `monitor::look`). Off the
    /// handler's cache line: only lookers write them.
    looked_word: AtomicU64,
    next_look_ns: AtomicU64,
    /// The label the running handler set (`evmpm_set_label`), NUL-padded;
    /// locked only by the label's writer and by snapshots, and by the
    /// worker at a handler's end if that handler set one.
    label: Mutex<[u8; status::LABEL_SIZE]>,
}

/// A worker's handler, as it runs.
struct Running {
    /// 0 outside a handler; inside, when it started (ns since the
    /// runtime's epoch) shifted left by one, with `BLOCKED` in the low bit
    /// once the monitor counted it as blocked. One word, so the worker's
    /// `swap(0)` at the handler's end and the monitor's CAS that marks it
    /// agree on whether it was counted.
    word: AtomicU64,
    /// The connection of the handler in `word`, stored before it.
    conn: AtomicU64,
    /// Set (by the worker) when the running handler set a label, which
    /// the worker then clears as the handler returns. Only the worker
    /// touches it.
    labelled: AtomicBool,
}

impl Record {
    fn new() -> Record {
        Record {
            handler: CachePadded::new(Running {
                word: AtomicU64::new(0),
                conn: AtomicU64::new(0),
                labelled: AtomicBool::new(false),
            }),
            tid: AtomicI32::new(0),
            released: AtomicBool::new(false),
            thread: Mutex::new(None),
            life: AtomicU32::new(status::LIFE_NONE),
            since_ns: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
            looked_word: AtomicU64::new(0),
            next_look_ns: AtomicU64::new(0),
            label: Mutex::new([0; status::LABEL_SIZE]),
        }
    }

    /// The worker, as its handler for `conn` starts at `now_ns`.
    fn begin_handler(&self, now_ns: u64, conn: Handle) {
        // Release: a snapshot that reads this value also sees the end of
        // the handler before (see `status`).
        self.handler.conn.store(conn.0, Ordering::Release);
        self.handler
            .word
            .store(now_ns.max(1) << 1, Ordering::SeqCst);
    }

    /// The worker, as its handler returns: true if the monitor counted it
    /// blocked (and released another thread in its place).
    fn end_handler(&self) -> bool {
        self.handler.word.swap(0, Ordering::SeqCst) & BLOCKED != 0
    }

    /// The handler running now, as `(word, started_ns)`, if one runs and
    /// is not counted blocked yet.
    fn running_handler(&self) -> Option<(u64, u64)> {
        let word = self.handler.word.load(Ordering::SeqCst);
        (word != 0 && word & BLOCKED == 0).then_some((word, word >> 1))
    }

    /// Whoever looks, at `now_ns`: counts the handler it saw as `word`
    /// blocked. False if that handler ended (or was counted) meanwhile:
    /// the worker's swap and this CAS agree on whether it was counted.
    fn mark_blocked(&self, word: u64, now_ns: u64) -> bool {
        // Before the CAS, which publishes it with the mark.
        self.blocked_ns.store(now_ns, Ordering::Relaxed);
        self.handler
            .word
            .compare_exchange(word, word | BLOCKED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

pub struct Workers {
    /// Connections waiting for a request, armed one-shot, plus the
    /// doorbell and the exit signal. Idle active workers wait here.
    pub poll: Epoll,
    /// Jobs that are not readiness: hand-backs, buffered input, fairness
    /// re-queues. FIFO. Capacity = the connection limit; a connection is in
    /// the queue at most once (only in state Queued), so a push never fails.
    queue: ArrayQueue<Job>,
    /// Rung (edge-triggered) when a job is queued, so one waiting worker
    /// takes it.
    doorbell: Waker,
    /// Level-triggered and never cleared once raised: every worker sees it.
    exit_signal: EventFd,
    exit: AtomicBool,
    records: Box<[Record]>,
    /// Threads to keep active (polling, or in a handler not counted
    /// blocked).
    pub(crate) target: usize,
    /// The most worker threads there may be.
    pub(crate) max: usize,
    active: CachePadded<AtomicUsize>,
    /// Worker threads alive, counted from their reservation to their exit
    /// (a spare idle for `SPARE_IDLE` exits, and every thread at the stop).
    spawned: AtomicUsize,
    /// Ids (record indices) no live thread has, lowest last.
    free_ids: Mutex<Vec<usize>>,
    /// Ids of spare threads asleep, most recent last.
    spares: Mutex<Vec<usize>>,
    /// Threads inside a handler.
    busy: CachePadded<AtomicUsize>,
    /// Handlers started since start; the monitor and shedding watch it.
    started: CachePadded<AtomicUsize>,
    /// Handlers counted blocked right now, and spares released for them.
    blocked_now: AtomicUsize,
    pub(crate) replaced: AtomicU64,
    /// When handlers were last looked at (see `monitor::look_if_due`).
    last_look: CachePadded<AtomicU64>,
    /// By id: the handle of the thread that has (or last had) the id.
    handles: Mutex<Vec<Option<JoinHandle<()>>>>,
    monitor: Mutex<Option<Thread>>,
    /// Timer and watch runs (ids) whose deadline passed, FIFO. Unbounded
    /// (any number of timers may expire at once), lock-free (crossbeam's
    /// segmented MPMC queue); taken after the connections' queue.
    timer_jobs: crossbeam_queue::SegQueue<u64>,
}

impl Workers {
    pub fn new(target: usize, max: usize, connection_limit: usize) -> io::Result<Workers> {
        let poll = Epoll::new()?;
        let doorbell = Waker::new()?;
        let exit_signal = EventFd::new()?;
        poll.add(doorbell.fd(), epoll::READABLE | epoll::EDGE, DOORBELL_TOKEN)?;
        poll.add(exit_signal.fd(), epoll::READABLE, EXIT_TOKEN)?;
        Ok(Workers {
            poll,
            queue: ArrayQueue::new(connection_limit.max(1)),
            doorbell,
            exit_signal,
            exit: AtomicBool::new(false),
            records: (0..max).map(|_| Record::new()).collect(),
            target: target.min(max),
            max,
            active: CachePadded::new(AtomicUsize::new(0)),
            spawned: AtomicUsize::new(0),
            free_ids: Mutex::new((0..max).rev().collect()),
            spares: Mutex::new(Vec::new()),
            busy: CachePadded::new(AtomicUsize::new(0)),
            started: CachePadded::new(AtomicUsize::new(0)),
            blocked_now: AtomicUsize::new(0),
            replaced: AtomicU64::new(0),
            last_look: CachePadded::new(AtomicU64::new(0)),
            handles: Mutex::new((0..max).map(|_| None).collect()),
            monitor: Mutex::new(None),
            timer_jobs: crossbeam_queue::SegQueue::new(),
        })
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// Handlers started since start.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Acquire)
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Worker threads alive.
    pub fn threads(&self) -> usize {
        self.spawned.load(Ordering::Acquire)
    }

    pub fn blocked_now(&self) -> usize {
        self.blocked_now.load(Ordering::Acquire)
    }

    /// Threads in a handler not counted blocked: the handlers a look may
    /// find blocked, and the active threads that are not free. (Read as
    /// two loads: a moment's skew only makes one look early or late.)
    pub fn running_handlers(&self) -> usize {
        self.busy().saturating_sub(self.blocked_now())
    }

    pub fn exiting(&self) -> bool {
        self.exit.load(Ordering::SeqCst)
    }

    /// Queues a job and rings the doorbell, so a waiting worker takes it.
    pub fn push(&self, job: Job) {
        let pushed = self.queue.push(job);
        debug_assert!(
            pushed.is_ok(),
            "run queue overflow: a connection was queued twice"
        );
        self.doorbell.wake();
    }

    /// Queues the run of timer or watch `id` and rings the doorbell.
    pub(crate) fn push_timer(&self, id: u64) {
        self.timer_jobs.push(id);
        self.doorbell.wake();
    }

    /// The next queued job, if any. Rings the doorbell again when more
    /// wait, so another worker helps with them.
    fn take_job(&self) -> Option<Job> {
        let job = self.queue.pop().or_else(|| {
            self.timer_jobs.pop().map(|id| Job {
                conn: Handle(id),
                work: Work::Timer,
            })
        })?;
        if !self.queue.is_empty() || !self.timer_jobs.is_empty() {
            self.doorbell.wake();
        }
        Some(job)
    }

    /// Reserves the id for a new thread, counted active and, from `now_ns`,
    /// idle; None at `max`.
    pub(crate) fn reserve_thread(&self, now_ns: u64) -> Option<usize> {
        let mut n = self.spawned.load(Ordering::Acquire);
        loop {
            if n >= self.max {
                return None;
            }
            match self
                .spawned
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.active.fetch_add(1, Ordering::AcqRel);
                    // Fewer than `max` threads live, so an id is free.
                    let id = self
                        .free_ids
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop()
                        .expect("a free id below the thread limit");
                    self.records[id].set_life(status::LIFE_IDLE, now_ns);
                    return Some(id);
                }
                Err(actual) => n = actual,
            }
        }
    }

    /// A thread could not be started: takes its reservation back.
    pub(crate) fn unreserve_thread(&self, id: usize) {
        self.records[id].set_life(status::LIFE_NONE, 0);
        self.free_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        self.spawned.fetch_sub(1, Ordering::AcqRel);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Worker `id` exits (a spare idle for `SPARE_IDLE`, or the pool's
    /// exit): its id is free again, and it is no longer counted alive. (A
    /// spare was not counted active; at the exit the count no longer
    /// matters.)
    fn thread_left(&self, id: usize) {
        self.records[id].tid.store(0, Ordering::Release);
        self.records[id].set_life(status::LIFE_NONE, 0);
        self.spawned.fetch_sub(1, Ordering::AcqRel);
        self.free_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
    }

    /// Keeps thread `id`'s handle, joining the one of the thread that had
    /// the id before (it has left, so the join is immediate), which frees
    /// that thread's stack.
    pub(crate) fn keep_handle(&self, id: usize, h: JoinHandle<()>) {
        let old = self.handles.lock().unwrap_or_else(|p| p.into_inner())[id].replace(h);
        if let Some(old) = old {
            let _ = old.join();
        }
    }

    /// The handles of every thread started, to join or to let go.
    pub(crate) fn take_handles(&self) -> Vec<JoinHandle<()>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    }

    pub(crate) fn set_monitor(&self, t: Thread) {
        *self.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    /// One active thread steps down to spare, if the active threads are
    /// above the target: true if the caller's did (it must then sleep as
    /// a spare). Every worker asks whenever it finds no work ready (and
    /// between jobs once the count is `far_above_target`), so whatever
    /// made the count go above the target (a blocked handler back while
    /// the thread released for it still runs, or back before the look
    /// that counted it released one) is undone at the next idle moment of
    /// any active thread.
    fn step_down(&self) -> bool {
        step_down(&self.active, self.target)
    }

    /// More threads active than the target.
    fn above_target(&self) -> bool {
        self.active.load(Ordering::Acquire) > self.target
    }

    /// So many more active than the target (twice as many) that a thread
    /// steps down even with work ready: threads back from blocking while
    /// the CPUs stay busy would otherwise pile up, and too many threads
    /// taking turns cost context switches.
    fn far_above_target(&self) -> bool {
        self.active.load(Ordering::Acquire) > 2 * self.target
    }

    /// A spare thread to run in place of a blocked handler: wakes the most
    /// recent spare, counted active. False if none sleeps.
    fn release_spare(&self) -> bool {
        let Some(id) = self.spares.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
            return false;
        };
        self.active.fetch_add(1, Ordering::AcqRel);
        let rec = &self.records[id];
        rec.released.store(true, Ordering::SeqCst);
        unpark(&rec.thread);
        true
    }

    /// Stops the pool: every worker leaves once its current job is done.
    pub fn request_exit(&self) {
        self.exit.store(true, Ordering::SeqCst);
        self.exit_signal.signal();
        for rec in self.records.iter() {
            unpark(&rec.thread);
        }
        unpark(&self.monitor);
    }
}

/// Takes one from `active` if it is above `target`; true if it did.
fn step_down(active: &AtomicUsize, target: usize) -> bool {
    let mut now = active.load(Ordering::Acquire);
    loop {
        if now <= target {
            return false;
        }
        match active.compare_exchange(now, now - 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => now = actual,
        }
    }
}

/// Unparks the thread kept in `thread`, if one is.
fn unpark(thread: &Mutex<Option<Thread>>) {
    if let Some(t) = thread.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        t.unpark();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model check of the pool's count of active threads, on the
    //! production `Record` operations.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

    use super::*;
    use crate::sync::model;
    use loom::sync::Arc;
    use loom::thread;

    /// Property: a handler ending while someone counts it blocked is counted
    /// at most once, and the count of active threads comes back to where it
    /// was: either the look counts it (active - 1) and the worker, seeing
    /// the mark as it ends, counts itself back (active + 1), or the look
    /// finds it ended and does nothing. A count that drifts would, over
    /// time, leave every thread asleep as a spare with requests waiting
    /// (which a first version of this pool did).
    #[test]
    fn loom_a_handler_is_counted_blocked_at_most_once() {
        model("handler end vs blocked count", || {
            let rec = Arc::new(Record::new());
            let active = Arc::new(AtomicUsize::new(1));
            let blocked = Arc::new(AtomicUsize::new(0));
            rec.begin_handler(5, Handle(1 << 32));

            let (r, a, b) = (Arc::clone(&rec), Arc::clone(&active), Arc::clone(&blocked));
            let looker = thread::spawn(move || {
                let Some((word, _)) = r.running_handler() else {
                    return false;
                };
                if !r.mark_blocked(word, 7) {
                    return false;
                }
                a.fetch_sub(1, Ordering::AcqRel);
                b.fetch_add(1, Ordering::AcqRel);
                true
            });
            let counted = rec.end_handler();
            if counted {
                blocked.fetch_sub(1, Ordering::AcqRel);
                active.fetch_add(1, Ordering::AcqRel);
            }
            let marked = looker.join().unwrap();
            assert_eq!(marked, counted, "the look and the worker disagree");
            assert_eq!(active.load(Ordering::SeqCst), 1);
            assert_eq!(blocked.load(Ordering::SeqCst), 0);
            assert!(rec.running_handler().is_none());
        });
    }

    /// Property: however the look that counts a handler blocked, the
    /// release of a spare in its place and the handler's return
    /// interleave, once every thread has passed an idle point (where it
    /// steps down if the active threads are above the target) the count is
    /// back at the target. Without the idle-point step-down, a handler
    /// that returns between the look's count and its release stays active
    /// beside the spare, one thread above the target for good (which a
    /// benchmark found as a third thread polling on two CPUs).
    #[test]
    fn loom_the_active_count_comes_back_to_the_target() {
        model("blocked count, spare release and return", || {
            let target = 1;
            let rec = Arc::new(Record::new());
            let active = Arc::new(AtomicUsize::new(1));
            rec.begin_handler(5, Handle(1 << 32));

            let (r, a) = (Arc::clone(&rec), Arc::clone(&active));
            let looker = thread::spawn(move || {
                let Some((word, _)) = r.running_handler() else {
                    return;
                };
                if !r.mark_blocked(word, 7) {
                    return;
                }
                a.fetch_sub(1, Ordering::AcqRel);
                // The spare released in its place, counted active, then at
                // its first idle point.
                a.fetch_add(1, Ordering::AcqRel);
                step_down(&a, target);
            });
            if rec.end_handler() {
                active.fetch_add(1, Ordering::AcqRel);
            }
            step_down(&active, target);
            looker.join().unwrap();
            assert_eq!(active.load(Ordering::SeqCst), target);
        });
    }
}

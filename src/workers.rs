//! The worker pool: a fixed set of threads that run the host's handler, fed
//! by a lock-free run queue.
//!
//! Hand-off protocol (a Dekker-style pairing, both sides SeqCst):
//! - a producer pushes a job, then looks for a worker marked asleep and
//!   unparks it;
//! - a worker with nothing to do marks itself asleep, then looks at the queue
//!   once more before parking.
//!
//! One of the two always sees the other, so a job never waits while a worker
//! sleeps. A stale unpark only makes one `park` return early.

use crate::conn::{Handle, State};
use crate::runtime::{mark_current_thread, Runtime};
use crate::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use crate::sync::{ArrayQueue, Mutex, Parker, Unparker};
use crossbeam_utils::CachePadded;
use libc::c_int;
use std::sync::Arc;

/// One unit of work: run the handler for this connection.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub conn: Handle,
    pub reason: c_int,
}

/// A connection that keeps bringing buffered input runs at most this many
/// handler calls in a row before it goes to the back of the queue.
const MAX_CONSECUTIVE_RUNS: u32 = 16;

struct Sleeper {
    asleep: CachePadded<AtomicBool>,
    unparker: Mutex<Option<Unparker>>,
}

pub struct Workers {
    /// Readable connections waiting for a worker, FIFO. Capacity = the
    /// connection limit; a connection is in the queue at most once (only in
    /// state Queued), so a push never fails.
    queue: ArrayQueue<Job>,
    sleepers: Box<[Sleeper]>,
    /// Workers inside a job. Read by admission and stats.
    busy: CachePadded<AtomicUsize>,
    /// Jobs taken from the queue since start; the event thread watches it to
    /// tell a stalled pool from a merely saturated one.
    taken: CachePadded<AtomicUsize>,
    exit: AtomicBool,
}

impl Workers {
    pub fn new(count: usize, connection_limit: usize) -> Workers {
        Workers {
            queue: ArrayQueue::new(connection_limit.max(1)),
            sleepers: (0..count)
                .map(|_| Sleeper {
                    asleep: CachePadded::new(AtomicBool::new(false)),
                    unparker: Mutex::new(None),
                })
                .collect(),
            busy: CachePadded::new(AtomicUsize::new(0)),
            taken: CachePadded::new(AtomicUsize::new(0)),
            exit: AtomicBool::new(false),
        }
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a job and wakes a sleeping worker if there is one.
    pub fn push(&self, job: Job) {
        let pushed = self.queue.push(job);
        debug_assert!(
            pushed.is_ok(),
            "run queue overflow: a connection was queued twice"
        );
        fence(Ordering::SeqCst);
        self.wake_one();
    }

    fn wake_one(&self) {
        for s in self.sleepers.iter() {
            if s.asleep.load(Ordering::SeqCst)
                && s.asleep
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                if let Some(u) = s
                    .unparker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    u.unpark();
                }
                return;
            }
        }
    }

    pub fn request_exit(&self) {
        self.exit.store(true, Ordering::SeqCst);
        for s in self.sleepers.iter() {
            s.asleep.store(false, Ordering::SeqCst);
            if let Some(u) = s
                .unparker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                u.unpark();
            }
        }
    }

    /// Lets producers wake worker `id`, which sleeps on `parker`. Called by
    /// the worker before its first `next_job`.
    fn register(&self, id: usize, parker: &Parker) {
        *self.sleepers[id]
            .unparker
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(parker.unparker().clone());
    }

    /// Takes the next job, sleeping while there is none. None: exit.
    fn next_job(&self, id: usize, parker: &Parker) -> Option<Job> {
        let me = &self.sleepers[id];
        loop {
            if let Some(job) = self.queue.pop() {
                self.taken.fetch_add(1, Ordering::Release);
                return Some(job);
            }
            if self.exit.load(Ordering::SeqCst) {
                return None;
            }
            me.asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.queue.is_empty() || self.exit.load(Ordering::SeqCst) {
                me.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            parker.park();
            me.asleep.store(false, Ordering::SeqCst);
        }
    }
}

pub fn worker_main(rt: Arc<Runtime>, id: usize) {
    mark_current_thread(&rt);
    let parker = Parker::new();
    rt.workers.register(id, &parker);
    while let Some(job) = rt.workers.next_job(id, &parker) {
        rt.workers.busy.fetch_add(1, Ordering::AcqRel);
        if let Err(panic) = crate::failure::catch(|| run_job(&rt, job)) {
            // Fail-stop: the job's connection may be owned by nobody now;
            // the stop closes it (see `failure`). This worker carries on
            // until the stop ends it, serving what was already readable.
            rt.internal_error("a worker", &panic);
        }
        rt.workers.busy.fetch_sub(1, Ordering::AcqRel);
        rt.capacity_freed();
    }
    let (lock, cv) = &rt.workers_running;
    *lock.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    cv.notify_all();
}

/// Runs the handler for `job.conn` until the host disposes of it.
fn run_job(rt: &Runtime, job: Job) {
    let h = job.conn;
    let Some(slot) = rt.table.slot(h) else { return };
    if slot.transition(h, State::Queued, State::Handler).is_err() {
        return; // closed by a forced stop while it waited
    }
    let fd = slot.fd();
    let mut reason = job.reason;
    for _ in 0..MAX_CONSECUTIVE_RUNS {
        // SAFETY: the handler is the host's, called with the arguments the
        // header documents; `rt` outlives the call (we hold an Arc).
        unsafe { (rt.config.handler)(rt.config.user_data.0, rt.as_c_ptr(), h.0, fd, reason) };
        match rt.finish_handler(h, slot) {
            Some(again) => reason = again,
            None => return,
        }
    }
    // Fairness: the handler state is Handler again; queue it behind others.
    if slot.transition(h, State::Handler, State::Queued).is_ok() {
        rt.workers.push(Job { conn: h, reason });
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of the sleep/wake protocol, on the production `push`,
    //! `next_job` and `request_exit`, with loom's parker.
    //!
    //! A worker parked for good while every other thread has finished is a
    //! deadlock, which loom reports: so "the model completes" means no
    //! wake-up was lost in any interleaving.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

    use super::*;
    use crate::sync::{model, model_bounded};
    use loom::sync::Arc;
    use loom::thread;

    fn job(index: u32) -> Job {
        Job {
            conn: Handle::new(index, 1),
            reason: 0,
        }
    }

    /// Worker `id`'s thread: registers its parker as `worker_main` does,
    /// then takes `jobs` jobs.
    fn worker(workers: &Arc<Workers>, id: usize, jobs: usize) -> thread::JoinHandle<Vec<u32>> {
        let w = Arc::clone(workers);
        thread::spawn(move || {
            let parker = Parker::new();
            w.register(id, &parker);
            (0..jobs)
                .map(|_| {
                    w.next_job(id, &parker)
                        .expect("a job, not exit")
                        .conn
                        .index()
                })
                .collect()
        })
    }

    /// Property: a job pushed while the worker is going to sleep is never
    /// left in the queue while the worker sleeps: the worker marks itself
    /// asleep and looks at the queue again, the producer pushes and looks
    /// for a sleeper, and one of the two always sees the other.
    #[test]
    fn loom_pushed_job_wakes_the_sleeping_worker() {
        model("push vs sleep, one worker", || {
            let workers = Arc::new(Workers::new(1, 1));
            let w = worker(&workers, 0, 1);
            workers.push(job(7));
            assert_eq!(w.join().unwrap(), [7]);
            assert_eq!(workers.queued(), 0);
        });
    }

    /// Property: with two workers going to sleep and two jobs pushed, both
    /// jobs are taken: each push wakes a sleeper or is seen by a worker that
    /// has not slept yet, and a wake-up meant for one worker is never spent
    /// while the other sleeps on a queued job.
    ///
    /// Three threads with loops, a mutex and two parkers: every interleaving
    /// is out of reach (an unbounded run did not end in a quarter of an
    /// hour), so this model is bounded to 4 preemptions per execution
    /// (about 27,000 executions, a few seconds).
    #[test]
    fn loom_two_jobs_reach_two_sleeping_workers() {
        model_bounded("push vs sleep, two workers", 4, || {
            let workers = Arc::new(Workers::new(2, 2));
            let w0 = worker(&workers, 0, 1);
            let w1 = worker(&workers, 1, 1);
            workers.push(job(1));
            workers.push(job(2));
            let mut taken = [w0.join().unwrap(), w1.join().unwrap()].concat();
            taken.sort_unstable();
            assert_eq!(taken, [1, 2]);
            assert_eq!(workers.taken(), 2);
        });
    }

    /// Property: a stop requested while a worker goes to sleep always ends
    /// the worker: `next_job` returns None instead of parking for good.
    #[test]
    fn loom_exit_request_ends_a_sleeping_worker() {
        model("exit vs sleep", || {
            let workers = Arc::new(Workers::new(1, 1));
            let w = Arc::clone(&workers);
            let worker = thread::spawn(move || {
                let parker = Parker::new();
                w.register(0, &parker);
                w.next_job(0, &parker).map(|j| j.conn)
            });
            workers.request_exit();
            assert_eq!(worker.join().unwrap(), None);
        });
    }
}

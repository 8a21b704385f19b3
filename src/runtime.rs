//! The runtime: what its threads share, and its lifecycle (create, register
//! listeners, start, stop).

use crate::admission::{self, Load};
use crate::config::Config;
use crate::conn::Table;
use crate::error::Error;
use crate::event_loop;
use crate::message::Msg;
use crate::stats::Counters;
use crate::sys::{self, epoll::Epoll, socket};
use crate::timeouts::Kind;
use crate::wake::{WakePlan, Waker};
use crate::workers::Workers;
use crossbeam_queue::SegQueue;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where a runtime is in its life. Only moves forward.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Created = 0,
    Running = 1,
    Stopping = 2,
    Stopped = 3,
}

/// A runtime's shared state. The C side's `evmpm_runtime *` points at this
/// (an `Arc` the host holds one count of), so callbacks from a handler that
/// outlives `evmpm_destroy` still see a valid runtime.
pub struct Runtime {
    pub config: Config,
    pub table: Table,
    pub epoll: Epoll,
    pub waker: Waker,
    /// Messages to the event thread. Unbounded and lock-free (Michael-Scott
    /// style segmented queue): a worker never waits on the event thread.
    pub inbox: SegQueue<Msg>,
    pub workers: Workers,
    pub counters: Counters,
    phase: AtomicU8,
    /// Open connections in every state, and those of them lingering.
    pub open: AtomicU64,
    pub lingering: AtomicU64,
    /// The event thread's planned wake-up. A thread that queues a timeout
    /// earlier than it wakes the event thread (see `nudge`).
    pub wake_plan: WakePlan,
    /// Set by the event thread while it is not accepting (admission, limit,
    /// descriptor back-off or stop).
    accept_paused: AtomicBool,
    /// False once the event thread has exited; closes and writes no longer
    /// hand connections to it.
    pub event_thread_alive: AtomicBool,
    pub listeners: Mutex<Vec<i32>>,
    pub epoch: Instant,
    threads: Mutex<Threads>,
    /// Counts worker threads that have not exited; `stop` waits on it.
    pub workers_running: (Mutex<usize>, Condvar),
}

#[derive(Default)]
struct Threads {
    event: Option<JoinHandle<bool>>,
    workers: Vec<JoinHandle<()>>,
}

thread_local! {
    /// The runtime whose thread this is, if any: `stop` must not wait for
    /// itself.
    static CURRENT: Cell<*const Runtime> = const { Cell::new(std::ptr::null()) };
}

pub fn mark_current_thread(rt: &Runtime) {
    CURRENT.with(|c| c.set(rt as *const Runtime));
}

impl Runtime {
    pub fn new(config: Config) -> Result<Arc<Runtime>, Error> {
        let epoll = Epoll::new().map_err(|e| Error::from_io(&e))?;
        let waker = Waker::new().map_err(|e| Error::from_io(&e))?;
        epoll
            .add(waker.fd(), sys::epoll::READABLE, event_loop::WAKER_TOKEN)
            .map_err(|e| Error::from_io(&e))?;
        Ok(Arc::new(Runtime {
            table: Table::new(config.connection_limit as u32),
            workers: Workers::new(config.workers, config.connection_limit),
            config,
            epoll,
            waker,
            inbox: SegQueue::new(),
            counters: Counters::default(),
            phase: AtomicU8::new(Phase::Created as u8),
            open: AtomicU64::new(0),
            lingering: AtomicU64::new(0),
            wake_plan: WakePlan::new(),
            accept_paused: AtomicBool::new(true),
            event_thread_alive: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            threads: Mutex::new(Threads::default()),
            workers_running: (Mutex::new(0), Condvar::new()),
        }))
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Created,
            1 => Phase::Running,
            2 => Phase::Stopping,
            _ => Phase::Stopped,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.phase() as u8 >= Phase::Stopping as u8
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn as_c_ptr(&self) -> *mut Runtime {
        self as *const Runtime as *mut Runtime
    }

    pub fn is_own_thread(&self) -> bool {
        CURRENT.with(|c| std::ptr::eq(c.get(), self))
    }

    pub fn accept_paused(&self) -> bool {
        self.accept_paused.load(Ordering::Acquire)
    }

    pub fn set_accept_paused(&self, paused: bool) {
        self.accept_paused.store(paused, Ordering::Release);
    }

    pub fn load(&self) -> Load {
        let busy = self.workers.busy();
        Load {
            open: self.open.load(Ordering::Acquire) as usize,
            lingering: self.lingering.load(Ordering::Acquire) as usize,
            workers: self.config.workers,
            idle_workers: self.config.workers.saturating_sub(busy),
        }
    }

    pub fn admits(&self) -> bool {
        admission::admits(
            self.load(),
            self.config.factor,
            self.config.connection_limit,
        )
    }

    /// Called when a worker goes idle or a connection closes: if accepting
    /// is paused and would now be admitted, the event thread must resume it.
    pub fn capacity_freed(&self) {
        if self.accept_paused() && !self.is_stopping() && self.admits() {
            self.waker.wake();
        }
    }

    /// Called after queueing a message for the event thread that it need not
    /// act on at once: wakes it only if it would otherwise sleep past the
    /// deadline the message implies.
    pub fn nudge(&self, kind: Kind) {
        let deadline = || self.now_ns().saturating_add(self.timeout_ns(kind));
        if self.wake_plan.must_wake(deadline) {
            self.waker.wake();
        }
    }

    pub fn timeout_ns(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Reading => self.config.read_ns,
            Kind::Keepalive => self.config.keepalive_ns,
            Kind::Write => self.config.write_ns,
            Kind::Linger => self.config.linger_ns,
            Kind::Header => self.config.header_ns,
        }
    }

    pub fn register_listener(&self, fd: i32) -> Result<(), Error> {
        if self.is_stopping() {
            return Err(Error::Stopped);
        }
        if fd < 0 {
            return Err(Error::NotSocket);
        }
        match socket::check_listener(fd) {
            socket::ListenerCheck::Ok => {}
            socket::ListenerCheck::NotASocket => return Err(Error::NotSocket),
            socket::ListenerCheck::NotListening => return Err(Error::NotListener),
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if listeners.contains(&fd) {
            return Err(Error::Exists);
        }
        socket::set_nonblocking(fd).map_err(|e| Error::from_io(&e))?;
        listeners.push(fd);
        drop(listeners);
        // A running event thread picks the new listener up on its next turn.
        if self.phase() == Phase::Running {
            self.inbox.push(Msg::ListenersChanged);
            self.waker.wake();
        }
        Ok(())
    }

    pub fn start(self: &Arc<Self>) -> Result<(), Error> {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        match self.phase() {
            Phase::Created => {}
            Phase::Running => return Err(Error::State),
            _ => return Err(Error::Stopped),
        }
        *self
            .workers_running
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = self.config.workers;
        for id in 0..self.config.workers {
            let rt = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("evmpm-worker-{id}"))
                .stack_size(self.config.stack_size)
                .spawn(move || crate::workers::worker_main(rt, id));
            match spawned {
                Ok(h) => threads.workers.push(h),
                Err(e) => {
                    // Undo: let the spawned workers exit, report the cause.
                    self.set_phase(Phase::Stopped);
                    self.workers.request_exit();
                    let spawned_count = threads.workers.len();
                    *self
                        .workers_running
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) -= self.config.workers - spawned_count;
                    for h in threads.workers.drain(..) {
                        let _ = h.join();
                    }
                    return Err(Error::from_io(&e));
                }
            }
        }
        self.set_phase(Phase::Running);
        self.event_thread_alive.store(true, Ordering::Release);
        let rt = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("evmpm-event".into())
            .spawn(move || event_loop::run(rt));
        match spawned {
            Ok(h) => threads.event = Some(h),
            Err(e) => {
                self.event_thread_alive.store(false, Ordering::Release);
                drop(threads);
                let _ = self.stop(0);
                return Err(Error::from_io(&e));
            }
        }
        Ok(())
    }

    /// Graceful stop; see `evmpm_stop` in the header for the contract.
    pub fn stop(&self, timeout_ms: u32) -> Result<(), Error> {
        if self.is_own_thread() {
            return Err(Error::Thread);
        }
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        match self.phase() {
            Phase::Created => {
                self.set_phase(Phase::Stopped);
                return Ok(());
            }
            Phase::Running => {}
            Phase::Stopping | Phase::Stopped => return Err(Error::Stopped),
        }
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        self.set_phase(Phase::Stopping);
        self.inbox.push(Msg::Stop {
            deadline_ns: self.now_ns() + u64::from(timeout_ms) * 1_000_000,
        });
        self.waker.wake();
        let mut forced = false;
        if let Some(h) = threads.event.take() {
            // The event thread enforces the deadline itself, so this join
            // returns by then.
            forced = h.join().unwrap_or(true);
        }
        self.workers.request_exit();
        // Workers still inside a handler had their sockets shut down at the
        // deadline; give them a moment to notice, then stop waiting for them.
        // A worker outside any handler only has to be scheduled to exit, so
        // it is waited for however loaded the machine is: only a handler can
        // be stuck, and only a stuck handler makes the stop time out.
        let grace = deadline.max(Instant::now()) + Duration::from_millis(100);
        let (lock, cv) = &self.workers_running;
        let mut running = lock.lock().unwrap_or_else(|p| p.into_inner());
        while *running > 0 {
            let now = Instant::now();
            if now >= grace && self.workers.busy() > 0 {
                break;
            }
            // Re-check `busy` at least this often: it is not under the lock.
            let slice = grace
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(20));
            running = cv
                .wait_timeout(running, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let stuck = *running > 0;
        drop(running);
        if stuck {
            // Detach: those threads hold their own reference to the runtime.
            threads.workers.clear();
        } else {
            for h in threads.workers.drain(..) {
                let _ = h.join();
            }
        }
        event_loop::abort_leftovers(self);
        self.set_phase(Phase::Stopped);
        if forced || stuck {
            Err(Error::TimedOut)
        } else {
            Ok(())
        }
    }
}

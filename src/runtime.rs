//! The runtime: what its threads share, and its lifecycle (create, register
//! listeners, start, stop).

use crate::admission::{self, Load};
use crate::config::Config;
use crate::conn::handle::RuntimeTags;
use crate::conn::{Handle, State, Table};
use crate::error::Error;
use crate::event_loop;
use crate::failure::FaultPoint;
use crate::ffi::types::{
    evmpm_runtime, evmpm_thread_fn, EVMPM_LOG_ERROR, EVMPM_THREAD_EVENT, EVMPM_TIMEOUT_NONE,
};
use crate::inbox::Inbox;
use crate::listener::{Listener, Listeners};
use crate::message::{CloseHow, Msg};
use crate::stats::Counters;
use crate::sys::{self, epoll::Epoll, socket};
use crate::timeouts::Kind;
use crate::wake::{WakePlan, Waker};
use crate::workers::Workers;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
/// (an `Arc` the host holds one count of, each runtime thread another);
/// `evmpm_destroy` joins every thread before it drops the host's count.
pub struct Runtime {
    pub config: Config,
    pub table: Table,
    pub epoll: Epoll,
    pub waker: Waker,
    /// Messages to the event thread. Unbounded and lock-free: a worker
    /// never waits on the event thread (see `inbox`).
    pub inbox: Inbox,
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
    pub listeners: Listeners,
    pub epoch: Instant,
    threads: Mutex<Threads>,
    /// Counts worker threads that have not exited; `stop` waits on it.
    pub workers_running: (Mutex<usize>, Condvar),
    /// Set once an internal error made the runtime stop itself.
    failed: AtomicBool,
    /// Set by `stop` once every runtime thread has exited or been given up
    /// on: from then on host calls are refused (see `HostCall`).
    sealed: AtomicBool,
    /// Host calls in progress on threads that are not this runtime's.
    host_calls: AtomicUsize,
    /// Host mistakes already logged (one line per kind and runtime).
    pub logged_bad_verdict: AtomicBool,
    /// Set once a handshake step returned a value it may not (logged once).
    pub logged_bad_handshake: AtomicBool,
    /// Where a test makes evmpm panic (see `failure`).
    pub faults: FaultPoint,
    /// Timers and watched host descriptors.
    pub timers: crate::timers::Timers,
}

#[derive(Default)]
struct Threads {
    event: Option<JoinHandle<bool>>,
    monitor: Option<JoinHandle<()>>,
    /// True from start until the stop has joined or let go the workers.
    workers_started: bool,
}

thread_local! {
    /// The runtime whose thread this is, if any, for the thread's life.
    static OWN: Cell<*const Runtime> = const { Cell::new(std::ptr::null()) };
    /// Each runtime whose host call is on this thread's stack, innermost
    /// last: a callback of that runtime may be running. `stop` and `destroy`
    /// refuse to run for these and for `OWN`: they would wait for
    /// themselves, or free the runtime under a caller.
    static INSIDE: RefCell<Vec<*const Runtime>> = const { RefCell::new(Vec::new()) };
    /// True on an event thread: host code that may block never runs here
    /// when the host asked so (`close_on_worker`).
    static EVENT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as an event thread, for good.
pub fn mark_event_thread() {
    EVENT.with(|c| c.set(true));
}

/// True on an event thread.
pub fn on_event_thread() -> bool {
    EVENT.with(Cell::get)
}

/// Marks the calling thread as one of `rt`'s own, for good.
pub fn mark_current_thread(rt: &Runtime) {
    OWN.with(|c| c.set(rt as *const Runtime));
}

/// A host call in progress: marks the thread as inside the runtime and,
/// on a thread that is not the runtime's, counts the call so `stop` can wait
/// for it before its final sweep.
pub struct HostCall<'a> {
    rt: &'a Runtime,
    counted: bool,
}

impl<'a> HostCall<'a> {
    /// Enters a host call; Stopped once `stop` has sealed the runtime.
    pub fn enter(rt: &'a Runtime) -> Result<HostCall<'a>, Error> {
        let counted = !rt.is_own_thread();
        if counted {
            // Dekker with `stop`'s seal: either `stop` sees this count and
            // waits for the call to end, or this call sees the seal.
            rt.host_calls.fetch_add(1, Ordering::SeqCst);
            if rt.sealed.load(Ordering::SeqCst) {
                rt.host_calls.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::Stopped);
            }
        }
        INSIDE.with(|v| v.borrow_mut().push(rt as *const Runtime));
        Ok(HostCall { rt, counted })
    }
}

impl Drop for HostCall<'_> {
    fn drop(&mut self) {
        INSIDE.with(|v| v.borrow_mut().pop());
        if self.counted {
            self.rt.host_calls.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Runtime {
    pub fn new(config: Config) -> Result<Arc<Runtime>, Error> {
        crate::failure::install_hook();
        let epoll = Epoll::new().map_err(|e| Error::from_io(&e))?;
        let waker = Waker::new().map_err(|e| Error::from_io(&e))?;
        epoll
            .add(waker.fd(), sys::epoll::READABLE, event_loop::WAKER_TOKEN)
            .map_err(|e| Error::from_io(&e))?;
        let workers = Workers::new(config.running, config.workers, config.connection_limit)
            .map_err(|e| Error::from_io(&e))?;
        // More runtimes alive at once than handles can tell apart.
        let tag = RuntimeTags::take().ok_or(Error::Os(libc::EMFILE))?;
        let timers = crate::timers::Timers::new(&workers.poll, tag, config.connection_limit)
            .map_err(|e| {
                RuntimeTags::give_back(tag);
                Error::from_io(&e)
            })?;
        Ok(Arc::new(Runtime {
            table: Table::tagged(config.connection_limit as u32, tag),
            workers,
            config,
            epoll,
            waker,
            inbox: Inbox::new(config.connection_limit),
            counters: Counters::default(),
            phase: AtomicU8::new(Phase::Created as u8),
            open: AtomicU64::new(0),
            lingering: AtomicU64::new(0),
            wake_plan: WakePlan::new(),
            accept_paused: AtomicBool::new(true),
            event_thread_alive: AtomicBool::new(false),
            listeners: Listeners::new(),
            epoch: Instant::now(),
            threads: Mutex::new(Threads::default()),
            workers_running: (Mutex::new(0), Condvar::new()),
            failed: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            host_calls: AtomicUsize::new(0),
            logged_bad_verdict: AtomicBool::new(false),
            logged_bad_handshake: AtomicBool::new(false),
            faults: FaultPoint::default(),
            timers,
        }))
    }

    /// Tells the host's log callback, if any.
    pub fn log(&self, level: libc::c_int, message: &str) {
        let Some(log) = self.config.log else { return };
        let text = std::ffi::CString::new(message.replace('\0', " "))
            .unwrap_or_else(|_| c"(unprintable message)".into());
        // SAFETY: the host's callback with the documented arguments; the
        // message lives until it returns.
        unsafe { log(self.config.user_data.0, level, text.as_ptr()) };
    }

    /// Runs the host's thread hook `hook` (`on_thread_start` or
    /// `on_thread_stop`), if it set one, on the calling thread: `kind` is an
    /// `EVMPM_THREAD_*` value, `id` the worker's id (0 for the event thread).
    pub fn thread_hook(&self, hook: evmpm_thread_fn, kind: libc::c_int, id: usize) {
        let Some(hook) = hook else { return };
        // SAFETY: the host's callback with the arguments the header
        // documents; the runtime outlives the call (the caller holds it).
        unsafe { hook(self.config.user_data.0, self.as_c_ptr(), kind, id as u32) };
    }

    /// An internal panic was caught: count it, say so, and stop the runtime
    /// at once (see `failure`). Callable from any thread, any number of
    /// times.
    pub fn internal_error(&self, place: &str, panic: &str) {
        Counters::bump(&self.counters.internal_errors);
        let first = !self.failed.swap(true, Ordering::AcqRel);
        let outcome = if first {
            "the runtime stops itself"
        } else {
            "the runtime is already stopping"
        };
        self.log(
            EVMPM_LOG_ERROR,
            &format!("evmpm internal error in {place}: {panic}; {outcome}"),
        );
        // A stop already under way gets a deadline of now; a running
        // runtime starts stopping. `stop` joins the threads later.
        if self
            .phase
            .compare_exchange(
                Phase::Running as u8,
                Phase::Stopping as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
            || self.phase() == Phase::Stopping
        {
            self.inbox.push(Msg::Stop {
                deadline_ns: self.now_ns(),
            });
            self.waker.wake();
        }
    }

    /// The snapshot behind `evmpm_get_stats`.
    pub fn stats(&self) -> crate::ffi::types::evmpm_stats {
        let gauges = crate::stats::Gauges {
            workers: self.config.workers,
            workers_busy: self.workers.busy(),
            accepting_paused: self.accept_paused(),
            worker_threads: self.workers.threads(),
            handlers_blocked: self.workers.blocked_now(),
            blocked_replaced: self.workers.replaced.load(Ordering::Relaxed),
        };
        let mut s = crate::stats::snapshot(&self.table, &self.counters, gauges);
        s.timers = self.timers.live() as u64;
        s.timer_runs = self.timers.runs();
        s
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
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

    /// The pointer the host holds (see `ffi::api`).
    pub fn as_c_ptr(&self) -> *mut evmpm_runtime {
        self as *const Runtime as *mut evmpm_runtime
    }

    /// True on the runtime's own threads.
    pub fn is_own_thread(&self) -> bool {
        OWN.with(|c| std::ptr::eq(c.get(), self))
    }

    /// True on the runtime's own threads and inside any host call of it,
    /// whatever thread it is on (a callback of this runtime may be running).
    pub fn is_inside(&self) -> bool {
        self.is_own_thread() || INSIDE.with(|v| v.borrow().iter().any(|&p| std::ptr::eq(p, self)))
    }

    pub fn accept_paused(&self) -> bool {
        self.accept_paused.load(Ordering::SeqCst)
    }

    pub fn set_accept_paused(&self, paused: bool) {
        self.accept_paused.store(paused, Ordering::SeqCst);
    }

    pub fn load(&self) -> Load {
        let busy = self.workers.busy();
        Load {
            open: self.open.load(Ordering::Acquire) as usize,
            lingering: self.lingering.load(Ordering::Acquire) as usize,
            workers: self.config.workers,
            // Threads not in a handler, and threads not started yet.
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
        // The change that freed capacity (a connection closed, a worker left
        // its handler) comes before this look at the pause: see the
        // event thread's `sync_listeners`.
        fence(Ordering::SeqCst);
        if self.accept_paused() && !self.is_stopping() && self.admits() {
            self.waker.wake();
        }
    }

    /// Called after queueing a message for the event thread that it need not
    /// act on at once: wakes it only if it would otherwise sleep past the
    /// deadline the message implies.
    pub fn nudge(&self, timeout_ns: u64) {
        let deadline = || self.now_ns().saturating_add(timeout_ns);
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

    /// Runs `listener`'s accept hook for `h`, just accepted from `peer`
    /// (event thread). True: keep it.
    pub fn accept_hook(
        &self,
        h: Handle,
        slot: &crate::conn::Slot,
        listener: &Listener,
        peer: &socket::Address,
    ) -> bool {
        let Some(hook) = listener.on_accept else {
            return true;
        };
        let info = crate::listener::conn_info(listener, slot.fd(), peer);
        // SAFETY: the host's hook with the documented arguments; `info`
        // lives until it returns.
        let verdict = unsafe { hook(listener.user.0, self.as_c_ptr(), h.0, slot.fd(), &info) };
        verdict == crate::ffi::types::EVMPM_ACCEPT_CONTINUE
    }

    /// `evmpm_conn_get_info` for `h`, from any thread holding the handle.
    pub fn conn_info(&self, h: Handle) -> Result<crate::ffi::types::evmpm_conn_info, Error> {
        let slot = self.slot_for(h)?;
        slot.with_pinned(h, |slot| {
            let (bytes, len) = slot.peer();
            let peer = socket::Address::from_bytes(&bytes[..len]);
            self.listeners
                .get(slot.listener())
                .map(|l| crate::listener::conn_info(l, slot.fd(), &peer))
        })
        .map_err(|_| Error::Stale)?
        .ok_or(Error::Stale)
    }

    /// A connection's timeout of `kind`, as its slot says (the listener's,
    /// or the host's per-connection value).
    pub fn conn_timeout_ns(&self, slot: &crate::conn::Slot, kind: Kind) -> u64 {
        crate::config::timeout_ns(slot.timeout_ms(kind as usize))
    }

    pub fn register_listener(
        &self,
        fd: i32,
        lc: &crate::ffi::types::evmpm_listener_config,
    ) -> Result<(), Error> {
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
        self.listeners.add(
            || {
                let listener = Listener::new(fd, lc, &self.config)?;
                socket::set_nonblocking(fd).map_err(|e| Error::from_io(&e))?;
                Ok(listener)
            },
            fd,
        )?;
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
        for _ in 0..self.workers.target {
            if let Err(e) = self.spawn_worker() {
                // Undo: let the spawned workers exit, report the cause.
                self.set_phase(Phase::Stopped);
                self.workers.request_exit();
                for h in self.workers.take_handles() {
                    let _ = h.join();
                }
                return Err(Error::from_io(&e));
            }
        }
        threads.workers_started = true;
        let rt = Arc::clone(self);
        match std::thread::Builder::new()
            .name("evmpm-monitor".into())
            .stack_size(256 << 10)
            .spawn(move || crate::workers::monitor_main(rt))
        {
            Ok(h) => threads.monitor = Some(h),
            Err(e) => {
                self.set_phase(Phase::Stopped);
                self.workers.request_exit();
                for h in self.workers.take_handles() {
                    let _ = h.join();
                }
                return Err(Error::from_io(&e));
            }
        }
        self.set_phase(Phase::Running);
        self.event_thread_alive.store(true, Ordering::Release);
        let rt = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("evmpm-event".into())
            .spawn(move || {
                mark_current_thread(&rt);
                rt.thread_hook(rt.config.thread_start, EVMPM_THREAD_EVENT, 0);
                let forced = event_loop::run(Arc::clone(&rt));
                rt.thread_hook(rt.config.thread_stop, EVMPM_THREAD_EVENT, 0);
                forced
            });
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

    /// Starts one more worker thread, counted active. Fails at the most
    /// threads there may be, or when the OS refuses a thread.
    fn spawn_worker(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(id) = self.workers.reserve_thread(self.now_ns()) else {
            return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
        };
        *self
            .workers_running
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += 1;
        let rt = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("evmpm-worker-{id}"))
            .stack_size(self.config.stack_size)
            .spawn(move || crate::workers::worker_main(rt, id));
        match spawned {
            Ok(h) => {
                self.workers.keep_handle(id, h);
                Ok(())
            }
            Err(e) => {
                self.workers.unreserve_thread(id);
                *self
                    .workers_running
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) -= 1;
                Err(e)
            }
        }
    }

    /// The monitor's call when a handler blocked and no spare sleeps: a new
    /// thread, if the limit allows and the runtime still runs.
    pub fn start_spare(self: &Arc<Self>) -> bool {
        !self.is_stopping() && self.spawn_worker().is_ok()
    }

    /// Graceful stop; see `evmpm_stop` in the header for the contract.
    pub fn stop(&self, timeout_ms: u32) -> Result<(), Error> {
        if self.is_inside() {
            return Err(Error::Thread);
        }
        // Callbacks the final sweep runs on this thread are inside the
        // runtime: a stop or destroy from one of them is refused.
        let _inside = InsideStop::enter(self);
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        match self.phase() {
            Phase::Created => {
                self.seal();
                self.set_phase(Phase::Stopped);
                return Ok(());
            }
            Phase::Running => {
                self.set_phase(Phase::Stopping);
                // No deadline: one the event thread never reaches.
                let deadline_ns = match timeout_ms {
                    EVMPM_TIMEOUT_NONE => u64::MAX,
                    ms => self.now_ns().saturating_add(u64::from(ms) * 1_000_000),
                };
                self.inbox.push(Msg::Stop { deadline_ns });
                self.waker.wake();
            }
            // Only a runtime that stopped itself after an internal error is
            // still stopping here (a stop in progress holds `threads`): its
            // threads are joined below.
            Phase::Stopping if threads.event.is_some() || threads.workers_started => {}
            Phase::Stopping | Phase::Stopped => return Err(Error::Stopped),
        }
        let deadline = (timeout_ms != EVMPM_TIMEOUT_NONE)
            .then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
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
        // Without a deadline every worker is waited for, however long its
        // handler takes.
        let grace = deadline.map(|d| d.max(Instant::now()) + Duration::from_millis(100));
        let (lock, cv) = &self.workers_running;
        let mut running = lock.lock().unwrap_or_else(|p| p.into_inner());
        while *running > 0 {
            let Some(grace) = grace else {
                running = cv.wait(running).unwrap_or_else(|p| p.into_inner());
                continue;
            };
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
        if !stuck {
            for h in self.workers.take_handles() {
                let _ = h.join();
            }
        } // else kept for `evmpm_destroy`, which waits for them (`join_all`)
        threads.workers_started = false;
        if let Some(h) = threads.monitor.take() {
            let _ = h.join();
        }
        self.seal();
        self.sweep(stuck);
        self.set_phase(Phase::Stopped);
        if self.has_failed() {
            Err(Error::Internal)
        } else if forced || stuck {
            Err(Error::TimedOut)
        } else {
            Ok(())
        }
    }

    /// The end of `evmpm_destroy`, after its stop: waits for every worker
    /// thread the stop gave up on (a handler stuck past the deadline) to
    /// exit, then closes, with their callbacks, the connections those
    /// handlers left open. When this returns no thread of the runtime runs
    /// any more (the stop joined the event thread and the monitor), so none
    /// of the host's callbacks runs again for this runtime.
    pub fn join_all(&self) {
        // Close callbacks the final sweep runs here are inside the runtime.
        let _inside = InsideStop::enter(self);
        let mut waited = false;
        // A worker that started another thread kept its handle before it
        // exited: joining it brings that handle into the next round.
        loop {
            let handles = self.workers.take_handles();
            if handles.is_empty() {
                break;
            }
            waited = true;
            for h in handles {
                let _ = h.join();
            }
        }
        if waited {
            // The stop's sweep left their connections to them; what they
            // did not close goes now, with no thread left to race.
            self.sweep(false);
        }
    }

    /// Refuses every host call from now on and waits for those in progress
    /// (they are short: a host call never blocks, and callbacks must not).
    fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while self.host_calls.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }

    /// The end of `stop`: no runtime thread runs (but workers stuck in a
    /// handler) and no host call is in progress, so nothing can hand a
    /// connection on any more. Closes every connection still open, with its
    /// close callback: those a host call or a late hand-over queued after
    /// the workers or the event thread had gone, and those an internal
    /// error left with no owner. A stuck handler's connection is left to
    /// its worker, which closes it when the handler returns; so is a
    /// connection in Closing then, as that worker may be the one closing it.
    fn sweep(&self, workers_stuck: bool) {
        while self.inbox.pop().is_some() {}
        for index in 0..self.table.capacity() as u32 {
            let Some(h) = self.table.current_handle(index) else {
                continue;
            };
            let slot = self.table.slot_at(index);
            let Ok(state) = slot.state_of(h) else {
                continue;
            };
            match state {
                s if workers_stuck && (s.in_handler() || s == State::Closing) => {}
                State::Lingering => {
                    if slot.transition(h, state, State::Closing).is_ok() {
                        self.final_close(h, slot, true);
                    }
                }
                State::Closing => self.close_orphan(h, slot),
                _ => {
                    let _ = self.close_from(h, slot, state, CloseHow::Abort);
                }
            }
        }
    }

    /// Closes a connection left in Closing by a closer that died in an
    /// internal error: runs the close callback unless it already ran.
    fn close_orphan(&self, h: Handle, slot: &crate::conn::Slot) {
        if slot.was_notified() {
            // SAFETY: Closing with no thread left to own it: the sweep does.
            drop(unsafe { slot.take_write() });
            self.final_close(h, slot, false);
        } else {
            let _ = self.close_owned(h, slot, CloseHow::Abort);
        }
    }
}

/// `stop` in progress on this thread: marks it inside the runtime.
struct InsideStop;

impl InsideStop {
    fn enter(rt: &Runtime) -> InsideStop {
        INSIDE.with(|v| v.borrow_mut().push(rt as *const Runtime));
        InsideStop
    }
}

impl Drop for InsideStop {
    fn drop(&mut self) {
        INSIDE.with(|v| v.borrow_mut().pop());
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        RuntimeTags::give_back(self.table.tag());
    }
}

//! Timers and watched host descriptors.
//!
//! - A timer (`evmpm_timer_add`) runs its callback once on a worker when
//!   its delay has passed. The event thread keeps the deadlines in a
//!   hierarchical wheel (`wheel`), one more deadline source of its loop,
//!   filled through its inbox (`Msg::Timer`); at expiry it queues the run
//!   (`Workers::push_timer`) and a worker runs it, as it runs a handler
//!   (it may block).
//! - A watch (`evmpm_watch_add`) arms a descriptor the host owns, one-shot,
//!   in the watch set, an epoll set nested in the workers' set: the worker
//!   woken by it takes the event and runs the callback itself, no queue
//!   hop. Its timeout, if any, is a deadline in the same wheel.
//!
//! Both live in one table (`table`), each entry with a state word moved by
//! CAS (`entry`), which settles every race between expiry, readiness,
//! cancel and re-arm. Adds never wait for the event thread: a `Link`
//! message asks it to put the entry in the wheel, a `Free` message to take
//! it out and free it (cancel, or a timer that ran). Only the event thread
//! frees entries, so an entry is never reused while the wheel links it.
//!
//! A timer may be bound to a connection (one at a time): the connection's
//! close cancels it (`conn_closing`, on the closing thread, before the
//! close callback).

pub(crate) mod entry;
mod table;
pub(crate) mod wheel;

use self::entry::{After, Cancel, Phase, Rearm};
use self::table::{Entry, Table, NO_DEADLINE};
use crate::conn::{Handle, Slot};
use crate::error::Error;
use crate::ffi::timer_api::{
    evmpm_timer_fn, evmpm_watch_fn, EVMPM_WATCH_ERROR, EVMPM_WATCH_HANGUP, EVMPM_WATCH_READABLE,
    EVMPM_WATCH_TIMEOUT, EVMPM_WATCH_WRITABLE,
};
use crate::ffi::types::{EVMPM_LOG_WARNING, EVMPM_TIMEOUT_NONE};
use crate::message::{Msg, TimerMsg};
use crate::runtime::Runtime;
use crate::sys::epoll::{self, Epoll};
use crate::workers::WATCH_TOKEN;
use libc::c_void;
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};

const MS: u64 = 1_000_000;
/// An ended timer's memory is freed within this long.
const FREE_WITHIN_NS: u64 = 10 * MS;

/// A runtime's timers and watches: what every thread shares.
pub struct Timers {
    table: Table,
    /// Watched descriptors, one-shot, each under its watch's id. Itself
    /// registered one-shot in the workers' set under `WATCH_TOKEN`: the
    /// worker it wakes takes one event and re-arms it, so the next event
    /// wakes another worker.
    ///
    /// evmpm never removes a registration from this set: a watch that
    /// ended leaves its descriptor registered (disabled once it fired)
    /// until the host closes it (the kernel then forgets it) or watches it
    /// again (re-armed with MOD). Removing by descriptor number could hit
    /// a later descriptor with the same number if the host closed the
    /// first while it was armed. An event of an ended watch carries its
    /// old id and is dropped as stale.
    watch_set: Epoll,
    /// By connection slot: the id of the timer bound to the connection in
    /// it (0: none). Set by `evmpm_timer_add` (CAS from 0, pinned to the
    /// connection), cleared by the timer's cancel or run (CAS from its
    /// id) and by the connection's close (swap to 0).
    bound: Box<[AtomicU64]>,
    /// Callbacks run (a counter, Relaxed).
    runs: AtomicU64,
}

impl Timers {
    pub fn new(workers: &Epoll, tag: u16, connections: usize) -> io::Result<Timers> {
        let watch_set = Epoll::new()?;
        workers.add(
            watch_set.fd(),
            epoll::READABLE | epoll::ONESHOT,
            WATCH_TOKEN,
        )?;
        Ok(Timers {
            table: Table::new(tag),
            watch_set,
            bound: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            runs: AtomicU64::new(0),
        })
    }

    /// Timers and watches not freed yet (armed, queued, running, idle
    /// watches, and those whose free the event thread has not done yet).
    pub fn live(&self) -> usize {
        self.table.live()
    }

    /// Callbacks run since start.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The entry `id` names now, with the generation the id carries.
    fn lookup(&self, id: u64) -> Result<(&Entry, u32, u32), Error> {
        let (index, generation) = self.table.split(id).ok_or(Error::Stale)?;
        let entry = self.table.get(index).ok_or(Error::Stale)?;
        Ok((entry, index, generation))
    }
}

/// `timeout_ms` as a deadline from `now_ns`.
fn deadline(now_ns: u64, timeout_ms: u32) -> u64 {
    if timeout_ms == EVMPM_TIMEOUT_NONE {
        NO_DEADLINE
    } else {
        now_ns.saturating_add(u64::from(timeout_ms) * MS)
    }
}

/// The epoll interest for `EVMPM_WATCH_*` events.
fn interest(events: u32) -> u32 {
    let mut i = epoll::ONESHOT;
    if events & EVMPM_WATCH_READABLE != 0 {
        i |= epoll::READABLE | epoll::PEER_CLOSED;
    }
    if events & EVMPM_WATCH_WRITABLE != 0 {
        i |= epoll::WRITABLE;
    }
    i
}

/// What epoll reported, as `EVMPM_WATCH_*` bits.
fn revents(flags: u32) -> u32 {
    let mut r = 0;
    if flags & epoll::READABLE != 0 {
        r |= EVMPM_WATCH_READABLE;
    }
    if flags & epoll::WRITABLE != 0 {
        r |= EVMPM_WATCH_WRITABLE;
    }
    if flags & (epoll::HANGUP | epoll::PEER_CLOSED) != 0 {
        r |= EVMPM_WATCH_HANGUP;
    }
    if flags & epoll::ERROR != 0 {
        r |= EVMPM_WATCH_ERROR;
    }
    r
}

impl Runtime {
    /// `evmpm_timer_add`.
    pub fn timer_add(
        &self,
        delay_ms: u32,
        callback: evmpm_timer_fn,
        arg: *mut c_void,
        conn: u64,
    ) -> Result<u64, Error> {
        let callback = callback.ok_or(Error::Invalid)?;
        if self.is_stopping() {
            return Err(Error::Stopped);
        }
        if conn != 0 {
            // Refuse a dead connection before taking an entry.
            self.slot_for(Handle(conn))?;
        }
        let t = &self.timers;
        let (index, generation) = t.table.alloc().ok_or(Error::Limit)?;
        let entry = t.table.get(index).ok_or(Error::Internal)?;
        let id = t.table.id(index, generation);
        entry.callback.store(callback as usize, Ordering::Relaxed);
        entry.arg.store(arg, Ordering::Relaxed);
        entry.fd.store(-1, Ordering::Relaxed);
        entry.events.store(0, Ordering::Relaxed);
        entry.conn.store(conn, Ordering::Relaxed);
        entry
            .deadline_ns
            .store(deadline(self.now_ns(), delay_ms), Ordering::Relaxed);
        entry.word.publish_new(generation, Phase::Armed);
        if conn != 0 {
            if let Err(e) = self.bind_timer(Handle(conn), id) {
                if entry.word.cancel(generation) == Cancel::Cancelled {
                    self.free_later(id);
                }
                return Err(e);
            }
        }
        self.inbox.push(Msg::Timer(TimerMsg::Link(id)));
        self.nudge(u64::from(delay_ms) * MS);
        Ok(id)
    }

    /// Binds timer `id` to connection `h`: its close cancels it.
    ///
    /// Dekker with `conn_closing` (a SeqCst fence on each side): this
    /// thread stores the binding, then looks whether the close began; the
    /// closer marks the close begun, then takes the binding. Either the
    /// closer takes (and cancels) the timer, or this thread sees the close
    /// and refuses the binding, or both (the timer's word makes one of
    /// their cancels win).
    fn bind_timer(&self, h: Handle, id: u64) -> Result<(), Error> {
        let slot = self.slot_for(h)?;
        let bound = &self.timers.bound[h.index() as usize];
        slot.with_pinned(h, |slot: &Slot| {
            if bound
                .compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return Err(Error::Exists);
            }
            fence(Ordering::SeqCst);
            if slot.was_notified() {
                let _ = bound.compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
                return Err(Error::Stale);
            }
            Ok(())
        })
        .map_err(|_| Error::Stale)?
    }

    /// Ends the binding of timer `id` (bound to `conn`) if it still holds.
    fn unbind_timer(&self, conn: u64, id: u64) {
        if conn == 0 {
            return;
        }
        let h = Handle(conn);
        if self.table.slot(h).is_some() {
            // A CAS from this id: a later binding (another timer, another
            // connection in the slot) is left alone.
            let _ = self.timers.bound[h.index() as usize].compare_exchange(
                id,
                0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// The close of the connection in `slot` has begun (its close
    /// callback is next): cancels its bound timer. Any thread that closes.
    pub(crate) fn conn_closing(&self, h: Handle) {
        let Some(bound) = self.timers.bound.get(h.index() as usize) else {
            return;
        };
        // See `bind_timer`.
        fence(Ordering::SeqCst);
        let id = bound.swap(0, Ordering::SeqCst);
        if id == 0 {
            return;
        }
        if let Ok((entry, _, generation)) = self.timers.lookup(id) {
            if entry.word.cancel(generation) == Cancel::Cancelled {
                self.free_later(id);
            }
        }
    }

    /// Asks the event thread to unlink and free the Dead entry `id`,
    /// within `FREE_WITHIN_NS` (wakes it only if it would sleep longer;
    /// wake-ups coalesce, see `Runtime::nudge`).
    fn free_later(&self, id: u64) {
        self.inbox.push(Msg::Timer(TimerMsg::Free(id)));
        self.nudge(FREE_WITHIN_NS);
    }

    /// `evmpm_timer_cancel` (`watch` false) and `evmpm_watch_cancel`.
    pub fn timer_cancel(&self, id: u64, watch: bool) -> Result<(), Error> {
        let (entry, _, generation) = self.timers.lookup(id)?;
        entry.word.phase(generation).map_err(|_| Error::Stale)?;
        if entry.is_watch() != watch {
            return Err(Error::Invalid);
        }
        match entry.word.cancel(generation) {
            Cancel::Cancelled => {
                // Dead, not yet freed (this thread sends the free): the
                // fields are still this use's.
                self.unbind_timer(entry.conn.load(Ordering::Relaxed), id);
                self.free_later(id);
                Ok(())
            }
            Cancel::Running => Err(Error::Busy),
            Cancel::Stale => Err(Error::Stale),
        }
    }

    /// `evmpm_watch_add`.
    pub fn watch_add(
        &self,
        fd: i32,
        events: u32,
        timeout_ms: u32,
        callback: evmpm_watch_fn,
        arg: *mut c_void,
    ) -> Result<u64, Error> {
        let callback = callback.ok_or(Error::Invalid)?;
        if fd < 0 {
            return Err(Error::Invalid);
        }
        if self.is_stopping() {
            return Err(Error::Stopped);
        }
        let t = &self.timers;
        let (index, generation) = t.table.alloc().ok_or(Error::Limit)?;
        let entry = t.table.get(index).ok_or(Error::Internal)?;
        let id = t.table.id(index, generation);
        entry.callback.store(callback as usize, Ordering::Relaxed);
        entry.arg.store(arg, Ordering::Relaxed);
        entry.fd.store(fd, Ordering::Relaxed);
        entry.events.store(events, Ordering::Relaxed);
        entry.conn.store(0, Ordering::Relaxed);
        let deadline = deadline(self.now_ns(), timeout_ms);
        entry.deadline_ns.store(deadline, Ordering::Relaxed);
        // Busy while it is armed: a worker that gets its event at once
        // waits for the Armed below.
        entry.word.publish_new(generation, Phase::Busy);
        if let Err(e) = self.arm_watch(fd, events, id, true) {
            entry.word.abandon(generation);
            self.free_later(id);
            return Err(e);
        }
        entry.word.publish_armed(generation);
        self.link_deadline(id, deadline);
        Ok(id)
    }

    /// Arms `fd` in the watch set under `id`. `fresh`: try ADD first (a
    /// new watch), else MOD first (a re-arm); either falls back to the
    /// other (a registration left by an ended watch, or one the kernel
    /// dropped when the host closed and reopened the number).
    fn arm_watch(&self, fd: i32, events: u32, id: u64, fresh: bool) -> Result<(), Error> {
        let set = &self.timers.watch_set;
        let interest = interest(events);
        let ops = [Epoll::add, Epoll::modify];
        let (first, second) = if fresh {
            (ops[0], ops[1])
        } else {
            (ops[1], ops[0])
        };
        match first(set, fd, interest, id) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) => {
                second(set, fd, interest, id).map_err(|e| Error::from_io(&e))
            }
            Err(e) => Err(Error::from_io(&e)),
        }
    }

    /// Tells the event thread to (re)link `id` at `deadline` (if any),
    /// waking it if it would sleep past it.
    fn link_deadline(&self, id: u64, deadline: u64) {
        if deadline == NO_DEADLINE {
            return;
        }
        self.inbox.push(Msg::Timer(TimerMsg::Link(id)));
        self.nudge(deadline.saturating_sub(self.now_ns()));
    }

    /// `evmpm_watch_rearm`.
    pub fn watch_rearm(&self, id: u64, events: u32, timeout_ms: u32) -> Result<(), Error> {
        let (entry, _, generation) = self.timers.lookup(id)?;
        entry.word.phase(generation).map_err(|_| Error::Stale)?;
        if !entry.is_watch() {
            return Err(Error::Invalid);
        }
        match entry.word.rearm(generation) {
            Rearm::Arm => {
                let deadline = deadline(self.now_ns(), timeout_ms);
                entry.events.store(events, Ordering::Relaxed);
                entry.deadline_ns.store(deadline, Ordering::Relaxed);
                let fd = entry.fd.load(Ordering::Relaxed);
                if let Err(e) = self.arm_watch(fd, events, id, false) {
                    // Still idle: the host may try again or cancel.
                    let back = entry.word.cas(generation, Phase::Busy, Phase::Idle);
                    debug_assert!(back);
                    return Err(e);
                }
                entry.word.publish_armed(generation);
                self.link_deadline(id, deadline);
                Ok(())
            }
            Rearm::Later => {
                // The timeout counts from now, not from when the callback
                // returns.
                entry.events.store(events, Ordering::Relaxed);
                entry
                    .deadline_ns
                    .store(deadline(self.now_ns(), timeout_ms), Ordering::Relaxed);
                entry.word.publish_rearm(generation);
                Ok(())
            }
            Rearm::AlreadyArmed => Err(Error::State),
            Rearm::Stale => Err(Error::Stale),
        }
    }
}

// ---- the workers' side ------------------------------------------------------

/// A queued run (a timer's deadline, or a watch's timeout): worker
/// `worker` runs the callback unless it was cancelled meanwhile.
pub fn run_job(rt: &Runtime, worker: usize, id: u64) {
    let Ok((entry, _, generation)) = rt.timers.lookup(id) else {
        return;
    };
    if !entry.word.take_queued(generation) {
        return; // cancelled while queued
    }
    let revents = if entry.is_watch() {
        EVMPM_WATCH_TIMEOUT
    } else {
        0
    };
    run(rt, worker, entry, id, generation, revents);
}

/// The watch set is ready: takes one event, lets another worker take the
/// next, and runs that watch's callback if it is still armed.
pub fn on_watch_set(rt: &Runtime, worker: usize) {
    let set = &rt.timers.watch_set;
    let event = set.wait_one();
    // One-shot in the workers' set: armed again now, it wakes another
    // worker at once if more events wait.
    let _ = rt
        .workers
        .poll
        .modify(set.fd(), epoll::READABLE | epoll::ONESHOT, WATCH_TOKEN);
    let Some((id, flags)) = event else { return };
    let Ok((entry, _, generation)) = rt.timers.lookup(id) else {
        return;
    };
    // Stale (an ended watch's registration), cancelled, or fired by its
    // timeout first: nothing to run.
    if entry.word.take_armed(generation) {
        run(rt, worker, entry, id, generation, revents(flags));
    }
}

/// Runs the callback of `entry` (Running, owned by this worker), then
/// settles it: a timer ends, a watch goes idle or is armed again.
fn run(rt: &Runtime, worker: usize, entry: &Entry, id: u64, generation: u32, revents: u32) {
    let watch = entry.is_watch();
    rt.timers.runs.fetch_add(1, Ordering::Relaxed);
    let callback = entry.callback.load(Ordering::Relaxed);
    let arg = entry.arg.load(Ordering::Relaxed);
    let settle = || settle(rt, entry, id, generation, watch);
    if watch {
        let fd = entry.fd.load(Ordering::Relaxed);
        let call = || {
            // SAFETY: `callback` is the `evmpm_watch_fn` the host gave
            // `evmpm_watch_add` (stored as an address; watches have fd >=
            // 0), called with the documented arguments.
            unsafe {
                let f: unsafe extern "C" fn(*mut c_void, _, u64, i32, u32) =
                    std::mem::transmute::<usize, _>(callback);
                f(arg, rt.as_c_ptr(), id, fd, revents);
            }
        };
        crate::workers::run_callback(rt, worker, call, settle);
    } else {
        // Its binding ends as it runs: the callback may bind another.
        rt.unbind_timer(entry.conn.load(Ordering::Relaxed), id);
        let call = || {
            // SAFETY: `callback` is the `evmpm_timer_fn` the host gave
            // `evmpm_timer_add` (stored as an address; timers have fd -1),
            // called with the documented arguments.
            unsafe {
                let f: unsafe extern "C" fn(*mut c_void, _, u64) =
                    std::mem::transmute::<usize, _>(callback);
                f(arg, rt.as_c_ptr(), id);
            }
        };
        crate::workers::run_callback(rt, worker, call, settle);
    }
}

/// After the callback of `entry` returned: a timer ends, a watch goes
/// idle, or is armed again if it was re-armed meanwhile.
fn settle(rt: &Runtime, entry: &Entry, id: u64, generation: u32, watch: bool) {
    match entry.word.after_run(generation, watch) {
        After::Free => rt.free_later(id),
        After::Idle => {}
        After::Arm => {
            let fd = entry.fd.load(Ordering::Relaxed);
            let events = entry.events.load(Ordering::Relaxed);
            if rt.arm_watch(fd, events, id, false).is_err() {
                rt.log(
                    EVMPM_LOG_WARNING,
                    &format!(
                        "evmpm: a watch re-armed from its callback could not be armed \
                         (descriptor {fd} closed?); it stays idle"
                    ),
                );
                let back = entry.word.cas(generation, Phase::Busy, Phase::Idle);
                debug_assert!(back);
                return;
            }
            entry.word.publish_armed(generation);
            rt.link_deadline(id, entry.deadline_ns.load(Ordering::Relaxed));
        }
    }
}

// ---- the event thread's side ---------------------------------------------------

/// The event thread's part: the wheel and a scratch list.
pub struct Clock {
    wheel: wheel::Wheel,
    due: Vec<u32>,
}

impl Clock {
    pub fn new(now_ns: u64) -> Clock {
        Clock {
            wheel: wheel::Wheel::new(now_ns / MS),
            due: Vec::new(),
        }
    }

    /// When the wheel next has work (ns since the runtime's epoch).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.wheel.next_tick().map(|t| t.saturating_mul(MS))
    }

    pub fn on_msg(&mut self, rt: &Runtime, msg: TimerMsg) {
        match msg {
            TimerMsg::Link(id) => {
                let Ok((entry, index, generation)) = rt.timers.lookup(id) else {
                    return;
                };
                // Otherwise a later arming sends its own Link, and an
                // entry that ended is unlinked by its Free.
                if entry.word.phase(generation) == Ok(Phase::Armed) {
                    match entry.deadline_ns.load(Ordering::Relaxed) {
                        NO_DEADLINE => {
                            self.wheel.remove(index);
                        }
                        d => self.wheel.insert(index, d.div_ceil(MS)),
                    }
                }
            }
            TimerMsg::Free(id) => {
                let Ok((entry, index, generation)) = rt.timers.lookup(id) else {
                    return;
                };
                if entry.word.phase(generation) == Ok(Phase::Dead) {
                    self.wheel.remove(index);
                    if entry.word.free(generation) {
                        rt.timers.table.release(index);
                    }
                }
            }
        }
    }

    /// Queues the run of every entry whose deadline has passed.
    pub fn expire(&mut self, rt: &Runtime, now_ns: u64) {
        self.wheel.advance(now_ns / MS, &mut self.due);
        for i in 0..self.due.len() {
            let index = self.due[i];
            let Some(entry) = rt.timers.table.get(index) else {
                continue;
            };
            let (generation, phase) = entry.word.load();
            if phase != Phase::Armed {
                // Cancelled (its Free follows), fired by its descriptor,
                // or being armed again (its Link follows): unlinked now.
                continue;
            }
            let deadline = entry.deadline_ns.load(Ordering::Relaxed);
            if deadline == NO_DEADLINE {
                continue; // re-armed without a timeout
            }
            if deadline > now_ns {
                // A link from before a re-arm: the new deadline holds.
                self.wheel.insert(index, deadline.div_ceil(MS));
                continue;
            }
            if entry.word.cas(generation, Phase::Armed, Phase::Queued) {
                rt.workers.push_timer(rt.timers.table.id(index, generation));
            }
        }
        self.due.clear();
    }
}

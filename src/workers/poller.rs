//! A worker thread: waits in the pool's epoll set, takes the connection
//! that became readable, steps its handshake (if its listener has one and
//! it is not done), checks it holds a whole request, runs the handler, and
//! carries out what the handler decided.

use super::{Job, Work, DOORBELL_TOKEN, EXIT_TOKEN, WATCH_TOKEN};
use crate::conn::{Handle, Slot, State};
use crate::ffi::types::{
    EVMPM_LOG_ERROR, EVMPM_REQUEST_REJECT, EVMPM_THREAD_WORKER, EVMPM_WAKE_ACCEPTED,
    EVMPM_WAKE_NEW, EVMPM_WAKE_READABLE,
};
use crate::handoff::Armed;
use crate::handshake::Step;
use crate::message::{CloseHow, Handoff};
use crate::readiness::{Readiness, Verdict};
use crate::runtime::{mark_current_thread, Runtime};
use crate::stats::Counters;
use crate::sync::atomic::Ordering;
use crate::sys::{self, epoll, socket};
use crate::timeouts::Kind;
use libc::c_int;
use std::sync::Arc;

/// A connection that keeps bringing buffered input runs at most this many
/// handler calls in a row before it goes to the back of the queue.
const MAX_CONSECUTIVE_RUNS: u32 = 16;

/// The body of worker thread `id`, which starts active. The host's thread
/// hooks run first and last on it, whatever makes it exit.
pub fn worker_main(rt: Arc<Runtime>, id: usize) {
    mark_current_thread(&rt);
    let w = &rt.workers;
    let rec = &w.records[id];
    rec.tid.store(sys::thread::current_tid(), Ordering::Release);
    *rec.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
    super::status::enter(w, id);
    rt.thread_hook(rt.config.thread_start, EVMPM_THREAD_WORKER, id);
    serve(&rt, id);
    rt.thread_hook(rt.config.thread_stop, EVMPM_THREAD_WORKER, id);
    // Only now, after the stop hook, may another thread take the id.
    w.thread_left(id);
    let (lock, cv) = &rt.workers_running;
    *lock.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    cv.notify_all();
}

/// Worker `id` takes and runs jobs until the pool exits, or until, a spare
/// without work for `SPARE_IDLE`, it leaves.
fn serve(rt: &Arc<Runtime>, id: usize) {
    let w = &rt.workers;
    let mut readiness = Readiness::new(&rt.config);
    let mut events = Vec::with_capacity(1);
    while !w.exiting() {
        // Between jobs: if another handler has run long, see whether it
        // blocked (cheap when none has).
        super::look_if_due(rt);
        if w.far_above_target() && !keeps_serving_after_step_down(rt, id) {
            break;
        }
        if let Some(job) = w.take_job() {
            guarded(rt, || run_job(rt, id, job));
        } else {
            // Above the target (a handler counted blocked is back while the
            // thread released for it still runs), a thread serves what is
            // ready and steps down instead of waiting: the park costs no
            // more than the wait would have, where stepping down with work
            // ready would cost a wake-up of a thread to do it.
            let above = w.above_target();
            if rt
                .workers
                .poll
                .wait(&mut events, if above { 0 } else { -1 })
                .is_err()
            {
                continue;
            }
            if events.is_empty() {
                if above && !keeps_serving_after_step_down(rt, id) {
                    break;
                }
                continue;
            }
            for ev in events.iter() {
                let (token, flags) = (ev.u64, ev.events);
                match token {
                    DOORBELL_TOKEN => w.doorbell.reset(),
                    EXIT_TOKEN => {}
                    WATCH_TOKEN => guarded(rt, || crate::timers::on_watch_set(rt, id)),
                    _ => guarded(rt, || {
                        on_ready(rt, id, &mut readiness, Handle(token), flags)
                    }),
                }
            }
        }
    }
}

/// Runs one piece of a worker's work, turning a panic into the fail-stop.
fn guarded(rt: &Runtime, f: impl FnOnce()) {
    if let Err(panic) = crate::failure::catch(f) {
        // The connection may be owned by nobody now; the stop closes it
        // (see `failure`). This worker carries on until the stop ends it.
        rt.internal_error("a worker", &panic);
    }
}

/// A connection armed in the pool's set became readable (or its peer
/// hung up). Takes it, checks for a whole request, and runs the handler.
fn on_ready(rt: &Runtime, id: usize, readiness: &mut Readiness, h: Handle, flags: u32) {
    let Some(slot) = rt.table.slot(h) else { return };
    let Ok(state @ (State::Reading | State::Keepalive)) = slot.state_of(h) else {
        return; // a stale event: the connection moved on or closed
    };
    // The worker owns it while it checks; nobody else touches a
    // connection in a Check state.
    let checking = if state == State::Reading {
        State::ReadingCheck
    } else {
        State::KeepaliveCheck
    };
    if slot.transition(h, state, checking).is_err() {
        return; // its timeout or the stop took it first
    }
    let fd = slot.fd();
    let peer_closed = flags & (epoll::HANGUP | epoll::PEER_CLOSED) != 0;
    if flags & epoll::ERROR != 0 || (peer_closed && peer_gone(fd)) {
        // Nothing to serve.
        if slot.handshake_pending() {
            Counters::bump(&rt.counters.handshakes_failed);
        }
        return close(rt, h, slot, checking, CloseHow::Abort);
    }
    if slot.take_recheck() && !peer_closed && !has_input(fd) {
        // An event armed before `evmpm_notify` took the connection, reported
        // after it came back to wait: nothing new to read.
        return wait_more(rt, h, slot, checking, state, false);
    }
    let Some(listener) = rt.listeners.get(slot.listener()) else {
        return close(rt, h, slot, checking, CloseHow::Abort);
    };
    if slot.handshake_pending() {
        if rt.is_stopping() {
            // No request yet: idle, and owed nothing (see `begin_stop`).
            return close(rt, h, slot, checking, CloseHow::Abort);
        }
        match crate::handshake::step(rt, listener, slot, h, fd) {
            Step::Done if listener.server_first() => {
                if slot.transition(h, checking, State::Handler).is_ok() {
                    run_handler(rt, id, h, slot, EVMPM_WAKE_ACCEPTED);
                }
                return;
            }
            // Its first request may have come with the handshake's end.
            Step::Done if has_input(fd) => {}
            Step::Done => return wait_more(rt, h, slot, checking, state, false),
            Step::WantRead if peer_closed => {
                // The rest can never arrive.
                Counters::bump(&rt.counters.handshakes_failed);
                return close(rt, h, slot, checking, CloseHow::Quick);
            }
            Step::WantRead => return wait_step(rt, h, slot, checking, false),
            Step::WantWrite => return wait_step(rt, h, slot, checking, true),
            Step::Fail => return close(rt, h, slot, checking, CloseHow::Quick),
        }
    }
    match readiness.check(
        listener.request_ready,
        listener.ready_user,
        slot,
        h,
        fd,
        peer_closed,
    ) {
        Verdict::Run => {}
        Verdict::Close(how) => return close(rt, h, slot, checking, how),
        Verdict::Reject(value) => {
            Counters::bump(&rt.counters.rejected);
            if value != EVMPM_REQUEST_REJECT && !rt.logged_bad_verdict.swap(true, Ordering::Relaxed)
            {
                rt.log(
                    EVMPM_LOG_ERROR,
                    &format!(
                        "evmpm: request_ready returned {value}, none of \
                         EVMPM_REQUEST_COMPLETE/INCOMPLETE/REJECT; its connection was \
                         closed as rejected (logged once)"
                    ),
                );
            }
            return close(rt, h, slot, checking, CloseHow::Quick);
        }
        _ if rt.is_stopping() => {
            // Stopping: an incomplete request is idle.
            return close(rt, h, slot, checking, CloseHow::Quick);
        }
        verdict => {
            return wait_more(rt, h, slot, checking, state, verdict == Verdict::Wait);
        }
    }
    slot.set_header_since(0);
    if slot.transition(h, checking, State::Handler).is_err() {
        return;
    }
    let reason = if state == State::Reading {
        EVMPM_WAKE_NEW
    } else {
        EVMPM_WAKE_READABLE
    };
    run_handler(rt, id, h, slot, reason);
}

/// The request is not whole yet: gives the connection back to the pool's
/// set, in the state it came from, under the header timeout from its first
/// byte (`started`: this check saw the first part of it).
fn wait_more(rt: &Runtime, h: Handle, slot: &Slot, checking: State, state: State, started: bool) {
    if started && slot.header_since() == 0 {
        slot.set_header_since(rt.now_ns());
    }
    let kind = if slot.header_since() != 0 {
        Kind::Header
    } else if state == State::Reading {
        Kind::Reading
    } else {
        Kind::Keepalive
    };
    let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
    // From here the connection is the pool's and the event thread's (and a
    // notifier's: `hand_over` delivers a notify that came meanwhile).
    let handoff = match rt.wait_armed(h, slot, checking, state, interest) {
        // The timeout keeps counting from the stamp already in the slot.
        Armed::Yes => Handoff::Watch(kind),
        Armed::Failed => rt.close_from(h, slot, state, CloseHow::Abort),
        Armed::Lost => return,
    };
    rt.hand_over(h, handoff);
}

/// The handshake step wants to read (or, `write`, to write) and cannot
/// yet: gives the connection back to the pool's set, armed for that, under
/// the header timeout that runs from its accept.
fn wait_step(rt: &Runtime, h: Handle, slot: &Slot, checking: State, write: bool) {
    let interest = if write {
        epoll::WRITABLE | epoll::ONESHOT
    } else {
        epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT
    };
    // From here the connection is the pool's and the event thread's.
    let handoff = match rt.wait_armed(h, slot, checking, State::Reading, interest) {
        Armed::Yes => Handoff::Watch(Kind::Header),
        Armed::Failed => rt.close_from(h, slot, State::Reading, CloseHow::Abort),
        Armed::Lost => return,
    };
    rt.hand_over(h, handoff);
}

fn close(rt: &Runtime, h: Handle, slot: &Slot, from: State, how: CloseHow) {
    let next = rt.close_from(h, slot, from, how);
    rt.hand_over(h, next);
}

/// A job from the run queue: the connection is Queued.
fn run_job(rt: &Runtime, id: usize, job: Job) {
    if job.work == Work::Timer {
        return crate::timers::run_job(rt, id, job.conn.0);
    }
    let h = job.conn;
    let Some(slot) = rt.table.slot(h) else { return };
    match job.work {
        Work::Run(reason) => {
            if slot.transition(h, State::Queued, State::Handler).is_err() {
                return; // closed by a forced stop while it waited
            }
            run_handler(rt, id, h, slot, reason);
        }
        // A close callback that may block, run as a handler is: watched,
        // and replaced by another thread if it blocks.
        Work::Close(how) => run_callback(rt, id, || close(rt, h, slot, State::Queued, how), || {}),
        Work::Timer => {} // not a connection: run above
    }
}

/// Runs the handler for `h` (state Handler, owned by this worker) until the
/// host disposes of it, then settles this thread's place in the pool.
fn run_handler(rt: &Runtime, id: usize, h: Handle, slot: &Slot, mut reason: c_int) {
    let w = &rt.workers;
    let rec = &w.records[id];
    let fd = slot.fd();
    w.busy.fetch_add(1, Ordering::AcqRel);
    for round in 0..=MAX_CONSECUTIVE_RUNS {
        if round == MAX_CONSECUTIVE_RUNS {
            // Fairness: the state is Handler again; queue it behind others.
            if slot.transition(h, State::Handler, State::Queued).is_ok() {
                w.push(Job::run(h, reason));
            }
            break;
        }
        w.started.fetch_add(1, Ordering::Relaxed);
        rec.begin_handler(rt.now_ns(), h);
        // SAFETY: the handler is the host's, called with the arguments the
        // header documents; `rt` outlives the call (the caller holds an Arc).
        unsafe { (rt.config.handler)(rt.config.user_data.0, rt.as_c_ptr(), h.0, fd, reason) };
        // What the handler decided is carried out inside its time: the
        // close callback runs here, and under `close_on_worker` it may
        // block, so it is watched and replaced as a blocking handler is.
        let next = rt.finish_handler(h, slot);
        if rec.end_handler() {
            // Counted blocked, and replaced; running again now, so active
            // again (above the target for a moment, until a thread finds no
            // work ready and steps down).
            w.blocked_now.fetch_sub(1, Ordering::AcqRel);
            w.active.fetch_add(1, Ordering::AcqRel);
        }
        rec.clear_label();
        match next {
            Some(next) => reason = next,
            None => break,
        }
    }
    w.busy.fetch_sub(1, Ordering::AcqRel);
    rec.idle_since(rt.now_ns());
    rt.capacity_freed();
}

/// Runs a timer's or watch's callback `call` on worker `id` as a handler
/// runs: counted busy, and replaced by another thread if it blocks. Then
/// `settle` carries out what the callback decided, before this thread
/// may step down to spare (as `run_handler` settles before it does).
pub(crate) fn run_callback(rt: &Runtime, id: usize, call: impl FnOnce(), settle: impl FnOnce()) {
    let w = &rt.workers;
    let rec = &w.records[id];
    w.busy.fetch_add(1, Ordering::AcqRel);
    w.started.fetch_add(1, Ordering::Relaxed);
    // No connection: the snapshot shows the worker busy with conn 0.
    rec.begin_handler(rt.now_ns(), Handle(0));
    call();
    if rec.end_handler() {
        w.blocked_now.fetch_sub(1, Ordering::AcqRel);
        w.active.fetch_add(1, Ordering::AcqRel);
    }
    rec.clear_label();
    settle();
    w.busy.fetch_sub(1, Ordering::AcqRel);
    rec.idle_since(rt.now_ns());
    rt.capacity_freed();
}

/// Steps worker `id` down to spare if the active threads are still above
/// the target, and sleeps there until it is needed. False when it must
/// leave: a spare not needed for `SPARE_IDLE`.
fn keeps_serving_after_step_down(rt: &Runtime, id: usize) -> bool {
    !rt.workers.step_down() || sleep_as_spare(rt, id)
}

/// This thread stepped down (the active threads were above the target):
/// it sleeps as a spare until it is needed (LIFO: the most recent spare is
/// released first, so the same few threads stay warm), or leaves after
/// `SPARE_IDLE` without being needed: false then, and it must leave.
fn sleep_as_spare(rt: &Runtime, id: usize) -> bool {
    let w = &rt.workers;
    let rec = &w.records[id];
    rec.released.store(false, Ordering::SeqCst);
    rec.set_life(super::status::LIFE_SPARE, rt.now_ns());
    w.spares.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    // A release between the push and the park leaves `released` set and
    // the thread's park token too: park returns at once. The releaser
    // counted this thread active again.
    let idle_since = std::time::Instant::now();
    while !rec.released.load(Ordering::SeqCst) && !w.exiting() {
        let idle = idle_since.elapsed();
        if idle < super::SPARE_IDLE {
            std::thread::park_timeout(super::SPARE_IDLE - idle);
            continue;
        }
        // Not needed for that long: leave, unless a release has just taken
        // this thread off the stack (then wait for it).
        let mut spares = w.spares.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = spares.iter().position(|&s| s == id) {
            spares.remove(at);
            return false;
        }
        drop(spares);
        std::thread::park();
    }
    rec.set_life(super::status::LIFE_IDLE, rt.now_ns());
    true
}

/// True when input waits to be read (or the peer closed, or the socket
/// failed: the handler's read then returns at once).
fn has_input(fd: i32) -> bool {
    let mut byte = [0u8; 1];
    match socket::peek(fd, &mut byte) {
        Ok(_) => true,
        Err(e) => !sys::would_block(&e),
    }
}

/// True when a peek shows the peer closed with nothing left to read.
fn peer_gone(fd: i32) -> bool {
    let mut byte = [0u8; 1];
    match socket::peek(fd, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !sys::would_block(&e),
    }
}

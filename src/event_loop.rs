//! The event thread: accepts connections, watches idle and write-completion
//! connections with epoll, expires timeouts, applies admission control and
//! shedding, and runs the graceful stop.
//!
//! It never blocks on a worker: ready connections go into the run queue and
//! the loop moves on. It never reads the host's bytes: readiness is all it
//! needs (a peek tells a closed peer from a request).

use crate::conn::{Handle, State};
use crate::ffi::types::{EVMPM_LOG_WARNING, EVMPM_WAKE_ACCEPTED};
use crate::handoff::Armed;
use crate::message::{CloseHow, Drained, Handoff, Msg};
use crate::runtime::{mark_current_thread, Runtime};
use crate::stats::Counters;
use crate::sys::{self, epoll, socket};
use crate::timeouts::{Kind, TimeoutQueues, KINDS};
use crate::workers::Job;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// epoll token of the waker. Listener tokens are 1..=listeners; connection
/// handles are all >= 2^32 (see `conn::handle`).
pub(crate) const WAKER_TOKEN: u64 = 0;

const ACCEPT_BATCH: usize = 64;
const EVENTS_PER_WAIT: usize = 256;
const BACKOFF_FIRST_NS: u64 = 10_000_000;
const BACKOFF_MAX_NS: u64 = 500_000_000;
/// While handlers run, the event thread wakes at least this often to look
/// whether they blocked.
const HANDLER_LOOK_NS: u64 = 10_000_000;
/// Shedding closes at most this many connections per turn of the loop.
const SHED_BATCH: usize = 64;

struct EventLoop {
    rt: Arc<Runtime>,
    timeouts: TimeoutQueues,
    /// Per slot in write completion: bytes the kernel held unacknowledged
    /// when the write clock last started (see `client_acknowledged`).
    write_queued: Vec<usize>,
    events: Vec<epoll::Event>,
    /// Listeners currently registered with epoll: (index, descriptor).
    armed_listeners: Vec<(u32, i32)>,
    /// Descriptor exhaustion: accepting resumes at `until`; the next back-off
    /// lasts `next_ns`.
    backoff_until: Option<u64>,
    backoff_next_ns: u64,
    stop_deadline: Option<u64>,
    /// (jobs taken, since when) while every worker is busy with work waiting.
    stall: Option<(usize, u64)>,
    /// The longest the event thread sleeps: the shortest timeout another
    /// thread can hand it a connection under (keep-alive, write, linger).
    /// A hand-over's deadline is then never before the planned wake-up, so
    /// parking a connection does not have to wake this thread (see
    /// `Runtime::nudge`); the timeout still counts from the hand-over.
    max_sleep_ns: u64,
    now: u64,
    /// Timers' and watches' deadlines (see `timers`).
    clock: crate::timers::Clock,
}

/// `max_sleep_ns` is at least this, so very short timeouts do not turn an
/// idle event thread into a busy one; they wake it per hand-over instead.
const MIN_MAX_SLEEP_NS: u64 = 50_000_000;

/// The event thread's body. Returns true when the stop deadline forced
/// connections closed.
pub fn run(rt: Arc<Runtime>) -> bool {
    mark_current_thread(&rt);
    crate::runtime::mark_event_thread();
    let timeouts = TimeoutQueues::new(rt.table.capacity(), KINDS.map(|k| rt.timeout_ns(k)));
    let max_sleep_ns = [Kind::Keepalive, Kind::Write, Kind::Linger]
        .map(|k| rt.timeout_ns(k))
        .into_iter()
        .filter(|&ns| ns > 0)
        .min()
        .unwrap_or(u64::MAX)
        .max(MIN_MAX_SLEEP_NS);
    let rt_now = rt.now_ns();
    let mut ev = EventLoop {
        now: rt_now,
        write_queued: vec![0; rt.table.capacity()],
        rt,
        timeouts,
        events: Vec::with_capacity(EVENTS_PER_WAIT),
        armed_listeners: Vec::new(),
        backoff_until: None,
        backoff_next_ns: BACKOFF_FIRST_NS,
        stop_deadline: None,
        stall: None,
        max_sleep_ns,
        clock: crate::timers::Clock::new(rt_now),
    };
    ev.sync_listeners();
    let forced = loop {
        match crate::failure::catch(|| ev.turn()) {
            Ok(Some(forced)) => break forced,
            Ok(None) => {}
            Err(panic) => {
                // Its own records (timeout lists, readiness marks) may be
                // half changed, and they alone say which connections it
                // owns: trust none of them. It stops accepting and leaves;
                // what it owned stays open, unserved, until `evmpm_stop`'s
                // sweep closes everything once no thread is left to hold a
                // connection. Later hand-overs find it gone and close
                // their connection themselves.
                ev.rt.internal_error("the event thread", &panic);
                let _ = crate::failure::catch(|| ev.pause_listeners(false));
                break true;
            }
        }
    };
    // Dekker with `Runtime::hand_over`: cleared before the last drain, so a
    // hand-over either lands in that drain or sees the thread gone.
    ev.rt.event_thread_alive.store(false, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    abort_leftovers(&ev.rt);
    forced
}

impl EventLoop {
    /// One turn: wait, handle events and messages, expire, accept.
    /// Some(forced) when the stop has completed.
    fn turn(&mut self) -> Option<bool> {
        let timeout_ms = self.timeout_ms();
        let wake_at = if timeout_ms < 0 {
            u64::MAX
        } else {
            self.now + timeout_ms as u64 * 1_000_000
        };
        let timeout_ms = if self
            .rt
            .wake_plan
            .may_sleep(wake_at, || self.rt.inbox.is_empty())
        {
            timeout_ms
        } else {
            0
        };
        if let Err(e) = self.rt.epoll.wait(&mut self.events, timeout_ms) {
            self.rt
                .log(EVMPM_LOG_WARNING, &format!("evmpm: epoll_wait failed: {e}"));
        }
        self.rt.wake_plan.awake();
        self.now = self.rt.now_ns();

        let mut listener_ready = false;
        for i in 0..self.events.len() {
            let ev = self.events[i];
            let (token, flags) = (ev.u64, ev.events);
            if token == WAKER_TOKEN {
                self.rt.waker.reset();
            } else if !Handle(token).is_connection() {
                listener_ready = true;
            } else {
                self.on_connection_event(Handle(token), flags);
            }
        }
        self.drain_inbox();
        self.expire();
        if listener_ready {
            self.accept_some();
        }
        self.sync_listeners();
        crate::workers::look_if_due(&self.rt);
        self.shed();
        self.stop_progress()
    }

    fn timeout_ms(&self) -> i32 {
        let deadlines = [
            self.timeouts.next_deadline(),
            self.backoff_until,
            self.stop_deadline,
            self.stall.map(|(_, since)| since + self.rt.config.shed_ns),
            // While stopping, look at the open count now and then.
            self.stop_deadline.map(|_| self.now + 10_000_000),
            // While handlers run, look at them now and then (see
            // `workers::look_if_due`): the backstop for when every worker
            // blocks and the monitor cannot run.
            (self.rt.workers.running_handlers() > 0).then(|| self.now + HANDLER_LOOK_NS),
            Some(self.now.saturating_add(self.max_sleep_ns)),
            self.clock.next_deadline_ns(),
        ];
        match deadlines.iter().flatten().min() {
            None => -1,
            Some(&d) if d <= self.now => 0,
            Some(&d) => ((d - self.now).div_ceil(1_000_000)).min(i32::MAX as u64) as i32,
        }
    }

    /// An event of a connection armed in this thread's set: write
    /// completion or lingering close. (Connections waiting for a request
    /// are armed in the workers' set, which the workers poll.)
    fn on_connection_event(&mut self, h: Handle, _flags: u32) {
        let Some(slot) = self.rt.table.slot(h) else {
            return;
        };
        let Ok(state) = slot.state_of(h) else { return }; // closed meanwhile
        match state {
            State::Writing => {
                self.timeouts.remove(h.index());
                let next = self.rt.write_owned(h, slot, State::Writing);
                // Parked after its write, by this thread: a notify that came
                // while the write was sent runs now, as after any hand-over
                // to wait (see `Runtime::hand_over`); it takes the
                // connection, so there is nothing to link.
                let notified = next == Handoff::Watch(Kind::Keepalive)
                    && slot.state_of(h) == Ok(State::Keepalive)
                    && self.rt.deliver_notify(h, slot, State::Keepalive);
                if !notified {
                    self.adopt(h, next);
                }
            }
            State::Lingering => {
                // The client is done, or its input is drained: closed now;
                // else re-armed under the deadline it already has.
                let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
                if self.rt.drain(slot.fd()) == Drained::PeerDone
                    || self.rt.epoll.modify(slot.fd(), interest, h.0).is_err()
                {
                    self.close(h, State::Lingering, CloseHow::Abort);
                }
            }
            _ => {}
        }
    }

    /// A write timeout expired for `h`. Our sends can stall for a long time
    /// while a slow client still reads: the kernel reports the socket
    /// writable only once a third of a (possibly megabytes large) send
    /// buffer has drained. Progress is what the client acknowledges: if the
    /// bytes queued in the kernel went down since the clock started, the
    /// client is alive and the clock restarts.
    fn client_acknowledged(&mut self, h: Handle, index: u32) -> bool {
        let slot = self.rt.table.slot_at(index);
        if slot.state_of(h) != Ok(State::Writing) {
            return false;
        }
        let queued = socket::queued_output(slot.fd());
        let before = &mut self.write_queued[index as usize];
        if queued < *before {
            *before = queued;
            link(&self.rt, &mut self.timeouts, Kind::Write, index, self.now);
            return true;
        }
        false
    }

    /// Links a connection handed over for watching into its timeout queue,
    /// counting its timeout from the hand-over stamped in its slot.
    fn adopt(&mut self, h: Handle, handoff: Handoff) {
        let Handoff::Watch(kind) = handoff else {
            return;
        };
        let Some(slot) = self.rt.table.slot(h) else {
            return;
        };
        let Ok(state) = slot.state_of(h) else {
            return;
        };
        let waiting = matches!(state, State::Reading | State::Keepalive);
        let matches = match kind {
            Kind::Reading => state == State::Reading,
            Kind::Keepalive => state == State::Keepalive,
            Kind::Header => waiting,
            Kind::Write => state == State::Writing,
            Kind::Linger => state == State::Lingering,
        };
        if !matches {
            return; // stale message: the connection moved on already
        }
        self.rt.faults.hit(crate::failure::Site::EventAdopt);
        if self.stop_deadline.is_some() && waiting {
            self.close(h, state, CloseHow::Quick);
            return;
        }
        // Linked afresh from the stamps in the slot, whatever link it had:
        // a message may come late, but the slot says when the connection
        // began to wait, and whether part of a request came (the header
        // clock, never restarted by later bytes).
        let index = h.index();
        if waiting && slot.header_since() != 0 {
            link(
                &self.rt,
                &mut self.timeouts,
                Kind::Header,
                index,
                slot.header_since(),
            );
        } else {
            link(
                &self.rt,
                &mut self.timeouts,
                kind,
                index,
                slot.watch_since(),
            );
        }
        if kind == Kind::Write {
            self.write_queued[index as usize] = socket::queued_output(slot.fd());
        }
    }

    /// Connections that wait for a worker: queued jobs, and connections
    /// armed in the workers' set that the kernel says are readable (asked
    /// only while every worker thread is busy, so rarely).
    fn readable_waiting(&self) -> usize {
        let workers = &self.rt.workers;
        if !workers.poll.ready_now() {
            return workers.queued();
        }
        let fds: Vec<i32> = self
            .rt
            .table
            .iter()
            .filter(|(_, slot)| matches!(slot.raw_state(), State::Reading | State::Keepalive))
            .map(|(_, slot)| slot.fd())
            .collect();
        workers.queued()
            + socket::readable_now(&fds)
                .into_iter()
                .filter(|&r| r)
                .count()
    }

    /// True when `h` is in keep-alive (its link may be older than its last
    /// trip through a worker, which does not matter here; whether its next
    /// request has arrived is asked apart).
    fn idles_in_keepalive(&self, h: Handle) -> bool {
        self.rt
            .table
            .slot(h)
            .is_some_and(|slot| slot.state_of(h) == Ok(State::Keepalive))
    }

    /// True when the link of `h` that expired in `kind`'s queue still
    /// stands for the connection: in the state the queue watches, with no
    /// later hand-over since the link was made. Links are not removed when
    /// a worker takes a connection that became readable (the worker cannot
    /// touch this thread's lists), so a link can outlive what it watched;
    /// the connection's next hand-over links it again.
    fn still_due(&self, h: Handle, kind: Kind) -> Option<State> {
        let slot = self.rt.table.slot(h)?;
        let state = slot.state_of(h).ok()?;
        let waiting = matches!(state, State::Reading | State::Keepalive);
        let since = match kind {
            Kind::Reading if state == State::Reading && slot.header_since() == 0 => {
                slot.watch_since()
            }
            Kind::Keepalive if state == State::Keepalive && slot.header_since() == 0 => {
                slot.watch_since()
            }
            Kind::Header if waiting && slot.header_since() != 0 => slot.header_since(),
            Kind::Write if state == State::Writing => return Some(state),
            Kind::Linger if state == State::Lingering => return Some(state),
            _ => return None,
        };
        (since.saturating_add(self.rt.conn_timeout_ns(slot, kind)) <= self.now).then_some(state)
    }

    /// Closes a connection the event thread owns (in `state`).
    fn close(&mut self, h: Handle, state: State, how: CloseHow) {
        let Some(slot) = self.rt.table.slot(h) else {
            return;
        };
        self.timeouts.remove(h.index());
        if slot.transition(h, state, State::Closing).is_err() {
            return;
        }
        if state == State::Lingering {
            self.rt.final_close(h, slot, true);
            return;
        }
        let next = self.rt.close_owned(h, slot, how);
        self.adopt(h, next);
    }

    fn drain_inbox(&mut self) {
        while let Some(msg) = self.rt.inbox.pop() {
            match msg {
                Msg::Watch(h, kind) => self.adopt(h, Handoff::Watch(kind)),
                Msg::ListenersChanged => {
                    // Re-register from scratch on the next sync.
                    self.pause_listeners(false);
                }
                Msg::Stop { deadline_ns } => self.begin_stop(deadline_ns),
                Msg::Timer(m) => self.clock.on_msg(&self.rt, m),
            }
        }
    }

    fn expire(&mut self) {
        self.clock.expire(&self.rt, self.now);
        // Waiting connections that are due, for one look at which of them
        // are readable: those have a request and wait for a worker.
        let mut waiting_due = Vec::new();
        for kind in KINDS {
            while let Some(index) = self.timeouts.pop_expired(kind, self.now) {
                let Some(h) = self.rt.table.current_handle(index) else {
                    continue;
                };
                let Some(state) = self.still_due(h, kind) else {
                    continue;
                };
                match kind {
                    Kind::Reading | Kind::Keepalive | Kind::Header => {
                        waiting_due.push((h, state, kind));
                    }
                    Kind::Write => {
                        if self.client_acknowledged(h, index) {
                            continue;
                        }
                        Counters::bump(&self.rt.counters.timed_out);
                        self.close(h, State::Writing, CloseHow::Abort);
                    }
                    Kind::Linger => self.close(h, State::Lingering, CloseHow::Abort),
                }
            }
        }
        if waiting_due.is_empty() {
            return;
        }
        let fds: Vec<i32> = waiting_due
            .iter()
            .map(|(h, ..)| self.rt.table.slot_at(h.index()).fd())
            .collect();
        let readable = socket::readable_now(&fds);
        for (i, (h, state, kind)) in waiting_due.into_iter().enumerate() {
            if readable.get(i).copied().unwrap_or(false) {
                // Not idle: its request came and waits for a worker (every
                // thread is busy). A timeout is for clients, not for the
                // server's own backlog: look again a timeout later.
                link(&self.rt, &mut self.timeouts, kind, h.index(), self.now);
                continue;
            }
            let c = &self.rt.counters;
            Counters::bump(&c.timed_out);
            if kind == Kind::Keepalive {
                Counters::bump(&c.keepalive_expired);
            }
            self.close(h, state, CloseHow::Quick);
        }
    }

    fn accept_some(&mut self) {
        let listeners = self.armed_listeners.clone();
        for (index, lfd) in listeners {
            let Some(listener) = self.rt.listeners.get(index) else {
                continue;
            };
            // A handshake step runs on a non-blocking descriptor.
            let nonblocking = listener.nonblocking() || listener.has_handshake();
            for _ in 0..ACCEPT_BATCH {
                if self.rt.is_stopping() || !self.rt.admits() {
                    return;
                }
                match socket::accept(lfd, nonblocking) {
                    Ok((fd, peer)) => {
                        self.backoff_next_ns = BACKOFF_FIRST_NS;
                        self.admit(index, fd, &peer);
                    }
                    Err(e) if sys::would_block(&e) => break,
                    Err(e) if socket::is_resource_exhaustion(&e) => {
                        // Out of descriptors: stop polling the listeners for a
                        // while instead of spinning on their readiness.
                        Counters::bump(&self.rt.counters.accept_backoffs);
                        self.backoff_until = Some(self.now + self.backoff_next_ns);
                        self.backoff_next_ns = (self.backoff_next_ns * 2).min(BACKOFF_MAX_NS);
                        return;
                    }
                    // ECONNABORTED, EPROTO, EPERM (firewall): that client only.
                    Err(_) => continue,
                }
            }
        }
    }

    /// Takes a connection just accepted on listener `index`: records what
    /// the accept told, asks the listener's accept hook, then either runs
    /// the handler at once (the server speaks first) or arms the connection
    /// in the workers' set, where the workers wait for its first request.
    ///
    /// The connection is Queued (owned here, no job yet) until then, so an
    /// `evmpm_notify` from the hook only raises the flag: the notified run
    /// comes once the connection waits, armed, never while this thread
    /// still registers it; on a server-first listener it comes after the
    /// accepted run.
    fn admit(&mut self, index: u32, fd: i32, peer: &socket::Address) {
        let Some(listener) = self.rt.listeners.get(index) else {
            sys::close(fd);
            return;
        };
        // The slot keeps the first `PEER_BYTES` of it.
        let peer_bytes = peer.bytes();
        let close_how = listener.close_how() as u32;
        let handshake = listener.has_handshake();
        let allocated = self.rt.table.allocate_with(fd, State::Queued, |slot| {
            slot.set_accept_facts(
                index,
                peer_bytes,
                listener.timeouts_ms,
                close_how,
                handshake,
            );
        });
        let Some(h) = allocated else {
            sys::close(fd);
            Counters::bump(&self.rt.counters.refused);
            return;
        };
        self.rt.open.fetch_add(1, Ordering::AcqRel);
        Counters::bump(&self.rt.counters.accepted);
        let slot = self.rt.table.slot_at(h.index());
        slot.note_watch_since(self.now);
        let hooked = listener.on_accept.is_some();
        if hooked && !self.rt.accept_hook(h, slot, listener, peer) {
            Counters::bump(&self.rt.counters.denied);
            self.close(h, State::Queued, CloseHow::Abort);
            return;
        }
        let interest = epoll::READABLE | epoll::PEER_CLOSED | epoll::ONESHOT;
        if handshake {
            // The handshake first, under the header timeout from now; the
            // client speaks first in it. A server-first handler runs once
            // it is done (see the poller). No notify is delivered before
            // it is done, so waiting may begin before the registration.
            if slot.transition(h, State::Queued, State::Reading).is_err() {
                return; // owned here: cannot happen
            }
            if self.rt.workers.poll.add(fd, interest, h.0).is_err() {
                Counters::bump(&self.rt.counters.refused);
                self.close(h, State::Reading, CloseHow::Abort);
                return;
            }
            slot.set_header_since(self.now);
            link(
                &self.rt,
                &mut self.timeouts,
                Kind::Header,
                h.index(),
                self.now,
            );
            return;
        }
        if listener.server_first() {
            // Registered without interest, so a park can re-arm it with MOD.
            if self.rt.workers.poll.add(fd, epoll::ONESHOT, h.0).is_err() {
                Counters::bump(&self.rt.counters.refused);
                self.close(h, State::Queued, CloseHow::Abort);
                return;
            }
            self.rt.workers.push(Job::run(h, EVMPM_WAKE_ACCEPTED));
            return;
        }
        // Once it is Reading, a notify takes it at once. Only the hook can
        // have passed the handle on to a thread that would: then the
        // connection is registered before, and armed after, so the run's
        // park (MOD) finds it registered.
        if hooked && self.rt.workers.poll.add(fd, epoll::ONESHOT, h.0).is_err() {
            Counters::bump(&self.rt.counters.refused);
            self.close(h, State::Queued, CloseHow::Abort);
            return;
        }
        let armed = if hooked {
            // Pinned while it is armed: a notify may take it as soon as it
            // is Reading (see `Runtime::wait_armed`).
            match self
                .rt
                .wait_armed(h, slot, State::Queued, State::Reading, interest)
            {
                Armed::Yes => true,
                Armed::Failed => false,
                Armed::Lost => return, // owned here: cannot happen
            }
        } else {
            if slot.transition(h, State::Queued, State::Reading).is_err() {
                return; // owned here: cannot happen
            }
            self.rt.workers.poll.add(fd, interest, h.0).is_ok()
        };
        if !armed {
            // Unless a notify took it meanwhile (its run's park re-arms it).
            if slot.state_of(h) == Ok(State::Reading) {
                Counters::bump(&self.rt.counters.refused);
                self.close(h, State::Reading, CloseHow::Abort);
            }
            return;
        }
        link(
            &self.rt,
            &mut self.timeouts,
            Kind::Reading,
            h.index(),
            self.now,
        );
        // The hook may have called `evmpm_notify`.
        self.rt.deliver_notify(h, slot, State::Reading);
    }

    /// Registers or removes the listeners as admission, back-off and stop say.
    fn sync_listeners(&mut self) {
        if let Some(until) = self.backoff_until {
            if self.now >= until {
                self.backoff_until = None;
            }
        }
        let want = !self.rt.is_stopping() && self.backoff_until.is_none() && self.rt.admits();
        let armed = !self.rt.accept_paused();
        if want && !armed {
            self.resume_listeners();
        } else if !want && armed {
            self.pause_listeners(true);
            // Dekker with `Runtime::capacity_freed`: a worker that freed
            // capacity before the pause was published did not see it, and
            // did not wake this thread; look again now that it is.
            fence(Ordering::SeqCst);
            if !self.rt.is_stopping() && self.backoff_until.is_none() && self.rt.admits() {
                self.resume_listeners();
            }
        }
    }

    fn resume_listeners(&mut self) {
        for (index, listener) in self.rt.listeners.iter() {
            let interest = epoll::READABLE | epoll::EXCLUSIVE;
            if self
                .rt
                .epoll
                .add(listener.fd, interest, u64::from(index) + 1)
                .is_ok()
            {
                self.armed_listeners.push((index, listener.fd));
            }
        }
        self.rt.set_accept_paused(false);
    }

    fn pause_listeners(&mut self, count_it: bool) {
        for (_, fd) in self.armed_listeners.drain(..) {
            let _ = self.rt.epoll.delete(fd);
        }
        if count_it && !self.rt.is_stopping() && !self.rt.accept_paused() {
            Counters::bump(&self.rt.counters.accept_pauses);
        }
        self.rt.set_accept_paused(true);
    }

    /// Sheds idle keep-alive connections, oldest first, when the workers are
    /// stalled: all busy, work waiting, and none taken for `shed_ns`.
    /// A pool that is merely saturated keeps taking work and sheds nothing.
    fn shed(&mut self) {
        let shed_ns = self.rt.config.shed_ns;
        let workers = &self.rt.workers;
        // Only when every worker thread there may be is in a handler is it
        // worth asking whether connections wait for one.
        let all_busy =
            shed_ns != 0 && self.stop_deadline.is_none() && workers.busy() >= workers.max;
        let waiting = if all_busy { self.readable_waiting() } else { 0 };
        if waiting == 0 {
            self.stall = None;
            return;
        }
        let taken = workers.started();
        match self.stall {
            Some((seen, since)) if seen == taken => {
                if self.now.saturating_sub(since) < shed_ns {
                    return;
                }
                // Oldest first, only the idle: a connection in keep-alive
                // whose next request has arrived waits for a worker, and is
                // part of the work, not of what can go.
                let want = waiting.min(SHED_BATCH);
                let (mut closed, mut looked, mut waiting_ones) = (0, 0, Vec::new());
                while closed < want && looked < 4 * SHED_BATCH {
                    let Some(index) = self.timeouts.pop_oldest(Kind::Keepalive) else {
                        break;
                    };
                    looked += 1;
                    let Some(h) = self.rt.table.current_handle(index) else {
                        continue;
                    };
                    if !self.idles_in_keepalive(h) {
                        continue; // a link its connection has outlived
                    }
                    let fd = self.rt.table.slot_at(index).fd();
                    if socket::readable_now(&[fd]).first() == Some(&true) {
                        waiting_ones.push(index);
                        continue;
                    }
                    Counters::bump(&self.rt.counters.shed);
                    self.close(h, State::Keepalive, CloseHow::Quick);
                    closed += 1;
                }
                for index in waiting_ones {
                    let slot = self.rt.table.slot_at(index);
                    link(
                        &self.rt,
                        &mut self.timeouts,
                        Kind::Keepalive,
                        index,
                        slot.watch_since(),
                    );
                }
                self.stall = Some((taken, self.now));
            }
            _ => self.stall = Some((taken, self.now)),
        }
    }

    fn begin_stop(&mut self, deadline_ns: u64) {
        self.stop_deadline = Some(deadline_ns);
        self.pause_listeners(false);
        // Idle connections go at once: waiting for a first request, parked
        // between requests, or still sending an incomplete one. One whose
        // request has arrived (readable: the receive low-water mark holds
        // back a partial one) waits for a worker, which serves it: it stays
        // linked, for the deadline.
        let mut candidates = Vec::new();
        for kind in [Kind::Reading, Kind::Keepalive, Kind::Header] {
            while let Some(index) = self.timeouts.pop_oldest(kind) {
                let slot = self.rt.table.slot_at(index);
                let Some(h) = self.rt.table.current_handle(index) else {
                    continue;
                };
                if let Ok(state @ (State::Reading | State::Keepalive)) = slot.state_of(h) {
                    if slot.handshake_pending() {
                        // No request can have come: idle, whatever waits,
                        // and nothing is owed to it: no lingering close.
                        self.close(h, state, CloseHow::Abort);
                        continue;
                    }
                    candidates.push((h, state, kind, slot.fd()));
                }
            }
        }
        let fds: Vec<i32> = candidates.iter().map(|c| c.3).collect();
        let readable = socket::readable_now(&fds);
        for (i, (h, state, kind, _)) in candidates.into_iter().enumerate() {
            if readable.get(i).copied().unwrap_or(false) {
                link(&self.rt, &mut self.timeouts, kind, h.index(), self.now);
            } else {
                self.close(h, state, CloseHow::Quick);
            }
        }
    }

    fn stop_progress(&mut self) -> Option<bool> {
        let deadline = self.stop_deadline?;
        if self.rt.open.load(Ordering::Acquire) == 0 {
            return Some(false);
        }
        if self.now < deadline {
            return None;
        }
        // Deadline: nothing new may be handed to us from here on.
        self.rt.event_thread_alive.store(false, Ordering::SeqCst);
        self.drain_inbox();
        for index in 0..self.rt.table.capacity() as u32 {
            let slot = self.rt.table.slot_at(index);
            let Some(h) = self.rt.table.current_handle(index) else {
                continue;
            };
            let Ok(state) = slot.state_of(h) else {
                continue;
            };
            match state {
                // Owned by this thread only once linked into a timeout
                // queue: one still unlinked is a worker's, between taking
                // the state and arming its epoll interest (it finds this
                // thread gone when it hands the connection over, and
                // closes it itself: see `Runtime::hand_over`).
                State::Reading | State::Keepalive | State::Writing | State::Lingering
                    if self.timeouts.kind_of(index).is_some() =>
                {
                    self.close(h, state, CloseHow::Abort);
                }
                // With close callbacks on workers, a queued connection is
                // left to them, or to the stop's sweep: closing it here
                // would queue it a second time.
                State::Queued if self.rt.config.close_on_worker => {}
                // Owned by whoever moves them out of the state by CAS.
                State::Queued | State::Suspended => self.close(h, state, CloseHow::Abort),
                s if s.in_handler() => {
                    slot.shutdown_if_in_handler(h);
                }
                _ => {}
            }
        }
        Some(true)
    }
}

/// Links slot `index` into the queue of `kind` with the connection's own
/// timeout of that kind, its wait counted from `since_ns`. (A function of
/// the two fields, so callers may hold a slot borrowed from `rt`.)
fn link(rt: &Runtime, timeouts: &mut TimeoutQueues, kind: Kind, index: u32, since_ns: u64) {
    let timeout = rt.conn_timeout_ns(rt.table.slot_at(index), kind);
    timeouts.insert(kind, index, since_ns, timeout);
}

/// After the event thread has gone: connections handed to it late (a
/// worker that raced the forced stop) are closed by whoever calls this.
pub fn abort_leftovers(rt: &Runtime) {
    while let Some(msg) = rt.inbox.pop() {
        let Msg::Watch(h, _) = msg else { continue };
        let Some(slot) = rt.table.slot(h) else {
            continue;
        };
        let Ok(state) = slot.state_of(h) else {
            continue;
        };
        if !matches!(
            state,
            State::Keepalive | State::Writing | State::Lingering | State::Reading
        ) {
            continue;
        }
        if slot.transition(h, state, State::Closing).is_ok() {
            if state == State::Lingering {
                rt.final_close(h, slot, true);
            } else {
                let _ = rt.close_owned(h, slot, CloseHow::Abort);
            }
        }
    }
}

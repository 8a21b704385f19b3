//! Counters, and the stats snapshot behind `evmpm_get_stats`.
//!
//! Per-state gauges are not kept on the hot path: a snapshot counts them by
//! scanning the connection table (a few microseconds per thousand slots),
//! so parking and waking pay for no shared counter updates.

use crate::conn::State;
use crate::conn::Table;
use crate::ffi::types::evmpm_stats;
use crate::sys::socket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters. Relaxed: each is an independent tally.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub timed_out: AtomicU64,
    pub keepalive_expired: AtomicU64,
    pub shed: AtomicU64,
    pub refused: AtomicU64,
    pub rejected: AtomicU64,
    pub accept_pauses: AtomicU64,
    pub accept_backoffs: AtomicU64,
    pub internal_errors: AtomicU64,
    pub denied: AtomicU64,
    pub handshakes: AtomicU64,
    pub handshakes_failed: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// What a snapshot reads besides the table and the counters.
pub struct Gauges {
    pub workers: usize,
    pub workers_busy: usize,
    pub accepting_paused: bool,
    pub worker_threads: usize,
    pub handlers_blocked: usize,
    pub blocked_replaced: u64,
}

pub fn snapshot(table: &Table, counters: &Counters, gauges: Gauges) -> evmpm_stats {
    let mut s = evmpm_stats::default();
    // Connections waiting for a request are armed in the workers' epoll
    // set; whether one has become readable and waits for a worker, only
    // the kernel knows: ask it, in one `poll` of them all.
    let mut waiting = Vec::new();
    for (_, slot) in table.iter() {
        let state = slot.raw_state();
        // One still in its handshake counts there whether bytes of it
        // wait or not.
        if matches!(state, State::Reading | State::Keepalive) && !slot.handshake_pending() {
            waiting.push((slot.fd(), state == State::Reading));
        }
        let gauge = match state {
            State::Free => continue,
            State::Reading | State::ReadingCheck if slot.handshake_pending() => {
                &mut s.conns_handshake
            }
            State::Reading | State::ReadingCheck => &mut s.conns_reading,
            State::Queued => &mut s.conns_queued,
            State::Suspended => &mut s.conns_suspended,
            State::Keepalive | State::KeepaliveCheck => &mut s.conns_keepalive,
            State::Writing => &mut s.conns_writing,
            State::Lingering | State::Closing => &mut s.conns_lingering,
            _ => &mut s.conns_in_handler,
        };
        *gauge += 1;
        s.connections += 1;
    }
    let fds: Vec<i32> = waiting.iter().map(|&(fd, _)| fd).collect();
    for (i, readable) in socket::readable_now(&fds).into_iter().enumerate() {
        if readable {
            let gauge = if waiting[i].1 {
                &mut s.conns_reading
            } else {
                &mut s.conns_keepalive
            };
            *gauge = gauge.saturating_sub(1);
            s.conns_queued += 1;
        }
    }
    let busy = gauges.workers_busy as u64;
    s.workers_busy = busy;
    s.workers_idle = (gauges.workers as u64).saturating_sub(busy);
    let c = counters;
    s.accepted = c.accepted.load(Relaxed);
    s.closed = c.closed.load(Relaxed);
    s.timed_out = c.timed_out.load(Relaxed);
    s.keepalive_expired = c.keepalive_expired.load(Relaxed);
    s.shed = c.shed.load(Relaxed);
    s.refused = c.refused.load(Relaxed);
    s.rejected = c.rejected.load(Relaxed);
    s.accept_pauses = c.accept_pauses.load(Relaxed);
    s.accept_backoffs = c.accept_backoffs.load(Relaxed);
    s.accepting_paused = u64::from(gauges.accepting_paused);
    s.internal_errors = c.internal_errors.load(Relaxed);
    s.worker_threads = gauges.worker_threads as u64;
    s.handlers_blocked = gauges.handlers_blocked as u64;
    s.blocked_replaced = gauges.blocked_replaced;
    s.denied = c.denied.load(Relaxed);
    s.handshakes = c.handshakes.load(Relaxed);
    s.handshakes_failed = c.handshakes_failed.load(Relaxed);
    s
}

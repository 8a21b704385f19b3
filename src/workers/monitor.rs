//! The monitor: notices handlers that block and runs another thread in
//! their place.
//!
//! It runs at idle scheduling priority (SCHED_IDLE): while the CPUs are
//! busy with short handlers it does not get to run, so it costs them
//! nothing; as soon as a CPU would go idle because handlers sleep (a
//! backend call, a lock, a slow disk), it runs, looks at every handler that
//! has run longer than `STALL_NS`, and asks the kernel whether its thread
//! sleeps. A thread that sleeps is counted blocked and a spare is released
//! (or started, up to `max`) to keep `target` threads active. One that
//! runs, or waits for a CPU, is busy, not blocked: more threads would only
//! compete with it.
//!
//! Between looks it sleeps `TICK` while every active thread is in a
//! handler not counted blocked. While one is not (it waits for work, or is
//! between jobs), a blocked handler delays nothing: that thread takes what
//! comes, and looks at the others between its jobs. The monitor then backs
//! off, doubling its sleep up to `SLACK_TICK`; each of its wake-ups costs a
//! context switch and a timer (about 14 µs of CPU on a virtual machine: a
//! twentieth of a TLS handshake when it woke every 100 µs through one). It
//! backs off to `IDLE_TICK` when no handler has started since its last look
//! and none runs but those counted blocked, so an idle runtime wakes it ten
//! times a second.

use super::{Workers, STALL_NS};
use crate::runtime::{mark_current_thread, Runtime};
use crate::sync::atomic::Ordering;
use crate::sys::thread::{is_asleep, set_idle_priority};
use std::sync::Arc;
use std::time::Duration;

const TICK: Duration = Duration::from_micros(100);
const SLACK_TICK: Duration = Duration::from_micros(400);
const IDLE_TICK: Duration = Duration::from_millis(100);

pub fn monitor_main(rt: Arc<Runtime>) {
    mark_current_thread(&rt);
    let w = &rt.workers;
    w.set_monitor(std::thread::current());
    // Without the idle class (a kernel that refuses it) the monitor still
    // works; it then competes with handlers for its short looks.
    let _ = set_idle_priority();
    let mut tick = TICK;
    let mut seen_started = usize::MAX;
    while !w.exiting() {
        std::thread::park_timeout(tick);
        let started = w.started();
        let running = w.running_handlers();
        if running == 0 && started == seen_started {
            tick = (tick * 2).min(IDLE_TICK);
            continue;
        }
        // Handlers counted blocked are in `busy` but hold no active slot:
        // with many asleep (a backend call in every tenth request), the
        // active threads may still be free.
        tick = if running < w.active.load(Ordering::Acquire) {
            (tick * 2).clamp(TICK, SLACK_TICK)
        } else {
            TICK
        };
        seen_started = started;
        let outcome = crate::failure::catch(|| look_if_due(&rt));
        if let Err(panic) = outcome {
            rt.internal_error("the worker monitor", &panic);
            return;
        }
    }
}

/// Looks at the handlers that have run longer than `STALL_NS`, unless
/// someone looked within the last `LOOK_EVERY_NS`.
///
/// The monitor is not the only one to look: it runs at idle priority, so
/// while the CPUs are busy (with other work than ours, a load generator on
/// the same machine, say) it may not get to run while handlers block. So
/// the workers that still run look too, between their jobs, and the event
/// thread looks whenever it wakes; whoever comes first does it. A look
/// that finds nothing costs a few atomic loads; asking the kernel about a
/// handler older than `STALL_NS` costs three system calls (about 2 µs),
/// so a handler found running is asked about again only when its age has
/// doubled. (Looking later, at 1 ms, while the CPUs are busy saved nothing
/// measurable and cost a quarter of the throughput of a load where one
/// request in ten blocks 5 ms: every blocked handler held its running slot
/// that much longer.)
pub fn look_if_due(rt: &Arc<Runtime>) {
    let w = &rt.workers;
    if w.running_handlers() == 0 {
        return;
    }
    let now = rt.now_ns();
    let last = w.last_look.load(Ordering::Relaxed);
    if now.saturating_sub(last) < LOOK_EVERY_NS
        || w.last_look
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    look(rt, w, now);
}

/// How often handlers are looked at, at most.
const LOOK_EVERY_NS: u64 = 50_000;

/// The longest a handler found running waits for its next look.
const MAX_LOOK_GAP_NS: u64 = 1_000_000;

/// One look at every worker's handler.
fn look(rt: &Arc<Runtime>, w: &Workers, now: u64) {
    for rec in w.records.iter() {
        let Some((word, started)) = rec.running_handler() else {
            continue;
        };
        let age = now.saturating_sub(started);
        if age < STALL_NS {
            continue;
        }
        if rec.looked_word.load(Ordering::Relaxed) == word
            && now < rec.next_look_ns.load(Ordering::Relaxed)
        {
            continue; // found running lately; asked again later
        }
        if !is_asleep(rec.tid.load(Ordering::Acquire)) {
            // Running, or waiting for a CPU: busy, not blocked. It is asked
            // about again once it has run as long again (at most
            // `MAX_LOOK_GAP_NS` later): a handler that computes (a TLS
            // handshake, a large sendfile) is asked a few times, not every
            // `LOOK_EVERY_NS`, and one that blocks after computing is still
            // found within its own age.
            rec.next_look_ns
                .store(now + age.min(MAX_LOOK_GAP_NS), Ordering::Relaxed);
            rec.looked_word.store(word, Ordering::Relaxed);
            continue;
        }
        // Counted once: the worker's swap at the handler's end and this CAS
        // agree on whether it was.
        if !rec.mark_blocked(word, now) {
            continue;
        }
        w.active.fetch_sub(1, Ordering::AcqRel);
        w.blocked_now.fetch_add(1, Ordering::AcqRel);
        if w.release_spare() || rt.start_spare() {
            w.replaced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! The event thread's inbox: what other threads hand it, without a lock.
//!
//! Two queues behind one `push`/`pop`:
//!
//! - **watches** (a connection handed over to wait under a timeout), the
//!   one message of every keep-alive request: a ring allocated once
//!   (crossbeam's `ArrayQueue`, Vyukov's bounded MPMC array queue), so a
//!   hand-over allocates nothing;
//! - **the rest** (timers, listeners, stop), and watches when the ring is
//!   full: crossbeam's unbounded `SegQueue`.
//!
//! Why not one `SegQueue`: it allocates a block per 31 messages in the
//! producer and frees it in the consumer, and with glibc's allocator a free
//! takes the lock of the arena the block came from, a worker's. The event
//! thread, which may sleep for seconds while connections are handed over
//! under long timeouts, then freed thousands of blocks at once, and
//! workers' own `malloc` calls waited for it: a handler asleep in `futex`
//! is counted blocked, and the pool ran a spare thread in its place.
//!
//! The ring is also what bounds that sleep: once it is half full the
//! producer wakes the event thread (`push` says so), one wake-up per
//! half-ring of hand-overs.
//!
//! Order: the rest keep their order (one FIFO: a timer's link before its
//! free). A watch may be taken before or after messages pushed around it,
//! and one that overflowed after a later one; that is safe because the
//! event thread (`EventLoop::adopt`) takes a watch only if the connection
//! is still in the state the watch is for, and links it from the stamps in
//! its slot, not from the message: any order gives the same links.

use crate::conn::handle::Handle;
use crate::message::Msg;
use crate::timeouts::Kind;
use crossbeam_queue::{ArrayQueue, SegQueue};

/// The most watches the ring holds (96 KiB of ring). Half of it is the
/// hand-overs between two drains at most, a few per connection of a small
/// runtime, 12 ms at 170k requests per second.
const WATCH_RING: usize = 4096;

pub struct Inbox {
    /// Invariant: holds only watches. Bounded, allocated at creation.
    watches: ArrayQueue<(Handle, Kind)>,
    /// Every other message, and the watches the ring had no room for.
    rest: SegQueue<Msg>,
}

impl Inbox {
    /// An inbox whose watch ring holds four hand-overs per connection of
    /// `connection_limit`, from 64 to `WATCH_RING`.
    pub fn new(connection_limit: usize) -> Inbox {
        Inbox {
            watches: ArrayQueue::new(connection_limit.saturating_mul(4).clamp(64, WATCH_RING)),
            rest: SegQueue::new(),
        }
    }

    /// Queues `msg`. True when the ring is half full or more: the event
    /// thread should drain it now rather than at its planned wake-up.
    pub fn push(&self, msg: Msg) -> bool {
        if let Msg::Watch(h, kind) = msg {
            match self.watches.push((h, kind)) {
                Ok(()) => return self.watches.len() >= self.watches.capacity() / 2,
                Err(_) => {
                    self.rest.push(msg);
                    return true;
                }
            }
        }
        self.rest.push(msg);
        false
    }

    /// The next message: the rest first, then watches.
    pub fn pop(&self) -> Option<Msg> {
        self.rest
            .pop()
            .or_else(|| self.watches.pop().map(|(h, kind)| Msg::Watch(h, kind)))
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty() && self.watches.is_empty()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::message::TimerMsg;

    fn watch(i: u64) -> Msg {
        Msg::Watch(Handle(i), Kind::Keepalive)
    }

    /// The ring asks for a drain from half full on; watches past its room
    /// go to the other queue; nothing is lost, and the other messages keep
    /// their order.
    #[test]
    fn a_full_ring_asks_for_a_drain_and_loses_nothing() {
        let inbox = Inbox::new(1);
        let ring = inbox.watches.capacity();
        assert_eq!(ring, 64);
        for i in 0..ring as u64 + 10 {
            let drain = inbox.push(watch(i));
            assert_eq!(drain, i + 1 >= ring as u64 / 2, "after {} watches", i + 1);
        }
        assert!(!inbox.push(Msg::Timer(TimerMsg::Link(7))));
        assert!(!inbox.push(Msg::Timer(TimerMsg::Free(7))));
        let mut watches = Vec::new();
        let mut timers = Vec::new();
        while let Some(msg) = inbox.pop() {
            match msg {
                Msg::Watch(h, _) => watches.push(h.0),
                Msg::Timer(TimerMsg::Link(id)) => timers.push(("link", id)),
                Msg::Timer(TimerMsg::Free(id)) => timers.push(("free", id)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(inbox.is_empty());
        watches.sort_unstable();
        assert_eq!(watches, (0..ring as u64 + 10).collect::<Vec<_>>());
        assert_eq!(timers, [("link", 7), ("free", 7)]);
    }
}

//! Timeout queues: one FIFO per timeout kind, intrusive and doubly linked
//! through per-slot link records.
//!
//! Every connection in a kind waits the same duration, so inserting at the
//! tail keeps each list sorted by deadline: insert, removal and expiry are all
//! O(1), and the event thread's next wake-up is the earliest of the heads.
//! (Apache's event MPM keeps its timeout queues the same way.)
//!
//! Owned by the event thread alone; nothing here is shared or atomic.

/// The kinds of timeout, each with its own list and duration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// New connection, waiting for its first byte (`read_timeout_ms`).
    Reading = 0,
    /// Parked between requests (`keepalive_timeout_ms`).
    Keepalive = 1,
    /// Write completion without progress (`write_timeout_ms`).
    Write = 2,
    /// Lingering close (`linger_timeout_ms`).
    Linger = 3,
    /// Part of a request arrived, the readiness check waits for the rest
    /// (`header_timeout_ms`, from the first byte).
    Header = 4,
}

pub(crate) const KINDS: [Kind; 5] = [
    Kind::Reading,
    Kind::Keepalive,
    Kind::Write,
    Kind::Linger,
    Kind::Header,
];

const NIL: u32 = u32::MAX;
const UNLINKED: u8 = u8::MAX;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    /// The `Kind` this slot is linked into, or UNLINKED.
    kind: u8,
    deadline: u64,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
    timeout_ns: u64,
}

pub struct TimeoutQueues {
    /// Indexed by slot index. Invariant: `links[i].kind != UNLINKED` iff `i`
    /// is in exactly that list, between its `prev` and `next`.
    links: Vec<Link>,
    lists: [List; 5],
}

impl TimeoutQueues {
    /// `timeouts_ns[k]` is the duration for `KINDS[k]`.
    pub fn new(slots: usize, timeouts_ns: [u64; 5]) -> TimeoutQueues {
        let unlinked = Link {
            prev: NIL,
            next: NIL,
            kind: UNLINKED,
            deadline: 0,
        };
        let list = |t| List {
            head: NIL,
            tail: NIL,
            len: 0,
            timeout_ns: t,
        };
        TimeoutQueues {
            links: vec![unlinked; slots],
            lists: timeouts_ns.map(list),
        }
    }

    /// Appends `index` to `kind`'s list with deadline `since + timeout`,
    /// unlinking it first from wherever it was (which also restarts its clock).
    ///
    /// Hand-overs from other threads reach the event thread a little out of
    /// order, so `since` may be older than the tail's: the deadline is then
    /// raised to the tail's, which keeps the list sorted (the invariant that
    /// makes expiry O(1)) at the cost of a timeout that is late by that
    /// difference, never early.
    pub fn insert(&mut self, kind: Kind, index: u32, since_ns: u64) {
        self.remove(index);
        let k = kind as usize;
        let tail = self.lists[k].tail;
        let mut deadline = since_ns.saturating_add(self.lists[k].timeout_ns);
        if tail != NIL {
            deadline = deadline.max(self.links[tail as usize].deadline);
        }
        self.links[index as usize] = Link {
            prev: tail,
            next: NIL,
            kind: k as u8,
            deadline,
        };
        if tail == NIL {
            self.lists[k].head = index;
        } else {
            self.links[tail as usize].next = index;
        }
        self.lists[k].tail = index;
        self.lists[k].len += 1;
    }

    /// Unlinks `index`; returns the kind it was in.
    pub fn remove(&mut self, index: u32) -> Option<Kind> {
        let link = self.links[index as usize];
        if link.kind == UNLINKED {
            return None;
        }
        let k = link.kind as usize;
        if link.prev == NIL {
            self.lists[k].head = link.next;
        } else {
            self.links[link.prev as usize].next = link.next;
        }
        if link.next == NIL {
            self.lists[k].tail = link.prev;
        } else {
            self.links[link.next as usize].prev = link.prev;
        }
        self.lists[k].len -= 1;
        let l = &mut self.links[index as usize];
        l.kind = UNLINKED;
        l.prev = NIL;
        l.next = NIL;
        Some(KINDS[k])
    }

    pub fn kind_of(&self, index: u32) -> Option<Kind> {
        let k = self.links[index as usize].kind;
        (k != UNLINKED).then(|| KINDS[k as usize])
    }

    /// Unlinks and returns the head of `kind`'s list if its deadline passed.
    pub fn pop_expired(&mut self, kind: Kind, now_ns: u64) -> Option<u32> {
        let head = self.lists[kind as usize].head;
        if head == NIL || self.links[head as usize].deadline > now_ns {
            return None;
        }
        self.remove(head);
        Some(head)
    }

    /// Unlinks and returns the oldest entry of `kind`, expired or not.
    pub fn pop_oldest(&mut self, kind: Kind) -> Option<u32> {
        let head = self.lists[kind as usize].head;
        if head == NIL {
            return None;
        }
        self.remove(head);
        Some(head)
    }

    /// The earliest deadline over all lists.
    pub fn next_deadline(&self) -> Option<u64> {
        self.lists
            .iter()
            .filter(|l| l.head != NIL)
            .map(|l| self.links[l.head as usize].deadline)
            .min()
    }

    #[cfg(test)]
    pub fn len(&self, kind: Kind) -> usize {
        self.lists[kind as usize].len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn queues() -> TimeoutQueues {
        TimeoutQueues::new(16, [10 * MS, 20 * MS, 30 * MS, 40 * MS, 50 * MS])
    }

    #[test]
    fn expiry_is_fifo_and_respects_deadlines() {
        let mut q = queues();
        q.insert(Kind::Keepalive, 3, 0);
        q.insert(Kind::Keepalive, 1, MS);
        q.insert(Kind::Keepalive, 2, 2 * MS);
        assert_eq!(q.next_deadline(), Some(20 * MS));
        assert_eq!(q.pop_expired(Kind::Keepalive, 19 * MS), None);
        assert_eq!(q.pop_expired(Kind::Keepalive, 21 * MS), Some(3));
        assert_eq!(q.pop_expired(Kind::Keepalive, 21 * MS), Some(1));
        assert_eq!(q.pop_expired(Kind::Keepalive, 21 * MS), None);
        assert_eq!(q.len(Kind::Keepalive), 1);
    }

    /// A hand-over stamped before the tail's keeps the list sorted: its
    /// deadline rises to the tail's, it expires after the tail, never early.
    #[test]
    fn an_older_stamp_than_the_tail_is_never_expired_early() {
        let mut q = queues();
        q.insert(Kind::Keepalive, 1, 5 * MS);
        q.insert(Kind::Keepalive, 2, 3 * MS);
        assert_eq!(q.next_deadline(), Some(25 * MS));
        assert_eq!(q.pop_expired(Kind::Keepalive, 24 * MS), None);
        assert_eq!(q.pop_expired(Kind::Keepalive, 25 * MS), Some(1));
        assert_eq!(q.pop_expired(Kind::Keepalive, 25 * MS), Some(2));
    }

    #[test]
    fn removal_from_head_middle_and_tail_keeps_links_consistent() {
        let mut q = queues();
        for i in 0..5 {
            q.insert(Kind::Write, i, u64::from(i));
        }
        assert_eq!(q.remove(2), Some(Kind::Write));
        assert_eq!(q.remove(0), Some(Kind::Write));
        assert_eq!(q.remove(4), Some(Kind::Write));
        assert_eq!(q.remove(4), None);
        assert_eq!(q.len(Kind::Write), 2);
        assert_eq!(q.pop_oldest(Kind::Write), Some(1));
        assert_eq!(q.pop_oldest(Kind::Write), Some(3));
        assert_eq!(q.pop_oldest(Kind::Write), None);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn reinsert_moves_between_lists_and_restarts_the_clock() {
        let mut q = queues();
        q.insert(Kind::Reading, 7, 0);
        q.insert(Kind::Keepalive, 7, 5 * MS);
        assert_eq!(q.kind_of(7), Some(Kind::Keepalive));
        assert_eq!(q.len(Kind::Reading), 0);
        assert_eq!(q.next_deadline(), Some(25 * MS));
        q.insert(Kind::Keepalive, 7, 9 * MS);
        assert_eq!(q.len(Kind::Keepalive), 1);
        assert_eq!(q.next_deadline(), Some(29 * MS));
    }

    #[test]
    fn next_deadline_is_the_minimum_over_lists() {
        let mut q = queues();
        q.insert(Kind::Linger, 1, 0); // 40
        q.insert(Kind::Reading, 2, 5 * MS); // 15
        q.insert(Kind::Keepalive, 3, 0); // 20
        assert_eq!(q.next_deadline(), Some(15 * MS));
    }

    #[test]
    fn large_lists_stay_consistent() {
        for n in [10u32, 100_000] {
            let mut q = TimeoutQueues::new(n as usize, [MS; 5]);
            for i in 0..n {
                q.insert(Kind::Keepalive, i, 0);
            }
            assert_eq!(q.remove(n / 2), Some(Kind::Keepalive));
            assert_eq!(q.pop_expired(Kind::Keepalive, 2 * MS), Some(0));
            assert_eq!(q.len(Kind::Keepalive), n as usize - 2);
        }
    }
}

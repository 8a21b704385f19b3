//! Timeout queues: FIFO lists, intrusive and doubly linked through
//! per-slot link records, one list per timeout kind and duration.
//!
//! Every connection in a list waits the same duration, so inserting at the
//! tail keeps each list sorted by deadline: insert, removal and expiry are all
//! O(1), and the event thread's next wake-up is the earliest of the heads.
//! (Apache's event MPM keeps its timeout queues the same way.) Most
//! connections share their kind's configured duration, so most kinds have
//! one list; listeners and `evmpm_conn_set_timeouts` may add a few more.
//! The first `EXACT_LISTS` durations of a kind get exact lists; past those,
//! a new duration is rounded up to 6 significant bits of milliseconds (at
//! most 1/32 later than asked, never earlier), which bounds the lists a
//! host can make to a few hundred however many values it uses.
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
const UNLINKED: u16 = u16::MAX;

/// A timeout that never expires (`EVMPM_TIMEOUT_NONE`): its deadline
/// saturates at the end of time, and its list never comes due.
pub const NEVER: u64 = u64::MAX;

/// Durations of one kind that get a list of their own, exactly.
const EXACT_LISTS: usize = 16;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    /// The index of the list this slot is linked into, or UNLINKED.
    list: u16,
    /// When the wait began, and when it ends.
    since: u64,
    deadline: u64,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
    kind: Kind,
    timeout_ns: u64,
}

pub struct TimeoutQueues {
    /// Indexed by slot index. Invariant: `links[i].list != UNLINKED` iff `i`
    /// is in exactly that list, between its `prev` and `next`.
    links: Vec<Link>,
    /// Invariant: each list holds one kind and one duration, sorted by
    /// deadline from head to tail. Lists are never removed (an empty one
    /// costs a look per turn).
    lists: Vec<List>,
    /// For each kind, the indices of its lists in `lists`.
    by_kind: [Vec<u16>; 5],
}

impl TimeoutQueues {
    /// Queues for `slots` connections; `timeouts_ns[k]` is `KINDS[k]`'s
    /// configured duration, whose list is made first.
    pub fn new(slots: usize, timeouts_ns: [u64; 5]) -> TimeoutQueues {
        let unlinked = Link {
            prev: NIL,
            next: NIL,
            list: UNLINKED,
            since: 0,
            deadline: 0,
        };
        let mut q = TimeoutQueues {
            links: vec![unlinked; slots],
            lists: Vec::new(),
            by_kind: Default::default(),
        };
        for (kind, ns) in KINDS.into_iter().zip(timeouts_ns) {
            q.list_for(kind, ns);
        }
        q
    }

    /// The list for `kind` and `timeout_ns`, made if it does not exist.
    fn list_for(&mut self, kind: Kind, timeout_ns: u64) -> usize {
        let find = |q: &TimeoutQueues, ns: u64| {
            q.by_kind[kind as usize]
                .iter()
                .map(|&i| i as usize)
                .find(|&i| q.lists[i].timeout_ns == ns)
        };
        if let Some(i) = find(self, timeout_ns) {
            return i;
        }
        let ns = if self.by_kind[kind as usize].len() < EXACT_LISTS {
            timeout_ns
        } else {
            coarse(timeout_ns)
        };
        if let Some(i) = find(self, ns) {
            return i;
        }
        let i = self.lists.len();
        self.lists.push(List {
            head: NIL,
            tail: NIL,
            len: 0,
            kind,
            timeout_ns: ns,
        });
        self.by_kind[kind as usize].push(i as u16);
        i
    }

    /// Links `index` into the list of `kind` and `timeout_ns` with deadline
    /// `since + timeout`, unlinking it first from wherever it was.
    ///
    /// Each list stays sorted by deadline (the invariant that makes expiry
    /// O(1)) with O(1) inserts:
    /// - already in that list with the same `since` (a connection handed
    ///   over again within one wait: a handshake step or an incomplete
    ///   request that keeps its header clock, a lingering close that keeps
    ///   its deadline): it keeps its place;
    /// - a deadline before the head's (a clock that started long ago, its
    ///   link dropped while a worker had the connection): at the head;
    /// - otherwise at the tail. Hand-overs from other threads reach the
    ///   event thread a little out of order, so `since` may be older than
    ///   the tail's: the deadline is then raised to the tail's, late by
    ///   that difference, never early.
    ///
    /// (Appending every relink at the tail, a slow client's header clock,
    /// relinked at each of its bytes, was pushed behind every newer
    /// connection's deadline and could be put off for good.)
    pub fn insert(&mut self, kind: Kind, index: u32, since_ns: u64, timeout_ns: u64) {
        let l = self.list_for(kind, timeout_ns);
        let old = self.links[index as usize];
        if old.list == l as u16 && old.since == since_ns {
            return;
        }
        self.remove(index);
        let list = &mut self.lists[l];
        let (head, tail) = (list.head, list.tail);
        let mut deadline = since_ns.saturating_add(list.timeout_ns);
        if head != NIL && deadline < self.links[head as usize].deadline {
            list.head = index;
            list.len += 1;
            self.links[head as usize].prev = index;
            self.links[index as usize] = Link {
                prev: NIL,
                next: head,
                list: l as u16,
                since: since_ns,
                deadline,
            };
            return;
        }
        if tail != NIL {
            deadline = deadline.max(self.links[tail as usize].deadline);
        }
        if tail == NIL {
            list.head = index;
        } else {
            self.links[tail as usize].next = index;
        }
        list.tail = index;
        list.len += 1;
        self.links[index as usize] = Link {
            prev: tail,
            next: NIL,
            list: l as u16,
            since: since_ns,
            deadline,
        };
    }

    /// Unlinks `index`; returns the kind it was in.
    pub fn remove(&mut self, index: u32) -> Option<Kind> {
        let link = self.links[index as usize];
        if link.list == UNLINKED {
            return None;
        }
        let list = &mut self.lists[link.list as usize];
        if link.prev == NIL {
            list.head = link.next;
        } else {
            self.links[link.prev as usize].next = link.next;
        }
        if link.next == NIL {
            list.tail = link.prev;
        } else {
            self.links[link.next as usize].prev = link.prev;
        }
        list.len -= 1;
        let kind = list.kind;
        let l = &mut self.links[index as usize];
        l.list = UNLINKED;
        l.prev = NIL;
        l.next = NIL;
        Some(kind)
    }

    pub fn kind_of(&self, index: u32) -> Option<Kind> {
        let l = self.links[index as usize].list;
        (l != UNLINKED).then(|| self.lists[l as usize].kind)
    }

    /// Unlinks and returns the earliest head of `kind`'s lists if its
    /// deadline passed.
    pub fn pop_expired(&mut self, kind: Kind, now_ns: u64) -> Option<u32> {
        let head = self.by_kind[kind as usize]
            .iter()
            .map(|&l| self.lists[l as usize].head)
            .filter(|&h| h != NIL)
            .min_by_key(|&h| self.links[h as usize].deadline)
            .filter(|&h| self.links[h as usize].deadline <= now_ns)?;
        self.remove(head);
        Some(head)
    }

    /// Unlinks and returns the entry of `kind` that has waited longest,
    /// expired or not.
    pub fn pop_oldest(&mut self, kind: Kind) -> Option<u32> {
        let head = self.by_kind[kind as usize]
            .iter()
            .map(|&l| self.lists[l as usize].head)
            .filter(|&h| h != NIL)
            .min_by_key(|&h| self.links[h as usize].since)?;
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
        self.by_kind[kind as usize]
            .iter()
            .map(|&l| self.lists[l as usize].len)
            .sum()
    }
}

/// `ns` rounded up to 6 significant bits of whole milliseconds (exact below
/// 64 ms; `NEVER` stays).
fn coarse(ns: u64) -> u64 {
    const MS: u64 = 1_000_000;
    if ns == NEVER {
        return NEVER;
    }
    let ms = ns.div_ceil(MS);
    let bits = 64 - ms.leading_zeros();
    if bits <= 6 {
        return ms * MS;
    }
    let step = 1u64 << (bits - 6);
    ms.div_ceil(step).saturating_mul(step).saturating_mul(MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const DURATIONS: [u64; 5] = [10 * MS, 20 * MS, 30 * MS, 40 * MS, 50 * MS];

    /// Inserts with the kind's configured duration.
    fn put(q: &mut TimeoutQueues, kind: Kind, index: u32, since: u64) {
        q.insert(kind, index, since, DURATIONS[kind as usize]);
    }

    fn queues() -> TimeoutQueues {
        TimeoutQueues::new(16, DURATIONS)
    }

    #[test]
    fn expiry_is_fifo_and_respects_deadlines() {
        let mut q = queues();
        put(&mut q, Kind::Keepalive, 3, 0);
        put(&mut q, Kind::Keepalive, 1, MS);
        put(&mut q, Kind::Keepalive, 2, 2 * MS);
        assert_eq!(q.next_deadline(), Some(20 * MS));
        assert_eq!(q.pop_expired(Kind::Keepalive, 19 * MS), None);
        assert_eq!(q.pop_expired(Kind::Keepalive, 21 * MS), Some(3));
        assert_eq!(q.pop_expired(Kind::Keepalive, 21 * MS), Some(1));
        assert_eq!(q.pop_expired(Kind::Keepalive, 21 * MS), None);
        assert_eq!(q.len(Kind::Keepalive), 1);
    }

    /// A hand-over stamped before the tail's (but after the head's) keeps
    /// the list sorted: its deadline rises to the tail's, it expires after
    /// the tail, never early.
    #[test]
    fn an_older_stamp_than_the_tail_is_never_expired_early() {
        let mut q = queues();
        put(&mut q, Kind::Keepalive, 1, 0);
        put(&mut q, Kind::Keepalive, 3, 5 * MS);
        put(&mut q, Kind::Keepalive, 2, 3 * MS);
        assert_eq!(q.pop_expired(Kind::Keepalive, 20 * MS), Some(1));
        assert_eq!(q.pop_expired(Kind::Keepalive, 24 * MS), None);
        assert_eq!(q.pop_expired(Kind::Keepalive, 25 * MS), Some(3));
        assert_eq!(q.pop_expired(Kind::Keepalive, 25 * MS), Some(2));
    }

    /// A clock that started before every other in its list (a header
    /// clock from the accept, relinked after a worker had the connection)
    /// goes to the head: it expires on time, not behind newer ones.
    #[test]
    fn a_stamp_older_than_the_head_goes_first() {
        let mut q = queues();
        put(&mut q, Kind::Header, 1, 5 * MS);
        put(&mut q, Kind::Header, 3, 6 * MS);
        put(&mut q, Kind::Header, 2, MS);
        assert_eq!(q.pop_expired(Kind::Header, 51 * MS), Some(2));
        assert_eq!(q.pop_expired(Kind::Header, 51 * MS), None);
        assert_eq!(q.pop_expired(Kind::Header, 55 * MS), Some(1));
        assert_eq!(q.pop_expired(Kind::Header, 56 * MS), Some(3));
    }

    /// Relinked with the clock it already has (a slow client's header
    /// clock, at each of its bytes), an entry keeps its place: newer
    /// connections linked since cannot put its deadline off.
    #[test]
    fn a_relink_with_the_same_stamp_keeps_its_place() {
        let mut q = queues();
        put(&mut q, Kind::Header, 1, 0);
        for t in 1..15u32 {
            put(&mut q, Kind::Header, 1 + t, u64::from(t) * MS);
            put(&mut q, Kind::Header, 1, 0);
        }
        assert_eq!(q.pop_expired(Kind::Header, 50 * MS), Some(1));
        assert_eq!(q.pop_expired(Kind::Header, 50 * MS), None);
    }

    #[test]
    fn removal_from_head_middle_and_tail_keeps_links_consistent() {
        let mut q = queues();
        for i in 0..5 {
            put(&mut q, Kind::Write, i, u64::from(i));
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
        put(&mut q, Kind::Reading, 7, 0);
        put(&mut q, Kind::Keepalive, 7, 5 * MS);
        assert_eq!(q.kind_of(7), Some(Kind::Keepalive));
        assert_eq!(q.len(Kind::Reading), 0);
        assert_eq!(q.next_deadline(), Some(25 * MS));
        put(&mut q, Kind::Keepalive, 7, 9 * MS);
        assert_eq!(q.len(Kind::Keepalive), 1);
        assert_eq!(q.next_deadline(), Some(29 * MS));
    }

    #[test]
    fn next_deadline_is_the_minimum_over_lists() {
        let mut q = queues();
        put(&mut q, Kind::Linger, 1, 0); // 40
        put(&mut q, Kind::Reading, 2, 5 * MS); // 15
        put(&mut q, Kind::Keepalive, 3, 0); // 20
        assert_eq!(q.next_deadline(), Some(15 * MS));
    }

    #[test]
    fn large_lists_stay_consistent() {
        for n in [10u32, 100_000] {
            let mut q = TimeoutQueues::new(n as usize, [MS; 5]);
            for i in 0..n {
                q.insert(Kind::Keepalive, i, 0, MS);
            }
            assert_eq!(q.remove(n / 2), Some(Kind::Keepalive));
            assert_eq!(q.pop_expired(Kind::Keepalive, 2 * MS), Some(0));
            assert_eq!(q.len(Kind::Keepalive), n as usize - 2);
        }
    }

    /// Connections of one kind with different durations expire each at its
    /// own deadline, in deadline order across lists.
    #[test]
    fn durations_of_one_kind_expire_each_on_time() {
        let mut q = queues();
        q.insert(Kind::Keepalive, 1, 0, 100 * MS);
        q.insert(Kind::Keepalive, 2, 0, 20 * MS);
        q.insert(Kind::Keepalive, 3, 0, 60 * MS);
        assert_eq!(q.next_deadline(), Some(20 * MS));
        assert_eq!(q.pop_expired(Kind::Keepalive, 59 * MS), Some(2));
        assert_eq!(q.pop_expired(Kind::Keepalive, 59 * MS), None);
        assert_eq!(q.next_deadline(), Some(60 * MS));
        assert_eq!(q.pop_expired(Kind::Keepalive, 100 * MS), Some(3));
        assert_eq!(q.pop_expired(Kind::Keepalive, 100 * MS), Some(1));
        assert_eq!(q.len(Kind::Keepalive), 0);
    }

    #[test]
    fn never_does_not_expire_but_stays_linked() {
        let mut q = queues();
        q.insert(Kind::Reading, 4, 5 * MS, NEVER);
        assert_eq!(q.kind_of(4), Some(Kind::Reading));
        assert_eq!(q.pop_expired(Kind::Reading, u64::MAX - 1), None);
        assert_eq!(q.pop_oldest(Kind::Reading), Some(4));
    }

    /// Oldest means waiting longest, across lists of different durations.
    #[test]
    fn pop_oldest_compares_start_times_across_lists() {
        let mut q = queues();
        q.insert(Kind::Keepalive, 1, 5 * MS, 10 * MS);
        q.insert(Kind::Keepalive, 2, 2 * MS, 500 * MS);
        assert_eq!(q.pop_oldest(Kind::Keepalive), Some(2));
        assert_eq!(q.pop_oldest(Kind::Keepalive), Some(1));
    }

    /// Past the exact lists, durations share rounded lists: never early, at
    /// most 1/32 late, and the number of lists stays bounded.
    #[test]
    fn many_durations_share_a_bounded_number_of_lists() {
        let mut q = TimeoutQueues::new(4096, DURATIONS);
        for i in 0..4096u32 {
            let ns = u64::from(i + 1) * 7 * MS;
            q.insert(Kind::Keepalive, i, 0, ns);
            let l = q.links[i as usize].list as usize;
            let got = q.lists[l].timeout_ns;
            assert!(got >= ns && got <= ns + ns / 32, "{ns} -> {got}");
        }
        assert!(q.lists.len() < 300, "{} lists", q.lists.len());
        assert_eq!(coarse(NEVER), NEVER);
        assert_eq!(coarse(63 * MS), 63 * MS);
        assert_eq!(coarse(65 * MS), 66 * MS);
    }
}

//! The event thread's timer wheel: hierarchical, 6 levels of 64 slots,
//! 1 ms ticks, so deadlines up to 64^6 ms (about 795 days) ahead are
//! placed directly and the rest are clamped to the top level and placed
//! again when it comes round.
//!
//! The design is the classic hierarchical timing wheel (Varghese and
//! Lauck, "Hashed and hierarchical timing wheels", SOSP 1987), with one
//! occupancy bit per slot so the next deadline is found with a few bit
//! operations per level instead of a scan:
//!
//! - an entry whose deadline tick `t` first differs from `elapsed` (the
//!   wheel's time) in bit `b` goes to level `b / 6`, slot
//!   `(t >> 6 * level) & 63`: level 0 holds the next 64 ms one tick per
//!   slot, level 1 the next 4 s 64 ticks per slot, and so on;
//! - when `elapsed` reaches the start of an occupied slot, its entries
//!   are due (level 0) or placed again, lower (a cascade): an entry
//!   cascades at most 5 times, so add, remove and expiry are O(1);
//! - the slots of one level are all later than every slot of the levels
//!   below it, so the next deadline is the first occupied slot of the
//!   lowest occupied level.
//!
//! Entries are indices into the timer table; the wheel keeps their links
//! in its own array (doubly linked lists, so a cancel unlinks in O(1)).
//! Only the event thread uses it: no atomics, no locks.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// The list of entries already due (deadline at or before `elapsed`).
const DUE: usize = LEVELS * SLOTS;
const NIL: u32 = u32::MAX;
/// `Link::at` of an entry in no list.
const UNLINKED: u16 = u16::MAX;
/// Ticks the wheel spans: deadlines further ahead are clamped to its top
/// level.
const SPAN: u64 = 1 << (SLOT_BITS as usize * LEVELS);

#[derive(Clone, Copy)]
struct Link {
    next: u32,
    prev: u32,
    tick: u64,
    /// The list it is in (`level * 64 + slot`, or `DUE`), or `UNLINKED`.
    at: u16,
}

const FREE_LINK: Link = Link {
    next: NIL,
    prev: NIL,
    tick: 0,
    at: UNLINKED,
};

pub struct Wheel {
    links: Vec<Link>,
    /// Heads of the slot lists, then of the due list.
    heads: Box<[u32; DUE + 1]>,
    /// Bit `s` of `occupied[l]`: slot `s` of level `l` is not empty.
    occupied: [u64; LEVELS],
    /// The wheel's time, in ticks: every entry's deadline is after it,
    /// except those in the due list.
    elapsed: u64,
    len: usize,
}

impl Wheel {
    pub fn new(now_tick: u64) -> Wheel {
        Wheel {
            links: Vec::new(),
            heads: Box::new([NIL; DUE + 1]),
            occupied: [0; LEVELS],
            elapsed: now_tick,
            len: 0,
        }
    }

    /// Entries linked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Links `index` to expire at `tick` (unlinking it first if linked).
    pub fn insert(&mut self, index: u32, tick: u64) {
        self.remove(index);
        let i = index as usize;
        if i >= self.links.len() {
            // Amortized O(1): the table grows the same way.
            self.links.resize(i + 1, FREE_LINK);
        }
        self.links[i].tick = tick;
        self.place(index);
        self.len += 1;
    }

    /// Puts a linked-to-nothing entry in the list its tick says.
    fn place(&mut self, index: u32) {
        let tick = self.links[index as usize].tick;
        let at = if tick <= self.elapsed {
            DUE
        } else {
            let (level, slot) = match level_for(self.elapsed, tick) {
                Some(level) => {
                    let slot = ((tick >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1);
                    (level, slot)
                }
                // Beyond the wheel: the top level's slot that comes round
                // last (a whole turn ahead), to be placed again from there.
                None => {
                    let shift = (LEVELS as u32 - 1) * SLOT_BITS;
                    let now_slot = (self.elapsed >> shift) as usize;
                    (LEVELS - 1, now_slot.wrapping_sub(1) & (SLOTS - 1))
                }
            };
            self.occupied[level] |= 1 << slot;
            level * SLOTS + slot
        };
        let head = self.heads[at];
        self.links[index as usize] = Link {
            next: head,
            prev: NIL,
            tick,
            at: at as u16,
        };
        if head != NIL {
            self.links[head as usize].prev = index;
        }
        self.heads[at] = index;
    }

    /// Unlinks `index` if it is linked. True if it was.
    pub fn remove(&mut self, index: u32) -> bool {
        let Some(&link) = self.links.get(index as usize) else {
            return false;
        };
        if link.at == UNLINKED {
            return false;
        }
        let at = link.at as usize;
        if link.prev == NIL {
            self.heads[at] = link.next;
        } else {
            self.links[link.prev as usize].next = link.next;
        }
        if link.next != NIL {
            self.links[link.next as usize].prev = link.prev;
        }
        if self.heads[at] == NIL && at != DUE {
            self.occupied[at / SLOTS] &= !(1 << (at % SLOTS));
        }
        self.links[index as usize] = FREE_LINK;
        self.len -= 1;
        true
    }

    /// The tick at which the wheel next has work: an entry due, or a slot
    /// to cascade. None when empty.
    pub fn next_tick(&self) -> Option<u64> {
        if self.heads[DUE] != NIL {
            return Some(self.elapsed);
        }
        self.next_slot().map(|(_, _, start)| start)
    }

    /// The first occupied slot of the lowest occupied level: (level, slot,
    /// the tick its range starts at).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            // The first occupied slot after the current one, round the
            // level; the current one last (only the top level's can be
            // occupied: by deadlines a turn ahead).
            let after = ((self.elapsed >> shift) as u32 + 1) & (SLOTS as u32 - 1);
            let slot =
                (occupied.rotate_right(after).trailing_zeros() + after) as usize & (SLOTS - 1);
            let level_range = 1u64 << (shift + SLOT_BITS);
            let level_start = self.elapsed & !(level_range - 1);
            let mut start = level_start + ((slot as u64) << shift);
            // Every occupied slot starts after `elapsed`: one at or
            // before it is the same slot of the next turn (the top level's
            // wrap; lower levels never have one).
            if start <= self.elapsed {
                start += level_range;
            }
            return Some((level, slot, start));
        }
        None
    }

    /// Moves the wheel's time to `now_tick`, appending to `out` every entry
    /// whose deadline is at or before it (unlinked), in deadline order from
    /// one tick to the next (entries of one tick in no set order).
    pub fn advance(&mut self, now_tick: u64, out: &mut Vec<u32>) {
        loop {
            self.take_list(DUE, out);
            let Some((level, slot, start)) = self.next_slot() else {
                break;
            };
            if start > now_tick {
                break;
            }
            self.elapsed = start;
            let at = level * SLOTS + slot;
            self.occupied[level] &= !(1 << slot);
            let mut index = std::mem::replace(&mut self.heads[at], NIL);
            while index != NIL {
                let next = self.links[index as usize].next;
                // Due now (it lands in the due list), or lower (a cascade).
                self.place(index);
                index = next;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
    }

    /// Unlinks every entry of list `at` into `out`, in deadline order: the
    /// due list may hold entries linked after their deadline had passed (a
    /// late event thread), of different ticks, pushed at its head.
    fn take_list(&mut self, at: usize, out: &mut Vec<u32>) {
        let from = out.len();
        let mut index = std::mem::replace(&mut self.heads[at], NIL);
        while index != NIL {
            out.push(index);
            index = self.links[index as usize].next;
        }
        let taken = &mut out[from..];
        if taken.len() > 1 {
            let links = &self.links;
            taken.sort_unstable_by_key(|&i| links[i as usize].tick);
        }
        for &i in taken.iter() {
            self.links[i as usize] = FREE_LINK;
        }
        self.len -= taken.len();
    }
}

/// The level for a deadline `tick` after `elapsed`: where the highest bit
/// in which they differ falls. None beyond the wheel's span.
fn level_for(elapsed: u64, tick: u64) -> Option<usize> {
    if tick - elapsed >= SPAN {
        return None;
    }
    // Within a span but across its boundary (they differ above the top
    // level's bits): the top level, whose slots wrap round.
    let masked = ((elapsed ^ tick) | (SLOTS as u64 - 1)).min(SPAN - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    Some(significant / SLOT_BITS as usize)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so the tests need no
    /// dependency and fail the same way every run.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Every entry comes out exactly once, at its tick (never before, and
    /// on the first advance that reaches it), in deadline order.
    #[test]
    fn entries_expire_at_their_tick_in_order() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let start = 1_000_003;
        let mut wheel = Wheel::new(start);
        let mut ticks = Vec::new();
        for i in 0..20_000u32 {
            // Spread over every level: 0 to ~2^33 ms ahead.
            let bits = rng(&mut seed) % 34;
            let delay = rng(&mut seed) % (1u64 << bits).max(1);
            ticks.push(start + delay);
            wheel.insert(i, start + delay);
        }
        assert_eq!(wheel.len(), 20_000);
        let mut sorted: Vec<u64> = ticks.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Vec::new();
        let mut seen = 0;
        let mut last = 0;
        for &t in &sorted {
            // Nothing is due before the next deadline...
            assert_eq!(wheel.next_tick().map(|n| n <= t), Some(true));
            if t > start {
                wheel.advance(t - 1, &mut out);
                assert!(out.is_empty(), "expired early at {}", t - 1);
            }
            // ...and everything due at it comes out at it.
            wheel.advance(t, &mut out);
            assert!(!out.is_empty());
            for &i in &out {
                assert_eq!(ticks[i as usize], t);
                assert!(ticks[i as usize] >= last);
                last = ticks[i as usize];
            }
            seen += out.len();
            out.clear();
        }
        assert_eq!(seen, 20_000);
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.next_tick(), None);
    }

    /// Inserts between advances of random length, as the event thread makes
    /// them: every advance hands out exactly the entries due by its time,
    /// in deadline order, never one early, never one late.
    #[test]
    fn interleaved_inserts_and_advances_keep_deadline_order() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut now = 7_777_777;
        let mut wheel = Wheel::new(now);
        let mut ticks = vec![0u64; 60_000];
        let mut pending = 0usize;
        let mut out = Vec::new();
        let mut next = 0u32;
        while (next as usize) < ticks.len() || pending > 0 {
            for _ in 0..rng(&mut seed) % 50 {
                if next as usize == ticks.len() {
                    break;
                }
                // Mostly 0.2-2.2 s ahead, sometimes far, sometimes past.
                let tick = match rng(&mut seed) % 10 {
                    0 => now - rng(&mut seed) % 100,
                    1 => now + rng(&mut seed) % (1 << 20),
                    _ => now + 200 + rng(&mut seed) % 2000,
                };
                ticks[next as usize] = tick;
                wheel.insert(next, tick);
                next += 1;
                pending += 1;
            }
            let step = match rng(&mut seed) % 10 {
                0 => rng(&mut seed) % 5000,
                _ => rng(&mut seed) % 30,
            };
            let before = now;
            now += step;
            wheel.advance(now, &mut out);
            let mut last = 0;
            for &i in &out {
                let tick = ticks[i as usize];
                assert!(tick <= now, "{tick} expired early at {now}");
                assert!(tick >= last, "{tick} after {last}");
                last = tick;
            }
            pending -= out.len();
            out.clear();
            // Nothing due is left behind.
            if let Some(t) = wheel.next_tick() {
                assert!(
                    t > now || wheel.len() == 0,
                    "{t} left at {now} (from {before})"
                );
            }
            if next as usize == ticks.len() && pending > 0 && step == 0 {
                now += 1;
            }
        }
        assert_eq!(wheel.len(), 0);
    }

    /// Removed entries never come out; the rest do.
    #[test]
    fn removed_entries_never_expire() {
        let mut seed = 42;
        let mut wheel = Wheel::new(0);
        for i in 0..10_000u32 {
            wheel.insert(i, 1 + rng(&mut seed) % 100_000);
        }
        for i in (0..10_000u32).step_by(2) {
            assert!(wheel.remove(i));
            assert!(!wheel.remove(i));
        }
        let mut out = Vec::new();
        wheel.advance(200_000, &mut out);
        out.sort_unstable();
        let odd: Vec<u32> = (0..10_000u32).filter(|i| i % 2 == 1).collect();
        assert_eq!(out, odd);
    }

    /// A big jump of time (the event thread slept) expires everything in
    /// range in one call, and deadlines already past go to the due list.
    #[test]
    fn jumps_and_past_deadlines() {
        let mut wheel = Wheel::new(500);
        wheel.insert(1, 100); // in the past
        wheel.insert(2, 500); // now
        wheel.insert(3, 70_000);
        wheel.insert(4, 10_000_000_000_000); // beyond the wheel's span
        assert_eq!(wheel.next_tick(), Some(500));
        let mut out = Vec::new();
        wheel.advance(500, &mut out);
        out.sort_unstable();
        assert_eq!(out, [1, 2]);
        out.clear();
        wheel.advance(1_000_000, &mut out);
        assert_eq!(out, [3]);
        out.clear();
        wheel.advance(9_999_999_999_999, &mut out);
        assert!(out.is_empty());
        wheel.advance(10_000_000_000_000, &mut out);
        assert_eq!(out, [4]);
    }

    /// Deadlines just across the top level's boundary come out on time,
    /// not a turn late.
    #[test]
    fn across_the_span_boundary() {
        let start = SPAN - 3;
        let mut wheel = Wheel::new(start);
        wheel.insert(0, SPAN + 5);
        wheel.insert(1, 2 * SPAN - 7);
        wheel.insert(2, start + SPAN - 1);
        let mut out = Vec::new();
        wheel.advance(SPAN + 4, &mut out);
        assert!(out.is_empty());
        wheel.advance(SPAN + 5, &mut out);
        assert_eq!(out, [0]);
        out.clear();
        wheel.advance(2 * SPAN - 8, &mut out);
        assert!(out.is_empty());
        wheel.advance(2 * SPAN - 7, &mut out);
        assert_eq!(out, [1]);
        out.clear();
        wheel.advance(start + SPAN - 2, &mut out);
        assert!(out.is_empty());
        wheel.advance(start + SPAN - 1, &mut out);
        assert_eq!(out, [2]);
    }

    /// Re-inserting moves an entry; links of other entries survive.
    #[test]
    fn reinsert_moves() {
        let mut wheel = Wheel::new(0);
        wheel.insert(0, 10);
        wheel.insert(1, 10);
        wheel.insert(2, 10);
        wheel.insert(1, 5000);
        let mut out = Vec::new();
        wheel.advance(10, &mut out);
        out.sort_unstable();
        assert_eq!(out, [0, 2]);
        out.clear();
        wheel.advance(4999, &mut out);
        assert!(out.is_empty());
        wheel.advance(5000, &mut out);
        assert_eq!(out, [1]);
    }
}

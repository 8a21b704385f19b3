//! The timer table: every timer and watch, in entries that any thread
//! reaches by index without a lock.
//!
//! Ids are `generation << 44 | runtime tag << 32 | index`: the index (32
//! bits) names the entry, the runtime tag (12 bits, the connection
//! handles' tag) the runtime, and the generation (20 bits, never 0, so no
//! id is 0) the use of the entry. An id outlives its timer harmlessly: once
//! the entry is freed its generation changes, and the id is refused as
//! stale until the same entry has been reused 2^20 times (the free list is
//! FIFO, so that takes 2^20 times as many frees as there are free entries).
//!
//! The table grows and never moves: segment `k` holds `1024 << k`
//! entries and is allocated when the first index in it is handed out, by
//! whichever thread gets there first (a compare-and-swap installs it; a
//! loser frees its own). Segments live until the runtime is freed, so a
//! `&Entry` is valid for the table's life.
//!
//! Invariants:
//! - `segments[k]` goes from null to its final pointer once, before any
//!   index in segment `k` is handed out (`fresh` counts handed-out
//!   indices); a reader that holds an index from `alloc` (or an id the host
//!   got from it) finds the segment installed;
//! - an index is in `free` at most once: only the event thread pushes,
//!   only after the entry's word moved Dead → Free (see `entry`), which one
//!   party does once per use.
//!
//! The free list is crossbeam's `SegQueue`, a lock-free unbounded MPMC
//! queue of linked segments (after Michael and Scott's queue).

use super::entry::Word;
use crate::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crossbeam_queue::SegQueue;
use libc::c_void;
use std::ptr;

const FIRST_BITS: u32 = 10;
/// Enough segments for every 32-bit index.
const SEGMENTS: usize = 23;

/// `deadline_ns` of an entry with none (a watch without a timeout).
pub(crate) const NO_DEADLINE: u64 = u64::MAX;

/// One timer or watch. Every field but `word` is written by the thread
/// that holds the entry (the adder before publishing it, a re-armer while
/// it holds Busy or RearmBusy) and read by the threads the word's
/// AcqRel CASes pass it to; they are atomics only so that no `unsafe` is
/// needed (Relaxed suffices: the word orders them).
pub(crate) struct Entry {
    pub(crate) word: Word,
    /// The host's callback, as an address (`evmpm_timer_fn` or
    /// `evmpm_watch_fn` by `fd`), and its argument.
    pub(crate) callback: AtomicUsize,
    pub(crate) arg: AtomicPtr<c_void>,
    /// When it expires, in ns since the runtime's epoch, or `NO_DEADLINE`.
    pub(crate) deadline_ns: AtomicU64,
    /// A watch's descriptor; -1 for a timer.
    pub(crate) fd: AtomicI32,
    /// A watch's `EVMPM_WATCH_*` interest.
    pub(crate) events: AtomicU32,
    /// The connection a timer is bound to (0: none).
    pub(crate) conn: AtomicU64,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            word: Word::new(),
            callback: AtomicUsize::new(0),
            arg: AtomicPtr::new(ptr::null_mut()),
            deadline_ns: AtomicU64::new(NO_DEADLINE),
            fd: AtomicI32::new(-1),
            events: AtomicU32::new(0),
            conn: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_watch(&self) -> bool {
        self.fd.load(Ordering::Relaxed) >= 0
    }
}

pub(crate) struct Table {
    segments: [AtomicPtr<Entry>; SEGMENTS],
    /// Indices handed out at least once.
    fresh: AtomicU64,
    free: SegQueue<u32>,
    tag: u16,
    /// Entries not free (gauge).
    live: AtomicUsize,
}

/// (segment, offset in it, segment length) of `index`.
fn locate(index: u32) -> (usize, usize, usize) {
    let block = (u64::from(index) >> FIRST_BITS) + 1;
    let seg = 63 - block.leading_zeros() as usize;
    let first = ((1u64 << seg) - 1) << FIRST_BITS;
    (
        seg,
        (u64::from(index) - first) as usize,
        1usize << (FIRST_BITS as usize + seg),
    )
}

impl Table {
    pub(crate) fn new(tag: u16) -> Table {
        Table {
            segments: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            fresh: AtomicU64::new(0),
            free: SegQueue::new(),
            tag,
            live: AtomicUsize::new(0),
        }
    }

    pub(crate) fn id(&self, index: u32, generation: u32) -> u64 {
        (u64::from(generation) << 44) | (u64::from(self.tag) << 32) | u64::from(index)
    }

    /// (index, generation) of `id` if it is this table's, else None.
    pub(crate) fn split(&self, id: u64) -> Option<(u32, u32)> {
        let tag = ((id >> 32) & 0xfff) as u16;
        let generation = (id >> 44) as u32;
        (tag == self.tag && generation != 0).then_some((id as u32, generation))
    }

    /// The entry at `index`, if its segment exists.
    pub(crate) fn get(&self, index: u32) -> Option<&Entry> {
        let (seg, offset, _) = locate(index);
        let base = self.segments[seg].load(Ordering::Acquire);
        if base.is_null() {
            return None;
        }
        // SAFETY: a non-null segment pointer is a live allocation of
        // `1024 << seg` entries that stays until the table is dropped, and
        // `offset` is below that length (see `locate`).
        Some(unsafe { &*base.add(offset) })
    }

    /// An entry for a new timer or watch: (index, its generation). The
    /// entry is Free and private to the caller until it publishes it.
    /// None past 2^32 entries.
    pub(crate) fn alloc(&self) -> Option<(u32, u32)> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let n = self.fresh.fetch_add(1, Ordering::Relaxed);
                if n > u64::from(u32::MAX) {
                    return None;
                }
                let index = n as u32;
                self.install(index);
                index
            }
        };
        let entry = self.get(index).expect("an allocated index has its segment");
        self.live.fetch_add(1, Ordering::Relaxed);
        Some((index, entry.word.load().0))
    }

    /// Allocates `index`'s segment if no thread has yet.
    fn install(&self, index: u32) {
        let (seg, _, len) = locate(index);
        if !self.segments[seg].load(Ordering::Acquire).is_null() {
            return;
        }
        let fresh: Box<[Entry]> = (0..len).map(|_| Entry::new()).collect();
        let raw = Box::into_raw(fresh).cast::<Entry>();
        if self.segments[seg]
            .compare_exchange(ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `raw` came from `Box::into_raw` of a slice of `len`
            // entries just above and was never shared.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, len)) });
        }
    }

    /// Gives back an entry the event thread freed (its word is Free).
    pub(crate) fn release(&self, index: u32) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.free.push(index);
    }

    /// Timers and watches not freed yet.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        for (seg, slot) in self.segments.iter().enumerate() {
            let raw = slot.load(Ordering::Acquire);
            if !raw.is_null() {
                let len = 1usize << (FIRST_BITS as usize + seg);
                // SAFETY: installed by `install` from a boxed slice of
                // exactly this length; nothing uses it once the table drops.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, len)) });
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_every_index_once() {
        assert_eq!(locate(0), (0, 0, 1024));
        assert_eq!(locate(1023), (0, 1023, 1024));
        assert_eq!(locate(1024), (1, 0, 2048));
        assert_eq!(locate(3071), (1, 2047, 2048));
        assert_eq!(locate(3072), (2, 0, 4096));
        let (seg, offset, len) = locate(u32::MAX);
        assert!(seg < SEGMENTS && offset < len);
    }

    #[test]
    fn ids_round_trip_and_are_never_zero() {
        let t = Table::new(7);
        let id = t.id(123_456, 1);
        assert_ne!(id, 0);
        assert_eq!(t.split(id), Some((123_456, 1)));
        assert_eq!(Table::new(8).split(id), None);
        assert_eq!(t.split(0), None);
    }

    #[test]
    fn grows_across_segments_from_many_threads() {
        let t = std::sync::Arc::new(Table::new(1));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || {
                    (0..5000)
                        .map(|_| t.alloc().unwrap().0)
                        .collect::<Vec<u32>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|&i| t.get(i).is_some()));
        assert_eq!(t.live(), 20_000);
    }
}

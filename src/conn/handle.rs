//! Connection handles: `generation << 32 | runtime tag << 20 | slot index`.
//!
//! - The slot index (20 bits) names the connection's slot in its runtime's
//!   table.
//! - The runtime tag (12 bits) names the runtime: each live runtime has its
//!   own (see `RuntimeTags`), so a handle passed to another runtime is
//!   refused as stale instead of reaching that runtime's connection in the
//!   same slot.
//! - The generation (32 bits) names the connection that occupies the slot:
//!   it changes each time the slot is freed, so a handle outlives its
//!   connection harmlessly. Generations start at 1 and skip 0 when they
//!   wrap, so a handle's high half is never 0, which leaves every value
//!   below 2^32 free for the event thread's own epoll tokens (the waker,
//!   listeners).

use std::sync::Mutex;

const INDEX_BITS: u32 = 20;
const TAG_BITS: u32 = 12;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;

/// Slots a table may have: every index fits the handle's 20 bits.
pub const MAX_SLOTS: u32 = 1 << INDEX_BITS;

/// A connection handle as the C API sees it (`evmpm_conn`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Handle(pub u64);

impl Handle {
    /// A handle of the runtime with tag 0 (the model checks' tables).
    #[cfg(test)]
    pub fn new(index: u32, generation: u32) -> Handle {
        Handle::tagged(0, index, generation)
    }

    pub fn tagged(tag: u16, index: u32, generation: u32) -> Handle {
        debug_assert!(generation != 0);
        debug_assert!(index < MAX_SLOTS && u32::from(tag) < 1 << TAG_BITS);
        let low = (u32::from(tag) << INDEX_BITS) | index;
        Handle((u64::from(generation) << 32) | u64::from(low))
    }

    /// The slot index.
    pub fn index(self) -> u32 {
        self.0 as u32 & INDEX_MASK
    }

    /// The tag of the runtime the handle belongs to.
    pub fn tag(self) -> u16 {
        (self.0 as u32 >> INDEX_BITS) as u16
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// True for values that can name a connection (not 0, not an event-thread
    /// token).
    pub fn is_connection(self) -> bool {
        self.generation() != 0
    }
}

/// The generation a slot gets when it is reused.
pub fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// The tags of live runtimes. Tag 0 is never handed out (the model checks'
/// tables use it). Tags are taken round-robin, skipping live ones, so a
/// destroyed runtime's tag comes back only after 4,094 other runtimes were
/// created: until then its stale handles cannot even name a live runtime.
pub struct RuntimeTags {
    live: [u64; 1 << (TAG_BITS - 6)],
    next: u16,
}

static TAGS: Mutex<RuntimeTags> = Mutex::new(RuntimeTags {
    live: [0; 1 << (TAG_BITS - 6)],
    next: 1,
});

impl RuntimeTags {
    /// A tag no live runtime has, or None when 4,095 runtimes are alive.
    pub fn take() -> Option<u16> {
        let mut tags = TAGS.lock().unwrap_or_else(|p| p.into_inner());
        let count = (1u32 << TAG_BITS) - 1;
        for step in 0..count {
            let tag = ((u32::from(tags.next) - 1 + step) % count + 1) as u16;
            let (word, bit) = (usize::from(tag) / 64, tag % 64);
            if tags.live[word] & (1 << bit) == 0 {
                tags.live[word] |= 1 << bit;
                tags.next = (u32::from(tag) % count + 1) as u16;
                return Some(tag);
            }
        }
        None
    }

    /// Gives back a tag from `take` (the runtime is being freed).
    pub fn give_back(tag: u16) {
        let mut tags = TAGS.lock().unwrap_or_else(|p| p.into_inner());
        tags.live[usize::from(tag) / 64] &= !(1 << (tag % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Handle::tagged(4095, MAX_SLOTS - 1, 77);
        assert_eq!(h.index(), MAX_SLOTS - 1);
        assert_eq!(h.tag(), 4095);
        assert_eq!(h.generation(), 77);
        assert!(h.is_connection());
        assert!(!Handle(5).is_connection());
        assert!(!Handle(0).is_connection());
        assert_eq!(Handle::new(3, 1).tag(), 0);
    }

    #[test]
    fn generation_skips_zero_on_wrap() {
        assert_eq!(next_generation(u32::MAX), 1);
        assert_eq!(next_generation(1), 2);
    }

    #[test]
    fn live_tags_are_distinct_and_never_zero() {
        let a = RuntimeTags::take().unwrap();
        let b = RuntimeTags::take().unwrap();
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
        RuntimeTags::give_back(a);
        let c = RuntimeTags::take().unwrap();
        // Round-robin: the tag just given back is not the next one out.
        assert_ne!(c, a);
        RuntimeTags::give_back(b);
        RuntimeTags::give_back(c);
    }
}

//! Connection handles: `generation << 32 | slot index`.
//!
//! Generations start at 1 and skip 0 when they wrap, so a handle's high half
//! is never 0. That leaves every value below 2^32 free for the event thread's
//! own epoll tokens (the waker, listeners).

/// A connection handle as the C API sees it (`evmpm_conn`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Handle(pub u64);

impl Handle {
    pub fn new(index: u32, generation: u32) -> Handle {
        debug_assert!(generation != 0);
        Handle((u64::from(generation) << 32) | u64::from(index))
    }

    pub fn index(self) -> u32 {
        self.0 as u32
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Handle::new(12345, 77);
        assert_eq!(h.index(), 12345);
        assert_eq!(h.generation(), 77);
        assert!(h.is_connection());
        assert!(!Handle(5).is_connection());
        assert!(!Handle(0).is_connection());
    }

    #[test]
    fn generation_skips_zero_on_wrap() {
        assert_eq!(next_generation(u32::MAX), 1);
        assert_eq!(next_generation(1), 2);
    }
}

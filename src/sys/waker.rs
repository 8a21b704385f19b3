//! Wakes the event thread out of `epoll_wait` through an eventfd.
//!
//! Wake-ups are coalesced: only the first `wake` after the event thread last
//! drained the eventfd pays for a `write`; later ones are a single atomic swap.

use super::syscall;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Waker {
    fd: i32,
    /// True from the first `wake` until the event thread calls `reset`.
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        Ok(Waker {
            fd,
            pending: AtomicBool::new(false),
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter full)
            // still leaves the eventfd readable, which is all we need.
            let _ = syscall!(write(self.fd, (&one as *const u64).cast(), 8));
        }
    }

    /// Called by the event thread when the eventfd polled readable, before it
    /// looks at its inbox and state, so no wake is lost:
    /// - drain first, then clear `pending`: a `wake` racing with the drain
    ///   still sees `pending` set and skips its write, but the event thread
    ///   has not looked at the state yet, so it sees that wake's effect;
    /// - a `wake` after the clear writes the eventfd, so the next
    ///   `epoll_wait` returns at once.
    ///
    /// (Clearing first would let a wake's write land between the clear and
    /// the drain: the drain eats it and `pending` stays set forever, so
    /// every later wake is skipped and the event thread goes deaf.)
    pub fn reset(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = syscall!(read(self.fd, (&mut buf as *mut u64).cast(), 8));
        self.pending.store(false, Ordering::SeqCst);
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        super::close(self.fd);
    }
}

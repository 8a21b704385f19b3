//! The eventfd that wakes the event thread out of `epoll_wait`: its system
//! calls. When to make them (wake-ups coalesce on a pending flag) is the
//! protocol of `crate::wake::Waker`.

use super::syscall;
use std::io;

/// A non-blocking eventfd: readable while its counter is not zero.
pub struct EventFd {
    fd: i32,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        Ok(EventFd { fd })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Adds one to the counter, so the eventfd polls readable.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter full)
        // still leaves the eventfd readable, which is all we need.
        let _ = syscall!(write(self.fd, (&one as *const u64).cast(), 8));
    }

    /// Reads the counter, which sets it to zero: the eventfd no longer
    /// polls readable.
    pub fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = syscall!(read(self.fd, (&mut buf as *mut u64).cast(), 8));
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        super::close(self.fd);
    }
}

//! A thin owner of an epoll instance.
//!
//! epoll is safe to drive from several threads at once (the kernel locks the
//! interest list), which is what lets a worker re-arm a parked connection
//! without a round trip through the event thread.

use super::syscall;
use std::io;

/// Interest flags, as the kernel spells them.
pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
pub const PEER_CLOSED: u32 = libc::EPOLLRDHUP as u32;
pub const HANGUP: u32 = libc::EPOLLHUP as u32;
pub const ERROR: u32 = libc::EPOLLERR as u32;
pub const ONESHOT: u32 = libc::EPOLLONESHOT as u32;
/// Report a change once, not for as long as it lasts.
pub const EDGE: u32 = libc::EPOLLET as u32;
/// Wakes one of several epoll sets watching the same listener, so several
/// processes sharing a listening socket do not all wake per connection.
pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

pub type Event = libc::epoll_event;

pub struct Epoll {
    fd: i32,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        Ok(Epoll { fd })
    }

    pub fn add(&self, fd: i32, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify(&self, fd: i32, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    pub fn delete(&self, fd: i32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn ctl(&self, op: i32, fd: i32, interest: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        syscall!(epoll_ctl(self.fd, op, fd, &mut ev)).map(|_| ())
    }

    /// The epoll descriptor itself (to nest this set in another).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Takes one ready event without waiting: (token, flags), or None.
    pub fn wait_one(&self) -> Option<(u64, u32)> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for exactly one event, timeout 0.
        match syscall!(epoll_wait(self.fd, &mut ev, 1, 0)) {
            Ok(1) => Some((ev.u64, ev.events)),
            _ => None,
        }
    }

    /// True when events wait to be collected (a `poll` of the set itself,
    /// without consuming them).
    pub fn ready_now(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, timeout 0.
        matches!(syscall!(poll(&mut pfd, 1, 0)), Ok(n) if n > 0)
    }

    /// Waits for events; `timeout_ms < 0` waits without a deadline.
    /// EINTR is reported as zero events.
    pub fn wait(&self, events: &mut Vec<Event>, timeout_ms: i32) -> io::Result<()> {
        events.clear();
        let cap = events.capacity() as i32;
        // SAFETY: the kernel writes at most `cap` events into the spare
        // capacity of `events`; we set the length to what it reports.
        match syscall!(epoll_wait(self.fd, events.as_mut_ptr(), cap, timeout_ms)) {
            Ok(n) => {
                // SAFETY: the kernel initialised the first `n` (<= cap) events.
                unsafe { events.set_len(n as usize) };
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        super::close(self.fd);
    }
}

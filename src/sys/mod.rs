//! The OS layer: every system call evmpm makes goes through this module.
//!
//! Linux only (epoll, eventfd, accept4). The portable logic above it
//! (timeout queues, connection table, admission) never calls libc itself, so
//! a kqueue port would replace this folder and nothing else.

pub mod epoll;
pub mod socket;
pub mod thread;
pub mod waker;

use std::io;

/// Runs a libc call and turns its `-1` + `errno` convention into `io::Result`.
///
/// Every syscall in the crate goes through here, so error handling (and the
/// place to add tracing) exists once.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the caller of `syscall!` upholds the libc function's contract;
        // each use site states why its arguments are valid.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Closes a descriptor, ignoring errors: after `close` the descriptor is gone
/// whatever it returns (Linux never leaves it open on EINTR).
pub fn close(fd: i32) {
    let _ = syscall!(close(fd));
}

/// True when the error means "try again later" rather than failure.
pub fn would_block(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// Sets `errno` for the calling thread, so C callers can read the OS cause of
/// an `EVMPM_EOS` return.
pub fn set_errno(code: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid
    // for the thread's lifetime.
    unsafe { *libc::__errno_location() = code };
}

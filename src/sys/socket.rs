//! Socket calls: accept, non-blocking send and peek, shutdown, and the checks
//! `evmpm_register_listener` makes on a descriptor it is handed.

use super::syscall;
use std::io;
use std::mem;

/// Accepts one connection, close-on-exec and in blocking mode: the handler
/// gets the descriptor exactly as a thread-per-connection server would.
pub fn accept(listener: i32) -> io::Result<i32> {
    // SAFETY: NULL address and length are allowed by accept4.
    syscall!(accept4(
        listener,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        libc::SOCK_CLOEXEC
    ))
}

/// Sends without blocking, whatever mode the descriptor is in.
/// MSG_NOSIGNAL turns a write to a closed peer into EPIPE instead of SIGPIPE.
pub fn send_nonblocking(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    syscall!(send(
        fd,
        buf.as_ptr().cast(),
        buf.len(),
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
    ))
    .map(|n| n as usize)
}

/// Reads and discards without blocking (lingering close only).
pub fn recv_discard(fd: i32, scratch: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `scratch` is valid for writes of `scratch.len()` bytes.
    syscall!(recv(
        fd,
        scratch.as_mut_ptr().cast(),
        scratch.len(),
        libc::MSG_DONTWAIT
    ))
    .map(|n| n as usize)
}

/// Looks at pending input without consuming it: the host's bytes stay queued
/// in the kernel for its handler. Returns 0 at end of stream.
pub fn peek(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    syscall!(recv(
        fd,
        buf.as_mut_ptr().cast(),
        buf.len(),
        libc::MSG_PEEK | libc::MSG_DONTWAIT
    ))
    .map(|n| n as usize)
}

pub fn shutdown_write(fd: i32) -> io::Result<()> {
    syscall!(shutdown(fd, libc::SHUT_WR)).map(|_| ())
}

pub fn shutdown_both(fd: i32) -> io::Result<()> {
    syscall!(shutdown(fd, libc::SHUT_RDWR)).map(|_| ())
}

/// Sets the receive low-water mark: poll reports the socket readable only
/// once this many bytes are queued (or the peer closed). 1 is the default.
pub fn set_rcvlowat(fd: i32, bytes: i32) -> io::Result<()> {
    // SAFETY: `bytes` is a live int, sized as the option expects.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        (&bytes as *const i32).cast(),
        mem::size_of::<i32>() as libc::socklen_t
    ))
    .map(|_| ())
}

/// Bytes in the socket's send queue, not yet acknowledged by the peer
/// (SIOCOUTQ). 0 if the query fails, which only makes a stalled write
/// look stalled.
pub fn queued_output(fd: i32) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the live pointer.
    match syscall!(ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int)) {
        Ok(_) => queued.max(0) as usize,
        Err(_) => 0,
    }
}

/// Why a descriptor cannot be used as a listener.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenerCheck {
    Ok,
    /// Not an open descriptor, not a socket, or not stream-oriented.
    NotASocket,
    /// A socket, but `listen()` was never called on it.
    NotListening,
}

/// Accepts only an open stream socket in the listening state.
pub fn check_listener(fd: i32) -> ListenerCheck {
    let sock_type = match getsockopt_int(fd, libc::SO_TYPE) {
        Ok(t) => t,
        Err(_) => return ListenerCheck::NotASocket,
    };
    if sock_type != libc::SOCK_STREAM {
        return ListenerCheck::NotASocket;
    }
    match getsockopt_int(fd, libc::SO_ACCEPTCONN) {
        Ok(1) => ListenerCheck::Ok,
        _ => ListenerCheck::NotListening,
    }
}

fn getsockopt_int(fd: i32, opt: i32) -> io::Result<i32> {
    let mut val: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are live and sized for an int option.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        opt,
        (&mut val as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(val)
}

/// The runtime's accept loop must never block, whatever the host set.
pub fn set_nonblocking(fd: i32) -> io::Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    if flags & libc::O_NONBLOCK == 0 {
        syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// True when accept failed because the process or system ran out of
/// descriptors or memory: back off instead of spinning on a readable listener.
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Which of `fds` have bytes to read now (one `poll`, timeout 0): the
/// receive low-water mark counts, so a partial request held back by it is
/// not readable. A descriptor that fails the poll reads false.
pub fn readable_now(fds: &[i32]) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if polled.is_empty() {
        return Vec::new();
    }
    // SAFETY: `polled` holds `polled.len()` live pollfds; timeout 0.
    if syscall!(poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0)).is_err() {
        return vec![false; fds.len()];
    }
    polled
        .iter()
        .map(|p| p.revents & libc::POLLIN != 0)
        .collect()
}

//! Listeners: the sockets the event thread accepts on, and what each one
//! says about the connections it brings: the host's pointer, the accept
//! hook, the handshake step, the readiness check, the descriptor mode, how
//! they close and their timeouts (`evmpm_register_listener_ex`).
//!
//! The table is append-only and fixed in size, so any thread reads an entry
//! by index without a lock: a connection's slot keeps its listener's index,
//! and the worker checking a request finds the listener's readiness check
//! in one load.

use crate::config::{timeout_ms, Config, HostPtr};
use crate::error::Error;
use crate::ffi::types::{
    evmpm_accept_fn, evmpm_conn_info, evmpm_handshake_fn, evmpm_listener_config,
    evmpm_request_ready_fn, EVMPM_LISTEN_NONBLOCK, EVMPM_LISTEN_NO_LINGER,
    EVMPM_LISTEN_NO_REQUEST_READY, EVMPM_LISTEN_SERVER_FIRST, EVMPM_MAX_LISTENERS,
};
use crate::message::CloseHow;
use crate::sys::socket::{self, Address};
use crate::timeouts::Kind;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Every `EVMPM_LISTEN_*` flag this library knows.
const KNOWN_FLAGS: u32 = EVMPM_LISTEN_NONBLOCK
    | EVMPM_LISTEN_SERVER_FIRST
    | EVMPM_LISTEN_NO_REQUEST_READY
    | EVMPM_LISTEN_NO_LINGER;

/// One registered listener, as its connections need it.
pub struct Listener {
    pub fd: i32,
    /// `evmpm_listener_config.user_data`.
    pub user: HostPtr,
    pub on_accept: evmpm_accept_fn,
    /// The handshake step of its connections (None: none), called with
    /// `user`.
    pub handshake: evmpm_handshake_fn,
    /// The readiness check of its connections (None: off), and the pointer
    /// it is called with (the listener's for its own check, the runtime's
    /// for the runtime's).
    pub request_ready: evmpm_request_ready_fn,
    pub ready_user: HostPtr,
    pub flags: u32,
    /// The address it is bound to; None for a wildcard, whose connections'
    /// local addresses are asked of the kernel when wanted.
    pub local: Option<Address>,
    /// Its connections' first timeouts in ms, by `Kind` (never 0).
    pub timeouts_ms: [u32; 5],
}

impl Listener {
    /// The listener `evmpm_register_listener_ex` describes with `lc` (already
    /// read and checked) on a runtime configured as `config`.
    pub fn new(fd: i32, lc: &evmpm_listener_config, config: &Config) -> Result<Listener, Error> {
        if lc.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::Invalid);
        }
        let (request_ready, ready_user) = if lc.request_ready.is_some() {
            (lc.request_ready, HostPtr(lc.user_data))
        } else if lc.flags & EVMPM_LISTEN_NO_REQUEST_READY != 0 {
            (None, HostPtr(std::ptr::null_mut()))
        } else {
            (config.request_ready, config.user_data)
        };
        let own = |ms: u32, runtime_ns: u64| if ms == 0 { timeout_ms(runtime_ns) } else { ms };
        let mut timeouts_ms = [0; 5];
        timeouts_ms[Kind::Reading as usize] = own(lc.read_timeout_ms, config.read_ns);
        timeouts_ms[Kind::Keepalive as usize] = own(lc.keepalive_timeout_ms, config.keepalive_ns);
        timeouts_ms[Kind::Write as usize] = own(lc.write_timeout_ms, config.write_ns);
        timeouts_ms[Kind::Linger as usize] = timeout_ms(config.linger_ns);
        timeouts_ms[Kind::Header as usize] = own(lc.header_timeout_ms, config.header_ns);
        let local = socket::local_address(fd)
            .ok()
            .filter(|a| !socket::is_wildcard(a));
        Ok(Listener {
            fd,
            user: HostPtr(lc.user_data),
            on_accept: lc.on_accept,
            handshake: lc.handshake,
            request_ready,
            ready_user,
            flags: lc.flags,
            local,
            timeouts_ms,
        })
    }

    pub fn nonblocking(&self) -> bool {
        self.flags & EVMPM_LISTEN_NONBLOCK != 0
    }

    /// Its connections go through a handshake step before their first
    /// request (and are accepted non-blocking for it).
    pub fn has_handshake(&self) -> bool {
        self.handshake.is_some()
    }

    pub fn server_first(&self) -> bool {
        self.flags & EVMPM_LISTEN_SERVER_FIRST != 0
    }

    /// How its connections close when the host closes them plainly.
    pub fn close_how(&self) -> CloseHow {
        if self.flags & EVMPM_LISTEN_NO_LINGER != 0 {
            CloseHow::Abort
        } else {
            CloseHow::Linger
        }
    }
}

/// The runtime's listeners, by index.
pub struct Listeners {
    /// Invariant: entries `0..count` are set and never change.
    entries: Box<[OnceLock<Listener>]>,
    count: AtomicUsize,
    /// Serializes registrations (the duplicate check and the append).
    adding: Mutex<()>,
}

impl Listeners {
    pub fn new() -> Listeners {
        Listeners {
            entries: (0..EVMPM_MAX_LISTENERS).map(|_| OnceLock::new()).collect(),
            count: AtomicUsize::new(0),
            adding: Mutex::new(()),
        }
    }

    /// Appends a listener; its index. Exists if its descriptor is
    /// registered already; Limit past `EVMPM_MAX_LISTENERS`.
    pub fn add(
        &self,
        make: impl FnOnce() -> Result<Listener, Error>,
        fd: i32,
    ) -> Result<u32, Error> {
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.count.load(Ordering::Acquire);
        if self.iter().any(|(_, l)| l.fd == fd) {
            return Err(Error::Exists);
        }
        if n >= self.entries.len() {
            return Err(Error::Limit);
        }
        let listener = make()?;
        let _ = self.entries[n].set(listener);
        self.count.store(n + 1, Ordering::Release);
        Ok(n as u32)
    }

    pub fn get(&self, index: u32) -> Option<&Listener> {
        self.entries.get(index as usize)?.get()
    }

    /// Every listener registered so far, with its index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Listener)> {
        let n = self.count.load(Ordering::Acquire);
        self.entries[..n]
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.get().map(|l| (i as u32, l)))
    }
}

/// What `evmpm_conn_get_info` and the accept hook tell of a connection of
/// `listener` on descriptor `fd` from `peer`. The local address is the
/// listener's, or, for a wildcard listener, asked of the kernel now.
pub fn conn_info(listener: &Listener, fd: i32, peer: &Address) -> evmpm_conn_info {
    let local = listener
        .local
        .or_else(|| socket::local_address(fd).ok())
        .unwrap_or_else(Address::empty);
    evmpm_conn_info {
        listener_fd: listener.fd,
        peer_len: peer.len,
        listener_user: listener.user.0,
        peer: peer.addr,
        local: local.addr,
        local_len: local.len,
    }
}

/// The smallest `evmpm_listener_config.size` this library accepts: the
/// first layout, 0.2.0's.
const MIN_SIZE: usize = size_of::<evmpm_listener_config>();

pub fn defaults() -> evmpm_listener_config {
    evmpm_listener_config {
        size: size_of::<evmpm_listener_config>() as u32,
        flags: 0,
        user_data: std::ptr::null_mut(),
        on_accept: None,
        request_ready: None,
        read_timeout_ms: 0,
        keepalive_timeout_ms: 0,
        write_timeout_ms: 0,
        header_timeout_ms: 0,
        handshake: None,
    }
}

/// `evmpm_listener_config_init`: the defaults in the caller's `size`
/// bytes, as `config::init` does for the runtime's config.
///
/// # Safety
/// `lc` is writable for `size` bytes.
pub unsafe fn init(lc: *mut evmpm_listener_config, size: usize) -> Result<(), Error> {
    if size < MIN_SIZE || size > u32::MAX as usize {
        return Err(Error::Version);
    }
    let mut d = defaults();
    d.size = size as u32;
    // SAFETY: per this function's contract; `d` is a live struct.
    unsafe { crate::config::write_sized(&d, lc, size) };
    Ok(())
}

/// `evmpm_register_listener_ex`'s read of the caller's struct, as
/// `config::read` does for the runtime's.
///
/// # Safety
/// `lc` is readable for 4 bytes, and for its `size` field's bytes.
pub unsafe fn read(lc: *const evmpm_listener_config) -> Result<evmpm_listener_config, Error> {
    let mut out = defaults();
    // SAFETY: per this function's contract. Every field is valid for any
    // bit pattern C can put there (integers, nullable pointers).
    unsafe { crate::config::read_sized(lc, &mut out, MIN_SIZE) }?;
    Ok(out)
}

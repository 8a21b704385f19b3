//! Internal errors: what happens when evmpm's own code panics.
//!
//! A panic in evmpm is a bug, and after it no invariant of the runtime can
//! be trusted (a connection half handed over, a timeout list half linked).
//! So the policy is fail-stop, as an httpd child process that crashes is
//! replaced rather than patched up:
//!
//! - every thread that runs evmpm code catches panics: the C boundary
//!   (`ffi_guard!`), each worker job, each turn of the event loop;
//! - the catcher counts it (`evmpm_stats.internal_errors`), tells the host's
//!   log callback, and makes the runtime stop itself at once
//!   (`Runtime::internal_error`): no new connection, every open one closed
//!   with its close callback, handlers' sockets shut down;
//! - `evmpm_stop` then finishes the job and answers `EVMPM_EINTERNAL`; its
//!   final sweep closes what no thread is left to close.
//!
//! The panic message never reaches the process's stderr: a panic hook,
//! installed once, keeps it for the catcher on threads that are inside
//! evmpm, and hands every other panic to the hook that was there before.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Depth of `catch` calls on this thread: non-zero while evmpm code runs.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The message of the last panic caught on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the panic hook (once per process; later calls do nothing).
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) == 0 {
                return previous(info);
            }
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            let text = match info.location() {
                Some(at) => format!("{what} at {}:{}", at.file(), at.line()),
                None => what,
            };
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }));
    });
}

/// Runs `f`, catching a panic: Err carries its message.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|_| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panic".into())
    })
}

/// Places where tests make evmpm panic, to check the fail-stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Site {
    /// In the close path, after the state became Closing and before the
    /// close callback: the connection is owned by a thread that dies.
    Closing = 1,
    /// In the event thread, while it links a handed-over connection into a
    /// timeout queue.
    EventAdopt = 2,
    /// Inside a host call that holds a connection (`evmpm_close` et al.).
    HostCall = 3,
}

/// A runtime's fault point: where a test makes evmpm panic. Holds nothing
/// and does nothing outside the crate's own tests.
#[derive(Default)]
pub struct FaultPoint {
    #[cfg(test)]
    armed: std::sync::atomic::AtomicU8,
}

impl FaultPoint {
    /// Makes the next `hit` of `site` panic (once).
    #[cfg(test)]
    pub fn arm(&self, site: Site) {
        self.armed
            .store(site as u8, std::sync::atomic::Ordering::SeqCst);
    }

    /// Panics if a test armed `site`.
    #[inline(always)]
    pub fn hit(&self, site: Site) {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            if self
                .armed
                .compare_exchange(site as u8, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                panic!("injected fault at {site:?}");
            }
        }
        #[cfg(not(test))]
        let _ = site;
    }
}

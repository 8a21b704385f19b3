//! Runtime settings: the defaults behind `evmpm_config_init`, and the
//! validated copy a runtime keeps.

use crate::error::Error;
use crate::ffi::types::{
    evmpm_close_fn, evmpm_config, evmpm_log_fn, evmpm_request_ready_fn, evmpm_runtime,
    evmpm_thread_fn, EVMPM_TIMEOUT_NONE,
};
use libc::{c_int, c_void};
use std::mem::size_of;

/// The host's `user_data`, handed back to its callbacks on any thread.
#[derive(Clone, Copy)]
pub struct HostPtr(pub *mut c_void);

// SAFETY: evmpm only passes the pointer back to the host; the header tells
// the host its callbacks run on runtime threads.
unsafe impl Send for HostPtr {}
// SAFETY: as above; the runtime never dereferences it.
unsafe impl Sync for HostPtr {}

pub type Handler = unsafe extern "C" fn(*mut c_void, *mut evmpm_runtime, u64, c_int, c_int);

/// The smallest `evmpm_config.size` this library accepts: the layout of
/// 0.2.0, the first with a size. Later versions append fields and keep
/// accepting this one.
pub(crate) const MIN_CONFIG_SIZE: usize = size_of::<evmpm_config>();

pub fn defaults() -> evmpm_config {
    evmpm_config {
        size: size_of::<evmpm_config>() as u32,
        worker_threads: 256,
        keepalive_timeout_ms: 5_000,
        read_timeout_ms: 60_000,
        write_timeout_ms: 60_000,
        linger_timeout_ms: 2_000,
        async_request_worker_factor: f64::INFINITY,
        connection_limit: 16_384,
        keepalive_shed_ms: 100,
        worker_stack_size: 8 << 20,
        handler: None,
        on_close: None,
        user_data: std::ptr::null_mut(),
        request_ready: None,
        header_timeout_ms: 20_000,
        request_peek_bytes: 8192,
        log: None,
        running_threads: 0,
        close_on_worker: 0,
        on_thread_start: None,
        on_thread_stop: None,
    }
}

/// `evmpm_config_init`: writes the defaults into the caller's `size` bytes,
/// with `size` in the `size` field. Bytes past this library's layout (a
/// caller built against a newer header) are zeroed: "not set".
///
/// # Safety
/// `cfg` is writable for `size` bytes.
pub unsafe fn init(cfg: *mut evmpm_config, size: usize) -> Result<(), Error> {
    if size < MIN_CONFIG_SIZE || size > u32::MAX as usize {
        return Err(Error::Version);
    }
    let mut d = defaults();
    d.size = size as u32;
    // SAFETY: per this function's contract.
    unsafe { write_sized(&d, cfg, size) };
    Ok(())
}

/// Copies `src` into the caller's struct of `size` bytes at `dst`: the
/// fields both layouts have, then zeros for a newer caller's extra fields
/// (`evmpm_config_init`, `evmpm_get_stats`, `evmpm_conn_get_info`, each
/// entry of `evmpm_get_workers`). Byte copies: `dst` need not be aligned.
///
/// # Safety
/// `dst` is writable for `size` bytes.
pub(crate) unsafe fn write_sized<T: Copy>(src: &T, dst: *mut T, size: usize) {
    let known = size.min(size_of::<T>());
    let dst = dst.cast::<u8>();
    // SAFETY: `src` is readable for `known` <= size_of::<T>() bytes; the
    // caller's struct is writable for `size` >= `known` bytes (contract).
    unsafe { std::ptr::copy_nonoverlapping((src as *const T).cast::<u8>(), dst, known) };
    // SAFETY: as above, the caller's bytes `known..size` are writable.
    unsafe { std::ptr::write_bytes(dst.add(known), 0, size - known) };
}

/// Reads a caller's size-tagged struct (its first field a `u32` size) over
/// `out`, which holds the defaults: the `size` field first, then only that
/// many bytes. Fields past the caller's layout keep their defaults; a tail
/// past this library's layout must be all zero (nothing set that this
/// library would ignore). Version if the size is below `min`.
///
/// # Safety
/// `src` is readable for 4 bytes, and for its `size` field's bytes; every
/// field of `T` is valid for any bit pattern C can put there.
pub(crate) unsafe fn read_sized<T: Copy>(
    src: *const T,
    out: &mut T,
    min: usize,
) -> Result<(), Error> {
    // SAFETY: the `size` field is the struct's first, readable (contract).
    let size = unsafe { src.cast::<u32>().read_unaligned() } as usize;
    if size < min {
        return Err(Error::Version);
    }
    let known = size.min(size_of::<T>());
    let bytes = src.cast::<u8>();
    // SAFETY: the caller's struct is readable for `size` bytes (contract).
    let tail = unsafe { std::slice::from_raw_parts(bytes.add(known), size - known) };
    if tail.iter().any(|&b| b != 0) {
        return Err(Error::Version);
    }
    // SAFETY: `known` bytes of the caller's struct over the defaults; any
    // bit pattern is a valid `T` (contract).
    unsafe { std::ptr::copy_nonoverlapping(bytes, (out as *mut T).cast::<u8>(), known) };
    Ok(())
}

/// `evmpm_create`'s read of the caller's config (see `read_sized`).
///
/// # Safety
/// `cfg` is readable for 4 bytes, and for its `size` field's bytes.
pub unsafe fn read(cfg: *const evmpm_config) -> Result<evmpm_config, Error> {
    let mut c = defaults();
    // SAFETY: per this function's contract. Every field is valid for any
    // bit pattern C can put there (integers, a double, nullable pointers
    // and function pointers).
    unsafe { read_sized(cfg, &mut c, MIN_CONFIG_SIZE) }?;
    Ok(c)
}

/// A checked configuration, durations in nanoseconds.
#[derive(Clone, Copy)]
pub struct Config {
    /// The most worker threads.
    pub workers: usize,
    /// Threads active while no handler blocks (at most `workers`).
    pub running: usize,
    pub keepalive_ns: u64,
    pub read_ns: u64,
    pub write_ns: u64,
    pub linger_ns: u64,
    pub factor: f64,
    pub connection_limit: usize,
    /// 0: never shed.
    pub shed_ns: u64,
    pub stack_size: usize,
    pub handler: Handler,
    pub on_close: evmpm_close_fn,
    pub user_data: HostPtr,
    pub request_ready: evmpm_request_ready_fn,
    pub header_ns: u64,
    pub peek_bytes: usize,
    pub log: evmpm_log_fn,
    /// Close callbacks run on workers, never on the event thread.
    pub close_on_worker: bool,
    pub thread_start: evmpm_thread_fn,
    pub thread_stop: evmpm_thread_fn,
}

const MS: u64 = 1_000_000;
pub(crate) const MAX_WORKERS: u32 = 4096;
/// The connection handle has 20 bits for the slot (see `conn::handle`); and
/// 2^20 is also the kernel's default `nr_open`, the most descriptors a
/// process may have.
pub(crate) const MAX_CONNECTIONS: u32 = crate::conn::handle::MAX_SLOTS;
/// SO_RCVLOWAT is capped at half the receive buffer; past that a waiting
/// connection would poll readable at once, again and again.
pub(crate) const MAX_PEEK_BYTES: u32 = 32 << 10;

impl Config {
    pub fn from_c(c: &evmpm_config) -> Result<Config, Error> {
        if let Some(problem) = first_invalid(c) {
            if let Some(log) = c.log {
                let text =
                    std::ffi::CString::new(format!("evmpm_create: {problem}")).unwrap_or_default();
                // SAFETY: the host's log callback with the documented
                // arguments; the message lives until it returns.
                unsafe {
                    log(
                        c.user_data,
                        crate::ffi::types::EVMPM_LOG_ERROR,
                        text.as_ptr(),
                    )
                };
            }
            return Err(Error::Invalid);
        }
        let handler = c.handler.ok_or(Error::Invalid)?;
        Ok(Config {
            workers: c.worker_threads as usize,
            running: match c.running_threads {
                0 => crate::sys::thread::cpus().max(1),
                n => n as usize,
            }
            .min(c.worker_threads as usize),
            keepalive_ns: timeout_ns(c.keepalive_timeout_ms),
            read_ns: timeout_ns(c.read_timeout_ms),
            write_ns: timeout_ns(c.write_timeout_ms),
            linger_ns: timeout_ns(c.linger_timeout_ms),
            factor: c.async_request_worker_factor,
            connection_limit: c.connection_limit as usize,
            shed_ns: u64::from(c.keepalive_shed_ms) * MS,
            stack_size: c.worker_stack_size,
            handler,
            on_close: c.on_close,
            user_data: HostPtr(c.user_data),
            request_ready: c.request_ready,
            header_ns: timeout_ns(c.header_timeout_ms),
            peek_bytes: c.request_peek_bytes as usize,
            log: c.log,
            close_on_worker: c.close_on_worker != 0,
            thread_start: c.on_thread_start,
            thread_stop: c.on_thread_stop,
        })
    }
}

/// Why `c` is refused: the first field out of range and its range, as the
/// log callback is told; None if every field is valid.
fn first_invalid(c: &evmpm_config) -> Option<&'static str> {
    let checks: [(bool, &'static str); 12] = [
        (c.handler.is_some(), "handler is NULL (it is required)"),
        (
            (1..=MAX_WORKERS).contains(&c.worker_threads),
            "worker_threads is out of range (1 to 4096)",
        ),
        (
            c.keepalive_timeout_ms >= 1,
            "keepalive_timeout_ms is 0 (1 or more, or EVMPM_TIMEOUT_NONE)",
        ),
        (
            c.read_timeout_ms >= 1,
            "read_timeout_ms is 0 (1 or more, or EVMPM_TIMEOUT_NONE)",
        ),
        (
            c.write_timeout_ms >= 1,
            "write_timeout_ms is 0 (1 or more, or EVMPM_TIMEOUT_NONE)",
        ),
        (
            c.linger_timeout_ms != EVMPM_TIMEOUT_NONE,
            "linger_timeout_ms is EVMPM_TIMEOUT_NONE (0 to close at once, or a duration)",
        ),
        (
            c.async_request_worker_factor >= 0.0,
            "async_request_worker_factor is negative or NaN (0 or more, INFINITY for no rule)",
        ),
        (
            c.running_threads <= MAX_WORKERS,
            "running_threads is out of range (0 to 4096)",
        ),
        (
            (1..=MAX_CONNECTIONS).contains(&c.connection_limit),
            "connection_limit is out of range (1 to 1048576)",
        ),
        (
            c.worker_stack_size >= 64 << 10,
            "worker_stack_size is below 64 KiB",
        ),
        (
            c.header_timeout_ms >= 1,
            "header_timeout_ms is 0 (1 or more, or EVMPM_TIMEOUT_NONE)",
        ),
        (
            (1..=MAX_PEEK_BYTES).contains(&c.request_peek_bytes),
            "request_peek_bytes is out of range (1 to 32768)",
        ),
    ];
    checks.iter().find(|(ok, _)| !ok).map(|&(_, why)| why)
}

/// A timeout in milliseconds as nanoseconds; `EVMPM_TIMEOUT_NONE` is
/// `timeouts::NEVER`.
pub fn timeout_ns(ms: u32) -> u64 {
    if ms == EVMPM_TIMEOUT_NONE {
        crate::timeouts::NEVER
    } else {
        u64::from(ms) * MS
    }
}

/// The inverse of `timeout_ns` for values it made.
pub fn timeout_ms(ns: u64) -> u32 {
    if ns == crate::timeouts::NEVER {
        EVMPM_TIMEOUT_NONE
    } else {
        (ns / MS) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn noop(_: *mut c_void, _: *mut evmpm_runtime, _: u64, _: c_int, _: c_int) {}

    fn valid() -> evmpm_config {
        evmpm_config {
            handler: Some(noop),
            ..defaults()
        }
    }

    #[test]
    fn defaults_with_a_handler_are_valid() {
        let c = Config::from_c(&valid()).ok().unwrap();
        assert_eq!(c.workers, 256);
        assert!(c.running >= 1 && c.running <= 256);
        assert_eq!(c.keepalive_ns, 5_000 * MS);
    }

    /// The log callback is told which field `evmpm_create` refused.
    #[test]
    fn the_refused_field_is_named() {
        let mut c = valid();
        assert_eq!(first_invalid(&c), None);
        c.request_peek_bytes = 0;
        c.worker_threads = 0;
        assert!(first_invalid(&c).unwrap().starts_with("worker_threads"));
        c.worker_threads = 1;
        assert!(first_invalid(&c).unwrap().starts_with("request_peek_bytes"));
    }

    #[test]
    fn timeout_none_means_never() {
        let mut c = valid();
        c.keepalive_timeout_ms = EVMPM_TIMEOUT_NONE;
        c.read_timeout_ms = EVMPM_TIMEOUT_NONE;
        c.write_timeout_ms = EVMPM_TIMEOUT_NONE;
        c.header_timeout_ms = EVMPM_TIMEOUT_NONE;
        let c = Config::from_c(&c).ok().unwrap();
        let never = crate::timeouts::NEVER;
        assert_eq!(
            [c.keepalive_ns, c.read_ns, c.write_ns, c.header_ns],
            [never; 4]
        );
        assert_eq!(timeout_ms(timeout_ns(1234)), 1234);
        assert_eq!(timeout_ms(never), EVMPM_TIMEOUT_NONE);
    }

    unsafe extern "C" fn hook(_: *mut c_void, _: *mut evmpm_runtime, _: c_int, _: u32) {}

    /// The thread hooks are off by default and carried over as set.
    #[test]
    fn thread_hooks_default_to_null_and_are_kept() {
        let c = Config::from_c(&valid()).ok().unwrap();
        assert!(c.thread_start.is_none() && c.thread_stop.is_none());
        let set = evmpm_config {
            on_thread_start: Some(hook),
            on_thread_stop: Some(hook),
            ..valid()
        };
        let c = Config::from_c(&set).ok().unwrap();
        assert!(c.thread_start.is_some() && c.thread_stop.is_some());
    }

    #[test]
    fn each_bad_value_is_rejected() {
        let cases: Vec<fn(&mut evmpm_config)> = vec![
            |c| c.handler = None,
            |c| c.worker_threads = 0,
            |c| c.worker_threads = MAX_WORKERS + 1,
            |c| c.keepalive_timeout_ms = 0,
            |c| c.read_timeout_ms = 0,
            |c| c.write_timeout_ms = 0,
            |c| c.async_request_worker_factor = -1.0,
            |c| c.async_request_worker_factor = f64::NAN,
            |c| c.connection_limit = 0,
            |c| c.connection_limit = MAX_CONNECTIONS + 1,
            |c| c.worker_stack_size = 1024,
            |c| c.header_timeout_ms = 0,
            |c| c.request_peek_bytes = 0,
            |c| c.request_peek_bytes = MAX_PEEK_BYTES + 1,
            |c| c.running_threads = MAX_WORKERS + 1,
            |c| c.linger_timeout_ms = EVMPM_TIMEOUT_NONE,
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut c = valid();
            mutate(&mut c);
            assert!(
                matches!(Config::from_c(&c), Err(Error::Invalid)),
                "case {i} was accepted"
            );
        }
    }

    /// A caller built against a newer header: its extra fields, zeroed by
    /// init, are accepted; set, they are refused rather than ignored.
    #[test]
    fn a_larger_struct_is_read_only_while_its_tail_is_zero() {
        #[repr(C)]
        struct Grown {
            base: evmpm_config,
            future: u64,
        }
        let mut g = Grown {
            base: valid(),
            future: 7,
        };
        // SAFETY: `g` is writable for its whole size.
        unsafe { init(&mut g.base, size_of::<Grown>()) }.unwrap();
        assert_eq!(g.future, 0);
        assert_eq!(g.base.size as usize, size_of::<Grown>());
        g.base.handler = Some(noop);
        // SAFETY: readable for `size` bytes.
        let c = unsafe { read(&g.base) }.ok().unwrap();
        assert_eq!(c.worker_threads, 256);
        g.future = 1;
        // SAFETY: as above.
        assert!(matches!(unsafe { read(&g.base) }, Err(Error::Version)));
    }

    #[test]
    fn a_size_below_the_oldest_layout_is_refused() {
        let mut c = valid();
        // SAFETY: writable for its size, which is more than asked.
        assert!(matches!(unsafe { init(&mut c, 8) }, Err(Error::Version)));
        c.size = 8;
        // SAFETY: readable for its full size.
        assert!(matches!(unsafe { read(&c) }, Err(Error::Version)));
    }
}

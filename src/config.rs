//! Runtime settings: the defaults behind `evmpm_config_init`, and the
//! validated copy a runtime keeps.

use crate::error::Error;
use crate::ffi::types::{
    evmpm_close_fn, evmpm_config, evmpm_request_ready_fn, EVMPM_CONFIG_VERSION,
};
use libc::{c_int, c_void};

/// The host's `user_data`, handed back to its callbacks on any thread.
#[derive(Clone, Copy)]
pub struct HostPtr(pub *mut c_void);

// SAFETY: evmpm only passes the pointer back to the host; the header tells
// the host its callbacks run on runtime threads.
unsafe impl Send for HostPtr {}
// SAFETY: as above; the runtime never dereferences it.
unsafe impl Sync for HostPtr {}

pub type Handler =
    unsafe extern "C" fn(*mut c_void, *mut crate::runtime::Runtime, u64, c_int, c_int);

pub fn defaults() -> evmpm_config {
    evmpm_config {
        version: EVMPM_CONFIG_VERSION,
        worker_threads: 16,
        keepalive_timeout_ms: 5_000,
        read_timeout_ms: 60_000,
        write_timeout_ms: 60_000,
        linger_timeout_ms: 2_000,
        async_request_worker_factor: 1024.0,
        connection_limit: 16_384,
        keepalive_shed_ms: 100,
        worker_stack_size: 8 << 20,
        handler: None,
        on_close: None,
        user_data: std::ptr::null_mut(),
        request_ready: None,
        header_timeout_ms: 20_000,
        request_peek_bytes: 8192,
    }
}

/// A checked configuration, durations in nanoseconds.
#[derive(Clone, Copy)]
pub struct Config {
    pub workers: usize,
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
}

const MS: u64 = 1_000_000;
pub(crate) const MAX_WORKERS: u32 = 4096;
pub(crate) const MAX_CONNECTIONS: u32 = (1 << 24) - 1;
/// SO_RCVLOWAT is capped at half the receive buffer; past that a waiting
/// connection would poll readable at once, again and again.
pub(crate) const MAX_PEEK_BYTES: u32 = 32 << 10;

impl Config {
    pub fn from_c(c: &evmpm_config) -> Result<Config, Error> {
        if c.version != EVMPM_CONFIG_VERSION {
            return Err(Error::Version);
        }
        let handler = c.handler.ok_or(Error::Invalid)?;
        let valid = (1..=MAX_WORKERS).contains(&c.worker_threads)
            && c.keepalive_timeout_ms >= 1
            && c.read_timeout_ms >= 1
            && c.write_timeout_ms >= 1
            && c.async_request_worker_factor.is_finite()
            && c.async_request_worker_factor >= 0.0
            && (1..=MAX_CONNECTIONS).contains(&c.connection_limit)
            && c.worker_stack_size >= 64 << 10
            && c.header_timeout_ms >= 1
            && (1..=MAX_PEEK_BYTES).contains(&c.request_peek_bytes);
        if !valid {
            return Err(Error::Invalid);
        }
        Ok(Config {
            workers: c.worker_threads as usize,
            keepalive_ns: u64::from(c.keepalive_timeout_ms) * MS,
            read_ns: u64::from(c.read_timeout_ms) * MS,
            write_ns: u64::from(c.write_timeout_ms) * MS,
            linger_ns: u64::from(c.linger_timeout_ms) * MS,
            factor: c.async_request_worker_factor,
            connection_limit: c.connection_limit as usize,
            shed_ns: u64::from(c.keepalive_shed_ms) * MS,
            stack_size: c.worker_stack_size,
            handler,
            on_close: c.on_close,
            user_data: HostPtr(c.user_data),
            request_ready: c.request_ready,
            header_ns: u64::from(c.header_timeout_ms) * MS,
            peek_bytes: c.request_peek_bytes as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn noop(
        _: *mut c_void,
        _: *mut crate::runtime::Runtime,
        _: u64,
        _: c_int,
        _: c_int,
    ) {
    }

    fn valid() -> evmpm_config {
        evmpm_config {
            handler: Some(noop),
            ..defaults()
        }
    }

    #[test]
    fn defaults_with_a_handler_are_valid() {
        let c = Config::from_c(&valid()).ok().unwrap();
        assert_eq!(c.workers, 16);
        assert_eq!(c.keepalive_ns, 5_000 * MS);
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
            |c| c.async_request_worker_factor = f64::INFINITY,
            |c| c.connection_limit = 0,
            |c| c.connection_limit = MAX_CONNECTIONS + 1,
            |c| c.worker_stack_size = 1024,
            |c| c.header_timeout_ms = 0,
            |c| c.request_peek_bytes = 0,
            |c| c.request_peek_bytes = MAX_PEEK_BYTES + 1,
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut c = valid();
            mutate(&mut c);
            assert!(
                matches!(Config::from_c(&c), Err(Error::Invalid)),
                "case {i} was accepted"
            );
        }
        let mut c = valid();
        c.version = 99;
        assert!(matches!(Config::from_c(&c), Err(Error::Version)));
    }
}

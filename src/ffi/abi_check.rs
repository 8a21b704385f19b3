//! Checks the checked-in header against the Rust definitions, as a C
//! compiler sees it: libclang (through bindgen) parses `include/evmpm.h`,
//! and these tests compare every struct layout and constant with the Rust
//! side, then call the library through the header's declarations.
//!
//! cbindgen writes the header from the Rust types, so a mismatch here means
//! a type was mapped wrongly (a size, an alignment, a field order), which no
//! C test would see until a field read garbage. Needs libclang, so it is
//! behind the `abi-check` feature: `cargo test --features abi-check --lib`.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]
mod c {
    include!(concat!(env!("OUT_DIR"), "/header_bindings.rs"));
}

/// The Rust side of the header: its types and the timer module's.
mod rust {
    pub use crate::ffi::timer_api::*;
    pub use crate::ffi::types::*;
}
use std::mem::{align_of, offset_of, size_of};

/// Size, alignment and every listed field's offset agree. List every field:
/// the size check only catches a missing one when it changes the size.
macro_rules! same_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {{
        assert_eq!(size_of::<c::$ty>(), size_of::<rust::$ty>(), "size of {}", stringify!($ty));
        assert_eq!(align_of::<c::$ty>(), align_of::<rust::$ty>(), "alignment of {}", stringify!($ty));
        $(assert_eq!(
            offset_of!(c::$ty, $field),
            offset_of!(rust::$ty, $field),
            "offset of {}.{}", stringify!($ty), stringify!($field)
        );)*
    }};
}

macro_rules! same_consts {
    ($($name:ident),* $(,)?) => {
        $(assert_eq!(i64::from(c::$name), i64::from(rust::$name), "{}", stringify!($name));)*
    };
}

/// The `evmpm_error` enumerators, which bindgen prefixes with the type name.
macro_rules! same_errors {
    ($($name:ident => $c:ident),* $(,)?) => {
        $(assert_eq!(c::$c, rust::evmpm_error::$name as i32, "{}", stringify!($name));)*
    };
}

#[test]
fn struct_layouts_match() {
    same_layout!(evmpm_config {
        size,
        worker_threads,
        keepalive_timeout_ms,
        read_timeout_ms,
        write_timeout_ms,
        linger_timeout_ms,
        async_request_worker_factor,
        connection_limit,
        keepalive_shed_ms,
        worker_stack_size,
        handler,
        on_close,
        user_data,
        request_ready,
        header_timeout_ms,
        request_peek_bytes,
        log,
        running_threads,
        close_on_worker,
        on_thread_start,
        on_thread_stop,
    });
    same_layout!(evmpm_stats {
        connections,
        conns_reading,
        conns_queued,
        conns_in_handler,
        conns_writing,
        conns_keepalive,
        conns_lingering,
        conns_suspended,
        workers_busy,
        workers_idle,
        accepted,
        closed,
        timed_out,
        keepalive_expired,
        shed,
        refused,
        rejected,
        accept_pauses,
        accept_backoffs,
        accepting_paused,
        internal_errors,
        worker_threads,
        handlers_blocked,
        blocked_replaced,
        denied,
        conns_handshake,
        handshakes,
        handshakes_failed,
        timers,
        timer_runs,
    });
    same_layout!(evmpm_listener_config {
        size,
        flags,
        user_data,
        on_accept,
        request_ready,
        read_timeout_ms,
        keepalive_timeout_ms,
        write_timeout_ms,
        header_timeout_ms,
        handshake,
    });
    same_layout!(evmpm_conn_info {
        listener_fd,
        peer_len,
        listener_user,
        peer,
        local,
        local_len,
    });
    same_layout!(evmpm_iovec { base, len });
    same_layout!(evmpm_worker_info {
        id,
        state,
        conn,
        state_us,
        label,
    });
    // The fields of `struct iovec`, in its order: a host's iovec array
    // converts entry by entry without surprises.
    assert_eq!(size_of::<c::evmpm_iovec>(), size_of::<libc::iovec>());
    assert_eq!(
        offset_of!(c::evmpm_iovec, base),
        offset_of!(libc::iovec, iov_base)
    );
    assert_eq!(
        offset_of!(c::evmpm_iovec, len),
        offset_of!(libc::iovec, iov_len)
    );
    assert_eq!(size_of::<c::evmpm_conn>(), size_of::<rust::evmpm_conn>());
    assert_eq!(size_of::<c::evmpm_error>(), size_of::<rust::evmpm_error>());
}

#[test]
fn constants_match() {
    same_consts!(
        EVMPM_VERSION_MAJOR,
        EVMPM_VERSION_MINOR,
        EVMPM_VERSION_PATCH,
        EVMPM_WAKE_NEW,
        EVMPM_WAKE_READABLE,
        EVMPM_WAKE_BUFFERED,
        EVMPM_WAKE_RESUMED,
        EVMPM_REQUEST_COMPLETE,
        EVMPM_REQUEST_INCOMPLETE,
        EVMPM_REQUEST_REJECT,
        EVMPM_PARK_BUFFERED,
        EVMPM_WRITE_KEEPALIVE,
        EVMPM_WRITE_BUFFERED,
        EVMPM_IOV_MAX,
        EVMPM_LOG_ERROR,
        EVMPM_LOG_WARNING,
        EVMPM_WAKE_NOTIFIED,
        EVMPM_WAKE_ACCEPTED,
        EVMPM_TIMEOUT_NONE,
        EVMPM_MAX_LISTENERS,
        EVMPM_LISTEN_NONBLOCK,
        EVMPM_LISTEN_SERVER_FIRST,
        EVMPM_LISTEN_NO_REQUEST_READY,
        EVMPM_LISTEN_NO_LINGER,
        EVMPM_CLOSE_NO_LINGER,
        EVMPM_CLOSE_RESET,
        EVMPM_CLOSE_CLIENT_DONE,
        EVMPM_ACCEPT_CONTINUE,
        EVMPM_ACCEPT_REFUSE,
        EVMPM_HANDSHAKE_DONE,
        EVMPM_HANDSHAKE_WANT_READ,
        EVMPM_HANDSHAKE_WANT_WRITE,
        EVMPM_HANDSHAKE_FAIL,
        EVMPM_THREAD_WORKER,
        EVMPM_THREAD_EVENT,
        EVMPM_WORKER_IDLE,
        EVMPM_WORKER_HANDLER,
        EVMPM_WORKER_BLOCKED,
        EVMPM_WORKER_SPARE,
        EVMPM_WATCH_READABLE,
        EVMPM_WATCH_WRITABLE,
        EVMPM_WATCH_HANGUP,
        EVMPM_WATCH_ERROR,
        EVMPM_WATCH_TIMEOUT,
    );
    same_errors!(
        EVMPM_OK => evmpm_error_EVMPM_OK,
        EVMPM_EINVAL => evmpm_error_EVMPM_EINVAL,
        EVMPM_ENOTSOCK => evmpm_error_EVMPM_ENOTSOCK,
        EVMPM_ENOTLISTENER => evmpm_error_EVMPM_ENOTLISTENER,
        EVMPM_ESTALE => evmpm_error_EVMPM_ESTALE,
        EVMPM_ESTATE => evmpm_error_EVMPM_ESTATE,
        EVMPM_ESTOPPED => evmpm_error_EVMPM_ESTOPPED,
        EVMPM_ETIMEDOUT => evmpm_error_EVMPM_ETIMEDOUT,
        EVMPM_ETHREAD => evmpm_error_EVMPM_ETHREAD,
        EVMPM_EOS => evmpm_error_EVMPM_EOS,
        EVMPM_EEXIST => evmpm_error_EVMPM_EEXIST,
        EVMPM_EVERSION => evmpm_error_EVMPM_EVERSION,
        EVMPM_EINTERNAL => evmpm_error_EVMPM_EINTERNAL,
        EVMPM_ELIMIT => evmpm_error_EVMPM_ELIMIT,
        EVMPM_EBUSY => evmpm_error_EVMPM_EBUSY,
    );
}

#[test]
fn calls_through_the_header_declarations_work() {
    let mut cfg = std::mem::MaybeUninit::<c::evmpm_config>::uninit();
    // SAFETY: a writable evmpm_config, as the header's declaration asks.
    let rc = unsafe { c::evmpm_config_init(cfg.as_mut_ptr(), size_of::<c::evmpm_config>()) };
    assert_eq!(rc, c::evmpm_error_EVMPM_OK);
    // SAFETY: evmpm_config_init filled every field.
    let cfg = unsafe { cfg.assume_init() };
    let defaults = crate::config::defaults();
    assert_eq!(cfg.size, defaults.size);
    assert_eq!(cfg.worker_threads, defaults.worker_threads);
    assert_eq!(
        cfg.async_request_worker_factor,
        defaults.async_request_worker_factor
    );
    assert_eq!(cfg.worker_stack_size, defaults.worker_stack_size);
    assert_eq!(cfg.request_peek_bytes, defaults.request_peek_bytes);
    let mut rt = std::ptr::null_mut();
    // SAFETY: a valid config (no handler) and a writable out-pointer.
    let rc = unsafe { c::evmpm_create(&cfg, &mut rt) };
    assert_eq!(rc, c::evmpm_error_EVMPM_EINVAL);
    assert!(rt.is_null());
    // The write calls check their arguments before the runtime: a buffer
    // array the header's struct describes, too long by one, is refused.
    let iov = [c::evmpm_iovec {
        base: b"x".as_ptr().cast(),
        len: 1,
    }; 1];
    // SAFETY: NULL runtime and a readable one-entry array: refused
    // without touching either beyond the array.
    let rc = unsafe {
        c::evmpm_complete_writev(
            std::ptr::null_mut(),
            1,
            iov.as_ptr(),
            1,
            None,
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(rc, c::evmpm_error_EVMPM_EINVAL);
    // SAFETY: as above, with an iovcnt past EVMPM_IOV_MAX, which is never
    // read through.
    let rc = unsafe {
        c::evmpm_complete_sendfile(
            std::ptr::null_mut(),
            1,
            iov.as_ptr(),
            c::EVMPM_IOV_MAX as i32 + 1,
            0,
            0,
            0,
            None,
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(rc, c::evmpm_error_EVMPM_EINVAL);
    // The snapshot's struct as the header declares it, one entry's room:
    // a NULL runtime is refused and nothing written.
    let mut info = std::mem::MaybeUninit::<c::evmpm_worker_info>::zeroed();
    let mut count = 7usize;
    // SAFETY: one writable entry of the header's size, a writable count.
    let rc = unsafe {
        c::evmpm_get_workers(
            std::ptr::null_mut(),
            info.as_mut_ptr(),
            size_of::<c::evmpm_worker_info>(),
            1,
            &mut count,
        )
    };
    assert_eq!(rc, c::evmpm_error_EVMPM_EINVAL);
    assert_eq!(count, 7);
    // SAFETY: any code is accepted; the result is a static C string.
    let text = unsafe { std::ffi::CStr::from_ptr(c::evmpm_strerror(c::evmpm_error_EVMPM_ESTALE)) };
    assert!(text.to_str().unwrap().contains("stale"));
}

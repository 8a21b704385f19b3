//! Errors and their C codes.

use crate::ffi::types::evmpm_error::{self, *};
use libc::c_int;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    Invalid,
    NotSocket,
    NotListener,
    Stale,
    State,
    Stopped,
    TimedOut,
    Thread,
    /// An OS call failed with this errno.
    Os(i32),
    Exists,
    Version,
    Internal,
    Limit,
    Busy,
}

impl Error {
    pub fn code(self) -> evmpm_error {
        match self {
            Error::Invalid => EVMPM_EINVAL,
            Error::NotSocket => EVMPM_ENOTSOCK,
            Error::NotListener => EVMPM_ENOTLISTENER,
            Error::Stale => EVMPM_ESTALE,
            Error::State => EVMPM_ESTATE,
            Error::Stopped => EVMPM_ESTOPPED,
            Error::TimedOut => EVMPM_ETIMEDOUT,
            Error::Thread => EVMPM_ETHREAD,
            Error::Os(_) => EVMPM_EOS,
            Error::Exists => EVMPM_EEXIST,
            Error::Version => EVMPM_EVERSION,
            Error::Internal => EVMPM_EINTERNAL,
            Error::Limit => EVMPM_ELIMIT,
            Error::Busy => EVMPM_EBUSY,
        }
    }

    pub fn from_io(e: &std::io::Error) -> Error {
        Error::Os(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// The text for a code, as `evmpm_strerror` returns it. NUL-terminated.
pub fn describe(code: c_int) -> &'static str {
    const TEXTS: [(evmpm_error, &str); 15] = [
        (EVMPM_OK, "success\0"),
        (
            EVMPM_EINVAL,
            "invalid argument (NULL pointer or value out of range)\0",
        ),
        (EVMPM_ENOTSOCK, "descriptor is not an open stream socket\0"),
        (EVMPM_ENOTLISTENER, "socket is not listening\0"),
        (
            EVMPM_ESTALE,
            "connection handle is stale (closing, closed, or another runtime's)\0",
        ),
        (
            EVMPM_ESTATE,
            "call does not fit the connection's or runtime's state\0",
        ),
        (EVMPM_ESTOPPED, "runtime is stopping or stopped\0"),
        (
            EVMPM_ETIMEDOUT,
            "stop deadline passed; remaining connections were closed by force\0",
        ),
        (
            EVMPM_ETHREAD,
            "call not allowed on this thread or inside this runtime's callbacks\0",
        ),
        (EVMPM_EOS, "operating system call failed (see errno)\0"),
        (EVMPM_EEXIST, "listener already registered\0"),
        (
            EVMPM_EVERSION,
            "struct size not supported by this library version\0",
        ),
        (
            EVMPM_EINTERNAL,
            "internal error in evmpm; the runtime stopped itself\0",
        ),
        (EVMPM_ELIMIT, "a fixed limit was reached (listeners)\0"),
        (
            EVMPM_EBUSY,
            "the timer's or watch's callback is running; that run completes, none follows\0",
        ),
    ];
    TEXTS
        .iter()
        .find(|(c, _)| *c as c_int == code)
        .map_or("unknown evmpm error code\0", |(_, text)| text)
}

//! The C boundary: exported functions, their types, and the guard that keeps
//! Rust panics from crossing into C.

pub mod api;
pub mod conn_api;
pub mod timer_api;
pub mod types;
pub mod workers_api;

#[cfg(all(test, feature = "abi-check"))]
mod abi_check;

/// Runs an exported function's body, turning a panic into `$on_panic`.
///
/// Every `extern "C"` function in `api.rs` and `workers_api.rs` goes
/// through this, so no unwind ever reaches C (which would be undefined
/// behaviour), and no panic message reaches the host's stderr (see
/// `failure`). A call on a runtime also goes through `api::host_call` (or,
/// in `workers_api`, its own catch), which makes that runtime stop itself.
macro_rules! ffi_guard {
    ($on_panic:expr, $body:block) => {
        match crate::failure::catch(|| $body) {
            Ok(v) => v,
            Err(_) => $on_panic,
        }
    };
}
pub(crate) use ffi_guard;

#[cfg(test)]
mod tests {
    use super::types::*;

    /// The header's version macros and `evmpm_version()` come from one
    /// source, Cargo.toml's version.
    #[test]
    fn version_macros_match_the_package_version() {
        let expected = format!("{EVMPM_VERSION_MAJOR}.{EVMPM_VERSION_MINOR}.{EVMPM_VERSION_PATCH}");
        assert_eq!(expected, env!("CARGO_PKG_VERSION"));
    }
}

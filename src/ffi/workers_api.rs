//! The exported functions about the worker threads: the per-worker snapshot
//! behind a status page, and the label a handler shows in it. Like those in
//! `api.rs`: pointers checked, bodies inside `ffi_guard!`, 0 or a negative
//! `EVMPM_E*` code, doc comments that are the header's.

// Each function states its contract in C terms (Threads, Ownership, Errors)
// in the header; a Rust `# Safety` heading would only repeat it there.
#![allow(clippy::missing_safety_doc)]

use super::api::runtime;
use super::ffi_guard;
use super::types::evmpm_error::{self, *};
use super::types::*;
use crate::workers::LABEL_SIZE;
use libc::c_char;

/// Takes a snapshot of the worker threads alive, for a status page (as
/// Apache's scoreboard shows one row per worker): writes up to `capacity`
/// entries at `out`, in id order, and sets `*count` to how many threads are
/// alive, which may be more than `capacity` (ask again with more room, or
/// ask with `capacity` 0 and `out` NULL first). Each entry is read at a
/// moment of its own, without stopping the workers: a snapshot is a close
/// view, not an instant.
///
/// `info_size` is `sizeof(evmpm_worker_info)` as your header declares it:
/// entry `i` is written at `(char *)out + i * info_size`, and only its
/// first `info_size` bytes, as `evmpm_get_stats` does: fields this library
/// does not have (a newer header's) read 0, fields your header does not
/// have are left out.
///
/// Threads: any, at any time until `evmpm_destroy` (also before start and
/// after stop, when no thread, or only one whose handler outlived the
/// stop's deadline, is alive), and from callbacks.
/// Ownership: `out` and `count` are the caller's; `capacity * info_size`
/// bytes at `out` are written, nothing past them.
/// Errors: `EVMPM_EINVAL` (NULL `rt` or `count`; NULL `out`, or
/// `info_size` 0, with `capacity` above 0; `capacity * info_size` above
/// `SIZE_MAX`). On error nothing is written.
#[no_mangle]
pub unsafe extern "C" fn evmpm_get_workers(
    rt: *mut evmpm_runtime,
    out: *mut evmpm_worker_info,
    info_size: usize,
    capacity: usize,
    count: *mut usize,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if count.is_null()
            || (capacity > 0 && (out.is_null() || info_size == 0))
            || capacity.checked_mul(info_size).is_none()
        {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        let rt = match unsafe { runtime(rt) } {
            Ok(rt) => rt,
            Err(e) => return e.code(),
        };
        let workers = rt.workers.snapshot(rt.now_ns());
        for (i, info) in workers.iter().take(capacity).enumerate() {
            // SAFETY: entry `i` < `capacity` of `info_size` writable bytes
            // (contract; their product does not overflow, checked above).
            unsafe {
                crate::config::write_sized(
                    info,
                    out.cast::<u8>()
                        .add(i * info_size)
                        .cast::<evmpm_worker_info>(),
                    info_size,
                )
            };
        }
        // SAFETY: non-NULL, writable per the contract.
        unsafe { count.write(workers.len()) };
        EVMPM_OK
    })
}

/// Labels the calling handler's worker in `evmpm_get_workers`' snapshot,
/// as httpd's server-status shows each worker's request line: a request's
/// method and path, a backend it waits for. The label is copied (its first
/// 63 bytes, up to its NUL) and shown until the handler returns, when it
/// is cleared; a later call replaces it. A handler that sets no label costs
/// nothing for it.
///
/// Threads: a handler of `rt`, on its worker, while it runs. Anywhere else
/// (another thread, a thread hook, `request_ready`, a handler of another
/// runtime) it returns `EVMPM_ETHREAD` and changes nothing.
/// Ownership: `label` stays the caller's; it is read during the call only.
/// Errors: `EVMPM_EINVAL` (NULL `rt` or `label`), `EVMPM_ETHREAD` (see
/// Threads).
#[no_mangle]
pub unsafe extern "C" fn evmpm_set_label(
    rt: *mut evmpm_runtime,
    label: *const c_char,
) -> evmpm_error {
    ffi_guard!(EVMPM_EINTERNAL, {
        if label.is_null() {
            return EVMPM_EINVAL;
        }
        // SAFETY: `rt` per this function's contract.
        let rt = match unsafe { runtime(rt) } {
            Ok(rt) => rt,
            Err(e) => return e.code(),
        };
        // SAFETY: `label` is a NUL-terminated string (contract); strnlen
        // reads no further than its NUL or the bytes kept.
        let len = unsafe { libc::strnlen(label, LABEL_SIZE - 1) };
        // SAFETY: those `len` bytes were just read by strnlen.
        let text = unsafe { std::slice::from_raw_parts(label.cast::<u8>(), len) };
        match crate::failure::catch(|| rt.workers.set_label(text)) {
            Ok(Ok(())) => EVMPM_OK,
            Ok(Err(e)) => e.code(),
            Err(panic) => {
                rt.internal_error("evmpm_set_label", &panic);
                EVMPM_EINTERNAL
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    fn info() -> evmpm_worker_info {
        let mut label = [0 as c_char; 64];
        label[0] = b'x' as c_char;
        evmpm_worker_info {
            id: 2,
            state: EVMPM_WORKER_HANDLER,
            conn: 9 << 32,
            state_us: 77,
            label,
        }
    }

    /// An older header's smaller struct gets its fields and nothing more; a
    /// newer one's larger struct gets zeros past ours.
    #[test]
    fn an_entry_is_written_to_the_callers_size() {
        let full = size_of::<evmpm_worker_info>();
        let mut buf = vec![0xAAu8; full + 32];
        // SAFETY: `buf` is writable for 24 bytes.
        unsafe {
            crate::config::write_sized(&info(), buf.as_mut_ptr().cast::<evmpm_worker_info>(), 24)
        };
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 2);
        assert_eq!(u64::from_ne_bytes(buf[16..24].try_into().unwrap()), 77);
        assert!(buf[24..].iter().all(|&b| b == 0xAA), "wrote past 24 bytes");

        let mut buf = vec![0xAAu8; full + 32];
        // SAFETY: writable for `full + 16` bytes.
        unsafe {
            crate::config::write_sized(
                &info(),
                buf.as_mut_ptr().cast::<evmpm_worker_info>(),
                full + 16,
            )
        };
        assert_eq!(buf[24], b'x');
        assert!(buf[full..full + 16].iter().all(|&b| b == 0), "not zeroed");
        assert!(buf[full + 16..].iter().all(|&b| b == 0xAA), "wrote too far");
    }

    #[test]
    fn bad_arguments_are_refused_before_the_runtime_is_read() {
        let mut count = 5usize;
        let mut one = info();
        // SAFETY: NULL runtime, valid or NULL out-pointers: all refused
        // before anything is dereferenced.
        unsafe {
            let size = size_of::<evmpm_worker_info>();
            let rt = std::ptr::null_mut();
            assert_eq!(
                evmpm_get_workers(rt, &mut one, size, 1, std::ptr::null_mut()),
                EVMPM_EINVAL
            );
            assert_eq!(
                evmpm_get_workers(rt, std::ptr::null_mut(), size, 1, &mut count),
                EVMPM_EINVAL
            );
            assert_eq!(
                evmpm_get_workers(rt, &mut one, 0, 1, &mut count),
                EVMPM_EINVAL
            );
            assert_eq!(
                evmpm_get_workers(rt, &mut one, usize::MAX, 2, &mut count),
                EVMPM_EINVAL
            );
            assert_eq!(
                evmpm_get_workers(rt, std::ptr::null_mut(), size, 0, &mut count),
                EVMPM_EINVAL
            );
            assert_eq!(evmpm_set_label(rt, c"x".as_ptr()), EVMPM_EINVAL);
            assert_eq!(evmpm_set_label(rt, std::ptr::null()), EVMPM_EINVAL);
        }
        assert_eq!(count, 5, "written on error");
        assert_eq!(one.state_us, 77, "written on error");
    }
}

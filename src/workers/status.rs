//! What a status page sees of each worker thread (`evmpm_get_workers`,
//! Apache's scoreboard), and the label a handler sets for it
//! (`evmpm_set_label`, the request line of httpd's server-status).
//!
//! The handler path pays for this with one store: the connection, next to
//! the handler word it already writes, on the same cache line. The rest is
//! written off that path (when a thread starts, becomes or stops being a
//! spare, and exits; when the monitor counts a handler blocked), or once
//! per job (when the worker went idle). A label costs only the handler that
//! sets one: it is written under its record's own mutex, which nobody but
//! that writer and a snapshot takes, and the worker clears it as the
//! handler returns only if that handler set one (a relaxed load of a flag
//! only the worker writes, otherwise).
//!
//! A snapshot reads a record's handler word, its connection, and the word
//! again, and retries if the word changed: a worker that ran another
//! handler meanwhile. It reads them under the label's mutex, so the label
//! it shows belongs to the handler it shows: the worker clears the label
//! after the word (at the handler's end), under that mutex, before it can
//! start another handler.

use super::{Record, Workers, BLOCKED};
use crate::error::Error;
use crate::ffi::types::{
    evmpm_worker_info, EVMPM_WORKER_BLOCKED, EVMPM_WORKER_HANDLER, EVMPM_WORKER_IDLE,
    EVMPM_WORKER_SPARE,
};
use crate::sync::atomic::Ordering;
use std::cell::Cell;

/// The label's bytes in a record and in `evmpm_worker_info`, the NUL
/// included: at most 63 of the host's.
pub(crate) const LABEL_SIZE: usize = 64;

/// `Record::life`: no thread has the id.
pub(super) const LIFE_NONE: u32 = 0;
/// A thread has the id (reserved, or running); idle or in a handler.
pub(super) const LIFE_IDLE: u32 = 1;
/// The thread sleeps as a spare.
pub(super) const LIFE_SPARE: u32 = 2;

/// A snapshot gives up on reading a handler consistently after this many
/// tries (a worker starting handler after handler faster than it reads),
/// and shows the worker idle.
const READ_TRIES: usize = 16;

thread_local! {
    /// The pool and id of the worker thread this is, if it is one.
    static CURRENT: Cell<(*const Workers, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Marks the calling thread as worker `id` of `w`, for the thread's life.
pub(super) fn enter(w: &Workers, id: usize) {
    CURRENT.with(|c| c.set((w as *const Workers, id)));
}

impl Record {
    /// The id is taken or freed, or its thread becomes or stops being a
    /// spare, at `now_ns`.
    pub(super) fn set_life(&self, life: u32, now_ns: u64) {
        self.since_ns.store(now_ns, Ordering::Relaxed);
        self.life.store(life, Ordering::Release);
    }

    /// The worker went idle at `now_ns` (its handlers returned).
    pub(super) fn idle_since(&self, now_ns: u64) {
        self.since_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The worker, after `end_handler`: clears the label its handler set,
    /// if it set one.
    pub(super) fn clear_label(&self) {
        if self.handler.labelled.load(Ordering::Relaxed) {
            self.handler.labelled.store(false, Ordering::Relaxed);
            *self.label.lock().unwrap_or_else(|p| p.into_inner()) = [0; LABEL_SIZE];
        }
    }

    /// The worker, inside a handler: `text`, cut to 63 bytes, is its label.
    fn set_label(&self, text: &[u8]) {
        let mut label = [0u8; LABEL_SIZE];
        let n = text.len().min(LABEL_SIZE - 1);
        label[..n].copy_from_slice(&text[..n]);
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = label;
        self.handler.labelled.store(true, Ordering::Relaxed);
    }

    /// The handler word and its connection, read consistently: `(0, 0)`
    /// outside a handler.
    fn read_handler(&self) -> (u64, u64) {
        for _ in 0..READ_TRIES {
            let word = self.handler.word.load(Ordering::SeqCst);
            if word == 0 {
                return (0, 0);
            }
            // Acquire: a connection stored by a later handler comes with
            // that handler's word, or the end of this one, in the re-read.
            let conn = self.handler.conn.load(Ordering::Acquire);
            if self.handler.word.load(Ordering::SeqCst) == word {
                return (word, conn);
            }
        }
        (0, 0)
    }

    /// Worker `id` as a snapshot at `now_ns` shows it; None if no thread
    /// has the id.
    fn view(&self, id: usize, now_ns: u64) -> Option<evmpm_worker_info> {
        let life = self.life.load(Ordering::Acquire);
        if life == LIFE_NONE {
            return None;
        }
        let label = self.label.lock().unwrap_or_else(|p| p.into_inner());
        let (word, conn) = self.read_handler();
        let (state, since, label) = if word == 0 {
            let state = if life == LIFE_SPARE {
                EVMPM_WORKER_SPARE
            } else {
                EVMPM_WORKER_IDLE
            };
            (
                state,
                self.since_ns.load(Ordering::Relaxed),
                [0; LABEL_SIZE],
            )
        } else if word & BLOCKED != 0 {
            let counted = self.blocked_ns.load(Ordering::Relaxed);
            (EVMPM_WORKER_BLOCKED, counted.max(word >> 1), *label)
        } else {
            (EVMPM_WORKER_HANDLER, word >> 1, *label)
        };
        Some(evmpm_worker_info {
            id: id as u32,
            state,
            conn: if word == 0 { 0 } else { conn },
            state_us: now_ns.saturating_sub(since) / 1_000,
            label: label.map(|b| b as libc::c_char),
        })
    }
}

impl Workers {
    /// Every worker thread alive at `now_ns`, in id order.
    pub fn snapshot(&self, now_ns: u64) -> Vec<evmpm_worker_info> {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(id, rec)| rec.view(id, now_ns))
            .collect()
    }

    /// `evmpm_set_label`: the calling thread's handler labels itself.
    /// `Error::Thread` unless the caller is a worker of this pool inside a
    /// handler.
    pub fn set_label(&self, text: &[u8]) -> Result<(), Error> {
        let (pool, id) = CURRENT.with(Cell::get);
        if !std::ptr::eq(pool, self) {
            return Err(Error::Thread);
        }
        let rec = &self.records[id];
        // Its own word: only this thread starts and ends its handlers.
        if rec.handler.word.load(Ordering::Relaxed) == 0 {
            return Err(Error::Thread);
        }
        rec.set_label(text);
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::conn::Handle;

    const CONN: Handle = Handle(7 << 32 | 3);

    fn label_of(info: &evmpm_worker_info) -> String {
        let bytes: Vec<u8> = info
            .label
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_record_shows_where_its_thread_is() {
        let rec = Record::new();
        assert!(rec.view(0, 10_000).is_none(), "no thread has the id");

        rec.set_life(LIFE_IDLE, 1_000_000);
        let v = rec.view(3, 4_000_000).unwrap();
        assert_eq!(
            (v.id, v.state, v.conn, v.state_us),
            (3, EVMPM_WORKER_IDLE, 0, 3_000)
        );

        rec.begin_handler(5_000_000, CONN);
        let v = rec.view(3, 5_500_000).unwrap();
        assert_eq!(
            (v.state, v.conn, v.state_us),
            (EVMPM_WORKER_HANDLER, CONN.0, 500)
        );

        let (word, _) = rec.running_handler().unwrap();
        assert!(rec.mark_blocked(word, 6_000_000));
        let v = rec.view(3, 6_250_000).unwrap();
        assert_eq!(
            (v.state, v.conn, v.state_us),
            (EVMPM_WORKER_BLOCKED, CONN.0, 250)
        );

        assert!(rec.end_handler());
        rec.clear_label();
        rec.idle_since(7_000_000);
        let v = rec.view(3, 7_000_000).unwrap();
        assert_eq!((v.state, v.conn, v.state_us), (EVMPM_WORKER_IDLE, 0, 0));

        rec.set_life(LIFE_SPARE, 8_000_000);
        let v = rec.view(3, 9_000_000).unwrap();
        assert_eq!((v.state, v.state_us), (EVMPM_WORKER_SPARE, 1_000));

        rec.set_life(LIFE_NONE, 0);
        assert!(rec.view(3, 9_000_000).is_none());
    }

    /// A clock read before a record was written shows 0, not a wrap.
    #[test]
    fn a_state_newer_than_the_snapshot_lasted_zero() {
        let rec = Record::new();
        rec.set_life(LIFE_IDLE, 2_000_000);
        assert_eq!(rec.view(0, 1_000_000).unwrap().state_us, 0);
    }

    #[test]
    fn a_label_is_cut_to_63_bytes_and_ends_with_its_handler() {
        let rec = Record::new();
        rec.set_life(LIFE_IDLE, 0);
        rec.begin_handler(1, CONN);
        rec.set_label(b"GET /index.html HTTP/1.1");
        assert_eq!(
            label_of(&rec.view(0, 2).unwrap()),
            "GET /index.html HTTP/1.1"
        );

        let long = [b'x'; 100];
        rec.set_label(&long);
        let v = rec.view(0, 2).unwrap();
        assert_eq!(label_of(&v), "x".repeat(63));
        assert_eq!(v.label[63], 0);

        rec.set_label(b"");
        assert_eq!(label_of(&rec.view(0, 2).unwrap()), "");
        rec.set_label(b"again");

        // Ended: the label goes with the handler, before the next starts.
        rec.end_handler();
        rec.clear_label();
        assert_eq!(label_of(&rec.view(0, 3).unwrap()), "");
        rec.begin_handler(4, CONN);
        assert_eq!(label_of(&rec.view(0, 5).unwrap()), "");
    }

    /// A label is shown only while its handler runs: a worker between two
    /// handlers shows none, even before it cleared the last one's.
    #[test]
    fn an_idle_worker_shows_no_label() {
        let rec = Record::new();
        rec.set_life(LIFE_IDLE, 0);
        rec.begin_handler(1, CONN);
        rec.set_label(b"busy");
        rec.end_handler();
        let v = rec.view(0, 2).unwrap();
        assert_eq!((v.state, label_of(&v).as_str()), (EVMPM_WORKER_IDLE, ""));
    }

    #[test]
    fn only_a_worker_in_a_handler_sets_its_label() {
        let w = Workers::new(1, 2, 4).unwrap();
        // Not a worker thread at all.
        let outside = std::thread::scope(|s| s.spawn(|| w.set_label(b"x")).join().unwrap());
        assert!(matches!(outside, Err(Error::Thread)));
        let other = Workers::new(1, 2, 4).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&w, 1);
                w.records[1].set_life(LIFE_IDLE, 0);
                // A worker, outside a handler (a thread hook, request_ready).
                assert!(matches!(w.set_label(b"x"), Err(Error::Thread)));
                w.records[1].begin_handler(1, CONN);
                // Another pool's worker is not this one's.
                assert!(matches!(other.set_label(b"x"), Err(Error::Thread)));
                assert!(w.set_label(b"in a handler").is_ok());
            })
            .join()
            .unwrap()
        });
        let all = w.snapshot(2);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].id, all[0].conn), (1, CONN.0));
        assert_eq!(label_of(&all[0]), "in a handler");
    }
}

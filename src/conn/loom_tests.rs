//! Model checks of the state word: every interleaving, and every value the
//! memory orderings let a load see, of races on one connection slot.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

use super::table::{Refused, Table};
use super::State;
use crate::sync::model;
use libc::c_void;
use loom::sync::Arc;
use loom::thread;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Property: a handle whose connection was closed never acts on the
/// connection that reuses its slot.
///
/// Thread `closer` owns the idle connection `old` and closes it as the event
/// thread does (Keepalive → Closing, `Table::free`), then a new connection
/// is allocated into the same slot, also in Keepalive: the same state the old
/// handle last saw, which only the generation tells apart. The main thread
/// holds `old` too (a message or a host call that names it, say) and claims
/// it the way every claimer does: reads the state, and if it is Keepalive
/// CASes it to Queued.
/// In every interleaving either the old handle wins before the close (and
/// the close is refused), or it is refused, with Closing while the slot is
/// not yet freed and Stale after; the new connection's state and descriptor
/// are never touched.
#[test]
fn loom_stale_handle_never_moves_the_reused_slot() {
    static STALE_AFTER_REUSE: AtomicUsize = AtomicUsize::new(0);
    model("stale handle vs free and reuse", || {
        let table = Arc::new(Table::new(1));
        let old = table.allocate(10, State::Keepalive).unwrap();

        let t = Arc::clone(&table);
        let closer = thread::spawn(move || {
            let slot = t.slot(old).unwrap();
            if slot
                .transition(old, State::Keepalive, State::Closing)
                .is_err()
            {
                return None;
            }
            t.free(old);
            Some(t.allocate(11, State::Keepalive).expect("the freed slot"))
        });

        let slot = table.slot(old).unwrap();
        let moved = match slot.state_of(old) {
            Ok(State::Keepalive) => slot.transition(old, State::Keepalive, State::Queued),
            Ok(other) => Err(Refused::State(other)),
            Err(stale) => Err(stale),
        };
        // The winner owns the connection it named: its descriptor is 10.
        let fd_seen = moved.is_ok().then(|| slot.fd());

        match closer.join().unwrap() {
            None => {
                assert_eq!(moved, Ok(()));
                assert_eq!(fd_seen, Some(10));
                assert_eq!(slot.state_of(old), Ok(State::Queued));
            }
            Some(new) => {
                assert_eq!(new.index(), old.index());
                assert_ne!(
                    new.generation(),
                    old.generation(),
                    "{new:?} {old:?} {moved:?} {fd_seen:?}"
                );
                match moved {
                    Err(Refused::Stale) => {
                        STALE_AFTER_REUSE.fetch_add(1, Relaxed);
                    }
                    Err(Refused::State(State::Closing)) => {}
                    other => panic!("the old handle acted on the new connection: {other:?}"),
                }
                assert_eq!(slot.state_of(new), Ok(State::Keepalive));
                assert_eq!(slot.state_of(old), Err(Refused::Stale));
                assert_eq!(slot.fd(), 11);
            }
        }
    });
    assert!(
        STALE_AFTER_REUSE.load(Relaxed) > 0,
        "no interleaving reached the reused slot"
    );
}

/// Property: the accessors any thread may call with a handle
/// (`evmpm_conn_fd`, `evmpm_conn_get_user`, `evmpm_conn_set_user`) never
/// read or write the connection that reuses the slot.
///
/// Thread `closer` closes the connection `old` (Closing, `Table::free`), a
/// new connection is allocated into the slot, and its handler reads its
/// host pointer, which must be NULL: it has set none. Meanwhile a host
/// thread still holding `old` sets a host pointer through it and reads its
/// descriptor. The old handle's calls either act on the old connection (its
/// descriptor 10) or are refused as stale; the new connection never sees
/// the old handle's pointer, and no caller sees a descriptor that is not
/// its connection's.
#[test]
fn loom_stale_handle_accessors_never_reach_the_reused_slot() {
    model("stale accessors vs free and reuse", || {
        let table = Arc::new(Table::new(1));
        let old = table.allocate(10, State::Keepalive).unwrap();
        let stale_user = ptr::dangling_mut::<c_void>();

        let t = Arc::clone(&table);
        let closer = thread::spawn(move || {
            let slot = t.slot(old).unwrap();
            slot.transition(old, State::Keepalive, State::Closing)
                .unwrap();
            t.free(old);
            let new = t.allocate(11, State::Handler).expect("the freed slot");
            assert_eq!(
                slot.user_of(new),
                Ok(ptr::null_mut()),
                "the new connection's pointer"
            );
            assert_eq!(slot.fd_of(new), Ok(11));
            new
        });

        let slot = table.slot(old).unwrap();
        let set = slot.set_user_of(old, stale_user);
        let fd = slot.fd_of(old);
        assert!(matches!(set, Ok(()) | Err(Refused::Stale)), "{set:?}");
        assert!(matches!(fd, Ok(10) | Err(Refused::Stale)), "{fd:?}");

        let new = closer.join().unwrap();
        assert_eq!(
            slot.user_of(new),
            Ok(ptr::null_mut()),
            "the new connection's pointer"
        );
        assert_eq!(slot.user_of(old), Err(Refused::Stale));
    });
}

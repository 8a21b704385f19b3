//! The connection table: generation-checked handles over a fixed slab of
//! slots, and the state machine that says who owns each connection.

pub mod handle;
pub mod state;
pub mod table;
pub mod transitions;

#[cfg(all(test, loom))]
mod loom_tests;

pub use handle::Handle;
pub use state::State;
pub use table::{AfterWrite, FileRange, Part, PendingWrite, Slot, Table};

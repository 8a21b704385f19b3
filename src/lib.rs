//! evmpm: Apache httpd's event-MPM connection model for blocking C servers.
//!
//! A C server keeps its blocking request handlers; evmpm takes over
//! connection management. One event thread owns the listening sockets, the
//! timeouts and the connections whose remaining output only has to be
//! written; idle worker threads wait for readable connections themselves,
//! a few while handlers are short, more only while handlers block.
//!
//! Where things are:
//! - `ffi/`: the C boundary (`api.rs` exported functions, `types.rs` what
//!   the header declares);
//! - `runtime.rs`: shared state and lifecycle;
//! - `event_loop.rs`: the event thread;
//! - `workers/`: the worker pool (`mod.rs`), a worker's loop (`poller.rs`)
//!   and the monitor that replaces blocked handlers (`monitor.rs`);
//! - `handoff.rs`: carrying out host calls and handler returns: the close
//!   path (`on_close`, lingering, final close) and the hand-over to the
//!   event thread;
//! - `message.rs`: what the threads tell each other (the event thread's
//!   messages, hand-overs, how a connection closes): plain values, no
//!   imports but a handle and a timeout kind;
//! - `conn/`: the connection table, handles, states and the transitions
//!   between them (`transitions.rs`: who owns a connection next);
//! - `timeouts.rs`: the timeout queues;
//! - `timers/`: timers and watched host descriptors (a table of entries
//!   with CAS state words, the event thread's timer wheel);
//! - `failure.rs`: what an internal panic does (fail-stop);
//! - `admission.rs`: the AsyncRequestWorkerFactor rule;
//! - `listener.rs`: the listeners and what each says about its connections
//!   (accept hook, handshake step, readiness check, descriptor mode,
//!   timeouts);
//! - `handshake.rs`: the optional non-blocking handshake step (TLS, a
//!   preamble) before a connection's first request;
//! - `readiness.rs`: the optional check that a whole request has arrived;
//! - `sys/`: every system call;
//! - `wake.rs`: when another thread must wake the event thread;
//! - `sync.rs`: the atomics and parking the hand-off uses (loom's under
//!   `--cfg loom`).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod admission;
pub(crate) mod config;
pub(crate) mod conn;
pub(crate) mod error;
pub(crate) mod event_loop;
pub(crate) mod failure;
#[cfg(all(test, not(loom)))]
mod failure_tests;
pub mod ffi;
pub(crate) mod handoff;
pub(crate) mod handshake;
pub(crate) mod inbox;
pub(crate) mod listener;
pub(crate) mod message;
pub(crate) mod readiness;
pub(crate) mod runtime;
pub(crate) mod stats;
pub(crate) mod sync;
pub(crate) mod sys;
pub(crate) mod timeouts;
pub(crate) mod timers;
pub(crate) mod wake;
pub(crate) mod workers;

pub use ffi::api::*;
pub use ffi::timer_api::*;
pub use ffi::types::*;

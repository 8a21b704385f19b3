//! What the threads tell each other about a connection: the event thread's
//! messages, what an owner hands over to it, and how a connection closes.
//!
//! A leaf: plain values, naming connections by handle and timeouts by kind,
//! so the modules that send them and the ones that act on them need not
//! import each other.

use crate::conn::handle::Handle;
use crate::timeouts::Kind;

/// Messages to the event thread.
#[derive(Clone, Copy, Debug)]
pub enum Msg {
    /// The connection is armed in epoll and waits in the state that matches
    /// this timeout kind: link it into that queue.
    Watch(Handle, Kind),
    /// `evmpm_register_listener` added a listener after start.
    ListenersChanged,
    /// `evmpm_stop`: stop accepting, close idle connections, finish the rest
    /// by this deadline (ns since the runtime's epoch).
    Stop { deadline_ns: u64 },
    /// A timer or watch (see `timers`).
    Timer(TimerMsg),
}

/// What a timer or watch needs from the event thread, by id.
#[derive(Clone, Copy, Debug)]
pub enum TimerMsg {
    /// Armed, or armed again: put it in the wheel at the deadline its
    /// entry holds (or take it out if it has none).
    Link(u64),
    /// Dead (cancelled, or a timer that ran): take it out of the wheel and
    /// free its entry.
    Free(u64),
}

/// What the event thread must take over after an owner acted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Handoff {
    /// Nothing: the connection is closed, queued, or held elsewhere.
    None,
    /// The connection waits on the event thread: link it into this timeout
    /// queue. Its epoll interest is already armed and the hand-over time
    /// stamped in its slot (`Runtime::watch`).
    Watch(Kind),
}

/// How to close a connection.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseHow {
    /// Shut down the write side, then drain the client's input until it
    /// closes or the linger timeout passes (Apache's lingering close), so
    /// late client bytes cannot turn into a reset that destroys the response.
    Linger = 0,
    /// Shut down the write side and drain what is there; linger only if the
    /// client had sent something. For idle connections (timeouts, shedding,
    /// stop), and a client done sending (`EVMPM_CLOSE_CLIENT_DONE`).
    Quick = 1,
    /// Close at once: the connection is already broken, or the host asked
    /// for no lingering (`EVMPM_CLOSE_NO_LINGER`).
    Abort = 2,
    /// Close with a reset (`EVMPM_CLOSE_RESET`).
    Reset = 3,
}

impl CloseHow {
    /// The inverse of `as u32` (unknown values linger, the safe default).
    pub fn from_u32(v: u32) -> CloseHow {
        match v {
            1 => CloseHow::Quick,
            2 => CloseHow::Abort,
            3 => CloseHow::Reset,
            _ => CloseHow::Linger,
        }
    }
}

/// What a drain of a closing connection's input found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Drained {
    /// The client closed its side (or the socket failed).
    PeerDone,
    /// Nothing was waiting.
    Nothing,
    /// Some bytes were discarded; the client may send more.
    Some,
}

//! Connection states and who owns the connection in each.
//!
//! Exactly one party owns a connection at any instant, and only the owner
//! acts on it. Ownership passes in one of two ways:
//! - by a compare-and-swap on the slot's state word, from a state the old
//!   owner holds to one that names the new owner (Queued → Handler,
//!   Suspended → Claimed, Keepalive → KeepaliveCheck, ...): of threads racing for a
//!   connection only one CAS succeeds, the AcqRel CAS publishes the old
//!   owner's writes to the new one, and a stale handle's CAS fails on the
//!   generation;
//! - by epoll arming, for Writing and Lingering, whose state does not say
//!   which thread owns the connection: the thread that owns the connection in that state (a worker or
//!   host thread sending the pending write; the closer, which stored
//!   Lingering while it owned the connection in Closing) arms a one-shot
//!   epoll interest for it, and from then on the event thread owns it,
//!   with no change of state. The old owner touches only the slot's atomics
//!   after arming (the hand-over time), and what publishes its writes (the
//!   pending write) to the event thread is the kernel's ordering of that
//!   `epoll_ctl` before the `epoll_wait` that reports the event, not the
//!   state word. A CAS out of Writing or Lingering is therefore the
//!   owner's only when the hand-over is known to be made: the event thread
//!   acting on the connection's event or on its timeout (it is linked only
//!   after the `Watch` message, sent after arming), or the old owner
//!   reclaiming it when arming failed.
//!
//! | state | owner | Apache event MPM equivalent |
//! |---|---|---|
//! | Reading | nobody acts until it is readable: armed in the workers' epoll set; the worker that gets the event takes it by CAS, and the event thread by CAS at its timeout | (accept) |
//! | ReadingCheck, KeepaliveCheck | the worker stepping the handshake (ReadingCheck only) or checking for a whole request (`request_ready`) | |
//! | Queued | the run queue: handed back or holding buffered input, waiting for a worker; or, before any job names it, the event thread admitting it (until its accept hook has returned and it is armed) | (worker queue) |
//! | Handler | a worker, running the handler | CONN_STATE_READ_REQUEST_LINE/handler |
//! | *Req | a worker, handler still running, next step recorded | |
//! | Claimed | the host thread whose call claimed it (`transitions::claim_in`) | |
//! | Suspended | the host | CONN_STATE_SUSPENDED |
//! | Keepalive | as Reading: armed in the workers' set, taken by CAS by a worker when readable or by the event thread at its timeout | CONN_STATE_CHECK_REQUEST_LINE_READABLE |
//! | Writing | the thread sending (a worker, or the host thread that completed the write) until it arms EPOLLOUT; then the event thread | CONN_STATE_WRITE_COMPLETION |
//! | Lingering | the closer until it arms the read interest; then the event thread | CONN_STATE_LINGER |
//! | Closing | the thread closing it | |

/// A connection's state, stored in the low byte of the slot's state word.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Free = 0,
    Reading,
    Queued,
    Handler,
    /// Handler running; it called `evmpm_park_keepalive`.
    ParkReq,
    /// Handler running; it parked with `EVMPM_PARK_BUFFERED`.
    ParkBufferedReq,
    /// Handler running; it called `evmpm_complete_write`.
    WriteReq,
    /// Handler running; it called `evmpm_close`.
    CloseReq,
    /// Handler running; it called `evmpm_suspend`.
    SuspendReq,
    /// Handler running, suspended, and already handed back.
    ResumeReq,
    /// Transient: a host call has claimed it, and moves it on in a moment
    /// (records a request for the worker, or queues, parks, sends or
    /// closes a suspended connection).
    Claimed,
    Suspended,
    Keepalive,
    Writing,
    Lingering,
    Closing,
    /// A worker took a new connection that became readable (or, in its
    /// handshake, writable), steps its handshake if it is not done, and
    /// checks whether a whole request is there (`request_ready`); it goes
    /// on to Handler, or back to Reading.
    ReadingCheck,
    /// As ReadingCheck, for a connection parked in keep-alive.
    KeepaliveCheck,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        const ALL: [State; 18] = [
            State::Free,
            State::Reading,
            State::Queued,
            State::Handler,
            State::ParkReq,
            State::ParkBufferedReq,
            State::WriteReq,
            State::CloseReq,
            State::SuspendReq,
            State::ResumeReq,
            State::Claimed,
            State::Suspended,
            State::Keepalive,
            State::Writing,
            State::Lingering,
            State::Closing,
            State::ReadingCheck,
            State::KeepaliveCheck,
        ];
        ALL.get(v as usize).copied().unwrap_or(State::Closing)
    }

    /// States in which a handler is running on a worker.
    pub fn in_handler(self) -> bool {
        matches!(
            self,
            State::Handler
                | State::ParkReq
                | State::ParkBufferedReq
                | State::WriteReq
                | State::CloseReq
                | State::SuspendReq
                | State::ResumeReq
                | State::Claimed
        )
    }
}

/// Set in the state word while a forced stop shuts a handler's socket down;
/// every transition waits until it clears, so the descriptor cannot be
/// closed (and its number reused) under that `shutdown` call.
pub(crate) const SHUTDOWN_BIT: u64 = 1 << 8;

/// The state word: `generation << 32 | state`. One atomic holds both so a
/// single CAS checks the handle and moves the state.
pub fn pack(generation: u32, state: State) -> u64 {
    (u64::from(generation) << 32) | state as u64
}

pub fn unpack(word: u64) -> (u32, State) {
    ((word >> 32) as u32, State::from_u8(word as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_every_state() {
        for v in 0..18u8 {
            let s = State::from_u8(v);
            assert_eq!(s as u8, v);
            assert_eq!(unpack(pack(9, s)), (9, s));
        }
    }
}

//! Connection states and who owns the connection in each.
//!
//! Exactly one party owns a connection at any instant; ownership passes only
//! through a compare-and-swap on the slot's state word, so two threads can
//! never both act on one connection, and a stale handle's CAS fails on the
//! generation.
//!
//! | state | owner | Apache event MPM equivalent |
//! |---|---|---|
//! | Reading | event thread: new connection, waiting for its first byte | (accept) |
//! | Queued | the run queue: readable, waiting for a worker | (worker queue) |
//! | Handler | a worker, running the handler | CONN_STATE_READ_REQUEST_LINE/handler |
//! | *Req | a worker, handler still running, next step recorded | |
//! | Claimed | the thread inside `evmpm_complete_write` | |
//! | Suspended | the host | CONN_STATE_SUSPENDED |
//! | Keepalive | event thread | CONN_STATE_CHECK_REQUEST_LINE_READABLE |
//! | Writing | the thread sending (worker, holder, then event thread) | CONN_STATE_WRITE_COMPLETION |
//! | Lingering | event thread | CONN_STATE_LINGER |
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
    /// Transient: a holder is storing its pending write.
    Claimed,
    Suspended,
    Keepalive,
    Writing,
    Lingering,
    Closing,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        const ALL: [State; 16] = [
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
        for v in 0..16u8 {
            let s = State::from_u8(v);
            assert_eq!(s as u8, v);
            assert_eq!(unpack(pack(9, s)), (9, s));
        }
    }
}

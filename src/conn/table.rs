//! The connection table: a fixed slab of slots and a lock-free free list.
//!
//! Slots are never freed or moved while the runtime lives, so a `&Slot` from
//! any handle stays valid; the generation in the state word says whether the
//! connection the handle named still occupies it.

use super::handle::{next_generation, Handle};
use super::state::{pack, unpack, State, SHUTDOWN_BIT};
use crate::ffi::types::evmpm_release_fn;
use crate::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering,
};
use crate::sync::cell::UnsafeCell;
use crate::sync::hint;
use crate::sync::{ArrayQueue, Backoff};
use libc::c_void;
use std::ptr;

/// What happens to a connection once its pending write is sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AfterWrite {
    /// Lingering close.
    Close,
    /// Park in keep-alive.
    Park,
    /// Run the handler again: the host holds the next request already.
    RunBuffered,
}

/// The rest of a response handed over by `evmpm_complete_write`,
/// `evmpm_complete_writev` or `evmpm_complete_sendfile`: byte slices the
/// host lends, then, optionally, a range of a file the host keeps open.
///
/// Dropping it calls the host's release callback, so the callback runs
/// exactly once however the write ends (sent, failed, timed out, stopped).
pub struct PendingWrite {
    slices: Slices,
    /// The first slice not yet sent in full; the slice there is trimmed in
    /// place by what was sent of it.
    next: usize,
    file: Option<FileRange>,
    release: evmpm_release_fn,
    release_arg: *mut c_void,
    pub after: AfterWrite,
}

/// The byte slices of a pending write, none of them empty but a single
/// one. One slice (`evmpm_complete_write`) needs no allocation.
enum Slices {
    One([libc::iovec; 1]),
    Many(Box<[libc::iovec]>),
}

/// What is left to send of a file: `len` bytes of `fd` from `offset`. The
/// descriptor is the host's; the runtime never closes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileRange {
    pub fd: i32,
    pub offset: u64,
    pub len: u64,
}

/// What to send next.
pub enum Part<'a> {
    /// These slices, the first trimmed to what is left of it.
    Bytes(&'a [libc::iovec]),
    /// Then this range of the file.
    File(FileRange),
    /// Nothing: the write is done.
    Done,
}

// SAFETY: the host hands the buffers (and the file range) over for the
// runtime's exclusive use until release, and promises (in the header) that
// release may run on any runtime thread.
unsafe impl Send for PendingWrite {}

impl PendingWrite {
    /// One buffer (`evmpm_complete_write`).
    ///
    /// # Safety
    /// `data` must be valid for reads of `len` bytes until `release` runs.
    pub unsafe fn new(
        data: *const u8,
        len: usize,
        release: evmpm_release_fn,
        release_arg: *mut c_void,
        after: AfterWrite,
    ) -> PendingWrite {
        let slice = libc::iovec {
            iov_base: data as *mut c_void,
            iov_len: len,
        };
        let mut w = PendingWrite {
            slices: Slices::One([slice]),
            next: 0,
            file: None,
            release,
            release_arg,
            after,
        };
        w.skip_sent();
        w
    }

    /// Several buffers, sent in order (`evmpm_complete_writev`), then, if
    /// `file` is given, that range of a file (`evmpm_complete_sendfile`).
    /// `slices` is the runtime's own copy of the host's array.
    ///
    /// # Safety
    /// Each slice's base must be valid for reads of its length until
    /// `release` runs, and `file`'s descriptor must stay open until then.
    pub unsafe fn gathered(
        slices: Box<[libc::iovec]>,
        file: Option<FileRange>,
        release: evmpm_release_fn,
        release_arg: *mut c_void,
        after: AfterWrite,
    ) -> PendingWrite {
        let mut w = PendingWrite {
            slices: Slices::Many(slices),
            next: 0,
            file: file.filter(|f| f.len > 0),
            release,
            release_arg,
            after,
        };
        w.skip_sent();
        w
    }

    fn slices(&self) -> &[libc::iovec] {
        match &self.slices {
            Slices::One(one) => one,
            Slices::Many(many) => many,
        }
    }

    fn slices_mut(&mut self) -> &mut [libc::iovec] {
        match &mut self.slices {
            Slices::One(one) => one,
            Slices::Many(many) => many,
        }
    }

    /// Moves `next` past the slices sent in full (or empty).
    fn skip_sent(&mut self) {
        let slices = self.slices();
        let mut next = self.next;
        while next < slices.len() && slices[next].iov_len == 0 {
            next += 1;
        }
        self.next = next;
    }

    /// What to send next: the unsent slices, then the file range.
    pub fn next_part(&self) -> Part<'_> {
        let slices = &self.slices()[self.next..];
        if !slices.is_empty() {
            Part::Bytes(slices)
        } else if let Some(file) = self.file {
            Part::File(file)
        } else {
            Part::Done
        }
    }

    /// `n` bytes of the slices were sent.
    pub fn advance(&mut self, mut n: usize) {
        let next = self.next;
        for slice in &mut self.slices_mut()[next..] {
            if n == 0 {
                break;
            }
            let step = n.min(slice.iov_len);
            // Stays within the host's buffer: `step` <= its length left.
            slice.iov_base = slice.iov_base.cast::<u8>().wrapping_add(step).cast();
            slice.iov_len -= step;
            n -= step;
        }
        self.skip_sent();
    }

    /// `n` bytes of the file range were sent.
    pub fn advance_file(&mut self, n: u64) {
        if let Some(file) = &mut self.file {
            let step = n.min(file.len);
            file.offset += step;
            file.len -= step;
            if file.len == 0 {
                self.file = None;
            }
        }
    }

    #[cfg(test)]
    fn is_done(&self) -> bool {
        matches!(self.next_part(), Part::Done)
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            // SAFETY: the host gave us this callback and argument for exactly
            // one call; `take` makes this the only one.
            unsafe { release(self.release_arg) };
        }
    }
}

/// One connection slot.
pub struct Slot {
    /// `generation << 32 | State`. A change of owner is a CAS here, except
    /// the hand-over of a Writing or Lingering connection to the event
    /// thread, which is the arming of its epoll interest (see `state`).
    state: AtomicU64,
    /// The connection's descriptor; valid while the slot is not Free.
    fd: AtomicI32,
    /// The host's per-connection pointer (`evmpm_conn_set_user`).
    user: AtomicPtr<c_void>,
    /// Threads inside `pinned` for this slot; `Table::free` waits for 0.
    pins: AtomicU32,
    /// Set by the closer just before the close callback runs, so a sweep
    /// after an internal error knows whether the host was told.
    notified: AtomicBool,
    /// The readiness check (`request_ready`): bytes queued at its last
    /// incomplete peek, 0 if none. Non-zero iff the socket's receive
    /// low-water mark is raised. Touched only by the connection's owner.
    peeked: AtomicU32,
    /// When the first bytes of a still incomplete request were seen (ns
    /// since the runtime's epoch; 0: none). The header timeout counts from
    /// here and is not restarted by later bytes. Owner only.
    header_since: AtomicU64,
    /// The descriptor is registered with the event thread's epoll set
    /// (for write completion or lingering close): re-arm it there with
    /// MOD, not ADD. Owner only.
    in_event_epoll: AtomicBool,
    /// When the connection was last handed to the event thread to watch
    /// (ns since the runtime's epoch). Its timeout counts from here, not from
    /// when the event thread, which may sleep through a hand-over, links it.
    /// Only grows while the slot holds one connection (`fetch_max`), so a
    /// late writer from an earlier hand-over cannot move it back.
    watch_since: AtomicU64,
    /// The pending write. Invariant: only the connection's current owner
    /// touches it, and only in Claimed, WriteReq, Writing or Closing; the
    /// AcqRel CAS that hands ownership over publishes it, or, when a
    /// Writing connection passes to the event thread, the `epoll_ctl` that
    /// arms its EPOLLOUT interest before the `epoll_wait` that reports it.
    write: UnsafeCell<Option<PendingWrite>>,
    /// What the accept told: the listener's index, and the first
    /// `PEER_BYTES` bytes of the client's address with its length. Written
    /// by the event thread at accept, before the state store that publishes
    /// the connection; read by any thread holding the handle (pinned).
    listener: AtomicU32,
    peer: [AtomicU64; PEER_WORDS],
    peer_len: AtomicU32,
    /// Timeouts in milliseconds, by `timeouts::Kind` (`EVMPM_TIMEOUT_NONE`:
    /// never), for the connection's next wait of each kind: the listener's
    /// at accept, changed by `evmpm_conn_set_timeouts`.
    timeouts_ms: [AtomicU32; 5],
    /// The same for the waits under way: copied from `timeouts_ms` by the
    /// owner when a keep-alive or write wait begins (`begin_wait`), so a
    /// change made while the connection waits applies from its next wait,
    /// however late the event thread links or expires this one. Read by
    /// the event thread.
    wait_timeouts_ms: [AtomicU32; 5],
    /// How a close the host asks for (or a handler that returns without
    /// deciding) is carried out: a `CloseHow` as u32. Set at accept from the
    /// listener, changed by `evmpm_close_ex` while the host holds it.
    close_how: AtomicU32,
    /// `evmpm_notify` was called and the handler run it owes has not
    /// started yet. Set by any thread; cleared by whoever takes the
    /// connection to run it (see `conn::notify`).
    notify_pending: AtomicBool,
    /// A notify took the connection out of its wait while its one-shot
    /// readiness may still be reported: the next readable event for it is
    /// checked with a peek before a handler runs. Owner only.
    recheck: AtomicBool,
    /// The listener's handshake step has not said done yet: set at accept
    /// for a listener with one, cleared by the worker whose step says done.
    /// Read by any thread (a notify, the stop, a snapshot); written by the
    /// event thread before the connection is published, then by its owner.
    handshake_pending: AtomicBool,
}

/// The most bytes of a client's address a slot keeps: a `sockaddr_in6`
/// (28 bytes) whole, a Unix socket's path up to 30 bytes.
pub const PEER_BYTES: usize = 32;
const PEER_WORDS: usize = PEER_BYTES / 8;

// SAFETY: all fields but `write` are atomics; `write` is accessed only by the
// connection's single owner, as the invariant on the field says.
unsafe impl Sync for Slot {}

/// Why a handle-checked transition failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refused {
    /// The handle's connection is gone.
    Stale,
    /// The connection is alive but in this other state.
    State(State),
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: AtomicU64::new(pack(1, State::Free)),
            fd: AtomicI32::new(-1),
            user: AtomicPtr::new(ptr::null_mut()),
            pins: AtomicU32::new(0),
            notified: AtomicBool::new(false),
            peeked: AtomicU32::new(0),
            header_since: AtomicU64::new(0),
            in_event_epoll: AtomicBool::new(false),
            watch_since: AtomicU64::new(0),
            write: UnsafeCell::new(None),
            listener: AtomicU32::new(0),
            peer: Default::default(),
            peer_len: AtomicU32::new(0),
            timeouts_ms: Default::default(),
            wait_timeouts_ms: Default::default(),
            close_how: AtomicU32::new(0),
            notify_pending: AtomicBool::new(false),
            recheck: AtomicBool::new(false),
            handshake_pending: AtomicBool::new(false),
        }
    }

    /// The live state of `h`'s connection, or Stale.
    pub fn state_of(&self, h: Handle) -> Result<State, Refused> {
        let (generation, state) = unpack(self.state.load(Ordering::Acquire));
        if generation != h.generation() || state == State::Free {
            return Err(Refused::Stale);
        }
        Ok(state)
    }

    /// Moves `h`'s connection from `from` to `to`, or says why not.
    pub fn transition(&self, h: Handle, from: State, to: State) -> Result<(), Refused> {
        let expected = pack(h.generation(), from);
        loop {
            match self.state.compare_exchange(
                expected,
                pack(h.generation(), to),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) if actual == expected | SHUTDOWN_BIT => hint::spin_loop(),
                Err(actual) => {
                    let (generation, state) = unpack(actual);
                    return if generation != h.generation() || state == State::Free {
                        Err(Refused::Stale)
                    } else {
                        Err(Refused::State(state))
                    };
                }
            }
        }
    }

    /// Forced stop only: shuts down the socket of `h` if a handler is running
    /// for it, so a handler blocked in read or write returns. The shutdown
    /// bit keeps the owner from closing the descriptor meanwhile.
    pub fn shutdown_if_in_handler(&self, h: Handle) -> bool {
        self.while_in_handler(h, |fd| {
            let _ = crate::sys::socket::shutdown_both(fd);
        })
    }

    /// Runs `f` with `h`'s descriptor if a handler is running for it,
    /// holding every transition of the connection off until `f` returns
    /// (the shutdown bit). False, without calling `f`, otherwise.
    pub(crate) fn while_in_handler(&self, h: Handle, f: impl FnOnce(i32)) -> bool {
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            let (generation, state) = unpack(word);
            if generation != h.generation() || !state.in_handler() || word & SHUTDOWN_BIT != 0 {
                return false;
            }
            // A failed CAS means the state moved (a host call from another
            // thread, say); the handler may still be running: look again.
            match self.state.compare_exchange(
                word,
                word | SHUTDOWN_BIT,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        f(self.fd());
        self.state.fetch_and(!SHUTDOWN_BIT, Ordering::AcqRel);
        true
    }

    /// Sets the state unconditionally. Only the owner may call this.
    pub fn set_state(&self, h: Handle, to: State) {
        self.state
            .store(pack(h.generation(), to), Ordering::Release);
    }

    /// The current state, whichever connection occupies the slot.
    pub fn raw_state(&self) -> State {
        unpack(self.state.load(Ordering::Acquire)).1
    }

    /// The live state of `h`'s connection as the host may see it: Stale
    /// from the moment its close begins (Closing, then Lingering), because
    /// from then on the close callback owns what the connection had.
    pub fn host_state_of(&self, h: Handle) -> Result<State, Refused> {
        match self.state_of(h)? {
            State::Closing | State::Lingering => Err(Refused::Stale),
            state => Ok(state),
        }
    }

    /// Marks that the close callback is about to run (the closer only).
    pub fn mark_notified(&self) {
        self.notified.store(true, Ordering::Relaxed);
    }

    /// The readiness check's record of this connection (owner only).
    pub fn peeked(&self) -> u32 {
        self.peeked.load(Ordering::Relaxed)
    }

    pub fn set_peeked(&self, bytes: u32) {
        self.peeked.store(bytes, Ordering::Relaxed);
    }

    /// When the current incomplete request began (0: none). Owner only.
    pub fn header_since(&self) -> u64 {
        self.header_since.load(Ordering::Acquire)
    }

    pub fn set_header_since(&self, ns: u64) {
        self.header_since.store(ns, Ordering::Release);
    }

    /// Marks the descriptor as registered with the event thread's epoll
    /// set; true if it already was (owner only).
    pub fn note_in_event_epoll(&self) -> bool {
        self.in_event_epoll.swap(true, Ordering::Relaxed)
    }

    /// True once the closer has marked the close callback as run.
    pub fn was_notified(&self) -> bool {
        self.notified.load(Ordering::Relaxed)
    }

    pub fn fd(&self) -> i32 {
        self.fd.load(Ordering::Acquire)
    }

    pub fn user(&self) -> *mut c_void {
        self.user.load(Ordering::Acquire)
    }

    pub fn set_user(&self, p: *mut c_void) {
        self.user.store(p, Ordering::Release)
    }

    /// Records that the connection was handed to the event thread to watch
    /// at `now_ns`.
    pub fn note_watch_since(&self, now_ns: u64) {
        self.watch_since.fetch_max(now_ns, Ordering::AcqRel);
    }

    /// The time of the latest hand-over to the event thread (0: none yet).
    pub fn watch_since(&self) -> u64 {
        self.watch_since.load(Ordering::Acquire)
    }

    /// Records what the accept told (the event thread, before the
    /// connection is published; see `Table::allocate`).
    pub fn set_accept_facts(
        &self,
        listener: u32,
        peer: &[u8],
        timeouts_ms: [u32; 5],
        close_how: u32,
        handshake: bool,
    ) {
        self.listener.store(listener, Ordering::Relaxed);
        let mut words = [0u64; PEER_WORDS];
        let len = peer.len().min(PEER_BYTES);
        for (i, b) in peer[..len].iter().enumerate() {
            words[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        for (w, v) in self.peer.iter().zip(words) {
            w.store(v, Ordering::Relaxed);
        }
        self.peer_len.store(len as u32, Ordering::Relaxed);
        for ((t, w), v) in self
            .timeouts_ms
            .iter()
            .zip(&self.wait_timeouts_ms)
            .zip(timeouts_ms)
        {
            t.store(v, Ordering::Relaxed);
            w.store(v, Ordering::Relaxed);
        }
        self.close_how.store(close_how, Ordering::Relaxed);
        self.notify_pending.store(false, Ordering::Relaxed);
        self.recheck.store(false, Ordering::Relaxed);
        self.handshake_pending.store(handshake, Ordering::Relaxed);
    }

    /// True until the listener's handshake step says done (false on a
    /// listener without one).
    pub fn handshake_pending(&self) -> bool {
        self.handshake_pending.load(Ordering::Acquire)
    }

    /// The handshake is done (its owner, before handing it on).
    pub fn handshake_done(&self) {
        self.handshake_pending.store(false, Ordering::Release);
    }

    /// The listener index recorded at accept.
    pub fn listener(&self) -> u32 {
        self.listener.load(Ordering::Relaxed)
    }

    /// The client's address bytes recorded at accept, and their number.
    pub fn peer(&self) -> ([u8; PEER_BYTES], usize) {
        let mut out = [0u8; PEER_BYTES];
        for (i, w) in self.peer.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        (out, self.peer_len.load(Ordering::Relaxed) as usize)
    }

    /// The timeout of the connection's wait of kind number `kind` (the one
    /// under way, or the last), in ms.
    pub fn timeout_ms(&self, kind: usize) -> u32 {
        self.wait_timeouts_ms[kind].load(Ordering::Relaxed)
    }

    /// Sets the timeout of the connection's next wait of kind number `kind`.
    pub fn set_timeout_ms(&self, kind: usize, ms: u32) {
        self.timeouts_ms[kind].store(ms, Ordering::Relaxed);
    }

    /// A wait of kind number `kind` begins: it keeps the timeout set for it
    /// now (the owner, before it hands the connection over).
    pub fn begin_wait(&self, kind: usize) {
        let ms = self.timeouts_ms[kind].load(Ordering::Relaxed);
        self.wait_timeouts_ms[kind].store(ms, Ordering::Relaxed);
    }

    /// How the host's close is carried out (a `CloseHow` as u32).
    pub fn close_how(&self) -> u32 {
        self.close_how.load(Ordering::Relaxed)
    }

    pub fn set_close_how(&self, how: u32) {
        self.close_how.store(how, Ordering::Relaxed);
    }

    /// The notify flag (see `conn::notify`).
    pub(crate) fn notify_flag(&self) -> &AtomicBool {
        &self.notify_pending
    }

    /// Sets the recheck mark (owner only).
    pub fn set_recheck(&self) {
        self.recheck.store(true, Ordering::Relaxed);
    }

    /// Clears the recheck mark; returns whether it was set (owner only: a
    /// load and a store, no read-modify-write on the request path).
    pub fn take_recheck(&self) -> bool {
        let set = self.recheck.load(Ordering::Relaxed);
        if set {
            self.recheck.store(false, Ordering::Relaxed);
        }
        set
    }

    /// Runs `f` with the slot while `h`'s connection occupies it (see
    /// `pinned`): for host calls from any thread that read or change more
    /// than one field.
    pub fn with_pinned<R>(&self, h: Handle, f: impl FnOnce(&Slot) -> R) -> Result<R, Refused> {
        self.pinned(h, f)
    }

    /// Runs `f` on the slot while `h`'s connection is sure to occupy it:
    /// for the calls any thread may make with a handle, which must never
    /// reach a later connection in the same slot. Checking the generation
    /// first is not enough: between that check and `f` the connection can
    /// close and a new one take the slot. So the caller pins the slot, and
    /// `Table::free` waits for the pins to go before the slot can be reused.
    /// Dekker-style, with a SeqCst fence on each side: either this check
    /// sees the slot freed, or `free` sees the pin.
    fn pinned<R>(&self, h: Handle, f: impl FnOnce(&Slot) -> R) -> Result<R, Refused> {
        self.pins.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let result = self.host_state_of(h).map(|_| f(self));
        self.pins.fetch_sub(1, Ordering::Release);
        result
    }

    /// `h`'s descriptor, for any thread holding the handle, until its close
    /// begins.
    pub fn fd_of(&self, h: Handle) -> Result<i32, Refused> {
        self.pinned(h, Slot::fd)
    }

    /// `h`'s host pointer, for any thread holding the handle.
    pub fn user_of(&self, h: Handle) -> Result<*mut c_void, Refused> {
        self.pinned(h, Slot::user)
    }

    /// Sets `h`'s host pointer, from any thread holding the handle.
    pub fn set_user_of(&self, h: Handle, p: *mut c_void) -> Result<(), Refused> {
        self.pinned(h, |slot| slot.set_user(p))
    }

    /// # Safety
    /// The caller owns the connection (see the invariant on `write`).
    pub unsafe fn put_write(&self, w: PendingWrite) {
        // SAFETY: exclusive access per the caller's contract.
        self.write.with_mut(|p| unsafe { *p = Some(w) });
    }

    /// # Safety
    /// The caller owns the connection (see the invariant on `write`).
    pub unsafe fn take_write(&self) -> Option<PendingWrite> {
        // SAFETY: exclusive access per the caller's contract.
        self.write.with_mut(|p| unsafe { (*p).take() })
    }
}

/// The slab and its free list.
pub struct Table {
    slots: Box<[Slot]>,
    /// The owning runtime's tag, in every handle this table gives out.
    tag: u16,
    /// Indices of free slots. FIFO, so a freed slot is reused as late as
    /// possible. Capacity = slot count, so a push never fails: each index is
    /// in the queue at most once (it is pushed only by the closer that owns
    /// it, after marking it Free).
    free: ArrayQueue<u32>,
}

impl Table {
    /// A table whose handles carry tag 0 (the model checks' tables).
    #[cfg(test)]
    pub fn new(capacity: u32) -> Table {
        Table::tagged(capacity, 0)
    }

    /// A table for the runtime with `tag` (see `handle::RuntimeTags`).
    pub fn tagged(capacity: u32, tag: u16) -> Table {
        debug_assert!(capacity <= super::handle::MAX_SLOTS);
        let slots: Box<[Slot]> = (0..capacity).map(|_| Slot::new()).collect();
        let free = ArrayQueue::new(capacity.max(1) as usize);
        for i in 0..capacity {
            let _ = free.push(i);
        }
        Table { slots, tag, free }
    }

    pub fn tag(&self) -> u16 {
        self.tag
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The slot `h` names, whether or not its connection is still alive.
    /// None for 0, for event-thread tokens and for another runtime's handles.
    pub fn slot(&self, h: Handle) -> Option<&Slot> {
        if !h.is_connection() || h.tag() != self.tag {
            return None;
        }
        self.slots.get(h.index() as usize)
    }

    pub fn slot_at(&self, index: u32) -> &Slot {
        &self.slots[index as usize]
    }

    /// The handle of the connection now in slot `index` (None when free).
    pub fn current_handle(&self, index: u32) -> Option<Handle> {
        let (generation, state) = unpack(self.slots[index as usize].state.load(Ordering::Acquire));
        (state != State::Free).then(|| Handle::tagged(self.tag, index, generation))
    }

    /// Takes a free slot for a new connection in `initial` state.
    #[cfg(test)]
    pub fn allocate(&self, fd: i32, initial: State) -> Option<Handle> {
        self.allocate_with(fd, initial, |_| {})
    }

    /// As `allocate`, with `init` filling the slot's accept-time fields
    /// before the state store publishes the connection.
    pub fn allocate_with(
        &self,
        fd: i32,
        initial: State,
        init: impl FnOnce(&Slot),
    ) -> Option<Handle> {
        let index = self.free.pop()?;
        let slot = &self.slots[index as usize];
        let (generation, _) = unpack(slot.state.load(Ordering::Acquire));
        slot.fd.store(fd, Ordering::Relaxed);
        slot.user.store(ptr::null_mut(), Ordering::Relaxed);
        slot.notified.store(false, Ordering::Relaxed);
        slot.peeked.store(0, Ordering::Relaxed);
        slot.header_since.store(0, Ordering::Relaxed);
        slot.in_event_epoll.store(false, Ordering::Relaxed);
        slot.watch_since.store(0, Ordering::Relaxed);
        init(slot);
        slot.state
            .store(pack(generation, initial), Ordering::Release);
        Some(Handle::tagged(self.tag, index, generation))
    }

    /// Frees `h`'s slot. The caller owns the connection (state Closing) and
    /// closes its descriptor only afterwards, so no handle can yield a
    /// descriptor number the process may already have reused. Every later
    /// use of `h` is Stale.
    pub fn free(&self, h: Handle) {
        let slot = &self.slots[h.index() as usize];
        slot.state.store(
            pack(next_generation(h.generation()), State::Free),
            Ordering::Release,
        );
        // A thread that pinned the slot before it saw the new generation
        // may still use `h`'s fields: wait for it (a few instructions, or
        // the one `epoll_ctl` of `Runtime::wait_armed`) before the slot can
        // go to a new connection and, as the caller closes the descriptor
        // only after this, before its number can. See `Slot::pinned`.
        fence(Ordering::SeqCst);
        let backoff = Backoff::new();
        while slot.pins.load(Ordering::Acquire) != 0 {
            backoff.snooze();
        }
        slot.fd.store(-1, Ordering::Relaxed);
        let pushed = self.free.push(h.index());
        debug_assert!(pushed.is_ok(), "a slot index was freed twice");
    }

    /// Iterates over every slot with its index (for stats and stop).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots.iter().enumerate().map(|(i, s)| (i as u32, s))
    }
}

// Not under loom: loom's atomics only work inside a model (see loom_tests).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn stale_handle_is_refused_after_free_and_reuse() {
        let t = Table::new(1);
        let a = t.allocate(10, State::Reading).unwrap();
        assert!(t.allocate(11, State::Reading).is_none(), "table is full");
        let s = t.slot(a).unwrap();
        s.transition(a, State::Reading, State::Closing).unwrap();
        t.free(a);
        assert_eq!(s.state_of(a), Err(Refused::Stale));
        let b = t.allocate(12, State::Reading).unwrap();
        assert_eq!(a.index(), b.index());
        assert_ne!(a, b);
        // The old handle never acts on the new connection.
        assert_eq!(
            s.transition(a, State::Reading, State::Queued),
            Err(Refused::Stale)
        );
        assert_eq!(s.state_of(b), Ok(State::Reading));
        assert_eq!(s.fd(), 12);
    }

    #[test]
    fn wrong_state_is_reported_with_the_actual_state() {
        let t = Table::new(4);
        let h = t.allocate(3, State::Handler).unwrap();
        let s = t.slot(h).unwrap();
        s.transition(h, State::Handler, State::ParkReq).unwrap();
        assert_eq!(
            s.transition(h, State::Handler, State::ParkReq),
            Err(Refused::State(State::ParkReq))
        );
    }

    #[test]
    fn zero_and_out_of_range_handles_name_no_slot() {
        let t = Table::new(2);
        assert!(t.slot(Handle(0)).is_none());
        assert!(t.slot(Handle::new(5, 1)).is_none());
    }

    /// The bytes `w` would send next, as one vector (slices only).
    fn next_bytes(w: &PendingWrite) -> Vec<u8> {
        match w.next_part() {
            Part::Bytes(slices) => slices
                .iter()
                .flat_map(|s| {
                    // SAFETY: the tests' slices point into live statics.
                    unsafe { std::slice::from_raw_parts(s.iov_base.cast::<u8>(), s.iov_len) }
                })
                .copied()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn iov(bytes: &'static [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: bytes.as_ptr() as *mut c_void,
            iov_len: bytes.len(),
        }
    }

    #[test]
    fn pending_write_releases_exactly_once() {
        use std::sync::atomic::AtomicUsize;
        static RELEASED: AtomicUsize = AtomicUsize::new(0);
        unsafe extern "C" fn release(_: *mut c_void) {
            RELEASED.fetch_add(1, Ordering::SeqCst);
        }
        let data = b"hello";
        // SAFETY: `data` is static.
        let mut w = unsafe {
            PendingWrite::new(
                data.as_ptr(),
                data.len(),
                Some(release),
                ptr::null_mut(),
                AfterWrite::Park,
            )
        };
        assert_eq!(next_bytes(&w), b"hello");
        w.advance(3);
        assert_eq!(next_bytes(&w), b"lo");
        w.advance(10);
        assert!(w.is_done());
        drop(w);
        assert_eq!(RELEASED.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_empty_write_is_done_at_once() {
        // SAFETY: zero bytes are never read.
        let w =
            unsafe { PendingWrite::new(ptr::null(), 0, None, ptr::null_mut(), AfterWrite::Close) };
        assert!(w.is_done());
        // SAFETY: no slices; a file range of 0 bytes is never read.
        let w = unsafe {
            PendingWrite::gathered(
                Box::new([]),
                Some(FileRange {
                    fd: 0,
                    offset: 5,
                    len: 0,
                }),
                None,
                ptr::null_mut(),
                AfterWrite::Close,
            )
        };
        assert!(w.is_done());
    }

    #[test]
    fn gathered_slices_go_in_order_across_partial_sends() {
        let slices = vec![iov(b"ab"), iov(b""), iov(b"cde"), iov(b"f")];
        // SAFETY: static slices; no file.
        let mut w = unsafe {
            PendingWrite::gathered(
                slices.into_boxed_slice(),
                None,
                None,
                ptr::null_mut(),
                AfterWrite::Park,
            )
        };
        assert_eq!(next_bytes(&w), b"abcdef");
        w.advance(1);
        assert_eq!(next_bytes(&w), b"bcdef");
        // Ends exactly at a slice's end; the empty slice is skipped.
        w.advance(1);
        assert!(matches!(w.next_part(), Part::Bytes(s) if s.len() == 2));
        w.advance(4);
        assert_eq!(next_bytes(&w), b"");
        assert!(w.is_done());
    }

    #[test]
    fn a_file_range_follows_the_slices() {
        let file = FileRange {
            fd: 7,
            offset: 100,
            len: 10,
        };
        // SAFETY: static slices; the file range is never read here.
        let mut w = unsafe {
            PendingWrite::gathered(
                vec![iov(b"head")].into_boxed_slice(),
                Some(file),
                None,
                ptr::null_mut(),
                AfterWrite::Close,
            )
        };
        assert_eq!(next_bytes(&w), b"head");
        w.advance(4);
        assert!(matches!(w.next_part(), Part::File(f) if f == file));
        w.advance_file(4);
        let rest = FileRange {
            fd: 7,
            offset: 104,
            len: 6,
        };
        assert!(matches!(w.next_part(), Part::File(f) if f == rest));
        w.advance_file(6);
        assert!(w.is_done());
    }
}

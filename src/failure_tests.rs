//! The fail-stop after an internal panic (see `failure`), over real
//! loopback sockets and the runtime's real threads. A test arms a panic at
//! one place (`failure::hit`), which only the crate's own tests compile in.

use crate::failure::Site;
use crate::ffi::api::*;
use crate::ffi::types::evmpm_error::*;
use crate::ffi::types::*;
use crate::runtime::Runtime;
use libc::{c_char, c_int, c_void};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the callbacks saw, shared through `user_data`.
#[derive(Default)]
struct Seen {
    closes: AtomicUsize,
    /// Handles closed, to check each is closed once.
    closed: Mutex<Vec<u64>>,
    errors_logged: AtomicUsize,
    log: Mutex<Vec<String>>,
    /// What the handler does: 0 read a line and return undecided (close),
    /// 1 read a line, answer and park, 2 suspend.
    mode: AtomicUsize,
    suspended: AtomicU64,
}

fn seen<'a>(user: *mut c_void) -> &'a Seen {
    // SAFETY: every runtime in these tests gets a `Seen` that outlives it.
    unsafe { &*(user as *const Seen) }
}

unsafe extern "C" fn handler(
    user: *mut c_void,
    rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    fd: c_int,
    _reason: c_int,
) {
    let seen = seen(user);
    match seen.mode.load(SeqCst) {
        2 => {
            seen.suspended.store(conn, SeqCst);
            // SAFETY: the handler's own runtime and connection.
            unsafe { evmpm_suspend(rt, conn) };
        }
        mode => {
            let mut buf = [0u8; 64];
            // SAFETY: reads into a live buffer from the connection's socket.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if mode == 1 && n > 0 {
                // SAFETY: writes a static reply to the connection's socket.
                unsafe { libc::write(fd, b"ok\n".as_ptr().cast(), 3) };
                // SAFETY: as above.
                unsafe { evmpm_park_keepalive(rt, conn, 0) };
            }
        }
    }
}

unsafe extern "C" fn on_close(
    user: *mut c_void,
    _rt: *mut evmpm_runtime,
    conn: evmpm_conn,
    _fd: c_int,
    _conn_user: *mut c_void,
) {
    let seen = seen(user);
    seen.closes.fetch_add(1, SeqCst);
    seen.closed.lock().unwrap().push(conn);
}

unsafe extern "C" fn log(user: *mut c_void, level: c_int, message: *const c_char) {
    let seen = seen(user);
    if level == EVMPM_LOG_ERROR {
        seen.errors_logged.fetch_add(1, SeqCst);
    }
    // SAFETY: a NUL-terminated string valid during the call (contract).
    let text = unsafe { std::ffi::CStr::from_ptr(message) };
    seen.log
        .lock()
        .unwrap()
        .push(text.to_string_lossy().into_owned());
}

struct Server {
    rt: *mut evmpm_runtime,
    port: u16,
    _listener: TcpListener,
}

/// A failed assertion still stops the runtime before the test's state goes.
impl Drop for Server {
    fn drop(&mut self) {
        if !self.rt.is_null() {
            // SAFETY: a live runtime, from the thread that created it.
            unsafe { evmpm_destroy(self.rt) };
        }
    }
}

/// The callbacks' state, alive for the rest of the process, so even a
/// runtime a failed test could not stop never calls into freed memory.
/// Kept in a list, so the leak checker sees it still referenced.
fn new_seen() -> &'static Seen {
    static KEPT: Mutex<Vec<&'static Seen>> = Mutex::new(Vec::new());
    let seen: &'static Seen = Box::leak(Box::default());
    KEPT.lock().unwrap().push(seen);
    seen
}

fn start(seen: &Seen) -> Server {
    let mut cfg = std::mem::MaybeUninit::<evmpm_config>::uninit();
    // SAFETY: a writable config of the size passed.
    let rc = unsafe { evmpm_config_init(cfg.as_mut_ptr(), std::mem::size_of::<evmpm_config>()) };
    assert_eq!(rc, EVMPM_OK);
    // SAFETY: filled by evmpm_config_init.
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.worker_threads = 2;
    cfg.handler = Some(handler);
    cfg.on_close = Some(on_close);
    cfg.log = Some(log);
    cfg.linger_timeout_ms = 0;
    // Long enough that only the fail-stop closes an idle connection within
    // a test's deadlines.
    cfg.keepalive_timeout_ms = 60_000;
    cfg.user_data = seen as *const Seen as *mut c_void;
    let mut rt = std::ptr::null_mut();
    // SAFETY: a valid config and out-pointer.
    assert_eq!(unsafe { evmpm_create(&cfg, &mut rt) }, EVMPM_OK);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // SAFETY: a live runtime and a listening socket the test keeps open.
    let rc = unsafe { evmpm_register_listener(rt, listener.as_raw_fd()) };
    assert_eq!(rc, EVMPM_OK);
    // SAFETY: a live runtime.
    assert_eq!(unsafe { evmpm_start(rt) }, EVMPM_OK);
    Server {
        rt,
        port,
        _listener: listener,
    }
}

fn arm(server: &Server, site: Site) {
    // SAFETY: the runtime is live; the pointer is its `Arc`'s (see api.rs).
    let rt = unsafe { &*(server.rt as *const Runtime) };
    rt.faults.arm(site);
}

fn stats(server: &Server) -> evmpm_stats {
    let mut st = evmpm_stats::default();
    // SAFETY: a live runtime and a writable stats struct of that size.
    let rc = unsafe { evmpm_get_stats(server.rt, &mut st, std::mem::size_of::<evmpm_stats>()) };
    assert_eq!(rc, EVMPM_OK);
    st
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "still not true after 10 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn client(server: &Server) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// True once the server closed the connection (EOF or reset); false if
/// it stays open past the client's read timeout.
fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Every connection closed exactly once, its close callback run.
fn each_closed_once(seen: &Seen, accepted: u64) {
    let mut closed = seen.closed.lock().unwrap().clone();
    assert_eq!(closed.len() as u64, accepted, "close callbacks: {closed:?}");
    closed.sort_unstable();
    closed.dedup();
    assert_eq!(closed.len() as u64, accepted, "a connection closed twice");
}

fn stop_and_destroy(mut server: Server) -> evmpm_error {
    // SAFETY: a live runtime, from the thread that created it.
    let rc = unsafe { evmpm_stop(server.rt, 2000) };
    let rt = std::mem::replace(&mut server.rt, std::ptr::null_mut());
    // SAFETY: as above; not used afterwards.
    assert_eq!(unsafe { evmpm_destroy(rt) }, EVMPM_OK);
    rc
}

/// A worker panics in the close path after taking the connection
/// (Closing) and before the close callback: nobody owns the connection any
/// more. The runtime stops itself (an idle keep-alive connection is closed
/// at once, without the host asking), logs it, counts it, and `evmpm_stop`
/// answers `EVMPM_EINTERNAL` after its sweep closed the orphan with its
/// close callback: every connection closed exactly once, none left open.
#[test]
fn a_worker_panic_stops_the_runtime_and_strands_nothing() {
    let seen = new_seen();
    let server = start(seen);
    // An idle keep-alive connection, parked before the panic.
    seen.mode.store(1, SeqCst);
    let mut idle = client(&server);
    idle.write_all(b"hi\n").unwrap();
    let mut ok = [0u8; 3];
    idle.read_exact(&mut ok).unwrap();
    wait_until("parked", || stats(&server).conns_keepalive == 1);

    // A request whose handler returns undecided: the worker closes it, and
    // panics in the middle.
    seen.mode.store(0, SeqCst);
    arm(&server, Site::Closing);
    let mut doomed = client(&server);
    doomed.write_all(b"bye\n").unwrap();

    wait_until("the error counted", || stats(&server).internal_errors == 1);
    assert!(
        closed_by_server(&mut idle),
        "the idle connection stays open"
    );
    assert!(seen.errors_logged.load(SeqCst) >= 1);
    let log = seen.log.lock().unwrap().join("\n");
    assert!(log.contains("injected fault"), "{log}");
    assert!(log.contains("stops itself"), "{log}");
    // New connections are no longer served.
    let accepted = stats(&server).accepted;

    assert_eq!(stop_and_destroy(server), EVMPM_EINTERNAL);
    assert!(closed_by_server(&mut doomed), "the orphan stays open");
    each_closed_once(seen, accepted);
}

/// The event thread panics while it links a parked connection into its
/// timeout queue. Its own records may be half changed and alone say which
/// connections it owns, so it trusts none of them: it stops accepting and
/// leaves, the runtime stops itself, and `evmpm_stop` answers
/// `EVMPM_EINTERNAL` after its sweep closed every connection (each close
/// callback once), the parked one included.
#[test]
fn an_event_thread_panic_stops_the_runtime_and_strands_nothing() {
    let seen = new_seen();
    let server = start(seen);
    seen.mode.store(1, SeqCst);
    arm(&server, Site::EventAdopt);
    let mut parked = client(&server);
    parked.write_all(b"hi\n").unwrap();
    let mut ok = [0u8; 3];
    parked.read_exact(&mut ok).unwrap();
    // Parking does not wake a sleeping event thread (its timeout is far
    // off); a new connection does, and it then takes the hand-over if it
    // has arrived: knock until it has.
    let mut knocks = Vec::new();
    wait_until("the error counted", || {
        if knocks.len() < 100 {
            knocks.push(client(&server));
        }
        stats(&server).internal_errors == 1
    });
    wait_until("accepting stopped", || stats(&server).accepting_paused == 1);
    assert!(seen.log.lock().unwrap().join("\n").contains("event thread"));
    let accepted = stats(&server).accepted;
    assert_eq!(stop_and_destroy(server), EVMPM_EINTERNAL);
    assert!(
        closed_by_server(&mut parked),
        "the parked connection stays open"
    );
    each_closed_once(seen, accepted);
}

/// A host call panics while it holds a suspended connection's handle: the
/// call answers `EVMPM_EINTERNAL`, the runtime stops itself and closes the
/// suspended connection.
#[test]
fn a_panic_in_a_host_call_answers_einternal_and_stops_the_runtime() {
    let seen = new_seen();
    let server = start(seen);
    seen.mode.store(2, SeqCst);
    let mut held = client(&server);
    held.write_all(b"hold\n").unwrap();
    wait_until("suspended", || stats(&server).conns_suspended == 1);
    let conn = seen.suspended.load(SeqCst);

    arm(&server, Site::HostCall);
    // SAFETY: a live runtime and a handle of it.
    assert_eq!(unsafe { evmpm_close(server.rt, conn) }, EVMPM_EINTERNAL);
    assert!(
        closed_by_server(&mut held),
        "the suspended connection stays open"
    );
    assert_eq!(stats(&server).internal_errors, 1);
    let accepted = stats(&server).accepted;
    assert_eq!(stop_and_destroy(server), EVMPM_EINTERNAL);
    each_closed_once(seen, accepted);
}

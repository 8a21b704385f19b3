//! The examples built on timers and watches (examples-c/tunnel.c,
//! examples-c/longpoll.c), driven as clients and backends would: real
//! sockets on 127.0.0.1, every byte checked, then SIGTERM, after which each
//! server must exit with status 0 and report its counts.
//!
//! Counts are scaled down under valgrind (`support::slowdown()` > 1), and
//! the idle-tunnel count is held under the 20,000-descriptor limit: each
//! tunnel costs the server two descriptors (client and backend) and this
//! test process two (its client end and its backend end).

mod support;

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn limit(secs: u64) -> Duration {
    Duration::from_secs(secs * u64::from(support::slowdown()))
}

fn scaled(n: usize) -> usize {
    if support::slowdown() > 1 {
        (n / 20).max(1)
    } else {
        n
    }
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn built(name: &str) -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _g = LOCK.get_or_init(Default::default).lock().unwrap();
    support::build_c(name, &[&format!("examples-c/{name}.c")], &[])
}

/// A running example, killed on drop unless stopped.
struct Server {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(name: &str, ready: &str, args: impl Fn(u16) -> Vec<String>) -> Server {
        let exe = built(name);
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = support::out_dir().join(format!("{name}-{port}.log"));
            let file = File::create(&log).unwrap();
            let child = support::command(&exe)
                .args(args(port))
                .stdin(Stdio::null())
                .stdout(Stdio::from(file.try_clone().unwrap()))
                .stderr(Stdio::from(file))
                .spawn()
                .unwrap();
            let mut s = Server {
                child: Some(child),
                port,
                log,
            };
            let deadline = Instant::now() + limit(20);
            loop {
                if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                    let text = s.text();
                    s.child = None;
                    if text.contains("cannot listen") {
                        break;
                    }
                    panic!("{name} exited at start with {status}:\n{text}");
                }
                if s.text().contains(ready) {
                    return s;
                }
                assert!(Instant::now() < deadline, "{name} did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no free port for {name}");
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A field of /proc/PID/status ("Threads", "VmRSS" in kB).
    fn status(&self, field: &str) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// SIGTERM; the server must exit 0. Returns its log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill() of our own unreaped child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = support::wait_with_deadline(&mut child, limit(20));
        let text = self.text();
        assert!(
            status.is_some_and(|s| s.success()),
            "exit after SIGTERM: {status:?}\n{text}"
        );
        text
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(limit(20))).unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- log ---\n{}", self.text());
            }
        }
    }
}

/// The counts the tunnel prints as it stops: (opened, closed, twice).
fn tunnel_counts(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains(" opened, "))
        .unwrap_or_else(|| panic!("no counts in:\n{log}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1], nums[2])
}

/// Held by the tests that use thousands of descriptors in this process,
/// so that two of them never run at once (the tests of one binary run in
/// parallel, under one descriptor limit).
fn many_descriptors() -> std::sync::MutexGuard<'static, ()> {
    static BIG: Mutex<()> = Mutex::new(());
    BIG.lock().unwrap_or_else(|p| p.into_inner())
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

// ---- the tunnel ---------------------------------------------------------------

/// A backend that echoes every connection's bytes back in random chunks
/// until the connection ends; counts the ends it saw.
fn echo_backend() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let ended = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&ended);
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                let mut seed = 0x1234_5678 + n as u64;
                let mut buf = vec![0u8; 70_000];
                loop {
                    let want = 1 + (rng(&mut seed) % buf.len() as u64) as usize;
                    match s.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            if s.write_all(&buf[..k]).is_err() {
                                break;
                            }
                        }
                    }
                }
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (port, ended)
}

/// Every byte relayed both ways, in order, under random chunking on both
/// sides: each client sends a pattern in random chunks while reading the
/// backend's echo of it in random chunks.
#[test]
fn tunnel_relays_every_byte_both_ways_in_order() {
    let (backend, ended) = echo_backend();
    let server = Server::start("tunnel", "tunnel: listening", |p| {
        vec![p.to_string(), backend.to_string(), "8".into()]
    });
    let tunnels = 12;
    let bytes = if support::slowdown() > 1 {
        64 << 10
    } else {
        1 << 20
    };
    let clients: Vec<_> = (0..tunnels)
        .map(|t| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + t * 13 % 251) as u8).collect();
                let mut w = s.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || {
                    let mut seed = 99 + t as u64;
                    let mut at = 0;
                    while at < sent.len() {
                        let n = (1 + rng(&mut seed) % 40_000) as usize;
                        let end = (at + n).min(sent.len());
                        w.write_all(&sent[at..end]).unwrap();
                        at = end;
                        if rng(&mut seed) % 16 == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
                let mut got = vec![0u8; bytes];
                let mut at = 0;
                let mut seed = 7 + t as u64;
                while at < bytes {
                    let n = (1 + rng(&mut seed) % 50_000) as usize;
                    let end = (at + n).min(bytes);
                    let k = s.read(&mut got[at..end]).expect("echo");
                    assert!(k > 0, "tunnel {t} ended after {at} bytes");
                    at += k;
                }
                writer.join().unwrap();
                assert!(got == data, "tunnel {t}: bytes differ");
                // Half-close from the client: both ends close.
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty());
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_for("every backend end", limit(10), || {
        ended.load(Ordering::SeqCst) == tunnels
    });
    let (opened, closed, twice) = tunnel_counts(&server.stop());
    assert_eq!((opened, closed, twice), (tunnels as u64, tunnels as u64, 0));
    eprintln!("figure: {tunnels} tunnels, {bytes} bytes each way, random chunks: all in order");
}

/// A backend that keeps every connection without reading, and hands the
/// test the accepted streams.
fn holding_backend() -> (u16, Arc<Mutex<Vec<TcpStream>>>) {
    let l = listen_deep();
    let port = l.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&held);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s.set_read_timeout(Some(limit(20))).unwrap();
            h.lock().unwrap().push(s);
        }
    });
    (port, held)
}

/// A listener on 127.0.0.1 with a backlog of 4096 (std's is 128), so
/// thousands of tunnels connecting at once are not dropped and retried.
fn listen_deep() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&l);
    // SAFETY: listen() again on our own bound listening socket.
    assert_eq!(unsafe { libc::listen(fd, 4096) }, 0);
    l
}

/// 1 if `s` sees the end (EOF or reset) within the deadline.
fn sees_end(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn reset(s: TcpStream) {
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&s);
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(s);
}

/// Half-close and reset, on either side, close both ends; each tunnel's
/// close callback runs once.
#[test]
fn tunnel_half_close_and_reset_close_both_ends() {
    let (backend, held) = holding_backend();
    let server = Server::start("tunnel", "tunnel: listening", |p| {
        vec![p.to_string(), backend.to_string(), "4".into()]
    });
    let mut pairs = Vec::new();
    for i in 0..4 {
        let mut c = server.connect();
        let _ = i;
        wait_for("the backend connection", limit(5), || {
            !held.lock().unwrap().is_empty()
        });
        let mut b = held.lock().unwrap().pop().unwrap();
        // A round trip first: the tunnel works.
        c.write_all(b"ping\n").unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping\n");
        b.write_all(b"pong\n").unwrap();
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong\n");
        pairs.push((c, b));
    }
    let mut it = pairs.into_iter();
    // Client half-closes.
    let (mut c, mut b) = it.next().unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(sees_end(&mut b), "backend after client half-close");
    assert!(sees_end(&mut c), "client after its half-close");
    // Backend half-closes.
    let (mut c, mut b) = it.next().unwrap();
    b.write_all(b"last words\n").unwrap();
    b.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words\n");
    assert!(sees_end(&mut b), "backend after its half-close");
    // Client resets.
    let (c, mut b) = it.next().unwrap();
    reset(c);
    assert!(sees_end(&mut b), "backend after client reset");
    // Backend resets.
    let (mut c, b) = it.next().unwrap();
    reset(b);
    assert!(sees_end(&mut c), "client after backend reset");
    let (opened, closed, twice) = tunnel_counts(&server.stop());
    assert_eq!((opened, closed, twice), (4, 4, 0));
}

/// ~10,000 idle tunnels (both connections open) hold no thread each.
#[test]
fn tunnel_idle_tunnels_hold_no_thread() {
    // Two descriptors per tunnel in this process and in the server, under
    // a limit of 20,000 each: 9,800 tunnels leave room for the rest.
    let _big = many_descriptors();
    let n = std::env::var("EVMPM_IDLE_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| scaled(9_800));
    let (backend, held) = holding_backend();
    let workers = 4;
    let server = Server::start("tunnel", "tunnel: listening", |p| {
        vec![p.to_string(), backend.to_string(), workers.to_string()]
    });
    let rss_before = server.status("VmRSS");
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(server.connect());
    }
    wait_for("every backend connection", limit(60), || {
        held.lock().unwrap().len() == n
    });
    // Let the handlers that ran at accept return and the pool settle.
    std::thread::sleep(Duration::from_millis(300));
    let threads = server.status("Threads");
    let rss = server.status("VmRSS");
    let per_tunnel = (rss.saturating_sub(rss_before) * 1024) as f64 / n as f64;
    eprintln!(
        "figure: {n} idle tunnels: {threads} threads in the server ({workers} workers at most, \
         plus event, monitor and main), RSS {rss_before} kB -> {rss} kB, {per_tunnel:.0} bytes \
         per tunnel (both sockets' kernel memory not included)"
    );
    assert!(
        threads <= workers + 3,
        "{threads} threads for {workers} workers"
    );
    // They still work: the first and last relay.
    for i in [0, n - 1] {
        clients[i].write_all(b"hi\n").unwrap();
    }
    let mut got_hi = 0;
    let deadline = Instant::now() + limit(10);
    while got_hi < 2 && Instant::now() < deadline {
        for b in held.lock().unwrap().iter_mut() {
            b.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 3];
            if let Ok(3) = b.read(&mut buf) {
                assert_eq!(&buf, b"hi\n");
                got_hi += 1;
            }
            b.set_nonblocking(false).unwrap();
        }
    }
    assert_eq!(got_hi, 2, "relayed by idle tunnels woken again");
    drop(clients);
    let mut streams = std::mem::take(&mut *held.lock().unwrap());
    for b in streams.iter_mut() {
        assert!(sees_end(b), "a backend end stayed open");
    }
    let (opened, closed, twice) = tunnel_counts(&server.stop());
    assert_eq!((opened, closed, twice), (n as u64, n as u64, 0));
}

// ---- long polling -----------------------------------------------------------------

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            other => panic!("line cut short ({other:?}) after {line:?}"),
        }
    }
    String::from_utf8(line).unwrap()
}

/// 10,000 clients wait; a message posted wakes exactly its topic's
/// subscribers; the rest time out on time.
#[test]
fn longpoll_wakes_exactly_the_subscribers_and_times_out_the_rest() {
    let _big = many_descriptors();
    let wait_s = 5u64;
    let server = Server::start("longpoll", "longpoll: listening", |p| {
        vec![p.to_string(), wait_s.to_string(), "8".into()]
    });
    let n = scaled(10_000);
    let subscribers = (n / 100).max(2);
    let mut clients: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let topic = if i % (n / subscribers) == 0 { "a" } else { "b" };
        c.write_all(format!("WAIT {topic}\n").as_bytes()).unwrap();
    }
    let waits_sent = Instant::now();
    for c in clients.iter_mut() {
        assert_eq!(read_line(c), "WAITING");
    }
    let mut poster = server.connect();
    poster.write_all(b"POST a hello there\n").unwrap();
    let sent = read_line(&mut poster);
    let expected: usize = (0..n).filter(|i| i % (n / subscribers) == 0).count();
    assert_eq!(sent, format!("SENT {expected}"));
    let posted_after = waits_sent.elapsed();
    assert!(
        posted_after < Duration::from_secs(wait_s),
        "posted too late to test"
    );
    let (mut woken, mut timed_out, mut max_late) = (0, 0, 0u64);
    for (i, c) in clients.iter_mut().enumerate() {
        let line = read_line(c);
        if i % (n / subscribers) == 0 {
            assert_eq!(line, "MSG hello there", "subscriber {i}");
            woken += 1;
        } else {
            let ms: u64 = line
                .strip_prefix("TIMEOUT ")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("client {i}: {line:?}"));
            assert!(ms >= wait_s * 1000, "client {i} timed out early: {ms} ms");
            max_late = max_late.max(ms - wait_s * 1000);
            timed_out += 1;
        }
    }
    assert_eq!((woken, timed_out), (expected, n - expected));
    assert!(
        max_late < 2000 * u64::from(support::slowdown()),
        "timed out {max_late} ms late"
    );
    // Waiting again works, and a client gone while waiting is forgotten.
    clients[1].write_all(b"WAIT b\n").unwrap();
    assert_eq!(read_line(&mut clients[1]), "WAITING");
    drop(clients);
    poster.write_all(b"POST b late\n").unwrap();
    let sent = read_line(&mut poster);
    assert!(sent == "SENT 0" || sent == "SENT 1", "{sent}");
    eprintln!(
        "figure: {n} waiting clients, {wait_s} s: {woken} woken by a post {posted_after:?} after \
         the waits, {timed_out} timed out at most {max_late} ms late"
    );
    server.stop();
}

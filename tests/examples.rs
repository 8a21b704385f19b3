//! The C examples (examples-c/), built against libevmpm.a and driven as a
//! client would: real sockets on 127.0.0.1, responses checked byte for byte,
//! then SIGTERM, after which each server must exit with status 0.
//!
//! Every server runs in a `Server` guard that kills it if a test fails, so
//! nothing is left running. Waits poll a condition under a deadline.

mod support;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Scales a duration for slow runs (valgrind).
fn limit(secs: u64) -> Duration {
    Duration::from_secs(secs * u64::from(support::slowdown()))
}

/// Polls `cond` every few milliseconds until it holds; panics with `what`
/// at the deadline.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- building and running the examples --------------------------------------

/// Builds examples-c/NAME.c once per test binary: the tests run in
/// parallel, and two compilers writing one executable would race.
fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut map = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(name.to_string())
        .or_insert_with(|| match name {
            "fileserver" => support::build_fileserver(),
            _ => support::build_c(name, &[&format!("examples-c/{name}.c")], &[]),
        })
        .clone()
}

/// A running example server, killed on drop unless it was stopped.
struct Server {
    name: String,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Server {
    /// Starts example `name` with the arguments `args(port)` and waits until
    /// it accepts connections. `ready` is the line the server prints once it
    /// listens. A port taken in between is retried with another.
    fn start(name: &str, ready: &str, args: impl Fn(u16) -> Vec<String>) -> Server {
        Server::start_with_env(name, ready, &[], args)
    }

    /// `start` with these environment variables set for the server.
    fn start_with_env(
        name: &str,
        ready: &str,
        env: &[(&str, &str)],
        args: impl Fn(u16) -> Vec<String>,
    ) -> Server {
        let exe = built(name);
        for _attempt in 0..5 {
            let port = free_port();
            let log = support::out_dir().join(format!("{name}-{port}.log"));
            let file = File::create(&log).expect("create log");
            let child = support::command(&exe)
                .args(args(port))
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::from(file.try_clone().expect("dup log")))
                .stderr(Stdio::from(file))
                .spawn()
                .expect("spawn example");
            let mut server = Server {
                name: name.to_string(),
                child: Some(child),
                port,
                log,
            };
            let deadline = Instant::now() + limit(20);
            loop {
                let child = server.child.as_mut().expect("child");
                if let Some(status) = child.try_wait().expect("try_wait") {
                    let text = server.log_text();
                    server.child = None;
                    if text.contains("cannot listen") {
                        let _ = fs::remove_file(&server.log);
                        break; // the port was taken meanwhile: try another
                    }
                    panic!("{name} exited at start with {status}:\n{text}");
                }
                // The ready line proves this process listens on the port, so
                // the connect below cannot reach someone else's server.
                if server.log_text().contains(ready) && server.connect_ok() {
                    return server;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not start accepting:\n{}",
                    server.log_text()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("{name}: no free port after 5 attempts");
    }

    fn connect_ok(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill() with our own child's pid; it has not been reaped
        // (the Child is still held), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Sends SIGTERM and checks the server exits with status 0 in time.
    /// Returns what it wrote to stdout and stderr.
    fn terminate(mut self) -> String {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let status: Option<ExitStatus> = support::wait_with_deadline(&mut child, limit(15));
        let text = self.log_text();
        match status {
            Some(s) => assert!(
                s.success(),
                "{} exited with {s} after SIGTERM:\n{text}",
                self.name
            ),
            None => panic!("{} still running 15 s after SIGTERM:\n{text}", self.name),
        }
        let _ = fs::remove_file(&self.log); // kept only when something failed
        text
    }

    fn conn(&self) -> Conn {
        Conn::new(self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- {} log ---\n{}", self.name, self.log_text());
            }
        }
    }
}

// ---- a small client -----------------------------------------------------------

/// A client connection with a read buffer, every read under a deadline.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Response {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", self.status_line))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    fn new(port: u16) -> Conn {
        Conn::wrap(TcpStream::connect(("127.0.0.1", port)).expect("connect"))
    }

    fn wrap(s: TcpStream) -> Conn {
        s.set_read_timeout(Some(limit(10))).expect("timeout");
        s.set_write_timeout(Some(limit(10))).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Conn { s, buf: Vec::new() }
    }

    /// A connection whose receive buffer is `bytes` (set before connect, so
    /// the kernel does not grow it): the server must wait for this reader.
    fn with_small_rcvbuf(port: u16, bytes: i32) -> Conn {
        // SAFETY: plain socket calls on a descriptor this function owns until
        // from_raw_fd hands it to the TcpStream; the address is initialised.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket");
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "SO_RCVBUF");
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = port.to_be();
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
            Conn::wrap(TcpStream::from_raw_fd(fd))
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.s.write_all(bytes.as_ref()).expect("send");
    }

    /// Reads more into the buffer; false at end of stream (a reset counts as
    /// the end too: the server is gone either way).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
                Err(e) => panic!("read: {e} (have {:?})", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill(),
                "connection ended: wanted {n} bytes, got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Reads through the first `pat`.
    fn read_through(&mut self, pat: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return self.buf.drain(..i + pat.len()).collect();
            }
            assert!(
                self.fill(),
                "connection ended before {:?}: got {:?}",
                String::from_utf8_lossy(pat),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Expects exactly these bytes next.
    fn expect(&mut self, want: &[u8]) {
        let got = self.read_exact_n(want.len());
        assert!(
            got == want,
            "response differs:\n got: {:?}\nwant: {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want)
        );
    }

    /// Expects the server to close with nothing more sent.
    fn expect_eof(&mut self) {
        while self.fill() {}
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Checks that the server has not answered the part of a request sent so
    /// far: no byte arrives within a short poll. The caller then sends the
    /// rest and reads the answer.
    fn expect_no_answer_yet(&mut self) {
        self.s
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match self.s.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("answered a partial request: {other:?}"),
        }
        self.s.set_read_timeout(Some(limit(10))).expect("timeout");
    }

    /// Reads one HTTP response; `head_only` for the answer to HEAD.
    fn response(&mut self, head_only: bool) -> Response {
        let head = self.read_through(b"\r\n\r\n");
        let head = String::from_utf8(head).expect("ASCII head");
        let mut lines = head.trim_end_matches("\r\n").split("\r\n");
        let status_line = lines.next().expect("status line").to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("bad header {l:?}"));
                (n.to_string(), v.to_string())
            })
            .collect();
        let mut r = Response {
            status_line,
            headers,
            body: Vec::new(),
        };
        if !head_only {
            let len: usize = r
                .header("Content-Length")
                .expect("Content-Length")
                .parse()
                .expect("numeric Content-Length");
            r.body = self.read_exact_n(len);
        }
        r
    }

    fn request(&mut self, req: &str) -> Response {
        self.send(req);
        self.response(req.starts_with("HEAD "))
    }

    fn line(&mut self) -> String {
        String::from_utf8(self.read_through(b"\n")).expect("UTF-8 line")
    }
}

// ---- the hello servers --------------------------------------------------------

const HELLO_BODY: &[u8] =
    b"Hello from a C server. This body is 100 bytes long and the same for every request, on every socket.\n";

fn hello_response(conn_header: &str, with_body: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n{conn_header}\r\n"
    )
    .into_bytes();
    if with_body {
        r.extend_from_slice(HELLO_BODY);
    }
    r
}

const GET: &str = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

fn start_hello(name: &str, workers: u32) -> Server {
    Server::start(name, "listening on 127.0.0.1:", |port| {
        vec![port.to_string(), workers.to_string()]
    })
}

/// The behaviour both hello servers share.
fn hello_suite(name: &str) {
    assert_eq!(HELLO_BODY.len(), 100);
    let server = start_hello(name, 4);
    let ok = hello_response("", true);
    let ok_close = hello_response("Connection: close\r\n", true);

    // Keep-alive: many requests, one connection.
    let mut c = server.conn();
    for _ in 0..50 {
        c.send(GET);
        c.expect(&ok);
    }

    // Connection: close is answered, then the server closes.
    c.send("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    c.expect(&ok_close);
    c.expect_eof();

    // Pipelined, answered in order: each answer differs from the others.
    let mut c = server.conn();
    c.send(format!(
        "{GET}HEAD / HTTP/1.1\r\nHost: a\r\n\r\n{GET}GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"
    ));
    c.expect(&ok);
    c.expect(&hello_response("", false));
    c.expect(&ok);
    c.expect(&ok_close);
    c.expect_eof();

    // A deeper pipeline, and one request split across two writes.
    let mut c = server.conn();
    c.send(GET.repeat(20));
    for _ in 0..20 {
        c.expect(&ok);
    }
    c.send(&GET[..10]);
    c.expect_no_answer_yet();
    c.send(&GET[10..]);
    c.expect(&ok);

    // HTTP/1.0 closes unless keep-alive is asked for.
    let mut c = server.conn();
    c.send("GET / HTTP/1.0\r\n\r\n");
    c.expect(&ok_close);
    c.expect_eof();
    let mut c = server.conn();
    for _ in 0..3 {
        c.send("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        c.expect(&hello_response("Connection: keep-alive\r\n", true));
    }

    // Garbage and oversized heads get an error, then the connection closes.
    let mut c = server.conn();
    c.send("garbage\r\n\r\n");
    c.expect(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    c.expect_eof();
    let mut c = server.conn();
    let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(8192, b'a'); // exactly the server's buffer: nothing left unread
    c.send(&big);
    c.expect(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    c.expect_eof();

    // A request body is not read: answered, then closed.
    let mut c = server.conn();
    c.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    c.expect(&ok_close);
    c.expect_eof();

    // Stop with an idle keep-alive connection open: it is closed, and the
    // server still exits 0.
    let mut idle = server.conn();
    idle.send(GET);
    idle.expect(&ok);
    server.terminate();
    idle.expect_eof();
}

#[test]
fn hello_blocking() {
    hello_suite("hello_blocking");
}

#[test]
fn hello_evmpm() {
    hello_suite("hello_evmpm");
}

/// `GET /slow` stands for a handler that waits on a backend (the benchmark's
/// blocking loads): both servers answer it like any other request, after
/// sleeping HELLO_SLOW_MS. hello_evmpm runs with evmpm's defaults here (no
/// WORKERS argument).
#[test]
fn hello_slow_path_sleeps_as_configured() {
    const SLOW_MS: u64 = 20;
    let ok = hello_response("", true);
    for (name, args) in [("hello_blocking", vec!["4"]), ("hello_evmpm", vec![])] {
        let server = Server::start_with_env(
            name,
            "listening on 127.0.0.1:",
            &[("HELLO_SLOW_MS", &SLOW_MS.to_string())],
            |port| {
                let mut v = vec![port.to_string()];
                v.extend(args.iter().map(|a| a.to_string()));
                v
            },
        );
        let mut c = server.conn();
        for _ in 0..3 {
            let started = Instant::now();
            c.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
            c.expect(&ok);
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(SLOW_MS),
                "{name} answered /slow after {took:?}, before its {SLOW_MS} ms sleep"
            );
            // The connection stays usable, for ordinary requests too.
            c.send(GET);
            c.expect(&ok);
        }
        server.terminate();
    }
}

/// What the conversion buys: with 2 workers, 10 idle keep-alive clients and
/// 5 clients that sent half a request do not lock out another (the blocking
/// server would serve nobody new).
#[test]
fn hello_evmpm_idle_and_slow_clients_hold_no_worker() {
    let server = start_hello("hello_evmpm", 2);
    let ok = hello_response("", true);
    let mut idle: Vec<Conn> = (0..10).map(|_| server.conn()).collect();
    for c in &mut idle {
        c.send(GET);
        c.expect(&ok);
    }
    let mut slow: Vec<Conn> = (0..5).map(|_| server.conn()).collect();
    for c in &mut slow {
        c.send(&GET[..20]);
    }
    let mut late = server.conn();
    late.send(GET);
    late.expect(&ok);
    // The others are still open, and served once they ask.
    for c in &mut slow {
        c.send(&GET[20..]);
        c.expect(&ok);
    }
    for c in &mut idle {
        c.send(GET);
        c.expect(&ok);
    }
    server.terminate();
}

// ---- the adoption diff --------------------------------------------------------

/// Lines of `b` not in a longest common subsequence with `a`: what a line
/// diff from a to b shows as added.
fn lcs_added(a: &[&str], b: &[&str]) -> usize {
    let (n, m) = (a.len(), b.len());
    let mut len = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            len[i][j] = if a[i] == b[j] {
                len[i + 1][j + 1] + 1
            } else {
                len[i + 1][j].max(len[i][j + 1])
            };
        }
    }
    m - len[0][0] as usize
}

#[test]
fn hello_adoption_costs_at_most_30_lines() {
    let dir = support::repo().join("examples-c");
    let before = fs::read_to_string(dir.join("hello_blocking.c")).expect("hello_blocking.c");
    let after = fs::read_to_string(dir.join("hello_evmpm.c")).expect("hello_evmpm.c");
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let added = lcs_added(&a, &b);
    eprintln!("adoption diff (LCS): {added} added lines");
    assert!(
        added <= 30,
        "hello_evmpm.c adds {added} lines to hello_blocking.c"
    );

    // The request code is shared verbatim: that is the point of the pair.
    let function = |src: &str| {
        let start = src
            .find("static enum next serve_one_request(")
            .expect("serve_one_request");
        let end = start + src[start..].find("\n}\n").expect("end of function");
        src[start..end].to_string()
    };
    assert_eq!(
        function(&before),
        function(&after),
        "serve_one_request differs"
    );

    // `diff` is the measure the README quotes; its heuristics may count a
    // little more than the minimal LCS above.
    match std::process::Command::new("diff")
        .arg(dir.join("hello_blocking.c"))
        .arg(dir.join("hello_evmpm.c"))
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let n = text.lines().filter(|l| l.starts_with('>')).count();
            eprintln!("adoption diff (diff): {n} added lines");
            assert!(n <= 30, "`diff` shows {n} added lines");
        }
        Err(e) => eprintln!("`diff` not available ({e}): checked with the LCS count only"),
    }
}

// ---- the file server ------------------------------------------------------------

const SECRET: &str = "TOP SECRET: outside the document root\n";

/// A fresh directory under the cargo target dir, for test `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("examples")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Deterministic, incompressible-looking bytes.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A docroot with a secret file next to it (and links that lead to it).
fn docroot(name: &str) -> PathBuf {
    let dir = scratch(name);
    let www = dir.join("www");
    fs::create_dir_all(www.join("sub")).unwrap();
    fs::create_dir_all(www.join("empty")).unwrap();
    fs::write(dir.join("secret.txt"), SECRET).unwrap();
    fs::write(www.join("index.html"), "<h1>index</h1>\n").unwrap();
    fs::write(www.join("a.txt"), "alpha\n").unwrap();
    fs::write(www.join("style.css"), "body { color: red }\n").unwrap();
    fs::write(www.join("data.json"), "{\"k\": 1}\n").unwrap();
    fs::write(www.join("noext"), [0u8, 1, 2, 255]).unwrap();
    fs::write(www.join("sub/index.html"), "<p>sub</p>\n").unwrap();
    fs::write(www.join(".hidden"), SECRET).unwrap();
    std::os::unix::fs::symlink("../secret.txt", www.join("link-out")).unwrap();
    std::os::unix::fs::symlink("..", www.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("a.txt", www.join("link-in.txt")).unwrap();
    std::os::unix::fs::symlink(".hidden", www.join("link-hidden")).unwrap();
    www
}

fn start_fileserver(root: &Path, workers: u32) -> Server {
    let root = root.to_string_lossy().into_owned();
    Server::start("fileserver", "fileserver: serving", move |port| {
        vec![port.to_string(), root.clone(), workers.to_string()]
    })
}

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";
const BINARY: &str = "application/octet-stream";

/// A 200 with exactly the headers the server sends, in order.
fn check_ok(r: &Response, content_type: &str, body: &[u8], keep: bool) {
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    let mut names = vec!["Date", "Server", "Content-Type", "Content-Length"];
    if !keep {
        names.push("Connection");
        assert_eq!(r.header("Connection"), Some("close"));
    }
    assert_eq!(r.names(), names, "{r:?}");
    let date = r.header("Date").unwrap();
    assert!(date.len() == 29 && date.ends_with(" GMT"), "Date {date:?}");
    assert_eq!(r.header("Server"), Some("evmpm-fileserver"));
    assert_eq!(r.header("Content-Type"), Some(content_type));
    assert_eq!(
        r.header("Content-Length"),
        Some(body.len().to_string().as_str())
    );
    if !r.body.is_empty() || body.is_empty() {
        assert!(r.body == body, "body {:?}", r.text());
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

#[test]
fn fileserver_serves_files() {
    let www = docroot("fileserver_serves_files");
    let server = start_fileserver(&www, 4);
    let mut c = server.conn();

    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    check_ok(&c.request(&get("/")), HTML, b"<h1>index</h1>\n", true);
    check_ok(
        &c.request(&get("/index.html?q=1")),
        HTML,
        b"<h1>index</h1>\n",
        true,
    );
    check_ok(
        &c.request(&get("/style.css")),
        CSS,
        b"body { color: red }\n",
        true,
    );
    check_ok(&c.request(&get("/data.json")), JSON, b"{\"k\": 1}\n", true);
    check_ok(&c.request(&get("/noext")), BINARY, &[0, 1, 2, 255], true);
    check_ok(&c.request(&get("/%61.txt")), TEXT, b"alpha\n", true);
    check_ok(&c.request(&get("/link-in.txt")), TEXT, b"alpha\n", true);
    check_ok(&c.request(&get("/sub/")), HTML, b"<p>sub</p>\n", true);

    // HEAD: the same head, no body (the next response starts right after).
    let r = c.request("HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.body.is_empty());
    check_ok(&r, TEXT, b"alpha\n", true);
    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);

    // A directory without its slash is redirected.
    let r = c.request(&get("/sub"));
    assert_eq!(r.status_line, "HTTP/1.1 301 Moved Permanently");
    assert_eq!(r.header("Location"), Some("/sub/"));

    // 404 and 405 keep the connection.
    for path in ["/nope", "/empty/", "/sub/nope.html"] {
        let r = c.request(&get(path));
        assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{path}");
        assert_eq!(r.text(), "404 Not Found\n");
        assert_eq!(r.header("Content-Type"), Some(TEXT));
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
        let r = c.request(&format!("{method} /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status_line, "HTTP/1.1 405 Method Not Allowed", "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);

    // Connection: close is honoured.
    let r = c.request("GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    check_ok(&r, TEXT, b"alpha\n", false);
    c.expect_eof();

    // Pipelined requests are answered in order.
    let mut c = server.conn();
    c.send(format!(
        "{}HEAD /style.css HTTP/1.1\r\nHost: x\r\n\r\n{}{}{}GET /data.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        get("/a.txt"),
        get("/nope"),
        get("/style.css"),
        get("/")
    ));
    check_ok(&c.response(false), TEXT, b"alpha\n", true);
    check_ok(&c.response(true), CSS, b"body { color: red }\n", true);
    assert_eq!(c.response(false).status(), 404);
    check_ok(&c.response(false), CSS, b"body { color: red }\n", true);
    check_ok(&c.response(false), HTML, b"<h1>index</h1>\n", true);
    check_ok(&c.response(false), JSON, b"{\"k\": 1}\n", false);
    c.expect_eof();

    // A request split anywhere, even inside its blank line, is still one
    // request; so is one whose start came with the previous request.
    let mut c = server.conn();
    let req = get("/a.txt");
    for cut in [1, 5, req.len() - 3, req.len() - 1] {
        c.send(&req[..cut]);
        c.expect_no_answer_yet();
        c.send(&req[cut..]);
        check_ok(&c.response(false), TEXT, b"alpha\n", true);
    }
    for cut in [3, req.len() - 2] {
        c.send(format!("{req}{}", &req[..cut]));
        check_ok(&c.response(false), TEXT, b"alpha\n", true);
        c.expect_no_answer_yet();
        c.send(&req[cut..]);
        check_ok(&c.response(false), TEXT, b"alpha\n", true);
    }

    // A client that sends its requests and then shuts down its side still
    // gets every answer.
    let mut c = server.conn();
    c.send(format!("{}{}", get("/a.txt"), get("/style.css")));
    c.s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    check_ok(&c.response(false), TEXT, b"alpha\n", true);
    check_ok(&c.response(false), CSS, b"body { color: red }\n", true);
    c.expect_eof();

    // HTTP/1.0: closes unless asked to keep alive.
    let mut c = server.conn();
    c.send("GET /a.txt HTTP/1.0\r\n\r\n");
    check_ok(&c.response(false), TEXT, b"alpha\n", false);
    c.expect_eof();
    let mut c = server.conn();
    let r = c.request("GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert_eq!(r.body, b"alpha\n");
    let r = c.request("GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.body, b"alpha\n");

    server.terminate();
}

/// Sends `req` on a new connection and returns the response, which must be
/// followed by the server closing.
fn one_shot(server: &Server, req: impl AsRef<[u8]>) -> Response {
    let mut c = server.conn();
    c.send(req);
    let r = c.response(false);
    assert_eq!(r.header("Connection"), Some("close"), "{r:?}");
    c.expect_eof();
    r
}

#[test]
fn fileserver_refuses_bad_requests() {
    let www = docroot("fileserver_refuses_bad_requests");
    let server = start_fileserver(&www, 2);
    let cases: &[(&[u8], u16)] = &[
        (b"garbage\r\n\r\n", 400),
        (b"garbage\n", 400), // a bad first line is refused at once
        (b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400), // no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/x.y\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET relative HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /% HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /%2 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%0d%0aX:%20y HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ];
    for (req, status) in cases {
        let r = one_shot(&server, req);
        assert_eq!(
            r.status(),
            *status,
            "{:?}: {r:?}",
            String::from_utf8_lossy(req)
        );
    }

    // 414: a long target, and a request line longer than the whole buffer.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
    assert_eq!(one_shot(&server, long).status(), 414);
    let huge = format!("GET /{}", "a".repeat(20000));
    assert_eq!(one_shot(&server, huge).status(), 414);

    // 431: too many header bytes, and too many header lines.
    let mut big = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        big.push_str(&format!("X-Filler-{i}: {}\r\n", "b".repeat(100)));
    }
    big.push_str("\r\n");
    assert_eq!(one_shot(&server, &big).status(), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(one_shot(&server, &many).status(), 431);

    // A request with a body is answered, then the connection closed.
    let r = one_shot(
        &server,
        "GET /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.body, b"alpha\n");

    // Still serving.
    check_ok(
        &server.conn().request(&get("/a.txt")),
        TEXT,
        b"alpha\n",
        true,
    );
    server.terminate();
}

#[test]
fn fileserver_stays_inside_the_root() {
    let www = docroot("fileserver_stays_inside_the_root");
    assert!(www.parent().unwrap().join("secret.txt").exists());
    let server = start_fileserver(&www, 2);
    let attacks: &[(&str, Option<u16>)] = &[
        ("/../secret.txt", Some(400)),
        ("/%2e%2e/secret.txt", Some(400)),
        ("/%2E%2E/secret.txt", Some(400)),
        ("/.%2e/secret.txt", Some(400)),
        ("/..%2fsecret.txt", Some(400)),
        ("/..%2Fsecret.txt", Some(400)),
        ("/%2e%2e%2fsecret.txt", Some(400)),
        ("/sub/../../secret.txt", Some(400)),
        ("/sub/%2e%2e/%2e%2e/secret.txt", Some(400)),
        ("//../secret.txt", Some(400)),
        ("/..", Some(400)),
        ("/sub/..", Some(400)),
        ("/a.txt%00", Some(400)),
        ("/a.txt%00.html", Some(400)),
        ("/%00", Some(400)),
        ("/%252e%252e/secret.txt", Some(404)), // decoded once: a name with '%'
        ("/..%5csecret.txt", None),
        ("/..\\secret.txt", None),
        ("/link-out", Some(404)),            // a symlink leading out
        ("/dir-link/secret.txt", Some(404)), // a directory link leading out
        ("/.hidden", Some(404)),
        ("/link-hidden", Some(404)), // a symlink to a hidden name inside
        ("/%2ehidden", Some(404)),
        ("http://127.0.0.1/../secret.txt", Some(400)),
        ("http://127.0.0.1/%2e%2e/secret.txt", Some(400)),
        ("http://evil/..%2f..%2fsecret.txt", Some(400)),
        ("http://127.0.0.1..%2f/secret.txt", Some(404)),
        ("HTTP://x/dir-link/secret.txt", Some(404)),
        ("http:/../secret.txt", Some(400)),
        ("http:%2f%2f127.0.0.1/../secret.txt", Some(400)),
        ("*", Some(400)),
        ("../secret.txt", Some(400)),
        ("secret.txt", Some(400)),
    ];
    for (target, status) in attacks {
        let mut c = server.conn();
        c.send(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
        let r = c.response(false);
        assert!(
            !r.text().contains("TOP SECRET"),
            "{target} leaked the secret: {r:?}"
        );
        assert!(matches!(r.status(), 400 | 403 | 404), "{target}: {r:?}");
        if let Some(s) = status {
            assert_eq!(r.status(), *s, "{target}: {r:?}");
        }
    }
    // The absolute form itself works, for files inside.
    let r = server
        .conn()
        .request("GET http://127.0.0.1:1/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    check_ok(&r, TEXT, b"alpha\n", true);
    let r = server
        .conn()
        .request("GET http://127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    check_ok(&r, HTML, b"<h1>index</h1>\n", true);
    server.terminate();
}

/// The value of "Name: value" in a status page.
fn stat(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in status page:\n{page}"))
}

fn status_page(server: &Server) -> String {
    let mut c = server.conn();
    let r = c.request(&get("/server-status"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Content-Type"), Some(TEXT));
    r.text()
}

#[test]
fn fileserver_large_file_to_a_slow_reader() {
    let www = docroot("fileserver_large_file_to_a_slow_reader");
    // Bigger than what the socket buffers can hold, so the write is still
    // going while the reader dawdles.
    let wmem_max: usize = fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let size = (12 << 20).max(2 * wmem_max + (4 << 20)).min(256 << 20);
    let data = pseudo_random(size);
    fs::write(www.join("big.bin"), &data).unwrap();
    // One worker: if the body were written by the worker, nothing else
    // could be served while the reader is slow.
    let server = start_fileserver(&www, 1);

    // A client that sent half a request waits on the event thread, so it
    // does not hold the only worker either.
    let mut slow = server.conn();
    slow.send("GET /a.txt HTTP/1.1\r\nHo");

    let mut c = Conn::with_small_rcvbuf(server.port, 64 * 1024);
    c.send(get("/big.bin"));
    let head = String::from_utf8(c.read_through(b"\r\n\r\n")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {size}\r\n")),
        "{head}"
    );
    assert!(
        head.contains("\r\nContent-Type: application/octet-stream\r\n"),
        "{head}"
    );
    let mut got = c.read_exact_n(64 * 1024);

    // The only worker is free, and the runtime is writing for us.
    let mut page = String::new();
    wait_for("the write to show in /server-status", limit(10), || {
        page = status_page(&server);
        stat(&page, "ConnsWriting") >= 1
    });
    assert!(stat(&page, "OffloadedWrites") >= 1, "{page}");

    // Read the rest slowly at first, then at full speed.
    let mut chunk = vec![0u8; 16 * 1024];
    while got.len() < size {
        if !c.buf.is_empty() {
            got.append(&mut c.buf);
            continue;
        }
        let n = c.s.read(&mut chunk).expect("read body");
        assert!(
            n > 0,
            "connection ended after {} of {size} bytes",
            got.len()
        );
        got.extend_from_slice(&chunk[..n]);
        if got.len() < 2 << 20 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(got.len(), size);
    assert!(got == data, "the body differs from the file");

    // The connection is parked for the next request once the write is done.
    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    // HEAD of the big file: its length, no body.
    let r = c.request("HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.header("Content-Length"), Some(size.to_string().as_str()));
    // Pipelined behind a big response, a small one still comes in order.
    c.send(format!("{}{}", get("/big.bin"), get("/a.txt")));
    let r = c.response(false);
    assert!(r.body == data, "pipelined big body differs");
    check_ok(&c.response(false), TEXT, b"alpha\n", true);

    slow.send("st: x\r\n\r\n");
    check_ok(&slow.response(false), TEXT, b"alpha\n", true);
    server.terminate();
}

#[test]
fn fileserver_status_page_and_sigusr1() {
    let www = docroot("fileserver_status_page_and_sigusr1");
    let server = start_fileserver(&www, 3);
    let first = status_page(&server);
    for key in [
        "Uptime",
        "Connections",
        "ConnsReading",
        "ConnsQueued",
        "ConnsInHandler",
        "ConnsWriting",
        "ConnsKeepAlive",
        "ConnsLingering",
        "ConnsSuspended",
        "IdleWorkers",
        "Closed",
        "TimedOut",
        "KeepAliveExpired",
        "Shed",
        "Refused",
        "Rejected",
        "AcceptPauses",
        "AcceptBackoffs",
        "AcceptingPaused",
    ] {
        stat(&first, key);
    }
    // The page is made by a handler, on a worker that is busy doing it.
    assert!(stat(&first, "BusyWorkers") >= 1, "{first}");
    assert_eq!(
        stat(&first, "BusyWorkers") + stat(&first, "IdleWorkers"),
        3,
        "{first}"
    );

    // Counters move: a new connection and a request later.
    let mut idle = server.conn();
    check_ok(&idle.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    let mut second = String::new();
    wait_for(
        "the idle connection to show as keep-alive",
        limit(10),
        || {
            second = status_page(&server);
            stat(&second, "ConnsKeepAlive") >= 1
        },
    );
    assert!(
        stat(&second, "Accepted") >= stat(&first, "Accepted") + 2,
        "{first}\n{second}"
    );
    assert!(
        stat(&second, "Requests") >= stat(&first, "Requests") + 2,
        "{first}\n{second}"
    );

    // HEAD of the status page: no body.
    let r = server
        .conn()
        .request("HEAD /server-status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status(), 200);
    assert!(r.body.is_empty());

    // SIGUSR1 prints the counters on stderr.
    let before = server.log_text().matches("\nAccepted: ").count();
    server.signal(libc::SIGUSR1);
    wait_for("the SIGUSR1 report", limit(10), || {
        server.log_text().matches("\nAccepted: ").count() > before
    });
    server.terminate();
    idle.expect_eof();
}

#[test]
fn fileserver_serves_the_shipped_docroot() {
    let www = support::repo().join("examples-c/www");
    let server = start_fileserver(&www, 2);
    let mut c = server.conn();
    let index = fs::read(www.join("index.html")).unwrap();
    check_ok(&c.request(&get("/")), HTML, &index, true);
    let css = fs::read(www.join("style.css")).unwrap();
    check_ok(&c.request(&get("/style.css")), CSS, &css, true);
    let text = String::from_utf8_lossy(&index);
    assert!(
        text.contains("/server-status"),
        "index.html should point at the status page"
    );
    server.terminate();
}

// ---- the file server over HTTPS ---------------------------------------------------

/// A self-signed certificate and key for 127.0.0.1, made now with the
/// openssl command; None (the test says it is skipped) where the file
/// server could not be built with OpenSSL or the command is missing,
/// unless `EVMPM_REQUIRE_TLS=1` (CI) makes that a failure.
fn tls_files(test: &str) -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("EVMPM_REQUIRE_TLS").is_some_and(|v| v == "1");
    if !support::openssl_present() {
        assert!(!required, "{test}: OpenSSL 3 is missing (libssl-dev)");
        eprintln!("skipped: {test}: OpenSSL 3's headers or libraries are missing (libssl-dev)");
        return None;
    }
    let dir = scratch(&format!("{test}-tls"));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match made {
        Ok(s) if s.success() => Some((cert, key)),
        _ => {
            assert!(
                !required,
                "{test}: the openssl command cannot make a certificate"
            );
            eprintln!("skipped: {test}: the openssl command cannot make a certificate");
            None
        }
    }
}

/// The file server over HTTPS on `root`, with these environment variables.
fn start_tls_fileserver(
    root: &Path,
    workers: u32,
    (cert, key): &(PathBuf, PathBuf),
    env: &[(&str, &str)],
) -> Server {
    let args = [cert, key, root].map(|p| p.to_string_lossy().into_owned());
    Server::start_with_env("fileserver", "fileserver: serving", env, move |port| {
        vec![
            "--tls".into(),
            args[0].clone(),
            args[1].clone(),
            port.to_string(),
            args[2].clone(),
            workers.to_string(),
        ]
    })
}

/// An HTTPS client: `openssl s_client` does TLS, and this test talks plain
/// HTTP to it over a loopback TCP pair, so `Conn` reads the responses as
/// it does for plain HTTP. s_client stops reading the server when this
/// side stops reading it: a slow reader here is a slow TLS reader there.
struct Tls {
    conn: Conn,
    child: Child,
}

impl Tls {
    fn connect(port: u16) -> Tls {
        let relay = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let ours = TcpStream::connect(relay.local_addr().expect("relay addr")).expect("connect");
        let (theirs, _) = relay.accept().expect("accept relay");
        let child = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                theirs.try_clone().expect("dup relay"),
            )))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        Tls {
            conn: Conn::wrap(ours),
            child,
        }
    }
}

impl std::ops::Deref for Tls {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Tls {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_status_page(server: &Server) -> String {
    let mut c = Tls::connect(server.port);
    let r = c.request("GET /server-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status(), 200);
    r.text()
}

/// Lets this process and its children (the server) open more descriptors,
/// up to the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a live rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Built without OpenSSL (as where its headers are missing), the file
/// server says `--tls` is not available, and serves plain HTTP as ever.
#[test]
fn fileserver_without_openssl_refuses_tls() {
    let exe = support::build_c("fileserver-no-tls", &["examples-c/fileserver.c"], &[]);
    let out = support::command(&exe)
        .args(["--tls", "cert.pem", "key.pem", "8443", "."])
        .output()
        .expect("run the file server");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--tls is not available"), "{text}");
}

#[test]
fn fileserver_https_requests_keepalive_pipelining_close() {
    let Some(tls) = tls_files("fileserver_https_requests") else {
        return;
    };
    let www = docroot("fileserver_https_requests");
    let server = start_tls_fileserver(&www, 4, &tls, &[]);
    let mut c = Tls::connect(server.port);
    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    let index = fs::read(www.join("index.html")).unwrap();
    check_ok(&c.request(&get("/")), HTML, &index, true);
    // HEAD: the head only, on the same connection.
    let r = c.request("HEAD /style.css HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Content-Length"), Some("20"));
    assert_eq!(c.request(&get("/missing")).status(), 404);
    // Pipelined: 50 requests in one write, answered in order; those after
    // the first are already read (or decrypted) when the one before is
    // answered, so the connection parks buffered between them.
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&get(if i % 2 == 0 { "/a.txt" } else { "/data.json" }));
    }
    c.send(&batch);
    for i in 0..50 {
        let r = c.response(false);
        if i % 2 == 0 {
            check_ok(&r, TEXT, b"alpha\n", true);
        } else {
            check_ok(&r, JSON, b"{\"k\": 1}\n", true);
        }
    }
    // Connection: close: the answer, then the end.
    let r = c.request("GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    check_ok(&r, TEXT, b"alpha\n", false);
    c.expect_eof();
    // All of that was one handshake (the status page is the second). The
    // one failure is `Server::start`'s probe, which connects and closes.
    let page = tls_status_page(&server);
    assert_eq!(stat(&page, "Handshakes"), 2, "{page}");
    assert_eq!(stat(&page, "HandshakesFailed"), 1, "{page}");
    // The status request counts itself once answered.
    assert_eq!(stat(&page, "Requests"), 55, "{page}");
    server.terminate();
}

#[test]
fn fileserver_https_large_file_to_a_slow_reader() {
    let Some(tls) = tls_files("fileserver_https_large_file") else {
        return;
    };
    let www = docroot("fileserver_https_large_file");
    let size = 10 << 20;
    let data = pseudo_random(size);
    fs::write(www.join("big.bin"), &data).unwrap();
    let server = start_tls_fileserver(&www, 4, &tls, &[]);
    let mut c = Tls::connect(server.port);
    c.send(get("/big.bin"));
    let head = String::from_utf8(c.read_through(b"\r\n\r\n")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {size}\r\n")),
        "{head}"
    );
    let mut got = c.read_exact_n(64 * 1024);
    // The runtime sends the ciphertext; once the reader stalls it, no
    // worker waits for this reader (the one busy worker is the one
    // answering the status request). A worker encrypts the next megabyte
    // for a moment after each is sent.
    wait_for("a stalled write and no busy worker", limit(10), || {
        let page = tls_status_page(&server);
        stat(&page, "ConnsWriting") >= 1 && stat(&page, "BusyWorkers") == 1
    });
    let mut chunk = vec![0u8; 16 * 1024];
    while got.len() < size {
        if !c.buf.is_empty() {
            got.append(&mut c.buf);
            continue;
        }
        let n = c.s.read(&mut chunk).expect("read body");
        assert!(
            n > 0,
            "connection ended after {} of {size} bytes",
            got.len()
        );
        got.extend_from_slice(&chunk[..n]);
        if got.len() < 1 << 20 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(got == data, "the body differs from the file");
    // Kept alive after the body; a pipelined pair behind a big body too.
    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    c.send(format!("{}{}", get("/big.bin"), get("/a.txt")));
    assert!(c.response(false).body == data, "pipelined big body differs");
    check_ok(&c.response(false), TEXT, b"alpha\n", true);
    // Connection: close after a big body: all of it, then the end.
    c.send("GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(c.response(false).body == data, "last big body differs");
    c.expect_eof();
    server.terminate();
}

/// A TLS record header and the start of a ClientHello: what a client
/// that sends its hello slowly has sent so far (OpenSSL waits for the
/// whole 512-byte record before it looks inside).
const HELLO_START: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x11, 0x22, 0x33, 0x44, 0x55,
    0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];

#[test]
fn fileserver_https_slow_and_silent_handshakes_hold_no_worker() {
    let Some(tls) = tls_files("fileserver_https_slow_handshakes") else {
        return;
    };
    // 200 clients send their hello a byte a second and 500 send nothing,
    // for an 8 s header timeout (the server's default is 10 s); four
    // workers. An ordinary HTTPS client is answered throughout.
    const SLOW: usize = 200;
    const SILENT: usize = 500;
    let header_ms = 8000 * u64::from(support::slowdown());
    raise_fd_limit();
    let www = docroot("fileserver_https_slow_handshakes");
    let header = header_ms.to_string();
    let server = start_tls_fileserver(
        &www,
        4,
        &tls,
        &[("FILESERVER_HEADER_TIMEOUT_MS", header.as_str())],
    );
    let started = Instant::now();
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        s.set_nonblocking(true).expect("nonblocking");
        s
    };
    let mut slow: Vec<Option<TcpStream>> = (0..SLOW).map(|_| Some(connect())).collect();
    let mut silent: Vec<Option<TcpStream>> = (0..SILENT).map(|_| Some(connect())).collect();
    let mut sent = 0;
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    let mut next_byte = Instant::now();
    let deadline = started + Duration::from_millis(header_ms) + limit(15);
    // Until every one of them has been closed by the server.
    loop {
        if Instant::now() >= next_byte && sent < HELLO_START.len() {
            for s in slow.iter_mut().flatten() {
                let _ = s.write(&HELLO_START[sent..sent + 1]);
            }
            sent += 1;
            next_byte += Duration::from_secs(1);
        }
        // An ordinary client: a new handshake and a request, timed.
        let t = Instant::now();
        let mut c = Tls::connect(server.port);
        let r = c.request("GET /server-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let took = t.elapsed();
        worst = worst.max(took);
        probes += 1;
        let page = r.text();
        assert_eq!(stat(&page, "BusyWorkers"), 1, "{page}");
        drop(c);
        // Who has been closed? (A closed one reads its end, or a reset.)
        let mut open = 0;
        for group in [&mut slow, &mut silent] {
            for entry in group.iter_mut() {
                let Some(s) = entry else { continue };
                let mut byte = [0u8; 64];
                match s.read(&mut byte) {
                    Ok(0) => *entry = None,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
                    Err(_) => *entry = None,
                    Ok(n) => panic!("a stalled handshake got {n} bytes"),
                }
            }
        }
        if open == 0 {
            break;
        }
        let elapsed = started.elapsed();
        if elapsed < Duration::from_millis(header_ms).saturating_sub(limit(2)) {
            assert_eq!(open, SLOW + SILENT, "closed before the header timeout");
        }
        assert!(
            Instant::now() < deadline,
            "{open} still open at the deadline"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(header_ms), "{elapsed:?}");
    eprintln!(
        "figure: {SLOW} slow + {SILENT} silent handshakes closed after {} ms \
         (header timeout {header_ms} ms); {probes} HTTPS probes, slowest {} ms \
         (handshake, request and an openssl process start)",
        elapsed.as_millis(),
        worst.as_millis()
    );
    assert!(worst < limit(1), "a probe took {worst:?}");
    let page = tls_status_page(&server);
    assert!(stat(&page, "TimedOut") >= (SLOW + SILENT) as u64, "{page}");
    // Only `Server::start`'s probe, which connects and closes, failed.
    assert_eq!(stat(&page, "HandshakesFailed"), 1, "{page}");
    assert_eq!(stat(&page, "ConnsHandshake"), 0, "{page}");
    // Every connection but this status request's is closed, once each
    // (a second close callback would free a record twice: the sanitizer
    // runs of this test catch that).
    wait_for("every connection closed", limit(10), || {
        let page = tls_status_page(&server);
        stat(&page, "Closed") + 1 >= stat(&page, "Accepted")
    });
    server.terminate();
}

#[test]
fn fileserver_https_handshake_failures_close_and_count() {
    let Some(tls) = tls_files("fileserver_https_failures") else {
        return;
    };
    let www = docroot("fileserver_https_failures");
    let server = start_tls_fileserver(&www, 2, &tls, &[]);
    // Plain HTTP to the TLS port: closed (after a TLS alert, at most).
    let mut plain = server.conn();
    plain.send(get("/a.txt"));
    while plain.fill() {}
    assert!(
        !String::from_utf8_lossy(&plain.buf).contains("HTTP/1.1"),
        "answered plain HTTP"
    );
    // Garbage.
    let mut junk = server.conn();
    junk.send(pseudo_random(300));
    while junk.fill() {}
    // A reset in the middle of the hello.
    let mut reset = server.conn();
    reset.send(HELLO_START);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&reset.s);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a live linger struct.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    // The server has the hello's start before the reset.
    std::thread::sleep(Duration::from_millis(100));
    drop(reset);
    // A half close in the middle of the hello.
    let mut half = server.conn();
    half.send(HELLO_START);
    half.s.shutdown(std::net::Shutdown::Write).unwrap();
    while half.fill() {}
    let mut page = String::new();
    // These four, and `Server::start`'s probe, which connects and closes.
    wait_for("5 failed handshakes", limit(10), || {
        page = tls_status_page(&server);
        stat(&page, "HandshakesFailed") == 5
    });
    // None served (the status request counts itself once answered).
    assert_eq!(stat(&page, "Requests"), 0, "{page}");
    // The server still serves.
    let mut c = Tls::connect(server.port);
    check_ok(&c.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    drop(c);
    // Exit status 0, and under the sanitizers or valgrind no leak: each
    // failed handshake's SSL object was freed by its close callback.
    server.terminate();
}

#[test]
fn fileserver_https_graceful_stop_loses_no_request() {
    let Some(tls) = tls_files("fileserver_https_stop") else {
        return;
    };
    let www = docroot("fileserver_https_stop");
    let size = 4 << 20;
    let data = pseudo_random(size);
    fs::write(www.join("big.bin"), &data).unwrap();
    let server = start_tls_fileserver(&www, 4, &tls, &[]);
    // Clients with a big response under way (read slowly), one with a
    // small request in flight, and handshakes not finished.
    let mut big: Vec<Tls> = (0..6).map(|_| Tls::connect(server.port)).collect();
    for c in big.iter_mut() {
        c.send(get("/big.bin"));
        let head = String::from_utf8(c.read_through(b"\r\n\r\n")).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    }
    let mut idle = Tls::connect(server.port);
    check_ok(&idle.request(&get("/a.txt")), TEXT, b"alpha\n", true);
    let mut pending: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    for s in pending.iter_mut() {
        s.write_all(&HELLO_START[..5]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    // Every response under way arrives whole; then each connection ends.
    for c in big.iter_mut() {
        let body = c.read_exact_n(size);
        assert!(body == data, "a body cut by the stop");
        c.expect_eof();
    }
    idle.expect_eof();
    for s in pending.iter_mut() {
        s.set_read_timeout(Some(limit(10))).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("a pending handshake got {n} bytes at the stop"),
        }
    }
    let mut server = server;
    let mut child = server.child.take().expect("running");
    let status = support::wait_with_deadline(&mut child, limit(15));
    let text = server.log_text();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
    assert!(!text.contains("closed at the deadline"), "{text}");
}

// ---- the key-value store ------------------------------------------------------

fn start_kvstore() -> Server {
    Server::start("kvstore", "kvstore: listening on", |port| {
        vec![port.to_string(), "3".to_string()]
    })
}

#[test]
fn kvstore_commands_and_pipelining() {
    let server = start_kvstore();
    let mut c = server.conn();
    fn ask(c: &mut Conn, line: &str, want: &str) {
        c.send(line);
        assert_eq!(c.line(), want, "reply to {line:?}");
    }
    ask(&mut c, "GET k\n", "NOT_FOUND\n");
    ask(&mut c, "SET k v1\n", "OK\n");
    ask(&mut c, "GET k\n", "VALUE v1\n");
    ask(&mut c, "SET k hello world  with spaces\r\n", "OK\n");
    ask(&mut c, "get k\r\n", "VALUE hello world  with spaces\n");
    ask(&mut c, "SET empty \n", "OK\n");
    ask(&mut c, "GET empty\n", "VALUE \n");
    ask(&mut c, "DEL k\n", "DELETED\n");
    ask(&mut c, "DEL k\n", "NOT_FOUND\n");
    ask(&mut c, "GET k\n", "NOT_FOUND\n");
    ask(&mut c, "BOGUS\n", "ERR unknown command\n");
    ask(&mut c, "\n", "ERR unknown command\n");
    ask(&mut c, "GET\n", "ERR missing key\n");
    ask(&mut c, "SET k\n", "ERR usage: SET key value\n");
    ask(&mut c, "GET a b\n", "ERR one key only\n");
    ask(
        &mut c,
        &format!("GET {}\n", "k".repeat(251)),
        "ERR key too long\n",
    );

    // Another connection sees the same store.
    let mut other = server.conn();
    ask(&mut other, "GET empty\n", "VALUE \n");

    // Pipelined: many commands in one write, replies in order.
    let mut batch = String::new();
    let mut want = String::new();
    for i in 0..200 {
        batch.push_str(&format!("SET key{i} value{i}\nGET key{i}\n"));
        want.push_str(&format!("OK\nVALUE value{i}\n"));
    }
    for i in (0..200).step_by(2) {
        batch.push_str(&format!("DEL key{i}\n"));
        want.push_str("DELETED\n");
    }
    c.send(&batch);
    c.expect(want.as_bytes());

    // Lines split across writes, with a pipelined line's start buffered.
    c.send("SET split ab");
    c.send("cd\nGET spl");
    assert_eq!(c.line(), "OK\n");
    c.send("it\n");
    assert_eq!(c.line(), "VALUE abcd\n");

    // QUIT: BYE, then the server closes.
    c.send("GET key1\nQUIT\nGET key1\n");
    c.expect(b"VALUE value1\nBYE\n");
    c.expect_eof();

    // A line too long for the buffer: refused, then closed.
    let mut c = server.conn();
    c.send(format!("SET big {}\n", "x".repeat(10000)));
    c.expect(b"ERR line too long\n");
    c.expect_eof();

    // SIGTERM with an idle client connected.
    ask(&mut other, "GET key1\n", "VALUE value1\n");
    server.terminate();
    other.expect_eof();
}

// ---- the chat server ------------------------------------------------------------

fn start_chat(workers: u32) -> Server {
    Server::start("chat", "chat: listening on", move |port| {
        vec![port.to_string(), workers.to_string()]
    })
}

/// Connects and reads the greeting, which comes before the client has sent
/// anything; returns the connection and the name it was given.
fn chat_join(server: &Server) -> (Conn, String) {
    let mut c = server.conn();
    let hello = c.line();
    let name = hello
        .strip_prefix("welcome, you are user")
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|n| n.parse::<u32>().is_ok())
        .unwrap_or_else(|| panic!("greeting {hello:?}"));
    (c, format!("user{name}"))
}

/// The members `/who` lists, in its order.
fn chat_who(c: &mut Conn) -> Vec<String> {
    c.send("/who\n");
    let line = c.line();
    line.strip_prefix("members:")
        .and_then(|s| s.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("/who answered {line:?}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Asks `/who` until it lists exactly `names`: a member the test let go
/// (the start-up probe's, one that disconnected) leaves once the server
/// has seen its connection end.
fn chat_wait_who(c: &mut Conn, names: &[&str]) {
    let deadline = Instant::now() + limit(10);
    loop {
        let got = chat_who(c);
        if got == names {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/who lists {got:?}, want {names:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM: the server exits 0 within 5 s, and said nothing on stderr but
/// its start and stop lines.
fn chat_stop(server: Server, workers: u32) {
    let port = server.port;
    let started = Instant::now();
    let log = server.terminate();
    let took = started.elapsed();
    assert!(took < limit(5), "the chat took {took:?} to stop");
    assert_eq!(
        log,
        format!(
            "chat: listening on 127.0.0.1:{port} with {workers} workers\n\
             chat: stopped by signal {}\n",
            libc::SIGTERM
        )
    );
}

#[test]
fn chat_members_talk_and_use_commands() {
    let server = start_chat(4);
    let (mut a, an) = chat_join(&server);
    let (mut b, bn) = chat_join(&server);
    // `idle` sends nothing until it is kicked: it only hears.
    let (mut idle, idle_name) = chat_join(&server);
    assert!(an != bn && bn != idle_name && an != idle_name);
    chat_wait_who(&mut a, &[&an, &bn, &idle_name]);

    // A line reaches exactly the two others, in order.
    for i in 0..5 {
        a.send(format!("hello {i}\n"));
    }
    for c in [&mut b, &mut idle] {
        for i in 0..5 {
            assert_eq!(c.line(), format!("{an}: hello {i}\n"));
        }
    }
    // a did not hear itself: the next line it reads is b's (CRLF works too).
    b.send("hi from b\r\n");
    assert_eq!(a.line(), format!("{bn}: hi from b\n"));
    assert_eq!(idle.line(), format!("{bn}: hi from b\n"));
    // A line sent in pieces goes out once whole; b did not hear itself.
    a.send("split ");
    b.expect_no_answer_yet();
    a.send("line\n");
    assert_eq!(b.line(), format!("{an}: split line\n"));
    assert_eq!(idle.line(), format!("{an}: split line\n"));

    // /nick
    a.send("/nick alice\n");
    assert_eq!(a.line(), "you are alice\n");
    a.send("/nick alice\n");
    assert_eq!(a.line(), "you are alice\n", "one's own name again");
    b.send("/nick alice\n");
    assert_eq!(b.line(), "name taken\n");
    b.send("/nick two words\n");
    assert_eq!(b.line(), "bad name\n");
    b.send(format!("/nick {}\n", "x".repeat(33)));
    assert_eq!(b.line(), "bad name\n");
    b.send("/nick \n");
    assert_eq!(b.line(), "bad name\n");
    a.send("now I am alice\n");
    assert_eq!(b.line(), "alice: now I am alice\n");
    assert_eq!(idle.line(), "alice: now I am alice\n");
    assert_eq!(chat_who(&mut b), ["alice", &bn, &idle_name]);

    // An empty line is ignored; an unknown command is answered.
    b.send("\n/bogus\n");
    assert_eq!(b.line(), "unknown command\n");

    // /kick: the member is told, closed, and gone from /who.
    a.send(format!("/kick {idle_name}\n"));
    assert_eq!(a.line(), format!("you kicked {idle_name}\n"));
    idle.expect(b"kicked\n");
    idle.expect_eof();
    assert_eq!(chat_who(&mut a), ["alice", &bn]);
    a.send("/kick nobody\n");
    assert_eq!(a.line(), "no such member: nobody\n");

    // A newcomer's userN skips a name someone took with /nick.
    let next = |name: &str| name[4..].parse::<u32>().unwrap() + 1;
    let taken = format!("user{}", next(&idle_name));
    b.send(format!("/nick {taken}\n"));
    assert_eq!(b.line(), format!("you are {taken}\n"));
    let (mut d, dn) = chat_join(&server);
    assert_eq!(dn, format!("user{}", next(&taken)));
    assert_eq!(chat_who(&mut d), ["alice", &taken, &dn]);
    // Kicking oneself works as kicking anyone.
    d.send(format!("/kick {dn}\n"));
    assert_eq!(d.line(), format!("you kicked {dn}\n"));
    d.expect(b"kicked\n");
    d.expect_eof();

    // /quit
    b.send("/quit\nnot sent\n");
    b.expect(b"bye\n");
    b.expect_eof();
    assert_eq!(chat_who(&mut a), ["alice"]);

    // A line longer than the server's buffer: refused, then closed.
    let (mut e, _) = chat_join(&server);
    e.send("y".repeat(600));
    e.expect(b"line too long\n");
    e.expect_eof();

    // Stop with a member connected: it is closed too.
    chat_stop(server, 4);
    a.expect_eof();
}

/// Closes `c` with a reset (SO_LINGER 0): a client that vanishes.
fn reset(c: Conn) {
    let off = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the stream's own open descriptor, with a
    // linger value that lives through the call.
    let rc = unsafe {
        libc::setsockopt(
            c.s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&off as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(c);
}

#[test]
fn chat_fifty_members_hear_every_line() {
    const MEMBERS: usize = 50;
    const LINES: usize = 5;
    let server = start_chat(4);
    let mut members: Vec<(Conn, String)> = (0..MEMBERS).map(|_| chat_join(&server)).collect();

    // Every member sends its lines, interleaved with the others'.
    for i in 0..LINES {
        for (c, name) in &mut members {
            c.send(format!("line {i} of {name}\n"));
        }
    }
    // Each hears every other member's lines, in that member's order, and
    // none of its own: (50 - 1) × 5 lines.
    for (c, me) in &mut members {
        let mut heard: HashMap<String, Vec<usize>> = HashMap::new();
        for _ in 0..(MEMBERS - 1) * LINES {
            let line = c.line();
            let (from, text) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("{me} got {line:?}"));
            let i = text
                .strip_prefix("line ")
                .and_then(|t| t.strip_suffix(&format!(" of {from}\n")))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{me} got {line:?}"));
            heard.entry(from.to_string()).or_default().push(i);
        }
        assert!(!heard.contains_key(me.as_str()), "{me} heard itself");
        assert_eq!(heard.len(), MEMBERS - 1, "{me} heard {heard:?}");
        for (from, got) in &heard {
            assert_eq!(got, &(0..LINES).collect::<Vec<_>>(), "{me} from {from}");
        }
        c.expect_no_answer_yet();
    }

    // Two leave without a word, one with a reset: both are removed.
    let (gone_a, _) = members.remove(0);
    let (gone_b, _) = members.remove(0);
    reset(gone_a);
    drop(gone_b);
    let names: Vec<String> = members.iter().map(|(_, n)| n.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    chat_wait_who(&mut members[0].0, &names);
    // and the rest still hear each other.
    let (first, rest) = members.split_first_mut().unwrap();
    first.0.send("after the leavers\n");
    for (c, _) in rest {
        assert_eq!(c.line(), format!("{}: after the leavers\n", first.1));
    }

    chat_stop(server, 4);
    for (c, _) in &mut members {
        c.expect_eof();
    }
}

/// A member silent for longer than evmpm's default keep-alive timeout (5 s)
/// is still there, and still hears the others: the chat keeps idle members
/// for good (EVMPM_TIMEOUT_NONE). The wait is the point of the test.
#[test]
fn chat_member_idle_past_the_default_timeout_stays() {
    let server = start_chat(2);
    let (mut quiet, quiet_name) = chat_join(&server);
    std::thread::sleep(Duration::from_secs(6));
    let (mut talker, talker_name) = chat_join(&server);
    talker.send("still there?\n");
    assert_eq!(quiet.line(), format!("{talker_name}: still there?\n"));
    chat_wait_who(&mut talker, &[&quiet_name, &talker_name]);
    chat_stop(server, 2);
    quiet.expect_eof();
}

// ---- the hooks example ----------------------------------------------------------

/// A connection to `port` on 127.0.0.1 from the local address `from`.
fn connect_from(from: std::net::Ipv4Addr, port: u16) -> TcpStream {
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| {
        // SAFETY: all-zero is a valid sockaddr_in, filled in below.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_port = port.to_be();
        a.sin_addr.s_addr = u32::from(ip).to_be();
        a
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until
    // from_raw_fd hands it to the TcpStream; the addresses are initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let local = sockaddr(from, 0);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let peer = sockaddr(std::net::Ipv4Addr::LOCALHOST, port);
        let rc = libc::connect(fd, (&peer as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// examples-c/hooks.c: two listeners with their own settings, an access
/// list at accept, thread hooks, a close path that blocks (on workers),
/// per-connection timeouts and a status page of the workers.
#[test]
fn hooks_example_uses_every_hook() {
    let server = Server::start("hooks", "hooks: public on", |port| {
        vec![
            port.to_string(),
            (port + 1).to_string(),
            "--deny".into(),
            "127.0.0.2".into(),
        ]
    });
    let admin = server.port + 1;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

    // Each listener names itself; a connection counts its own requests.
    let mut public = server.conn();
    assert_eq!(
        public.request(&get("/")).text(),
        "hello from public, request 1\n"
    );
    assert_eq!(
        public.request(&get("/")).text(),
        "hello from public, request 2\n"
    );
    let mut status = Conn::new(admin);
    assert_eq!(
        status.request(&get("/")).text(),
        "hello from admin, request 1\n"
    );
    // The status page is the admin listener's only.
    assert!(public
        .request(&get("/status"))
        .text()
        .starts_with("hello from public"));

    // Refused at accept, before sending anything.
    let mut denied = Conn::wrap(connect_from(
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        server.port,
    ));
    denied.expect_eof();
    let mut allowed = Conn::wrap(connect_from(
        std::net::Ipv4Addr::new(127, 0, 0, 3),
        server.port,
    ));
    assert_eq!(
        allowed.request(&get("/")).text(),
        "hello from public, request 1\n"
    );

    // A handler that blocks shows on the status page with its label.
    let sleeper = std::thread::spawn(move || {
        let mut c = Conn::new(admin - 1);
        c.request("GET /sleep?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
            .text()
    });
    let mut page = String::new();
    wait_for("the sleeping handler on the status page", limit(10), || {
        page = status.request(&get("/status")).text();
        page.lines().any(|l| {
            (l.contains(" blocked ") || l.contains(" handler "))
                && l.ends_with("GET /sleep?ms=1500 HTTP/1.1")
        })
    });
    assert!(page.starts_with("threads started "), "{page}");
    assert_eq!(sleeper.join().unwrap(), "slept 1500 ms\n");

    // A connection's own keep-alive timeout closes it; another stays open.
    let mut short = server.conn();
    assert_eq!(
        short.request(&get("/keepalive?ms=200")).text(),
        "keep-alive 200 ms\n"
    );
    short.expect_eof();
    assert_eq!(
        public.request(&get("/")).text(),
        "hello from public, request 4\n"
    );

    // Every closed connection went through the blocking close path.
    drop((public, allowed, short, denied));
    wait_for("the close callbacks", limit(10), || {
        let page = status.request(&get("/status")).text();
        let closes: usize = page
            .split("closes ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        closes >= 5
    });
    drop(status);

    // Each thread that ran its start hook ran its stop hook.
    let out = server.terminate();
    let last = out.lines().last().unwrap_or_default().to_string();
    let counts: Vec<&str> = last
        .split(' ')
        .filter(|w| w.trim_end_matches(',').parse::<u32>().is_ok())
        .collect();
    assert!(
        last.starts_with("stopped (success): threads started"),
        "{out}"
    );
    assert_eq!(counts.len(), 2, "{last}");
    assert_eq!(counts[0].trim_end_matches(','), counts[1], "{last}");
}

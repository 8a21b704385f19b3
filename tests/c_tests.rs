//! The C test suite (c-tests/), built against libevmpm.a and the checked-in
//! header, each case in its own process over real loopback sockets.

mod support;

fn c_test(name: &str) {
    let source = format!("c-tests/{name}.c");
    support::run_c_test_program(name, &[source.as_str(), "c-tests/harness.c"]);
}

#[test]
fn core() {
    c_test("test_core");
}

#[test]
fn ready() {
    c_test("test_ready");
}

/// The handshake step: a preamble before the first request, off the
/// workers, under the header timeout; failures counted and closed once.
#[test]
fn handshake() {
    c_test("test_handshake");
}

#[test]
fn write() {
    c_test("test_write");
}

/// The gathered (`evmpm_complete_writev`) and file-range
/// (`evmpm_complete_sendfile`) forms of write completion.
#[test]
fn writev_sendfile() {
    c_test("test_writev_sendfile");
}

#[test]
fn suspend() {
    c_test("test_suspend");
}

#[test]
fn admission() {
    c_test("test_admission");
}

/// The worker pool: blocked handlers replaced, computing ones not, the
/// thread limit, an idle runtime's threads, admission by default.
#[test]
fn pool() {
    c_test("test_pool");
}

/// Thread start and stop hooks, a stop with no deadline, and destroy
/// waiting for a stuck handler, after which no callback runs.
#[test]
fn hooks() {
    c_test("test_hooks");
    support::show_figures("test_hooks");
}

#[test]
fn stop() {
    c_test("test_stop");
}

#[test]
fn close_once() {
    c_test("test_close_once");
}

/// Listeners with their own settings: what the accept told, the accept
/// hook, per-listener checks, modes, timeouts and close flags, and which
/// thread runs the close callback.
#[test]
fn listener() {
    c_test("test_listener");
}

/// `evmpm_notify`: waking waiting connections from other threads, notifies
/// that come while the connection is held elsewhere, broadcasts, a race
/// against requests, kicks, and the accept hook.
#[test]
fn notify() {
    c_test("test_notify");
}

/// Stale handles racing slot reuse never reach the newer connection.
#[test]
fn stale() {
    c_test("test_stale");
    support::show_figures("test_stale");
}

/// Each case logs its rows (call, code) and a "figure:" line counting
/// them; `-- --nocapture` shows the counts.
#[test]
fn misuse() {
    c_test("test_misuse");
    support::show_figures("test_misuse");
}

/// Timers: deadline order within the resolution, cancelled ones never run,
/// cancel racing the run from several threads, a timer bound to a
/// connection. `-- --nocapture` shows the lateness figures.
#[test]
fn timers() {
    c_test("test_timers");
    support::show_figures("test_timers");
}

/// Watched host descriptors: readable, writable, timeout, re-arm, cancel
/// answers, a descriptor closed while armed, thousands armed at once.
#[test]
fn watch() {
    c_test("test_watch");
    support::show_figures("test_watch");
}

/// The header compiles as strict C99 and as C++, as hosts of either kind
/// include it.
#[test]
fn header() {
    let strict = ["-Wall", "-Wextra", "-Werror", "-pedantic"];
    let mut c99 = vec!["-std=c99"];
    c99.extend(strict);
    support::compile_only("c-tests/header_c99.c", false, &c99);
    support::compile_only("c-tests/header_cxx.cpp", true, &strict);
}

/// What the 0.2.0 header promises about callbacks on host threads, handles
/// after close and across runtimes, a forced stop racing hand-backs, and
/// the behaviours this release settled.
#[test]
fn contract() {
    c_test("test_contract");
}

/// A program built against the frozen 0.2.0 header (c-tests/abi/, never
/// regenerated) keeps working with this library: its structs end at guard
/// pages, so any byte read or written past them crashes it.
#[test]
fn contract_abi_0_2_0() {
    old_header_program("old_program");
}

/// Builds `c-tests/abi/<name>.c` with `c-tests/abi/` as its only include
/// directory (not include/, not the harness's), as `support::build_c`
/// builds every C program, links it with today's `libevmpm.a` and runs it
/// (under valgrind when asked), failing with its output.
fn old_header_program(name: &str) {
    let dir = support::repo().join("c-tests/abi");
    let source = format!("c-tests/abi/{name}.c");
    let exe = support::build_c_with(&format!("abi_{name}"), &[&source], &[], &[dir]);
    let log_path = support::out_dir().join(format!("abi_{name}.log"));
    let log = std::fs::File::create(&log_path).expect("create log");
    let started = std::time::Instant::now();
    let mut child = support::command(&exe)
        .stdout(std::process::Stdio::from(log.try_clone().expect("dup log")))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("spawn the old program");
    let limit = std::time::Duration::from_secs(60 * u64::from(support::slowdown()));
    let status = support::wait_with_deadline(&mut child, limit);
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            eprintln!("  abi/{name}: ok ({} ms)", started.elapsed().as_millis());
        }
        Some(s) => panic!("abi/{name}: {s}\n{text}"),
        None => panic!("abi/{name}: killed after {limit:?}\n{text}"),
    }
}

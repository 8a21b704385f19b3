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

#[test]
fn write() {
    c_test("test_write");
}

#[test]
fn suspend() {
    c_test("test_suspend");
}

#[test]
fn admission() {
    c_test("test_admission");
}

#[test]
fn stop() {
    c_test("test_stop");
}

#[test]
fn close_once() {
    c_test("test_close_once");
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

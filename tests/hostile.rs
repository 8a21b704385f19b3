//! The hostile-world suite (c-tests/hostile_*.c): slow and silent clients,
//! connection floods, descriptor exhaustion, resets and half-closes, a
//! graceful stop under load, a stuck handler and randomized API sequences,
//! each case in its own process over real loopback sockets.
//!
//! The programs run one at a time: each one loads the machine on purpose
//! (thousands of sockets, CPU and memory figures), and two at once would
//! measure each other.

mod support;

use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn hostile(name: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let source = format!("c-tests/{name}.c");
    let run = std::panic::catch_unwind(|| {
        support::run_c_test_program(
            name,
            &[
                source.as_str(),
                "c-tests/hostile_util.c",
                "c-tests/harness.c",
            ],
        )
    });
    // The figures of the cases that ran, failed or not.
    support::show_figures(name);
    if let Err(failure) = run {
        std::panic::resume_unwind(failure);
    }
}

#[test]
fn slow_and_silent_clients() {
    hostile("hostile_slow");
}

#[test]
fn floods() {
    hostile("hostile_flood");
}

#[test]
fn descriptor_exhaustion() {
    hostile("hostile_fds");
}

#[test]
fn resets_and_half_closes() {
    hostile("hostile_reset");
}

#[test]
fn stop_under_load_and_stuck_handler() {
    hostile("hostile_stop");
}

#[test]
fn randomized_api_sequences() {
    hostile("hostile_random");
}

#[test]
fn requests_racing_timeouts() {
    hostile("hostile_race");
}

//! `cargo run --example chat [-- PORT [WORKERS]]`
//!
//! Builds the C chat server (examples-c/chat.c) against the freshly built
//! `libevmpm.a` with the system's C compiler, then replaces this process
//! with it: Ctrl-C goes straight to the server, which stops gracefully.
//! Defaults: port 8080, 16 workers.

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().unwrap_or_else(|| "8080".into());
    let workers = args.next();
    if args.next().is_some() || port.parse::<u16>().map_or(true, |p| p == 0) {
        eprintln!("usage: cargo run --example chat [-- PORT [WORKERS]]");
        std::process::exit(2);
    }

    let exe = support::build_c("chat", &["examples-c/chat.c"], &[]);
    println!("Chat on 127.0.0.1:{port}  (Ctrl-C stops)");
    println!("Try, in two or more terminals:");
    println!("  nc 127.0.0.1 {port}");
    println!("then type a line, or /nick NAME, /who, /kick NAME, /quit.");

    let mut cmd = Command::new(&exe);
    cmd.arg(&port).args(workers);
    // exec keeps the process id, and leaves no Rust process between the
    // terminal and the server.
    let err = cmd.exec();
    eprintln!("cannot run {}: {err}", exe.display());
    std::process::exit(1);
}

//! `cargo run --example fileserver [-- PORT [DOCROOT [WORKERS]]]`
//!
//! Builds the C file server (examples-c/fileserver.c) against the freshly
//! built `libevmpm.a` with the system's C compiler, then replaces this
//! process with it: Ctrl-C goes straight to the server, which stops
//! gracefully. Defaults: port 8080, root examples-c/www, 16 workers.

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().unwrap_or_else(|| "8080".into());
    let root = args.next().unwrap_or_else(|| {
        support::repo()
            .join("examples-c/www")
            .to_string_lossy()
            .into_owned()
    });
    let workers = args.next();
    if args.next().is_some() || port.parse::<u16>().map_or(true, |p| p == 0) {
        eprintln!("usage: cargo run --example fileserver [-- PORT [DOCROOT [WORKERS]]]");
        std::process::exit(2);
    }

    let exe = support::build_c("fileserver", &["examples-c/fileserver.c"], &[]);
    println!("Serving {root} on http://127.0.0.1:{port}/  (Ctrl-C stops)");
    println!("Try:");
    println!("  curl -i http://127.0.0.1:{port}/");
    println!("  curl http://127.0.0.1:{port}/server-status");
    println!(
        "  kill -USR1 {}   # the same counters on the server's stderr",
        std::process::id()
    );

    let mut cmd = Command::new(&exe);
    cmd.arg(&port).arg(&root).args(workers);
    // exec keeps the process id printed above, and leaves no Rust process
    // between the terminal and the server.
    let err = cmd.exec();
    eprintln!("cannot run {}: {err}", exe.display());
    std::process::exit(1);
}

//! `cargo run --example hooks [-- PORT ADMIN_PORT [--deny IPV4]...]`
//!
//! Builds examples-c/hooks.c (every hook a converted server uses) against
//! the freshly built `libevmpm.a` with the system's C compiler, then
//! replaces this process with it: Ctrl-C goes straight to the server, which
//! stops gracefully. Defaults: ports 8080 and 8081.

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        args = vec!["8080".into(), "8081".into()];
    }
    let ports_ok = args.len() >= 2
        && args[..2]
            .iter()
            .all(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    if !ports_ok {
        eprintln!("usage: cargo run --example hooks [-- PORT ADMIN_PORT [--deny IPV4]...]");
        std::process::exit(2);
    }
    let exe = support::build_c("hooks", &["examples-c/hooks.c"], &[]);
    println!(
        "Try: curl http://127.0.0.1:{}/  and  curl http://127.0.0.1:{}/status",
        args[0], args[1]
    );
    let err = Command::new(&exe).args(&args).exec();
    eprintln!("cannot run {}: {err}", exe.display());
    std::process::exit(1);
}

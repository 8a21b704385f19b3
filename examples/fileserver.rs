//! `cargo run --example fileserver [-- [--tls CERT KEY] PORT [DOCROOT [WORKERS]]]`
//!
//! Builds the C file server (examples-c/fileserver.c) against the freshly
//! built `libevmpm.a` with the system's C compiler (with HTTPS where
//! OpenSSL's headers are present), then replaces this process with it:
//! Ctrl-C goes straight to the server, which stops gracefully. Defaults:
//! port 8080, root examples-c/www, 16 workers. `--tls CERT KEY` serves
//! HTTPS with that certificate chain and key (PEM files).

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let tls = if args.peek().map(String::as_str) == Some("--tls") {
        args.next();
        match (args.next(), args.next()) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => usage(),
        }
    } else {
        None
    };
    let port = args.next().unwrap_or_else(|| "8080".into());
    let root = args.next().unwrap_or_else(|| {
        support::repo()
            .join("examples-c/www")
            .to_string_lossy()
            .into_owned()
    });
    let workers = args.next();
    if args.next().is_some() || port.parse::<u16>().map_or(true, |p| p == 0) {
        usage();
    }

    let exe = support::build_fileserver();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let insecure = if tls.is_some() { "-k " } else { "" };
    println!("Serving {root} on {scheme}://127.0.0.1:{port}/  (Ctrl-C stops)");
    println!("Try:");
    println!("  curl {insecure}-i {scheme}://127.0.0.1:{port}/");
    println!("  curl {insecure}{scheme}://127.0.0.1:{port}/server-status");
    println!(
        "  kill -USR1 {}   # the same counters on the server's stderr",
        std::process::id()
    );

    let mut cmd = Command::new(&exe);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls").arg(cert).arg(key);
    }
    cmd.arg(&port).arg(&root).args(workers);
    // exec keeps the process id printed above, and leaves no Rust process
    // between the terminal and the server.
    let err = cmd.exec();
    eprintln!("cannot run {}: {err}", exe.display());
    std::process::exit(1);
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo run --example fileserver [-- [--tls CERT KEY] PORT [DOCROOT [WORKERS]]]"
    );
    std::process::exit(2);
}

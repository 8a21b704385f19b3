//! Builds and runs C programs against the freshly built `libevmpm.a`.
//!
//! Shared by the C test suite, the example tests and `cargo run --example`.
//! The C compiler is found by the cc crate, as a build script would
//! (`CC` and `CFLAGS` are honoured).
//!
//! Environment knobs, for CI:
//! - `EVMPM_C_SANITIZE=address` (or `undefined`, or both, comma-separated)
//!   builds every C program with those sanitizers;
//! - `EVMPM_C_VALGRIND=1` runs every C test under valgrind memcheck, failing
//!   on any error or definite leak.
#![allow(dead_code)] // each test crate uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The libraries a program linking `libevmpm.a` needs after it, from
/// `native-static-libs.txt` (what `rustc --print native-static-libs`
/// reports for the crate; tests/packaging.rs checks that it still is).
pub fn native_libs() -> Vec<&'static str> {
    include_str!("../../native-static-libs.txt")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .collect()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`, where cargo put `libevmpm.a` for this build.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    // Test binaries live in target/<profile>/deps, examples in
    // target/<profile>/examples.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// `libevmpm.a` as rustc last wrote it. `deps/` is where rustc puts it;
/// cargo copies it up to `target/<profile>/` only for `cargo build`, so the
/// copy up there can be stale while tests run.
pub fn static_lib() -> PathBuf {
    let lib = profile_dir().join("deps").join("libevmpm.a");
    assert!(
        lib.exists(),
        "{} is missing: build the crate first",
        lib.display()
    );
    lib
}

/// Where built C programs go.
pub fn out_dir() -> PathBuf {
    let dir = profile_dir().join("c-bin");
    std::fs::create_dir_all(&dir).expect("create c-bin");
    dir
}

/// Sanitizers requested through `EVMPM_C_SANITIZE`.
pub fn sanitizers() -> Vec<String> {
    std::env::var("EVMPM_C_SANITIZE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub fn valgrind() -> bool {
    std::env::var_os("EVMPM_C_VALGRIND").is_some_and(|v| v == "1")
}

fn compiler(cplusplus: bool) -> cc::Tool {
    cc::Build::new()
        .target(env!("EVMPM_TARGET"))
        .host(env!("EVMPM_HOST"))
        .opt_level(1)
        .debug(true)
        .cpp(cplusplus)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .emit_rerun_if_env_changed(false)
        .get_compiler()
}

/// Compiles `sources` (relative to the repository root) into an executable
/// named `name`, linked with `libevmpm.a`, with the strict flags every C file
/// of the project must pass (C11 by default; `extra` comes later on the
/// command line, so a `-std=` there wins). Panics with the compiler's output
/// on failure.
pub fn build_c(name: &str, sources: &[&str], extra: &[&str]) -> PathBuf {
    let includes = [repo().join("include"), repo().join("c-tests")];
    build_c_with(name, sources, extra, &includes)
}

/// `build_c` with these include directories only (a program built against
/// another header than `include/evmpm.h`, say).
pub fn build_c_with(name: &str, sources: &[&str], extra: &[&str], includes: &[PathBuf]) -> PathBuf {
    build_c_linked(name, sources, extra, includes, &[])
}

/// The file server example, built with HTTPS (`--tls`) where OpenSSL 3's
/// headers and libraries are present, without it elsewhere.
pub fn build_fileserver() -> PathBuf {
    let includes = [repo().join("include"), repo().join("c-tests")];
    let sources = ["examples-c/fileserver.c"];
    if openssl_present() {
        build_c_linked(
            "fileserver",
            &sources,
            &["-DFILESERVER_TLS"],
            &includes,
            &["-lssl", "-lcrypto"],
        )
    } else {
        build_c_with("fileserver", &sources, &[], &includes)
    }
}

/// True when a C program can include OpenSSL 3's headers and link its
/// libraries (libssl-dev on Debian): the TLS example and its tests need
/// it; the library never does.
pub fn openssl_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        let dir = out_dir();
        let probe = dir.join("openssl_probe.c");
        std::fs::write(
            &probe,
            "#include <openssl/ssl.h>\n\
             #if OPENSSL_VERSION_NUMBER < 0x30000000L\n#error old\n#endif\n\
             int main(void) { return OPENSSL_init_ssl(0, NULL) == 1 ? 0 : 1; }\n",
        )
        .expect("write the OpenSSL probe");
        let mut cmd = compiler(false).to_command();
        cmd.arg(&probe)
            .args(["-lssl", "-lcrypto", "-o"])
            .arg(dir.join("openssl_probe"));
        cmd.output().is_ok_and(|o| o.status.success())
    })
}

/// `build_c_with`, linking `libs` (`-lname`) after `libevmpm.a`.
pub fn build_c_linked(
    name: &str,
    sources: &[&str],
    extra: &[&str],
    includes: &[PathBuf],
    libs: &[&str],
) -> PathBuf {
    let out = out_dir().join(name);
    let mut cmd = compiler(false).to_command();
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-pthread",
    ]);
    for s in sanitizers() {
        cmd.arg(format!("-fsanitize={s}"))
            .arg("-fno-omit-frame-pointer");
    }
    for dir in includes {
        cmd.arg("-I").arg(dir);
    }
    cmd.args(extra);
    for s in sources {
        cmd.arg(repo().join(s));
    }
    cmd.arg(static_lib())
        .args(libs)
        .args(native_libs())
        .arg("-o")
        .arg(&out);
    run_compiler(cmd, name);
    out
}

/// Compiles a translation unit only (no link), with the C++ compiler when
/// `cplusplus`: proves the header is valid C and C++.
pub fn compile_only(source: &str, cplusplus: bool, flags: &[&str]) {
    let mut cmd = compiler(cplusplus).to_command();
    cmd.args(flags)
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-c")
        .arg(repo().join(source))
        .arg("-o")
        .arg(out_dir().join(format!("{}.o", source.replace('/', "_"))));
    run_compiler(cmd, source);
}

fn run_compiler(mut cmd: Command, what: &str) {
    let output = cmd.output().expect("the C compiler runs");
    assert!(
        output.status.success(),
        "compiling {what} failed:\n{:?}\n{}{}",
        cmd,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A command for a built C program, under valgrind when asked for.
pub fn command(exe: &Path) -> Command {
    if valgrind() {
        let mut cmd = Command::new("valgrind");
        cmd.env("EVMPM_TEST_SLOWDOWN", slowdown().to_string());
        cmd.args([
            "--quiet",
            "--error-exitcode=97",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
            "--track-fds=no",
        ]);
        cmd.arg(exe);
        cmd
    } else {
        Command::new(exe)
    }
}

/// How much longer everything takes under valgrind.
pub fn slowdown() -> u32 {
    if valgrind() {
        10
    } else {
        1
    }
}

/// Waits for `child` to exit, killing it at `limit`.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Prints the "figure:" lines each case of program `name` logged (round
/// trips, memory, CPU, counts), so `cargo test ... -- --nocapture` shows
/// them.
pub fn show_figures(name: &str) {
    let exe = out_dir().join(name);
    let Ok(list) = Command::new(&exe).arg("--list").output() else {
        return;
    };
    for case in String::from_utf8_lossy(&list.stdout).lines() {
        let log = out_dir().join(format!("{name}.{case}.log"));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().filter_map(|l| l.strip_prefix("figure: ")) {
            eprintln!("  {name}/{case}: {line}");
        }
    }
}

/// Runs every case of a C test program, each in its own process (fresh
/// descriptors, threads and signal state), and fails listing the cases that
/// failed with their output.
pub fn run_c_test_program(name: &str, sources: &[&str]) {
    let exe = build_c(name, sources, &[]);
    let list = Command::new(&exe)
        .arg("--list")
        .output()
        .expect("list cases");
    assert!(list.status.success(), "{name} --list failed");
    let cases: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(!cases.is_empty(), "{name} has no test cases");
    let mut failures = Vec::new();
    for case in &cases {
        let started = Instant::now();
        // A file, not a pipe: a chatty case can never block on a full pipe.
        let log_path = out_dir().join(format!("{name}.{case}.log"));
        let log = std::fs::File::create(&log_path).expect("create log");
        let mut child = command(&exe)
            .arg(case)
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn C test");
        let limit = Duration::from_secs(120 * u64::from(slowdown()));
        let status = wait_with_deadline(&mut child, limit);
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => {
                eprintln!("  {name}/{case}: ok ({} ms)", started.elapsed().as_millis());
            }
            Some(s) => failures.push(format!("{name}/{case}: {s}\n{text}")),
            None => failures.push(format!("{name}/{case}: killed after {limit:?}\n{text}")),
        }
    }
    assert!(
        failures.is_empty(),
        "C cases failed:\n{}",
        failures.join("\n")
    );
}

//! The installed package, used the ways the README shows: `scripts/install.sh`
//! installs into a scratch prefix (once per test run), then a C program,
//! `cmake/test-consumer/consumer.c`, is built against it through pkg-config
//! and through CMake's `find_package`, statically and against the shared
//! library, and run. `native-static-libs.txt`, the one list of what a static
//! link needs that all of these take, is checked against rustc and against
//! the README.
//!
//! cmake, pkg-config and readelf are optional here: a test (or check) whose
//! tool is missing prints "skipped: <tool> not found" and passes, unless
//! `EVMPM_REQUIRE_PACKAGING_TOOLS=1` (set by CI) makes it fail instead.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAJOR: &str = env!("CARGO_PKG_VERSION_MAJOR");

/// The shared library's SONAME: 0.x minors may break the ABI, so while the
/// major is 0 it names the minor too.
fn soname() -> String {
    if MAJOR == "0" {
        format!("libevmpm.so.0.{}", env!("CARGO_PKG_VERSION_MINOR"))
    } else {
        format!("libevmpm.so.{MAJOR}")
    }
}
const MINOR: &str = env!("CARGO_PKG_VERSION_MINOR");

/// Everything these tests write lives under here.
fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("remove old scratch directory");
    }
    fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// Says so on the terminal even though libtest captures test output.
fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether `tool` can run. When it cannot, either skips (false) or, with
/// `EVMPM_REQUIRE_PACKAGING_TOOLS=1`, fails.
fn have(tool: &str, what: &str) -> bool {
    let runs = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if runs {
        return true;
    }
    if std::env::var_os("EVMPM_REQUIRE_PACKAGING_TOOLS").is_some_and(|v| v == "1") {
        panic!("{tool} not found, and EVMPM_REQUIRE_PACKAGING_TOOLS=1 needs it for {what}");
    }
    note(&format!("{what}: skipped: {tool} not found"));
    false
}

/// Runs `cmd` to completion within `limit`, its output in a log file (no
/// pipe to fill up), and returns the output; panics with it on failure.
fn run(cmd: Command, what: &str, limit: Duration) -> String {
    try_run(cmd, what, limit).unwrap_or_else(|e| panic!("{e}"))
}

fn try_run(mut cmd: Command, what: &str, limit: Duration) -> Result<String, String> {
    // Tests run in parallel: every command gets its own log.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    static LOGS: OnceLock<PathBuf> = OnceLock::new();
    let logs = LOGS.get_or_init(|| fresh_dir("logs"));
    let log_path = logs.join(format!("{n:03}-{name}.log"));
    let log = fs::File::create(&log_path).expect("create log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("dup log")))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("{what}: cannot start {cmd:?}: {e}"))?;
    let status = support::wait_with_deadline(&mut child, limit);
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(format!("{what} failed ({s}):\n{cmd:?}\n{output}")),
        None => Err(format!("{what} killed after {limit:?}:\n{cmd:?}\n{output}")),
    }
}

/// The scratch installation, made once per test process.
fn prefix() -> &'static Path {
    static PREFIX: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PREFIX.get_or_init(install) {
        Ok(prefix) => prefix,
        Err(e) => panic!("{e}"),
    }
}

/// The target directory of the cargo these tests run: the one they run from
/// is locked by the cargo that runs them.
fn cargo_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging-target")
}

fn install() -> Result<PathBuf, String> {
    let prefix = fresh_dir("prefix");
    let mut cmd = Command::new("sh");
    cmd.arg(support::repo().join("scripts/install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", cargo_target_dir());
    // An error is kept, not panicked, so every test reports it and none
    // starts the build again.
    try_run(cmd, "scripts/install.sh", Duration::from_secs(1800))?;
    Ok(prefix)
}

/// The C compiler: `CC` if set, else `cc`.
fn cc() -> Command {
    let cc = std::env::var("CC").unwrap_or_default();
    let mut words = cc.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap_or("cc"));
    cmd.args(words);
    cmd
}

fn consumer_source() -> PathBuf {
    support::repo().join("cmake/test-consumer/consumer.c")
}

/// Runs a built consumer, which must report this crate's version.
fn run_consumer(exe: &Path) {
    let mut cmd = Command::new(exe);
    cmd.env_remove("LD_LIBRARY_PATH");
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let what = format!("run {}/{}", name(exe.parent().unwrap()), name(exe));
    let output = run(cmd, &what, Duration::from_secs(60));
    assert!(
        output.contains(&format!("evmpm {VERSION}: ok")),
        "{what} said:\n{output}"
    );
}

/// The `DT_NEEDED` entries of an ELF file, or None without readelf.
fn needed(file: &Path) -> Option<Vec<String>> {
    dynamic_entries(file, "(NEEDED)")
}

fn dynamic_entries(file: &Path, tag: &str) -> Option<Vec<String>> {
    if !have("readelf", "reading ELF dynamic sections") {
        return None;
    }
    let mut cmd = Command::new("readelf");
    cmd.arg("-d").arg(file);
    let out = run(cmd, "readelf", Duration::from_secs(60));
    Some(
        out.lines()
            .filter(|l| l.contains(tag))
            .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
            .collect(),
    )
}

/// pkg-config on the scratch installation only.
fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("pkg-config");
    cmd.args(args)
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .env_remove("PKG_CONFIG_SYSROOT_DIR");
    let what = format!("pkg-config {}", args.join(" "));
    run(cmd, &what, Duration::from_secs(60))
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn install_layout() {
    let prefix = prefix();
    let lib = prefix.join("lib");
    let shared = format!("libevmpm.so.{VERSION}");
    let soname = soname();

    assert_eq!(
        read(&prefix.join("include/evmpm.h")),
        read(&support::repo().join("include/evmpm.h")),
        "the installed header is the checked-in one"
    );
    for (file, mode) in [
        ("include/evmpm.h", 0o644),
        ("lib/libevmpm.a", 0o644),
        (&format!("lib/{shared}")[..], 0o755),
        ("lib/pkgconfig/evmpm.pc", 0o644),
        ("lib/pkgconfig/evmpm-static.pc", 0o644),
        ("lib/cmake/evmpm/evmpmConfig.cmake", 0o644),
        ("lib/cmake/evmpm/evmpmConfigVersion.cmake", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::symlink_metadata(prefix.join(file))
            .unwrap_or_else(|e| panic!("{file} is not installed: {e}"));
        assert!(meta.is_file(), "{file} is a plain file");
        assert_eq!(meta.permissions().mode() & 0o777, mode, "mode of {file}");
    }
    for link in [&soname[..], "libevmpm.so"] {
        let target = fs::read_link(lib.join(link))
            .unwrap_or_else(|e| panic!("lib/{link} is not a symlink: {e}"));
        assert_eq!(target, Path::new(&shared), "lib/{link} points at {shared}");
    }
    if let Some(names) = dynamic_entries(&lib.join(&shared), "(SONAME)") {
        assert_eq!(names, [&soname[..]], "SONAME of {shared}");
    }

    // pkg-config files: this prefix, Cargo.toml's version, and the system
    // libraries the static library needs, as the C test suite links them.
    let native = support::native_libs().join(" ");
    let pc = read(&lib.join("pkgconfig/evmpm.pc"));
    let lines: Vec<&str> = pc.lines().collect();
    assert!(
        lines.contains(&&*format!("prefix={}", prefix.display())),
        "{pc}"
    );
    assert!(lines.contains(&&*format!("Version: {VERSION}")), "{pc}");
    assert!(lines.contains(&"Libs: -L${libdir} -levmpm"), "{pc}");
    assert!(lines.contains(&&*format!("Libs.private: {native}")), "{pc}");
    assert!(lines.contains(&"Cflags: -I${includedir}"), "{pc}");
    let pc = read(&lib.join("pkgconfig/evmpm-static.pc"));
    assert!(
        pc.lines()
            .any(|l| l == format!("Libs: -L${{libdir}} -l:libevmpm.a {native}")),
        "{pc}"
    );

    // The static CMake target links the same libraries, as CMake items.
    let items: Vec<&str> = support::native_libs()
        .into_iter()
        .filter(|lib| *lib != "-lc")
        .map(|lib| match lib {
            "-lpthread" => "Threads::Threads",
            _ => lib.strip_prefix("-l").expect("a -l flag"),
        })
        .collect();
    let config = read(&lib.join("cmake/evmpm/evmpmConfig.cmake"));
    let expected = format!("INTERFACE_LINK_LIBRARIES \"{}\")", items.join(";"));
    assert!(
        config.lines().any(|l| l.trim() == expected),
        "evmpmConfig.cmake lacks `{expected}`:\n{config}"
    );

    // The CMake files name no path: they work wherever the tree is moved.
    for file in ["evmpmConfig.cmake", "evmpmConfigVersion.cmake"] {
        let text = read(&lib.join("cmake/evmpm").join(file));
        assert!(
            !text.contains(&*prefix.to_string_lossy()),
            "{file} names the prefix"
        );
        assert!(!text.contains('@'), "{file} has an unreplaced placeholder");
    }
}

#[test]
fn pkg_config_consumer() {
    if !have("pkg-config", "pkg_config_consumer") {
        return;
    }
    let prefix = prefix();
    let out = fresh_dir("pkg-config");
    assert_eq!(pkg_config(prefix, &["--modversion", "evmpm"]), [VERSION]);
    assert_eq!(
        pkg_config(prefix, &["--modversion", "evmpm-static"]),
        [VERSION]
    );
    let strict = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

    // Static: cc consumer.c $(pkg-config --cflags --libs evmpm-static)
    let exe = out.join("consumer-static");
    let mut cmd = cc();
    cmd.args(strict)
        .arg(consumer_source())
        .args(pkg_config(prefix, &["--cflags", "--libs", "evmpm-static"]))
        .arg("-o")
        .arg(&exe);
    run(cmd, "cc consumer-static", Duration::from_secs(300));
    if let Some(needed) = needed(&exe) {
        assert!(
            !needed.iter().any(|n| n.starts_with("libevmpm")),
            "the static consumer needs {needed:?}"
        );
    }
    run_consumer(&exe);

    // `pkg-config --static evmpm` lists what libevmpm.a needs; with -Bstatic
    // around the library it links the archive.
    let flags = pkg_config(prefix, &["--cflags", "--libs", "--static", "evmpm"]);
    assert!(
        flags.ends_with(
            &support::native_libs()
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        ),
        "{flags:?}"
    );
    let exe = out.join("consumer-static-private");
    let mut cmd = cc();
    cmd.args(strict).arg(consumer_source());
    for flag in &flags {
        if flag == "-levmpm" {
            cmd.args(["-Wl,-Bstatic", "-levmpm", "-Wl,-Bdynamic"]);
        } else {
            cmd.arg(flag);
        }
    }
    cmd.arg("-o").arg(&exe);
    run(cmd, "cc consumer-static-private", Duration::from_secs(300));
    run_consumer(&exe);

    // Shared: cc consumer.c $(pkg-config --cflags --libs evmpm) -Wl,-rpath,...
    let libdir = pkg_config(prefix, &["--variable=libdir", "evmpm"]);
    assert_eq!(libdir, [prefix.join("lib").to_string_lossy()]);
    let exe = out.join("consumer-shared");
    let mut cmd = cc();
    cmd.args(strict)
        .arg(consumer_source())
        .args(pkg_config(prefix, &["--cflags", "--libs", "evmpm"]))
        .arg(format!("-Wl,-rpath,{}", libdir[0]))
        .arg("-o")
        .arg(&exe);
    run(cmd, "cc consumer-shared", Duration::from_secs(300));
    if let Some(needed) = needed(&exe) {
        let soname = soname();
        assert!(needed.contains(&soname), "needs {needed:?}, not {soname}");
    }
    run_consumer(&exe);
}

/// Configures and builds cmake/test-consumer against `prefix` in `build`,
/// and runs both programs.
fn cmake_consumer(prefix: &Path, build: &Path) {
    let mut cmd = Command::new("cmake");
    cmd.arg("-S")
        .arg(support::repo().join("cmake/test-consumer"))
        .arg("-B")
        .arg(build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg(format!("-DEVMPM_WANTED={MAJOR}.{MINOR}"))
        .arg("-DCMAKE_BUILD_TYPE=Release")
        .env_remove("CMAKE_PREFIX_PATH")
        .env_remove("evmpm_DIR")
        .env_remove("evmpm_ROOT");
    run(cmd, "cmake configure", Duration::from_secs(300));
    let cache = read(&build.join("CMakeCache.txt"));
    let expected = format!(
        "evmpm_DIR:PATH={}",
        prefix.join("lib/cmake/evmpm").display()
    );
    assert!(
        cache.lines().any(|l| l == expected),
        "find_package did not take {}",
        prefix.display()
    );
    let mut cmd = Command::new("cmake");
    cmd.arg("--build").arg(build);
    run(cmd, "cmake build", Duration::from_secs(600));
    run_consumer(&build.join("consumer"));
    run_consumer(&build.join("consumer_shared"));
}

#[test]
fn cmake_find_package() {
    if !have("cmake", "cmake_find_package") {
        return;
    }
    let prefix = prefix();
    cmake_consumer(prefix, &fresh_dir("cmake-build"));

    // The same installation copied elsewhere: found there, and nothing in
    // the build refers to the original place.
    let moved = fresh_dir("moved").join("evmpm");
    copy_tree(prefix, &moved);
    let build = fresh_dir("cmake-build-moved");
    cmake_consumer(&moved, &build);
    let original = prefix.to_string_lossy().into_owned();
    let mentions = files_containing(&build, original.as_bytes());
    assert!(
        mentions.is_empty(),
        "the build from the moved copy refers to {original}: {mentions:?}"
    );
    assert!(
        !files_containing(
            &build,
            moved.join("lib/libevmpm.a").to_string_lossy().as_bytes()
        )
        .is_empty(),
        "the static consumer was not linked with the moved libevmpm.a"
    );
}

/// native-static-libs.txt is what rustc reports for this crate, built as a
/// static library: the list every static link here takes (pkg-config, CMake,
/// the C tests, the README).
#[test]
fn native_libs_are_what_rustc_reports() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Debug, beside install.sh's release build. When nothing changed, cargo
    // does not run rustc again but replays its messages, the list too.
    cmd.args([
        "rustc",
        "--lib",
        "--crate-type",
        "staticlib",
        "--color",
        "never",
    ])
    .arg("--manifest-path")
    .arg(support::repo().join("Cargo.toml"))
    .arg("--target-dir")
    .arg(cargo_target_dir())
    .args(["--", "--print", "native-static-libs"]);
    let what = "cargo rustc --print native-static-libs";
    let output = run(cmd, what, Duration::from_secs(1200));
    let reported: Vec<&str> = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("note: native-static-libs:"))
        .unwrap_or_else(|| panic!("{what} printed no list:\n{output}"))
        .split_whitespace()
        .collect();
    let listed = support::native_libs();
    assert!(
        reported == listed,
        "native-static-libs.txt lists `{}`, but rustc now reports `{}` for the \
         crate: put rustc's list in native-static-libs.txt (install.sh, the \
         tests and the README's link line take it from there)",
        listed.join(" "),
        reported.join(" "),
    );
}

/// Every plain compiler line of the README (the minimal server's, against
/// the build tree, and the installed library's) links
/// native-static-libs.txt's list.
#[test]
fn readme_links_the_native_libs() {
    let readme = read(&support::repo().join("README.md"));
    let lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("cc ") && l.contains("/libevmpm.a "))
        .collect();
    assert!(
        !lines.is_empty(),
        "README.md has a compiler line linking libevmpm.a"
    );
    let listed = support::native_libs();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let start = words
            .iter()
            .position(|w| w.ends_with("/libevmpm.a"))
            .unwrap()
            + 1;
        let end = start
            + words[start..]
                .iter()
                .position(|w| *w == "-o")
                .expect("the compiler line names its output with -o");
        assert!(
            words[start..end] == listed[..],
            "README.md links `{}` after libevmpm.a in `{line}`, \
             native-static-libs.txt lists `{}`: copy the file's list into \
             the README's compiler line",
            words[start..end].join(" "),
            listed.join(" "),
        );
    }
}

/// The version file's compatibility rule, on made-up versions: the template
/// rendered as scripts/install.sh renders it, asked what find_package asks.
#[test]
fn cmake_version_rule() {
    if !have("cmake", "cmake_version_rule") {
        return;
    }
    let template = read(&support::repo().join("cmake/evmpmConfigVersion.cmake.in"));
    let dir = fresh_dir("version-rule");
    // (installed version, request, compatible, exact); a request with "..."
    // is a range, "<" before its end excludes the end.
    let cases: &[(&str, &str, bool, bool)] = &[
        ("0.1.0", "", true, false),
        ("0.1.0", "0.1", true, true),
        ("0.1.0", "0.1.0", true, true),
        ("0.1.3", "0.1.2", true, false),
        ("0.1.3", "0.1.4", false, false),
        ("0.1.0", "0", true, false),
        ("0.1.0", "0.0", false, false),
        ("0.1.0", "0.2", false, false),
        ("0.2.0", "0.1", false, false),
        ("0.1.0", "1", false, false),
        ("0.0.3", "0.0.3", true, true),
        ("0.0.3", "0.0.2", false, false),
        ("0.0.3", "0.0", true, false),
        ("1.2.3", "1", true, false),
        ("1.2.3", "1.2", true, false),
        ("1.2.3", "1.3", false, false),
        ("1.2.3", "0.9", false, false),
        ("2.0.0", "1.4", false, false),
        ("0.2.0", "0.1...0.3", true, false),
        ("0.2.0", "0.1...<0.2", false, false),
        ("0.2.0", "0.1...0.2", true, false),
        ("0.2.0", "0.3...0.4", false, false),
    ];
    let mut script = String::from(ASK_VERSION_FILE);
    for (i, (installed, request, _, _)) in cases.iter().enumerate() {
        let mut parts = installed.split('.');
        let mut rendered = template.clone();
        for key in ["@MAJOR@", "@MINOR@", "@PATCH@"] {
            rendered = rendered.replace(key, parts.next().unwrap());
        }
        rendered = rendered
            .replace("@VERSION@", installed)
            .replace("@SIZEOF_VOID_P@", "8");
        let file = dir.join(format!("version{i}.cmake"));
        fs::write(&file, rendered).expect("write version file");
        script.push_str(&format!("ask(\"{}\" \"{request}\" 8)\n", file.display()));
    }
    // A build with another pointer size never matches.
    let file = dir.join("version0.cmake");
    script.push_str(&format!("ask(\"{}\" \"0.1\" 4)\n", file.display()));
    let script_path = dir.join("ask.cmake");
    fs::write(&script_path, script).expect("write script");
    let mut cmd = Command::new("cmake");
    cmd.arg("-P").arg(&script_path);
    let output = run(cmd, "cmake version rule", Duration::from_secs(60));
    let answers: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("answer: "))
        .collect();
    assert_eq!(answers.len(), cases.len() + 1, "{output}");
    let mut wrong = Vec::new();
    for ((installed, request, compatible, exact), answer) in cases.iter().zip(&answers) {
        let expected = format!("compatible={compatible} exact={exact} unsuitable=false");
        if *answer != expected {
            wrong.push(format!(
                "{installed} asked for '{request}': {answer}, expected {expected}"
            ));
        }
    }
    let unsuitable = answers[cases.len()];
    if !unsuitable.ends_with("unsuitable=true") {
        wrong.push(format!(
            "a 32-bit build was offered the 64-bit library: {unsuitable}"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `ask(FILE REQUEST SIZEOF_VOID_P)` loads a package version file the way
/// find_package does for a request ("", "0.1", "0.1...<0.3") and prints its
/// answer.
const ASK_VERSION_FILE: &str = r#"
function(ask file request sizeof)
  set(CMAKE_SIZEOF_VOID_P ${sizeof})
  set(PACKAGE_FIND_NAME evmpm)
  set(PACKAGE_FIND_VERSION "")
  set(PACKAGE_FIND_VERSION_RANGE "")
  set(PACKAGE_FIND_VERSION_COUNT 0)
  foreach(c MAJOR MINOR PATCH TWEAK)
    set(PACKAGE_FIND_VERSION_${c} 0)
  endforeach()
  if(request MATCHES "^(.*)[.][.][.](<?)(.*)$")
    set(PACKAGE_FIND_VERSION_RANGE "${request}")
    set(PACKAGE_FIND_VERSION_RANGE_MIN INCLUDE)
    if(CMAKE_MATCH_2 STREQUAL "<")
      set(PACKAGE_FIND_VERSION_RANGE_MAX EXCLUDE)
    else()
      set(PACKAGE_FIND_VERSION_RANGE_MAX INCLUDE)
    endif()
    set(PACKAGE_FIND_VERSION_MIN "${CMAKE_MATCH_1}")
    set(PACKAGE_FIND_VERSION_MAX "${CMAKE_MATCH_3}")
    set(request "${CMAKE_MATCH_1}")
  endif()
  if(NOT request STREQUAL "")
    set(PACKAGE_FIND_VERSION "${request}")
    string(REPLACE "." ";" parts "${request}")
    list(LENGTH parts PACKAGE_FIND_VERSION_COUNT)
    set(i 0)
    foreach(c MAJOR MINOR PATCH TWEAK)
      if(i LESS PACKAGE_FIND_VERSION_COUNT)
        list(GET parts ${i} PACKAGE_FIND_VERSION_${c})
      endif()
      math(EXPR i "${i} + 1")
    endforeach()
  endif()
  include("${file}")
  foreach(v COMPATIBLE EXACT UNSUITABLE)
    if(PACKAGE_VERSION_${v})
      set(${v} true)
    else()
      set(${v} false)
    endif()
  endforeach()
  message("answer: compatible=${COMPATIBLE} exact=${EXACT} unsuitable=${UNSUITABLE}")
endfunction()
"#;

/// Copies a directory tree, symbolic links as links.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create directory");
    for entry in fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let kind = entry.file_type().expect("file type");
        let dest = to.join(entry.file_name());
        if kind.is_symlink() {
            let target = fs::read_link(entry.path()).expect("read link");
            std::os::unix::fs::symlink(target, &dest).expect("create link");
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).expect("copy file");
        }
    }
}

/// The files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).expect("read directory") {
        let path = entry.expect("directory entry").path();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file()
            && fs::read(&path)
                .expect("read file")
                .windows(needle.len())
                .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

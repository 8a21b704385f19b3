//! What every build of the library needs, and nothing more: the shared
//! library's SONAME and the target names the tests use. With the `abi-check`
//! feature it also reads the checked-in header through bindgen.
//!
//! The header is not generated here: a consumer's build should not compile
//! cbindgen, and a build should not write into the source tree. The test in
//! `tests/header.rs` generates it and compares it with `include/evmpm.h`;
//! `EVMPM_UPDATE_HEADER=1 cargo test --test header` refreshes the checked-in
//! copy.

use std::env;

fn main() {
    // Nothing below reads the sources: rerun only when this script changes
    // (a new package version is a new build of it anyway).
    println!("cargo:rerun-if-changed=build.rs");
    // The shared library's SONAME names the ABI version programs load at
    // run time: the major, or while it is 0 also the minor, because 0.x
    // minors may break the ABI. scripts/install.sh installs the same name.
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let abi = if major == "0" {
        format!("0.{}", env::var("CARGO_PKG_VERSION_MINOR").unwrap())
    } else {
        major
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libevmpm.so.{abi}");
    // The tests compile C programs with the cc crate, which needs to know
    // the target and host outside a build script.
    for var in ["TARGET", "HOST"] {
        println!("cargo:rustc-env=EVMPM_{var}={}", env::var(var).unwrap());
    }

    #[cfg(feature = "abi-check")]
    header_bindings();
}

/// With the `abi-check` feature: Rust declarations of the checked-in header
/// as libclang reads it, for `src/ffi/abi_check.rs` to compare with the
/// Rust definitions.
#[cfg(feature = "abi-check")]
fn header_bindings() {
    use std::path::PathBuf;
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let header = crate_dir.join("include/evmpm.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("header_bindings.rs");
    bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_item("evmpm_.*|EVMPM_.*")
        .layout_tests(false)
        .generate()
        .expect("libclang parses include/evmpm.h")
        .write_to_file(out)
        .expect("write the header's bindings");
}

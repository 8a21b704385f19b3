//! Generates the C header from the Rust sources with cbindgen.
//!
//! The header lands in `$OUT_DIR/evmpm.h` on every build; a unit test
//! compares it with the checked-in `include/evmpm.h`, so the two cannot
//! drift. `EVMPM_UPDATE_HEADER=1 cargo build` refreshes the checked-in copy.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("evmpm.h");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=EVMPM_UPDATE_HEADER");
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
    header_bindings(&crate_dir);

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    // Only the C boundary is parsed, so nothing internal leaks into the header.
    let bindings = match cbindgen::Builder::new()
        .with_src(crate_dir.join("src/ffi/types.rs"))
        .with_src(crate_dir.join("src/ffi/api.rs"))
        .with_config(config)
        .generate()
    {
        Ok(b) => b,
        Err(e) => {
            // A source that does not parse yet is reported by rustc itself;
            // keep the build going so that error is the one shown.
            println!("cargo:warning=cbindgen could not generate the header: {e}");
            std::fs::write(&out, "/* header generation failed */\n").unwrap();
            return;
        }
    };
    bindings.write_to_file(&out);
    if env::var_os("EVMPM_UPDATE_HEADER").is_some_and(|v| v == "1") {
        bindings.write_to_file(crate_dir.join("include/evmpm.h"));
    }
}

/// With the `abi-check` feature: Rust declarations of the checked-in header
/// as libclang reads it, for `src/ffi/abi_check.rs` to compare with the
/// Rust definitions.
#[cfg(feature = "abi-check")]
fn header_bindings(crate_dir: &std::path::Path) {
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

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
    // The tests compile C programs with the cc crate, which needs to know
    // the target and host outside a build script.
    for var in ["TARGET", "HOST"] {
        println!("cargo:rustc-env=EVMPM_{var}={}", env::var(var).unwrap());
    }

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

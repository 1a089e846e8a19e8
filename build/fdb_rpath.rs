//! The build script of quip-server, quip-tests and quip-bench. With their
//! `fdb` feature: where the linker finds libfdb_c.so, and an rpath so
//! `quipd`, the test binaries and `quip-bench` find it at run time without
//! LD_LIBRARY_PATH (a dependency's link arguments do not carry over to the
//! binaries of the crates that use it, so each crate sets its own). Without
//! the feature it does nothing.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=FDB_CLIENT_LIB_PATH");
    println!("cargo:rerun-if-env-changed=FDB_DIST");
    if std::env::var_os("CARGO_FEATURE_FDB").is_none() {
        return;
    }
    // FDB_CLIENT_LIB_PATH (what foundationdb-sys reads), then $FDB_DIST/lib,
    // then /opt/foundationdb/lib (shared/fdb/build.sh); none: the system's
    // library path, which needs no rpath.
    let dir = std::env::var("FDB_CLIENT_LIB_PATH")
        .ok()
        .or_else(|| std::env::var("FDB_DIST").ok().map(|d| format!("{d}/lib")))
        .or_else(|| Some("/opt/foundationdb/lib".to_string()))
        .filter(|d| Path::new(d).join("libfdb_c.so").exists());
    // Built before FoundationDB was installed: look again once it is.
    println!("cargo:rerun-if-changed=/opt/foundationdb/lib/libfdb_c.so");
    if let Some(dir) = dir {
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

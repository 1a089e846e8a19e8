//! With the `fdb` feature the test binaries link libfdb_c.so (through
//! quip-server): an rpath so they find it at run time, as quip-server's own
//! build script gives quipd (a dependency's link arguments do not carry
//! over). Without the feature it does nothing.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=FDB_CLIENT_LIB_PATH");
    println!("cargo:rerun-if-env-changed=FDB_DIST");
    if std::env::var_os("CARGO_FEATURE_FDB").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=/opt/foundationdb/lib/libfdb_c.so");
    // The same search as server/build.rs.
    let dir = std::env::var("FDB_CLIENT_LIB_PATH")
        .ok()
        .or_else(|| std::env::var("FDB_DIST").ok().map(|d| format!("{d}/lib")))
        .or_else(|| Some("/opt/foundationdb/lib".to_string()))
        .filter(|d| Path::new(d).join("libfdb_c.so").exists());
    if let Some(dir) = dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

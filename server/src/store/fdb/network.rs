//! FoundationDB's client network thread: started once per process, never
//! stopped.
//!
//! libfdb_c does all its I/O on one thread (`fdb_run_network`), shared by
//! every `Database` of the process. It can be started once per process and
//! never again once stopped, so it belongs to the process, not to a store:
//! the first [`FdbStore::open`](super::FdbStore::open) starts it (a
//! `OnceLock` makes that once) and it runs until the process ends. The
//! `foundationdb` crate's `boot()` guard would stop it when dropped, ending
//! FoundationDB for every later store of the process (a test binary opens
//! many); kept in a static it would never be dropped anyway.
//!
//! The C API asks for the thread to be stopped and joined before a normal
//! exit, so that libfdb_c's static destructors do not race it. We measured
//! the opposite with the libfdb_c these machines run (8.0, API 740): an
//! `atexit` hook that stopped the thread (after every transaction had ended
//! and every database was destroyed) crashed the exiting test binary with
//! SIGSEGV inside `fdb_run_network` in 44 of 55 runs, while exiting with the
//! thread running crashed in none of 48. So the thread is left running, and
//! `quipd` ends it by exiting after the store has shut down. Revisit with
//! another libfdb_c (the crate is moving to an exit hook of its own:
//! foundationdb-rs PR #477).
//!
//! Exiting with the thread running still crashed, rarely: once in some
//! hundreds of test-process exits ("double free or corruption" in
//! libfdb_c's static destructors, after every test had passed). So once
//! the thread runs, an `on_exit` hook (glibc) ends the process with its
//! exit status before libfdb_c's destructors run: they are registered when
//! the library loads, before `main`, and exit hooks run in reverse order of
//! registration. Rust's own exit work (flushing stdout) is done by then;
//! the destructors skipped free memory the exit frees anyway.
//!
//! This is the one module of the workspace that allows `unsafe`: running
//! the thread is an FFI call the crate marks unsafe for that contract.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use foundationdb::api::FdbApiBuilder;

use crate::store::StoreError;

/// Whether the network thread started, or why not (it cannot be retried:
/// libfdb_c accepts its API version and network setup once per process).
static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

/// Starts the network thread unless it runs already.
pub(super) fn ensure_started() -> Result<(), StoreError> {
    STARTED.get_or_init(start).clone().map_err(StoreError::Backend)
}

fn start() -> Result<(), String> {
    let api = FdbApiBuilder::default();
    let version = api.runtime_version();
    let (runner, wait) = api
        .build()
        .and_then(|network| network.build())
        .map_err(|e| format!("FoundationDB client (API version {version}): {e}"))?;
    std::thread::Builder::new()
        .name("fdb-network".into())
        .spawn(move || {
            // SAFETY: the crate requires `fdb_stop_network` before a normal
            // exit; see the module docs for why this process exits with the
            // thread running instead.
            if let Err(e) = unsafe { runner.run() } {
                eprintln!("FoundationDB network thread failed: {e}");
            }
        })
        .map_err(|e| format!("starting FoundationDB's network thread: {e}"))?;
    // Returns once the thread runs; the stop handle goes unused.
    let _never_stopped = wait.wait();
    skip_destructors_at_exit();
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn skip_destructors_at_exit() {
    unsafe extern "C" {
        fn on_exit(hook: extern "C" fn(i32, *mut std::ffi::c_void), arg: *mut std::ffi::c_void) -> i32;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn end_now(status: i32, _: *mut std::ffi::c_void) {
        // SAFETY: `_exit` ends the process at once with the status `exit`
        // was given; nothing runs after it.
        unsafe { _exit(status) }
    }
    // SAFETY: registers a hook that takes no data (the pointer is null).
    if unsafe { on_exit(end_now, std::ptr::null_mut()) } != 0 {
        tracing::warn!("could not register the exit hook that skips libfdb_c's static destructors");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn skip_destructors_at_exit() {}

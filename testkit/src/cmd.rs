//! Shell commands, interface lookups and the root check of kernel tests.

use std::process::Command;

use portcullis_lab::{command, iface};

/// Runs a shell command, panicking with its output on failure; returns its standard output.
#[track_caller]
pub fn sh(cmd: &str) -> String {
    command::sh(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd`, panicking with its output on failure; returns its standard output.
#[track_caller]
pub fn run(cmd: &mut Command) -> String {
    command::run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// The index of interface `name` in the calling thread's namespace; panics when there is none.
#[track_caller]
pub fn ifindex(name: &str) -> u32 {
    iface::ifindex(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Skips (returns true) when not root: these tests need CAP_BPF/CAP_NET_ADMIN.
pub fn not_root() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root");
    }
    !root
}

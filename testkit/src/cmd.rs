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

/// Fails the test (never a silent pass) when not root. Kernel tests need CAP_BPF and
/// CAP_NET_ADMIN; they are `#[ignore]`d with that reason, so a plain `cargo test` lists them as
/// skipped, and `scripts/test` runs them as root with `--include-ignored`.
#[track_caller]
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this kernel test needs root (CAP_BPF, CAP_NET_ADMIN)"
    );
}

/// Keeps the calling thread on the CPU it runs on (per-CPU state, e.g. the programs' rate limits,
/// then sees every packet the test sends).
pub fn pin_to_one_cpu() {
    // SAFETY: plain syscalls on the calling thread's own affinity mask.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(
            libc::sched_setaffinity(0, size, &set),
            0,
            "sched_setaffinity"
        );
    }
}

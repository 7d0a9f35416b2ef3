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
fn pin_to_one_cpu() {
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

/// Opens `sent` new flows through `datapath` on one CPU (`open(datapath, i)`, `i` in `0..sent`,
/// e.g. a test run of a SYN each) and checks what the program's per-CPU rate limit made of their
/// allow records (`records(datapath)`: written, lost): every flow is counted once, and since a
/// burst of T seconds spans at most T + 2 one-second windows of `FLOW_RECORDS_PER_SECOND` records,
/// at least the rest is lost.
pub fn check_flow_record_limit<D>(
    datapath: &mut D,
    sent: u64,
    mut open: impl FnMut(&mut D, u64),
    records: impl Fn(&D) -> (u64, u64),
) {
    let before = records(datapath);
    pin_to_one_cpu();
    let started = std::time::Instant::now();
    for i in 0..sent {
        open(datapath, i);
    }
    let elapsed = started.elapsed();
    let after = records(datapath);
    let (written, lost) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(written + lost, sent, "{elapsed:?}: {before:?} → {after:?}");
    let windows = elapsed.as_secs() + 2;
    let at_least = sent.saturating_sub(windows * portcullis_common::FLOW_RECORDS_PER_SECOND);
    assert!(
        lost >= at_least,
        "{elapsed:?}: {written} written, {lost} lost"
    );
    eprintln!("{sent} new flows in {elapsed:?}: {written} records written, {lost} lost");
}

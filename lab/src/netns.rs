//! Network namespaces by name (`/run/netns/NAME`, the iproute2 convention), entered with
//! `setns(2)` on a thread. Never `ip netns exec`: it remounts /sys, which hides bpffs.
//!
//! The one implementation of entering a namespace in this workspace: the lab, the benchmark
//! harness (perf) and the tests (through testkit) all use it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::Command;

use crate::command;
use crate::error::LabError;

pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Moves the calling thread into the network namespace open at `fd`.
pub fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor; CLONE_NEWNET is per thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `/run/netns/NAME`.
pub fn open(name: &str) -> io::Result<File> {
    File::open(Path::new(NETNS_DIR).join(name))
}

/// Runs `f` on a fresh thread that has entered the namespace open at `fd`, and returns its
/// result. Commands spawned from `f` run in the namespace too. A panic in `f` goes on in the
/// caller (so a test's assertion inside `f` fails the test with its own message).
pub fn run_in<T: Send>(fd: RawFd, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(fd)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`run_in`] the namespace named `name`.
pub fn run_in_named<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = open(name).map_err(|e| io::Error::new(e.kind(), format!("netns {name}: {e}")))?;
    run_in(file.as_raw_fd(), f)
}

/// Writes one `/proc/sys` value; the calling thread's network namespace decides which one.
pub fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    let full = format!("/proc/sys/{path}");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .map_err(|e| io::Error::new(e.kind(), format!("{full}: {e}")))?;
    f.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("{full}: {e}")))
}

/// Names of every namespace in `/run/netns`.
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// `ip netns add NAME` (retried: concurrent first uses of /run/netns can race in iproute2).
pub(crate) fn create(name: &str) -> Result<File, LabError> {
    let mut last = None;
    for attempt in 0..3 {
        match command::run(Command::new("ip").args(["netns", "add", name])) {
            Ok(_) => return open(name).map_err(|e| LabError::io("open netns", name, e)),
            Err(e) => {
                tracing::debug!(netns = name, attempt, "ip netns add failed: {e}");
                last = Some(e);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(LabError::command(
        "create netns",
        name,
        last.expect("three attempts failed"),
    ))
}

/// `ip netns del NAME`; a namespace already gone counts as deleted.
pub(crate) fn delete(name: &str) -> Result<(), LabError> {
    match command::run(Command::new("ip").args(["netns", "del", name])) {
        Err(e) if Path::new(NETNS_DIR).join(name).exists() => {
            Err(LabError::command("delete netns", name, e))
        }
        _ => Ok(()),
    }
}

/// The pid embedded in a lab namespace name `PREFIX-PID-N-ROLE`, if `name` has that shape.
pub(crate) fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, _role) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Deletes namespaces left by crashed runs: names `PREFIX-PID-N-ROLE` whose process is gone.
/// Returns the names deleted.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, LabError> {
    let mut deleted = Vec::new();
    for name in list() {
        let Some(pid) = owner_pid(prefix, &name) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(netns = %name, pid, "deleting stale lab namespace");
        delete(&name)?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// A namespace created by the lab, kept open so threads can enter it cheaply.
#[derive(Debug)]
pub(crate) struct Netns {
    pub name: String,
    pub file: File,
}

impl Netns {
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The namespace called `name` among `namespaces`.
pub(crate) fn find<'a>(namespaces: &'a [Netns], name: &str) -> Result<&'a Netns, LabError> {
    namespaces
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| LabError::UnknownNetns(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("pcl", "pcl-123-4-gw"), Some(123));
        assert_eq!(owner_pid("pcl", "pcl-123-4-p12"), Some(123));
        assert_eq!(owner_pid("pcl", "pclx-123-4-gw"), None);
        assert_eq!(owner_pid("pcl", "pcl-abc-4-gw"), None);
        assert_eq!(owner_pid("pcl", "pcl-123-gw"), None);
        assert_eq!(owner_pid("pcl", "other"), None);
    }
}

//! Network namespaces by name (`/run/netns/NAME`, the iproute2 convention), entered with
//! `setns(2)` on a thread. Never `ip netns exec`: it remounts /sys, which hides bpffs.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};

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

/// Runs `f` on a fresh thread that has entered the namespace `fd`, and returns its result.
pub fn run_in<T, F>(fd: RawFd, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(fd)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread inside netns panicked")))
    })
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

/// Sets offload features of `iface` in `netns` (`ethtool -K IFACE FEATURE on|off ...`; ethtool
/// touches no bpffs, so `ip netns exec` is fine here).
pub(crate) fn set_features(netns: &str, iface: &str, features: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ethtool", "-K", iface])
        .args(features)
        .output()
        .map_err(|e| LabError::io(format!("ethtool -K {iface}: run"), netns, e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        step: format!("ethtool -K {iface} {}", features.join(" ")),
        netns: netns.to_string(),
        detail: format!("ethtool: {}", String::from_utf8_lossy(&out.stderr).trim()),
    })
}

/// Runs `ip [-n NETNS] -batch -` with `lines` on its standard input.
pub(crate) fn ip_batch(netns: Option<&str>, step: &str, lines: &[String]) -> Result<(), LabError> {
    let child = spawn_ip_batch(netns, step, lines)?;
    wait_ip_batch(child, netns, step, lines)
}

pub(crate) fn spawn_ip_batch(
    netns: Option<&str>,
    step: &str,
    lines: &[String],
) -> Result<std::process::Child, LabError> {
    let label = netns.unwrap_or("(root)");
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::trace!(netns = label, step, "ip -batch:\n{}", lines.join("\n"));
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("{step}: spawn ip"), label, e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut text = lines.join("\n");
    text.push('\n');
    stdin
        .write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("{step}: write ip batch"), label, e))?;
    drop(stdin);
    Ok(child)
}

pub(crate) fn wait_ip_batch(
    child: std::process::Child,
    netns: Option<&str>,
    step: &str,
    lines: &[String],
) -> Result<(), LabError> {
    let label = netns.unwrap_or("(root)");
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("{step}: wait for ip"), label, e))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "Command failed -:N" names the failing line; show it.
    let failed_line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Command failed -:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .and_then(|n| lines.get(n.wrapping_sub(1)))
        .map(|l| format!(" (line: `{l}`)"))
        .unwrap_or_default();
    Err(LabError::Command {
        step: step.to_string(),
        netns: label.to_string(),
        detail: format!("ip: {}{failed_line}", stderr.trim()),
    })
}

/// `ip netns add NAME` (retried once: concurrent first uses of /run/netns can race in iproute2).
pub(crate) fn create(name: &str) -> Result<File, LabError> {
    let mut last = String::new();
    for attempt in 0..3 {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .map_err(|e| LabError::io("create netns: spawn ip", name, e))?;
        if out.status.success() {
            return open(name).map_err(|e| LabError::io("open netns", name, e));
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        tracing::debug!(netns = name, attempt, "ip netns add failed: {last}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(LabError::Command {
        step: "create netns".into(),
        netns: name.into(),
        detail: last,
    })
}

/// `ip netns del NAME`.
pub(crate) fn delete(name: &str) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(["netns", "del", name])
        .output()
        .map_err(|e| LabError::io("delete netns: spawn ip", name, e))?;
    if out.status.success() || !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    Err(LabError::Command {
        step: "delete netns".into(),
        netns: name.into(),
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
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

/// Whether interface `name` is up with its operational state up (IFF_RUNNING), seen from the calling
/// thread's network namespace.
pub fn link_running(sock: RawFd, name: &str) -> io::Result<bool> {
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of a valid ifreq.
    if unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
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

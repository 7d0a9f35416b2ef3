//! What a daemon checks before it loads or attaches anything, so that a start that cannot work
//! fails with one line saying what is wrong and how to fix it, and leaves nothing behind:
//! the capabilities it needs, bpffs under its pin directory, the interfaces it was given, and no
//! other daemon on the same pins (an exclusive lock on the pin directory, held while it runs).

use std::cell::RefCell;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `statfs.f_type` of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The checks of daemon `daemon` ("gateway", "node") that need nothing loaded; then the pin
/// directory is created if needed and locked. The returned lock is held while the daemon runs.
pub fn check(daemon: &str, pin_dir: &Path, interfaces: &[(&str, &str)]) -> Result<PinLock> {
    check_capabilities(daemon)?;
    check_bpffs(pin_dir)?;
    for (flag, name) in interfaces {
        check_interface(flag, name)?;
    }
    PinLock::acquire(daemon, pin_dir)
}

/// The capabilities a daemon needs: loading programs and maps (CAP_BPF and CAP_PERFMON, or
/// CAP_SYS_ADMIN), attaching them to interfaces (CAP_NET_ADMIN); the node daemon also enters
/// pods' network namespaces (CAP_SYS_ADMIN).
fn check_capabilities(daemon: &str) -> Result<()> {
    let effective = effective_capabilities()?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !sys_admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !sys_admin {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if daemon == "node" && !sys_admin {
        missing.push("CAP_SYS_ADMIN");
    }
    if !missing.is_empty() {
        bail!(
            "portcullis {daemon} lacks {}: run it as root (or in a privileged container, \
             or with those capabilities granted)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// `CapEff` of this process (/proc/self/status).
fn effective_capabilities() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("/proc/self/status has no CapEff line")?;
    u64::from_str_radix(hex.trim(), 16).context("/proc/self/status: CapEff is not hexadecimal")
}

/// The pin directory is (or will be created) on a bpf filesystem: pins anywhere else fail only
/// after the programs were loaded.
fn check_bpffs(pin_dir: &Path) -> Result<()> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let path = CString::new(existing.as_os_str().as_encoded_bytes())
        .with_context(|| format!("--pin-dir {}: not a usable path", pin_dir.display()))?;
    // SAFETY: all-zero is a valid statfs; the path is NUL-terminated.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "--pin-dir {}: {}: {e}",
            pin_dir.display(),
            existing.display()
        );
    }
    if fs.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "--pin-dir {} is not on a bpf filesystem ({} is not bpffs; is bpffs mounted?): \
             mount it with `mount -t bpf bpf /sys/fs/bpf`, or give a --pin-dir on a bpffs mount",
            pin_dir.display(),
            existing.display()
        );
    }
    // bpffs refuses names with a dot (EPERM): say so rather than "Operation not permitted".
    let created = pin_dir.strip_prefix(existing).unwrap_or(pin_dir);
    if created.as_os_str().as_encoded_bytes().contains(&b'.') {
        bail!(
            "--pin-dir {}: bpffs does not allow a '.' in the name of a directory it creates \
             ({}): choose a name without one",
            pin_dir.display(),
            created.display()
        );
    }
    Ok(())
}

/// Interface `name` (given with `--{flag}`) exists in this network namespace.
fn check_interface(flag: &str, name: &str) -> Result<()> {
    let c = CString::new(name).ok();
    // SAFETY: valid NUL-terminated string.
    let index = c.map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) });
    if index == 0 {
        bail!(
            "--{flag} {name}: no such interface in this network namespace (list them with \
             `ip link`; the daemon must run in the namespace that has it)"
        );
    }
    Ok(())
}

/// An exclusive `flock` on the pin directory: one daemon per set of pins. The kernel drops it
/// when the process dies (also on `kill -9`), so a restarted daemon takes it at once.
pub struct PinLock {
    /// The locked directory, held open for the lock; replaced when the directory was removed
    /// and made again under the running daemon ([`PinLock::follow`]).
    dir: RefCell<OwnedFd>,
    path: PathBuf,
    /// The pin directory, when this start created it (removed again if the start fails).
    created: Option<PathBuf>,
}

impl PinLock {
    fn acquire(daemon: &str, pin_dir: &Path) -> Result<PinLock> {
        let created = (!pin_dir.exists()).then(|| pin_dir.to_owned());
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("--pin-dir {}: creating it", pin_dir.display()))?;
        let dir = lock_dir(pin_dir)?;
        tracing::debug!(daemon, pin_dir = %pin_dir.display(), "pin directory locked");
        Ok(PinLock {
            dir: RefCell::new(dir),
            path: pin_dir.to_owned(),
            created,
        })
    }

    /// After pins were restored: when the directory itself was removed and made again, the
    /// lock moves to the new one (the old lock is on a directory nobody can find any more).
    pub fn follow(&self) -> Result<()> {
        let current = std::fs::metadata(&self.path)
            .with_context(|| format!("pin directory {}", self.path.display()))?;
        let held = std::fs::File::from(self.dir.borrow().try_clone()?).metadata()?;
        if (held.dev(), held.ino()) != (current.dev(), current.ino()) {
            *self.dir.borrow_mut() = lock_dir(&self.path)?;
            tracing::info!(pin_dir = %self.path.display(), "locked the pin directory made again");
        }
        Ok(())
    }

    /// A start that failed after the lock: when this start created the pin directory, it goes
    /// with everything pinned there (all of it this start's: its links too, so nothing stays
    /// attached once the process exits). An earlier run's pins are never touched.
    pub fn abandon(self) {
        if let Some(dir) = &self.created {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the pins of the failed start");
            }
        }
    }
}

/// Opens `pin_dir` and takes its exclusive lock, or says which daemon has it.
fn lock_dir(pin_dir: &Path) -> Result<OwnedFd> {
    let path = CString::new(pin_dir.as_os_str().as_encoded_bytes())
        .with_context(|| format!("--pin-dir {}: not a usable path", pin_dir.display()))?;
    // SAFETY: valid path; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        bail!("--pin-dir {}: {e}", pin_dir.display());
    }
    // SAFETY: a descriptor we just opened.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: our descriptor.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another portcullis daemon is running on the pins in {}: stop it first \
                 (a restart adopts its pins), or give this one another --pin-dir",
                pin_dir.display()
            );
        }
        bail!("--pin-dir {}: locking it: {e}", pin_dir.display());
    }
    Ok(dir)
}

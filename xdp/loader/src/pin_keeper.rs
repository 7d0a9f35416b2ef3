//! [`PinKeeper`]: the daemon's own descriptor of every object it pinned, so that a pin removed
//! under the running daemon (`rm -rf` of the pin directory, one map or link unlinked) can be
//! pinned again. Without it a removed link pin detaches the program the moment the daemon exits,
//! and a removed map pin makes the next daemon start with empty tables and flows.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

/// `union bpf_attr` as `BPF_OBJ_PIN` and `BPF_OBJ_GET` read it.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// One descriptor per pinned object, by pin name, under one directory.
pub struct PinKeeper {
    dir: PathBuf,
    held: Vec<(String, OwnedFd)>,
}

impl PinKeeper {
    /// Opens the objects pinned under `dir` as `names` (a name not pinned there is skipped).
    pub fn hold(dir: &Path, names: impl IntoIterator<Item = impl AsRef<str>>) -> Result<PinKeeper> {
        let mut keeper = PinKeeper {
            dir: dir.to_owned(),
            held: Vec::new(),
        };
        for name in names {
            keeper.hold_one(name.as_ref())?;
        }
        Ok(keeper)
    }

    /// Opens the object pinned as `name` (one pinned after the start, e.g. a new pod's link);
    /// nothing when it is not pinned or held already.
    pub fn hold_one(&mut self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        if self.held.iter().any(|(n, _)| n == name) || !path.exists() {
            return Ok(());
        }
        let fd = obj_get(&path).map_err(|source| Error::Io { path, source })?;
        self.held.push((name.to_owned(), fd));
        Ok(())
    }

    /// Lets go of `name` (its link was detached and unpinned on purpose).
    pub fn forget(&mut self, name: &str) {
        self.held.retain(|(n, _)| n != name);
    }

    /// Pins again every held object whose pin is gone (creating the directory if it went too);
    /// returns their names. A pin that cannot be restored is an error naming it; the objects
    /// stay held (and attached) while this process lives, and the next call tries again.
    pub fn restore(&self) -> Result<Vec<String>> {
        let missing: Vec<&(String, OwnedFd)> = (self.held.iter())
            .filter(|(name, _)| !self.dir.join(name).exists())
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut restored = Vec::new();
        for (name, fd) in missing {
            let path = self.dir.join(name);
            obj_pin(fd, &path).map_err(|source| Error::Io { path, source })?;
            restored.push(name.clone());
        }
        Ok(restored)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn bpf(cmd: libc::c_long, attr: &mut ObjAttr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` prefix of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ObjAttr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// `BPF_OBJ_GET`: a new descriptor of the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN`: pins the object of `fd` at `path`.
fn obj_pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

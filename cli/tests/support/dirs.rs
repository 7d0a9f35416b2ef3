//! The directories of one daemon run (for the test files that start daemons: included with
//! `#[path]`, like `applied.rs`): its pins in bpffs, its published state and the manifests it
//! reads, named after the test process and a tag, removed even when the test fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct DaemonDirs {
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub manifests: PathBuf,
}

impl DaemonDirs {
    /// The directories of run `tag`; the state and manifests directories are created empty.
    pub fn new(tag: &str) -> DaemonDirs {
        let id = format!("pcltest-{}-{tag}", std::process::id());
        let dirs = DaemonDirs {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            state_dir: std::env::temp_dir().join(format!("{id}-state")),
            manifests: std::env::temp_dir().join(format!("{id}-manifests")),
        };
        for d in [&dirs.state_dir, &dirs.manifests] {
            std::fs::create_dir_all(d).unwrap();
        }
        dirs
    }

    /// A `portcullis` command (`args`: `status ...`, `monitor ...`) on these pins and state.
    pub fn tool(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir);
        cmd
    }

    /// The daemon `args` (`gateway ...`, `node ...`) on these pins, state and manifests, logging
    /// warnings only, its output discarded.
    pub fn daemon(&self, args: &[&str]) -> Command {
        let mut cmd = self.tool(args);
        cmd.arg("--manifests")
            .arg(&self.manifests)
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }
}

impl Drop for DaemonDirs {
    fn drop(&mut self) {
        for d in [&self.pin_dir, &self.state_dir, &self.manifests] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

//! Running processes and closures inside the lab's namespaces.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::{Arc, Mutex};

use crate::{netns, Lab, LabError};

/// A process started in a lab namespace; killed by the lab's teardown if still running.
#[derive(Clone, Debug)]
pub struct LabChild(Arc<Mutex<Child>>);

impl LabChild {
    pub fn id(&self) -> u32 {
        self.lock().id()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Runs `f` on the child (to take its pipes, wait for it, …).
    pub fn with<R>(&self, f: impl FnOnce(&mut Child) -> R) -> R {
        f(&mut self.lock())
    }
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.lock().try_wait()
    }
    pub fn kill(&self) -> io::Result<()> {
        let mut c = self.lock();
        if c.try_wait()?.is_none() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Lab {
    fn pre_exec_setns(&self, netns: &str, cmd: &mut Command) -> Result<(), LabError> {
        let fd = self.find_netns(netns)?.fd();
        // SAFETY: the closure only calls setns, which is async-signal-safe; `fd` stays open in
        // the parent (owned by the lab) until spawn returns, and the child inherits it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Starts `cmd` inside lab namespace `netns` (setns before exec; mounts untouched, so bpffs
    /// stays visible). The lab kills it at teardown if it is still running.
    pub fn spawn_in(&mut self, netns: &str, mut cmd: Command) -> Result<LabChild, LabError> {
        self.pre_exec_setns(netns, &mut cmd)?;
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("spawn {:?}", cmd.get_program()), netns, e))?;
        let child = LabChild(Arc::new(Mutex::new(child)));
        self.children.push(child.clone());
        Ok(child)
    }

    /// Runs `cmd` to completion inside lab namespace `netns` and returns its output.
    pub fn output_in(&self, netns: &str, mut cmd: Command) -> Result<Output, LabError> {
        self.pre_exec_setns(netns, &mut cmd)?;
        cmd.output()
            .map_err(|e| LabError::io(format!("run {:?}", cmd.get_program()), netns, e))
    }

    /// Loads nftables script `script` (`nft -f -`, from standard input) in lab namespace `netns`.
    pub fn nft(&self, netns: &str, script: &str) -> Result<(), LabError> {
        use std::io::Write;
        use std::process::Stdio;
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        self.pre_exec_setns(netns, &mut cmd)?;
        let failed = |e: io::Error| LabError::io("run nft -f -", netns, e);
        let mut child = cmd.spawn().map_err(failed)?;
        let written =
            (child.stdin.take()).map_or(Ok(()), |mut stdin| stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(failed)?;
        written.map_err(failed)?;
        match out.status.success() {
            true => Ok(()),
            false => Err(LabError::Command {
                step: "nft -f -".into(),
                netns: netns.into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
        }
    }

    /// Runs `f` on a thread inside lab namespace `netns` (for loaders that need to be in the
    /// namespace, e.g. attaching tc programs to a pod's host-side interface).
    pub fn run_in_netns<T: Send>(
        &self,
        netns: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, LabError> {
        let fd = self.find_netns(netns)?.fd();
        netns::run_in(fd, f).map_err(|e| LabError::io("enter netns", netns, e))
    }
}

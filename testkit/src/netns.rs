//! Throw-away network namespaces for kernel tests.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sh;

/// A uniquely named network namespace, deleted on drop (also when the test panics).
pub struct NetNs {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!(
            "pcl-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        let ns = NetNs { name };
        ns.run(|| sh("ip link set lo up"));
        ns
    }

    /// Runs `f` on a thread that has entered this namespace (not `ip netns exec`: that remounts
    /// /sys and hides bpffs). Commands spawned from `f` run in the namespace too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("open netns");
                // SAFETY: valid fd; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

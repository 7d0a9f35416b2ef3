//! Throw-away network namespaces for kernel tests.

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
    /// /sys and hides bpffs). Commands spawned from `f` run in the namespace too; a panic in `f`
    /// fails the caller with its own message.
    #[track_caller]
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        portcullis_lab::netns::run_in_named(&self.name, f)
            .unwrap_or_else(|e| panic!("enter netns {}: {e}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ifindex, require_root};

    #[test]
    #[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
    fn runs_inside_and_passes_panics_on() {
        require_root();
        let ns = NetNs::new("tk");
        assert_eq!(ns.run(|| ifindex("lo")), 1);
        assert_eq!(ns.run(|| sh("ip -o link")).lines().count(), 1, "only lo");
        let panic = std::panic::catch_unwind(|| ns.run(|| panic!("inside")));
        let msg = panic.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"inside"));
    }
}

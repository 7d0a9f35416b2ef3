//! Throw-away network namespaces for kernel tests.

use std::path::PathBuf;
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

/// A pod, a gateway and an external namespace in a line, as the gateway's traffic tests wire
/// them: veth `p0` (pod) to `gc` (the gateway's cluster leg), veth `ge` (its external leg) to `x0`
/// (external). The links are down and have no addresses.
pub struct EdgeNs {
    pub pod: NetNs,
    pub gw: NetNs,
    pub ext: NetNs,
}

impl EdgeNs {
    /// Namespaces `pcl-{tag}p-…`, `pcl-{tag}g-…` and `pcl-{tag}x-…`.
    pub fn new(tag: &str) -> EdgeNs {
        EdgeNs::wire(tag, "", "")
    }

    /// With `cluster` queues on both ends of the cluster veth and `external` on the external's.
    pub fn with_queues(tag: &str, cluster: u32, external: u32) -> EdgeNs {
        let q = |n: u32| format!(" numrxqueues {n} numtxqueues {n}");
        EdgeNs::wire(tag, &q(cluster), &q(external))
    }

    fn wire(tag: &str, cluster_queues: &str, external_queues: &str) -> EdgeNs {
        let t = EdgeNs {
            pod: NetNs::new(&format!("{tag}p")),
            gw: NetNs::new(&format!("{tag}g")),
            ext: NetNs::new(&format!("{tag}x")),
        };
        sh(&format!(
            "ip link add p0 netns {}{cluster_queues} type veth peer name gc netns {}{cluster_queues} && \
             ip link add x0 netns {}{external_queues} type veth peer name ge netns {}{external_queues}",
            t.pod.name, t.gw.name, t.ext.name, t.gw.name
        ));
        t
    }
}

/// Two gateways side by side on the same two segments, as a highly available pair: the pod
/// namespace's bridge `p0` (ports `c0`, `c1`) joins the cluster legs `gc` of both gateway
/// namespaces, the external namespace's bridge `x0` (ports `e0`, `e1`) their external legs `ge`.
/// The ports are up; bridges and legs are down without addresses, so the pod and external sides
/// are set up by name as in an [`EdgeNs`].
pub struct EdgePairNs {
    pub pod: NetNs,
    pub gw: [NetNs; 2],
    pub ext: NetNs,
}

impl EdgePairNs {
    /// Namespaces `pcl-{tag}p-…`, `pcl-{tag}a-…`, `pcl-{tag}b-…` and `pcl-{tag}x-…`.
    pub fn new(tag: &str) -> EdgePairNs {
        let t = EdgePairNs {
            pod: NetNs::new(&format!("{tag}p")),
            gw: [
                NetNs::new(&format!("{tag}a")),
                NetNs::new(&format!("{tag}b")),
            ],
            ext: NetNs::new(&format!("{tag}x")),
        };
        for (i, gw) in t.gw.iter().enumerate() {
            sh(&format!(
                "ip link add c{i} netns {p} type veth peer name gc netns {g} && \
                 ip link add e{i} netns {x} type veth peer name ge netns {g}",
                p = t.pod.name,
                x = t.ext.name,
                g = gw.name
            ));
        }
        for (ns, bridge, port) in [(&t.pod, "p0", "c"), (&t.ext, "x0", "e")] {
            ns.run(|| {
                sh(&format!(
                    "ip link add {bridge} type bridge mcast_snooping 0 && \
                     for i in 0 1; do ip link set {port}$i master {bridge} && \
                     ip link set {port}$i up; done"
                ))
            });
        }
        t
    }
}

/// A bpffs pin directory of a test's own (named after its namespace), removed when dropped,
/// even when the test fails.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn of(ns: &NetNs) -> PinDir {
        PinDir(PathBuf::from(format!("/sys/fs/bpf/{}", ns.name)))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

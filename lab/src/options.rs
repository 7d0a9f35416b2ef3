//! How to build and probe a lab.

use std::time::Duration;

/// How to build and probe a lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace names are `PREFIX-PID-N-ROLE`.
    pub prefix: String,
    /// Per attempt: TCP connect, then the server's byte; UDP echo; SCTP INIT ACK.
    pub timeout: Duration,
    /// Extra attempts after a timeout (never after a definite answer).
    pub retries: u32,
    /// Probes run at once by [`Lab::probe_all`](crate::Lab::probe_all).
    pub parallelism: usize,
    /// Delete namespaces of this prefix left by dead processes before building.
    pub cleanup_stale: bool,
    /// Nodes that pods naming no node are spread over (round-robin), so both same-node and
    /// cross-node paths carry traffic.
    pub unscheduled_nodes: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: "pcl".into(),
            timeout: Duration::from_millis(700),
            retries: 1,
            parallelism: 128,
            cleanup_stale: true,
            unscheduled_nodes: 1,
        }
    }
}

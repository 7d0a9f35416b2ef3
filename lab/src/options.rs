//! How to build and probe a lab.

use std::net::IpAddr;
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
    /// The nodes' default routes go to a plain router (`ID-rt`) on the cluster segment instead
    /// of the gateway, so only steering (policy routing on the nodes) brings pod egress to the
    /// gateway; traffic that escapes it reaches the external hosts through the router.
    pub steer_via_router: bool,
    /// Addresses the gateway translates pod sources to: the external namespace routes each
    /// on-link towards the gateway's external leg with no static neighbour entry, so the
    /// gateway's ARP/ND answers for them are exercised.
    pub egress_ips: Vec<IpAddr>,
    /// A second gateway (`ID-gw2`, Node `gateway-b`, needs `steer_via_router`) on the same
    /// cluster segment and, through a bridge in the external namespace, the same external
    /// segment, so an egress IP can move between the two (failover).
    pub standby_gateway: bool,
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
            steer_via_router: false,
            egress_ips: Vec::new(),
            standby_gateway: false,
        }
    }
}

//! portcullis-lab: a cluster made of network namespaces, for testing enforcement on real traffic.
//!
//! ```text
//!  pod netns (eth0) ──veth── node netns (podN … gw0) ──veth── gateway netns ──veth── ext netns
//!   pod IPs /32 /128          /32 /128 route per pod      (cluster)   (external)    every external
//!   default via 169.254.1.1   default → gateway           pod IPs → their node      address, default
//!   / fe80::1 (on-link)                                    default → external        → gateway
//! ```
//!
//! With pods on more than one node (`Pod::node`), each node's `gw0` and the gateway's `cluster` leg
//! are ports of a bridge in a fabric namespace instead; nodes route each other's pods straight
//! across it (pod-to-pod traffic never crosses the gateway, as in a real cluster).
//!
//! With [`LabOptions::steer_via_router`] the nodes' default routes go to a plain router instead,
//! so only steering (policy routing on the nodes, `portcullis-steering`) brings pod egress to the
//! gateway, whose cluster leg is a node of the lab ([`Lab::node_manifest`]):
//!
//! ```text
//!  node netns gw0 ──┐ fabric netns (br0)       ┌── gateway netns ── external ──┐
//!  node netns gw0 ──┼── n0 n1 … gw rt ─────────┤   169.254.16.1, fe80::a:1     ├── ext netns
//!   default → rt    │                          └── router netns (ID-rt) ───────┘   eth0 (gateway)
//!                                                  169.254.31.254, fe80::a:fffe    rt0 (router),
//!                                                  default → ext                   default → gateway
//! ```
//!
//! Traffic that escapes steering still reaches the external hosts (through the router); replies
//! to pod addresses always come back through the gateway. Each of [`LabOptions::egress_ips`] is
//! routed on-link from the external namespace towards the gateway's external leg.
//!
//! With [`LabOptions::standby_gateway`] a second gateway (`ID-gw2`, Node `gateway-b`, cluster leg
//! 169.254.31.253 / fe80::a:fffd) joins the fabric, and a bridge in the external namespace
//! (`brx`, holding the external addresses) joins both gateways' external legs: the egress IPs are
//! answered by whichever gateway owns them, so they can move from one to the other.
//!
//! Every neighbour entry is static (permanent), so no ARP/ND has to happen before the first packet
//! (the egress IPs' excepted); forwarding is on in nodes, gateway and router, rp_filter off, IPv6
//! DAD off. Servers run on threads that
//! `setns` into their namespace; probes run on threads that `setns` into the source namespace.
//! Nothing is ever run through `ip netns exec` (it remounts /sys, which hides bpffs).
//!
//! The gateway's legs are `cluster` and `external` (see [`Lab::gateway`]); the node side of each pod
//! is [`PodAttachment::host_iface`] in [`PodAttachment::node_netns`], where node hooks attach.

mod addressing;
mod client;
pub mod command;
mod error;
mod exec;
pub mod iface;
mod manifest;
pub mod netns;
mod observation;
mod options;
mod probing;
pub mod sctp;
mod server;
mod topology;
mod wire;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use portcullis_policy::model::{Protocol, Snapshot};
use portcullis_policy::probe::Probe;

pub use addressing::{
    format_mac, EGRESS_GATEWAY_LABEL, EXT_BRIDGE, EXT_IFACE, EXT_ROUTER_IFACE, EXT_STANDBY_IFACE,
    FABRIC_BRIDGE, GATEWAY_CLUSTER_IFACE, GATEWAY_EXTERNAL_IFACE, GATEWAY_NODE, NODE_UPLINK_IFACE,
    POD_GATEWAY_V4, POD_GATEWAY_V6, POD_IFACE, ROUTER_CLUSTER_IFACE, ROUTER_EXTERNAL_IFACE,
    STANDBY_GATEWAY_NODE,
};
pub use error::LabError;
pub use exec::LabChild;
pub use ipnet::IpNet;
pub use netns::cleanup_stale;
pub use observation::{Observation, Verdict};
pub use options::LabOptions;
pub use topology::{GatewayLegs, NodeInfo, PodAttachment};

use netns::Netns;
use server::{Arrivals, Server};
use topology::{pod_key, Topology};

/// A built lab. Dropping it (or [`Lab::teardown`]) kills its children, stops its servers and
/// deletes every namespace it made.
pub struct Lab {
    topo: Topology,
    opts: LabOptions,
    netns: Vec<Netns>,
    servers: Vec<Server>,
    children: Vec<LabChild>,
    prepared: HashSet<(IpAddr, Protocol, u16)>,
    arrivals: Arrivals,
    torn_down: bool,
}

fn next_lab_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Lab {
    /// Builds the namespaces for every pod of `snapshot` that has addresses (host-network pods are
    /// not modelled), a node, the gateway and the external hosts named by `probes`, and starts a
    /// server for every destination, protocol and port in `probes`.
    pub fn build(snapshot: &Snapshot, probes: &[Probe], opts: LabOptions) -> Result<Lab, LabError> {
        let started = Instant::now();
        if opts.cleanup_stale {
            match netns::cleanup_stale(&opts.prefix) {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(count = gone.len(), "deleted stale lab namespaces")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cleaning stale namespaces: {e}"),
            }
        }
        let id = format!(
            "{}-{}-{}",
            opts.prefix,
            std::process::id(),
            next_lab_number()
        );
        let topo = Topology::plan(id, snapshot, probes, &opts)?;
        let mut lab = Lab {
            topo,
            opts,
            netns: Vec::new(),
            servers: Vec::new(),
            children: Vec::new(),
            prepared: HashSet::new(),
            arrivals: Arc::default(),
            torn_down: false,
        };
        let specs = lab.server_specs(probes);

        // On failure, dropping `lab` deletes whatever was created.
        wire::wire(&lab.topo, &mut lab.netns)?;
        for (name, spec) in specs {
            if spec.is_empty() {
                continue;
            }
            let ns = lab.find_netns(&name)?;
            let server = Server::start(&name, &ns.file, spec, lab.arrivals.clone())?;
            lab.servers.push(server);
        }
        tracing::info!(
            lab = %lab.topo.id,
            pods = lab.topo.pods.len(),
            externals = lab.topo.externals.len(),
            servers = lab.servers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "lab built"
        );
        Ok(lab)
    }

    fn find_netns(&self, name: &str) -> Result<&Netns, LabError> {
        netns::find(&self.netns, name)
    }

    /// The lab's id (`PREFIX-PID-N`); every namespace name starts with it.
    pub fn id(&self) -> &str {
        &self.topo.id
    }

    pub fn options(&self) -> &LabOptions {
        &self.opts
    }

    /// Names of every namespace the lab made.
    pub fn namespaces(&self) -> Vec<&str> {
        self.netns.iter().map(|n| n.name.as_str()).collect()
    }

    pub fn gateway(&self) -> &GatewayLegs {
        &self.topo.gateway
    }

    /// With [`LabOptions::standby_gateway`], the second gateway (Node [`STANDBY_GATEWAY_NODE`]).
    pub fn standby_gateway(&self) -> Option<&GatewayLegs> {
        self.topo.standby.as_ref()
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.topo.nodes
    }

    /// With more than one node or a router, the namespace whose bridge ([`FABRIC_BRIDGE`]) joins
    /// the nodes' uplinks, the gateway's cluster leg and the router's; `None` with one node and no
    /// router (uplink and cluster leg are the two ends of one veth).
    pub fn fabric_netns(&self) -> Option<&str> {
        self.topo.fabric_netns.as_deref()
    }

    /// With [`LabOptions::steer_via_router`], the nodes' default router (legs
    /// [`ROUTER_CLUSTER_IFACE`] and [`ROUTER_EXTERNAL_IFACE`]).
    pub fn router_netns(&self) -> Option<&str> {
        self.topo.router_netns.as_deref()
    }

    /// A v1 `Node` per lab node (InternalIP: its uplink's IPv4 and IPv6 addresses) and one named
    /// [`GATEWAY_NODE`] for the gateway (InternalIP: its cluster leg's addresses, label
    /// [`EGRESS_GATEWAY_LABEL`]` = "true"`), as multi-document YAML.
    pub fn node_manifest(&self) -> String {
        self.topo.node_manifest()
    }

    /// What steering on the nodes must never steer: every pod address (/32, /128) and the
    /// cluster segment (169.254.16.0/20, fe80::/64). The steering device is
    /// [`NODE_UPLINK_IFACE`]; it is required, since the gateway's IPv6 next hop is link-local.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        self.topo.cluster_cidrs()
    }

    /// The egress IPs the external namespace routes towards the gateway, in address order.
    pub fn egress_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.topo.egress_ips.iter()
    }

    /// The external namespace's device holding the external addresses (on the gateways'
    /// segment): [`EXT_BRIDGE`] with a standby gateway, else [`EXT_IFACE`].
    pub fn external_device(&self) -> &'static str {
        self.topo.external_device()
    }

    /// The namespace holding every external address.
    pub fn external_netns(&self) -> &str {
        &self.topo.ext_netns
    }

    pub fn external_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.topo.externals.iter()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodAttachment> {
        self.topo.pods.get(&pod_key(namespace, name))
    }

    /// Every modelled pod: its namespace, and the (node netns, host-side interface) of its veth.
    pub fn pods(&self) -> impl Iterator<Item = &PodAttachment> {
        self.topo.pods.values()
    }

    /// Kills children, stops servers and deletes every namespace. Idempotent; also run on drop.
    pub fn teardown(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for c in self.children.drain(..) {
            if let Err(e) = c.kill() {
                tracing::warn!(pid = c.id(), "killing lab child: {e}");
            }
        }
        for mut s in self.servers.drain(..) {
            s.stop();
        }
        let mut first_err = None;
        for n in self.netns.drain(..).rev() {
            let name = n.name.clone();
            drop(n);
            if let Err(e) = netns::delete(&name) {
                tracing::warn!("{e}");
                first_err.get_or_insert(e);
            }
        }
        tracing::debug!(lab = %self.topo.id, "lab torn down");
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(lab = %self.topo.id, "teardown: {e}");
        }
    }
}

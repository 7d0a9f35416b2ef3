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
//! Every neighbour entry is static (permanent), so no ARP/ND has to happen before the first packet;
//! forwarding is on in node and gateway, rp_filter off, IPv6 DAD off. Servers run on threads that
//! `setns` into their namespace; probes run on threads that `setns` into the source namespace.
//! Nothing is ever run through `ip netns exec` (it remounts /sys, which hides bpffs).
//!
//! The gateway's legs are `cluster` and `external` (see [`Lab::gateway`]); the node side of each pod
//! is [`PodAttachment::host_iface`] in [`PodAttachment::node_netns`], where node hooks attach.

mod client;
mod error;
pub mod netns;
pub mod sctp;
mod server;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_policy::model::{Protocol, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};

pub use error::LabError;
pub use netns::cleanup_stale;

use client::Outcome;
use netns::Netns;
use server::{Arrivals, Server, ServerSpec};

/// Name of the pod-side interface in every pod namespace.
pub const POD_IFACE: &str = "eth0";
/// The gateway's leg towards the node(s).
pub const GATEWAY_CLUSTER_IFACE: &str = "cluster";
/// The gateway's leg towards the external hosts.
pub const GATEWAY_EXTERNAL_IFACE: &str = "external";
/// The node's interface towards the gateway.
pub const NODE_UPLINK_IFACE: &str = "gw0";
/// The external namespace's interface towards the gateway.
pub const EXT_IFACE: &str = "eth0";

/// The next hop pods use (on-link, answered by a static neighbour entry for the node's MAC).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
// Transit links (link-local, so they never collide with a pod or external address).
// Cluster segment (gateway's cluster leg and every node's uplink): 169.254.16.0/20, fe80::/64.
const GW_CLUSTER_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 16, 1);
const CLUSTER_PREFIX_V4: u8 = 20;
const GW_EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 5);
const EXT_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 6);
const GW_CLUSTER_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa, 1);
const GW_EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xb, 1);
const EXT_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xb, 2);

const MAC_GW_CLUSTER: [u8; 6] = [0x02, 0x70, 0x63, 0x03, 0x00, 0x00];
/// Name of the bridge in the fabric namespace (only with more than one node).
pub const FABRIC_BRIDGE: &str = "br0";
/// The fabric's port towards the gateway's cluster leg.
const FABRIC_GW_PORT: &str = "gw";

fn node_uplink_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(GW_CLUSTER_V4) + 1 + i as u32)
}

fn node_uplink_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(GW_CLUSTER_V6) + 1 + i as u128)
}

fn node_uplink_mac(i: usize) -> [u8; 6] {
    let n = i + 1;
    [0x02, 0x70, 0x63, 0x03, (n >> 8) as u8, n as u8]
}
const MAC_GW_EXTERNAL: [u8; 6] = [0x02, 0x70, 0x63, 0x04, 0x00, 0x01];
const MAC_EXT: [u8; 6] = [0x02, 0x70, 0x63, 0x04, 0x00, 0x02];

fn host_mac(i: usize) -> [u8; 6] {
    let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
    [0x02, 0x70, 0x63, 0x01 | (a << 4), b, c]
}

fn pod_mac(i: usize) -> [u8; 6] {
    let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
    [0x02, 0x70, 0x63, 0x02 | (a << 4), b, c]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// How to build and probe a lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace names are `PREFIX-PID-N-ROLE`.
    pub prefix: String,
    /// Per attempt: TCP connect, then the server's byte; UDP echo; SCTP INIT ACK.
    pub timeout: Duration,
    /// Extra attempts after a timeout (never after a definite answer).
    pub retries: u32,
    /// Probes run at once by [`Lab::probe_all`].
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

/// What the traffic did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// The result of one probe on real traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Allow: the attempt reached the server and its answer came back (TCP: connected and the
    /// server's byte arrived, or a RST came back — detail "refused"; UDP: the echo arrived; SCTP:
    /// the INIT ACK arrived).
    pub verdict: Verdict,
    /// "connected", "refused", "reply received", "init ack received", "timeout",
    /// "init arrived, no init ack came back", "unreachable: …", …
    pub detail: String,
    pub from_addr: IpAddr,
    pub to: SocketAddr,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// The gateway namespace and its two legs: run `portcullis gateway --cluster-iface
/// CLUSTER --external-iface EXTERNAL` in it with [`Lab::spawn_in`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLegs {
    pub netns: String,
    pub cluster_iface: String,
    pub external_iface: String,
}

/// A node namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The pods' `node` (or "node-0" when pods name none).
    pub name: String,
    pub netns: String,
    /// Interface towards the gateway's cluster leg (directly, or through the fabric bridge when
    /// there is more than one node).
    pub uplink_iface: String,
    pub uplink_ipv4: Ipv4Addr,
    pub uplink_ipv6: Ipv6Addr,
    pub uplink_mac: [u8; 6],
}

/// Where a pod lives and how it is wired to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    /// `namespace/name`.
    pub pod: String,
    pub netns: String,
    /// The pod-side interface ([`POD_IFACE`]).
    pub iface: String,
    pub mac: [u8; 6],
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub node_netns: String,
    /// The host side of the pod's veth, in the node namespace: where node hooks attach.
    pub host_iface: String,
    pub host_mac: [u8; 6],
}

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

/// A built lab. Dropping it (or [`Lab::teardown`]) kills its children, stops its servers and
/// deletes every namespace it made.
pub struct Lab {
    id: String,
    opts: LabOptions,
    netns: Vec<Netns>,
    nodes: Vec<NodeInfo>,
    gateway: GatewayLegs,
    ext_netns: String,
    /// With more than one node: the namespace whose bridge joins the nodes and the gateway.
    fabric_netns: Option<String>,
    pods: BTreeMap<String, PodAttachment>,
    externals: BTreeSet<IpAddr>,
    servers: Vec<Server>,
    children: Vec<LabChild>,
    prepared: HashSet<(IpAddr, Protocol, u16)>,
    arrivals: Arrivals,
    torn_down: bool,
}

/// A probe resolved to namespaces and addresses.
struct Resolved {
    src_netns: String,
    src: IpAddr,
    dst: SocketAddr,
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn is_lab_reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn cannot_host(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST
}

fn next_lab_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Picks the addresses a probe uses: the first destination address in a family the source has,
/// IPv4 first.
fn pick_pair(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    for want_v4 in [true, false] {
        let s = src.iter().find(|a| a.is_ipv4() == want_v4);
        let d = dst.iter().find(|a| a.is_ipv4() == want_v4);
        if let (Some(s), Some(d)) = (s, d) {
            return Some((*s, *d));
        }
    }
    None
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

        // Pods and nodes: a pod that names no node goes to one of `unscheduled_nodes` nodes
        // ("node-0", "node-1", ...), round-robin in manifest order.
        let mut pods = BTreeMap::new();
        let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
        let modelled: Vec<_> = snapshot
            .pods
            .iter()
            .filter(|p| !p.host_network && !p.ips.is_empty())
            .collect();
        let spread = opts.unscheduled_nodes.max(1);
        let node_of_pod: BTreeMap<String, String> = modelled
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = p
                    .node
                    .clone()
                    .unwrap_or_else(|| format!("node-{}", i % spread));
                (p.key(), node)
            })
            .collect();
        let node_of = |p: &portcullis_policy::model::Pod| node_of_pod[&p.key()].clone();
        let node_names: BTreeSet<String> = modelled.iter().map(|p| node_of(p)).collect();
        let nodes: Vec<NodeInfo> = node_names
            .iter()
            .enumerate()
            .map(|(i, name)| NodeInfo {
                name: name.clone(),
                netns: format!("{id}-n{i}"),
                uplink_iface: NODE_UPLINK_IFACE.into(),
                uplink_ipv4: node_uplink_v4(i),
                uplink_ipv6: node_uplink_v6(i),
                uplink_mac: node_uplink_mac(i),
            })
            .collect();
        let nodes = if nodes.is_empty() {
            vec![NodeInfo {
                name: "node-0".into(),
                netns: format!("{id}-n0"),
                uplink_iface: NODE_UPLINK_IFACE.into(),
                uplink_ipv4: node_uplink_v4(0),
                uplink_ipv6: node_uplink_v6(0),
                uplink_mac: node_uplink_mac(0),
            }]
        } else {
            nodes
        };
        if nodes.len() > 4000 {
            return Err(LabError::Unsupported(format!("{} nodes", nodes.len())));
        }
        for (i, p) in modelled.iter().enumerate() {
            let key = p.key();
            for ip in &p.ips {
                if is_lab_reserved(*ip) || cannot_host(*ip) {
                    return Err(LabError::AddressConflict {
                        addr: *ip,
                        detail: format!("pod {key}: link-local/special addresses are lab-reserved"),
                    });
                }
                if let Some(other) = owner.insert(*ip, key.clone()) {
                    return Err(LabError::AddressConflict {
                        addr: *ip,
                        detail: format!("held by both {other} and {key}"),
                    });
                }
            }
            pods.insert(
                key.clone(),
                PodAttachment {
                    pod: key,
                    netns: format!("{id}-p{i}"),
                    iface: POD_IFACE.into(),
                    mac: pod_mac(i),
                    ips: p.ips.clone(),
                    node_netns: nodes
                        .iter()
                        .find(|n| n.name == node_of(p))
                        .map(|n| n.netns.clone())
                        .expect("every pod's node is listed"),
                    node: node_of(p),
                    host_iface: format!("pod{i}"),
                    host_mac: host_mac(i),
                },
            );
        }

        // External hosts.
        let mut externals = BTreeSet::new();
        for probe in probes {
            for ep in [&probe.from, &probe.to] {
                if let ProbeEndpoint::External(ip) = ep {
                    if let Some(pod) = owner.get(ip) {
                        return Err(LabError::AddressConflict {
                            addr: *ip,
                            detail: format!("external address of probe {probe} is pod {pod}'s"),
                        });
                    }
                    if is_lab_reserved(*ip) || cannot_host(*ip) {
                        return Err(LabError::AddressConflict {
                            addr: *ip,
                            detail: format!("probe {probe}: the lab cannot host this address"),
                        });
                    }
                    externals.insert(*ip);
                }
            }
        }

        let mut lab = Lab {
            gateway: GatewayLegs {
                netns: format!("{id}-gw"),
                cluster_iface: GATEWAY_CLUSTER_IFACE.into(),
                external_iface: GATEWAY_EXTERNAL_IFACE.into(),
            },
            ext_netns: format!("{id}-ext"),
            fabric_netns: (nodes.len() > 1).then(|| format!("{id}-fab")),
            nodes,
            id,
            opts,
            netns: Vec::new(),
            pods,
            externals,
            servers: Vec::new(),
            children: Vec::new(),
            prepared: HashSet::new(),
            arrivals: Arc::default(),
            torn_down: false,
        };

        // What each destination namespace serves.
        let mut specs: BTreeMap<String, ServerSpec> = BTreeMap::new();
        for probe in probes {
            // A probe that cannot be resolved (unknown pod, no common family) gets its error from
            // `probe`; it does not stop the rest of the lab.
            let resolved = lab
                .resolve(probe)
                .and_then(|r| Ok((r, lab.endpoint_netns(&probe.to)?)));
            let (r, dst_netns) = match resolved {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%probe, "not served: {e}");
                    continue;
                }
            };
            let spec = specs.entry(dst_netns).or_default();
            match probe.protocol {
                Protocol::Tcp => {
                    spec.tcp.insert(r.dst);
                }
                Protocol::Udp => {
                    spec.udp.insert(r.dst);
                }
                Protocol::Sctp => {
                    spec.sctp
                        .entry(r.dst.ip())
                        .or_default()
                        .insert(r.dst.port());
                }
            }
            lab.prepared
                .insert((r.dst.ip(), probe.protocol, r.dst.port()));
        }

        // On failure, dropping `lab` deletes whatever was created.
        lab.wire()?;
        for (name, spec) in specs {
            if spec.is_empty() {
                continue;
            }
            let ns = lab.find_netns(&name)?;
            let server = Server::start(&name, &ns.file, spec, lab.arrivals.clone())?;
            lab.servers.push(server);
        }
        tracing::info!(
            lab = %lab.id,
            pods = lab.pods.len(),
            externals = lab.externals.len(),
            servers = lab.servers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "lab built"
        );
        Ok(lab)
    }

    fn find_netns(&self, name: &str) -> Result<&Netns, LabError> {
        self.netns
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::UnknownNetns(name.to_string()))
    }

    fn endpoint_netns(&self, ep: &ProbeEndpoint) -> Result<String, LabError> {
        match ep {
            ProbeEndpoint::External(_) => Ok(self.ext_netns.clone()),
            ProbeEndpoint::Pod { namespace, name } => {
                let key = pod_key(namespace, name);
                self.pods
                    .get(&key)
                    .map(|p| p.netns.clone())
                    .ok_or(LabError::UnknownPod(key))
            }
        }
    }

    fn endpoint_addrs(&self, ep: &ProbeEndpoint) -> Result<Vec<IpAddr>, LabError> {
        match ep {
            ProbeEndpoint::External(ip) => Ok(vec![*ip]),
            ProbeEndpoint::Pod { namespace, name } => {
                let key = pod_key(namespace, name);
                self.pods
                    .get(&key)
                    .map(|p| p.ips.clone())
                    .ok_or(LabError::UnknownPod(key))
            }
        }
    }

    fn resolve(&self, probe: &Probe) -> Result<Resolved, LabError> {
        let src_netns = self.endpoint_netns(&probe.from)?;
        let src = self.endpoint_addrs(&probe.from)?;
        let dst = self.endpoint_addrs(&probe.to)?;
        if let ProbeEndpoint::External(ip) = &probe.from {
            if !self.externals.contains(ip) {
                return Err(LabError::NotPrepared(probe.to_string()));
            }
        }
        let (s, d) = pick_pair(&src, &dst).ok_or_else(|| LabError::NoCommonFamily {
            from: probe.from.to_string(),
            to: probe.to.to_string(),
        })?;
        Ok(Resolved {
            src_netns,
            src: s,
            dst: SocketAddr::new(d, probe.port),
        })
    }

    fn create_netns(&mut self, name: &str) -> Result<(), LabError> {
        let file = netns::create(name)?;
        self.netns.push(Netns {
            name: name.to_string(),
            file,
        });
        Ok(())
    }

    /// Creates and wires every namespace.
    fn wire(&mut self) -> Result<(), LabError> {
        let nodes = self.nodes.clone();
        let gw = self.gateway.netns.clone();
        let ext = self.ext_netns.clone();
        let fabric = self.fabric_netns.clone();
        let pods: Vec<PodAttachment> = self.pods.values().cloned().collect();
        for name in nodes.iter().map(|n| &n.netns).chain([&gw, &ext]) {
            self.create_netns(name)?;
        }
        if let Some(f) = &fabric {
            self.create_netns(f)?;
        }
        for p in &pods {
            self.create_netns(&p.netns)?;
        }

        // Sysctls, from one thread that visits each namespace.
        let routers: HashSet<&str> = nodes
            .iter()
            .map(|n| n.netns.as_str())
            .chain([gw.as_str()])
            .collect();
        let targets: Vec<(String, RawFd, bool)> = self
            .netns
            .iter()
            .map(|n| (n.name.clone(), n.fd(), routers.contains(n.name.as_str())))
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<(), LabError> {
                for (name, fd, router) in &targets {
                    netns::enter(*fd).map_err(|e| LabError::io("setns for sysctls", name, e))?;
                    let mut settings = vec![
                        ("net/ipv6/conf/all/disable_ipv6", "0"),
                        ("net/ipv6/conf/default/disable_ipv6", "0"),
                        ("net/ipv6/conf/all/accept_dad", "0"),
                        ("net/ipv6/conf/default/accept_dad", "0"),
                        ("net/ipv6/conf/all/accept_ra", "0"),
                        ("net/ipv6/conf/default/accept_ra", "0"),
                        ("net/ipv4/conf/all/rp_filter", "0"),
                        ("net/ipv4/conf/default/rp_filter", "0"),
                    ];
                    if *router {
                        settings.extend([
                            ("net/ipv4/ip_forward", "1"),
                            ("net/ipv6/conf/all/forwarding", "1"),
                            ("net/ipv6/conf/default/forwarding", "1"),
                            ("net/ipv4/conf/all/send_redirects", "0"),
                            ("net/ipv4/conf/default/send_redirects", "0"),
                        ]);
                    }
                    for (path, value) in settings {
                        netns::write_sysctl(path, value)
                            .map_err(|e| LabError::io("sysctl", name, e))?;
                    }
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(LabError::Unsupported("sysctl thread panicked".into())))
        })?;

        let mac = format_mac;
        let v4 = |ips: &[IpAddr]| {
            ips.iter().find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                _ => None,
            })
        };
        let v6 = |ips: &[IpAddr]| {
            ips.iter().find_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                _ => None,
            })
        };
        let neigh = |ip: &dyn fmt::Display, m: &[u8; 6], dev: &str| {
            format!(
                "neigh replace {ip} lladdr {} dev {dev} nud permanent",
                mac(m)
            )
        };

        // Phase 1: create the veth pairs (each end straight into its namespace). One node: its
        // uplink is the gateway's cluster leg's peer. More: both go to ports of the fabric bridge.
        let mut fabric_ports = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let mut links = vec![match &fabric {
                None => format!(
                    "link add {NODE_UPLINK_IFACE} address {} type veth peer name {GATEWAY_CLUSTER_IFACE} address {} netns {gw}",
                    mac(&node.uplink_mac),
                    mac(&MAC_GW_CLUSTER)
                ),
                Some(f) => {
                    fabric_ports.push(format!("n{i}"));
                    format!(
                        "link add {NODE_UPLINK_IFACE} address {} type veth peer name n{i} netns {f}",
                        mac(&node.uplink_mac)
                    )
                }
            }];
            for p in pods.iter().filter(|p| p.node_netns == node.netns) {
                links.push(format!(
                    "link add {} address {} type veth peer name {POD_IFACE} address {} netns {}",
                    p.host_iface,
                    mac(&p.host_mac),
                    mac(&p.mac),
                    p.netns
                ));
            }
            netns::ip_batch(Some(&node.netns), "create node links", &links)?;
        }
        let mut gw_links = vec![format!(
            "link add {GATEWAY_EXTERNAL_IFACE} address {} type veth peer name {EXT_IFACE} address {} netns {ext}",
            mac(&MAC_GW_EXTERNAL),
            mac(&MAC_EXT)
        )];
        if let Some(f) = &fabric {
            fabric_ports.push(FABRIC_GW_PORT.to_string());
            gw_links.push(format!(
                "link add {GATEWAY_CLUSTER_IFACE} address {} type veth peer name {FABRIC_GW_PORT} netns {f}",
                mac(&MAC_GW_CLUSTER)
            ));
        }
        netns::ip_batch(Some(&gw), "create gateway links", &gw_links)?;

        // Phase 2: addresses, routes and static neighbours, every namespace at once.
        let mut batches: Vec<(String, &'static str, Vec<String>)> = Vec::new();
        let mut fabric_batch = None;
        if let Some(f) = &fabric {
            let mut b = vec![
                "link set lo up".to_string(),
                format!("link add {FABRIC_BRIDGE} type bridge"),
            ];
            for port in &fabric_ports {
                b.push(format!("link set {port} up"));
            }
            for port in &fabric_ports {
                b.push(format!("link set {port} master {FABRIC_BRIDGE}"));
            }
            b.push(format!("link set {FABRIC_BRIDGE} up"));
            fabric_batch = Some((f.clone(), b));
        }
        for node in &nodes {
            let up = NODE_UPLINK_IFACE;
            let mut n = vec![
                "link set lo up".to_string(),
                format!("link set {up} up"),
                format!("addr add {}/{CLUSTER_PREFIX_V4} dev {up}", node.uplink_ipv4),
                format!("addr add {}/64 dev {up} nodad", node.uplink_ipv6),
                neigh(&GW_CLUSTER_V4, &MAC_GW_CLUSTER, up),
                neigh(&GW_CLUSTER_V6, &MAC_GW_CLUSTER, up),
                format!("route add 0.0.0.0/0 via {GW_CLUSTER_V4} dev {up}"),
                format!("route add ::/0 via {GW_CLUSTER_V6} dev {up}"),
            ];
            for other in nodes.iter().filter(|o| o.netns != node.netns) {
                n.push(neigh(&other.uplink_ipv4, &other.uplink_mac, up));
                n.push(neigh(&other.uplink_ipv6, &other.uplink_mac, up));
            }
            for p in &pods {
                if p.node_netns != node.netns {
                    // A pod on another node: straight across the fabric to that node.
                    let other = nodes
                        .iter()
                        .find(|o| o.netns == p.node_netns)
                        .expect("node");
                    if let Some(a) = v4(&p.ips) {
                        n.push(format!(
                            "route add {a}/32 via {} dev {up}",
                            other.uplink_ipv4
                        ));
                    }
                    if let Some(a) = v6(&p.ips) {
                        n.push(format!(
                            "route add {a}/128 via {} dev {up}",
                            other.uplink_ipv6
                        ));
                    }
                    continue;
                }
                let h = &p.host_iface;
                n.push(format!("link set {h} up"));
                if let Some(a) = v4(&p.ips) {
                    n.push(format!("route add {a}/32 dev {h} scope link"));
                    n.push(neigh(&a, &p.mac, h));
                }
                if let Some(a) = v6(&p.ips) {
                    n.push(format!("route add {a}/128 dev {h}"));
                    n.push(neigh(&a, &p.mac, h));
                }
            }
            batches.push((node.netns.clone(), "configure node", n));
        }

        let (cl, ex) = (GATEWAY_CLUSTER_IFACE, GATEWAY_EXTERNAL_IFACE);
        let mut g = vec![
            "link set lo up".to_string(),
            format!("link set {cl} up"),
            format!("link set {ex} up"),
            format!("addr add {GW_CLUSTER_V4}/{CLUSTER_PREFIX_V4} dev {cl}"),
            format!("addr add {GW_CLUSTER_V6}/64 dev {cl} nodad"),
            format!("addr add {GW_EXTERNAL_V4}/30 dev {ex}"),
            format!("addr add {GW_EXTERNAL_V6}/64 dev {ex} nodad"),
            neigh(&EXT_V4, &MAC_EXT, ex),
            neigh(&EXT_V6, &MAC_EXT, ex),
            format!("route add 0.0.0.0/0 via {EXT_V4} dev {ex}"),
            format!("route add ::/0 via {EXT_V6} dev {ex}"),
        ];
        for node in &nodes {
            g.push(neigh(&node.uplink_ipv4, &node.uplink_mac, cl));
            g.push(neigh(&node.uplink_ipv6, &node.uplink_mac, cl));
        }
        for p in &pods {
            let node = nodes
                .iter()
                .find(|o| o.netns == p.node_netns)
                .expect("node");
            for ip in &p.ips {
                g.push(match ip {
                    IpAddr::V4(a) => format!("route add {a}/32 via {} dev {cl}", node.uplink_ipv4),
                    IpAddr::V6(a) => {
                        format!("route add {a}/128 via {} dev {cl}", node.uplink_ipv6)
                    }
                });
            }
        }
        batches.push((gw.clone(), "configure gateway", g));

        let mut x = vec![
            "link set lo up".to_string(),
            format!("link set {EXT_IFACE} up"),
            format!("addr add {EXT_V4}/30 dev {EXT_IFACE}"),
            format!("addr add {EXT_V6}/64 dev {EXT_IFACE} nodad"),
            neigh(&GW_EXTERNAL_V4, &MAC_GW_EXTERNAL, EXT_IFACE),
            neigh(&GW_EXTERNAL_V6, &MAC_GW_EXTERNAL, EXT_IFACE),
            format!("route add 0.0.0.0/0 via {GW_EXTERNAL_V4} dev {EXT_IFACE}"),
            format!("route add ::/0 via {GW_EXTERNAL_V6} dev {EXT_IFACE}"),
        ];
        for ip in &self.externals {
            x.push(match ip {
                IpAddr::V4(a) => format!("addr add {a}/32 dev {EXT_IFACE}"),
                IpAddr::V6(a) => format!("addr add {a}/128 dev {EXT_IFACE} nodad"),
            });
        }
        batches.push((ext.clone(), "configure external hosts", x));

        for p in &pods {
            let mut b = vec![
                "link set lo up".to_string(),
                format!("link set {POD_IFACE} up"),
            ];
            if let Some(a) = v4(&p.ips) {
                b.push(format!("addr add {a}/32 dev {POD_IFACE}"));
                b.push(format!(
                    "route add {POD_GATEWAY_V4}/32 dev {POD_IFACE} scope link"
                ));
                b.push(neigh(&POD_GATEWAY_V4, &p.host_mac, POD_IFACE));
                b.push(format!(
                    "route add 0.0.0.0/0 via {POD_GATEWAY_V4} dev {POD_IFACE} src {a}"
                ));
            }
            if let Some(a) = v6(&p.ips) {
                b.push(format!("addr add {a}/128 dev {POD_IFACE} nodad"));
                b.push(neigh(&POD_GATEWAY_V6, &p.host_mac, POD_IFACE));
                b.push(format!(
                    "route add ::/0 via {POD_GATEWAY_V6} dev {POD_IFACE}"
                ));
            }
            batches.push((p.netns.clone(), "configure pod", b));
        }

        let mut running = Vec::new();
        for (ns, step, lines) in &batches {
            running.push(netns::spawn_ip_batch(Some(ns), step, lines)?);
        }
        let mut first_err = None;
        for ((ns, step, lines), child) in batches.iter().zip(running) {
            if let Err(e) = netns::wait_ip_batch(child, Some(ns), step, lines) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // The bridge last, once every node uplink and the cluster leg are up: a port whose peer
        // came up while the port was being enslaved was seen to stay without carrier.
        if let Some((f, b)) = fabric_batch {
            netns::ip_batch(Some(&f), "configure fabric bridge", &b)?;
            wait_bridge_forwarding(&f, fabric_ports.len())?;
        }

        // The gateway may forward in XDP (redirect to the other leg). A veth receives redirected
        // frames only while its NAPI runs, which GRO turns on: the peers of both legs get GRO.
        // A redirected frame also loses the "checksum to be completed" mark of a locally sent
        // packet, so the hosts that originate traffic (pods, external hosts) checksum in software,
        // as packets from a real wire always are.
        let mut features: Vec<(String, String, &[&str])> = vec![
            match &fabric {
                Some(f) => (f.clone(), FABRIC_GW_PORT.to_string(), &["gro", "on"][..]),
                None => (
                    nodes[0].netns.clone(),
                    NODE_UPLINK_IFACE.to_string(),
                    &["gro", "on"][..],
                ),
            },
            (
                ext.clone(),
                EXT_IFACE.to_string(),
                &["gro", "on", "tx", "off"][..],
            ),
        ];
        for p in &pods {
            features.push((p.netns.clone(), POD_IFACE.to_string(), &["tx", "off"][..]));
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = features
                .iter()
                .map(|(ns, iface, f)| scope.spawn(move || netns::set_features(ns, iface, f)))
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("ethtool thread does not panic"))
        })?;

        // Until the kernel's link watcher has seen a veth's carrier, its queue is not active and
        // the first packets through it are lost: wait until every link is running.
        let mut links: Vec<(String, Vec<String>)> = Vec::new();
        for node in &nodes {
            let mut l = vec![NODE_UPLINK_IFACE.to_string()];
            l.extend(
                pods.iter()
                    .filter(|p| p.node_netns == node.netns)
                    .map(|p| p.host_iface.clone()),
            );
            links.push((node.netns.clone(), l));
        }
        links.push((gw.clone(), vec![cl.into(), ex.into()]));
        links.push((ext.clone(), vec![EXT_IFACE.into()]));
        if let Some(f) = &fabric {
            let mut l = fabric_ports.clone();
            l.push(FABRIC_BRIDGE.into());
            links.push((f.clone(), l));
        }
        for p in &pods {
            links.push((p.netns.clone(), vec![POD_IFACE.into()]));
        }
        self.wait_links_running(&links)
    }

    fn wait_links_running(&self, links: &[(String, Vec<String>)]) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        for (ns, names) in links {
            let fd = self.find_netns(ns)?.fd();
            let waited = netns::run_in(fd, || {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
                for name in names {
                    while !netns::link_running(raw, name)? {
                        if Instant::now() >= deadline {
                            return Ok(Some(name.clone()));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Ok(None)
            })
            .map_err(|e| LabError::io("wait for links", ns, e))?;
            if let Some(name) = waited {
                return Err(LabError::Command {
                    step: "wait for links to come up".into(),
                    netns: ns.clone(),
                    detail: format!("{name} is not running after 3 s"),
                });
            }
        }
        Ok(())
    }

    /// The lab's id (`PREFIX-PID-N`); every namespace name starts with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn options(&self) -> &LabOptions {
        &self.opts
    }

    /// Names of every namespace the lab made.
    pub fn namespaces(&self) -> Vec<&str> {
        self.netns.iter().map(|n| n.name.as_str()).collect()
    }

    pub fn gateway(&self) -> &GatewayLegs {
        &self.gateway
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// With more than one node, the namespace whose bridge ([`FABRIC_BRIDGE`]) joins the nodes'
    /// uplinks and the gateway's cluster leg; `None` with one node (uplink and cluster leg are
    /// the two ends of one veth).
    pub fn fabric_netns(&self) -> Option<&str> {
        self.fabric_netns.as_deref()
    }

    /// The namespace holding every external address.
    pub fn external_netns(&self) -> &str {
        &self.ext_netns
    }

    pub fn external_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.externals.iter()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodAttachment> {
        self.pods.get(&pod_key(namespace, name))
    }

    /// Every modelled pod: its namespace, and the (node netns, host-side interface) of its veth.
    pub fn pods(&self) -> impl Iterator<Item = &PodAttachment> {
        self.pods.values()
    }

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

    /// Runs `f` on a thread inside lab namespace `netns` (for loaders that need to be in the
    /// namespace, e.g. attaching tc programs to a pod's host-side interface).
    pub fn run_in_netns<T: Send>(
        &self,
        netns: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, LabError> {
        let fd = self.find_netns(netns)?.fd();
        netns::run_in(fd, || Ok(f())).map_err(|e| LabError::io("enter netns", netns, e))
    }

    /// Runs one probe from its source namespace.
    pub fn probe(&self, probe: &Probe) -> Result<Observation, LabError> {
        let r = self.prepare(probe)?;
        let fd = self.find_netns(&r.src_netns)?.fd();
        netns::run_in(fd, || Ok(self.attempt_here(probe.protocol, &r)))
            .map_err(|e| LabError::io("enter source netns", &r.src_netns, e))
    }

    fn prepare(&self, probe: &Probe) -> Result<Resolved, LabError> {
        let r = self.resolve(probe)?;
        if !self
            .prepared
            .contains(&(r.dst.ip(), probe.protocol, r.dst.port()))
        {
            return Err(LabError::NotPrepared(probe.to_string()));
        }
        Ok(r)
    }

    /// Runs in a thread that is already inside the source namespace.
    fn attempt_here(&self, protocol: Protocol, r: &Resolved) -> Observation {
        let started = Instant::now();
        let mut attempts = 0;
        let (verdict, detail) = loop {
            attempts += 1;
            match client::attempt(protocol, r.src, r.dst, self.opts.timeout, &self.arrivals) {
                Outcome::Final(v, d) => break (v, d),
                Outcome::Timeout(d) if attempts > self.opts.retries => break (Verdict::Deny, d),
                Outcome::Timeout(d) => {
                    tracing::debug!(from = %r.src, to = %r.dst, ?protocol, "attempt {attempts}: {d}; retrying");
                }
            }
        };
        Observation {
            verdict,
            detail,
            from_addr: r.src,
            to: r.dst,
            attempts,
            elapsed: started.elapsed(),
        }
    }

    /// Runs every probe, up to [`LabOptions::parallelism`] at once; results in input order.
    pub fn probe_all(&self, probes: &[Probe]) -> Vec<Result<Observation, LabError>> {
        let results: Vec<Mutex<Option<Result<Observation, LabError>>>> =
            probes.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = self.opts.parallelism.clamp(1, probes.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= probes.len() {
                        break;
                    }
                    let out = self.prepare(&probes[i]).and_then(|r| {
                        let fd = self.find_netns(&r.src_netns)?.fd();
                        netns::enter(fd)
                            .map_err(|e| LabError::io("enter source netns", &r.src_netns, e))?;
                        Ok(self.attempt_here(probes[i].protocol, &r))
                    });
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("every probe ran")
            })
            .collect()
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
        tracing::debug!(lab = %self.id, "lab torn down");
        first_err.map_or(Ok(()), Err)
    }
}

/// Waits (up to 3 s) until `ports` ports of the fabric bridge are forwarding.
fn wait_bridge_forwarding(netns: &str, ports: usize) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last;
    loop {
        let out = Command::new("bridge")
            .args(["-n", netns, "link", "show"])
            .output()
            .map_err(|e| LabError::io("bridge link show", netns, e))?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let forwarding = last
            .lines()
            .filter(|l| l.contains("state forwarding") && !l.contains("NO-CARRIER"))
            .count();
        if forwarding >= ports {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(LabError::Command {
        step: "wait for fabric bridge ports to forward".into(),
        netns: netns.into(),
        detail: last,
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(lab = %self.id, "teardown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_prefers_ipv4_then_ipv6() {
        let a4: IpAddr = "10.0.0.1".parse().unwrap();
        let a6: IpAddr = "fd00::1".parse().unwrap();
        let b4: IpAddr = "10.0.0.2".parse().unwrap();
        let b6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(pick_pair(&[a6, a4], &[b6, b4]), Some((a4, b4)));
        assert_eq!(pick_pair(&[a6, a4], &[b6]), Some((a6, b6)));
        assert_eq!(pick_pair(&[a4], &[b6]), None);
    }

    #[test]
    fn macs_are_distinct_and_local() {
        let all: HashSet<[u8; 6]> = (0..300).flat_map(|i| [host_mac(i), pod_mac(i)]).collect();
        assert_eq!(all.len(), 600);
        assert!(all.iter().all(|m| m[0] & 0x02 != 0 && m[0] & 0x01 == 0));
    }

    #[test]
    fn reserved_addresses() {
        assert!(is_lab_reserved("169.254.1.1".parse().unwrap()));
        assert!(is_lab_reserved("fe80::1".parse().unwrap()));
        assert!(!is_lab_reserved("10.244.1.10".parse().unwrap()));
        assert!(!is_lab_reserved("2001:db8::1".parse().unwrap()));
    }
}

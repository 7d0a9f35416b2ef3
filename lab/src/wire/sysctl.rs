//! Kernel settings of every lab namespace: IPv6 on without DAD or router advertisements,
//! rp_filter off; forwarding on (and redirects off) in the routers, nodes and gateway.

use std::collections::HashSet;
use std::os::fd::RawFd;

use crate::netns::{self, Netns};
use crate::topology::Topology;
use crate::LabError;

const EVERY_NAMESPACE: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/disable_ipv6", "0"),
    ("net/ipv6/conf/default/disable_ipv6", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
];

const ROUTERS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv6/conf/default/forwarding", "1"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
];

/// Writes the settings from one thread that visits each namespace in turn.
pub(super) fn apply(topo: &Topology, namespaces: &[Netns]) -> Result<(), LabError> {
    let routers: HashSet<&str> = topo
        .nodes
        .iter()
        .map(|n| n.netns.as_str())
        .chain(topo.gateways().map(|g| g.netns.as_str()))
        .chain(topo.router_netns.as_deref())
        .collect();
    let targets: Vec<(&str, RawFd, bool)> = namespaces
        .iter()
        .map(|n| (n.name.as_str(), n.fd(), routers.contains(n.name.as_str())))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), LabError> {
            for (name, fd, router) in &targets {
                netns::enter(*fd).map_err(|e| LabError::io("setns for sysctls", *name, e))?;
                let extra = if *router { ROUTERS } else { &[] };
                for (path, value) in EVERY_NAMESPACE.iter().chain(extra) {
                    netns::write_sysctl(path, value)
                        .map_err(|e| LabError::io("sysctl", *name, e))?;
                }
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(LabError::Unsupported("sysctl thread panicked".into())))
    })
}

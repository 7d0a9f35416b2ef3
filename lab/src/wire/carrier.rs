//! Waiting for carrier. Until the kernel's link watcher has seen a veth's carrier, its queue is
//! not active and the first packets through it are lost: the lab is ready only once every link
//! of every namespace is running.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::addressing::{
    EXT_BRIDGE, EXT_ROUTER_IFACE, FABRIC_BRIDGE, NODE_UPLINK_IFACE, POD_IFACE,
    ROUTER_CLUSTER_IFACE, ROUTER_EXTERNAL_IFACE,
};
use crate::iface::link_running;
use crate::netns::{self, Netns};
use crate::topology::Topology;
use crate::LabError;

const PATIENCE: Duration = Duration::from_secs(3);

/// Every namespace with the links it must have running.
fn links(topo: &Topology) -> Vec<(&str, Vec<String>)> {
    let mut links = Vec::new();
    for node in &topo.nodes {
        let mut l = vec![NODE_UPLINK_IFACE.to_string()];
        l.extend(topo.pods_on(node).map(|p| p.host_iface.clone()));
        links.push((node.netns.as_str(), l));
    }
    let mut ext = Vec::new();
    for gw in topo.gateways() {
        links.push((
            gw.netns.as_str(),
            vec![gw.cluster_iface.clone(), gw.external_iface.clone()],
        ));
        ext.push(gw.external_peer().to_string());
    }
    if topo.standby.is_some() {
        ext.push(EXT_BRIDGE.into());
    }
    if let Some(rt) = &topo.router_netns {
        ext.push(EXT_ROUTER_IFACE.into());
        links.push((
            rt.as_str(),
            vec![ROUTER_CLUSTER_IFACE.into(), ROUTER_EXTERNAL_IFACE.into()],
        ));
    }
    links.push((topo.ext_netns.as_str(), ext));
    if let Some(f) = &topo.fabric_netns {
        let mut l = super::fabric::ports(topo);
        l.push(FABRIC_BRIDGE.into());
        links.push((f.as_str(), l));
    }
    for p in topo.pods.values() {
        links.push((p.netns.as_str(), vec![POD_IFACE.into()]));
    }
    links
}

/// Waits (up to 3 s in all) until every link of `topo` is running.
pub(super) fn wait_running(topo: &Topology, namespaces: &[Netns]) -> Result<(), LabError> {
    let deadline = Instant::now() + PATIENCE;
    for (ns, names) in links(topo) {
        let fd = netns::find(namespaces, ns)?.fd();
        let not_running = netns::run_in(fd, || first_not_running(&names, deadline))
            .and_then(|r| r)
            .map_err(|e| LabError::io("wait for links", ns, e))?;
        if let Some(name) = not_running {
            return Err(LabError::Command {
                step: "wait for links to come up".into(),
                netns: ns.to_string(),
                detail: format!("{name} is not running after {} s", PATIENCE.as_secs()),
            });
        }
    }
    Ok(())
}

/// Polls each of `names` until it runs; the first still down at `deadline`, if any.
fn first_not_running(names: &[String], deadline: Instant) -> std::io::Result<Option<String>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    for name in names {
        while !link_running(sock.as_raw_fd(), name)? {
            if Instant::now() >= deadline {
                return Ok(Some(name.clone()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(None)
}

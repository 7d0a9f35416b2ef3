//! Services as `probe --to SERVICE` needs them: the addresses a client connects to, and the
//! pods and ports behind them that policy judges once the node has translated the connection.

use std::net::IpAddr;

use crate::model::{Labels, Pod, Protocol, Snapshot};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `None`: no selector, its endpoints are managed by something else.
    pub selector: Option<Labels>,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for a headless service.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
}

/// Where a service port leads on each backend pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved on each pod (pods may differ).
    Name(String),
}

/// A pod behind a service port, and the port it answers on.
#[derive(Clone, Copy, Debug)]
pub struct Backend<'a> {
    pub pod: &'a Pod,
    pub port: u16,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The service port clients reach at `port` with `protocol`.
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        (self.ports.iter()).find(|p| p.port == port && p.protocol == protocol)
    }

    /// The pods endpoints would list for `port`, as the endpoints controller picks them: the
    /// selector's pods of the service's namespace that have an address, on the target port
    /// (a pod without the named port is left out, as the controller leaves it out). Empty
    /// without a selector.
    pub fn backends<'a>(&self, snapshot: &'a Snapshot, port: &ServicePort) -> Vec<Backend<'a>> {
        let Some(selector) = &self.selector else {
            return Vec::new();
        };
        let selected = |pod: &&Pod| {
            pod.namespace == self.namespace
                && !pod.ips.is_empty()
                && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        };
        let target = |pod: &Pod| match &port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => pod.named_port(name, port.protocol),
        };
        (snapshot.pods.iter().filter(selected))
            .filter_map(|pod| {
                Some(Backend {
                    pod,
                    port: target(pod)?,
                })
            })
            .collect()
    }
}

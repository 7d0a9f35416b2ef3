//! What `probe` connects to and what `explain` predicts for it: a pod or an address, judged as
//! is, or a Service, whose address the node translates to one of its pods (kube-proxy picks
//! which), so that each backend is predicted on its own target port.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Result};
use portcullis_policy::explain;
use portcullis_policy::model::{Pod, Snapshot};
use portcullis_policy::probe::{endpoint_addresses, Probe, ProbeEndpoint};
use portcullis_policy::service::Service;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Allow,
    Deny,
    /// Some backends of the service are allowed, some not: it depends on the one picked.
    Mixed,
}

impl Prediction {
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Allow => "allow",
            Prediction::Deny => "deny",
            Prediction::Mixed => "mixed",
        }
    }

    /// Whether an attempt that did (`reached`) or did not reach its destination is what was
    /// predicted.
    pub fn agrees(self, reached: bool) -> bool {
        match self {
            Prediction::Allow => reached,
            Prediction::Deny => !reached,
            Prediction::Mixed => true,
        }
    }
}

pub struct Target {
    /// Where the attempt connects.
    pub remote: SocketAddr,
    /// The destinations the judged packets carry: the remote itself, or each backend of a
    /// service after the node's translation.
    pub judged: Vec<SocketAddr>,
    pub predicted: Prediction,
    /// `explain`'s reasons (one per backend of a service).
    pub reason: String,
    /// The service and its backends, when the destination is one.
    pub service: Option<serde_json::Value>,
}

/// Resolves `probe.to` for a connection from `source`: a pod of the snapshot, an address (a
/// pod's address is that pod), or else a Service of that name.
pub fn resolve(snapshot: &Snapshot, source: &Pod, mut probe: Probe) -> Result<Target> {
    if let ProbeEndpoint::External(ip) = probe.to {
        if let Some(pod) = snapshot.pods.iter().find(|p| p.ips.contains(&ip)) {
            probe.to = ProbeEndpoint::Pod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            };
        }
    }
    if let ProbeEndpoint::Pod { namespace, name } = &probe.to {
        let is_pod = |p: &&Pod| &p.namespace == namespace && &p.name == name;
        if !snapshot.pods.iter().any(|p| is_pod(&p)) {
            let is_service = |s: &&Service| &s.namespace == namespace && &s.name == name;
            if let Some(service) = snapshot.services.iter().find(is_service) {
                return service_target(snapshot, source, &probe, service);
            }
        }
    }
    let remote = in_family(source, &endpoint_addresses(snapshot, &probe.to))
        .map(|ip| SocketAddr::new(ip, probe.port))
        .ok_or_else(|| match &probe.to {
            ProbeEndpoint::Pod { .. } => anyhow!(
                "no pod or service {} with an address in a family {} has in the cluster state",
                probe.to,
                source.key()
            ),
            to => anyhow!("{to} is not in a family {} has", source.key()),
        })?;
    let verdict = snapshot
        .evaluate_probe(&probe)
        .map_err(|e| anyhow!("explain {probe}: {e}"))?;
    Ok(Target {
        remote,
        judged: vec![remote],
        predicted: if verdict.allowed() {
            Prediction::Allow
        } else {
            Prediction::Deny
        },
        reason: explain::reason(&probe, &verdict),
        service: None,
    })
}

/// The first of `addrs` in a family the source pod has.
fn in_family(source: &Pod, addrs: &[IpAddr]) -> Option<IpAddr> {
    (addrs.iter().copied()).find(|a| source.ips.iter().any(|s| s.is_ipv4() == a.is_ipv4()))
}

fn service_target(
    snapshot: &Snapshot,
    source: &Pod,
    probe: &Probe,
    service: &Service,
) -> Result<Target> {
    let (port, protocol) = (probe.port, probe.protocol);
    let Some(service_port) = service.port(port, protocol) else {
        let has: Vec<String> = (service.ports.iter())
            .map(|p| format!("{}/{}", p.protocol, p.port))
            .collect();
        bail!(
            "service {} has no port {protocol}/{port} (it has {})",
            service.key(),
            if has.is_empty() {
                "none".into()
            } else {
                has.join(", ")
            }
        );
    };
    let Some(cluster_ip) = in_family(source, &service.cluster_ips) else {
        bail!(
            "service {} has no cluster IP in a family {} has (headless or ExternalName \
             services: probe one of their pods)",
            service.key(),
            source.key()
        );
    };
    let backends = service.backends(snapshot, service_port);
    if backends.is_empty() {
        bail!(
            "service {} has no endpoints for {protocol}/{port}: no pod of namespace {} with an \
             address matches its selector (and has its target port)",
            service.key(),
            service.namespace
        );
    }
    let (mut allowed, mut judged, mut reasons, mut listed) = (0, vec![], vec![], vec![]);
    for backend in &backends {
        let pod = backend.pod;
        let to_pod = Probe {
            from: probe.from.clone(),
            to: ProbeEndpoint::Pod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            },
            protocol,
            port: backend.port,
        };
        let verdict = snapshot
            .evaluate_probe(&to_pod)
            .map_err(|e| anyhow!("explain {to_pod}: {e}"))?;
        allowed += usize::from(verdict.allowed());
        let address = in_family(source, &pod.ips);
        judged.extend(address.map(|ip| SocketAddr::new(ip, backend.port)));
        let verdict_name = if verdict.allowed() { "allow" } else { "deny" };
        reasons.push(format!(
            "{}:{} {verdict_name}: {}",
            pod.key(),
            backend.port,
            explain::reason(&to_pod, &verdict)
        ));
        listed.push(json!({
            "pod": pod.key(), "address": address.map(|a| a.to_string()),
            "port": backend.port, "predicted": verdict_name,
        }));
    }
    let predicted = match allowed {
        0 => Prediction::Deny,
        n if n == backends.len() => Prediction::Allow,
        _ => Prediction::Mixed,
    };
    Ok(Target {
        remote: SocketAddr::new(cluster_ip, port),
        judged,
        predicted,
        reason: reasons.join("; "),
        service: Some(json!({
            "name": service.key(), "cluster_ip": cluster_ip.to_string(), "backends": listed,
        })),
    })
}

//! What the lab looks like to the daemons as Kubernetes objects and steering input: a v1 `Node`
//! per lab node and for the gateway (labelled as an egress gateway), and the cluster CIDRs steering
//! must never touch.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::addressing::{CLUSTER_PREFIX_V4, EGRESS_GATEWAY_LABEL, GATEWAY_CLUSTER_END};
use crate::topology::Topology;

/// One `Node` document.
fn node(out: &mut String, name: &str, labels: &[(&str, &str)], addrs: &[IpAddr]) {
    // Names, labels and addresses are plain tokens (node names come from pod specs, which the
    // watcher validated as DNS names), so no YAML quoting beyond the label values is needed.
    out.push_str("---\napiVersion: v1\nkind: Node\nmetadata:\n");
    let _ = writeln!(out, "  name: {name}");
    if !labels.is_empty() {
        out.push_str("  labels:\n");
        for (k, v) in labels {
            let _ = writeln!(out, "    {k}: \"{v}\"");
        }
    }
    out.push_str("status:\n  addresses:\n");
    for a in addrs {
        let _ = writeln!(out, "  - type: InternalIP\n    address: \"{a}\"");
    }
}

impl Topology {
    /// Multi-document YAML: every lab node (InternalIP: its uplink addresses) and each gateway
    /// (InternalIP: its cluster leg's addresses, labelled `portcullis.io/egress-gateway: "true"`).
    pub fn node_manifest(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            node(
                &mut out,
                &n.name,
                &[],
                &[n.uplink_ipv4.into(), n.uplink_ipv6.into()],
            );
        }
        for gw in self.gateways() {
            node(
                &mut out,
                &gw.node,
                &[(EGRESS_GATEWAY_LABEL, "true")],
                &[gw.cluster_ipv4.into(), gw.cluster_ipv6.into()],
            );
        }
        out
    }

    /// Every pod address as a host prefix, then the cluster segment's prefixes.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        let mut cidrs: Vec<IpNet> = self
            .pods
            .values()
            .flat_map(|p| p.ips.iter().map(|ip| IpNet::from(*ip)))
            .collect();
        cidrs.extend([
            IpNet::new(GATEWAY_CLUSTER_END.v4.into(), CLUSTER_PREFIX_V4)
                .expect("a valid prefix")
                .trunc(),
            "fe80::/64".parse().expect("a valid prefix"),
        ]);
        cidrs
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portcullis_policy::model::{Pod, Snapshot};

    use super::*;
    use crate::LabOptions;

    fn pod(name: &str, node: &str, ips: &[&str]) -> Pod {
        Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: BTreeMap::new(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ports: Vec::new(),
            host_network: false,
            node: Some(node.into()),
        }
    }

    fn topo() -> Topology {
        let snap = Snapshot {
            namespaces: BTreeMap::new(),
            pods: vec![
                pod("a", "node-a", &["10.244.1.10"]),
                pod("b", "node-b", &["10.244.2.10", "fd00::b"]),
            ],
            policies: Vec::new(),
            ..Snapshot::default()
        };
        Topology::plan("t-1-0".into(), &snap, &[], &LabOptions::default()).unwrap()
    }

    #[test]
    fn nodes_and_the_labelled_gateway() {
        let yaml = topo().node_manifest();
        let docs: Vec<serde_yaml_ng::Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml_ng::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 3, "{yaml}");
        let name = |d: &serde_yaml_ng::Value| d["metadata"]["name"].as_str().unwrap().to_string();
        let addrs = |d: &serde_yaml_ng::Value| -> Vec<String> {
            d["status"]["addresses"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| {
                    assert_eq!(a["type"].as_str(), Some("InternalIP"));
                    a["address"].as_str().unwrap().to_string()
                })
                .collect()
        };
        assert_eq!(
            docs.iter().map(name).collect::<Vec<_>>(),
            ["node-a", "node-b", "gateway"]
        );
        assert_eq!(addrs(&docs[0]), ["169.254.16.2", "fe80::a:2"]);
        assert_eq!(addrs(&docs[2]), ["169.254.16.1", "fe80::a:1"]);
        assert_eq!(docs[2]["kind"].as_str(), Some("Node"));
        assert_eq!(
            docs[2]["metadata"]["labels"]["portcullis.io/egress-gateway"].as_str(),
            Some("true")
        );
        assert!(docs[0]["metadata"].get("labels").is_none());
    }

    #[test]
    fn cluster_cidrs_are_pod_hosts_and_the_segment() {
        let got: Vec<String> = topo()
            .cluster_cidrs()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.244.1.10/32",
                "10.244.2.10/32",
                "fd00::b/128",
                "169.254.16.0/20",
                "fe80::/64"
            ]
        );
    }
}

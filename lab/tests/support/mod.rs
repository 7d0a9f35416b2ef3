//! Helpers the lab's integration tests share.

use std::collections::BTreeMap;

use portcullis_lab::Lab;
use portcullis_policy::model::{ContainerPort, Namespace, Pod, Protocol, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "portcullis_lab=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        ports: vec![ContainerPort {
            name: Some("serve-80-tcp".into()),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        host_network: false,
        node: None,
    }
}

/// Namespaces x and y; x/a IPv4, x/b dual-stack, y/c IPv6 only.
pub fn snapshot() -> Snapshot {
    let namespaces: BTreeMap<String, Namespace> = ["x", "y"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Namespace {
                    name: n.to_string(),
                    labels: [("kubernetes.io/metadata.name".to_string(), n.to_string())].into(),
                },
            )
        })
        .collect();
    Snapshot {
        namespaces,
        pods: vec![
            pod("x", "a", &["10.244.1.10"]),
            pod("x", "b", &["10.244.1.20", "fd00:10:244:1::20"]),
            pod("y", "c", &["fd00:10:244:2::30"]),
        ],
        policies: Vec::new(),
        ..Snapshot::default()
    }
}

pub const EXT4: &str = "203.0.113.1";
pub const EXT6: &str = "2001:db8::1";

pub fn ep(s: &str) -> ProbeEndpoint {
    ProbeEndpoint::parse(s).unwrap()
}

pub fn probe(from: &str, to: &str, protocol: Protocol, port: u16) -> Probe {
    Probe {
        from: ep(from),
        to: ep(to),
        protocol,
        port,
    }
}

/// Loads an nft script in lab namespace `netns`.
pub fn nft(lab: &Lab, netns: &str, script: &str) {
    lab.nft(netns, script).unwrap_or_else(|e| panic!("{e}"));
}

//! Shared test helpers: the testkit's namespaces and packets, and snapshot builders.
#![allow(dead_code)]

pub use portcullis_policy::testing::{labels, snapshot};
pub use portcullis_testkit::*;

// ---- snapshot builders ----

use std::net::IpAddr;

use portcullis_policy::model::{
    ContainerPort, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule, Selector,
};

pub fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

pub fn pod(ns: &str, name: &str, app: &str, ips: &[&str], ports: &[(&str, u16)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ips: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
        ports: ports
            .iter()
            .map(|(n, p)| ContainerPort {
                name: Some(n.to_string()),
                port: *p,
                protocol: Protocol::Tcp,
            })
            .collect(),
        host_network: false,
        node: None,
    }
}

/// Peer: pods with `app` in the policy's namespace.
pub fn app_peer(app: &str) -> Peer {
    Peer::Pods {
        pod_selector: Some(sel(&[("app", app)])),
        namespace_selector: None,
    }
}

pub fn block(cidr: &str) -> Peer {
    Peer::IpBlock {
        cidr: cidr.parse().unwrap(),
        except: Vec::new(),
    }
}

pub fn port(protocol: Protocol, first: u16, last: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: PortMatch::Number { first, last },
    }
}

pub fn named(name: &str) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port: PortMatch::Named(name.into()),
    }
}

pub fn rule(peers: Vec<Peer>, ports: Vec<PolicyPort>) -> Rule {
    Rule { peers, ports }
}

pub fn policy(
    ns: &str,
    name: &str,
    app: Option<&str>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> Policy {
    Policy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: app.map(|a| sel(&[("app", a)])).unwrap_or_default(),
        ingress,
        egress,
    }
}

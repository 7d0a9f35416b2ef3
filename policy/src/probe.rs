//! Probes: "can this source reach that destination on this protocol and port?"

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{Protocol, Snapshot};

/// One side of a probe: a pod (`namespace/name`) or an address outside the cluster. A literal
/// address is always external, even inside the pod range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeEndpoint {
    Pod { namespace: String, name: String },
    External(IpAddr),
}

impl ProbeEndpoint {
    pub fn parse(text: &str) -> Result<ProbeEndpoint, String> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ProbeEndpoint::External(ip));
        }
        match text.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
                Ok(ProbeEndpoint::Pod {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                })
            }
            _ => Err(format!(
                "{text:?} is neither an IP address nor namespace/pod"
            )),
        }
    }
}

impl fmt::Display for ProbeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeEndpoint::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            ProbeEndpoint::External(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub from: ProbeEndpoint,
    pub to: ProbeEndpoint,
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from, self.to, self.protocol, self.port
        )
    }
}

/// A probe as written in a probe file (`../shared/conformance/README.md`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ProbeSpec {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

impl ProbeSpec {
    pub fn to_probe(&self) -> Result<Probe, String> {
        Ok(Probe {
            from: ProbeEndpoint::parse(&self.from).map_err(|e| format!("from: {e}"))?,
            to: ProbeEndpoint::parse(&self.to).map_err(|e| format!("to: {e}"))?,
            protocol: Protocol::parse(&self.protocol)
                .ok_or_else(|| format!("protocol: {:?} is not TCP, UDP or SCTP", self.protocol))?,
            port: self.port,
        })
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from, self.to, self.protocol, self.port
        )
    }
}

/// Reads a probe file as written, without checking the endpoints or protocols: `explain` answers
/// each probe on its own, a malformed one included.
pub fn parse_probe_specs(text: &str) -> Result<Vec<ProbeSpec>, String> {
    let value = crate::load::read_bounded_yaml(text)?;
    Vec::<ProbeSpec>::deserialize(value).map_err(|e| format!("not a YAML list of probes: {e}"))
}

/// Parses a probe file: a YAML list of probe objects.
pub fn parse_probes(text: &str) -> Result<Vec<Probe>, String> {
    parse_probe_specs(text)?
        .iter()
        .enumerate()
        .map(|(i, s)| s.to_probe().map_err(|e| format!("probe {i}: {e}")))
        .collect()
}

/// Every address a probe endpoint may use (a pod's IPs, or the external address).
pub fn endpoint_addresses(snapshot: &Snapshot, endpoint: &ProbeEndpoint) -> Vec<IpAddr> {
    match endpoint {
        ProbeEndpoint::External(ip) => vec![*ip],
        ProbeEndpoint::Pod { namespace, name } => snapshot
            .pods
            .iter()
            .find(|p| &p.namespace == namespace && &p.name == name)
            .map(|p| p.ips.clone())
            .unwrap_or_default(),
    }
}

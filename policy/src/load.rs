//! Turns manifest text (multi-document YAML of Namespace, Pod and NetworkPolicy objects, or `List`s
//! of them) into a validated [`Snapshot`]. Validation follows the API server's rules; an invalid
//! object is rejected with its source, document, name and field path while the others still load.
//! Reading files is the caller's job: this module never touches the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::model::{
    ContainerPort, Labels, Namespace, Operator, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol,
    Requirement, Rule, Selector, Snapshot,
};

/// Label the API server puts on every namespace (since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where an object came from: source name (usually a file path) and 1-based document index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    pub document: usize,
}

/// An object (or document) that was rejected; the rest of the input still loads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub origin: Origin,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {}", self.origin.source, self.origin.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl LoadError {
    /// `(kind, namespace, name)` of the rejected object, when the document named one
    /// (namespaces have an empty namespace).
    pub fn identity(&self) -> Option<(&str, &str, &str)> {
        let (kind, rest) = self.object.as_deref()?.split_once(' ')?;
        match rest.split_once('/') {
            Some((namespace, name)) => Some((kind, namespace, name)),
            None => Some((kind, "", rest)),
        }
    }
}

/// Why an update cannot be applied at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} could not be attributed to an object; the whole update is held back")]
pub struct UnattributedError(pub LoadError);

impl Loaded {
    /// The snapshot to enforce after an update, keeping the last good state: an object rejected
    /// by name keeps its previous valid version (a broken edit of a policy must not drop that
    /// policy and so open traffic); a document whose objects cannot be named holds back the
    /// whole update, since what it would have changed is unknown.
    pub fn with_last_good(self, previous: &Snapshot) -> Result<Snapshot, UnattributedError> {
        let mut snapshot = self.snapshot;
        for error in self.errors {
            let Some((kind, namespace, name)) = error.identity() else {
                return Err(UnattributedError(error));
            };
            match kind {
                "Namespace" => {
                    if let Some(ns) = previous.namespaces.get(name) {
                        snapshot
                            .namespaces
                            .entry(name.to_string())
                            .or_insert_with(|| ns.clone());
                    }
                }
                "Pod" => {
                    let present = snapshot
                        .pods
                        .iter()
                        .any(|p| p.namespace == namespace && p.name == name);
                    if let (false, Some(pod)) = (present, previous.pod(namespace, name)) {
                        snapshot.pods.push(pod.clone());
                    }
                }
                "NetworkPolicy" => {
                    let find = |s: &Snapshot| {
                        s.policies
                            .iter()
                            .position(|p| p.namespace == namespace && p.name == name)
                    };
                    if let (None, Some(i)) = (find(&snapshot), find(previous)) {
                        snapshot.policies.push(previous.policies[i].clone());
                    }
                }
                _ => return Err(UnattributedError(error)),
            }
        }
        Ok(snapshot)
    }
}

/// A field-level problem found while converting one object.
struct FieldError {
    field: String,
    message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Accumulates objects from any number of sources and builds the snapshot.
#[derive(Default)]
pub struct SnapshotBuilder {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<(String, String), Policy>,
    errors: Vec<LoadError>,
}

/// The outcome of loading: the snapshot of every valid object and the rejected ones.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<LoadError>,
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct ListItems {
    #[serde(default)]
    items: Vec<serde_yaml_ng::Value>,
}

impl SnapshotBuilder {
    pub fn new() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// Adds every document of `text`; `source` names it in errors.
    pub fn add_yaml(&mut self, source: &str, text: &str) {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                source: source.to_string(),
                document: index + 1,
            };
            match serde_yaml_ng::Value::deserialize(document) {
                Ok(value) => self.add_value(&origin, value),
                Err(e) => {
                    self.reject(&origin, None, "", format!("not valid YAML: {e}"));
                    // The YAML stream cannot be resynchronised after a syntax error.
                    return;
                }
            }
        }
    }

    fn add_value(&mut self, origin: &Origin, value: serde_yaml_ng::Value) {
        if value.is_null() {
            return; // an empty document (only comments)
        }
        let kind = match TypeMeta::deserialize(&value) {
            Ok(TypeMeta { kind: Some(kind) }) => kind,
            Ok(TypeMeta { kind: None }) => {
                return self.reject(origin, None, "kind", "missing".to_string());
            }
            Err(e) => return self.reject(origin, None, "", format!("not an object: {e}")),
        };
        match kind.as_str() {
            "Namespace" => match core::Namespace::deserialize(value) {
                Ok(ns) => self.add_namespace(origin, ns),
                Err(e) => self.reject(origin, Some("Namespace".into()), "", e.to_string()),
            },
            "Pod" => match core::Pod::deserialize(value) {
                Ok(pod) => self.add_pod(origin, pod),
                Err(e) => self.reject(origin, Some("Pod".into()), "", e.to_string()),
            },
            "NetworkPolicy" => match net::NetworkPolicy::deserialize(value) {
                Ok(policy) => self.add_policy(origin, policy),
                Err(e) => self.reject(origin, Some("NetworkPolicy".into()), "", e.to_string()),
            },
            "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" => {
                match ListItems::deserialize(value) {
                    Ok(list) => {
                        for item in list.items {
                            self.add_value(origin, item);
                        }
                    }
                    Err(e) => self.reject(origin, Some(kind), "items", e.to_string()),
                }
            }
            // Other kinds (Services, Deployments, ...) may share a manifest; they do not affect policy.
            _ => {}
        }
    }

    fn reject(&mut self, origin: &Origin, object: Option<String>, field: &str, message: String) {
        self.errors.push(LoadError {
            origin: origin.clone(),
            object,
            field: field.to_string(),
            message,
        });
    }

    fn reject_field(&mut self, origin: &Origin, object: String, error: FieldError) {
        self.reject(origin, Some(object), &error.field, error.message);
    }

    pub fn add_namespace(&mut self, origin: &Origin, ns: core::Namespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return self.reject(
                origin,
                Some("Namespace".into()),
                "metadata.name",
                "missing".into(),
            );
        };
        let object = format!("Namespace {name}");
        let mut labels = ns.metadata.labels.unwrap_or_default();
        if let Err(e) = validate_labels(&labels, "metadata.labels") {
            return self.reject_field(origin, object, e);
        }
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        if self.namespaces.contains_key(&name) {
            return self.reject(
                origin,
                Some(object),
                "metadata.name",
                "defined twice".into(),
            );
        }
        self.namespaces
            .insert(name.clone(), Namespace { name, labels });
    }

    pub fn add_pod(&mut self, origin: &Origin, pod: core::Pod) {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = pod.metadata.name.clone() else {
            return self.reject(
                origin,
                Some("Pod".into()),
                "metadata.name",
                "missing".into(),
            );
        };
        let object = format!("Pod {namespace}/{name}");
        match convert_pod(namespace.clone(), name.clone(), pod) {
            Ok(pod) => {
                if self.pods.contains_key(&(namespace.clone(), name.clone())) {
                    return self.reject(
                        origin,
                        Some(object),
                        "metadata.name",
                        "defined twice".into(),
                    );
                }
                self.pods.insert((namespace, name), pod);
            }
            Err(e) => self.reject_field(origin, object, e),
        }
    }

    pub fn add_policy(&mut self, origin: &Origin, policy: net::NetworkPolicy) {
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = policy.metadata.name.clone() else {
            return self.reject(
                origin,
                Some("NetworkPolicy".into()),
                "metadata.name",
                "missing".into(),
            );
        };
        let object = format!("NetworkPolicy {namespace}/{name}");
        match convert_policy(
            namespace.clone(),
            name.clone(),
            policy.spec.unwrap_or_default(),
        ) {
            Ok(policy) => {
                if self
                    .policies
                    .contains_key(&(namespace.clone(), name.clone()))
                {
                    return self.reject(
                        origin,
                        Some(object),
                        "metadata.name",
                        "defined twice".into(),
                    );
                }
                self.policies.insert((namespace, name), policy);
            }
            Err(e) => self.reject_field(origin, object, e),
        }
    }

    /// The snapshot of every accepted object. Namespaces that pods or policies name but no
    /// manifest defines are added with only their name label, as if they existed unlabelled.
    pub fn build(mut self) -> Loaded {
        let used: BTreeSet<String> = self
            .pods
            .keys()
            .map(|(ns, _)| ns.clone())
            .chain(self.policies.keys().map(|(ns, _)| ns.clone()))
            .collect();
        for name in used {
            self.namespaces
                .entry(name.clone())
                .or_insert_with(|| Namespace {
                    labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.clone())]),
                    name,
                });
        }
        Loaded {
            snapshot: Snapshot {
                namespaces: self.namespaces,
                pods: self.pods.into_values().collect(),
                policies: self.policies.into_values().collect(),
            },
            errors: self.errors,
        }
    }
}

/// Loads manifests given as `(source name, text)` pairs.
pub fn load_sources<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Loaded {
    let mut builder = SnapshotBuilder::new();
    for (source, text) in sources {
        builder.add_yaml(source, text);
    }
    builder.build()
}

fn convert_pod(namespace: String, name: String, pod: core::Pod) -> Result<Pod, FieldError> {
    let labels = pod.metadata.labels.unwrap_or_default();
    validate_labels(&labels, "metadata.labels")?;
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = status.pod_ips.unwrap_or_default();
    // A pod that has terminated keeps its addresses in its status, but its sandbox released them
    // and a new pod may hold them now: it has none (as Calico and Cilium treat it).
    let terminated = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let texts: Vec<(String, String)> = if terminated {
        Vec::new()
    } else if listed.is_empty() {
        status
            .pod_ip
            .map(|ip| vec![("status.podIP".to_string(), ip)])
            .unwrap_or_default()
    } else {
        listed
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip))
            .collect()
    };
    for (field, text) in texts {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| field_error(&field, format!("{text:?} is not an IP address")))?;
        if ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
            return Err(field_error(
                field,
                "more than one address of the same family",
            ));
        }
        ips.push(ip);
    }
    let mut ports = Vec::new();
    for (c, container) in spec.containers.iter().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{p}]");
            let number = port_number(port.container_port)
                .ok_or_else(|| field_error(format!("{field}.containerPort"), "must be 1-65535"))?;
            let protocol = parse_protocol(port.protocol.as_deref(), &format!("{field}.protocol"))?;
            if let Some(name) = &port.name {
                validate_port_name(name).map_err(|m| field_error(format!("{field}.name"), m))?;
            }
            ports.push(ContainerPort {
                name: port.name.clone(),
                port: number,
                protocol,
            });
        }
    }
    Ok(Pod {
        namespace,
        name,
        labels,
        ips,
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node: spec.node_name,
    })
}

fn convert_policy(
    namespace: String,
    name: String,
    spec: net::NetworkPolicySpec,
) -> Result<Policy, FieldError> {
    let pod_selector = convert_selector(spec.pod_selector.as_ref(), "spec.podSelector")?;
    // SetDefaults_NetworkPolicy: without policyTypes, Ingress always applies and Egress only
    // when egress rules are present.
    let (affects_ingress, affects_egress) = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut ingress = false;
            let mut egress = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err(field_error(
                            format!("spec.policyTypes[{i}]"),
                            format!("{other:?} is not Ingress or Egress"),
                        ))
                    }
                }
            }
            (ingress, egress)
        }
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        ingress.push(convert_rule(
            rule.from.as_deref(),
            rule.ports.as_deref(),
            &format!("spec.ingress[{i}]"),
            "from",
        )?);
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        egress.push(convert_rule(
            rule.to.as_deref(),
            rule.ports.as_deref(),
            &format!("spec.egress[{i}]"),
            "to",
        )?);
    }
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress: affects_ingress.then_some(ingress),
        egress: affects_egress.then_some(egress),
    })
}

fn convert_rule(
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
) -> Result<Rule, FieldError> {
    let mut rule = Rule::default();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        rule.peers
            .push(convert_peer(peer, &format!("{field}.{peers_name}[{i}]"))?);
    }
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        rule.ports
            .push(convert_port(port, &format!("{field}.ports[{i}]"))?);
    }
    Ok(rule)
}

fn convert_peer(peer: &net::NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
    match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
        (Some(block), None, None) => {
            let block_field = format!("{field}.ipBlock");
            let cidr = parse_cidr(&block.cidr, &format!("{block_field}.cidr"))?;
            let mut except = Vec::new();
            for (i, text) in block.except.iter().flatten().enumerate() {
                let except_field = format!("{block_field}.except[{i}]");
                let e = parse_cidr(text, &except_field)?;
                if e.prefix_len() <= cidr.prefix_len() || !cidr.contains(&e.network()) {
                    return Err(field_error(
                        except_field,
                        format!("{text} is not inside cidr {cidr}"),
                    ));
                }
                except.push(e);
            }
            Ok(Peer::IpBlock { cidr, except })
        }
        (Some(_), _, _) => Err(field_error(
            field,
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (None, None, None) => Err(field_error(
            field,
            "must specify podSelector, namespaceSelector or ipBlock",
        )),
        (None, pods, namespaces) => Ok(Peer::Pods {
            pod_selector: pods
                .as_ref()
                .map(|s| convert_selector(Some(s), &format!("{field}.podSelector")))
                .transpose()?,
            namespace_selector: namespaces
                .as_ref()
                .map(|s| convert_selector(Some(s), &format!("{field}.namespaceSelector")))
                .transpose()?,
        }),
    }
}

fn convert_port(port: &net::NetworkPolicyPort, field: &str) -> Result<PolicyPort, FieldError> {
    let protocol = parse_protocol(port.protocol.as_deref(), &format!("{field}.protocol"))?;
    let matcher = match (&port.port, port.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => {
            return Err(field_error(
                format!("{field}.endPort"),
                "may not be set without port",
            ))
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(field_error(
                    format!("{field}.endPort"),
                    "may not be set when port is a name",
                ));
            }
            validate_port_name(name).map_err(|m| field_error(format!("{field}.port"), m))?;
            PortMatch::Named(name.clone())
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(*n).ok_or_else(|| {
                field_error(format!("{field}.port"), format!("{n} is not 1-65535"))
            })?;
            let last = match end {
                None => first,
                Some(e) => {
                    let last = port_number(e).ok_or_else(|| {
                        field_error(format!("{field}.endPort"), format!("{e} is not 1-65535"))
                    })?;
                    if last < first {
                        return Err(field_error(
                            format!("{field}.endPort"),
                            format!("{last} is less than port {first}"),
                        ));
                    }
                    last
                }
            };
            PortMatch::Number { first, last }
        }
    };
    Ok(PolicyPort {
        protocol,
        port: matcher,
    })
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn parse_protocol(text: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    match text {
        None => Ok(Protocol::Tcp),
        Some(t) => Protocol::parse(t)
            .ok_or_else(|| field_error(field, format!("{t:?} is not TCP, UDP or SCTP"))),
    }
}

/// Parses a CIDR as the API server accepts it: host bits may be set (`192.168.1.77/24` is the /24).
fn parse_cidr(text: &str, field: &str) -> Result<IpNet, FieldError> {
    text.trim()
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| field_error(field, format!("{text:?} is not a CIDR")))
}

/// IANA_SVC_NAME: at most 15 lowercase letters, digits and '-', with a letter, no leading,
/// trailing or double '-'.
fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid port name (IANA_SVC_NAME)"))
    }
}

fn convert_selector(selector: Option<&LabelSelector>, field: &str) -> Result<Selector, FieldError> {
    let Some(selector) = selector else {
        return Ok(Selector::default());
    };
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    validate_labels(&match_labels, &format!("{field}.matchLabels"))?;
    let mut match_expressions = Vec::new();
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let expr_field = format!("{field}.matchExpressions[{i}]");
        validate_label_key(&expr.key).map_err(|m| field_error(format!("{expr_field}.key"), m))?;
        let operator = match expr.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(field_error(
                    format!("{expr_field}.operator"),
                    format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                ))
            }
        };
        let values = expr.values.clone().unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(field_error(
                    format!("{expr_field}.values"),
                    "must be non-empty for In and NotIn",
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(field_error(
                    format!("{expr_field}.values"),
                    "must be empty for Exists and DoesNotExist",
                ))
            }
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            validate_label_value(v)
                .map_err(|m| field_error(format!("{expr_field}.values[{j}]"), m))?;
        }
        match_expressions.push(Requirement {
            key: expr.key.clone(),
            operator,
            values,
        });
    }
    Ok(Selector {
        match_labels,
        match_expressions,
    })
}

fn validate_labels(labels: &Labels, field: &str) -> Result<(), FieldError> {
    for (k, v) in labels {
        validate_label_key(k).map_err(|m| field_error(format!("{field}[{k}]"), m))?;
        validate_label_value(v).map_err(|m| field_error(format!("{field}[{k}]"), m))?;
    }
    Ok(())
}

/// A qualified name segment: 1-63 alphanumerics, '-', '_' or '.', beginning and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: at most 253 lowercase alphanumerics, '-' and '.'.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let valid = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    };
    if valid {
        Ok(())
    } else {
        Err(format!("{key:?} is not a valid label key"))
    }
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Loaded {
        load_sources([("policies.yaml", text)])
    }

    #[test]
    fn except_outside_cidr_is_rejected_with_its_path() {
        let loaded = load(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: a}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-policy, namespace: app-stack}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.1.0/24, except: [10.0.0.0/8]}
"#,
        );
        assert_eq!(loaded.snapshot.policies.len(), 1);
        assert_eq!(
            loaded.errors[0].to_string(),
            "policies.yaml doc 2 (NetworkPolicy app-stack/db-policy): \
             spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.1.0/24"
        );
    }

    #[test]
    fn policy_types_default_as_upstream() {
        let loaded = load(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-ingress}
spec: {podSelector: {}, egress: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both}
spec: {podSelector: {}, egress: [{}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only}
spec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let by_name = |n: &str| {
            loaded
                .snapshot
                .policies
                .iter()
                .find(|p| p.name == n)
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("only-ingress").ingress, Some(vec![]));
        assert_eq!(by_name("only-ingress").egress, None);
        assert_eq!(by_name("both").egress.map(|e| e.len()), Some(1));
        assert_eq!(by_name("egress-only").ingress, None);
        assert_eq!(by_name("egress-only").egress, Some(vec![]));
    }

    #[test]
    fn non_canonical_cidr_means_its_network() {
        let loaded = load(
            r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 192.168.1.77/24}}]}]
"#,
        );
        let rule = &loaded.snapshot.policies[0].egress.as_ref().unwrap()[0];
        assert_eq!(
            rule.peers[0],
            Peer::IpBlock {
                cidr: "192.168.1.0/24".parse().unwrap(),
                except: vec![]
            }
        );
    }

    #[test]
    fn invalid_fields_name_their_path() {
        let cases = [
            ("ports: [{port: 80, endPort: 70}]", "spec.ingress[0].ports[0].endPort"),
            ("ports: [{endPort: 70}]", "spec.ingress[0].ports[0].endPort"),
            ("ports: [{port: http, endPort: 90}]", "spec.ingress[0].ports[0].endPort"),
            ("ports: [{port: 80, protocol: ICMP}]", "spec.ingress[0].ports[0].protocol"),
            ("ports: [{port: 0}]", "spec.ingress[0].ports[0].port"),
            ("from: [{}]", "spec.ingress[0].from[0]"),
            (
                "from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]",
                "spec.ingress[0].from[0]",
            ),
            ("from: [{ipBlock: {cidr: 10.0.0.0/33}}]", "spec.ingress[0].from[0].ipBlock.cidr"),
            (
                "from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]",
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (
                "from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]",
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            ),
            (
                "from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]",
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
            ),
        ];
        for (rule, field) in cases {
            let text = format!(
                "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: p, namespace: n}}\nspec:\n  podSelector: {{}}\n  ingress: [{{{rule}}}]\n"
            );
            let loaded = load(&text);
            assert_eq!(loaded.errors.len(), 1, "{rule}: {:?}", loaded.errors);
            assert_eq!(loaded.errors[0].field, field, "{rule}");
            assert!(loaded.snapshot.policies.is_empty());
        }
    }

    #[test]
    fn broken_yaml_and_unknown_shapes_are_errors_not_panics() {
        let loaded = load("kind: Pod\nmetadata: [1, 2\n");
        assert_eq!(loaded.errors.len(), 1);
        let loaded = load("- 1\n- 2\n");
        assert_eq!(loaded.errors.len(), 1);
        let loaded = load("# only a comment\n");
        assert!(loaded.errors.is_empty());
    }

    #[test]
    fn a_broken_edit_keeps_the_previous_version_of_that_object() {
        let good = load(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n",
        );
        assert!(good.errors.is_empty());
        let broken = load(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: new, namespace: a}\nspec: {podSelector: {}}\n",
        );
        assert_eq!(
            broken.errors[0].identity(),
            Some(("NetworkPolicy", "a", "deny"))
        );
        let applied = broken.with_last_good(&good.snapshot).unwrap();
        let names: Vec<&str> = applied.policies.iter().map(|p| p.name.as_str()).collect();
        assert!(
            names.contains(&"deny") && names.contains(&"new"),
            "{names:?}"
        );
        assert_eq!(
            applied.policies.iter().find(|p| p.name == "deny"),
            good.snapshot.policies.first()
        );

        let unparseable = load("kind: NetworkPolicy\nmetadata: [oops\n");
        assert!(unparseable.with_last_good(&good.snapshot).is_err());
    }

    #[test]
    fn pods_get_ips_ports_and_implicit_namespaces() {
        let loaded = load(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c
    ports: [{name: serve-80-tcp, containerPort: 80}, {containerPort: 81, protocol: UDP}]
status:
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let pod = &loaded.snapshot.pods[0];
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(pod.named_port("serve-80-tcp", Protocol::Tcp), Some(80));
        assert_eq!(pod.named_port("serve-80-tcp", Protocol::Udp), None);
        assert_eq!(
            loaded.snapshot.namespaces["x"].labels[NAMESPACE_NAME_LABEL],
            "x"
        );
    }

    #[test]
    fn terminated_pods_have_no_addresses() {
        let pod = |phase: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\n\
                 status: {{phase: {phase}, podIP: 10.0.0.1, podIPs: [{{ip: 10.0.0.1}}]}}\n"
            )
        };
        for (phase, ips) in [
            ("Running", 1),
            ("Pending", 1),
            ("Succeeded", 0),
            ("Failed", 0),
        ] {
            let loaded = load(&pod(phase));
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            assert_eq!(loaded.snapshot.pods[0].ips.len(), ips, "{phase}");
        }
    }
}

//! Converts k8s-openapi objects into the model, validating every field on the way: the first
//! invalid field rejects the object, named by its path.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cidr::{parse_cidr_sloppy, parse_ip_sloppy, ApiCidr};
use super::error::{field_error, FieldError};
use super::validate::{
    is_dns_subdomain, validate_label_key, validate_label_value, validate_labels, validate_port_name,
};
use crate::model::{
    ContainerPort, Operator, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Requirement, Rule,
    Selector,
};

pub(super) fn convert_pod(
    namespace: String,
    name: String,
    pod: core::Pod,
) -> Result<Pod, FieldError> {
    let labels = pod.metadata.labels.unwrap_or_default();
    let spec = pod.spec.unwrap_or_default();
    let mut ports = Vec::new();
    for (c, container) in spec.containers.iter().enumerate() {
        ports.extend(convert_container_ports(
            container.ports.as_deref().unwrap_or_default(),
            spec.host_network == Some(true),
            &format!("spec.containers[{c}].ports"),
        )?);
    }
    if let Some(node) = spec.node_name.as_deref().filter(|n| !is_dns_subdomain(n)) {
        let message = format!("{node:?} is not a valid DNS-1123 subdomain");
        return Err(field_error("spec.nodeName", message));
    }
    let status = pod.status.unwrap_or_default();
    // A pod that has terminated keeps its addresses in its status, but its sandbox released them
    // and a new pod may hold them now: it has none (as Calico and Cilium treat it).
    let terminated = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let ips = pod_ips(status)?;
    Ok(Pod {
        namespace,
        name,
        labels,
        ips: if terminated { Vec::new() } else { ips },
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node: spec.node_name,
    })
}

/// `validateContainerPorts`: names valid and unique in the container, containerPort and a set
/// hostPort 1-65535, protocol TCP, UDP or SCTP (TCP when empty, as v1 defaults it); and
/// `validateHostNetwork`: on the host network a set hostPort is the containerPort.
fn convert_container_ports(
    ports: &[core::ContainerPort],
    host_network: bool,
    field: &str,
) -> Result<Vec<ContainerPort>, FieldError> {
    let mut converted: Vec<ContainerPort> = Vec::new();
    for (p, port) in ports.iter().enumerate() {
        let field = format!("{field}[{p}]");
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            validate_port_name(name).map_err(|m| field_error(format!("{field}.name"), m))?;
            if converted.iter().any(|c| c.name.as_deref() == Some(name)) {
                let message = format!("{name:?} is named twice in this container");
                return Err(field_error(format!("{field}.name"), message));
            }
        }
        let number = port_number(port.container_port)
            .ok_or_else(|| field_error(format!("{field}.containerPort"), "must be 1-65535"))?;
        if let Some(host) = port.host_port.filter(|h| *h != 0) {
            port_number(host)
                .ok_or_else(|| field_error(format!("{field}.hostPort"), "must be 1-65535"))?;
            if host_network && host != port.container_port {
                let message = "must be containerPort on the host network";
                return Err(field_error(format!("{field}.hostPort"), message));
            }
        }
        let protocol = port.protocol.as_deref().filter(|p| !p.is_empty());
        let protocol = parse_protocol(protocol, &format!("{field}.protocol"))?;
        converted.push(ContainerPort {
            name: port.name.clone().filter(|n| !n.is_empty()),
            port: number,
            protocol,
        });
    }
    Ok(converted)
}

/// The pod's addresses as the API server stores them: `podIP` wins when it differs from
/// `podIPs[0]` (the v1 conversion), each parses as `ParseIPSloppy` takes it, and there is at
/// most one per family (`validatePodIPs`).
fn pod_ips(status: core::PodStatus) -> Result<Vec<IpAddr>, FieldError> {
    let listed = status.pod_ips.unwrap_or_default();
    let texts: Vec<(String, String)> = match status.pod_ip.filter(|ip| !ip.is_empty()) {
        Some(ip) if listed.first().is_none_or(|first| first.ip != ip) => {
            vec![("status.podIP".to_string(), ip)]
        }
        _ => listed
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}]"), p.ip))
            .collect(),
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for (field, text) in texts {
        let ip = parse_ip_sloppy(&text)
            .ok_or_else(|| field_error(&field, format!("{text:?} is not an IP address")))?;
        if ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
            return Err(field_error(
                field,
                "more than one address of the same family",
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// `ValidateNetworkPolicySpec`, in its order (the first error is the one upstream lists first):
/// the pod selector, each ingress and then egress rule (its ports, then its peers), the policy
/// types.
pub(super) fn convert_policy(
    namespace: String,
    name: String,
    spec: net::NetworkPolicySpec,
) -> Result<Policy, FieldError> {
    let pod_selector = convert_selector(spec.pod_selector.as_ref(), "spec.podSelector")?;
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
    // SetDefaults_NetworkPolicy: without policyTypes, Ingress always applies and Egress only
    // when egress rules are present.
    let (affects_ingress, affects_egress) = match &spec.policy_types {
        Some(types) if !types.is_empty() => policy_types(types)?,
        _ => (true, !egress.is_empty()),
    };
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress: affects_ingress.then_some(ingress),
        egress: affects_egress.then_some(egress),
    })
}

/// At most two entries, each Ingress or Egress (a repeated one is accepted).
fn policy_types(types: &[String]) -> Result<(bool, bool), FieldError> {
    if types.len() > 2 {
        return Err(field_error(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        ));
    }
    let (mut ingress, mut egress) = (false, false);
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
    Ok((ingress, egress))
}

fn convert_rule(
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
) -> Result<Rule, FieldError> {
    let mut rule = Rule::default();
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        rule.ports
            .push(convert_port(port, &format!("{field}.ports[{i}]"))?);
    }
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        rule.peers
            .push(convert_peer(peer, &format!("{field}.{peers_name}[{i}]"))?);
    }
    Ok(rule)
}

/// `ValidateNetworkPolicyPeer`: each selector and the ipBlock set are valid, at least one is
/// set, and an ipBlock stands alone.
fn convert_peer(peer: &net::NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
    let selector = |s: &Option<LabelSelector>, name: &str| {
        s.as_ref()
            .map(|s| convert_selector(Some(s), &format!("{field}.{name}")))
            .transpose()
    };
    let pod_selector = selector(&peer.pod_selector, "podSelector")?;
    let namespace_selector = selector(&peer.namespace_selector, "namespaceSelector")?;
    let block = peer
        .ip_block
        .as_ref()
        .map(|b| convert_ip_block(b, &format!("{field}.ipBlock")))
        .transpose()?;
    match (
        block,
        pod_selector.is_some() || namespace_selector.is_some(),
    ) {
        (Some(block), false) => Ok(block),
        (Some(_), true) => Err(field_error(
            field,
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (None, false) => Err(field_error(
            field,
            "must specify podSelector, namespaceSelector or ipBlock",
        )),
        (None, true) => Ok(Peer::Pods {
            pod_selector,
            namespace_selector,
        }),
    }
}

/// `ValidateIPBlock`: cidr and every except parse (see [`super::cidr`]), and each except is a
/// strict subset of cidr.
fn convert_ip_block(block: &net::IPBlock, field: &str) -> Result<Peer, FieldError> {
    let cidr_field = format!("{field}.cidr");
    if block.cidr.is_empty() {
        return Err(field_error(cidr_field, "required"));
    }
    let cidr = parse_cidr(&block.cidr, &cidr_field)?;
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let except_field = format!("{field}.except[{i}]");
        let e = parse_cidr(text, &except_field)?;
        if !cidr.strictly_contains(&e) {
            let message = format!("{text} is not inside cidr {}", block.cidr);
            return Err(field_error(except_field, message));
        }
        except.push(e.net);
    }
    Ok(Peer::IpBlock {
        cidr: cidr.net,
        except,
    })
}

/// `ValidateNetworkPolicyPort`, in its order: protocol, port, endPort.
fn convert_port(port: &net::NetworkPolicyPort, field: &str) -> Result<PolicyPort, FieldError> {
    let protocol = parse_protocol(port.protocol.as_deref(), &format!("{field}.protocol"))?;
    let end_field = || format!("{field}.endPort");
    let matcher = match (&port.port, port.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => return Err(field_error(end_field(), "may not be set without port")),
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                let message = "may not be set when port is a name";
                return Err(field_error(end_field(), message));
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
                Some(e) if e < *n => {
                    let message = format!("{e} is less than port {first}");
                    return Err(field_error(end_field(), message));
                }
                Some(e) => port_number(e)
                    .ok_or_else(|| field_error(end_field(), format!("{e} is not 1-65535")))?,
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

/// A CIDR as `ipBlock.cidr` takes it (see [`super::cidr`]).
pub(super) fn parse_cidr(text: &str, field: &str) -> Result<ApiCidr, FieldError> {
    parse_cidr_sloppy(text).ok_or_else(|| field_error(field, format!("{text:?} is not a CIDR")))
}

pub(super) fn convert_selector(
    selector: Option<&LabelSelector>,
    field: &str,
) -> Result<Selector, FieldError> {
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

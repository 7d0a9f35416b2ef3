//! Converts k8s-openapi objects into the model, validating every field on the way: the first
//! invalid field rejects the object, named by its path.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::{field_error, FieldError};
use super::validate::{
    validate_label_key, validate_label_value, validate_labels, validate_port_name,
};
use super::NAMESPACE_NAME_LABEL;
use crate::model::{
    ContainerPort, Labels, Namespace, Operator, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol,
    Requirement, Rule, Selector,
};

pub(super) fn convert_namespace(name: String, mut labels: Labels) -> Result<Namespace, FieldError> {
    validate_labels(&labels, "metadata.labels")?;
    // The API server sets this label on every namespace; a manifest may leave it out.
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    Ok(Namespace { name, labels })
}

pub(super) fn convert_pod(
    namespace: String,
    name: String,
    pod: core::Pod,
) -> Result<Pod, FieldError> {
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

pub(super) fn convert_policy(
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
pub(super) fn parse_cidr(text: &str, field: &str) -> Result<IpNet, FieldError> {
    text.trim()
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| field_error(field, format!("{text:?} is not a CIDR")))
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

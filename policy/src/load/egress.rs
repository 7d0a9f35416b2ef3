//! Node and EgressGateway objects: the wire form of the `portcullis.io/v1alpha1` EgressGateway
//! (shared by manifests and the Kubernetes source) and their conversion into the model, with the
//! checks the CRD schema cannot express (CIDR and IP syntax, one egress IP per family, selectors).

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;

use super::convert::{convert_selector, parse_cidr};
use super::error::{field_error, FieldError};
use super::validate::{is_dns_subdomain, validate_labels};
use crate::model::{EgressGateway, EgressSelector, Node};

/// API group, version and kind of the EgressGateway custom resource.
pub const EGRESS_GATEWAY_GROUP: &str = "portcullis.io";
pub const EGRESS_GATEWAY_VERSION: &str = "v1alpha1";
pub const EGRESS_GATEWAY_KIND: &str = "EgressGateway";
pub const EGRESS_GATEWAY_PLURAL: &str = "egressgateways";

/// An EgressGateway as written in a manifest or served by the API server. Every field is
/// optional here so that a missing one is reported by [`convert_egress_gateway`] with its path.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EgressGatewayObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<EgressGatewaySpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewaySpec {
    #[serde(default)]
    pub selectors: Option<Vec<EgressSelectorSpec>>,
    #[serde(default, rename = "destinationCIDRs")]
    pub destination_cidrs: Option<Vec<String>>,
    #[serde(default, rename = "excludedCIDRs")]
    pub excluded_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub gateway: Option<GatewaySpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressSelectorSpec {
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, rename = "egressIPs")]
    pub egress_ips: Option<Vec<String>>,
}

pub(super) fn convert_node(name: String, node: core::Node) -> Result<Node, FieldError> {
    let labels = node.metadata.labels.unwrap_or_default();
    validate_labels(&labels, "metadata.labels")?;
    let listed = node.status.and_then(|s| s.addresses).unwrap_or_default();
    let mut addresses: Vec<IpAddr> = Vec::new();
    // InternalIP before ExternalIP whatever the order in status; host names are not addresses.
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, address) in listed.iter().enumerate() {
            if address.type_ != wanted {
                continue;
            }
            let ip: IpAddr = address.address.trim().parse().map_err(|_| {
                field_error(
                    format!("status.addresses[{i}].address"),
                    format!("{:?} is not an IP address", address.address),
                )
            })?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    Ok(Node {
        name,
        labels,
        addresses,
    })
}

pub(super) fn convert_egress_gateway(
    name: String,
    object: EgressGatewayObject,
) -> Result<EgressGateway, FieldError> {
    if !is_dns_subdomain(&name) {
        return Err(field_error(
            "metadata.name",
            format!("{name:?} is not a valid DNS subdomain"),
        ));
    }
    let spec = object.spec.ok_or_else(|| field_error("spec", "missing"))?;
    let selectors = convert_selectors(spec.selectors.unwrap_or_default())?;
    let destination_cidrs = convert_cidrs(
        spec.destination_cidrs.unwrap_or_default(),
        "spec.destinationCIDRs",
    )?;
    if destination_cidrs.is_empty() {
        return Err(field_error(
            "spec.destinationCIDRs",
            "must list at least one CIDR",
        ));
    }
    let excluded_cidrs = convert_cidrs(
        spec.excluded_cidrs.unwrap_or_default(),
        "spec.excludedCIDRs",
    )?;
    let gateway = spec
        .gateway
        .ok_or_else(|| field_error("spec.gateway", "missing"))?;
    let node_selector = match &gateway.node_selector {
        Some(selector) => convert_selector(Some(selector), "spec.gateway.nodeSelector")?,
        None => return Err(field_error("spec.gateway.nodeSelector", "missing")),
    };
    let egress_ips = convert_egress_ips(gateway.egress_ips.unwrap_or_default())?;
    // An egress IP is only ever used for destinations of its family: one without such a
    // destination CIDR is a mistake (a typo'd address or a missing CIDR), not something to ignore.
    for (i, ip) in egress_ips.iter().enumerate() {
        if !destination_cidrs
            .iter()
            .any(|c| c.addr().is_ipv4() == ip.is_ipv4())
        {
            return Err(field_error(
                format!("spec.gateway.egressIPs[{i}]"),
                format!(
                    "{ip}: no destinationCIDR is {}, so it would never be used",
                    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
    }
    Ok(EgressGateway {
        name,
        selectors,
        destination_cidrs,
        excluded_cidrs,
        node_selector,
        egress_ips,
    })
}

fn convert_selectors(items: Vec<EgressSelectorSpec>) -> Result<Vec<EgressSelector>, FieldError> {
    if items.is_empty() {
        return Err(field_error(
            "spec.selectors",
            "must list at least one selector",
        ));
    }
    let mut selectors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.selectors[{i}]");
        if item.namespace_selector.is_none() && item.pod_selector.is_none() {
            return Err(field_error(
                field,
                "must specify namespaceSelector or podSelector",
            ));
        }
        let convert = |selector: &Option<LabelSelector>, name: &str| {
            selector
                .as_ref()
                .map(|s| convert_selector(Some(s), &format!("{field}.{name}")))
                .transpose()
        };
        selectors.push(EgressSelector {
            namespace_selector: convert(&item.namespace_selector, "namespaceSelector")?,
            pod_selector: convert(&item.pod_selector, "podSelector")?,
        });
    }
    Ok(selectors)
}

/// CIDRs as `ipBlock.cidr` takes them: host bits may be set and are cleared.
fn convert_cidrs(texts: Vec<String>, field: &str) -> Result<Vec<IpNet>, FieldError> {
    let mut cidrs = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let cidr = parse_cidr(text, &format!("{field}[{i}]"))?.net;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

fn convert_egress_ips(texts: Vec<String>) -> Result<Vec<IpAddr>, FieldError> {
    const FIELD: &str = "spec.gateway.egressIPs";
    if texts.is_empty() || texts.len() > 2 {
        return Err(field_error(
            FIELD,
            format!("must list 1 or 2 addresses, not {}", texts.len()),
        ));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let ip: IpAddr = text
            .trim()
            .parse()
            .map_err(|_| field_error(&field, format!("{text:?} is not an IP address")))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(field_error(
                field,
                format!("{ip} is unspecified, loopback or multicast"),
            ));
        }
        if ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
            return Err(field_error(
                field,
                format!("{ip}: at most one egress IP per address family"),
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

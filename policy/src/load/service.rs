//! Converts a Service for `probe --to SERVICE`: its cluster addresses and ports, validated as
//! the API server validates the fields used (`ValidateService`: port numbers, protocols, target
//! ports, cluster IPs).

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::{field_error, FieldError};
use super::validate::validate_port_name;
use crate::model::Protocol;
use crate::service::{Service, ServicePort, TargetPort};

pub(super) fn convert_service(
    namespace: String,
    name: String,
    service: core::Service,
) -> Result<Service, FieldError> {
    let spec = service.spec.unwrap_or_default();
    let mut ports = Vec::new();
    for (i, port) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        ports.push(convert_port(port, &format!("spec.ports[{i}]"))?);
    }
    // `None` is the headless service's cluster IP.
    let texts = match spec.cluster_ips.filter(|ips| !ips.is_empty()) {
        Some(ips) => ips,
        None => spec.cluster_ip.into_iter().collect(),
    };
    let mut cluster_ips = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        if text.is_empty() || text == "None" {
            continue;
        }
        let ip: IpAddr = text.parse().map_err(|_| {
            field_error(
                format!("spec.clusterIPs[{i}]"),
                format!("{text:?} is not an IP address"),
            )
        })?;
        cluster_ips.push(ip);
    }
    // The endpoints controller gives a service without a selector (or an empty one, as stored)
    // no endpoints.
    let selector = spec.selector.filter(|s| !s.is_empty());
    Ok(Service {
        namespace,
        name,
        selector,
        cluster_ips,
        ports,
    })
}

fn convert_port(port: core::ServicePort, field: &str) -> Result<ServicePort, FieldError> {
    let number = |value: i32, at: &str| {
        u16::try_from(value)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| field_error(format!("{field}.{at}"), format!("{value} is not 1-65535")))
    };
    let protocol = match port.protocol.as_deref() {
        None | Some("") => Protocol::Tcp,
        Some(name) => Protocol::parse(name).ok_or_else(|| {
            field_error(
                format!("{field}.protocol"),
                format!("{name:?} is not TCP, UDP or SCTP"),
            )
        })?,
    };
    let number_port = number(port.port, "port")?;
    let target = match port.target_port {
        None => TargetPort::Number(number_port),
        Some(IntOrString::Int(n)) => TargetPort::Number(number(n, "targetPort")?),
        Some(IntOrString::String(name)) => {
            validate_port_name(&name).map_err(|m| field_error(format!("{field}.targetPort"), m))?;
            TargetPort::Name(name)
        }
    };
    Ok(ServicePort {
        name: port.name.filter(|n| !n.is_empty()),
        protocol,
        port: number_port,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Result<Service, FieldError> {
        convert_service(
            "app".into(),
            "db".into(),
            serde_yaml_ng::from_str(yaml).unwrap(),
        )
    }

    #[test]
    fn ports_and_addresses() {
        let s = service(
            "spec: {clusterIP: 10.96.0.7, clusterIPs: [10.96.0.7, 'fd00::7'], selector: {app: db},
                    ports: [{port: 5432, targetPort: pg}, {port: 53, protocol: UDP}]}",
        )
        .unwrap_or_else(|e| panic!("{}: {}", e.field, e.message));
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(s.ports[0].target, TargetPort::Name("pg".into()));
        assert_eq!(s.ports[1].target, TargetPort::Number(53));
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        let headless = service("spec: {clusterIP: None, selector: {}}")
            .unwrap_or_else(|e| panic!("{}: {}", e.field, e.message));
        assert!(headless.cluster_ips.is_empty() && headless.selector.is_none());
    }

    #[test]
    fn invalid_fields_are_named() {
        for (yaml, field) in [
            ("spec: {ports: [{port: 0}]}", "spec.ports[0].port"),
            (
                "spec: {ports: [{port: 80, targetPort: 70000}]}",
                "spec.ports[0].targetPort",
            ),
            (
                "spec: {ports: [{port: 80, targetPort: 'no_such'}]}",
                "spec.ports[0].targetPort",
            ),
            (
                "spec: {ports: [{port: 80, protocol: ICMP}]}",
                "spec.ports[0].protocol",
            ),
            ("spec: {clusterIPs: [10.0.0.300]}", "spec.clusterIPs[0]"),
        ] {
            let error = service(yaml).err().map(|e| e.field);
            assert_eq!(error.as_deref(), Some(field), "{yaml}");
        }
    }
}

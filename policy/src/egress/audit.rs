//! Audit findings about EgressGateways: ones that select nothing, have no node or only one (no
//! failover), egress IPs used twice, pods two of them select for overlapping destinations, and clusters whose nodes
//! carry no default gateway label.

use ipnet::IpNet;

use super::{decide, selects};
use crate::audit::{Finding, Severity};
use crate::model::{EgressGateway, Snapshot, EGRESS_GATEWAY_LABEL};

fn object(gateway: &EgressGateway) -> String {
    format!("EgressGateway {}", gateway.name)
}

/// At most this many names in a message.
const SHOWN: usize = 5;

fn shown(names: &[String]) -> String {
    let more = if names.len() > SHOWN { ", ..." } else { "" };
    format!("{}{more}", names[..names.len().min(SHOWN)].join(", "))
}

pub(crate) fn findings(snapshot: &Snapshot) -> Vec<Finding> {
    let mut findings = Vec::new();
    let gateways = &snapshot.egress_gateways;
    for gateway in gateways {
        let selected = (snapshot.pods.iter()).filter(|p| selects(snapshot, gateway, p));
        if selected.count() == 0 {
            findings.push(Finding {
                severity: Severity::Low,
                check: "egress-selects-no-pod",
                object: object(gateway),
                message: "spec.selectors match no pod".into(),
            });
        }
        // Without Nodes in the input (manifests of workloads only) nothing can be said.
        let members = super::members(snapshot, gateway);
        if members.len() == 1 {
            findings.push(Finding {
                severity: Severity::Low,
                check: "egress-no-standby",
                object: object(gateway),
                message: format!(
                    "spec.gateway.nodeSelector {} matches one node ({}): no standby gateway, its egress stops while that node or its gateway is down",
                    gateway.node_selector, members[0].name
                ),
            });
        }
        if !snapshot.nodes.is_empty() && members.is_empty() {
            findings.push(Finding {
                severity: Severity::Medium,
                check: "egress-no-gateway-node",
                object: object(gateway),
                message: format!(
                    "spec.gateway.nodeSelector {} matches no node: its pods leave untranslated through a default gateway",
                    gateway.node_selector
                ),
            });
        }
    }
    for (i, first) in gateways.iter().enumerate() {
        for second in &gateways[i + 1..] {
            for ip in first
                .egress_ips
                .iter()
                .filter(|ip| second.egress_ips.contains(ip))
            {
                findings.push(Finding {
                    severity: Severity::Medium,
                    check: "egress-ip-shared",
                    object: object(second),
                    message: format!(
                        "egress IP {ip} is also the egress IP of EgressGateway {}: external firewalls cannot tell their pods apart",
                        first.name
                    ),
                });
            }
            if let Some(finding) = overlap(snapshot, first, second) {
                findings.push(finding);
            }
        }
    }
    let has_pods = snapshot.pods.iter().any(|p| !p.host_network);
    let has_default = (snapshot.nodes.iter())
        .any(|n| n.labels.get(EGRESS_GATEWAY_LABEL).map(String::as_str) == Some("true"));
    if has_pods && !snapshot.nodes.is_empty() && !has_default {
        findings.push(Finding {
            severity: Severity::High,
            check: "no-default-egress-gateway",
            object: "cluster".into(),
            message: format!(
                "no node is labelled {EGRESS_GATEWAY_LABEL}=true: traffic of pods no EgressGateway decides for is not steered to a gateway and not enforced there"
            ),
        });
    }
    findings
}

/// Two EgressGateways that select a common pod with overlapping destination CIDRs, and which one
/// decides where by the documented rule.
fn overlap(snapshot: &Snapshot, a: &EgressGateway, b: &EgressGateway) -> Option<Finding> {
    let pods: Vec<String> = (snapshot.pods.iter())
        .filter(|p| selects(snapshot, a, p) && selects(snapshot, b, p))
        .map(|p| p.key())
        .collect();
    if pods.is_empty() {
        return None;
    }
    let mut outcomes = Vec::new();
    let mut tie = false;
    for da in &a.destination_cidrs {
        for db in &b.destination_cidrs {
            // CIDRs overlap only when one contains the other; the narrower one is where both count.
            let narrower: IpNet = match (da.contains(db), db.contains(da)) {
                (true, _) => *db,
                (_, true) => *da,
                _ => continue,
            };
            tie |= da == db;
            let outcome = match decide(&[a, b], narrower) {
                Some((winner, _)) => format!("{} decides {narrower}", winner.name),
                None => format!("neither decides {narrower} (both exclude it)"),
            };
            outcomes.push(format!(
                "{da} ({}) and {db} ({}): {outcome}",
                a.name, b.name
            ));
        }
    }
    if outcomes.is_empty() {
        return None;
    }
    Some(Finding {
        // Equal CIDRs are decided by name only, which is rarely what was meant.
        severity: if tie { Severity::Medium } else { Severity::Low },
        check: "egress-overlap",
        object: object(b),
        message: format!(
            "selects pods EgressGateway {} selects too ({}) with overlapping destinations; the longest destination CIDR decides, then the smallest name: {}",
            a.name,
            shown(&pods),
            outcomes.join("; ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::audit::{audit, Severity};
    use crate::load::load_sources;

    fn gateway(name: &str, app: &str, cidrs: &str, ip: &str, role: &str) -> String {
        format!(
            "apiVersion: portcullis.io/v1alpha1\nkind: EgressGateway\nmetadata: {{name: {name}}}\nspec:\n  selectors: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}]\n  destinationCIDRs: {cidrs}\n  gateway: {{nodeSelector: {{matchLabels: {{role: {role}}}}}, egressIPs: [{ip}]}}\n---\n"
        )
    }

    const PODS: &str = "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: prod, labels: {app: a}}\nstatus: {podIP: 10.0.0.5}\n---\n";

    #[test]
    fn egress_gateway_findings() {
        let text = [
            PODS.to_string(),
            gateway(
                "db",
                "a",
                "[203.0.113.0/25, 203.0.113.0/24]",
                "192.0.2.1",
                "gw",
            ),
            gateway("all", "a", "[0.0.0.0/0, 203.0.113.0/24]", "192.0.2.2", "gw"),
            gateway("idle", "gone", "[0.0.0.0/0]", "192.0.2.2", "nowhere"),
            "kind: Node\napiVersion: v1\nmetadata: {name: n1, labels: {role: gw}}\n".into(),
        ]
        .concat();
        let loaded = load_sources([("t.yaml", text.as_str())]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let findings = audit(&loaded.snapshot);
        let found = |check: &str, object: &str| {
            findings
                .iter()
                .find(|f| f.check == check && f.object == object)
                .unwrap_or_else(|| panic!("no {check} for {object}: {findings:#?}"))
        };
        found("egress-selects-no-pod", "EgressGateway idle");
        found("egress-no-gateway-node", "EgressGateway idle");
        let shared = found("egress-ip-shared", "EgressGateway idle");
        assert!(shared
            .message
            .contains("192.0.2.2 is also the egress IP of EgressGateway all"));
        let overlap = found("egress-overlap", "EgressGateway db");
        assert_eq!(overlap.severity, Severity::Medium, "equal CIDRs");
        assert!(
            overlap
                .message
                .contains("0.0.0.0/0 (all) and 203.0.113.0/25 (db): db decides 203.0.113.0/25")
                && overlap.message.contains(
                    "203.0.113.0/24 (all) and 203.0.113.0/24 (db): all decides 203.0.113.0/24"
                ),
            "{}",
            overlap.message
        );
        assert!(overlap.message.contains("(prod/a)"), "{}", overlap.message);
        let default = found("no-default-egress-gateway", "cluster");
        assert_eq!(default.severity, Severity::High);
    }

    #[test]
    fn no_node_findings_without_nodes() {
        let text = [
            PODS.to_string(),
            gateway("db", "a", "[0.0.0.0/0]", "192.0.2.1", "gw"),
        ]
        .concat();
        let loaded = load_sources([("t.yaml", text.as_str())]);
        let checks: Vec<&str> = audit(&loaded.snapshot).iter().map(|f| f.check).collect();
        assert!(!checks.contains(&"egress-no-gateway-node"), "{checks:?}");
        assert!(!checks.contains(&"no-default-egress-gateway"), "{checks:?}");
    }
}

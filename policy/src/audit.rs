//! Audit: what in a cluster's policies is likely a gap or a mistake — namespaces without a default
//! deny, rules that allow everything, ipBlocks that also match pods, excepts that carve nothing,
//! policies that select no pod, and EgressGateway mistakes ([`crate::egress`]).

use std::fmt;

use serde::Serialize;

use crate::model::{Direction, Peer, Policy, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "info" => Some(Severity::Info),
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the check, e.g. `no-default-deny-ingress`.
    pub check: &'static str,
    /// The namespace, `namespace/policy`, `EgressGateway name` or `cluster` concerned.
    pub object: String,
    pub message: String,
}

/// A namespace has a default deny for a direction when a policy with an empty podSelector affects
/// that direction and has no rules: every pod is isolated and nothing is allowed by it.
fn has_default_deny(snapshot: &Snapshot, namespace: &str, direction: Direction) -> bool {
    snapshot.policies.iter().any(|p| {
        p.namespace == namespace
            && p.pod_selector.is_empty()
            && p.rules(direction).is_some_and(|rules| rules.is_empty())
    })
}

fn peer_text(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

fn audit_policy(snapshot: &Snapshot, policy: &Policy, findings: &mut Vec<Finding>) {
    let selected = snapshot
        .pods
        .iter()
        .filter(|pod| !pod.host_network && pod.namespace == policy.namespace)
        .filter(|pod| policy.pod_selector.matches(&pod.labels))
        .count();
    if selected == 0 {
        findings.push(Finding {
            severity: Severity::Low,
            check: "selects-no-pod",
            object: policy.key(),
            message: format!(
                "podSelector {} matches no pod in namespace {}",
                policy.pod_selector, policy.namespace
            ),
        });
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        let list = peer_text(direction);
        for (r, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let rule_path = format!("{direction}[{r}]");
            if rule.peers.is_empty() && rule.ports.is_empty() {
                findings.push(Finding {
                    severity: Severity::High,
                    check: "allows-everything",
                    object: policy.key(),
                    message: format!(
                        "{rule_path} has no peers and no ports: it allows all {direction} traffic of the selected pods"
                    ),
                });
            }
            for (p, peer) in rule.peers.iter().enumerate() {
                let peer_path = format!("{rule_path}.{list}[{p}]");
                match peer {
                    Peer::Pods {
                        pod_selector,
                        namespace_selector: Some(ns),
                    } if ns.is_empty() && pod_selector.as_ref().is_none_or(|s| s.is_empty()) => {
                        findings.push(Finding {
                            severity: Severity::Medium,
                            check: "allows-all-pods",
                            object: policy.key(),
                            message: format!("{peer_path} matches every pod in every namespace"),
                        });
                    }
                    Peer::Pods { .. } => {}
                    Peer::IpBlock { cidr, except } => {
                        if cidr.prefix_len() == 0 && except.is_empty() && rule.ports.is_empty() {
                            findings.push(Finding {
                                severity: Severity::High,
                                check: "allows-everything",
                                object: policy.key(),
                                message: format!(
                                    "{peer_path}.ipBlock {cidr} with no ports allows every address of that family"
                                ),
                            });
                        }
                        let covered: Vec<String> = snapshot
                            .pods
                            .iter()
                            .filter(|pod| {
                                pod.ips.iter().any(|ip| {
                                    cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
                                })
                            })
                            .map(|pod| pod.key())
                            .collect();
                        if !covered.is_empty() {
                            findings.push(Finding {
                                severity: Severity::Medium,
                                check: "ipblock-covers-pods",
                                object: policy.key(),
                                message: format!(
                                    "{peer_path}.ipBlock {cidr} also matches pod addresses ({}{}); CNIs differ on whether ipBlock applies to pods",
                                    covered.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                                    if covered.len() > 5 { ", ..." } else { "" }
                                ),
                            });
                        }
                        for (e, carve) in except.iter().enumerate() {
                            let redundant = except.iter().enumerate().any(|(o, other)| {
                                o != e && other.contains(carve) && (other != carve || o < e)
                            });
                            if redundant {
                                findings.push(Finding {
                                    severity: Severity::Low,
                                    check: "except-carves-nothing",
                                    object: policy.key(),
                                    message: format!(
                                        "{peer_path}.ipBlock.except[{e}] {carve} is already inside another except"
                                    ),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every finding, most severe first.
pub fn audit(snapshot: &Snapshot) -> Vec<Finding> {
    let mut findings = Vec::new();
    for namespace in snapshot.namespaces.keys() {
        let pods: Vec<_> = snapshot
            .pods
            .iter()
            .filter(|p| &p.namespace == namespace && !p.host_network)
            .collect();
        if pods.is_empty() {
            continue;
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            if has_default_deny(snapshot, namespace, direction) {
                continue;
            }
            let open: Vec<String> = pods
                .iter()
                .filter(|pod| snapshot.selecting(pod, direction).next().is_none())
                .map(|pod| pod.name.clone())
                .collect();
            let detail = if open.is_empty() {
                "every pod is selected by some policy, but new pods will not be".to_string()
            } else {
                format!(
                    "{} of {} pods accept any {direction}: {}",
                    open.len(),
                    pods.len(),
                    open.join(", ")
                )
            };
            findings.push(Finding {
                severity: if open.is_empty() {
                    Severity::Low
                } else {
                    Severity::Medium
                },
                check: match direction {
                    Direction::Ingress => "no-default-deny-ingress",
                    Direction::Egress => "no-default-deny-egress",
                },
                object: namespace.clone(),
                message: format!(
                    "namespace has pods but no default-deny {direction} policy; {detail}"
                ),
            });
        }
    }
    for policy in &snapshot.policies {
        audit_policy(snapshot, policy, &mut findings);
    }
    findings.extend(crate::egress::audit::findings(snapshot));
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.object.cmp(&b.object)));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_sources;

    #[test]
    fn finds_missing_default_deny_and_broad_rules() {
        let loaded = load_sources([(
            "t.yaml",
            r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: prod, labels: {app: a}}
status: {podIP: 10.0.0.5}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-ingress, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: wide, namespace: prod}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - {}
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.1.2.0/24]}}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: orphan, namespace: prod}
spec: {podSelector: {matchLabels: {app: gone}}}
"#,
        )]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let findings = audit(&loaded.snapshot);
        let checks: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| (f.check, f.object.as_str()))
            .collect();
        assert!(checks.contains(&("allows-everything", "prod/wide")));
        assert!(checks.contains(&("ipblock-covers-pods", "prod/wide")));
        assert!(checks.contains(&("except-carves-nothing", "prod/wide")));
        assert!(checks.contains(&("selects-no-pod", "prod/orphan")));
        assert!(checks.contains(&("no-default-deny-egress", "prod")));
        assert!(!checks.contains(&("no-default-deny-ingress", "prod")));
        assert_eq!(findings[0].severity, Severity::High);
    }
}

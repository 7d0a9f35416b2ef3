//! Human and machine renderings of a verdict: which policies select each end and which rule
//! allowed the traffic, or why nothing did, and for traffic leaving the cluster the egress IP.

use serde_json::{json, Value};

use crate::egress::{egress_for, EgressChoice};
use crate::eval::{DirectionVerdict, Side, Verdict};
use crate::model::{Direction, Snapshot};
use crate::probe::{Probe, ProbeSpec};

fn side_text(direction: Direction, endpoint: &str, verdict: &DirectionVerdict) -> String {
    match verdict {
        DirectionVerdict::External => format!("{direction}: {endpoint} is outside the cluster"),
        DirectionVerdict::NotSelected => {
            format!("{direction}: no {direction} policy selects {endpoint}")
        }
        DirectionVerdict::Allowed { by, .. } => format!("{direction}: allowed by {by}"),
        DirectionVerdict::Denied { selecting } => format!(
            "{direction}: DENIED, {endpoint} is selected by {} and no rule matches",
            selecting.join(", ")
        ),
    }
}

/// One line explaining both directions.
pub fn reason(probe: &Probe, verdict: &Verdict) -> String {
    format!(
        "{}; {}",
        side_text(Direction::Egress, &probe.from.to_string(), &verdict.egress),
        side_text(Direction::Ingress, &probe.to.to_string(), &verdict.ingress)
    )
}

fn side_json(verdict: &DirectionVerdict) -> Value {
    match verdict {
        DirectionVerdict::External => json!({"result": "external"}),
        DirectionVerdict::NotSelected => json!({"result": "not-selected"}),
        DirectionVerdict::Allowed { selecting, by } => json!({
            "result": "allowed",
            "selecting": selecting,
            "rule": {"policy": by.policy, "index": by.rule, "peer": by.peer, "port": by.port},
        }),
        DirectionVerdict::Denied { selecting } => {
            json!({"result": "denied", "selecting": selecting})
        }
    }
}

/// The conformance contract's JSON object (from, to, port, protocol, verdict) plus the reasons.
pub fn to_json(probe: &Probe, verdict: &Verdict) -> Value {
    json!({
        "from": probe.from.to_string(),
        "to": probe.to.to_string(),
        "port": probe.port,
        "protocol": probe.protocol.to_string(),
        "verdict": if verdict.allowed() { "allow" } else { "deny" },
        "egress": side_json(&verdict.egress),
        "ingress": side_json(&verdict.ingress),
    })
}

/// The line of a probe that could not be answered: the probe as asked and why, with `error` in
/// place of `verdict` so that no reader takes a guess for an answer.
pub fn error_json(spec: &ProbeSpec, error: &str) -> Value {
    json!({
        "from": spec.from,
        "to": spec.to,
        "port": spec.port,
        "protocol": spec.protocol,
        "error": error,
    })
}

/// How a probe from a pod to an address outside the cluster leaves: `None` when it is denied or
/// no EgressGateway decides for it (it leaves untranslated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressExplained {
    pub choice: Option<EgressChoice>,
}

/// The egress decision of `probe`, for probes from a pod to an address outside the cluster only.
pub fn egress_explained(
    snapshot: &Snapshot,
    probe: &Probe,
    verdict: &Verdict,
) -> Option<EgressExplained> {
    let flow = snapshot.flow_of(probe).ok()?;
    let (Side::Pod(pod), Side::External) = (flow.src, flow.dst) else {
        return None;
    };
    let choice = verdict
        .allowed()
        .then(|| egress_for(snapshot, pod, flow.dst_ip))
        .flatten();
    Some(EgressExplained { choice })
}

/// Adds `egress_ip` and `egress_gateway` (null when untranslated) to a probe's [`to_json`] object.
pub fn add_egress_json(object: &mut Value, egress: &EgressExplained) {
    let choice = egress.choice.as_ref();
    object["egress_ip"] = json!(choice.and_then(|c| c.egress_ip).map(|ip| ip.to_string()));
    object["egress_gateway"] = json!(choice.map(|c| &c.gateway));
}

/// `leaves as 192.0.2.100 (EgressGateway prod-egress)`, or `None` when no EgressGateway decides.
pub fn egress_text(egress: &EgressExplained) -> Option<String> {
    let choice = egress.choice.as_ref()?;
    Some(match choice.egress_ip {
        Some(ip) => format!("leaves as {ip} (EgressGateway {})", choice.gateway),
        None => format!(
            "leaves untranslated (EgressGateway {} has no {} egress IP)",
            choice.gateway,
            if choice.destination.addr().is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_sources;
    use crate::model::Protocol;
    use crate::probe::ProbeEndpoint;

    const CLUSTER: &str = r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: prod, labels: {app: a}}
status: {podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: prod}
status: {podIP: 10.0.0.6}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: no-lan, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [192.168.0.0/16]}}, {ipBlock: {cidr: "::/0"}}]}]
---
apiVersion: portcullis.io/v1alpha1
kind: EgressGateway
metadata: {name: prod-egress}
spec:
  selectors: [{podSelector: {matchLabels: {app: a}}}]
  destinationCIDRs: ["0.0.0.0/0", "::/0"]
  gateway: {nodeSelector: {}, egressIPs: [192.0.2.100]}
"#;

    fn explained(from: &str, to: &str) -> (Option<EgressExplained>, Value) {
        let loaded = load_sources([("c.yaml", CLUSTER)]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let probe = Probe {
            from: ProbeEndpoint::parse(from).unwrap(),
            to: ProbeEndpoint::parse(to).unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
        };
        let verdict = loaded.snapshot.evaluate_probe(&probe).unwrap();
        let egress = egress_explained(&loaded.snapshot, &probe, &verdict);
        let mut object = to_json(&probe, &verdict);
        if let Some(e) = &egress {
            add_egress_json(&mut object, e);
        }
        (egress, object)
    }

    #[test]
    fn a_probe_to_outside_says_its_egress_ip() {
        let (egress, object) = explained("prod/a", "203.0.113.9");
        assert_eq!(object["egress_ip"], "192.0.2.100");
        assert_eq!(object["egress_gateway"], "prod-egress");
        assert_eq!(
            egress_text(&egress.unwrap()).unwrap(),
            "leaves as 192.0.2.100 (EgressGateway prod-egress)"
        );
        let (egress, _) = explained("prod/a", "2001:db8::9");
        assert_eq!(
            egress_text(&egress.unwrap()).unwrap(),
            "leaves untranslated (EgressGateway prod-egress has no IPv6 egress IP)"
        );
    }

    #[test]
    fn untranslated_denied_and_internal_probes() {
        // Not selected: null fields, no text.
        let (egress, object) = explained("prod/b", "203.0.113.9");
        assert_eq!(
            (
                object["egress_ip"].clone(),
                object["egress_gateway"].clone()
            ),
            (Value::Null, Value::Null)
        );
        assert_eq!(egress_text(&egress.unwrap()), None);
        // Denied: it does not leave.
        let (_, object) = explained("prod/a", "192.168.1.1");
        assert_eq!(object["verdict"], "deny");
        assert_eq!(object["egress_ip"], Value::Null);
        // Pod to pod: no egress fields at all.
        let (egress, object) = explained("prod/a", "prod/b");
        assert!(egress.is_none() && object.get("egress_ip").is_none());
    }
}

//! Human and machine renderings of a verdict: which policies select each end and which rule
//! allowed the traffic, or why nothing did.

use serde_json::{json, Value};

use crate::eval::{DirectionVerdict, Verdict};
use crate::model::Direction;
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

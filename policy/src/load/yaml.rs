//! Walks multi-document YAML: every document (or `List` item) of a kind that matters becomes an
//! object for the builder; other kinds are skipped.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::de::DeserializeSeed;
use serde::Deserialize;

use super::bounded::{BoundedValue, Budget};
use super::builder::SnapshotBuilder;
use super::egress::EGRESS_GATEWAY_KIND;
use super::error::Origin;
use super::nesting::{too_deep, MAX_FLOW_DEPTH};
use super::size::{request_body_bytes, MAX_REQUEST_BODY_BYTES};

/// The kinds loaded as objects (each one a request to the API server).
const OBJECT_KINDS: [&str; 6] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Node",
    EGRESS_GATEWAY_KIND,
    "Service",
];

/// Errors that concern only their document: the parser read it to its end.
const PER_DOCUMENT_ERRORS: [&str; 3] = [
    "duplicate entry with key",
    "recursion limit exceeded",
    "repetition limit exceeded",
];

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
    /// Adds every document of `text`; `source` names it in errors. A document that cannot be
    /// read is rejected and the next one read, except after a syntax error (the YAML stream
    /// cannot be resynchronised), past nesting too deep, or once aliases have used up the text's
    /// [`Budget`]: there the rest of the text is not read.
    pub fn add_yaml(&mut self, source: &str, text: &str) {
        // A byte-order mark may open a YAML stream; libyaml reads it as content.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let too_deep = too_deep(text);
        let readable = too_deep.map_or(text, |at| &text[..document_start(text, at)]);
        let budget = Budget::for_text(text);
        let mut documents = 0;
        for (index, document) in serde_yaml_ng::Deserializer::from_str(readable).enumerate() {
            documents = index + 1;
            let origin = Origin {
                source: source.to_string(),
                document: documents,
            };
            match BoundedValue(&budget).deserialize(document) {
                Ok(value) => self.add_value(&origin, value),
                Err(e) => {
                    let message = format!("not valid YAML: {e}");
                    let own = PER_DOCUMENT_ERRORS
                        .iter()
                        .any(|p| e.to_string().starts_with(p));
                    if budget.spent() {
                        let message = format!("{message}; the rest of the text is not read");
                        return self.reject(&origin, None, "", message);
                    }
                    self.reject(&origin, None, "", message);
                    if !own {
                        return; // the parser would repeat a syntax error forever
                    }
                }
            }
        }
        if let Some(at) = too_deep {
            // An empty stream still reads as one empty document.
            let before = if readable.is_empty() { 0 } else { documents };
            let origin = Origin {
                source: source.to_string(),
                document: before + 1,
            };
            let line = text[..at].matches('\n').count() + 1;
            let message = format!(
                "flow collections nested deeper than {MAX_FLOW_DEPTH} levels at line {line}; \
                 the rest of the text is not read"
            );
            self.reject(&origin, None, "", message);
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
        if OBJECT_KINDS.contains(&kind.as_str()) {
            let bytes = request_body_bytes(&value);
            if bytes > MAX_REQUEST_BODY_BYTES {
                let message = format!(
                    "{bytes} bytes as a request, more than the API server's \
                     {MAX_REQUEST_BODY_BYTES}"
                );
                return self.reject(origin, Some(object_label(&kind, &value)), "", message);
            }
        }
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
            "Node" => match core::Node::deserialize(value) {
                Ok(node) => self.add_node(origin, node),
                Err(e) => self.reject(origin, Some("Node".into()), "", e.to_string()),
            },
            // Through JSON, as the API server serves it: one path, rejections by name.
            EGRESS_GATEWAY_KIND => match serde_json::to_value(&value) {
                Ok(json) => self.add_egress_gateway_json(origin, json),
                Err(e) => self.reject(origin, Some(kind), "", e.to_string()),
            },
            "Service" => match core::Service::deserialize(value) {
                Ok(service) => self.add_service(origin, service),
                Err(e) => self.reject(origin, Some("Service".into()), "", e.to_string()),
            },
            "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" | "NodeList"
            | "EgressGatewayList" | "ServiceList" => match ListItems::deserialize(value) {
                Ok(list) => {
                    for item in list.items {
                        self.add_value(origin, item);
                    }
                }
                Err(e) => self.reject(origin, Some(kind), "items", e.to_string()),
            },
            // Other kinds (Deployments, ...) may share a manifest; they do not affect policy.
            _ => {}
        }
    }
}

/// The object as the builder names it: `Kind namespace/name`, `Kind name` or `Kind`.
fn object_label(kind: &str, value: &serde_yaml_ng::Value) -> String {
    let metadata = |key: &str| {
        let text = value.get("metadata").and_then(|m| m.get(key));
        text.and_then(|t| t.as_str()).filter(|t| !t.is_empty())
    };
    match (metadata("name"), kind) {
        (None, _) => kind.to_string(),
        (Some(name), "Pod" | "NetworkPolicy" | "Service") => {
            format!(
                "{kind} {}/{name}",
                metadata("namespace").unwrap_or("default")
            )
        }
        (Some(name), _) => format!("{kind} {name}"),
    }
}

/// Where the document holding byte `at` begins: after the last `---` line before it.
fn document_start(text: &str, at: usize) -> usize {
    let before = &text[..at];
    let mut start = 0;
    let mut line = 0;
    for l in before.split_inclusive('\n') {
        if l.starts_with("---") && l[3..].starts_with(|c: char| c.is_ascii_whitespace()) {
            start = line;
        }
        line += l.len();
    }
    start
}

/// One YAML document (a probe file) read as [`SnapshotBuilder::add_yaml`] reads each: a leading
/// byte-order mark dropped, nesting and alias expansion bounded.
pub(crate) fn read_bounded_yaml(text: &str) -> Result<serde_yaml_ng::Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(at) = too_deep(text) {
        let line = text[..at].matches('\n').count() + 1;
        return Err(format!(
            "flow collections nested deeper than {MAX_FLOW_DEPTH} levels at line {line}"
        ));
    }
    let budget = Budget::for_text(text);
    BoundedValue(&budget)
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(|e| format!("not valid YAML: {e}"))
}

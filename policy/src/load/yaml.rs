//! Walks multi-document YAML: every document (or `List` item) of a kind that matters becomes an
//! object for the builder; other kinds are skipped.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Deserialize;

use super::builder::SnapshotBuilder;
use super::egress::EGRESS_GATEWAY_KIND;
use super::error::Origin;
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

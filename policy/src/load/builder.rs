//! Collects converted objects from any number of sources and builds the snapshot: an invalid
//! object, or a second one of the same name, is rejected by name while the others still load.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::convert::{convert_pod, convert_policy};
use super::egress::{convert_egress_gateway, convert_node, EgressGatewayObject};
use super::error::{field_error, FieldError, LoadError, Origin};
use super::meta::{validate_object_meta, NameRule};
use super::service::convert_service;
use super::{Loaded, NAMESPACE_NAME_LABEL};
use crate::model::{EgressGateway, Namespace, Node, Pod, Policy, Snapshot};
use crate::service::Service;

/// Accumulates objects from any number of sources and builds the snapshot.
#[derive(Default)]
pub struct SnapshotBuilder {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<(String, String), Policy>,
    nodes: BTreeMap<String, Node>,
    egress_gateways: BTreeMap<String, EgressGateway>,
    services: BTreeMap<(String, String), Service>,
    errors: Vec<LoadError>,
}

impl SnapshotBuilder {
    pub fn new() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    pub fn add_namespace(&mut self, origin: &Origin, ns: core::Namespace) {
        let Some(name) = ns.metadata.name.clone().filter(|n| !n.is_empty()) else {
            return self.reject_unnamed(origin, "Namespace");
        };
        let object = format!("Namespace {name}");
        let mut metadata = ns.metadata;
        // SetDefaults_Namespace (before validation): the API server sets this label to the
        // name, whatever the manifest says; a manifest may leave it out.
        (metadata.labels.get_or_insert_default()).insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        let added = validate_object_meta(&metadata, NameRule::Label, None).and_then(|()| {
            let labels = metadata.labels.unwrap_or_default();
            insert_once(
                &mut self.namespaces,
                name.clone(),
                Namespace { name, labels },
            )
        });
        if let Err(e) = added {
            self.reject_field(origin, object, e);
        }
    }

    pub fn add_node(&mut self, origin: &Origin, node: core::Node) {
        let Some(name) = node.metadata.name.clone() else {
            return self.reject_unnamed(origin, "Node");
        };
        let object = format!("Node {name}");
        let added = convert_node(name.clone(), node)
            .and_then(|node| insert_once(&mut self.nodes, name, node));
        if let Err(e) = added {
            self.reject_field(origin, object, e);
        }
    }

    pub fn add_egress_gateway(&mut self, origin: &Origin, gateway: EgressGatewayObject) {
        let Some(name) = gateway.metadata.name.clone() else {
            return self.reject_unnamed(origin, "EgressGateway");
        };
        let object = format!("EgressGateway {name}");
        let added = convert_egress_gateway(name.clone(), gateway)
            .and_then(|gateway| insert_once(&mut self.egress_gateways, name, gateway));
        if let Err(e) = added {
            self.reject_field(origin, object, e);
        }
    }

    /// An EgressGateway in the JSON form the API server serves. One that does not fit the wire
    /// form is rejected by its name when it has one, so that its last good version stays.
    pub fn add_egress_gateway_json(&mut self, origin: &Origin, value: serde_json::Value) {
        match EgressGatewayObject::deserialize(&value) {
            Ok(gateway) => self.add_egress_gateway(origin, gateway),
            Err(e) => {
                let name = value.pointer("/metadata/name").and_then(|n| n.as_str());
                let object = name.map_or("EgressGateway".into(), |n| format!("EgressGateway {n}"));
                self.reject(origin, Some(object), "", e.to_string());
            }
        }
    }

    pub fn add_pod(&mut self, origin: &Origin, pod: core::Pod) {
        let key = namespaced_key(&pod.metadata);
        let meta = validate_object_meta(&pod.metadata, NameRule::Subdomain, Some(&key.0));
        self.add_namespaced(
            origin,
            "Pod",
            key,
            meta,
            |b| &mut b.pods,
            |namespace, name| convert_pod(namespace, name, pod),
        );
    }

    pub fn add_policy(&mut self, origin: &Origin, policy: net::NetworkPolicy) {
        let key = namespaced_key(&policy.metadata);
        let meta = validate_object_meta(&policy.metadata, NameRule::Subdomain, Some(&key.0));
        let spec = policy.spec.unwrap_or_default();
        self.add_namespaced(
            origin,
            "NetworkPolicy",
            key,
            meta,
            |b| &mut b.policies,
            |namespace, name| convert_policy(namespace, name, spec),
        );
    }

    pub fn add_service(&mut self, origin: &Origin, service: core::Service) {
        let key = namespaced_key(&service.metadata);
        let meta = validate_object_meta(&service.metadata, NameRule::Label, Some(&key.0));
        self.add_namespaced(
            origin,
            "Service",
            key,
            meta,
            |b| &mut b.services,
            |namespace, name| convert_service(namespace, name, service),
        );
    }

    /// Converts one namespaced object of `kind` whose metadata was validated (`meta`) and
    /// stores it, or rejects it by name.
    fn add_namespaced<M>(
        &mut self,
        origin: &Origin,
        kind: &str,
        (namespace, name): (String, Option<String>),
        meta: Result<(), FieldError>,
        store: fn(&mut SnapshotBuilder) -> &mut BTreeMap<(String, String), M>,
        convert: impl FnOnce(String, String) -> Result<M, FieldError>,
    ) {
        let Some(name) = name else {
            return self.reject_unnamed(origin, kind);
        };
        let object = format!("{kind} {namespace}/{name}");
        let key = (namespace.clone(), name.clone());
        let added = meta
            .and_then(|()| convert(namespace, name))
            .and_then(|m| insert_once(store(self), key, m));
        if let Err(e) = added {
            self.reject_field(origin, object, e);
        }
    }

    pub(super) fn reject(
        &mut self,
        origin: &Origin,
        object: Option<String>,
        field: &str,
        message: String,
    ) {
        self.errors.push(LoadError {
            origin: origin.clone(),
            object,
            field: field.to_string(),
            message,
        });
    }

    fn reject_field(&mut self, origin: &Origin, object: String, error: FieldError) {
        self.reject(origin, Some(object), &error.field, error.message);
    }

    fn reject_unnamed(&mut self, origin: &Origin, kind: &str) {
        self.reject(origin, Some(kind.into()), "metadata.name", "missing".into());
    }

    /// The snapshot of every accepted object, with [implicit namespaces](snapshot_with_implicit_namespaces).
    pub fn build(self) -> Loaded {
        Loaded {
            snapshot: Snapshot {
                nodes: self.nodes.into_values().collect(),
                egress_gateways: self.egress_gateways.into_values().collect(),
                services: self.services.into_values().collect(),
                ..snapshot_with_implicit_namespaces(
                    self.namespaces,
                    self.pods.into_values().collect(),
                    self.policies.into_values().collect(),
                )
            },
            errors: self.errors,
        }
    }
}

/// The snapshot of these accepted objects. Namespaces that pods or policies name but no object
/// defines are added with only their name label, as if they existed unlabelled. Every source
/// builds its snapshot through this, so they all see the same namespaces. Nodes and
/// EgressGateways are left empty for the caller to fill.
pub fn snapshot_with_implicit_namespaces(
    mut namespaces: BTreeMap<String, Namespace>,
    pods: Vec<Pod>,
    policies: Vec<Policy>,
) -> Snapshot {
    let named = (pods.iter().map(|p| &p.namespace)).chain(policies.iter().map(|p| &p.namespace));
    for name in named {
        if !namespaces.contains_key(name) {
            let labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.clone())]);
            let name = name.clone();
            namespaces.insert(name.clone(), Namespace { name, labels });
        }
    }
    Snapshot {
        namespaces,
        pods,
        policies,
        ..Snapshot::default()
    }
}

/// Namespace (`default` when unset or empty, as kubectl and the API server default it) and name
/// (`None` when unset or empty) of an object.
fn namespaced_key(metadata: &ObjectMeta) -> (String, Option<String>) {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    (
        non_empty(&metadata.namespace).unwrap_or_else(|| "default".into()),
        non_empty(&metadata.name),
    )
}

/// Stores a new object; a second one under the same key is rejected, the first kept.
fn insert_once<K: Ord, M>(map: &mut BTreeMap<K, M>, key: K, object: M) -> Result<(), FieldError> {
    match map.entry(key) {
        Entry::Occupied(_) => Err(field_error("metadata.name", "defined twice")),
        Entry::Vacant(slot) => {
            slot.insert(object);
            Ok(())
        }
    }
}

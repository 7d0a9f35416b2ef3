//! Watched objects converted to the policy model on arrival, through the same
//! [`SnapshotBuilder`] as manifests, so an object is validated and rejected exactly as a file
//! source would.

use std::fmt::Debug;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Resource;
use portcullis_policy::load::{
    LoadError, Origin, SnapshotBuilder, EGRESS_GATEWAY_GROUP, EGRESS_GATEWAY_KIND,
    EGRESS_GATEWAY_PLURAL, EGRESS_GATEWAY_VERSION,
};
use portcullis_policy::model::{self, Snapshot};
use serde::de::DeserializeOwned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Namespace = 0,
    Pod = 1,
    Policy = 2,
    Node = 3,
    EgressGateway = 4,
}

/// How many kinds are watched.
pub(super) const KINDS: usize = 5;

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Policy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::EgressGateway => EGRESS_GATEWAY_KIND,
        }
    }

    /// Kinds only egress steering needs: when the server forbids reading them (a deployment whose
    /// RBAC predates them), policy enforcement goes on without them.
    pub(super) fn optional(self) -> bool {
        matches!(self, Kind::Node | Kind::EgressGateway)
    }
}

/// The EgressGateway custom resource, watched as a [`DynamicObject`].
pub(super) fn egress_gateway_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(
        EGRESS_GATEWAY_GROUP,
        EGRESS_GATEWAY_VERSION,
        EGRESS_GATEWAY_KIND,
    );
    ApiResource::from_gvk_with_plural(&gvk, EGRESS_GATEWAY_PLURAL)
}

/// `(namespace, name)`; namespaces have an empty namespace.
pub(super) type Key = (String, String);

/// One object converted to the policy model on arrival (or the reasons it is rejected): the API
/// objects themselves are not kept, and an update that changes nothing policy-relevant (pod
/// conditions, annotations, ...) is recognised by comparing models and publishes nothing.
#[derive(Clone, Debug)]
pub(super) enum Obj {
    Namespace(Converted<model::Namespace>),
    Pod(Converted<model::Pod>),
    Policy(Converted<model::Policy>),
    Node(Converted<model::Node>),
    EgressGateway(Converted<model::EgressGateway>),
}

pub(super) type Converted<M> = std::result::Result<M, Vec<LoadError>>;

/// Where errors say a watched object came from.
pub(super) fn origin(kind: Kind) -> Origin {
    Origin {
        source: format!("kubernetes {}", kind.name()),
        document: 1,
    }
}

/// What a watched kind knows how to do: say whether it is gone, convert itself.
pub(super) trait Watched:
    Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    const KIND: Kind;
    fn convert(self) -> Obj;
    /// Terminating objects are treated as deleted where that is the API's meaning.
    fn is_gone(&self) -> bool {
        false
    }
}

impl Watched for core::Namespace {
    const KIND: Kind = Kind::Namespace;
    fn convert(self) -> Obj {
        Obj::Namespace(convert_one(
            Self::KIND,
            |builder, origin| builder.add_namespace(origin, self),
            |s| s.namespaces.into_values().next(),
        ))
    }
}

impl Watched for core::Pod {
    const KIND: Kind = Kind::Pod;
    fn convert(self) -> Obj {
        Obj::Pod(convert_one(
            Self::KIND,
            |builder, origin| builder.add_pod(origin, self),
            |s| s.pods.into_iter().next(),
        ))
    }
    /// A pod being deleted (deletionTimestamp set) no longer gets policy: its address may be
    /// reused as soon as it is gone, and the API says it is going.
    fn is_gone(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

impl Watched for net::NetworkPolicy {
    const KIND: Kind = Kind::Policy;
    fn convert(self) -> Obj {
        Obj::Policy(convert_one(
            Self::KIND,
            |builder, origin| builder.add_policy(origin, self),
            |s| s.policies.into_iter().next(),
        ))
    }
}

impl Watched for core::Node {
    const KIND: Kind = Kind::Node;
    fn convert(self) -> Obj {
        Obj::Node(convert_one(
            Self::KIND,
            |builder, origin| builder.add_node(origin, self),
            |s| s.nodes.into_iter().next(),
        ))
    }
}

impl Watched for DynamicObject {
    const KIND: Kind = Kind::EgressGateway;
    fn convert(self) -> Obj {
        Obj::EgressGateway(convert_one(
            Self::KIND,
            // A DynamicObject is JSON already; were it not, the Null would be rejected.
            |builder, origin| {
                let value = serde_json::to_value(&self).unwrap_or_default();
                builder.add_egress_gateway_json(origin, value)
            },
            |s| s.egress_gateways.into_iter().next(),
        ))
    }
}

/// Runs one object through a fresh builder (`add`) and takes its model out of the snapshot
/// (`pick`), or the errors that rejected it.
fn convert_one<M>(
    kind: Kind,
    add: impl FnOnce(&mut SnapshotBuilder, &Origin),
    pick: impl FnOnce(Snapshot) -> Option<M>,
) -> Converted<M> {
    let mut builder = SnapshotBuilder::new();
    add(&mut builder, &origin(kind));
    let loaded = builder.build();
    if loaded.errors.is_empty() {
        pick(loaded.snapshot).ok_or_else(Vec::new)
    } else {
        Err(loaded.errors)
    }
}

pub(super) fn key_of<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

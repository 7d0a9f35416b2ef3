//! Turns manifest text (multi-document YAML of Namespace, Pod, NetworkPolicy, Node,
//! EgressGateway and Service objects, or `List`s of them) into a validated [`Snapshot`]. Validation follows
//! the Kubernetes v1.33 API server's (ObjectMeta, the NetworkPolicy spec, the Namespace and Pod
//! fields the loader uses, the 3 MiB request limit; `api_validation_tests.rs` holds upstream's
//! cases); an invalid object is rejected with its source, document, name and field path while
//! the others still load.
//! Reading files is the caller's job: this module never touches the file system.

#[cfg(test)]
mod api_validation_tests;
mod bounded;
mod builder;
mod cidr;
mod convert;
mod egress;
#[cfg(test)]
mod egress_tests;
mod error;
mod last_good;
mod meta;
mod nesting;
mod service;
mod size;
#[cfg(test)]
mod tests;
mod validate;
mod yaml;

pub use builder::{snapshot_with_implicit_namespaces, SnapshotBuilder};
pub use egress::{
    EgressGatewayObject, EgressGatewaySpec, EgressSelectorSpec, GatewaySpec, EGRESS_GATEWAY_GROUP,
    EGRESS_GATEWAY_KIND, EGRESS_GATEWAY_PLURAL, EGRESS_GATEWAY_VERSION,
};
pub use error::{LoadError, Origin, UnattributedError};
pub(crate) use yaml::read_bounded_yaml;

use crate::model::Snapshot;

/// Label the API server puts on every namespace (since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The outcome of loading: the snapshot of every valid object and the rejected ones.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<LoadError>,
}

/// Loads manifests given as `(source name, text)` pairs.
pub fn load_sources<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Loaded {
    let mut builder = SnapshotBuilder::new();
    for (source, text) in sources {
        builder.add_yaml(source, text);
    }
    builder.build()
}

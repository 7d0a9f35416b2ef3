//! What the watcher knows of each kind: every object's converted model (or its rejection) by key,
//! whether the kind has been listed, and whether its watch is down.

use std::collections::BTreeMap;

use portcullis_policy::load::{snapshot_with_implicit_namespaces, LoadError, Loaded};
use portcullis_policy::model;

use super::convert::{Converted, Key, Kind, Obj, KINDS};

/// What a kind's watch loop tells the store.
pub(super) enum Msg {
    /// A complete list of one kind: replaces everything known of it.
    Listed(Kind, Vec<(Key, Obj)>),
    Apply(Key, Obj),
    Delete(Kind, Key),
    Connected(Kind),
    Disconnected(Kind),
}

#[derive(Default)]
pub(super) struct Stores {
    namespaces: BTreeMap<Key, Converted<model::Namespace>>,
    pods: BTreeMap<Key, Converted<model::Pod>>,
    policies: BTreeMap<Key, Converted<model::Policy>>,
    nodes: BTreeMap<Key, Converted<model::Node>>,
    egress_gateways: BTreeMap<Key, Converted<model::EgressGateway>>,
    listed: [bool; KINDS],
    down: [bool; KINDS],
}

impl Stores {
    /// Applies one message; true if the snapshot or the rejected objects changed.
    pub(super) fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Listed(kind, objects) => {
                let mut fresh = Stores::default();
                for (key, obj) in objects {
                    fresh.insert(key, obj);
                }
                let changed = match kind {
                    Kind::Namespace => replace_if_changed(&mut self.namespaces, fresh.namespaces),
                    Kind::Pod => replace_if_changed(&mut self.pods, fresh.pods),
                    Kind::Policy => replace_if_changed(&mut self.policies, fresh.policies),
                    Kind::Node => replace_if_changed(&mut self.nodes, fresh.nodes),
                    Kind::EgressGateway => {
                        replace_if_changed(&mut self.egress_gateways, fresh.egress_gateways)
                    }
                };
                if self.listed[kind as usize] {
                    tracing::info!(kind = kind.name(), changed, "relisted");
                }
                let first = !std::mem::replace(&mut self.listed[kind as usize], true);
                self.down[kind as usize] = false;
                changed || first
            }
            Msg::Apply(key, obj) => self.insert(key, obj),
            Msg::Delete(kind, key) => match kind {
                Kind::Namespace => self.namespaces.remove(&key).is_some(),
                Kind::Pod => self.pods.remove(&key).is_some(),
                Kind::Policy => self.policies.remove(&key).is_some(),
                Kind::Node => self.nodes.remove(&key).is_some(),
                Kind::EgressGateway => self.egress_gateways.remove(&key).is_some(),
            },
            // Connection state is published through `stale()`, not as a content change.
            Msg::Connected(kind) => {
                self.down[kind as usize] = false;
                false
            }
            Msg::Disconnected(kind) => {
                self.down[kind as usize] = true;
                false
            }
        }
    }

    fn insert(&mut self, key: Key, obj: Obj) -> bool {
        match obj {
            Obj::Namespace(o) => upsert(&mut self.namespaces, key, o),
            Obj::Pod(o) => upsert(&mut self.pods, key, o),
            Obj::Policy(o) => upsert(&mut self.policies, key, o),
            Obj::Node(o) => upsert(&mut self.nodes, key, o),
            Obj::EgressGateway(o) => upsert(&mut self.egress_gateways, key, o),
        }
    }

    pub(super) fn ready(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    pub(super) fn stale(&self) -> bool {
        self.down.iter().any(|d| *d)
    }

    /// The snapshot of every accepted object and the rejected ones. Implicit namespaces follow
    /// the same rule as every other source ([`snapshot_with_implicit_namespaces`]).
    pub(super) fn build(&self) -> Loaded {
        let mut errors = Vec::new();
        let namespaces = (collect_ok(&self.namespaces, &mut errors).into_iter())
            .map(|ns| (ns.name.clone(), ns))
            .collect();
        let pods = collect_ok(&self.pods, &mut errors);
        let policies = collect_ok(&self.policies, &mut errors);
        let nodes = collect_ok(&self.nodes, &mut errors);
        let egress_gateways = collect_ok(&self.egress_gateways, &mut errors);
        errors.sort_by_key(|e| e.to_string());
        Loaded {
            snapshot: model::Snapshot {
                nodes,
                egress_gateways,
                ..snapshot_with_implicit_namespaces(namespaces, pods, policies)
            },
            errors,
        }
    }
}

/// Inserts unless equal; true if the map changed.
fn upsert<M: PartialEq>(
    map: &mut BTreeMap<Key, Converted<M>>,
    key: Key,
    value: Converted<M>,
) -> bool {
    match map.get(&key) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(key, value);
            true
        }
    }
}

fn replace_if_changed<M: PartialEq>(
    map: &mut BTreeMap<Key, Converted<M>>,
    fresh: BTreeMap<Key, Converted<M>>,
) -> bool {
    if *map == fresh {
        false
    } else {
        *map = fresh;
        true
    }
}

/// The accepted models of `map`, in key order; the reasons of rejected ones go to `errors`.
fn collect_ok<M: Clone>(map: &BTreeMap<Key, Converted<M>>, errors: &mut Vec<LoadError>) -> Vec<M> {
    let mut out = Vec::with_capacity(map.len());
    for entry in map.values() {
        match entry {
            Ok(m) => out.push(m.clone()),
            Err(e) => errors.extend(e.iter().cloned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::networking::v1 as net;

    use super::super::convert::{key_of, Watched};
    use super::*;

    /// A NetworkPolicy as the API server would serve it, with a 253-character name and
    /// `annotation_bytes` of annotations (keys and values).
    fn policy(name: &str, annotation_bytes: usize) -> net::NetworkPolicy {
        let value = "v".repeat(annotation_bytes - 1);
        let mut policy = net::NetworkPolicy::default();
        policy.metadata.name = Some(name.to_string());
        policy.metadata.namespace = Some("app".into());
        policy.metadata.annotations = Some(BTreeMap::from([("k".to_string(), value)]));
        policy.metadata.labels = Some(BTreeMap::from([("l".repeat(63), "v".repeat(63))]));
        policy
    }

    /// Objects at the API server's limits (253-character name, 63-character label key and
    /// value, 256 KiB of annotations) go through the watcher's conversion as through a file:
    /// used; one past a limit is rejected by name, and neither holds back the others.
    #[test]
    fn objects_at_the_api_limits_are_used_and_past_them_rejected_by_name() {
        let long = |c: &str| [c.repeat(63), c.repeat(63), c.repeat(63), c.repeat(61)].join(".");
        let at_limit = policy(&long("a"), 256 * 1024);
        let over = policy(&long("b"), 256 * 1024 + 1);
        let small = policy("small", 10);
        let mut stores = Stores::default();
        let objects = [at_limit, over, small]
            .into_iter()
            .map(|p| (key_of(&p), p.convert()))
            .collect();
        stores.apply(Msg::Listed(Kind::Policy, objects));
        let loaded = stores.build();
        let mut names: Vec<&str> = loaded
            .snapshot
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        names.sort();
        assert_eq!(names, [long("a").as_str(), "small"]);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let error = loaded.errors[0].to_string();
        assert!(
            error.starts_with(&format!(
                "kubernetes NetworkPolicy doc 1 (NetworkPolicy app/{}): metadata.annotations: ",
                long("b")
            )),
            "{error}"
        );
    }
}

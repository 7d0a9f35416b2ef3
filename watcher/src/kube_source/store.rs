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

//! Applying an update that rejected some objects without losing what those objects enforced.

use super::error::UnattributedError;
use super::Loaded;
use crate::model::Snapshot;

impl Loaded {
    /// The snapshot to enforce after an update, keeping the last good state: an object rejected
    /// by name keeps its previous valid version (a broken edit of a policy must not drop that
    /// policy and so open traffic); a document whose objects cannot be named holds back the
    /// whole update, since what it would have changed is unknown.
    pub fn with_last_good(self, previous: &Snapshot) -> Result<Snapshot, UnattributedError> {
        let mut snapshot = self.snapshot;
        for error in self.errors {
            let Some((kind, namespace, name)) = error.identity() else {
                return Err(UnattributedError(error));
            };
            match kind {
                "Namespace" => {
                    if let Some(ns) = previous.namespaces.get(name) {
                        snapshot
                            .namespaces
                            .entry(name.to_string())
                            .or_insert_with(|| ns.clone());
                    }
                }
                "Pod" => {
                    let present = snapshot
                        .pods
                        .iter()
                        .any(|p| p.namespace == namespace && p.name == name);
                    if let (false, Some(pod)) = (present, previous.pod(namespace, name)) {
                        snapshot.pods.push(pod.clone());
                    }
                }
                "NetworkPolicy" => {
                    let find = |s: &Snapshot| {
                        s.policies
                            .iter()
                            .position(|p| p.namespace == namespace && p.name == name)
                    };
                    if let (None, Some(i)) = (find(&snapshot), find(previous)) {
                        snapshot.policies.push(previous.policies[i].clone());
                    }
                }
                "Node" => {
                    let find = |s: &Snapshot| s.nodes.iter().position(|n| n.name == name);
                    if let (None, Some(i)) = (find(&snapshot), find(previous)) {
                        snapshot.nodes.push(previous.nodes[i].clone());
                        snapshot.nodes.sort_by(|a, b| a.name.cmp(&b.name));
                    }
                }
                "EgressGateway" => {
                    let find = |s: &Snapshot| s.egress_gateways.iter().position(|g| g.name == name);
                    if let (None, Some(i)) = (find(&snapshot), find(previous)) {
                        snapshot
                            .egress_gateways
                            .push(previous.egress_gateways[i].clone());
                        snapshot.egress_gateways.sort_by(|a, b| a.name.cmp(&b.name));
                    }
                }
                _ => return Err(UnattributedError(error)),
            }
        }
        Ok(snapshot)
    }
}

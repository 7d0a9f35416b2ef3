//! When a gateway may claim: once it holds a complete copy of its live peers' state.

use std::collections::BTreeSet;

use super::Membership;

/// Which peers' sync streams have delivered a complete dump, and whether this gateway is ready.
///
/// A gateway that (re)starts first listens for one detection time, so that it knows which peers
/// are live, then waits for a complete dump (`DumpEnd`) on the current stream from every live
/// peer of its groups. A peer that is down does not block it (a group must be able to restart
/// after its active gateway died). Readiness is latched: once ready, a gateway stays ready, so
/// the active gateway does not release its claims when a restarted peer comes back with a new
/// stream and nothing to give it.
#[derive(Clone, Debug)]
pub struct SyncState {
    started_ms: u64,
    /// Peers whose current stream has delivered its full dump.
    complete: BTreeSet<String>,
    ready: bool,
}

impl SyncState {
    /// `started_ms`: when the daemon started.
    pub fn new(started_ms: u64) -> Self {
        Self {
            started_ms,
            complete: BTreeSet::new(),
            ready: false,
        }
    }

    /// `peer`'s stream delivered `DumpEnd`.
    pub fn dump_complete(&mut self, peer: &str) {
        self.complete.insert(peer.to_owned());
    }

    /// `peer`'s stream closed, or a new one opened (a `Hello`): its dump starts over.
    pub fn stream_reset(&mut self, peer: &str) {
        self.complete.remove(peer);
    }

    /// The live peers of this gateway's groups whose dump is not complete yet (for `status`).
    pub fn waiting_for(&self, membership: &Membership, now_ms: u64) -> Vec<String> {
        let mut peers = membership.sync_peers();
        peers.retain(|peer| membership.up(peer, now_ms) && !self.complete.contains(peer));
        peers
    }

    /// Whether this gateway may claim (feed it to [`Membership::set_local`] before each tick).
    pub fn ready(&mut self, membership: &Membership, now_ms: u64) -> bool {
        if !self.ready {
            let listened =
                now_ms.saturating_sub(self.started_ms) >= membership.timing().detection_ms();
            self.ready = listened && self.waiting_for(membership, now_ms).is_empty();
        }
        self.ready
    }
}

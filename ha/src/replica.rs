//! The entries the gateways of a group replicate: flows and SNAT translations, with their age
//! instead of a timestamp (each gateway's flow clock is its own: the receiver writes them at its
//! own `now - age`).

use portcullis_common::{FlowKey, FlowValue, NatKey, NatValue};

/// One replicated entry, as the sender's tables hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replica {
    /// A flow of `FLOWS` (`confirmed`) or `EMBRYONIC_FLOWS`. The receiver keeps only the state
    /// (`FlowValue`); next hops are its own.
    Flow {
        key: FlowKey,
        value: FlowValue,
        confirmed: bool,
        /// Nanoseconds since the flow's last packet on the sender (`now - last_seen_ns`).
        idle_ns: u64,
    },
    /// One direction of a translation of `SNAT_TRANSLATIONS`.
    Translation {
        key: NatKey,
        value: NatValue,
        /// Nanoseconds since the translation was made on the sender (`now - created_ns`).
        age_ns: u64,
    },
}

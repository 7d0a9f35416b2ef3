//! Highly available egress gateways: the pure parts (no I/O; time is passed in as milliseconds of
//! a monotonic clock), used by the gateway and node daemons.
//!
//! # Design
//! - **Group.** The gateways of an EgressGateway are the nodes its `nodeSelector` selects. One of
//!   them is *active* for it at a time: it answers ARP/ND for the egress IPs and the nodes steer the
//!   selected pods' egress to it. Different EgressGateways may be active on different members
//!   (active-active across EgressGateways, active-standby within one).
//! - **Heartbeats** ([`protocol`]): every gateway and node daemon sends a UDP heartbeat to every
//!   member every interval; a member not heard from (directly, or through another daemon's
//!   heartbeat that relays what it heard directly, with its age) for the detection time is down.
//!   Gateways' heartbeats carry their readiness and their claims (the EgressGateways they are
//!   active for).
//! - **Election** ([`election`]): a claim is sticky: a gateway keeps it while it is up and ready.
//!   An EgressGateway without a live claimant is claimed by the first member by name that is up
//!   and ready. Two live claimants (a split brain) resolve to the smaller name: the other one
//!   releases. Nodes steer to the live claimant.
//! - **Sync** ([`replica`], [`protocol`]): each gateway pushes its flow table and translations to
//!   every peer over a TCP stream: a full dump when the stream opens, then every entry that
//!   changed since the previous scan. A gateway is ready once it has listened for one detection
//!   time and has a complete dump from every live peer; until then it claims nothing. Readiness
//!   is latched ([`election::SyncState`]): the active gateway stays ready when a restarted peer
//!   opens a new stream.
//!
//! [`replica`]: crate::replica

pub mod election;
pub mod protocol;
pub mod replica;

//! The failover agent of a daemon (`portcullis-ha` holds the protocol and the election): UDP
//! heartbeats between the gateways of every egress group and from every node to them, and on
//! gateways the state-sync streams (TCP), each on threads of their own. The daemon's loop
//! (single-threaded, it owns the maps) reads the agent's decisions and received replicas, and
//! hands it the entries to send; the agent wakes it whenever something changed.
//!
//! Addresses: a member is reached at its Node's first IPv4 address, else its first IPv6 address
//! that is not link-local (a link-local one needs an interface).

mod gateway;
mod heartbeat;
mod sync;

pub use gateway::GatewayHa;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, Result};
use portcullis_ha::election::{Group, GroupStatus, MemberStatus, Membership, SyncState, Timing};
use portcullis_ha::replica::Replica;
use portcullis_policy::egress::{members, Actives};
use portcullis_policy::model::Snapshot;
use serde::Serialize;

/// `--ha-*` options of both daemons.
#[derive(Clone, Debug, clap::Args)]
pub struct HaArgs {
    /// UDP port of the failover heartbeats (gateways listen on it; nodes send to it).
    #[arg(long, default_value_t = portcullis_ha::protocol::DEFAULT_HEARTBEAT_PORT, env = "PORTCULLIS_HA_HEARTBEAT_PORT")]
    pub ha_heartbeat_port: u16,
    /// TCP port of the gateways' state-sync streams.
    #[arg(long, default_value_t = portcullis_ha::protocol::DEFAULT_SYNC_PORT, env = "PORTCULLIS_HA_SYNC_PORT")]
    pub ha_sync_port: u16,
    /// Heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 100, env = "PORTCULLIS_HA_INTERVAL_MS")]
    pub ha_interval_ms: u64,
    /// A member missing this many intervals is down (detection time = interval × this).
    #[arg(long, default_value_t = 3, env = "PORTCULLIS_HA_DETECT_MULTIPLIER")]
    pub ha_detect_multiplier: u32,
}

impl HaArgs {
    pub fn timing(&self) -> Result<Timing> {
        let timing = Timing {
            interval_ms: self.ha_interval_ms,
            detect_multiplier: self.ha_detect_multiplier,
        };
        timing
            .validate()
            .context("--ha-interval-ms / --ha-detect-multiplier")?;
        Ok(timing)
    }
}

/// What the agent shares between its threads and the daemon's loop.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub wake: Arc<tokio::sync::Notify>,
    pub stop: AtomicBool,
    pub started: Instant,
    pub timing: Timing,
    pub args: HaArgs,
    /// This gateway's node name; `None` on a node daemon.
    pub me: Option<String>,
}

impl Shared {
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counters of the agent, for `status` and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HaCounters {
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Heartbeats and sync frames refused, by reason (garbage, another protocol version, ...).
    pub refused: BTreeMap<String, u64>,
    pub failovers: u64,
    pub split_brains_resolved: u64,
    pub replicas_sent: u64,
    pub replicas_received: u64,
    /// Sync streams dropped because their peer fell too far behind.
    pub sync_overflows: u64,
}

pub(crate) struct State {
    pub membership: Membership,
    pub groups: Vec<Group>,
    /// Member node → where its heartbeats and sync stream go.
    pub addresses: BTreeMap<String, IpAddr>,
    pub sync: SyncState,
    /// Gateway: the EgressGateways this gateway is active for.
    pub claims: BTreeSet<String>,
    /// Node: the member each EgressGateway's traffic goes to.
    pub actives: Actives,
    /// Replicas received and not yet written into the maps.
    pub imports: Vec<Replica>,
    /// Peers whose stream just opened and wants a full dump.
    pub dumps_wanted: BTreeSet<String>,
    pub counters: HaCounters,
    /// Per peer: milliseconds the last delta waited before its stream took it.
    pub lag_ms: BTreeMap<String, u64>,
}

impl State {
    pub fn refused(&mut self, reason: &str) {
        *self.counters.refused.entry(reason.to_string()).or_default() += 1;
    }
}

/// The egress groups of `snapshot`, and where each member is reached.
fn groups_of(snapshot: &Snapshot) -> (Vec<Group>, BTreeMap<String, IpAddr>) {
    let mut addresses = BTreeMap::new();
    let groups = (snapshot.egress_gateways.iter())
        .map(|g| {
            let nodes = members(snapshot, g);
            for n in &nodes {
                if let Some(ip) = reach_address(&n.addresses) {
                    addresses.insert(n.name.clone(), ip);
                }
            }
            Group {
                egress_gateway: g.name.clone(),
                members: nodes.iter().map(|n| n.name.clone()).collect(),
            }
        })
        .collect();
    (groups, addresses)
}

fn reach_address(addresses: &[IpAddr]) -> Option<IpAddr> {
    (addresses.iter().find(|a| a.is_ipv4()))
        .or_else(|| {
            (addresses.iter())
                .find(|a| matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80))
        })
        .copied()
}

/// The failover agent: started once, fed every snapshot.
pub struct HaAgent {
    pub(crate) shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    sync: Option<sync::SyncStreams>,
    /// When `status` last got the agent's state (see [`HaAgent::publish_due`]).
    published: Mutex<Instant>,
}

impl HaAgent {
    /// On a gateway (`me` = its node name): heartbeats and sync streams; on a node (`me` =
    /// `None`, `node_name` the name its heartbeats carry): heartbeats to the gateways only.
    /// `wake` is the daemon loop's.
    pub fn start(
        me: Option<String>,
        node_name: &str,
        args: &HaArgs,
        wake: Arc<tokio::sync::Notify>,
    ) -> Result<HaAgent> {
        let timing = args.timing()?;
        let membership = match &me {
            Some(gateway) => Membership::new(Some(gateway.clone()), timing),
            None => Membership::node(node_name.to_string(), timing),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                membership,
                groups: Vec::new(),
                addresses: BTreeMap::new(),
                sync: SyncState::new(0),
                claims: BTreeSet::new(),
                actives: Actives::new(),
                imports: Vec::new(),
                dumps_wanted: BTreeSet::new(),
                counters: HaCounters::default(),
                lag_ms: BTreeMap::new(),
            }),
            wake,
            stop: AtomicBool::new(false),
            started: Instant::now(),
            timing,
            args: args.clone(),
            me,
        });
        let mut threads = vec![heartbeat::spawn(Arc::clone(&shared))?];
        let sync = match shared.me.is_some() {
            true => {
                let (streams, handles) = sync::SyncStreams::start(Arc::clone(&shared))?;
                threads.extend(handles);
                Some(streams)
            }
            false => None,
        };
        Ok(HaAgent {
            shared,
            threads,
            sync,
            published: Mutex::new(Instant::now()),
        })
    }

    /// The groups and member addresses of the snapshot in force.
    pub fn set_snapshot(&self, snapshot: &Snapshot) {
        let (groups, addresses) = groups_of(snapshot);
        let mut st = self.shared.lock();
        st.membership.set_groups(groups.clone());
        st.groups = groups;
        st.addresses = addresses;
    }

    /// Gateway: the EgressGateways it is active for now.
    pub fn claims(&self) -> BTreeSet<String> {
        self.shared.lock().claims.clone()
    }

    /// Node: where each EgressGateway's traffic goes now.
    pub fn actives(&self) -> Actives {
        self.shared.lock().actives.clone()
    }

    /// Replicas received since the last call.
    pub fn take_imports(&self) -> Vec<Replica> {
        std::mem::take(&mut self.shared.lock().imports)
    }

    /// Peers whose new stream wants a full dump (taken).
    pub fn take_dumps_wanted(&self) -> BTreeSet<String> {
        std::mem::take(&mut self.shared.lock().dumps_wanted)
    }

    /// Sends `entries` to every connected peer (a delta), or with `full_to` a full dump to that
    /// peer (ending with the dump's end).
    pub fn send(&self, entries: &[Replica], full_to: Option<&str>) {
        if let Some(sync) = &self.sync {
            sync.send(entries, full_to);
        }
    }

    /// Whether the daemon should publish its state again for `status` (the health, lag and
    /// counters change without a decision): once a second.
    pub fn publish_due(&self) -> bool {
        let mut last = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.elapsed() >= std::time::Duration::from_secs(1);
        if due {
            *last = Instant::now();
        }
        due
    }

    /// `portcullis_ha_*`: the agent's counters, the members up, the EgressGateways this daemon
    /// sees active on each member, the sync lag per peer.
    pub fn export_metrics(&self) {
        let status = self.status();
        let c = &status.counters;
        for (name, value) in [
            ("portcullis_ha_heartbeats_sent_total", c.heartbeats_sent),
            (
                "portcullis_ha_heartbeats_received_total",
                c.heartbeats_received,
            ),
            ("portcullis_ha_failovers_total", c.failovers),
            (
                "portcullis_ha_split_brains_resolved_total",
                c.split_brains_resolved,
            ),
            ("portcullis_ha_replicas_sent_total", c.replicas_sent),
            ("portcullis_ha_replicas_received_total", c.replicas_received),
            ("portcullis_ha_sync_overflows_total", c.sync_overflows),
        ] {
            metrics::counter!(name).absolute(value);
        }
        for (reason, value) in &c.refused {
            metrics::counter!("portcullis_ha_refused_total", "reason" => reason.clone())
                .absolute(*value);
        }
        let up = status.members.iter().filter(|m| m.up).count();
        metrics::gauge!("portcullis_ha_members_up").set(up as f64);
        metrics::gauge!("portcullis_ha_ready").set(f64::from(u8::from(status.ready)));
        for g in &status.groups {
            for member in &g.members {
                let active = g.active.as_ref() == Some(member);
                metrics::gauge!("portcullis_ha_active", "egress_gateway" => g.egress_gateway.clone(), "member" => member.clone())
                    .set(f64::from(u8::from(active)));
            }
        }
        for (peer, lag) in &status.sync_lag_ms {
            metrics::gauge!("portcullis_ha_sync_lag_seconds", "peer" => peer.clone())
                .set(*lag as f64 / 1e3);
        }
    }

    /// The agent as `status` shows it.
    pub fn status(&self) -> HaStatus {
        let now = self.shared.now_ms();
        let mut st = self.shared.lock();
        let st = &mut *st;
        HaStatus {
            interval_ms: self.shared.timing.interval_ms,
            detection_ms: self.shared.timing.detection_ms(),
            ready: self.shared.me.is_none() || st.sync.ready(&st.membership, now),
            waiting_for_dumps: match self.shared.me {
                Some(_) => st.sync.waiting_for(&st.membership, now),
                None => Vec::new(),
            },
            claims: st.claims.iter().cloned().collect(),
            actives: st.actives.clone(),
            groups: st.membership.group_status(now),
            members: st.membership.status(now),
            sync_lag_ms: st.lag_ms.clone(),
            counters: st.counters.clone(),
        }
    }
}

impl Drop for HaAgent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(sync) = self.sync.take() {
            sync.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `status`'s `ha` object.
#[derive(Debug, Serialize)]
pub struct HaStatus {
    pub interval_ms: u64,
    pub detection_ms: u64,
    /// Gateway: it has a complete dump from every live peer (it claims nothing before).
    pub ready: bool,
    /// Gateway: the live peers whose full dump has not arrived yet.
    pub waiting_for_dumps: Vec<String>,
    pub claims: Vec<String>,
    pub actives: Actives,
    pub groups: Vec<GroupStatus>,
    pub members: Vec<MemberStatus>,
    pub sync_lag_ms: BTreeMap<String, u64>,
    pub counters: HaCounters,
}

/// Where `member` is reached on `port`, if the snapshot gave it an address.
pub(crate) fn member_addr(st: &State, member: &str, port: u16) -> Option<SocketAddr> {
    st.addresses
        .get(member)
        .map(|ip| SocketAddr::new(*ip, port))
}

//! Membership and the active gateway per EgressGateway, as one daemon sees them.
//!
//! Each daemon keeps, per gateway, the freshest evidence of it: a heartbeat heard directly, or a
//! report relayed in another daemon's heartbeat (`view`) with its age. A gateway is up while its
//! freshest evidence is younger than the detection time. Only direct evidence is relayed, and it
//! carries its age, so a relay can only say what was true at most one detection time ago: a dead
//! gateway is down everywhere within the detection time of its last heartbeat, however many
//! daemons repeat it.
//!
//! The election needs no round of messages: every gateway applies the same rules to what it
//! heard ([`Membership::tick`]), and the claims in its heartbeats tell the others the outcome.

mod readiness;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

pub use readiness::SyncState;

use crate::protocol::{heartbeat_len, Heartbeat, PeerView, Role, MAX_DATAGRAM, MAX_VIEW};

/// How often heartbeats are sent and how many may be missed before a member is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub interval_ms: u64,
    pub detect_multiplier: u32,
}

impl Default for Timing {
    /// 100 ms × 3: a failure is detected in 300 ms, which leaves most of the one-second failover
    /// budget for claiming, gratuitous ARP and the nodes' steering.
    fn default() -> Self {
        Self {
            interval_ms: 100,
            detect_multiplier: 3,
        }
    }
}

/// A timing field out of its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {value}, outside {min}..={max}")]
pub struct TimingError {
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

impl Timing {
    /// Below 10 ms heartbeats cost more than they detect; above 10 s failover is no longer fast.
    pub const INTERVAL_MS: RangeInclusive<u64> = 10..=10_000;
    /// One missed heartbeat must not be a failure; fifty is already a minute at the slowest.
    pub const DETECT_MULTIPLIER: RangeInclusive<u32> = 2..=50;

    /// How long a member may go unheard before it is down.
    pub fn detection_ms(&self) -> u64 {
        self.interval_ms
            .saturating_mul(u64::from(self.detect_multiplier))
    }

    pub fn validate(&self) -> Result<(), TimingError> {
        let check = |field, value: u64, range: RangeInclusive<u64>| {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(TimingError {
                    field,
                    value,
                    min: *range.start(),
                    max: *range.end(),
                })
            }
        };
        check("interval_ms", self.interval_ms, Self::INTERVAL_MS)?;
        let multipliers = Self::DETECT_MULTIPLIER;
        check(
            "detect_multiplier",
            self.detect_multiplier.into(),
            (*multipliers.start()).into()..=(*multipliers.end()).into(),
        )
    }
}

/// The gateways of one EgressGateway: the nodes its `nodeSelector` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub egress_gateway: String,
    /// Node names (sorted and deduplicated by [`Membership::set_groups`]).
    pub members: Vec<String>,
}

/// What one piece of evidence said about a gateway, and when it was true on this daemon's clock.
#[derive(Clone, Debug)]
struct Report {
    at_ms: u64,
    ready: bool,
    claims: BTreeSet<String>,
}

/// The evidence about one gateway. Kept apart so that only the direct one is relayed.
#[derive(Clone, Debug, Default)]
struct Peer {
    direct: Option<Report>,
    relayed: Option<Report>,
}

impl Peer {
    /// The freshest evidence, and whether it is direct (a tie goes to the direct one).
    fn latest(&self) -> Option<(&Report, bool)> {
        match (&self.direct, &self.relayed) {
            (Some(direct), Some(relayed)) if relayed.at_ms > direct.at_ms => Some((relayed, false)),
            (Some(direct), _) => Some((direct, true)),
            (None, relayed) => relayed.as_ref().map(|relayed| (relayed, false)),
        }
    }
}

/// The outcome of one [`Membership::tick`] of a gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The EgressGateways this gateway is active for now.
    pub claims: BTreeSet<String>,
    /// Claimed by this tick: answer ARP/ND for their egress IPs (gratuitously, at once).
    pub gained: Vec<String>,
    /// Released by this tick: stop answering for them.
    pub lost: Vec<String>,
    /// Claims released because a gateway with a smaller name claims the same EgressGateway.
    pub split_brains_resolved: u64,
}

/// How a member was last heard, for `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Heard {
    /// This daemon itself.
    Local,
    Direct {
        ago_ms: u64,
    },
    /// Only through another daemon's heartbeat (the ages include the relay's).
    Relayed {
        ago_ms: u64,
    },
    Never,
}

/// One member as this daemon sees it (a down member shows what it last said).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    pub member: String,
    pub up: bool,
    pub ready: bool,
    pub claims: Vec<String>,
    pub heard: Heard,
}

/// One EgressGateway's group as this daemon sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    pub egress_gateway: String,
    pub members: Vec<String>,
    /// What the nodes steer to ([`Membership::active`]).
    pub active: Option<String>,
    /// Whether another member is up and ready to take over: false for a group of one (no HA).
    pub standby: bool,
}

/// One daemon's view of the gateways of its groups.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The gateway this daemon runs (None on a node daemon): it is always up to itself.
    me: Option<String>,
    /// The name its heartbeats carry.
    sender: String,
    timing: Timing,
    /// EgressGateway → its members, sorted.
    groups: BTreeMap<String, Vec<String>>,
    /// Every member of any group but `me`.
    peers: BTreeMap<String, Peer>,
    ready: bool,
    claims: BTreeSet<String>,
}

impl Membership {
    /// `me`: Some(node name) on a gateway daemon; None for a daemon that only observes (a node
    /// daemon that also sends heartbeats is made with [`Membership::node`], to name them).
    /// `timing` should have passed [`Timing::validate`].
    pub fn new(me: Option<String>, timing: Timing) -> Self {
        Self {
            sender: me.clone().unwrap_or_default(),
            me,
            timing,
            groups: BTreeMap::new(),
            peers: BTreeMap::new(),
            ready: false,
            claims: BTreeSet::new(),
        }
    }

    /// A node daemon's view: it claims nothing, and its heartbeats (role `Node`, named `name`)
    /// relay what it hears from the gateways.
    pub fn node(name: impl Into<String>, timing: Timing) -> Self {
        Self {
            sender: name.into(),
            ..Self::new(None, timing)
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The groups of the policy snapshot. Evidence about members that remain is kept; a claim on
    /// a group this gateway left is released by the next [`Membership::tick`].
    pub fn set_groups(&mut self, groups: Vec<Group>) {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for group in groups {
            map.entry(group.egress_gateway)
                .or_default()
                .extend(group.members);
        }
        for members in map.values_mut() {
            members.sort();
            members.dedup();
        }
        let names: BTreeSet<&String> = map
            .values()
            .flatten()
            .filter(|name| Some(*name) != self.me.as_ref())
            .collect();
        self.peers.retain(|name, _| names.contains(name));
        for name in names {
            self.peers.entry(name.clone()).or_default();
        }
        self.groups = map;
    }

    /// A heartbeat received directly at `now_ms`. A gateway's own state is taken from a gateway's
    /// heartbeat only (a node daemon on a gateway node sends under the same name); every sender's
    /// view is merged as relayed evidence. Heartbeats are taken in arrival order, whatever their
    /// `seq`: a restarted daemon counts from zero again and must be heard at once, and a
    /// reordered datagram costs at most one interval of stale state.
    pub fn heard(&mut self, hb: &Heartbeat, now_ms: u64) {
        if hb.role == Role::Gateway {
            if let Some(peer) = self.peers.get_mut(&hb.sender) {
                peer.direct = Some(Report {
                    at_ms: now_ms,
                    ready: hb.ready,
                    claims: hb.claims.iter().cloned().collect(),
                });
            }
        }
        let detection = self.timing.detection_ms();
        for seen in &hb.view {
            let age = u64::from(seen.age_ms);
            let Some(peer) = self.peers.get_mut(&seen.member) else {
                continue;
            };
            let at_ms = now_ms.saturating_sub(age);
            if age >= detection || peer.relayed.as_ref().is_some_and(|r| r.at_ms >= at_ms) {
                continue;
            }
            peer.relayed = Some(Report {
                at_ms,
                ready: seen.ready,
                claims: seen.claims.iter().cloned().collect(),
            });
        }
    }

    /// This gateway's readiness ([`SyncState::ready`]): not ready, it claims nothing.
    pub fn set_local(&mut self, ready: bool) {
        self.ready = ready;
    }

    fn is_me(&self, member: &str) -> bool {
        self.me.as_deref() == Some(member)
    }

    /// A peer's freshest evidence, if it is younger than the detection time.
    fn live(&self, member: &str, now_ms: u64) -> Option<&Report> {
        let (report, _) = self.peers.get(member)?.latest()?;
        (now_ms.saturating_sub(report.at_ms) < self.timing.detection_ms()).then_some(report)
    }

    pub fn up(&self, member: &str, now_ms: u64) -> bool {
        self.is_me(member) || self.live(member, now_ms).is_some()
    }

    fn ready_now(&self, member: &str, now_ms: u64) -> bool {
        if self.is_me(member) {
            self.ready
        } else {
            self.live(member, now_ms).is_some_and(|report| report.ready)
        }
    }

    fn members(&self) -> BTreeSet<&String> {
        self.groups.values().flatten().collect()
    }

    /// The members of any group that are up, by name.
    pub fn members_up(&self, now_ms: u64) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|member| self.up(member, now_ms))
            .cloned()
            .collect()
    }

    /// The other members of this gateway's groups: whom it syncs with.
    pub fn sync_peers(&self) -> Vec<String> {
        let Some(me) = &self.me else {
            return Vec::new();
        };
        let mine = self.groups.values().filter(|members| members.contains(me));
        let peers: BTreeSet<&String> = mine.flatten().filter(|name| *name != me).collect();
        peers.into_iter().cloned().collect()
    }

    /// The EgressGateways this gateway claimed at its last tick.
    pub fn claims(&self) -> &BTreeSet<String> {
        &self.claims
    }

    /// Live peers that claim `egress_gateway`, smallest name first (`me` is no peer).
    fn claimants<'a>(
        &'a self,
        egress_gateway: &'a str,
        now_ms: u64,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.peers.keys().map(String::as_str).filter(move |name| {
            self.live(name, now_ms)
                .is_some_and(|report| report.claims.contains(egress_gateway))
        })
    }

    /// Recomputes this gateway's claims (once an interval, before its heartbeat): a claim is
    /// kept while this gateway is ready and no live gateway with a smaller name claims the same
    /// EgressGateway (a split brain resolves to the smaller name, which never yields); an
    /// EgressGateway no live peer claims is claimed by the first member by name that is up and
    /// ready. A claim is sticky: a member that comes back does not take it back, so a flapping
    /// gateway does not move the egress IPs twice. On a node daemon: nothing.
    pub fn tick(&mut self, now_ms: u64) -> Decision {
        let Some(me) = self.me.as_deref() else {
            return Decision::default();
        };
        let mut claims = BTreeSet::new();
        let mut split_brains_resolved = 0;
        let mine = self
            .groups
            .iter()
            .filter(|(_, members)| self.ready && members.iter().any(|m| m == me));
        for (egress_gateway, members) in mine {
            let smallest_rival = self.claimants(egress_gateway, now_ms).next();
            let claim = if self.claims.contains(egress_gateway) {
                let yields = smallest_rival.is_some_and(|rival| rival < me);
                split_brains_resolved += u64::from(yields);
                !yields
            } else {
                let first = members.iter().find(|m| self.ready_now(m, now_ms));
                smallest_rival.is_none() && first.is_some_and(|first| first == me)
            };
            if claim {
                claims.insert(egress_gateway.clone());
            }
        }
        let decision = Decision {
            gained: claims.difference(&self.claims).cloned().collect(),
            lost: self.claims.difference(&claims).cloned().collect(),
            claims,
            split_brains_resolved,
        };
        self.claims = decision.claims.clone();
        decision
    }

    /// The gateway the nodes steer `egress_gateway`'s traffic to: the live claimant (the smallest
    /// name if several: the one the split brain resolves to), else the first member up by name
    /// (the one that will claim once ready), else None.
    pub fn active(&self, egress_gateway: &str, now_ms: u64) -> Option<String> {
        let mine = self
            .me
            .as_deref()
            .filter(|_| self.claims.contains(egress_gateway));
        let claimant = match (mine, self.claimants(egress_gateway, now_ms).next()) {
            (Some(mine), Some(peer)) => Some(mine.min(peer)),
            (mine, peer) => mine.or(peer),
        };
        let fallback = || {
            let members = self.groups.get(egress_gateway)?;
            members
                .iter()
                .map(String::as_str)
                .find(|m| self.up(m, now_ms))
        };
        claimant.or_else(fallback).map(str::to_owned)
    }

    /// The heartbeat to send now: this daemon's role, readiness and claims, and the members it
    /// heard directly within the detection time. The view is trimmed, stalest first, to fit
    /// [`MAX_DATAGRAM`] (a relay is a help, the sender's own claims are not optional).
    pub fn heartbeat(&self, seq: u64, now_ms: u64) -> Heartbeat {
        let detection = self.timing.detection_ms();
        let mut view: Vec<PeerView> = self
            .peers
            .iter()
            .filter_map(|(name, peer)| {
                let direct = peer.direct.as_ref()?;
                let age = now_ms.saturating_sub(direct.at_ms);
                (age < detection).then(|| PeerView {
                    member: name.clone(),
                    age_ms: u32::try_from(age).unwrap_or(u32::MAX),
                    ready: direct.ready,
                    claims: direct.claims.iter().cloned().collect(),
                })
            })
            .collect();
        view.sort_by_key(|peer| peer.age_ms);
        view.truncate(MAX_VIEW);
        let gateway = self.me.is_some();
        let mut hb = Heartbeat {
            sender: self.sender.clone(),
            role: if gateway { Role::Gateway } else { Role::Node },
            seq,
            ready: gateway && self.ready,
            claims: self.claims.iter().cloned().collect(),
            view,
        };
        while heartbeat_len(&hb) > MAX_DATAGRAM && hb.view.pop().is_some() {}
        hb
    }

    /// Every member of any group, by name.
    pub fn status(&self, now_ms: u64) -> Vec<MemberStatus> {
        self.members()
            .into_iter()
            .map(|member| {
                if self.is_me(member) {
                    return MemberStatus {
                        member: member.clone(),
                        up: true,
                        ready: self.ready,
                        claims: self.claims.iter().cloned().collect(),
                        heard: Heard::Local,
                    };
                }
                let latest = self.peers.get(member).and_then(Peer::latest);
                let heard = match latest {
                    None => Heard::Never,
                    Some((report, direct)) => {
                        let ago_ms = now_ms.saturating_sub(report.at_ms);
                        if direct {
                            Heard::Direct { ago_ms }
                        } else {
                            Heard::Relayed { ago_ms }
                        }
                    }
                };
                MemberStatus {
                    member: member.clone(),
                    up: self.up(member, now_ms),
                    ready: latest.is_some_and(|(report, _)| report.ready),
                    claims: latest
                        .map(|(report, _)| report.claims.iter().cloned().collect())
                        .unwrap_or_default(),
                    heard,
                }
            })
            .collect()
    }

    /// Every group, by EgressGateway name.
    pub fn group_status(&self, now_ms: u64) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(egress_gateway, members)| {
                let active = self.active(egress_gateway, now_ms);
                let standby = members.iter().any(|m| {
                    Some(m) != active.as_ref() && self.up(m, now_ms) && self.ready_now(m, now_ms)
                });
                GroupStatus {
                    egress_gateway: egress_gateway.clone(),
                    members: members.clone(),
                    active,
                    standby,
                }
            })
            .collect()
    }

    /// A hash of the groups (FNV-1a over the names: stable across builds and processes), sent in
    /// the sync `Hello` so that a peer with another snapshot shows up in the logs.
    pub fn group_hash(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0100_0000_01b3;
        let mut hash = OFFSET;
        let mut mix = |byte: u8| hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        for (egress_gateway, members) in &self.groups {
            for name in std::iter::once(egress_gateway).chain(members) {
                name.bytes().for_each(&mut mix);
                // Names hold no NUL, and 0xff is no UTF-8 byte: the separators are unambiguous.
                mix(0);
            }
            mix(0xff);
        }
        hash
    }
}

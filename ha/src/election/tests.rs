mod convergence;

use super::*;
use crate::protocol::{decode_heartbeat, encode_heartbeat};

const INTERVAL: u64 = 100;
const DETECTION: u64 = 300;
const EG: &str = "egress";

fn group(egress_gateway: &str, members: &[&str]) -> Group {
    Group {
        egress_gateway: egress_gateway.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn gateway(name: &str, groups: &[Group]) -> Membership {
    let mut membership = Membership::new(Some(name.into()), Timing::default());
    membership.set_groups(groups.to_vec());
    membership.set_local(true);
    membership
}

fn node(groups: &[Group]) -> Membership {
    let mut membership = Membership::node("node-1", Timing::default());
    membership.set_groups(groups.to_vec());
    membership
}

/// The group most tests use: one EgressGateway, two gateways.
fn pair() -> [Group; 1] {
    [group(EG, &["gw-a", "gw-b"])]
}

/// Daemons exchanging heartbeats through the wire format.
struct Sim {
    daemons: Vec<Membership>,
    seq: u64,
    /// When the next round runs.
    now: u64,
}

impl Sim {
    fn new(daemons: Vec<Membership>) -> Self {
        Self {
            daemons,
            seq: 0,
            now: 0,
        }
    }

    /// gw-a (0) and gw-b (1), both ready, and a node (2).
    fn pair_and_node() -> Self {
        let groups = pair();
        Self::new(vec![
            gateway("gw-a", &groups),
            gateway("gw-b", &groups),
            node(&groups),
        ])
    }

    /// Daemon `i` at `now_ms`: a gateway ticks, then every daemon `link` lets through hears its
    /// heartbeat.
    fn step(&mut self, i: usize, now_ms: u64, link: impl Fn(usize) -> bool) -> Decision {
        let decision = self.daemons[i].tick(now_ms);
        self.seq += 1;
        let bytes = encode_heartbeat(&self.daemons[i].heartbeat(self.seq, now_ms)).unwrap();
        let hb = decode_heartbeat(&bytes).unwrap();
        for (j, daemon) in self.daemons.iter_mut().enumerate() {
            if j != i && link(j) {
                daemon.heard(&hb, now_ms);
            }
        }
        decision
    }

    /// Every daemon `alive` says steps at `self.now`, in order, heard as `link(from, to)` says;
    /// then the clock moves on an interval.
    fn round(&mut self, alive: &[bool], link: impl Fn(usize, usize) -> bool) -> Vec<Decision> {
        let now = self.now;
        self.now += INTERVAL;
        (0..self.daemons.len())
            .map(|i| match alive[i] {
                true => self.step(i, now, |j| link(i, j)),
                false => Decision::default(),
            })
            .collect()
    }

    fn rounds(&mut self, count: usize, alive: &[bool], link: impl Fn(usize, usize) -> bool) {
        for _ in 0..count {
            self.round(alive, &link);
        }
    }

    fn claimants(&self, egress_gateway: &str) -> Vec<usize> {
        (0..self.daemons.len())
            .filter(|&i| self.daemons[i].claims().contains(egress_gateway))
            .collect()
    }
}

fn all(_: usize, _: usize) -> bool {
    true
}

#[test]
fn timing_default_and_validation() {
    let timing = Timing::default();
    assert_eq!(timing.detection_ms(), DETECTION);
    assert_eq!(timing.validate(), Ok(()));
    let refused = |interval_ms, detect_multiplier| {
        let timing = Timing {
            interval_ms,
            detect_multiplier,
        };
        timing.validate().err().map(|error| error.field)
    };
    assert_eq!(refused(10, 2), None);
    assert_eq!(refused(10_000, 50), None);
    assert_eq!(refused(5, 3), Some("interval_ms"));
    assert_eq!(refused(10_001, 3), Some("interval_ms"));
    assert_eq!(refused(100, 1), Some("detect_multiplier"));
    assert_eq!(refused(100, 51), Some("detect_multiplier"));
    let error = Timing {
        interval_ms: 5,
        ..timing
    };
    assert_eq!(
        error.validate().unwrap_err().to_string(),
        "interval_ms is 5, outside 10..=10000"
    );
}

#[test]
fn the_standby_claims_within_detection_and_one_interval_of_the_active_dying() {
    let mut sim = Sim::pair_and_node();
    let mut alive = [true; 3];
    sim.rounds(5, &alive, all);
    assert_eq!(sim.claimants(EG), [0]);
    assert_eq!(sim.daemons[2].active(EG, sim.now).as_deref(), Some("gw-a"));

    let last_heartbeat = sim.now - INTERVAL;
    alive[0] = false;
    let claimed = (0..10)
        .find_map(|_| {
            let at = sim.now;
            (sim.round(&alive, all)[1].gained == [EG]).then_some(at)
        })
        .expect("gw-b never claimed");
    assert!(
        claimed - last_heartbeat >= DETECTION,
        "claimed while the active was up"
    );
    assert!(claimed - last_heartbeat <= DETECTION + INTERVAL);
    assert_eq!(sim.daemons[2].active(EG, claimed).as_deref(), Some("gw-b"));
}

#[test]
fn a_claim_is_sticky_a_member_that_comes_back_does_not_take_it() {
    let mut sim = Sim::pair_and_node();
    sim.rounds(2, &[true; 3], all);
    sim.rounds(6, &[false, true, true], all);

    // gw-a restarts: a new process, ready once it listened and has gw-b's dump.
    sim.daemons[0] = Membership::new(Some("gw-a".into()), Timing::default());
    sim.daemons[0].set_groups(pair().to_vec());
    assert_eq!(sim.claimants(EG), [1]);
    let mut sync = SyncState::new(sim.now);
    sync.dump_complete("gw-b");
    for _ in 0..20 {
        let ready = sync.ready(&sim.daemons[0], sim.now);
        sim.daemons[0].set_local(ready);
        sim.round(&[true; 3], all);
    }
    assert!(sim.daemons[0].status(sim.now)[0].ready);
    assert_eq!(sim.claimants(EG), [1]);
    assert_eq!(sim.daemons[2].active(EG, sim.now).as_deref(), Some("gw-b"));
}

#[test]
fn a_split_brain_resolves_to_the_smaller_name_after_one_round_of_relays() {
    let mut sim = Sim::pair_and_node();
    let alive = [true; 3];
    // Nobody hears anybody: each gateway believes it is alone and claims.
    sim.rounds(5, &alive, |_, _| false);
    assert_eq!(sim.claimants(EG), [0, 1]);

    // The gateways still cannot hear each other, but both hear the node and it hears both.
    let through_the_node = |from: usize, to: usize| from == 2 || to == 2;
    sim.round(&alive, through_the_node);
    let now = sim.now;
    let decisions = sim.round(&alive, through_the_node);
    assert_eq!(decisions[0].claims, BTreeSet::from([EG.to_string()]));
    assert_eq!(decisions[0].split_brains_resolved, 0);
    assert_eq!(decisions[1].lost, [EG]);
    assert_eq!(decisions[1].split_brains_resolved, 1);
    assert_eq!(sim.claimants(EG), [0]);
    assert_eq!(sim.daemons[2].active(EG, now).as_deref(), Some("gw-a"));
    assert_eq!(sim.daemons[1].active(EG, now).as_deref(), Some("gw-a"));

    for _ in 0..10 {
        let decisions = sim.round(&alive, through_the_node);
        assert!(decisions
            .iter()
            .all(|d| d.gained.is_empty() && d.lost.is_empty()));
    }
    let status = sim.daemons[1].status(sim.now - INTERVAL);
    assert_eq!(status[0].heard, Heard::Relayed { ago_ms: 0 });
    assert_eq!(status[0].claims, [EG]);
}

#[test]
fn a_member_that_is_not_ready_never_claims() {
    let mut sim = Sim::pair_and_node();
    sim.daemons[0].set_local(false);
    sim.daemons[1].set_local(false);
    let alive = [true; 3];
    sim.rounds(10, &alive, all);
    assert!(sim.claimants(EG).is_empty());
    // The first member by name that is ready is the larger one.
    sim.daemons[1].set_local(true);
    sim.rounds(3, &alive, all);
    assert_eq!(sim.claimants(EG), [1]);
    // A gateway that stops being ready releases what it held.
    sim.daemons[1].set_local(false);
    let decisions = sim.round(&alive, all);
    assert_eq!(decisions[1].lost, [EG]);
    assert!(sim.claimants(EG).is_empty());
}

#[test]
fn a_group_of_one_claims_as_soon_as_it_is_ready_and_has_no_standby() {
    let groups = [group(EG, &["solo"])];
    let mut solo = gateway("solo", &groups);
    solo.set_local(false);
    assert!(solo.tick(0).claims.is_empty());
    solo.set_local(true);
    assert_eq!(solo.tick(1).gained, [EG]);
    let status = solo.group_status(1);
    assert_eq!(
        status,
        [GroupStatus {
            egress_gateway: EG.into(),
            members: vec!["solo".into()],
            active: Some("solo".into()),
            standby: false,
        }]
    );
    assert_eq!(solo.status(1)[0].heard, Heard::Local);
    assert!(solo.sync_peers().is_empty());

    let mut sim = Sim::pair_and_node();
    sim.daemons[1].set_groups(vec![group(EG, &["gw-b", "gw-a"])]);
    sim.round(&[true; 3], all);
    let status = sim.daemons[1].group_status(0);
    assert_eq!(status[0].members, ["gw-a", "gw-b"]);
    assert_eq!(status[0].active.as_deref(), Some("gw-a"));
    assert!(status[0].standby);
}

#[test]
fn relayed_evidence_expires_with_the_direct_hearing_it_came_from() {
    let mut sim = Sim::pair_and_node();
    let through_the_node = |from: usize, to: usize| from == 2 || to == 2;
    // gw-a sends once, at 1000, and dies.
    sim.step(0, 1000, |j| through_the_node(0, j));
    let mut now = 1000;
    while now < 1000 + 2 * DETECTION {
        sim.step(2, now, |j| through_the_node(2, j));
        sim.step(1, now, |j| through_the_node(1, j));
        let b = &sim.daemons[1];
        assert_eq!(b.up("gw-a", now), now < 1000 + DETECTION, "at {now}");
        // Only direct evidence is relayed: gw-b never passes on what it heard from the node.
        assert!(b.heartbeat(0, now).view.is_empty());
        let relayed = sim.daemons[2].heartbeat(0, now).view;
        let of_a = relayed.iter().filter(|peer| peer.member == "gw-a").count();
        assert_eq!(of_a, usize::from(now < 1000 + DETECTION));
        now += INTERVAL / 2;
    }
    // A report older than the detection time is no evidence of life: it is not taken.
    let mut stale = sim.daemons[2].heartbeat(0, now);
    stale.view = vec![PeerView {
        member: "gw-a".into(),
        age_ms: DETECTION as u32,
        ready: true,
        claims: vec![],
    }];
    sim.daemons[1].heard(&stale, now);
    let status = sim.daemons[1].status(now);
    assert_eq!(status[0].heard, Heard::Relayed { ago_ms: now - 1000 });
}

#[test]
fn a_node_steers_to_the_claimant_else_the_first_member_up() {
    let mut sim = Sim::pair_and_node();
    sim.daemons[0].set_local(false);
    sim.daemons[1].set_local(false);
    assert_eq!(sim.daemons[2].active(EG, 0), None);
    // Nobody claims yet: the first member up, the one that will claim once ready.
    sim.step(0, 0, |_| true);
    sim.step(1, 0, |_| true);
    assert_eq!(sim.daemons[2].active(EG, 0).as_deref(), Some("gw-a"));
    // gw-b is ready and gw-a is not: gw-b claims, the node follows.
    sim.daemons[1].set_local(true);
    sim.step(1, 100, |_| true);
    assert_eq!(sim.daemons[1].claims().len(), 1);
    assert_eq!(sim.daemons[2].active(EG, 100).as_deref(), Some("gw-b"));
    // gw-b is down: back to the first member up; nobody: none.
    assert_eq!(
        sim.daemons[2].active(EG, 100 + DETECTION).as_deref(),
        None,
        "gw-a was last heard at 0"
    );
    sim.step(0, 200, |_| true);
    assert_eq!(
        sim.daemons[2].active(EG, 100 + DETECTION).as_deref(),
        Some("gw-a")
    );
    assert_eq!(sim.daemons[2].active("unknown", 0), None);
    assert_eq!(
        sim.daemons[2].members_up(100 + DETECTION),
        ["gw-a".to_string()]
    );
}

#[test]
fn a_node_heartbeat_under_a_gateways_name_does_not_override_it() {
    let groups = pair();
    let mut a = gateway("gw-a", &groups);
    let mut b = gateway("gw-b", &groups);
    a.tick(0);
    b.heard(&a.heartbeat(1, 0), 0);
    // The node daemon on gw-a's node.
    let mut on_a = node(&groups);
    on_a.sender = "gw-a".into();
    b.heard(&on_a.heartbeat(1, 50), 50);
    let status = b.status(50);
    assert_eq!(status[0].member, "gw-a");
    assert!(status[0].ready);
    assert_eq!(status[0].claims, [EG]);
    assert_eq!(status[0].heard, Heard::Direct { ago_ms: 50 });
    assert_eq!(status[1].heard, Heard::Local);
}

#[test]
fn leaving_a_group_releases_its_claim() {
    let groups = [group(EG, &["gw-a"]), group("other", &["gw-a"])];
    let mut a = gateway("gw-a", &groups);
    assert_eq!(a.tick(0).gained, ["egress", "other"]);
    let before = a.group_hash();
    a.set_groups(vec![group(EG, &["gw-b"]), group("other", &["gw-a"])]);
    assert_ne!(a.group_hash(), before);
    let decision = a.tick(1);
    assert_eq!(decision.lost, [EG]);
    assert_eq!(decision.claims, BTreeSet::from(["other".to_string()]));
}

#[test]
fn the_group_hash_ignores_order_and_duplicates() {
    let mut one = gateway(
        "gw-a",
        &[group("x", &["gw-a", "gw-b"]), group("y", &["gw-c"])],
    );
    let two = gateway(
        "gw-a",
        &[group("y", &["gw-c", "gw-c"]), group("x", &["gw-b", "gw-a"])],
    );
    assert_eq!(one.group_hash(), two.group_hash());
    one.set_groups(vec![group("x", &["gw-a"]), group("y", &["gw-bgw-c"])]);
    let three = gateway(
        "gw-a",
        &[group("x", &["gw-a", "gw-b"]), group("y", &["gw-c"])],
    );
    assert_ne!(one.group_hash(), three.group_hash());
}

#[test]
fn the_heartbeat_view_is_trimmed_to_fit_a_datagram_freshest_first() {
    let names: Vec<String> = (0..20).map(|i| format!("{i:0>200}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    let groups = [group(EG, &members)];
    let mut me = gateway(&names[0], &groups);
    let peers: Vec<Membership> = names[1..].iter().map(|n| gateway(n, &groups)).collect();
    for (at, peer) in peers.iter().enumerate() {
        me.heard(&peer.heartbeat(0, at as u64), at as u64);
    }
    let hb = me.heartbeat(1, 20);
    assert!(encode_heartbeat(&hb).is_ok());
    assert!(!hb.view.is_empty() && hb.view.len() < 19);
    assert_eq!(hb.view[0].member, names[19], "the freshest first");
}

#[test]
fn readiness_waits_for_the_detection_time_and_every_live_peers_dump() {
    let groups = [group(EG, &["gw-a", "gw-b", "gw-c"])];
    let mut a = gateway("gw-a", &groups);
    let b = gateway("gw-b", &groups);
    let mut sync = SyncState::new(1000);
    assert!(!sync.ready(&a, 1000), "it listens first");
    assert!(
        sync.ready(&a, 1000 + DETECTION),
        "alone: ready after listening"
    );

    let mut sync = SyncState::new(1000);
    a.heard(&b.heartbeat(0, 1100), 1100);
    assert_eq!(sync.waiting_for(&a, 1300), ["gw-b"]);
    assert!(!sync.ready(&a, 1300));
    sync.dump_complete("gw-b");
    sync.stream_reset("gw-b");
    assert!(
        !sync.ready(&a, 1300),
        "the dump of a closed stream does not count"
    );
    sync.dump_complete("gw-b");
    assert!(sync.ready(&a, 1300));
    // Latched: gw-b restarting (a new stream) does not make the active gateway unready.
    sync.stream_reset("gw-b");
    a.heard(&b.heartbeat(0, 1400), 1400);
    assert!(sync.ready(&a, 1400));

    // A peer that is down does not block readiness.
    let mut sync = SyncState::new(1000);
    assert!(!sync.ready(&a, 1400 + DETECTION - 1));
    assert!(sync.ready(&a, 1400 + DETECTION));
}

//! The election converges: after any history, once every gateway is up and ready and hears every
//! other (directly, or relayed by a node) for two detection times, each EgressGateway has
//! exactly one claimant, and every daemon steers to it.

use proptest::prelude::*;

use super::*;

const NAMES: [&str; 4] = ["gw-a", "gw-b", "gw-c", "gw-d"];
const EGRESS: [&str; 3] = ["eg-0", "eg-1", "eg-2"];
/// Daemon slots: up to four gateways and the node (at the index after the last gateway).
const SLOTS: usize = 5;

type Links = [[bool; SLOTS]; SLOTS];

/// One interval of the history before: which heartbeats arrive, which gateways are ready, and
/// when in the interval each daemon sends (any order, any jitter).
#[derive(Clone, Debug)]
struct Chaos {
    links: Links,
    ready: [bool; SLOTS],
    offsets: [u64; SLOTS],
}

/// One interval of the calm: the node hears and reaches every gateway; heartbeats between
/// gateways arrive or not; each daemon sends at its own phase with up to 10 ms of jitter.
#[derive(Clone, Debug)]
struct Calm {
    direct: Links,
    jitter: [u64; SLOTS],
}

fn chaos() -> impl Strategy<Value = Chaos> {
    (
        any::<Links>(),
        any::<[bool; SLOTS]>(),
        prop::array::uniform5(0..INTERVAL),
    )
        .prop_map(|(links, ready, offsets)| Chaos {
            links,
            ready,
            offsets,
        })
}

fn calm() -> impl Strategy<Value = Calm> {
    (any::<Links>(), prop::array::uniform5(0..10u64))
        .prop_map(|(direct, jitter)| Calm { direct, jitter })
}

/// Every daemon sends once in the interval starting at `start`, in the order of its offset.
fn interval(
    sim: &mut Sim,
    start: u64,
    offsets: [u64; SLOTS],
    link: impl Fn(usize, usize) -> bool,
) -> u64 {
    let mut order: Vec<usize> = (0..sim.daemons.len()).collect();
    order.sort_by_key(|&i| offsets[i]);
    for &i in &order {
        sim.step(i, start + offsets[i], |j| link(i, j));
    }
    start + offsets[order[order.len() - 1]]
}

proptest! {
    #[test]
    fn one_claimant_per_egress_gateway_once_everyone_hears_everyone(
        gateways in 2..=4usize,
        multiplier in 2..=5u32,
        masks in prop::collection::vec(any::<[bool; 4]>(), 1..=EGRESS.len()),
        history in prop::collection::vec(chaos(), 0..30),
        phases in prop::array::uniform5(0..INTERVAL - 10),
        calm_rounds in prop::collection::vec(calm(), 10),
    ) {
        let timing = Timing { interval_ms: INTERVAL, detect_multiplier: multiplier };
        let groups: Vec<Group> = masks
            .iter()
            .enumerate()
            .map(|(k, mask)| {
                let mut members: Vec<&str> =
                    (0..gateways).filter(|&i| mask[i]).map(|i| NAMES[i]).collect();
                if members.is_empty() {
                    members.push(NAMES[k % gateways]);
                }
                group(EGRESS[k], &members)
            })
            .collect();
        let mut daemons: Vec<Membership> = NAMES[..gateways]
            .iter()
            .map(|name| Membership::new(Some(name.to_string()), timing))
            .collect();
        daemons.push(Membership::node("node-1", timing));
        for daemon in &mut daemons {
            daemon.set_groups(groups.clone());
        }
        let node = gateways;
        let mut sim = Sim::new(daemons);

        let mut start = 0;
        for round in &history {
            for i in 0..gateways {
                sim.daemons[i].set_local(round.ready[i]);
            }
            interval(&mut sim, start, round.offsets, |from, to| round.links[from][to]);
            start += INTERVAL;
        }
        for i in 0..gateways {
            sim.daemons[i].set_local(true);
        }
        let mut end = start;
        for round in &calm_rounds[..2 * multiplier as usize] {
            let offsets: [u64; SLOTS] = std::array::from_fn(|i| phases[i] + round.jitter[i]);
            end = interval(&mut sim, start, offsets, |from, to| {
                from == node || to == node || round.direct[from][to]
            });
            start += INTERVAL;
        }

        for group in &groups {
            let egress_gateway = group.egress_gateway.as_str();
            let claimants = sim.claimants(egress_gateway);
            prop_assert_eq!(claimants.len(), 1, "{} claimed by {:?}", egress_gateway, claimants);
            let owner = NAMES[claimants[0]];
            prop_assert!(group.members.iter().any(|m| m == owner));
            for daemon in &sim.daemons {
                prop_assert_eq!(daemon.active(egress_gateway, end), Some(owner.to_string()));
            }
        }
    }
}

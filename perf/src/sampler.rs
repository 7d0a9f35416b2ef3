//! Traffic drawn from the compiled policies: the generator's tuple table and the verdict probes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use portcullis_policy::compile::GatewayTables;
use portcullis_policy::model::Direction;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::generator::Target;
use crate::rules::{Flat, Flattened};

/// Share of the generator's tuples aimed at allowed ranges.
const P_ALLOWED: f64 = 0.9;
const UDP: u8 = 17;

/// A pod → external packet: source pod, destination, UDP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub port: u16,
}

impl Tuple {
    /// `GatewayTables::allows`: the reference verdict.
    pub fn allowed_by(&self, tables: &GatewayTables) -> bool {
        tables.allows(
            Direction::Egress,
            IpAddr::V4(self.src),
            IpAddr::V4(self.dst),
            UDP,
            self.port,
        )
    }
}

/// A tuple sent once to check a contender's verdict against the reference's.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub tuple: Tuple,
    /// What `GatewayTables::allows` says.
    pub allowed: bool,
}

pub struct Sampler<'a> {
    tables: &'a GatewayTables,
    /// Every selected pod with its group.
    pods: Vec<(Ipv4Addr, u32)>,
    /// Per group: the indices of its allowed ranges.
    allowed: HashMap<u32, Vec<usize>>,
    flat: &'a Flattened,
}

impl<'a> Sampler<'a> {
    pub fn new(tables: &'a GatewayTables, flat: &'a Flattened) -> Sampler<'a> {
        let mut pods = Vec::new();
        let mut allowed = HashMap::new();
        for (g, group) in &flat.groups {
            pods.extend(group.pods.iter().map(|p| (*p, *g)));
            allowed.insert(
                *g,
                group
                    .flat
                    .ranges
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.rule_set
                            .is_some_and(|s| !tables.rule_sets[s as usize].is_empty())
                    })
                    .map(|(i, _)| i)
                    .collect(),
            );
        }
        Sampler {
            tables,
            pods,
            allowed,
            flat,
        }
    }

    /// A random tuple: with probability `p_allowed` aimed at an allowed range with one of its
    /// ports, else a uniform external destination with one of the group's ports.
    pub fn sample(&self, rng: &mut SmallRng, p_allowed: f64) -> Tuple {
        let (src, g) = self.pods[rng.random_range(0..self.pods.len())];
        let f = &self.flat.groups[&g].flat;
        let allowed = &self.allowed[&g];
        if !allowed.is_empty() && rng.random_bool(p_allowed) {
            let r = f.ranges[allowed[rng.random_range(0..allowed.len())]];
            let dst = r.first as u64 + rng.random_range(0..=(r.last as u64 - r.first as u64));
            let rs = &self.tables.rule_sets[r.rule_set.unwrap() as usize];
            let rule = rs[rng.random_range(0..rs.len())];
            let port = rng.random_range(rule.first..=rule.last);
            Tuple {
                src,
                dst: Ipv4Addr::from(dst as u32),
                port,
            }
        } else {
            let first = rng.random_range(portcullis_policy::synth::EXTERNAL_FIRST_OCTETS);
            let dst = (first << 24) | (rng.random::<u32>() >> 8);
            let ports: Vec<u16> = allowed
                .iter()
                .flat_map(|i| {
                    self.tables.rule_sets[f.ranges[*i].rule_set.unwrap() as usize]
                        .iter()
                        .map(|r| r.first)
                })
                .take(64)
                .collect();
            let port = if ports.is_empty() {
                443
            } else {
                ports[rng.random_range(0..ports.len())]
            };
            Tuple {
                src,
                dst: Ipv4Addr::from(dst),
                port,
            }
        }
    }

    /// `pod`'s flattened egress table (`None`: no policy selects it).
    fn table_of(&self, pod: Ipv4Addr) -> Option<&Flat> {
        let g = self
            .tables
            .endpoints
            .get(&(Direction::Egress, IpAddr::V4(pod)))?;
        Some(&self.flat.groups[g].flat)
    }

    /// The host bits of the largest aligned block around `dst` inside one flattened range of
    /// `pod`'s group: every address of it has `dst`'s verdict (0 for unselected pods).
    fn same_verdict_bits(&self, pod: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let a = u32::from(dst);
        let Some(r) = self
            .table_of(pod)
            .and_then(|f| f.range_at(a))
            .filter(|r| r.contains(a))
        else {
            return 0;
        };
        let mut host: u32 = 0;
        while host != u32::MAX {
            let wider = (host << 1) | 1;
            if (a & !wider) < r.first || (a | wider) > r.last {
                break;
            }
            host = wider;
        }
        host
    }

    /// The flattened table's verdict (equal to `GatewayTables::allows`, which the probes use;
    /// this one is a binary search, for the many generator tuples).
    fn allows(&self, t: Tuple) -> bool {
        let Some(f) = self.table_of(t.src) else {
            return true;
        };
        let range = f.range_at(u32::from(t.dst));
        range.and_then(|r| r.rule_set).is_some_and(|s| {
            self.tables.rule_sets[s as usize]
                .iter()
                .any(|r| r.matches(UDP, t.port))
        })
    }
}

/// The generator's table of `2^log2` tuples and the fraction of them the policies allow.
pub fn make_targets(
    tables: &GatewayTables,
    flat: &Flattened,
    log2: u32,
    rng: &mut SmallRng,
) -> (Vec<Target>, f64) {
    let s = Sampler::new(tables, flat);
    let n = 1usize << log2;
    let mut allowed = 0usize;
    let targets = (0..n)
        .map(|i| {
            let t = s.sample(rng, P_ALLOWED);
            allowed += s.allows(t) as usize;
            let host = s.same_verdict_bits(t.src, t.dst);
            Target {
                src: u32::from_ne_bytes(t.src.octets()),
                dst: u32::from_ne_bytes((u32::from(t.dst) & !host).to_be_bytes()),
                dst_random: u32::from_ne_bytes(host.to_be_bytes()),
                sport: (20_000 + (i % 40_000) as u16).to_be(),
                dport: t.port.to_be(),
            }
        })
        .collect();
    (targets, allowed as f64 / n as f64)
}

/// `n` probes, alternately aimed at allowed ranges and uniform.
pub fn make_probes(
    tables: &GatewayTables,
    flat: &Flattened,
    n: usize,
    rng: &mut SmallRng,
) -> Vec<Probe> {
    let s = Sampler::new(tables, flat);
    (0..n)
        .map(|i| {
            let tuple = s.sample(rng, if i % 2 == 0 { 1.0 } else { 0.0 });
            Probe {
                tuple,
                allowed: tuple.allowed_by(tables),
            }
        })
        .collect()
}

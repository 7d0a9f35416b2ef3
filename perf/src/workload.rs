//! What is measured at one ipBlock count: the synthetic policies, compiled once, and the
//! generator's tuples and the verdict probes drawn from them.

use std::time::Instant;

use anyhow::{anyhow, Result};
use portcullis_policy::compile::{compile_gateway, GatewayTables};
use portcullis_policy::model::{Protocol, Snapshot};
use portcullis_policy::synth::{ipblock_snapshot, IpBlockScale};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::generator::Target;
use crate::memory::rss_kib;
use crate::plan::{Plan, PODS, POLICIES, SEED};
use crate::report::{Report, Subject};
use crate::rules::{self, Flattened};
use crate::sampler::{make_probes, make_targets, Probe};

pub struct Workload {
    pub ip_blocks: usize,
    /// Prefixes after compilation.
    pub prefixes: usize,
    pub snapshot: Snapshot,
    pub tables: GatewayTables,
    pub flat: Flattened,
    pub targets: Vec<Target>,
    pub probes: Vec<Probe>,
}

impl Workload {
    /// Builds and compiles the policies of `ip_blocks` ipBlocks (reporting the compile's time
    /// and memory) and draws the traffic.
    pub fn new(ip_blocks: usize, plan: &Plan, report: &mut Report) -> Result<Workload> {
        let rss0 = rss_kib();
        let t = Instant::now();
        let snapshot = snapshot(ip_blocks);
        let tables = compile_gateway(&snapshot).map_err(|e| anyhow!("compile: {e}"))?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let prefixes = tables.prefix_count();
        let flat = rules::flatten_all(&tables);
        let compiler = Subject::new("portcullis", ip_blocks, prefixes);
        report.push(compiler.figure("compile_time", compile_ms, "ms"));
        let rss_delta = rss_kib().saturating_sub(rss0) as f64 * 1024.0;
        report.push(compiler.figure("compile_rss_delta", rss_delta, "bytes"));
        println!("   compiled {prefixes} prefixes in {compile_ms:.0} ms");
        let mut rng = SmallRng::seed_from_u64(SEED ^ ip_blocks as u64);
        let (targets, allowed) = make_targets(&tables, &flat, plan.targets_log2, &mut rng);
        let traffic = Subject::new("traffic", ip_blocks, prefixes);
        report.push(traffic.figure("allowed_fraction", allowed, "fraction"));
        let probes = make_probes(&tables, &flat, plan.probes, &mut rng);
        println!(
            "   {} targets, {:.1}% allowed; {} probes ({} allowed by the reference)",
            targets.len(),
            allowed * 100.0,
            probes.len(),
            probes.iter().filter(|p| p.allowed).count()
        );
        Ok(Workload {
            ip_blocks,
            prefixes,
            snapshot,
            tables,
            flat,
            targets,
            probes,
        })
    }
}

/// The synthetic cluster of `ip_blocks` ipBlocks, with its service ports switched to UDP (the
/// generator sends UDP; synth's rules are TCP).
fn snapshot(ip_blocks: usize) -> Snapshot {
    let mut s = ipblock_snapshot(IpBlockScale {
        policies: POLICIES.min(ip_blocks.max(1)),
        ip_blocks,
        pods: PODS,
        apps: POLICIES,
        seed: SEED,
    });
    for p in &mut s.policies {
        for rule in p.egress.iter_mut().flatten() {
            for port in &mut rule.ports {
                port.protocol = Protocol::Udp;
            }
        }
    }
    s
}

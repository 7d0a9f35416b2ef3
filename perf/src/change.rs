//! Policy changes on a loaded gateway (`portcullis-xdp`, the benchmark rule set applied):
//!
//! - **latency**: a probe stream (a new flow per frame, from a pod of the first policy to
//!   198.18.0.0/15, UDP 7, sent every ~50 µs on a raw socket) is denied by the rule set; a change
//!   adds an ipBlock rule allowing it, the next change removes it again. Latency = the sink's
//!   first-seen time (allow) or last-seen time (deny) of the probe minus the change's start, both
//!   CLOCK_MONOTONIC (`bpf_ktime_get_ns` in the sink). The change is what the daemon does: the
//!   long-lived `GatewayCompiler` recompiles the edited snapshot (reusing unchanged groups) and
//!   `Gateway::apply` writes the delta; both are timed separately too.
//! - **survival**: established flows (fixed UDP tuples of the same group, allowed, already in the
//!   flow table, sequence-numbered) keep flowing while the same change is applied again and again
//!   and the generator floods new flows — paced to half of the gateway's measured capacity
//!   (so congestion cannot drop anything) and then unpaced (saturating, so the veth ring drops
//!   frames of every flow alike). Lost frames and the window in which sequence gaps were seen
//!   are reported per phase.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use portcullis_gateway::{ForwardMode, Gateway, GatewayOptions};
use portcullis_policy::compile::{compile_gateway, GatewayCompiler};
use portcullis_policy::model::{Peer, PolicyPort, PortMatch, Protocol, Rule, Snapshot};

use crate::harness::Harness;
use crate::lab::in_ns;
use crate::latency::Timing;
use crate::plan::Plan;
use crate::report::{Report, Subject};
use crate::sampler::Tuple;
use crate::workload::Workload;

/// RFC 2544's benchmarking range: outside every synthetic ipBlock (11.0.0.0–110.255.255.255).
const PROBE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const PROBE_PORT: u16 = 7;

/// `base` with one more egress rule on its first policy (UDP `PROBE_PORT` to 198.18.0.0/15), and
/// an IPv4 pod that policy selects.
fn with_probe_rule(base: &Snapshot) -> Result<(Snapshot, Ipv4Addr)> {
    let mut on = base.clone();
    let policy = on
        .policies
        .first_mut()
        .context("no policy in the snapshot")?;
    let pod = base
        .pods
        .iter()
        .filter(|p| p.namespace == policy.namespace && policy.pod_selector.matches(&p.labels))
        .flat_map(|p| &p.ips)
        .find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .with_context(|| format!("no IPv4 pod selected by {}", policy.key()))?;
    policy.egress.get_or_insert_with(Vec::new).push(Rule {
        peers: vec![Peer::IpBlock {
            cidr: IpNet::new(IpAddr::V4(PROBE_NET), 15)?,
            except: Vec::new(),
        }],
        ports: vec![PolicyPort {
            protocol: Protocol::Udp,
            port: PortMatch::Number {
                first: PROBE_PORT,
                last: PROBE_PORT,
            },
        }],
    });
    Ok((on, pod))
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so the sink's times compare with it.
pub use portcullis_bpf::monotonic_ns;

/// Nearest-rank percentile of `v` (sorted here), `q` in 0..=1.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// How long one change took to compile and to apply.
pub struct ChangeTimes {
    pub compile: Duration,
    pub apply: Duration,
}

/// The gateway under test fed as the daemon feeds it: one long-lived compiler, so a change
/// recompiles only the groups it touches and the gateway writes only the entries that differ.
struct Enforced {
    gateway: Gateway,
    compiler: GatewayCompiler,
}

impl Enforced {
    /// Compiles and applies `snapshot`.
    fn change(&mut self, snapshot: &Snapshot) -> Result<ChangeTimes> {
        let t = Instant::now();
        let tables = (self.compiler.compile(snapshot)).map_err(|e| anyhow!("compile: {e}"))?;
        let compile = t.elapsed();
        let t = Instant::now();
        self.gateway.apply(&tables)?;
        Ok(ChangeTimes {
            compile,
            apply: t.elapsed(),
        })
    }
}

/// The loaded gateway and the two snapshots the changes flip it between.
pub struct ChangeRig<'w> {
    gw: Enforced,
    /// The benchmark's snapshot: the probe is denied.
    base: &'w Snapshot,
    /// `base` with the probe rule: the probe is allowed.
    on: Snapshot,
    /// The probe's source: a pod of the policy the changes edit.
    pub pod: Ipv4Addr,
    pub probe_dst: Ipv4Addr,
    /// The gateway's NAPI thread.
    pub napi: Option<i32>,
    /// Whose figures: `portcullis-xdp` at this size.
    pub subject: Subject,
}

impl ChangeRig<'_> {
    /// Change to the snapshot that allows the probe, or to the one that denies it.
    pub fn change(&mut self, allow: bool) -> Result<ChangeTimes> {
        self.gw.change(if allow { &self.on } else { self.base })
    }
}

impl Harness<'_> {
    /// Loads the gateway with the workload's tables, measures change latency and (at the first
    /// change size) established-flow survival, and unloads it.
    pub fn changes(&mut self, w: &Workload, plan: &Plan, report: &mut Report) -> Result<()> {
        let (on, pod) = with_probe_rule(&w.snapshot)?;
        let on_tables = compile_gateway(&on).map_err(|e| anyhow!("compile: {e}"))?;
        let probe_dst = Ipv4Addr::from(u32::from(PROBE_NET) | 1);
        let allows = |t| {
            Tuple {
                src: pod,
                dst: probe_dst,
                port: PROBE_PORT,
            }
            .allowed_by(t)
        };
        if allows(&w.tables) || !allows(&on_tables) {
            bail!("the probe rule does not flip the probe's verdict (pod {pod} → {probe_dst})");
        }
        let opts = GatewayOptions {
            cluster_iface: self.lab.cluster_dev.clone(),
            external_iface: self.lab.external_dev.clone(),
            forward: ForwardMode::Xdp,
            ..Default::default()
        };
        let mut gw = Enforced {
            gateway: in_ns(&self.lab.gw_ns, || Gateway::load(opts))?,
            compiler: GatewayCompiler::default(),
        };
        gw.change(&w.snapshot)?;
        let mut rig = ChangeRig {
            gw,
            base: &w.snapshot,
            on,
            pod,
            probe_dst,
            napi: self.gateway_napi()?,
            subject: Subject::new("portcullis-xdp", w.ip_blocks, w.prefixes),
        };
        let result = (|| -> Result<()> {
            if plan.latency_changes > 0 {
                let timings = self.latency(&mut rig, plan.latency_changes)?;
                push_latency(&rig.subject, &timings, report);
            }
            if plan.survival_changes > 0 && plan.change_sizes.first() == Some(&w.ip_blocks) {
                self.survival(&mut rig, w, plan, report)?;
            }
            Ok(())
        })();
        self.set_sink_flags(0)?;
        drop(rig);
        self.reset_gateway_ns();
        result
    }
}

/// The change-latency figures (p50 with every value as samples, p99) and their summary line.
fn push_latency(s: &Subject, timings: &[Timing], report: &mut Report) {
    let col =
        |f: &dyn Fn(&Timing) -> Option<f64>| -> Vec<f64> { timings.iter().filter_map(f).collect() };
    let all = col(&|t| Some(t.latency_ms));
    let allow = col(&|t| t.allow.then_some(t.latency_ms));
    let deny = col(&|t| (!t.allow).then_some(t.latency_ms));
    let compile = col(&|t| Some(t.compile_ms));
    let apply = col(&|t| Some(t.apply_ms));
    for (name, v) in [
        ("change_latency", &all),
        ("change_latency_allow", &allow),
        ("change_latency_deny", &deny),
        ("change_compile_time", &compile),
        ("change_apply_time", &apply),
    ] {
        let p50 = s.figure(format!("{name}_p50"), percentile(v, 0.5), "ms");
        report.push(p50.samples(v.clone()));
        report.push(s.figure(format!("{name}_p99"), percentile(v, 0.99), "ms"));
    }
    report.push(s.figure("change_count", all.len() as f64, "changes"));
    println!(
        "   change latency at {} ({} changes): p50 {:.2} ms, p99 {:.2} ms (allow p50 {:.2}, deny p50 {:.2}); compile p50 {:.2} ms, apply p50 {:.2} ms",
        s.ip_blocks,
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&allow, 0.5),
        percentile(&deny, 0.5),
        percentile(&compile, 0.5),
        percentile(&apply, 0.5),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}

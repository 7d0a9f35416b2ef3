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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use portcullis_gateway::{ForwardMode, Gateway, GatewayOptions};
use portcullis_policy::compile::{compile_gateway, GatewayCompiler, GatewayTables};
use portcullis_policy::model::{Direction, Peer, PolicyPort, PortMatch, Protocol, Rule, Snapshot};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::lab::{self, in_ns};
use crate::report::{Figure, Report};
use crate::sender::{Sender, Stream};
use crate::{
    check, generator_of, rules, Harness, Plan, Sampler, Target, Watch, FRAME_LEN, SEED, SINK_WATCH,
    WATCH_DST_MASK,
};

/// RFC 2544's benchmarking range: outside every synthetic ipBlock (11.0.0.0–110.255.255.255).
const PROBE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const PROBE_PORT: u16 = 7;
/// Time between two probe frames (the latency's resolution).
const PROBE_INTERVAL: Duration = Duration::from_micros(50);
/// Established flows of the survival test, and the time between two frames of each.
const ESTABLISHED: usize = 16;
const ESTABLISHED_INTERVAL: Duration = Duration::from_millis(1);

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

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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

fn watch_key(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> [u32; 3] {
    [
        u32::from_ne_bytes(src.octets()),
        u32::from_ne_bytes(dst.octets()) & WATCH_DST_MASK,
        dport.to_be() as u32,
    ]
}

/// Makes a figure of the gateway at this size: (metric, value, unit, samples).
type FigureOf<'a> = dyn Fn(&str, f64, &str, Vec<f64>) -> Figure + 'a;

struct Timing {
    allow: bool,
    compile_ms: f64,
    apply_ms: f64,
    latency_ms: f64,
}

/// The gateway under test fed as the daemon feeds it: one long-lived compiler, so a change
/// recompiles only the groups it touches and the gateway writes only the entries that differ.
struct Enforced {
    gateway: Gateway,
    compiler: GatewayCompiler,
}

impl Enforced {
    /// Compiles and applies `snapshot`; returns the compile and apply times.
    fn change(&mut self, snapshot: &Snapshot) -> Result<(Duration, Duration)> {
        let t = Instant::now();
        let tables = (self.compiler.compile(snapshot)).map_err(|e| anyhow!("compile: {e}"))?;
        let compile = t.elapsed();
        let t = Instant::now();
        self.gateway.apply(&tables)?;
        Ok((compile, t.elapsed()))
    }
}

impl Harness<'_> {
    /// Loads the gateway with `tables`, measures change latency and (at the first change size)
    /// established-flow survival, and unloads it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn changes(
        &mut self,
        size: usize,
        prefixes: usize,
        snap: &Snapshot,
        tables: &GatewayTables,
        flat: &rules::Flattened,
        targets: &[Target],
        plan: &Plan,
        report: &mut Report,
    ) -> Result<()> {
        let (on, pod) = with_probe_rule(snap)?;
        let on_tables = compile_gateway(&on).map_err(|e| anyhow!("compile: {e}"))?;
        let probe_dst = Ipv4Addr::from(u32::from(PROBE_NET) | 1);
        let allows = |t: &GatewayTables| {
            t.allows(
                Direction::Egress,
                IpAddr::V4(pod),
                IpAddr::V4(probe_dst),
                17,
                PROBE_PORT,
            )
        };
        if allows(tables) || !allows(&on_tables) {
            bail!("the probe rule does not flip the probe's verdict (pod {pod} → {probe_dst})");
        }
        let opts = GatewayOptions {
            cluster_iface: self.lab.cluster_dev.clone(),
            external_iface: self.lab.external_dev.clone(),
            forward: ForwardMode::Xdp,
            ..Default::default()
        };
        let gw_ns = self.lab.gw_ns.clone();
        let mut gw = Enforced {
            gateway: in_ns(&gw_ns, || Gateway::load(opts))?,
            compiler: GatewayCompiler::default(),
        };
        gw.change(snap)?;
        let napi = self
            .lab
            .thread_napi(&gw_ns, &self.lab.cluster_dev, self.lab.cpus.gateway)?;
        let fig = |metric: &str, value: f64, unit: &str, samples: Vec<f64>| Figure {
            contender: "portcullis-xdp".into(),
            ip_blocks: size,
            prefixes,
            frame_bytes: 0,
            metric: metric.into(),
            value,
            unit: unit.into(),
            samples,
        };
        let result = (|| -> Result<()> {
            if plan.latency_changes > 0 {
                let t = self.latency(&mut gw, snap, &on, pod, probe_dst, plan.latency_changes)?;
                let col = |f: &dyn Fn(&Timing) -> Option<f64>| -> Vec<f64> {
                    t.iter().filter_map(f).collect()
                };
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
                    report.push(fig(
                        &format!("{name}_p50"),
                        percentile(v, 0.5),
                        "ms",
                        v.clone(),
                    ));
                    report.push(fig(
                        &format!("{name}_p99"),
                        percentile(v, 0.99),
                        "ms",
                        Vec::new(),
                    ));
                }
                report.push(fig("change_count", all.len() as f64, "changes", Vec::new()));
                println!(
                    "   change latency at {size} ({} changes): p50 {:.2} ms, p99 {:.2} ms (allow p50 {:.2}, deny p50 {:.2}); compile p50 {:.2} ms, apply p50 {:.2} ms",
                    all.len(),
                    percentile(&all, 0.5),
                    percentile(&all, 0.99),
                    percentile(&allow, 0.5),
                    percentile(&deny, 0.5),
                    percentile(&compile, 0.5),
                    percentile(&apply, 0.5),
                );
            }
            if plan.survival_changes > 0 && plan.change_sizes.first() == Some(&size) {
                self.survival(
                    &mut gw, snap, &on, pod, tables, flat, targets, plan, napi, &fig, report,
                )?;
            }
            Ok(())
        })();
        self.set_sink_flags(0)?;
        drop(gw);
        self.reset_gateway_ns();
        result
    }

    /// Runs `n` changes (allow, deny, allow, ...) with the probe running; the timings.
    fn latency(
        &mut self,
        gw: &mut Enforced,
        base: &Snapshot,
        on: &Snapshot,
        pod: Ipv4Addr,
        probe_dst: Ipv4Addr,
        n: usize,
    ) -> Result<Vec<Timing>> {
        let key = watch_key(pod, probe_dst, PROBE_PORT);
        self.watch.insert(key, Watch::default(), 0)?;
        self.set_sink_flags(SINK_WATCH)?;
        let stream = Stream {
            src: pod,
            dst: probe_dst,
            sport: 1024,
            dport: PROBE_PORT,
            fresh_sport: true,
        };
        let stop_sender = AtomicBool::new(false);
        let cpu = self.lab.cpus.generator;
        let (ns, ifindex, gm, cm) = (
            self.lab.gen_ns.clone(),
            self.gen_ifindex,
            self.lab.gen_mac,
            self.lab.cluster_mac,
        );
        std::thread::scope(|sc| {
            let sender = sc.spawn(|| {
                in_ns(&ns, || {
                    lab::pin_current_thread(cpu);
                    Sender::open(ifindex, gm, cm, FRAME_LEN)?.run(
                        &[stream],
                        PROBE_INTERVAL,
                        &stop_sender,
                    )
                })
            });
            let timed = (|| -> Result<Vec<Timing>> {
                std::thread::sleep(Duration::from_millis(100));
                let w = self.watch.get(&key, 0)?;
                if w.frames > 0 {
                    bail!("the probe passed before any change allowed it");
                }
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    check(self.stop)?;
                    let allow = i % 2 == 0;
                    self.watch.insert(key, Watch::default(), 0)?;
                    let t0 = monotonic_ns();
                    let (compile, apply) = gw.change(if allow { on } else { base })?;
                    let (compile_ms, apply_ms) =
                        (compile.as_secs_f64() * 1e3, apply.as_secs_f64() * 1e3);
                    let latency_ns = if allow {
                        let deadline = Instant::now() + Duration::from_secs(2);
                        loop {
                            let w = self.watch.get(&key, 0)?;
                            if w.frames > 0 {
                                break w.first_ns.saturating_sub(t0);
                            }
                            if Instant::now() > deadline {
                                bail!(
                                    "change {i}: the probe did not pass within 2 s of allowing it"
                                );
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    } else {
                        // Enforced once the probe has been silent for 30 ms (≫ its interval);
                        // the last frame that passed gives the latency.
                        let deadline = Instant::now() + Duration::from_secs(2);
                        let mut last = self.watch.get(&key, 0)?;
                        let mut quiet = Instant::now();
                        loop {
                            std::thread::sleep(Duration::from_millis(5));
                            let w = self.watch.get(&key, 0)?;
                            if w.frames != last.frames {
                                last = w;
                                quiet = Instant::now();
                            } else if quiet.elapsed() >= Duration::from_millis(30) {
                                break;
                            }
                            if Instant::now() > deadline {
                                bail!(
                                    "change {i}: the probe still passes 2 s after the apply that denies it returned ({} frames since the change started)",
                                    w.frames
                                );
                            }
                        }
                        if last.frames > 0 {
                            last.last_ns.saturating_sub(t0)
                        } else {
                            0
                        }
                    };
                    out.push(Timing {
                        allow,
                        compile_ms,
                        apply_ms,
                        latency_ms: latency_ns as f64 / 1e6,
                    });
                }
                Ok(out)
            })();
            stop_sender.store(true, Ordering::Relaxed);
            let sent = sender
                .join()
                .map_err(|_| anyhow!("probe sender panicked"))?;
            let timed = timed?;
            let sent = sent?;
            println!(
                "   probe: {} frames, one every {:.0} µs",
                sent.frames[0],
                sent.interval.as_secs_f64() * 1e6
            );
            Ok(timed)
        })
    }

    /// Established flows during `plan.survival_changes` changes under a paced, then a
    /// saturating flood of new flows.
    #[allow(clippy::too_many_arguments)]
    fn survival(
        &mut self,
        gw: &mut Enforced,
        base: &Snapshot,
        on: &Snapshot,
        pod: Ipv4Addr,
        tables: &GatewayTables,
        flat: &rules::Flattened,
        targets: &[Target],
        plan: &Plan,
        napi: Option<i32>,
        fig: &FigureOf<'_>,
        report: &mut Report,
    ) -> Result<()> {
        // Allowed tuples of the probe pod's group (the group the changes edit), one per key.
        let group = tables
            .endpoints
            .get(&(Direction::Egress, IpAddr::V4(pod)))
            .copied()
            .context("the probe pod has no egress group")?;
        let sampler = Sampler::new(tables, flat);
        let mut rng = SmallRng::seed_from_u64(SEED ^ 0xe57);
        let mut streams: Vec<Stream> = Vec::new();
        let mut keys: Vec<[u32; 3]> = Vec::new();
        for _ in 0..200_000 {
            if streams.len() == ESTABLISHED {
                break;
            }
            let (src, dst, port) = sampler.sample(&mut rng, 1.0);
            let key = watch_key(src, dst, port);
            let same_group =
                tables.endpoints.get(&(Direction::Egress, IpAddr::V4(src))) == Some(&group);
            if same_group
                && !keys.contains(&key)
                && tables.allows(
                    Direction::Egress,
                    IpAddr::V4(src),
                    IpAddr::V4(dst),
                    17,
                    port,
                )
            {
                keys.push(key);
                streams.push(Stream {
                    src,
                    dst,
                    sport: 30_000 + streams.len() as u16,
                    dport: port,
                    fresh_sport: false,
                });
            }
        }
        if streams.len() < ESTABLISHED {
            bail!(
                "only {} allowed established-flow tuples found in the probe pod's group",
                streams.len()
            );
        }
        // The gateway's capacity for the flood (new flows), unpaced, without watching.
        let flood_mask = (targets.len() - 1) as u32;
        let cfg = self.flood_config(flood_mask, true, 0);
        self.set_gen(cfg)?;
        let capacity = self.measure(1.0, napi)?.forwarded;
        let paced_gap = (2e9 / capacity.max(1.0)).min(u32::MAX as f64) as u32;
        for (phase, gap_ns) in [("paced", paced_gap), ("saturating", 0)] {
            check(self.stop)?;
            for k in &keys {
                self.watch.insert(*k, Watch::default(), 0)?;
            }
            self.set_sink_flags(SINK_WATCH)?;
            let cfg = self.flood_config(flood_mask, true, gap_ns);
            self.set_gen(cfg)?;
            let stop_sender = AtomicBool::new(false);
            let stop_flood = AtomicBool::new(false);
            let cpu = self.lab.cpus.generator;
            let (ns, ifindex, gm, cm) = (
                self.lab.gen_ns.clone(),
                self.gen_ifindex,
                self.lab.gen_mac,
                self.lab.cluster_mac,
            );
            let mut gen = generator_of(
                &mut self.ebpf,
                &self.lab,
                &self.template,
                self.gen_ifindex,
                self.gen_batch,
                self.gen_repeat,
            )?;
            let (watch, sink_count, gen_sent, stop) =
                (&self.watch, &self.sink_count, &self.gen_sent, self.stop);
            let streams = &streams;
            let phase_result = std::thread::scope(|sc| -> Result<_> {
                let sender = sc.spawn(|| {
                    in_ns(&ns, || {
                        lab::pin_current_thread(cpu);
                        Sender::open(ifindex, gm, cm, FRAME_LEN)?.run(
                            streams,
                            ESTABLISHED_INTERVAL,
                            &stop_sender,
                        )
                    })
                });
                // The flows are established before the flood and the changes start.
                std::thread::sleep(Duration::from_millis(300));
                let flood = sc.spawn(|| gen.run(24.0 * 3600.0, &stop_flood));
                std::thread::sleep(Duration::from_millis(300));
                // The changes run on the generator's core at the generator's priority: on the
                // gateway's core the real-time NAPI thread would starve them.
                let gw = &mut *gw;
                let keys = &keys;
                let changes = sc.spawn(move || -> Result<_> {
                    lab::pin_current_thread(cpu);
                    let lost_before: u64 = keys
                        .iter()
                        .map(|k| watch.get(k, 0).map(|w| w.lost))
                        .sum::<Result<u64, _>>()?;
                    let (c0, s0) = (
                        sink_count.get(&0, 0)?.iter().sum::<u64>(),
                        gen_sent.get(&0, 0)?.iter().sum::<u64>(),
                    );
                    let t_start = monotonic_ns();
                    let t = Instant::now();
                    for i in 0..plan.survival_changes {
                        if stop.load(Ordering::Relaxed) {
                            bail!("interrupted");
                        }
                        gw.change(if i % 2 == 0 { on } else { base })?;
                    }
                    let secs = t.elapsed().as_secs_f64();
                    let t_end = monotonic_ns();
                    let (c1, s1) = (
                        sink_count.get(&0, 0)?.iter().sum::<u64>(),
                        gen_sent.get(&0, 0)?.iter().sum::<u64>(),
                    );
                    std::thread::sleep(Duration::from_millis(50));
                    let lost_after: u64 = keys
                        .iter()
                        .map(|k| watch.get(k, 0).map(|w| w.lost))
                        .sum::<Result<u64, _>>()?;
                    Ok((
                        t_start,
                        t_end,
                        secs,
                        lost_after - lost_before,
                        (s1 - s0) as f64 / secs,
                        (c1 - c0) as f64 / secs,
                    ))
                });
                let changed = changes
                    .join()
                    .map_err(|_| anyhow!("policy changes panicked"))
                    .and_then(|r| r);
                stop_flood.store(true, Ordering::Relaxed);
                let flood = flood
                    .join()
                    .map_err(|_| anyhow!("flood generator panicked"));
                std::thread::sleep(Duration::from_millis(100));
                stop_sender.store(true, Ordering::Relaxed);
                let sent = sender.join().map_err(|_| anyhow!("sender panicked"))?;
                let changed = changed?;
                flood??;
                Ok((changed, sent?))
            });
            let ((t_start, t_end, secs, lost_during, offered, forwarded), sent) = phase_result?;
            std::thread::sleep(Duration::from_millis(100));
            let seen: Vec<Watch> = keys
                .iter()
                .map(|k| self.watch.get(k, 0))
                .collect::<Result<_, _>>()?;
            let sent_total: u64 = sent.frames.iter().sum();
            let received: u64 = seen.iter().map(|w| w.frames).sum();
            let lost = sent_total.saturating_sub(received);
            let gaps: Vec<(u64, u64)> = seen
                .iter()
                .filter(|w| w.gap_first_ns != 0)
                .map(|w| (w.gap_first_ns, w.gap_last_ns))
                .collect();
            let m = |k: &str| format!("survival_{phase}_{k}");
            report.push(fig(
                &m("changes"),
                plan.survival_changes as f64,
                "changes",
                Vec::new(),
            ));
            report.push(fig(
                &m("change_rate"),
                plan.survival_changes as f64 / secs,
                "changes/s",
                Vec::new(),
            ));
            report.push(fig(&m("flows"), streams.len() as f64, "flows", Vec::new()));
            report.push(fig(&m("sent"), sent_total as f64, "frames", Vec::new()));
            report.push(fig(&m("lost"), lost as f64, "frames", Vec::new()));
            report.push(fig(
                &m("lost_during_changes"),
                lost_during as f64,
                "frames",
                Vec::new(),
            ));
            report.push(fig(
                &m("flood_offered_pps"),
                offered,
                "packets/s",
                Vec::new(),
            ));
            report.push(fig(
                &m("flood_forwarded_pps"),
                forwarded,
                "packets/s",
                Vec::new(),
            ));
            let window = if let (Some(first), Some(last)) = (
                gaps.iter().map(|g| g.0).min(),
                gaps.iter().map(|g| g.1).max(),
            ) {
                // Relative to the first change; negative: before the changes started.
                let rel = |t: u64| (t as f64 - t_start as f64) / 1e6;
                report.push(fig(&m("gap_first"), rel(first), "ms", Vec::new()));
                report.push(fig(&m("gap_last"), rel(last), "ms", Vec::new()));
                format!(
                    "sequence gaps seen from {:.1} to {:.1} ms after the first change (changes ended at {:.1} ms)",
                    rel(first),
                    rel(last),
                    (t_end - t_start) as f64 / 1e6
                )
            } else {
                "no sequence gap".into()
            };
            println!(
                "   survival ({phase} flood {:.2} Mpps offered, {:.2} forwarded): {} changes in {:.1} s; {} established flows sent {sent_total}, lost {lost} ({lost_during} during the changes); {window}",
                offered / 1e6,
                forwarded / 1e6,
                plan.survival_changes,
                secs,
                streams.len(),
            );
            self.set_sink_flags(0)?;
        }
        Ok(())
    }
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

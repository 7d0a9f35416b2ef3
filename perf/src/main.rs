//! `portcullis-perf`: the benchmark harness behind `perf/run` (see perf/README.md).
//!
//! Topology: generator netns → gateway netns (cluster leg, external leg) → sink netns, made and
//! torn down by [`lab::Lab`]. Traffic: 64- or 1500-byte IPv4/UDP frames produced by `perf_gen` run through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (redirected out of the generator's veth),
//! random pod sources and destinations drawn from the policies' allowed ranges (mostly) or the
//! whole external range. Counted by `perf_sink` (XDP) on the sink. The gateway's cluster leg runs
//! threaded NAPI pinned to a CPU of its own (`--cpus`; default CPU 1), so the gateway's work is one
//! core and its CPU time is that kthread's; the generator runs on CPU 0 and the sink's NAPI thread
//! on CPU 2, or on CPU 0 too when the machine has two.
mod change;
mod lab;
mod report;
mod rules;
mod sender;

use std::collections::HashMap as StdHashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::Ebpf;
use clap::Parser;
use lab::{in_ns, sh, Cpus, Lab};
use portcullis_gateway::{ForwardMode, Gateway, GatewayOptions, TestProgram};
use portcullis_policy::compile::{compile_gateway, GatewayTables};
use portcullis_policy::model::{Direction, Protocol, Snapshot};
use portcullis_policy::synth::{ipblock_snapshot, IpBlockScale};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use report::{Figure, Report};

static PERF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-perf-ebpf"));

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Target {
    src: u32,
    dst: u32,
    dst_random: u32,
    sport: u16,
    dport: u16,
}
// SAFETY: plain old data, same layout as the kernel side.
unsafe impl aya::Pod for Target {}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GenConfig {
    ifindex: u32,
    mask: u32,
    flags: u32,
    index: u32,
    gap_ns: u32,
    pad: u32,
}
// SAFETY: plain old data, same layout as the kernel side.
unsafe impl aya::Pod for GenConfig {}

/// What the sink saw of one watched tuple (same layout as the kernel side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Watch {
    first_ns: u64,
    last_ns: u64,
    frames: u64,
    next_seq: u64,
    lost: u64,
    gap_first_ns: u64,
    gap_last_ns: u64,
}
// SAFETY: plain old data, same layout as the kernel side.
unsafe impl aya::Pod for Watch {}

const SINK_RECORD: u32 = 1;
const SINK_WATCH: u32 = 2;
/// The part of a network-order destination a `WATCH` key keeps (its first two bytes).
const WATCH_DST_MASK: u32 = u32::from_ne_bytes([0xff, 0xff, 0, 0]);

const GEN_RANDOM_SPORT: u32 = 1;
const GEN_PROBE: u32 = 2;

pub const ALL_CONTENDERS: [&str; 10] = [
    "bare-drop",
    "bare-pass",
    "bare-redirect",
    "portcullis-xdp",
    "portcullis-xdp-established",
    "portcullis-kernel",
    "nftables",
    "nftables-ct",
    "iptables-ipset",
    "iptables-linear",
];

#[derive(Parser, Debug, Clone)]
#[command(about = "Portcullis benchmark harness (run through perf/run, as root)")]
struct Args {
    /// The short run: prefix counts 10, 10k, 100k; 2 s per contender, one repeat.
    #[arg(long)]
    quick: bool,
    /// ipBlock counts (overrides the run's default).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Seconds of traffic per measurement.
    #[arg(long)]
    duration: Option<f64>,
    /// Measurements per contender and size (the median is reported).
    #[arg(long)]
    repeats: Option<usize>,
    /// Contenders (default: all).
    #[arg(long, value_delimiter = ',')]
    contenders: Option<Vec<String>>,
    /// Largest ipBlock count for linear iptables.
    #[arg(long, default_value_t = 10_000)]
    linear_max: usize,
    /// Skip the BPF_PROG_TEST_RUN micro figures.
    #[arg(long)]
    no_micro: bool,
    /// Verdict-agreement probes per contender and size.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Output directory.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// log2 of the number of precomputed packet tuples the generator draws from.
    #[arg(long)]
    targets_log2: Option<u32>,
    /// Frame sizes in bytes (Ethernet header included, no FCS), 60..=1514 (default: full 64,1500;
    /// quick 64).
    #[arg(long, value_delimiter = ',')]
    frame_sizes: Option<Vec<usize>>,
    /// Frames per live-frames batch of the generator (1..=256).
    #[arg(long, default_value_t = 256)]
    gen_batch: u32,
    /// Frames per generator test-run call; 0 sizes each call to the time left (at most 1 s),
    /// which keeps the two `synchronize_rcu` waits of every call out of the way.
    #[arg(long, default_value_t = 0)]
    gen_repeat: u32,
    /// ipBlock counts at which policy-change latency and established-flow survival are measured
    /// (default: full 10k,100k; quick 10k); each must also be in --sizes.
    #[arg(long, value_delimiter = ',')]
    change_sizes: Option<Vec<usize>>,
    /// Policy changes timed for the change-latency figures (0: skip).
    #[arg(long)]
    latency_changes: Option<usize>,
    /// Policy changes applied during the survival test, per load phase (0: skip); at the first
    /// of --change-sizes.
    #[arg(long)]
    survival_changes: Option<usize>,
    /// CPUs of the generator, the gateway and the sink, `G,W,S` (default: 0,1,2 with three or
    /// more CPUs, else 0,1,0: the sink shares the generator's).
    #[arg(long)]
    cpus: Option<String>,
}

struct Plan {
    sizes: Vec<usize>,
    duration: f64,
    repeats: usize,
    contenders: Vec<String>,
    targets_log2: u32,
    frame_sizes: Vec<usize>,
    change_sizes: Vec<usize>,
    latency_changes: usize,
    survival_changes: usize,
    cpus: Cpus,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, nftables): use perf/run");
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    if online < 2 {
        bail!("needs at least 2 CPUs (one for the gateway alone), found {online}");
    }
    let mut plan = Plan {
        sizes: args.sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![10, 10_000, 100_000]
            } else {
                vec![10, 1_000, 10_000, 100_000, 1_000_000]
            }
        }),
        duration: args.duration.unwrap_or(if args.quick { 2.0 } else { 5.0 }),
        repeats: args.repeats.unwrap_or(if args.quick { 1 } else { 3 }),
        contenders: args
            .contenders
            .clone()
            .unwrap_or_else(|| ALL_CONTENDERS.iter().map(|s| s.to_string()).collect()),
        targets_log2: args.targets_log2.unwrap_or(14),
        frame_sizes: args.frame_sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![64]
            } else {
                vec![64, 1500]
            }
        }),
        change_sizes: Vec::new(),
        latency_changes: args.latency_changes.unwrap_or(100),
        survival_changes: args
            .survival_changes
            .unwrap_or(if args.quick { 200 } else { 1000 }),
        cpus: match &args.cpus {
            Some(s) => Cpus::parse(s, online)?,
            None => Cpus::for_machine(online),
        },
    };
    for &f in &plan.frame_sizes {
        if !(MIN_FRAME..=MAX_FRAME).contains(&f) {
            bail!("frame size {f} out of range {MIN_FRAME}..={MAX_FRAME}");
        }
    }
    if !(1..=256).contains(&args.gen_batch) {
        bail!("--gen-batch {} out of range 1..=256", args.gen_batch);
    }
    if plan.sizes.is_empty() || plan.sizes.contains(&0) {
        bail!("--sizes needs at least one ipBlock count, each above 0");
    }
    if !(plan.duration > 0.0 && plan.duration.is_finite()) || plan.repeats == 0 {
        bail!("--duration must be above 0 and --repeats at least 1");
    }
    plan.change_sizes = match &args.change_sizes {
        Some(c) => {
            if let Some(c) = c.iter().find(|c| !plan.sizes.contains(c)) {
                bail!("--change-sizes {c} is not one of --sizes");
            }
            c.clone()
        }
        // The defaults that this run measures anyway.
        None => (if args.quick {
            vec![10_000]
        } else {
            vec![10_000, 100_000]
        })
        .into_iter()
        .filter(|c| plan.sizes.contains(c))
        .collect(),
    };
    if !(8..=20).contains(&plan.targets_log2) {
        bail!("--targets-log2 {} out of range 8..=20", plan.targets_log2);
    }
    for c in &plan.contenders {
        if !ALL_CONTENDERS.contains(&c.as_str()) {
            bail!(
                "unknown contender {c} (known: {})",
                ALL_CONTENDERS.join(", ")
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut report = Report::new(std::env::args().collect(), &plan_json(&plan, &args));
    let result = run(&args, &plan, &stop, &mut report);
    if let Err(e) = &result {
        report.note(format!("run ended early: {e:#}"));
    }
    let path = report.write(&args.out)?;
    report.print_summary();
    println!("results: {}", path.display());
    result
}

fn plan_json(plan: &Plan, args: &Args) -> serde_json::Value {
    serde_json::json!({
        "quick": args.quick,
        "sizes": plan.sizes,
        "duration_s": plan.duration,
        "repeats": plan.repeats,
        "contenders": plan.contenders,
        "targets": 1u64 << plan.targets_log2,
        "probes": args.probes,
        "linear_max": args.linear_max,
        "frame_sizes": plan.frame_sizes,
        "gen_batch": args.gen_batch,
        "gen_repeat": args.gen_repeat,
        "change_sizes": plan.change_sizes,
        "latency_changes": plan.latency_changes,
        "survival_changes": plan.survival_changes,
        "cpus": {
            "generator": plan.cpus.generator,
            "gateway": plan.cpus.gateway,
            "sink": plan.cpus.sink,
        },
        "policies": POLICIES,
        "pods": PODS,
        "seed": SEED,
    })
}

const POLICIES: usize = 10;
const PODS: usize = 1000;
const SEED: u64 = 6;
/// Frame size of the probes and micro figures (and the plots' and ratios' default).
const FRAME_LEN: usize = 64;
/// The Ethernet minimum without FCS.
const MIN_FRAME: usize = 60;
/// An MTU-sized (1500-byte IP packet) frame.
const MAX_FRAME: usize = 1514;

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

struct Harness<'a> {
    lab: Lab,
    ebpf: Ebpf,
    stop: &'a AtomicBool,
    gen_ifindex: u32,
    cluster_ifindex: u32,
    external_ifindex: u32,
    sink_ifindex: u32,
    /// The generator's frame (its size is the current frame size).
    template: Vec<u8>,
    gen_batch: u32,
    gen_repeat: u32,
    /// Maps taken out of `ebpf`, so they can be read while the generator runs on another thread.
    gen_sent: PerCpuArray<MapData, u64>,
    sink_count: PerCpuArray<MapData, u64>,
    watch: HashMap<MapData, [u32; 3], Watch>,
}

fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn run(args: &Args, plan: &Plan, stop: &AtomicBool, report: &mut Report) -> Result<()> {
    let lab = Lab::new(plan.cpus)?;
    let mut ebpf = Ebpf::load(PERF_OBJECT).context("loading the perf programs")?;
    for name in ["perf_gen", "perf_sink", "perf_pass", "perf_fwd"] {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        p.load()?;
    }
    let gen_ifindex = in_ns(&lab.gen_ns, || lab::ifindex(&lab.gen_dev))?;
    let (cluster_ifindex, external_ifindex) = in_ns(&lab.gw_ns, || {
        Ok::<_, anyhow::Error>((
            lab::ifindex(&lab.cluster_dev)?,
            lab::ifindex(&lab.external_dev)?,
        ))
    })?;
    let sink_ifindex = in_ns(&lab.sink_ns, || lab::ifindex(&lab.sink_dev))?;
    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| anyhow!("no map {name} in the perf object"))
    };
    let gen_sent = PerCpuArray::try_from(take(&mut ebpf, "GEN_SENT")?)?;
    let sink_count = PerCpuArray::try_from(take(&mut ebpf, "SINK_COUNT")?)?;
    let watch = HashMap::try_from(take(&mut ebpf, "WATCH")?)?;
    let mut h = Harness {
        lab,
        ebpf,
        stop,
        gen_ifindex,
        cluster_ifindex,
        external_ifindex,
        sink_ifindex,
        template: Vec::new(),
        gen_batch: args.gen_batch,
        gen_repeat: args.gen_repeat,
        gen_sent,
        sink_count,
        watch,
    };
    h.set_frame(FRAME_LEN)?;
    // The sink: counter program, threaded NAPI on its CPU (the generator's on two cores).
    {
        let sink_ns = h.lab.sink_ns.clone();
        let idx = h.sink_ifindex;
        let p: &mut Xdp = h.ebpf.program_mut("perf_sink").unwrap().try_into()?;
        in_ns(&sink_ns, || p.attach_to_if_index(idx, XdpMode::Driver))?;
        h.lab
            .thread_napi(&sink_ns, &h.lab.sink_dev, h.lab.cpus.sink)?;
    }
    let fwd = [
        h.external_ifindex,
        u32::from_ne_bytes(h.lab.sink_mac[0..4].try_into().unwrap()),
        u32::from_ne_bytes([
            h.lab.sink_mac[4],
            h.lab.sink_mac[5],
            h.lab.external_mac[0],
            h.lab.external_mac[1],
        ]),
        u32::from_ne_bytes(h.lab.external_mac[2..6].try_into().unwrap()),
    ];
    Array::<_, [u32; 4]>::try_from(h.ebpf.map_mut("FWD_CFG").unwrap())?.set(0, fwd, 0)?;
    report.machine_extra("iptables", sh("iptables -V").unwrap_or_default().trim());
    report.machine_extra("nft", sh("nft -v").unwrap_or_default().trim());
    report.machine_extra("ipset", sh("ipset -v").unwrap_or_default().trim());

    let mut bare_done = false;
    for &size in &plan.sizes {
        check(stop)?;
        println!("== {size} ipBlocks");
        let rss0 = rss_kib();
        let t = Instant::now();
        let snap = snapshot(size);
        let tables = compile_gateway(&snap).map_err(|e| anyhow!("compile: {e}"))?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let prefixes = tables.prefix_count();
        let flat = rules::flatten_all(&tables);
        let fig = |contender: &str, metric: &str, value: f64, unit: &str| Figure {
            contender: contender.into(),
            ip_blocks: size,
            prefixes,
            frame_bytes: 0,
            metric: metric.into(),
            value,
            unit: unit.into(),
            samples: Vec::new(),
        };
        report.push(fig("portcullis", "compile_time", compile_ms, "ms"));
        report.push(fig(
            "portcullis",
            "compile_rss_delta",
            rss_kib().saturating_sub(rss0) as f64 * 1024.0,
            "bytes",
        ));
        println!("   compiled {prefixes} prefixes in {compile_ms:.0} ms");
        let mut rng = SmallRng::seed_from_u64(SEED ^ size as u64);
        let (targets, allowed) = make_targets(&tables, &flat, plan.targets_log2, &mut rng);
        report.push(fig("traffic", "allowed_fraction", allowed, "fraction"));
        let probes = make_probes(&tables, &flat, args.probes, &mut rng);
        h.load_targets(&targets)?;
        println!(
            "   {} targets, {:.1}% allowed; {} probes ({} allowed by the reference)",
            targets.len(),
            allowed * 100.0,
            probes.len(),
            probes.iter().filter(|p| p.3).count()
        );
        for c in &plan.contenders {
            check(stop)?;
            let bare = c.starts_with("bare-");
            if bare && bare_done {
                continue;
            }
            if c == "iptables-linear" && size > args.linear_max {
                continue;
            }
            let outcome = h.contender(
                c, size, prefixes, &tables, &flat, &targets, &probes, plan, args, report,
            );
            if let Err(e) = outcome {
                println!("   {c}: FAILED: {e:#}");
                report.note(format!("{c} at {size} ipBlocks failed: {e:#}"));
                h.reset_gateway_ns();
                check(stop)?;
            }
        }
        bare_done = true;
        if plan.change_sizes.contains(&size)
            && (plan.latency_changes > 0 || plan.survival_changes > 0)
        {
            check(stop)?;
            if let Err(e) = h.changes(
                size, prefixes, &snap, &tables, &flat, &targets, plan, report,
            ) {
                println!("   policy changes: FAILED: {e:#}");
                report.note(format!("policy changes at {size} ipBlocks failed: {e:#}"));
                h.reset_gateway_ns();
                check(stop)?;
            }
        }
    }
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// An Ethernet/IPv4/UDP frame of `len` bytes (no UDP checksum).
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(len, 0);
    f
}

/// A probe or packet tuple: (source pod, destination, UDP port, allowed by the reference).
type Probe = (Ipv4Addr, Ipv4Addr, u16, bool);

struct Sampler<'a> {
    tables: &'a GatewayTables,
    pods: Vec<(Ipv4Addr, u32)>,
    /// Per group: ranges and the indices of allowed ones.
    allowed: StdHashMap<u32, Vec<usize>>,
    flat: &'a rules::Flattened,
}

impl<'a> Sampler<'a> {
    fn new(tables: &'a GatewayTables, flat: &'a rules::Flattened) -> Sampler<'a> {
        let mut pods = Vec::new();
        let mut allowed = StdHashMap::new();
        for (g, (ps, f)) in &flat.groups {
            pods.extend(ps.iter().map(|p| (*p, *g)));
            allowed.insert(
                *g,
                f.ranges
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.2.is_some_and(|s| !tables.rule_sets[s as usize].is_empty())
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
    fn sample(&self, rng: &mut SmallRng, p_allowed: f64) -> (Ipv4Addr, Ipv4Addr, u16) {
        let (pod, g) = self.pods[rng.random_range(0..self.pods.len())];
        let f = &self.flat.groups[&g].1;
        let allowed = &self.allowed[&g];
        if !allowed.is_empty() && rng.random_bool(p_allowed) {
            let (a, b, set) = f.ranges[allowed[rng.random_range(0..allowed.len())]];
            let dst = a as u64 + rng.random_range(0..=(b as u64 - a as u64));
            let rs = &self.tables.rule_sets[set.unwrap() as usize];
            let r = rs[rng.random_range(0..rs.len())];
            let port = rng.random_range(r.first..=r.last);
            (pod, Ipv4Addr::from(dst as u32), port)
        } else {
            let first = rng.random_range(portcullis_policy::synth::EXTERNAL_FIRST_OCTETS);
            let dst = (first << 24) | (rng.random::<u32>() >> 8);
            let ports: Vec<u16> = allowed
                .iter()
                .flat_map(|i| {
                    self.tables.rule_sets[f.ranges[*i].2.unwrap() as usize]
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
            (pod, Ipv4Addr::from(dst), port)
        }
    }

    /// The host bits of the largest aligned block around `dst` inside one flattened range of
    /// `pod`'s group: every address of it has `dst`'s verdict (0 for unselected pods).
    fn same_verdict_bits(&self, pod: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let Some(g) = self
            .tables
            .endpoints
            .get(&(Direction::Egress, IpAddr::V4(pod)))
        else {
            return 0;
        };
        let f = &self.flat.groups[g].1;
        let a = u32::from(dst);
        let i = f.ranges.partition_point(|r| r.1 < a);
        let Some(&(lo, hi, _)) = f.ranges.get(i).filter(|r| r.0 <= a) else {
            return 0;
        };
        let mut host: u32 = 0;
        while host != u32::MAX {
            let wider = (host << 1) | 1;
            if (a & !wider) < lo || (a | wider) > hi {
                break;
            }
            host = wider;
        }
        host
    }

    /// The flattened table's verdict (equal to `GatewayTables::allows`, which the probes use;
    /// this one is a binary search, for the many generator tuples).
    fn allows(&self, pod: Ipv4Addr, dst: Ipv4Addr, port: u16) -> bool {
        let Some(g) = self
            .tables
            .endpoints
            .get(&(Direction::Egress, IpAddr::V4(pod)))
        else {
            return true;
        };
        let f = &self.flat.groups[g].1;
        let a = u32::from(dst);
        let i = f.ranges.partition_point(|r| r.1 < a);
        f.ranges.get(i).and_then(|r| r.2).is_some_and(|s| {
            self.tables.rule_sets[s as usize]
                .iter()
                .any(|r| r.matches(17, port))
        })
    }
}

fn make_targets(
    tables: &GatewayTables,
    flat: &rules::Flattened,
    log2: u32,
    rng: &mut SmallRng,
) -> (Vec<Target>, f64) {
    let s = Sampler::new(tables, flat);
    let n = 1usize << log2;
    let mut allowed = 0usize;
    let targets = (0..n)
        .map(|i| {
            let (src, dst, port) = s.sample(rng, 0.9);
            allowed += s.allows(src, dst, port) as usize;
            let host = s.same_verdict_bits(src, dst);
            Target {
                src: u32::from_ne_bytes(src.octets()),
                dst: u32::from_ne_bytes((u32::from(dst) & !host).to_be_bytes()),
                dst_random: u32::from_ne_bytes(host.to_be_bytes()),
                sport: (20_000 + (i % 40_000) as u16).to_be(),
                dport: port.to_be(),
            }
        })
        .collect();
    (targets, allowed as f64 / n as f64)
}

fn make_probes(
    tables: &GatewayTables,
    flat: &rules::Flattened,
    n: usize,
    rng: &mut SmallRng,
) -> Vec<Probe> {
    let s = Sampler::new(tables, flat);
    (0..n)
        .map(|i| {
            let (src, dst, port) = s.sample(rng, if i % 2 == 0 { 1.0 } else { 0.0 });
            let reference = tables.allows(
                Direction::Egress,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                17,
                port,
            );
            (src, dst, port, reference)
        })
        .collect()
}

/// What is attached and loaded for one contender; dropped (detached, flushed) after it.
enum Setup {
    Programs(Vec<(&'static str, aya::programs::xdp::XdpLinkId)>),
    Portcullis(Box<Gateway>),
}

struct Sample {
    offered: f64,
    forwarded: f64,
    cpu: Option<f64>,
    /// Frames/s the generator's veth could not hand to the gateway (its ring full).
    lost_before: f64,
    /// Frames/s the gateway's external leg could not hand to the sink.
    lost_after: f64,
}

/// The generator from the harness's fields (borrowing only `ebpf`, so the taken maps can be read
/// while it runs on another thread).
fn generator_of<'e>(
    ebpf: &'e mut Ebpf,
    lab: &Lab,
    template: &[u8],
    ifindex: u32,
    batch: u32,
    repeat: u32,
) -> Result<Generator<'e>> {
    let prog: &mut Xdp = ebpf.program_mut("perf_gen").unwrap().try_into()?;
    Ok(Generator {
        prog,
        ns: lab.gen_ns.clone(),
        cpu: lab.cpus.generator,
        template: template.to_vec(),
        ifindex,
        batch,
        repeat,
    })
}

/// `perf_gen` run through `BPF_PROG_TEST_RUN` with live frames, in the generator namespace.
struct Generator<'p> {
    prog: &'p mut Xdp,
    ns: String,
    cpu: usize,
    template: Vec<u8>,
    ifindex: u32,
    /// Frames per live-frames batch.
    batch: u32,
    /// Frames per call (0: sized to the time left).
    repeat: u32,
}

impl Generator<'_> {
    /// Runs for `secs` (one call of `repeat` frames when `secs` is 0) on its CPU, or until `stop`.
    ///
    /// Every test-run call waits for two RCU grace periods (the kernel swaps the XDP dispatcher
    /// in and out around the run: about 10 ms each on this VM, measured with `perf`), so with a
    /// fixed 64k-frame call a third of the generator's time was spent asleep. Calls are sized
    /// from the rate of the previous one to last until the deadline (at most 1 s, so a stop
    /// request is seen in time).
    fn run(&mut self, secs: f64, stop: &AtomicBool) -> Result<()> {
        let prog = &mut *self.prog;
        let (template, ifindex, batch, fixed, cpu) = (
            &self.template,
            self.ifindex,
            self.batch,
            self.repeat,
            self.cpu,
        );
        in_ns(&self.ns, || {
            lab::pin_current_thread(cpu);
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut repeat = if fixed > 0 { fixed } else { 1 << 16 };
            loop {
                let t = Instant::now();
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(template),
                    ctx_in: Some(&ctx),
                    repeat,
                    attrs: TestRunAttrs::new().xdp_live_frames(batch),
                    ..Default::default()
                });
                match r {
                    Ok(_) => {}
                    Err(e) if stop.load(Ordering::Relaxed) => {
                        return Err(anyhow!("interrupted ({e})"))
                    }
                    Err(e) => return Err(anyhow!("live-frames test run: {e}")),
                }
                let now = Instant::now();
                if secs <= 0.0 || stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(now).as_secs_f64();
                if left < 0.005 {
                    return Ok(());
                }
                if fixed == 0 {
                    let rate = repeat as f64 / (now - t).as_secs_f64().max(1e-6);
                    repeat = (rate * left.min(1.0)).clamp(4096.0, u32::MAX as f64) as u32;
                }
            }
        })
    }
}

impl Harness<'_> {
    fn load_targets(&mut self, targets: &[Target]) -> Result<()> {
        let mut map = Array::<_, Target>::try_from(self.ebpf.map_mut("TARGETS").unwrap())?;
        for (i, t) in targets.iter().enumerate() {
            map.set(i as u32, *t, 0)?;
        }
        Ok(())
    }

    fn set_gen(&mut self, cfg: GenConfig) -> Result<()> {
        Array::<_, GenConfig>::try_from(self.ebpf.map_mut("GEN_CFG").unwrap())?.set(0, cfg, 0)?;
        Ok(())
    }

    /// A generator setting over the first `mask + 1` targets, new flows or not, paced or not.
    fn flood_config(&self, mask: u32, new_flows: bool, gap_ns: u32) -> GenConfig {
        GenConfig {
            ifindex: self.gen_ifindex,
            mask,
            flags: if new_flows { GEN_RANDOM_SPORT } else { 0 },
            index: 0,
            gap_ns,
            pad: 0,
        }
    }

    /// Switches the generator to `len`-byte frames: the template and the header it rewrites.
    fn set_frame(&mut self, len: usize) -> Result<()> {
        self.template = udp_frame(
            self.lab.gen_mac,
            self.lab.cluster_mac,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            0,
            0,
            len,
        );
        let mut hdr = [0u32; 11];
        for (i, w) in hdr.iter_mut().enumerate() {
            *w = u32::from_ne_bytes(self.template[i * 4..i * 4 + 4].try_into().unwrap());
        }
        Array::<_, [u32; 11]>::try_from(self.ebpf.map_mut("GEN_HDR").unwrap())?.set(0, hdr, 0)?;
        Ok(())
    }

    fn sink_count(&self) -> Result<u64> {
        Ok(self.sink_count.get(&0, 0)?.iter().sum())
    }

    fn gen_sent(&self) -> Result<u64> {
        Ok(self.gen_sent.get(&0, 0)?.iter().sum())
    }

    fn generator(&mut self) -> Result<Generator<'_>> {
        generator_of(
            &mut self.ebpf,
            &self.lab,
            &self.template,
            self.gen_ifindex,
            self.gen_batch,
            self.gen_repeat,
        )
    }

    /// Runs the generator for `secs` on its CPU.
    fn generate(&mut self, secs: f64) -> Result<()> {
        let stop = self.stop;
        self.generator()?.run(secs, stop)
    }

    /// Frames a veth failed to pass to its peer so far: its `tx dropped` (the kernel adds the
    /// XDP frames its peer's full ring refused, `xdp_xmit_errors` in `ethtool -S`, to the skbs
    /// dropped on transmit).
    fn veth_drops(ns: &str, dev: &str) -> Result<u64> {
        let link: serde_json::Value =
            serde_json::from_str(&sh(&format!("ip -n {ns} -s -j link show dev {dev}"))?)?;
        link[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .with_context(|| format!("no tx dropped counter for {dev}"))
    }

    fn drops(&self) -> Result<(u64, u64)> {
        Ok((
            Self::veth_drops(&self.lab.gen_ns, &self.lab.gen_dev)?,
            Self::veth_drops(&self.lab.gw_ns, &self.lab.external_dev)?,
        ))
    }

    fn measure(&mut self, secs: f64, napi: Option<i32>) -> Result<Sample> {
        let d0 = self.drops()?;
        let c0 = self.sink_count()?;
        let s0 = self.gen_sent()?;
        let cpu0 = napi.and_then(lab::thread_cpu_ns);
        let t = Instant::now();
        self.generate(secs)?;
        let elapsed = t.elapsed().as_secs_f64();
        let cpu1 = napi.and_then(lab::thread_cpu_ns);
        std::thread::sleep(Duration::from_millis(30));
        let c1 = self.sink_count()?;
        let s1 = self.gen_sent()?;
        let d1 = self.drops()?;
        Ok(Sample {
            offered: (s1 - s0) as f64 / elapsed,
            forwarded: (c1 - c0) as f64 / elapsed,
            lost_before: d1.0.saturating_sub(d0.0) as f64 / elapsed,
            lost_after: d1.1.saturating_sub(d0.1) as f64 / elapsed,
            cpu: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some((b - a) as f64 / (elapsed * 1e9)),
                _ => None,
            },
        })
    }

    /// Sends every probe once (fixed source port, 64-byte frames, in runs of 64 frames so the
    /// veth rings never overflow) and reports which reached the sink.
    fn probe(&mut self, probes: &[Probe], targets: &[Target]) -> Result<Vec<bool>> {
        let n = probes.len().min(targets.len());
        let probe_targets: Vec<Target> = probes[..n]
            .iter()
            .enumerate()
            .map(|(i, (s, d, p, _))| Target {
                src: u32::from_ne_bytes(s.octets()),
                dst: u32::from_ne_bytes(d.octets()),
                dst_random: 0,
                sport: (61_000 + i as u16).to_be(),
                dport: p.to_be(),
            })
            .collect();
        self.load_targets(&probe_targets)?;
        {
            let mut seen =
                HashMap::<_, [u32; 3], u64>::try_from(self.ebpf.map_mut("SEEN").unwrap())?;
            let keys: Vec<[u32; 3]> = seen.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                let _ = seen.remove(&k);
            }
        }
        let frame = self.template.len();
        self.set_frame(FRAME_LEN)?;
        self.set_sink_flags(SINK_RECORD)?;
        const RUN: usize = 64;
        for first in (0..n).step_by(RUN) {
            let count = RUN.min(n - first);
            Array::<_, u32>::try_from(self.ebpf.map_mut("GEN_SEQ").unwrap())?.set(0, 0, 0)?;
            self.set_gen(GenConfig {
                ifindex: self.gen_ifindex,
                mask: 0,
                flags: GEN_PROBE,
                index: first as u32,
                gap_ns: 0,
                pad: 0,
            })?;
            let stop = self.stop;
            let mut g = self.generator()?;
            g.repeat = count as u32;
            g.batch = count as u32;
            g.run(0.0, stop)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.set_sink_flags(0)?;
        self.set_frame(frame)?;
        let seen = HashMap::<_, [u32; 3], u64>::try_from(self.ebpf.map("SEEN").unwrap())?;
        let arrived = probe_targets
            .iter()
            .map(|t| seen.get(&[t.src, t.dst, t.dport as u32], 0).is_ok())
            .collect();
        self.load_targets(&targets[..n])?;
        Ok(arrived)
    }

    fn set_sink_flags(&mut self, flags: u32) -> Result<()> {
        Array::<_, u32>::try_from(self.ebpf.map_mut("SINK_CFG").unwrap())?.set(0, flags, 0)?;
        Ok(())
    }

    fn attach(
        &mut self,
        name: &'static str,
        ifindex: u32,
    ) -> Result<(&'static str, aya::programs::xdp::XdpLinkId)> {
        let ns = self.lab.gw_ns.clone();
        let p: &mut Xdp = self.ebpf.program_mut(name).unwrap().try_into()?;
        let id = in_ns(&ns, || p.attach_to_if_index(ifindex, XdpMode::Driver))?;
        Ok((name, id))
    }

    fn detach(&mut self, setup: Setup) -> Result<()> {
        match setup {
            Setup::Programs(links) => {
                for (name, id) in links {
                    let p: &mut Xdp = self.ebpf.program_mut(name).unwrap().try_into()?;
                    p.detach(id)?;
                }
            }
            Setup::Portcullis(gw) => drop(gw),
        }
        Ok(())
    }

    /// Removes any netfilter state of a contender from the gateway namespace.
    fn reset_gateway_ns(&self) {
        let ns = &self.lab.gw_ns;
        let _ = sh(&format!(
            "ip netns exec {ns} nft delete table ip pcperf 2>/dev/null; \
             ip netns exec {ns} iptables -F FORWARD 2>/dev/null; \
             ip netns exec {ns} iptables -F 2>/dev/null; ip netns exec {ns} iptables -X 2>/dev/null; \
             ip netns exec {ns} nft flush ruleset 2>/dev/null; \
             ip netns exec {ns} ipset destroy 2>/dev/null; true"
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn contender(
        &mut self,
        name: &str,
        size: usize,
        prefixes: usize,
        tables: &GatewayTables,
        flat: &rules::Flattened,
        targets: &[Target],
        probes: &[Probe],
        plan: &Plan,
        args: &Args,
        report: &mut Report,
    ) -> Result<()> {
        let (rules_size, rules_prefixes) = if name.starts_with("bare-") {
            (0, 0)
        } else {
            (size, prefixes)
        };
        let fig = |metric: &str, value: f64, unit: &str| Figure {
            contender: name.into(),
            ip_blocks: rules_size,
            prefixes: rules_prefixes,
            frame_bytes: 0,
            metric: metric.into(),
            value,
            unit: unit.into(),
            samples: Vec::new(),
        };
        let gw_ns = self.lab.gw_ns.clone();
        let (c, e) = (self.cluster_ifindex, self.external_ifindex);
        let t = Instant::now();
        let setup = match name {
            "bare-pass" | "nftables" | "nftables-ct" | "iptables-ipset" | "iptables-linear" => {
                let links = vec![self.attach("perf_pass", c)?, self.attach("perf_pass", e)?];
                let iface = self.lab.cluster_dev.clone();
                let iface = iface.as_str();
                let tag = "pcp";
                let t = Instant::now();
                let loaded = (|| -> Result<()> {
                    match name {
                        "nftables" | "nftables-ct" => {
                            let stateful = name == "nftables-ct";
                            let (script, elements) = rules::nftables(tables, flat, iface, stateful);
                            let path = write_tmp("nft", &script)?;
                            sh(&format!("ip netns exec {gw_ns} nft -f {}", path.display()))?;
                            report.push(fig("rule_elements", elements as f64, "intervals"));
                        }
                        "iptables-ipset" => {
                            let (sets, ipt, entries) = rules::ipset(tables, flat, iface, tag);
                            let s = write_tmp("ipset", &sets)?;
                            let i = write_tmp("ipt", &ipt)?;
                            sh(&format!(
                            "ip netns exec {gw_ns} ipset restore -f {} && ip netns exec {gw_ns} iptables-restore {}",
                            s.display(),
                            i.display()
                        ))?;
                            report.push(fig("rule_elements", entries as f64, "set entries"));
                            let mem: f64 = sh(&format!("ip netns exec {gw_ns} ipset list -t"))?
                                .lines()
                                .filter_map(|l| l.strip_prefix("Size in memory: "))
                                .filter_map(|v| v.trim().parse::<f64>().ok())
                                .sum();
                            report.push(fig("kernel_memory", mem, "bytes"));
                        }
                        "iptables-linear" => {
                            let (sets, ipt, count) = rules::linear(tables, flat, iface, tag);
                            let s = write_tmp("ipset", &sets)?;
                            let i = write_tmp("ipt", &ipt)?;
                            sh(&format!(
                            "ip netns exec {gw_ns} ipset restore -f {} && ip netns exec {gw_ns} iptables-restore {}",
                            s.display(),
                            i.display()
                        ))?;
                            report.push(fig("rule_elements", count as f64, "rules"));
                        }
                        _ => {}
                    }
                    Ok(())
                })();
                if let Err(e) = loaded {
                    self.detach(Setup::Programs(links))?;
                    self.reset_gateway_ns();
                    return Err(e);
                }
                if name != "bare-pass" {
                    report.push(fig("load_time", t.elapsed().as_secs_f64() * 1e3, "ms"));
                }
                Setup::Programs(links)
            }
            "bare-redirect" => {
                let links = vec![self.attach("perf_fwd", c)?, self.attach("perf_pass", e)?];
                Setup::Programs(links)
            }
            "bare-drop" => Setup::Programs(vec![self.attach("perf_sink", c)?]),
            _ => {
                let forward = if name == "portcullis-kernel" {
                    ForwardMode::Kernel
                } else {
                    ForwardMode::Xdp
                };
                let opts = GatewayOptions {
                    cluster_iface: self.lab.cluster_dev.clone(),
                    external_iface: self.lab.external_dev.clone(),
                    forward,
                    ..Default::default()
                };
                let rss0 = rss_kib();
                let t = Instant::now();
                let mut gw = in_ns(&gw_ns, || Gateway::load(opts))?;
                let load_ms = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let stats = gw.apply(tables)?;
                let apply_ms = t.elapsed().as_secs_f64() * 1e3;
                if name == "portcullis-xdp" {
                    report.push(fig("program_load_time", load_ms, "ms"));
                    report.push(fig("load_time", apply_ms, "ms"));
                    report.push(fig(
                        "apply_write_time",
                        stats.write.as_secs_f64() * 1e3,
                        "ms",
                    ));
                    report.push(fig(
                        "user_rss_delta",
                        (rss_kib().saturating_sub(rss0) * 1024) as f64,
                        "bytes",
                    ));
                    report.push(fig("user_rss", (rss_kib() * 1024) as f64, "bytes"));
                    match map_bytes(&gw_ns, &self.lab.cluster_dev) {
                        Ok((total, prefix_map)) => {
                            report.push(fig("kernel_memory", total as f64, "bytes"));
                            report.push(fig("prefix_map_memory", prefix_map as f64, "bytes"));
                            report.push(fig(
                                "prefix_map_bytes_per_prefix",
                                prefix_map as f64 / prefixes.max(1) as f64,
                                "bytes",
                            ));
                        }
                        Err(e) => report.note(format!("map memory at {size}: {e:#}")),
                    }
                    if !args.no_micro {
                        self.micro(&mut gw, size, prefixes, targets, probes, report)?;
                    }
                }
                Setup::Portcullis(Box::new(gw))
            }
        };
        let setup_ms = t.elapsed().as_secs_f64() * 1e3;
        let napi = self
            .lab
            .thread_napi(&gw_ns, &self.lab.cluster_dev, self.lab.cpus.gateway)?;
        let result = (|| -> Result<()> {
            // Verdict agreement with the reference (bare contenders enforce nothing: skipped).
            if !name.starts_with("bare-") && !probes.is_empty() {
                let arrived = self.probe(probes, targets)?;
                let agree = arrived
                    .iter()
                    .zip(probes)
                    .filter(|(a, p)| **a == p.3)
                    .count();
                report.push(fig(
                    "verdict_agreement",
                    agree as f64 / arrived.len() as f64,
                    "fraction",
                ));
                report.push(fig("verdict_probes", arrived.len() as f64, "probes"));
                println!("   {name}: verdicts agree {agree}/{}", arrived.len());
            }
            let established = name == "portcullis-xdp-established";
            let mask = if established {
                (targets.len().min(1 << 16) - 1) as u32
            } else {
                (targets.len() - 1) as u32
            };
            let cfg = self.flood_config(mask, !established, 0);
            self.set_gen(cfg)?;
            for &frame in &plan.frame_sizes {
                self.set_frame(frame)?;
                // Warm-up (fills the flow table for the established case).
                self.measure(if established { 1.0 } else { 0.3 }, napi)?;
                let mut samples = Vec::new();
                for _ in 0..plan.repeats {
                    check(self.stop)?;
                    samples.push(self.measure(plan.duration, napi)?);
                }
                self.push_throughput(name, rules_size, rules_prefixes, frame, &samples, report);
            }
            self.set_frame(FRAME_LEN)?;
            Ok(())
        })();
        report.push(fig("setup_time", setup_ms, "ms"));
        self.detach(setup)?;
        self.reset_gateway_ns();
        result
    }

    /// The throughput figures of one contender, size and frame size from its samples.
    fn push_throughput(
        &self,
        name: &str,
        ip_blocks: usize,
        prefixes: usize,
        frame: usize,
        samples: &[Sample],
        report: &mut Report,
    ) {
        // Every figure is the median of its per-repeat values, which the JSON keeps beside it.
        let median_of = |metric: &str, unit: &str, values: &[f64]| Figure {
            contender: name.into(),
            ip_blocks,
            prefixes,
            frame_bytes: frame,
            metric: metric.into(),
            value: report::median(values),
            unit: unit.into(),
            samples: values.to_vec(),
        };
        let fwd: Vec<f64> = samples.iter().map(|s| s.forwarded).collect();
        let off: Vec<f64> = samples.iter().map(|s| s.offered).collect();
        let before: Vec<f64> = samples.iter().map(|s| s.lost_before).collect();
        let after: Vec<f64> = samples.iter().map(|s| s.lost_after).collect();
        let bps: Vec<f64> = fwd.iter().map(|f| f * frame as f64 * 8.0).collect();
        // What reached the gateway and went neither to the sink nor into a full ring after it:
        // the gateway's drops (policy, or anything else it refused), from the same counters.
        let dropped: Vec<f64> = samples
            .iter()
            .map(|s| (s.offered - s.lost_before - s.forwarded - s.lost_after).max(0.0))
            .collect();
        let dropped_fraction: Vec<f64> = samples
            .iter()
            .zip(&dropped)
            .filter(|(s, _)| s.offered - s.lost_before > 0.0)
            .map(|(s, d)| d / (s.offered - s.lost_before))
            .collect();
        let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu).collect();
        // Forwarded packets per second of gateway CPU: the efficiency figure, less sensitive
        // than the rate to a generator starved by a shared machine.
        let per_core: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.cpu.filter(|c| *c > 0.0).map(|c| s.forwarded / c))
            .collect();
        for (metric, unit, values) in [
            ("forwarded_pps", "packets/s", &fwd),
            ("forwarded_bps", "bits/s", &bps),
            ("offered_pps", "packets/s", &off),
            ("lost_before_gateway_pps", "packets/s", &before),
            ("lost_after_gateway_pps", "packets/s", &after),
            ("dropped_pps", "packets/s", &dropped),
            ("dropped_fraction", "fraction", &dropped_fraction),
            ("gateway_cpu", "cores", &cpu),
            ("forwarded_per_core", "packets/cpu-s", &per_core),
        ] {
            // No value (no CPU figure for this contender, nothing received): no figure.
            if !values.is_empty() {
                report.push(median_of(metric, unit, values));
            }
        }
        println!(
            "   {name} {frame} B: forwarded {:.3} Mpps (samples {:?}), offered {:.2} Mpps (lost before the gateway {:.2}, after it {:.2}), dropped by the gateway {:.2} Mpps ({:.1}% of what it received), gateway CPU {}",
            report::median(&fwd) / 1e6,
            fwd.iter().map(|v| (v / 1e4).round() / 100.0).collect::<Vec<_>>(),
            report::median(&off) / 1e6,
            report::median(&before) / 1e6,
            report::median(&after) / 1e6,
            report::median(&dropped) / 1e6,
            report::median(&dropped_fraction) * 100.0,
            if cpu.is_empty() {
                "n/a".to_string()
            } else {
                format!("{:.2} cores", report::median(&cpu))
            }
        );
    }

    /// BPF_PROG_TEST_RUN ns/packet: bare `xdp_pass` vs the gateway on an established flow, a
    /// new allowed flow and a denied packet (median of 5 runs each).
    fn micro(
        &mut self,
        gw: &mut Gateway,
        size: usize,
        prefixes: usize,
        targets: &[Target],
        probes: &[Probe],
        report: &mut Report,
    ) -> Result<()> {
        const REPEAT: u32 = 200_000;
        let allowed = probes.iter().find(|p| p.3);
        let denied = probes.iter().find(|p| !p.3);
        let _ = targets;
        let (Some(a), Some(d)) = (allowed, denied) else {
            report.note(format!("micro at {size}: no allowed or no denied probe"));
            return Ok(());
        };
        let (gm, cm) = (self.lab.gen_mac, self.lab.cluster_mac);
        let c = self.cluster_ifindex;
        let gw_ns = self.lab.gw_ns.clone();
        let results = in_ns(&gw_ns, || -> Result<Vec<(&'static str, f64)>> {
            let pkt_a = udp_frame(gm, cm, a.0, a.1, 40_000, a.2, FRAME_LEN);
            let pkt_d = udp_frame(gm, cm, d.0, d.1, 40_000, d.2, FRAME_LEN);
            let ns = |o: portcullis_gateway::TestRunOutcome| o.duration.as_nanos() as f64;
            let mut out = Vec::new();
            let mut runs: StdHashMap<&str, Vec<f64>> = StdHashMap::new();
            for round in 0..5u16 {
                runs.entry("bare_xdp_pass")
                    .or_default()
                    .push(ns(gw.test_run(TestProgram::Pass, c, &pkt_a, REPEAT)?));
                gw.test_run(TestProgram::Gateway, c, &pkt_a, 1)?;
                runs.entry("established_flow")
                    .or_default()
                    .push(ns(gw.test_run(TestProgram::Gateway, c, &pkt_a, REPEAT)?));
                runs.entry("new_flow_denied")
                    .or_default()
                    .push(ns(gw.test_run(TestProgram::Gateway, c, &pkt_d, REPEAT)?));
                // A new flow per run: repeat 1 with a fresh source port each time (so the
                // kernel's per-call timer overhead is included; `bare_xdp_pass_repeat1` shows it).
                // The established and denied packets are measured the same way in between, so
                // the three repeat-1 figures differ only in the path taken, not in how warm the
                // caches are: their difference is what creating a flow costs.
                let mut sums = [0.0f64; 4];
                const K: u16 = 2000;
                for i in 0..K {
                    let p = udp_frame(gm, cm, a.0, a.1, 1024 + round * K + i, a.2, FRAME_LEN);
                    sums[0] += ns(gw.test_run(TestProgram::Gateway, c, &p, 1)?);
                    sums[1] += ns(gw.test_run(TestProgram::Pass, c, &p, 1)?);
                    sums[2] += ns(gw.test_run(TestProgram::Gateway, c, &pkt_a, 1)?);
                    sums[3] += ns(gw.test_run(TestProgram::Gateway, c, &pkt_d, 1)?);
                }
                for (k, sum) in [
                    "new_flow_allowed",
                    "bare_xdp_pass_repeat1",
                    "established_flow_repeat1",
                    "new_flow_denied_repeat1",
                ]
                .into_iter()
                .zip(sums)
                {
                    runs.entry(k).or_default().push(sum / K as f64);
                }
            }
            for k in [
                "bare_xdp_pass",
                "established_flow",
                "new_flow_allowed",
                "new_flow_denied",
                "bare_xdp_pass_repeat1",
                "established_flow_repeat1",
                "new_flow_denied_repeat1",
            ] {
                out.push((k, report::median(&runs[k])));
            }
            Ok(out)
        })?;
        let mut line = format!("   micro ns/packet at {size}:");
        for (k, v) in results {
            line.push_str(&format!(" {k} {v:.1} |"));
            report.push(Figure {
                contender: if k.starts_with("bare") {
                    "bare".into()
                } else {
                    "portcullis".into()
                },
                ip_blocks: size,
                prefixes,
                frame_bytes: FRAME_LEN,
                metric: format!("test_run_{k}"),
                value: v,
                unit: "ns/packet".into(),
                samples: Vec::new(),
            });
        }
        println!("{line}");
        Ok(())
    }
}

fn write_tmp(kind: &str, content: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}-{kind}.txt", Lab::prefix()));
    std::fs::write(&path, content)?;
    Ok(path)
}

/// (all maps of the program attached to `dev`, its PREFIXES map) memlock bytes, from bpftool.
fn map_bytes(ns: &str, dev: &str) -> Result<(u64, u64)> {
    let net: serde_json::Value = serde_json::from_str(&sh(&format!(
        "ip netns exec {ns} bpftool -j net show dev {dev}"
    ))?)?;
    let id = net
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["xdp"].as_array())
        .flatten()
        .find_map(|x| x["id"].as_u64())
        .context("no XDP program id from bpftool")?;
    let prog: serde_json::Value =
        serde_json::from_str(&sh(&format!("bpftool -j prog show id {id}"))?)?;
    let (mut total, mut prefix) = (0, 0);
    for m in prog["map_ids"].as_array().context("no map_ids")? {
        let map: serde_json::Value = serde_json::from_str(&sh(&format!(
            "bpftool -j map show id {}",
            m.as_u64().unwrap_or(0)
        ))?)?;
        let bytes = map["bytes_memlock"].as_u64().unwrap_or(0);
        total += bytes;
        if map["name"].as_str() == Some("PREFIXES") {
            prefix = bytes;
        }
    }
    Ok((total, prefix))
}

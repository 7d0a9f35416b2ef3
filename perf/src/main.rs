//! `portcullis-perf`: the benchmark harness behind `perf/run` (see perf/README.md).
//!
//! Topology: generator netns → gateway netns (cluster leg, external leg) → sink netns, made and
//! torn down by [`lab::Lab`]. Traffic: 64-byte IPv4/UDP frames produced by `perf_gen` run through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (redirected out of the generator's veth),
//! random pod sources and destinations drawn from the policies' allowed ranges (mostly) or the
//! whole external range. Counted by `perf_sink` (XDP) on the sink. The gateway's cluster leg runs
//! threaded NAPI pinned to CPU 1, the generator and the sink's NAPI thread share CPU 0, so the
//! gateway's work is one core and its CPU time is that kthread's.
mod lab;
mod report;
mod rules;

use std::collections::HashMap as StdHashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::Ebpf;
use clap::Parser;
use lab::{in_ns, sh, Lab};
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
}
// SAFETY: plain old data, same layout as the kernel side.
unsafe impl aya::Pod for GenConfig {}

const GEN_RANDOM_SPORT: u32 = 1;
const GEN_PROBE: u32 = 2;

pub const ALL_CONTENDERS: [&str; 8] = [
    "bare-pass",
    "bare-redirect",
    "portcullis-xdp",
    "portcullis-xdp-established",
    "portcullis-kernel",
    "nftables",
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
}

struct Plan {
    sizes: Vec<usize>,
    duration: f64,
    repeats: usize,
    contenders: Vec<String>,
    targets_log2: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, nftables): use perf/run");
    }
    let plan = Plan {
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
        targets_log2: args
            .targets_log2
            .unwrap_or(if args.quick { 16 } else { 18 }),
    };
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
        "frame_bytes": FRAME_LEN,
        "policies": POLICIES,
        "pods": PODS,
        "seed": SEED,
    })
}

const POLICIES: usize = 10;
const PODS: usize = 1000;
const SEED: u64 = 6;
const FRAME_LEN: usize = 64;

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
    template: Vec<u8>,
}

fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn run(args: &Args, plan: &Plan, stop: &AtomicBool, report: &mut Report) -> Result<()> {
    let lab = Lab::new()?;
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
    let template = template_frame(lab.gen_mac, lab.cluster_mac);
    let mut h = Harness {
        lab,
        ebpf,
        stop,
        gen_ifindex,
        cluster_ifindex,
        external_ifindex,
        sink_ifindex,
        template,
    };
    // The sink: counter program, threaded NAPI on CPU 0 (with the generator).
    {
        let sink_ns = h.lab.sink_ns.clone();
        let idx = h.sink_ifindex;
        let p: &mut Xdp = h.ebpf.program_mut("perf_sink").unwrap().try_into()?;
        in_ns(&sink_ns, || p.attach_to_if_index(idx, XdpMode::Driver))?;
        h.lab.thread_napi(&sink_ns, &h.lab.sink_dev, 0)?;
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
    let mut hdr = [0u32; 11];
    for (i, w) in hdr.iter_mut().enumerate() {
        *w = u32::from_ne_bytes(h.template[i * 4..i * 4 + 4].try_into().unwrap());
    }
    Array::<_, [u32; 11]>::try_from(h.ebpf.map_mut("GEN_HDR").unwrap())?.set(0, hdr, 0)?;
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

/// Ethernet/IPv4/UDP frame of `FRAME_LEN` bytes; the generator fills addresses and ports.
fn template_frame(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    udp_frame(
        src_mac,
        dst_mac,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        0,
        0,
    )
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (FRAME_LEN - 14) as u16;
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
    f.resize(FRAME_LEN, 0);
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
            Target {
                src: u32::from_ne_bytes(src.octets()),
                dst: u32::from_ne_bytes(dst.octets()),
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

    fn sink_count(&self) -> Result<u64> {
        let m = PerCpuArray::<_, u64>::try_from(self.ebpf.map("SINK_COUNT").unwrap())?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// Runs the generator for `secs` on CPU 0; returns frames generated.
    fn generate(&mut self, secs: f64) -> Result<u64> {
        let ns = self.lab.gen_ns.clone();
        let template = self.template.clone();
        let ifindex = self.gen_ifindex;
        let stop = self.stop;
        let prog: &mut Xdp = self.ebpf.program_mut("perf_gen").unwrap().try_into()?;
        in_ns(&ns, || {
            lab::pin_current_thread(0);
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut sent = 0u64;
            let repeat = if secs <= 0.0 { 1 } else { 1 << 16 };
            loop {
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(&template),
                    ctx_in: Some(&ctx),
                    repeat,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..Default::default()
                });
                match r {
                    Ok(_) => sent += repeat as u64,
                    Err(e) if stop.load(Ordering::Relaxed) => {
                        return Err(anyhow!("interrupted ({e})"))
                    }
                    Err(e) => return Err(anyhow!("live-frames test run: {e}")),
                }
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return Ok(sent);
                }
            }
        })
    }

    fn measure(&mut self, secs: f64, napi: Option<i32>) -> Result<Sample> {
        let c0 = self.sink_count()?;
        let cpu0 = napi.and_then(lab::thread_cpu_ns);
        let t = Instant::now();
        let sent = self.generate(secs)?;
        let elapsed = t.elapsed().as_secs_f64();
        let cpu1 = napi.and_then(lab::thread_cpu_ns);
        std::thread::sleep(Duration::from_millis(30));
        let c1 = self.sink_count()?;
        Ok(Sample {
            offered: sent as f64 / elapsed,
            forwarded: (c1 - c0) as f64 / elapsed,
            cpu: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some((b - a) as f64 / (elapsed * 1e9)),
                _ => None,
            },
        })
    }

    /// Sends every probe once (fixed source port) and reports which reached the sink.
    fn probe(&mut self, probes: &[Probe], targets: &[Target]) -> Result<Vec<bool>> {
        let n = probes.len().min(targets.len());
        let probe_targets: Vec<Target> = probes[..n]
            .iter()
            .enumerate()
            .map(|(i, (s, d, p, _))| Target {
                src: u32::from_ne_bytes(s.octets()),
                dst: u32::from_ne_bytes(d.octets()),
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
        Array::<_, u32>::try_from(self.ebpf.map_mut("SINK_CFG").unwrap())?.set(0, 1, 0)?;
        for i in 0..n {
            self.set_gen(GenConfig {
                ifindex: self.gen_ifindex,
                mask: 0,
                flags: GEN_PROBE,
                index: i as u32,
            })?;
            self.generate(0.0)?;
            std::thread::sleep(Duration::from_micros(300));
        }
        std::thread::sleep(Duration::from_millis(300));
        Array::<_, u32>::try_from(self.ebpf.map_mut("SINK_CFG").unwrap())?.set(0, 0, 0)?;
        let seen = HashMap::<_, [u32; 3], u64>::try_from(self.ebpf.map("SEEN").unwrap())?;
        let arrived = probe_targets
            .iter()
            .map(|t| seen.get(&[t.src, t.dst, t.dport as u32], 0).is_ok())
            .collect();
        self.load_targets(&targets[..n])?;
        Ok(arrived)
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
            metric: metric.into(),
            value,
            unit: unit.into(),
            samples: Vec::new(),
        };
        let gw_ns = self.lab.gw_ns.clone();
        let (c, e) = (self.cluster_ifindex, self.external_ifindex);
        let t = Instant::now();
        let setup = match name {
            "bare-pass" | "nftables" | "iptables-ipset" | "iptables-linear" => {
                let links = vec![self.attach("perf_pass", c)?, self.attach("perf_pass", e)?];
                let iface = self.lab.cluster_dev.clone();
                let iface = iface.as_str();
                let tag = "pcp";
                let t = Instant::now();
                let loaded = (|| -> Result<()> {
                    match name {
                        "nftables" => {
                            let (script, elements) = rules::nftables(tables, flat, iface);
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
        let napi = self.lab.thread_napi(&gw_ns, &self.lab.cluster_dev, 1)?;
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
            self.set_gen(GenConfig {
                ifindex: self.gen_ifindex,
                mask,
                flags: if established { 0 } else { GEN_RANDOM_SPORT },
                index: 0,
            })?;
            // Warm-up (fills the flow table for the established case).
            self.measure(if established { 1.0 } else { 0.3 }, napi)?;
            let mut samples = Vec::new();
            for _ in 0..plan.repeats {
                check(self.stop)?;
                samples.push(self.measure(plan.duration, napi)?);
            }
            let fwd: Vec<f64> = samples.iter().map(|s| s.forwarded).collect();
            let off: Vec<f64> = samples.iter().map(|s| s.offered).collect();
            let mut f = fig("forwarded_pps", report::median(&fwd), "packets/s");
            f.samples = fwd.clone();
            report.push(f);
            report.push(fig("offered_pps", report::median(&off), "packets/s"));
            let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu).collect();
            if !cpu.is_empty() {
                let mut f = fig("gateway_cpu", report::median(&cpu), "cores");
                f.samples = cpu.clone();
                report.push(f);
                // Forwarded packets per second of gateway CPU: the efficiency figure, less
                // sensitive than the rate to a generator starved by a shared machine.
                let per_core: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s.cpu.filter(|c| *c > 0.0).map(|c| s.forwarded / c))
                    .collect();
                let mut f = fig(
                    "forwarded_per_core",
                    report::median(&per_core),
                    "packets/cpu-s",
                );
                f.samples = per_core;
                report.push(f);
            }
            println!(
                "   {name}: forwarded {:.3} Mpps (samples {:?}), offered {:.1} Mpps, gateway CPU {}",
                report::median(&fwd) / 1e6,
                fwd.iter().map(|v| (v / 1e4).round() / 100.0).collect::<Vec<_>>(),
                report::median(&off) / 1e6,
                if cpu.is_empty() {
                    "n/a".to_string()
                } else {
                    format!("{:.2} cores", report::median(&cpu))
                }
            );
            Ok(())
        })();
        report.push(fig("setup_time", setup_ms, "ms"));
        self.detach(setup)?;
        self.reset_gateway_ns();
        result
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
            let pkt_a = udp_frame(gm, cm, a.0, a.1, 40_000, a.2);
            let pkt_d = udp_frame(gm, cm, d.0, d.1, 40_000, d.2);
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
                let (mut sum_new, mut sum_bare) = (0.0, 0.0);
                const K: u16 = 2000;
                for i in 0..K {
                    let p = udp_frame(gm, cm, a.0, a.1, 1024 + round * K + i, a.2);
                    sum_new += ns(gw.test_run(TestProgram::Gateway, c, &p, 1)?);
                    sum_bare += ns(gw.test_run(TestProgram::Pass, c, &p, 1)?);
                }
                runs.entry("new_flow_allowed")
                    .or_default()
                    .push(sum_new / K as f64);
                runs.entry("bare_xdp_pass_repeat1")
                    .or_default()
                    .push(sum_bare / K as f64);
            }
            for k in [
                "bare_xdp_pass",
                "established_flow",
                "new_flow_allowed",
                "new_flow_denied",
                "bare_xdp_pass_repeat1",
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

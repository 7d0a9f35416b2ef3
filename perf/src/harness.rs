//! The harness: the lab's namespaces with the perf programs loaded, the sink attached and the
//! counters read around a measurement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

use crate::generator::GenSetup;
use crate::lab::{self, in_ns, sh, Lab};
use crate::plan::{Plan, FRAME_LEN};
use crate::sender::SenderSite;
use crate::sink::{TupleKey, Watch};

static PERF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-perf-ebpf"));

pub struct Harness<'a> {
    pub lab: Lab,
    pub ebpf: Ebpf,
    pub stop: &'a AtomicBool,
    pub gen: GenSetup,
    pub cluster_ifindex: u32,
    pub external_ifindex: u32,
    /// The generator's frame (its size is the current frame size).
    pub template: Vec<u8>,
    /// Maps taken out of `ebpf`, so they can be read while the generator runs on another thread.
    pub gen_sent: PerCpuArray<MapData, u64>,
    pub sink_count: PerCpuArray<MapData, u64>,
    pub watch: HashMap<MapData, TupleKey, Watch>,
    /// The idle-flow measurement has run (or failed): it runs once per run.
    pub idle_flows_done: bool,
}

/// One measurement of a flood: rates over its window.
pub struct Sample {
    pub offered: f64,
    pub forwarded: f64,
    /// Cores of gateway CPU (`None`: its NAPI thread was not found).
    pub cpu: Option<f64>,
    /// Frames/s the generator's veth could not hand to the gateway (its ring full).
    pub lost_before: f64,
    /// Frames/s the gateway's external leg could not hand to the sink.
    pub lost_after: f64,
}

/// Frames the two veths in the path failed to pass on so far.
struct VethDrops {
    /// The generator's veth (the gateway's ring full).
    before_gateway: u64,
    /// The gateway's external leg (the sink's ring full).
    after_gateway: u64,
}

/// Fails once Ctrl-C or SIGTERM was seen.
pub fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn program_mut<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut Xdp> {
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the perf object"))?;
    Ok(p.try_into()?)
}

pub fn map<'e>(ebpf: &'e Ebpf, name: &str) -> Result<&'e Map> {
    ebpf.map(name)
        .with_context(|| format!("no map {name} in the perf object"))
}

pub fn map_mut<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("no map {name} in the perf object"))
}

impl<'a> Harness<'a> {
    /// Makes the lab, loads the perf programs and attaches the sink's counter, with its NAPI
    /// thread on its CPU (the generator's on two cores).
    pub fn new(plan: &Plan, stop: &'a AtomicBool) -> Result<Harness<'a>> {
        let lab = Lab::new(plan.cpus)?;
        let mut ebpf = Ebpf::load(PERF_OBJECT).context("loading the perf programs")?;
        for name in ["perf_gen", "perf_sink", "perf_pass", "perf_fwd"] {
            program_mut(&mut ebpf, name)?.load()?;
        }
        let gen_ifindex = in_ns(&lab.gen_ns, || lab::ifindex(&lab.gen_dev))?;
        let cluster_ifindex = in_ns(&lab.gw_ns, || lab::ifindex(&lab.cluster_dev))?;
        let external_ifindex = in_ns(&lab.gw_ns, || lab::ifindex(&lab.external_dev))?;
        let sink_ifindex = in_ns(&lab.sink_ns, || lab::ifindex(&lab.sink_dev))?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("no map {name} in the perf object"))
        };
        let gen_sent = PerCpuArray::try_from(take("GEN_SENT")?)?;
        let sink_count = PerCpuArray::try_from(take("SINK_COUNT")?)?;
        let watch = HashMap::try_from(take("WATCH")?)?;
        let gen = GenSetup {
            ns: lab.gen_ns.clone(),
            cpu: lab.cpus.generator,
            ifindex: gen_ifindex,
            batch: plan.gen_batch,
            repeat: plan.gen_repeat,
        };
        let mut h = Harness {
            lab,
            ebpf,
            stop,
            gen,
            cluster_ifindex,
            external_ifindex,
            template: Vec::new(),
            gen_sent,
            sink_count,
            watch,
            idle_flows_done: false,
        };
        h.set_frame(FRAME_LEN)?;
        let sink = program_mut(&mut h.ebpf, "perf_sink")?;
        in_ns(&h.lab.sink_ns, || {
            sink.attach_to_if_index(sink_ifindex, XdpMode::Driver)
        })?;
        h.lab
            .thread_napi(&h.lab.sink_ns, &h.lab.sink_dev, h.lab.cpus.sink)?;
        h.configure_redirect()?;
        Ok(h)
    }

    /// `perf_fwd`'s rewrite: out of the external leg, from its MAC to the sink's.
    fn configure_redirect(&mut self) -> Result<()> {
        let (sink, ext) = (self.lab.sink_mac, self.lab.external_mac);
        let fwd = [
            self.external_ifindex,
            u32::from_ne_bytes([sink[0], sink[1], sink[2], sink[3]]),
            u32::from_ne_bytes([sink[4], sink[5], ext[0], ext[1]]),
            u32::from_ne_bytes([ext[2], ext[3], ext[4], ext[5]]),
        ];
        Array::<_, [u32; 4]>::try_from(map_mut(&mut self.ebpf, "FWD_CFG")?)?.set(0, fwd, 0)?;
        Ok(())
    }

    /// Where the raw-socket streams are sent from: the generator's veth, on its CPU.
    pub fn sender_site(&self) -> SenderSite {
        SenderSite {
            ns: self.lab.gen_ns.clone(),
            cpu: self.lab.cpus.generator,
            ifindex: self.gen.ifindex,
            src_mac: self.lab.gen_mac,
            dst_mac: self.lab.cluster_mac,
            frame_len: FRAME_LEN,
        }
    }

    /// Floods for `secs` and measures what was offered, forwarded and lost, and the gateway's
    /// CPU: its threads' `gateway` (its NAPI thread, and the AF_XDP engine's; none found: no
    /// CPU figure).
    pub fn measure(&mut self, secs: f64, gateway: &[i32]) -> Result<Sample> {
        let d0 = self.drops()?;
        let c0 = self.sink_count()?;
        let s0 = self.gen_sent()?;
        let cpu0 = threads_cpu_ns(gateway);
        let t = Instant::now();
        self.generate(secs)?;
        let elapsed = t.elapsed().as_secs_f64();
        let cpu1 = threads_cpu_ns(gateway);
        std::thread::sleep(Duration::from_millis(30));
        let c1 = self.sink_count()?;
        let s1 = self.gen_sent()?;
        let d1 = self.drops()?;
        let rate = |before: u64, after: u64| after.saturating_sub(before) as f64 / elapsed;
        Ok(Sample {
            offered: (s1 - s0) as f64 / elapsed,
            forwarded: (c1 - c0) as f64 / elapsed,
            lost_before: rate(d0.before_gateway, d1.before_gateway),
            lost_after: rate(d0.after_gateway, d1.after_gateway),
            cpu: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some((b - a) as f64 / (elapsed * 1e9)),
                _ => None,
            },
        })
    }

    fn drops(&self) -> Result<VethDrops> {
        Ok(VethDrops {
            before_gateway: veth_drops(&self.lab.gen_ns, &self.lab.gen_dev)?,
            after_gateway: veth_drops(&self.lab.gw_ns, &self.lab.external_dev)?,
        })
    }

    /// Threaded NAPI on the gateway's cluster leg, pinned to the gateway's CPU; its thread.
    pub fn gateway_napi(&self) -> Result<Option<i32>> {
        self.lab.thread_napi(
            &self.lab.gw_ns,
            &self.lab.cluster_dev,
            self.lab.cpus.gateway,
        )
    }

    /// Removes any netfilter state of a contender from the gateway namespace.
    pub fn reset_gateway_ns(&self) {
        let ns = &self.lab.gw_ns;
        let _ = sh(&format!(
            "ip netns exec {ns} nft delete table ip pcperf 2>/dev/null; \
             ip netns exec {ns} iptables -F FORWARD 2>/dev/null; \
             ip netns exec {ns} iptables -F 2>/dev/null; ip netns exec {ns} iptables -X 2>/dev/null; \
             ip netns exec {ns} nft flush ruleset 2>/dev/null; \
             ip netns exec {ns} ipset destroy 2>/dev/null; true"
        ));
    }
}

/// CPU time (ns) of `threads` together; `None` when there are none or one cannot be read.
fn threads_cpu_ns(threads: &[i32]) -> Option<u64> {
    if threads.is_empty() {
        return None;
    }
    threads.iter().map(|&t| lab::thread_cpu_ns(t)).sum()
}

/// Frames a veth failed to pass to its peer so far: its `tx dropped` (the kernel adds the XDP
/// frames its peer's full ring refused, `xdp_xmit_errors` in `ethtool -S`, to the skbs dropped
/// on transmit).
fn veth_drops(ns: &str, dev: &str) -> Result<u64> {
    let link: serde_json::Value =
        serde_json::from_str(&sh(&format!("ip -n {ns} -s -j link show dev {dev}"))?)?;
    link[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .with_context(|| format!("no tx dropped counter for {dev}"))
}

//! Idle established flows under a flood: N flows (half TCP, half UDP) are opened through the
//! loaded `portcullis-xdp` gateway, stay silent while the generator floods at full rate at least
//! `--idle-flood` times the flow table's capacity in new flows, then each sends one packet that
//! passes only if its flow still exists. Once per run, at the first size.
//!
//! Beside them, `ONE_WAY` UDP flows that saw a single datagram (no reply) and are never probed
//! before the flood: what the flood does to an entry nothing has hit since its insert. The kernel's
//! LRU hash gives a hit entry a second chance (its reference bit moves it to the active list,
//! which a flood of single-packet flows never rotates), so the two can differ.
//!
//! The flows are opened and probed with `BPF_PROG_TEST_RUN` on the gateway's program (same maps
//! as the attached one, run on the gateway's CPU); the flood is the generator's ordinary new-flow
//! traffic through the attached gateway. For the probes to mean "the flow exists", the tables are
//! the workload's plus one prefix per egress group the flows' pods are in (198.18.0.0/15, RFC
//! 2544's benchmark range, any protocol: the synthetic rules are UDP only) and an ingress group
//! with no prefix for those pods (ingress denied). A TCP flow is probed with an ACK from its pod
//! (a TCP segment of a connection the gateway does not know is dropped); a UDP flow with a
//! datagram from its external peer (judged on the pod's ingress without the flow: denied). Right
//! after opening, every flow must pass and a control tuple of each protocol that never had a flow
//! must be dropped; the run notes it when not.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use portcullis_gateway::{key_addr, Datapath, Gateway, TestProgram, XDP_PASS, XDP_REDIRECT};
use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::Direction;
use serde::Serialize;

use crate::frame::{tcp_frame, udp_frame};
use crate::generator::Generator;
use crate::harness::Harness;
use crate::lab::{self, in_ns};
use crate::memory::flow_table_capacity;
use crate::plan::{Plan, FRAME_LEN};
use crate::report::Report;
use crate::workload::Workload;

/// Where the idle flows go: a benchmark range outside every synthetic ipBlock.
const IDLE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const IDLE_NET_LEN: u8 = 15;
const TCP_PORT: u16 = 443;
const UDP_PORT: u16 = 53;
/// First source port of a pod's idle flows.
const SPORT_BASE: u16 = 20_000;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// The flood stops here at the latest: well inside UDP's 60 s idle timeout, so an idle UDP flow
/// can only be gone because the flood evicted it.
const FLOOD_LIMIT: Duration = Duration::from_secs(40);
/// One-way UDP flows (one datagram, no reply) opened beside the idle flows.
const ONE_WAY: usize = 256;
/// How often the flood's progress (the gateway's new flows) is read.
const POLL: Duration = Duration::from_millis(50);
/// The policy name of the idle pods' ingress isolation.
const ISOLATION: &str = "bench/idle-flows-isolation";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// Which gateway leg a frame enters.
#[derive(Clone, Copy, Debug)]
enum Leg {
    Cluster,
    External,
}

/// One idle flow: its pod opened it to `dst`.
#[derive(Clone, Copy, Debug)]
struct IdleFlow {
    proto: Proto,
    /// Opened by one packet only (UDP, no reply).
    one_way: bool,
    pod: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

/// The frames of a flow, with the MACs of both legs.
struct Framer {
    gen_mac: [u8; 6],
    cluster_mac: [u8; 6],
    sink_mac: [u8; 6],
    external_mac: [u8; 6],
}

impl Framer {
    /// A frame of `f` from its pod (`outbound`) or from its peer, TCP with `flags`.
    fn frame(&self, f: &IdleFlow, outbound: bool, flags: u8) -> (Leg, Vec<u8>) {
        let (leg, macs, src, dst, sport, dport) = if outbound {
            let macs = (self.gen_mac, self.cluster_mac);
            (Leg::Cluster, macs, f.pod, f.dst, f.sport, f.dport)
        } else {
            let macs = (self.sink_mac, self.external_mac);
            (Leg::External, macs, f.dst, f.pod, f.dport, f.sport)
        };
        let frame = match f.proto {
            Proto::Tcp => tcp_frame(macs.0, macs.1, src, dst, sport, dport, flags, FRAME_LEN),
            Proto::Udp => udp_frame(macs.0, macs.1, src, dst, sport, dport, FRAME_LEN),
        };
        (leg, frame)
    }

    /// What opens `f`: SYN, SYN-ACK, ACK; or a datagram and its reply.
    fn open(&self, f: &IdleFlow) -> Vec<(Leg, Vec<u8>)> {
        match f.proto {
            Proto::Tcp => vec![
                self.frame(f, true, TCP_SYN),
                self.frame(f, false, TCP_SYN | TCP_ACK),
                self.frame(f, true, TCP_ACK),
            ],
            Proto::Udp if f.one_way => vec![self.frame(f, true, 0)],
            Proto::Udp => vec![self.frame(f, true, 0), self.frame(f, false, 0)],
        }
    }

    /// The packet that passes only while `f` is in the flow table.
    fn probe(&self, f: &IdleFlow) -> (Leg, Vec<u8>) {
        match f.proto {
            Proto::Tcp => self.frame(f, true, TCP_ACK),
            Proto::Udp => self.frame(f, false, 0),
        }
    }
}

/// What the measurement saw (JSON `idle_flows_detail`; `idle_flows` and `idle_flows_survived`
/// at the top level).
#[derive(Clone, Debug, Serialize)]
pub struct IdleFlows {
    pub ip_blocks: usize,
    pub flows: usize,
    pub tcp: usize,
    pub udp: usize,
    pub survived: usize,
    pub tcp_survived: usize,
    pub udp_survived: usize,
    /// Idle flows whose probe passed right after they were opened (must be all).
    pub passed_before_flood: usize,
    /// Probes of never-opened tuples (one per protocol, before and after the flood) that were
    /// dropped (must be all).
    pub control_dropped: usize,
    pub control_probes: usize,
    /// Idle flows still in the flow table after the probes (`Datapath::flows`).
    pub in_table_after_flood: usize,
    /// One-way UDP flows (one datagram, never hit), in the table before the flood (read with
    /// `Datapath::flows`, which does not mark them referenced) and passing their probe after it.
    pub one_way: usize,
    pub one_way_in_table_before_flood: usize,
    pub one_way_survived: usize,
    /// `max_entries` of the loaded flow table.
    pub flow_table_capacity: u64,
    /// New flows the gateway created during the flood (its `pass_policy` counter).
    pub flood_new_flows: u64,
    /// Flood packets that hit a flow (its `pass_flow` counter).
    pub flood_flow_hits: u64,
    /// `flood_new_flows` / `flow_table_capacity`.
    pub flood_capacity_multiple: f64,
    pub flood_seconds: f64,
    pub flood_offered_pps: f64,
    pub flood_new_flows_pps: f64,
}

impl IdleFlows {
    /// The summary's line.
    pub fn line(&self) -> String {
        format!(
            "{} ipBlocks: {} idle flows ({} TCP, {} UDP) survived {} ({} TCP, {} UDP) a flood of {} new flows ({:.1}x the {}-entry flow table) in {:.1} s ({:.2} Mpps offered, {:.2} M new flows/s); before the flood {}/{} passed, control probes dropped {}/{}; {} idle flows still in the table; one-way UDP flows (one datagram, never hit): {}/{} in the table before the flood, {} survived",
            self.ip_blocks,
            self.flows,
            self.tcp,
            self.udp,
            self.survived,
            self.tcp_survived,
            self.udp_survived,
            self.flood_new_flows,
            self.flood_capacity_multiple,
            self.flow_table_capacity,
            self.flood_seconds,
            self.flood_offered_pps / 1e6,
            self.flood_new_flows_pps / 1e6,
            self.passed_before_flood,
            self.flows,
            self.control_dropped,
            self.control_probes,
            self.in_table_after_flood,
            self.one_way_in_table_before_flood,
            self.one_way,
            self.one_way_survived,
        )
    }
}

/// The flood as measured.
struct Flood {
    new_flows: u64,
    hits: u64,
    secs: f64,
    offered: u64,
}

/// `n` idle flows (the first half TCP), spread over the workload's egress-selected pods, each to
/// its own destination in `IDLE_NET`; one control tuple per protocol that no flow uses; and
/// `ONE_WAY` one-way UDP flows.
fn idle_flows(w: &Workload, n: usize) -> Result<(Vec<IdleFlow>, [IdleFlow; 2], Vec<IdleFlow>)> {
    let pods: Vec<Ipv4Addr> = (w.tables.endpoints.keys())
        .filter_map(|(d, ip)| match (d, ip) {
            (Direction::Egress, IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        })
        .collect();
    if pods.is_empty() {
        bail!("no egress-selected IPv4 pod to open idle flows from");
    }
    let flow = |i: usize, proto| IdleFlow {
        proto,
        one_way: false,
        pod: pods[i % pods.len()],
        dst: Ipv4Addr::from(u32::from(IDLE_NET) + 1 + i as u32),
        sport: SPORT_BASE + (i / pods.len()) as u16,
        dport: if proto == Proto::Tcp {
            TCP_PORT
        } else {
            UDP_PORT
        },
    };
    let flows = (0..n)
        .map(|i| flow(i, if i < n / 2 { Proto::Tcp } else { Proto::Udp }))
        .collect();
    let one_way = (n + 2..n + 2 + ONE_WAY)
        .map(|i| IdleFlow {
            one_way: true,
            ..flow(i, Proto::Udp)
        })
        .collect();
    Ok((
        flows,
        [flow(n, Proto::Tcp), flow(n + 1, Proto::Udp)],
        one_way,
    ))
}

/// The workload's tables with the idle flows allowed out (any protocol to `IDLE_NET` in their
/// pods' egress groups) and their pods isolated for ingress (a group without prefixes); checked
/// against the reference for every flow.
fn idle_tables(tables: &GatewayTables, flows: &[IdleFlow]) -> Result<GatewayTables> {
    let mut t = tables.clone();
    t.rule_sets.push(vec![PortRule::ANY]);
    let any = (t.rule_sets.len() - 1) as u32;
    let net = IpNet::new(IpAddr::V4(IDLE_NET), IDLE_NET_LEN)?;
    let isolated = t.groups.len() as u32;
    t.groups.push(GatewayGroup {
        direction: Direction::Ingress,
        policies: vec![ISOLATION.into()],
        prefixes: Vec::new(),
    });
    let mut extended = HashSet::new();
    for f in flows {
        let pod = IpAddr::V4(f.pod);
        let group = *(tables.endpoints.get(&(Direction::Egress, pod)))
            .with_context(|| format!("idle-flow pod {pod} has no egress group"))?;
        if extended.insert(group) {
            t.groups[group as usize].prefixes.push((net, any));
        }
        t.endpoints.insert((Direction::Ingress, pod), isolated);
    }
    for f in flows {
        let proto = if f.proto == Proto::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let (pod, peer) = (IpAddr::V4(f.pod), IpAddr::V4(f.dst));
        if !t.allows(Direction::Egress, pod, peer, proto, f.dport)
            || t.allows(Direction::Ingress, pod, peer, proto, f.sport)
        {
            bail!("idle-flow tables: {f:?} is not allowed out and denied in by the reference");
        }
    }
    Ok(t)
}

/// Runs one frame through the gateway program as if received on `leg`; whether it passed
/// (`XDP_PASS` or `XDP_REDIRECT`; `XDP_DROP` or anything else: dropped).
fn passes(gw: &mut Gateway, ifindex: [u32; 2], (leg, frame): &(Leg, Vec<u8>)) -> Result<bool> {
    let ifindex = match leg {
        Leg::Cluster => ifindex[0],
        Leg::External => ifindex[1],
    };
    let action = gw.test_run(TestProgram::Gateway, ifindex, frame, 1)?.action;
    Ok(action == XDP_PASS || action == XDP_REDIRECT)
}

/// Whether each flow's probe passed.
fn probe_all(
    gw: &mut Gateway,
    framer: &Framer,
    ifindex: [u32; 2],
    flows: &[IdleFlow],
) -> Result<Vec<bool>> {
    flows
        .iter()
        .map(|f| passes(gw, ifindex, &framer.probe(f)))
        .collect()
}

/// How many of `flows` are in the flow table (`Datapath::flows`: read from user space, which
/// does not mark an LRU entry referenced).
fn in_table(gw: &Gateway, flows: &[IdleFlow]) -> usize {
    let keys: HashSet<_> = flows.iter().map(table_key).collect();
    (gw.flows().iter())
        .filter(|(k, _)| keys.contains(&(k.addr_lo, k.addr_hi, k.port_lo, k.port_hi, k.protocol)))
        .count()
}

/// The flow-table key's endpoints of `f`, normalised like the kernel's (smaller address first).
fn table_key(f: &IdleFlow) -> ([u8; 16], [u8; 16], u16, u16, u8) {
    let (a, b) = (key_addr(IpAddr::V4(f.pod)), key_addr(IpAddr::V4(f.dst)));
    let (sport, dport) = (f.sport.to_be(), f.dport.to_be());
    let proto = if f.proto == Proto::Tcp {
        PROTO_TCP
    } else {
        PROTO_UDP
    };
    if a <= b {
        (a, b, sport, dport, proto)
    } else {
        (b, a, dport, sport, proto)
    }
}

impl Harness<'_> {
    /// The idle-flow measurement on `gw`, `portcullis-xdp` loaded with `w`'s tables; its result
    /// goes to the report, a failed check of the probe logic to its notes.
    pub fn idle_flows(
        &mut self,
        gw: &mut Gateway,
        w: &Workload,
        plan: &Plan,
        report: &mut Report,
    ) -> Result<()> {
        let capacity = flow_table_capacity(&self.lab.gw_ns, &self.lab.cluster_dev)?;
        let (flows, controls, one_way) = idle_flows(w, plan.idle_flows)?;
        let every: Vec<IdleFlow> = flows
            .iter()
            .chain(&controls)
            .chain(&one_way)
            .copied()
            .collect();
        gw.apply(&idle_tables(&w.tables, &every)?)
            .context("applying the idle-flow tables")?;
        let framer = Framer {
            gen_mac: self.lab.gen_mac,
            cluster_mac: self.lab.cluster_mac,
            sink_mac: self.lab.sink_mac,
            external_mac: self.lab.external_mac,
        };
        let ifindex = [self.cluster_ifindex, self.external_ifindex];
        let (ns, cpu) = (self.lab.gw_ns.clone(), self.lab.cpus.gateway);
        // Test runs on the gateway's CPU, like the flows the attached program makes.
        let on_gateway = |f: &mut (dyn FnMut() -> Result<Vec<bool>> + Send)| {
            in_ns(&ns, || {
                lab::pin_current_thread(cpu);
                f()
            })
        };
        on_gateway(&mut || {
            for f in flows.iter().chain(&one_way) {
                for (step, frame) in framer.open(f).iter().enumerate() {
                    if !passes(gw, ifindex, frame)? {
                        bail!("opening idle flow {f:?}: packet {} was dropped", step + 1);
                    }
                }
            }
            Ok(Vec::new())
        })?;
        let before = on_gateway(&mut || probe_all(gw, &framer, ifindex, &flows))?;
        let control_before = on_gateway(&mut || probe_all(gw, &framer, ifindex, &controls))?;
        let one_way_before = in_table(gw, &one_way);
        let flood = self.idle_flood(gw, w, (plan.idle_flood * capacity as f64).ceil() as u64)?;
        let after = on_gateway(&mut || probe_all(gw, &framer, ifindex, &flows))?;
        let control_after = on_gateway(&mut || probe_all(gw, &framer, ifindex, &controls))?;
        let one_way_after = on_gateway(&mut || probe_all(gw, &framer, ifindex, &one_way))?;
        let in_table_after = in_table(gw, &flows);
        let survived = |proto| {
            (flows.iter().zip(&after))
                .filter(|(f, passed)| f.proto == proto && **passed)
                .count()
        };
        let control: Vec<bool> = control_before.into_iter().chain(control_after).collect();
        let result = IdleFlows {
            ip_blocks: w.ip_blocks,
            flows: flows.len(),
            tcp: flows.iter().filter(|f| f.proto == Proto::Tcp).count(),
            udp: flows.iter().filter(|f| f.proto == Proto::Udp).count(),
            survived: after.iter().filter(|p| **p).count(),
            tcp_survived: survived(Proto::Tcp),
            udp_survived: survived(Proto::Udp),
            passed_before_flood: before.iter().filter(|p| **p).count(),
            control_dropped: control.iter().filter(|p| !**p).count(),
            control_probes: control.len(),
            in_table_after_flood: in_table_after,
            one_way: one_way.len(),
            one_way_in_table_before_flood: one_way_before,
            one_way_survived: one_way_after.iter().filter(|p| **p).count(),
            flow_table_capacity: capacity,
            flood_new_flows: flood.new_flows,
            flood_flow_hits: flood.hits,
            flood_capacity_multiple: flood.new_flows as f64 / capacity.max(1) as f64,
            flood_seconds: flood.secs,
            flood_offered_pps: flood.offered as f64 / flood.secs,
            flood_new_flows_pps: flood.new_flows as f64 / flood.secs,
        };
        check_result(&result, plan.idle_flood, report);
        println!("   idle flows at {}", result.line());
        report.set_idle_flows(result);
        Ok(())
    }

    /// The generator's new-flow flood, unpaced, through the attached gateway until the gateway
    /// has created `target` new flows (or `FLOOD_LIMIT` passed).
    fn idle_flood(&mut self, gw: &Gateway, w: &Workload, target: u64) -> Result<Flood> {
        let cfg = self.flood_config((w.targets.len() - 1) as u32, true, 0);
        self.set_gen(cfg)?;
        // The gateway's COUNTERS (not `status()`, which also walks the whole flow table).
        let counters = || -> Result<(u64, u64)> {
            let c = gw.core().maps.counters()?;
            Ok((c.pass_policy, c.pass_flow))
        };
        let new_flows = || -> Result<u64> { Ok(counters()?.0) };
        let (created0, hits0) = counters()?;
        let sent0 = self.gen_sent()?;
        let stop_flood = AtomicBool::new(false);
        let stop = self.stop;
        let mut gen = Generator::new(&mut self.ebpf, &self.gen, &self.template)?;
        let t = Instant::now();
        let polled = std::thread::scope(|sc| {
            let flood = sc.spawn(|| gen.run(FLOOD_LIMIT.as_secs_f64(), &stop_flood));
            let polled = (|| -> Result<()> {
                while !flood.is_finished() {
                    std::thread::sleep(POLL);
                    if stop.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                    if new_flows()? - created0 >= target {
                        break;
                    }
                }
                Ok(())
            })();
            stop_flood.store(true, Ordering::Relaxed);
            let ran = flood
                .join()
                .map_err(|_| anyhow!("flood generator panicked"))
                .and_then(|r| r);
            polled.and(ran)
        });
        let secs = t.elapsed().as_secs_f64();
        polled.context("idle-flow flood")?;
        // The frames still in the rings reach the gateway.
        std::thread::sleep(Duration::from_millis(30));
        let (created, hits) = counters()?;
        Ok(Flood {
            new_flows: created - created0,
            hits: hits - hits0,
            secs,
            offered: self.gen_sent()? - sent0,
        })
    }
}

/// Notes what makes the result not the measurement it should be: a probe that does not tell
/// whether the flow exists, a flood smaller than asked.
fn check_result(r: &IdleFlows, flood: f64, report: &mut Report) {
    if r.passed_before_flood != r.flows {
        report.note(format!(
            "idle flows: only {}/{} probes passed right after the flows were opened: the probe does not show that a flow exists",
            r.passed_before_flood, r.flows
        ));
    }
    if r.control_dropped != r.control_probes {
        report.note(format!(
            "idle flows: {} of {} control probes (tuples that never had a flow) passed: the probe does not show that a flow exists",
            r.control_probes - r.control_dropped,
            r.control_probes
        ));
    }
    if r.flood_capacity_multiple < flood {
        report.note(format!(
            "idle flows: the flood made {:.2}x the flow table's capacity in new flows in {:.0} s, not the {flood}x asked",
            r.flood_capacity_multiple, r.flood_seconds
        ));
    }
    if r.one_way_in_table_before_flood != r.one_way {
        report.note(format!(
            "idle flows: only {}/{} one-way flows were in the flow table before the flood",
            r.one_way_in_table_before_flood, r.one_way
        ));
    }
    if r.in_table_after_flood != r.survived {
        report.note(format!(
            "idle flows: {} survived by probe but {} are in the flow table",
            r.survived, r.in_table_after_flood
        ));
    }
}

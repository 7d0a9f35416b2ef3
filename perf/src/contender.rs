//! The contenders: what runs on the gateway's legs for each, how it is set up with the
//! benchmark's rules and torn down again.

use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Result};
use aya::programs::xdp::XdpLinkId;
use aya::programs::XdpMode;
use portcullis_gateway::{DatapathMode, Gateway};

use crate::engine::Portcullis;
use crate::harness::{program_mut, Harness};
use crate::lab::in_ns;
use crate::memory::{map_memory, rss_kib};
use crate::plan::Plan;
use crate::report::{Report, Subject};
use crate::workload::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// The sink's counting `XDP_DROP` on the cluster leg: the generator's ceiling.
    BareDrop,
    /// `XDP_PASS` on both legs and kernel forwarding, no filter.
    BarePass,
    /// MAC rewrite and `bpf_redirect` to the external leg: the XDP ceiling.
    BareRedirect,
    /// The gateway forwarding in XDP, a new flow per packet.
    PortcullisXdp,
    /// The same, established flows only.
    PortcullisXdpEstablished,
    /// The gateway with its AF_XDP engine judging and forwarding every packet, new flows.
    PortcullisAfxdp,
    /// The same, established flows only (confirmed in the engine's own flow table).
    PortcullisAfxdpEstablished,
    /// The hybrid: the engine judges the first packets, XDP serves their flows; new flows.
    PortcullisHybrid,
    /// The same, established flows only (all served by XDP from the pinned flow maps).
    PortcullisHybridEstablished,
    /// The gateway's filter with kernel forwarding.
    PortcullisKernel,
    Nftables,
    /// nftables behind conntrack (`ct state established,related accept`).
    NftablesCt,
    IptablesIpset,
    IptablesLinear,
}

impl Contender {
    /// Every contender, in the order they are measured and tabled.
    pub const ALL: [Contender; 14] = [
        Contender::BareDrop,
        Contender::BarePass,
        Contender::BareRedirect,
        Contender::PortcullisXdp,
        Contender::PortcullisXdpEstablished,
        Contender::PortcullisAfxdp,
        Contender::PortcullisAfxdpEstablished,
        Contender::PortcullisHybrid,
        Contender::PortcullisHybridEstablished,
        Contender::PortcullisKernel,
        Contender::Nftables,
        Contender::NftablesCt,
        Contender::IptablesIpset,
        Contender::IptablesLinear,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Contender::BareDrop => "bare-drop",
            Contender::BarePass => "bare-pass",
            Contender::BareRedirect => "bare-redirect",
            Contender::PortcullisXdp => "portcullis-xdp",
            Contender::PortcullisXdpEstablished => "portcullis-xdp-established",
            Contender::PortcullisAfxdp => "portcullis-afxdp",
            Contender::PortcullisAfxdpEstablished => "portcullis-afxdp-established",
            Contender::PortcullisHybrid => "portcullis-hybrid",
            Contender::PortcullisHybridEstablished => "portcullis-hybrid-established",
            Contender::PortcullisKernel => "portcullis-kernel",
            Contender::Nftables => "nftables",
            Contender::NftablesCt => "nftables-ct",
            Contender::IptablesIpset => "iptables-ipset",
            Contender::IptablesLinear => "iptables-linear",
        }
    }

    /// Without rules: measured once, and nothing to check verdicts of.
    pub fn is_bare(self) -> bool {
        matches!(
            self,
            Contender::BareDrop | Contender::BarePass | Contender::BareRedirect
        )
    }

    /// Floods established flows instead of a new flow per packet.
    pub fn established(self) -> bool {
        matches!(
            self,
            Contender::PortcullisXdpEstablished
                | Contender::PortcullisAfxdpEstablished
                | Contender::PortcullisHybridEstablished
        )
    }

    /// Whose figures these are: rule-less contenders at 0 ipBlocks.
    pub fn subject(self, w: &Workload) -> Subject {
        if self.is_bare() {
            Subject::new(self.name(), 0, 0)
        } else {
            Subject::new(self.name(), w.ip_blocks, w.prefixes)
        }
    }
}

impl FromStr for Contender {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Contender> {
        match Contender::ALL.into_iter().find(|c| c.name() == s) {
            Some(c) => Ok(c),
            None => {
                let known: Vec<&str> = Contender::ALL.iter().map(|c| c.name()).collect();
                bail!("unknown contender {s} (known: {})", known.join(", "))
            }
        }
    }
}

/// An XDP program of the perf object attached to a gateway leg.
pub struct Link {
    program: &'static str,
    id: XdpLinkId,
}

/// What is attached and loaded for one contender; torn down after it.
pub enum Setup {
    Programs(Vec<Link>),
    Portcullis(Box<Portcullis>),
}

impl Harness<'_> {
    /// Attaches and loads `c` with the workload's rules in the gateway namespace, pushing its
    /// load figures (and, for `portcullis-xdp`, the micro figures).
    pub fn set_up(
        &mut self,
        c: Contender,
        w: &Workload,
        plan: &Plan,
        report: &mut Report,
    ) -> Result<Setup> {
        let (cluster, external) = (self.cluster_ifindex, self.external_ifindex);
        let links = match c {
            Contender::BareDrop => vec![self.attach("perf_sink", cluster)?],
            Contender::BareRedirect => vec![
                self.attach("perf_fwd", cluster)?,
                self.attach("perf_pass", external)?,
            ],
            Contender::BarePass
            | Contender::Nftables
            | Contender::NftablesCt
            | Contender::IptablesIpset
            | Contender::IptablesLinear => vec![
                self.attach("perf_pass", cluster)?,
                self.attach("perf_pass", external)?,
            ],
            Contender::PortcullisXdp
            | Contender::PortcullisXdpEstablished
            | Contender::PortcullisAfxdp
            | Contender::PortcullisAfxdpEstablished
            | Contender::PortcullisHybrid
            | Contender::PortcullisHybridEstablished
            | Contender::PortcullisKernel => {
                return Ok(Setup::Portcullis(Box::new(
                    self.load_portcullis(c, w, plan, report)?,
                )))
            }
        };
        if c.is_bare() {
            return Ok(Setup::Programs(links));
        }
        let t = Instant::now();
        if let Err(e) = self.load_netfilter(c, w, report) {
            self.tear_down(Setup::Programs(links))?;
            return Err(e);
        }
        report.push(
            c.subject(w)
                .figure("load_time", t.elapsed().as_secs_f64() * 1e3, "ms"),
        );
        Ok(Setup::Programs(links))
    }

    /// Detaches or unloads what `set_up` made and clears any netfilter state.
    pub fn tear_down(&mut self, setup: Setup) -> Result<()> {
        match setup {
            Setup::Programs(links) => {
                for link in links {
                    program_mut(&mut self.ebpf, link.program)?.detach(link.id)?;
                }
            }
            Setup::Portcullis(p) => p.close()?,
        }
        self.reset_gateway_ns();
        Ok(())
    }

    fn attach(&mut self, program: &'static str, ifindex: u32) -> Result<Link> {
        let p = program_mut(&mut self.ebpf, program)?;
        let id = in_ns(&self.lab.gw_ns, || {
            p.attach_to_if_index(ifindex, XdpMode::Driver)
        })?;
        Ok(Link { program, id })
    }

    /// The gateway with the workload's tables (and its engine running, for the AF_XDP
    /// contenders); `portcullis-xdp` also reports its load times, memory and micro figures.
    fn load_portcullis(
        &mut self,
        c: Contender,
        w: &Workload,
        plan: &Plan,
        report: &mut Report,
    ) -> Result<Portcullis> {
        let (opts, pins) = self.gateway_options(c)?;
        let rss0 = rss_kib();
        let t = Instant::now();
        let gw = in_ns(&self.lab.gw_ns, || Gateway::load(opts))?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut p = Portcullis {
            engine: None,
            engine_threads: Vec::new(),
            gw,
            pins,
        };
        let t = Instant::now();
        let applied = p.gw.apply(&w.tables).map_err(anyhow::Error::from);
        let apply_ms = t.elapsed().as_secs_f64() * 1e3;
        let started = applied.and_then(|stats| {
            if c.datapath() != DatapathMode::Xdp {
                self.start_engine(c, &mut p, w, stats.generation)?;
            }
            Ok(stats)
        });
        let stats = match started {
            Ok(stats) => stats,
            Err(e) => {
                p.close()?;
                return Err(e);
            }
        };
        if c != Contender::PortcullisXdp {
            return Ok(p);
        }
        let gw = &mut p.gw;
        let s = c.subject(w);
        report.push(s.figure("program_load_time", load_ms, "ms"));
        report.push(s.figure("load_time", apply_ms, "ms"));
        let write_ms = stats.write.as_secs_f64() * 1e3;
        report.push(s.figure("apply_write_time", write_ms, "ms"));
        let rss_delta = rss_kib().saturating_sub(rss0) * 1024;
        report.push(s.figure("user_rss_delta", rss_delta as f64, "bytes"));
        report.push(s.figure("user_rss", (rss_kib() * 1024) as f64, "bytes"));
        match map_memory(&self.lab.gw_ns, &self.lab.cluster_dev) {
            Ok(m) => {
                report.push(s.figure("kernel_memory", m.total as f64, "bytes"));
                report.push(s.figure("prefix_map_memory", m.prefixes as f64, "bytes"));
                report.push(s.figure(
                    "prefix_map_bytes_per_prefix",
                    m.prefixes as f64 / w.prefixes.max(1) as f64,
                    "bytes",
                ));
            }
            Err(e) => report.note(format!("map memory at {}: {e:#}", w.ip_blocks)),
        }
        if plan.micro {
            self.micro(gw, w, report)?;
        }
        Ok(p)
    }
}

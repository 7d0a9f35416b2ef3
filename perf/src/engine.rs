//! The AF_XDP contenders (`portcullis-afxdp*`, `portcullis-hybrid*`): the gateway loaded with
//! `--datapath afxdp|hybrid` and a bpffs pin directory of the run's own, and its engine started
//! as `portcullis gateway` starts it (as afxdp/tests/engine.rs does), on the gateway's CPU.
//!
//! The engine's thread (one per rx queue of the legs; the lab's veths have one) runs on the
//! gateway's CPU beside the cluster leg's NAPI thread, one real-time priority above it: the NAPI
//! thread (SCHED_FIFO 50) would otherwise keep the CPU for as long as the generator keeps its ring
//! busy and starve the engine; this way the engine runs whenever its sockets have frames and NAPI
//! fills them in between. The gateway's CPU time is then both threads'.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_afxdp::engine::{Engine, EngineOptions};
use portcullis_afxdp::rings::RingConfig;
use portcullis_afxdp::tables::PolicyTables;
use portcullis_gateway::{DatapathMode, ForwardMode, Gateway, GatewayOptions};

use crate::contender::Contender;
use crate::frame::udp_frame;
use crate::harness::Harness;
use crate::lab::{self, in_ns, Lab};
use crate::plan::FRAME_LEN;
use crate::sampler::Tuple;
use crate::sender::Sender;
use crate::workload::Workload;

/// Real-time priority of the engine's threads: above the gateway's NAPI thread (see the module).
const ENGINE_PRIORITY: i32 = 51;
/// Replies sent from the sink per burst while confirming flows, and the pause after each: few
/// enough that the external leg's ring (256 frames) never overflows.
const REPLY_BURST: usize = 64;
const REPLY_PAUSE: Duration = Duration::from_millis(1);
/// How long the engine may take to confirm the last replies' flows.
const CONFIRM_SETTLE: Duration = Duration::from_secs(3);

/// A bpffs directory of the run's own for the gateway's pins, removed when dropped.
pub struct PinDir(PathBuf);

impl PinDir {
    fn new(c: Contender) -> Result<PinDir> {
        let dir = PathBuf::from(format!("/sys/fs/bpf/{}-{}", Lab::prefix(), c.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(PinDir(dir))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loaded gateway, with its engine for the AF_XDP contenders. Dropped in field order: the
/// engine, then the gateway, then its pins.
pub struct Portcullis {
    pub engine: Option<Engine>,
    /// The engine's threads (their CPU time is the gateway's too).
    pub engine_threads: Vec<i32>,
    pub gw: Gateway,
    pub pins: Option<PinDir>,
}

impl Portcullis {
    /// Stops the engine, unpins the gateway's maps and links (so the program is detached when
    /// it is dropped) and removes the pin directory.
    pub fn close(self) -> Result<()> {
        let Portcullis {
            engine, gw, pins, ..
        } = self;
        drop(engine);
        let unpinned = gw.unpin();
        drop(pins);
        Ok(unpinned?)
    }
}

impl Contender {
    /// Who judges the packets of this contender's gateway.
    pub fn datapath(self) -> DatapathMode {
        match self {
            Contender::PortcullisAfxdp | Contender::PortcullisAfxdpEstablished => {
                DatapathMode::Afxdp
            }
            Contender::PortcullisHybrid | Contender::PortcullisHybridEstablished => {
                DatapathMode::Hybrid
            }
            _ => DatapathMode::Xdp,
        }
    }
}

impl Harness<'_> {
    /// The gateway's options for `c`: its datapath, and a pin directory for the AF_XDP ones.
    pub fn gateway_options(&self, c: Contender) -> Result<(GatewayOptions, Option<PinDir>)> {
        let pins = match c.datapath() {
            DatapathMode::Xdp => None,
            _ => Some(PinDir::new(c)?),
        };
        let opts = GatewayOptions {
            cluster_iface: self.lab.cluster_dev.clone(),
            external_iface: self.lab.external_dev.clone(),
            forward: if c == Contender::PortcullisKernel {
                ForwardMode::Kernel
            } else {
                ForwardMode::Xdp
            },
            datapath: c.datapath(),
            pin_dir: pins.as_ref().map(|p| p.0.clone()),
            ..Default::default()
        };
        Ok((opts, pins))
    }

    /// Starts the engine of `c`'s gateway `p` (applied with the workload's tables, generation
    /// `generation`) in the gateway namespace, its threads moved onto the gateway's CPU.
    pub fn start_engine(
        &self,
        c: Contender,
        p: &mut Portcullis,
        w: &Workload,
        generation: u32,
    ) -> Result<()> {
        let Some(handles) = p.gw.engine_handles() else {
            bail!("{}: the gateway has no engine handles", c.name());
        };
        let hybrid = c.datapath() == DatapathMode::Hybrid;
        let pins = p.pins.as_ref().map(|d| d.0.clone());
        let lab = &self.lab;
        let options = EngineOptions {
            cluster_iface: lab.cluster_dev.clone(),
            external_iface: lab.external_dev.clone(),
            legs: handles.legs,
            queues: None,
            rings: RingConfig::default(),
            hybrid_pins: pins.clone().filter(|_| hybrid),
            // As the daemon: the afxdp engine's flows mirrored into the program's pinned maps.
            mirror_pins: pins,
            revalidate: false,
            // Queue 0's thread would go to CPU 0, the generator's: placed below instead.
            pin_threads: false,
        };
        let tables = PolicyTables::new(&w.tables, u64::from(generation));
        let engine = in_ns(&lab.gw_ns, || {
            Engine::start(options, handles.xsks, handles.epoch, tables)
        })
        .context("starting the AF_XDP engine")?;
        p.engine = Some(engine);
        p.engine_threads = engine_threads()?;
        if p.engine_threads.is_empty() {
            bail!("the AF_XDP engine's threads (afxdp-q*) were not found");
        }
        for &tid in &p.engine_threads {
            place_thread(tid, lab.cpus.gateway, ENGINE_PRIORITY)?;
        }
        Ok(())
    }

    /// The afxdp engine's flows of the first `targets` targets, confirmed as
    /// [`Harness::confirm_flows`] confirms the program's: a reply per target the gateway allows,
    /// here sent for real from the sink's side (the engine's flow table is in user space; a test
    /// run would not reach it, and in afxdp mode the program only steers). Which targets are
    /// allowed is the reference's verdict (`GatewayTables::allows`, which the contender's
    /// verdicts were checked against): a reply to a denied one could open a flow of its own
    /// where the pod's ingress policy allows it, which the XDP contender does not get. Returns
    /// the engine's confirmed flows.
    pub fn confirm_engine_flows(
        &self,
        engine: &Engine,
        w: &Workload,
        targets: usize,
    ) -> Result<usize> {
        let lab = &self.lab;
        let (sm, em) = (lab.sink_mac, lab.external_mac);
        in_ns(&lab.sink_ns, || -> Result<()> {
            lab::pin_current_thread(lab.cpus.sink);
            let ifindex = lab::ifindex(&lab.sink_dev)?;
            let sender = Sender::open(ifindex, sm, em, FRAME_LEN)?;
            let mut replies = Vec::new();
            for t in &w.targets[..targets] {
                let src = Ipv4Addr::from(u32::from_be(t.src));
                let dst = Ipv4Addr::from(u32::from_be(t.dst));
                let (sport, dport) = (u16::from_be(t.sport), u16::from_be(t.dport));
                let port = dport;
                if (Tuple { src, dst, port }).allowed_by(&w.tables) {
                    replies.push(udp_frame(sm, em, dst, src, dport, sport, FRAME_LEN));
                }
            }
            for burst in replies.chunks(REPLY_BURST) {
                for reply in burst {
                    sender.send(reply)?;
                }
                std::thread::sleep(REPLY_PAUSE);
            }
            Ok(())
        })?;
        // The engine is done when its count stops growing.
        let t = Instant::now();
        let mut confirmed = engine.status().confirmed_flows;
        while t.elapsed() < CONFIRM_SETTLE {
            std::thread::sleep(Duration::from_millis(200));
            let now = engine.status().confirmed_flows;
            if now == confirmed {
                break;
            }
            confirmed = now;
        }
        Ok(confirmed)
    }
}

/// Threads of this process named `afxdp-q<queue>`.
fn engine_threads() -> Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("afxdp-q") {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Moves thread `tid` onto `cpu` with real-time priority `priority` (SCHED_FIFO).
fn place_thread(tid: i32, cpu: usize, priority: i32) -> Result<()> {
    // SAFETY: plain libc calls on a zeroed cpu_set_t and a sched_param we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "pinning engine thread {tid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
        let param = libc::sched_param {
            sched_priority: priority,
        };
        if libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) != 0 {
            bail!(
                "SCHED_FIFO for engine thread {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

//! The running engine: one thread per receive queue, each with the AF_XDP sockets of that queue on
//! both legs ([`QueueRings`]) and its own next-hop cache, judging with the one shared [`Pipeline`]
//! and forwarding what the XDP program steers to it. The policy tables are swapped as a whole
//! ([`Engine::set_tables`]); a thread notices the swap at its next frame, so once `set_tables`
//! returns no frame received later is judged by the old generation.
//!
//! Flows (see `mode_flows`): `afxdp` keeps its own table, mirrored into the XDP program's pinned
//! flow maps so the program can take over established connections when the daemon dies;
//! `hybrid` uses the pinned maps as its table, and the next packets of a flow it admits stay in
//! XDP.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{MapData, XskMap};
use portcullis_common::*;
use portcullis_ebpf_common::parse::Packet;
use serde::Serialize;
use tracing::{info, warn};

use portcullis_bpf::{monotonic_coarse_ns, FlowRecordCounters};

use crate::kernel_path::KernelPath;
use crate::mode_flows::Flows;
use crate::next_hop::NextHops;
use crate::pipeline::{new_packet, Outcome, Pipeline};
use crate::rewrite::forward_rewrite;
use crate::rings::{Action, Leg, QueueRings, RingConfig, RingStats};
use crate::setup::{rx_queue_count, SetupError};
use crate::tables::PolicyTables;

/// Drop events kept for the daemon between two reads; more are counted as lost.
const MAX_PENDING_EVENTS: usize = 4096;
/// How long a thread waits for frames before it looks at the stop flag and its chores.
const POLL_TIMEOUT_MS: i32 = 100;
/// How often a thread publishes its status and expires its flows.
const CHORES_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("the legs have different numbers of rx queues ({cluster_iface}: {cluster}, {external_iface}: {external}); give --queues N with N at most the smaller")]
    QueueMismatch {
        cluster_iface: String,
        cluster: u32,
        external_iface: String,
        external: u32,
    },
    #[error("{queues} queues asked for; the engine serves at most {MAX_XSK_QUEUES}")]
    TooManyQueues { queues: u32 },
    #[error("registering queue {queue}'s sockets in XSKS: {source}")]
    Register {
        queue: u32,
        source: aya::maps::MapError,
    },
    #[error("queue {queue}: {what}: {source}")]
    Thread {
        queue: u32,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("hybrid mode: opening the pinned flow map {name} under {dir}: {source}")]
    FlowMaps {
        name: &'static str,
        dir: String,
        source: aya::maps::MapError,
    },
}

/// What the engine is started with.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub cluster_iface: String,
    pub external_iface: String,
    /// Interface indexes of the legs (cluster, external).
    pub legs: (u32, u32),
    /// Queues served (0..n); `None`: every rx queue of the legs.
    pub queues: Option<u32>,
    pub rings: RingConfig,
    /// Hybrid mode: the pin directory of the XDP program's flow maps.
    pub hybrid_pins: Option<std::path::PathBuf>,
    /// afxdp mode: the pin directory of the XDP program's flow maps, which then mirror the
    /// engine's flows (see `mode_flows`).
    pub mirror_pins: Option<std::path::PathBuf>,
    /// Re-check flows admitted under another generation (`--revalidate`).
    pub revalidate: bool,
    /// Pin queue `q`'s thread to CPU `q` (modulo the CPUs).
    pub pin_threads: bool,
}

/// What one queue's thread did, as last published.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueStatus {
    pub queue: u32,
    pub rings: RingStats,
    /// Allowed packets the engine transmitted itself.
    pub forwarded: u64,
    /// Allowed packets handed to the kernel's output path (no usable next hop on the other leg,
    /// too big), and those the kernel refused.
    pub to_kernel: u64,
    pub to_kernel_errors: u64,
}

/// The engine's status for `status` and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineStatus {
    /// "afxdp" or "hybrid".
    pub mode: &'static str,
    pub generation: u64,
    pub queues: Vec<QueueStatus>,
    /// `COUNTER_*`-indexed, as the kernel's `COUNTERS`.
    pub counters: Vec<u64>,
    /// The allow records the engine wrote (to its event file) and those over its rate limit, as
    /// the kernel's `FLOW_RECORD_COUNTERS`.
    pub flow_records: FlowRecordCounters,
    /// Entries of the engine's own flow table (afxdp; in hybrid the flows are the program's).
    pub embryonic_flows: usize,
    pub confirmed_flows: usize,
    /// Drop events and allow records not kept because the daemon did not read them in time.
    pub drop_events_lost: u64,
}

impl EngineStatus {
    /// The counters, `COUNTER_*`-indexed.
    pub fn counters(&self) -> [u64; COUNTER_COUNT as usize] {
        let mut sums = [0u64; COUNTER_COUNT as usize];
        for (sum, c) in sums.iter_mut().zip(&self.counters) {
            *sum = *c;
        }
        sums
    }
}

struct Shared {
    tables: RwLock<Arc<PolicyTables>>,
    /// Bumped by every swap of `tables`: a thread compares it per frame (one atomic load) and
    /// takes the new tables when it moved.
    tables_version: AtomicU64,
    /// One pipeline (flow table and counters) for every queue: a connection's two directions may
    /// arrive on different queues (veth, like most NICs' RSS, does not hash them symmetrically),
    /// and a reply must find the flow its request opened. Locked per frame.
    pipeline: Mutex<Pipeline<Flows>>,
    stop: AtomicBool,
    queues: Mutex<Vec<QueueStatus>>,
    events: Mutex<VecDeque<DropEvent>>,
    events_lost: AtomicU32,
}

/// The running engine; dropping it stops its threads (the kernel then removes their sockets
/// from `XSKS`, and the XDP program judges everything again).
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    hybrid: bool,
    /// Where the threads' sockets are registered.
    xsks: XskMap<MapData>,
}

impl Engine {
    /// Opens every queue's sockets, registers them in `xsks` and starts the threads, judging by
    /// `tables` until [`Engine::set_tables`]. `epoch` is bumped on route and neighbour changes.
    /// On error nothing stays open.
    pub fn start(
        options: EngineOptions,
        xsks: XskMap<MapData>,
        epoch: Arc<AtomicU32>,
        tables: PolicyTables,
    ) -> Result<Engine, EngineError> {
        let queues = queue_count(&options)?;
        let hybrid = options.hybrid_pins.is_some();
        let pins = options
            .hybrid_pins
            .as_deref()
            .or(options.mirror_pins.as_deref());
        let flows = Flows::new(hybrid, pins)?;
        let shared = Arc::new(Shared {
            tables: RwLock::new(Arc::new(tables)),
            tables_version: AtomicU64::new(0),
            pipeline: Mutex::new(Pipeline::new(flows)),
            stop: AtomicBool::new(false),
            queues: Mutex::new(vec![QueueStatus::default(); queues as usize]),
            events: Mutex::new(VecDeque::new()),
            events_lost: AtomicU32::new(0),
        });
        let mut engine = Engine {
            shared: shared.clone(),
            threads: Vec::new(),
            hybrid: options.hybrid_pins.is_some(),
            xsks,
        };
        for queue in 0..queues {
            let (ready, started) = mpsc::channel();
            let worker = Worker::new(&options, queue, shared.clone(), epoch.clone());
            let thread = std::thread::Builder::new()
                .name(format!("afxdp-q{queue}"))
                .spawn(move || worker.run(ready))
                .map_err(|source| EngineError::Thread {
                    queue,
                    what: "starting its thread",
                    source,
                })?;
            engine.threads.push(thread);
            // Dropping `engine` on an error below stops the threads started so far.
            let fds = started.recv().unwrap_or(Err(EngineError::Thread {
                queue,
                what: "opening its sockets",
                source: std::io::Error::other("the thread ended"),
            }))?;
            for (role, fd) in [(ROLE_CLUSTER, fds[0]), (ROLE_EXTERNAL, fds[1])] {
                (engine.xsks)
                    .set(xsk_slot(role, queue), fd, 0)
                    .map_err(|source| EngineError::Register { queue, source })?;
            }
        }
        info!(
            queues,
            hybrid = engine.hybrid,
            "AF_XDP engine running on {} and {}",
            options.cluster_iface,
            options.external_iface
        );
        Ok(engine)
    }

    /// Makes `tables` the generation the engine judges by, from its threads' next frame on.
    pub fn set_tables(&self, tables: PolicyTables) {
        *self
            .shared
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(tables);
        self.shared.tables_version.fetch_add(1, Ordering::Release);
    }

    pub fn status(&self) -> EngineStatus {
        let generation =
            (self.shared.tables.read().unwrap_or_else(|p| p.into_inner())).generation();
        let (counters, flow_records, (embryonic_flows, confirmed_flows)) = {
            let p = lock(&self.shared.pipeline);
            let records = FlowRecordCounters::from_sums(&p.flow_record_counters);
            (p.counters.to_vec(), records, p.flows.lengths())
        };
        EngineStatus {
            mode: if self.hybrid { "hybrid" } else { "afxdp" },
            generation,
            queues: lock(&self.shared.queues).clone(),
            counters,
            flow_records,
            embryonic_flows,
            confirmed_flows,
            drop_events_lost: u64::from(self.shared.events_lost.load(Ordering::Relaxed)),
        }
    }

    /// The drop events reported since the last call.
    pub fn take_drop_events(&self) -> Vec<DropEvent> {
        lock(&self.shared.events).drain(..).collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// The tables in force and their version. The version is read first: a swap in between
    /// leaves new tables under the old version (taken again at the next frame), never old tables
    /// under the new one.
    fn tables(&self) -> (u64, Arc<PolicyTables>) {
        let version = self.tables_version.load(Ordering::Acquire);
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        (version, tables.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues to serve: every rx queue of the legs (which must agree), or the number asked for.
fn queue_count(options: &EngineOptions) -> Result<u32, EngineError> {
    let cluster = rx_queue_count(&options.cluster_iface)?;
    let external = rx_queue_count(&options.external_iface)?;
    let queues = match options.queues {
        Some(n) => n,
        None if cluster == external => cluster,
        None => {
            return Err(EngineError::QueueMismatch {
                cluster_iface: options.cluster_iface.clone(),
                cluster,
                external_iface: options.external_iface.clone(),
                external,
            })
        }
    };
    if queues == 0 || queues > MAX_XSK_QUEUES {
        return Err(EngineError::TooManyQueues { queues });
    }
    Ok(queues)
}

/// One queue's thread.
struct Worker {
    options: EngineOptions,
    queue: u32,
    shared: Arc<Shared>,
    epoch: Arc<AtomicU32>,
}

/// A thread's tools besides its pipeline.
struct Forwarder {
    next_hops: NextHops,
    kernel: KernelPath,
    legs: (u32, u32),
    forwarded: u64,
    to_kernel: u64,
    to_kernel_errors: u64,
}

impl Worker {
    fn new(
        options: &EngineOptions,
        queue: u32,
        shared: Arc<Shared>,
        epoch: Arc<AtomicU32>,
    ) -> Worker {
        Worker {
            options: options.clone(),
            queue,
            shared,
            epoch,
        }
    }

    fn run(self, ready: mpsc::Sender<Result<[RawFd; 2], EngineError>>) {
        let queue = self.queue;
        let thread_err = |what, source| EngineError::Thread {
            queue,
            what,
            source,
        };
        let opened = (|| {
            let o = &self.options;
            let rings = QueueRings::open(&o.cluster_iface, &o.external_iface, queue, &o.rings)?;
            let forwarder = Forwarder {
                next_hops: NextHops::new(self.epoch.clone())
                    .map_err(|e| thread_err("opening its netlink socket", e))?,
                kernel: KernelPath::new().map_err(|e| thread_err("opening its raw sockets", e))?,
                legs: o.legs,
                forwarded: 0,
                to_kernel: 0,
                to_kernel_errors: 0,
            };
            Ok((rings, forwarder))
        })();
        let (rings, forwarder) = match opened {
            Ok(parts) => parts,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let fds = rings.fds().map(|fd| fd.as_raw_fd());
        if self.options.pin_threads {
            pin_to_cpu(queue);
        }
        let _ = ready.send(Ok(fds));
        self.serve(rings, forwarder);
    }

    /// The loop: a batch, then the chores when due (queue 0's thread expires the flows).
    fn serve(&self, mut rings: QueueRings, mut fwd: Forwarder) {
        let mut pkt = new_packet();
        let mut last_chores = Instant::now();
        let revalidate = self.options.revalidate;
        let (mut version, mut tables) = self.shared.tables();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let polled = rings.poll(POLL_TIMEOUT_MS, |leg, frame| {
                if self.shared.tables_version.load(Ordering::Acquire) != version {
                    (version, tables) = self.shared.tables();
                }
                let now = monotonic_coarse_ns();
                let (sides, ifindex) = match leg {
                    Leg::Cluster => (CHECK_EGRESS_OF_SRC, fwd.legs.0),
                    Leg::External => (CHECK_INGRESS_OF_DST, fwd.legs.1),
                };
                let outcome = lock(&self.shared.pipeline)
                    .classify(&tables, frame, sides, ifindex, now, revalidate, &mut pkt);
                match outcome {
                    Outcome::Allowed => fwd.forward(frame, &pkt, leg, now),
                    Outcome::Opened(record) => {
                        self.report(record);
                        fwd.forward(frame, &pkt, leg, now)
                    }
                    Outcome::Dropped(event) => {
                        self.report(event);
                        Action::Drop
                    }
                    // The program steers only parsed IP packets.
                    Outcome::NotIp => Action::Drop,
                }
            });
            if let Err(e) = polled {
                warn!(queue = self.queue, error = %e, "AF_XDP rings");
                std::thread::sleep(Duration::from_millis(POLL_TIMEOUT_MS as u64));
            }
            if last_chores.elapsed() >= CHORES_EVERY {
                last_chores = Instant::now();
                if self.queue == 0 {
                    let mut p = lock(&self.shared.pipeline);
                    let (embryonic, confirmed) = p.flows.expire(monotonic_coarse_ns());
                    p.counters[COUNTER_GC_EMBRYONIC as usize] += embryonic as u64;
                    p.counters[COUNTER_GC_CONFIRMED as usize] += confirmed as u64;
                }
                self.publish(&rings, &fwd);
            }
        }
        self.publish(&rings, &fwd);
    }

    fn report(&self, event: DropEvent) {
        let mut events = lock(&self.shared.events);
        if events.len() >= MAX_PENDING_EVENTS {
            self.shared.events_lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        events.push_back(event);
    }

    fn publish(&self, rings: &QueueRings, fwd: &Forwarder) {
        lock(&self.shared.queues)[self.queue as usize] = QueueStatus {
            queue: self.queue,
            rings: rings.stats(),
            forwarded: fwd.forwarded,
            to_kernel: fwd.to_kernel,
            to_kernel_errors: fwd.to_kernel_errors,
        };
    }
}

impl Forwarder {
    /// An allowed frame received on `leg`: rewritten and sent out of the other leg when its next
    /// hop is there, else handed to the kernel's output path.
    fn forward(&mut self, frame: &mut [u8], pkt: &Packet, leg: Leg, now: u64) -> Action {
        let (ingress, egress) = match leg {
            Leg::Cluster => self.legs,
            Leg::External => (self.legs.1, self.legs.0),
        };
        if let Some(hop) = self.next_hops.resolve(&pkt.src, &pkt.dst, ingress, now) {
            if hop.ifindex == egress
                && forward_rewrite(frame, pkt, hop.dmac, hop.smac, hop.mtu).is_ok()
            {
                self.forwarded += 1;
                return Action::Transmit;
            }
        }
        self.through_kernel(frame, pkt)
    }

    /// The kernel routes the IP packet (TTL decremented here, as forwarding does) and resolves its
    /// neighbour; its answer to a packet too big for the route is the kernel's.
    fn through_kernel(&mut self, frame: &mut [u8], pkt: &Packet) -> Action {
        self.to_kernel += 1;
        let sent = forward_rewrite(frame, pkt, [0; 6], [0; 6], u32::MAX)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| self.kernel.send(&frame[pkt.l3_off..]));
        if sent.is_err() {
            self.to_kernel_errors += 1;
        }
        Action::Drop
    }
}

fn pin_to_cpu(queue: u32) {
    // SAFETY: sysconf without side effects; the CPU set is built and passed by pointer.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(queue as usize % cpus, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(queue, "could not pin the queue's thread to a CPU");
        }
    }
}

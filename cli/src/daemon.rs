//! What the gateway and node daemons share: apply what the source (manifest files or the
//! Kubernetes API, both through `portcullis-watcher`) publishes, keep the last good state (an object rejected by name keeps its previous version; input that cannot be
//! attributed or compiled holds back the whole update), apply through the enforcer, collect
//! expired flows, publish state for `status`/`monitor`, serve metrics, stop on SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use portcullis_policy::load::Loaded;
use portcullis_policy::model::Snapshot;
use portcullis_watcher::{FileOptions, FileSource, KubeOptions, KubeSource, State};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::preflight::PinLock;
use crate::SourceArgs;

/// Options every daemon takes.
#[derive(clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Directory for the daemon's published state (group names, last apply), read by `status`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

/// What a daemon publishes beside its pins for `status` and `monitor`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PublishedState {
    pub pid: u32,
    /// Group id (as in the maps) → `namespace/name` of its policies.
    pub groups: BTreeMap<u32, Vec<String>>,
    pub generation: u32,
    pub applied_unix_ms: u128,
    /// Map entries of the generation in force.
    pub entries: usize,
    pub rejected: Vec<String>,
    pub last_error: Option<String>,
    /// The source cannot be read right now (API server unreachable, a file unreadable): the
    /// generation in force is the last good one.
    pub stale: bool,
    /// Node daemon: every local pod and whether its interface is enforced.
    #[serde(default)]
    pub pods: Vec<crate::node::LocalPod>,
    /// Gateway with the AF_XDP engine: its status (mode, queues, rings, counters).
    #[serde(default)]
    pub engine: Option<serde_json::Value>,
    /// Egress: the node's steering, or the gateway's EgressGateways and translations.
    #[serde(default)]
    pub egress: Option<serde_json::Value>,
    /// Address → `namespace/name` of every pod of the generation in force (hostNetwork pods,
    /// which share their node's address, excluded): the names `monitor --type verdict` prints.
    #[serde(default)]
    pub addresses: BTreeMap<IpAddr, String>,
    /// Pinned maps and links found removed under the running daemon and pinned again.
    #[serde(default)]
    pub pins_restored: u64,
    /// Why removed pins could not be pinned again (the programs stay attached while the daemon
    /// runs; it keeps trying).
    #[serde(default)]
    pub pins_error: Option<String>,
}

impl PublishedState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    pub fn read(state_dir: &Path) -> Option<PublishedState> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let tmp = state_dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, Self::path(state_dir))
            .with_context(|| format!("publishing {}", state_dir.display()))
    }
}

/// Address → `namespace/name` of the pods of `snapshot` (hostNetwork pods excluded).
fn pod_addresses(snapshot: &Snapshot) -> BTreeMap<IpAddr, String> {
    snapshot
        .pods
        .iter()
        .filter(|p| !p.host_network)
        .flat_map(|p| {
            p.ips
                .iter()
                .map(move |ip| (*ip, format!("{}/{}", p.namespace, p.name)))
        })
        .collect()
}

/// A generation an enforcer put in force.
pub struct Applied {
    pub generation: u32,
    pub groups: BTreeMap<u32, Vec<String>>,
    pub entries: usize,
}

/// The datapath side of a daemon.
pub trait Enforcer {
    /// Compiles `snapshot` and makes it the enforced generation; on error the previous one stays.
    fn apply(&mut self, snapshot: &Arc<Snapshot>) -> Result<Applied>;
    /// Deletes expired flows; returns how many.
    fn gc_flows(&mut self) -> Result<usize>;
    /// Publishes datapath counters through the `metrics` facade.
    fn export_metrics(&self, groups: &BTreeMap<u32, Vec<String>>);
    /// Work besides applying snapshots (requests, retries), run on every turn of the loop and
    /// whenever [`Enforcer::wakeup`] is notified; true when [`Enforcer::pods`] changed.
    fn poll(&mut self) -> bool {
        false
    }
    /// True (once) when the enforcer wants the current snapshot applied again although it did not
    /// change (what it adds to the snapshot did).
    fn take_reapply(&mut self) -> bool {
        false
    }
    /// Notified when [`Enforcer::poll`] has work to do now.
    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// Local pods and their enforcement (node daemon), published for `status`.
    fn pods(&self) -> Vec<crate::node::LocalPod> {
        Vec::new()
    }
    /// The AF_XDP engine's status (gateway with `--datapath afxdp|hybrid`), published for
    /// `status`.
    fn engine_status(&self) -> Option<serde_json::Value> {
        None
    }
    /// Egress: the node's steering or the gateway's translations, published for `status`.
    fn egress_status(&mut self) -> Option<serde_json::Value> {
        None
    }
    /// Pins again the maps and links whose pins were removed under the daemon; their names.
    fn restore_pins(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Group id (as in the maps, for generation `generation`) → policies, for the live groups of
/// compiled tables (`policies` in id order; retired ids have none and are left out).
pub fn group_names<'a>(
    policies: impl Iterator<Item = &'a Vec<String>>,
    generation: u32,
    id: fn(usize, u32) -> u32,
) -> BTreeMap<u32, Vec<String>> {
    policies
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(i, p)| (id(i, generation), p.clone()))
        .collect()
}

/// Records one apply's compile and write times and delta size through the `metrics` facade.
pub fn record_apply(
    daemon: &'static str,
    compile: Duration,
    write: Duration,
    written: usize,
    deleted: usize,
) {
    metrics::histogram!("portcullis_compile_seconds", "daemon" => daemon)
        .record(compile.as_secs_f64());
    metrics::histogram!("portcullis_apply_write_seconds", "daemon" => daemon)
        .record(write.as_secs_f64());
    metrics::counter!("portcullis_map_entries_written_total", "daemon" => daemon)
        .increment(written as u64);
    metrics::counter!("portcullis_map_entries_deleted_total", "daemon" => daemon)
        .increment(deleted as u64);
}

/// Publishes per-group drop counters as `metric{group, policies}`.
pub fn export_group_drops(
    metric: &'static str,
    drops: &[portcullis_gateway::GroupDrops],
    groups: &BTreeMap<u32, Vec<String>>,
) {
    for g in drops {
        let policies = groups
            .get(&g.group)
            .map(|p| p.join(","))
            .unwrap_or_default();
        metrics::counter!(metric, "group" => g.group.to_string(), "policies" => policies)
            .absolute(g.packets);
    }
}

/// Publishes the flow records of a datapath (`side`: "gateway", "node"; `labels`: the gateway's
/// `judged_by`, "xdp" or "engine"): `portcullis_{side}_flow_records_total` and `_lost_total`, the
/// allow records of new flows written and lost (`monitor --type verdict`).
pub fn export_flow_records(
    side: &str,
    labels: &[(&'static str, &'static str)],
    records: &portcullis_gateway::FlowRecordCounters,
) {
    metrics::counter!(format!("portcullis_{side}_flow_records_total"), labels)
        .absolute(records.written);
    metrics::counter!(format!("portcullis_{side}_flow_records_lost_total"), labels)
        .absolute(records.lost);
}

/// Publishes the flow tables of a datapath (`side`: "gateway", "node"): entries, capacity and
/// LRU evictions per table.
pub fn export_flow_tables(side: &str, flows: &portcullis_gateway::FlowCounts) {
    for (table, entries, capacity, evicted) in [
        (
            "confirmed",
            flows.confirmed,
            flows.confirmed_capacity,
            flows.confirmed_evicted,
        ),
        (
            "embryonic",
            flows.embryonic,
            flows.embryonic_capacity,
            flows.embryonic_evicted,
        ),
    ] {
        metrics::gauge!(format!("portcullis_{side}_flows"), "table" => table).set(entries as f64);
        metrics::gauge!(format!("portcullis_{side}_flow_capacity"), "table" => table)
            .set(capacity as f64);
        metrics::counter!(format!("portcullis_{side}_flow_evictions_total"), "table" => table)
            .absolute(evicted);
    }
}

/// The map an update did not fit in, when that is why it was refused.
fn full_table(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|cause| match cause.downcast_ref() {
        Some(portcullis_gateway::Error::TooManyEntries { map, .. }) => Some(*map),
        Some(portcullis_gateway::Error::TableFull { name, .. }) => Some(*name),
        _ => None,
    })
}

/// How often a daemon looks for pins removed under it.
const PIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

struct Reloader<'a, E> {
    enforcer: &'a mut E,
    state: PublishedState,
    state_dir: PathBuf,
    /// Shared with the source's published value when that had no rejected object.
    last_good: Arc<Snapshot>,
    name: &'static str,
    /// The daemon's lock on its pin directory (it follows a directory made again).
    lock: &'a PinLock,
}

impl<E: Enforcer> Reloader<'_, E> {
    /// Applies what the source published, keeping the last good state.
    fn reload(&mut self, published: &State) -> Result<()> {
        let started = published.changed_at;
        for e in &published.errors {
            warn!(error = %e, "rejected; its last good version (if any) stays");
        }
        let rejected: Vec<String> = published.errors.iter().map(|e| e.to_string()).collect();
        // Without rejected objects the published snapshot is used as it is: no copy of every pod
        // and policy on the way to the compiler.
        let merged = if published.errors.is_empty() {
            Ok(Arc::clone(&published.snapshot))
        } else {
            Loaded {
                snapshot: (*published.snapshot).clone(),
                errors: published.errors.clone(),
            }
            .with_last_good(&self.last_good)
            .map(Arc::new)
        };
        let result = merged.map_err(anyhow::Error::from).and_then(|snapshot| {
            let applied = self.enforcer.apply(&snapshot)?;
            Ok((snapshot, applied))
        });
        self.state.stale = published.stale;
        let outcome = match result {
            Ok((snapshot, applied)) => {
                let latency = started.elapsed();
                metrics::histogram!("portcullis_update_seconds", "daemon" => self.name)
                    .record(latency.as_secs_f64());
                metrics::gauge!("portcullis_generation", "daemon" => self.name)
                    .set(f64::from(applied.generation));
                metrics::gauge!("portcullis_map_entries", "daemon" => self.name)
                    .set(applied.entries as f64);
                info!(
                    generation = applied.generation,
                    entries = applied.entries,
                    rejected = rejected.len(),
                    total_ms = latency.as_secs_f64() * 1e3,
                    "policy generation in force (latency from the first change seen)"
                );
                self.state.groups = applied.groups;
                self.state.addresses = pod_addresses(&snapshot);
                self.state.pods = self.enforcer.pods();
                self.state.egress = self.enforcer.egress_status();
                self.state.generation = applied.generation;
                self.state.entries = applied.entries;
                self.state.rejected = rejected;
                self.state.last_error = None;
                self.state.applied_unix_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                self.last_good = snapshot;
                Ok(())
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "update not applied; the last good generation stays enforced"
                );
                metrics::counter!("portcullis_update_failures_total", "daemon" => self.name)
                    .increment(1);
                if let Some(table) = full_table(&e) {
                    metrics::counter!("portcullis_update_table_full_total", "daemon" => self.name, "table" => table)
                        .increment(1);
                }
                self.state.last_error = Some(format!("{e:#}"));
                Err(e)
            }
        };
        if let Err(e) = self.state.write(&self.state_dir) {
            warn!(error = format!("{e:#}"), "could not publish state");
        }
        outcome
    }
}

impl<E: Enforcer> Reloader<'_, E> {
    /// Pins removed under the daemon (`rm -rf` of the pin directory, a map or link unlinked)
    /// are pinned again: without it a removed link pin would detach the program when the
    /// daemon exits, and a restart would start from empty maps. It says so in the log, the
    /// metrics (`portcullis_pins_restored_total`) and `status`.
    fn check_pins(&mut self) {
        let before = (self.state.pins_restored, self.state.pins_error.clone());
        match self.enforcer.restore_pins() {
            Ok(names) if names.is_empty() => self.state.pins_error = None,
            Ok(names) => {
                warn!(
                    pins = names.join(", "),
                    "pins were removed under the running daemon; pinned them again"
                );
                if let Err(e) = self.lock.follow() {
                    error!(
                        error = format!("{e:#}"),
                        "the pin directory made again cannot be locked"
                    );
                }
                metrics::counter!("portcullis_pins_restored_total", "daemon" => self.name)
                    .increment(names.len() as u64);
                self.state.pins_restored += names.len() as u64;
                self.state.pins_error = None;
            }
            Err(e) => {
                let message = format!("{e:#}");
                if self.state.pins_error.as_ref() != Some(&message) {
                    error!(
                        error = message,
                        "pins were removed under the running daemon and cannot be pinned \
                         again; the programs stay attached while it runs (it keeps trying)"
                    );
                }
                self.state.pins_error = Some(message);
            }
        }
        if (self.state.pins_restored, self.state.pins_error.clone()) != before {
            if let Err(e) = self.state.write(&self.state_dir) {
                warn!(error = format!("{e:#}"), "could not publish state");
            }
        }
    }
}

/// Runs the daemon loop until SIGTERM or SIGINT. A first input that cannot be used at all is an
/// error (pins of an earlier run keep enforcing); later bad input only holds back that update.
/// The end of a daemon: with `unpin` (`--unpin-on-exit`) its programs are detached and its pins
/// removed; without, the pinned programs keep enforcing after it exits.
pub fn stop<E: std::error::Error + Send + Sync + 'static>(
    unpin: Option<impl FnOnce() -> Result<(), E>>,
    pin_dir: &Path,
) -> Result<()> {
    match unpin {
        Some(unpin) => {
            unpin().context("removing pins")?;
            // The directory goes too when nothing else is pinned there (fails harmlessly otherwise).
            let _ = std::fs::remove_dir(pin_dir);
            info!("stopped; programs detached and pins removed");
        }
        None => info!(pin_dir = %pin_dir.display(), "stopped; the pinned programs keep enforcing"),
    }
    Ok(())
}

pub fn serve<E: Enforcer>(
    enforcer: &mut E,
    args: &DaemonArgs,
    (name, lock): (&'static str, &PinLock),
    state_dir: PathBuf,
) -> Result<()> {
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
        info!(%addr, "serving Prometheus metrics");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    // Counters of rare events exist from the start (a healthy daemon shows 0, not no data).
    for counter in [
        "portcullis_update_failures_total",
        "portcullis_flows_expired_total",
        "portcullis_pins_restored_total",
    ] {
        metrics::counter!(counter, "daemon" => name).increment(0);
    }
    let mut reloader = Reloader {
        enforcer,
        state: PublishedState {
            pid: std::process::id(),
            ..PublishedState::default()
        },
        state_dir,
        last_good: Arc::default(),
        name,
        lock,
    };
    // The source runs on a small Tokio runtime; this thread applies what it publishes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the source runtime")?;
    let (_file_source, _kube_source, mut published) = if args.source.is_kube() {
        let source = runtime
            .block_on(KubeSource::connect(
                args.source.kubeconfig.as_deref(),
                KubeOptions::default(),
            ))
            .context("connecting to the Kubernetes API")?;
        let rx = source.subscribe();
        (None, Some(source), rx)
    } else {
        let _guard = runtime.enter();
        let source = FileSource::spawn(args.source.manifests.clone(), FileOptions::default())
            .context("reading the manifests")?;
        let rx = source.subscribe();
        (Some(source), None, rx)
    };
    // Nothing is enforced from a partial view: wait for the source's first complete read.
    let mut first = true;
    let wake = reloader.enforcer.wakeup();
    let mut last_gc = Instant::now();
    let mut last_metrics = Instant::now();
    let mut last_pin_check = Instant::now();
    let mut applied_snapshot: Option<Arc<Snapshot>> = None;
    // The value the source holds now has not been looked at (it may have published before we
    // subscribed).
    let mut pending = true;
    while !stop.load(Ordering::Relaxed) {
        if std::mem::take(&mut pending) {
            let state = published.borrow_and_update().clone();
            let unchanged = applied_snapshot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &state.snapshot))
                && state.errors.is_empty();
            if state.source_ready && !unchanged {
                let outcome = reloader.reload(&state);
                if first {
                    outcome.context("the initial cluster state cannot be enforced")?;
                    first = false;
                }
                applied_snapshot = Some(state.snapshot.clone());
            } else if state.source_ready {
                // Only staleness changed.
                reloader.state.stale = state.stale;
                if let Err(e) = reloader.state.write(&reloader.state_dir) {
                    warn!(error = format!("{e:#}"), "could not publish state");
                }
            }
        }
        // Wake as soon as the source publishes or the enforcer has work; otherwise look at the
        // stop flag, GC and metrics every 200 ms.
        let tick = Duration::from_millis(200);
        let woke = runtime.block_on(async {
            tokio::time::timeout(tick, async {
                match &wake {
                    Some(wake) => tokio::select! {
                        changed = published.changed() => Some(changed),
                        () = wake.notified() => None,
                    },
                    None => Some(published.changed().await),
                }
            })
            .await
        });
        match woke {
            Ok(Some(Ok(()))) => pending = true,
            // The source has stopped publishing: keep enforcing what we have.
            Ok(Some(Err(_))) => std::thread::sleep(tick),
            Ok(None) | Err(_) => {}
        }
        if !first && reloader.enforcer.poll() {
            reloader.state.pods = reloader.enforcer.pods();
            reloader.state.engine = reloader.enforcer.engine_status();
            reloader.state.egress = reloader.enforcer.egress_status();
            if let Err(e) = reloader.state.write(&reloader.state_dir) {
                warn!(error = format!("{e:#}"), "could not publish state");
            }
        }
        if !first && reloader.enforcer.take_reapply() {
            pending = true;
            applied_snapshot = None;
        }
        if last_gc.elapsed() >= Duration::from_secs(10) {
            last_gc = Instant::now();
            match reloader.enforcer.gc_flows() {
                Ok(n) => metrics::counter!("portcullis_flows_expired_total", "daemon" => name)
                    .increment(n as u64),
                Err(e) => warn!(error = %e, "flow GC failed"),
            }
        }
        if last_pin_check.elapsed() >= PIN_CHECK_INTERVAL {
            last_pin_check = Instant::now();
            reloader.check_pins();
        }
        if args.metrics_addr.is_some() && last_metrics.elapsed() >= Duration::from_secs(1) {
            last_metrics = Instant::now();
            reloader.enforcer.export_metrics(&reloader.state.groups);
        }
    }
    Ok(())
}

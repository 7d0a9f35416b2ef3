//! Inputs for Portcullis. Two sources publish the same [`State`] through a
//! [`tokio::sync::watch`] channel:
//!
//! - [`FileSource`]: Namespace, Pod, NetworkPolicy, Node and EgressGateway manifests in files and
//!   directories
//!   (recursive; `.yaml`, `.yml`, `.json`), reloaded when they change (events coalesced over a short
//!   window).
//! - [`KubeSource`]: list-then-watch of NetworkPolicy, Pod, Namespace, Node and EgressGateway on a
//!   Kubernetes API server, resuming from the last resourceVersion, relisting on `410 Gone`,
//!   reconnecting with exponential backoff and jitter; without the EgressGateway CRD, no
//!   EgressGateways.
//!
//! Both validate through [`portcullis_policy::load::SnapshotBuilder`]: an invalid object is rejected
//! by name and the rest still load. Neither ever publishes a partial view as ready, and neither
//! drops the last good state because the source became unreachable or unreadable: that state is
//! kept and marked (`stale`, or an error naming the file).
//!
//! Metrics (through the `metrics` facade): `portcullis_watcher_events_total{source,kind}`,
//! `portcullis_watcher_rejected_objects_total{source}` (objects newly rejected by a publish),
//! `portcullis_watcher_publish_latency_seconds{source}` (first coalesced event to publish),
//! `portcullis_watcher_relists_total{kind}`, `portcullis_watcher_reconnects_total{kind}`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::load::LoadError;
use portcullis_policy::model::Snapshot;

mod file;
mod kube_source;

pub use file::{load_files, FileOptions, FileSource};
pub use kube_source::{client_from_kubeconfig, load_from_kube, KubeOptions, KubeSource, KubeStats};
pub use portcullis_policy::load::Loaded;

pub const EVENTS_TOTAL: &str = "portcullis_watcher_events_total";
pub const REJECTED_OBJECTS_TOTAL: &str = "portcullis_watcher_rejected_objects_total";
pub const PUBLISH_LATENCY_SECONDS: &str = "portcullis_watcher_publish_latency_seconds";
pub const RELISTS_TOTAL: &str = "portcullis_watcher_relists_total";
pub const RECONNECTS_TOTAL: &str = "portcullis_watcher_reconnects_total";

/// What a source publishes. Every publish increments `revision`; a publish that only changes
/// `stale` or `errors` keeps the same `snapshot` (the same `Arc`), so consumers can skip
/// recompiling with [`Arc::ptr_eq`].
#[derive(Clone, Debug)]
pub struct State {
    /// Every accepted object (last good state).
    pub snapshot: Arc<Snapshot>,
    /// Rejected objects, and for a file source, files that could not be read on the last reload.
    pub errors: Vec<LoadError>,
    /// 0 before the first publish; then 1, 2, ...
    pub revision: u64,
    /// True once the source has been read completely (for Kubernetes: the first full list of
    /// every kind). Never true for a partial view.
    pub source_ready: bool,
    /// The source cannot be read right now (API server unreachable, a file unreadable); the
    /// snapshot is the last good one.
    pub stale: bool,
    /// When the first event coalesced into this revision reached the watcher.
    pub changed_at: Instant,
    /// When this revision was published (`published_at - changed_at` is the event-to-publish
    /// latency).
    pub published_at: Instant,
}

impl State {
    fn initial() -> State {
        let now = Instant::now();
        State {
            snapshot: Arc::new(Snapshot::default()),
            errors: Vec::new(),
            revision: 0,
            source_ready: false,
            stale: false,
            changed_at: now,
            published_at: now,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching files: {0}")]
    Notify(#[from] notify::Error),
    #[error("reading kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("finding the cluster (kubeconfig or in-cluster): {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared publishing logic: revision numbering, metrics and the log line.
struct Publisher {
    source: &'static str,
    tx: tokio::sync::watch::Sender<State>,
    revision: u64,
    rejected: HashSet<String>,
}

impl Publisher {
    fn new(source: &'static str) -> (Publisher, tokio::sync::watch::Receiver<State>) {
        let (tx, rx) = tokio::sync::watch::channel(State::initial());
        (
            Publisher {
                source,
                tx,
                revision: 0,
                rejected: HashSet::new(),
            },
            rx,
        )
    }

    fn publish(
        &mut self,
        snapshot: Arc<Snapshot>,
        errors: Vec<LoadError>,
        source_ready: bool,
        stale: bool,
        changed_at: Instant,
    ) {
        let now_rejected: HashSet<String> = errors.iter().map(|e| e.to_string()).collect();
        let new = now_rejected.difference(&self.rejected).count() as u64;
        if new > 0 {
            metrics::counter!(REJECTED_OBJECTS_TOTAL, "source" => self.source).increment(new);
            for e in errors.iter() {
                if !self.rejected.contains(&e.to_string()) {
                    tracing::warn!(source = self.source, "rejected: {e}");
                }
            }
        }
        self.rejected = now_rejected;
        self.revision += 1;
        let published_at = Instant::now();
        let latency = published_at.saturating_duration_since(changed_at);
        metrics::histogram!(PUBLISH_LATENCY_SECONDS, "source" => self.source)
            .record(latency.as_secs_f64());
        tracing::info!(
            source = self.source,
            revision = self.revision,
            namespaces = snapshot.namespaces.len(),
            pods = snapshot.pods.len(),
            policies = snapshot.policies.len(),
            rejected = errors.len(),
            stale,
            source_ready,
            latency_ms = latency.as_secs_f64() * 1e3,
            "published"
        );
        let state = State {
            snapshot,
            errors,
            revision: self.revision,
            source_ready,
            stale,
            changed_at,
            published_at,
        };
        self.tx.send_replace(state);
    }

    fn current(&self) -> State {
        self.tx.borrow().clone()
    }
}

/// Sleep helper used by both sources: waits until `deadline` or until `rx` yields, whichever first.
async fn recv_until<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    deadline: Instant,
) -> Option<Option<T>> {
    let now = Instant::now();
    if deadline <= now {
        return match rx.try_recv() {
            Ok(v) => Some(Some(v)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(None),
        };
    }
    tokio::time::timeout(deadline - now, rx.recv()).await.ok()
}

/// Default coalescing window for both sources.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(100);

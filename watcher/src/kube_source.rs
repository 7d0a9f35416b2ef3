//! The Kubernetes source: list-then-watch of Namespace, Pod and NetworkPolicy.
//!
//! Each kind runs its own loop: a paginated list (a consistent read), then watches from the list's
//! resourceVersion, following every event's and bookmark's resourceVersion so that a reconnect
//! resumes where it stopped. `410 Gone` (the server no longer has that history) and an undecodable
//! event (an event may have been lost) cause a relist; any other failure (connection refused or
//! reset, a stream that stalls past the server-side timeout) a reconnect after an exponential
//! backoff with jitter. A relist replaces that kind's whole store, so deletions missed while
//! disconnected are reconciled. An aggregator publishes once all three kinds have been listed, then
//! at most once per short window: an isolated change at once, a burst coalesced.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use portcullis_policy::load::{LoadError, Loaded, Origin, SnapshotBuilder, NAMESPACE_NAME_LABEL};
use portcullis_policy::model::{self, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{
    recv_until, Publisher, Result, State, DEFAULT_COALESCE, EVENTS_TOTAL, RECONNECTS_TOTAL,
    RELISTS_TOTAL,
};

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// At most one publish per window this long: a change after a quiet window is published at
    /// once, changes within a window of the last publish are collected until it ends.
    pub coalesce: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`. The delay actually slept
    /// is uniformly random in [d/2, d].
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `timeoutSeconds` of every watch request: the server ends the watch after this and we
    /// resume it at once.
    pub watch_timeout: Duration,
    /// A watch stream that sends nothing (not even its end) for this long is considered stalled
    /// and reconnected. Must exceed `watch_timeout`.
    pub stall_timeout: Duration,
    /// `limit` of list requests (pagination).
    pub page_size: u32,
}

impl Default for KubeOptions {
    fn default() -> KubeOptions {
        KubeOptions {
            coalesce: DEFAULT_COALESCE,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(290),
            stall_timeout: Duration::from_secs(320),
            page_size: 500,
        }
    }
}

/// Counters of a running [`KubeSource`], for status output and tests.
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Complete lists of one kind after its first one (410 Gone, undecodable events, failures).
    pub relists: AtomicU64,
    /// Failed list or watch attempts that were retried after a backoff.
    pub reconnects: AtomicU64,
    /// Watch events received (all kinds, bookmarks included).
    pub events: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Namespace = 0,
    Pod = 1,
    Policy = 2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Policy => "NetworkPolicy",
        }
    }
}

type Key = (String, String);

/// One object converted to the policy model on arrival (or the reasons it is rejected): the API
/// objects themselves are not kept, and an update that changes nothing policy-relevant (pod
/// conditions, annotations, ...) is recognised by comparing models and publishes nothing.
#[derive(Clone, Debug)]
enum Obj {
    Namespace(Converted<model::Namespace>),
    Pod(Converted<model::Pod>),
    Policy(Converted<model::Policy>),
}

type Converted<M> = std::result::Result<M, Vec<LoadError>>;

fn origin(kind: Kind) -> Origin {
    Origin {
        source: format!("kubernetes {}", kind.name()),
        document: 1,
    }
}

fn converted<M>(loaded: Loaded, pick: impl FnOnce(Snapshot) -> Option<M>) -> Converted<M> {
    if loaded.errors.is_empty() {
        pick(loaded.snapshot).ok_or_default()
    } else {
        Err(loaded.errors)
    }
}

trait OkOrDefault<M> {
    fn ok_or_default(self) -> Converted<M>;
}

impl<M> OkOrDefault<M> for Option<M> {
    fn ok_or_default(self) -> Converted<M> {
        self.ok_or_else(Vec::new)
    }
}

/// What a watched kind knows how to do: say whether it is gone, convert itself.
trait Watched: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    const KIND: Kind;
    fn convert(self) -> Obj;
    /// Terminating objects are treated as deleted where that is the API's meaning.
    fn is_gone(&self) -> bool {
        false
    }
}

impl Watched for core::Namespace {
    const KIND: Kind = Kind::Namespace;
    fn convert(self) -> Obj {
        let mut builder = SnapshotBuilder::new();
        builder.add_namespace(&origin(Self::KIND), self);
        Obj::Namespace(converted(builder.build(), |s| {
            s.namespaces.into_values().next()
        }))
    }
}

impl Watched for core::Pod {
    const KIND: Kind = Kind::Pod;
    fn convert(self) -> Obj {
        let mut builder = SnapshotBuilder::new();
        builder.add_pod(&origin(Self::KIND), self);
        Obj::Pod(converted(builder.build(), |s| s.pods.into_iter().next()))
    }
    /// A pod being deleted (deletionTimestamp set) no longer gets policy: its address may be
    /// reused as soon as it is gone, and the API says it is going.
    fn is_gone(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

impl Watched for net::NetworkPolicy {
    const KIND: Kind = Kind::Policy;
    fn convert(self) -> Obj {
        let mut builder = SnapshotBuilder::new();
        builder.add_policy(&origin(Self::KIND), self);
        Obj::Policy(converted(builder.build(), |s| {
            s.policies.into_iter().next()
        }))
    }
}

fn key_of<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

enum Msg {
    /// A complete list of one kind: replaces everything known of it.
    Listed(Kind, Vec<(Key, Obj)>),
    Apply(Key, Obj),
    Delete(Kind, Key),
    Connected(Kind),
    Disconnected(Kind),
}

/// A running Kubernetes source. Dropping it stops every watch.
pub struct KubeSource {
    rx: watch::Receiver<State>,
    stats: Arc<KubeStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A client from a kubeconfig file, or when `None`, the usual inference (in-cluster service
/// account, then `$KUBECONFIG` / `~/.kube/config`).
pub async fn client_from_kubeconfig(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

impl KubeSource {
    /// Connects with [`client_from_kubeconfig`] and starts watching.
    pub async fn connect(kubeconfig: Option<&Path>, options: KubeOptions) -> Result<KubeSource> {
        let client = client_from_kubeconfig(kubeconfig).await?;
        Ok(KubeSource::spawn(client, options))
    }

    /// Starts watching with `client`. Must be called within a Tokio runtime. The first state with
    /// `source_ready` comes after the first complete list of all three kinds.
    pub fn spawn(client: Client, options: KubeOptions) -> KubeSource {
        let (tx, msg_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(KubeStats::default());
        let (publisher, rx) = Publisher::new("kubernetes");
        let tasks = vec![
            tokio::spawn(run_kind(
                Api::<core::Namespace>::all(client.clone()),
                tx.clone(),
                options.clone(),
                stats.clone(),
            )),
            tokio::spawn(run_kind(
                Api::<core::Pod>::all(client.clone()),
                tx.clone(),
                options.clone(),
                stats.clone(),
            )),
            tokio::spawn(run_kind(
                Api::<net::NetworkPolicy>::all(client),
                tx,
                options.clone(),
                stats.clone(),
            )),
            tokio::spawn(aggregate(msg_rx, publisher, options.coalesce)),
        ];
        KubeSource { rx, stats, tasks }
    }

    /// A receiver of every published [`State`] (starts at the current one).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.rx.clone()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.rx.borrow().clone()
    }

    pub fn stats(&self) -> &KubeStats {
        &self.stats
    }
}

struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: SmallRng,
}

impl Backoff {
    fn new(options: &KubeOptions) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (std::process::id() as u64) << 32;
        Backoff {
            initial: options.backoff_initial,
            max: options.backoff_max,
            failures: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(20));
        self.failures += 1;
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }
}

/// A complete, paginated list; `map` runs on each page as it arrives (so full API objects of
/// only one page are alive at a time).
async fn list_all<K: Watched, T>(
    api: &Api<K>,
    page_size: u32,
    mut map: impl FnMut(K) -> Option<T>,
) -> kube::Result<(Vec<T>, String)> {
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(page_size);
    loop {
        let page = api.list(&params).await?;
        items.extend(page.items.into_iter().filter_map(&mut map));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((items, page.metadata.resource_version.unwrap_or_default())),
        }
    }
}

fn is_gone_error(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 410)
}

enum WatchEnd {
    /// The server ended the watch normally (timeout): resume at once.
    Resume,
    /// History is gone or an event was lost: list again.
    Relist,
    /// Transport failure: resume after a backoff.
    Failed,
}

async fn run_kind<K: Watched>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Msg>,
    options: KubeOptions,
    stats: Arc<KubeStats>,
) {
    let kind = K::KIND;
    let mut backoff = Backoff::new(&options);
    let mut listed_once = false;
    let watch_secs = options.watch_timeout.as_secs().clamp(1, u32::MAX as u64) as u32;
    loop {
        let listed = list_all(&api, options.page_size, |o: K| {
            (!o.is_gone()).then(|| (key_of(&o), o.convert()))
        })
        .await;
        let (objects, mut version) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(
                    kind = kind.name(),
                    "list failed: {e}; retrying in {delay:?}"
                );
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(RECONNECTS_TOTAL, "kind" => kind.name()).increment(1);
                let _ = tx.send(Msg::Disconnected(kind));
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if listed_once {
            stats.relists.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(RELISTS_TOTAL, "kind" => kind.name()).increment(1);
        }
        listed_once = true;
        backoff.reset();
        if tx.send(Msg::Listed(kind, objects)).is_err() {
            return;
        }
        tracing::debug!(kind = kind.name(), %version, "listed");

        // Watch from `version` until the history is gone.
        loop {
            let params = WatchParams::default().timeout(watch_secs);
            let end = match api.watch(&params, &version).await {
                Err(e) if is_gone_error(&e) => WatchEnd::Relist,
                Err(e) => {
                    tracing::warn!(kind = kind.name(), "watch failed: {e}");
                    WatchEnd::Failed
                }
                Ok(stream) => {
                    let _ = tx.send(Msg::Connected(kind));
                    let mut stream = std::pin::pin!(stream.into_stream());
                    loop {
                        let next = tokio::time::timeout(options.stall_timeout, stream.next()).await;
                        let event = match next {
                            Err(_) => {
                                tracing::warn!(kind = kind.name(), "watch stalled; reconnecting");
                                break WatchEnd::Failed;
                            }
                            Ok(None) => break WatchEnd::Resume,
                            Ok(Some(Err(e))) if is_gone_error(&e) => break WatchEnd::Relist,
                            // A line that is not a watch event (kube reports one that parses as
                            // nothing better as an empty `Status`): an event may have been lost.
                            Ok(Some(Err(
                                e @ (kube::Error::SerdeError(_) | kube::Error::Api(_)),
                            ))) => {
                                tracing::warn!(
                                    kind = kind.name(),
                                    "undecodable watch event ({e}); relisting"
                                );
                                break WatchEnd::Relist;
                            }
                            Ok(Some(Err(e))) => {
                                tracing::warn!(kind = kind.name(), "watch stream failed: {e}");
                                break WatchEnd::Failed;
                            }
                            Ok(Some(Ok(event))) => event,
                        };
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        let (label, msg) = match event {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                if let Some(v) = o.resource_version() {
                                    version = v;
                                }
                                let key = key_of(&o);
                                if o.is_gone() {
                                    ("modified", Some(Msg::Delete(kind, key)))
                                } else {
                                    ("modified", Some(Msg::Apply(key, o.convert())))
                                }
                            }
                            WatchEvent::Deleted(o) => {
                                if let Some(v) = o.resource_version() {
                                    version = v;
                                }
                                ("deleted", Some(Msg::Delete(kind, key_of(&o))))
                            }
                            WatchEvent::Bookmark(b) => {
                                version = b.metadata.resource_version;
                                ("bookmark", None)
                            }
                            WatchEvent::Error(status) if status.code == 410 => {
                                break WatchEnd::Relist;
                            }
                            WatchEvent::Error(status) => {
                                tracing::warn!(kind = kind.name(), "watch error event: {status:?}");
                                break WatchEnd::Failed;
                            }
                        };
                        metrics::counter!(EVENTS_TOTAL, "source" => "kubernetes", "kind" => kind.name(), "type" => label)
                            .increment(1);
                        if let Some(msg) = msg {
                            if tx.send(msg).is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            match end {
                WatchEnd::Resume => backoff.reset(),
                WatchEnd::Relist => {
                    tracing::info!(kind = kind.name(), %version, "resource version gone or event lost; relisting");
                    break;
                }
                WatchEnd::Failed => {
                    let delay = backoff.next();
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(RECONNECTS_TOTAL, "kind" => kind.name()).increment(1);
                    let _ = tx.send(Msg::Disconnected(kind));
                    tracing::info!(kind = kind.name(), "reconnecting in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[derive(Default)]
struct Stores {
    namespaces: BTreeMap<Key, Converted<model::Namespace>>,
    pods: BTreeMap<Key, Converted<model::Pod>>,
    policies: BTreeMap<Key, Converted<model::Policy>>,
    listed: [bool; 3],
    down: [bool; 3],
}

/// Inserts unless equal; true if the map changed.
fn upsert<M: PartialEq>(
    map: &mut BTreeMap<Key, Converted<M>>,
    key: Key,
    value: Converted<M>,
) -> bool {
    match map.get(&key) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(key, value);
            true
        }
    }
}

impl Stores {
    /// Applies one message; true if the snapshot or the rejected objects changed.
    fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Listed(kind, objects) => {
                let mut fresh = Stores::default();
                for (key, obj) in objects {
                    fresh.insert(key, obj);
                }
                let changed = match kind {
                    Kind::Namespace => replace_if_changed(&mut self.namespaces, fresh.namespaces),
                    Kind::Pod => replace_if_changed(&mut self.pods, fresh.pods),
                    Kind::Policy => replace_if_changed(&mut self.policies, fresh.policies),
                };
                if self.listed[kind as usize] {
                    tracing::info!(kind = kind.name(), changed, "relisted");
                }
                let first = !std::mem::replace(&mut self.listed[kind as usize], true);
                self.down[kind as usize] = false;
                changed || first
            }
            Msg::Apply(key, obj) => self.insert(key, obj),
            Msg::Delete(kind, key) => match kind {
                Kind::Namespace => self.namespaces.remove(&key).is_some(),
                Kind::Pod => self.pods.remove(&key).is_some(),
                Kind::Policy => self.policies.remove(&key).is_some(),
            },
            // Connection state is published through `stale()`, not as a content change.
            Msg::Connected(kind) => {
                self.down[kind as usize] = false;
                false
            }
            Msg::Disconnected(kind) => {
                self.down[kind as usize] = true;
                false
            }
        }
    }

    fn insert(&mut self, key: Key, obj: Obj) -> bool {
        match obj {
            Obj::Namespace(o) => upsert(&mut self.namespaces, key, o),
            Obj::Pod(o) => upsert(&mut self.pods, key, o),
            Obj::Policy(o) => upsert(&mut self.policies, key, o),
        }
    }

    fn ready(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    fn stale(&self) -> bool {
        self.down.iter().any(|d| *d)
    }

    /// The snapshot, exactly as [`SnapshotBuilder::build`] would make it from the same objects:
    /// namespaces that pods or policies name but that do not exist get only their name label.
    fn build(&self) -> Loaded {
        let mut errors = Vec::new();
        let mut namespaces = BTreeMap::new();
        for entry in self.namespaces.values() {
            match entry {
                Ok(ns) => {
                    namespaces.insert(ns.name.clone(), ns.clone());
                }
                Err(e) => errors.extend(e.iter().cloned()),
            }
        }
        let pods = collect_ok(&self.pods, &mut errors);
        let policies = collect_ok(&self.policies, &mut errors);
        for name in pods
            .iter()
            .map(|p| &p.namespace)
            .chain(policies.iter().map(|p| &p.namespace))
        {
            if !namespaces.contains_key(name) {
                namespaces.insert(
                    name.clone(),
                    model::Namespace {
                        name: name.clone(),
                        labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.clone())]),
                    },
                );
            }
        }
        errors.sort_by_key(|e| e.to_string());
        Loaded {
            snapshot: Snapshot {
                namespaces,
                pods,
                policies,
            },
            errors,
        }
    }
}

fn replace_if_changed<M: PartialEq>(
    map: &mut BTreeMap<Key, Converted<M>>,
    fresh: BTreeMap<Key, Converted<M>>,
) -> bool {
    if *map == fresh {
        false
    } else {
        *map = fresh;
        true
    }
}

fn collect_ok<M: Clone>(map: &BTreeMap<Key, Converted<M>>, errors: &mut Vec<LoadError>) -> Vec<M> {
    let mut out = Vec::with_capacity(map.len());
    for entry in map.values() {
        match entry {
            Ok(m) => out.push(m.clone()),
            Err(e) => errors.extend(e.iter().cloned()),
        }
    }
    out
}

async fn aggregate(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut publisher: Publisher,
    coalesce: Duration,
) {
    let mut stores = Stores::default();
    let mut published_stale = false;
    let mut last_publish: Option<Instant> = None;
    loop {
        let Some(msg) = rx.recv().await else {
            return;
        };
        let first = Instant::now();
        let mut changed = stores.apply(msg);
        // Leading edge: a change after a quiet window goes out at once (with whatever is already
        // queued); changes arriving within a window of the last publish wait for its end, so a
        // burst still coalesces into at most one publish per window.
        let deadline = match last_publish {
            Some(at) if first < at + coalesce => at + coalesce,
            _ => first,
        };
        loop {
            match recv_until(&mut rx, deadline).await {
                Some(Some(msg)) => changed |= stores.apply(msg),
                Some(None) => return,
                None => break,
            }
        }
        // Nothing is published before every kind has been listed once: no partial view.
        if !stores.ready() {
            continue;
        }
        let current = publisher.current();
        let stale = stores.stale();
        if current.source_ready && !changed && stale == published_stale {
            continue;
        }
        published_stale = stale;
        last_publish = Some(Instant::now());
        if current.source_ready && !changed {
            // Only the connection state changed: same snapshot.
            let errors = current.errors.clone();
            publisher.publish(current.snapshot, errors, true, stale, first);
            continue;
        }
        let loaded = stores.build();
        publisher.publish(Arc::new(loaded.snapshot), loaded.errors, true, stale, first);
    }
}

/// Lists namespaces, pods and network policies once and validates them, for one-shot commands
/// (`explain --kubeconfig`, `audit --kubeconfig`). Terminating pods are left out, as the watcher
/// does.
pub async fn load_from_kube(kubeconfig: Option<&Path>) -> Result<Loaded> {
    let client = client_from_kubeconfig(kubeconfig).await?;
    let origin_of = origin;
    let (namespaces, _) = list_all(&Api::<core::Namespace>::all(client.clone()), 500, Some).await?;
    let (pods, _) = list_all(
        &Api::<core::Pod>::all(client.clone()),
        500,
        |p: core::Pod| (!p.is_gone()).then_some(p),
    )
    .await?;
    let (policies, _) = list_all(&Api::<net::NetworkPolicy>::all(client), 500, Some).await?;
    let mut builder = SnapshotBuilder::new();
    for ns in namespaces {
        builder.add_namespace(&origin_of(Kind::Namespace), ns);
    }
    for pod in pods {
        builder.add_pod(&origin_of(Kind::Pod), pod);
    }
    for policy in policies {
        builder.add_policy(&origin_of(Kind::Policy), policy);
    }
    let mut loaded = builder.build();
    loaded.errors.sort_by_key(|e| e.to_string());
    Ok(loaded)
}

//! The Kubernetes source: list-then-watch of Namespace, Pod, NetworkPolicy, Node and the
//! EgressGateway custom resource.
//!
//! Each kind runs its own loop: a paginated list (a consistent read), then watches from the list's
//! resourceVersion, following every event's and bookmark's resourceVersion so that a reconnect
//! resumes where it stopped. `410 Gone` (the server no longer has that history) and an undecodable
//! event (an event may have been lost) cause a relist; any other failure (connection refused or
//! reset, a stream that stalls past the server-side timeout) a reconnect after an exponential
//! backoff with jitter. A relist replaces that kind's whole store, so deletions missed while
//! disconnected are reconciled. An aggregator publishes once every kind has been listed, then
//! at most once per short window: an isolated change at once, a burst coalesced.

mod convert;
mod list_watch;
mod publish;
mod reachability;
mod store;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{Api, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use portcullis_policy::load::{Loaded, Origin, SnapshotBuilder};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Publisher, Result, State, DEFAULT_COALESCE};
use convert::{egress_gateway_resource, origin, Kind, Watched};
use list_watch::{list_all, list_all_if_served, run_kind};
use publish::aggregate;
use reachability::Reachability;

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
    /// How often a kind the server does not serve (the EgressGateway CRD not installed) is
    /// listed again; until then it has no objects.
    pub absent_retry: Duration,
    /// While a kind is failing, the API server's `/version` is asked this often; when it answers
    /// again every kind retries at once rather than when its backoff ends.
    pub reachability_probe: Duration,
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
            absent_retry: Duration::from_secs(60),
            reachability_probe: Duration::from_millis(500),
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
    /// `source_ready` comes after the first complete list of every kind.
    pub fn spawn(client: Client, options: KubeOptions) -> KubeSource {
        let (tx, msg_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(KubeStats::default());
        let (publisher, rx) = Publisher::new("kubernetes");
        let reach = Reachability::new();
        let tasks = vec![
            tokio::spawn(run_kind(
                Api::<core::Namespace>::all(client.clone()),
                tx.clone(),
                options.clone(),
                stats.clone(),
                reach.clone(),
            )),
            tokio::spawn(run_kind(
                Api::<core::Pod>::all(client.clone()),
                tx.clone(),
                options.clone(),
                stats.clone(),
                reach.clone(),
            )),
            tokio::spawn(run_kind(
                Api::<net::NetworkPolicy>::all(client.clone()),
                tx.clone(),
                options.clone(),
                stats.clone(),
                reach.clone(),
            )),
            tokio::spawn(run_kind(
                Api::<core::Node>::all(client.clone()),
                tx.clone(),
                options.clone(),
                stats.clone(),
                reach.clone(),
            )),
            tokio::spawn(run_egress_gateways(
                client.clone(),
                tx,
                options.clone(),
                stats.clone(),
                reach.clone(),
            )),
            tokio::spawn(reach.probe(client, options.reachability_probe)),
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

/// Whether the API server serves EgressGateways (the CRD is installed), from its API groups.
async fn egress_gateways_served(client: &Client) -> Result<bool> {
    let resource = egress_gateway_resource();
    let groups = client.list_api_groups().await?;
    Ok(groups.groups.iter().any(|g| {
        g.name == resource.group && g.versions.iter().any(|v| v.version == resource.version)
    }))
}

/// The EgressGateway loop: discovery first, and [`run_kind`] once the API server serves the kind.
/// Until then (the CRD is not installed) the kind counts as listed and empty, and discovery asks
/// again every `absent_retry`. Never listing an unserved kind matters: the 404 of a
/// DynamicObject list crashed release builds of the daemons (rustc 1.95, kube 5: the error's
/// status came back as a dangling box; seen as a SIGSEGV in `not_served` on a real node without
/// the CRD).
async fn run_egress_gateways(
    client: Client,
    tx: mpsc::UnboundedSender<store::Msg>,
    options: KubeOptions,
    stats: Arc<KubeStats>,
    reach: Arc<Reachability>,
) {
    let mut reported_absent = false;
    loop {
        match egress_gateways_served(&client).await {
            Ok(true) => {
                let api = Api::<DynamicObject>::all_with(client, &egress_gateway_resource());
                return run_kind(api, tx, options, stats, reach).await;
            }
            Ok(false) if !std::mem::replace(&mut reported_absent, true) => {
                tracing::warn!(
                    "EgressGateway is not served (CRD not installed): none; asking again every {:?}",
                    options.absent_retry
                );
                if tx
                    .send(store::Msg::Listed(Kind::EgressGateway, Vec::new()))
                    .is_err()
                {
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "API discovery failed; retrying");
                reach.backoff(options.absent_retry).await;
                continue;
            }
        }
        tokio::time::sleep(options.absent_retry).await;
    }
}

/// Lists namespaces, pods, network policies, nodes and EgressGateways (none when the CRD is not
/// installed) once and validates them, for one-shot commands
/// (`explain --kubeconfig`, `audit --kubeconfig`). Terminating pods are left out, as the watcher
/// does.
pub async fn load_from_kube(kubeconfig: Option<&Path>) -> Result<Loaded> {
    let client = client_from_kubeconfig(kubeconfig).await?;
    let (namespaces, _) = list_all(&Api::<core::Namespace>::all(client.clone()), 500, Some).await?;
    let (pods, _) = list_all(
        &Api::<core::Pod>::all(client.clone()),
        500,
        |p: core::Pod| (!p.is_gone()).then_some(p),
    )
    .await?;
    let (policies, _) =
        list_all(&Api::<net::NetworkPolicy>::all(client.clone()), 500, Some).await?;
    // Only `probe --to SERVICE` needs them: a role without them (one older than services in
    // the shipped one) leaves them out.
    let services = match list_all(&Api::<core::Service>::all(client.clone()), 500, Some).await {
        Ok((services, _)) => services,
        Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => {
            tracing::warn!("services not readable ({}): none", status.message);
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let nodes = list_all_if_served(&Api::<core::Node>::all(client.clone())).await?;
    // Discovery first, so that a cluster without the CRD answers no 404 here (see
    // `run_egress_gateways`).
    let gateways = if egress_gateways_served(&client).await? {
        let gateway_api = Api::<DynamicObject>::all_with(client, &egress_gateway_resource());
        list_all_if_served(&gateway_api).await?
    } else {
        tracing::warn!("EgressGateway is not served (CRD not installed): none");
        Vec::new()
    };
    let mut builder = SnapshotBuilder::new();
    for service in services {
        let origin = Origin {
            source: "kubernetes Service".into(),
            document: 1,
        };
        builder.add_service(&origin, service);
    }
    for ns in namespaces {
        builder.add_namespace(&origin(Kind::Namespace), ns);
    }
    for pod in pods {
        builder.add_pod(&origin(Kind::Pod), pod);
    }
    for policy in policies {
        builder.add_policy(&origin(Kind::Policy), policy);
    }
    for node in nodes {
        builder.add_node(&origin(Kind::Node), node);
    }
    for gateway in gateways {
        let value = serde_json::to_value(&gateway).unwrap_or_default();
        builder.add_egress_gateway_json(&origin(Kind::EgressGateway), value);
    }
    let mut loaded = builder.build();
    loaded.errors.sort_by_key(|e| e.to_string());
    Ok(loaded)
}
